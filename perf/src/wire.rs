//! `shoal bench wire`: one veth flood, many receivers, in one run.
//!
//! # Receivers, and how each is counted
//!
//! | receiver | what it is | frames received = |
//! |---|---|---|
//! | `shoal_af_xdp` | `shoal run --static-view --backend af_xdp`, host 1 of 3, keeps ~1/3; its XDP fast path drops other hosts' buckets and passes its own datagrams to the stack, in the kernel | shoal's `received + xdp_dropped + xdp_passed` (frames its poll loops judged, plus frames its XDP program dropped or passed) |
//! | `shoal_af_xdp_no_pass` | the same with the pass off (`SHOAL_XDP_PASS=0`): the kept third is copied to userspace, judged there and written into the TAP | as `shoal_af_xdp` |
//! | `shoal_af_xdp_generic` | `shoal_af_xdp` with the XDP program attached in generic (skb) mode | as `shoal_af_xdp` |
//! | `shoal_af_xdp_copy_all` | the same with the XDP fast path off (`SHOAL_XDP_FAST_PATH=0`): every cluster frame copied to userspace | shoal's `received` |
//! | `shoal_af_packet` | the same with `--backend af_packet` | shoal's `received` |
//! | `xdp_drop_native` | a two-instruction XDP_DROP, driver mode | `sbrx0` rx_packets (veth counts every frame its XDP path ran on) |
//! | `xdp_drop_generic` | the same, skb mode | `sbrx0` rx_packets |
//! | `nft_drop_all` | nftables netdev ingress chain with one `drop` rule | `sbrx0` rx_packets |
//! | `nft_jhash_third` | netdev ingress `jhash ip saddr mod 3 != 0 drop`: keeps a third | `sbrx0` rx_packets |
//! | `xt_cluster_third` | iptables mangle PREROUTING `-m cluster` (3 nodes, local node 1, inverted) `-j DROP`: keeps a third; xt_cluster needs conntrack | `sbrx0` rx_packets |
//!
//! shoal is counted by its own counters because frames can reach the
//! interface and still be lost before shoal judges them (a full AF_XDP or
//! TPACKET ring); the kernel's filters run inline on every frame the
//! interface accepts, so the interface counter is exactly what they
//! judged (veth counts a frame as received once its NAPI poll takes it
//! from the ring; frames it could not queue are the sender's tx drops).
//! The fastest of the three trivial drops, per round and placement, is
//! "the ceiling"; every ratio is to the ceiling of its own round.
//!
//! Frames kept by the cluster filters (and by shoal, from its XDP program or
//! through its TAP) continue into the kernel's UDP layer at the VIP, where
//! nothing listens: the same fate for every receiver that keeps a share.
//!
//! # Receive-side CPU per frame
//!
//! GRO is on at `sbrx0`, so veth receives through NAPI for every receiver
//! (64-byte UDP frames never coalesce), and threaded NAPI runs all of it —
//! XDP, the netdev ingress hook, the IP stack, conntrack, iptables, the
//! UDP layer for kept frames — in kthreads of its own. Receive CPU is
//! those kthreads' CPU time plus shoal's process time (its TAP writes run
//! the kernel's receive path for the frames it keeps), over the measured
//! window, divided by frames received. Per-thread accounting keeps other
//! work on the machine out of the figure; what other work still does is
//! slow everything down, so compare within a round and read the medians.
//!
//! # Placements
//!
//! `separate`: trafgen on CPU 0; the NAPI kthread, shoal's poll loop and
//! control thread on CPU 1. `shared`: all of them on CPU 0.

#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use shoal_engine::sys::bpf::AttachMode;

use crate::rig::{
    in_ns, link_counters, receive_ticks, sh, ticks_per_second, Placement, Proc, Rig, RX_DEV, RX_NS,
    VIP,
};
use crate::signals::pause;
use crate::stats::median;
use crate::xdp_drop::XdpDrop;

/// The target for shoal AF_XDP, as a fraction of the ceiling.
pub const TARGET_RATIO: f64 = 0.9;

