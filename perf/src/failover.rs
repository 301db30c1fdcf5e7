//! `shoal bench failover`: how long a host's share goes unserved after the
//! host dies, measured on real processes in the namespace lab.
//!
//! # What one repetition measures
//!
//! A three-host unicast lab (`scripts/lab up --hosts 3 --period-ms P
//! --tolerance T`) serves a steady stream of new HTTP connections from 300
//! client addresses (`client.py stream`) while 150 long-lived connections
//! (`client.py hold`, pinged every 200 ms) sit on all three hosts. After two
//! seconds h1 (the default host, so ARP for the VIP moves too) gets SIGKILL.
//!
//! * `first_served_s`: from the kill to the end of the first new connection
//!   of one of h1's clients (a source address h1 served before the kill)
//!   that a survivor answered.
//! * `converged_s`: from the kill until both survivors' `shoal query
//!   --json` show a newer epoch, state converged, members {2, 3} (polled
//!   every ~20 ms per survivor; the later survivor counts).
//! * `survivor_resets` / `survivor_failures`: held connections whose host
//!   was a survivor that were reset / failed in any way (target 0). h1's own
//!   held connections die with it and are not counted.
//! * `failed_new`: new connections that failed after the kill (h1's clients
//!   until the survivors take over).
//!
//! h1 is then started again (`scripts/lab start-host 1`, which waits for
//! convergence) for the next repetition. Periods: NLB's 1000 ms with
//! tolerance 5, and 100 and 50 ms with tolerance 3; the bound printed next
//! to each is `(tolerance + 3) × period`, the one `scripts/lab-test`'s
//! failover cases hold the engine to.
//!
//! # The lab is shared
//!
//! Every use of the lab happens while this process holds an exclusive lock
//! on `/tmp/shoal-lab.lock` (the same lock `flock /tmp/shoal-lab.lock
//! scripts/lab-test ...` takes), one period at a time, and it says so while
//! it waits. The lab is brought down before the lock is released.
//! `scripts/lab` runs `$SHOAL_BIN`, set here to the `shoal` binary beside
//! `shoal-bench` ([`crate::shoal_binary`]).

#![forbid(unsafe_code)]

use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::signals::pause;
use crate::stats::median;

/// The lab's lock file (shared with `flock` users of `scripts/lab`).
pub const LAB_LOCK: &str = "/tmp/shoal-lab.lock";
const LAB_DIR: &str = "/tmp/shoal-lab";
const VIP: &str = "10.0.0.100";
const VICTIM: u8 = 1;
const SURVIVORS: [u8; 2] = [2, 3];
const HELD: usize = 150;
/// The target for resets on surviving connections.
pub const TARGET_SURVIVOR_RESETS: u64 = 0;

/// A heartbeat period and its tolerance (missed periods before a host is
/// declared down).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timing {
    /// Heartbeat period, ms.
    pub period_ms: u64,
    /// Missed periods tolerated.
    pub tolerance: u32,
}

impl Timing {
    /// `(tolerance + 3) × period`, in seconds: the bound the lab's
    /// failover cases hold the engine to.
    pub fn bound_s(self) -> f64 {
        f64::from(self.tolerance + 3) * self.period_ms as f64 / 1000.0
    }
}

/// NLB's default, then the sub-second periods.
pub const TIMINGS: [Timing; 3] = [
    Timing {
        period_ms: 1000,
        tolerance: 5,
    },
    Timing {
        period_ms: 100,
        tolerance: 3,
    },
    Timing {
        period_ms: 50,
        tolerance: 3,
    },
];

/// Options of the failover bench.
#[derive(Clone, Debug)]
pub struct FailoverOptions {
    /// Periods to measure.
    pub timings: Vec<Timing>,
    /// Repetitions per period.
    pub repetitions: usize,
}

impl FailoverOptions {
    /// Every period, `repetitions` each; `--smoke`: one repetition at 100 ms.
    pub fn new(smoke: bool, repetitions: usize) -> Self {
        if smoke {
            Self {
                timings: vec![TIMINGS[1]],
                repetitions: 1,
            }
        } else {
            Self {
                timings: TIMINGS.to_vec(),
                repetitions: repetitions.max(1),
            }
        }
    }
}

