//! One request through a proxy worker: the head classified, refused or
//! routed, the request forwarded (bodies stream both ways), failover to the
//! next member in order, and every answer counted.
//!
//! Guarantees: no input panics; every request gets an answer (the
//! upstream's, or an error with its status and counter); a request whose
//! body has started to flow upstream is never sent to a second upstream;
//! a request that received a response byte is never retried.

use std::borrow::Cow;
use std::cell::{Cell, RefCell};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use http_body_util::{Either, Empty, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::http::request::Parts;
use hyper::http::uri::{Authority, PathAndQuery, Scheme};
use hyper::{Method, Request, Response, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use shoal_dataplane::array::member::Sender;
use shoal_dataplane::array::{
    classify, member, seen, ArrayPage, Decision, Form, HeadView, Order, Refusal, RequestTarget,
    MEMBER_HEADER,
};
use tokio::sync::mpsc;

use super::counters::{ErrorKind, ServiceCounters};
use super::health::Report;
use super::mux::Mux;
use super::tunnel;
use super::upstream::{self, CheckIn, Pool, Returning, UpBody};
use super::view::{Snapshot, ViewCell};
use super::{ServicePlan, Upstreams, MEMBER_SKEW_MS};
use crate::tools::carp::{pac, table_at};

/// The body of a response to a client: the upstream's, or our own.
pub(super) type ClientBody = Either<Returning, Full<Bytes>>;

/// The header naming the member (or parent) whose backend answered.
pub const SERVED_BY: &str = "x-shoal-served-by";
/// [`SERVED_BY`] as a header name.
pub(super) const SERVED_BY_NAME: HeaderName = HeaderName::from_static(SERVED_BY);
/// The header a member adds to a 503 when its `local` does not answer.
pub const UNAVAILABLE: &str = "shoal-unavailable";

/// Headers that concern one connection only (RFC 9110 §7.6.1), never
/// forwarded; the member header is removed too and added back only on a
/// hop this member makes.
pub(super) const HOP_BY_HOP: [HeaderName; 10] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHORIZATION,
    header::PROXY_AUTHENTICATE,
    MEMBER_NAME,
];

/// [`MEMBER_HEADER`] as a header name.
pub(super) const MEMBER_NAME: HeaderName = HeaderName::from_static(MEMBER_HEADER);
/// Who sent a request with `headers`, `method` and `target` as received,
/// by its member header under the service's key and port at `now_ms`
/// ([`member::sender`]).
pub(super) fn member_sender(
    plan: &ServicePlan,
    headers: &HeaderMap,
    method: &[u8],
    target: &[u8],
    now_ms: u64,
) -> Sender {
    member::sender(
        headers
            .get_all(MEMBER_NAME)
            .iter()
            .map(HeaderValue::as_bytes),
        &plan.key,
        plan.port,
        method,
        target,
        now_ms,
        MEMBER_SKEW_MS,
    )
}
/// RFC 8586's `CDN-Loop`.
pub(super) const CDN_LOOP: HeaderName = HeaderName::from_static("cdn-loop");

/// One service as one worker serves it.
pub(super) struct Service {
    pub plan: Arc<ServicePlan>,
    pub view: Arc<ViewCell>,
    pub cached: RefCell<(u64, Arc<Snapshot>)>,
    pub counters: Arc<ServiceCounters>,
    pub pool: Rc<Pool>,
    /// A sticky service's hop tunnels, by owner address.
    pub tunnels: Rc<Pool>,
    /// Owners that refused a hop tunnel, and when: their hops are signed
    /// request by request for [`UNTUNNELED_FOR`].
    pub untunneled: RefCell<std::collections::HashMap<SocketAddr, std::time::Instant>>,
    /// A sticky service's multiplexed hops, one per owner address: its hop
    /// tunnels are streams on it.
    pub mux: RefCell<std::collections::HashMap<SocketAddr, MuxEntry>>,
    /// Owners that refused a multiplexed hop, and when: their tunnels get
    /// a connection each for [`UNTUNNELED_FOR`] (a member of an earlier
    /// release during a rolling upgrade).
    pub unmuxed: RefCell<std::collections::HashMap<SocketAddr, std::time::Instant>>,
    pub reports: mpsc::Sender<Report>,
}

/// A worker's multiplexed hop to one owner.
pub(super) enum MuxEntry {
    /// Being opened; woken when the opening ends, however it ends.
    Opening(Rc<tokio::sync::Notify>),
    /// Open (until it fails).
    Open(Mux),
}

/// Ends an opening [`Service::hop_mux`] started, also when the request
/// that started it is dropped half-way: its `Opening` entry removed (unless
/// the opening replaced it) and every request waiting on it woken.
struct OpeningGuard<'a> {
    map: &'a RefCell<std::collections::HashMap<SocketAddr, MuxEntry>>,
    addr: SocketAddr,
    notify: Rc<tokio::sync::Notify>,
}

