//! shoal's benchmarks: `shoal-bench pipeline|wire|scaling|disruption|failover|array|all`,
//! which `shoal bench …` runs.
//!
//! # What this crate owns
//!
//! * [`pipeline`]: the dataplane alone, frames/s per core and instructions
//!   per frame (callgrind), with a 1,000,000-entry descriptor table.
//! * [`wire`]: a veth flood in namespaces of its own (`shoal-b-gen`,
//!   `shoal-b-rx`), shoal's AF_XDP and AF_PACKET backends side by side with
//!   the kernel's trivial drops (the ceiling) and its cluster filters, in
//!   interleaved rounds, with the receive work on its own core and sharing
//!   the generator's.
//! * [`scaling`]: one against two pinned poll loops on a two-queue veth.
//! * [`disruption`]: buckets moved on join, leave and weight change.
//! * [`failover`]: SIGKILL of a host in the namespace lab (`scripts/lab`,
//!   under the lab lock `/tmp/shoal-lab.lock`) at 1000, 100 and 50 ms
//!   heartbeat periods: time until its clients are served again, until the
//!   survivors converge, and resets on surviving connections.
//! * [`mod@array`]: the array tier's CARP routing: decisions per second per
//!   core in memory, and `wrk` against shoal's CARP service, HAProxy, nginx
//!   and Squid, each on one core in front of the same origins.
//! * [`report`]: the markdown table and SVG plots under `perf/results/`,
//!   stamped with the [`machine`].
//!
//! Benchmarks, not tests: a bench fails only when something is broken
//! (a namespace cannot be made, a receiver will not start), never on a
//! number. `--smoke` runs each for a second or two so CI keeps them alive.
//!
//! # Where it sits
//!
//! On top of the engine: it uses the engine's syscall seam
//! (`shoal_engine::sys`: BPF loading and attachment, network namespaces,
//! signal dispositions) and has no `unsafe` of its own. Nothing depends on
//! it: the `shoal` binary hands `shoal bench …` to the `shoal-bench`
//! binary built here, found beside it, and links no benchmark or plotting
//! code. The benches that run shoal itself (`wire`, `scaling`, `failover`)
//! run the `shoal` beside `shoal-bench` ([`shoal_binary`]).

#![forbid(unsafe_code)]

pub mod array;
pub mod disruption;
pub mod failover;
pub mod forward;
pub mod frames;
pub mod machine;
pub mod pipeline;
pub mod report;
pub mod rig;
pub mod scaling;
mod signals;
pub mod stats;
pub mod wire;
mod xdp_drop;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context, Result};

/// shoal's benchmarks: `shoal-bench BENCH [OPTIONS]`, which `shoal bench
/// BENCH [OPTIONS]` runs.
#[derive(clap::Parser, Debug, Clone)]
#[command(name = "shoal-bench", version)]
pub struct BenchArgs {
    /// Which bench.
    #[command(subcommand)]
    pub bench: Bench,
}

/// The benches.
#[derive(clap::Subcommand, Debug, Clone)]
pub enum Bench {
    /// The dataplane alone: frames/s per core, ns and instructions per frame.
    Pipeline(Common),
    /// A veth flood: shoal's backends against the kernel's drops and cluster filters.
    Wire(Common),
    /// One against two pinned poll loops on a two-queue veth.
    Scaling(Common),
    /// Buckets moved on join, leave and weight change, 2 to 64 hosts.
    Disruption(Common),
    /// SIGKILL of a host in the namespace lab at 1000/100/50 ms periods
    /// (`--rounds`: repetitions per period, default 3).
    Failover(Common),
    /// CARP routing: decisions/s in memory (4/16/64 members, each hash
    /// mode), and wrk against shoal, HAProxy, nginx and Squid on one core.
    Array(ArrayArgs),
    /// Sticky sessions: a request served locally, a forwarded one, and
    /// HAProxy's cookie insert, wrk through the namespace lab.
    Forward(Common),
    /// Response-time balancing: shoal's clb policies, HAProxy leastconn
    /// and nginx least_conn under one open load; CLB's herding simulated.
    Clb(ClbArgs),
    /// Every bench in turn (what scripts/bench runs).
    All(Common),
    /// Internal: the fixture run under callgrind by `pipeline`.
    #[command(hide = true)]
    CallgrindWorker {
        /// Descriptors to pre-fill.
        #[arg(long)]
        entries: usize,
        /// Frames judged per mix.
        #[arg(long)]
        frames: usize,
    },
}

/// `shoal bench array`'s options.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ArrayArgs {
    /// Options every bench takes.
    #[command(flatten)]
    pub common: Common,
    /// Run one half only: `routing` (in memory) or `wire` (wrk against the
    /// frontends).
    #[arg(long, value_parser = ["routing", "wire"])]
    pub only: Option<String>,
}

