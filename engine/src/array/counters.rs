//! Per-worker, per-service counters, summed when read.
//!
//! Each proxy worker owns one [`ServiceCounters`] per service and is the
//! only writer (relaxed atomics, no contention); readers (the stats file,
//! the admin socket) sum every worker's. [`service_json`] is one entry of the
//! `services` object of the `--stats` JSON and of `shoal query --json`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::{json, Map, Value};

use super::view::Snapshot;

/// The error kinds counted, in the JSON's order: the head refusals
/// ([`shoal_dataplane::array::Refusal::COUNTERS`]), then `unreachable`
/// (502), `timeout` (504) and `overload` (503 beyond `max_connections`).
pub const ERRORS: &[&str] = &[
    "bad_request",
    "uri_too_long",
    "head_too_large",
    "forbidden_port",
    "loop",
    "forged_member",
    "unreachable",
    "timeout",
    "overload",
];

/// Index of an error kind in [`ERRORS`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// A refusal, by its counter name.
    Refusal(&'static str),
    /// No member, parent or local backend could be reached (502).
    Unreachable,
    /// The response head did not start within `first_byte_timeout_ms` (504).
    Timeout,
    /// A connection beyond `max_connections` (503).
    Overload,
}

impl ErrorKind {
    fn index(self) -> usize {
        let name = match self {
            ErrorKind::Refusal(n) => n,
            ErrorKind::Unreachable => "unreachable",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Overload => "overload",
        };
        ERRORS.iter().position(|e| *e == name).unwrap_or(0)
    }
}

/// Upper bounds of the request-latency buckets, seconds (time from the
/// request head to the response head; a last bucket takes the rest).
pub const LATENCY_BOUNDS_S: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// One worker's request-latency histogram: a count per bucket of
/// [`LATENCY_BOUNDS_S`] (not cumulative; the last slot is beyond the last
/// bound) and the sum, microseconds.
#[derive(Debug, Default)]
pub struct Latency {
    /// Requests per bucket.
    pub buckets: [AtomicU64; LATENCY_BOUNDS_S.len() + 1],
    /// Sum of every observation, microseconds.
    pub sum_us: AtomicU64,
}

impl Latency {
    /// Counts one request that took `took`.
    #[inline]
    pub fn observe(&self, took: Duration) {
        let s = took.as_secs_f64();
        let i = LATENCY_BOUNDS_S
            .iter()
            .position(|b| s <= *b)
            .unwrap_or(LATENCY_BOUNDS_S.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(
            took.as_micros().min(u64::MAX as u128) as u64,
            Ordering::Relaxed,
        );
    }
}

/// One worker's counters for one service.
#[derive(Debug)]
pub struct ServiceCounters {
    /// Requests received (every request on every connection).
    pub requests: AtomicU64,
    /// Routed requests answered, by the member (or parent) that answered.
    pub routed: Box<[AtomicU64]>,
    /// Requests sent to this host's `local` backend (owned here, hops in,
    /// exceptions).
    pub local: AtomicU64,
    /// Requests forwarded to the owning member.
    pub hops_out: AtomicU64,
    /// Requests received from another member with a verified header.
    pub hops_in: AtomicU64,
    /// Times a request moved on to the next member in order.
    pub failovers: AtomicU64,
    /// Array pages served (table, PAC, health).
    pub pages: AtomicU64,
    /// Errors answered, by [`ERRORS`] index.
    pub errors: [AtomicU64; 9],
    /// A sticky service's own counters (zero for others).
    pub sticky: super::sticky::StickyCounters,
    /// Request latency (every request, errors included).
    pub latency: Latency,
}

impl ServiceCounters {
    /// Zeroed counters for `members` members.
    pub fn new(members: usize) -> Self {
        Self {
            requests: AtomicU64::new(0),
            routed: (0..members).map(|_| AtomicU64::new(0)).collect(),
            local: AtomicU64::new(0),
            hops_out: AtomicU64::new(0),
            hops_in: AtomicU64::new(0),
            failovers: AtomicU64::new(0),
            pages: AtomicU64::new(0),
            errors: Default::default(),
            sticky: Default::default(),
            latency: Latency::default(),
        }
    }

    /// Adds one to `counter` (a field of `self`).
    #[inline]
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one error of `kind`.
    #[inline]
    pub fn error(&self, kind: ErrorKind) {
        Self::bump(&self.errors[kind.index()]);
    }

