//! The runtime of `route = "clb"` services: listeners, the request path to
//! the back-end tier, and the probes that keep each worker's response-time
//! table.
//!
//! Owns sockets and tasks only. Which back end serves a request is the
//! dataplane's [`Balancer`]; the response-time table, its rounds and
//! ejections are the control plane's [`ResponseTimes`].
//!
//! # Threads
//!
//! One thread per `[host.cores].proxy` core, `shoal-clb-<core>`, pinned to
//! that core beside the CARP worker, with a current-thread runtime. Each
//! owns, per CLB service, its `SO_REUSEPORT` listeners, its upstream pool
//! and a [`Balancer`] (pending counts and latency estimates of the
//! requests it sent). Every front end keeps its own [`ResponseTimes`], as
//! Application Center's CLB service did on every front-end member, so
//! losing one loses nothing; within a front end the workers share one
//! (`Shared`): the first worker runs the rounds and sends the probes, so a
//! back end gets one probe per round per front-end host however many proxy
//! cores it has, and the other workers copy the table and the probe
//! answers when they change (an atomic generation read per request; the
//! lock is taken only on a change, on a request failure, and on the first
//! answer after one). Readers of the counters sum the workers'.
//!
//! # Request path
//!
//! Pick a back end, send the request (origin form, hop-by-hop fields
//! removed), measure the time to the response head. A back end that
//! refuses or resets the connection before any request byte left is
//! counted as failed and another is tried, at most `retries` more; after
//! that the client gets 502. A request that left and got no head is 502
//! without a retry (it may have been acted on); no head within
//! `first_byte_timeout_ms` is 504.
//!
//! # Counters
//!
//! Besides its own (`retries`, `bad_gateway`, `gateway_timeout`, and per
//! back end `backends`), a CLB service's stats entry carries the tier's
//! scheme ([`super::counters`]), with each back end (by address) as a
//! member: `failovers` (the retries), `errors` (`unreachable` for 502,
//! `timeout` for 504), `hops_out` (requests a back end answered: every
//! one crosses to the back-end tier), `latency`, `members` (up while in
//! the table) and `by_member`.
//!
//! # Probes
//!
//! At every round ([`ResponseTimes::poll_round`]) each back end gets one
//! probe (`probe`, a new connection, `Connection: close`), all at once,
//! each under `probe_timeout_ms`: a hung server delays only its own probe.
//! A probe answered with a status below 500 gives its response time
//! (connect included); anything else is a failure. Both reach every
//! worker's balancer with the probe's send time: an answer may retire a
//! stale latency peak, a failure lets the balancer tell a server too busy
//! for its probe from a stalled one ([`Balancer::probe_failed`]).

use std::cell::RefCell;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use bytes::Bytes;
use http_body_util::{Either, Empty};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::header::{self, HeaderName, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use serde_json::{json, Map, Value};
use shoal_config::{ClbSection, Config, ProxySched, ServiceLimits};
use shoal_controlplane::{PollConfig, ResponseTimes};
use shoal_dataplane::array::{Balancer, BalancerConfig};
use shoal_dataplane::HostId;
use tokio::net::TcpListener;

use super::counters::{by_member_json, latency_json, ErrorKind, Latency, MemberCounters};
use super::proxy::{answer, strip_hop_by_hop, ClientBody};
use super::upstream::{self, CheckIn, Pool, Returning, UpBody};
use super::{service_listeners, stopping};

/// The header naming the back end that served a response.
const SERVED_BY: HeaderName = HeaderName::from_static("x-shoal-served-by");
/// How often a worker checks for shutdown and ticks its pool's clock.
const TICK: Duration = upstream::CLOCK_TICK;
/// The latency a back end is assumed to have before its first answer.
const INITIAL_LATENCY: Duration = Duration::from_millis(1);

/// One CLB service as every thread sees it; never changes.
#[derive(Debug)]
pub(super) struct ClbPlan {
    /// Service name.
    pub name: String,
    /// The operator's limits.
    pub limits: ServiceLimits,
    /// The CLB settings.
    pub clb: ClbSection,
    /// Back-end addresses, in configuration order.
    pub addresses: Vec<SocketAddr>,
    /// Back-end addresses as `x-shoal-served-by` values.
    pub served_by: Vec<HeaderValue>,
    /// Where the workers listen.
    pub listen: Vec<SocketAddr>,
    /// The engine clock's origin.
    pub start: Instant,
}

impl ClbPlan {
    fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }
}

