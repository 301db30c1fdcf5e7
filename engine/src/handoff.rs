//! What the poll loops and the control thread hand each other: the map in
//! force ([`MapCell`]), control frames on their way to the control thread
//! ([`ControlInbox`]), frames the control thread wants sent
//! ([`Outbound`]), and each loop's counters and report ([`LoopStats`]).
//!
//! # What it guarantees
//!
//! The frame path never contends on a lock it does not need: a poll loop
//! checks one atomic per batch for a new map, a reset request and queued
//! frames, and takes a lock only when one of them moved. The control thread
//! writes through the same types; neither side depends on the other's
//! module. Every queue between them is bounded and keeps heartbeats apart
//! from everything else, in both directions: a flood of ARP, ND or IGMP
//! frames never takes a heartbeat's room, and what does not fit is counted.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use shoal_controlplane::heartbeat::Claim;
use shoal_dataplane::map::ClusterMap;
use shoal_dataplane::pipeline::{Control, Counters, Dataplane};
use shoal_dataplane::HostId;

use crate::sys::wake::Bells;

/// The map every poll loop reads once per batch.
///
/// `publish` bumps a sequence number; a loop compares it with the one it
/// last saw (one atomic load per batch) and takes the lock only when it
/// moved. The sequence, not the map's epoch, is compared, so a map
/// republished with the same epoch (new dirty groups) is picked up too.
#[derive(Debug)]
pub struct MapCell {
    seq: AtomicU64,
    /// Bumped when every poll loop must forget its tracked connections.
    resets: AtomicU64,
    map: Mutex<Arc<ClusterMap>>,
    /// The XDP fast path, told about every map before it is published.
    fast_path: std::sync::OnceLock<Arc<crate::fastpath::FastPath>>,
    /// The poll loops' doorbells, rung on every publish and reset request.
    bells: std::sync::OnceLock<Arc<Bells>>,
}

impl MapCell {
    /// A cell holding `map`, at sequence 1.
    pub fn new(map: Arc<ClusterMap>) -> Self {
        Self {
            seq: AtomicU64::new(1),
            resets: AtomicU64::new(0),
            map: Mutex::new(map),
            fast_path: std::sync::OnceLock::new(),
            bells: std::sync::OnceLock::new(),
        }
    }

    /// Rings `bells` on every later publish and reset request (call once,
    /// before the poll loops start).
    pub fn attach_bells(&self, bells: Arc<Bells>) {
        let _ = self.bells.set(bells);
    }

    fn ring(&self) {
        if let Some(b) = self.bells.get() {
            b.ring();
        }
    }

    /// Keeps the XDP fast path's maps ahead of every map published here
    /// (call once, before the poll loops start).
    pub fn attach_fast_path(&self, fast: Arc<crate::fastpath::FastPath>) {
        fast.prepare(&self.map.lock());
        let _ = self.fast_path.set(fast);
    }

    /// The XDP fast path's counters (frames it dropped, datagrams it
    /// handed to the kernel stack), read once over every CPU; zero without
    /// a fast path.
    pub fn xdp_counters(&self) -> crate::fastpath::FastPathCounters {
        self.fast_path
            .get()
            .map(|f| f.counters())
            .unwrap_or_default()
    }

    /// The XDP fast path's counters per CPU id (read at once; empty
    /// without a fast path).
    pub fn xdp_counters_per_cpu(&self) -> Vec<crate::fastpath::FastPathCounters> {
        self.fast_path
            .get()
            .map(|f| f.counters_per_cpu())
            .unwrap_or_default()
    }

    /// Publishes `map`.
    pub fn publish(&self, map: Arc<ClusterMap>) {
        if let Some(f) = self.fast_path.get() {
            f.prepare(&map);
        }
        let mut guard = self.map.lock();
        *guard = map;
        self.seq.fetch_add(1, Ordering::AcqRel);
        drop(guard);
        self.ring();
    }

    /// Asks every poll loop to forget its tracked connections (the host
    /// stopped or suspended: NLB's `stop` drops them all). Returns the
    /// request's number; a loop has done it when its
    /// [`LoopStats::resets`] reaches that number.
    pub fn request_reset(&self) -> u64 {
        let n = self.resets.fetch_add(1, Ordering::AcqRel) + 1;
        self.ring();
        n
    }

    /// The latest reset request (one atomic load: checked once per batch).
    #[inline]
    pub fn resets(&self) -> u64 {
        self.resets.load(Ordering::Acquire)
    }

    /// The map in force.
    pub fn current(&self) -> Arc<ClusterMap> {
        self.map.lock().clone()
    }

    /// The newest map and its sequence if the sequence differs from `seen`.
    #[inline]
    pub fn newer_than(&self, seen: u64) -> Option<(u64, Arc<ClusterMap>)> {
        if self.seq.load(Ordering::Acquire) == seen {
            None
        } else {
            let guard = self.map.lock();
            Some((self.seq.load(Ordering::Acquire), guard.clone()))
        }
    }
}

