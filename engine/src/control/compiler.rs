//! The map compiler: a worker thread that turns views into cluster maps
//! off the control thread, newest request first, and precomputes the
//! bucket maps of the views a failover would bring.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::Arc;

use shoal_dataplane::map::{BucketCache, ClusterMap};
use shoal_dataplane::HostId;

/// A worker thread that compiles bucket maps, newest request first.
///
/// It keeps the bucket maps of the last view it compiled and, while no
/// request waits, computes those of each view that view would become if one
/// member failed (up to [`SPECULATE_MAX_MEMBERS`] members): a failover then
/// compiles from the cache instead of computing 2^20 buckets × hosts while
/// the failed host's clients wait. A request that arrives meanwhile waits at
/// most for the one bucket map being computed.
pub(super) struct Compiler {
    pub(super) requests: std::sync::mpsc::Sender<CompileRequest>,
    pub(super) results: Receiver<ClusterMap>,
    /// Set before a request is sent, cleared when the worker takes it: a
    /// speculative computation gives up when it is set.
    pub(super) waiting: Arc<AtomicBool>,
}

/// One view to compile.
pub(super) struct CompileRequest {
    pub(super) spec: shoal_dataplane::ClusterSpec,
    pub(super) view: shoal_dataplane::map::View,
    pub(super) local: HostId,
    pub(super) epoch: u64,
}

/// Largest view whose one-member-less successors the compiler precomputes
/// (each costs up to a 1 MiB bucket map per distinct weight vector).
const SPECULATE_MAX_MEMBERS: usize = 16;

/// Computes into `cache` the bucket maps of `req`'s view without each of its
/// members in turn, at the lowest priority, giving up as soon as `waiting`
/// says a request has been sent.
fn speculate(req: &CompileRequest, cache: &mut BucketCache, waiting: &AtomicBool) {
    let members = req.view.members;
    if !(2..=SPECULATE_MAX_MEMBERS).contains(&members.len()) {
        return;
    }
    // Guesswork yields to the poll loops and the control thread.
    let _ = crate::sys::sched::set_thread_nice(19);
    let stop = || waiting.load(Ordering::Acquire);
    for gone in members.iter() {
        let mut view = req.view.clone();
        view.members.remove(gone);
        if !cache.warm(&req.spec, &view, &stop) {
            break;
        }
    }
    if let Err(e) = crate::sys::sched::set_thread_nice(0) {
        tracing::debug!(error = %e, "map compiler stays at nice 19");
    }
}

impl Compiler {
    /// Starts the worker thread (without one, requests fail to send).
    pub(super) fn spawn() -> Self {
        let (requests, inbox) = std::sync::mpsc::channel::<CompileRequest>();
        let (done, results) = std::sync::mpsc::channel();
        let waiting = Arc::new(AtomicBool::new(false));
        let flag = waiting.clone();
        let spawned = std::thread::Builder::new()
            .name("shoal-compile".into())
            .spawn(move || {
                let mut cache = BucketCache::default();
                while let Ok(mut req) = inbox.recv() {
                    flag.store(false, Ordering::Release);
                    // Only the newest view matters: skip those it replaced.
                    while let Ok(newer) = inbox.try_recv() {
                        req = newer;
                    }
                    let map = ClusterMap::build_cached(
                        &req.spec, &req.view, req.local, req.epoch, &mut cache,
                    );
                    cache.retain_used_by(&map);
                    if done.send(map).is_err() {
                        return;
                    }
                    speculate(&req, &mut cache, &flag);
                }
            });
        if let Err(err) = spawned {
            // Without the worker, requests fail to send and are compiled
            // on the control thread instead (see `ControlLoop::install`).
            tracing::warn!(error = %err, "no map compiler thread: compiling inline");
        }
        Self {
            requests,
            results,
            waiting,
        }
    }
}
