//! The userspace side of the XDP fast path: writes the plan
//! ([`shoal_dataplane::fastpath`]: which buckets the kernel may drop and
//! which it may pass under the maps in flight) into the program's BPF maps
//! ([`crate::xdp::fast`]), so the kernel drops other hosts' frames before
//! any copy and hands the stack datagrams userspace would keep anyway, while
//! the dataplane's rules stay the only judge. Why the plan is safe is
//! argued in [`shoal_dataplane::fastpath`]; this module owns the writes.
//!
//! # What it owns
//!
//! - [`FastPathMaps`]: the four BPF maps (actions, keep bitmaps, pass
//!   bitmaps, per-CPU stats) and the layout the program was compiled for.
//!   The XDP attachment creates them and holds them for as long as the
//!   program lives.
//! - [`FastPath`]: the writer. It is told about every map before it is
//!   published ([`FastPath::prepare`]), hears from every poll loop
//!   ([`LoopReport`]), forgets older maps once every loop has moved on
//!   ([`FastPath::settle`]), and writes what changed.
//!
//! # What the writes guarantee
//!
//! - Per slot, a bitmap is written before the action that makes the
//!   program read it: concurrent readers see each bit either old or new,
//!   and the plan makes both supersets of what userspace keeps (keep) or
//!   subsets of it (pass).
//! - The layout (rules, seed) is compiled into the program. A map whose
//!   layout differs (a rule or VIP change) turns the fast path off for good
//!   (every action redirects) and says so: stale descriptors could then sit
//!   in buckets the program no longer computes.
//! - Any failed map write turns the fast path off the same way. Off means
//!   plain redirect actions, without [`ACTION_PASS`]: the program stops
//!   passing as it stops dropping. A passed datagram counts in
//!   `xdp_passed`, not in the loops' `kept`.

use std::fmt;
use std::os::fd::BorrowedFd;
use std::sync::Arc;

use parking_lot::Mutex;
use shoal_dataplane::fastpath::{BucketBits, MapsInFlight, Report, Slot, SlotAction, SlotPlan};
use shoal_dataplane::map::{ClusterMap, GroupBits};
use shoal_dataplane::pipeline::Dataplane;

use crate::sys::bpf::{Bpf, BpfError, BpfMap, MapKind, MapSpec};
use crate::xdp::fast::{
    FastPathFds, FastPathLayout, ACTION_BITMAP, ACTION_DROP, ACTION_MASK, ACTION_PASS,
    ACTION_REDIRECT, KEEP_BITMAP_BYTES, STATS_SLOT_BYTES, STAT_DROPPED_BUCKET, STAT_DROPPED_RULE,
    STAT_JUDGED, STAT_LAST_BUCKET, STAT_LAST_SLOT, STAT_PASSED,
};

/// Why the fast path could not be set up or kept current.
#[derive(Debug, thiserror::Error)]
pub enum FastPathError {
    /// A BPF map could not be created, read or written.
    #[error("XDP fast path map: {0}")]
    Bpf(#[from] BpfError),
}

/// The fast path's BPF maps and the layout its program was compiled for.
#[derive(Debug)]
pub struct FastPathMaps {
    actions: BpfMap,
    keep: BpfMap,
    stats: BpfMap,
    pass: BpfMap,
    layout: FastPathLayout,
    pass_to: Option<[u8; 6]>,
    cpus: u32,
}

/// How many CPU ids the kernel may hand out (`/sys/devices/system/cpu/
/// possible`, else the configured processor count).
fn possible_cpus() -> u32 {
    let parsed = std::fs::read_to_string("/sys/devices/system/cpu/possible")
        .ok()
        .and_then(|s| {
            s.trim()
                .split(',')
                .filter_map(|part| part.rsplit('-').next()?.parse::<u32>().ok())
                .max()
        })
        .map(|max| max + 1);
    parsed
        .unwrap_or_else(|| u32::try_from(num_cpus_configured()).unwrap_or(1))
        .clamp(1, 8192)
}

fn num_cpus_configured() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Counters of the fast path, summed over CPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FastPathCounters {
    /// Frames the program judged (IPv4 TCP/UDP to a VIP under a rule).
    pub judged: u64,
    /// Dropped: bucket bit clear.
    pub dropped_bucket: u64,
    /// Dropped: the rule's action is drop (disabled, or single-host elsewhere).
    pub dropped_rule: u64,
    /// Handed to the kernel stack on the NIC (`XDP_PASS`): kept without
    /// reaching userspace.
    pub passed: u64,
}

impl FastPathCounters {
    /// Every frame the program dropped.
    pub fn dropped(&self) -> u64 {
        self.dropped_bucket + self.dropped_rule
    }
}

/// What one CPU's stats slot says about the last frame judged there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LastJudged {
    /// Frames judged on that CPU so far.
    pub judged: u64,
    /// The bucket of the last one.
    pub bucket: u32,
    /// Its rule slot.
    pub slot: u32,
}

