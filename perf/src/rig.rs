//! The wire and scaling benches' test rig: two network namespaces of their
//! own joined by a veth pair, a trafgen flood between them, and the
//! counters both benches read.
//!
//! # Contract
//!
//! * Names: namespaces `shoal-b-gen` and `shoal-b-rx` (never the lab's
//!   `shoal-sw`, `shoal-client`, `shoal-hN`, nor the engine tests'),
//!   interfaces `sbgen0` (generator) and `sbrx0` (receiver). Leftovers of
//!   a killed run, found by these exact names, are removed at start.
//! * Everything made is undone when the [`Rig`] drops: processes it
//!   started are killed by process group (trafgen forks workers), then the
//!   namespaces are deleted, which removes the veth pair.
//! * No traffic leaves the two namespaces: trafgen writes raw frames to
//!   `sbgen0`, whose only peer is `sbrx0`.
//! * The flood: 60-byte (64 on the wire) UDP frames from 65,536 client
//!   addresses (10.1.0.0/16, one source port each) to the cluster's VIP
//!   10.0.0.100:7001 and its multicast cluster MAC 03:bf:0a:00:00:64, from
//!   `scripts/trafgen/cluster-udp64.trafgen`. Multicast mode, because the
//!   kernel's own cluster filters only see frames the stack accepts, and
//!   xt_cluster is documented for a multicast cluster MAC.

#![forbid(unsafe_code)]

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

/// The generator's namespace.
pub const GEN_NS: &str = "shoal-b-gen";
/// The receiver's namespace.
pub const RX_NS: &str = "shoal-b-rx";
/// The generator's interface.
pub const GEN_DEV: &str = "sbgen0";
/// The receiver's interface.
pub const RX_DEV: &str = "sbrx0";
/// The cluster's VIP.
pub const VIP: &str = "10.0.0.100";

/// The trafgen profile (the same file `scripts/trafgen/` ships).
pub const TRAFGEN_PROFILE: &str = include_str!("../../scripts/trafgen/cluster-udp64.trafgen");

/// Where the receive work runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Placement {
    /// Generator on CPU 0; the receive side (the veth's threaded NAPI
    /// kthread, shoal's poll loop and control thread) on CPU 1.
    Separate,
    /// Everything on CPU 0.
    Shared,
}

impl Placement {
    /// Stable name.
    pub fn name(self) -> &'static str {
        match self {
            Placement::Separate => "separate",
            Placement::Shared => "shared",
        }
    }

    /// The CPU the receive side runs on.
    pub fn rx_cpu(self) -> usize {
        match self {
            Placement::Separate => 1,
            Placement::Shared => 0,
        }
    }
}

/// Runs a command, failing with its stderr when it fails.
pub fn sh(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `ip netns exec NS PROGRAM`.
pub fn in_ns(ns: &str, program: &str) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns, program]);
    c
}

fn ip(args: &[&str]) -> Result<String> {
    sh(Command::new("ip").args(args))
}

/// Writes `value` to a file inside a namespace's view of /sys or /proc.
pub fn write_in_ns(ns: &str, path: &str, value: &str) -> Result<()> {
    sh(in_ns(ns, "sh").args(["-c", &format!("echo {value} > {path}")]))?;
    Ok(())
}

/// A started process, killed (its whole process group) when dropped.
#[derive(Debug)]
pub struct Proc {
    child: Child,
    name: String,
    log: PathBuf,
}

impl Proc {
    /// Starts `cmd` in a process group of its own, output to `log`.
    pub fn start(name: &str, mut cmd: Command, log: &Path) -> Result<Self> {
        let out =
            std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone()?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        Ok(Self {
            child,
            name: name.to_string(),
            log: log.to_path_buf(),
        })
    }

    /// Its process ID (also its process group ID).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether it is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The last lines of its log.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(6)..].join("\n")
    }

    /// Sends `signal` to its process group.
    fn signal_group(&self, signal: &str) {
        let _ = Command::new("kill")
            .args([&format!("-{signal}"), "--", &format!("-{}", self.pid())])
            .stderr(Stdio::null())
            .status();
    }

    /// SIGTERM, then SIGKILL after `grace`; waits for it.
    pub fn stop(mut self, grace: Duration) -> Result<()> {
        self.signal_group("TERM");
        let until = Instant::now() + grace;
        while Instant::now() < until {
            if !self.alive() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.signal_group("KILL");
        let _ = self.child.wait();
        Err(anyhow!("{} ignored SIGTERM for {grace:?}", self.name))
    }

    /// SIGKILL to the group, then wait (trafgen with `-t 0` ignores SIGTERM).
    pub fn kill(mut self) {
        self.signal_group("KILL");
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.signal_group("KILL");
            let _ = self.child.wait();
        }
    }
}