impl Drop for OpeningGuard<'_> {
    fn drop(&mut self) {
        let mut map = self.map.borrow_mut();
        if let Some(MuxEntry::Opening(n)) = map.get(&self.addr) {
            if Rc::ptr_eq(n, &self.notify) {
                map.remove(&self.addr);
            }
        }
        self.notify.notify_waiters();
    }
}

/// Whether `addr` is in `refused` from less than [`UNTUNNELED_FOR`] ago
/// (an older entry is removed).
fn refused_within(
    refused: &RefCell<std::collections::HashMap<SocketAddr, std::time::Instant>>,
    addr: SocketAddr,
) -> bool {
    let mut refused = refused.borrow_mut();
    match refused.get(&addr) {
        Some(at) if at.elapsed() < UNTUNNELED_FOR => true,
        Some(_) => {
            refused.remove(&addr);
            false
        }
        None => false,
    }
}

/// How long an owner that refused a hop tunnel gets signed hops before
/// the next tunnel is tried (a member that does not open tunnels, or whose
/// view of this member's address differs, such as behind a NAT).
pub(super) const UNTUNNELED_FOR: Duration = Duration::from_secs(60);

impl Service {
    /// Whether hops to `addr` are signed one by one for now: it refused a
    /// tunnel less than [`UNTUNNELED_FOR`] ago.
    pub(super) fn untunneled(&self, addr: SocketAddr) -> bool {
        refused_within(&self.untunneled, addr)
    }

    /// A new hop tunnel to the owner at `addr`: a stream on this worker's
    /// multiplexed hop to it (opened when there is none, or again once if
    /// the one kept turns out gone), or a connection of its own when that
    /// hop is full or the owner refused multiplexed hops less than
    /// [`UNTUNNELED_FOR`] ago.
    async fn connect_hop(
        &self,
        addr: SocketAddr,
        tls: Option<&tokio_rustls::TlsConnector>,
        open: &upstream::TunnelOpen<'_>,
    ) -> Result<SendRequest<UpBody>, upstream::ConnectError> {
        let timeout = self.plan.connect_timeout();
        for attempt in 0..2 {
            let mux = match self.hop_mux(addr, tls, open).await? {
                Some(m) if !m.full() => m,
                // Refused, or as many tunnels on it as it takes: one of its own.
                _ => return upstream::connect_tunnel(addr, timeout, tls, open).await,
            };
            match tokio::time::timeout(timeout, upstream::connect_stream(&mux)).await {
                // The hop failed since it was last used: once more, on a new one.
                Ok(Err(upstream::ConnectError::Io(_))) if attempt == 0 => {}
                Ok(made) => return made,
                Err(_) => return Err(upstream::ConnectError::Timeout),
            }
        }
        Err(upstream::ConnectError::Io(
            std::io::ErrorKind::ConnectionReset.into(),
        ))
    }

    /// This worker's multiplexed hop to `addr`: the one open, else one
    /// opened now (requests that need it meanwhile wait for that opening
    /// rather than open their own); `None` when the owner refuses them.
    pub(super) async fn hop_mux(
        &self,
        addr: SocketAddr,
        tls: Option<&tokio_rustls::TlsConnector>,
        open: &upstream::TunnelOpen<'_>,
    ) -> Result<Option<Mux>, upstream::ConnectError> {
        let timeout = self.plan.connect_timeout();
        loop {
            if refused_within(&self.unmuxed, addr) {
                return Ok(None);
            }
            let opening = match self.mux.borrow().get(&addr) {
                Some(MuxEntry::Open(m)) if !m.failed() => return Ok(Some(m.clone())),
                Some(MuxEntry::Opening(n)) => n.clone(),
                _ => break,
            };
            // Created before anything else runs: the opener's wake-up
            // cannot be missed.
            let woken = opening.notified();
            tokio::time::timeout(timeout, woken)
                .await
                .map_err(|_| upstream::ConnectError::Timeout)?;
        }
        let notify = Rc::new(tokio::sync::Notify::new());
        self.mux
            .borrow_mut()
            .insert(addr, MuxEntry::Opening(notify.clone()));
        let _opening = OpeningGuard {
            map: &self.mux,
            addr,
            notify,
        };
        let idle = Duration::from_secs(u64::from(self.plan.limits.idle_timeout_s));
        match upstream::connect_mux(addr, timeout, tls, open, idle).await {
            Ok(m) => {
                self.counters
                    .sticky
                    .muxes_out
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                self.mux
                    .borrow_mut()
                    .insert(addr, MuxEntry::Open(m.clone()));
                Ok(Some(m))
            }
            Err(upstream::ConnectError::Refused(status @ 400..=499)) => {
                tracing::info!(%addr, status, "the member refused a multiplexed hop: a connection per hop tunnel for a minute");
                self.unmuxed
                    .borrow_mut()
                    .insert(addr, std::time::Instant::now());
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// The view in force (one atomic load unless it moved).
    pub(super) fn snapshot(&self) -> Arc<Snapshot> {
        let mut cached = self.cached.borrow_mut();
        self.view.load(&mut cached);
        cached.1.clone()
    }

    /// Tells the health thread member `i` failed on the request path.
    pub(super) fn failed(&self, i: usize) {
        let _ = self.reports.try_send(Report {
            service: self.plan.index,
            member: i,
        });
    }
}

/// Where one attempt goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Hop {
    /// This host's `local` backend; `Some(i)`: as member `i` (routed).
    Local(Option<usize>),
    /// Member `i` at its dedicated address, with the member header.
    Member(usize),
    /// Parent `i`.
    Parent(usize),
    /// The origin itself (`members = "parents"`, direct or exception).
    Origin,
}

/// The hops of one request, in order: one, or a route's members taken
/// from the [`Order`] one at a time, so a request whose owner answers
/// never computes its fallbacks. It lives on the request's stack for the
/// request's life: boxing the order would cost an allocation per request.
#[expect(
    clippy::large_enum_variant,
    reason = "one per request, on its stack; a Box would allocate per request"
)]
enum Hops<'s> {
    /// A single hop (this host's `local`, the origin), until taken.
    One(Option<Hop>),
    /// The route's members, owner first, down members skipped.
    Route {
        order: Order<'s>,
        upstreams: &'s Upstreams,
    },
}