    /// Counts a routed request answered by member `i`.
    #[inline]
    pub fn routed_to(&self, i: usize) {
        if let Some(c) = self.routed.get(i) {
            Self::bump(c);
        }
    }
}

fn sum(workers: &[&ServiceCounters], f: impl Fn(&ServiceCounters) -> &AtomicU64) -> u64 {
    workers.iter().map(|w| f(w).load(Ordering::Relaxed)).sum()
}

/// One service's JSON object: every worker's counters summed, and the
/// members as `snapshot` shows them at `now_ms`.
pub fn service_json(workers: &[&ServiceCounters], snapshot: &Snapshot, now_ms: u64) -> Value {
    let members = snapshot.array.router.carp.members();
    let mut routed = Map::new();
    for (i, m) in members.iter().enumerate() {
        let n: u64 = workers
            .iter()
            .map(|w| w.routed.get(i).map_or(0, |c| c.load(Ordering::Relaxed)))
            .sum();
        routed.insert(m.name.clone(), n.into());
    }
    let mut errors = Map::new();
    for (i, name) in ERRORS.iter().enumerate() {
        errors.insert((*name).into(), sum(workers, |w| &w.errors[i]).into());
    }
    let times = snapshot.state_times_s(now_ms);
    let list: Vec<Value> = members
        .iter()
        .enumerate()
        .map(|(i, m)| json!({"name": m.name, "up": m.up, "since_s": times.get(i).copied().unwrap_or(0)}))
        .collect();
    let buckets: Vec<u64> = (0..=LATENCY_BOUNDS_S.len())
        .map(|i| sum(workers, |w| &w.latency.buckets[i]))
        .collect();
    let latency = json!({
        "bounds_s": LATENCY_BOUNDS_S,
        "counts": buckets,
        "sum_s": sum(workers, |w| &w.latency.sum_us) as f64 / 1e6,
    });
    json!({
        "requests": sum(workers, |w| &w.requests),
        "routed": routed,
        "local": sum(workers, |w| &w.local),
        "hops_out": sum(workers, |w| &w.hops_out),
        "hops_in": sum(workers, |w| &w.hops_in),
        "failovers": sum(workers, |w| &w.failovers),
        "pages": sum(workers, |w| &w.pages),
        "errors": errors,
        "latency": latency,
        "members": list,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tools::carp::{array, ArrayArgs};

    fn snapshot() -> Snapshot {
        let args = ArrayArgs {
            member: vec!["a=1".into(), "b=2".into()],
            ..ArrayArgs::default()
        };
        let mut array = array(&args, None, None).unwrap();
        array.router.carp.set_up(1, false);
        Snapshot {
            epoch: 3,
            array,
            since_ms: vec![0, 4_000],
            local_up: true,
        }
    }

    #[test]
    fn workers_are_summed_under_the_documented_keys() {
        let (w1, w2) = (ServiceCounters::new(2), ServiceCounters::new(2));
        ServiceCounters::bump(&w1.requests);
        ServiceCounters::bump(&w2.requests);
        w1.routed_to(0);
        w2.routed_to(1);
        w2.routed_to(7);
        w1.error(ErrorKind::Refusal("loop"));
        w2.error(ErrorKind::Timeout);
        w2.error(ErrorKind::Overload);
        let json = service_json(&[&w1, &w2], &snapshot(), 10_500);
        let mut keys: Vec<&str> = json
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "errors",
                "failovers",
                "hops_in",
                "hops_out",
                "latency",
                "local",
                "members",
                "pages",
                "requests",
                "routed"
            ]
        );
        assert_eq!(json["requests"], 2);
        assert_eq!(json["routed"], json!({"a": 1, "b": 1}));
        let errors = json["errors"].as_object().unwrap();
        assert_eq!(errors.len(), ERRORS.len());
        assert_eq!(errors["loop"], 1);
        assert_eq!(errors["timeout"], 1);
        assert_eq!(errors["overload"], 1);
        assert_eq!(errors["unreachable"], 0);
        w1.latency.observe(Duration::from_micros(700));
        w2.latency.observe(Duration::from_secs(60));
        let json = service_json(&[&w1, &w2], &snapshot(), 10_500);
        let counts = json["latency"]["counts"].as_array().unwrap();
        assert_eq!(counts.len(), LATENCY_BOUNDS_S.len() + 1);
        assert_eq!(counts[1], 1, "0.7 ms is in the 1 ms bucket");
        assert_eq!(counts[LATENCY_BOUNDS_S.len()], 1, "60 s is beyond the last");
        assert_eq!(json["latency"]["sum_s"], 60.0007);
        assert_eq!(
            json["members"],
            json!([{"name": "a", "up": true, "since_s": 10}, {"name": "b", "up": false, "since_s": 6}])
        );
    }

    #[test]
    fn every_refusal_has_its_counter() {
        for name in shoal_dataplane::array::Refusal::COUNTERS {
            assert_eq!(
                ErrorKind::Refusal(name).index(),
                ERRORS.iter().position(|e| e == name).unwrap()
            );
        }
    }
}
