//! `shoal bench pipeline`: the dataplane alone, frames per second per core
//! and nanoseconds per frame through [`Dataplane::judge_batch`], plus
//! instructions per frame under callgrind.
//!
//! # What is measured, and how
//!
//! * One [`Dataplane`] judging as host 1 of a three-host cluster (NLB's
//!   default rule: all ports, both protocols, Single affinity, equal
//!   weights), with a descriptor table of 2^21 slots pre-filled with
//!   [`TABLE_ENTRIES`] (1,000,000) tracked connections, established TCP
//!   flows and PPTP control connections this host owns.
//! * Six mixes of 60-byte frames (64 on the wire), each a pool of
//!   [`POOL`] distinct frames in one flat buffer, judged in batches of
//!   [`BATCH`] as a poll loop does ([`Mix::ALL`] says what each holds).
//! * Time: `Instant` around whole passes over the pool; a mix that must not
//!   repeat itself (the SYN flood, whose spoofed sources never recur) is
//!   rewritten between passes, outside the timed region. Rounds interleave
//!   the mixes; the figure is the median over rounds, single-threaded, so
//!   frames/s is per core.
//! * Instructions: the same fixture runs under `valgrind --tool=callgrind`
//!   in a hidden worker mode (`shoal-bench callgrind-worker`); collection is
//!   toggled on only inside [`measured_pass`] and dumped after each mix (no
//!   fixture setup is counted). The figure, `instructions_per_frame`, is
//!   the inclusive cost of the dataplane's entry point, every call of
//!   [`Dataplane::judge_batch`] (or [`Dataplane::judge_batch_general`])
//!   with everything it calls: parsing, lookups, hashing, descriptors,
//!   counters, verdict writes, the call and its per-batch setup, divided by
//!   the frames judged. `loop_instructions_per_frame` adds the bench's own
//!   loop around it (filling each batch's array of frame slices from the
//!   pool, as a poll loop fills it from its ring: about 10 per frame),
//!   which is the harness's work, not the dataplane's.
//!
//! * Side by side: every mix is judged twice per round, through
//!   [`Dataplane::judge_batch`] (the common-frame shortcut for untagged
//!   option-less IPv4 TCP, UDP, GRE and ESP to a VIP) and through
//!   [`Dataplane::judge_batch_general`] (the general parser for every frame,
//!   the path every frame took before the shortcut), in the same process on
//!   the same table, and both are counted under callgrind: the `general_*`
//!   figures are the "before" of the same build.
//!
//! The targets (README, Benchmarks) are reported beside the figures, met or not.

#![forbid(unsafe_code)]

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use shoal_dataplane::descriptor::DescriptorConfig;
use shoal_dataplane::hash::mix64;
use shoal_dataplane::mac::unicast_mac;
use shoal_dataplane::map::{ClusterMap, View};
use shoal_dataplane::pipeline::{Dataplane, Verdict, PPTP_PORT};
use shoal_dataplane::{
    Affinity, ClusterMode, ClusterSpec, FilterMode, HostId, HostSet, PortRule, Protocol,
};

use crate::frames::{respoof, write_ipv4, Pool, Transport, FRAME_LEN, STRIDE};
use crate::stats::median;
use shoal_dataplane::wire::tcp::flags::{ACK, SYN};

/// Connections pre-filled into the descriptor table.
pub const TABLE_ENTRIES: usize = 1_000_000;
/// Descriptor table slots (8-way sets; 1,000,000 entries fill it to 48 %).
pub const TABLE_CAPACITY: usize = 1 << 21;
/// Distinct frames per mix.
pub const POOL: usize = 1 << 16;
/// Frames per `judge_batch` call (the engine's default batch size).
pub const BATCH: usize = 64;
/// Target for the drop path, frames/s per core.
pub const TARGET_DROP_MPPS: f64 = 30.0;
/// Target, instructions per frame.
pub const TARGET_INSTRUCTIONS: f64 = 100.0;

const VIP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 100);
const HOSTS: u8 = 3;
const LOCAL: u8 = 1;
const SERVICE_PORT: u16 = 80;

/// A traffic mix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mix {
    /// UDP from clients whose buckets other hosts own: the pure drop path.
    UdpOtherHosts,
    /// TCP ACKs of connections other hosts own: drop after a descriptor
    /// probe that misses.
    TcpOtherHosts,
    /// UDP from random clients: this host keeps one frame in three.
    UdpOneInThree,
    /// TCP SYNs from spoofed random sources, never repeated; one in three
    /// is this host's and takes a descriptor.
    SynFlood,
    /// TCP data of connections this host tracks (descriptor hits).
    Established,
    /// PPTP GRE from random clients; the third whose control connection
    /// this host tracks is kept.
    Gre,
}