impl Iterator for Hops<'_> {
    type Item = Hop;

    fn next(&mut self) -> Option<Hop> {
        match self {
            Hops::One(hop) => hop.take(),
            Hops::Route { order, upstreams } => {
                let i = order.next()?;
                Some(match upstreams {
                    Upstreams::Cluster { own, .. } if *own == i => Hop::Local(Some(i)),
                    Upstreams::Cluster { .. } => Hop::Member(i),
                    Upstreams::Parents => Hop::Parent(i),
                })
            }
        }
    }
}

/// An error answered to the client.
pub(super) fn answer(status: StatusCode, text: &str) -> Response<ClientBody> {
    let mut r = Response::new(Either::Right(Full::new(Bytes::from(format!("{text}\n")))));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(TEXT_PLAIN));
    r
}

/// The content type of the tier's own answers ([`answer`], and the
/// sticky relay's).
pub(super) const TEXT_PLAIN: &str = "text/plain; charset=utf-8";

/// The answer beyond `max_connections`.
pub(super) fn overloaded() -> Response<ClientBody> {
    let mut r = answer(StatusCode::SERVICE_UNAVAILABLE, "too many connections");
    r.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    r
}

pub(super) fn refused(service: &Service, refusal: Refusal) -> Response<ClientBody> {
    service
        .counters
        .error(ErrorKind::Refusal(refusal.counter()));
    let status = StatusCode::from_u16(refusal.status()).unwrap_or(StatusCode::BAD_REQUEST);
    answer(status, &refusal.to_string())
}

/// The answer to a request that failed upstream: counted for the service
/// and against `member`, the member last tried (if any).
pub(super) fn failure(
    service: &Service,
    kind: ErrorKind,
    member: Option<usize>,
) -> Response<ClientBody> {
    service.counters.error_at(kind, member);
    match kind {
        ErrorKind::Timeout => answer(StatusCode::GATEWAY_TIMEOUT, "upstream timed out"),
        _ => answer(StatusCode::BAD_GATEWAY, "no upstream could be reached"),
    }
}

/// Wall-clock milliseconds since the Unix epoch (the member header's time).
pub(super) fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Whether a request already passed this member: `Via` or `CDN-Loop`
/// names `own_name` (a loop).
pub(super) fn looped(own_name: &str, headers: &HeaderMap) -> bool {
    seen(
        own_name,
        headers
            .get_all(header::VIA)
            .iter()
            .map(HeaderValue::as_bytes),
        headers.get_all(CDN_LOOP).iter().map(HeaderValue::as_bytes),
    )
}

/// The bytes a head took on the wire, as near as the parsed parts tell:
/// request line and every field line with their line ends.
pub(super) fn head_bytes(parts: &Parts, target: &str) -> usize {
    let fields: usize = parts
        .headers
        .iter()
        .map(|(n, v)| n.as_str().len() + 2 + v.len() + 2)
        .sum();
    parts.method.as_str().len() + 1 + target.len() + 10 + fields + 2
}

/// The longest URI the `http` crate parses.
const MAX_URI_LEN: usize = u16::MAX as usize - 1;

