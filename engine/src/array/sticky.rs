//! The request path of a sticky service (`route = "sticky"`): the request
//! forwarder of seed 002 on the array tier.
//!
//! Every decision is the dataplane's ([`shoal_dataplane::array::sticky`]):
//! whether the cookie checks, who the client is, whether to serve here,
//! forward, or refuse, and whether the answer gets a cookie. This module
//! moves the bytes: it reads the head, asks, sends the request to `local`
//! or over a hop (tunnel or signed) to the owner's dedicated address, and relays the
//! answer with the cookie set.
//!
//! Guarantees:
//! - Client-supplied forwarding fields (`Forwarded`, `X-Forwarded-*`,
//!   `X-Real-IP`) and shoal's own (`shoal-member`, `shoal-hops`,
//!   `x-shoal-forwarded-by`) never reach the application from a client:
//!   they are removed and rebuilt from the peer address, believed only as
//!   far as `trusted_proxies` reach; on a verified hop the sending member's
//!   fields are kept and `x-shoal-forwarded-by` names it.
//! - The seed's error cases (Table 5.2): an owner that answers, with any
//!   status, is relayed as is; an owner not in the view, or whose connection
//!   fails before a request byte left, is re-pinned here (or 503 under
//!   `strict`); a connection that fails after request bytes left is a 502
//!   that says so; once response headers were relayed, a failure aborts the
//!   client connection (the body is never completed short); the hop limit
//!   is a 502 that says so. Each is counted.
//! - Connection-bound authentication: once a request on a client
//!   connection carries `Authorization: NTLM` or `Negotiate` (or the
//!   application asks for one), the upstream connection that served it is
//!   kept for that client connection alone and every later request on it
//!   goes there, never through the pool.
//!
//! Which requests come here: a client connection starts on the byte relay
//! (`super::relay`), which serves the requests routed here or over a hop
//! tunnel itself, with this module's decisions and counters
//! (`cookie_state`, `Client::forwarding`, `served_here`,
//! `count_decision`), and hands the connection here, bytes read so far
//! included, for everything else (see its docs).
//!
//! Cost: a request is one read and one write on each of its two
//! connections (the kernel's TCP path is most of a request's CPU), so the
//! request path adds as little as it can around them: the received head is
//! moved into the upstream request (never copied; a request that could not
//! be sent hands it back for the next attempt), its path and URI share the
//! received bytes, the hop-by-hop and client-supplied fields are found in
//! one pass over the names and only those present are removed, the wall
//! clock is read once, values the forwarder makes become header values
//! without a copy, and the keys hold their HMAC state already keyed.
//!
//! Hops: a forward to an in-cluster owner goes over a hop tunnel, a pooled
//! keep-alive connection to the owner's application, which the owner
//! relays without parsing it. A signed hop per request would make a
//! forward two full proxy passes (about twice a local request's CPU); over
//! a tunnel the owner's part is a byte relay, and this member does to the
//! answer what the owner would (`answered_for`). The tunnels to one owner
//! are streams of one multiplexed connection per worker (`super::mux`,
//! opened with one signed `Upgrade: shoal-mux/1` request,
//! `member::tunnel_target`), so the requests and answers of many tunnels
//! share each send and receive; to an owner that refuses that, each
//! tunnel is a connection of its own, opened the same way
//! (`shoal-tunnel/1`). Requests are signed one by
//! one where the owner must decide: `hop_limit` above 1, `ocf` members,
//! a client connection bound before its first forward, and owners that
//! refuse tunnels (remembered for a while, `proxy::UNTUNNELED_FOR`).

use std::borrow::Cow;
use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{Either, Empty};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::header::{self, HeaderName, HeaderValue};
use hyper::http::uri::PathAndQuery;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use serde_json::{Map, Value};
use shoal_config::{Config, StickySection};
use shoal_dataplane::array::member::{Sender, MUX_PROTOCOL, TUNNEL_PROTOCOL};
use shoal_dataplane::array::sticky::{
    self, cookie, forwarded, Class, CookieKey, CookieState, Owner, Policy, Route, Target,
    TrustedNet, View,
};
use shoal_dataplane::array::{classify, member, Form, HeadView, Refusal};
use shoal_dataplane::{HostId, HostSet};

use super::counters::{ErrorKind, ServiceCounters};
use super::mux::{Mux, MuxStream};
use super::proxy::{
    answer, bodiless, exchange, failure, head_bytes, looped, member_sender, page_answer,
    present_of, refused, remove_present, strip_hop_by_hop, wall_ms, ClientBody, Exchange, Opened,
    Service, MEMBER_NAME, SERVED_BY_NAME,
};
use super::tls::ServiceTls;
use super::tunnel;
use super::upstream::{self, CheckIn, Returning, TunnelOpen, UpBody};

/// The hop count a member adds to a request it forwards (trusted only with
/// a verified member header).
const HOPS: HeaderName = HeaderName::from_static("shoal-hops");
/// The member that forwarded the request, as the application sees it.
pub const FORWARDED_BY: &str = "x-shoal-forwarded-by";
const FORWARDED_BY_NAME: HeaderName = HeaderName::from_static(FORWARDED_BY);
const FORWARDED: HeaderName = HeaderName::from_static("forwarded");
const XFF: HeaderName = HeaderName::from_static("x-forwarded-for");
/// Client-supplied fields removed unless a trusted proxy or a member sent
/// them (`Forwarded` and `X-Forwarded-For` are rebuilt).
pub(super) const CLIENT_FIELDS: [HeaderName; 5] = [
    HeaderName::from_static("x-forwarded-host"),
    HeaderName::from_static("x-forwarded-proto"),
    HeaderName::from_static("x-real-ip"),
    FORWARDED_BY_NAME,
    HOPS,
];

/// The error kinds a sticky service counts beside the tier's, in the
/// `errors` object of its stats entry.
pub const ERRORS: &[&str] = &[
    "bad_cookie",
    "expired_cookie",
    "owner_offline",
    "connect_failed",
    "owner_failed",
    "owner_aborted",
    "owner_timeout",
    "hop_limit",
    "tls_handshake",
];

