//! The on-the-wire half of `shoal bench array`: `wrk` against four CARP
//! (or URL-hashing) frontends, one at a time, each pinned to one core in
//! front of the same origin servers.
//!
//! # The rig
//!
//! Three network namespaces of its own, joined by two veth pairs (leftovers
//! of a killed run, found by these exact names, are removed at start;
//! everything is removed when the run ends):
//!
//! * `shoal-ba-cli` (`sbacli0`, 10.90.0.1/24): `wrk`, one thread.
//! * `shoal-ba-fe` (`sbafe0`, 10.90.0.2/24 toward the client; `sbafe1`,
//!   10.90.1.1/24 toward the origins): the frontends.
//! * `shoal-ba-org` (`sbaorg0`, 10.90.1.11 to 10.90.1.14): four origin
//!   servers, one nginx worker with a `server` per address, each answering
//!   every request `200 ok` (3 bytes, keep-alive).
//!
//! Offloads are off on every veth end (no TSO, GSO, GRO or checksum
//! offload), as in the namespace lab: frames are real MTU-sized frames, the
//! same for every frontend. `wrk` and the origins share CPU 0; the frontend
//! runs on CPU 1 (the last CPU), alone.
//!
//! # The frontends
//!
//! Every frontend spreads the same requests over the same four origins by a
//! hash of the URL, keeps connections alive on both sides, and caches
//! nothing:
//!
//! * `shoal`: `shoal run` as the one host of a cluster (static view) with
//!   a CARP service (`members = "parents"`, the four origins as parents,
//!   `spec` hash), reached at the cluster's VIP; its control thread, poll
//!   loop and proxy thread all on CPU 1, so the whole process is pinned to
//!   one core like the others.
//!   Counted: the CPU time of its `shoal-proxy-*` threads, which do the
//!   HTTP work the other frontends' processes do; the whole process
//!   (control plane and the packet engine's poll loop, which the other
//!   frontends do not have) is reported beside it.
//! * `haproxy` (Debian's): `balance uri`, `hash-type consistent`, one
//!   thread, `http-reuse always`.
//! * `nginx` (Debian's): `hash $request_uri consistent`, one worker,
//!   upstream keep-alive.
//! * `squid` (Debian's): an accelerator (`http_port … accel vhost`) with
//!   the origins as `cache_peer … parent … carp`, `never_direct allow all`,
//!   `cache deny all`.
//!
//! Counted for each: requests and latency from `wrk` (its own counters, a
//! Lua `done` hook prints them), CPU time from `/proc/PID/task/*/schedstat`
//! (nanoseconds) of the frontend's processes over the `wrk` run. Requests:
//! origin-form with a `Host` header, 2,000 URLs of the in-memory mix
//! ([`super::routing::url_mix`]), so every frontend hashes realistic keys.
//! Rounds interleave the frontends; medians over rounds.
//!
//! The namespaces are shared state: the wire half takes the lab lock
//! (`/tmp/shoal-lab.lock`, as `failover` does) while they exist, so run
//! it without an outer `flock` on that file.

#![forbid(unsafe_code)]

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::failover::LabLock;
use crate::rig::{group_members, in_ns, sh, write_in_ns, Proc};
use crate::signals::pause;
use crate::stats::median;

/// The client's namespace.
pub const CLI_NS: &str = "shoal-ba-cli";
/// The frontends' namespace.
pub const FE_NS: &str = "shoal-ba-fe";
/// The origins' namespace.
pub const ORG_NS: &str = "shoal-ba-org";
/// The frontends' address toward the client.
pub const FE_ADDR: &str = "10.90.0.2";
/// shoal's VIP in the bench cluster.
pub const SHOAL_VIP: &str = "10.90.0.100";
/// The origin servers.
pub const ORIGINS: [&str; 4] = ["10.90.1.11", "10.90.1.12", "10.90.1.13", "10.90.1.14"];
/// URLs `wrk` cycles through.
pub const URLS: usize = 2_000;

/// One frontend measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Frontend {
    /// shoal's CARP service.
    Shoal,
    /// HAProxy, `balance uri`.
    Haproxy,
    /// nginx, `hash $request_uri consistent`.
    Nginx,
    /// Squid, `carp` parents.
    Squid,
}

impl Frontend {
    /// Every frontend, in report order.
    pub const ALL: [Frontend; 4] = [
        Frontend::Shoal,
        Frontend::Haproxy,
        Frontend::Nginx,
        Frontend::Squid,
    ];