/// One worker's counters for one service; summed when read.
#[derive(Debug)]
struct Counters {
    requests: AtomicU64,
    retries: AtomicU64,
    bad_gateway: AtomicU64,
    gateway_timeout: AtomicU64,
    /// Requests answered 503 on a connection beyond `max_connections`.
    overload: AtomicU64,
    backends: Vec<BackendCounters>,
    /// Per back end, the tier's per-member counters.
    members: Box<[MemberCounters]>,
    /// Every request's time to its response head.
    latency: Latency,
}

#[derive(Debug, Default)]
struct BackendCounters {
    requests: AtomicU64,
    pending: AtomicU64,
    failures: AtomicU64,
    ejections: AtomicU64,
    /// The latest answered request's time to the response head, µs
    /// (`u64::MAX`: none yet).
    last_response_us: AtomicU64,
    /// The latest probe's response time, µs (`u64::MAX`: failed or none).
    probe_us: AtomicU64,
    /// 1 while in this worker's table.
    in_table: AtomicU64,
    /// Position in this worker's table (`u64::MAX`: not in it).
    position: AtomicU64,
}

impl Counters {
    fn new(backends: usize) -> Self {
        Counters {
            requests: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            bad_gateway: AtomicU64::new(0),
            gateway_timeout: AtomicU64::new(0),
            overload: AtomicU64::new(0),
            backends: (0..backends)
                .map(|_| BackendCounters {
                    last_response_us: AtomicU64::new(u64::MAX),
                    probe_us: AtomicU64::new(u64::MAX),
                    in_table: AtomicU64::new(1),
                    position: AtomicU64::new(u64::MAX),
                    ..BackendCounters::default()
                })
                .collect(),
            members: (0..backends).map(|_| MemberCounters::default()).collect(),
            latency: Latency::default(),
        }
    }
}

/// One service's response-time table, shared by one host's workers.
#[derive(Debug)]
struct Shared {
    table: Mutex<Table>,
    /// Bumped whenever `Table::order` changes.
    table_generation: AtomicU64,
    /// Bumped whenever a probe ends (answered or failed).
    probe_generation: AtomicU64,
    /// Client connections open on this host (for `max_connections`).
    connections: AtomicU64,
    /// Per back end: a request failed since its last answer (so answered
    /// requests take the lock only to reset a failure count).
    failing: Vec<AtomicBool>,
}

#[derive(Debug)]
struct Table {
    machine: ResponseTimes,
    /// The table as last taken from the machine, fastest first.
    order: Vec<usize>,
    /// Per back end: the latest answered probe's send time (ns since the
    /// engine's start) and response time (ns).
    probes: Vec<Option<(u64, u64)>>,
    /// Per back end: the latest failed probe's send time (ns).
    failed: Vec<Option<u64>>,
}