/// Running trafgen instances; killed (SIGKILL, by process group) on
/// [`Flood::kill`] or drop.
#[derive(Debug)]
pub struct Flood {
    procs: Vec<Proc>,
}

impl Flood {
    /// Stops every instance.
    pub fn kill(self) {
        for p in self.procs {
            p.kill();
        }
    }
}

/// PIDs of the processes in process group `pgid`.
pub fn group_members(pgid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()))
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| {
                    let (_, rest) = s.rsplit_once(')')?;
                    // state ppid pgrp
                    rest.split_whitespace().nth(2)?.parse::<u32>().ok()
                })
                == Some(pgid)
        })
        .collect()
}

/// Interface counters.
#[derive(Clone, Copy, Debug, Default)]
pub struct LinkCounters {
    /// rx packets.
    pub rx_packets: u64,
    /// rx dropped.
    pub rx_dropped: u64,
    /// tx packets.
    pub tx_packets: u64,
    /// tx dropped.
    pub tx_dropped: u64,
}

/// Reads `ip -s -j link show DEV` in `ns`.
pub fn link_counters(ns: &str, dev: &str) -> Result<LinkCounters> {
    let out = ip(&["-n", ns, "-s", "-j", "link", "show", "dev", dev])?;
    let v: serde_json::Value = serde_json::from_str(&out).context("parsing ip -j output")?;
    let s = &v[0]["stats64"];
    let n = |dir: &str, key: &str| s[dir][key].as_u64().unwrap_or(0);
    if s.is_null() {
        bail!("no stats64 for {dev} in {ns}");
    }
    Ok(LinkCounters {
        rx_packets: n("rx", "packets"),
        rx_dropped: n("rx", "dropped"),
        tx_packets: n("tx", "packets"),
        tx_dropped: n("tx", "dropped"),
    })
}

/// CPU time, in clock ticks, that counts as receive work: the threaded-NAPI
/// kthreads of `sbrx0` (with GRO on, veth runs its whole receive path in
/// NAPI, and threaded NAPI puts that in kthreads of its own, so none of it
/// hides in the machine-wide softirq time other work also adds to), plus
/// the given processes (shoal, all threads; its TAP writes run the
/// kernel's receive path for kept frames in its own context).
pub fn receive_ticks(pids: &[u32]) -> u64 {
    napi_threads()
        .into_iter()
        .chain(pids.iter().copied())
        .map(process_ticks)
        .sum()
}

/// utime + stime of a process (all its threads), in clock ticks.
pub fn process_ticks(pid: u32) -> u64 {
    stat_ticks(&format!("/proc/{pid}/stat"))
}

/// utime + stime of the calling thread, in clock ticks.
pub fn thread_ticks() -> u64 {
    stat_ticks("/proc/thread-self/stat")
}

/// utime + stime from a `stat` file of procfs, in clock ticks (0 when
/// unreadable).
fn stat_ticks(path: &str) -> u64 {
    let Ok(s) = std::fs::read_to_string(path) else {
        return 0;
    };
    // The command name may hold spaces: fields start after the last ')'.
    let Some((_, rest)) = s.rsplit_once(')') else {
        return 0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state); utime is field 14, stime 15.
    let n = |i: usize| f.get(i).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
    n(11) + n(12)
}

/// PIDs of the kthreads `napi/sbrx0-*` (threaded NAPI of the receiver).
pub fn napi_threads() -> Vec<u32> {
    let prefix = format!("napi/{RX_DEV}-");
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()))
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .map(|c| c.starts_with(&prefix))
                .unwrap_or(false)
        })
        .collect()
}

/// Clock ticks per second.
pub fn ticks_per_second() -> f64 {
    // USER_HZ is 100 on every Linux ABI shoal targets; /proc/stat and
    // /proc/PID/stat are in it regardless of the kernel's HZ.
    100.0
}

