//! The live view a proxy worker routes with: an immutable [`Snapshot`] per
//! service, swapped whole by the health thread ([`ViewCell`]).
//!
//! Guarantees: a worker reads one atomic per request ([`ViewCell::load`])
//! and takes the cell's lock only when a newer snapshot was published, so
//! the request path never contends on it; a snapshot never changes once
//! published.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::tools::carp::Array;

/// One service's view at one moment: the cluster epoch, which members are
/// up (the cluster's converged view and the health checks, both), and when
/// each last changed.
#[derive(Clone, Debug)]
pub struct Snapshot {
    /// The cluster map's epoch the view was taken from.
    pub epoch: u64,
    /// The array: its router's members marked up or down, the PAC targets,
    /// the table's fields.
    pub array: Array,
    /// Per member, milliseconds (engine clock) of its latest state change.
    pub since_ms: Vec<u64>,
    /// Whether this host's `local` backend answers (`members = "cluster"`;
    /// always true for parents).
    pub local_up: bool,
}

impl Snapshot {
    /// Whether member `i` may be routed to.
    pub fn is_up(&self, i: usize) -> bool {
        self.array
            .router
            .carp
            .members()
            .get(i)
            .is_some_and(|m| m.up)
    }

    /// Seconds since each member's latest state change, at `now_ms`.
    pub fn state_times_s(&self, now_ms: u64) -> Vec<u32> {
        self.since_ms
            .iter()
            .map(|&s| (now_ms.saturating_sub(s) / 1000).min(u64::from(u32::MAX)) as u32)
            .collect()
    }
}

/// Where the health thread publishes a service's [`Snapshot`] and workers
/// read it.
#[derive(Debug)]
pub struct ViewCell {
    seq: AtomicU64,
    snapshot: Mutex<Arc<Snapshot>>,
}

impl ViewCell {
    /// A cell holding `first`, at sequence 1.
    pub fn new(first: Snapshot) -> Self {
        Self {
            seq: AtomicU64::new(1),
            snapshot: Mutex::new(Arc::new(first)),
        }
    }

    /// Publishes `next`.
    pub fn publish(&self, next: Snapshot) {
        let mut guard = self.snapshot.lock();
        *guard = Arc::new(next);
        self.seq.fetch_add(1, Ordering::AcqRel);
    }

    /// The snapshot in force.
    pub fn current(&self) -> Arc<Snapshot> {
        self.snapshot.lock().clone()
    }

    /// Refreshes `cached` (sequence, snapshot) if a newer snapshot was
    /// published: one atomic load when nothing moved.
    #[inline]
    pub fn load(&self, cached: &mut (u64, Arc<Snapshot>)) {
        if self.seq.load(Ordering::Acquire) != cached.0 {
            let guard = self.snapshot.lock();
            *cached = (self.seq.load(Ordering::Acquire), guard.clone());
        }
    }
}