impl Mix {
    /// Every mix, in the order they run (the SYN flood last: it churns
    /// half-open entries).
    pub const ALL: [Mix; 6] = [
        Mix::UdpOtherHosts,
        Mix::TcpOtherHosts,
        Mix::UdpOneInThree,
        Mix::Established,
        Mix::Gre,
        Mix::SynFlood,
    ];

    /// A stable snake_case name.
    pub fn name(self) -> &'static str {
        match self {
            Mix::UdpOtherHosts => "udp_other_hosts",
            Mix::TcpOtherHosts => "tcp_other_hosts",
            Mix::UdpOneInThree => "udp_one_in_3",
            Mix::SynFlood => "syn_flood",
            Mix::Established => "established",
            Mix::Gre => "gre",
        }
    }

    /// What the mix holds.
    pub fn description(self) -> &'static str {
        match self {
            Mix::UdpOtherHosts => "UDP, every frame another host's (drop path)",
            Mix::TcpOtherHosts => {
                "TCP ACK, every flow another host's (drop after a descriptor miss)"
            }
            Mix::UdpOneInThree => "UDP from random clients, one in 3 kept",
            Mix::SynFlood => "SYN flood from spoofed never-repeating sources, one in 3 tracked",
            Mix::Established => "TCP data of tracked connections (descriptor hits), all kept",
            Mix::Gre => "PPTP GRE, one in 3 follows a control connection tracked here",
        }
    }

    /// Whether every frame of the mix is dropped (the target's drop path).
    pub fn drop_path(self) -> bool {
        matches!(self, Mix::UdpOtherHosts | Mix::TcpOtherHosts)
    }
}

fn host(n: u8) -> HostId {
    HostId::new(n).unwrap_or(HostId::new(1).expect("1 is a valid host ID"))
}

/// A deterministic client address outside the cluster's /16.
fn client(i: u64) -> Ipv4Addr {
    Ipv4Addr::from(0x0b00_0000 | (mix64(i) as u32 & 0x00ff_ffff))
}

fn port(i: u64) -> u16 {
    1024 + (mix64(i ^ 0x706f_7274) % 64_000) as u16
}

/// The dataplane under test and what was pre-filled into it.
#[derive(Debug)]
pub struct Fixture {
    dp: Dataplane,
    map: Arc<ClusterMap>,
    /// Established connections this host tracks: (client, port).
    tracked: Vec<(Ipv4Addr, u16)>,
    /// Clients whose PPTP control connection this host tracks.
    pptp_here: Vec<Ipv4Addr>,
    /// Clients whose PPTP control connection another host tracks.
    pptp_elsewhere: Vec<Ipv4Addr>,
    now: u64,
}

impl Fixture {
    /// Host 1 of 3 with `entries` tracked connections in a table of
    /// `capacity` slots.
    ///
    /// # Errors
    /// When the table will not take `entries` (it always does at the
    /// sizes this bench uses; the check keeps a wrong figure from being
    /// reported as a 1,000,000-entry one).
    pub fn new(entries: usize, capacity: usize) -> Result<Self> {
        let spec = ClusterSpec {
            vips: vec![IpAddr::V4(VIP)],
            mode: ClusterMode::Unicast,
            ipv6_network_prefix: 64,
            rules: vec![PortRule::new(
                None,
                (0, 65535),
                Protocol::Both,
                FilterMode::Multiple {
                    affinity: Affinity::Single,
                },
            )],
            bucket_seed: 0x5eed,
        };
        let members: HostSet = (1..=HOSTS).map(host).collect();
        let view = View::converged(&spec, members);
        let map = Arc::new(ClusterMap::build(&spec, &view, host(LOCAL), 1));
        let cfg = DescriptorConfig {
            capacity,
            ..DescriptorConfig::default()
        };
        let mut f = Self {
            dp: Dataplane::new(map.clone(), cfg, 0x0bad_5eed),
            map,
            tracked: Vec::with_capacity(entries),
            pptp_here: Vec::new(),
            pptp_elsewhere: Vec::new(),
            now: 1_000_000_000,
        };
        f.prefill(entries)?;
        Ok(f)
    }