/// The two namespaces and the veth pair.
#[derive(Debug)]
pub struct Rig {
    /// Scratch directory (configs, logs, the trafgen profile).
    pub dir: PathBuf,
    queues: u32,
}

/// Tools the rig needs, and the Debian package of each.
const TOOLS: [(&str, &str); 5] = [
    ("ip", "iproute2"),
    ("trafgen", "netsniff-ng"),
    ("nft", "nftables"),
    ("iptables", "iptables"),
    ("ethtool", "ethtool"),
];

fn have(tool: &str) -> bool {
    [
        "/usr/sbin",
        "/sbin",
        "/usr/bin",
        "/bin",
        "/usr/local/sbin",
        "/usr/local/bin",
    ]
    .iter()
    .any(|d| Path::new(d).join(tool).exists())
}

/// Removes what a killed run left behind, found by the rig's exact
/// namespace names: processes still running inside them (by PID, as `ip
/// netns pids` lists them), then the namespaces.
pub fn remove_leftovers() {
    for ns in [GEN_NS, RX_NS] {
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

impl Rig {
    /// Builds the namespaces with `queues` rx and tx queues on each veth end.
    ///
    /// # Errors
    /// When a tool is missing (named, with its package) or a step fails.
    pub fn up(queues: u32) -> Result<Self> {
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
        remove_leftovers();
        let dir = std::env::temp_dir().join(format!("shoal-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let rig = Self { dir, queues };
        rig.build()?;
        Ok(rig)
    }

    fn build(&self) -> Result<()> {
        let q = self.queues.to_string();
        ip(&["netns", "add", GEN_NS])?;
        ip(&["netns", "add", RX_NS])?;
        ip(&[
            "-n",
            GEN_NS,
            "link",
            "add",
            GEN_DEV,
            "numtxqueues",
            &q,
            "numrxqueues",
            &q,
            "type",
            "veth",
            "peer",
            "name",
            RX_DEV,
            "netns",
            RX_NS,
            "numtxqueues",
            &q,
            "numrxqueues",
            &q,
        ])?;
        for (ns, dev, addr) in [
            (GEN_NS, GEN_DEV, "10.0.0.200/16"),
            (RX_NS, RX_DEV, "10.0.0.11/16"),
        ] {
            for key in ["all", "default"] {
                write_in_ns(
                    ns,
                    &format!("/proc/sys/net/ipv6/conf/{key}/disable_ipv6"),
                    "1",
                )?;
            }
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
            ip(&["-n", ns, "addr", "add", addr, "dev", dev])?;
            ip(&["-n", ns, "link", "set", dev, "up"])?;
            // No segmentation offloads: every frame is a real 64-byte
            // frame, as on a wire. GRO stays on at the receiver (as on a
            // real NIC): it makes veth receive through NAPI for every
            // receiver, not only XDP ones, so threaded NAPI can carry all
            // of the receive work (64-byte UDP frames never coalesce).
            let _ =
                sh(in_ns(ns, "ethtool").args(["-K", dev, "gso", "off", "tso", "off", "tx", "off"]));
            if ns == RX_NS {
                sh(in_ns(ns, "ethtool").args(["-K", dev, "gro", "on"]))?;
            }
        }
        std::fs::write(self.dir.join("flood.trafgen"), TRAFGEN_PROFILE)?;
        // A key of the rig's own, private from the start: `shoal run`
        // refuses a key file others can read.
        use std::io::{Read as _, Write as _};
        use std::os::unix::fs::OpenOptionsExt as _;
        let key = self.dir.join("cluster.key");
        let _ = std::fs::remove_file(&key);
        let mut bytes = [0u8; 32];
        std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&key)?
            .write_all(format!("{hex}\n").as_bytes())?;
        Ok(())
    }

    /// Steers the receive work: `Some(p)` runs veth's NAPI in threaded
    /// mode with its kthreads pinned to `p`'s receive CPU; `None` runs it
    /// in softirq on the sending CPU (rx queue i on CPU i when sender i
    /// sends from CPU i). Call again once a receiver runs: attaching XDP
    /// may make new NAPI instances.
    ///
    /// # Errors
    /// When the kernel refuses threaded NAPI.
    pub fn place(&self, placement: Option<Placement>) -> Result<()> {
        let threaded = if placement.is_some() { "1" } else { "0" };
        write_in_ns(
            RX_NS,
            &format!("/sys/class/net/{RX_DEV}/threaded"),
            threaded,
        )?;
        if let Some(p) = placement {
            self.pin_napi(p.rx_cpu());
        }
        Ok(())
    }

    /// Pins the receiver's NAPI kthreads to `cpu`.
    pub fn pin_napi(&self, cpu: usize) {
        for pid in napi_threads() {
            let _ = Command::new("taskset")
                .args(["-p", "-c", &cpu.to_string(), &pid.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }

    /// Starts one trafgen per entry of `cpus`, its worker on that CPU.
    ///
    /// trafgen runs a single worker when given a gap (`--gap 0`, needed
    /// against a slow receiver), and that worker pins itself to CPU 0
    /// whatever the caller's affinity: so each instance is started, then
    /// its processes are re-pinned to their CPU. veth picks the tx queue
    /// from the sending CPU, so instance i fills rx queue i.
    pub fn flood(&self, cpus: &[usize]) -> Result<Flood> {
        let mut procs = Vec::new();
        for i in 0..cpus.len() {
            let mut cmd = in_ns(GEN_NS, "trafgen");
            cmd.args(["--dev", GEN_DEV, "--conf"])
                .arg(self.dir.join("flood.trafgen"))
                .args(["--cpus", "1", "--gap", "0", "--no-cpu-stats"]);
            let log = self.dir.join(format!("trafgen{i}.log"));
            procs.push(Proc::start("trafgen", cmd, &log)?);
        }
        std::thread::sleep(Duration::from_millis(300));
        for (p, &cpu) in procs.iter_mut().zip(cpus) {
            if !p.alive() {
                bail!("trafgen exited at start: {}", p.log_tail());
            }
            for pid in group_members(p.pid()) {
                let _ = Command::new("taskset")
                    .args(["-p", "-c", &cpu.to_string(), &pid.to_string()])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            }
        }
        Ok(Flood { procs })
    }

    /// A three-host multicast cluster config for `shoal run` as host 1,
    /// one poll loop per entry of `polls` (core, queues).
    /// `xdp_mode`: `native` or `generic`.
    pub fn shoal_config(
        &self,
        name: &str,
        control: usize,
        polls: &[(usize, Vec<u32>)],
        xdp_mode: &str,
    ) -> Result<PathBuf> {
        let poll = polls
            .iter()
            .map(|(core, qs)| {
                format!(
                    "{{ core = {core}, queues = [{}] }}",
                    qs.iter()
                        .map(|q| q.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })
            .collect::<Vec<_>>()
            .join(", ");
        let mut text = format!(
            "# shoal bench: three-host multicast cluster, this rig is host 1.\n\
             [cluster]\nvips = [\"{VIP}\"]\nmode = \"multicast\"\nkey_file = \"cluster.key\"\n\n\
             [io]\nring_size = 16384\nbatch_size = 64\nxdp_mode = \"{xdp_mode}\"\n\n\
             [[host]]\nid = 1\ninterface = \"{RX_DEV}\"\ndedicated = [\"10.0.0.11/16\"]\n\
             [host.cores]\ncontrol = {control}\npoll = [{poll}]\n"
        );
        for id in 2..=3 {
            text += &format!(
                "\n[[host]]\nid = {id}\ninterface = \"{RX_DEV}\"\ndedicated = [\"10.0.0.1{id}/16\"]\n"
            );
        }
        let path = self.dir.join(format!("{name}.toml"));
        std::fs::write(&path, text)?;
        Ok(path)
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        remove_leftovers();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_ticks_are_read() {
        // Burn a little CPU so the count is not zero on a fresh process.
        let mut x = 0u64;
        let t = Instant::now();
        while t.elapsed() < Duration::from_millis(50) {
            x = x.wrapping_add(std::hint::black_box(1));
        }
        std::hint::black_box(x);
        assert!(process_ticks(std::process::id()) > 0);
        assert!(thread_ticks() > 0);
        assert_eq!(process_ticks(u32::MAX), 0);
    }

    #[test]
    fn the_profile_floods_the_cluster() {
        // The multicast cluster MAC of 10.0.0.100 and the VIP itself.
        assert!(TRAFGEN_PROFILE.contains("0x03, 0xbf, 0x0a, 0x00, 0x00, 0x64"));
        assert!(TRAFGEN_PROFILE.contains("10, 0, 0, 100"));
    }
}