impl FastPathMaps {
    /// Creates the maps for `layout` (every action starts as "redirect":
    /// nothing is dropped or passed until a writer says so). `pass_to`, the
    /// NIC's own MAC, lets the program hand kept untracked UDP datagrams to
    /// the kernel stack itself (see [`crate::xdp::fast`]); `None` never
    /// passes.
    pub fn create(
        bpf: &dyn Bpf,
        layout: FastPathLayout,
        pass_to: Option<[u8; 6]>,
    ) -> Result<Self, FastPathError> {
        let slots = layout.slots();
        let cpus = possible_cpus();
        let actions = bpf.map_create(&MapSpec {
            kind: MapKind::Array,
            key_size: 4,
            value_size: 4,
            max_entries: slots,
            name: "shoal_fp_act".into(),
        })?;
        let keep = bpf.map_create(&MapSpec {
            kind: MapKind::Array,
            key_size: 4,
            value_size: KEEP_BITMAP_BYTES,
            max_entries: slots,
            name: "shoal_fp_keep".into(),
        })?;
        let stats = bpf.map_create(&MapSpec {
            kind: MapKind::Array,
            key_size: 4,
            value_size: STATS_SLOT_BYTES,
            max_entries: cpus,
            name: "shoal_fp_stats".into(),
        })?;
        let pass = bpf.map_create(&MapSpec {
            kind: MapKind::Array,
            key_size: 4,
            value_size: KEEP_BITMAP_BYTES,
            max_entries: if pass_to.is_some() { slots } else { 1 },
            name: "shoal_fp_pass".into(),
        })?;
        Ok(Self {
            actions,
            keep,
            stats,
            pass,
            layout,
            pass_to,
            cpus,
        })
    }