/// The absolute-form URI an origin-form request with `Host` goes upstream
/// as: `http://`, the host (bracketed when an IPv6 literal came bare) and
/// explicit port of `t`, then `target` as received (`path_and_query`, its
/// parsed form). `None` when that is no URI. One allocation: the
/// authority; the path and query are shared with the received URI.
fn reverse_uri(
    path_and_query: Option<&PathAndQuery>,
    target: &str,
    t: &RequestTarget<'_>,
) -> Option<Uri> {
    let path_and_query = path_and_query.filter(|p| p.as_str() == target && target.starts_with('/'));
    let Some(path_and_query) = path_and_query else {
        // Not a received origin-form target: the URI as text.
        let host = String::from_utf8_lossy(t.host());
        let host = if host.contains(':') && !host.starts_with('[') {
            Cow::Owned(format!("[{host}]"))
        } else {
            host
        };
        let authority = match t.port() {
            Some(p) => format!("{host}:{p}"),
            None => host.into_owned(),
        };
        return format!("http://{authority}{target}").parse().ok();
    };
    let host = t.host();
    let bracket = host.contains(&b':') && host.first() != Some(&b'[');
    let mut port = [0u8; 6];
    let port = match t.port() {
        Some(p) => {
            let mut at = port.len();
            let mut n = p;
            loop {
                at -= 1;
                port[at] = b'0' + (n % 10) as u8;
                n /= 10;
                if n == 0 {
                    break;
                }
            }
            at -= 1;
            port[at] = b':';
            &port[at..]
        }
        None => &[][..],
    };
    let len = host.len() + 2 * usize::from(bracket) + port.len();
    if "http://".len() + len + target.len() > MAX_URI_LEN {
        return None;
    }
    let mut authority = BytesMut::with_capacity(len);
    if bracket {
        authority.put_u8(b'[');
    }
    authority.put_slice(host);
    if bracket {
        authority.put_u8(b']');
    }
    authority.put_slice(port);
    let mut uri = hyper::http::uri::Parts::default();
    uri.scheme = Some(Scheme::HTTP);
    uri.authority = Some(Authority::from_maybe_shared(authority.freeze()).ok()?);
    uri.path_and_query = Some(path_and_query.clone());
    Uri::from_parts(uri).ok()
}

/// Whether the request carries no body (none announced).
pub(super) fn bodiless(headers: &HeaderMap) -> bool {
    !headers.contains_key(header::TRANSFER_ENCODING)
        && headers
            .get(header::CONTENT_LENGTH)
            .is_none_or(|v| v.as_bytes() == b"0")
}

/// Serves one request (see the module docs).
pub(super) async fn handle(
    service: Rc<Service>,
    req: Request<Incoming>,
) -> Result<Response<ClientBody>, Infallible> {
    ServiceCounters::bump(&service.counters.requests);
    let start = std::time::Instant::now();
    let served = Cell::new(None);
    let response = serve(&service, req, &served).await;
    service.counters.observe(start.elapsed(), served.get());
    Ok(response)
}