/// Room for heartbeats waiting to leave (an [`Outbound`] lane): the
/// control plane sends a few per period, so a full lane means no poll loop
/// has transmitted for a long while.
pub const OUTBOUND_HEARTBEATS: usize = 256;
/// Room for ARP/ND answers and IGMP reports waiting to leave.
pub const OUTBOUND_ANSWERS: usize = 1024;

/// Which lane of [`Outbound`] a frame takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lane {
    /// The control plane's heartbeats: always transmitted first.
    Heartbeat,
    /// ARP/ND answers, gratuitous ARP, IGMP reports.
    Answer,
}

#[derive(Debug, Default)]
struct Lanes {
    heartbeats: Vec<Vec<u8>>,
    answers: Vec<Vec<u8>>,
}

/// Frames the control thread wants on the wire, taken by whichever poll
/// loop comes next. The loops check one atomic flag per iteration and take
/// the lock only when something is queued, so the frame path never
/// contends on it.
///
/// Two bounded lanes: heartbeats ([`OUTBOUND_HEARTBEATS`]) and everything
/// else ([`OUTBOUND_ANSWERS`]). [`Outbound::take`] hands heartbeats out
/// first, so answers queued in bulk never push a heartbeat past what a
/// transmit ring takes at once. A frame that finds its lane full is
/// dropped and counted ([`Outbound::dropped`]).
#[derive(Debug, Default)]
pub struct Outbound {
    pending: AtomicBool,
    lanes: Mutex<Lanes>,
    /// Frames dropped for lack of room: heartbeats, answers.
    dropped: [AtomicU64; 2],
    /// The poll loops' doorbells: a queued frame wakes a sleeping loop.
    bells: std::sync::OnceLock<Arc<Bells>>,
}

impl Outbound {
    /// Rings `bells` whenever a frame is queued (call once, before the
    /// poll loops start).
    pub fn attach_bells(&self, bells: Arc<Bells>) {
        let _ = self.bells.set(bells);
    }

    /// Queues `frame` in `lane`; returns false (and counts it) when the
    /// lane is full.
    pub fn push(&self, lane: Lane, frame: &[u8]) -> bool {
        {
            let mut lanes = self.lanes.lock();
            let (queue, room, n) = match lane {
                Lane::Heartbeat => (&mut lanes.heartbeats, OUTBOUND_HEARTBEATS, 0),
                Lane::Answer => (&mut lanes.answers, OUTBOUND_ANSWERS, 1),
            };
            if queue.len() >= room {
                self.dropped[n].fetch_add(1, Ordering::Relaxed);
                return false;
            }
            queue.push(frame.to_vec());
        }
        self.pending.store(true, Ordering::Release);
        if let Some(b) = self.bells.get() {
            b.ring();
        }
        true
    }

    /// Everything queued, heartbeats first, or `None` (without locking)
    /// when nothing is.
    #[inline]
    pub fn take(&self) -> Option<Vec<Vec<u8>>> {
        if !self.pending.swap(false, Ordering::AcqRel) {
            return None;
        }
        let mut lanes = self.lanes.lock();
        let mut frames = std::mem::take(&mut lanes.heartbeats);
        frames.append(&mut lanes.answers);
        drop(lanes);
        (!frames.is_empty()).then_some(frames)
    }

    /// Frames dropped because their lane was full: (heartbeats, answers).
    pub fn dropped(&self) -> (u64, u64) {
        (
            self.dropped[0].load(Ordering::Relaxed),
            self.dropped[1].load(Ordering::Relaxed),
        )
    }
}

/// Room for heartbeats from strangers waiting for the control thread
/// ([`ControlInbox`]): frames whose claimed sender and source MAC match no
/// member's last authenticated heartbeat (forgeries, new hosts, a host
/// whose MAC changed). Enough to ride out the control thread being
/// descheduled for tens of milliseconds under a flood of forgeries, while
/// what it holds takes a few milliseconds to authenticate, far less than a
/// heartbeat period.
pub const INBOX_HEARTBEATS: usize = 4096;
/// Room in each member's own heartbeat lane: a member sends one heartbeat
/// a period, so 16 frames cover the control thread not running for 16
/// periods; past that, the newest heartbeat is the one that matters.
pub const INBOX_MEMBER_LANE: usize = 16;
/// Room for ARP, ND and IGMP frames waiting for the control thread.
pub const INBOX_NEIGHBOUR: usize = 1024;

/// Host IDs with a lane of their own (1..=64).
const LANES: usize = 64;
/// Set in a [`ControlInbox`] trust entry that holds a MAC.
const TRUSTED: u64 = 1 << 48;

/// What became of a frame offered to [`ControlInbox::push`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Queued; nothing was lost.
    Queued,
    /// Queued in its sender's member lane, which was full: that lane's
    /// oldest heartbeat was dropped to make room (a heartbeat lost).
    ReplacedOldest,
    /// Refused: its queue (strangers' heartbeats, or ARP/ND/IGMP) was full.
    Refused,
}