    fn owns(&self, proto: u8, c: Ipv4Addr, sport: u16, dport: u16) -> bool {
        Dataplane::owner_of(
            &self.map,
            proto,
            IpAddr::V4(c),
            sport,
            IpAddr::V4(VIP),
            dport,
        )
        .host
            == Some(host(LOCAL))
    }

    fn prefill(&mut self, entries: usize) -> Result<()> {
        let mac = unicast_mac(VIP);
        let mut slot = [0u8; STRIDE];
        // PPTP control connections first: one per client of the GRE pool
        // this host owns (each takes a TCP and a GRE link entry).
        let gre_clients = POOL.min(entries / 8);
        for i in 0..gre_clients as u64 {
            let c = client(i ^ 0x6772_6500_0000);
            let sport = port(i);
            if self.owns(6, c, sport, PPTP_PORT) {
                write_ipv4(
                    &mut slot,
                    mac,
                    c,
                    VIP,
                    sport,
                    PPTP_PORT,
                    Transport::Tcp { flags: ACK },
                );
                if self.dp.judge(&slot[..FRAME_LEN], self.now) == Verdict::Keep {
                    self.pptp_here.push(c);
                }
            } else {
                self.pptp_elsewhere.push(c);
            }
        }
        let limit = entries as u64 * 8 + 1_000;
        let mut i = 0u64;
        write_ipv4(
            &mut slot,
            mac,
            client(0),
            VIP,
            1,
            SERVICE_PORT,
            Transport::Tcp { flags: ACK },
        );
        while self.dp.table().len() < entries && i < limit {
            let c = client(i);
            let sport = port(i);
            i += 1;
            if !self.owns(6, c, sport, SERVICE_PORT) {
                continue;
            }
            respoof(&mut slot, c, sport);
            if self.dp.judge(&slot[..FRAME_LEN], self.now) == Verdict::Keep {
                self.tracked.push((c, sport));
            }
        }
        if self.dp.table().len() < entries {
            bail!(
                "the descriptor table took {} of {} entries",
                self.dp.table().len(),
                entries
            );
        }
        Ok(())
    }

    /// Live descriptors.
    pub fn entries(&self) -> usize {
        self.dp.table().len()
    }

    /// Descriptor table slots.
    pub fn capacity(&self) -> usize {
        self.dp.table().capacity()
    }

    /// The frame pool of `mix` (`len` frames).
    pub fn pool(&self, mix: Mix, len: usize) -> Pool {
        let mac = unicast_mac(VIP);
        let mut pool = Pool::new(len);
        let mut j = 0u64;
        for i in 0..len {
            let slot = pool.slot_mut(i);
            match mix {
                Mix::UdpOtherHosts | Mix::TcpOtherHosts => {
                    let (proto, t) = if mix == Mix::UdpOtherHosts {
                        (17, Transport::Udp)
                    } else {
                        (6, Transport::Tcp { flags: ACK })
                    };
                    loop {
                        j += 1;
                        let (c, p) = (client(j ^ 0x0074_6865_6972), port(j));
                        if !self.owns(proto, c, p, SERVICE_PORT) {
                            write_ipv4(slot, mac, c, VIP, p, SERVICE_PORT, t);
                            break;
                        }
                    }
                }
                Mix::UdpOneInThree => {
                    let k = i as u64 ^ 0x0075_6470;
                    write_ipv4(
                        slot,
                        mac,
                        client(k),
                        VIP,
                        port(k),
                        SERVICE_PORT,
                        Transport::Udp,
                    );
                }
                Mix::SynFlood => {
                    let k = i as u64 ^ 0x0073_796e;
                    write_ipv4(
                        slot,
                        mac,
                        client(k),
                        VIP,
                        port(k),
                        SERVICE_PORT,
                        Transport::Tcp { flags: SYN },
                    );
                }
                Mix::Established => {
                    let n = self.tracked.len().max(1) as u64;
                    let (c, p) = self
                        .tracked
                        .get((mix64(i as u64 ^ 0x0065_7374) % n) as usize)
                        .copied()
                        .unwrap_or((client(0), 1));
                    write_ipv4(
                        slot,
                        mac,
                        c,
                        VIP,
                        p,
                        SERVICE_PORT,
                        Transport::Tcp { flags: ACK },
                    );
                }
                Mix::Gre => {
                    // The natural proportion: clients drawn from the same
                    // sequence the PPTP prefill walked.
                    let all = self.pptp_here.len() + self.pptp_elsewhere.len();
                    let k = (mix64(i as u64 ^ 0x0067_7265) % all.max(1) as u64) as usize;
                    let c = if k < self.pptp_here.len() {
                        self.pptp_here[k]
                    } else {
                        self.pptp_elsewhere
                            .get(k - self.pptp_here.len())
                            .copied()
                            .unwrap_or(client(0))
                    };
                    write_ipv4(slot, mac, c, VIP, i as u16, 0, Transport::Gre);
                }
            }
        }
        pool
    }

