//! `shoal bench clb`: response-time balancing to a back-end tier, shoal's
//! four policies against HAProxy `leastconn` and nginx `least_conn`, under
//! the same open load, and a simulation of CLB's herding.
//!
//! # The rig
//!
//! Three network namespaces of its own, joined by two veth pairs
//! (leftovers of a killed run, found by these exact names, are removed at
//! start; everything is removed when the run ends), held under the lab lock
//! (`/tmp/shoal-lab.lock`) while they exist:
//!
//! * `shoal-bc-cli` (10.91.0.1/24): the load generator,
//!   `scripts/lab.d/clb.py load`: open loop, request k due at start + k/R
//!   whatever happened to the others, latency measured from its due time
//!   (no coordinated omission; `wrk2` is not in Debian).
//! * `shoal-bc-fe` (10.91.0.2/24 toward the client, 10.91.1.1/24 toward
//!   the back ends): one frontend at a time, alone on the last CPU.
//! * `shoal-bc-be` (10.91.1.11 to .14): four back ends,
//!   `scripts/lab.d/clb.py serve --workers 1` (one request at a time, the
//!   rest queue): three answer in [`FAST_MS`], one in 5× that, and one of
//!   the fast ones freezes for 2 s every 10 s. Their nominal capacity is
//!   the sum of 1000/service time, the freezing one counted for 80% of the
//!   time; the offered load is 70% of it. While the one server is frozen
//!   the other three have 550 requests/s of nominal capacity for the
//!   525 offered (95%, and the Python servers fall short of nominal):
//!   whatever the frontend, requests due then queue on the healthy
//!   servers. Each case therefore also reports the p99 of the requests due
//!   while the server was frozen and of the rest (`p99_freeze_ms`,
//!   `p99_rest_ms`; the load generator knows the freezing server's start
//!   time from its log).
//!
//! # The frontends
//!
//! * `shoal`, one run per policy (`clb`, `round_robin`, `least_request`,
//!   `peak_ewma`): `shoal run` as the one host of a cluster with one
//!   `route = "clb"` service over the four back ends, probes `GET /health`
//!   every 200 ms (100 ms timeout).
//! * `haproxy` (Debian's): `balance leastconn`, `option httpchk GET
//!   /health` every 200 ms (fall 1, rise 1, 100 ms timeout), one thread.
//! * `nginx` (Debian's): `least_conn`, upstream keep-alive, one worker
//!   (passive health only: open-source nginx has no active checks).
//! * The baseline: shoal `peak_ewma` with all four back ends healthy and
//!   fast, the target the issue names (p99 within 1.3× of it).
//!
//! # The herding plot
//!
//! A simulation in virtual time, not a measurement: sixteen front ends,
//! each with its own [`Balancer`] over the same four single-worker servers
//! (alike, 4 ms each), requests arriving at 70% of capacity spread over the front
//! ends, all front ends polling at the same instants every 200 ms and
//! seeing the same response times (a probe waits in the server's queue).
//! Under `clb` every front end starts each poll at the same "fastest"
//! server, whose queue spikes; under `peak_ewma` the queues stay even. The
//! plot (`clb-herding.svg`) shows each server's queue over the first two
//! seconds for both.
//!
//! # Options
//!
//! `--only` runs some cases, by policy name (`healthy` for the baseline,
//! `leastconn` for HAProxy, `least_conn` for nginx): quicker rounds while
//! working on a policy, but the figures that count are those of one full
//! run, side by side. `--requests DIR` keeps every request of every case
//! (`<frontend>-<policy>.requests`: due time, latency, status, the back
//! end that served it for shoal, and whether it was due during a freeze),
//! to see where the slow ones sat.
//!
//! A bench, not a test: it fails only when something is broken, never on
//! a figure.

#![forbid(unsafe_code)]