/// A receiver under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Receiver {
    /// shoal, AF_XDP backend (its XDP fast path drops other hosts'
    /// buckets and passes its own datagrams to the stack, in the kernel).
    ShoalAfXdp,
    /// shoal, AF_XDP backend, fast path on, pass off (`SHOAL_XDP_PASS=0`):
    /// kept frames go through userspace and the TAP.
    ShoalAfXdpNoPass,
    /// shoal, AF_XDP backend, fast path on, XDP attached in generic (skb)
    /// mode: on veth, cheaper per frame than native mode, which copies
    /// every skb into an `xdp_buff` first.
    ShoalAfXdpGeneric,
    /// shoal, AF_XDP backend with the fast path off
    /// (`SHOAL_XDP_FAST_PATH=0`): every cluster frame copied to userspace.
    ShoalAfXdpCopyAll,
    /// shoal, AF_PACKET backend.
    ShoalAfPacket,
    /// XDP_DROP, native mode.
    XdpDropNative,
    /// XDP_DROP, generic mode.
    XdpDropGeneric,
    /// nftables netdev ingress drop-all.
    NftDropAll,
    /// nftables netdev ingress jhash, keep a third.
    NftJhash,
    /// iptables xt_cluster, keep a third.
    XtCluster,
}

impl Receiver {
    /// Every receiver, in the order each round runs them.
    pub const ALL: [Receiver; 10] = [
        Receiver::ShoalAfXdp,
        Receiver::ShoalAfXdpNoPass,
        Receiver::ShoalAfXdpGeneric,
        Receiver::ShoalAfXdpCopyAll,
        Receiver::XdpDropNative,
        Receiver::NftJhash,
        Receiver::ShoalAfPacket,
        Receiver::XdpDropGeneric,
        Receiver::XtCluster,
        Receiver::NftDropAll,
    ];

    /// Stable name.
    pub fn name(self) -> &'static str {
        match self {
            Receiver::ShoalAfXdp => "shoal_af_xdp",
            Receiver::ShoalAfXdpNoPass => "shoal_af_xdp_no_pass",
            Receiver::ShoalAfXdpGeneric => "shoal_af_xdp_generic",
            Receiver::ShoalAfXdpCopyAll => "shoal_af_xdp_copy_all",
            Receiver::ShoalAfPacket => "shoal_af_packet",
            Receiver::XdpDropNative => "xdp_drop_native",
            Receiver::XdpDropGeneric => "xdp_drop_generic",
            Receiver::NftDropAll => "nft_drop_all",
            Receiver::NftJhash => "nft_jhash_third",
            Receiver::XtCluster => "xt_cluster_third",
        }
    }

    /// Whether it is one of the trivial drops the ceiling is taken from.
    pub fn ceiling_candidate(self) -> bool {
        matches!(
            self,
            Receiver::XdpDropNative | Receiver::XdpDropGeneric | Receiver::NftDropAll
        )
    }

    /// How its frames are counted.
    pub fn counted_by(self) -> &'static str {
        match self {
            Receiver::ShoalAfXdp
            | Receiver::ShoalAfXdpNoPass
            | Receiver::ShoalAfXdpGeneric
            | Receiver::ShoalAfXdpCopyAll
            | Receiver::ShoalAfPacket => "shoal --stats received + xdp_dropped + xdp_passed",
            _ => "sbrx0 rx_packets",
        }
    }

    fn is_shoal(self) -> bool {
        matches!(
            self,
            Receiver::ShoalAfXdp
                | Receiver::ShoalAfXdpNoPass
                | Receiver::ShoalAfXdpGeneric
                | Receiver::ShoalAfXdpCopyAll
                | Receiver::ShoalAfPacket
        )
    }
}

/// A receiver while it runs; undone on [`Running::stop`] or drop.
#[derive(Debug)]
enum Running {
    Shoal { proc: Proc, stats: PathBuf },
    Xdp(XdpDrop),
    Nft,
    Xt,
}

/// One counter reading.
#[derive(Clone, Copy, Debug)]
struct Sample {
    frames: u64,
    kept: u64,
    at: SystemTime,
    ticks: u64,
    /// The NAPI kthreads' share of `ticks`.
    napi_ticks: u64,
    offered: u64,
    noports: u64,
}

