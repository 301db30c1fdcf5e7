//! What the poll loops and the control thread hand each other: the map in
//! force ([`MapCell`]), frames the control thread wants sent
//! ([`Outbound`]), and each loop's counters and report ([`LoopStats`]).
//!
//! # What it guarantees
//!
//! The frame path never contends on a lock it does not need: a poll loop
//! checks one atomic per batch for a new map, a reset request and queued
//! frames, and takes a lock only when one of them moved. The control thread
//! writes through the same types; neither side depends on the other's
//! module.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use shoal_dataplane::map::ClusterMap;
use shoal_dataplane::pipeline::{Counters, Dataplane};

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

/// Frames the control thread wants on the wire (heartbeats, ARP/ND
/// answers, IGMP reports), taken by whichever poll loop comes next. The
/// loops check one atomic flag per iteration and take the lock only when
/// something is queued, so the frame path never contends on it.
#[derive(Debug, Default)]
pub struct Outbound {
    pending: AtomicBool,
    frames: Mutex<Vec<Vec<u8>>>,
    /// The poll loops' doorbells: a queued frame wakes a sleeping loop.
    bells: std::sync::OnceLock<Arc<Bells>>,
}

impl Outbound {
    /// Rings `bells` whenever a frame is queued (call once, before the
    /// poll loops start).
    pub fn attach_bells(&self, bells: Arc<Bells>) {
        let _ = self.bells.set(bells);
    }

    /// Queues `frame`.
    pub fn push(&self, frame: &[u8]) {
        self.frames.lock().push(frame.to_vec());
        self.pending.store(true, Ordering::Release);
        if let Some(b) = self.bells.get() {
            b.ring();
        }
    }

    /// Everything queued, or `None` (without locking) when nothing is.
    #[inline]
    pub fn take(&self) -> Option<Vec<Vec<u8>>> {
        if !self.pending.swap(false, Ordering::AcqRel) {
            return None;
        }
        let frames = std::mem::take(&mut *self.frames.lock());
        (!frames.is_empty()).then_some(frames)
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
    /// Control frames the control thread's queue had no room for.
    pub control_overflow: u64,
    /// Batches received, and frames in them (for the mean batch fill).
    pub batches: u64,
    /// Frames transmitted for the control thread.
    pub transmitted: u64,
    /// Live descriptors.
    pub descriptors: u64,
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
