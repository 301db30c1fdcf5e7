//! One proxy worker: a pinned thread, a current-thread runtime, its own
//! listeners, pools and counters (see the parent module for the threads).

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use shoal_config::ProxySched;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;

use super::counters::{ErrorKind, ServiceCounters};
use super::health::Report;
use super::proxy::{self, Service};
use super::sticky::StickyError;
use super::upstream::{self, Pool};
use super::view::ViewCell;
use super::{stopping, ServicePlan, WorkerListeners};

/// Everything a worker thread starts with.
pub(super) struct Setup {
    pub core: usize,
    pub sched: ProxySched,
    pub listeners: WorkerListeners,
    pub plans: Vec<Arc<ServicePlan>>,
    pub views: Vec<Arc<ViewCell>>,
    pub counters: Vec<Arc<ServiceCounters>>,
    pub connections: Vec<Arc<AtomicU64>>,
    pub reports: mpsc::Sender<Report>,
    pub stop: Arc<AtomicBool>,
}

/// How often a worker checks for shutdown and refreshes its pools'
/// clocks (the pools count on that period).
const STOP_POLL: Duration = upstream::CLOCK_TICK;
/// Every how many stop checks idle upstream connections are swept (1 s).
const SWEEP_ROUNDS: u32 = 10;
/// How long a worker waits after a failed `accept` (descriptors exhausted).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(20);

/// The worker thread's body.
pub(super) fn run(setup: Setup) {
    super::run_pinned("proxy worker", setup.core, setup.sched, serve(setup));
}

async fn serve(setup: Setup) {
    let Setup {
        core,
        sched: _,
        listeners,
        plans,
        views,
        counters,
        connections,
        reports,
        stop,
    } = setup;
    let mut pools = Vec::new();
    for (i, sockets) in listeners.into_iter().enumerate() {
        let (Some(plan), Some(view), Some(counters), Some(conns)) = (
            plans.get(i),
            views.get(i),
            counters.get(i),
            connections.get(i),
        ) else {
            continue;
        };
        let idle = Duration::from_secs(u64::from(plan.limits.idle_timeout_s));
        let service = Rc::new(Service {
            plan: plan.clone(),
            cached: RefCell::new((0, view.current())),
            view: view.clone(),
            counters: counters.clone(),
            pool: Rc::new(Pool::new(idle)),
            tunnels: Rc::new(Pool::new(idle)),
            untunneled: RefCell::new(Default::default()),
            mux: RefCell::new(Default::default()),
            unmuxed: RefCell::new(Default::default()),
            reports: reports.clone(),
        });
        pools.push(service.pool.clone());
        pools.push(service.tunnels.clone());
        for (j, socket) in sockets.into_iter().enumerate() {
            let tls = plan.sticky.as_ref().and_then(|s| s.acceptor(j));
            match TcpListener::from_std(socket) {
                Ok(l) => {
                    tokio::task::spawn_local(accept_loop(l, service.clone(), conns.clone(), tls));
                }
                Err(e) => tracing::error!(error = %e, core, "proxy worker: listener"),
            }
        }
    }
    let mut rounds = 0u32;
    while !stopping(&stop) {
        tokio::time::sleep(STOP_POLL).await;
        let now = std::time::Instant::now();
        for pool in &pools {
            pool.tick(now);
        }
        rounds += 1;
        if rounds >= SWEEP_ROUNDS {
            rounds = 0;
            for pool in &pools {
                pool.sweep();
            }
        }
    }
}

/// Decrements the service's connection count when the connection ends.
struct Admitted(Arc<AtomicU64>);