fn nft(script: &str) -> Result<()> {
    let mut cmd = in_ns(RX_NS, "nft");
    cmd.args(["-f", "-"]);
    let mut child = cmd
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("running nft")?;
    if let Some(mut stdin) = child.stdin.take() {
        use std::io::Write;
        stdin.write_all(script.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "nft -f failed: {}\n{script}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn vip(add: bool) -> Result<()> {
    let verb = if add { "add" } else { "del" };
    let r = sh(std::process::Command::new("ip").args([
        "-n",
        RX_NS,
        "addr",
        verb,
        &format!("{VIP}/32"),
        "dev",
        RX_DEV,
    ]));
    if add {
        r?;
    }
    Ok(())
}

/// Starts `shoal run` as host 1 in the receiver namespace and waits until
/// it writes its first counters.
pub fn start_shoal(
    rig: &Rig,
    name: &str,
    backend: &str,
    (fast_path, pass): (bool, bool),
    xdp_mode: &str,
    control: usize,
    polls: &[(usize, Vec<u32>)],
) -> Result<(Proc, PathBuf)> {
    let exe = crate::shoal_binary()?;
    let config = rig.shoal_config(name, control, polls, xdp_mode)?;
    let stats = rig.dir.join(format!("{name}.stats.json"));
    let _ = std::fs::remove_file(&stats);
    let mut last_err = None;
    for attempt in 0..3 {
        if attempt > 0 {
            // A just-closed AF_XDP socket's pool is released a little later.
            std::thread::sleep(Duration::from_millis(700));
        }
        let mut cmd = in_ns(RX_NS, &exe.to_string_lossy());
        cmd.args(["run", "--config"])
            .arg(&config)
            .args([
                "--host",
                "1",
                "--static-view",
                "--backend",
                backend,
                "--stats",
            ])
            .arg(&stats)
            .env("RUST_LOG", "warn")
            .env("SHOAL_XDP_FAST_PATH", if fast_path { "1" } else { "0" })
            .env("SHOAL_XDP_PASS", if pass { "1" } else { "0" });
        let log = rig.dir.join(format!("{name}.log"));
        let mut p = Proc::start("shoal", cmd, &log)?;
        let until = Instant::now() + Duration::from_secs(15);
        while Instant::now() < until {
            if stats.exists() {
                return Ok((p, stats));
            }
            if !p.alive() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        last_err = Some(anyhow!("shoal ({backend}) did not start: {}", p.log_tail()));
        drop(p);
    }
    Err(last_err.unwrap_or_else(|| anyhow!("shoal did not start")))
}

impl Running {
    fn start(rig: &Rig, r: Receiver, placement: Placement) -> Result<Self> {
        let cpu = placement.rx_cpu();
        Ok(match r {
            Receiver::ShoalAfXdp
            | Receiver::ShoalAfXdpNoPass
            | Receiver::ShoalAfXdpGeneric
            | Receiver::ShoalAfXdpCopyAll
            | Receiver::ShoalAfPacket => {
                let backend = if r == Receiver::ShoalAfPacket {
                    "af_packet"
                } else {
                    "af_xdp"
                };
                let fast_path = r != Receiver::ShoalAfXdpCopyAll;
                let pass = fast_path && r != Receiver::ShoalAfXdpNoPass;
                let mode = if r == Receiver::ShoalAfXdpGeneric {
                    "generic"
                } else {
                    "native"
                };
                let (proc, stats) = start_shoal(
                    rig,
                    r.name(),
                    backend,
                    (fast_path, pass),
                    mode,
                    cpu,
                    &[(cpu, vec![0])],
                )?;
                Running::Shoal { proc, stats }
            }
            Receiver::XdpDropNative => {
                Running::Xdp(XdpDrop::attach(RX_NS, RX_DEV, AttachMode::Driver)?)
            }
            Receiver::XdpDropGeneric => {
                Running::Xdp(XdpDrop::attach(RX_NS, RX_DEV, AttachMode::Skb)?)
            }
            Receiver::NftDropAll => {
                nft(&format!(
                    "table netdev shoalb {{\n chain ingress {{\n  type filter hook ingress device \"{RX_DEV}\" priority 0; policy accept;\n  drop\n }}\n}}\n"
                ))?;
                Running::Nft
            }
            Receiver::NftJhash => {
                vip(true)?;
                nft(&format!(
                    "table netdev shoalb {{\n chain ingress {{\n  type filter hook ingress device \"{RX_DEV}\" priority 0; policy accept;\n  ip daddr {VIP} jhash ip saddr mod 3 seed 0x5eed != 0 drop\n }}\n}}\n"
                ))?;
                Running::Nft
            }
            Receiver::XtCluster => {
                vip(true)?;
                sh(in_ns(RX_NS, "iptables").args([
                    "-t",
                    "mangle",
                    "-A",
                    "PREROUTING",
                    "-i",
                    RX_DEV,
                    "-d",
                    VIP,
                    "-m",
                    "cluster",
                    "--cluster-total-nodes",
                    "3",
                    "!",
                    "--cluster-local-node",
                    "1",
                    "--cluster-hash-seed",
                    "0x5eed",
                    "-j",
                    "DROP",
                ]))?;
                Running::Xt
            }
        })
    }

    fn pids(&self) -> Vec<u32> {
        match self {
            Running::Shoal { proc, .. } => vec![proc.pid()],
            _ => Vec::new(),
        }
    }

    /// Reads the counters. For shoal, waits for the next write of its
    /// counters file and takes the file's time as the reading's time.
    fn sample(&self) -> Result<Sample> {
        let gen = || -> Result<u64> {
            Ok(link_counters(crate::rig::GEN_NS, crate::rig::GEN_DEV)?.tx_packets)
        };
        match self {
            Running::Shoal { stats, .. } => {
                // Everything else is read right after the counters file
                // was written, so the windows line up.
                let (frames, kept, at) = next_stats(stats)?;
                let ticks = receive_ticks(&self.pids());
                Ok(Sample {
                    frames,
                    kept,
                    at,
                    ticks,
                    napi_ticks: receive_ticks(&[]),
                    offered: gen()?,
                    noports: udp_noports()?,
                })
            }
            _ => {
                let ticks = receive_ticks(&[]);
                let c = link_counters(RX_NS, RX_DEV)?;
                let at = SystemTime::now();
                Ok(Sample {
                    frames: c.rx_packets,
                    kept: 0,
                    at,
                    ticks,
                    napi_ticks: ticks,
                    offered: gen()?,
                    noports: udp_noports()?,
                })
            }
        }
    }

    fn stop(self) -> Result<()> {
        match self {
            Running::Shoal { proc, .. } => proc.stop(Duration::from_secs(10)),
            Running::Xdp(x) => {
                drop(x);
                Ok(())
            }
            Running::Nft => {
                let _ = vip(false);
                nft("delete table netdev shoalb\n")
            }
            Running::Xt => {
                let _ = vip(false);
                sh(in_ns(RX_NS, "iptables").args(["-t", "mangle", "-F", "PREROUTING"]))?;
                // iptables-nft leaves the table's hooks registered: remove
                // it so later receivers do not pay for an empty chain.
                let _ = sh(in_ns(RX_NS, "nft").args(["delete", "table", "ip", "mangle"]));
                Ok(())
            }
        }
    }
}

/// The receiver namespace's `Udp: NoPorts` counter: kept frames end at
/// the VIP's UDP port where nothing listens, so this counts what every
/// receiver let through to the stack.
fn udp_noports() -> Result<u64> {
    let snmp = sh(in_ns(RX_NS, "cat").arg("/proc/net/snmp"))?;
    shoal_engine::snmp::counter(&snmp, "Udp", "NoPorts")
        .ok_or_else(|| anyhow!("no Udp NoPorts in /proc/net/snmp"))
}

/// Waits (up to 3 s) for shoal to rewrite its counters file; returns
/// (received, kept, time of the write).
fn next_stats(path: &Path) -> Result<(u64, u64, SystemTime)> {
    let ((seen, kept), at) = crate::next_stats(path, Duration::from_secs(3), |v| {
        // Frames seen: those the poll loops judged plus those the XDP fast
        // path dropped or passed in the kernel; kept: by a poll loop or passed.
        let passed = v["xdp_passed"].as_u64().unwrap_or(0);
        let seen = v["received"].as_u64()? + v["xdp_dropped"].as_u64().unwrap_or(0) + passed;
        Some((seen, v["kept"].as_u64().unwrap_or(0) + passed))
    })?;
    Ok((seen, kept, at))
}

/// One measured window.
#[derive(Clone, Copy, Debug)]
pub struct Window {
    /// Frames/s received.
    pub fps: f64,
    /// Frames/s the generator sent.
    pub offered: f64,
    /// Receive-side CPU, ns per frame received.
    pub cpu_ns: f64,
    /// The NAPI kthreads' part of it (XDP, redirect copies, the stack for
    /// what the kernel keeps); the rest is the receiving process's.
    pub napi_cpu_ns: f64,
    /// Share of received frames shoal's counters say it kept (shoal only).
    pub kept_share: Option<f64>,
    /// Share of received frames that reached the kernel's UDP layer.
    pub stack_share: f64,
}

fn window(a: Sample, b: Sample, shoal: bool) -> Window {
    let secs =
        b.at.duration_since(a.at)
            .unwrap_or(Duration::ZERO)
            .as_secs_f64()
            .max(1e-3);
    let frames = b.frames.saturating_sub(a.frames);
    let cpu_s = b.ticks.saturating_sub(a.ticks) as f64 / ticks_per_second();
    let napi_s = b.napi_ticks.saturating_sub(a.napi_ticks) as f64 / ticks_per_second();
    Window {
        fps: frames as f64 / secs,
        offered: b.offered.saturating_sub(a.offered) as f64 / secs,
        cpu_ns: if frames > 0 {
            cpu_s * 1e9 / frames as f64
        } else {
            0.0
        },
        napi_cpu_ns: if frames > 0 {
            napi_s * 1e9 / frames as f64
        } else {
            0.0
        },
        kept_share: shoal.then(|| b.kept.saturating_sub(a.kept) as f64 / frames.max(1) as f64),
        stack_share: b.noports.saturating_sub(a.noports) as f64 / frames.max(1) as f64,
    }
}

/// Measures one receiver under the flood: start it, flood, warm up,
/// measure `seconds`, stop both.
pub fn measure(
    rig: &Rig,
    r: Receiver,
    placement: Placement,
    seconds: f64,
    warmup: f64,
) -> Result<Window> {
    let running = Running::start(rig, r, placement)
        .with_context(|| format!("starting {} ({})", r.name(), placement.name()))?;
    let result: Result<Window> = (|| {
        rig.place(Some(placement))?;
        let flood = rig.flood(&[0])?;
        rig.place(Some(placement))?;
        pause(warmup)?;
        let a = running.sample()?;
        pause(seconds)?;
        let b = running.sample()?;
        flood.kill();
        Ok(window(a, b, r.is_shoal()))
    })();
    let stopped = running.stop();
    let w = result?;
    stopped.with_context(|| format!("stopping {}", r.name()))?;
    std::thread::sleep(Duration::from_millis(200));
    Ok(w)
}

/// Options of the wire bench.
#[derive(Clone, Debug)]
pub struct WireOptions {
    /// Measured seconds per receiver and round.
    pub seconds: f64,
    /// Rounds.
    pub rounds: usize,
    /// Short warm-up.
    pub smoke: bool,
}

/// One receiver at one placement, over all rounds.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WireCase {
    /// [`Receiver::name`].
    pub receiver: String,
    /// `separate` or `shared`.
    pub placement: Placement,
    /// How frames were counted.
    pub counted_by: String,
    /// Median frames/s received.
    pub fps: f64,
    /// Every round's frames/s.
    pub rounds_fps: Vec<f64>,
    /// Median frames/s the generator sent.
    pub offered_fps: f64,
    /// Median receive-side CPU, ns per frame.
    pub cpu_ns_per_frame: f64,
    /// Median of its NAPI-kthread part, ns per frame (the rest is the
    /// receiving process: shoal's poll loop, its TAP writes, its idle
    /// polling).
    #[serde(default)]
    pub napi_cpu_ns_per_frame: f64,
    /// Median over rounds of frames/s divided by that round's ceiling.
    pub ratio_to_ceiling: f64,
    /// Median share shoal's counters say it kept (shoal only; ~1/3 expected).
    pub kept_share: Option<f64>,
    /// Median share of received frames that reached the kernel's UDP layer
    /// (`Udp: NoPorts` of the receiver namespace): ~1/3 for the cluster
    /// filters and shoal, 0 for the drops.
    pub stack_share: f64,
    /// A trivial drop the ceiling may come from.
    pub ceiling_candidate: bool,
}

/// The ceiling of one placement.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Ceiling {
    /// `separate` or `shared`.
    pub placement: Placement,
    /// The candidate with the highest median frames/s.
    pub receiver: String,
    /// Its median frames/s.
    pub fps: f64,
}

/// The wire bench's report.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WireReport {
    /// Measured seconds per receiver and round.
    pub seconds: f64,
    /// Rounds.
    pub rounds: usize,
    /// Every receiver at every placement.
    pub cases: Vec<WireCase>,
    /// The ceiling per placement.
    pub ceilings: Vec<Ceiling>,
    /// The target for shoal AF_XDP against the ceiling.
    pub target_ratio: f64,
}