#[derive(Debug)]
struct Inbox {
    /// One lane per host ID (index ID - 1), for heartbeats whose claimed
    /// sender and source MAC match that host's trust entry.
    members: Vec<VecDeque<Vec<u8>>>,
    /// Frames in `members`, all lanes together.
    member_frames: usize,
    /// The lane [`ControlInbox::take_heartbeats`] looks at first.
    next_member: usize,
    /// Every other heartbeat.
    strangers: VecDeque<Vec<u8>>,
    neighbour: VecDeque<Vec<u8>>,
    /// The control thread sleeps in [`ControlInbox::wait`].
    sleeping: bool,
}

impl Default for Inbox {
    fn default() -> Self {
        Self {
            members: (0..LANES).map(|_| VecDeque::new()).collect(),
            member_frames: 0,
            next_member: 0,
            strangers: VecDeque::new(),
            neighbour: VecDeque::new(),
            sleeping: false,
        }
    }
}

/// Control frames on their way from the poll loops to the control thread,
/// shared by every poll loop.
///
/// # What it guarantees
///
/// Heartbeats and ARP/ND/IGMP frames wait in separate bounded queues: no
/// ARP, ND or IGMP frame ([`INBOX_NEIGHBOUR`] of them), however many, takes
/// a heartbeat's room.
///
/// Heartbeats are admitted by claimed sender before any HMAC. The control
/// thread records, for each host ID, the Ethernet source MAC, boot counter
/// and sequence number of the latest heartbeat from that host that
/// authenticated and was accepted ([`ControlInbox::trust`]). A poll loop
/// reads what a frame claims with the key-less
/// [`shoal_controlplane::heartbeat::claim`] and a few atomic loads of that
/// table: a heartbeat whose host ID and source MAC match, and whose
/// (boot, sequence) is newer than the last accepted, goes to that host's
/// own lane ([`INBOX_MEMBER_LANE`] frames; when full, the lane's *oldest*
/// frame is dropped, since the newest heartbeat is the one that matters);
/// every other heartbeat (unknown sender, MAC mismatch, a sequence already
/// seen such as a replayed capture, unparseable) waits in the shared
/// strangers' queue
/// ([`INBOX_HEARTBEATS`]), which refuses what does not fit. The control
/// thread drains the member lanes first, one frame per lane in turn, then
/// the strangers, each with its own bound per round. Nothing lost is
/// silent: every refusal or replacement is reported to the pushing loop,
/// which counts it.
///
/// So a member whose heartbeats come from the MAC it last authenticated
/// from is never starved by forgeries sent from any other MAC, nor by
/// replays of its own past frames (captured heartbeats with a spoiled tag
/// included, whatever their source MAC), however many and however slow
/// the control thread. A new host, or one whose NIC changed, gets in
/// through the strangers' queue exactly as before, and has a lane once
/// one of its heartbeats authenticates.
///
/// The limit: the table trusts nothing, it only sorts. A forger who sends
/// with a member's host ID, the source MAC that member uses (shoal sends
/// heartbeats from the masked MAC `02-<host>-<primary VIP>`, which anyone
/// on the segment can see or compute) *and* a (boot, sequence) ahead of
/// the member's (heartbeats are broadcast: anyone on the segment sees the
/// current one) lands in that member's lane and can crowd out that
/// member's heartbeats, and only that member's. A stale entry (a host
/// gone, a MAC that moved) gives a lane, never trust: every frame still
/// has to authenticate.
///
/// One inbox for every poll loop rather than one each: the control thread
/// takes from one place, and the bounds are per host, whatever the loop
/// count.
#[derive(Debug)]
pub struct ControlInbox {
    inbox: Mutex<Inbox>,
    ready: Condvar,
    /// Per host ID (index ID - 1): `TRUSTED | MAC` of its latest accepted
    /// heartbeat, or 0; and that heartbeat's boot counter and sequence
    /// number. Written by the control thread, read lock-free by the poll
    /// loops (a torn read only sends one frame to the other queue).
    trusted: [AtomicU64; LANES],
    boot: [AtomicU64; LANES],
    seq: [AtomicU64; LANES],
    /// Per poll loop: when it last ran (ns since `origin`, plus 1; 0 while
    /// it has not). Written by each loop every round, read by the control
    /// thread (see [`ControlInbox::silent_ns`]).
    progress: [Progress; MAX_LOOPS],
    origin: Instant,
}

/// Most poll loops whose progress an inbox follows.
pub const MAX_LOOPS: usize = 64;

/// One poll loop's progress, on a cache line of its own: each loop writes
/// its own every round.
#[derive(Debug, Default)]
#[repr(align(64))]
struct Progress(AtomicU64);

