//! `shoal bench forward`: what a sticky service's forward costs, beside a
//! request served locally and HAProxy's cookie stickiness (`cookie …
//! insert`), in one run with the same application servers and load.
//!
//! The rig is the namespace lab (`scripts/lab up --config` a copy of
//! `scripts/lab.d/forward.toml` with the HTTPS service added, `--hosts 2`,
//! the lab lock held while its namespaces exist): two hosts, each with
//! nginx as the application (`return 200`) on 127.0.0.1:8081 and on its
//! dedicated address at 8082.
//! wrk runs in the client namespace from one address, which Single
//! affinity maps to one host, the *receiver*:
//!
//! - `local`: `Cookie: RQFW=` naming the receiver: served by its nginx;
//! - `forwarded`: the cookie names the other host: every request takes the
//!   signed hop to it;
//! - `local_https`: `local` over TLS: a cookie naming the receiver on a
//!   second sticky service, port 8443 with `tls = { cert, key }` (a P-256
//!   certificate the bench makes with `openssl`); wrk keeps its
//!   connections, so this is the cost of TLS records on a request, not of
//!   handshakes;
//! - `haproxy_cookie_insert`: HAProxy on the receiver (port 8002,
//!   `cookie SRV insert indirect nocache`, both nginx as servers) with
//!   `Cookie: SRV=` naming the receiver's server. HAProxy runs under
//!   `SCHED_BATCH`, as shoal's proxy workers do by default.
//! - `haproxy_forwardfor`: the same HAProxy on port 8003, also doing to
//!   each request what the forwarder must (README, "What the application
//!   sees"): the client's `X-Forwarded-For` dropped and `option
//!   forwardfor`, a `Forwarded` field with the client, the
//!   host and the protocol, and `Via` on the request and the response. The
//!   issue's target compares `local` with `haproxy_cookie_insert`; this
//!   case is the like-for-like peer beside it.
//!
//! CPU per request is the schedstat CPU time of every `shoal-proxy-*`
//! thread on both hosts (a forward costs on the receiver and the owner),
//! or of every HAProxy thread, over wrk's requests. Latency percentiles are
//! wrk's. Cases are interleaved for `rounds` rounds and each case's figure
//! is the median of its rounds. The ratios are the median of the rounds'
//! ratios: the two cases of a ratio run back to back in each round, so a
//! ratio taken within a round is not moved by the machine's speed drifting
//! between rounds (on a shared VM a case's CPU per request drifts by a
//! third between runs, both cases of a round moving together).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;
use shoal_dataplane::array::sticky::cookie::issue;
use shoal_dataplane::array::sticky::{CookieKey, Owner};
use shoal_dataplane::HostId;

use crate::failover::LabLock;
use crate::rig::{in_ns, sh};

/// The lab's VIP and the sticky service's port.
const VIP: &str = "10.0.0.100";
const PORT: u16 = 8000;
/// The HTTPS sticky service's port (`local_https`).
const TLS_PORT: u16 = 8443;
const HAPROXY_PORT: u16 = 8002;
/// HAProxy's frontend that also adds the forwarding fields.
const HAPROXY_FF_PORT: u16 = 8003;
const LAB_DIR: &str = "/tmp/shoal-lab";
/// The sticky service on [`PORT`] (`scripts/lab.d/forward.toml`).
const SERVICE: &str = "shop";

/// One case's figures (medians over the rounds).
#[derive(Clone, Debug, Serialize)]
pub struct ForwardCase {
    /// `local`, `forwarded`, `local_https` or `haproxy_cookie_insert`.
    pub case: String,
    /// Requests per second.
    pub rps: f64,
    /// Frontend CPU nanoseconds per request.
    pub cpu_ns_per_request: f64,
    /// Median latency, ms.
    pub p50_ms: f64,
    /// 99th percentile latency, ms.
    pub p99_ms: f64,
    /// Non-2xx answers and socket errors over all rounds.
    pub errors: u64,
    /// Of `cpu_ns_per_request`, the receiver's proxy threads (shoal's
    /// cases only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub receiver_cpu_ns_per_request: Option<f64>,
    /// Of `cpu_ns_per_request`, the other host's proxy threads: the
    /// owner's relay in `forwarded`, next to nothing in the local cases
    /// (shoal's cases only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer_cpu_ns_per_request: Option<f64>,
}