/// Runs the wire bench.
///
/// # Errors
/// When the rig cannot be built or a receiver fails to start or stop.
pub fn run(opts: &WireOptions) -> Result<WireReport> {
    let rig = Rig::up(1)?;
    sh(std::process::Command::new("ip").args([
        "-n",
        RX_NS,
        "route",
        "add",
        "10.1.0.0/16",
        "dev",
        RX_DEV,
    ]))?;
    let placements = [Placement::Separate, Placement::Shared];
    let warmup = if opts.smoke { 0.5 } else { 1.0 };
    // windows[placement][receiver] = per round
    let mut windows: Vec<Vec<Vec<Window>>> =
        vec![vec![Vec::new(); Receiver::ALL.len()]; placements.len()];
    for round in 0..opts.rounds {
        for (pi, &placement) in placements.iter().enumerate() {
            rig.place(Some(placement))?;
            for (ri, &r) in Receiver::ALL.iter().enumerate() {
                let w = measure(&rig, r, placement, opts.seconds, warmup)?;
                eprintln!(
                    "wire: round {} {:<8} {:<21} {:>6.3} Mpps  {:>6.0} ns/frame ({:.0} NAPI)  offered {:.3} Mpps  kept {}",
                    round + 1,
                    placement.name(),
                    r.name(),
                    w.fps / 1e6,
                    w.cpu_ns,
                    w.napi_cpu_ns,
                    w.offered / 1e6,
                    w.kept_share
                        .map(|k| format!("{:.0}%", k * 100.0))
                        .unwrap_or_else(|| "-".into())
                );
                windows[pi][ri].push(w);
            }
        }
    }
    Ok(summarize(&placements, &windows, opts))
}