impl Shared {
    fn new(plan: &ClbPlan) -> Self {
        let clb = &plan.clb;
        let n = clb.backends.len();
        let machine = ResponseTimes::new(
            n,
            PollConfig {
                poll_ms: u64::from(clb.poll_ms),
                fall: clb.fall,
                rise: clb.rise,
                eject_ms: u64::from(clb.eject_ms),
            },
            plan.now_ms(),
        );
        let shared = Shared {
            table: Mutex::new(Table {
                machine,
                order: Vec::with_capacity(n),
                probes: vec![None; n],
                failed: vec![None; n],
            }),
            table_generation: AtomicU64::new(0),
            probe_generation: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            failing: (0..n).map(|_| AtomicBool::new(false)).collect(),
        };
        shared.publish(&mut shared.lock());
        shared
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Copies a changed table out of the machine for the workers.
    fn publish(&self, t: &mut Table) {
        let Table { machine, order, .. } = t;
        if let Some(new) = machine.poll_table() {
            order.clear();
            order.extend_from_slice(new);
            self.table_generation.fetch_add(1, Ordering::Release);
        }
    }
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// The CLB services planned and their listeners bound, no thread started.
#[derive(Debug, Default)]
pub(super) struct ClbBound {
    plans: Vec<Arc<ClbPlan>>,
    /// Per worker: its core and, per service, its listeners.
    workers: Vec<(usize, Vec<Vec<std::net::TcpListener>>)>,
    /// The workers' scheduling policy.
    sched: ProxySched,
}

impl ClbBound {
    /// Plans every `route = "clb"` service for host `host` and binds each
    /// worker's listeners (one worker per proxy core).
    pub(super) fn bind(config: &Config, host: HostId, start: Instant) -> Result<ClbBound> {
        let section = config
            .host(host)
            .ok_or_else(|| anyhow!("no [[host]] {host}"))?;
        let mut plans = Vec::new();
        for service in &config.services {
            let Some(clb) = service.clb() else {
                continue;
            };
            let mut listen: Vec<SocketAddr> = config
                .cluster
                .vips
                .iter()
                .chain(section.dedicated.first().map(|c| c.addr()).as_ref())
                .map(|ip| SocketAddr::new(*ip, service.port))
                .collect();
            listen.dedup();
            let addresses: Vec<SocketAddr> = clb.backends.iter().map(|b| b.address).collect();
            plans.push(Arc::new(ClbPlan {
                name: service.name.clone(),
                limits: service.limits.clone(),
                clb: clb.clone(),
                served_by: addresses
                    .iter()
                    .map(|a| HeaderValue::from_str(&a.to_string()))
                    .collect::<Result<_, _>>()
                    .context("a back-end address as a header value")?,
                addresses,
                listen,
                start,
            }));
        }
        let mut workers = Vec::new();
        if !plans.is_empty() {
            for core in &section.cores.proxy {
                let per_service = service_listeners(
                    plans.iter().map(|p| (p.name.as_str(), p.listen.as_slice())),
                )?;
                workers.push((*core, per_service));
            }
        }
        Ok(ClbBound {
            plans,
            workers,
            sched: section.cores.proxy_sched,
        })
    }

    /// Every address the workers listen on, per service.
    pub(super) fn listen_addrs(&self) -> Vec<(String, Vec<SocketAddr>)> {
        self.plans
            .iter()
            .map(|p| (p.name.clone(), p.listen.clone()))
            .collect()
    }

    /// Starts the workers; they end when `stop` is set.
    pub(super) fn start(
        self,
        stop: Arc<AtomicBool>,
    ) -> Result<(Vec<std::thread::JoinHandle<()>>, ClbReader)> {
        let mut threads = Vec::new();
        let mut counters = Vec::new();
        let shared: Vec<Arc<Shared>> = self
            .plans
            .iter()
            .map(|p| Arc::new(Shared::new(p)))
            .collect();
        for (k, (core, listeners)) in self.workers.into_iter().enumerate() {
            let worker: Vec<Arc<Counters>> = self
                .plans
                .iter()
                .map(|p| Arc::new(Counters::new(p.addresses.len())))
                .collect();
            counters.push(worker.clone());
            let plans = self.plans.clone();
            let shared = shared.clone();
            let stop = stop.clone();
            let sched = self.sched;
            let seed = (k as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)
                ^ std::process::id() as u64
                ^ self
                    .plans
                    .first()
                    .map_or(0, |p| p.start.elapsed().as_nanos() as u64);
            threads.push(
                std::thread::Builder::new()
                    .name(format!("shoal-clb-{core}"))
                    .spawn(move || {
                        let setup = Setup {
                            core,
                            listeners,
                            plans,
                            shared,
                            prober: k == 0,
                            counters: worker,
                            stop,
                            seed,
                        };
                        super::run_pinned("clb worker", core, sched, serve(setup));
                    })
                    .context("spawning a clb worker")?,
            );
        }
        Ok((
            threads,
            ClbReader {
                plans: self.plans,
                counters,
            },
        ))
    }
}

/// Reads the CLB services' counters from any thread.
#[derive(Clone, Debug, Default)]
pub(super) struct ClbReader {
    plans: Vec<Arc<ClbPlan>>,
    /// Per worker, per service.
    counters: Vec<Vec<Arc<Counters>>>,
}

impl ClbReader {
    /// Adds each CLB service's object to `out` (the `services` object).
    pub(super) fn add_json(&self, out: &mut Map<String, Value>) {
        for (i, plan) in self.plans.iter().enumerate() {
            let workers: Vec<&Counters> = self
                .counters
                .iter()
                .filter_map(|w| w.get(i).map(|c| &**c))
                .collect();
            out.insert(plan.name.clone(), service_json(plan, &workers));
        }
    }
}

fn service_json(plan: &ClbPlan, workers: &[&Counters]) -> Value {
    let sum = |f: &dyn Fn(&Counters) -> &AtomicU64| -> u64 {
        workers.iter().map(|w| f(w).load(Ordering::Relaxed)).sum()
    };
    let ms = |us: u64| (us != u64::MAX).then(|| us as f64 / 1000.0);
    let mut backends = Map::new();
    let mut table: Vec<(u64, String)> = Vec::new();
    for (b, addr) in plan.addresses.iter().enumerate() {
        let bsum = |f: &dyn Fn(&BackendCounters) -> &AtomicU64| -> u64 {
            workers
                .iter()
                .filter_map(|w| w.backends.get(b))
                .map(|c| f(c).load(Ordering::Relaxed))
                .sum()
        };
        let first = workers.first().and_then(|w| w.backends.get(b));
        let load = |f: &dyn Fn(&BackendCounters) -> &AtomicU64| {
            first.map_or(u64::MAX, |c| f(c).load(Ordering::Relaxed))
        };
        let in_table = workers
            .iter()
            .filter_map(|w| w.backends.get(b))
            .any(|c| c.in_table.load(Ordering::Relaxed) == 1);
        let position = load(&|c| &c.position);
        if position != u64::MAX {
            table.push((position, addr.to_string()));
        }
        backends.insert(
            addr.to_string(),
            json!({
                "weight": plan.clb.backends.get(b).map_or(1, |s| s.weight),
                "requests": bsum(&|c| &c.requests),
                "pending": bsum(&|c| &c.pending),
                "failures": bsum(&|c| &c.failures),
                "ejections": bsum(&|c| &c.ejections),
                "last_response_ms": ms(load(&|c| &c.last_response_us)),
                "probe_ms": ms(load(&|c| &c.probe_us)),
                "in_table": in_table,
            }),
        );
    }
    table.sort();
    let members: Vec<Value> = plan
        .addresses
        .iter()
        .enumerate()
        .map(|(b, addr)| {
            let up = workers
                .iter()
                .filter_map(|w| w.backends.get(b))
                .any(|c| c.in_table.load(Ordering::Relaxed) == 1);
            json!({"name": addr.to_string(), "up": up})
        })
        .collect();
    let per_member: Vec<&[MemberCounters]> = workers.iter().map(|w| &*w.members).collect();
    let forwarded: u64 = per_member
        .iter()
        .flat_map(|m| m.iter())
        .map(|m| m.forwarded.load(Ordering::Relaxed))
        .sum();
    json!({
        "route": "clb",
        "failovers": sum(&|c| &c.retries),
        "hops_out": forwarded,
        "errors": {
            "unreachable": sum(&|c| &c.bad_gateway),
            "timeout": sum(&|c| &c.gateway_timeout),
        },
        "latency": latency_json(workers.iter().map(|w| &w.latency)),
        "members": members,
        "by_member": by_member_json(plan.addresses.iter().map(ToString::to_string), &per_member),
        "policy": plan.clb.policy.name(),
        "requests": sum(&|c| &c.requests),
        "retries": sum(&|c| &c.retries),
        "bad_gateway": sum(&|c| &c.bad_gateway),
        "gateway_timeout": sum(&|c| &c.gateway_timeout),
        "overload": sum(&|c| &c.overload),
        "table": table.into_iter().map(|(_, a)| a).collect::<Vec<_>>(),
        "backends": backends,
    })
}

/// One worker's state for one service.
struct Service {
    plan: Arc<ClbPlan>,
    balancer: RefCell<Balancer>,
    shared: Arc<Shared>,
    /// The generations of `shared` last copied.
    seen_table: std::cell::Cell<u64>,
    seen_probes: std::cell::Cell<u64>,
    pool: Rc<Pool>,
    counters: Arc<Counters>,
}

impl Service {
    /// Copies a changed table and new probe answers into the balancer and
    /// the counters. One atomic load each when nothing changed.
    fn sync(&self) {
        let g = self.shared.table_generation.load(Ordering::Acquire);
        if g != self.seen_table.get() {
            let t = self.shared.lock();
            // Read under the lock: the generation of the order copied.
            self.seen_table
                .set(self.shared.table_generation.load(Ordering::Acquire));
            let order = &t.order;
            let mut balancer = self.balancer.borrow_mut();
            balancer.set_table(order);
            for (i, c) in self.counters.backends.iter().enumerate() {
                let position = order.iter().position(|&k| k == i);
                balancer.set_up(i, position.is_some());
                c.in_table
                    .store(u64::from(position.is_some()), Ordering::Relaxed);
                c.position
                    .store(position.map_or(u64::MAX, |p| p as u64), Ordering::Relaxed);
            }
        }
        let g = self.shared.probe_generation.load(Ordering::Acquire);
        if g != self.seen_probes.get() {
            let t = self.shared.lock();
            self.seen_probes
                .set(self.shared.probe_generation.load(Ordering::Acquire));
            let mut balancer = self.balancer.borrow_mut();
            for (i, probe) in t.probes.iter().enumerate() {
                if let Some((sent_ns, response_ns)) = *probe {
                    balancer.observe_probe(i, sent_ns, response_ns);
                }
            }
            for (i, failed) in t.failed.iter().enumerate() {
                if let Some(sent_ns) = *failed {
                    balancer.probe_failed(i, sent_ns);
                }
            }
        }
    }

    /// A request to back end `i` ended.
    fn finished(&self, i: usize, started: Instant, answered: bool) {
        let latency = started.elapsed();
        let now_ns = self.plan.now_ns();
        self.balancer
            .borrow_mut()
            .finish(i, latency.as_nanos() as u64, answered, now_ns);
        let c = &self.counters.backends[i];
        c.pending.fetch_sub(1, Ordering::Relaxed);
        if answered {
            c.last_response_us
                .store(latency.as_micros() as u64, Ordering::Relaxed);
        } else {
            bump(&c.failures);
        }
        let failing = &self.shared.failing[i];
        if answered && !failing.load(Ordering::Relaxed) {
            return;
        }
        let ejected = {
            let mut t = self.shared.lock();
            failing.store(!answered, Ordering::Relaxed);
            let ejected = t.machine.handle_request(i, answered, self.plan.now_ms());
            self.shared.publish(&mut t);
            ejected
        };
        if ejected {
            bump(&c.ejections);
            tracing::info!(service = %self.plan.name, backend = %self.plan.addresses[i], "back end ejected");
            self.sync();
        }
    }
}

/// Everything a CLB worker thread starts with: per service, its
/// listeners, plan, the host's shared table and its own counters.
struct Setup {
    core: usize,
    listeners: Vec<Vec<std::net::TcpListener>>,
    plans: Vec<Arc<ClbPlan>>,
    shared: Vec<Arc<Shared>>,
    /// Whether this worker runs the probe rounds (the host's first).
    prober: bool,
    counters: Vec<Arc<Counters>>,
    stop: Arc<AtomicBool>,
    seed: u64,
}

async fn serve(setup: Setup) {
    let Setup {
        core,
        listeners,
        plans,
        shared,
        prober,
        counters,
        stop,
        seed,
    } = setup;
    let mut services = Vec::new();
    for (k, (((sockets, plan), shared), counters)) in listeners
        .into_iter()
        .zip(plans)
        .zip(shared)
        .zip(counters)
        .enumerate()
    {
        let clb = &plan.clb;
        let weights: Vec<u32> = clb.backends.iter().map(|b| b.weight).collect();
        let balancer = Balancer::new(
            BalancerConfig {
                policy: clb.policy,
                decay_ns: u64::from(clb.decay_ms) * 1_000_000,
                initial_latency_ns: INITIAL_LATENCY.as_nanos() as u64,
            },
            &weights,
            seed ^ (k as u64).wrapping_mul(0xD1B5_4A32_D192_ED03),
            plan.now_ns(),
        );
        let service = Rc::new(Service {
            pool: Rc::new(Pool::new(Duration::from_secs(u64::from(
                plan.limits.idle_timeout_s,
            )))),
            plan,
            balancer: RefCell::new(balancer),
            shared,
            seen_table: std::cell::Cell::new(u64::MAX),
            seen_probes: std::cell::Cell::new(0),
            counters,
        });
        service.sync();
        for socket in sockets {
            match TcpListener::from_std(socket) {
                Ok(l) => {
                    tokio::task::spawn_local(accept_loop(l, service.clone()));
                }
                Err(e) => tracing::error!(error = %e, core, "clb worker: listener"),
            }
        }
        services.push(service);
    }
    let mut sweep = Instant::now();
    while !stopping(&stop) {
        let mut next = Instant::now() + TICK;
        for s in services.iter().filter(|_| prober) {
            let now_ms = s.plan.now_ms();
            let (due, deadline_ms) = {
                let mut t = s.shared.lock();
                let due: Vec<usize> = t.machine.poll_round(now_ms).collect();
                (due, t.machine.next_deadline())
            };
            for i in due {
                tokio::task::spawn_local(probe(s.clone(), i));
            }
            next = next.min(s.plan.start + Duration::from_millis(deadline_ms));
        }
        for s in &services {
            s.sync();
        }
        tokio::time::sleep_until(next.into()).await;
        let now = Instant::now();
        for s in &services {
            s.pool.tick(now);
        }
        if now.duration_since(sweep) >= Duration::from_secs(1) {
            sweep = now;
            for s in &services {
                s.pool.sweep();
            }
        }
    }
}

/// Gives a client connection's place back when it ends.
struct Admitted(Arc<Shared>);

impl Drop for Admitted {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn accept_loop(listener: TcpListener, service: Rc<Service>) {
    let max = u64::from(service.plan.limits.max_connections);
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::debug!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let admitted = Admitted(service.shared.clone());
        // Host-wide, as for CARP services: beyond the limit a connection
        // gets one 503 and is closed.
        let over = service.shared.connections.fetch_add(1, Ordering::Relaxed) >= max;
        let service = service.clone();
        tokio::task::spawn_local(async move {
            let _admitted = admitted;
            let limits = &service.plan.limits;
            let mut builder = http1::Builder::new();
            builder
                .timer(super::coarse::Timer)
                .header_read_timeout(Duration::from_secs(u64::from(limits.idle_timeout_s)))
                .max_buf_size((limits.max_head_bytes as usize).max(8_192) + 8_192)
                .max_headers(limits.max_headers as usize)
                .keep_alive(!over);
            let s = service.clone();
            let result = builder
                .serve_connection(
                    TokioIo::new(stream),
                    service_fn(move |req| {
                        let s = s.clone();
                        async move {
                            if over {
                                bump(&s.counters.requests);
                                bump(&s.counters.overload);
                                return Ok::<_, Infallible>(super::proxy::overloaded());
                            }
                            let start = Instant::now();
                            let mut last = None;
                            let response = handle(&s, req, &mut last).await;
                            let took = start.elapsed();
                            s.counters.latency.observe(took);
                            if let Some(m) = last.and_then(|i| s.counters.members.get(i)) {
                                m.latency.observe(took);
                            }
                            Ok::<_, Infallible>(response)
                        }
                    }),
                )
                .await;
            if let Err(e) = result {
                tracing::debug!(error = %e, "clb client connection ended with an error");
            }
        });
    }
}

/// What one attempt came to.
enum Outcome {
    Answered(Response<Incoming>, CheckIn),
    /// Nothing was sent: the request comes back.
    NotSent(Request<UpBody>),
    /// The request went out (perhaps in part) and no head came.
    Failed,
    TimedOut,
}

async fn attempt(service: &Service, addr: SocketAddr, request: Request<UpBody>) -> Outcome {
    let limits = &service.plan.limits;
    let connect_timeout = Duration::from_millis(u64::from(limits.connect_timeout_ms));
    let first_byte = Duration::from_millis(u64::from(limits.first_byte_timeout_ms));
    let mut request = request;
    let mut pooled = service.pool.take(addr);
    loop {
        let from_pool = pooled.is_some();
        let mut sender: SendRequest<UpBody> = match pooled.take() {
            Some(s) => s,
            None => match upstream::connect(addr, connect_timeout).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(%addr, error = %e, "back end unreachable");
                    return Outcome::NotSent(request);
                }
            },
        };
        match super::coarse::timeout(first_byte, sender.try_send_request(request)).await {
            Err(_) => return Outcome::TimedOut,
            Ok(Ok(resp)) => {
                return Outcome::Answered(
                    resp,
                    CheckIn {
                        pool: service.pool.clone(),
                        addr,
                        sender,
                    },
                )
            }
            Ok(Err(mut e)) => match e.take_message() {
                // A kept-alive connection the back end had closed: the
                // request never left; try a new connection to it.
                Some(back) if from_pool => request = back,
                Some(back) => return Outcome::NotSent(back),
                None => {
                    tracing::debug!(%addr, error = %e.into_error(), "back end failed");
                    return Outcome::Failed;
                }
            },
        }
    }
}