/// A sticky error kind (index into [`ERRORS`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StickyError {
    /// A cookie that failed its check (malformed, forged, from the future).
    BadCookie,
    /// A cookie past its maximum age.
    ExpiredCookie,
    /// The owner a cookie names is not in the live view.
    OwnerOffline,
    /// The connection to the owner failed before a request byte was sent.
    ConnectFailed,
    /// The owner's connection failed after request bytes were sent (502).
    OwnerFailed,
    /// The owner's connection failed after the response head was relayed
    /// (client connection aborted).
    OwnerAborted,
    /// The owner sent no response head in time (504).
    OwnerTimeout,
    /// The hop limit was reached (502).
    HopLimit,
    /// A client's TLS handshake failed or timed out (connection dropped).
    TlsHandshake,
}

/// The seed's Table 5.4 for one worker and one service, and the errors of
/// [`ERRORS`].
#[derive(Debug, Default)]
pub struct StickyCounters {
    /// Dynamic requests with a valid cookie naming the serving host.
    pub coherent: AtomicU64,
    /// Dynamic requests without one, served here.
    pub dynamic: AtomicU64,
    /// Requests matching `static`.
    pub statics: AtomicU64,
    /// Controller requests served here.
    pub controller: AtomicU64,
    /// Requests forwarded to another member and answered by it.
    pub forwarded: AtomicU64,
    /// Requests answered with an error by the forwarder.
    pub failed: AtomicU64,
    /// Responses that got a cookie naming this host.
    pub pinned: AtomicU64,
    /// Cookies moved to this host because their owner was unavailable.
    pub repinned: AtomicU64,
    /// Requests sent over an upstream connection bound to the client's.
    pub bound: AtomicU64,
    /// Hop tunnels this member opened to owners.
    pub tunnels_out: AtomicU64,
    /// Hop tunnels other members opened to this one.
    pub tunnels_in: AtomicU64,
    /// Multiplexed hops (connections carrying hop tunnels) this member
    /// opened to owners.
    pub muxes_out: AtomicU64,
    /// Multiplexed hops other members opened to this one.
    pub muxes_in: AtomicU64,
    /// Errors by [`ERRORS`] index.
    pub errors: [AtomicU64; 9],
}

impl StickyCounters {
    pub(super) fn bump(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn error(&self, e: StickyError) {
        Self::bump(&self.errors[e as usize]);
    }
}

/// Adds a sticky service's counters, every worker's summed, to its stats
/// object (`services.<name>`): `coherent`, `dynamic`, `static`,
/// `controller`, `forwarded`, `failed`, `pinned`, `repinned`, `bound`,
/// `tunnels_out`, `tunnels_in`, `muxes_out`, `muxes_in`, and [`ERRORS`] in
/// its `errors` object.
pub fn add_json(object: &mut Value, workers: &[&StickyCounters]) {
    let sum = |f: &dyn Fn(&StickyCounters) -> &AtomicU64| -> u64 {
        workers.iter().map(|w| f(w).load(Ordering::Relaxed)).sum()
    };
    let Some(o) = object.as_object_mut() else {
        return;
    };
    o.insert("coherent".into(), sum(&|w| &w.coherent).into());
    o.insert("dynamic".into(), sum(&|w| &w.dynamic).into());
    o.insert("static".into(), sum(&|w| &w.statics).into());
    o.insert("controller".into(), sum(&|w| &w.controller).into());
    o.insert("forwarded".into(), sum(&|w| &w.forwarded).into());
    o.insert("failed".into(), sum(&|w| &w.failed).into());
    o.insert("pinned".into(), sum(&|w| &w.pinned).into());
    o.insert("repinned".into(), sum(&|w| &w.repinned).into());
    o.insert("bound".into(), sum(&|w| &w.bound).into());
    o.insert("tunnels_out".into(), sum(&|w| &w.tunnels_out).into());
    o.insert("tunnels_in".into(), sum(&|w| &w.tunnels_in).into());
    o.insert("muxes_out".into(), sum(&|w| &w.muxes_out).into());
    o.insert("muxes_in".into(), sum(&|w| &w.muxes_in).into());
    let errors = o
        .entry("errors")
        .or_insert_with(|| Value::Object(Map::new()));
    if let Some(errors) = errors.as_object_mut() {
        for (i, name) in ERRORS.iter().enumerate() {
            errors.insert((*name).into(), sum(&|w| &w.errors[i]).into());
        }
    }
}

/// A sticky service as every thread sees it; never changes.
#[derive(Debug)]
pub struct StickyPlan {
    /// The decision's policy.
    pub policy: Policy,
    /// The cookie's name.
    pub cookie: String,
    /// The cookie key.
    pub key: CookieKey,
    /// Maximum cookie age, seconds.
    pub max_age_s: u64,
    /// Peers whose forwarding fields are believed.
    pub trusted: Vec<TrustedNet>,
    /// Per `ocf` member, its address.
    pub ocf: Vec<SocketAddr>,
    /// Per member (host) index, its name as a header value.
    pub names: Vec<(HostId, HeaderValue)>,
    /// With `tls`: the acceptor and, with `backend_tls`, the hops'
    /// connector ([`super::tls`]).
    pub tls: Option<ServiceTls>,
    /// Per listen address of the service (its plan's `listen`), whether
    /// it speaks TLS: a VIP when `tls` is set, the dedicated address when
    /// `backend_tls` is.
    pub tls_listen: Vec<bool>,
}

impl StickyPlan {
    /// The plan of `section` for a cluster keyed with `cluster_key`,
    /// listening on `listen`; reads the `tls` files.
    pub fn new(
        section: &StickySection,
        config: &Config,
        cluster_key: &[u8],
        listen: &[SocketAddr],
    ) -> anyhow::Result<Self> {
        let tls = match &section.tls {
            Some(files) => {
                // Relative paths are the configuration file's, as `key_file`.
                let anchor = |p: &std::path::Path| match config.source.parent() {
                    Some(dir) if p.is_relative() => dir.join(p),
                    _ => p.to_path_buf(),
                };
                let files = shoal_config::TlsFiles {
                    cert: anchor(&files.cert),
                    key: anchor(&files.key),
                };
                Some(ServiceTls::load(&files, section.backend_tls)?)
            }
            None if section.backend_tls => anyhow::bail!(
                "backend_tls needs tls = {{ cert, key }}: members verify each other with the service's certificate"
            ),
            None => None,
        };
        let tls_listen = listen
            .iter()
            .map(|a| {
                if config.cluster.vips.contains(&a.ip()) {
                    tls.is_some()
                } else {
                    section.backend_tls
                }
            })
            .collect();
        Ok(StickyPlan {
            tls,
            tls_listen,
            policy: section.policy.clone(),
            cookie: section.cookie.clone(),
            key: CookieKey::derive(cluster_key),
            max_age_s: u64::from(section.cookie_max_age_s),
            trusted: section.trusted_proxies.clone(),
            ocf: section.ocf.iter().map(|o| o.address).collect(),
            names: config
                .hosts
                .iter()
                .filter_map(|h| {
                    let n = config.member_name(h.id)?;
                    Some((h.id, HeaderValue::from_str(&n).ok()?))
                })
                .collect(),
        })
    }