/// `served` ends as the member this host routed the request to last (none
/// for a request that hopped in, a direct or an exception).
async fn serve(
    service: &Service,
    req: Request<Incoming>,
    served: &Cell<Option<usize>>,
) -> Response<ClientBody> {
    let plan = &*service.plan;
    let (mut parts, body) = req.into_parts();
    // The target as received: origin-form as is, other forms as the URI
    // prints (scheme lower-cased by the parser).
    let target: Cow<'_, str> = match (
        parts.uri.scheme(),
        parts.uri.authority(),
        parts.uri.path_and_query(),
    ) {
        (None, None, Some(p)) => Cow::Borrowed(p.as_str()),
        (None, Some(a), _) if parts.method == Method::CONNECT => Cow::Borrowed(a.as_str()),
        _ => Cow::Owned(parts.uri.to_string()),
    };
    let mut hosts = parts.headers.get_all(header::HOST).iter();
    let host = hosts.next().map(HeaderValue::as_bytes);
    let head = HeadView {
        method: parts.method.as_str().as_bytes(),
        target: target.as_bytes(),
        host,
        host_count: usize::from(host.is_some()) + hosts.count(),
        head_bytes: head_bytes(&parts, &target),
        header_count: parts.headers.len(),
    };
    let form = match classify(&head, &plan.head_limits, &plan.limits.connect_ports) {
        Ok(f) => f,
        Err(r) => return refused(service, r),
    };
    if looped(&plan.own_name, &parts.headers) {
        return refused(service, Refusal::Loop);
    }
    let hop_in = match member_sender(
        plan,
        &parts.headers,
        parts.method.as_str().as_bytes(),
        target.as_bytes(),
        wall_ms(),
    ) {
        Sender::Absent => false,
        Sender::Member(_) => matches!(plan.upstreams, Upstreams::Cluster { .. }),
        Sender::Forged => return refused(service, Refusal::ForgedMember),
    };
    let snapshot = service.snapshot();
    // The target sent upstream: as received, but origin-form becomes
    // absolute-form (every upstream but an origin is a proxy).
    let (route, uri) = match &form {
        Form::Array(page) => {
            ServiceCounters::bump(&service.counters.pages);
            return page_answer(plan, &snapshot, *page);
        }
        Form::Connect(t) | Form::Forward(t) => (t, parts.uri.clone()),
        Form::Reverse(t) => match reverse_uri(parts.uri.path_and_query(), &target, t) {
            Some(u) => (t, u),
            None => return refused(service, Refusal::BadRequest("malformed Host header")),
        },
    };
    let mut hops = if hop_in {
        ServiceCounters::bump(&service.counters.hops_in);
        Hops::One(Some(Hop::Local(None)))
    } else {
        match snapshot.array.router.decide(route) {
            Decision::Direct | Decision::Exception => match plan.upstreams {
                Upstreams::Cluster { .. } => Hops::One(Some(Hop::Local(None))),
                Upstreams::Parents => Hops::One(Some(Hop::Origin)),
            },
            Decision::Route(order) => Hops::Route {
                order,
                upstreams: &plan.upstreams,
            },
        }
    }
    .peekable();
    let origin = match hops.peek() {
        Some(Hop::Origin) => {
            let port = route.port().unwrap_or(80);
            let host = String::from_utf8_lossy(route.host()).into_owned();
            Some((host, port))
        }
        _ => None,
    };
    let connect = parts.method == Method::CONNECT;
    // The head sent upstream: hop-by-hop fields removed, `Via` added.
    let mut headers = std::mem::take(&mut parts.headers);
    strip_hop_by_hop(&mut headers);
    headers.append(header::VIA, plan.via.clone());
    if !headers.contains_key(header::HOST) {
        if let Some(a) = uri.authority() {
            if let Ok(v) = HeaderValue::from_str(a.as_str()) {
                headers.insert(header::HOST, v);
            }
        }
    }
    // Signed once, on the first hop to another member.
    let mut signature: Option<HeaderValue> = None;
    let on_upgrade = if connect {
        parts.extensions.remove::<hyper::upgrade::OnUpgrade>()
    } else {
        None
    };
    let retriable = bodiless(&headers);
    let mut body = if retriable { None } else { Some(body) };
    let attempt = Attempt {
        method: parts.method.clone(),
        uri,
        headers,
        connect,
    };
    let mut tried_any = false;
    while let Some(hop) = hops.next() {
        let hop = &hop;
        if tried_any {
            service.counters.failed_over(served.get());
        }
        tried_any = true;
        let (addr, member_index) = match *hop {
            Hop::Local(i) => match plan.upstreams {
                Upstreams::Cluster { local, .. } => (Some(local), i),
                Upstreams::Parents => (None, i),
            },
            Hop::Member(i) | Hop::Parent(i) => (plan.addresses.get(i).copied().flatten(), Some(i)),
            Hop::Origin => (None, None),
        };
        served.set(member_index.filter(|_| !hop_in));
        let addr = match (addr, &origin) {
            (Some(a), _) => a,
            (None, Some((host, port))) => match resolve(host, *port).await {
                Some(a) => a,
                None => return failure(service, ErrorKind::Unreachable, served.get()),
            },
            (None, None) => continue,
        };
        let request_body: UpBody = if retriable {
            Either::Right(Empty::new())
        } else {
            match body.take() {
                Some(b) => Either::Left(b),
                None => return failure(service, ErrorKind::Unreachable, served.get()),
            }
        };
        if *hop == Hop::Origin && connect {
            return tunnel_direct(service, addr, on_upgrade).await;
        }
        let mut request_body = Some(request_body);
        let mut fresh = attempt.connect;
        let outcome = loop {
            let body = request_body
                .take()
                .unwrap_or_else(|| Either::Right(Empty::new()));
            let mut request = attempt.build(body, *hop == Hop::Origin);
            if let Hop::Member(_) = hop {
                let sig = signature.get_or_insert_with(|| {
                    HeaderValue::from_str(&member::sign(
                        &plan.key,
                        plan.own_host.get(),
                        plan.port,
                        wall_ms(),
                        attempt.method.as_str().as_bytes(),
                        attempt.uri.to_string().as_bytes(),
                    ))
                    .unwrap_or_else(|_| HeaderValue::from_static("unsigned"))
                });
                request.headers_mut().insert(MEMBER_NAME, sig.clone());
            }
            match exchange(service, addr, request, fresh, None).await.0 {
                // A kept-alive connection the upstream had closed: the
                // same upstream again, over a new connection.
                Exchange::Failed { pooled: true } if retriable && !fresh => fresh = true,
                other => break other,
            }
        };
        match outcome {
            Exchange::Answered(mut resp, check_in) => {
                if matches!(hop, Hop::Member(_))
                    && resp.status() == StatusCode::SERVICE_UNAVAILABLE
                    && resp.headers().contains_key(UNAVAILABLE)
                    && retriable
                    && hops.peek().is_some()
                {
                    blame(service, *hop);
                    continue;
                }
                match hop {
                    Hop::Local(_) => ServiceCounters::bump(&service.counters.local),
                    Hop::Member(_) => ServiceCounters::bump(&service.counters.hops_out),
                    Hop::Parent(_) | Hop::Origin => {}
                }
                if let (Some(i), false) = (member_index, hop_in) {
                    service.counters.routed_to(i, matches!(hop, Hop::Member(_)));
                }
                let served_by = match hop {
                    Hop::Local(_) | Hop::Origin => plan.own_name_value.as_ref(),
                    Hop::Parent(i) => plan.name_values.get(*i).and_then(Option::as_ref),
                    Hop::Member(_) => None,
                };
                let tunnel = connect.then(|| plan.idle_timeout());
                if let Err(why) = relay(&mut resp, &plan.via, served_by, on_upgrade, tunnel) {
                    service
                        .counters
                        .error_at(ErrorKind::Unreachable, served.get());
                    return answer(StatusCode::BAD_GATEWAY, why);
                }
                return resp.map(|b| Either::Left(Returning::new(b, check_in)));
            }
            Exchange::NotSent(returned) => {
                // Nothing reached the upstream: the next one gets the same
                // request, body included.
                blame(service, *hop);
                if let Some(Either::Left(b)) = returned.map(Request::into_body) {
                    body = Some(b);
                }
            }
            Exchange::Failed { .. } => {
                blame(service, *hop);
                if !retriable {
                    return failure(service, ErrorKind::Unreachable, served.get());
                }
            }
            Exchange::TimedOut => {
                blame(service, *hop);
                return failure(service, ErrorKind::Timeout, served.get());
            }
        }
    }
    if hop_in {
        // The sending member tries the next in order.
        service.counters.error(ErrorKind::Unreachable);
        let mut r = answer(StatusCode::SERVICE_UNAVAILABLE, "local backend unreachable");
        r.headers_mut()
            .insert(UNAVAILABLE, HeaderValue::from_static("local"));
        return r;
    }
    failure(service, ErrorKind::Unreachable, served.get())
}