fn summarize(
    placements: &[Placement],
    windows: &[Vec<Vec<Window>>],
    opts: &WireOptions,
) -> WireReport {
    let mut cases = Vec::new();
    let mut ceilings = Vec::new();
    for (pi, &placement) in placements.iter().enumerate() {
        let rounds = windows[pi].first().map(|w| w.len()).unwrap_or(0);
        // Per round, the best trivial drop.
        let round_ceiling: Vec<f64> = (0..rounds)
            .map(|k| {
                Receiver::ALL
                    .iter()
                    .enumerate()
                    .filter(|(_, r)| r.ceiling_candidate())
                    .map(|(ri, _)| windows[pi][ri][k].fps)
                    .fold(0.0, f64::max)
            })
            .collect();
        let mut best: Option<(Receiver, f64)> = None;
        for (ri, &r) in Receiver::ALL.iter().enumerate() {
            let ws = &windows[pi][ri];
            let fps: Vec<f64> = ws.iter().map(|w| w.fps).collect();
            let ratios: Vec<f64> = ws
                .iter()
                .zip(&round_ceiling)
                .map(|(w, c)| if *c > 0.0 { w.fps / c } else { 0.0 })
                .collect();
            let kept: Vec<f64> = ws.iter().filter_map(|w| w.kept_share).collect();
            let m = median(&fps);
            if r.ceiling_candidate() && best.is_none_or(|(_, f)| m > f) {
                best = Some((r, m));
            }
            cases.push(WireCase {
                receiver: r.name().to_string(),
                placement,
                counted_by: r.counted_by().to_string(),
                fps: m,
                rounds_fps: fps,
                offered_fps: median(&ws.iter().map(|w| w.offered).collect::<Vec<_>>()),
                cpu_ns_per_frame: median(&ws.iter().map(|w| w.cpu_ns).collect::<Vec<_>>()),
                napi_cpu_ns_per_frame: median(
                    &ws.iter().map(|w| w.napi_cpu_ns).collect::<Vec<_>>(),
                ),
                ratio_to_ceiling: median(&ratios),
                kept_share: (!kept.is_empty()).then(|| median(&kept)),
                stack_share: median(&ws.iter().map(|w| w.stack_share).collect::<Vec<_>>()),
                ceiling_candidate: r.ceiling_candidate(),
            });
        }
        if let Some((r, fps)) = best {
            ceilings.push(Ceiling {
                placement,
                receiver: r.name().to_string(),
                fps,
            });
        }
    }
    WireReport {
        seconds: opts.seconds,
        rounds: opts.rounds,
        cases,
        ceilings,
        target_ratio: TARGET_RATIO,
    }
}