    /// The acceptor for the service's `i`th listener, when it speaks TLS.
    pub(super) fn acceptor(&self, i: usize) -> Option<tokio_rustls::TlsAcceptor> {
        let tls = self.tls.as_ref()?;
        self.tls_listen
            .get(i)
            .copied()
            .unwrap_or(false)
            .then(|| tls.acceptor.clone())
    }

    pub(super) fn name_of(&self, host: HostId) -> Option<&HeaderValue> {
        self.names.iter().find(|(h, _)| *h == host).map(|(_, v)| v)
    }
}

/// One client connection: its peer and, once connection-bound
/// authentication began on it, the upstream connection bound to it.
#[derive(Debug)]
pub(super) struct Client {
    peer: SocketAddr,
    bound: RefCell<Option<Bound>>,
    /// The forwarding fields last rendered for this (untrusted) client.
    rendered: RefCell<Option<Rendered>>,
    /// The sticky cookie value last verified on this connection.
    verified: RefCell<cookie::Verified>,
}

impl Client {
    /// A client connection from `peer`.
    pub(super) fn new(peer: SocketAddr) -> Self {
        Client {
            peer,
            bound: RefCell::new(None),
            rendered: RefCell::new(None),
            verified: RefCell::new(cookie::Verified::default()),
        }
    }

    /// The sticky cookie this connection verified last (checked again
    /// only when a request carries another value).
    pub(super) fn verified(&self) -> std::cell::RefMut<'_, cookie::Verified> {
        self.verified.borrow_mut()
    }

    /// `X-Forwarded-For` and `Forwarded` for the application, for a
    /// request from this client with `host` and the received
    /// `forwarded` and `xff` field values (believed only from a trusted
    /// proxy: `Forwarded` when present, else `X-Forwarded-For`). For any
    /// other client the chain is the client alone, the same for every
    /// request of the connection: rendered once per `Host`.
    pub(super) fn forwarding<'v>(
        &self,
        sp: &StickyPlan,
        host: Option<&[u8]>,
        forwarded: impl Iterator<Item = &'v [u8]>,
        xff: impl Iterator<Item = &'v [u8]>,
    ) -> (Option<HeaderValue>, Option<HeaderValue>) {
        let peer = self.peer.ip();
        if sp.trusted.iter().any(|n| n.contains(peer)) {
            let mut forwarded = forwarded.peekable();
            let nodes = if forwarded.peek().is_some() {
                forwarded::forwarded_for(forwarded)
            } else {
                forwarded::xff_addresses(xff)
            };
            let chain = forwarded::client_chain(forwarded::canonical(peer), &sp.trusted, &nodes);
            return forwarding_fields(sp, &chain, host);
        }
        let mut memo = self.rendered.borrow_mut();
        match &*memo {
            Some(r) if r.host.as_ref().map(HeaderValue::as_bytes) == host => {
                (r.xff.clone(), r.forwarded.clone())
            }
            _ => {
                let chain = [forwarded::canonical(peer)];
                let (xff, fwd) = forwarding_fields(sp, &chain, host);
                *memo = Some(Rendered {
                    host: host.and_then(|h| HeaderValue::from_bytes(h).ok()),
                    xff: xff.clone(),
                    forwarded: fwd.clone(),
                });
                (xff, fwd)
            }
        }
    }
}

/// Forwarding fields rendered for a client that is not a trusted proxy,
/// for requests with this `Host`.
#[derive(Debug)]
struct Rendered {
    host: Option<HeaderValue>,
    xff: Option<HeaderValue>,
    forwarded: Option<HeaderValue>,
}

/// An upstream connection bound to a client connection: where it goes,
/// and whether it is a hop tunnel (the owner's application at its end)
/// or a connection to `local` or an owner's dedicated address.
#[derive(Debug)]
struct Bound {
    addr: SocketAddr,
    sender: SendRequest<UpBody>,
    tunnel: bool,
}

/// Serves one client connection of a sticky service (the worker's
/// `connection` for `route = "sticky"`).
pub(super) async fn connection<S>(
    stream: S,
    client: Client,
    service: Rc<Service>,
    builder: http1::Builder,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let client = Rc::new(client);
    let io = TokioIo::new(stream);
    let svc = service.clone();
    let result = builder
        .serve_connection(
            io,
            service_fn(move |req| {
                let (service, client) = (svc.clone(), client.clone());
                async move {
                    ServiceCounters::bump(&service.counters.requests);
                    let Some(plan) = service.plan.sticky.as_ref() else {
                        return Ok::<_, std::convert::Infallible>(answer(
                            StatusCode::INTERNAL_SERVER_ERROR,
                            "not a sticky service",
                        ));
                    };
                    if let Some(mux) = opens_tunnel(&req) {
                        // Boxed: once per tunnel, not in every request's future.
                        return Ok(
                            Box::pin(accept_tunnel::<S>(&service, req, client.peer, mux)).await,
                        );
                    }
                    let start = std::time::Instant::now();
                    let served = Cell::new(None);
                    let response = serve(&service, plan, req, &client, &served).await;
                    service.counters.observe(start.elapsed(), served.get());
                    Ok(response)
                }
            }),
        )
        .with_upgrades()
        .await;
    if let Err(e) = result {
        super::worker::connection_ended(&service.counters, &e);
    }
}

/// Whether `req` opens a hop tunnel (`Some(false)`: `Upgrade:
/// shoal-tunnel/1`) or a multiplexed hop (`Some(true)`: `shoal-mux/1`).
fn opens_tunnel<B>(req: &Request<B>) -> Option<bool> {
    let v = req.headers().get(header::UPGRADE)?.as_bytes();
    if v.eq_ignore_ascii_case(TUNNEL_PROTOCOL.as_bytes()) {
        Some(false)
    } else if v.eq_ignore_ascii_case(MUX_PROTOCOL.as_bytes()) {
        Some(true)
    } else {
        None
    }
}

