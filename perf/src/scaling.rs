//! `shoal bench scaling`: one poll core against two, measured two ways in
//! the same run.
//!
//! # Pipeline form (the fair one on this machine)
//!
//! Pre-generated frames (the `udp_one_in_3` mix of [`crate::pipeline`]: 64-byte
//! UDP frames from random clients, one in three kept, against a descriptor
//! table of [`PIPELINE_ENTRIES`] connections) replayed through
//! [`shoal_dataplane::pipeline::Dataplane::judge_batch`] by one thread pinned
//! to CPU 0, then by two threads pinned to CPUs 0 and 1 at once, each with
//! its own dataplane and table as the engine's poll loops have: no
//! generator, no kernel, so the only things the two threads share are the
//! caches, the memory bus and whatever else runs on the machine. Interleaved
//! rounds; the ratio is the median over rounds of (two threads' summed
//! frames/s) / (one thread's). On a machine other jobs share, the threads
//! also share the CPUs with them, so each thread's own CPU time is read
//! too (procfs, per thread): `cpu_ratio` is the median of (two threads'
//! summed frames per CPU-second of each) / (one thread's frames per
//! CPU-second): what two cores give when each thread has its core to
//! itself, with the cache and memory interference left in.
//!
//! # Wire form
//!
//! shoal AF_XDP with one pinned poll loop polling
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

use anyhow::Result;
use serde::{Deserialize, Serialize};

use crate::frames::Pool;
use crate::pipeline::{Fixture, Mix, POOL};
use crate::rig::{thread_ticks, ticks_per_second, Rig};
use crate::signals::pause;
use crate::stats::median;
use crate::wire::start_shoal;

/// The target for two poll cores against one.
pub const TARGET_RATIO: f64 = 1.8;
/// Connections pre-filled into each pipeline thread's descriptor table.
pub const PIPELINE_ENTRIES: usize = 1_000_000;

/// Options of the scaling bench.
#[derive(Clone, Debug)]
pub struct ScalingOptions {
    /// Measured seconds per case and round.
    pub seconds: f64,
    /// Rounds.
    pub rounds: usize,
    /// Seconds per pipeline case and round.
    pub pipeline_seconds: f64,
    /// Descriptors per pipeline thread.
    pub pipeline_entries: usize,
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
    /// Median over rounds of (two cores / one core), wire form.
    pub ratio: f64,
    /// The target.
    pub target_ratio: f64,
    /// The pipeline form (absent in results written before it existed).
    #[serde(default)]
    pub pipeline: Option<PipelineScaling>,
}

/// The pipeline form: pre-generated frames through one and two pinned
/// threads.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PipelineScaling {
    /// The mix replayed.
    pub mix: String,
    /// Descriptors in each thread's table.
    pub table_entries: usize,
    /// Median Mpps of one thread on CPU 0.
    pub one_thread_mpps: f64,
    /// Median summed Mpps of two threads on CPUs 0 and 1.
    pub two_threads_mpps: f64,
    /// Median Mpps of each of the two threads.
    pub per_thread_mpps: Vec<f64>,
    /// Every round's (one, two).
    pub rounds_mpps: Vec<(f64, f64)>,
    /// Median over rounds of two / one.
    pub ratio: f64,
    /// Median of one thread's Mpps per CPU-second it got.
    #[serde(default)]
    pub one_thread_mpps_per_cpu: f64,
    /// Median of the two threads' summed Mpps per CPU-second each got.
    #[serde(default)]
    pub two_threads_mpps_per_cpu: f64,
    /// Median over rounds of the per-CPU-second ratio (see the module
    /// docs).
    #[serde(default)]
    pub cpu_ratio: f64,
}

/// One replaying thread's result.
#[derive(Clone, Copy, Debug, Default)]
struct Replay {
    /// Mpps over wall time.
    mpps: f64,
    /// Mpps over the CPU time the thread got.
    mpps_per_cpu: f64,
}

/// Judges `pool` over and over for `seconds` on the calling thread, pinned
/// to `cpu`.
fn replay(fx: &mut Fixture, pool: &Pool, cpu: usize, seconds: f64) -> Replay {
    if !core_affinity::set_for_current(core_affinity::CoreId { id: cpu }) {
        eprintln!("scaling: could not pin a pipeline thread to CPU {cpu}");
    }
    let budget = Duration::from_secs_f64(seconds);
    let ticks = thread_ticks();
    let t = Instant::now();
    let mut frames = 0u64;
    while t.elapsed() < budget {
        fx.pass(pool);
        frames += pool.len() as u64;
    }
    let wall = t.elapsed().as_secs_f64();
    let cpu_s = thread_ticks().saturating_sub(ticks) as f64 / ticks_per_second();
    Replay {
        mpps: frames as f64 / wall / 1e6,
        mpps_per_cpu: if cpu_s > 0.0 {
            frames as f64 / cpu_s / 1e6
        } else {
            0.0
        },
    }
}