    /// Stable name.
    pub fn name(self) -> &'static str {
        match self {
            Frontend::Shoal => "shoal",
            Frontend::Haproxy => "haproxy",
            Frontend::Nginx => "nginx",
            Frontend::Squid => "squid",
        }
    }

    /// The address and port `wrk` connects to.
    fn address(self) -> (&'static str, u16) {
        match self {
            Frontend::Shoal => (SHOAL_VIP, 8080),
            Frontend::Haproxy => (FE_ADDR, 8081),
            Frontend::Nginx => (FE_ADDR, 8082),
            Frontend::Squid => (FE_ADDR, 8083),
        }
    }

    /// How the frontend is configured, for the report.
    fn setup(self) -> &'static str {
        match self {
            Frontend::Shoal => {
                "shoal run, one host (static view), [[service]] route = \"carp\", members = \"parents\", hash = \"spec\"; control, poll and proxy on the frontend core; wrk to the VIP"
            }
            Frontend::Haproxy => "balance uri, hash-type consistent, nbthread 1, http-reuse always",
            Frontend::Nginx => "hash $request_uri consistent, 1 worker, upstream keepalive 64",
            Frontend::Squid => {
                "http_port accel vhost, cache_peer parent carp no-query, never_direct allow all, cache deny all"
            }
        }
    }
}

/// One frontend's figures.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct FrontendCase {
    /// `shoal`, `haproxy`, `nginx` or `squid`.
    pub frontend: String,
    /// Its version line.
    pub version: String,
    /// How it was configured.
    pub setup: String,
    /// Requests per second (median of rounds); 0 when not run.
    pub rps: f64,
    /// Counted frontend CPU nanoseconds per request (median of rounds).
    pub cpu_ns_per_request: f64,
    /// Median latency, ms (median of rounds).
    pub p50_ms: f64,
    /// 99th percentile latency, ms (median of rounds).
    pub p99_ms: f64,
    /// What CPU time was counted.
    pub counted: String,
    /// The whole process's CPU ns per request, where it differs from the
    /// counted part (shoal).
    pub process_cpu_ns_per_request: Option<f64>,
    /// Counted CPU seconds per wall second during the runs (1.0 = its core
    /// was saturated).
    pub cpu_busy: f64,
    /// The origins' CPU ns per request (same work for every frontend).
    pub origin_cpu_ns_per_request: f64,
    /// Requests answered, all rounds.
    pub requests: u64,
    /// Answers that were not 2xx/3xx, all rounds.
    pub non_2xx: u64,
    /// Socket errors (connect, read, write, timeout), all rounds.
    pub socket_errors: u64,
    /// Each round's requests per second.
    pub rounds_rps: Vec<f64>,
    /// `rps` over HAProxy's.
    pub rps_vs_haproxy: Option<f64>,
    /// `cpu_ns_per_request` over HAProxy's.
    pub cpu_vs_haproxy: Option<f64>,
    /// Why the frontend was not run (then the figures are 0).
    pub not_run: Option<String>,
}

/// The on-the-wire report.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct WireArrayReport {
    /// Measured seconds per frontend and round.
    pub seconds: f64,
    /// Rounds.
    pub rounds: usize,
    /// `wrk` connections.
    pub connections: usize,
    /// The CPU each frontend was pinned to.
    pub frontend_cpu: usize,
    /// The CPU `wrk` and the origins shared.
    pub client_cpu: usize,
    /// Origin servers.
    pub origins: usize,
    /// URLs cycled through.
    pub urls: usize,
    /// Every frontend.
    pub cases: Vec<FrontendCase>,
}

/// Options.
#[derive(Clone, Debug)]
pub struct WireOptions {
    /// Measured seconds per frontend and round.
    pub seconds: f64,
    /// Rounds.
    pub rounds: usize,
    /// `wrk` connections.
    pub connections: usize,
    /// Unmeasured seconds of load before the first round.
    pub warmup: f64,
}

/// Tools needed, and the Debian package of each.
const TOOLS: [(&str, &str); 6] = [
    ("ip", "iproute2"),
    ("ethtool", "ethtool"),
    ("wrk", "wrk"),
    ("nginx", "nginx"),
    ("haproxy", "haproxy"),
    ("squid", "squid"),
];

fn have(tool: &str) -> bool {
    ["/usr/sbin", "/sbin", "/usr/bin", "/bin", "/usr/local/bin"]
        .iter()
        .any(|d| Path::new(d).join(tool).exists())
}

/// Removes what a killed run left: processes in the namespaces (by PID, as
/// `ip netns pids` lists them), then the namespaces.
pub fn remove_leftovers() {
    for ns in [CLI_NS, FE_NS, ORG_NS] {
        if !Path::new("/run/netns").join(ns).exists() {
            continue;
        }
        if let Ok(out) = Command::new("ip")
            .args(["netns", "pids", ns])
            .stderr(Stdio::null())
            .output()
        {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                if pid.parse::<u32>().is_ok() {
                    let _ = Command::new("kill")
                        .args(["-KILL", pid])
                        .stderr(Stdio::null())
                        .status();
                }
            }
        }
        let _ = Command::new("ip")
            .args(["netns", "del", ns])
            .stderr(Stdio::null())
            .status();
    }
}

