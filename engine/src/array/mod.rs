//! The array tier's proxy runtime: listeners, proxy workers, upstream
//! connection pools and health probes for every `[[service]]`.
//!
//! Owns the sockets and runtimes only. Every decision is the dataplane's or
//! the control plane's: what a request head asks for and whether it is
//! refused ([`shoal_dataplane::array::classify`]), whether it looped
//! ([`shoal_dataplane::array::seen`]), the member header
//! ([`shoal_dataplane::array::member`]), who owns a URL and who follows
//! ([`shoal_dataplane::array::Router`]), the table and the PAC
//! ([`crate::tools::carp`] over [`shoal_dataplane::array::render`]), and
//! member health ([`shoal_controlplane::Health`]). A sticky service
//! (`route = "sticky"`) serves its connections on [`sticky`]'s request path
//! (the forwarder's decision is [`shoal_dataplane::array::sticky`]'s); its
//! members, probes and live view are a cluster CARP service's.
//!
//! # Threads and what they share
//!
//! * One proxy worker per `[host.cores].proxy` core, a thread named
//!   `shoal-proxy-<core>` pinned to it, running a current-thread tokio
//!   runtime. Each worker owns its listeners (one `SO_REUSEPORT` socket per
//!   service on every VIP and on the host's first dedicated address, at the
//!   service port; the kernel spreads connections over the workers), its
//!   upstream connection pools and its counters ([`counters`]). Nothing on
//!   the request path is shared with another thread but two atomics: the
//!   view cell's sequence (read per request) and the service's connection
//!   count (per connection, for `max_connections`). The deadlines every
//!   request arms (the upstream's first byte, the header-read bound) are
//!   on the worker's own coarse timer (`coarse.rs`, 10 ms grains).
//! * One health thread, `shoal-array-health`, also a current-thread
//!   runtime: it probes members, parents and `local` on a
//!   [`shoal_controlplane::Health`] machine per service, takes the
//!   request-path failures workers report over a bounded channel, follows
//!   the cluster map's view (the same [`MapCell`] the poll loops read), and
//!   publishes each service's [`view::Snapshot`] whenever the epoch, the
//!   view or a member's health changes. Workers swap to it on their next
//!   request.
//! * Readers of the counters ([`ArrayTier::counters_json`]) sum every
//!   worker's.
//! * Shutdown: [`ArrayTier::stop`] (and the engine's STOP flag) ends every
//!   worker's accept loops and runtime within 100 ms; connections still open
//!   are closed, and the threads are joined.
//!
//! # Sockets are made before privileges are dropped
//!
//! [`Bound::bind`] creates every listener (a service port may be below
//! 1024) on the calling thread, before `shoal run` gives up its
//! capabilities; [`Bound::start`] spawns the threads after, so no thread
//! of the tier keeps a capability.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use hyper::header::HeaderValue;
use shoal_config::{CarpMembers, Config, ProxySched, ServiceLimits, ServiceSection};
use shoal_controlplane::HealthConfig;
use shoal_dataplane::array::{via_value, HeadLimits, MemberKey};
use shoal_dataplane::HostId;

use crate::handoff::MapCell;
use crate::tools::carp::{array, Array, ArrayArgs};

mod clb;
mod coarse;
pub mod counters;
mod health;
mod mux;
mod proxy;
mod relay;
pub mod sticky;
pub mod tls;
mod tunnel;
mod upstream;
pub mod view;
mod worker;

use counters::ServiceCounters;
use view::{Snapshot, ViewCell};

/// Consecutive successful probes that bring a down member back.
pub const PROBE_RISE: u32 = 2;
/// Consecutive failed probes that take an up member down: one, so a
/// member whose `local` stops answering is down within a probe interval.
pub const PROBE_FALL: u32 = 1;
/// How far apart two members' clocks may be for a member header to verify.
pub const MEMBER_SKEW_MS: u64 = 30_000;
/// Listen backlog of every proxy socket.
const BACKLOG: i32 = 1024;

/// Where a service's routed requests go.
#[derive(Clone, Debug)]
pub enum Upstreams {
    /// `members = "cluster"`: the owner's `local`, via a hop to the owner
    /// when that is another host.
    Cluster {
        /// This host's local backend.
        local: SocketAddr,
        /// This host's index among the members.
        own: usize,
    },
    /// `members = "parents"`: the owning parent.
    Parents,
}