impl Drop for Admitted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn accept_loop(
    listener: TcpListener,
    service: Rc<Service>,
    conns: Arc<AtomicU64>,
    tls: Option<TlsAcceptor>,
) {
    let max = u64::from(service.plan.limits.max_connections);
    loop {
        let stream = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(error = %e, "accept failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let (stream, peer) = stream;
        let _ = stream.set_nodelay(true);
        let admitted = Admitted(conns.clone());
        let over = conns.fetch_add(1, Ordering::Relaxed) >= max;
        let service = service.clone();
        let tls = tls.clone();
        tokio::task::spawn_local(async move {
            match tls {
                Some(acceptor) => tls_connection(stream, peer, service, over, acceptor).await,
                None => connection(stream, peer, service, over).await,
            }
            drop(admitted);
        });
    }
}

/// The server side of a client connection, bounded by the service's
/// limits; `over` the connection limit, it answers once and closes.
fn builder(limits: &shoal_config::ServiceLimits, over: bool) -> http1::Builder {
    let mut builder = http1::Builder::new();
    // The head's bytes: the HTTP library's bound sits above the
    // service's, so the service answers (and counts) an over-long head
    // itself. Its header fields: the library's bound is the service's. The
    // library answers 431 past it (counted in `connection_ended`); a bound
    // above 100 would make it allocate an index table per request head.
    builder
        .timer(super::coarse::Timer)
        .header_read_timeout(Duration::from_secs(u64::from(limits.idle_timeout_s)))
        .max_buf_size(
            (limits.max_head_bytes as usize)
                .saturating_mul(2)
                .max(16_384)
                + 8_192,
        )
        .max_headers(limits.max_headers as usize)
        .keep_alive(!over);
    builder
}

/// Serves one TLS client connection of a sticky service: the handshake
/// (bounded by the idle timeout; a failure is dropped and counted), then
/// the sticky request path, or one 503 when `over` the connection limit.
async fn tls_connection(
    stream: tokio::net::TcpStream,
    peer: std::net::SocketAddr,
    service: Rc<Service>,
    over: bool,
    acceptor: TlsAcceptor,
) {
    let limit = Duration::from_secs(u64::from(service.plan.limits.idle_timeout_s));
    let stream = match tokio::time::timeout(limit, acceptor.accept(stream)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            service.counters.sticky.error(StickyError::TlsHandshake);
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            service.counters.sticky.error(StickyError::TlsHandshake);
            tracing::debug!(%peer, "TLS handshake timed out");
            return;
        }
    };
    let builder = builder(&service.plan.limits, over);
    if !over {
        return super::relay::connection(stream, peer, service, builder).await;
    }
    let svc = service.clone();
    let result = builder
        .serve_connection(
            TokioIo::new(stream),
            service_fn(move |_req| {
                ServiceCounters::bump(&svc.counters.requests);
                svc.counters.error(ErrorKind::Overload);
                std::future::ready(Ok::<_, std::convert::Infallible>(proxy::overloaded()))
            }),
        )
        .await;
    if let Err(e) = result {
        tracing::debug!(error = %e, "client connection ended with an error");
    }
}

/// Serves one client connection: every request on it until it closes, or
/// (`over` the connection limit) one 503 and close.
async fn connection(
    stream: tokio::net::TcpStream,
    peer: std::net::SocketAddr,
    service: Rc<Service>,
    over: bool,
) {
    let builder = builder(&service.plan.limits, over);
    if service.plan.sticky.is_some() && !over {
        return super::relay::connection(stream, peer, service, builder).await;
    }
    let io = TokioIo::new(stream);
    let result = if over {
        let service = service.clone();
        builder
            .serve_connection(
                io,
                service_fn(move |_req| {
                    ServiceCounters::bump(&service.counters.requests);
                    service.counters.error(ErrorKind::Overload);
                    std::future::ready(Ok::<_, std::convert::Infallible>(proxy::overloaded()))
                }),
            )
            .await
    } else {
        let service = service.clone();
        builder
            .serve_connection(
                io,
                service_fn(move |req| proxy::handle(service.clone(), req)),
            )
            .with_upgrades()
            .await
    };
    if let Err(e) = result {
        connection_ended(&service.counters, &e);
    }
}

/// A client connection that ended in error `e`. A head the HTTP library
/// could not parse was answered by it (400, or 431 past its bounds: the
/// service's `max_headers`, or far past `max_head_bytes`): counted here as a
/// request and a refusal.
pub(super) fn connection_ended(counters: &ServiceCounters, e: &hyper::Error) {
    if e.is_parse_too_large() {
        ServiceCounters::bump(&counters.requests);
        counters.error(ErrorKind::Refusal("head_too_large"));
    } else if e.is_parse() {
        ServiceCounters::bump(&counters.requests);
        counters.error(ErrorKind::Refusal("bad_request"));
    }
    tracing::debug!(error = %e, "client connection ended with an error");
}