/// The three namespaces; removed on drop.
struct Net {
    dir: PathBuf,
    /// Held for the namespaces' lifetime: two runs would tear down each
    /// other's `shoal-ba-*` namespaces. Dropped after them (field order).
    _lock: LabLock,
}

impl Net {
    fn up() -> Result<Self> {
        let missing: Vec<String> = TOOLS
            .iter()
            .filter(|(t, _)| !have(t))
            .map(|(t, p)| format!("{t} (package {p})"))
            .collect();
        if !missing.is_empty() {
            bail!(
                "missing tools: {}; scripts/bench installs them",
                missing.join(", ")
            );
        }
        let lock = LabLock::take("bench array")?;
        remove_leftovers();
        let dir = std::env::temp_dir().join(format!("shoal-bench-array-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        // Squid drops to its own user and writes its log here.
        sh(Command::new("chmod").arg("777").arg(&dir))?;
        let net = Net { dir, _lock: lock };
        net.build()?;
        Ok(net)
    }

    fn build(&self) -> Result<()> {
        let ip = |args: &[&str]| sh(Command::new("ip").args(args));
        for ns in [CLI_NS, FE_NS, ORG_NS] {
            ip(&["netns", "add", ns])?;
            for key in ["all", "default"] {
                write_in_ns(
                    ns,
                    &format!("/proc/sys/net/ipv6/conf/{key}/disable_ipv6"),
                    "1",
                )?;
            }
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        ip(&[
            "-n", CLI_NS, "link", "add", "sbacli0", "type", "veth", "peer", "name", "sbafe0",
            "netns", FE_NS,
        ])?;
        ip(&[
            "-n", FE_NS, "link", "add", "sbafe1", "type", "veth", "peer", "name", "sbaorg0",
            "netns", ORG_NS,
        ])?;
        let mut addrs = vec![
            (CLI_NS, "sbacli0", "10.90.0.1/24".to_string()),
            (FE_NS, "sbafe0", format!("{FE_ADDR}/24")),
            (FE_NS, "sbafe1", "10.90.1.1/24".to_string()),
        ];
        for o in ORIGINS {
            addrs.push((ORG_NS, "sbaorg0", format!("{o}/24")));
        }
        for (ns, dev, addr) in &addrs {
            ip(&["-n", ns, "addr", "add", addr, "dev", dev])?;
        }
        for (ns, dev) in [
            (CLI_NS, "sbacli0"),
            (FE_NS, "sbafe0"),
            (FE_NS, "sbafe1"),
            (ORG_NS, "sbaorg0"),
        ] {
            ip(&["-n", ns, "link", "set", dev, "up"])?;
            let _ = sh(in_ns(ns, "ethtool").args([
                "-K", dev, "tx", "off", "tso", "off", "gso", "off", "gro", "off",
            ]));
        }
        // The client reaches the VIP (shoal's, on its TAP in the frontend
        // namespace) through the frontend's address.
        ip(&["-n", CLI_NS, "route", "add", SHOAL_VIP, "via", FE_ADDR])?;
        for ns in [CLI_NS, FE_NS, ORG_NS] {
            // Many short-lived warm-up connections must not run out of ports.
            write_in_ns(ns, "/proc/sys/net/ipv4/tcp_tw_reuse", "1")?;
        }
        Ok(())
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        remove_leftovers();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// CPU nanoseconds of every task of the processes in `pgid`'s group whose
/// thread name starts with `prefix` (every task for `""`).
fn group_cpu_ns(pgid: u32, prefix: &str) -> u64 {
    let mut total = 0;
    for pid in group_members(pgid) {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for t in tasks.flatten() {
            let p = t.path();
            if !prefix.is_empty() {
                let comm = std::fs::read_to_string(p.join("comm")).unwrap_or_default();
                if !comm.starts_with(prefix) {
                    continue;
                }
            }
            total += std::fs::read_to_string(p.join("schedstat"))
                .ok()
                .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    total
}

/// Runs a command and returns its first output line (versions).
fn version_line(cmd: &mut Command) -> String {
    cmd.stdin(Stdio::null())
        .output()
        .ok()
        .map(|o| {
            let mut text = String::from_utf8_lossy(&o.stdout).into_owned();
            text += &String::from_utf8_lossy(&o.stderr);
            text.lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("")
                .trim()
                .to_string()
        })
        .unwrap_or_default()
}

/// Waits until something listens on `port` in `ns`.
fn wait_listening(ns: &str, port: u16, proc: &mut Proc, what: &str) -> Result<()> {
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let out = sh(in_ns(ns, "ss").args(["-Hltn", &format!("sport = :{port}")]))?;
        if !out.trim().is_empty() {
            return Ok(());
        }
        if !proc.alive() {
            bail!("{what} exited at start: {}", proc.log_tail());
        }
        if Instant::now() > until {
            bail!(
                "{what} is not listening on port {port} after 10 s: {}",
                proc.log_tail()
            );
        }
        pause(0.1)?;
    }
}

fn origin_conf(dir: &Path) -> String {
    let d = dir.display();
    let mut servers = String::new();
    for (i, o) in ORIGINS.iter().enumerate() {
        let _ = writeln!(
            servers,
            "  server {{ listen {o}:80; location / {{ add_header x-origin o{}; return 200 \"ok\\n\"; }} }}",
            i + 1
        );
    }
    format!(
        "worker_processes 1;\ndaemon off;\nuser root;\npid {d}/origin.pid;\nerror_log {d}/origin-error.log warn;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n  access_log off;\n  keepalive_requests 100000000;\n  keepalive_timeout 120s;\n\
         client_body_temp_path {d}/o-body;\n  proxy_temp_path {d}/o-proxy;\n  fastcgi_temp_path {d}/o-fcgi;\n\
         uwsgi_temp_path {d}/o-uwsgi;\n  scgi_temp_path {d}/o-scgi;\n{servers}}}\n"
    )
}

fn nginx_frontend_conf(dir: &Path) -> String {
    let d = dir.display();
    let (addr, port) = Frontend::Nginx.address();
    let servers: String = ORIGINS
        .iter()
        .map(|o| format!("    server {o}:80;\n"))
        .collect();
    format!(
        "worker_processes 1;\ndaemon off;\nuser root;\npid {d}/fe-nginx.pid;\nerror_log {d}/fe-nginx-error.log warn;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n  access_log off;\n  keepalive_requests 100000000;\n  keepalive_timeout 120s;\n\
         client_body_temp_path {d}/f-body;\n  proxy_temp_path {d}/f-proxy;\n  fastcgi_temp_path {d}/f-fcgi;\n\
         uwsgi_temp_path {d}/f-uwsgi;\n  scgi_temp_path {d}/f-scgi;\n\
         upstream origins {{\n    hash $request_uri consistent;\n{servers}    keepalive 64;\n    keepalive_requests 100000000;\n  }}\n\
         server {{\n    listen {addr}:{port};\n    location / {{\n      proxy_pass http://origins;\n\
         proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n    }}\n  }}\n}}\n"
    )
}

fn haproxy_conf() -> String {
    let (addr, port) = Frontend::Haproxy.address();
    let servers: String = ORIGINS
        .iter()
        .enumerate()
        .map(|(i, o)| format!("  server o{} {o}:80\n", i + 1))
        .collect();
    format!(
        "global\n  nbthread 1\n  maxconn 5000\n\n\
         defaults\n  mode http\n  timeout connect 2s\n  timeout client 60s\n  timeout server 60s\n\
         option http-keep-alive\n  http-reuse always\n\n\
         frontend fe\n  bind {addr}:{port}\n  default_backend origins\n\n\
         backend origins\n  balance uri\n  hash-type consistent\n{servers}"
    )
}

fn squid_conf(dir: &Path) -> String {
    let d = dir.display();
    let (addr, port) = Frontend::Squid.address();
    let peers: String = ORIGINS
        .iter()
        .enumerate()
        .map(|(i, o)| {
            format!(
                "cache_peer {o} parent 80 0 carp no-query no-digest name=o{}\n",
                i + 1
            )
        })
        .collect();
    format!(
        "http_port {addr}:{port} accel vhost\n{peers}\
         http_access allow all\nnever_direct allow all\ncache deny all\ncache_mem 8 MB\n\
         pid_filename {d}/squid.pid\ncache_log {d}/squid-cache.log\naccess_log none\n\
         coredump_dir {d}\nshutdown_lifetime 0 seconds\ndns_nameservers 127.0.0.1\n\
         forwarded_for delete\nvia off\n"
    )
}

fn shoal_conf(dir: &Path, cpu: usize) -> String {
    let (_, port) = Frontend::Shoal.address();
    let mut text = format!(
        "# shoal bench array: one host, a CARP service over the four origins.\n\
         [cluster]\nvips = [\"{SHOAL_VIP}\"]\nkey_file = \"{}\"\n\n\
         [[host]]\nid = 1\nname = \"frontend.bench.example\"\ninterface = \"sbafe0\"\n\
         dedicated = [\"{FE_ADDR}/24\"]\n\
         [host.cores]\ncontrol = {cpu}\npoll = [{{ core = {cpu}, queues = [0] }}]\nproxy = [{cpu}]\n\n\
         [[rule]]\nports = [{port}, {port}]\nprotocol = \"tcp\"\naffinity = \"none\"\n\n\
         [[service]]\nname = \"bench\"\nport = {port}\nroute = \"carp\"\n\
         [service.carp]\nhash = \"spec\"\nmembers = \"parents\"\n",
        dir.join("cluster.key").display()
    );
    for (i, o) in ORIGINS.iter().enumerate() {
        let _ = write!(
            text,
            "[[service.carp.parent]]\nname = \"o{}\"\naddress = \"{o}:80\"\nload_factor = 1\n",
            i + 1
        );
    }
    text
}

/// Writes a private cluster key for shoal.
fn write_key(path: &Path) -> Result<()> {
    use std::io::{Read as _, Write as _};
    use std::os::unix::fs::OpenOptionsExt as _;
    let _ = std::fs::remove_file(path);
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?
        .write_all(format!("{hex}\n").as_bytes())?;
    Ok(())
}

/// A running frontend.
struct Running {
    proc: Proc,
    /// Thread-name prefix of the counted tasks (`""`: all).
    counted: &'static str,
}

impl Running {
    fn cpu_ns(&self) -> u64 {
        group_cpu_ns(self.proc.pid(), self.counted)
    }

    fn process_cpu_ns(&self) -> u64 {
        group_cpu_ns(self.proc.pid(), "")
    }
}

/// Starts `fe` pinned to `fe_cpu`.
fn start(fe: Frontend, dir: &Path, fe_cpu: usize) -> Result<Running> {
    let cpu = fe_cpu.to_string();
    let pinned = |program: &str| {
        let mut c = in_ns(FE_NS, "taskset");
        c.args(["-c", &cpu, program]);
        c
    };
    let log = dir.join(format!("{}.log", fe.name()));
    let (mut cmd, counted) = match fe {
        Frontend::Haproxy => {
            let conf = dir.join("haproxy.cfg");
            std::fs::write(&conf, haproxy_conf())?;
            let mut c = pinned("haproxy");
            c.arg("-db").arg("-f").arg(&conf);
            (c, "")
        }
        Frontend::Nginx => {
            let conf = dir.join("fe-nginx.conf");
            std::fs::write(&conf, nginx_frontend_conf(dir))?;
            let mut c = pinned("nginx");
            c.arg("-e")
                .arg(dir.join("fe-nginx-error.log"))
                .arg("-c")
                .arg(&conf);
            (c, "")
        }
        Frontend::Squid => {
            let conf = dir.join("squid.conf");
            std::fs::write(&conf, squid_conf(dir))?;
            let mut c = pinned("squid");
            c.arg("-N").arg("-f").arg(&conf);
            (c, "")
        }
        Frontend::Shoal => {
            let bin = crate::shoal_binary()?;
            write_key(&dir.join("cluster.key"))?;
            let conf = dir.join("shoal.toml");
            std::fs::write(&conf, shoal_conf(dir, fe_cpu))?;
            let mut c = in_ns(FE_NS, "env");
            c.arg("NO_COLOR=1")
                .arg(bin)
                .arg("run")
                .arg("--config")
                .arg(&conf)
                .args(["--host", "1", "--static-view"]);
            (c, "shoal-proxy")
        }
    };
    cmd.current_dir(dir);
    let mut proc = Proc::start(fe.name(), cmd, &log)?;
    wait_listening(FE_NS, fe.address().1, &mut proc, fe.name())?;
    Ok(Running { proc, counted })
}

/// The `wrk` Lua script: cycles through the request list, prints its
/// counters as one JSON line at the end.
fn wrk_script(list: &Path) -> String {
    format!(
        r#"local reqs, n, i = {{}}, 0, 0
init = function(args)
  for line in io.lines("{}") do
    local host, path = line:match("^(%S+) (%S+)$")
    n = n + 1
    reqs[n] = wrk.format("GET", path, {{ ["Host"] = host }})
  end
end
request = function()
  i = i % n + 1
  return reqs[i]
end
done = function(s, latency, requests)
  io.write(string.format('WRKJSON {{"requests":%d,"duration_us":%d,"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d,"p50_us":%d,"p99_us":%d}}\n',
    s.requests, s.duration, s.errors.connect, s.errors.read, s.errors.write, s.errors.status,
    s.errors.timeout, latency:percentile(50), latency:percentile(99)))
end
"#,
        list.display()
    )
}

/// The request list: `HOST PATH` per line, from the in-memory URL mix.
fn request_list() -> String {
    let mut out = String::new();
    for url in super::routing::url_mix(URLS) {
        let rest = url.split_once("://").map_or(url.as_str(), |(_, r)| r);
        let (host, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let _ = writeln!(out, "{host} {path}");
    }
    out
}

/// `wrk`'s counters for one run.
#[derive(Clone, Copy, Debug, Default, Deserialize)]
struct WrkOut {
    requests: u64,
    duration_us: u64,
    connect: u64,
    read: u64,
    write: u64,
    status: u64,
    timeout: u64,
    p50_us: u64,
    p99_us: u64,
}

fn parse_wrk(stdout: &str) -> Result<WrkOut> {
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("WRKJSON "))
        .with_context(|| format!("no WRKJSON line in wrk's output: {stdout}"))?;
    serde_json::from_str(line).with_context(|| format!("parsing wrk's counters: {line}"))
}

/// One `wrk` run against `fe`.
fn wrk(fe: Frontend, dir: &Path, cpu: usize, connections: usize, seconds: f64) -> Result<WrkOut> {
    let (addr, port) = fe.address();
    let mut c = in_ns(CLI_NS, "taskset");
    c.args([
        "-c",
        &cpu.to_string(),
        "wrk",
        "-t1",
        &format!("-c{connections}"),
        &format!("-d{}s", seconds.max(1.0).round() as u64),
        "--timeout",
        "5s",
        "-s",
    ])
    .arg(dir.join("requests.lua"))
    .arg(format!("http://{addr}:{port}/"));
    let out = sh(&mut c).with_context(|| format!("wrk against {}", fe.name()))?;
    parse_wrk(&out)
}

/// One round's figures for one frontend.
#[derive(Clone, Copy, Debug)]
struct Sample {
    rps: f64,
    cpu_ns_per_request: f64,
    process_cpu_ns_per_request: f64,
    origin_cpu_ns_per_request: f64,
    busy: f64,
    p50_ms: f64,
    p99_ms: f64,
    out: WrkOut,
}

fn measure(
    fe: Frontend,
    running: &Running,
    origin: &Proc,
    dir: &Path,
    client_cpu: usize,
    opts: &WireOptions,
) -> Result<Sample> {
    let (cpu0, proc0, org0) = (
        running.cpu_ns(),
        running.process_cpu_ns(),
        group_cpu_ns(origin.pid(), ""),
    );
    let t = Instant::now();
    let out = wrk(fe, dir, client_cpu, opts.connections, opts.seconds)?;
    let wall = t.elapsed().as_secs_f64();
    let cpu = running.cpu_ns().saturating_sub(cpu0) as f64;
    let process = running.process_cpu_ns().saturating_sub(proc0) as f64;
    let org = group_cpu_ns(origin.pid(), "").saturating_sub(org0) as f64;
    let n = out.requests.max(1) as f64;
    Ok(Sample {
        rps: out.requests as f64 / (out.duration_us.max(1) as f64 / 1e6),
        cpu_ns_per_request: cpu / n,
        process_cpu_ns_per_request: process / n,
        origin_cpu_ns_per_request: org / n,
        busy: cpu / 1e9 / wall,
        p50_ms: out.p50_us as f64 / 1e3,
        p99_ms: out.p99_us as f64 / 1e3,
        out,
    })
}

fn not_run(fe: Frontend, version: String, why: String) -> FrontendCase {
    FrontendCase {
        frontend: fe.name().into(),
        version,
        setup: fe.setup().into(),
        rps: 0.0,
        cpu_ns_per_request: 0.0,
        p50_ms: 0.0,
        p99_ms: 0.0,
        counted: String::new(),
        process_cpu_ns_per_request: None,
        cpu_busy: 0.0,
        origin_cpu_ns_per_request: 0.0,
        requests: 0,
        non_2xx: 0,
        socket_errors: 0,
        rounds_rps: Vec::new(),
        rps_vs_haproxy: None,
        cpu_vs_haproxy: None,
        not_run: Some(why),
    }
}

fn version(fe: Frontend) -> String {
    match fe {
        Frontend::Shoal => crate::shoal_binary()
            .map(|b| version_line(Command::new(b).arg("--version")))
            .unwrap_or_default(),
        Frontend::Haproxy => version_line(Command::new("haproxy").arg("-v")),
        Frontend::Nginx => version_line(Command::new("nginx").arg("-v")),
        Frontend::Squid => version_line(Command::new("squid").arg("-v")),
    }
}

/// Runs the wire half.
///
/// # Errors
/// When the rig cannot be built, a tool is missing, or HAProxy, nginx or
/// Squid will not serve. shoal's case is reported as not run (with the
/// reason) when its proxy will not start or serve, so that the others
/// still run.
pub fn run(opts: &WireOptions) -> Result<WireArrayReport> {
    let net = Net::up()?;
    let dir = net.dir.clone();
    let cpus = core_affinity::get_core_ids()
        .map(|ids| ids.len())
        .unwrap_or(1)
        .max(1);
    let (fe_cpu, client_cpu) = (cpus - 1, 0);
    std::fs::write(dir.join("requests.txt"), request_list())?;
    std::fs::write(
        dir.join("requests.lua"),
        wrk_script(&dir.join("requests.txt")),
    )?;
    std::fs::write(dir.join("origin.conf"), origin_conf(&dir))?;
    let mut origin_cmd = in_ns(ORG_NS, "taskset");
    origin_cmd
        .args(["-c", &client_cpu.to_string(), "nginx", "-e"])
        .arg(dir.join("origin-error.log"))
        .arg("-c")
        .arg(dir.join("origin.conf"));
    let mut origin = Proc::start("origin nginx", origin_cmd, &dir.join("origin.log"))?;
    wait_listening(ORG_NS, 80, &mut origin, "the origin nginx")?;

    // Start every frontend once; idle ones use no CPU. A frontend whose
    // warm-up fails is dropped (shoal: reported as not run).
    let mut running: Vec<(Frontend, String, Running)> = Vec::new();
    let mut cases: Vec<FrontendCase> = Vec::new();
    for fe in Frontend::ALL {
        let v = version(fe);
        let started = start(fe, &dir, fe_cpu).and_then(|r| {
            let w = wrk(fe, &dir, client_cpu, opts.connections, opts.warmup)?;
            let good = w.requests.saturating_sub(w.status);
            if good == 0 {
                bail!(
                    "{} answered no request with 2xx/3xx in the warm-up ({} answers, {} connect errors)",
                    fe.name(),
                    w.requests,
                    w.connect
                );
            }
            Ok(r)
        });
        match started {
            Ok(r) => running.push((fe, v, r)),
            Err(e) if fe == Frontend::Shoal => {
                eprintln!("array: shoal not run: {e:#}");
                cases.push(not_run(fe, v, format!("{e:#}")));
            }
            Err(e) => return Err(e),
        }
    }
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); running.len()];
    for round in 0..opts.rounds {
        // Rotate the order each round.
        for k in 0..running.len() {
            let i = (k + round) % running.len();
            let (fe, _, r) = &running[i];
            samples[i].push(measure(*fe, r, &origin, &dir, client_cpu, opts)?);
        }
    }
    for ((fe, v, r), s) in running.into_iter().zip(samples) {
        let m = |f: fn(&Sample) -> f64| median(&s.iter().map(f).collect::<Vec<_>>());
        let shoal = fe == Frontend::Shoal;
        cases.push(FrontendCase {
            frontend: fe.name().into(),
            version: v,
            setup: fe.setup().into(),
            rps: m(|x| x.rps),
            cpu_ns_per_request: m(|x| x.cpu_ns_per_request),
            p50_ms: m(|x| x.p50_ms),
            p99_ms: m(|x| x.p99_ms),
            counted: if shoal {
                "shoal-proxy-* threads".into()
            } else {
                "every process and thread".into()
            },
            process_cpu_ns_per_request: shoal.then(|| m(|x| x.process_cpu_ns_per_request)),
            cpu_busy: m(|x| x.busy),
            origin_cpu_ns_per_request: m(|x| x.origin_cpu_ns_per_request),
            requests: s.iter().map(|x| x.out.requests).sum(),
            non_2xx: s.iter().map(|x| x.out.status).sum(),
            socket_errors: s
                .iter()
                .map(|x| x.out.connect + x.out.read + x.out.write + x.out.timeout)
                .sum(),
            rounds_rps: s.iter().map(|x| x.rps).collect(),
            rps_vs_haproxy: None,
            cpu_vs_haproxy: None,
            not_run: None,
        });
        let _ = r.proc.stop(Duration::from_secs(3));
    }
    let _ = origin.stop(Duration::from_secs(3));
    cases.sort_by_key(|c| {
        Frontend::ALL
            .iter()
            .position(|f| f.name() == c.frontend)
            .unwrap_or(usize::MAX)
    });
    if let Some(h) = cases
        .iter()
        .find(|c| c.frontend == "haproxy" && c.not_run.is_none())
        .cloned()
    {
        for c in cases.iter_mut().filter(|c| c.not_run.is_none()) {
            c.rps_vs_haproxy = Some(c.rps / h.rps.max(1e-9));
            c.cpu_vs_haproxy = Some(c.cpu_ns_per_request / h.cpu_ns_per_request.max(1e-9));
        }
    }
    drop(net);
    Ok(WireArrayReport {
        seconds: opts.seconds,
        rounds: opts.rounds,
        connections: opts.connections,
        frontend_cpu: fe_cpu,
        client_cpu,
        origins: ORIGINS.len(),
        urls: URLS,
        cases,
    })
}

/// The text summary.
pub fn text(r: &WireArrayReport) -> String {
    let mut s = format!(
        "array wire: wrk -t1 -c{} on CPU {}, each frontend alone on CPU {}, {} origins, {} round(s) × {} s\n",
        r.connections, r.client_cpu, r.frontend_cpu, r.origins, r.rounds, r.seconds
    );
    for c in &r.cases {
        if let Some(why) = &c.not_run {
            let _ = writeln!(s, "  {:<8} not run: {why}", c.frontend);
            continue;
        }
        let _ = writeln!(
            s,
            "  {:<8} {:>9.0} req/s  {:>7.0} CPU ns/req{}  p50 {:.3} ms  p99 {:.3} ms  CPU busy {:.0}%{}{}",
            c.frontend,
            c.rps,
            c.cpu_ns_per_request,
            c.process_cpu_ns_per_request
                .map(|p| format!(" (whole process {p:.0})"))
                .unwrap_or_default(),
            c.p50_ms,
            c.p99_ms,
            c.cpu_busy * 100.0,
            match (c.rps_vs_haproxy, c.cpu_vs_haproxy) {
                (Some(a), Some(b)) if c.frontend != "haproxy" =>
                    format!("  vs haproxy: {a:.2}× req/s, {b:.2}× CPU/req"),
                _ => String::new(),
            },
            if c.non_2xx + c.socket_errors > 0 {
                format!("  ({} non-2xx, {} socket errors)", c.non_2xx, c.socket_errors)
            } else {
                String::new()
            }
        );
    }
    s
}

/// The markdown section.
pub fn markdown(r: &WireArrayReport) -> String {
    let mut s = format!(
        "### On the wire\n\n`wrk -t1 -c{}` (keep-alive, {} URLs of the mix as origin-form \
         requests with `Host`) on CPU {} with the origins ({} nginx servers answering 3 bytes); \
         each frontend alone on CPU {}; {} round(s) × {} s, interleaved, medians. CPU per \
         request: the frontend's CPU time (schedstat) over the requests `wrk` counted; shoal \
         counts its `shoal-proxy-*` threads (whole process beside it). See perf/README.md.\n\n\
         | frontend | req/s | CPU ns/req | p50 ms | p99 ms | CPU busy | req/s vs HAProxy | CPU/req vs HAProxy | setup |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---|\n",
        r.connections, r.urls, r.client_cpu, r.origins, r.frontend_cpu, r.rounds, r.seconds
    );
    for c in &r.cases {
        if let Some(why) = &c.not_run {
            let _ = writeln!(
                s,
                "| {} | not run: {} | | | | | | | {} |",
                c.frontend,
                why.replace('|', "/").replace('\n', " "),
                c.setup
            );
            continue;
        }
        let ratio = |x: Option<f64>| x.map(|v| format!("{v:.2}×")).unwrap_or_default();
        let _ = writeln!(
            s,
            "| {} | {:.0} | {:.0}{} | {:.3} | {:.3} | {:.0}% | {} | {} | {} |",
            c.frontend,
            c.rps,
            c.cpu_ns_per_request,
            c.process_cpu_ns_per_request
                .map(|p| format!(" (process {p:.0})"))
                .unwrap_or_default(),
            c.p50_ms,
            c.p99_ms,
            c.cpu_busy * 100.0,
            ratio(c.rps_vs_haproxy),
            ratio(c.cpu_vs_haproxy),
            c.setup
        );
    }
    s += "\nTarget: shoal at least HAProxy's requests per second at no more CPU per request; far ahead of Squid.\n\n";
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frontend_not_run_is_reported_with_its_reason_and_no_figure() {
        let mut h = not_run(Frontend::Haproxy, "HAProxy 2.6".into(), String::new());
        h.not_run = None;
        h.rps = 1000.0;
        h.cpu_ns_per_request = 2000.0;
        h.rps_vs_haproxy = Some(1.0);
        let r = WireArrayReport {
            cases: vec![
                not_run(Frontend::Shoal, String::new(), "no proxy | here".into()),
                h,
            ],
            ..WireArrayReport::default()
        };
        let md = markdown(&r);
        assert!(md.contains("| shoal | not run: no proxy / here |"), "{md}");
        assert!(md.contains("| haproxy | 1000 | 2000 |"), "{md}");
        assert!(text(&r).contains("shoal    not run: no proxy | here"));
    }

    #[test]
    fn wrk_counters_parse() {
        let out = "Running 1s test\nWRKJSON {\"requests\":10,\"duration_us\":1000000,\"connect\":0,\"read\":1,\"write\":0,\"status\":2,\"timeout\":0,\"p50_us\":120,\"p99_us\":900}\n";
        let w = parse_wrk(out).unwrap();
        assert_eq!((w.requests, w.status, w.read, w.p99_us), (10, 2, 1, 900));
        assert!(parse_wrk("nothing").is_err());
    }

    #[test]
    fn the_request_list_is_host_and_origin_form_path() {
        let list = request_list();
        assert_eq!(list.lines().count(), URLS);
        for line in list.lines() {
            let (host, path) = line.split_once(' ').unwrap();
            assert!(!host.is_empty() && !host.contains('/'), "{line}");
            assert!(path.starts_with('/') && !path.contains(' '), "{line}");
        }
    }

    #[test]
    fn configs_name_every_origin() {
        let dir = Path::new("/tmp/x");
        for text in [
            haproxy_conf(),
            nginx_frontend_conf(dir),
            squid_conf(dir),
            shoal_conf(dir, 1),
        ] {
            for o in ORIGINS {
                assert!(text.contains(o), "{o} missing from {text}");
            }
        }
        assert!(
            haproxy_conf().contains("balance uri")
                && haproxy_conf().contains("hash-type consistent")
        );
        assert!(squid_conf(dir).contains("carp") && squid_conf(dir).contains("cache deny all"));
    }
}
