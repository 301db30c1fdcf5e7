//! The Prometheus / OpenMetrics endpoint (`[metrics] listen`): `GET
//! /metrics` on a small thread of its own (`shoal-metrics`, a
//! current-thread tokio runtime with hyper).
//!
//! # What is read, and when
//! Nothing is counted for the endpoint: every value is read when a scrape
//! arrives, from what the engine keeps anyway.
//! * Per poll core: the [`LoopStats`] each poll loop publishes (every
//!   200 ms) behind its own lock: frames received, kept, passed, dropped by
//!   reason, malformed by reason, descriptors, and its descriptor table's
//!   inserts, expiries, failed inserts and evictions by state. The frame
//!   path is untouched: a loop copies its plain counters into that cell
//!   between batches, as it does for the `--stats` file.
//! * Per CPU: the XDP fast path's counters, read from its stats map (one
//!   slot per CPU, written by the program on the CPU that ran it) at each
//!   scrape.
//! * Everything else from the counters summary the control thread builds
//!   once a second (the `--stats` JSON, [`Sources::summary`]): the cluster
//!   (`state`, `epoch`, `members`, heartbeats refused by reason,
//!   convergences) and `services`.
//! * The convergence-time histogram is the only metric kept here: the
//!   control thread observes each convergence into it
//!   ([`Sources::convergence`]).
//!
//! # The `core` label
//! `core` is a CPU id: for the poll loop families the core the loop is
//! pinned to (`[host.cores].poll`), for the XDP families the CPU the
//! program ran on, which is the CPU serving the NIC queue's interrupts.
//! Every poll core has a series in the XDP families (zero without a fast
//! path); another CPU has one once the program counted there. Pin each
//! queue's interrupt to the poll core that reads it and the two agree.
//!
//! # Services: one scheme for every route kind
//! Each entry of the summary's `services` object becomes the same families,
//! labelled `service` (and `member`, `kind` where said), whatever route kind
//! produced it. A route kind plugs in by writing these keys into its
//! service's JSON object (the keys it lacks are left out of the families):
//!
//! | key | family |
//! |---|---|
//! | `requests` | `shoal_service_requests_total` |
//! | `hops_out` | `shoal_service_forwarded_total` |
//! | `failovers` | `shoal_service_failovers_total` |
//! | `errors` (`{kind: n}`) | `shoal_service_errors_total{kind}` |
//! | `members` (`[{name, up}]`) | `shoal_service_member_up{member}` |
//! | `latency` (`{bounds_s, counts, sum_s}`) | `shoal_service_request_duration_seconds` (histogram) |
//! | `by_member.<m>.requests` (else `routed.<m>`) | `shoal_service_member_requests_total{member}` |
//! | `by_member.<m>.forwarded` | `shoal_service_member_forwarded_total{member}` |
//! | `by_member.<m>.failovers` | `shoal_service_member_failovers_total{member}` |
//! | `by_member.<m>.errors` | `shoal_service_member_errors_total{member,kind}` |
//! | `by_member.<m>.latency` | `shoal_service_member_request_duration_seconds{member}` (histogram) |
//!
//! `member` is the member (CARP member or parent, sticky host, CLB back
//! end) this host routed the request to; what each counts is said in
//! [`crate::array::counters`].
//!
//! Names follow Prometheus' conventions: `shoal_` prefix, `_total` on
//! counters, seconds for durations. The text is OpenMetrics 1.0 as the
//! `prometheus-client` crate writes it.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result};
use parking_lot::Mutex;
use prometheus_client::encoding::{EncodeMetric, MetricEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use serde_json::Value;
use shoal_dataplane::packet::Malformed;
use shoal_dataplane::pipeline::DropReason;

use crate::handoff::{LoopStats, MapCell};

/// Buckets of the convergence-time histogram, seconds.
pub const CONVERGENCE_BUCKETS_S: [f64; 10] = [0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 60.0];

/// What a scrape reads (see the module docs).
#[derive(Clone, Debug)]
pub struct Sources {
    /// Each poll loop's published counters, in core-plan order.
    pub loops: Vec<Arc<Mutex<LoopStats>>>,
    /// The core each loop is pinned to, in the same order (the `core`
    /// label).
    pub cores: Vec<usize>,
    /// Where the XDP fast path's per-CPU counters are read (none without
    /// the XDP backend).
    pub xdp: Option<Arc<MapCell>>,
    /// The latest counters summary (`Value::Null` until the first).
    pub summary: Arc<Mutex<Value>>,
    /// Convergence times, seconds.
    pub convergence: Histogram,
}

impl Sources {
    /// Sources over `loops` pinned to `cores` (same order), with an empty
    /// summary and histogram and no XDP counters.
    pub fn new(loops: Vec<Arc<Mutex<LoopStats>>>, cores: Vec<usize>) -> Self {
        Self {
            loops,
            cores,
            xdp: None,
            summary: Arc::new(Mutex::new(Value::Null)),
            convergence: Histogram::new(CONVERGENCE_BUCKETS_S),
        }
    }
}

type Labels = Vec<(&'static str, String)>;

fn counter_family(registry: &mut Registry, name: &str, help: &str) -> Family<Labels, Counter> {
    let f = Family::<Labels, Counter>::default();
    registry.register(name, help, f.clone());
    f
}

fn gauge_family(registry: &mut Registry, name: &str, help: &str) -> Family<Labels, Gauge> {
    let f = Family::<Labels, Gauge>::default();
    registry.register(name, help, f.clone());
    f
}

fn count(f: &Family<Labels, Counter>, labels: Labels, n: u64) {
    f.get_or_create(&labels).inc_by(n);
}

/// Adds `n` to a gauge of a fresh registry (two poll loops on one core
/// add up, as their counters do).
fn gauge(f: &Family<Labels, Gauge>, labels: Labels, n: i64) {
    f.get_or_create(&labels).inc_by(n);
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

/// A histogram read from counts kept elsewhere (a service's `latency`).
#[derive(Debug)]
struct Snapshot {
    sum: f64,
    count: u64,
    /// (upper bound, count in this bucket alone), the last bound `+Inf`;
    /// the encoder makes them cumulative.
    buckets: Vec<(f64, u64)>,
}

impl Snapshot {
    /// From `{bounds_s, counts, sum_s}` (counts per bucket, one more than
    /// bounds).
    fn from_json(v: &Value) -> Option<Self> {
        let bounds: Vec<f64> = v["bounds_s"]
            .as_array()?
            .iter()
            .filter_map(Value::as_f64)
            .collect();
        let counts: Vec<u64> = v["counts"].as_array()?.iter().map(u).collect();
        if counts.len() != bounds.len() + 1 {
            return None;
        }
        let buckets = bounds
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .zip(counts.iter().copied())
            .collect();
        Some(Self {
            sum: v["sum_s"].as_f64().unwrap_or(0.0),
            count: counts.iter().sum(),
            buckets,
        })
    }
}

impl EncodeMetric for Snapshot {
    fn encode(&self, mut encoder: MetricEncoder<'_>) -> std::fmt::Result {
        encoder.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
            self.sum,
            self.count,
            &self.buckets,
            None,
        )
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// The OpenMetrics text for `sources` now.
pub fn render(sources: &Sources) -> String {
    let mut registry = Registry::default();
    poll_cores(&mut registry, &sources.loops, &sources.cores);
    xdp_cpus(&mut registry, sources);
    let summary = sources.summary.lock().clone();
    summary_metrics(&mut registry, &summary);
    registry.register(
        "shoal_convergence_duration_seconds",
        "Time from the start of a convergence to its end",
        sources.convergence.clone(),
    );
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
    out
}

fn poll_cores(registry: &mut Registry, loops: &[Arc<Mutex<LoopStats>>], cores: &[usize]) {
    let received = counter_family(
        registry,
        "shoal_frames_received",
        "Frames a poll loop received",
    );
    let kept = counter_family(
        registry,
        "shoal_frames_kept",
        "Frames this host kept (delivered to its stack)",
    );
    let passed = counter_family(
        registry,
        "shoal_frames_passed",
        "Frames not for the cluster, passed to the stack",
    );
    let dropped = counter_family(
        registry,
        "shoal_frames_dropped",
        "Cluster frames dropped, by reason (another host's, disabled rule, ...)",
    );
    let malformed = counter_family(
        registry,
        "shoal_frames_malformed",
        "Frames dropped as malformed, by reason",
    );
    let delivery_errors = counter_family(
        registry,
        "shoal_delivery_errors",
        "Kept frames the exception path could not take",
    );
    let transmit_rejected = counter_family(
        registry,
        "shoal_transmit_rejected",
        "Frames for the wire (heartbeats, answers) the backend did not take",
    );
    let descriptors = gauge_family(
        registry,
        "shoal_descriptors",
        "Connection descriptors tracked",
    );
    let live = gauge_family(
        registry,
        "shoal_descriptors_by_state",
        "Connection descriptors tracked, by state",
    );
    let capacity = gauge_family(
        registry,
        "shoal_descriptor_capacity",
        "Descriptor table capacity",
    );
    let inserted = counter_family(
        registry,
        "shoal_descriptors_inserted",
        "Descriptors created",
    );
    let expired = counter_family(
        registry,
        "shoal_descriptors_expired",
        "Descriptors expired by their timeout",
    );
    let insert_failed = counter_family(
        registry,
        "shoal_descriptor_insert_failures",
        "Descriptors that could not be created (table full of established ones)",
    );
    let evicted = counter_family(
        registry,
        "shoal_descriptor_evictions",
        "Descriptors evicted to make room, by the state they were in",
    );
    for (i, cell) in loops.iter().enumerate() {
        let s = cell.lock().clone();
        let at = cores.get(i).copied().unwrap_or(i).to_string();
        let core = || vec![("core", at.clone())];
        let with = |k: &'static str, v: &str| vec![("core", at.clone()), (k, v.to_string())];
        let d = &s.dataplane;
        count(&received, core(), d.frames());
        count(&kept, core(), d.kept);
        count(&passed, core(), d.passed);
        count(&delivery_errors, core(), s.delivery_errors);
        count(&transmit_rejected, core(), s.transmit_rejected);
        gauge(&descriptors, core(), s.descriptors as i64);
        for (r, n) in DropReason::POLICY.iter().zip(d.dropped) {
            count(&dropped, with("reason", r.name()), n);
        }
        for (m, n) in Malformed::ALL.iter().zip(d.malformed.iter().copied()) {
            if n > 0 {
                count(&malformed, with("reason", m.name()), n);
            }
        }
        gauge(&capacity, core(), s.table_capacity as i64);
        count(&inserted, core(), s.table.inserted);
        count(&expired, core(), s.table.expired);
        count(&insert_failed, core(), s.table.insert_failed);
        for (state, n) in DESCRIPTOR_STATES.iter().zip(s.table.evicted) {
            count(&evicted, with("state", state), n);
        }
        for (state, n) in DESCRIPTOR_STATES.iter().zip(s.descriptors_by_state) {
            gauge(&live, with("state", state), i64::from(n));
        }
    }
}

/// Names of the descriptor states, in `TableCounters::evicted` order.
const DESCRIPTOR_STATES: [&str; 4] = ["half_open", "closing", "soft", "established"];

fn xdp_cpus(registry: &mut Registry, sources: &Sources) {
    let dropped = counter_family(
        registry,
        "shoal_xdp_frames_dropped",
        "Frames the XDP fast path dropped in the kernel (other hosts' buckets, dropping rules)",
    );
    let passed = counter_family(
        registry,
        "shoal_xdp_frames_passed",
        "Frames the XDP fast path passed to the stack in the kernel",
    );
    let per_cpu = sources
        .xdp
        .as_ref()
        .map(|cell| cell.xdp_counters_per_cpu())
        .unwrap_or_default();
    let mut cpus: Vec<usize> = sources.cores.clone();
    cpus.extend(
        per_cpu
            .iter()
            .enumerate()
            .filter(|(_, c)| c.judged + c.dropped() + c.passed > 0)
            .map(|(cpu, _)| cpu),
    );
    cpus.sort_unstable();
    cpus.dedup();
    for cpu in cpus {
        let c = per_cpu.get(cpu).copied().unwrap_or_default();
        let core = vec![("core", cpu.to_string())];
        count(&dropped, core.clone(), c.dropped());
        count(&passed, core, c.passed);
    }
}

fn summary_metrics(registry: &mut Registry, s: &Value) {
    if s.is_null() {
        return;
    }
    cluster(registry, &s["cluster"]);
    if let Some(services) = s["services"].as_object() {
        services_metrics(registry, services);
    }
}

/// The states `shoal_cluster_state` has a series for.
const STATES: &[&str] = &[
    "stopped",
    "suspended",
    "converging",
    "converged",
    "draining",
];

fn cluster(registry: &mut Registry, c: &Value) {
    if !c.is_object() {
        return;
    }
    let state = gauge_family(
        registry,
        "shoal_cluster_state",
        "1 for this host's state, 0 for the others",
    );
    let now = c["state"].as_str().unwrap_or("");
    for s in STATES
        .iter()
        .copied()
        .chain((!STATES.contains(&now)).then_some(now))
    {
        if !s.is_empty() {
            gauge(&state, vec![("state", s.into())], i64::from(s == now));
        }
    }
    let epoch = gauge_family(registry, "shoal_cluster_epoch", "The map epoch in force");
    gauge(&epoch, Vec::new(), u(&c["epoch"]) as i64);
    let members = gauge_family(
        registry,
        "shoal_cluster_members",
        "Hosts in the effective view",
    );
    gauge(
        &members,
        Vec::new(),
        c["members"].as_array().map_or(0, Vec::len) as i64,
    );
    let convergences = counter_family(
        registry,
        "shoal_convergences",
        "Convergences this host completed",
    );
    count(&convergences, Vec::new(), u(&c["convergences"]));
    let stalls = counter_family(
        registry,
        "shoal_control_stalls",
        "Times the control thread ran a quarter period or more late (peers' silence excused)",
    );
    count(&stalls, Vec::new(), u(&c["stalls"]));
    let sent = counter_family(registry, "shoal_heartbeats_sent", "Heartbeats sent");
    count(&sent, Vec::new(), u(&c["heartbeats_sent"]));
    let refused = counter_family(
        registry,
        "shoal_heartbeats_refused",
        "Heartbeats refused, by reason",
    );
    if let Some(by) = c["heartbeats_refused"].as_object() {
        for (reason, n) in by {
            count(&refused, vec![("reason", reason.clone())], u(n));
        }
    }
}

fn services_metrics(registry: &mut Registry, services: &serde_json::Map<String, Value>) {
    let requests = counter_family(
        registry,
        "shoal_service_requests",
        "Requests a service received",
    );
    let forwarded = counter_family(
        registry,
        "shoal_service_forwarded",
        "Requests forwarded to the member that owns them",
    );
    let failovers = counter_family(
        registry,
        "shoal_service_failovers",
        "Times a request moved on to the next member in order",
    );
    let errors = counter_family(registry, "shoal_service_errors", "Errors answered, by kind");
    let up = gauge_family(
        registry,
        "shoal_service_member_up",
        "1 when the service's health checks find the member up",
    );
    let member_requests = counter_family(
        registry,
        "shoal_service_member_requests",
        "Routed requests answered, by the member that answered",
    );
    let member_forwarded = counter_family(
        registry,
        "shoal_service_member_forwarded",
        "Routed requests answered over a hop to another host, by the member that answered",
    );
    let member_failovers = counter_family(
        registry,
        "shoal_service_member_failovers",
        "Times a member failed a request that moved on to the next in order",
    );
    let member_errors = counter_family(
        registry,
        "shoal_service_member_errors",
        "Errors answered after the member was the last tried, by kind",
    );
    let mut latencies = Vec::new();
    let mut member_latencies = Vec::new();
    for (name, s) in services {
        let svc = || vec![("service", name.clone())];
        let with = |k: &'static str, v: &str| vec![("service", name.clone()), (k, v.to_string())];
        if let Some(n) = s.get("requests") {
            count(&requests, svc(), u(n));
        }
        if let Some(n) = s.get("hops_out") {
            count(&forwarded, svc(), u(n));
        }
        if let Some(n) = s.get("failovers") {
            count(&failovers, svc(), u(n));
        }
        for (kind, n) in s["errors"].as_object().into_iter().flatten() {
            count(&errors, with("kind", kind), u(n));
        }
        for m in s["members"].as_array().into_iter().flatten() {
            if let Some(member) = m["name"].as_str() {
                let is_up = m["up"].as_bool().unwrap_or(false);
                gauge(&up, with("member", member), i64::from(is_up));
            }
        }
        if let Some(h) = s.get("latency").and_then(Snapshot::from_json) {
            latencies.push((svc(), h));
        }
        match s["by_member"].as_object() {
            Some(by) => {
                for (member, m) in by {
                    let labels = with("member", member);
                    count(&member_requests, labels.clone(), u(&m["requests"]));
                    count(&member_forwarded, labels.clone(), u(&m["forwarded"]));
                    count(&member_failovers, labels.clone(), u(&m["failovers"]));
                    for (kind, n) in m["errors"].as_object().into_iter().flatten() {
                        let mut l = labels.clone();
                        l.push(("kind", kind.clone()));
                        count(&member_errors, l, u(n));
                    }
                    if let Some(h) = Snapshot::from_json(&m["latency"]) {
                        member_latencies.push((labels, h));
                    }
                }
            }
            None => {
                for (member, n) in s["routed"].as_object().into_iter().flatten() {
                    count(&member_requests, with("member", member), u(n));
                }
            }
        }
    }
    registry.register_collector(Box::new(Histograms {
        name: "shoal_service_request_duration_seconds",
        help: "Time from a request's head to its response's head",
        series: latencies,
    }));
    registry.register_collector(Box::new(Histograms {
        name: "shoal_service_member_request_duration_seconds",
        help: "Time from a request's head to its response's head, by the member last tried",
        series: member_latencies,
    }));
}

/// Histograms read from counts kept elsewhere, encoded under one family.
#[derive(Debug)]
struct Histograms {
    name: &'static str,
    help: &'static str,
    series: Vec<(Labels, Snapshot)>,
}

impl prometheus_client::collector::Collector for Histograms {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder<'_>,
    ) -> std::fmt::Result {
        if self.series.is_empty() {
            return Ok(());
        }
        let mut metric =
            encoder.encode_descriptor(self.name, self.help, None, MetricType::Histogram)?;
        for (labels, h) in &self.series {
            h.encode(metric.encode_family(labels)?)?;
        }
        Ok(())
    }
}

/// The `/metrics` server thread.
#[derive(Debug)]
pub struct MetricsServer {
    thread: Option<std::thread::JoinHandle<()>>,
    stop: Arc<tokio::sync::Notify>,
    /// The address it listens on.
    pub addr: SocketAddr,
}

impl MetricsServer {
    /// Binds `addr` now (an error here stops `shoal run` before anything
    /// else starts) and serves [`render`] of `sources` on `/metrics` from a
    /// thread of its own.
    pub fn spawn(addr: SocketAddr, sources: Sources) -> Result<Self> {
        let listener = std::net::TcpListener::bind(addr)
            .with_context(|| format!("[metrics] listen = \"{addr}\""))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(tokio::sync::Notify::new());
        let stopped = stop.clone();
        let thread = std::thread::Builder::new()
            .name("shoal-metrics".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        tracing::warn!(error = %e, "metrics endpoint: no runtime");
                        return;
                    }
                };
                rt.block_on(serve(listener, sources, stopped));
            })
            .context("spawning the metrics thread")?;
        Ok(Self {
            thread: Some(thread),
            stop,
            addr,
        })
    }

    /// Stops the thread and waits for it.
    pub fn shut_down(mut self) {
        self.stop.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn serve(listener: std::net::TcpListener, sources: Sources, stop: Arc<tokio::sync::Notify>) {
    use hyper::service::service_fn;
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(error = %e, "metrics endpoint");
            return;
        }
    };
    let sources = Arc::new(sources);
    loop {
        let stream = tokio::select! {
            _ = stop.notified() => return,
            accepted = listener.accept() => match accepted {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::debug!(error = %e, "metrics accept");
                    continue;
                }
            },
        };
        let sources = sources.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let sources = sources.clone();
                async move { Ok::<_, std::convert::Infallible>(answer(&req, &sources)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
    }
}

/// The content type of OpenMetrics text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

fn answer<B>(
    req: &hyper::Request<B>,
    sources: &Sources,
) -> hyper::Response<http_body_util::Full<bytes::Bytes>> {
    use hyper::{Method, StatusCode};
    let (status, kind, body) = match (req.method(), req.uri().path()) {
        (&Method::GET | &Method::HEAD, "/metrics") => {
            (StatusCode::OK, CONTENT_TYPE, render(sources))
        }
        (_, "/metrics") => (
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET only\n".into(),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "shoal serves /metrics only\n".into(),
        ),
    };
    let mut resp = hyper::Response::new(http_body_util::Full::new(bytes::Bytes::from(body)));
    *resp.status_mut() = status;
    if let Ok(v) = hyper::header::HeaderValue::from_str(kind) {
        resp.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sources() -> Sources {
        let mut core = LoopStats::default();
        core.dataplane.kept = 7;
        core.dataplane.dropped[0] = 3;
        core.table_capacity = 10;
        core.table.evicted[0] = 2;
        core.table.inserted = 5;
        // The loop is pinned to CPU 3: `core` is the CPU id.
        let s = Sources::new(vec![Arc::new(Mutex::new(core))], vec![3]);
        *s.summary.lock() = serde_json::json!({
            "cluster": {"state": "converged", "epoch": 4, "members": [1, 2],
                        "heartbeats_refused": {"bad_mac": 5}, "convergences": 2},
            "services": {"web": {
                "requests": 9, "hops_out": 4, "failovers": 1,
                "routed": {"cache1": 6}, "errors": {"timeout": 2},
                "members": [{"name": "cache1", "up": true}],
                "latency": {"bounds_s": [0.01, 0.1], "counts": [5, 3, 1], "sum_s": 0.5},
                "by_member": {"cache1": {
                    "requests": 6, "forwarded": 4, "failovers": 1,
                    "errors": {"unreachable": 0, "timeout": 2},
                    "latency": {"bounds_s": [0.01, 0.1], "counts": [4, 2, 1], "sum_s": 0.4},
                }},
            }, "old": {"requests": 1, "routed": {"p1": 1}}},
        });
        s
    }

    #[test]
    fn every_family_is_written_under_its_conventional_name() {
        let s = sources();
        s.convergence.observe(0.7);
        let text = render(&s);
        for line in [
            "shoal_frames_kept_total{core=\"3\"} 7",
            "shoal_xdp_frames_dropped_total{core=\"3\"} 0",
            "shoal_xdp_frames_passed_total{core=\"3\"} 0",
            "shoal_descriptor_capacity{core=\"3\"} 10",
            "shoal_descriptors_inserted_total{core=\"3\"} 5",
            "shoal_descriptor_evictions_total{core=\"3\",state=\"half_open\"} 2",
            "shoal_descriptor_evictions_total{core=\"3\",state=\"established\"} 0",
            "shoal_cluster_state{state=\"converged\"} 1",
            "shoal_cluster_state{state=\"converging\"} 0",
            "shoal_cluster_epoch 4",
            "shoal_cluster_members 2",
            "shoal_convergences_total 2",
            "shoal_heartbeats_refused_total{reason=\"bad_mac\"} 5",
            "shoal_convergence_duration_seconds_count 1",
            "shoal_service_requests_total{service=\"web\"} 9",
            "shoal_service_forwarded_total{service=\"web\"} 4",
            "shoal_service_failovers_total{service=\"web\"} 1",
            "shoal_service_errors_total{service=\"web\",kind=\"timeout\"} 2",
            "shoal_service_member_up{service=\"web\",member=\"cache1\"} 1",
            "shoal_service_request_duration_seconds_bucket{le=\"0.1\",service=\"web\"} 8",
            "shoal_service_request_duration_seconds_bucket{le=\"+Inf\",service=\"web\"} 9",
            "shoal_service_request_duration_seconds_count{service=\"web\"} 9",
            "shoal_service_member_requests_total{service=\"web\",member=\"cache1\"} 6",
            "shoal_service_member_forwarded_total{service=\"web\",member=\"cache1\"} 4",
            "shoal_service_member_failovers_total{service=\"web\",member=\"cache1\"} 1",
            "shoal_service_member_errors_total{service=\"web\",member=\"cache1\",kind=\"timeout\"} 2",
            "shoal_service_member_request_duration_seconds_bucket{le=\"0.1\",service=\"web\",member=\"cache1\"} 6",
            "shoal_service_member_request_duration_seconds_count{service=\"web\",member=\"cache1\"} 7",
            // A service without `by_member` still has its routed counts.
            "shoal_service_member_requests_total{service=\"old\",member=\"p1\"} 1",
            "# EOF",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
        let first = DropReason::POLICY[0].name();
        assert!(
            text.contains(&format!(
                "shoal_frames_dropped_total{{core=\"3\",reason=\"{first}\"}} 3"
            )),
            "{text}"
        );
        // Each family is described once.
        for family in [
            "shoal_service_request_duration_seconds",
            "shoal_service_member_request_duration_seconds",
            "shoal_xdp_frames_dropped",
        ] {
            let n = text.matches(&format!("# TYPE {family} ")).count();
            assert_eq!(n, 1, "{family}: {n} TYPE lines");
        }
    }

    #[test]
    fn a_scrape_reads_the_loops_now() {
        let s = sources();
        let before = render(&s);
        s.loops[0].lock().dataplane.kept = 8;
        let after = render(&s);
        assert!(before.contains("shoal_frames_kept_total{core=\"3\"} 7"));
        assert!(after.contains("shoal_frames_kept_total{core=\"3\"} 8"));
    }

    #[test]
    fn loops_sharing_a_core_add_up() {
        let mut a = LoopStats::default();
        a.dataplane.kept = 2;
        a.descriptors = 4;
        a.descriptors_by_state = [1, 0, 0, 3];
        let b = a.clone();
        let s = Sources::new(
            vec![Arc::new(Mutex::new(a)), Arc::new(Mutex::new(b))],
            vec![1, 1],
        );
        let text = render(&s);
        assert!(
            text.contains("shoal_frames_kept_total{core=\"1\"} 4"),
            "{text}"
        );
        assert!(text.contains("shoal_descriptors{core=\"1\"} 8"), "{text}");
        assert!(
            text.contains("shoal_descriptors_by_state{core=\"1\",state=\"established\"} 6"),
            "{text}"
        );
        assert!(
            text.contains("shoal_descriptors_by_state{core=\"1\",state=\"half_open\"} 2"),
            "{text}"
        );
        assert_eq!(
            text.matches("shoal_xdp_frames_passed_total{").count(),
            1,
            "{text}"
        );
    }

    #[test]
    fn no_summary_yet_still_answers_the_per_core_families() {
        let s = Sources::new(vec![Arc::new(Mutex::new(LoopStats::default()))], vec![0]);
        let text = render(&s);
        assert!(
            text.contains("shoal_frames_received_total{core=\"0\"} 0"),
            "{text}"
        );
        assert!(!text.contains("shoal_cluster_epoch"), "{text}");
    }
}