    /// Rewrites a pool between passes when its mix must not repeat.
    pub fn refresh(&self, mix: Mix, pool: &mut Pool, pass: u64) {
        if mix != Mix::SynFlood {
            return;
        }
        for i in 0..pool.len() {
            let k = (pass << 32) ^ i as u64 ^ 0x7370_6f6f_6600_0000;
            respoof(pool.slot_mut(i), client(k), port(k));
        }
    }

    /// Judges the whole pool once; returns frames kept.
    pub fn pass(&mut self, pool: &Pool) -> u64 {
        self.pass_on(pool, JudgePath::Shortcut)
    }

    /// Judges the whole pool once on `path`; returns frames kept.
    pub fn pass_on(&mut self, pool: &Pool, path: JudgePath) -> u64 {
        self.now += 1_000_000;
        let before = self.dp.counters().kept;
        measured_pass(&mut self.dp, pool, self.now, path);
        self.dp.counters().kept - before
    }
}

/// The demangled name of [`measured_pass`], as callgrind sees it.
const MEASURED_FN: &str = "shoal_perf::pipeline::measured_pass";
/// The dataplane entry points [`measured_pass`] calls (out of line, so
/// callgrind records their calls), as callgrind names them.
const JUDGE_FN: &str = "shoal_dataplane::pipeline::Dataplane::judge_batch";
const JUDGE_GENERAL_FN: &str = "shoal_dataplane::pipeline::Dataplane::judge_batch_general";

/// Which entry point of the dataplane a pass goes through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JudgePath {
    /// [`Dataplane::judge_batch`]: what the engine calls.
    Shortcut,
    /// [`Dataplane::judge_batch_general`]: the general parser for every
    /// frame (the "before").
    General,
}

/// The judged loop, kept out of line so callgrind can toggle collection on
/// exactly this function.
#[inline(never)]
pub fn measured_pass(dp: &mut Dataplane, pool: &Pool, now: u64, path: JudgePath) {
    let mut verdicts = [Verdict::Pass; BATCH];
    // Filled afresh for every batch, as a poll loop fills it from its ring.
    let mut refs: [&[u8]; BATCH] = [&[]; BATCH];
    let mut start = 0;
    while start < pool.len() {
        let n = (pool.len() - start).min(BATCH);
        for (j, r) in refs[..n].iter_mut().enumerate() {
            *r = pool.frame(start + j);
        }
        match path {
            JudgePath::Shortcut => dp.judge_batch(black_box(&refs[..n]), now, &mut verdicts[..n]),
            JudgePath::General => {
                dp.judge_batch_general(black_box(&refs[..n]), now, &mut verdicts[..n])
            }
        }
        black_box(&verdicts);
        start += n;
    }
}

/// Options of the pipeline bench.
#[derive(Clone, Debug)]
pub struct PipelineOptions {
    /// Timed seconds per mix and round.
    pub seconds: f64,
    /// Rounds (the mixes interleave within each).
    pub rounds: usize,
    /// Short run: small callgrind fixture, fewer frames.
    pub smoke: bool,
    /// Run the callgrind part.
    pub callgrind: bool,
}

/// One mix's figures.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MixResult {
    /// [`Mix::name`].
    pub name: String,
    /// [`Mix::description`].
    pub description: String,
    /// Whether every frame is dropped (the target's drop path).
    pub drop_path: bool,
    /// Share of frames kept by this host.
    pub kept_share: f64,
    /// Median over rounds, nanoseconds per frame.
    pub ns_per_frame: f64,
    /// Median over rounds, millions of frames per second on one core.
    pub mpps: f64,
    /// Every round's Mpps.
    pub rounds_mpps: Vec<f64>,
    /// Instructions per frame under callgrind, when it ran: the inclusive
    /// cost of [`Dataplane::judge_batch`] (see the module docs).
    pub instructions_per_frame: Option<f64>,
    /// The same with the bench's loop around the calls (filling each
    /// batch's frame array).
    #[serde(default)]
    pub loop_instructions_per_frame: Option<f64>,
    /// The same through the general parser only (the "before"), Mpps.
    #[serde(default)]
    pub general_mpps: f64,
    /// Its ns per frame.
    #[serde(default)]
    pub general_ns_per_frame: f64,
    /// Its instructions per frame ([`Dataplane::judge_batch_general`]).
    #[serde(default)]
    pub general_instructions_per_frame: Option<f64>,
    /// Its instructions per frame with the bench's loop.
    #[serde(default)]
    pub general_loop_instructions_per_frame: Option<f64>,
}

