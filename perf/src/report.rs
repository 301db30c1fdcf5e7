//! The results directory (`perf/results/` for a full run): one JSON file
//! per bench, `results.md` (markdown tables stamped with the machine) and
//! SVG plots, regenerated from whatever benches have results there.
//!
//! Plots use `plotters`' SVG backend only (no font or C dependencies):
//! text goes into the SVG as `<text>` for the viewer to render.

#![forbid(unsafe_code)]

use std::path::Path;

use anyhow::{Context, Result};
use plotters::prelude::*;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::array::ArrayReport;
use crate::disruption::DisruptionReport;
use crate::failover::FailoverReport;
use crate::machine::Machine;
use crate::pipeline::PipelineReport;
use crate::scaling::ScalingReport;
use crate::wire::WireReport;

/// Everything a results directory holds (also what `shoal bench all
/// --json` prints).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Results {
    /// The machine of the latest run.
    pub machine: Option<Machine>,
    /// `pipeline.json`.
    pub pipeline: Option<PipelineReport>,
    /// `wire.json`.
    pub wire: Option<WireReport>,
    /// `scaling.json`.
    pub scaling: Option<ScalingReport>,
    /// `disruption.json`.
    pub disruption: Option<DisruptionReport>,
    /// `failover.json`.
    pub failover: Option<FailoverReport>,
    /// `array.json`.
    pub array: Option<ArrayReport>,
}

fn load<T: DeserializeOwned>(dir: &Path, name: &str) -> Option<T> {
    let text = std::fs::read(dir.join(name)).ok()?;
    serde_json::from_slice(&text).ok()
}