/// Text table of a report.
pub fn text(r: &WireReport) -> String {
    let mut s = format!(
        "wire: 64-byte UDP flood over veth, {} round(s) x {} s per receiver, medians\n",
        r.rounds, r.seconds
    );
    for c in &r.ceilings {
        s += &format!(
            "ceiling ({}): {} at {:.3} Mpps\n",
            c.placement.name(),
            c.receiver,
            c.fps / 1e6
        );
    }
    s += &format!(
        "{:<9} {:<21} {:>8} {:>9} {:>9} {:>6} {:>8} {:>6}  {}\n",
        "placement",
        "receiver",
        "Mpps",
        "x ceiling",
        "ns/frame",
        "NAPI",
        "offered",
        "to UDP",
        "counted by"
    );
    for c in &r.cases {
        s += &format!(
            "{:<9} {:<21} {:>8.3} {:>8.2}x {:>9.0} {:>6.0} {:>8.3} {:>5.0}%  {}\n",
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
        "target: shoal_af_xdp >= {}x the ceiling, and less CPU per frame than both kernel cluster filters\n",
        r.target_ratio
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(fps: f64) -> Window {
        Window {
            fps,
            offered: 1e6,
            cpu_ns: 100.0,
            napi_cpu_ns: 50.0,
            kept_share: None,
            stack_share: 0.0,
        }
    }

    #[test]
    fn ceiling_is_the_best_trivial_drop_of_each_round() {
        let opts = WireOptions {
            seconds: 1.0,
            rounds: 2,
            smoke: true,
        };
        // Receiver order: shoal_af_xdp, shoal no pass, shoal generic, shoal
        // copy-all, xdp native, jhash, shoal af_packet, xdp generic,
        // xt_cluster, nft drop-all.
        let round = |shoal: f64, native: f64, nft: f64| {
            vec![
                vec![w(shoal)],
                vec![w(0.35)],
                vec![w(0.3)],
                vec![w(0.2)],
                vec![w(native)],
                vec![w(0.5)],
                vec![w(0.4)],
                vec![w(0.9)],
                vec![w(0.3)],
                vec![w(nft)],
            ]
        };
        let mut a = round(0.5, 1.0, 0.8);
        let b = round(0.9, 0.7, 1.2);
        for (x, y) in a.iter_mut().zip(b) {
            x.extend(y);
        }
        let r = summarize(&[Placement::Shared], &[a], &opts);
        let shoal = &r.cases[0];
        // Round ceilings 1.0 and 1.2: ratios 0.5 and 0.75.
        assert!((shoal.ratio_to_ceiling - 0.625).abs() < 1e-9, "{shoal:?}");
        assert_eq!(r.ceilings.len(), 1);
        // Medians: native 0.85, generic 0.9, nft 1.0.
        assert_eq!(r.ceilings[0].receiver, "nft_drop_all");
    }
}