/// A hop tunnel's opening from the member at `peer`
/// (`member::tunnel_target`): a member header that verifies for this
/// connection's source gets a connection to this host's application and a
/// `101`, after which the connection's bytes are relayed to the
/// application and back unparsed until either side closes or both go
/// quiet for the idle time. Anything else is refused like a forged member
/// header (403); an application that does not accept the connection is a
/// 502 and the opener signs its requests one by one on another connection.
///
/// With `mux` (a multiplexed hop) the `101` comes at once and each stream
/// the opener opens on the connection is such a tunnel: accepted once the
/// application accepted a connection for it, refused otherwise.
async fn accept_tunnel<S>(
    service: &Service,
    mut req: Request<Incoming>,
    peer: SocketAddr,
    mux: bool,
) -> Response<ClientBody>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + 'static,
{
    let plan = &*service.plan;
    let target = member::tunnel_target(peer);
    let verified = if req.method() == Method::GET && req.uri().path() == target {
        match member_sender(plan, req.headers(), b"GET", target.as_bytes(), wall_ms()) {
            Sender::Member(from) => HostId::new(from),
            Sender::Absent | Sender::Forged => None,
        }
    } else {
        None
    };
    if verified.is_none() {
        return refused(service, Refusal::ForgedMember);
    }
    let super::Upstreams::Cluster { local, .. } = plan.upstreams else {
        return failure(service, ErrorKind::Unreachable, None);
    };
    if mux {
        return accept_mux::<S>(service, req, peer, local);
    }
    let app = match upstream::tcp(local, plan.connect_timeout()).await {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!(%local, error = %e, "local unreachable for a hop tunnel");
            return failure(service, ErrorKind::Unreachable, None);
        }
    };
    let idle = Duration::from_secs(u64::from(plan.limits.idle_timeout_s));
    let opened = hyper::upgrade::on(&mut req);
    StickyCounters::bump(&service.counters.sticky.tunnels_in);
    tokio::task::spawn_local(async move {
        let Ok(hop) = opened.await else {
            return;
        };
        // Over plain TCP the relay reads the socket itself, not through
        // the upgrade's boxed stream; bytes the opener sent early go first.
        let ended = match hop.downcast::<TokioIo<S>>() {
            Ok(parts) => {
                let hop = tunnel::Rewind::new(parts.io.into_inner(), parts.read_buf);
                tunnel::splice(hop, app, idle).await
            }
            Err(hop) => tunnel::splice(TokioIo::new(hop), app, idle).await,
        };
        tracing::debug!(%peer, ?ended, "hop tunnel ended");
    });
    switching(TUNNEL_PROTOCOL)
}

/// The `101` that opens a hop with `Upgrade: protocol`.
fn switching(protocol: &'static str) -> Response<ClientBody> {
    let mut resp = Response::new(Either::Right(http_body_util::Full::new(Bytes::new())));
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    resp.headers_mut()
        .insert(header::UPGRADE, HeaderValue::from_static(protocol));
    resp
}

/// Answers a verified multiplexed hop's opening with `101` and drives the
/// hop from then on: each stream is connected to `local` and relayed like
/// a hop tunnel.
fn accept_mux<S>(
    service: &Service,
    mut req: Request<Incoming>,
    peer: SocketAddr,
    local: SocketAddr,
) -> Response<ClientBody>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + 'static,
{
    let plan = &*service.plan;
    let idle = Duration::from_secs(u64::from(plan.limits.idle_timeout_s));
    let connect = plan.connect_timeout();
    let counters = service.counters.clone();
    let opened = hyper::upgrade::on(&mut req);
    StickyCounters::bump(&counters.sticky.muxes_in);
    tokio::task::spawn_local(async move {
        let Ok(hop) = opened.await else {
            return;
        };
        let on_open: Box<dyn Fn(MuxStream)> = Box::new(move |stream| {
            StickyCounters::bump(&counters.sticky.tunnels_in);
            tokio::task::spawn_local(async move {
                match upstream::tcp(local, connect).await {
                    Ok(app) => {
                        stream.accept();
                        let ended = tunnel::splice(stream, app, idle).await;
                        tracing::trace!(?ended, "hop stream ended");
                    }
                    Err(e) => {
                        tracing::debug!(%local, error = %e, "local unreachable for a hop stream");
                        stream.refuse();
                    }
                }
            });
        });
        // Over plain TCP the driver reads the socket itself, not through
        // the upgrade's boxed stream; bytes the opener sent early go first.
        let end = match hop.downcast::<TokioIo<S>>() {
            Ok(parts) => {
                let io = tunnel::Rewind::new(parts.io.into_inner(), parts.read_buf);
                Mux::new(io, idle, Some(on_open)).1.await
            }
            Err(hop) => Mux::new(TokioIo::new(hop), idle, Some(on_open)).1.await,
        };
        tracing::debug!(%peer, %end, "multiplexed hop ended");
    });
    switching(MUX_PROTOCOL)
}

/// Whether an `Authorization` or `WWW-Authenticate` value starts a
/// connection-bound scheme (NTLM, Negotiate).
pub(super) fn connection_bound<'v>(values: impl IntoIterator<Item = &'v [u8]>) -> bool {
    values.into_iter().any(|v| {
        let scheme = v.split(|&b| b == b' ').next().unwrap_or(v);
        scheme.eq_ignore_ascii_case(b"NTLM") || scheme.eq_ignore_ascii_case(b"Negotiate")
    })
}

/// Where one request goes.
enum Dest {
    /// This host's `local`.
    Local,
    /// A member at `addr` (`index`: the member's index among the
    /// service's members, for health reports; `host`: an in-cluster
    /// member's host id, which a hop tunnel can reach).
    Member {
        addr: SocketAddr,
        index: Option<usize>,
        host: Option<HostId>,
    },
}