    /// The maps' fds, for building the program.
    pub fn fds(&self) -> FastPathFds<'_> {
        FastPathFds {
            actions: self.actions.fd(),
            keep: self.keep.fd(),
            stats: self.stats.fd(),
            pass: self.pass.fd(),
            pass_to: self.pass_to,
        }
    }

    /// Whether the program may pass datagrams (built with the NIC's MAC).
    pub fn passes(&self) -> bool {
        self.pass_to.is_some()
    }

    /// The actions map (slot → action).
    pub fn actions_fd(&self) -> BorrowedFd<'_> {
        self.actions.fd()
    }

    /// The layout the program was compiled for.
    pub fn layout(&self) -> &FastPathLayout {
        &self.layout
    }

    fn stats_slot(&self, bpf: &dyn Bpf, cpu: u32) -> Result<[u64; 8], FastPathError> {
        let mut raw = [0u8; STATS_SLOT_BYTES as usize];
        let mut words = [0u64; 8];
        if bpf.map_lookup(&self.stats, &cpu.to_ne_bytes(), &mut raw)? {
            for (w, chunk) in words.iter_mut().zip(raw.chunks_exact(8)) {
                let mut b = [0u8; 8];
                b.copy_from_slice(chunk);
                *w = u64::from_ne_bytes(b);
            }
        }
        Ok(words)
    }

    /// The program's counters, summed over CPUs.
    pub fn counters(&self, bpf: &dyn Bpf) -> Result<FastPathCounters, FastPathError> {
        let mut c = FastPathCounters::default();
        for one in self.counters_per_cpu(bpf)? {
            c.judged += one.judged;
            c.dropped_bucket += one.dropped_bucket;
            c.dropped_rule += one.dropped_rule;
            c.passed += one.passed;
        }
        Ok(c)
    }

    /// The program's counters per CPU it may run on, indexed by CPU id
    /// (the program counts on the CPU that ran it: the one serving the
    /// NIC queue's interrupt).
    pub fn counters_per_cpu(&self, bpf: &dyn Bpf) -> Result<Vec<FastPathCounters>, FastPathError> {
        (0..self.cpus)
            .map(|cpu| {
                let w = self.stats_slot(bpf, cpu)?;
                Ok(FastPathCounters {
                    judged: w[STAT_JUDGED],
                    dropped_bucket: w[STAT_DROPPED_BUCKET],
                    dropped_rule: w[STAT_DROPPED_RULE],
                    passed: w[STAT_PASSED],
                })
            })
            .collect()
    }

    /// Per CPU, what its stats slot records (tests compare the program's
    /// bucket with the dataplane's through this).
    pub fn last_judged(&self, bpf: &dyn Bpf) -> Result<Vec<LastJudged>, FastPathError> {
        (0..self.cpus)
            .map(|cpu| {
                let w = self.stats_slot(bpf, cpu)?;
                Ok(LastJudged {
                    judged: w[STAT_JUDGED],
                    bucket: w[STAT_LAST_BUCKET] as u32,
                    slot: w[STAT_LAST_SLOT] as u32,
                })
            })
            .collect()
    }

    /// Writes one slot's action.
    pub fn write_action(&self, bpf: &dyn Bpf, slot: u32, action: u32) -> Result<(), FastPathError> {
        bpf.map_update(&self.actions, &slot.to_ne_bytes(), &action.to_ne_bytes())?;
        Ok(())
    }

    /// Writes one slot's keep bitmap (`BUCKETS / 64` words, bit `b % 64` of
    /// word `b / 64` for bucket `b`).
    pub fn write_bitmap(
        &self,
        bpf: &dyn Bpf,
        slot: u32,
        words: &[u64],
    ) -> Result<(), FastPathError> {
        write_words(bpf, &self.keep, slot, words)
    }

    /// Writes one slot's pass bitmap (same layout as the keep bitmap).
    pub fn write_pass_bitmap(
        &self,
        bpf: &dyn Bpf,
        slot: u32,
        words: &[u64],
    ) -> Result<(), FastPathError> {
        write_words(bpf, &self.pass, slot, words)
    }
}

/// Writes `words` as slot `slot`'s value of bitmap map `map`.
fn write_words(bpf: &dyn Bpf, map: &BpfMap, slot: u32, words: &[u64]) -> Result<(), FastPathError> {
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
    bpf.map_update(map, &slot.to_ne_bytes(), &bytes)?;
    Ok(())
}

/// A poll loop's line to the writer. The loop calls [`LoopReport::record`]
/// after every `set_map` and periodically.
#[derive(Debug)]
pub struct LoopReport {
    slots: Vec<Slot>,
    last: Mutex<Option<Report>>,
}

impl LoopReport {
    /// Records the groups in which `dataplane`'s table holds foreign entries,
    /// under the map it uses now. Bounded work: `GROUPS` counters per slot.
    pub fn record(&self, dataplane: &Dataplane) {
        let report = Report::of(dataplane.map(), dataplane.table(), &self.slots);
        *self.last.lock() = Some(report);
    }

    /// Records an explicit report (tests and simulations): `dirty[slot]`.
    pub fn record_groups(&self, map: &Arc<ClusterMap>, dirty: Vec<GroupBits>) {
        *self.last.lock() = Some(Report {
            map: map.clone(),
            dirty,
        });
    }
}

/// What the kernel holds for one slot.
#[derive(Debug, Clone)]
struct Written {
    /// The action word, [`ACTION_PASS`] included.
    action: u32,
    /// The keep bitmap, when the action is or was a bitmap.
    keep: Option<BucketBits>,
    /// The pass bitmap, when the action carries or carried [`ACTION_PASS`].
    pass: Option<BucketBits>,
}

#[derive(Debug)]
struct Sync {
    /// The maps a poll loop may be judging with.
    in_flight: MapsInFlight,
    /// What the kernel holds, per slot.
    written: Vec<Written>,
    /// Set once the fast path is off for good.
    off: Option<String>,
}

/// Keeps the fast path's maps current. Shared by the thread that publishes
/// maps and the control thread; every method serialises on one lock.
pub struct FastPath {
    bpf: Arc<dyn Bpf>,
    maps: Arc<FastPathMaps>,
    reports: Mutex<Vec<Arc<LoopReport>>>,
    sync: Mutex<Sync>,
}