fn save<T: Serialize>(dir: &Path, name: &str, v: &Option<T>) -> Result<()> {
    if let Some(v) = v {
        let path = dir.join(name);
        std::fs::write(&path, serde_json::to_vec_pretty(v)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

impl Results {
    /// Reads what `dir` holds (missing or unreadable parts are `None`).
    pub fn load(dir: &Path) -> Self {
        Self {
            machine: load(dir, "machine.json"),
            pipeline: load(dir, "pipeline.json"),
            wire: load(dir, "wire.json"),
            scaling: load(dir, "scaling.json"),
            disruption: load(dir, "disruption.json"),
            failover: load(dir, "failover.json"),
            array: load(dir, "array.json"),
        }
    }

    /// Writes the JSON parts, `results.md` and the plots.
    ///
    /// # Errors
    /// When the directory or a file cannot be written.
    pub fn write(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        save(dir, "machine.json", &self.machine)?;
        save(dir, "pipeline.json", &self.pipeline)?;
        save(dir, "wire.json", &self.wire)?;
        save(dir, "scaling.json", &self.scaling)?;
        save(dir, "disruption.json", &self.disruption)?;
        save(dir, "failover.json", &self.failover)?;
        save(dir, "array.json", &self.array)?;
        let stamp = self
            .machine
            .as_ref()
            .map(|m| m.line())
            .unwrap_or_else(|| "unknown machine".into());
        if let Some(p) = &self.pipeline {
            let rows: Vec<Bar> = p
                .mixes
                .iter()
                .flat_map(|m| {
                    [
                        Bar {
                            label: m.name.clone(),
                            value: m.mpps,
                            group: usize::from(!m.drop_path),
                        },
                        Bar {
                            label: format!("{} (general parser)", m.name),
                            value: m.general_mpps,
                            group: 2,
                        },
                    ]
                })
                .collect();
            hbar(
                &dir.join("pipeline.svg"),
                "pipeline: Mpps per core through judge_batch",
                &stamp,
                &rows,
                Some((p.target_drop_mpps, "drop-path target")),
                "Mpps",
            )?;
        }
        if let Some(w) = &self.wire {
            let rows: Vec<Bar> = w
                .cases
                .iter()
                .map(|c| Bar {
                    label: format!("{} {}", c.placement.name(), c.receiver),
                    value: c.ratio_to_ceiling,
                    group: if c.receiver.starts_with("shoal") {
                        0
                    } else if c.ceiling_candidate {
                        2
                    } else {
                        1
                    },
                })
                .collect();
            hbar(
                &dir.join("wire.svg"),
                "wire: frames/s received, x the ceiling (best trivial drop)",
                &stamp,
                &rows,
                Some((w.target_ratio, "shoal target")),
                "x",
            )?;
            let rows: Vec<Bar> = w
                .cases
                .iter()
                .map(|c| Bar {
                    label: format!("{} {}", c.placement.name(), c.receiver),
                    value: c.cpu_ns_per_frame,
                    group: if c.receiver.starts_with("shoal") {
                        0
                    } else if c.ceiling_candidate {
                        2
                    } else {
                        1
                    },
                })
                .collect();
            hbar(
                &dir.join("wire-cpu.svg"),
                "wire: receive-side CPU per frame received (ns)",
                &stamp,
                &rows,
                None,
                "ns",
            )?;
        }
        if let Some(d) = &self.disruption {
            let rows: Vec<Bar> = d
                .changes
                .iter()
                .map(|c| Bar {
                    label: format!("{} at {} hosts", c.kind, c.hosts),
                    value: c.ratio,
                    group: match c.kind.as_str() {
                        "join" => 0,
                        "leave" => 1,
                        _ => 2,
                    },
                })
                .collect();
            hbar(
                &dir.join("disruption.svg"),
                "disruption: buckets moved / minimum",
                &stamp,
                &rows,
                Some((d.target_ratio, "target")),
                "x",
            )?;
        }
        if let Some(f) = &self.failover {
            let mut rows = Vec::new();
            for p in &f.periods {
                for (what, v, group) in [
                    ("served again", p.first_served_median_s, 0),
                    ("converged", p.converged_median_s, 1),
                    ("bound", Some(p.bound_s), 2),
                ] {
                    rows.push(Bar {
                        label: format!("{} ms: {what}", p.period_ms),
                        value: v.unwrap_or(0.0),
                        group,
                    });
                }
            }
            hbar(
                &dir.join("failover.svg"),
                "failover: seconds after SIGKILL (medians), and the lab's bound",
                &stamp,
                &rows,
                None,
                "s",
            )?;
        }
        let md = self.markdown();
        let path = dir.join("results.md");
        std::fs::write(&path, md).with_context(|| format!("writing {}", path.display()))?;
        Ok(())
    }

    /// The markdown report.
    pub fn markdown(&self) -> String {
        let mut s = String::from("# shoal benchmark results\n\n");
        if let Some(m) = &self.machine {
            s += &format!(
                "Measured on: {}. The machine was shared with other work while it ran; \
                 figures are medians of interleaved rounds, compare ratios within a run.\n\n",
                m.line()
            );
        }
        if let Some(p) = &self.pipeline {
            s += &pipeline_md(p);
        }
        if let Some(w) = &self.wire {
            s += &wire_md(w);
        }
        if let Some(sc) = &self.scaling {
            s += &scaling_md(sc);
        }
        if let Some(d) = &self.disruption {
            s += "## Disruption\n\n| change | hosts | moved | minimum | ratio |\n|---|---:|---:|---:|---:|\n";
            for c in &d.changes {
                s += &format!(
                    "| {} | {} | {:.3}% | {:.3}% | {:.3}× |\n",
                    c.kind,
                    c.hosts,
                    c.moved * 100.0,
                    c.minimum * 100.0,
                    c.ratio
                );
            }
            s += &format!(
                "\nWorst {:.3}× (target ≤ {}×).\n\n![disruption](disruption.svg)\n\n",
                d.worst_ratio, d.target_ratio
            );
        }
        if let Some(f) = &self.failover {
            s += &crate::failover::markdown(f);
        }
        if let Some(a) = &self.array {
            s += &crate::array::markdown(a);
        }
        s
    }
}

fn pipeline_md(p: &PipelineReport) -> String {
    let mut s = format!(
        "## Pipeline\n\nOne core, `Dataplane::judge_batch` alone, host {} of {}, {} descriptors \
         in a {}-slot table, {}-byte frames (64 on the wire), batches of {}; median of {} \
         round(s) of {} s per mix. Each mix runs twice per round, side by side: through \
         `judge_batch` (the common-frame shortcut) and through `judge_batch_general` (the \
         general parser for every frame: the path before the shortcut).\n\n\
         | mix | Mpps/core | ns/frame | kept | instructions/frame | general: Mpps/core | general: instructions/frame | speedup |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|\n",
        p.local_host,
        p.hosts,
        p.table_entries,
        p.table_capacity,
        p.frame_len,
        p.batch,
        p.rounds,
        p.seconds_per_round
    );
    let ipf = |x: Option<f64>| x.map(|i| format!("{i:.0}")).unwrap_or_else(|| "–".into());
    for m in &p.mixes {
        s += &format!(
            "| {} — {} | {:.2} | {:.1} | {:.1}% | {} | {:.2} | {} | {:.2}× |\n",
            m.name,
            m.description,
            m.mpps,
            m.ns_per_frame,
            m.kept_share * 100.0,
            ipf(m.instructions_per_frame),
            m.general_mpps,
            ipf(m.general_instructions_per_frame),
            m.mpps / m.general_mpps.max(1e-9)
        );
    }
    if let Some(c) = &p.callgrind {
        match &c.error {
            Some(e) => s += &format!("\ncallgrind did not run: {e}\n"),
            None => {
                s += &format!(
                    "\nInstructions: callgrind, {} frames per mix, {} descriptors; counted: {}\n",
                    c.frames_per_mix, c.table_entries, c.counted
                )
            }
        }
    }
    let drop_best = p
        .mixes
        .iter()
        .filter(|m| m.drop_path)
        .map(|m| m.mpps)
        .fold(0.0, f64::max);
    let instr_worst = p
        .mixes
        .iter()
        .filter(|m| m.drop_path)
        .filter_map(|m| m.instructions_per_frame)
        .fold(0.0, f64::max);
    s += &format!(
        "\nTargets: ≥ {} Mpps/core on the drop path (best drop mix here: {:.2}, {}); \
         ≤ {} instructions/frame on the drop path (worst drop mix here: {:.0}, {}).\n\n\
         ![pipeline](pipeline.svg)\n\n",
        p.target_drop_mpps,
        drop_best,
        if drop_best >= p.target_drop_mpps {
            "met"
        } else {
            "not met"
        },
        p.target_instructions_per_frame,
        instr_worst,
        if instr_worst > 0.0 && instr_worst <= p.target_instructions_per_frame {
            "met"
        } else {
            "not met"
        }
    );
    s
}

fn scaling_md(sc: &ScalingReport) -> String {
    let mut s = String::from("## Scaling\n\n");
    if let Some(p) = &sc.pipeline {
        s += &format!(
            "Pipeline form: pre-generated `{}` frames judged by one thread pinned to CPU 0, \
             then by two threads pinned to CPUs 0 and 1 at once (each with its own dataplane \
             and a {}-connection table, as poll loops have); no generator, no kernel.\n\n\
             | threads | Mpps (sum) | per thread |\n|---:|---:|---|\n\
             | 1 | {:.2} | {:.2} |\n| 2 | {:.2} | {} |\n\n\
             Two threads / one: **{:.2}×** (target ≥ {}×). Counting each thread's frames per \
             CPU-second it actually got (other jobs share these CPUs): {:.2} Mpps alone, \
             {:.2} Mpps summed for two, **{:.2}×**.\n\n",
            p.mix,
            p.table_entries,
            p.one_thread_mpps,
            p.one_thread_mpps,
            p.two_threads_mpps,
            p.per_thread_mpps
                .iter()
                .map(|x| format!("{x:.2}"))
                .collect::<Vec<_>>()
                .join(" / "),
            p.ratio,
            sc.target_ratio,
            p.one_thread_mpps_per_cpu,
            p.two_threads_mpps_per_cpu,
            p.cpu_ratio
        );
    }
    s += "Wire form: shoal AF_XDP on a two-queue veth flooded by two trafgen workers (one per \
          CPU), one poll loop for both queues against one per queue; the generator and veth's \
          receive work share the same two CPUs.\n\n\
          | poll cores | Mpps | per loop |\n|---:|---:|---|\n";
    for c in &sc.cases {
        s += &format!(
            "| {} | {:.3} | {} |\n",
            c.poll_cores,
            c.fps / 1e6,
            c.per_loop_share
                .iter()
                .map(|x| format!("{:.0}%", x * 100.0))
                .collect::<Vec<_>>()
                .join(" / ")
        );
    }
    s += &format!(
        "\nTwo poll cores / one: **{:.2}×** (target ≥ {}×). {} round(s) × {} s.\n\n",
        sc.ratio, sc.target_ratio, sc.rounds, sc.seconds
    );
    s
}

fn wire_md(w: &WireReport) -> String {
    let mut s = format!(
        "## Wire\n\nA 64-byte UDP flood (one trafgen worker on CPU 0, 65,536 clients) over a \
         veth pair into `shoal-b-rx`; every receiver in each round, {} round(s) × {} s each; \
         medians. `separate`: receive work (veth's threaded NAPI kthread, shoal's threads) on \
         CPU 1; `shared`: everything on CPU 0. Receive CPU = NAPI kthread + shoal process time \
         per frame received. The ceiling is the fastest trivial drop of the round.\n\n",
        w.rounds, w.seconds
    );
    for c in &w.ceilings {
        s += &format!(
            "- ceiling, {}: `{}` at {:.3} Mpps\n",
            c.placement.name(),
            c.receiver,
            c.fps / 1e6
        );
    }
    s += "\n| placement | receiver | Mpps received | × ceiling | receive CPU ns/frame | of which NAPI | offered Mpps | to UDP | counted by |\n|---|---|---:|---:|---:|---:|---:|---:|---|\n";
    for c in &w.cases {
        s += &format!(
            "| {} | {} | {:.3} | {:.2} | {:.0} | {:.0} | {:.3} | {:.0}% | {} |\n",
            c.placement.name(),
            c.receiver,
            c.fps / 1e6,
            c.ratio_to_ceiling,
            c.cpu_ns_per_frame,
            c.napi_cpu_ns_per_frame,
            c.offered_fps / 1e6,
            c.stack_share * 100.0,
            c.counted_by
        );
    }
    s += &format!(
        "\nTarget: `shoal_af_xdp` ≥ {}× the ceiling, and a lower receive cost per frame than \
         both kernel cluster filters.\n\n![wire](wire.svg)\n\n![wire CPU](wire-cpu.svg)\n\n",
        w.target_ratio
    );
    s
}

/// One bar of a horizontal bar chart.
#[derive(Clone, Debug)]
struct Bar {
    label: String,
    value: f64,
    group: usize,
}

const COLORS: [RGBColor; 3] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x2c, 0xa0, 0x2c),
];

/// A horizontal bar chart: labels on the left, values at the bar ends,
/// an optional target line.
fn hbar(
    path: &Path,
    title: &str,
    stamp: &str,
    bars: &[Bar],
    target: Option<(f64, &str)>,
    unit: &str,
) -> Result<()> {
    let row = 22u32;
    let top = 56u32;
    let left = 250u32;
    let width = 820u32;
    let height = top + row * bars.len().max(1) as u32 + 30;
    let plot_w = (width - left - 90) as f64;
    let max = bars
        .iter()
        .map(|b| b.value)
        .chain(target.map(|t| t.0))
        .fold(0.0, f64::max)
        .max(1e-9);
    let x = |v: f64| left as i32 + (v / max * plot_w) as i32;
    let root = SVGBackend::new(path, (width, height)).into_drawing_area();
    let err = |e: DrawingAreaErrorKind<_>| anyhow::anyhow!("drawing {}: {e:?}", path.display());
    root.fill(&WHITE).map_err(err)?;
    let title_style = ("sans-serif", 17).into_font().color(&BLACK);
    let small = ("sans-serif", 11)
        .into_font()
        .color(&RGBColor(0x55, 0x55, 0x55));
    let label = ("sans-serif", 12).into_font().color(&BLACK);
    root.draw(&Text::new(title.to_string(), (10, 8), title_style))
        .map_err(err)?;
    root.draw(&Text::new(stamp.to_string(), (10, 30), small.clone()))
        .map_err(err)?;
    for (i, b) in bars.iter().enumerate() {
        let y = (top + row * i as u32) as i32;
        let color = COLORS[b.group % COLORS.len()];
        root.draw(&Text::new(b.label.clone(), (10, y + 4), label.clone()))
            .map_err(err)?;
        root.draw(&Rectangle::new(
            [
                (left as i32, y + 2),
                (x(b.value).max(left as i32 + 1), y + row as i32 - 4),
            ],
            color.filled(),
        ))
        .map_err(err)?;
        let v = if b.value >= 100.0 {
            format!("{:.0} {unit}", b.value)
        } else {
            format!("{:.2} {unit}", b.value)
        };
        root.draw(&Text::new(v, (x(b.value) + 4, y + 4), label.clone()))
            .map_err(err)?;
    }
    if let Some((t, name)) = target {
        let bottom = (top + row * bars.len() as u32) as i32;
        root.draw(&PathElement::new(
            vec![(x(t), top as i32 - 6), (x(t), bottom)],
            RED.stroke_width(2),
        ))
        .map_err(err)?;
        root.draw(&Text::new(
            format!("{name} {t}"),
            (x(t) - 40, bottom + 6),
            ("sans-serif", 11).into_font().color(&RED),
        ))
        .map_err(err)?;
    }
    root.present().map_err(err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disruption;

    #[test]
    fn writes_and_reads_back_a_results_directory() {
        let dir = std::env::temp_dir().join(format!("shoal-perf-report-{}", std::process::id()));
        let r = Results {
            machine: Some(Machine::describe()),
            disruption: Some(disruption::run(&[2]).expect("disruption")),
            ..Results::default()
        };
        r.write(&dir).expect("writes");
        let svg = std::fs::read_to_string(dir.join("disruption.svg")).expect("svg");
        assert!(svg.starts_with("<svg") && svg.contains("join at 2 hosts"));
        let md = std::fs::read_to_string(dir.join("results.md")).expect("md");
        assert!(md.contains("## Disruption") && md.contains("| join | 2 |"));
        let back = Results::load(&dir);
        assert_eq!(back.machine, r.machine);
        assert_eq!(
            back.disruption.map(|d| d.changes.len()),
            Some(3),
            "disruption read back"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