/// `served` ends as the member (host index) that served the request or
/// was tried last: this host's own for `local`, the owner for a forward;
/// none for a request that hopped in from another member.
async fn serve(
    service: &Service,
    sp: &StickyPlan,
    req: Request<Incoming>,
    client: &Client,
    served: &Cell<Option<usize>>,
) -> Response<ClientBody> {
    let plan = &*service.plan;
    let counters = &service.counters.sticky;
    let (mut parts, body) = req.into_parts();
    // The path and query go upstream as received (shared bytes, no copy);
    // the target as received: origin-form as is, other forms as the URI
    // prints.
    let path_and_query = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    let origin_form = parts.uri.scheme().is_none() && parts.uri.authority().is_none();
    let target: Cow<'_, str> = if origin_form {
        Cow::Borrowed(path_and_query.as_str())
    } else {
        Cow::Owned(parts.uri.to_string())
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
    let snapshot = service.snapshot();
    match classify(&head, &plan.head_limits, &[]) {
        Ok(Form::Array(page)) => {
            ServiceCounters::bump(&service.counters.pages);
            return page_answer(plan, &snapshot, page);
        }
        Ok(Form::Reverse(_) | Form::Forward(_)) => {}
        Ok(Form::Connect(_)) => {
            return refused(
                service,
                Refusal::BadRequest("a sticky service does not tunnel"),
            )
        }
        Err(r) => return refused(service, r),
    }
    let original_host = parts.headers.get(header::HOST).cloned();
    if looped(&plan.own_name, &parts.headers) {
        return refused(service, Refusal::Loop);
    }
    // One clock read serves the member header and the cookie.
    let now_ms = wall_ms();
    // A verified member header makes this a hop: its sender is authentic.
    let from_member = match member_sender(
        plan,
        &parts.headers,
        parts.method.as_str().as_bytes(),
        path_and_query.as_str().as_bytes(),
        now_ms,
    ) {
        Sender::Absent => None,
        Sender::Member(from) => match HostId::new(from) {
            Some(h) => Some(h),
            None => return refused(service, Refusal::ForgedMember),
        },
        Sender::Forged => return refused(service, Refusal::ForgedMember),
    };
    if from_member.is_some() {
        ServiceCounters::bump(&service.counters.hops_in);
    }
    let hops: u8 = match from_member {
        None => 0,
        Some(_) => parts
            .headers
            .get(HOPS)
            .and_then(|v| v.to_str().ok()?.parse().ok())
            .unwrap_or(1),
    };
    let now_s = now_ms / 1000;
    // Cheap clones (shared bytes): the head is rebuilt below. One field
    // (the usual case) is held without a vector.
    let mut cookies = parts.headers.get_all(header::COOKIE).iter();
    let first_cookie = cookies.next().cloned();
    let more_cookies: Vec<HeaderValue> = cookies.cloned().collect();
    let cookie_fields: Vec<HeaderValue>;
    let cookie_fields: &[HeaderValue] = match (&first_cookie, more_cookies.is_empty()) {
        (None, _) => &[],
        (Some(c), true) => std::slice::from_ref(c),
        (Some(c), false) => {
            cookie_fields = std::iter::once(c.clone()).chain(more_cookies).collect();
            &cookie_fields
        }
    };
    let cookie_state = cookie_state(
        cookie_fields.iter().map(HeaderValue::as_bytes),
        sp,
        plan.port,
        now_s,
        &mut client.verified.borrow_mut(),
    );
    let view = view_of(service, &snapshot);
    let path = parts.uri.path().as_bytes();
    let asked = sticky::Request {
        method: parts.method.as_str().as_bytes(),
        path,
        cookie: cookie_state,
        hops,
    };
    let mut route = sticky::decide(&sp.policy, &view, &asked);
    count_decision(counters, cookie_state, route);
    let (coherent, stale) = pin_facts(sp, cookie_state, plan.own_host, now_s);

    // The head sent on: hop-by-hop fields gone, forwarding fields rebuilt.
    let mut headers = std::mem::take(&mut parts.headers);
    strip_hop_by_hop(&mut headers);
    let client_fields = present_of(&headers, &CLIENT_FIELDS);
    remove_present(&mut headers, &CLIENT_FIELDS, client_fields);
    match from_member {
        Some(h) => {
            if let Some(name) = sp.name_of(h) {
                headers.insert(FORWARDED_BY_NAME, name.clone());
            }
        }
        None => {
            let (xff, fwd) = client.forwarding(
                sp,
                original_host.as_ref().map(HeaderValue::as_bytes),
                headers.get_all(FORWARDED).iter().map(HeaderValue::as_bytes),
                headers.get_all(XFF).iter().map(HeaderValue::as_bytes),
            );
            // `insert` replaces what the client sent.
            for (name, value) in [(XFF, xff), (FORWARDED, fwd)] {
                match value {
                    Some(v) => headers.insert(name, v),
                    None => headers.remove(name),
                };
            }
        }
    }
    headers.append(header::VIA, plan.via.clone());
    let method = parts.method.clone();
    // Origin-form upstream, sharing the received bytes.
    let uri: Uri = if origin_form {
        parts.uri.clone()
    } else {
        Uri::from(path_and_query.clone())
    };
    let retriable = bodiless(&headers);
    let mut body = Some(body);
    let bound_auth = connection_bound(
        headers
            .get_all(header::AUTHORIZATION)
            .iter()
            .map(HeaderValue::as_bytes),
    );
    // The head goes into the request sent and comes back with it when
    // nothing was sent (no copy per attempt).
    let mut headers = Some(headers);

    loop {
        let (dest, class, pinnable, repinned) = match route {
            Route::HopLimit => {
                counters.error(StickyError::HopLimit);
                StickyCounters::bump(&counters.failed);
                return answer(
                    StatusCode::BAD_GATEWAY,
                    "hop limit reached: the request was already forwarded between members",
                );
            }
            Route::OwnerUnavailable => {
                StickyCounters::bump(&counters.failed);
                return answer(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the member that owns this session is unavailable",
                );
            }
            Route::Local {
                class,
                pinnable,
                repinned,
            } => (Dest::Local, Some(class), pinnable, repinned),
            Route::Forward { to, .. } => {
                let (addr, index, host) = match to {
                    Target::Host(h) => {
                        let i = plan.hosts.iter().position(|x| *x == Some(h));
                        (
                            i.and_then(|i| plan.addresses.get(i).copied().flatten()),
                            i,
                            Some(h),
                        )
                    }
                    Target::Ocf(i, _) => (sp.ocf.get(i).copied(), None, None),
                };
                match addr {
                    Some(addr) => (Dest::Member { addr, index, host }, None, false, false),
                    None => {
                        route = sticky::unreachable_owner(&sp.policy);
                        counters.error(StickyError::OwnerOffline);
                        continue;
                    }
                }
            }
        };
        let (addr, member_index) = match &dest {
            Dest::Local => match plan.upstreams {
                super::Upstreams::Cluster { local, own } => {
                    served.set(Some(own).filter(|_| from_member.is_none()));
                    (local, None)
                }
                super::Upstreams::Parents => return failure(service, ErrorKind::Unreachable, None),
            },
            Dest::Member { addr, index, .. } => {
                served.set(*index);
                (*addr, *index)
            }
        };
        // A forward to an in-cluster owner goes over a hop tunnel (the
        // owner relays it to its application unparsed) unless the hop
        // limit lets the owner route it again, the client connection is
        // bound elsewhere, or the owner refused tunnels.
        let tunnel_to = match dest {
            Dest::Member {
                host: Some(owner), ..
            } if sp.policy.hop_limit <= 1 && !service.untunneled(addr) => {
                match &*client.bound.borrow() {
                    Some(b) if b.addr == addr => b.tunnel.then_some(owner),
                    _ if bound_auth => None,
                    _ => Some(owner),
                }
            }
            _ => None,
        };
        let up_body: UpBody = if retriable {
            Either::Right(Empty::new())
        } else {
            match body.take() {
                Some(b) => Either::Left(b),
                None => return failure(service, ErrorKind::Unreachable, served.get()),
            }
        };
        let Some(mut head) = headers.take() else {
            return failure(service, ErrorKind::Unreachable, served.get());
        };
        if tunnel_to.is_some() {
            // What the owner adds on a signed hop, added here.
            if let Some(name) = sp.name_of(plan.own_host) {
                head.insert(FORWARDED_BY_NAME, name.clone());
            }
        } else if let Dest::Member { addr, .. } = dest {
            let sig = member::sign(
                &plan.key,
                plan.own_host.get(),
                addr.port(),
                now_ms,
                method.as_str().as_bytes(),
                path_and_query.as_str().as_bytes(),
            );
            if let Ok(v) = text_value(sig) {
                head.insert(MEMBER_NAME, v);
            }
            head.insert(HOPS, HeaderValue::from(u16::from(hops) + 1));
        }
        let mut request = Request::new(up_body);
        *request.method_mut() = method.clone();
        *request.uri_mut() = uri.clone();
        *request.headers_mut() = head;
        let open = TunnelOpen {
            key: &plan.key,
            from: plan.own_host.get(),
        };
        let outcome = send(
            service,
            client,
            addr,
            request,
            bound_auth,
            tunnel_to.map(|_| &open),
        )
        .await;
        match outcome {
            Outcome::Answered(mut resp, check_in, bound) => {
                if bound {
                    StickyCounters::bump(&counters.bound);
                }
                strip_hop_by_hop(resp.headers_mut());
                resp.headers_mut().append(header::VIA, plan.via.clone());
                match class {
                    None => {
                        StickyCounters::bump(&counters.forwarded);
                        ServiceCounters::bump(&service.counters.hops_out);
                        if let Some(i) = member_index {
                            service.counters.routed_to(i, true);
                        }
                        if let Some(owner) = tunnel_to {
                            // The owner's application answered over the
                            // tunnel: what the owner does to a response it
                            // serves, done here in its name.
                            let route = sticky::decide(
                                &sp.policy,
                                &View { own: owner, ..view },
                                &sticky::Request {
                                    hops: hops.saturating_add(1),
                                    ..asked
                                },
                            );
                            let (cookie_owner, _) = pin_facts(sp, cookie_state, owner, now_s);
                            answered_for(
                                service,
                                sp,
                                route,
                                owner,
                                sp.name_of(owner),
                                cookie_owner,
                                stale,
                                now_s,
                                &mut resp,
                            );
                        }
                    }
                    Some(class) => {
                        ServiceCounters::bump(&service.counters.local);
                        if let Some(own) = served.get() {
                            service.counters.routed_to(own, false);
                        }
                        answered_for(
                            service,
                            sp,
                            Route::Local {
                                class,
                                pinnable,
                                repinned,
                            },
                            plan.own_host,
                            plan.own_name_value.as_ref(),
                            coherent,
                            stale,
                            now_s,
                            &mut resp,
                        );
                    }
                }
                let watched = class.is_none().then(|| {
                    let c = service.counters.clone();
                    Rc::new(move || {
                        c.sticky.error(StickyError::OwnerAborted);
                        StickyCounters::bump(&c.sticky.failed);
                    }) as Rc<dyn Fn()>
                });
                return resp.map(|b| {
                    let mut r = Returning::new(b, check_in);
                    if let Some(w) = watched {
                        r = r.on_error(w);
                    }
                    Either::Left(r)
                });
            }
            Outcome::NotSent(returned) => {
                if let Some(r) = returned {
                    let (back, b) = r.into_parts();
                    // Served here next (re-pinned): without the hop's fields.
                    let mut back = back.headers;
                    back.remove(MEMBER_NAME);
                    back.remove(HOPS);
                    headers = Some(back);
                    if let Either::Left(b) = b {
                        body = Some(b);
                    }
                }
                if tunnel_to.is_some() && service.untunneled(addr) && (body.is_some() || retriable)
                {
                    // The owner does not open tunnels: the same route,
                    // signed request by request.
                    continue;
                }
                match dest {
                    Dest::Local => return failure(service, ErrorKind::Unreachable, served.get()),
                    Dest::Member { .. } => {
                        if let Some(i) = member_index {
                            service.failed(i);
                        }
                        counters.error(StickyError::ConnectFailed);
                        if body.is_none() && !retriable {
                            StickyCounters::bump(&counters.failed);
                            if let Some(m) =
                                member_index.and_then(|i| service.counters.members.get(i))
                            {
                                m.error(ErrorKind::Unreachable);
                            }
                            return answer(StatusCode::BAD_GATEWAY, "the session's owner could not be reached and the request body is gone");
                        }
                        service.counters.failed_over(member_index);
                        route = sticky::unreachable_owner(&sp.policy);
                    }
                }
            }
            Outcome::Failed => {
                StickyCounters::bump(&counters.failed);
                return match dest {
                    Dest::Local => failure(service, ErrorKind::Unreachable, served.get()),
                    Dest::Member { .. } => {
                        if let Some(i) = member_index {
                            service.failed(i);
                            if let Some(m) = service.counters.members.get(i) {
                                m.error(ErrorKind::Unreachable);
                            }
                        }
                        counters.error(StickyError::OwnerFailed);
                        answer(
                            StatusCode::BAD_GATEWAY,
                            "the session's owner failed after the request was sent to it; the request may have been processed",
                        )
                    }
                };
            }
            Outcome::TimedOut => {
                StickyCounters::bump(&counters.failed);
                if let Dest::Member { .. } = dest {
                    counters.error(StickyError::OwnerTimeout);
                }
                return failure(service, ErrorKind::Timeout, served.get());
            }
        }
    }
}