impl fmt::Debug for FastPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FastPath")
            .field("slots", &self.maps.layout.rules.len())
            .field("off", &self.sync.lock().off)
            .finish_non_exhaustive()
    }
}

/// Whether the fast path is wanted: on unless `SHOAL_XDP_FAST_PATH` is `0`,
/// `false`, `off` or `no`.
pub fn enabled_by_env() -> bool {
    env_allows("SHOAL_XDP_FAST_PATH")
}

/// Whether the environment switch `var` leaves a feature on: unset, or
/// anything but `0`, `false`, `off` or `no`.
pub fn env_allows(var: &str) -> bool {
    std::env::var(var).map_or(true, |v| {
        !matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "0" | "false" | "off" | "no"
        )
    })
}

/// The action word for `plan`: the keep set's action, with [`ACTION_PASS`]
/// when the slot passes.
fn action_word(plan: &SlotPlan) -> u32 {
    let base = match plan.action() {
        SlotAction::Drop => ACTION_DROP,
        SlotAction::Everything => ACTION_REDIRECT,
        SlotAction::Bitmap => ACTION_BITMAP,
    };
    base | if plan.passes() { ACTION_PASS } else { 0 }
}

impl FastPath {
    /// A writer for `maps` through `bpf`. Nothing is written until the first
    /// [`FastPath::prepare`].
    pub fn new(bpf: Arc<dyn Bpf>, maps: Arc<FastPathMaps>) -> Self {
        let passes = maps.passes();
        let slots: Vec<Slot> = maps
            .layout
            .rules
            .iter()
            .map(|r| Slot {
                rule: r.rule,
                passes: passes && r.udp && r.udp_untracked,
            })
            .collect();
        let written = vec![
            Written {
                action: ACTION_REDIRECT,
                keep: None,
                pass: None,
            };
            slots.len()
        ];
        Self {
            bpf,
            maps,
            reports: Mutex::new(Vec::new()),
            sync: Mutex::new(Sync {
                in_flight: MapsInFlight::new(slots),
                written,
                off: None,
            }),
        }
    }

    /// The maps.
    pub fn maps(&self) -> &Arc<FastPathMaps> {
        &self.maps
    }

    /// A new poll loop's report line. Register every loop before its first
    /// frame: until a loop has reported under the newest map, older maps
    /// stay in the keep set.
    pub fn loop_report(&self) -> Arc<LoopReport> {
        let r = Arc::new(LoopReport {
            slots: self.sync.lock().in_flight.slots().to_vec(),
            last: Mutex::new(None),
        });
        self.reports.lock().push(r.clone());
        r
    }

    /// Why the fast path is off, if it is.
    pub fn off_reason(&self) -> Option<String> {
        self.sync.lock().off.clone()
    }

    /// The program's counters (zero when they cannot be read).
    pub fn counters(&self) -> FastPathCounters {
        self.maps.counters(&*self.bpf).unwrap_or_default()
    }

    /// The program's counters per CPU id (empty when they cannot be read).
    pub fn counters_per_cpu(&self) -> Vec<FastPathCounters> {
        self.maps.counters_per_cpu(&*self.bpf).unwrap_or_default()
    }

    /// Call before publishing `next` to the poll loops: grows the kernel's
    /// keep set to cover `next` as well as every map still in flight.
    pub fn prepare(&self, next: &Arc<ClusterMap>) {
        let mut sync = self.sync.lock();
        if sync.off.is_some() {
            return;
        }
        if FastPathLayout::of(next) != self.maps.layout {
            self.turn_off(
                &mut sync,
                format!(
                    "map epoch {} has other rules or VIPs than the XDP program was built for",
                    next.epoch
                ),
            );
            return;
        }
        sync.in_flight.prepare(next);
        let reports = self.latest_reports();
        self.write(&mut sync, &reports);
    }

    /// Call periodically (about once a second): forgets maps every poll loop
    /// has moved past and shrinks the keep set to the newest map plus the
    /// groups loops still track foreign connections in.
    pub fn settle(&self) {
        let mut sync = self.sync.lock();
        if sync.off.is_some() || sync.in_flight.is_empty() {
            return;
        }
        let reports = self.latest_reports();
        sync.in_flight.settle(&reports);
        self.write(&mut sync, &reports);
    }