/// How the callgrind figures were taken.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CallgrindInfo {
    /// Descriptor entries of the callgrind fixture.
    pub table_entries: usize,
    /// Frames judged per mix.
    pub frames_per_mix: usize,
    /// What `instructions_per_frame` counts.
    #[serde(default)]
    pub counted: String,
    /// Whether valgrind ran; else why not.
    pub error: Option<String>,
}

/// The pipeline bench's report.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PipelineReport {
    /// Cluster size and the judging host.
    pub hosts: u8,
    /// The host the dataplane judges for.
    pub local_host: u8,
    /// Descriptor table slots.
    pub table_capacity: usize,
    /// Live descriptors before the first mix.
    pub table_entries: usize,
    /// Frame length in the buffer (64 on the wire with the FCS).
    pub frame_len: usize,
    /// Frames per batch.
    pub batch: usize,
    /// Rounds taken.
    pub rounds: usize,
    /// Timed seconds per mix and round.
    pub seconds_per_round: f64,
    /// Per mix.
    pub mixes: Vec<MixResult>,
    /// The callgrind run.
    pub callgrind: Option<CallgrindInfo>,
    /// The drop-path target, Mpps per core.
    pub target_drop_mpps: f64,
    /// The target, instructions per frame.
    pub target_instructions_per_frame: f64,
}

/// Runs the pipeline bench.
///
/// # Errors
/// When the fixture cannot be built. A failed callgrind run is reported in
/// [`CallgrindInfo::error`], not as an error.
pub fn run(opts: &PipelineOptions) -> Result<PipelineReport> {
    let mut fx = Fixture::new(TABLE_ENTRIES, TABLE_CAPACITY)?;
    let table_entries = fx.entries();
    let mut pools: Vec<(Mix, Pool)> = Mix::ALL.iter().map(|&m| (m, fx.pool(m, POOL))).collect();
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); pools.len()];
    let mut general_rates: Vec<Vec<f64>> = vec![Vec::new(); pools.len()];
    let mut kept = vec![(0u64, 0u64); pools.len()];
    let budget = Duration::from_secs_f64(opts.seconds.max(0.05));
    let mut pass_no = 0u64;
    // One untimed pass per mix to warm caches and the branch predictors.
    for (mix, pool) in &mut pools {
        fx.refresh(*mix, pool, pass_no);
        pass_no += 1;
        fx.pass(pool);
    }
    for _ in 0..opts.rounds.max(1) {
        for (i, (mix, pool)) in pools.iter_mut().enumerate() {
            for path in [JudgePath::Shortcut, JudgePath::General] {
                let mut timed = Duration::ZERO;
                let mut frames = 0u64;
                while timed < budget {
                    fx.refresh(*mix, pool, pass_no);
                    pass_no += 1;
                    let t = Instant::now();
                    let k = fx.pass_on(pool, path);
                    timed += t.elapsed();
                    frames += pool.len() as u64;
                    if path == JudgePath::Shortcut {
                        kept[i].0 += k;
                        kept[i].1 += pool.len() as u64;
                    }
                }
                let rate = frames as f64 / timed.as_secs_f64() / 1e6;
                match path {
                    JudgePath::Shortcut => rates[i].push(rate),
                    JudgePath::General => general_rates[i].push(rate),
                }
            }
        }
    }
    let callgrind = if opts.callgrind {
        Some(callgrind(opts.smoke))
    } else {
        None
    };
    let mixes = pools
        .iter()
        .enumerate()
        .map(|(i, (mix, _))| {
            let mpps = median(&rates[i]);
            let general_mpps = median(&general_rates[i]);
            let figures = |name: &str| {
                callgrind
                    .as_ref()
                    .and_then(|c| c.1.iter().find(|f| f.name == name))
            };
            let instructions = |name: &str| figures(name).map(|f| f.judge);
            let with_loop = |name: &str| figures(name).map(|f| f.with_loop);
            MixResult {
                name: mix.name().to_string(),
                description: mix.description().to_string(),
                drop_path: mix.drop_path(),
                kept_share: kept[i].0 as f64 / kept[i].1.max(1) as f64,
                ns_per_frame: if mpps > 0.0 { 1e3 / mpps } else { 0.0 },
                mpps,
                rounds_mpps: rates[i].clone(),
                instructions_per_frame: instructions(mix.name()),
                loop_instructions_per_frame: with_loop(mix.name()),
                general_mpps,
                general_ns_per_frame: if general_mpps > 0.0 {
                    1e3 / general_mpps
                } else {
                    0.0
                },
                general_instructions_per_frame: instructions(&general_name(*mix)),
                general_loop_instructions_per_frame: with_loop(&general_name(*mix)),
            }
        })
        .collect();
    Ok(PipelineReport {
        hosts: HOSTS,
        local_host: LOCAL,
        table_capacity: fx.capacity(),
        table_entries,
        frame_len: FRAME_LEN,
        batch: BATCH,
        rounds: opts.rounds.max(1),
        seconds_per_round: opts.seconds,
        mixes,
        callgrind: callgrind.map(|c| c.0),
        target_drop_mpps: TARGET_DROP_MPPS,
        target_instructions_per_frame: TARGET_INSTRUCTIONS,
    })
}