/// The report.
#[derive(Clone, Debug, Serialize)]
pub struct ForwardReport {
    /// Per case.
    pub cases: Vec<ForwardCase>,
    /// forwarded ÷ local CPU per request (median of the rounds' ratios,
    /// as every ratio here).
    pub forward_cpu_ratio: f64,
    /// Each round's forwarded ÷ local.
    #[serde(default)]
    pub forward_cpu_ratio_rounds: Vec<f64>,
    /// Each round's local ÷ HAProxy.
    #[serde(default)]
    pub local_vs_haproxy_cpu_ratio_rounds: Vec<f64>,
    /// What a forward adds: forwarded − local CPU nanoseconds per request.
    pub forward_added_cpu_ns_per_request: f64,
    /// local_https ÷ local CPU per request.
    pub https_cpu_ratio: f64,
    /// local ÷ HAProxy CPU per request.
    pub local_vs_haproxy_cpu_ratio: f64,
    /// local ÷ HAProxy-with-forwarding-fields CPU per request.
    #[serde(default)]
    pub local_vs_haproxy_forwardfor_cpu_ratio: f64,
    /// `forwarded` rounds run again because the receiver served requests
    /// itself (its owner out of its view meanwhile).
    #[serde(default)]
    pub discarded_forwarded_rounds: usize,
    /// wrk connections.
    pub connections: usize,
    /// Seconds per case and round.
    pub seconds: f64,
    /// Rounds.
    pub rounds: usize,
    /// Whether this was a smoke run.
    pub smoke: bool,
}