use std::collections::{BTreeMap, BinaryHeap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use plotters::prelude::*;
use serde::{Deserialize, Serialize};
use shoal_dataplane::array::{Balancer, BalancerConfig, Policy, Rng};

use crate::failover::LabLock;
use crate::rig::{in_ns, sh, write_in_ns, Proc};
use crate::signals::pause;

const CLI_NS: &str = "shoal-bc-cli";
const FE_NS: &str = "shoal-bc-fe";
const BE_NS: &str = "shoal-bc-be";
const FE_ADDR: &str = "10.91.0.2";
const VIP: &str = "10.91.0.100";
const BACKENDS: [&str; 4] = ["10.91.1.11", "10.91.1.12", "10.91.1.13", "10.91.1.14"];
/// A fast back end's service time.
pub const FAST_MS: f64 = 4.0;
/// Which back end is slow (5×) and which freezes.
const SLOW: usize = 2;
const FREEZING: usize = 3;
const PORT: u16 = 8080;

/// One frontend and policy under the load.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ClbCase {
    /// `shoal`, `haproxy` or `nginx`.
    pub frontend: String,
    /// The policy (`peak_ewma (all healthy)` for the baseline).
    pub policy: String,
    /// Answered requests per second.
    pub rps: f64,
    /// Latency percentiles from each request's due time, ms (a failed
    /// request counts at the client's 5 s timeout).
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// p99 of the requests due while the freezing back end was frozen
    /// (2 s of every 10: a fifth of the requests), ms.
    #[serde(default)]
    pub p99_freeze_ms: Option<f64>,
    /// p99 of the other requests, ms.
    #[serde(default)]
    pub p99_rest_ms: Option<f64>,
    /// Median of the requests due while the freezing back end was frozen,
    /// ms: the freeze's queueing, not a tail.
    #[serde(default)]
    pub p50_freeze_ms: Option<f64>,
    /// Share of the requests slower than 1.3× the all-healthy p99 (the
    /// issue's target; a p99 within it needs this at most 0.01), when the
    /// baseline ran first.
    #[serde(default)]
    pub over_target_share: Option<f64>,
    /// Requests sent.
    pub sent: u64,
    /// Requests answered 200.
    pub ok: u64,
    /// Share of the answered requests per back end (shoal only: from
    /// `x-shoal-served-by`).
    pub shares: BTreeMap<String, f64>,
    /// Answers by status (or client error name).
    pub statuses: BTreeMap<String, u64>,
    /// Why it did not run.
    pub not_run: Option<String>,
}

/// The simulation's summary per policy.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct HerdingCase {
    /// Policy.
    pub policy: String,
    /// Largest queue any server reached.
    pub max_queue: u32,
    /// Simulated p99 latency, ms.
    pub p99_ms: f64,
    /// Share of requests sent in the 10 ms after a poll that went to the
    /// single most chosen server of that window, averaged over polls.
    pub herd_share: f64,
}

/// `clb.json`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Default)]
pub struct ClbReport {
    /// The machine.
    pub machine: Option<crate::machine::Machine>,
    /// Offered load, requests/s.
    pub rate: f64,
    /// The back ends' nominal capacity, requests/s.
    pub capacity: f64,
    /// Seconds per case.
    pub seconds: f64,
    /// Every case.
    pub cases: Vec<ClbCase>,
    /// The herding simulation (virtual time).
    pub herding: Vec<HerdingCase>,
}

/// Options.
#[derive(Clone, Debug)]
pub struct ClbOptions {
    /// Seconds of load per case.
    pub seconds: f64,
    /// A short run for CI.
    pub smoke: bool,
    /// Run only the cases with these policy names (`healthy` for the
    /// baseline, `leastconn` for HAProxy, `least_conn` for nginx); empty:
    /// every case.
    pub only: Vec<String>,
    /// Write every request of every case into this directory
    /// (`<frontend>-<policy>.requests`, the load generator's `--dump`).
    pub requests: Option<PathBuf>,
}

impl ClbOptions {
    fn wants(&self, policy: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|o| o == policy)
    }
}

/// The back ends' nominal capacity, requests/s.
pub fn capacity() -> f64 {
    let fast = 1000.0 / FAST_MS;
    2.0 * fast + fast / 5.0 + 0.8 * fast
}

fn remove_leftovers() {
    for ns in [CLI_NS, FE_NS, BE_NS] {
        if !Path::new("/run/netns").join(ns).exists() {
            continue;
        }
        if let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                if pid.parse::<u32>().is_ok() {
                    let _ = Command::new("kill").args(["-KILL", pid]).status();
                }
            }
        }
        let _ = Command::new("ip").args(["netns", "del", ns]).status();
    }
}

struct Net {
    dir: PathBuf,
    _lock: LabLock,
}