/// Table size and frames for the callgrind worker.
fn callgrind_sizes(smoke: bool) -> (usize, usize) {
    if smoke {
        (1 << 16, 1 << 14)
    } else {
        (TABLE_ENTRIES, POOL * 2)
    }
}

/// One dump's figures, per frame.
#[derive(Clone, Debug, PartialEq)]
struct DumpFigures {
    /// The plan's name of the mix (and path).
    name: String,
    /// Inside the dataplane's entry point.
    judge: f64,
    /// The whole measured loop.
    with_loop: f64,
}

type CallgrindFigures = (CallgrindInfo, Vec<DumpFigures>);

/// [`CallgrindInfo::counted`].
const COUNTED: &str = "inclusive instructions of Dataplane::judge_batch (general: \
    judge_batch_general) per frame: everything the dataplane executes, call and per-batch \
    setup included; loop_instructions_per_frame adds the bench's loop filling each batch";

fn callgrind(smoke: bool) -> CallgrindFigures {
    let (entries, frames) = callgrind_sizes(smoke);
    let mut info = CallgrindInfo {
        table_entries: entries,
        frames_per_mix: frames,
        counted: COUNTED.to_string(),
        error: None,
    };
    match run_callgrind(entries, frames) {
        Ok(v) => (info, v),
        Err(e) => {
            info.error = Some(format!("{e:#}"));
            (info, Vec::new())
        }
    }
}