/// Reports the member behind `hop` failed on the request path: the member
/// or parent, or this host's own member when its `local` failed.
fn blame(service: &Service, hop: Hop) {
    match (hop, &service.plan.upstreams) {
        (Hop::Member(i) | Hop::Parent(i) | Hop::Local(Some(i)), _) => service.failed(i),
        (Hop::Local(None), Upstreams::Cluster { own, .. }) => service.failed(*own),
        _ => {}
    }
}

/// The head of the request sent upstream, rebuilt for each attempt.
struct Attempt {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    connect: bool,
}

impl Attempt {
    /// The request for one attempt; `origin_form` for an origin server.
    fn build(&self, body: UpBody, origin_form: bool) -> Request<UpBody> {
        let mut r = Request::new(body);
        *r.method_mut() = self.method.clone();
        *r.uri_mut() = if origin_form && !self.connect {
            self.uri
                .path_and_query()
                .and_then(|p| p.as_str().parse().ok())
                .unwrap_or_else(|| Uri::from_static("/"))
        } else {
            self.uri.clone()
        };
        *r.headers_mut() = self.headers.clone();
        r
    }
}

/// What one attempt came to.
pub(super) enum Exchange {
    /// A response head arrived; its connection goes back to the pool
    /// per the check-in once its body was read.
    Answered(Response<Incoming>, Option<CheckIn>),
    /// Nothing was sent; the request comes back when it can.
    NotSent(Option<Request<UpBody>>),
    /// The request went out (perhaps in part) and no response head came;
    /// `pooled` when over a kept-alive connection.
    Failed {
        /// Whether the connection came from the pool.
        pooled: bool,
    },
    /// No response head within `first_byte_timeout_ms`.
    TimedOut,
}

/// Whether one [`exchange`] opened a connection of its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Opened {
    /// No: a pooled connection served, or the connect failed.
    No,
    /// A new connection (with `tunnel`, a hop tunnel) was made.
    New,
    /// The owner answered a hop tunnel's opening with this status instead
    /// of `101`; the request came back unsent.
    Refused(u16),
}

/// Sends `request` to `addr`: over an idle pooled connection when there is
/// one (and again over a new one if that connection turns out closed before
/// the request left), else over a new connection. `fresh` (always for
/// `CONNECT`) asks for a connection of its own, never pooled after.
///
/// With `tunnel`, `addr` is a sticky owner's dedicated address and the
/// request goes over a hop tunnel to its application (the tunnels have a
/// pool of their own). Besides the outcome, says whether a connection was
/// opened for it (or the opening refused), for the caller to count.
pub(super) async fn exchange(
    service: &Service,
    addr: SocketAddr,
    request: Request<UpBody>,
    fresh: bool,
    tunnel: Option<&upstream::TunnelOpen<'_>>,
) -> (Exchange, Opened) {
    let plan = &service.plan;
    let first_byte = Duration::from_millis(u64::from(plan.limits.first_byte_timeout_ms));
    let pool = if tunnel.is_some() {
        &service.tunnels
    } else {
        &service.pool
    };
    let mut request = request;
    let mut pooled = if fresh { None } else { pool.take(addr) };
    let mut opened = Opened::No;
    loop {
        let from_pool = pooled.is_some();
        let mut sender: SendRequest<UpBody> = match pooled.take() {
            Some(s) => s,
            None => {
                let (timeout, tls) = (plan.connect_timeout(), plan.hop_tls(addr));
                // Boxed: a connect's future (a TLS handshake's state) is
                // large, and held inline it would be copied into every
                // request's future, connect or not.
                let made = match tunnel {
                    None => Box::pin(upstream::connect_tls(addr, timeout, tls)).await,
                    Some(open) => Box::pin(service.connect_hop(addr, tls, open)).await,
                };
                match made {
                    Ok(s) => {
                        opened = Opened::New;
                        s
                    }
                    Err(e) => {
                        tracing::debug!(%addr, error = %e, "upstream unreachable");
                        if let upstream::ConnectError::Refused(status) = e {
                            opened = Opened::Refused(status);
                        }
                        return (Exchange::NotSent(Some(request)), opened);
                    }
                }
            }
        };
        match super::coarse::timeout(first_byte, sender.try_send_request(request)).await {
            Err(_) => return (Exchange::TimedOut, opened),
            Ok(Ok(resp)) => {
                let check_in = (!fresh).then(|| CheckIn {
                    pool: pool.clone(),
                    addr,
                    sender,
                });
                return (Exchange::Answered(resp, check_in), opened);
            }
            Ok(Err(mut e)) => match e.take_message() {
                Some(back) if from_pool => request = back,
                Some(back) => return (Exchange::NotSent(Some(back)), opened),
                None => {
                    tracing::debug!(%addr, error = %e.into_error(), "upstream failed");
                    return (Exchange::Failed { pooled: from_pool }, opened);
                }
            },
        }
    }
}