/// What the member `host` does to a response it served for a request it
/// decided as `route` (a [`Route::Local`]; other routes change nothing):
/// counts the request's class, names itself (`name`) in `x-shoal-served-by`, and
/// sets a cookie naming itself when [`sticky::pin`] says so (`coherent`:
/// the request's cookie already names `host`; `stale`: it is past half its
/// lifetime). This host does it for its own responses, and for an owner's
/// answered over a hop tunnel (the owner never parses those).
#[allow(clippy::too_many_arguments)]
fn answered_for(
    service: &Service,
    sp: &StickyPlan,
    route: Route<'_>,
    host: HostId,
    name: Option<&HeaderValue>,
    coherent: bool,
    stale: bool,
    now_s: u64,
    resp: &mut Response<Incoming>,
) {
    if !matches!(route, Route::Local { .. }) {
        return;
    }
    if let Some(name) = name {
        resp.headers_mut().insert(SERVED_BY_NAME, name.clone());
    }
    let set = resp
        .headers()
        .get_all(header::SET_COOKIE)
        .iter()
        .map(HeaderValue::as_bytes);
    if let Some(v) = served_here(service, sp, route, host, coherent, stale, now_s, set) {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
}

/// What every response the member `host` served for a request it decided
/// as `route` gets (a [`Route::Local`]; other routes: nothing): its class
/// counted, and the `Set-Cookie` value naming `host` when [`sticky::pin`]
/// says so, given the response's `set_cookie` field values (counted as
/// pinned, and re-pinned).
#[allow(clippy::too_many_arguments)]
pub(super) fn served_here<'v>(
    service: &Service,
    sp: &StickyPlan,
    route: Route<'_>,
    host: HostId,
    coherent: bool,
    stale: bool,
    now_s: u64,
    set_cookie: impl Iterator<Item = &'v [u8]>,
) -> Option<HeaderValue> {
    let Route::Local {
        class,
        pinnable,
        repinned,
    } = route
    else {
        return None;
    };
    let counters = &service.counters.sticky;
    StickyCounters::bump(match class {
        Class::Static => &counters.statics,
        Class::Controller => &counters.controller,
        Class::Coherent => &counters.coherent,
        Class::Dynamic => &counters.dynamic,
    });
    let set = set_cookie.filter_map(cookie::set_cookie_name);
    if !sticky::pin(&sp.policy, pinnable, repinned, coherent, stale, set) {
        return None;
    }
    StickyCounters::bump(&counters.pinned);
    if repinned {
        StickyCounters::bump(&counters.repinned);
    }
    let value = cookie::issue(&sp.key, Owner::Host(host), service.plan.port, now_s);
    let text = format!(
        "{}={value}; Path=/; Max-Age={}; HttpOnly; SameSite=Lax{}",
        sp.cookie,
        sp.max_age_s,
        if sp.tls.is_some() { "; Secure" } else { "" }
    );
    text_value(text).ok()
}

