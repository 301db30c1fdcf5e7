//! `shoal bench scaling`: shoal AF_XDP with one pinned poll loop polling
//! both rx queues of a two-queue veth, against two pinned poll loops of
//! one queue each, under the same flood, in interleaved rounds.
//!
//! The flood is two trafgen workers (worker i on CPU i sends on tx queue
//! i, which veth maps to rx queue i), so both queues get traffic. veth
//! runs each queue's NAPI in softirq on its sender's CPU, so with
//! two CPUs the generator, the kernel's receive work and the poll loops
//! all share them: the ratio says whether a second poll loop helps on
//! this machine, not what it gives on a many-core server with a real NIC.
//! Frames are counted by shoal's own counters: `received` (what the poll
//! loops judged; the per-loop split is of these) plus `xdp_dropped` (what
//! its XDP fast path dropped in the kernel).

#![forbid(unsafe_code)]

use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

use crate::rig::Rig;
use crate::signals::pause;
use crate::stats::median;
use crate::wire::start_shoal;

/// Issue 5's target for two poll cores against one.
pub const TARGET_RATIO: f64 = 1.8;

/// Options of the scaling bench.
#[derive(Clone, Debug)]
pub struct ScalingOptions {
    /// Measured seconds per case and round.
    pub seconds: f64,
    /// Rounds.
    pub rounds: usize,
}

/// One configuration's figures.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ScalingCase {
    /// Poll loops (pinned cores).
    pub poll_cores: usize,
    /// Median frames/s received.
    pub fps: f64,
    /// Every round's frames/s.
    pub rounds_fps: Vec<f64>,
    /// Median share of frames each poll loop received.
    pub per_loop_share: Vec<f64>,
}

/// The scaling bench's report.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ScalingReport {
    /// Measured seconds per case and round.
    pub seconds: f64,
    /// Rounds.
    pub rounds: usize,
    /// One and two poll cores.
    pub cases: Vec<ScalingCase>,
    /// Median over rounds of (two cores / one core).
    pub ratio: f64,
    /// Issue 5's target.
    pub target_ratio: f64,
}

struct Reading {
    per_loop: Vec<u64>,
    xdp_dropped: u64,
    at: SystemTime,
}

fn read(path: &std::path::Path) -> Option<Reading> {
    let at = std::fs::metadata(path).and_then(|m| m.modified()).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    let per_loop = v["per_core"]
        .as_array()?
        .iter()
        .map(|c| c["received"].as_u64().unwrap_or(0))
        .collect();
    let xdp_dropped = v["xdp_dropped"].as_u64().unwrap_or(0);
    Some(Reading {
        per_loop,
        xdp_dropped,
        at,
    })
}

fn next(path: &std::path::Path) -> Result<Reading> {
    let first = read(path).map(|r| r.at);
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        if let Some(r) = read(path) {
            if Some(r.at) != first {
                return Ok(r);
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    bail!("shoal stopped writing {}", path.display())
}

fn measure(rig: &Rig, loops: usize, seconds: f64) -> Result<(f64, Vec<f64>)> {
    let polls: Vec<(usize, Vec<u32>)> = if loops == 1 {
        vec![(1, vec![0, 1])]
    } else {
        vec![(0, vec![0]), (1, vec![1])]
    };
    let name = format!("scaling{loops}");
    let (proc, stats) = start_shoal(rig, &name, "af_xdp", true, 0, &polls)?;
    let result: Result<(f64, Vec<f64>)> = (|| {
        let flood = rig.flood(&[0, 1])?;
        pause(1.0)?;
        let a = next(&stats)?;
        pause(seconds)?;
        let b = next(&stats)?;
        flood.kill();
        let secs =
            b.at.duration_since(a.at)
                .unwrap_or(Duration::ZERO)
                .as_secs_f64()
                .max(1e-3);
        let per: Vec<u64> = b
            .per_loop
            .iter()
            .zip(a.per_loop.iter().chain(std::iter::repeat(&0)))
            .map(|(x, y)| x.saturating_sub(*y))
            .collect();
        let in_loops: u64 = per.iter().sum();
        let shares = per
            .iter()
            .map(|&n| n as f64 / in_loops.max(1) as f64)
            .collect();
        let seen = in_loops + b.xdp_dropped.saturating_sub(a.xdp_dropped);
        Ok((seen as f64 / secs, shares))
    })();
    let stopped = proc.stop(Duration::from_secs(10));
    let r = result?;
    stopped?;
    std::thread::sleep(Duration::from_millis(200));
    Ok(r)
}

/// Runs the scaling bench.
///
/// # Errors
/// When the rig cannot be built or shoal fails to start or stop.
pub fn run(opts: &ScalingOptions) -> Result<ScalingReport> {
    let rig = Rig::up(2)?;
    rig.place(None)?;
    let mut fps: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    let mut shares: [Vec<Vec<f64>>; 2] = [Vec::new(), Vec::new()];
    for round in 0..opts.rounds {
        for (i, loops) in [1usize, 2].into_iter().enumerate() {
            let (f, s) = measure(&rig, loops, opts.seconds)?;
            eprintln!(
                "scaling: round {} {} poll core(s) {:.3} Mpps, per loop {:?}",
                round + 1,
                loops,
                f / 1e6,
                s.iter()
                    .map(|x| format!("{:.0}%", x * 100.0))
                    .collect::<Vec<_>>()
            );
            fps[i].push(f);
            shares[i].push(s);
        }
    }
    let ratios: Vec<f64> = fps[1]
        .iter()
        .zip(&fps[0])
        .map(|(two, one)| if *one > 0.0 { two / one } else { 0.0 })
        .collect();
    let cases = (0..2)
        .map(|i| {
            let loops = i + 1;
            ScalingCase {
                poll_cores: loops,
                fps: median(&fps[i]),
                rounds_fps: fps[i].clone(),
                per_loop_share: (0..loops)
                    .map(|l| {
                        median(
                            &shares[i]
                                .iter()
                                .map(|s| s.get(l).copied().unwrap_or(0.0))
                                .collect::<Vec<_>>(),
                        )
                    })
                    .collect(),
            }
        })
        .collect();
    Ok(ScalingReport {
        seconds: opts.seconds,
        rounds: opts.rounds,
        cases,
        ratio: median(&ratios),
        target_ratio: TARGET_RATIO,
    })
}

/// Text table of a report.
pub fn text(r: &ScalingReport) -> String {
    let mut s = format!(
        "scaling: shoal AF_XDP on a two-queue veth, two trafgen workers, {} round(s) x {} s, medians\n",
        r.rounds, r.seconds
    );
    for c in &r.cases {
        s += &format!(
            "{} poll core(s): {:.3} Mpps, per loop {}\n",
            c.poll_cores,
            c.fps / 1e6,
            c.per_loop_share
                .iter()
                .map(|x| format!("{:.0}%", x * 100.0))
                .collect::<Vec<_>>()
                .join(" / ")
        );
    }
    s += &format!("ratio {:.2}x (target >= {}x)\n", r.ratio, r.target_ratio);
    s
}