impl Default for ControlInbox {
    fn default() -> Self {
        Self {
            inbox: Mutex::default(),
            ready: Condvar::new(),
            trusted: std::array::from_fn(|_| AtomicU64::new(0)),
            boot: std::array::from_fn(|_| AtomicU64::new(0)),
            seq: std::array::from_fn(|_| AtomicU64::new(0)),
            progress: std::array::from_fn(|_| Progress::default()),
            origin: Instant::now(),
        }
    }
}

/// A 48-bit MAC in the low bits of a `u64`.
fn mac48(mac: [u8; 6]) -> u64 {
    let mut b = [0u8; 8];
    b[2..].copy_from_slice(&mac);
    u64::from_be_bytes(b)
}

impl ControlInbox {
    /// The member lane `frame` (a heartbeat) belongs in: its claimed host's,
    /// when the frame's source MAC is the one that host last authenticated
    /// from and its claimed (boot, sequence) is newer than that heartbeat's.
    /// No lock, no HMAC, no allocation.
    #[inline]
    fn lane_of(&self, frame: &[u8]) -> Option<usize> {
        let claim = shoal_controlplane::heartbeat::claim(frame)?;
        let source: [u8; 6] = frame.get(6..12)?.try_into().ok()?;
        let lane = claim.host.index();
        if self.trusted[lane].load(Ordering::Acquire) != TRUSTED | mac48(source) {
            return None;
        }
        let last = (
            self.boot[lane].load(Ordering::Relaxed),
            self.seq[lane].load(Ordering::Relaxed),
        );
        ((claim.boot, claim.seq) > last).then_some(lane)
    }

    /// Queues a copy of `frame`, of kind `kind`, and says what became of it
    /// (see the type's docs).
    pub fn push(&self, kind: Control, frame: &[u8]) -> Admission {
        let lane = match kind {
            Control::Heartbeat => self.lane_of(frame),
            Control::Arp | Control::Nd | Control::Igmp => None,
        };
        let mut inbox = self.inbox.lock();
        let admission = match (kind, lane) {
            (Control::Heartbeat, Some(lane)) => {
                let queue = &mut inbox.members[lane];
                if queue.len() >= INBOX_MEMBER_LANE {
                    // The oldest goes; its buffer carries the newest.
                    let mut buf = queue.pop_front().unwrap_or_default();
                    buf.clear();
                    buf.extend_from_slice(frame);
                    queue.push_back(buf);
                    Admission::ReplacedOldest
                } else {
                    queue.push_back(frame.to_vec());
                    inbox.member_frames += 1;
                    Admission::Queued
                }
            }
            (Control::Heartbeat, None) => {
                if inbox.strangers.len() >= INBOX_HEARTBEATS {
                    return Admission::Refused;
                }
                inbox.strangers.push_back(frame.to_vec());
                Admission::Queued
            }
            (Control::Arp | Control::Nd | Control::Igmp, _) => {
                if inbox.neighbour.len() >= INBOX_NEIGHBOUR {
                    return Admission::Refused;
                }
                inbox.neighbour.push_back(frame.to_vec());
                Admission::Queued
            }
        };
        if inbox.sleeping {
            inbox.sleeping = false;
            self.ready.notify_one();
        }
        admission
    }

    /// Poll loop `index` ran at `at` (each loop calls this every round,
    /// with the time it already read for the round).
    #[inline]
    pub fn loop_ran(&self, index: usize, at: Instant) {
        if let Some(p) = self.progress.get(index) {
            let ns = at.saturating_duration_since(self.origin).as_nanos() as u64;
            p.0.store(ns.saturating_add(1), Ordering::Relaxed);
        }
    }

    /// How long, as of `now`, the poll loop that ran least recently has
    /// not run: the time this host could not have heard a heartbeat that
    /// reached that loop's queue (0 before any loop ran). An idle loop
    /// sleeps at most `IDLE_SLEEP_MS` (the runtime's) between rounds.
    pub fn silent_ns(&self, now: Instant) -> u64 {
        let oldest = self
            .progress
            .iter()
            .map(|p| p.0.load(Ordering::Relaxed))
            .filter(|&v| v != 0)
            .min();
        let now = now.saturating_duration_since(self.origin).as_nanos() as u64;
        oldest.map_or(0, |v| now.saturating_sub(v - 1))
    }

    /// Gives `accepted.host` a lane for heartbeats sent from `source` that
    /// claim a newer (boot, sequence) than `accepted`: call with the claim
    /// and source MAC of its latest heartbeat that authenticated and was
    /// accepted. Replaces what the host had.
    pub fn trust(&self, accepted: Claim, source: [u8; 6]) {
        let i = accepted.host.index();
        self.seq[i].store(accepted.seq, Ordering::Relaxed);
        self.boot[i].store(accepted.boot, Ordering::Relaxed);
        self.trusted[i].store(TRUSTED | mac48(source), Ordering::Release);
    }

    /// Takes `host`'s lane away: its heartbeats wait with the strangers'
    /// until one authenticates again.
    pub fn forget(&self, host: HostId) {
        self.trusted[host.index()].store(0, Ordering::Release);
    }