/// `last` ends as the back end tried last (if any).
async fn handle(
    service: &Service,
    req: Request<Incoming>,
    last: &mut Option<usize>,
) -> Response<ClientBody> {
    let counters = &service.counters;
    bump(&counters.requests);
    let (mut parts, body) = req.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    let path = parts
        .uri
        .path_and_query()
        .and_then(|p| p.as_str().parse::<Uri>().ok())
        .unwrap_or_else(|| Uri::from_static("/"));
    if parts.headers.get(header::HOST).is_none() {
        if let Some(a) = parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        {
            parts.headers.insert(header::HOST, a);
        }
    }
    parts.uri = path;
    let mut request = Request::from_parts(parts, Either::Left(body));
    service.sync();
    let retries = service.plan.clb.retries;
    let mut tried = 0u64;
    for round in 0..=retries {
        let pick = service
            .balancer
            .borrow_mut()
            .pick(service.plan.now_ns(), tried);
        let Some(i) = pick else {
            break;
        };
        if round > 0 {
            bump(&counters.retries);
            if let Some(m) = last.and_then(|p| counters.members.get(p)) {
                bump(&m.failovers);
            }
        }
        *last = Some(i);
        tried |= 1 << i;
        let addr = service.plan.addresses[i];
        let c = &counters.backends[i];
        bump(&c.requests);
        c.pending.fetch_add(1, Ordering::Relaxed);
        service
            .balancer
            .borrow_mut()
            .start(i, service.plan.now_ns());
        let started = Instant::now();
        match attempt(service, addr, request).await {
            Outcome::Answered(resp, check_in) => {
                service.finished(i, started, true);
                bump(&counters.members[i].requests);
                bump(&counters.members[i].forwarded);
                let (mut parts, body) = resp.into_parts();
                strip_hop_by_hop(&mut parts.headers);
                parts
                    .headers
                    .insert(SERVED_BY, service.plan.served_by[i].clone());
                return Response::from_parts(
                    parts,
                    Either::Left(Returning::new(body, Some(check_in))),
                );
            }
            Outcome::NotSent(back) => {
                service.finished(i, started, false);
                request = back;
            }
            Outcome::Failed => {
                service.finished(i, started, false);
                bump(&counters.bad_gateway);
                counters.members[i].error(ErrorKind::Unreachable);
                return answer(StatusCode::BAD_GATEWAY, "the back end failed");
            }
            Outcome::TimedOut => {
                service.finished(i, started, false);
                bump(&counters.gateway_timeout);
                counters.members[i].error(ErrorKind::Timeout);
                return answer(StatusCode::GATEWAY_TIMEOUT, "the back end timed out");
            }
        }
    }
    bump(&counters.bad_gateway);
    if let Some(m) = last.and_then(|p| counters.members.get(p)) {
        m.error(ErrorKind::Unreachable);
    }
    answer(StatusCode::BAD_GATEWAY, "no back end could be reached")
}