/// One service as every thread of the tier sees it; never changes.
#[derive(Debug)]
pub struct ServicePlan {
    /// Index among the tier's CARP services.
    pub index: usize,
    /// Service name.
    pub name: String,
    /// The service port.
    pub port: u16,
    /// The operator's limits.
    pub limits: ServiceLimits,
    /// The head limits handed to [`shoal_dataplane::array::classify`].
    pub head_limits: HeadLimits,
    /// Where routed requests go.
    pub upstreams: Upstreams,
    /// Per member, where to reach it (dedicated address or parent).
    pub addresses: Vec<Option<SocketAddr>>,
    /// This host's member name (the loop check's and `Via`'s name).
    pub own_name: String,
    /// The `Via` entry this host adds.
    pub via: HeaderValue,
    /// This host's member name as a header value (`None` when it is none).
    pub own_name_value: Option<HeaderValue>,
    /// Per member (or parent), its name as a header value.
    pub name_values: Vec<Option<HeaderValue>>,
    /// This host's ID (the member header's sender).
    pub own_host: HostId,
    /// Per member, its host ID (`members = "cluster"`).
    pub hosts: Vec<Option<HostId>>,
    /// The member header key.
    pub key: MemberKey,
    /// The array with every member up: the snapshots start from it.
    pub array: Array,
    /// Probe interval, failure hold, thresholds.
    pub health: HealthConfig,
    /// Where the workers listen.
    pub listen: Vec<SocketAddr>,
    /// The engine clock's origin (`since` times are milliseconds from it).
    pub start: Instant,
    /// For `route = "sticky"`, the forwarder's plan.
    pub sticky: Option<sticky::StickyPlan>,
}

impl ServicePlan {
    /// Milliseconds on the engine clock.
    pub fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    /// The connector of hops to `addr`: with `backend_tls`, every upstream
    /// of a sticky service but its `local`.
    pub(super) fn hop_tls(&self, addr: SocketAddr) -> Option<&tokio_rustls::TlsConnector> {
        let connector = self.sticky.as_ref()?.tls.as_ref()?.connector.as_ref()?;
        match self.upstreams {
            Upstreams::Cluster { local, .. } if local == addr => None,
            _ => Some(connector),
        }
    }

    /// How long a `CONNECT` tunnel may carry nothing either way.
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(u64::from(self.limits.idle_timeout_s))
    }

    /// The connect timeout.
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(u64::from(self.limits.connect_timeout_ms))
    }

    fn new(
        config: &Config,
        index: usize,
        service: &ServiceSection,
        host: HostId,
        key: MemberKey,
        start: Instant,
    ) -> Result<ServicePlan> {
        let args = ArrayArgs {
            config: Some(config.source.clone()),
            service: Some(service.name.clone()),
            ..ArrayArgs::default()
        };
        let array = array(&args, Some(config), None)
            .with_context(|| format!("service {:?}", service.name))?;
        let members = service.carp_members(config, None);
        let own_name = config
            .member_name(host)
            .unwrap_or_else(|| format!("host{}", host.get()));
        let carp = service
            .carp()
            .ok_or_else(|| anyhow!("service {:?} is not a CARP service", service.name))?;
        let upstreams = match &carp.members {
            CarpMembers::Cluster { local, .. } => Upstreams::Cluster {
                local: *local,
                own: members
                    .iter()
                    .position(|m| m.host == Some(host))
                    .ok_or_else(|| anyhow!("host {host} is not a member of {:?}", service.name))?,
            },
            CarpMembers::Parents(_) => Upstreams::Parents,
        };
        let host_section = config
            .host(host)
            .ok_or_else(|| anyhow!("no [[host]] {host}"))?;
        let mut listen: Vec<SocketAddr> = config
            .cluster
            .vips
            .iter()
            .chain(host_section.dedicated.first().map(|c| c.addr()).as_ref())
            .map(|ip| SocketAddr::new(*ip, service.port))
            .collect();
        listen.dedup();
        let limits = service.limits.clone();
        Ok(ServicePlan {
            index,
            name: service.name.clone(),
            port: service.port,
            head_limits: HeadLimits {
                max_uri_bytes: limits.max_uri_bytes as usize,
                max_head_bytes: limits.max_head_bytes as usize,
                max_headers: limits.max_headers as usize,
            },
            limits,
            upstreams,
            addresses: members.iter().map(|m| m.address).collect(),
            hosts: members.iter().map(|m| m.host).collect(),
            via: HeaderValue::from_str(&via_value(&own_name))
                .context("the member name is not a header value")?,
            own_name_value: HeaderValue::from_str(&own_name).ok(),
            name_values: array
                .router
                .carp
                .members()
                .iter()
                .map(|m| HeaderValue::from_str(&m.name).ok())
                .collect(),
            own_name,
            own_host: host,
            key,
            array,
            health: HealthConfig {
                probe_interval_ms: u64::from(carp.probe_interval_ms),
                down_ttl_ms: u64::from(carp.down_ttl_ms),
                rise: PROBE_RISE,
                fall: PROBE_FALL,
            },
            listen,
            start,
            sticky: None,
        })
    }

    /// The first snapshot: members in the cluster map's view (every parent)
    /// up, epoch `epoch`.
    fn first_snapshot(&self, view: shoal_dataplane::HostSet, epoch: u64) -> Snapshot {
        let mut array = self.array.clone();
        for (i, h) in self.hosts.iter().enumerate() {
            if let Some(h) = h {
                array.router.carp.set_up(i, view.contains(*h));
            }
        }
        Snapshot {
            epoch,
            array,
            since_ms: vec![0; self.hosts.len()],
            local_up: true,
        }
    }
}