/// The pipeline form over `rounds` interleaved rounds.
///
/// # Errors
/// When a fixture cannot be built.
pub fn pipeline_scaling(seconds: f64, rounds: usize, entries: usize) -> Result<PipelineScaling> {
    let mix = Mix::UdpOneInThree;
    let capacity = (entries * 2).next_power_of_two().max(1 << 10);
    let mut fixtures = [
        Fixture::new(entries, capacity)?,
        Fixture::new(entries, capacity)?,
    ];
    let pools: Vec<Pool> = fixtures.iter().map(|f| f.pool(mix, POOL)).collect();
    // Warm both tables and pools once.
    for (fx, pool) in fixtures.iter_mut().zip(&pools) {
        fx.pass(pool);
    }
    let mut rounds_mpps = Vec::new();
    let mut rounds_per_cpu = Vec::new();
    let mut per_thread: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    for round in 0..rounds.max(1) {
        pause(0.0)?;
        let one = std::thread::scope(|s| {
            let fx = &mut fixtures[0];
            let pool = &pools[0];
            s.spawn(move || replay(fx, pool, 0, seconds))
                .join()
                .unwrap_or_default()
        });
        let two: Vec<Replay> = std::thread::scope(|s| {
            let handles: Vec<_> = fixtures
                .iter_mut()
                .zip(&pools)
                .enumerate()
                .map(|(cpu, (fx, pool))| s.spawn(move || replay(fx, pool, cpu, seconds)))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_default())
                .collect()
        });
        let sum: f64 = two.iter().map(|r| r.mpps).sum();
        let sum_per_cpu: f64 = two.iter().map(|r| r.mpps_per_cpu).sum();
        eprintln!(
            "scaling: round {} pipeline 1 thread {:.2} Mpps ({:.2} per CPU-s), 2 threads {:.2} Mpps ({}; {:.2} per CPU-s)",
            round + 1,
            one.mpps,
            one.mpps_per_cpu,
            sum,
            two.iter()
                .map(|x| format!("{:.2}", x.mpps))
                .collect::<Vec<_>>()
                .join(" + "),
            sum_per_cpu
        );
        for (k, x) in two.iter().enumerate().take(2) {
            per_thread[k].push(x.mpps);
        }
        rounds_mpps.push((one.mpps, sum));
        rounds_per_cpu.push((one.mpps_per_cpu, sum_per_cpu));
    }
    let ratios: Vec<f64> = rounds_mpps
        .iter()
        .map(|(one, two)| if *one > 0.0 { two / one } else { 0.0 })
        .collect();
    Ok(PipelineScaling {
        mix: mix.name().to_string(),
        table_entries: entries,
        one_thread_mpps: median(&rounds_mpps.iter().map(|r| r.0).collect::<Vec<_>>()),
        two_threads_mpps: median(&rounds_mpps.iter().map(|r| r.1).collect::<Vec<_>>()),
        per_thread_mpps: per_thread.iter().map(|v| median(v)).collect(),
        rounds_mpps,
        ratio: median(&ratios),
        one_thread_mpps_per_cpu: median(&rounds_per_cpu.iter().map(|r| r.0).collect::<Vec<_>>()),
        two_threads_mpps_per_cpu: median(&rounds_per_cpu.iter().map(|r| r.1).collect::<Vec<_>>()),
        cpu_ratio: median(
            &rounds_per_cpu
                .iter()
                .map(|(one, two)| if *one > 0.0 { two / one } else { 0.0 })
                .collect::<Vec<_>>(),
        ),
    })
}

struct Reading {
    per_loop: Vec<u64>,
    xdp_dropped: u64,
    at: SystemTime,
}

/// Waits (up to 3 s) for shoal to rewrite its counters file.
fn next(path: &std::path::Path) -> Result<Reading> {
    let ((per_loop, xdp_dropped), at) = crate::next_stats(path, Duration::from_secs(3), |v| {
        let per_loop = v["per_core"]
            .as_array()?
            .iter()
            .map(|c| c["received"].as_u64().unwrap_or(0))
            .collect();
        Some((per_loop, v["xdp_dropped"].as_u64().unwrap_or(0)))
    })?;
    Ok(Reading {
        per_loop,
        xdp_dropped,
        at,
    })
}

fn measure(rig: &Rig, loops: usize, seconds: f64) -> Result<(f64, Vec<f64>)> {
    let polls: Vec<(usize, Vec<u32>)> = if loops == 1 {
        vec![(1, vec![0, 1])]
    } else {
        vec![(0, vec![0]), (1, vec![1])]
    };
    let name = format!("scaling{loops}");
    let (proc, stats) = start_shoal(
        rig,
        &name,
        "af_xdp",
        // The pass off: the kept third must reach the poll loops, whose
        // scaling this measures.
        (true, false),
        "native",
        0,
        &polls,
    )?;
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
    let pipeline = pipeline_scaling(opts.pipeline_seconds, opts.rounds, opts.pipeline_entries)?;
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
        pipeline: Some(pipeline),
    })
}

/// Text table of a report.
pub fn text(r: &ScalingReport) -> String {
    let mut s = String::new();
    if let Some(p) = &r.pipeline {
        s += &format!(
            "scaling, pipeline: {} replayed, {} descriptors per thread: 1 thread {:.2} Mpps, 2 threads {:.2} Mpps ({}), ratio {:.2}x (target >= {}x); per CPU-second each thread got: {:.2} vs {:.2}, ratio {:.2}x\n",
            p.mix,
            p.table_entries,
            p.one_thread_mpps,
            p.two_threads_mpps,
            p.per_thread_mpps
                .iter()
                .map(|x| format!("{x:.2}"))
                .collect::<Vec<_>>()
                .join(" + "),
            p.ratio,
            r.target_ratio,
            p.one_thread_mpps_per_cpu,
            p.two_threads_mpps_per_cpu,
            p.cpu_ratio
        );
    }
    s += &format!(
        "scaling, wire: shoal AF_XDP on a two-queue veth, two trafgen workers, {} round(s) x {} s, medians\n",
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