/// The live view of a sticky service's hosts as `snapshot` shows them.
pub(super) fn view_of(service: &Service, snapshot: &super::view::Snapshot) -> View {
    let plan = &*service.plan;
    let live: HostSet = plan
        .hosts
        .iter()
        .enumerate()
        .filter(|(i, _)| snapshot.is_up(*i))
        .filter_map(|(_, h)| *h)
        .collect();
    View {
        own: plan.own_host,
        live,
    }
}

/// Counts what a request's cookie and route say went wrong: a refused
/// cookie, and an owner found offline (a re-pin or a 503).
pub(super) fn count_decision(counters: &StickyCounters, cookie: CookieState<'_>, route: Route<'_>) {
    if let CookieState::Refused(e) = cookie {
        counters.error(match e.counter() {
            "expired_cookie" => StickyError::ExpiredCookie,
            _ => StickyError::BadCookie,
        });
    }
    if matches!(
        route,
        Route::Local { repinned: true, .. } | Route::OwnerUnavailable
    ) {
        counters.error(StickyError::OwnerOffline);
    }
}

/// Whether the request's cookie already names `host`, the member that
/// serves it (`coherent`), and whether it is past half its lifetime
/// (`stale`: renewed on the answer).
pub(super) fn pin_facts(
    sp: &StickyPlan,
    cookie: CookieState<'_>,
    host: HostId,
    now_s: u64,
) -> (bool, bool) {
    let coherent = matches!(cookie, CookieState::Valid(c) if c.owner == Owner::Host(host));
    let stale = matches!(
        cookie,
        CookieState::Valid(c) if now_s.saturating_sub(c.issued_s) > sp.max_age_s / 2
    );
    (coherent, stale)
}

/// A header value from text the forwarder made, without copying it.
fn text_value(text: String) -> Result<HeaderValue, header::InvalidHeaderValue> {
    HeaderValue::from_maybe_shared(Bytes::from(text))
}

/// `X-Forwarded-For` and `Forwarded` for the application from the client
/// `chain` (`None`: a value a header cannot carry, the field is dropped).
fn forwarding_fields(
    sp: &StickyPlan,
    chain: &[std::net::IpAddr],
    host: Option<&[u8]>,
) -> (Option<HeaderValue>, Option<HeaderValue>) {
    let xff = text_value(forwarded::render_xff(chain)).ok();
    let fwd =
        forwarded::render_forwarded(chain, host, if sp.tls.is_some() { "https" } else { "http" });
    (xff, text_value(fwd).ok())
}

/// The request's cookie: the first value of the service's cookie that
/// checks; else the first refusal; else absent.
pub(super) fn cookie_state<'h>(
    fields: impl IntoIterator<Item = &'h [u8]>,
    sp: &'h StickyPlan,
    port: u16,
    now_s: u64,
    verified: &mut cookie::Verified,
) -> CookieState<'h> {
    let mut state = CookieState::Absent;
    for field in fields {
        for value in cookie::cookie_values(field, sp.cookie.as_bytes()) {
            match cookie::check_remembering(&sp.key, value, port, now_s, sp.max_age_s, verified) {
                Ok(c) => return CookieState::Valid(c),
                Err(e) => {
                    if state == CookieState::Absent {
                        state = CookieState::Refused(e);
                    }
                }
            }
        }
    }
    state
}