/// `shoal bench clb`'s options.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ClbArgs {
    /// Options every bench takes.
    #[command(flatten)]
    pub common: Common,
    /// Run only these cases, by policy name (comma-separated: `healthy`
    /// for the all-healthy baseline, `clb`, `round_robin`,
    /// `least_request`, `peak_ewma`, `leastconn` for HAProxy, `least_conn`
    /// for nginx); default every case.
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Also write every request of every case here, one line each (due
    /// time s, latency ms, status, back end, and whether it was due while
    /// the freezing back end was frozen): `<frontend>-<policy>.requests`.
    #[arg(long)]
    pub requests: Option<PathBuf>,
}

/// Options every bench takes.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct Common {
    /// Print the report as JSON (keys in README's Benchmarks section).
    #[arg(long)]
    pub json: bool,
    /// Measured seconds per case and round (defaults: pipeline 1, wire and
    /// scaling 5; array 1 per routing case and 5 per frontend).
    #[arg(long)]
    pub seconds: Option<f64>,
    /// Interleaved rounds (default 3; 1 with --smoke).
    #[arg(long)]
    pub rounds: Option<usize>,
    /// A short run of everything (about a second per case), for CI.
    #[arg(long)]
    pub smoke: bool,
    /// Also write the JSON, the markdown table and the SVG plots here.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

impl Common {
    fn rounds(&self) -> usize {
        self.rounds.unwrap_or(if self.smoke { 1 } else { 3 }).max(1)
    }

    fn seconds(&self, full: f64, smoke: f64) -> f64 {
        self.seconds
            .unwrap_or(if self.smoke { smoke } else { full })
            .max(0.05)
    }
}

/// The `shoal` binary the benches run: the one in the same directory as
/// this executable (symlinks resolved), where `cargo build --release -p
/// shoal-engine -p shoal-perf` puts both.
///
/// # Errors
/// When this executable cannot be located or no `shoal` lies beside it.
pub fn shoal_binary() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the shoal-bench binary")?;
    let shoal = exe.with_file_name("shoal");
    if !shoal.is_file() {
        bail!(
            "this bench runs shoal, and there is no {}: build it with \
             cargo build --release -p shoal-engine (beside {})",
            shoal.display(),
            exe.display()
        );
    }
    Ok(shoal)
}