    /// Starts a thread that calls [`FastPath::settle`] every `period` for as
    /// long as another handle to `this` lives.
    pub fn spawn_settler(
        this: &Arc<Self>,
        period: std::time::Duration,
    ) -> std::io::Result<std::thread::JoinHandle<()>> {
        let weak = Arc::downgrade(this);
        std::thread::Builder::new()
            .name("shoal-xdp-fast".into())
            .spawn(move || loop {
                std::thread::sleep(period);
                match weak.upgrade() {
                    Some(f) => f.settle(),
                    None => return,
                }
            })
    }

    /// Every registered loop's latest report (`None`: not reported yet).
    fn latest_reports(&self) -> Vec<Option<Report>> {
        self.reports
            .lock()
            .iter()
            .map(|r| r.last.lock().clone())
            .collect()
    }

    fn write(&self, sync: &mut Sync, reports: &[Option<Report>]) {
        let plan = sync.in_flight.plan(reports);
        if let Err(e) = self.apply(sync, plan) {
            self.turn_off(sync, format!("writing the XDP fast path maps failed: {e}"));
        }
    }

    /// Writes `plan` where it differs from what the kernel holds: per slot,
    /// the bitmaps before the action that reads them.
    fn apply(&self, sync: &mut Sync, plan: Vec<SlotPlan>) -> Result<(), FastPathError> {
        let bpf = &*self.bpf;
        for (slot, p) in plan.into_iter().enumerate() {
            let action = action_word(&p);
            let old = &mut sync.written[slot];
            let slot32 = slot as u32;
            if action & ACTION_MASK == ACTION_BITMAP && old.keep.as_ref() != Some(&p.keep) {
                self.maps.write_bitmap(bpf, slot32, p.keep.words())?;
                old.keep = Some(p.keep);
            }
            if action & ACTION_PASS != 0 && old.pass.as_ref() != Some(&p.pass) {
                self.maps.write_pass_bitmap(bpf, slot32, p.pass.words())?;
                old.pass = Some(p.pass);
            }
            if action != old.action {
                self.maps.write_action(bpf, slot32, action)?;
                old.action = action;
            }
        }
        Ok(())
    }