/// Readies an upstream response for the client: hop-by-hop fields removed,
/// this member's `Via` entry added, `x-shoal-served-by` set (kept from the owner on a hop), and for a
/// successful `CONNECT` (`tunnel` is its idle time) the tunnel spliced.
/// `Err` says why a 502 is to be given instead.
fn relay(
    resp: &mut Response<Incoming>,
    via: &HeaderValue,
    served_by: Option<&HeaderValue>,
    client_upgrade: Option<hyper::upgrade::OnUpgrade>,
    tunnel: Option<Duration>,
) -> Result<(), &'static str> {
    strip_hop_by_hop(resp.headers_mut());
    resp.headers_mut().append(header::VIA, via.clone());
    if let Some(name) = served_by {
        resp.headers_mut().insert(SERVED_BY_NAME, name.clone());
    }
    if let Some(idle) = tunnel.filter(|_| resp.status().is_success()) {
        let Some(client) = client_upgrade else {
            return Err("tunnel not available");
        };
        let upstream = hyper::upgrade::on(&mut *resp);
        tokio::task::spawn_local(async move {
            let (Ok(client), Ok(upstream)) = (client.await, upstream.await) else {
                return;
            };
            let ended = tunnel::splice(TokioIo::new(client), TokioIo::new(upstream), idle).await;
            tracing::debug!(?ended, "tunnel through a member ended");
        });
    }
    Ok(())
}

/// A `CONNECT` the origin serves itself (`members = "parents"`, a direct
/// or exception host): a TCP connection to `addr`, 200 to the client, then
/// bytes copied both ways.
async fn tunnel_direct(
    service: &Service,
    addr: SocketAddr,
    client: Option<hyper::upgrade::OnUpgrade>,
) -> Response<ClientBody> {
    let stream = match upstream::tcp(addr, service.plan.connect_timeout()).await {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!(%addr, error = %e, "CONNECT target unreachable");
            return failure(service, ErrorKind::Unreachable, None);
        }
    };
    let Some(client) = client else {
        return failure(service, ErrorKind::Unreachable, None);
    };
    let idle = service.plan.idle_timeout();
    tokio::task::spawn_local(async move {
        let Ok(client) = client.await else {
            return;
        };
        let ended = tunnel::splice(TokioIo::new(client), stream, idle).await;
        tracing::debug!(%addr, ?ended, "tunnel to the origin ended");
    });
    let mut r = Response::new(Either::Right(Full::new(Bytes::new())));
    if let Some(name) = &service.plan.own_name_value {
        r.headers_mut().insert(SERVED_BY_NAME, name.clone());
    }
    r
}

/// Removes hop-by-hop fields, those the `Connection` field names included.
pub(super) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One pass over the names finds which hop-by-hop fields are present
    // (most heads carry `Connection` at most): only those are removed, so
    // a head pays no hash lookup for the fields it lacks, and the fields a
    // `Connection` names (such as `keep-alive`) are removed with the
    // others, without a name made.
    let present = present_of(headers, &HOP_BY_HOP);
    if present == 0 {
        return;
    }
    if present & 1 != 0 {
        // `Connection` (first in HOP_BY_HOP) may name other fields.
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|n| {
                !HOP_BY_HOP
                    .iter()
                    .any(|h| n.eq_ignore_ascii_case(h.as_str()))
            })
            .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
            .collect();
        for n in named {
            headers.remove(n);
        }
    }
    remove_present(headers, &HOP_BY_HOP, present);
}

/// Which of `names` (at most 32) `headers` holds, as a bit set (bit `i`:
/// `names[i]`), from one pass over its names.
pub(super) fn present_of(headers: &HeaderMap, names: &[HeaderName]) -> u32 {
    let mut present = 0u32;
    for k in headers.keys() {
        if let Some(i) = names.iter().position(|n| n == k) {
            present |= 1 << i;
        }
    }
    present
}