/// Waits up to `timeout` for shoal to write its stats file at `path` again
/// (its modification time differs from the one it has when this is
/// called) with JSON in which `extract` finds what it looks for; returns
/// that and the time of the write. shoal renames each write into place, so
/// a file read is whole.
///
/// # Errors
/// When no such write comes within `timeout`.
pub fn next_stats<T>(
    path: &Path,
    timeout: Duration,
    extract: impl Fn(&serde_json::Value) -> Option<T>,
) -> Result<(T, SystemTime)> {
    let written = || std::fs::metadata(path).and_then(|m| m.modified()).ok();
    let first = written();
    let until = Instant::now() + timeout;
    loop {
        if let Some(at) = written().filter(|&at| Some(at) != first) {
            let found = std::fs::read(path)
                .ok()
                .and_then(|text| serde_json::from_slice(&text).ok())
                .and_then(|v| extract(&v));
            if let Some(found) = found {
                return Ok((found, at));
            }
        }
        if Instant::now() >= until {
            bail!(
                "shoal stopped writing {} (no fresh write within {timeout:?})",
                path.display()
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Runs `shoal-bench` (`shoal bench`).
///
/// # Errors
/// When a bench is broken (cannot set up, a tool is missing, a receiver
/// fails to start); never because of a figure.
pub fn run(args: BenchArgs) -> Result<()> {
    let (common, which): (&Common, &[&str]) = match &args.bench {
        Bench::Pipeline(c) => (c, &["pipeline"]),
        Bench::Wire(c) => (c, &["wire"]),
        Bench::Scaling(c) => (c, &["scaling"]),
        Bench::Disruption(c) => (c, &["disruption"]),
        Bench::Failover(c) => (c, &["failover"]),
        Bench::Array(a) => (&a.common, &["array"]),
        Bench::Forward(c) => (c, &["forward"]),
        Bench::Clb(c) => (&c.common, &["clb"]),
        Bench::All(c) => (
            c,
            &[
                "disruption",
                "pipeline",
                "wire",
                "scaling",
                "failover",
                "array",
                "forward",
                "clb",
            ],
        ),
        Bench::CallgrindWorker { entries, frames } => {
            return pipeline::callgrind_worker(*entries, *frames);
        }
    };
    let mut results = match &common.out {
        Some(dir) => report::Results::load(dir),
        None => report::Results::default(),
    };
    results.machine = Some(machine::Machine::describe());
    // `all --json` prints one object at the end instead of one per bench.
    let combined = matches!(args.bench, Bench::All(_));
    let quiet = combined && common.json;
    for bench in which {
        match *bench {
            "pipeline" => {
                let r = pipeline::run(&pipeline::PipelineOptions {
                    seconds: common.seconds(1.0, 0.1),
                    rounds: common.rounds(),
                    smoke: common.smoke,
                    callgrind: true,
                })?;
                emit(common, quiet, &r, pipeline::text(&r))?;
                results.pipeline = Some(r);
            }
            "disruption" => {
                let r = disruption::run(&disruption::sizes(common.smoke))?;
                emit(common, quiet, &r, disruption::text(&r))?;
                results.disruption = Some(r);
            }
            "wire" => {
                signals::catch_interrupts();
                let r = wire::run(&wire::WireOptions {
                    seconds: common.seconds(5.0, 1.0),
                    rounds: common.rounds(),
                    smoke: common.smoke,
                })?;
                emit(common, quiet, &r, wire::text(&r))?;
                results.wire = Some(r);
            }
            "scaling" => {
                signals::catch_interrupts();
                let r = scaling::run(&scaling::ScalingOptions {
                    seconds: common.seconds(5.0, 1.0),
                    rounds: common.rounds(),
                    pipeline_seconds: common.seconds(2.0, 0.3),
                    pipeline_entries: if common.smoke {
                        1 << 16
                    } else {
                        scaling::PIPELINE_ENTRIES
                    },
                })?;
                emit(common, quiet, &r, scaling::text(&r))?;
                results.scaling = Some(r);
            }
            "failover" => {
                signals::catch_interrupts();
                let r = failover::run(&failover::FailoverOptions::new(
                    common.smoke,
                    common.rounds(),
                ))?;
                emit(common, quiet, &r, failover::text(&r))?;
                results.failover = Some(r);
            }
            "array" => {
                signals::catch_interrupts();
                let only = match &args.bench {
                    Bench::Array(a) => a.only.clone(),
                    _ => None,
                };
                let r = array::run(
                    &array::ArrayOptions {
                        only,
                        routing_seconds: common.seconds(1.0, 0.05),
                        wire_seconds: common.seconds(5.0, 2.0),
                        rounds: common.rounds(),
                        smoke: common.smoke,
                    },
                    results.array.as_ref(),
                )?;
                emit(common, quiet, &r, array::text(&r))?;
                results.array = Some(r);
            }
            "forward" => {
                signals::catch_interrupts();
                let r = forward::run(&forward::ForwardOptions {
                    seconds: common.seconds(5.0, 1.0),
                    rounds: common.rounds(),
                    smoke: common.smoke,
                })?;
                emit(common, quiet, &r, forward::text(&r))?;
                if let Some(dir) = &common.out {
                    std::fs::create_dir_all(dir)?;
                    std::fs::write(dir.join("forward.json"), serde_json::to_string_pretty(&r)?)?;
                    std::fs::write(dir.join("forward.md"), forward::markdown(&r))?;
                }
            }
            "clb" => {
                signals::catch_interrupts();
                let (only, requests) = match &args.bench {
                    Bench::Clb(c) => (c.only.clone(), c.requests.clone()),
                    _ => (Vec::new(), None),
                };
                let r = array::clb::run(&array::clb::ClbOptions {
                    seconds: common.seconds(20.0, 3.0),
                    smoke: common.smoke,
                    only,
                    requests,
                })?;
                emit(common, quiet, &r, array::clb::text(&r))?;
                if let Some(dir) = &common.out {
                    array::clb::write(&r, dir)?;
                }
            }
            _ => {}
        }
        // `clb` writes its own files (clb.json, clb.md, clb-herding.svg).
        if let (Some(dir), false) = (&common.out, *bench == "clb") {
            results.write(dir)?;
        }
    }
    if quiet {
        println!("{}", serde_json::to_string_pretty(&results)?);
    }
    Ok(())
}

fn emit<T: serde::Serialize>(common: &Common, quiet: bool, report: &T, text: String) -> Result<()> {
    if quiet {
        return Ok(());
    }
    if common.json {
        println!("{}", serde_json::to_string_pretty(report)?);
    } else {
        print!("{text}");
        println!();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    /// Writes `json` to `path` as shoal does (a temporary file renamed over
    /// it), stamped `at`.
    fn write(path: &std::path::Path, json: &str, at: SystemTime) {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, json).unwrap();
        std::fs::File::options()
            .write(true)
            .open(&tmp)
            .unwrap()
            .set_modified(at)
            .unwrap();
        std::fs::rename(&tmp, path).unwrap();
    }

    #[test]
    fn next_stats_takes_the_next_write_that_has_what_it_looks_for() {
        let dir = std::env::temp_dir().join(format!("shoal-next-stats-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("stats.json");
        let at = |s| SystemTime::UNIX_EPOCH + Duration::from_secs(s);
        // Already there when the wait begins: not the next write.
        write(&path, r#"{"n": 1}"#, at(1_000));
        let writer = {
            let path = path.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(300));
                // Fresh, but without what the caller looks for.
                write(&path, r#"{"m": 0}"#, at(1_001));
                std::thread::sleep(Duration::from_millis(300));
                write(&path, r#"{"n": 2}"#, at(1_002));
            })
        };
        let got = super::next_stats(&path, Duration::from_secs(30), |v| v["n"].as_u64());
        writer.join().unwrap();
        assert_eq!(got.unwrap(), (2, at(1_002)));
        // No write follows: an error, not a stale reading.
        let stale = super::next_stats(&path, Duration::from_millis(100), |v| v["n"].as_u64());
        assert!(stale.is_err(), "{stale:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