fn run_callgrind(entries: usize, frames: usize) -> Result<Vec<DumpFigures>> {
    let exe = std::env::current_exe().context("locating the shoal-bench binary")?;
    let dir = std::env::temp_dir().join(format!("shoal-bench-callgrind-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let out_file = dir.join("cg.out");
    let result = (|| {
        let out = Command::new("valgrind")
            .arg("--tool=callgrind")
            // Exact name: --dump-after takes no wildcards.
            .arg(format!("--toggle-collect={MEASURED_FN}"))
            .arg(format!("--dump-after={MEASURED_FN}"))
            .arg(format!("--callgrind-out-file={}", out_file.display()))
            .arg(&exe)
            .args(["callgrind-worker", "--entries"])
            .arg(entries.to_string())
            .arg("--frames")
            .arg(frames.to_string())
            .output()
            .context("running valgrind (apt-get install valgrind)")?;
        if !out.status.success() {
            bail!(
                "valgrind exited with {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
                    .lines()
                    .rev()
                    .take(5)
                    .collect::<Vec<_>>()
                    .join(" | ")
            );
        }
        let plan: Vec<(String, usize)> =
            serde_json::from_slice(&out.stdout).context("reading the worker's list of mixes")?;
        parse_dumps(&dir, &plan)
    })();
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// Reads the dumps `cg.out.1..=n` (one per [`measured_pass`] call, in
/// call order) and divides the cost of the judging calls, and the total,
/// by the frames.
fn parse_dumps(dir: &Path, plan: &[(String, usize)]) -> Result<Vec<DumpFigures>> {
    let mut per_mix = Vec::new();
    for (k, (name, frames)) in plan.iter().enumerate() {
        let path = dir.join(format!("cg.out.{}", k + 1));
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading callgrind dump {}", path.display()))?;
        let total =
            dump_total(&text).with_context(|| format!("no totals line in {}", path.display()))?;
        let callee = if name.ends_with(GENERAL_SUFFIX) {
            JUDGE_GENERAL_FN
        } else {
            JUDGE_FN
        };
        let judge = inclusive_calls(&text, callee)
            .with_context(|| format!("no call of {callee} in {}", path.display()))?;
        let frames = (*frames).max(1) as f64;
        per_mix.push(DumpFigures {
            name: name.clone(),
            judge: judge as f64 / frames,
            with_loop: total as f64 / frames,
        });
    }
    Ok(per_mix)
}

/// The inclusive event count (Ir) of every call to the function named
/// `callee` recorded in a callgrind dump, summed; `None` when there is
/// none. Reads the format's `cfn=` / `calls=` pairs: the line after a
/// `calls=` line holds the call's position(s) (as many as the
/// `positions:` header names) and then its inclusive cost. Function names
/// may be compressed: `(id) name` defines an id, `(id)` reuses it, in one
/// space shared by `fn=` and `cfn=`.
pub fn inclusive_calls(text: &str, callee: &str) -> Option<u64> {
    let mut names: std::collections::HashMap<&str, &str> = Default::default();
    let mut positions = 1;
    let mut to_callee = false;
    let mut cost_line = false;
    let mut sum: Option<u64> = None;
    for line in text.lines() {
        if cost_line {
            cost_line = false;
            if to_callee {
                let ir = line
                    .split_whitespace()
                    .nth(positions)?
                    .parse::<u64>()
                    .ok()?;
                sum = Some(sum.unwrap_or(0) + ir);
            }
            continue;
        }
        if let Some(p) = line.strip_prefix("positions:") {
            positions = p.split_whitespace().count().max(1);
        } else if line.starts_with("calls=") {
            cost_line = true;
        } else if let Some(spec) = line.strip_prefix("cfn=") {
            to_callee = function_name(spec, &mut names) == callee;
        } else if let Some(spec) = line.strip_prefix("fn=") {
            function_name(spec, &mut names);
        }
    }
    sum
}

/// The name a `fn=`/`cfn=` specification stands for, noting a compressed
/// `(id) name` definition in `names`.
fn function_name<'a>(
    spec: &'a str,
    names: &mut std::collections::HashMap<&'a str, &'a str>,
) -> &'a str {
    let spec = spec.trim();
    let Some(rest) = spec.strip_prefix('(') else {
        return spec;
    };
    let Some((id, name)) = rest.split_once(')') else {
        return spec;
    };
    let name = name.trim();
    if name.is_empty() {
        names.get(id).copied().unwrap_or("")
    } else {
        names.insert(id, name);
        name
    }
}

/// The first event count (Ir) of a callgrind dump's `totals:` or
/// `summary:` line.
pub fn dump_total(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| {
            l.strip_prefix("totals:")
                .or_else(|| l.strip_prefix("summary:"))
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// The suffix of [`general_name`].
const GENERAL_SUFFIX: &str = "/general";

/// The callgrind plan's name of a mix judged on [`JudgePath::General`].
fn general_name(mix: Mix) -> String {
    format!("{}{GENERAL_SUFFIX}", mix.name())
}

/// The hidden worker run under callgrind: builds the fixture and judges
/// `frames` frames of every mix, one [`measured_pass`] call per mix and
/// path (shortcut, then general). Prints `[[name, frames], …]` as JSON.
///
/// # Errors
/// When the fixture cannot be built.
pub fn callgrind_worker(entries: usize, frames: usize) -> Result<()> {
    let capacity = (entries * 2).next_power_of_two().max(1 << 10);
    let mut fx = Fixture::new(entries, capacity)?;
    let mut plan = Vec::new();
    for (k, mix) in Mix::ALL.into_iter().enumerate() {
        let mut pool = fx.pool(mix, frames);
        fx.refresh(mix, &mut pool, 2 * k as u64 + 1);
        fx.pass_on(&pool, JudgePath::Shortcut);
        plan.push((mix.name().to_string(), frames));
        // A never-repeating mix gets fresh frames for the second path too.
        fx.refresh(mix, &mut pool, 2 * k as u64 + 2);
        fx.pass_on(&pool, JudgePath::General);
        plan.push((general_name(mix), frames));
    }
    println!("{}", serde_json::to_string(&plan)?);
    Ok(())
}

/// Text table of a report.
pub fn text(r: &PipelineReport) -> String {
    let mut s = format!(
        "pipeline: host {} of {}, {} descriptors in {} slots, {}-byte frames, batches of {}, median of {} rounds\n",
        r.local_host, r.hosts, r.table_entries, r.table_capacity, r.frame_len, r.batch, r.rounds
    );
    s += &format!(
        "{:<18} {:>9} {:>9} {:>8} {:>10} {:>8}   {:>9} {:>10} {:>8} {:>8}  {}\n",
        "mix",
        "Mpps/core",
        "ns/frame",
        "kept",
        "instr/fr",
        "+loop",
        "general:",
        "instr/fr",
        "+loop",
        "speedup",
        "what"
    );
    let ipf = |x: Option<f64>| x.map(|i| format!("{i:.0}")).unwrap_or_else(|| "-".into());
    for m in &r.mixes {
        s += &format!(
            "{:<18} {:>9.2} {:>9.1} {:>7.1}% {:>10} {:>8}   {:>9.2} {:>10} {:>8} {:>7.2}x  {}\n",
            m.name,
            m.mpps,
            m.ns_per_frame,
            m.kept_share * 100.0,
            ipf(m.instructions_per_frame),
            ipf(m.loop_instructions_per_frame),
            m.general_mpps,
            ipf(m.general_instructions_per_frame),
            ipf(m.general_loop_instructions_per_frame),
            m.mpps / m.general_mpps.max(1e-9),
            m.description
        );
    }
    if let Some(c) = &r.callgrind {
        match &c.error {
            Some(e) => s += &format!("callgrind: not run: {e}\n"),
            None => {
                s += &format!(
                    "callgrind: {} frames per mix, {} descriptors; instr/fr: {}\n",
                    c.frames_per_mix, c.table_entries, c.counted
                )
            }
        }
    }
    s += &format!(
        "targets: >= {} Mpps/core on the drop path, <= {} instructions/frame\n",
        r.target_drop_mpps, r.target_instructions_per_frame
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_fixture_holds_its_entries_and_mixes_keep_their_share() {
        let mut fx = Fixture::new(20_000, 1 << 16).expect("fixture");
        assert!(fx.entries() >= 20_000);
        for mix in Mix::ALL {
            let mut pool = fx.pool(mix, 3_000);
            fx.refresh(mix, &mut pool, 7);
            let kept = fx.pass(&pool) as f64 / 3_000.0;
            let (lo, hi) = match mix {
                Mix::UdpOtherHosts | Mix::TcpOtherHosts => (0.0, 0.0),
                Mix::Established => (1.0, 1.0),
                _ => (0.25, 0.42),
            };
            assert!(
                kept >= lo && kept <= hi,
                "{}: kept {kept} not in {lo}..={hi}",
                mix.name()
            );
        }
    }

    #[test]
    fn syn_flood_refresh_never_repeats_sources() {
        let fx = Fixture::new(1_000, 1 << 12).expect("fixture");
        let mut pool = fx.pool(Mix::SynFlood, 16);
        fx.refresh(Mix::SynFlood, &mut pool, 1);
        let a = pool.frame(0).to_vec();
        fx.refresh(Mix::SynFlood, &mut pool, 2);
        assert_ne!(a, pool.frame(0));
    }

    #[test]
    fn dump_totals_are_read() {
        let text = "version: 1\nevents: Ir\nfn=(1) x\n3 10\ntotals: 12345\n";
        assert_eq!(dump_total(text), Some(12345));
        assert_eq!(dump_total("summary: 77 1\n"), Some(77));
        assert_eq!(dump_total("nothing"), None);
    }

    #[test]
    fn inclusive_calls_sum_every_call_of_the_callee() {
        // Two positions (instr line), compressed names, two call sites of
        // judge_batch and one of something else.
        let text = "positions: instr line\nevents: Ir\n\
            fn=(1) shoal_perf::pipeline::measured_pass\n0x10 5 7\n\
            cfn=(2) shoal_dataplane::pipeline::Dataplane::judge_batch\n\
            calls=3 0x20 9\n0x11 5 300\n\
            cfn=(3) other\ncalls=1 0x30 1\n0x12 5 1000\n\
            cfn=(2)\ncalls=1 0x20 9\n+4 * 45\n\
            totals: 1352\n";
        assert_eq!(inclusive_calls(text, JUDGE_FN), Some(345));
        assert_eq!(inclusive_calls(text, "other"), Some(1000));
        assert_eq!(inclusive_calls(text, JUDGE_GENERAL_FN), None);
        // One position (no --dump-instr).
        let text = "positions: line\nfn=(1) f\ncfn=(2) g\ncalls=2 4\n7 90\n";
        assert_eq!(inclusive_calls(text, "g"), Some(90));
    }
}