/// Removes the fields of `names` that `present` (from [`present_of`])
/// marks.
pub(super) fn remove_present(headers: &mut HeaderMap, names: &[HeaderName], present: u32) {
    for (i, n) in names.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(n);
        }
    }
}

/// The first address `host:port` resolves to.
async fn resolve(host: &str, port: u16) -> Option<SocketAddr> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    tokio::net::lookup_host((host, port)).await.ok()?.next()
}

/// An array page from the live view.
pub(super) fn page_answer(
    plan: &ServicePlan,
    snapshot: &Snapshot,
    page: ArrayPage,
) -> Response<ClientBody> {
    let (status, text) = match page {
        ArrayPage::Table => (
            StatusCode::OK,
            table_at(
                &snapshot.array,
                snapshot.epoch,
                &snapshot.state_times_s(plan.now_ms()),
            ),
        ),
        ArrayPage::Script => (StatusCode::OK, pac(&snapshot.array)),
        ArrayPage::Health if snapshot.local_up => (StatusCode::OK, "up\n".into()),
        ArrayPage::Health => (
            StatusCode::SERVICE_UNAVAILABLE,
            "local backend down\n".into(),
        ),
    };
    let mut r = Response::new(Either::Right(Full::new(Bytes::from(text))));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(page.content_type()),
    );
    if status == StatusCode::SERVICE_UNAVAILABLE {
        r.headers_mut()
            .insert(UNAVAILABLE, HeaderValue::from_static("local"));
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_fields_and_those_connection_names_are_removed() {
        let mut h = HeaderMap::new();
        for (n, v) in [
            ("connection", "keep-alive, x-private"),
            ("keep-alive", "timeout=5"),
            ("x-private", "1"),
            ("proxy-connection", "keep-alive"),
            ("transfer-encoding", "chunked"),
            ("shoal-member", "v1.1.2.00"),
            ("host", "a.test"),
            ("accept", "*/*"),
        ] {
            h.append(n, HeaderValue::from_static(v));
        }
        strip_hop_by_hop(&mut h);
        let mut left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["accept", "host"]);
    }

    #[test]
    fn connection_names_are_removed_in_any_case_and_other_heads_are_kept() {
        let mut h = HeaderMap::new();
        for (n, v) in [
            ("connection", "Close, KEEP-ALIVE, X-Private, ,"),
            ("close", "1"),
            ("x-private", "1"),
            ("keep-alive", "timeout=5"),
            ("shoal-member", "v1"),
            ("server", "s"),
        ] {
            h.append(n, HeaderValue::from_static(v));
        }
        strip_hop_by_hop(&mut h);
        let left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        assert_eq!(left, ["server"]);
        let mut h = HeaderMap::new();
        h.append(header::HOST, HeaderValue::from_static("a.test"));
        h.append(header::ACCEPT, HeaderValue::from_static("*/*"));
        h.append(header::ACCEPT, HeaderValue::from_static("text/html"));
        let before = h.clone();
        strip_hop_by_hop(&mut h);
        assert_eq!(h, before);
    }

    #[test]
    fn a_reverse_uri_is_the_text_form_parsed() {
        let cases: [(&[u8], Option<u16>, &str); 7] = [
            (b"a.test", None, "/"),
            (b"A.Test", Some(8080), "/x/y?q=1&r"),
            (b"[::1]", Some(80), "/p"),
            (b"10.0.0.1", Some(0), "/%20a"),
            (b"a{b", None, "/"),
            (b"caf\xc3\xa9", None, "/"),
            (b"\xff", Some(1), "/"),
        ];
        for (host, port, target) in cases {
            let t = RequestTarget::from_parts(b"http", host, port, b"/", None).unwrap();
            let authority = {
                let h = String::from_utf8_lossy(host);
                match port {
                    Some(p) => format!("{h}:{p}"),
                    None => h.into_owned(),
                }
            };
            let text = format!("http://{authority}{target}").parse::<Uri>().ok();
            let received: Uri = target.parse().unwrap();
            let built = reverse_uri(received.path_and_query(), target, &t);
            assert_eq!(built, text, "{host:?} {port:?} {target}");
            if let Some(u) = built {
                assert_eq!(u.to_string(), format!("http://{authority}{target}"));
            }
        }
        let t = RequestTarget::from_parts(b"http", b"a.test", None, b"/", None).unwrap();
        let long = format!("/{}", "a".repeat(MAX_URI_LEN - "http://a.test".len()));
        let received: Uri = long.parse().unwrap();
        assert!(reverse_uri(received.path_and_query(), &long, &t).is_none());
        let fits = &long[..long.len() - 1];
        let received: Uri = fits.parse().unwrap();
        assert!(reverse_uri(received.path_and_query(), fits, &t).is_some());
    }

    #[test]
    fn a_request_is_bodiless_without_length_or_chunking() {
        let mut h = HeaderMap::new();
        assert!(bodiless(&h));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
        assert!(bodiless(&h));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("12"));
        assert!(!bodiless(&h));
        h.remove(header::CONTENT_LENGTH);
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        assert!(!bodiless(&h));
    }
}