/// What one send came to.
enum Outcome {
    /// A response head; the connection's check-in; whether it went over a
    /// bound connection.
    Answered(Response<Incoming>, Option<CheckIn>, bool),
    /// Nothing was sent.
    NotSent(Option<Request<UpBody>>),
    /// Sent (perhaps in part), no response head.
    Failed,
    /// No response head in time.
    TimedOut,
}

/// Sends `request` to `addr`: over the client connection's bound upstream
/// when it has one for `addr`, else through the pool (of hop tunnels, with
/// `tunnel`: a tunnel it opens is counted, an owner that refuses one with a
/// 4xx remembered in `Service::untunneled`); a response that starts
/// connection-bound authentication (or a request that carries it) binds
/// the connection it came over to the client connection.
async fn send(
    service: &Service,
    client: &Client,
    addr: SocketAddr,
    request: Request<UpBody>,
    bound_auth: bool,
    tunnel: Option<&TunnelOpen<'_>>,
) -> Outcome {
    let bound = client.bound.borrow_mut().take();
    let bound = match bound {
        Some(b) if b.addr == addr && b.tunnel == tunnel.is_some() && !b.sender.is_closed() => {
            Some(b.sender)
        }
        _ => None,
    };
    if bound.is_some() || (bound_auth && tunnel.is_none()) {
        // Boxed: rare, and its connect would enlarge every request's future.
        return Box::pin(send_bound(
            service,
            client,
            addr,
            request,
            bound,
            tunnel.is_some(),
        ))
        .await;
    }
    let (exchanged, opened) = exchange(service, addr, request, false, tunnel).await;
    match opened {
        Opened::New if tunnel.is_some() => {
            StickyCounters::bump(&service.counters.sticky.tunnels_out);
        }
        // A 4xx: the member does not open tunnels (or not for this
        // connection's address); a 5xx is its application not answering,
        // an unreachable owner.
        Opened::Refused(status @ 400..=499) => {
            tracing::info!(%addr, status, "the member refused a hop tunnel: its requests are signed one by one for a minute");
            service
                .untunneled
                .borrow_mut()
                .insert(addr, std::time::Instant::now());
        }
        _ => {}
    }
    match exchanged {
        Exchange::Answered(resp, check_in) => {
            let binds = bound_auth
                || connection_bound(
                    resp.headers()
                        .get_all(header::WWW_AUTHENTICATE)
                        .iter()
                        .map(HeaderValue::as_bytes),
                );
            if binds {
                if let Some(c) = check_in {
                    // The handshake goes on over this connection: it is
                    // the client connection's from now on.
                    *client.bound.borrow_mut() = Some(Bound {
                        addr,
                        sender: c.sender,
                        tunnel: tunnel.is_some(),
                    });
                    return Outcome::Answered(resp, None, true);
                }
            }
            Outcome::Answered(resp, check_in, false)
        }
        Exchange::NotSent(r) => Outcome::NotSent(r),
        Exchange::Failed { .. } => Outcome::Failed,
        Exchange::TimedOut => Outcome::TimedOut,
    }
}

/// Sends over the client connection's own upstream connection (made when
/// there is none yet; a hop tunnel's is always made by the pool first)
/// and keeps it bound.
async fn send_bound(
    service: &Service,
    client: &Client,
    addr: SocketAddr,
    request: Request<UpBody>,
    bound: Option<SendRequest<UpBody>>,
    tunnel: bool,
) -> Outcome {
    let plan = &service.plan;
    let mut sender = match bound {
        Some(s) => s,
        None => match upstream::connect_tls(addr, plan.connect_timeout(), plan.hop_tls(addr)).await
        {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(%addr, error = %e, "upstream unreachable");
                return Outcome::NotSent(Some(request));
            }
        },
    };
    let first_byte = Duration::from_millis(u64::from(plan.limits.first_byte_timeout_ms));
    if sender.ready().await.is_err() {
        return Outcome::NotSent(Some(request));
    }
    match super::coarse::timeout(first_byte, sender.try_send_request(request)).await {
        Err(_) => Outcome::TimedOut,
        Ok(Ok(resp)) => {
            *client.bound.borrow_mut() = Some(Bound {
                addr,
                sender,
                tunnel,
            });
            Outcome::Answered(resp, None, true)
        }
        Ok(Err(mut e)) => match e.take_message() {
            Some(back) => Outcome::NotSent(Some(back)),
            None => Outcome::Failed,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bound(values: &[&'static str]) -> bool {
        let mut h = hyper::HeaderMap::new();
        for v in values {
            h.append(header::AUTHORIZATION, HeaderValue::from_static(v));
        }
        connection_bound(
            h.get_all(header::AUTHORIZATION)
                .iter()
                .map(HeaderValue::as_bytes),
        )
    }

    #[test]
    fn ntlm_and_negotiate_bind_the_connection_and_other_schemes_do_not() {
        assert!(bound(&["NTLM TlRMTVNTUAABAAAA"]));
        assert!(bound(&["negotiate YIIx"]));
        assert!(bound(&["Basic YTpi", "Negotiate"]));
        assert!(!bound(&["Basic YTpi"]));
        assert!(!bound(&["Bearer x.y.z"]));
        assert!(!bound(&["NTLMx"]));
        assert!(!bound(&[]));
    }

    #[test]
    fn sticky_errors_are_indexed_in_order() {
        let all = [
            StickyError::BadCookie,
            StickyError::ExpiredCookie,
            StickyError::OwnerOffline,
            StickyError::ConnectFailed,
            StickyError::OwnerFailed,
            StickyError::OwnerAborted,
            StickyError::OwnerTimeout,
            StickyError::HopLimit,
            StickyError::TlsHandshake,
        ];
        assert_eq!(all.len(), ERRORS.len());
        let c = StickyCounters::default();
        for e in all {
            c.error(e);
        }
        let mut json = serde_json::json!({"errors": {"unreachable": 0}});
        add_json(&mut json, &[&c]);
        for name in ERRORS {
            assert_eq!(json["errors"][*name], 1, "{name}");
        }
        assert_eq!(json["errors"]["unreachable"], 0);
        assert_eq!(json["forwarded"], 0);
    }
}