    /// The source MAC `host` has a lane for, if any.
    pub fn trusted(&self, host: HostId) -> Option<[u8; 6]> {
        let v = self.trusted[host.index()].load(Ordering::Acquire);
        (v & TRUSTED != 0).then(|| {
            let b = v.to_be_bytes();
            [b[2], b[3], b[4], b[5], b[6], b[7]]
        })
    }

    /// Blocks up to `timeout` until a frame is queued; returns at once when
    /// one is.
    pub fn wait(&self, timeout: Duration) {
        let mut inbox = self.inbox.lock();
        if inbox.member_frames == 0 && inbox.strangers.is_empty() && inbox.neighbour.is_empty() {
            inbox.sleeping = true;
            let _ = self.ready.wait_for(&mut inbox, timeout);
            inbox.sleeping = false;
        }
    }

    /// Moves queued heartbeats into `out`: up to `members` from the member
    /// lanes first (one frame per lane in turn, each lane oldest first,
    /// the turn carried over to the next call), then up to `strangers`
    /// from the strangers' queue, oldest first.
    pub fn take_heartbeats(&self, members: usize, strangers: usize, out: &mut Vec<Vec<u8>>) {
        let mut inbox = self.inbox.lock();
        let mut taken = 0;
        while taken < members && inbox.member_frames > 0 {
            let lane = inbox.next_member;
            inbox.next_member = (lane + 1) % LANES;
            if let Some(f) = inbox.members[lane].pop_front() {
                inbox.member_frames -= 1;
                out.push(f);
                taken += 1;
            }
        }
        let n = strangers.min(inbox.strangers.len());
        out.extend(inbox.strangers.drain(..n));
    }

    /// Moves up to `max` queued ARP, ND and IGMP frames, oldest first, into
    /// `out`.
    pub fn take_neighbour(&self, max: usize, out: &mut Vec<Vec<u8>>) {
        let mut inbox = self.inbox.lock();
        let n = max.min(inbox.neighbour.len());
        out.extend(inbox.neighbour.drain(..n));
    }

    /// Frames queued now: (heartbeats, members' and strangers', ARP/ND/IGMP).
    pub fn queued(&self) -> (usize, usize) {
        let inbox = self.inbox.lock();
        (
            inbox.member_frames + inbox.strangers.len(),
            inbox.neighbour.len(),
        )
    }

    /// Heartbeats queued now: (in member lanes, strangers').
    pub fn queued_heartbeats(&self) -> (usize, usize) {
        let inbox = self.inbox.lock();
        (inbox.member_frames, inbox.strangers.len())
    }
}

/// Counters a poll loop shares with the control thread.
#[derive(Debug, Default, Clone)]
pub struct LoopStats {
    /// Dataplane counters.
    pub dataplane: Counters,
    /// Frames handed to the TAP.
    pub delivered: u64,
    /// Kept frames the TAP did not take.
    pub delivery_errors: u64,
    /// Control frames the control thread's queues had no room for, by
    /// kind (in [`Control::ALL`] order): refused, or (heartbeats) replaced
    /// in a full member lane.
    pub control_dropped: [u64; 4],
    /// The heartbeats of `control_dropped`, split: replaced in a full
    /// member lane, refused by the full strangers' queue.
    pub heartbeat_dropped: [u64; 2],
    /// Batches received, and frames in them (for the mean batch fill).
    pub batches: u64,
    /// Frames transmitted for the control thread.
    pub transmitted: u64,
    /// Frames the control thread wanted sent that the backend did not take
    /// (its ring or socket buffer full, or the send failed).
    pub transmit_rejected: u64,
    /// Live descriptors.
    pub descriptors: u64,
    /// Live descriptors per state (`half_open`, `closing`, `soft`,
    /// `established`), as the table keeps them.
    pub descriptors_by_state: [u32; 4],
    /// Epoch of the map this loop runs.
    pub epoch: u64,
    /// Per rule, the groups where this loop tracks entries it no longer owns.
    pub dirty: Vec<shoal_dataplane::map::GroupBits>,
    /// Open TCP connections (half-open or established) per rule: what a
    /// drain waits for.
    pub by_rule: [u32; shoal_dataplane::MAX_RULES],
    /// The last reset request ([`MapCell::request_reset`]) this loop carried out.
    pub resets: u64,
    /// The descriptor table's bound (entries) and its insert, expiry and
    /// eviction counters.
    pub table_capacity: u64,
    /// See `table_capacity`.
    pub table: shoal_dataplane::descriptor::TableCounters,
    /// The kernel's drop counters of this loop's sockets (AF_XDP).
    pub socket_drops: crate::io::SocketDrops,
}

