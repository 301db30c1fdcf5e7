//! Per-worker, per-service counters, summed when read.
//!
//! Each proxy worker owns one [`ServiceCounters`] per service and is the
//! only writer (relaxed atomics, no contention); readers (the stats file,
//! the admin socket) sum every worker's. [`service_json`] is one entry of the
//! `services` object of the `--stats` JSON and of `shoal query --json`.
//!
//! # Per member
//! Every route kind keeps one [`MemberCounters`] per member (CARP member or
//! parent, sticky host, CLB back end) and writes them as the entry's
//! `by_member` object ([`by_member_json`]), which the metrics endpoint
//! turns into the `shoal_service_member_*` families. A request is the
//! member's when this host routed it there (a request that hopped in from
//! another member is that member's to count, so the array's sum counts it
//! once): `requests` it answered, `forwarded` (of those, over a
//! member-to-member hop), `failovers` (it failed and the request moved on),
//! `errors` answered after it was the last one tried
//! ([`MEMBER_ERRORS`]), and the `latency` of every request it was the last
//! one tried for.

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

/// The error kinds a member is blamed for, in the JSON's order: it could
/// not be reached or failed (502), or sent no head in time (504).
pub const MEMBER_ERRORS: &[&str] = &["unreachable", "timeout"];

/// One worker's counters for one member of one service (see the module
/// docs).
#[derive(Debug, Default)]
pub struct MemberCounters {
    /// Requests it answered.
    pub requests: AtomicU64,
    /// Of those, the ones sent over a member-to-member hop.
    pub forwarded: AtomicU64,
    /// Times it failed a request that then moved on to the next in order.
    pub failovers: AtomicU64,
    /// Errors answered after it was the last tried, by [`MEMBER_ERRORS`]
    /// index.
    pub errors: [AtomicU64; 2],
    /// Latency of the requests it was the last tried for.
    pub latency: Latency,
}

impl MemberCounters {
    /// Counts an error of `kind` answered after this member failed (kinds
    /// not in [`MEMBER_ERRORS`] are not a member's).
    #[inline]
    pub fn error(&self, kind: ErrorKind) {
        let i = match kind {
            ErrorKind::Unreachable => 0,
            ErrorKind::Timeout => 1,
            _ => return,
        };
        self.errors[i].fetch_add(1, Ordering::Relaxed);
    }
}

/// The `by_member` object: per member name (in `names`' order, which is the
/// counters' index order), every worker's [`MemberCounters`] summed.
pub fn by_member_json(names: impl Iterator<Item = String>, workers: &[&[MemberCounters]]) -> Value {
    let mut out = Map::new();
    for (i, name) in names.enumerate() {
        let of: Vec<&MemberCounters> = workers.iter().filter_map(|w| w.get(i)).collect();
        let sum = |f: &dyn Fn(&MemberCounters) -> &AtomicU64| -> u64 {
            of.iter().map(|m| f(m).load(Ordering::Relaxed)).sum()
        };
        let errors: Map<String, Value> = MEMBER_ERRORS
            .iter()
            .enumerate()
            .map(|(k, e)| ((*e).to_string(), sum(&|m| &m.errors[k]).into()))
            .collect();
        out.insert(
            name,
            json!({
                "requests": sum(&|m| &m.requests),
                "forwarded": sum(&|m| &m.forwarded),
                "failovers": sum(&|m| &m.failovers),
                "errors": errors,
                "latency": latency_json(of.iter().map(|m| &m.latency)),
            }),
        );
    }
    Value::Object(out)
}

/// A `latency` object (`{bounds_s, counts, sum_s}`, counts per bucket, not
/// cumulative) of `histograms` summed.
pub fn latency_json<'a>(histograms: impl Iterator<Item = &'a Latency> + Clone) -> Value {
    let counts: Vec<u64> = (0..=LATENCY_BOUNDS_S.len())
        .map(|i| {
            histograms
                .clone()
                .map(|h| h.buckets[i].load(Ordering::Relaxed))
                .sum::<u64>()
        })
        .collect();
    let sum_us: u64 = histograms.map(|h| h.sum_us.load(Ordering::Relaxed)).sum();
    json!({
        "bounds_s": LATENCY_BOUNDS_S,
        "counts": counts,
        "sum_s": sum_us as f64 / 1e6,
    })
}

