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
use std::time::Duration;

use parking_lot::{Condvar, Mutex};
use shoal_dataplane::map::ClusterMap;
use shoal_dataplane::pipeline::{Control, Counters, Dataplane};

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

/// Room for heartbeats waiting for the control thread ([`ControlInbox`]):
/// enough to ride out the control thread being descheduled for tens of
/// milliseconds under a flood of forgeries, while what it holds takes a few
/// milliseconds to authenticate, far less than a heartbeat period.
pub const INBOX_HEARTBEATS: usize = 4096;
/// Room for ARP, ND and IGMP frames waiting for the control thread.
pub const INBOX_NEIGHBOUR: usize = 1024;

#[derive(Debug, Default)]
struct Inbox {
    heartbeats: VecDeque<Vec<u8>>,
    neighbour: VecDeque<Vec<u8>>,
    /// The control thread sleeps in [`ControlInbox::wait`].
    sleeping: bool,
}

/// Control frames on their way from the poll loops to the control thread,
/// shared by every poll loop.
///
/// # What it guarantees
///
/// Two bounded queues: heartbeats ([`INBOX_HEARTBEATS`]) and ARP, ND and
/// IGMP ([`INBOX_NEIGHBOUR`]). No ARP, ND or IGMP frame, however many, takes
/// a heartbeat's room. A frame that finds its queue full is refused
/// ([`ControlInbox::push`] returns false) and the poll loop counts it by
/// kind. Forged heartbeats share the heartbeat queue with real ones (only
/// the control plane can tell them apart); the control thread drains
/// heartbeats before anything else each round, so real ones are lost only
/// while forgeries arrive faster than it authenticates them.
///
/// One queue for every poll loop rather than one each: the control thread
/// takes from one place, and the bound is per host, whatever the loop count.
#[derive(Debug, Default)]
pub struct ControlInbox {
    inbox: Mutex<Inbox>,
    ready: Condvar,
}

impl ControlInbox {
    /// Queues a copy of `frame`, of kind `kind`; false when its queue is full.
    pub fn push(&self, kind: Control, frame: &[u8]) -> bool {
        let mut inbox = self.inbox.lock();
        let (queue, room) = match kind {
            Control::Heartbeat => (&mut inbox.heartbeats, INBOX_HEARTBEATS),
            Control::Arp | Control::Nd | Control::Igmp => (&mut inbox.neighbour, INBOX_NEIGHBOUR),
        };
        if queue.len() >= room {
            return false;
        }
        queue.push_back(frame.to_vec());
        if inbox.sleeping {
            inbox.sleeping = false;
            self.ready.notify_one();
        }
        true
    }

    /// Blocks up to `timeout` until a frame is queued; returns at once when
    /// one is.
    pub fn wait(&self, timeout: Duration) {
        let mut inbox = self.inbox.lock();
        if inbox.heartbeats.is_empty() && inbox.neighbour.is_empty() {
            inbox.sleeping = true;
            let _ = self.ready.wait_for(&mut inbox, timeout);
            inbox.sleeping = false;
        }
    }

    /// Moves up to `max` queued heartbeats, oldest first, into `out`.
    pub fn take_heartbeats(&self, max: usize, out: &mut Vec<Vec<u8>>) {
        let mut inbox = self.inbox.lock();
        let n = max.min(inbox.heartbeats.len());
        out.extend(inbox.heartbeats.drain(..n));
    }

    /// Moves up to `max` queued ARP, ND and IGMP frames, oldest first, into
    /// `out`.
    pub fn take_neighbour(&self, max: usize, out: &mut Vec<Vec<u8>>) {
        let mut inbox = self.inbox.lock();
        let n = max.min(inbox.neighbour.len());
        out.extend(inbox.neighbour.drain(..n));
    }

    /// Frames queued now: (heartbeats, ARP/ND/IGMP).
    pub fn queued(&self) -> (usize, usize) {
        let inbox = self.inbox.lock();
        (inbox.heartbeats.len(), inbox.neighbour.len())
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
    /// kind (in [`Control::ALL`] order).
    pub control_dropped: [u64; 4],
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

    /// However many ARP, ND and IGMP frames arrive, heartbeats keep their
    /// room, and each queue refuses what exceeds its bound.
    #[test]
    fn neighbour_frames_never_take_a_heartbeats_room() {
        let inbox = ControlInbox::default();
        let mut refused = 0;
        for i in 0..10 * INBOX_NEIGHBOUR {
            let kind = [Control::Arp, Control::Nd, Control::Igmp][i % 3];
            refused += usize::from(!inbox.push(kind, &[1; 60]));
        }
        assert_eq!(refused, 9 * INBOX_NEIGHBOUR);
        for _ in 0..INBOX_HEARTBEATS {
            assert!(inbox.push(Control::Heartbeat, &[2; 188]));
        }
        assert!(!inbox.push(Control::Heartbeat, &[2; 188]), "bounded too");
        assert_eq!(inbox.queued(), (INBOX_HEARTBEATS, INBOX_NEIGHBOUR));
        let mut out = Vec::new();
        inbox.take_heartbeats(10, &mut out);
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
                assert!(inbox.push(Control::Heartbeat, &[3; 188]));
            })
        };
        let t = std::time::Instant::now();
        inbox.wait(Duration::from_secs(10));
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
        assert_eq!(inbox.queued(), (1, 0));
        pusher.join().unwrap();
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