impl LoopStats {
    /// Copies what the control thread needs from `dp`.
    pub fn snapshot(&mut self, dp: &Dataplane) {
        self.dataplane = dp.counters().clone();
        self.descriptors = dp.table().len() as u64;
        self.descriptors_by_state = dp.table().live_by_state();
        self.epoch = dp.map().epoch;
        self.dirty = (0..dp.map().rules.len())
            .map(|r| dp.table().dirty_groups(r))
            .collect();
        self.by_rule = *dp.table().open_by_rule();
        self.table_capacity = dp.table().capacity() as u64;
        self.table = *dp.table().counters();
    }
}

/// Carries out a pending reset request of `cell` on `dp` (a fresh
/// descriptor table) and records it in `stats`; returns whether it did.
/// One atomic load when nothing is pending.
#[inline]
pub fn apply_reset(cell: &MapCell, dp: &mut Dataplane, stats: &mut LoopStats) -> bool {
    let wanted = cell.resets();
    if wanted == stats.resets {
        return false;
    }
    dp.reset_descriptors();
    stats.resets = wanted;
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The silence is the least recently running loop's; loops that never
    /// ran, and indices past the table, do not count.
    #[test]
    fn silence_is_the_stalest_loop_s() {
        let inbox = ControlInbox::default();
        let t0 = Instant::now();
        assert_eq!(
            inbox.silent_ns(t0 + Duration::from_secs(5)),
            0,
            "no loop ran"
        );
        inbox.loop_ran(0, t0 + Duration::from_millis(100));
        inbox.loop_ran(3, t0 + Duration::from_millis(40));
        inbox.loop_ran(MAX_LOOPS + 1, t0);
        let ms = |d: u64| inbox.silent_ns(t0 + Duration::from_millis(d)) / 1_000_000;
        assert_eq!(ms(140), 100, "loop 3 ran last at 40 ms");
        inbox.loop_ran(3, t0 + Duration::from_millis(150));
        assert_eq!(ms(160), 60, "now loop 0 is the stalest");
        assert_eq!(ms(50), 0, "a clock behind the loops");
    }

    /// However many ARP, ND and IGMP frames arrive, heartbeats keep their
    /// room, and each queue refuses what exceeds its bound.
    #[test]
    fn neighbour_frames_never_take_a_heartbeats_room() {
        let inbox = ControlInbox::default();
        let mut refused = 0;
        for i in 0..10 * INBOX_NEIGHBOUR {
            let kind = [Control::Arp, Control::Nd, Control::Igmp][i % 3];
            refused += usize::from(inbox.push(kind, &[1; 60]) == Admission::Refused);
        }
        assert_eq!(refused, 9 * INBOX_NEIGHBOUR);
        for _ in 0..INBOX_HEARTBEATS {
            assert_eq!(inbox.push(Control::Heartbeat, &[2; 188]), Admission::Queued);
        }
        assert_eq!(
            inbox.push(Control::Heartbeat, &[2; 188]),
            Admission::Refused,
            "bounded too"
        );
        assert_eq!(inbox.queued(), (INBOX_HEARTBEATS, INBOX_NEIGHBOUR));
        let mut out = Vec::new();
        inbox.take_heartbeats(10, 10, &mut out);
        assert_eq!(out.len(), 10);
        assert!(out.iter().all(|f| f[0] == 2));
        out.clear();
        inbox.take_neighbour(usize::MAX, &mut out);
        assert_eq!(out.len(), INBOX_NEIGHBOUR);
        assert_eq!(inbox.queued(), (INBOX_HEARTBEATS - 10, 0));
        // Waiting returns at once while something is queued.
        let t = std::time::Instant::now();
        inbox.wait(Duration::from_secs(5));
        assert!(t.elapsed() < Duration::from_secs(1));
    }

    /// A frame pushed from another thread wakes a waiting control thread.
    #[test]
    fn a_push_wakes_the_waiting_control_thread() {
        let inbox = Arc::new(ControlInbox::default());
        let pusher = {
            let inbox = inbox.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(50));
                assert_eq!(inbox.push(Control::Heartbeat, &[3; 188]), Admission::Queued);
            })
        };
        let t = std::time::Instant::now();
        inbox.wait(Duration::from_secs(10));
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
        assert_eq!(inbox.queued(), (1, 0));
        pusher.join().unwrap();
    }

    /// Host 2's MAC, the one it authenticates from.
    const M: [u8; 6] = [0x02, 2, 10, 0, 0, 100];
    /// A bystander's MAC.
    const A: [u8; 6] = [0x02, 0xaa, 0, 0, 0, 0x62];

    /// A frame that passes the key-less header checks: heartbeat of `host`
    /// from `source`, `mark` in the sequence number's place (the tag is
    /// anything: nothing here computes an HMAC).
    fn heartbeat(host: u8, source: [u8; 6], mark: u32) -> Vec<u8> {
        use shoal_controlplane::heartbeat::{FIXED_PAYLOAD, MAGIC, VERSION};
        let mut f = vec![0u8; 14 + FIXED_PAYLOAD];
        f[..6].fill(0xff);
        f[6..12].copy_from_slice(&source);
        f[12..14].copy_from_slice(&shoal_dataplane::wire::ethertype::HEARTBEAT.to_be_bytes());
        let p = &mut f[14..];
        p[..2].copy_from_slice(&MAGIC.to_be_bytes());
        p[2] = VERSION;
        p[4..6].copy_from_slice(&(FIXED_PAYLOAD as u16).to_be_bytes());
        p[16] = host;
        p[17] = 2;
        p[32..36].copy_from_slice(&mark.to_be_bytes());
        f
    }

    /// Gives `host` a lane at `source` for sequence numbers above `seq`.
    fn trust(inbox: &ControlInbox, host: u8, source: [u8; 6], seq: u64) {
        let host = HostId::new(host).unwrap();
        inbox.trust(Claim { host, boot: 0, seq }, source);
    }

    fn mark(frame: &[u8]) -> (u8, [u8; 6], u32) {
        let p = &frame[14..];
        (
            p[16],
            frame[6..12].try_into().unwrap(),
            u32::from_be_bytes(p[32..36].try_into().unwrap()),
        )
    }

    /// Host 2 is trusted at M, its last accepted sequence 100,000.
    /// 100,000 heartbeats from strangers (unknown hosts, host 2's ID from
    /// the bystander's MAC, replays of host 2's earlier frames from M)
    /// arrive interleaved with host 2's 10 real ones, and nothing is
    /// drained meanwhile: every real one is queued and taken first, the
    /// strangers fill their queue and the rest are refused.
    #[test]
    fn forgeries_and_replays_never_starve_a_member() {
        let inbox = ControlInbox::default();
        let two = HostId::new(2).unwrap();
        assert_eq!(inbox.trusted(two), None);
        trust(&inbox, 2, M, 100_000);
        assert_eq!(inbox.trusted(two), Some(M));
        let (mut queued, mut refused, mut real) = (0, 0, 0u32);
        for i in 0..100_000u32 {
            if i % 10_000 == 5_000 {
                let f = heartbeat(2, M, 1_000_000 + real);
                assert_eq!(inbox.push(Control::Heartbeat, &f), Admission::Queued);
                real += 1;
            }
            let f = match i % 5 {
                // Host 2's ID from the bystander's MAC.
                0 => heartbeat(2, A, 1_000_000 + i),
                // Host 2's earlier frames from its own MAC (a capture).
                4 => heartbeat(2, M, i),
                // Host 3 (not trusted) from its own MAC.
                1 => heartbeat(3, [0x02, 3, 10, 0, 0, 100], i),
                // Host 2's MAC with another ID.
                2 => heartbeat(5, M, i),
                // Not even a plausible heartbeat.
                _ => vec![0x5a; 200],
            };
            match inbox.push(Control::Heartbeat, &f) {
                Admission::Queued => queued += 1,
                Admission::Refused => refused += 1,
                Admission::ReplacedOldest => panic!("a stranger replaced a member's frame"),
            }
        }
        assert_eq!(real, 10);
        assert_eq!(queued, INBOX_HEARTBEATS);
        assert_eq!(refused, 100_000 - INBOX_HEARTBEATS);
        assert_eq!(inbox.queued_heartbeats(), (10, INBOX_HEARTBEATS));
        let mut out = Vec::new();
        inbox.take_heartbeats(64, 64, &mut out);
        assert_eq!(out.len(), 10 + 64);
        for (k, f) in out[..10].iter().enumerate() {
            assert_eq!(
                mark(f),
                (2, M, 1_000_000 + k as u32),
                "host 2's frames first, in order"
            );
        }
        let real = |f: &Vec<u8>| {
            let (host, source, seq) = mark(f);
            f.len() == 14 + 182 && host == 2 && source == M && seq >= 1_000_000
        };
        assert!(
            !out[10..].iter().any(real),
            "no real frame among the strangers"
        );
        assert_eq!(inbox.queued_heartbeats(), (0, INBOX_HEARTBEATS - 64));
    }

    /// A member's lane keeps its newest frames: when full, the oldest goes
    /// (and the push says so).
    #[test]
    fn a_full_member_lane_drops_its_oldest() {
        let inbox = ControlInbox::default();
        trust(&inbox, 2, M, 0);
        let mut replaced = 0;
        for k in 1..=INBOX_MEMBER_LANE as u32 + 4 {
            match inbox.push(Control::Heartbeat, &heartbeat(2, M, k)) {
                Admission::Queued => assert!(k <= INBOX_MEMBER_LANE as u32),
                Admission::ReplacedOldest => replaced += 1,
                Admission::Refused => panic!("a member's frame refused"),
            }
        }
        assert_eq!(replaced, 4);
        assert_eq!(inbox.queued_heartbeats(), (INBOX_MEMBER_LANE, 0));
        let mut out = Vec::new();
        inbox.take_heartbeats(usize::MAX, usize::MAX, &mut out);
        let marks: Vec<u32> = out.iter().map(|f| mark(f).2).collect();
        assert_eq!(
            marks,
            (5..=INBOX_MEMBER_LANE as u32 + 4).collect::<Vec<_>>()
        );
        assert_eq!(inbox.queued(), (0, 0));
    }

    /// Senders without a lane (a new host, a host whose MAC moved) get in
    /// through the strangers' queue while it has room; trust moves with
    /// the MAC, and a forgotten host is a stranger again. Members are
    /// taken in turn, one frame per lane, within the round's bound.
    #[test]
    fn strangers_get_in_and_members_take_turns() {
        let inbox = ControlInbox::default();
        let (two, three) = (HostId::new(2).unwrap(), HostId::new(3).unwrap());
        let b: [u8; 6] = [0x02, 3, 10, 0, 0, 100];
        assert_eq!(
            inbox.push(Control::Heartbeat, &heartbeat(7, A, 1)),
            Admission::Queued
        );
        assert_eq!(
            inbox.push(Control::Heartbeat, &heartbeat(2, M, 2)),
            Admission::Queued
        );
        assert_eq!(inbox.queued_heartbeats(), (0, 2), "no lane before trust");
        trust(&inbox, 2, M, 0);
        trust(&inbox, 3, b, 0);
        for k in 0..4 {
            assert_eq!(
                inbox.push(Control::Heartbeat, &heartbeat(2, M, 10 + k)),
                Admission::Queued
            );
            assert_eq!(
                inbox.push(Control::Heartbeat, &heartbeat(3, b, 20 + k)),
                Admission::Queued
            );
        }
        // Host 2 moved to another NIC: a stranger until it authenticates there.
        assert_eq!(
            inbox.push(Control::Heartbeat, &heartbeat(2, A, 3)),
            Admission::Queued
        );
        assert_eq!(inbox.queued_heartbeats(), (8, 3));
        let mut out = Vec::new();
        inbox.take_heartbeats(4, 0, &mut out);
        let marks: Vec<u32> = out.iter().map(|f| mark(f).2).collect();
        assert_eq!(marks, [10, 20, 11, 21], "one frame per lane in turn");
        out.clear();
        inbox.take_heartbeats(3, 1, &mut out);
        let marks: Vec<u32> = out.iter().map(|f| mark(f).2).collect();
        assert_eq!(
            marks,
            [12, 22, 13, 1],
            "the turn carries over; then strangers"
        );
        trust(&inbox, 2, A, 0);
        assert_eq!(inbox.trusted(two), Some(A));
        assert_eq!(
            inbox.push(Control::Heartbeat, &heartbeat(2, M, 4)),
            Admission::Queued
        );
        assert_eq!(
            inbox.queued_heartbeats(),
            (1, 3),
            "the old MAC is a stranger's now"
        );
        // A sequence number not above the last accepted waits with strangers.
        trust(&inbox, 2, A, 50);
        assert_eq!(
            inbox.push(Control::Heartbeat, &heartbeat(2, A, 50)),
            Admission::Queued
        );
        assert_eq!(inbox.queued_heartbeats(), (1, 4), "a replay");
        assert_eq!(
            inbox.push(Control::Heartbeat, &heartbeat(2, A, 51)),
            Admission::Queued
        );
        assert_eq!(inbox.queued_heartbeats(), (2, 4), "the next one");
        out.clear();
        inbox.take_heartbeats(usize::MAX, 0, &mut out);
        let mut marks: Vec<_> = out.iter().map(|f| mark(f)).collect();
        marks.sort();
        assert_eq!(marks, [(2, A, 51), (3, b, 23)]);
        inbox.forget(three);
        assert_eq!(inbox.trusted(three), None);
        assert_eq!(
            inbox.push(Control::Heartbeat, &heartbeat(3, b, 5)),
            Admission::Queued
        );
        assert_eq!(inbox.queued_heartbeats(), (0, 5));
        // ARP/ND/IGMP never take a lane, whatever their bytes.
        assert_eq!(
            inbox.push(Control::Arp, &heartbeat(2, A, 60)),
            Admission::Queued
        );
        assert_eq!(inbox.queued(), (5, 1));
    }

    /// Heartbeats leave ahead of every queued answer, and a full answer
    /// lane drops (and counts) answers, never heartbeats.
    #[test]
    fn heartbeats_leave_first_and_answers_cannot_crowd_them_out() {
        let out = Outbound::default();
        for _ in 0..OUTBOUND_ANSWERS + 10 {
            let _ = out.push(Lane::Answer, &[1; 60]);
        }
        assert!(out.push(Lane::Heartbeat, &[2; 188]));
        assert_eq!(out.dropped(), (0, 10));
        let frames = out.take().unwrap();
        assert_eq!(frames.len(), OUTBOUND_ANSWERS + 1);
        assert_eq!(frames[0][0], 2, "the heartbeat first");
        assert!(out.take().is_none());
    }
}