impl Net {
    fn up() -> Result<Net> {
        let lock = LabLock::take("bench clb")?;
        remove_leftovers();
        let dir = std::env::temp_dir().join(format!("shoal-bench-clb-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let net = Net { dir, _lock: lock };
        let ip = |args: &[&str]| sh(Command::new("ip").args(args));
        for ns in [CLI_NS, FE_NS, BE_NS] {
            ip(&["netns", "add", ns])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        ip(&[
            "-n", CLI_NS, "link", "add", "sbccli0", "type", "veth", "peer", "name", "sbcfe0",
            "netns", FE_NS,
        ])?;
        ip(&[
            "-n", FE_NS, "link", "add", "sbcfe1", "type", "veth", "peer", "name", "sbcbe0",
            "netns", BE_NS,
        ])?;
        let mut addrs = vec![
            (CLI_NS, "sbccli0", "10.91.0.1/24".to_string()),
            (FE_NS, "sbcfe0", format!("{FE_ADDR}/24")),
            (FE_NS, "sbcfe1", "10.91.1.1/24".to_string()),
        ];
        for b in BACKENDS {
            addrs.push((BE_NS, "sbcbe0", format!("{b}/24")));
        }
        for (ns, dev, addr) in &addrs {
            ip(&["-n", ns, "addr", "add", addr, "dev", dev])?;
        }
        for (ns, dev) in [
            (CLI_NS, "sbccli0"),
            (FE_NS, "sbcfe0"),
            (FE_NS, "sbcfe1"),
            (BE_NS, "sbcbe0"),
        ] {
            ip(&["-n", ns, "link", "set", dev, "up"])?;
            let _ = sh(in_ns(ns, "ethtool").args([
                "-K", dev, "tx", "off", "tso", "off", "gso", "off", "gro", "off",
            ]));
        }
        ip(&["-n", CLI_NS, "route", "add", VIP, "via", FE_ADDR])?;
        for ns in [CLI_NS, FE_NS, BE_NS] {
            write_in_ns(ns, "/proc/sys/net/ipv4/tcp_tw_reuse", "1")?;
        }
        Ok(net)
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        remove_leftovers();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn lab_script() -> Result<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let p = root.join("scripts/lab.d/clb.py");
    if !p.is_file() {
        bail!("no {}", p.display());
    }
    Ok(p)
}

/// Starts the four back ends (`healthy`: all fast, none freezing).
fn backends(dir: &Path, healthy: bool) -> Result<Vec<Proc>> {
    let script = lab_script()?;
    let mut out = Vec::new();
    for (i, b) in BACKENDS.iter().enumerate() {
        let mut c = in_ns(BE_NS, "python3");
        let delay = if !healthy && i == SLOW {
            5.0 * FAST_MS
        } else {
            FAST_MS
        };
        c.arg(&script).args([
            "serve",
            "--listen",
            &format!("{b}:80"),
            "--name",
            &format!("{b}:80"),
            "--workers",
            "1",
            "--delay-ms",
            &delay.to_string(),
        ]);
        if !healthy && i == FREEZING {
            c.args(["--freeze-every", "10", "--freeze-for", "2"]);
        }
        out.push(Proc::start(
            &format!("backend {b}"),
            c,
            &dir.join(format!("be{i}.log")),
        )?);
    }
    wait_port(BE_NS, 80)?;
    pause(0.3)?;
    Ok(out)
}

/// The epoch a back end started (its log's `started` line).
fn started_epoch(log: &Path) -> Option<f64> {
    let text = std::fs::read_to_string(log).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("started "))
        .and_then(|v| v.trim().parse().ok())
}

fn wait_port(ns: &str, port: u16) -> Result<()> {
    for _ in 0..100 {
        let out = sh(in_ns(ns, "ss").args(["-Hltn", &format!("sport = :{port}")]))?;
        if !out.trim().is_empty() {
            return Ok(());
        }
        pause(0.1)?;
    }
    bail!("nothing listens on port {port} in {ns}")
}

fn shoal_conf(dir: &Path, cpu: usize, policy: Policy) -> String {
    let mut text = format!(
        "# shoal bench clb: one host, one clb service over four back ends.\n\
         [cluster]\nvips = [\"{VIP}\"]\nkey_file = \"{}\"\n\n\
         [[host]]\nid = 1\nname = \"frontend.bench.example\"\ninterface = \"sbcfe0\"\n\
         dedicated = [\"{FE_ADDR}/24\"]\n\
         [host.cores]\ncontrol = {cpu}\npoll = [{{ core = {cpu}, queues = [0] }}]\nproxy = [{cpu}]\n\n\
         [[rule]]\nports = [{PORT}, {PORT}]\nprotocol = \"tcp\"\naffinity = \"none\"\n\n\
         [[service]]\nname = \"bench\"\nport = {PORT}\nroute = \"clb\"\npolicy = \"{}\"\n\
         probe = \"GET /health\"\n",
        dir.join("cluster.key").display(),
        policy.name()
    );
    for b in BACKENDS {
        let _ = write!(text, "[[service.backend]]\naddress = \"{b}:80\"\n");
    }
    text
}

fn haproxy_conf() -> String {
    let mut servers = String::new();
    for (i, b) in BACKENDS.iter().enumerate() {
        let _ = writeln!(servers, "  server b{} {b}:80 check", i + 1);
    }
    format!(
        "global\n  nbthread 1\n  maxconn 4000\ndefaults\n  mode http\n  timeout connect 2s\n\
         timeout client 30s\n  timeout server 30s\n  timeout check 100ms\n  http-reuse always\n\
         frontend fe\n  bind {FE_ADDR}:{PORT}\n  default_backend be\n\
         backend be\n  balance leastconn\n  option httpchk GET /health\n\
         default-server inter 200ms fall 1 rise 1\n{servers}"
    )
}

fn nginx_conf(dir: &Path) -> String {
    let d = dir.display();
    let mut servers = String::new();
    for b in BACKENDS {
        let _ = writeln!(servers, "    server {b}:80;");
    }
    format!(
        "worker_processes 1;\ndaemon off;\nuser root;\npid {d}/nginx.pid;\nerror_log {d}/nginx-error.log warn;\n\
         events {{ worker_connections 8192; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {d}/n-body;\n  proxy_temp_path {d}/n-proxy;\n\
         fastcgi_temp_path {d}/n-fcgi;\n  uwsgi_temp_path {d}/n-uwsgi;\n  scgi_temp_path {d}/n-scgi;\n\
         upstream be {{\n    least_conn;\n{servers}    keepalive 64;\n  }}\n\
         server {{\n    listen {FE_ADDR}:{PORT};\n    location / {{\n      proxy_pass http://be;\n\
         proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n    }}\n  }}\n}}\n"
    )
}

fn write_key(path: &Path) -> Result<()> {
    use std::io::Read as _;
    use std::os::unix::fs::PermissionsExt as _;
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    std::fs::write(path, format!("{hex}\n"))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(())
}

/// Starts a frontend; returns it and the address to load.
fn frontend(dir: &Path, name: &str, policy: Option<Policy>, cpu: usize) -> Result<(Proc, String)> {
    let pinned = |program: &str| {
        let mut c = in_ns(FE_NS, "taskset");
        c.args(["-c", &cpu.to_string(), program]);
        c
    };
    let log = dir.join(format!("{name}.log"));
    let (cmd, addr) = match (name, policy) {
        ("haproxy", _) => {
            let conf = dir.join("haproxy.cfg");
            std::fs::write(&conf, haproxy_conf())?;
            let mut c = pinned("haproxy");
            c.arg("-db").arg("-f").arg(&conf);
            (c, FE_ADDR)
        }
        ("nginx", _) => {
            let conf = dir.join("nginx.conf");
            std::fs::write(&conf, nginx_conf(dir))?;
            let mut c = pinned("nginx");
            c.arg("-e")
                .arg(dir.join("nginx-error.log"))
                .arg("-c")
                .arg(&conf);
            (c, FE_ADDR)
        }
        (_, Some(policy)) => {
            let bin = crate::shoal_binary()?;
            write_key(&dir.join("cluster.key"))?;
            let conf = dir.join("shoal.toml");
            std::fs::write(&conf, shoal_conf(dir, cpu, policy))?;
            let mut c = in_ns(FE_NS, "env");
            c.arg("NO_COLOR=1")
                .arg(bin)
                .arg("run")
                .arg("--config")
                .arg(&conf)
                .args(["--host", "1", "--static-view"]);
            (c, VIP)
        }
        _ => bail!("unknown frontend {name}"),
    };
    let mut proc = Proc::start(name, cmd, &log)?;
    for _ in 0..100 {
        let out = sh(in_ns(FE_NS, "ss").args(["-Hltn", &format!("sport = :{PORT}")]))?;
        if !out.trim().is_empty() {
            // Probes fill the tables.
            pause(1.0)?;
            return Ok((proc, addr.to_string()));
        }
        if !proc.alive() {
            bail!("{name} exited at start: {}", proc.log_tail());
        }
        pause(0.1)?;
    }
    bail!("{name} does not listen on {PORT}: {}", proc.log_tail())
}

#[derive(Deserialize)]
struct LoadOut {
    sent: u64,
    ok: u64,
    rps: f64,
    p50_ms: Option<f64>,
    p99_ms: Option<f64>,
    p999_ms: Option<f64>,
    served_by: BTreeMap<String, u64>,
    statuses: BTreeMap<String, u64>,
    #[serde(default)]
    p99_freeze_ms: Option<f64>,
    #[serde(default)]
    p99_rest_ms: Option<f64>,
    #[serde(default)]
    p50_freeze_ms: Option<f64>,
    #[serde(default)]
    over_share: Option<f64>,
}

fn load(
    addr: &str,
    rate: f64,
    seconds: f64,
    cpu: usize,
    freeze_started: Option<f64>,
    over_ms: Option<f64>,
    dump: Option<&Path>,
) -> Result<LoadOut> {
    let script = lab_script()?;
    let mut c = in_ns(CLI_NS, "taskset");
    c.args(["-c", &cpu.to_string(), "python3"])
        .arg(script)
        .args([
            "load",
            "--url",
            &format!("http://{addr}:{PORT}/"),
            "--rate",
            &rate.to_string(),
            "--seconds",
            &seconds.to_string(),
            "--timeout",
            "5",
        ]);
    if let Some(epoch) = freeze_started {
        c.args(["--freeze-started", &format!("{epoch:.6}")]);
    }
    if let Some(ms) = over_ms {
        c.args(["--over", &format!("{ms:.3}")]);
    }
    if let Some(path) = dump {
        c.arg("--dump").arg(path);
    }
    let out = sh(&mut c).context("the load generator")?;
    let line = out.lines().last().unwrap_or_default();
    serde_json::from_str(line).with_context(|| format!("the load generator's report: {line}"))
}

#[allow(clippy::too_many_arguments)]
fn run_case(
    dir: &Path,
    freeze_started: Option<f64>,
    over_ms: Option<f64>,
    name: &str,
    policy: Option<Policy>,
    label: &str,
    opts: &ClbOptions,
    rate: f64,
) -> ClbCase {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let fe_cpu = cpus - 1;
    let mut case = ClbCase {
        frontend: name.into(),
        policy: label.into(),
        rps: 0.0,
        p50_ms: 0.0,
        p99_ms: 0.0,
        p999_ms: 0.0,
        p99_freeze_ms: None,
        p99_rest_ms: None,
        p50_freeze_ms: None,
        over_target_share: None,
        sent: 0,
        ok: 0,
        shares: BTreeMap::new(),
        statuses: BTreeMap::new(),
        not_run: None,
    };
    let result = (|| -> Result<LoadOut> {
        let (proc, addr) = frontend(dir, name, policy, fe_cpu)?;
        let dump = opts.requests.as_ref().map(|d| {
            let file: String = format!("{name}-{label}.requests")
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                        c
                    } else {
                        '_'
                    }
                })
                .collect();
            d.join(file)
        });
        let out = load(
            &addr,
            rate,
            opts.seconds,
            0,
            freeze_started,
            over_ms,
            dump.as_deref(),
        );
        let _ = proc.stop(Duration::from_secs(3));
        out
    })();
    match result {
        Ok(o) => {
            let total: u64 = o.served_by.values().sum();
            case.rps = o.rps;
            case.p50_ms = o.p50_ms.unwrap_or(0.0);
            case.p99_ms = o.p99_ms.unwrap_or(0.0);
            case.p999_ms = o.p999_ms.unwrap_or(0.0);
            case.p99_freeze_ms = o.p99_freeze_ms;
            case.p99_rest_ms = o.p99_rest_ms;
            case.p50_freeze_ms = o.p50_freeze_ms;
            case.over_target_share = o.over_share;
            case.sent = o.sent;
            case.ok = o.ok;
            case.statuses = o.statuses.clone();
            if total > 0 {
                case.shares = o
                    .served_by
                    .iter()
                    .map(|(k, v)| (k.clone(), *v as f64 / total as f64))
                    .collect();
            }
        }
        Err(e) => case.not_run = Some(format!("{e:#}")),
    }
    case
}