/// One kill.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FailoverRun {
    /// Kill to the first of h1's clients served again, s (`None`: never
    /// within the stream).
    pub first_served_s: Option<f64>,
    /// Kill to both survivors converged without h1, s (`None`: not within
    /// the wait).
    pub converged_s: Option<f64>,
    /// Held connections on survivors that were reset.
    pub survivor_resets: u64,
    /// Held connections on survivors that failed in any way.
    pub survivor_failures: u64,
    /// Held connections on survivors.
    pub survivor_held: u64,
    /// New connections that failed after the kill.
    pub failed_new: u64,
    /// New connections started in the stream.
    pub new_connections: u64,
}

/// One period over its repetitions.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FailoverPeriod {
    /// Heartbeat period, ms.
    pub period_ms: u64,
    /// Missed periods tolerated.
    pub tolerance: u32,
    /// `(tolerance + 3) × period`, s.
    pub bound_s: f64,
    /// Median over repetitions of `first_served_s` (missing ones excluded).
    pub first_served_median_s: Option<f64>,
    /// Maximum of `first_served_s`.
    pub first_served_max_s: Option<f64>,
    /// Median of `converged_s`.
    pub converged_median_s: Option<f64>,
    /// Maximum of `converged_s`.
    pub converged_max_s: Option<f64>,
    /// Sum of `survivor_resets` over repetitions.
    pub survivor_resets: u64,
    /// Sum of `survivor_failures`.
    pub survivor_failures: u64,
    /// Every repetition that completed.
    pub runs: Vec<FailoverRun>,
    /// Why the period stopped early (the lab would not converge, a client
    /// failed); the runs before it stand.
    pub error: Option<String>,
}

/// The failover bench's report.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FailoverReport {
    /// Hosts in the lab.
    pub hosts: u8,
    /// The host killed.
    pub victim: u8,
    /// Long-lived connections held across each kill.
    pub held_connections: usize,
    /// Repetitions per period.
    pub repetitions: usize,
    /// Per period.
    pub periods: Vec<FailoverPeriod>,
    /// Target for `survivor_resets`.
    pub target_survivor_resets: u64,
}

/// The exclusive lab lock, held until dropped.
#[derive(Debug)]
pub struct LabLock {
    file: File,
}

impl LabLock {
    /// Takes the lab lock, saying so on stderr while another job holds it.
    ///
    /// # Errors
    /// When the lock file cannot be opened or locked.
    pub fn take(who: &str) -> Result<Self> {
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(LAB_LOCK)
            .with_context(|| format!("opening {LAB_LOCK}"))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                eprintln!(
                    "{who}: waiting for the lab lock {LAB_LOCK} (another job is using the namespace lab)"
                );
                let t = Instant::now();
                file.lock().with_context(|| format!("locking {LAB_LOCK}"))?;
                eprintln!(
                    "{who}: got the lab lock after {:.0} s",
                    t.elapsed().as_secs_f64()
                );
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("locking {LAB_LOCK}"));
            }
        }
        Ok(Self { file })
    }
}

impl Drop for LabLock {
    fn drop(&mut self) {
        let _ = self.file.unlock();
    }
}

/// `scripts/lab`: `$SHOAL_LAB_SCRIPT`, else `scripts/lab` under the
/// current directory, else the one next to this crate's sources.
fn lab_script() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("SHOAL_LAB_SCRIPT") {
        return Ok(PathBuf::from(p));
    }
    let here = PathBuf::from("scripts/lab");
    if here.is_file() {
        return Ok(std::fs::canonicalize(here)?);
    }
    let built = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/lab"));
    if built.is_file() {
        return Ok(built);
    }
    bail!("scripts/lab not found: run from the repository or set SHOAL_LAB_SCRIPT")
}

/// A lab command, running the `shoal` beside this binary.
fn lab(args: &[&str]) -> Result<Command> {
    let exe = crate::shoal_binary()?;
    let mut cmd = Command::new(lab_script()?);
    cmd.args(args).env("SHOAL_BIN", exe);
    Ok(cmd)
}