/// The listeners of one worker: per service, one per listen address.
type WorkerListeners = Vec<Vec<std::net::TcpListener>>;

/// The tier with its sockets bound and no thread started yet.
#[derive(Debug)]
pub struct Bound {
    plans: Vec<Arc<ServicePlan>>,
    cores: Vec<usize>,
    sched: ProxySched,
    listeners: Vec<WorkerListeners>,
    cell: Arc<MapCell>,
    views: Vec<Arc<ViewCell>>,
    /// The `route = "clb"` services.
    clb: clb::ClbBound,
}

/// One worker's listening sockets: for each service (name, addresses),
/// one socket per address.
fn service_listeners<'a>(
    services: impl IntoIterator<Item = (&'a str, &'a [SocketAddr])>,
) -> Result<Vec<Vec<std::net::TcpListener>>> {
    services
        .into_iter()
        .map(|(name, addrs)| {
            addrs
                .iter()
                .map(|addr| {
                    listener(*addr)
                        .with_context(|| format!("service {name:?}: listening on {addr}"))
                })
                .collect()
        })
        .collect()
}

/// One listening socket: `SO_REUSEADDR` and `SO_REUSEPORT` (one per worker
/// on the same address), non-blocking, IPv6 only for IPv6 addresses.
fn listener(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.set_tcp_nodelay(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}

impl Bound {
    /// Plans every `[[service]]` for host `host` and binds every worker's
    /// listeners. `None` when the configuration has no service.
    /// `cluster_key` derives the member header key; `cell` is the map the
    /// poll loops read (its view is the array's live membership).
    pub fn bind(
        config: &Config,
        host: HostId,
        cluster_key: &[u8],
        cell: Arc<MapCell>,
    ) -> Result<Option<Bound>> {
        if config.services.is_empty() {
            return Ok(None);
        }
        let section = config
            .host(host)
            .ok_or_else(|| anyhow!("no [[host]] {host}"))?;
        let cores = section.cores.proxy.clone();
        let sched = section.cores.proxy_sched;
        let start = Instant::now();
        let key = MemberKey::derive(cluster_key);
        let plans = config
            .services
            .iter()
            .filter(|s| s.carp().is_some())
            .enumerate()
            .map(|(i, s)| {
                let mut plan = ServicePlan::new(config, i, s, host, key.clone(), start)?;
                if let Some(section) = s.sticky() {
                    plan.sticky = Some(
                        sticky::StickyPlan::new(section, config, cluster_key, &plan.listen)
                            .with_context(|| format!("service {:?}", s.name))?,
                    );
                }
                Ok(Arc::new(plan))
            })
            .collect::<Result<Vec<_>>>()?;
        let clb = clb::ClbBound::bind(config, host, start)?;
        let mut listeners = Vec::with_capacity(cores.len());
        for _ in &cores {
            listeners.push(service_listeners(
                plans.iter().map(|p| (p.name.as_str(), p.listen.as_slice())),
            )?);
        }
        let map = cell.current();
        let views = plans
            .iter()
            .map(|p| Arc::new(ViewCell::new(p.first_snapshot(map.view.members, map.epoch))))
            .collect();
        Ok(Some(Bound {
            plans,
            cores,
            sched,
            listeners,
            cell,
            views,
            clb,
        }))
    }

    /// Every address the workers listen on, per service.
    pub fn listen_addrs(&self) -> Vec<(String, Vec<SocketAddr>)> {
        let mut out: Vec<(String, Vec<SocketAddr>)> = self
            .plans
            .iter()
            .map(|p| (p.name.clone(), p.listen.clone()))
            .collect();
        out.extend(self.clb.listen_addrs());
        out
    }

    /// Starts the workers and the health thread.
    pub fn start(self) -> Result<ArrayTier> {
        let stop = Arc::new(AtomicBool::new(false));
        let (report_tx, report_rx) = tokio::sync::mpsc::channel(health::REPORTS);
        let connections: Vec<Arc<AtomicU64>> = self
            .plans
            .iter()
            .map(|_| Arc::new(AtomicU64::new(0)))
            .collect();
        let mut threads = Vec::new();
        let mut counters = Vec::new();
        for (core, listeners) in self.cores.iter().zip(self.listeners) {
            let worker_counters: Vec<Arc<ServiceCounters>> = self
                .plans
                .iter()
                .map(|p| Arc::new(ServiceCounters::new(p.addresses.len())))
                .collect();
            counters.push(worker_counters.clone());
            let setup = worker::Setup {
                core: *core,
                sched: self.sched,
                listeners,
                plans: self.plans.clone(),
                views: self.views.clone(),
                counters: worker_counters,
                connections: connections.clone(),
                reports: report_tx.clone(),
                stop: stop.clone(),
            };
            threads.push(
                std::thread::Builder::new()
                    .name(format!("shoal-proxy-{core}"))
                    .spawn(move || worker::run(setup))
                    .context("spawning a proxy worker")?,
            );
        }
        let probe = health::Setup {
            plans: self.plans.clone(),
            views: self.views.clone(),
            cell: self.cell,
            reports: report_rx,
            stop: stop.clone(),
        };
        threads.push(
            std::thread::Builder::new()
                .name("shoal-array-health".into())
                .spawn(move || health::run(probe))
                .context("spawning the array health thread")?,
        );
        let (clb_threads, clb) = self.clb.start(stop.clone())?;
        threads.extend(clb_threads);
        tracing::info!(workers = self.cores.len(), services = ?self.plans.iter().map(|p| (&p.name, &p.listen)).collect::<Vec<_>>(), "array tier running");
        Ok(ArrayTier {
            counters: ServicesReader {
                plans: self.plans,
                views: self.views,
                counters,
                clb,
            },
            threads,
            stop,
        })
    }
}

/// The running tier.
#[derive(Debug)]
pub struct ArrayTier {
    counters: ServicesReader,
    threads: Vec<std::thread::JoinHandle<()>>,
    stop: Arc<AtomicBool>,
}

/// Reads the tier's counters and live view from any thread (the stats
/// writer, the admin socket's `query`).
#[derive(Clone, Debug)]
pub struct ServicesReader {
    plans: Vec<Arc<ServicePlan>>,
    views: Vec<Arc<ViewCell>>,
    /// Per worker, per service.
    counters: Vec<Vec<Arc<ServiceCounters>>>,
    /// The `route = "clb"` services' counters.
    clb: clb::ClbReader,
}

impl ServicesReader {
    /// The `services` object: per service name, every worker's counters
    /// summed and the members as the live view shows them.
    pub fn json(&self) -> serde_json::Value {
        let mut out = serde_json::Map::new();
        for (i, (plan, view)) in self.plans.iter().zip(&self.views).enumerate() {
            let workers: Vec<&ServiceCounters> = self
                .counters
                .iter()
                .filter_map(|w| w.get(i).map(|c| &**c))
                .collect();
            let snapshot = view.current();
            let mut json = counters::service_json(&workers, &snapshot, plan.now_ms());
            if plan.sticky.is_some() {
                let sticky: Vec<_> = workers.iter().map(|w| &w.sticky).collect();
                sticky::add_json(&mut json, &sticky);
            }
            out.insert(plan.name.clone(), json);
        }
        self.clb.add_json(&mut out);
        serde_json::Value::Object(out)
    }

    /// The live snapshot of service `index`.
    pub fn snapshot(&self, index: usize) -> Option<Arc<Snapshot>> {
        self.views.get(index).map(|v| v.current())
    }
}

impl ArrayTier {
    /// The `services` object (see [`ServicesReader::json`]).
    pub fn counters_json(&self) -> serde_json::Value {
        self.counters.json()
    }

    /// A reader of the counters for another thread.
    pub fn reader(&self) -> ServicesReader {
        self.counters.clone()
    }

    /// Stops every thread of the tier and waits for them.
    pub fn stop(self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// A proxy thread's body: pinned to `core`, `work` run to its end on a
/// current-thread runtime (a `LocalSet`, so its tasks may hold `Rc`s)
/// that also drives the thread's coarse timer (`coarse::drive`). `what` names
/// the thread in the logs.
fn run_pinned<F: std::future::Future>(what: &str, core: usize, sched: ProxySched, work: F) {
    if !core_affinity::set_for_current(core_affinity::CoreId { id: core }) {
        tracing::warn!(core, "could not pin {what}");
    }
    if let Err(e) = crate::sys::sched::set_thread_batch(sched == ProxySched::Batch) {
        tracing::warn!(core, ?sched, error = %e, "could not set {what}'s scheduling policy");
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, core, "{what}: no runtime");
            return;
        }
    };
    tokio::task::LocalSet::new().block_on(&runtime, async {
        tokio::task::spawn_local(coarse::drive());
        work.await
    });
}

/// Whether the tier (or the whole engine) is stopping.
fn stopping(stop: &AtomicBool) -> bool {
    stop.load(Ordering::Relaxed) || crate::sys::signal::STOP.load(Ordering::Relaxed)
}