/// Runs the bench.
///
/// # Errors
/// When the rig cannot be built (never on a figure).
pub fn run(opts: &ClbOptions) -> Result<ClbReport> {
    for tool in ["ip", "haproxy", "nginx", "python3", "taskset"] {
        if sh(Command::new("sh").args(["-c", &format!("command -v {tool}")])).is_err() {
            bail!("missing tool {tool}; scripts/bench installs it");
        }
    }
    let herding = simulate_all();
    let capacity = capacity();
    let rate = (0.7 * capacity).round();
    if let Some(d) = &opts.requests {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    let net = Net::up()?;
    let dir = net.dir.clone();
    let mut cases = Vec::new();
    if opts.wants("healthy") {
        let healthy = backends(&dir, true)?;
        cases.push(run_case(
            &dir,
            None,
            None,
            "shoal",
            Some(Policy::PeakEwma),
            "peak_ewma (all healthy)",
            opts,
            rate,
        ));
        for p in healthy {
            let _ = p.stop(Duration::from_secs(2));
        }
    }
    // The target: a p99 within 1.3x the all-healthy one.
    let over_ms = cases
        .first()
        .filter(|c| c.not_run.is_none() && c.p99_ms > 0.0)
        .map(|c| 1.3 * c.p99_ms);
    let _mixed = backends(&dir, false)?;
    let freeze_started = started_epoch(&dir.join(format!("be{FREEZING}.log")));
    for (name, policy) in [
        ("shoal", Some(Policy::Clb)),
        ("shoal", Some(Policy::RoundRobin)),
        ("shoal", Some(Policy::LeastRequest)),
        ("shoal", Some(Policy::PeakEwma)),
        ("haproxy", None),
        ("nginx", None),
    ] {
        let label = match (name, policy) {
            (_, Some(p)) => p.name().to_string(),
            ("haproxy", None) => "leastconn".into(),
            _ => "least_conn".into(),
        };
        if !opts.wants(&label) {
            continue;
        }
        cases.push(run_case(
            &dir,
            freeze_started,
            over_ms,
            name,
            policy,
            &label,
            opts,
            rate,
        ));
    }
    drop(_mixed);
    drop(net);
    Ok(ClbReport {
        machine: Some(crate::machine::Machine::describe()),
        rate,
        capacity,
        seconds: opts.seconds,
        cases,
        herding,
    })
}

// ---------------------------------------------------------------- simulation

/// Simulated servers' service times, ms: alike, so that any imbalance is
/// the policy's.
const SIM_SERVICE_MS: [u64; 4] = [4, 4, 4, 4];
const SIM_FRONTS: usize = 16;
const SIM_MS: u64 = 20_000;
const SIM_PLOT_MS: u64 = 2_000;
const SIM_POLL_MS: u64 = 200;

/// One simulated run: per-5 ms queue lengths for the plot, and its summary.
fn simulate(policy: Policy) -> (Vec<[u32; 4]>, HerdingCase) {
    const MS: u64 = 1_000_000;
    let capacity: f64 = SIM_SERVICE_MS.iter().map(|s| 1.0 / *s as f64).sum();
    let per_ms = 0.7 * capacity;
    let mut fronts: Vec<Balancer> = (0..SIM_FRONTS)
        .map(|k| {
            Balancer::new(
                BalancerConfig {
                    policy,
                    ..BalancerConfig::default()
                },
                &[1, 1, 1, 1],
                k as u64 + 11,
                0,
            )
        })
        .collect();
    let mut rng = Rng::new(99);
    let mut busy_until = [0u64; 4];
    // (completion ms, front, server, latency ms), earliest first.
    let mut done: BinaryHeap<std::cmp::Reverse<(u64, usize, usize, u64)>> = BinaryHeap::new();
    let mut queue = [0u32; 4];
    let mut samples = Vec::new();
    let mut latencies = Vec::new();
    let mut max_queue = 0;
    let mut herd = Vec::new();
    let mut window = [0u32; 4];
    let mut carry = 0.0;
    for t in 0..SIM_MS {
        while let Some(std::cmp::Reverse((at, f, s, lat))) = done.peek().copied() {
            if at > t {
                break;
            }
            done.pop();
            queue[s] -= 1;
            fronts[f].finish(s, lat * MS, true, at * MS);
        }
        if t % SIM_POLL_MS == 0 {
            if t > 0 {
                let total: u32 = window.iter().sum();
                if total > 0 {
                    herd.push(f64::from(*window.iter().max().unwrap_or(&0)) / f64::from(total));
                }
            }
            window = [0; 4];
            // Every front end probes at the same instant: a probe waits in
            // the queue, then is served.
            let mut order: [usize; 4] = [0, 1, 2, 3];
            let rt = |s: usize| busy_until[s].saturating_sub(t) + SIM_SERVICE_MS[s];
            order.sort_by_key(|&s| (rt(s), s));
            for f in &mut fronts {
                f.set_table(&order);
            }
        }
        carry += per_ms;
        while carry >= 1.0 {
            carry -= 1.0;
            let f = (rng.next_u64() % SIM_FRONTS as u64) as usize;
            let Some(s) = fronts[f].pick(t * MS, 0) else {
                continue;
            };
            fronts[f].start(s, t * MS);
            let start = busy_until[s].max(t);
            busy_until[s] = start + SIM_SERVICE_MS[s];
            let lat = busy_until[s] - t;
            latencies.push(lat);
            queue[s] += 1;
            max_queue = max_queue.max(queue[s]);
            if t % SIM_POLL_MS < 10 {
                window[s] += 1;
            }
            done.push(std::cmp::Reverse((busy_until[s], f, s, lat)));
        }
        if t < SIM_PLOT_MS && t % 5 == 0 {
            samples.push(queue);
        }
    }
    latencies.sort_unstable();
    let p99 = latencies
        .get(latencies.len() * 99 / 100)
        .copied()
        .unwrap_or(0);
    let herd_share = if herd.is_empty() {
        0.0
    } else {
        herd.iter().sum::<f64>() / herd.len() as f64
    };
    (
        samples,
        HerdingCase {
            policy: policy.name().into(),
            max_queue,
            p99_ms: p99 as f64,
            herd_share,
        },
    )
}

fn simulate_all() -> Vec<HerdingCase> {
    [Policy::Clb, Policy::PeakEwma, Policy::RoundRobin]
        .into_iter()
        .map(|p| simulate(p).1)
        .collect()
}

/// Writes `clb-herding.svg`: each simulated server's queue over the first
/// two seconds under `clb` (top) and `peak_ewma` (bottom).
///
/// # Errors
/// When the file cannot be written.
pub fn herding_svg(path: &Path) -> Result<()> {
    let (w, h) = (900u32, 560u32);
    let root = SVGBackend::new(path, (w, h)).into_drawing_area();
    let err = |e: DrawingAreaErrorKind<_>| anyhow::anyhow!("drawing {}: {e:?}", path.display());
    root.fill(&WHITE).map_err(err)?;
    let colors = [
        RGBColor(0x1f, 0x77, 0xb4),
        RGBColor(0xff, 0x7f, 0x0e),
        RGBColor(0xd6, 0x27, 0x28),
        RGBColor(0x2c, 0xa0, 0x2c),
    ];
    let title = ("sans-serif", 16).into_font().color(&BLACK);
    let small = ("sans-serif", 11).into_font().color(&BLACK);
    root.draw(&Text::new(
        "CLB herding (simulation, virtual time): queue per server, 16 front ends polling every 200 ms, load 70%"
            .to_string(),
        (10, 8),
        title,
    ))
    .map_err(err)?;
    let panels = [Policy::Clb, Policy::PeakEwma];
    let runs: Vec<Vec<[u32; 4]>> = panels.iter().map(|p| simulate(*p).0).collect();
    let ymax = runs
        .iter()
        .flatten()
        .flat_map(|q| q.iter().copied())
        .max()
        .unwrap_or(1)
        .max(1);
    let (left, right) = (60i32, w as i32 - 20);
    let panel_h = 230i32;
    for (k, (policy, samples)) in panels.iter().zip(&runs).enumerate() {
        let top = 40 + k as i32 * (panel_h + 20);
        let bottom = top + panel_h - 20;
        root.draw(&Text::new(
            format!("{} (queue 0..{ymax})", policy.name()),
            (left, top),
            small.clone(),
        ))
        .map_err(err)?;
        root.draw(&PathElement::new(
            vec![(left, bottom), (right, bottom)],
            BLACK.stroke_width(1),
        ))
        .map_err(err)?;
        for poll in (0..=SIM_PLOT_MS).step_by(SIM_POLL_MS as usize) {
            let x = left + ((right - left) as f64 * poll as f64 / SIM_PLOT_MS as f64) as i32;
            root.draw(&PathElement::new(
                vec![(x, top + 14), (x, bottom)],
                RGBColor(0xdd, 0xdd, 0xdd).stroke_width(1),
            ))
            .map_err(err)?;
            root.draw(&Text::new(
                format!("{poll} ms"),
                (x - 12, bottom + 4),
                small.clone(),
            ))
            .map_err(err)?;
        }
        for s in 0..4 {
            let points: Vec<(i32, i32)> = samples
                .iter()
                .enumerate()
                .map(|(i, q)| {
                    let x = left
                        + ((right - left) as f64 * (i as f64 * 5.0) / SIM_PLOT_MS as f64) as i32;
                    let y =
                        bottom - ((panel_h - 40) as f64 * f64::from(q[s]) / f64::from(ymax)) as i32;
                    (x, y)
                })
                .collect();
            root.draw(&PathElement::new(points, colors[s].stroke_width(1)))
                .map_err(err)?;
            let name = format!("server {}", s + 1);
            root.draw(&Text::new(
                name,
                (right - 150, top + 14 + 12 * s as i32),
                ("sans-serif", 11).into_font().color(&colors[s]),
            ))
            .map_err(err)?;
        }
    }
    root.present().map_err(err)?;
    Ok(())
}

/// The text summary.
pub fn text(r: &ClbReport) -> String {
    let mut s = format!(
        "clb: open load {:.0} req/s ({:.0}% of the back ends' nominal {:.0}), {} s per case\n",
        r.rate,
        100.0 * r.rate / r.capacity.max(1.0),
        r.capacity,
        r.seconds
    );
    for c in &r.cases {
        match &c.not_run {
            Some(why) => {
                let _ = writeln!(s, "  {:8} {:24} not run: {why}", c.frontend, c.policy);
            }
            None => {
                let _ = writeln!(
                    s,
                    "  {:8} {:24} {:7.1} req/s  p50 {:7.2}  p99 {:8.2}  p99.9 {:8.2} ms  ({}/{} ok){}",
                    c.frontend,
                    c.policy,
                    c.rps,
                    c.p50_ms,
                    c.p99_ms,
                    c.p999_ms,
                    c.ok,
                    c.sent,
                    split(c)
                );
            }
        }
    }
    for h in &r.herding {
        let _ = writeln!(
            s,
            "  simulated {:12} max queue {:3}  p99 {:6.1} ms  herd share {:.2}",
            h.policy, h.max_queue, h.p99_ms, h.herd_share
        );
    }
    s
}

/// The p99 split by the freeze, as text (empty when not measured).
fn split(c: &ClbCase) -> String {
    let mut s = match (c.p99_freeze_ms, c.p99_rest_ms, c.p50_freeze_ms) {
        (Some(f), Some(r), Some(m)) => {
            format!("  p99 while frozen {f:.2}, rest {r:.2}, p50 while frozen {m:.2}")
        }
        _ => String::new(),
    };
    if let Some(v) = c.over_target_share {
        s += &format!(", {:.1}% over 1.3x healthy p99", 100.0 * v);
    }
    s
}

fn ms(v: Option<f64>) -> String {
    v.map_or_else(String::new, |v| format!("{v:.2}"))
}

/// The markdown report.
pub fn markdown(r: &ClbReport) -> String {
    let mut s = String::from("## Component load balancing\n\n");
    if let Some(m) = &r.machine {
        s += &format!("Measured on: {}.\n\n", m.line());
    }
    let _ = write!(
        s,
        "Open load {:.0} requests/s for {} s per case ({:.0}% of the four back ends' nominal \
         capacity {:.0}/s: three answer in {FAST_MS} ms, one in 5x that, one of the fast ones \
         freezes 2 s every 10 s; each serves one request at a time). Latency from each request's \
         due time; a failed request counts at the 5 s timeout. The p99 is split by whether a \
         request was due while the freezing back end was frozen (a fifth of them), with the median \
         of those; the last column is the share of all requests slower than 1.3x the all-healthy \
         p99 (a p99 within that needs at most 1%).\n\n\
         | frontend | policy | req/s | p50 ms | p99 ms | p99.9 ms | ok | p99 while frozen ms | p99 rest ms | p50 while frozen ms | over 1.3x healthy p99 |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        r.rate,
        r.seconds,
        100.0 * r.rate / r.capacity.max(1.0),
        r.capacity
    );
    for c in &r.cases {
        match &c.not_run {
            Some(why) => {
                let _ = writeln!(
                    s,
                    "| {} | {} | not run: {why} | | | | | | | | |",
                    c.frontend, c.policy
                );
            }
            None => {
                let _ = writeln!(
                    s,
                    "| {} | {} | {:.1} | {:.2} | {:.2} | {:.2} | {}/{} | {} | {} | {} | {} |",
                    c.frontend,
                    c.policy,
                    c.rps,
                    c.p50_ms,
                    c.p99_ms,
                    c.p999_ms,
                    c.ok,
                    c.sent,
                    ms(c.p99_freeze_ms),
                    ms(c.p99_rest_ms),
                    ms(c.p50_freeze_ms),
                    c.over_target_share
                        .map_or_else(String::new, |v| format!("{:.1}%", 100.0 * v))
                );
            }
        }
    }
    s += "\nHerding, simulated (virtual time, 16 front ends, four alike servers, `clb-herding.svg`):\n\n\
          | policy | max queue | p99 ms | herd share |\n|---|---:|---:|---:|\n";
    for h in &r.herding {
        let _ = writeln!(
            s,
            "| {} | {} | {:.1} | {:.2} |",
            h.policy, h.max_queue, h.p99_ms, h.herd_share
        );
    }
    s
}

/// Writes `clb.json`, `clb.md` and `clb-herding.svg` into `dir`.
///
/// # Errors
/// When a file cannot be written.
pub fn write(r: &ClbReport, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(
        dir.join("clb.json"),
        serde_json::to_string_pretty(r)? + "\n",
    )?;
    std::fs::write(dir.join("clb.md"), markdown(r))?;
    herding_svg(&dir.join("clb-herding.svg"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_simulation_shows_clb_herding_and_peak_ewma_spreading() {
        let (_, clb) = simulate(Policy::Clb);
        let (_, ewma) = simulate(Policy::PeakEwma);
        assert!(clb.herd_share > ewma.herd_share, "{clb:?} {ewma:?}");
        assert!(clb.max_queue > ewma.max_queue, "{clb:?} {ewma:?}");
    }

    #[test]
    fn the_nominal_capacity_counts_the_slow_and_the_freezing_server() {
        assert_eq!(capacity(), 250.0 * 2.0 + 50.0 + 200.0);
    }
}