/// One worker's counters for one service.
#[derive(Debug)]
pub struct ServiceCounters {
    /// Requests received (every request on every connection).
    pub requests: AtomicU64,
    /// Per member (index of the service's members): what it answered,
    /// failed and took.
    pub members: Box<[MemberCounters]>,
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
            members: (0..members).map(|_| MemberCounters::default()).collect(),
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

    /// Counts a routed request answered by member `i` (`forwarded`: over
    /// a member-to-member hop).
    #[inline]
    pub fn routed_to(&self, i: usize, forwarded: bool) {
        if let Some(m) = self.members.get(i) {
            Self::bump(&m.requests);
            if forwarded {
                Self::bump(&m.forwarded);
            }
        }
    }

    /// Counts an error of `kind`, and against `member` when one was the
    /// last tried.
    #[inline]
    pub fn error_at(&self, kind: ErrorKind, member: Option<usize>) {
        self.error(kind);
        if let Some(m) = member.and_then(|i| self.members.get(i)) {
            m.error(kind);
        }
    }

    /// Counts a failover away from `from` (the member that failed, when
    /// known).
    #[inline]
    pub fn failed_over(&self, from: Option<usize>) {
        Self::bump(&self.failovers);
        if let Some(m) = from.and_then(|i| self.members.get(i)) {
            Self::bump(&m.failovers);
        }
    }

    /// Records a request that took `took`, for the service and for
    /// `member` when one was the last tried.
    #[inline]
    pub fn observe(&self, took: Duration, member: Option<usize>) {
        self.latency.observe(took);
        if let Some(m) = member.and_then(|i| self.members.get(i)) {
            m.latency.observe(took);
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
            .map(|w| {
                w.members
                    .get(i)
                    .map_or(0, |c| c.requests.load(Ordering::Relaxed))
            })
            .sum();
        routed.insert(m.name.clone(), n.into());
    }
    let per_member: Vec<&[MemberCounters]> = workers.iter().map(|w| &*w.members).collect();
    let by_member = by_member_json(members.iter().map(|m| m.name.clone()), &per_member);
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
    let latency = latency_json(workers.iter().map(|w| &w.latency));
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
        "by_member": by_member,
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
        w1.routed_to(0, false);
        w2.routed_to(1, true);
        w2.routed_to(7, true);
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
                "by_member",
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
        w1.observe(Duration::from_micros(700), Some(1));
        w2.observe(Duration::from_secs(60), None);
        w1.error_at(ErrorKind::Unreachable, Some(1));
        w2.error_at(ErrorKind::Refusal("loop"), Some(1));
        w2.failed_over(Some(0));
        w1.failed_over(None);
        let json = service_json(&[&w1, &w2], &snapshot(), 10_500);
        assert_eq!(json["failovers"], 2);
        assert_eq!(json["errors"]["unreachable"], 1);
        assert_eq!(json["errors"]["loop"], 2);
        let (a, b) = (&json["by_member"]["a"], &json["by_member"]["b"]);
        assert_eq!(
            (a["requests"].clone(), a["forwarded"].clone()),
            (json!(1), json!(0))
        );
        assert_eq!(
            (b["requests"].clone(), b["forwarded"].clone()),
            (json!(1), json!(1))
        );
        assert_eq!(a["failovers"], 1);
        assert_eq!(b["failovers"], 0);
        assert_eq!(
            b["errors"],
            json!({"unreachable": 1, "timeout": 0}),
            "a refusal is no member's"
        );
        assert_eq!(
            a["latency"]["counts"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(Value::as_u64)
                .sum::<u64>(),
            0
        );
        assert_eq!(b["latency"]["counts"][1], 1);
        assert_eq!(b["latency"]["sum_s"], 0.0007);
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