/// Runs a lab command to completion, failing with its stderr's tail.
fn lab_run(args: &[&str]) -> Result<String> {
    let out = lab(args)?
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running scripts/lab {}", args.join(" ")))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = err.lines().rev().take(4).collect();
        bail!(
            "scripts/lab {} failed ({}): {}",
            args.join(" "),
            out.status,
            tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// What `shoal query --json` says of a survivor's view.
#[derive(Clone, Debug, PartialEq, Eq)]
struct View {
    epoch: u64,
    converged: bool,
    members: Vec<u8>,
}

fn query(host: u8) -> Result<View> {
    let exe = crate::shoal_binary()?;
    let out = Command::new("ip")
        .args(["netns", "exec", &format!("shoal-h{host}")])
        .arg(exe)
        .args(["query", "--host", &host.to_string(), "--json"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .context("running shoal query")?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("shoal query on h{host} printed no JSON"))?;
    parse_view(&v).ok_or_else(|| anyhow!("shoal query on h{host}: no view in {v}"))
}

fn parse_view(v: &serde_json::Value) -> Option<View> {
    let body = v.get("body").unwrap_or(v);
    let epoch = body.get("epoch")?.as_u64()?;
    let state = body.get("state")?.as_str()?;
    let members = body
        .get("members")?
        .as_array()?
        .iter()
        .filter_map(|m| m.as_u64().and_then(|m| u8::try_from(m).ok()))
        .collect();
    Some(View {
        epoch,
        converged: state.eq_ignore_ascii_case("converged"),
        members,
    })
}

/// One line of `client.py stream`.
#[derive(Debug, Deserialize)]
struct StreamLine {
    ts: f64,
    ms: f64,
    src: String,
    result: String,
    host: Option<String>,
}

/// The parts of `client.py hold`'s report used here.
#[derive(Debug, Deserialize)]
struct HoldReport {
    failure_events: Vec<HoldFailure>,
    connection_hosts: Option<std::collections::BTreeMap<String, Option<String>>>,
}

#[derive(Debug, Deserialize)]
struct HoldFailure {
    host: Option<String>,
    reason: String,
}

/// From the stream's lines and the kill time: (first served s, failed new
/// connections after the kill, connections).
fn judge_stream(lines: &[StreamLine], kill_ts: f64) -> (Option<f64>, u64, u64) {
    let victim = VICTIM.to_string();
    let orphans: std::collections::BTreeSet<&str> = lines
        .iter()
        .filter(|c| c.result == "ok" && c.ts + c.ms / 1000.0 < kill_ts)
        .filter(|c| c.host.as_deref() == Some(victim.as_str()))
        .map(|c| c.src.as_str())
        .collect();
    let first = lines
        .iter()
        .filter(|c| c.ts >= kill_ts && c.result == "ok" && orphans.contains(c.src.as_str()))
        .filter(|c| c.host.as_deref() != Some(victim.as_str()))
        .map(|c| c.ts + c.ms / 1000.0 - kill_ts)
        .fold(None, |a: Option<f64>, x| Some(a.map_or(x, |a| a.min(x))));
    let failed = lines
        .iter()
        .filter(|c| c.ts >= kill_ts && c.result != "ok")
        .count() as u64;
    (first, failed, lines.len() as u64)
}

/// From the hold report: (resets, failures, held) on survivors.
fn judge_hold(r: &HoldReport) -> (u64, u64, u64) {
    let victim = VICTIM.to_string();
    let on_survivor = |h: &Option<String>| h.as_deref().is_some_and(|h| h != victim);
    let resets = r
        .failure_events
        .iter()
        .filter(|f| on_survivor(&f.host) && f.reason == "reset")
        .count() as u64;
    let failures = r
        .failure_events
        .iter()
        .filter(|f| on_survivor(&f.host))
        .count() as u64;
    let held = r
        .connection_hosts
        .as_ref()
        .map(|m| m.values().filter(|h| on_survivor(h)).count() as u64)
        .unwrap_or(0);
    (resets, failures, held)
}

/// A child that is killed if still running when dropped.
struct Client(Option<Child>);

impl Client {
    fn spawn(args: &[&str]) -> Result<Self> {
        let mut full = vec!["client"];
        full.extend_from_slice(args);
        let child = lab(&full)?
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting the lab client")?;
        Ok(Self(Some(child)))
    }

    /// Sends SIGTERM (client.py then reports), then collects stdout.
    fn finish(mut self, terminate: bool) -> Result<String> {
        let child = self.0.take().ok_or_else(|| anyhow!("client gone"))?;
        if terminate {
            // `lab client` execs `ip netns exec`, which execs python: the
            // child's PID is the client itself.
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
        }
        let out = child.wait_with_output().context("waiting for the client")?;
        if !out.status.success() {
            bail!(
                "lab client failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Polls both survivors until they show a view newer than `before`
/// without the victim; returns seconds after `kill_ts`, per survivor.
fn watch_convergence(before: u64, kill_ts: f64, give_up: f64) -> Vec<Option<f64>> {
    let threads: Vec<_> = SURVIVORS
        .iter()
        .map(|&h| {
            std::thread::spawn(move || {
                while unix_now() - kill_ts < give_up {
                    if let Ok(v) = query(h) {
                        if v.epoch > before && v.converged && v.members == SURVIVORS {
                            return Some(unix_now() - kill_ts);
                        }
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                None
            })
        })
        .collect();
    threads
        .into_iter()
        .map(|t| t.join().ok().flatten())
        .collect()
}

fn one_kill(t: Timing) -> Result<FailoverRun> {
    let bound = t.bound_s();
    let before = 2.0;
    let after = bound + 3.0;
    let rate = if t.period_ms <= 200 { 200 } else { 100 };
    let hold = Client::spawn(&[
        "hold",
        "--vip",
        VIP,
        "--connections",
        &HELD.to_string(),
        "--clients",
        "300",
        "--seconds",
        "600",
        "--interval",
        "0.2",
        "--reply-timeout",
        "2",
        "--per-connection",
    ])?;
    let stream = Client::spawn(&[
        "stream",
        "--vip",
        VIP,
        "--rate",
        &rate.to_string(),
        "--seconds",
        &format!("{}", before + after),
        "--clients",
        "300",
        "--timeout",
        "2",
    ])?;
    pause(before)?;
    let epoch_before = SURVIVORS
        .iter()
        .map(|&h| query(h).map(|v| v.epoch))
        .collect::<Result<Vec<_>>>()?
        .into_iter()
        .max()
        .unwrap_or(0);
    let pid = std::fs::read_to_string(format!("{LAB_DIR}/h{VICTIM}.pid"))
        .context("reading h1's pid file")?
        .trim()
        .to_string();
    let status = Command::new("kill")
        .args(["-KILL", &pid])
        .status()
        .context("running kill")?;
    let kill_ts = unix_now();
    if !status.success() {
        bail!("kill -KILL {pid} (h{VICTIM}'s shoal) failed");
    }
    let converged = watch_convergence(epoch_before, kill_ts, after + 5.0);
    let stream_out = stream.finish(false)?;
    let lines: Vec<StreamLine> = stream_out
        .lines()
        .filter(|l| !l.contains("\"summary\""))
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let hold_out = hold.finish(true)?;
    let hold: HoldReport = serde_json::from_str(
        hold_out
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or(""),
    )
    .context("reading the hold report")?;
    let (first_served_s, failed_new, new_connections) = judge_stream(&lines, kill_ts);
    let (survivor_resets, survivor_failures, survivor_held) = judge_hold(&hold);
    let converged_s = if converged.iter().all(Option::is_some) {
        converged.into_iter().flatten().reduce(f64::max)
    } else {
        None
    };
    Ok(FailoverRun {
        first_served_s,
        converged_s,
        survivor_resets,
        survivor_failures,
        survivor_held,
        failed_new,
        new_connections,
    })
}

fn opt_median(xs: &[Option<f64>]) -> Option<f64> {
    let v: Vec<f64> = xs.iter().flatten().copied().collect();
    (!v.is_empty()).then(|| median(&v))
}

fn opt_max(xs: &[Option<f64>]) -> Option<f64> {
    // A missing figure is worse than any figure: no maximum then.
    if xs.iter().any(Option::is_none) {
        return None;
    }
    xs.iter().flatten().copied().reduce(f64::max)
}

fn summarize(t: Timing, runs: Vec<FailoverRun>, error: Option<String>) -> FailoverPeriod {
    let served: Vec<Option<f64>> = runs.iter().map(|r| r.first_served_s).collect();
    let conv: Vec<Option<f64>> = runs.iter().map(|r| r.converged_s).collect();
    FailoverPeriod {
        period_ms: t.period_ms,
        tolerance: t.tolerance,
        bound_s: t.bound_s(),
        first_served_median_s: opt_median(&served),
        first_served_max_s: opt_max(&served),
        converged_median_s: opt_median(&conv),
        converged_max_s: opt_max(&conv),
        survivor_resets: runs.iter().map(|r| r.survivor_resets).sum(),
        survivor_failures: runs.iter().map(|r| r.survivor_failures).sum(),
        runs,
        error,
    }
}

/// One period: lab up, `repetitions` kills, lab down, all under the lab
/// lock. A failure inside the lab (it will not converge, a client fails)
/// ends the period with its error recorded, keeping the runs before it.
fn period(t: Timing, repetitions: usize) -> Result<FailoverPeriod> {
    let _lock = LabLock::take("failover")?;
    let mut runs = Vec::new();
    let result = (|| {
        eprintln!(
            "failover: lab up, 3 hosts, period {} ms, tolerance {}",
            t.period_ms, t.tolerance
        );
        lab_run(&[
            "up",
            "--hosts",
            "3",
            "--mode",
            "unicast",
            "--period-ms",
            &t.period_ms.to_string(),
            "--tolerance",
            &t.tolerance.to_string(),
        ])?;
        for k in 0..repetitions {
            if k > 0 {
                lab_run(&["start-host", &VICTIM.to_string()])?;
                lab_run(&["wait", "--members", "1,2,3", "--timeout", "60"])?;
            }
            let r = one_kill(t)?;
            eprintln!(
                "failover: {} ms #{}: served again {}, converged {}, survivor resets {} of {} held, {} new connections failed",
                t.period_ms,
                k + 1,
                secs(r.first_served_s),
                secs(r.converged_s),
                r.survivor_resets,
                r.survivor_held,
                r.failed_new
            );
            runs.push(r);
        }
        Ok::<(), anyhow::Error>(())
    })();
    let _ = lab_run(&["down"]);
    let error = match result {
        Ok(()) => None,
        Err(e) => {
            // An interrupted bench stops; a lab that misbehaves is a finding.
            if e.to_string() == "interrupted" {
                return Err(e);
            }
            eprintln!("failover: {} ms: stopped early: {e:#}", t.period_ms);
            Some(format!("{e:#}"))
        }
    };
    Ok(summarize(t, runs, error))
}

fn secs(x: Option<f64>) -> String {
    x.map(|x| format!("{x:.3} s"))
        .unwrap_or_else(|| "never".into())
}

/// Runs the failover bench.
///
/// # Errors
/// When the lab cannot be brought up, a client fails, or h1 cannot be
/// killed or restarted; never because of a figure.
pub fn run(opts: &FailoverOptions) -> Result<FailoverReport> {
    let periods = opts
        .timings
        .iter()
        .map(|&t| period(t, opts.repetitions))
        .collect::<Result<Vec<_>>>()?;
    Ok(FailoverReport {
        hosts: 3,
        victim: VICTIM,
        held_connections: HELD,
        repetitions: opts.repetitions,
        periods,
        target_survivor_resets: TARGET_SURVIVOR_RESETS,
    })
}

/// Text table of a report.
pub fn text(r: &FailoverReport) -> String {
    let mut s = format!(
        "failover: SIGKILL of h{} of {}, {} repetition(s) per period, {} held connections\n",
        r.victim, r.hosts, r.repetitions, r.held_connections
    );
    s += &format!(
        "{:>9} {:>4} {:>7} {:>22} {:>22} {:>15}\n",
        "period", "tol", "bound", "served again med/max", "converged med/max", "survivor resets"
    );
    for p in &r.periods {
        s += &format!(
            "{:>6} ms {:>4} {:>6.2}s {:>22} {:>22} {:>15}\n",
            p.period_ms,
            p.tolerance,
            p.bound_s,
            format!(
                "{} / {}",
                secs(p.first_served_median_s),
                secs(p.first_served_max_s)
            ),
            format!(
                "{} / {}",
                secs(p.converged_median_s),
                secs(p.converged_max_s)
            ),
            format!("{} ({} failed)", p.survivor_resets, p.survivor_failures)
        );
        if let Some(e) = &p.error {
            s += &format!("          stopped early: {e}\n");
        }
    }
    s
}

/// The markdown section of a report.
pub fn markdown(r: &FailoverReport) -> String {
    let mut s = format!(
        "## Failover\n\nThree-host unicast lab, SIGKILL of h{} (the default host) under a \
         stream of new connections from 300 clients and {} long-lived connections; {} \
         repetition(s) per period. *Served again*: kill to the first new connection of one \
         of h{}'s clients answered by a survivor. *Converged*: kill to both survivors' \
         `shoal query --json` showing a newer epoch, converged, without h{}. Bound: \
         (tolerance + 3) × period.\n\n\
         | period | tolerance | bound | served again, median | max | converged, median | max | survivor resets | survivor failures |\n\
         |---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        r.victim, r.held_connections, r.repetitions, r.victim, r.victim
    );
    let mut notes = String::new();
    for p in &r.periods {
        if let Some(e) = &p.error {
            notes += &format!(
                "- {} ms: stopped after {} repetition(s): {}\n",
                p.period_ms,
                p.runs.len(),
                e.chars().take(400).collect::<String>().replace('|', "/")
            );
        }
        s += &format!(
            "| {} ms | {} | {:.2} s | {} | {} | {} | {} | {} | {} |\n",
            p.period_ms,
            p.tolerance,
            p.bound_s,
            secs(p.first_served_median_s),
            secs(p.first_served_max_s),
            secs(p.converged_median_s),
            secs(p.converged_max_s),
            p.survivor_resets,
            p.survivor_failures
        );
    }
    if !notes.is_empty() {
        s += "\n";
        s += &notes;
    }
    s += &format!(
        "\nTarget: {} resets on surviving connections.\n\n![failover](failover.svg)\n\n",
        r.target_survivor_resets
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(ts: f64, src: &str, result: &str, host: Option<&str>) -> StreamLine {
        StreamLine {
            ts,
            ms: 10.0,
            src: src.into(),
            result: result.into(),
            host: host.map(Into::into),
        }
    }

    #[test]
    fn first_served_counts_only_the_victims_clients_on_survivors() {
        let lines = vec![
            line(1.0, "a", "ok", Some("1")),
            line(1.0, "b", "ok", Some("2")),
            line(10.1, "b", "ok", Some("2")),
            line(10.2, "a", "timeout", None),
            line(10.5, "a", "ok", Some("3")),
        ];
        let (first, failed, n) = judge_stream(&lines, 10.0);
        assert!((first.expect("served") - 0.51).abs() < 1e-9);
        assert_eq!((failed, n), (1, 5));
        let (none, _, _) = judge_stream(&lines[..3], 10.0);
        assert_eq!(none, None);
    }

    #[test]
    fn survivor_failures_exclude_the_victims_connections() {
        let r: HoldReport = serde_json::from_str(
            r#"{"failure_events":[{"host":"1","reason":"timeout"},{"host":"2","reason":"reset"},
                {"host":"3","reason":"timeout"},{"host":null,"reason":"connect_reset"}],
               "connection_hosts":{"0":"1","1":"2","2":"3","3":null}}"#,
        )
        .expect("json");
        assert_eq!(judge_hold(&r), (1, 2, 2));
    }

    #[test]
    fn views_are_read_from_query_bodies() {
        let v = serde_json::json!({"body": {"epoch": 7, "state": "Converged", "members": [2, 3]}});
        assert_eq!(
            parse_view(&v),
            Some(View {
                epoch: 7,
                converged: true,
                members: vec![2, 3]
            })
        );
        assert_eq!(parse_view(&serde_json::json!({"body": {}})), None);
    }

    #[test]
    fn summaries_take_medians_and_refuse_a_max_over_missing_runs() {
        let run = |s: Option<f64>, r: u64| FailoverRun {
            first_served_s: s,
            converged_s: Some(1.0),
            survivor_resets: r,
            survivor_failures: r,
            survivor_held: 100,
            failed_new: 0,
            new_connections: 100,
        };
        let p = summarize(
            TIMINGS[1],
            vec![run(Some(0.3), 0), run(Some(0.5), 1), run(Some(0.4), 0)],
            None,
        );
        assert_eq!(p.first_served_median_s, Some(0.4));
        assert_eq!(p.first_served_max_s, Some(0.5));
        assert_eq!(p.survivor_resets, 1);
        assert!((p.bound_s - 0.6).abs() < 1e-9);
        let q = summarize(
            TIMINGS[1],
            vec![run(None, 0), run(Some(0.5), 0)],
            Some("lab".into()),
        );
        assert_eq!(q.first_served_max_s, None);
        assert_eq!(q.first_served_median_s, Some(0.5));
    }
}