/// Options.
#[derive(Clone, Debug)]
pub struct ForwardOptions {
    /// Seconds per case and round.
    pub seconds: f64,
    /// Interleaved rounds.
    pub rounds: usize,
    /// A smoke run.
    pub smoke: bool,
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// The lab, up for the bench's lifetime; torn down on drop (before the
/// lock is released: field order).
struct Lab {
    _lock: LabLock,
}

impl Lab {
    fn up(shoal: &Path, config: &Path) -> Result<Lab> {
        let lock = LabLock::take("bench forward")?;
        let lab = Lab { _lock: lock };
        let mut c = Command::new(repo().join("scripts/lab"));
        c.args(["up", "--config"])
            .arg(config)
            .args(["--hosts", "2"])
            .env("SHOAL_BIN", shoal);
        sh(&mut c).context("scripts/lab up for the forward bench")?;
        Ok(lab)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = Command::new(repo().join("scripts/lab"))
            .arg("down")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

fn nginx_conf(dir: &Path, host: u8) -> String {
    let d = dir.display();
    format!(
        "worker_processes 1;\ndaemon off;\npid {d}/nginx-h{host}.pid;\nerror_log {d}/nginx-h{host}.err warn;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {d}/body-h{host};\n  proxy_temp_path {d}/proxy-h{host};\n  fastcgi_temp_path {d}/fcgi-h{host};\n  uwsgi_temp_path {d}/uwsgi-h{host};\n  scgi_temp_path {d}/scgi-h{host};\n  keepalive_requests 1000000;\n\
         server {{\n    listen 127.0.0.1:8081;\n    listen 10.0.0.{}:8082;\n    location / {{ return 200 \"h{host}\\n\"; }}\n  }}\n}}\n",
        10 + u16::from(host)
    )
}

/// `scripts/lab.d/forward.toml` with the HTTPS service of `local_https`,
/// written to `dir` with a self-signed certificate; its path. (`lab up`
/// copies the configuration and clears its own directory's keys, so the
/// certificate stays in `dir`.)
fn config_with_tls(dir: &Path) -> Result<PathBuf> {
    let (cert, key) = (dir.join("shop.crt"), dir.join("shop.key"));
    sh(Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "1"])
        .args(["-subj", "/CN=shop.lab", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert))
    .context("openssl: the HTTPS service's certificate")?;
    let base = std::fs::read_to_string(repo().join("scripts/lab.d/forward.toml"))?;
    let path = dir.join("forward.toml");
    std::fs::write(
        &path,
        format!(
            "{base}\n# Added by shoal bench forward (local_https).\n[[service]]\nname = \"shop-tls\"\n\
             port = {TLS_PORT}\nroute = \"sticky\"\n[service.sticky]\nlocal = \"127.0.0.1:8081\"\n\
             tls = {{ cert = \"{}\", key = \"{}\" }}\n",
            cert.display(),
            key.display()
        ),
    )?;
    Ok(path)
}

fn haproxy_conf() -> String {
    "global\n  maxconn 4000\ndefaults\n  mode http\n  timeout connect 2s\n  timeout client 30s\n  timeout server 30s\n\
     frontend fe\n  bind 0.0.0.0:8002\n  default_backend apps\n\
     frontend fe_ff\n  bind 0.0.0.0:8003\n  option forwardfor\n  http-request del-header X-Forwarded-For\n\
       http-request set-header Forwarded \"for=%[src];host=\\\"%[req.hdr(host)]\\\";proto=http\"\n\
       http-request add-header Via \"1.1 haproxy\"\n  http-response add-header Via \"1.1 haproxy\"\n\
       default_backend apps\n\
     backend apps\n  cookie SRV insert indirect nocache\n  http-reuse always\n\
       server s1 10.0.0.11:8082 cookie s1\n  server s2 10.0.0.12:8082 cookie s2\n"
        .to_string()
}

/// A started process in a namespace, killed on drop.
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(ns: &str, program: &str, args: &[&str], log: &Path) -> Result<Running> {
    let out = std::fs::File::create(log)?;
    let err = out.try_clone()?;
    let child = in_ns(ns, program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .with_context(|| format!("starting {program} in {ns}"))?;
    Ok(Running(child))
}

fn wait_port(ns: &str, port: u16) -> Result<()> {
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let out = sh(in_ns(ns, "ss").args(["-Hltn", &format!("sport = :{port}")]))?;
        if !out.trim().is_empty() {
            return Ok(());
        }
        if Instant::now() > until {
            bail!("nothing listens on port {port} in {ns} after 10 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// CPU nanoseconds of `pid`'s threads whose name starts with `prefix`.
fn cpu_ns(pid: u32, prefix: &str) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .filter(|t| {
            prefix.is_empty()
                || std::fs::read_to_string(t.path().join("comm"))
                    .unwrap_or_default()
                    .starts_with(prefix)
        })
        .filter_map(|t| {
            std::fs::read_to_string(t.path().join("schedstat"))
                .ok()?
                .split_whitespace()
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

/// The sticky service's `forwarded` counter on `host`, from a stats file
/// written after this call began (the engine writes it once a second).
fn forwarded_count(host: u8) -> Result<u64> {
    let path = format!("{LAB_DIR}/h{host}.stats.json");
    let (n, _) = crate::next_stats(Path::new(&path), Duration::from_secs(5), |v| {
        v["services"][SERVICE]["forwarded"].as_u64()
    })
    .with_context(|| format!("no fresh services.{SERVICE}.forwarded in {path}"))?;
    Ok(n)
}

fn shoal_pid(host: u8) -> Result<u32> {
    let text = std::fs::read_to_string(format!("{LAB_DIR}/h{host}.pid"))?;
    text.trim().parse().context("a shoal pid")
}

const WRK_LUA: &str = r#"
local cookie = os.getenv("FWD_COOKIE")
wrk.headers["Cookie"] = cookie
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("WRKJSON {\"requests\":%d,\"duration_us\":%d,\"errors\":%d,\"p50_us\":%d,\"p99_us\":%d}\n",
    summary.requests, summary.duration, e.connect + e.read + e.write + e.status + e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"#;

#[derive(serde::Deserialize)]
struct WrkOut {
    requests: u64,
    duration_us: u64,
    errors: u64,
    p50_us: u64,
    p99_us: u64,
}

fn wrk(dir: &Path, url: &str, cookie: &str, connections: usize, seconds: f64) -> Result<WrkOut> {
    let mut c = in_ns("shoal-client", "env");
    c.arg(format!("FWD_COOKIE={cookie}"))
        .args([
            "wrk",
            "-t1",
            &format!("-c{connections}"),
            &format!("-d{}s", seconds.max(1.0).round() as u64),
            "--timeout",
            "5s",
            "-s",
        ])
        .arg(dir.join("fwd.lua"))
        .arg(url);
    let out = sh(&mut c).context("wrk")?;
    let line = out
        .lines()
        .find_map(|l| l.strip_prefix("WRKJSON "))
        .with_context(|| format!("no WRKJSON line in wrk's output: {out}"))?;
    serde_json::from_str(line).with_context(|| format!("parsing {line}"))
}

/// One round of one case.
#[derive(Clone)]
struct Sample {
    rps: f64,
    cpu_ns: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: u64,
    /// Shoal's cases: the CPU ns per request of the receiver and of the
    /// other host.
    split: Option<(f64, f64)>,
}

/// The median of one side of the rounds' CPU splits (`None` for a case
/// without them).
fn split_median(s: &[Sample], side: fn((f64, f64)) -> f64) -> Option<f64> {
    s.iter()
        .map(|x| x.split.map(side))
        .collect::<Option<Vec<f64>>>()
        .map(median)
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Which host the client's main address lands on: the host named by
/// `x-shoal-served-by` of a cookie-less request.
fn receiver() -> Result<u8> {
    let out = sh(in_ns("shoal-client", "curl").args([
        "-s",
        "-D",
        "-",
        "-o",
        "/dev/null",
        &format!("http://{VIP}:{PORT}/probe"),
    ]))?;
    for line in out.lines() {
        let l = line.to_ascii_lowercase();
        if let Some(v) = l.strip_prefix("x-shoal-served-by:") {
            return match v.trim() {
                "web1" => Ok(1),
                "web2" => Ok(2),
                other => bail!("served by {other:?}"),
            };
        }
    }
    bail!("no x-shoal-served-by in {out}")
}

/// Runs the bench.
///
/// # Errors
/// When the rig cannot be set up (a tool missing, the lab not coming up).
pub fn run(opts: &ForwardOptions) -> Result<ForwardReport> {
    for tool in ["wrk", "haproxy", "nginx", "curl", "openssl"] {
        if sh(Command::new("sh").args(["-c", &format!("command -v {tool}")])).is_err() {
            bail!("missing tool {tool}; scripts/bench installs it");
        }
    }
    let shoal = crate::shoal_binary()?;
    let dir = std::env::temp_dir().join(format!("shoal-bench-forward-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("fwd.lua"), WRK_LUA)?;
    let config = config_with_tls(&dir)?;
    let lab = Lab::up(&shoal, &config)?;
    let mut procs = Vec::new();
    for h in [1u8, 2] {
        for sub in ["body", "proxy", "fcgi", "uwsgi", "scgi"] {
            std::fs::create_dir_all(dir.join(format!("{sub}-h{h}")))?;
        }
        let conf = dir.join(format!("nginx-h{h}.conf"));
        std::fs::write(&conf, nginx_conf(&dir, h))?;
        let ns = format!("shoal-h{h}");
        procs.push(spawn(
            &ns,
            "nginx",
            &["-c", &conf.to_string_lossy()],
            &dir.join(format!("nginx-h{h}.log")),
        )?);
        wait_port(&ns, 8081)?;
    }
    // The sticky service sees its local up once probed.
    std::thread::sleep(Duration::from_millis(1500));
    let recv = receiver()?;
    let other = 3 - recv;
    let ns = format!("shoal-h{recv}");
    std::fs::write(dir.join("haproxy.cfg"), haproxy_conf())?;
    // Under the scheduling policy shoal's proxy workers run with
    // (`proxy_sched = "batch"`), so the comparison is of the proxies, not
    // of the policies (`chrt` execs HAProxy: its pid is HAProxy's).
    let haproxy = spawn(
        &ns,
        "chrt",
        &[
            "--batch",
            "0",
            "haproxy",
            "-db",
            "-f",
            &dir.join("haproxy.cfg").to_string_lossy(),
        ],
        &dir.join("haproxy.log"),
    )?;
    wait_port(&ns, HAPROXY_PORT)?;
    wait_port(&ns, HAPROXY_FF_PORT)?;
    let key_text = std::fs::read_to_string(format!("{LAB_DIR}/cluster.key"))?;
    let cluster_key = shoal_config::parse_cluster_key(&key_text)
        .map_err(|e| anyhow::anyhow!("the lab's key: {e}"))?;
    let key = CookieKey::derive(cluster_key.as_bytes());
    let now_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let cookie = |h: u8, port: u16| -> Result<String> {
        let host = HostId::new(h).context("a host id")?;
        Ok(format!(
            "RQFW={}",
            issue(&key, Owner::Host(host), port, now_s)
        ))
    };
    let url = |scheme: &str, port: u16| format!("{scheme}://{VIP}:{port}/app");
    let cases: Vec<(&str, String, String)> = vec![
        ("local", url("http", PORT), cookie(recv, PORT)?),
        ("forwarded", url("http", PORT), cookie(other, PORT)?),
        (
            "local_https",
            url("https", TLS_PORT),
            cookie(recv, TLS_PORT)?,
        ),
        (
            "haproxy_cookie_insert",
            url("http", HAPROXY_PORT),
            format!("SRV=s{recv}"),
        ),
        (
            "haproxy_forwardfor",
            url("http", HAPROXY_FF_PORT),
            format!("SRV=s{recv}"),
        ),
    ];
    let pids = [shoal_pid(1)?, shoal_pid(2)?];
    // The receiver's pid first, then the other host's.
    let (recv_pid, peer_pid) = if recv == 1 {
        (pids[0], pids[1])
    } else {
        (pids[1], pids[0])
    };
    let haproxy_pid = haproxy.0.id();
    let connections = 20;
    // Warm-up: every path once, so pools and caches are in place.
    for (_, u, c) in &cases {
        wrk(&dir, u, c, connections, 1.0)?;
    }
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); cases.len()];
    let mut discarded = 0;
    for _ in 0..opts.rounds {
        for (i, (name, u, c)) in cases.iter().enumerate() {
            let shoal = !name.starts_with("haproxy");
            // CPU so far: (the receiver's or HAProxy's, the other host's).
            let cpu = || -> (u64, u64) {
                if shoal {
                    (
                        cpu_ns(recv_pid, "shoal-proxy"),
                        cpu_ns(peer_pid, "shoal-proxy"),
                    )
                } else {
                    (cpu_ns(haproxy_pid, ""), 0)
                }
            };
            // A `forwarded` round counts only when the receiver forwarded
            // (nearly) every request: on a shared machine the owner can
            // leave the receiver's view for a while (a host starved of
            // CPU), and its requests are then served locally.
            let forwards = *name == "forwarded";
            let mut attempts = 0;
            let (w, used) = loop {
                attempts += 1;
                let fwd_before = if forwards { forwarded_count(recv)? } else { 0 };
                let before = cpu();
                let w = wrk(&dir, u, c, connections, opts.seconds)?;
                let after = cpu();
                let used = (
                    after.0.saturating_sub(before.0),
                    after.1.saturating_sub(before.1),
                );
                if !forwards {
                    break (w, used);
                }
                let fwd = forwarded_count(recv)?.saturating_sub(fwd_before);
                if fwd as f64 >= 0.99 * w.requests as f64 {
                    break (w, used);
                }
                if attempts >= 4 {
                    eprintln!(
                        "bench forward: warning: four forwarded rounds in a row were not all forwarded; the last ({fwd} of {}) is kept",
                        w.requests
                    );
                    break (w, used);
                }
                discarded += 1;
                eprintln!(
                    "bench forward: a forwarded round forwarded {fwd} of {} requests (the owner left the receiver's view): run again",
                    w.requests
                );
            };
            let n = w.requests.max(1) as f64;
            samples[i].push(Sample {
                rps: w.requests as f64 / (w.duration_us.max(1) as f64 / 1e6),
                cpu_ns: (used.0 + used.1) as f64 / n,
                p50_ms: w.p50_us as f64 / 1000.0,
                p99_ms: w.p99_us as f64 / 1000.0,
                errors: w.errors,
                split: shoal.then(|| (used.0 as f64 / n, used.1 as f64 / n)),
            });
        }
    }
    drop(haproxy);
    drop(procs);
    drop(lab);
    let _ = std::fs::remove_dir_all(&dir);
    // Each round's ratio of two cases' CPU per request.
    let rounds_ratio = |a: &str, b: &str| -> Vec<f64> {
        let of = |n: &str| cases.iter().position(|c| c.0 == n).map(|i| &samples[i]);
        match (of(a), of(b)) {
            (Some(a), Some(b)) => a
                .iter()
                .zip(b)
                .filter(|(_, b)| b.cpu_ns > 0.0)
                .map(|(a, b)| a.cpu_ns / b.cpu_ns)
                .collect(),
            _ => Vec::new(),
        }
    };
    let forward_rounds = rounds_ratio("forwarded", "local");
    let https_rounds = rounds_ratio("local_https", "local");
    let haproxy_rounds = rounds_ratio("local", "haproxy_cookie_insert");
    let haproxy_ff_rounds = rounds_ratio("local", "haproxy_forwardfor");
    let out: Vec<ForwardCase> = cases
        .iter()
        .zip(samples)
        .map(|((name, _, _), s)| ForwardCase {
            case: (*name).to_string(),
            rps: median(s.iter().map(|x| x.rps).collect()),
            cpu_ns_per_request: median(s.iter().map(|x| x.cpu_ns).collect()),
            p50_ms: median(s.iter().map(|x| x.p50_ms).collect()),
            p99_ms: median(s.iter().map(|x| x.p99_ms).collect()),
            receiver_cpu_ns_per_request: split_median(&s, |(receiver, _)| receiver),
            peer_cpu_ns_per_request: split_median(&s, |(_, peer)| peer),
            errors: s.iter().map(|x| x.errors).sum(),
        })
        .collect();
    let cpu = |n: &str| {
        out.iter()
            .find(|c| c.case == n)
            .map_or(0.0, |c| c.cpu_ns_per_request)
    };
    Ok(ForwardReport {
        forward_cpu_ratio: median(forward_rounds.clone()),
        forward_cpu_ratio_rounds: forward_rounds,
        forward_added_cpu_ns_per_request: cpu("forwarded") - cpu("local"),
        https_cpu_ratio: median(https_rounds),
        local_vs_haproxy_cpu_ratio: median(haproxy_rounds.clone()),
        local_vs_haproxy_cpu_ratio_rounds: haproxy_rounds,
        local_vs_haproxy_forwardfor_cpu_ratio: median(haproxy_ff_rounds),
        cases: out,
        discarded_forwarded_rounds: discarded,
        connections,
        seconds: opts.seconds,
        rounds: opts.rounds,
        smoke: opts.smoke,
    })
}

/// The report as text.
pub fn text(r: &ForwardReport) -> String {
    let mut s = format!(
        "forward: {} rounds x {:.0} s, wrk {} connections{}\n",
        r.rounds,
        r.seconds,
        r.connections,
        if r.smoke { " (smoke)" } else { "" }
    );
    s += &markdown(r);
    s
}

/// The report as a markdown table.
pub fn markdown(r: &ForwardReport) -> String {
    let mut s = String::from(
        "| case | requests/s | CPU ns/request | p50 ms | p99 ms | errors |\n|---|---:|---:|---:|---:|---:|\n",
    );
    for c in &r.cases {
        s += &format!(
            "| {} | {:.0} | {:.0} | {:.2} | {:.2} | {} |\n",
            c.case, c.rps, c.cpu_ns_per_request, c.p50_ms, c.p99_ms, c.errors
        );
    }
    s += &format!(
        "\nforwarded / local CPU per request: {:.2}; local_https / local: {:.2}; local / HAProxy: {:.2} (with forwarding fields: {:.2})\n",
        r.forward_cpu_ratio,
        r.https_cpu_ratio,
        r.local_vs_haproxy_cpu_ratio,
        r.local_vs_haproxy_forwardfor_cpu_ratio
    );
    let list = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.2}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    s += &format!(
        "rounds: forwarded / local {}; local / HAProxy {}\n",
        list(&r.forward_cpu_ratio_rounds),
        list(&r.local_vs_haproxy_cpu_ratio_rounds)
    );
    s += &format!(
        "a forward adds {:.0} ns per request",
        r.forward_added_cpu_ns_per_request
    );
    let split = |n: &str| {
        r.cases
            .iter()
            .find(|c| c.case == n)
            .and_then(|c| c.receiver_cpu_ns_per_request.zip(c.peer_cpu_ns_per_request))
    };
    if let (Some(l), Some(f)) = (split("local"), split("forwarded")) {
        s += &format!(
            " (receiver {:.0} ns, local {:.0} ns; owner's relay {:.0} ns)",
            f.0, l.0, f.1
        );
    }
    s += "\n";
    s
}