    fn turn_off(&self, sync: &mut Sync, reason: String) {
        tracing::warn!(%reason, "XDP fast path off: every cluster frame goes to userspace");
        for slot in 0..sync.written.len() {
            if let Err(e) = self
                .maps
                .write_action(&*self.bpf, slot as u32, ACTION_REDIRECT)
            {
                tracing::error!(slot, error = %e, "could not turn an XDP fast path rule off");
            }
            sync.written[slot].action = ACTION_REDIRECT;
        }
        sync.in_flight.clear();
        sync.off = Some(reason);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::bpf::fake::Fake;
    use shoal_dataplane::bucket::{group_of, BUCKETS};
    use shoal_dataplane::map::RuleOwner;
    use shoal_dataplane::map::View;
    use shoal_dataplane::{
        Affinity, ClusterMode, ClusterSpec, FilterMode, HostId, HostSet, PortRule, Protocol,
    };
    use std::net::IpAddr;

    fn spec() -> ClusterSpec {
        let vip: IpAddr = "10.0.0.1".parse().unwrap();
        ClusterSpec {
            vips: vec![vip],
            mode: ClusterMode::Unicast,
            ipv6_network_prefix: 64,
            rules: vec![
                PortRule::new(
                    None,
                    (0, 65535),
                    Protocol::Both,
                    FilterMode::Multiple {
                        affinity: Affinity::Single,
                    },
                ),
                PortRule::new(Some(vip), (22, 22), Protocol::Tcp, FilterMode::Single),
                PortRule::new(Some(vip), (23, 23), Protocol::Tcp, FilterMode::Disabled),
            ],
            bucket_seed: 0x5eed,
        }
    }

    fn hosts(ids: &[u8]) -> HostSet {
        ids.iter().map(|&i| HostId::new(i).unwrap()).collect()
    }

    fn map(members: &[u8], local: u8, epoch: u64) -> Arc<ClusterMap> {
        let spec = spec();
        Arc::new(ClusterMap::build(
            &spec,
            &View::converged(&spec, hosts(members)),
            HostId::new(local).unwrap(),
            epoch,
        ))
    }

    fn fast() -> (Arc<Fake>, FastPath) {
        let fake = Arc::new(Fake::default());
        let layout = FastPathLayout::of(&map(&[1], 1, 0));
        let maps = Arc::new(FastPathMaps::create(&*fake, layout, None).unwrap());
        (fake.clone(), FastPath::new(fake, maps))
    }

    fn slot_of(f: &FastPath, rule: usize) -> usize {
        f.maps
            .layout
            .rules
            .iter()
            .position(|r| r.rule == rule)
            .unwrap()
    }

    fn keep_of(f: &FastPath, rule: usize) -> (u32, Option<BucketBits>) {
        let w = f.sync.lock().written[slot_of(f, rule)].clone();
        (w.action, w.keep)
    }

    fn has(k: &BucketBits, b: u32) -> bool {
        k.contains(b)
    }

    #[test]
    fn actions_follow_the_owners() {
        let (_, f) = fast();
        f.prepare(&map(&[1, 2], 2, 1));
        // Host 1 has the better priority for the single-host rule, so host
        // 2 drops its frames; the disabled rule drops everywhere.
        assert_eq!(keep_of(&f, 1).0, ACTION_DROP);
        assert_eq!(keep_of(&f, 2).0, ACTION_DROP);
        let (action, bits) = keep_of(&f, 0);
        assert_eq!(action, ACTION_BITMAP);
        let m = map(&[1, 2], 2, 1);
        let RuleOwner::Buckets(b) = &m.rules[0].owner else {
            panic!()
        };
        let bits = bits.unwrap();
        for bucket in (0..BUCKETS as u32).step_by(997) {
            assert_eq!(has(&bits, bucket), b.owner(bucket) == HostId::new(2));
        }
        // Alone, host 1 keeps everything of rule 0 and the single rule.
        let (_, f) = fast();
        f.prepare(&map(&[1], 1, 1));
        assert_eq!(keep_of(&f, 0).0, ACTION_REDIRECT);
        assert_eq!(keep_of(&f, 1).0, ACTION_REDIRECT);
        assert_eq!(keep_of(&f, 2).0, ACTION_DROP);
    }

    #[test]
    fn new_bits_are_set_before_old_ones_clear() {
        let (_, f) = fast();
        let report = f.loop_report();
        let old = map(&[1], 1, 1);
        f.prepare(&old);
        report.record_groups(&old, vec![GroupBits::default(); 3]);
        f.settle();
        assert_eq!(keep_of(&f, 0).0, ACTION_REDIRECT);
        // Host 2 joins: until the loop has adopted epoch 2, host 1 still
        // keeps every bucket (the old map says it owns them all).
        let new = map(&[1, 2], 1, 2);
        f.prepare(&new);
        assert_eq!(keep_of(&f, 0).0, ACTION_REDIRECT);
        f.settle();
        assert_eq!(keep_of(&f, 0).0, ACTION_REDIRECT, "loop still on epoch 1");
        // The loop adopts epoch 2 and reports a foreign connection in one
        // group of rule 0 and one under the single-host rule.
        let RuleOwner::Buckets(b) = &new.rules[0].owner else {
            panic!()
        };
        let foreign = (0..BUCKETS as u32)
            .find(|&x| b.owner(x) == HostId::new(2))
            .unwrap();
        let mut dirty = vec![GroupBits::default(); 3];
        dirty[slot_of(&f, 0)].insert(group_of(foreign));
        // A map of the same epoch but not the one published does not count.
        report.record_groups(&map(&[1, 2], 1, 2), dirty.clone());
        f.settle();
        assert_eq!(keep_of(&f, 0).0, ACTION_REDIRECT, "not the published map");
        report.record_groups(&new, dirty);
        f.settle();
        let (action, bits) = keep_of(&f, 0);
        assert_eq!(action, ACTION_BITMAP);
        let bits = bits.unwrap();
        assert!(has(&bits, foreign), "a foreign connection's bucket is kept");
        let other = (0..BUCKETS as u32)
            .find(|&x| b.owner(x) == HostId::new(2) && group_of(x) != group_of(foreign))
            .unwrap();
        assert!(!has(&bits, other));
        // The connection ends: the next report clears its group.
        report.record_groups(&new, vec![GroupBits::default(); 3]);
        f.settle();
        assert!(!has(keep_of(&f, 0).1.as_ref().unwrap(), foreign));
    }

    #[test]
    fn single_host_rules_keep_everything_while_tracking_foreign_entries() {
        let (_, f) = fast();
        let report = f.loop_report();
        let m = map(&[1, 2], 2, 1);
        f.prepare(&m);
        assert_eq!(keep_of(&f, 1).0, ACTION_DROP);
        let mut dirty = vec![GroupBits::default(); 3];
        dirty[slot_of(&f, 1)].insert(0);
        report.record_groups(&m, dirty);
        f.settle();
        assert_eq!(keep_of(&f, 1).0, ACTION_REDIRECT);
        // A disabled rule drops whatever is tracked.
        let mut dirty = vec![GroupBits::default(); 3];
        dirty[slot_of(&f, 2)].insert(0);
        report.record_groups(&m, dirty);
        f.settle();
        assert_eq!(keep_of(&f, 2).0, ACTION_DROP);
    }

    #[test]
    fn republished_views_do_not_pile_up_and_the_settler_settles() {
        let (_, f) = fast();
        let f = Arc::new(f);
        let report = f.loop_report();
        f.prepare(&map(&[1], 1, 1));
        f.prepare(&map(&[1], 1, 1));
        assert_eq!(f.sync.lock().in_flight.len(), 1);
        let two = map(&[1, 2], 1, 2);
        f.prepare(&two);
        assert_eq!(f.sync.lock().in_flight.len(), 2);
        report.record_groups(&two, vec![GroupBits::default(); 3]);
        let t = FastPath::spawn_settler(&f, std::time::Duration::from_millis(5)).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while f.sync.lock().in_flight.len() > 1 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(f.sync.lock().in_flight.len(), 1);
        assert_eq!(keep_of(&f, 0).0, ACTION_BITMAP);
        drop(f);
        t.join().unwrap();
    }

    #[test]
    fn an_other_layout_turns_the_fast_path_off() {
        let (fake, f) = fast();
        f.prepare(&map(&[1, 2], 2, 1));
        let mut other = spec();
        other.rules[1].port_end = 23;
        other.rules.remove(2);
        let m = Arc::new(ClusterMap::build(
            &other,
            &View::converged(&other, hosts(&[1, 2])),
            HostId::new(2).unwrap(),
            2,
        ));
        let before = fake.calls().len();
        f.prepare(&m);
        assert!(f.off_reason().unwrap().contains("epoch 2"));
        for slot in 0..3 {
            assert_eq!(f.sync.lock().written[slot].action, ACTION_REDIRECT);
        }
        assert!(fake.calls().len() > before);
        // And stays off.
        f.prepare(&map(&[1, 2], 2, 3));
        assert_eq!(keep_of(&f, 0).0, ACTION_REDIRECT);
    }

    fn fast_passing() -> FastPath {
        let fake = Arc::new(Fake::default());
        let layout = FastPathLayout::of(&map(&[1], 1, 0));
        let maps = FastPathMaps::create(&*fake, layout, Some([2, 0, 0, 0, 0, 9])).unwrap();
        FastPath::new(fake, Arc::new(maps))
    }

    fn pass_of(f: &FastPath, rule: usize) -> Option<BucketBits> {
        let w = f.sync.lock().written[slot_of(f, rule)].clone();
        (w.action & ACTION_PASS != 0).then(|| w.pass.expect("a pass flag without a bitmap"))
    }

    fn owned_by(m: &ClusterMap, host: u8) -> Vec<u32> {
        let RuleOwner::Buckets(b) = &m.rules[0].owner else {
            panic!()
        };
        (0..BUCKETS as u32)
            .filter(|&x| b.owner(x) == HostId::new(host))
            .collect()
    }

    #[test]
    fn datagrams_pass_only_where_every_map_in_flight_keeps_them() {
        let f = fast_passing();
        let report = f.loop_report();
        let two = map(&[1, 2], 1, 1);
        f.prepare(&two);
        // Rule 0 covers UDP without extended affinity: host 1's buckets pass.
        let pass = pass_of(&f, 0).expect("rule 0 passes");
        let mine = owned_by(&two, 1);
        assert_eq!(pass.count(), mine.len());
        assert!(mine.iter().all(|&b| has(&pass, b)));
        assert_eq!(keep_of(&f, 0).0 & ACTION_MASK, ACTION_BITMAP);
        // TCP-only and disabled rules never pass.
        assert!(pass_of(&f, 1).is_none());
        assert_eq!(keep_of(&f, 2).0, ACTION_DROP);
        report.record_groups(&two, vec![GroupBits::default(); 3]);
        f.settle();

        // Host 3 joins: before any loop adopts the new map, the kernel
        // passes only what both maps give host 1 (the new map is prepared
        // before it is published).
        let three = map(&[1, 2, 3], 1, 2);
        f.prepare(&three);
        let pass = pass_of(&f, 0).unwrap();
        let before = pass_words(&two);
        let moved: Vec<u32> = owned_by(&three, 3)
            .into_iter()
            .filter(|&b| has(&before, b))
            .collect();
        assert!(!moved.is_empty(), "host 3 takes some of host 1's buckets");
        assert!(
            moved.iter().all(|&b| !has(&pass, b)),
            "a moved bucket still passes"
        );
        // ... while the keep set still holds them (the loop may keep them).
        let keep = keep_of(&f, 0).1.unwrap();
        assert!(moved.iter().all(|&b| has(&keep, b)));
        // The loop moves: exactly host 1's new buckets pass.
        report.record_groups(&three, vec![GroupBits::default(); 3]);
        f.settle();
        let pass = pass_of(&f, 0).unwrap();
        assert_eq!(pass, pass_words(&three));

        // Alone, host 1 keeps (redirects) everything and passes everything.
        let alone = map(&[1], 1, 3);
        f.prepare(&alone);
        report.record_groups(&alone, vec![GroupBits::default(); 3]);
        f.settle();
        assert_eq!(keep_of(&f, 0).0, ACTION_REDIRECT | ACTION_PASS);
        assert_eq!(pass_of(&f, 0).unwrap().count(), BUCKETS);
        // Host 2 is the single host of port 22 once host 1 leaves it... the
        // single-host rule is TCP: still no pass.
        assert!(pass_of(&f, 1).is_none());

        // Turned off: plain redirects, so nothing passes either.
        let mut other = spec();
        other.rules.remove(2);
        let m = Arc::new(ClusterMap::build(
            &other,
            &View::converged(&other, hosts(&[1])),
            HostId::new(1).unwrap(),
            4,
        ));
        f.prepare(&m);
        for slot in 0..3 {
            assert_eq!(f.sync.lock().written[slot].action, ACTION_REDIRECT);
        }
    }

    /// Host 1's buckets of rule 0 under `m`.
    fn pass_words(m: &ClusterMap) -> BucketBits {
        let mut k = BucketBits::none();
        for b in owned_by(m, 1) {
            k.insert(b as usize);
        }
        k
    }

    #[test]
    fn extended_affinity_and_no_pass_mac_never_pass() {
        // No MAC: the writer never sets the flag.
        let (_, f) = fast();
        f.prepare(&map(&[1], 1, 1));
        assert_eq!(keep_of(&f, 0).0, ACTION_REDIRECT);
        // Extended affinity on the UDP rule: its datagrams open descriptors.
        let mut sticky = spec();
        sticky.rules[0].extended_affinity_timeout_s = 30;
        let m = Arc::new(ClusterMap::build(
            &sticky,
            &View::converged(&sticky, hosts(&[1])),
            HostId::new(1).unwrap(),
            1,
        ));
        let fake = Arc::new(Fake::default());
        let layout = FastPathLayout::of(&m);
        assert!(!layout.rules.iter().any(|r| r.udp_untracked && r.udp));
        let maps = FastPathMaps::create(&*fake, layout, Some([2, 0, 0, 0, 0, 9])).unwrap();
        let f = FastPath::new(fake, Arc::new(maps));
        f.prepare(&m);
        assert_eq!(keep_of(&f, 0).0, ACTION_REDIRECT);
    }

    #[test]
    fn a_failed_write_turns_the_fast_path_off() {
        use crate::sys::bpf::fake::Script;
        let fake = Arc::new(Fake::new(Script {
            map_update: Some(libc::ENOMEM),
            ..Script::default()
        }));
        let layout = FastPathLayout::of(&map(&[1], 1, 0));
        let maps = Arc::new(FastPathMaps::create(&*fake, layout, None).unwrap());
        let f = FastPath::new(fake, maps);
        f.prepare(&map(&[1, 2], 2, 1));
        assert!(
            f.off_reason().unwrap().contains("failed"),
            "{:?}",
            f.off_reason()
        );
    }
}