/// One probe of back end `i`, its result reported to the table.
async fn probe(service: Rc<Service>, i: usize) {
    let plan = &service.plan;
    let addr = plan.addresses[i];
    let timeout = Duration::from_millis(u64::from(plan.clb.probe_timeout_ms));
    let sent_ns = plan.now_ns();
    let started = Instant::now();
    let result = tokio::time::timeout(timeout, probe_once(plan, addr, timeout)).await;
    let response = match result {
        Ok(true) => Some(started.elapsed()),
        _ => None,
    };
    let response_us = response.map(|r| (r.as_micros() as u64).max(1));
    let shared = &service.shared;
    service.counters.backends[i]
        .probe_us
        .store(response_us.unwrap_or(u64::MAX), Ordering::Relaxed);
    {
        let mut t = shared.lock();
        match response {
            Some(r) => t.probes[i] = Some((sent_ns, r.as_nanos() as u64)),
            None => t.failed[i] = Some(sent_ns),
        }
        shared.probe_generation.fetch_add(1, Ordering::Release);
        t.machine.handle_probe(i, response_us, plan.now_ms());
        shared.publish(&mut t);
    }
    service.sync();
}

/// Whether back end `addr` answered the probe request below 500.
async fn probe_once(plan: &ClbPlan, addr: SocketAddr, timeout: Duration) -> bool {
    let Ok(mut sender) = upstream::connect(addr, timeout).await else {
        return false;
    };
    let mut r = Request::new(Either::Right(Empty::<Bytes>::new()));
    let method = plan.clb.probe.method.as_bytes();
    let (Ok(m), Ok(uri)) = (
        hyper::Method::from_bytes(method),
        plan.clb.probe.path.parse::<Uri>(),
    ) else {
        return false;
    };
    *r.method_mut() = m;
    *r.uri_mut() = uri;
    if let Ok(host) = HeaderValue::from_str(&addr.to_string()) {
        r.headers_mut().insert(header::HOST, host);
    }
    r.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    match sender.send_request(r).await {
        Ok(resp) => resp.status().as_u16() < 500,
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(policy: shoal_dataplane::array::Policy) -> ClbPlan {
        let backend = |a: &str| shoal_config::BackendSection {
            address: a.parse().unwrap(),
            weight: 1,
        };
        ClbPlan {
            name: "app".into(),
            limits: ServiceLimits::default(),
            clb: ClbSection {
                policy,
                backends: vec![backend("10.0.0.1:80"), backend("10.0.0.2:80")],
                poll_ms: 200,
                probe: shoal_config::ProbeRequest::parse("GET /health").unwrap(),
                probe_timeout_ms: 100,
                decay_ms: 10_000,
                retries: 2,
                fall: 3,
                rise: 2,
                eject_ms: 5000,
            },
            addresses: vec![
                "10.0.0.1:80".parse().unwrap(),
                "10.0.0.2:80".parse().unwrap(),
            ],
            served_by: vec![],
            listen: vec![],
            start: Instant::now(),
        }
    }

    fn worker(plan: &Arc<ClbPlan>, shared: &Arc<Shared>) -> Service {
        Service {
            plan: plan.clone(),
            balancer: RefCell::new(Balancer::new(
                BalancerConfig {
                    policy: plan.clb.policy,
                    decay_ns: 10_000_000_000,
                    initial_latency_ns: 1_000_000,
                },
                &[1, 1],
                1,
                0,
            )),
            shared: shared.clone(),
            seen_table: std::cell::Cell::new(u64::MAX),
            seen_probes: std::cell::Cell::new(0),
            pool: Rc::new(Pool::new(Duration::from_secs(1))),
            counters: Arc::new(Counters::new(2)),
        }
    }

    /// One machine per host: a round's probe answers and an ejection by
    /// one worker's request failures reach every worker's balancer.
    #[test]
    fn the_workers_of_a_host_share_one_table_and_its_probe_answers() {
        let plan = Arc::new(plan(shoal_dataplane::array::Policy::Clb));
        let shared = Arc::new(Shared::new(&plan));
        let (a, b) = (worker(&plan, &shared), worker(&plan, &shared));
        a.sync();
        b.sync();
        assert_eq!(b.balancer.borrow().table(), &[0, 1]);
        // A stale 2 s peak on back end 1 in worker b.
        b.balancer.borrow_mut().start(1, 0);
        b.balancer.borrow_mut().finish(1, 2_000_000_000, true, 1);
        {
            let mut t = shared.lock();
            let due: Vec<usize> = t.machine.poll_round(0).collect();
            assert_eq!(due, [0, 1]);
            t.machine.handle_probe(0, Some(9_000), 1);
            t.machine.handle_probe(1, Some(3_000), 1);
            t.probes[1] = Some((10, 3_000_000));
            shared.probe_generation.fetch_add(1, Ordering::Release);
            shared.publish(&mut t);
        }
        a.sync();
        b.sync();
        for w in [&a, &b] {
            assert_eq!(w.balancer.borrow().table(), &[1, 0]);
        }
        assert_eq!(b.balancer.borrow().latency_ns(1, 3_000_010), 3_000_000.0);
        // Worker a's failures eject back end 1 for worker b too.
        for _ in 0..3 {
            a.balancer.borrow_mut().start(1, 0);
            a.counters.backends[1]
                .pending
                .fetch_add(1, Ordering::Relaxed);
            a.finished(1, Instant::now(), false);
        }
        b.sync();
        assert!(!b.balancer.borrow().is_up(1));
        assert_eq!(b.counters.backends[1].in_table.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn every_backend_has_its_documented_keys() {
        let mut plan = plan(shoal_dataplane::array::Policy::Clb);
        plan.clb.backends[0].weight = 2;
        let a = Counters::new(2);
        let b = Counters::new(2);
        a.backends[0].requests.store(3, Ordering::Relaxed);
        b.backends[0].requests.store(4, Ordering::Relaxed);
        b.backends[1].failures.store(1, Ordering::Relaxed);
        a.backends[1].position.store(0, Ordering::Relaxed);
        a.backends[0].position.store(1, Ordering::Relaxed);
        a.backends[0].probe_us.store(2_500, Ordering::Relaxed);
        let v = service_json(&plan, &[&a, &b]);
        assert_eq!(v["policy"], "clb");
        assert_eq!(v["table"], json!(["10.0.0.2:80", "10.0.0.1:80"]));
        let b0 = &v["backends"]["10.0.0.1:80"];
        assert_eq!(b0["requests"], 7);
        assert_eq!(b0["weight"], 2);
        assert_eq!(b0["probe_ms"], 2.5);
        assert_eq!(b0["last_response_ms"], Value::Null);
        assert_eq!(v["backends"]["10.0.0.2:80"]["failures"], 1);
        // The tier's scheme, per back end as a member.
        a.retries.store(2, Ordering::Relaxed);
        b.gateway_timeout.store(1, Ordering::Relaxed);
        bump(&a.members[1].requests);
        bump(&b.members[1].requests);
        b.members[1].error(ErrorKind::Timeout);
        b.latency.observe(Duration::from_millis(3));
        let v = service_json(&plan, &[&a, &b]);
        assert_eq!(v["failovers"], 2);
        assert_eq!(v["errors"], json!({"unreachable": 0, "timeout": 1}));
        assert_eq!(v["latency"]["counts"][3], 1, "3 ms is in the 5 ms bucket");
        assert_eq!(v["members"][1], json!({"name": "10.0.0.2:80", "up": true}));
        let m = &v["by_member"]["10.0.0.2:80"];
        assert_eq!(
            (m["requests"].as_u64(), m["errors"]["timeout"].as_u64()),
            (Some(2), Some(1))
        );
        assert_eq!(v["overload"], 0);
        for key in [
            "requests",
            "pending",
            "failures",
            "ejections",
            "last_response_ms",
        ] {
            assert!(b0.get(key).is_some(), "{key}");
        }
    }
}
