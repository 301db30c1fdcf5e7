//! The byte relay of a sticky service: the requests this member serves to
//! its `local` application, relayed as HTTP/1.1 bytes without an HTTP
//! library in between.
//!
//! A client connection of a sticky service starts here. Each request head
//! is parsed in place ([`h1`]), and the forwarder's decision is taken as on
//! the full path (the same functions of [`super::sticky`] and the
//! dataplane). A request this relay takes is one the member serves to
//! `local`: it goes upstream as its received bytes with the hop-by-hop and
//! client-supplied forwarding fields left out and `X-Forwarded-For`,
//! `Forwarded` and `Via` added; the answer comes back the same way, its
//! head rewritten (hop-by-hop fields out; `Via`, `x-shoal-served-by` and the
//! cookie when the forwarder pins one in), its body passed through as
//! framed. Upstream connections are plain sockets kept in the worker's pool
//! (`upstream::Pool::take_raw`).
//!
//! Everything else hands the connection over to the full path
//! ([`super::sticky::connection`], on hyper) with the bytes read so far, for
//! the rest of the connection's life: a head the strict parser refuses (the
//! full path answers it as it always did, 400 or 431, and counts it), an
//! HTTP/1.0 request with `Transfer-Encoding`, a chunked body malformed in
//! its first bytes, `Expect`, `Upgrade`
//! (hop tunnels), a member header (hops), connection-bound authentication,
//! `Connection` options other than `close` and `keep-alive`, an array page,
//! a refusal, and every route that is not "serve here" (forwards, the hop
//! limit, an unavailable owner). An owner whose hop cannot be had before a
//! byte is sent is the seed's unavailable owner: under `repin` the request
//! is served here and its cookie re-pinned, counted as the full path counts
//! it (`connect_failed`, a failover, the member reported failed). A
//! connection is handed over, with the request unconsumed, when `local`
//! cannot be connected to, or such an owner's service is `strict`: the
//! full path then answers and counts it as it would have.
//!
//! An HTTP/1.0 request goes upstream as HTTP/1.0 (with `Connection:
//! keep-alive`, so the upstream connection is kept), so that its answer is
//! never chunked: the relay passes bodies on as framed and does not
//! re-frame them. An answer with `Transfer-Encoding` to such a request is
//! malformed (RFC 9112 §7.1). The client's connection stays open only when
//! it asked with `Connection: keep-alive` (its answer then says so), and
//! closes after a failed request's 502 or 504.
//!
//! Guarantees (those of the full path, for the requests taken here):
//! - the application never sees a client's `Forwarded`, `X-Forwarded-*`,
//!   `X-Real-IP` or shoal's own fields (they are left out and rebuilt,
//!   believed only from `trusted_proxies`);
//! - a request is counted once, by whichever path answers it, with the
//!   same counters; an answer's cookie and counters are those of
//!   [`super::sticky::served_here`];
//! - a request sent on a reused connection that closes before any response
//!   byte is sent again on a new one only when it has no body; otherwise,
//!   and on a new connection, it is answered 502 (504 past
//!   `first_byte_timeout_ms`), counted as a failed request;
//! - once a response head was relayed, a failure of the upstream aborts the
//!   client connection: a body is never completed short;
//! - a malformed response (head or chunked framing) is a 502 before its
//!   head was relayed, an abort after;
//! - bounded memory per connection: a head within `max_head_bytes`, body
//!   bytes relayed in reads of at most [`READ_CHUNK`].
//!
//! Cost: a request is one read and one write on each of its two
//! connections; the relay's own work is one pass over each head and copies
//! of the field lines it keeps.

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, BytesMut};
use hyper::header::HeaderName;
use hyper::server::conn::http1;
use shoal_dataplane::array::h1::{self, Body, Field, Framing, RequestHead};
use shoal_dataplane::array::sticky::{self, Route, Target, View};
use shoal_dataplane::array::{classify, seen, Form, HeadView};
use shoal_dataplane::HostId;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::coarse;
use super::counters::{ErrorKind, ServiceCounters};
use super::proxy::{wall_ms, Service, HOP_BY_HOP, SERVED_BY, TEXT_PLAIN};
use super::sticky::{
    connection_bound, cookie_state, count_decision, pin_facts, served_here, view_of, Client,
    StickyCounters, StickyError, CLIENT_FIELDS, FORWARDED_BY,
};
use super::tunnel::Rewind;
use super::upstream::{self, RawConn};

/// The most bytes one read takes from either side.
pub(super) const READ_CHUNK: usize = 16 * 1024;

/// What a field is to the relay, by its name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// Passed on as received.
    Keep,
    /// Left out: hop-by-hop (RFC 9110 §7.6.1) or client-supplied
    /// forwarding fields, rebuilt or removed.
    Drop,
    /// `Host` (kept).
    Host,
    /// `Cookie` (kept).
    Cookie,
    /// `Via` (kept).
    Via,
    /// `CDN-Loop` (kept).
    CdnLoop,
    /// `Authorization` (kept).
    Authorization,
    /// Fields only the full path handles: `Expect`, `Upgrade`, the member
    /// header.
    HandOver,
}

/// The field names the relay treats apart from the hop-by-hop and
/// client-supplied fields it leaves out (lowercase), and how.
const NAMES: [(&[u8], Kind); 10] = [
    (b"host", Kind::Host),
    (b"cookie", Kind::Cookie),
    (b"via", Kind::Via),
    (b"cdn-loop", Kind::CdnLoop),
    (b"authorization", Kind::Authorization),
    (b"forwarded", Kind::Drop),
    (b"x-forwarded-for", Kind::Drop),
    (b"expect", Kind::HandOver),
    (b"upgrade", Kind::HandOver),
    (b"shoal-member", Kind::HandOver),
];

/// Whether `name` is one of `names` (lowercase), ignoring ASCII case.
fn one_of(name: &[u8], names: &[HeaderName]) -> bool {
    names
        .iter()
        .any(|n| n.as_str().len() == name.len() && n.as_str().as_bytes().eq_ignore_ascii_case(name))
}

/// How the relay treats a request field named `name`: [`NAMES`] first,
/// then the full path's hop-by-hop and client-supplied fields are left out.
fn kind_of(name: &[u8]) -> Kind {
    if let Some((_, k)) = NAMES
        .iter()
        .find(|(n, _)| n.len() == name.len() && n.eq_ignore_ascii_case(name))
    {
        return *k;
    }
    if one_of(name, &HOP_BY_HOP) || one_of(name, &CLIENT_FIELDS) {
        Kind::Drop
    } else {
        Kind::Keep
    }
}

/// The full path's answer when an owner fails after the request was sent.
const OWNER_FAILED: &str =
    "the session's owner failed after the request was sent to it; the request may have been processed";

/// Where a relayed request goes.
#[derive(Clone, Copy, Debug)]
enum Dest {
    /// This member's `local` application.
    Local,
    /// The owner `host` (member `index`, dedicated address `addr`), over a
    /// hop tunnel: a stream of this worker's multiplexed hop to it.
    Owner {
        host: HostId,
        index: usize,
        addr: SocketAddr,
    },
}

impl Dest {
    /// An idle connection there (`local` at `local`), from the worker's
    /// pool.
    fn take(self, service: &Service, local: SocketAddr) -> Option<RawConn> {
        match self {
            Dest::Local => service.pool.take_raw(local),
            Dest::Owner { addr, .. } => service.tunnels.take_raw(addr),
        }
    }

    /// Keeps `up`, whose exchange is over, for the next request there.
    fn put(self, service: &Service, local: SocketAddr, up: RawConn) {
        match self {
            Dest::Local => service.pool.put_raw(local, up),
            Dest::Owner { addr, .. } => service.tunnels.put_raw(addr, up),
        }
    }

    /// A new connection there (`local` at `local`), within the connect
    /// timeout.
    async fn open(self, service: &Service, local: SocketAddr) -> Opened {
        let plan = &*service.plan;
        let timeout = plan.connect_timeout();
        match self {
            Dest::Local => match upstream::tcp(local, timeout).await {
                Ok(s) => Opened::Conn(RawConn::Tcp(s)),
                Err(e) => {
                    tracing::debug!(addr = %local, error = %e, "local unreachable: the full path answers");
                    Opened::HandOver
                }
            },
            Dest::Owner { addr, .. } => {
                let open = upstream::TunnelOpen {
                    key: &plan.key,
                    from: plan.own_host.get(),
                };
                let mux = match service.hop_mux(addr, plan.hop_tls(addr), &open).await {
                    Ok(Some(m)) if !m.full() => m,
                    // Refused (a member that takes a tunnel per connection,
                    // or signed hops) or full: the full path's hops.
                    Ok(_) => return Opened::HandOver,
                    Err(e) => {
                        tracing::debug!(%addr, error = %e, "owner unreachable");
                        return Opened::Unreachable;
                    }
                };
                match coarse::timeout(timeout, mux.open()).await {
                    Ok(Ok(Some(stream))) => {
                        StickyCounters::bump(&service.counters.sticky.tunnels_out);
                        Opened::Conn(RawConn::Mux(stream))
                    }
                    // Its application did not take the stream's connection.
                    Ok(Ok(None)) => Opened::Unreachable,
                    // The hop failed since it was last used: the full path
                    // opens another.
                    Ok(Err(_)) | Err(_) => Opened::HandOver,
                }
            }
        }
    }
}

/// What [`Dest::open`] came to.
enum Opened {
    /// A connection.
    Conn(RawConn),
    /// An owner that cannot take the request (its hop could not be made,
    /// or its application refused the stream): the seed's unavailable
    /// owner.
    Unreachable,
    /// For the full path: `local` does not accept, or the owner's hop
    /// needs what only the full path does.
    HandOver,
}

/// What happens to the client connection after a request.
enum Next {
    /// The next request.
    Keep,
    /// Closed after the answer.
    Close,
    /// Dropped at once: an answer broke off after its head was relayed.
    Abort,
    /// Handed to the full path, with what is buffered.
    HandOver,
}

/// A connection's buffers, reused for every request on it.
struct Buffers {
    /// Bytes read from the client and not yet relayed.
    client: BytesMut,
    /// The current request head's fields, and what each is to the relay.
    fields: Vec<Field>,
    kinds: Vec<Kind>,
    /// Bytes read from the upstream.
    up: BytesMut,
    /// The current response head's fields.
    up_fields: Vec<Field>,
    /// A head being written.
    out: BytesMut,
}

/// Serves one client connection of a sticky service: requests relayed
/// here while they can be, then the full path (see the module docs).
pub(super) async fn connection<S>(
    mut stream: S,
    peer: SocketAddr,
    service: Rc<Service>,
    builder: http1::Builder,
) where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let client = Client::new(peer);
    let mut b = Buffers {
        client: BytesMut::with_capacity(READ_CHUNK),
        fields: Vec::with_capacity(32),
        kinds: Vec::with_capacity(32),
        up: BytesMut::new(),
        up_fields: Vec::with_capacity(32),
        out: BytesMut::new(),
    };
    let limits = &service.plan.limits;
    let idle = Duration::from_secs(u64::from(limits.idle_timeout_s));
    let max_head = limits.max_head_bytes as usize;
    let max_fields = limits.max_headers as usize;
    loop {
        // A head, within the idle time (as the full path's header read
        // timeout): parsed from what is buffered, else read for.
        let read = coarse::timeout(idle, async {
            loop {
                match h1::parse_request(&b.client, max_head, max_fields, &mut b.fields) {
                    Ok(Some(head)) => return Some(Some(head)),
                    // The full path answers (400 or 431) and counts it.
                    Err(_) => return Some(None),
                    Ok(None) => {}
                }
                b.client.reserve(READ_CHUNK);
                match stream.read_buf(&mut b.client).await {
                    Ok(0) | Err(_) => return None,
                    Ok(_) => {}
                }
            }
        })
        .await;
        let head = match read {
            Ok(Some(Some(head))) => head,
            Ok(Some(None)) => break,
            // Closed, failed, or idle: nothing to answer.
            Ok(None) | Err(_) => return,
        };
        match serve(&service, &client, &mut stream, &mut b, &head).await {
            Next::Keep => {}
            Next::Close => {
                let _ = coarse::timeout(idle, stream.shutdown()).await;
                return;
            }
            Next::Abort => return,
            Next::HandOver => break,
        }
    }
    let rest = b.client.freeze();
    super::sticky::connection(Rewind::new(stream, rest), client, service, builder).await;
}

/// The request's facts the relay needs from its fields, in one pass.
#[derive(Default)]
struct Facts<'b> {
    host: Option<&'b [u8]>,
    hosts: usize,
    hand_over: bool,
}

/// Relays one request whose head is `head` (its bytes at the start of
/// `b.client`), or tells the caller to hand the connection over.
async fn serve<S>(
    service: &Service,
    client: &Client,
    stream: &mut S,
    b: &mut Buffers,
    head: &RequestHead,
) -> Next
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let plan = &*service.plan;
    let Some(sp) = plan.sticky.as_ref() else {
        return Next::HandOver;
    };
    let super::Upstreams::Cluster { local, own } = plan.upstreams else {
        return Next::HandOver;
    };
    let buf = &b.client[..];
    let fields = &b.fields[..];
    b.kinds.clear();
    b.kinds.extend(
        fields
            .iter()
            .map(|f| kind_of(buf.get(f.name.clone()).unwrap_or_default())),
    );
    let kinds = &b.kinds[..];
    let bytes = |r: &std::ops::Range<usize>| buf.get(r.clone()).unwrap_or_default();
    let method = bytes(&head.method);
    let target = bytes(&head.target);
    if head.minor > 1 || method == b"CONNECT" || target.first() != Some(&b'/') {
        return Next::HandOver;
    }
    // An HTTP/1.0 request goes on as one, so the answer cannot be chunked
    // (RFC 9112 §7.1); one with Transfer-Encoding has faulty framing
    // (§6.1): the full path refuses it.
    let old = head.minor == 0;
    let framing = match h1::request_framing(buf, fields) {
        Ok(Framing::Chunked) if old => return Next::HandOver,
        Ok(f) => f,
        _ => return Next::HandOver,
    };
    let mut facts = Facts::default();
    for (f, kind) in fields.iter().zip(kinds) {
        match kind {
            Kind::Host => {
                facts.hosts += 1;
                facts.host = facts.host.or(Some(bytes(&f.value)));
            }
            Kind::HandOver => facts.hand_over = true,
            _ => {}
        }
    }
    // `Connection` options name fields the full path removes with it.
    facts.hand_over |= h1::elements(buf, fields, b"connection").any(|o| {
        !o.is_empty() && !o.eq_ignore_ascii_case(b"close") && !o.eq_ignore_ascii_case(b"keep-alive")
    });
    if facts.hand_over || connection_bound(values(buf, fields, kinds, Kind::Authorization)) {
        return Next::HandOver;
    }
    let view = HeadView {
        method,
        target,
        host: facts.host,
        host_count: facts.hosts,
        head_bytes: head.len,
        header_count: fields.len(),
    };
    if !matches!(
        classify(&view, &plan.head_limits, &[]),
        Ok(Form::Reverse(_))
    ) {
        return Next::HandOver;
    }
    if seen(
        &plan.own_name,
        values(buf, fields, kinds, Kind::Via),
        values(buf, fields, kinds, Kind::CdnLoop),
    ) {
        return Next::HandOver;
    }
    let now_ms = wall_ms();
    let now_s = now_ms / 1000;
    let cookie = cookie_state(
        values(buf, fields, kinds, Kind::Cookie),
        sp,
        plan.port,
        now_s,
        &mut client.verified(),
    );
    let snapshot = service.snapshot();
    let path = target.split(|&c| c == b'?').next().unwrap_or(target);
    let asked = sticky::Request {
        method,
        path,
        cookie,
        hops: 0,
    };
    let view = view_of(service, &snapshot);
    let route = sticky::decide(&sp.policy, &view, &asked);
    // Where it goes, and the decision of the member that serves it (this
    // one, or the owner: what the owner would do to the answer is done
    // here, as on the full path's tunnels).
    let (mut dest, serving) = match route {
        Route::Local { .. } => (Dest::Local, route),
        Route::Forward {
            to: Target::Host(host),
            ..
        } if sp.policy.hop_limit <= 1 => {
            let Some(index) = plan.hosts.iter().position(|h| *h == Some(host)) else {
                return Next::HandOver;
            };
            let Some(addr) = plan.addresses.get(index).copied().flatten() else {
                return Next::HandOver;
            };
            if service.untunneled(addr) {
                return Next::HandOver;
            }
            let owner = sticky::decide(
                &sp.policy,
                &View { own: host, ..view },
                &sticky::Request { hops: 1, ..asked },
            );
            (Dest::Owner { host, index, addr }, owner)
        }
        _ => return Next::HandOver,
    };
    let mut serving = match serving {
        Route::Local {
            class,
            pinnable,
            repinned,
        } => Some((class, pinnable, repinned)),
        _ => None,
    };
    // The body's first bytes, read with the head: a chunked body already
    // malformed there goes to the full path with the rest.
    let mut body = Body::new(framing);
    let past_body = match body.advance(buf.get(head.len..).unwrap_or_default()) {
        Ok(p) => buf.get(head.len + p.consumed..).unwrap_or_default(),
        Err(_) => return Next::HandOver,
    };
    // The upstream first. An owner that cannot be reached before a byte
    // is sent is the seed's "unavailable owner": `repin` serves here (and
    // re-pins the cookie), as the full path does; `strict`, and a `local`
    // that cannot be reached, hand the request over untouched, and the
    // full path answers it.
    let mut unreached = None;
    let (mut up, mut reused) = loop {
        if let Some(s) = dest.take(service, local) {
            break (s, true);
        }
        match dest.open(service, local).await {
            Opened::Conn(s) => break (s, false),
            Opened::HandOver => return Next::HandOver,
            Opened::Unreachable => {}
        }
        match (dest, sticky::unreachable_owner(&sp.policy)) {
            (
                Dest::Owner { index, .. },
                Route::Local {
                    class,
                    pinnable,
                    repinned,
                },
            ) if unreached.is_none() => {
                unreached = Some(index);
                dest = Dest::Local;
                serving = Some((class, pinnable, repinned));
            }
            _ => return Next::HandOver,
        }
    };

    // Served here from now on: counted as the full path counts it.
    let start = Instant::now();
    let counters = &service.counters;
    ServiceCounters::bump(&counters.requests);
    count_decision(&counters.sticky, cookie, route);
    if let Some(index) = unreached {
        service.failed(index);
        counters.sticky.error(StickyError::ConnectFailed);
        counters.failed_over(Some(index));
    }
    let (coherent, stale) = match dest {
        Dest::Local => pin_facts(sp, cookie, plan.own_host, now_s),
        Dest::Owner { host, .. } => pin_facts(sp, cookie, host, now_s),
    };
    let served = match dest {
        Dest::Local => Some(own),
        Dest::Owner { index, .. } => Some(index),
    };
    let close_client = !h1::keep_alive(buf, fields, head.minor);
    let (xff, fwd) = client.forwarding(
        sp,
        facts.host,
        h1::values(buf, fields, b"forwarded"),
        h1::values(buf, fields, b"x-forwarded-for"),
    );

    // The head sent on.
    let out = &mut b.out;
    out.clear();
    out.reserve(head.len + 256);
    out.put_slice(method);
    out.put_u8(b' ');
    out.put_slice(target);
    out.put_slice(if old {
        b" HTTP/1.0\r\n"
    } else {
        b" HTTP/1.1\r\n"
    });
    if old {
        // The client's own `Connection` is hop-by-hop; the upstream
        // connection is kept for the next request whatever it says.
        out.put_slice(b"connection: keep-alive\r\n");
    }
    for (f, kind) in fields.iter().zip(kinds) {
        match kind {
            Kind::Drop | Kind::HandOver => {}
            _ => out.put_slice(bytes(&f.line)),
        }
    }
    let forwarded_by = match dest {
        Dest::Local => None,
        // What the owner adds to a hop it serves, added here.
        Dest::Owner { .. } => sp.name_of(plan.own_host),
    };
    for (name, value) in [
        (&b"x-forwarded-for"[..], xff.as_ref()),
        (b"forwarded", fwd.as_ref()),
        (FORWARDED_BY.as_bytes(), forwarded_by),
        (b"via", Some(&plan.via)),
    ] {
        if let Some(v) = value {
            put_field(out, name, v.as_bytes());
        }
    }
    if framing == Framing::Chunked {
        out.put_slice(b"transfer-encoding: chunked\r\n");
    }
    out.put_slice(b"\r\n");
    // Only a request without a body is sent again (its body is gone).
    let retriable = framing == Framing::Empty;
    let after = &buf[head.len..];
    let here = after.len() - past_body.len();
    out.put_slice(&after[..here]);
    let is_head = method == b"HEAD";
    b.client.advance(head.len + here);

    // Sent, and the response head read; a reused connection that closed
    // before answering takes a bodiless request again on a new one.
    let first_byte = Duration::from_millis(u64::from(plan.limits.first_byte_timeout_ms));
    let idle = Duration::from_secs(u64::from(plan.limits.idle_timeout_s));
    let answered = loop {
        let sent = async {
            write_within(&mut up, &b.out, idle).await?;
            if !body.done() {
                relay_body(stream, &mut up, &mut b.client, &mut body, idle).await?;
            }
            Ok::<_, std::io::Error>(())
        }
        .await;
        let got = match sent {
            Ok(()) => {
                coarse::timeout(
                    first_byte,
                    response_head(&mut up, &mut b.up, &mut b.up_fields),
                )
                .await
            }
            Err(_) => Ok(Err(UpError::Closed)),
        };
        match got {
            Ok(Err(UpError::Closed)) if reused && retriable => {
                reused = false;
                match dest.open(service, local).await {
                    Opened::Conn(s) => up = s,
                    _ => break Err(ErrorKind::Unreachable),
                }
            }
            Ok(Ok(h)) => break Ok(h),
            Ok(Err(_)) => break Err(ErrorKind::Unreachable),
            Err(_) => break Err(ErrorKind::Timeout),
        }
    };
    let resp = match answered {
        Ok(h) => h,
        Err(kind) => {
            // An HTTP/1.0 client is not told to keep its connection after
            // a failure: it closes.
            let close_client = close_client || !retriable || old;
            failed_answer(service, dest, kind, served, close_client, &mut b.out);
            counters.observe(start.elapsed(), served);
            return match write_within(stream, &b.out, idle).await {
                Ok(()) if !close_client => Next::Keep,
                _ => Next::Close,
            };
        }
    };

    // The answer's head.
    let up_buf = &b.up[..];
    let up_fields = &b.up_fields[..];
    let ubytes = |r: &std::ops::Range<usize>| up_buf.get(r.clone()).unwrap_or_default();
    // An HTTP/1.0 message with Transfer-Encoding has faulty framing
    // (RFC 9112 §6.1), and so has an answer with it to an HTTP/1.0
    // request, which cannot take chunks (§7.1).
    let faulty = (resp.minor == 0 || old)
        && up_fields
            .iter()
            .any(|f| h1::field_is(up_buf, f, b"transfer-encoding"));
    let framing = match h1::response_framing(up_buf, up_fields, resp.status, is_head, false) {
        Ok(f) if !faulty => f,
        _ => {
            // Malformed: as a connection that failed before its answer.
            // Its head is not passed on, and the upstream is not kept.
            let close_client = close_client || old;
            failed_answer(
                service,
                dest,
                ErrorKind::Unreachable,
                served,
                close_client,
                &mut b.out,
            );
            counters.observe(start.elapsed(), served);
            return match write_within(stream, &b.out, idle).await {
                Ok(()) if !close_client => Next::Keep,
                _ => Next::Close,
            };
        }
    };
    let binds = connection_bound(h1::values(up_buf, up_fields, b"www-authenticate"));
    let (host, name) = match dest {
        Dest::Local => (plan.own_host, plan.own_name_value.as_ref()),
        Dest::Owner { host, .. } => (host, sp.name_of(host)),
    };
    let set_cookie = serving.and_then(|(class, pinnable, repinned)| {
        served_here(
            service,
            sp,
            Route::Local {
                class,
                pinnable,
                repinned,
            },
            host,
            coherent,
            stale,
            now_s,
            h1::values(up_buf, up_fields, b"set-cookie"),
        )
    });
    let has_connection = h1::values(up_buf, up_fields, b"connection")
        .next()
        .is_some();
    let close_client = close_client || framing == Framing::Close;
    let up_keeps = framing != Framing::Close && h1::keep_alive(up_buf, up_fields, resp.minor);
    let name = name.filter(|_| serving.is_some());
    let out = &mut b.out;
    out.clear();
    out.reserve(resp.len + 256);
    out.put_slice(b"HTTP/1.1 ");
    let status = resp.status.min(999);
    out.put_slice(&[
        b'0' + (status / 100) as u8,
        b'0' + (status / 10 % 10) as u8,
        b'0' + (status % 10) as u8,
    ]);
    let reason = ubytes(&resp.reason);
    if !reason.is_empty() {
        out.put_u8(b' ');
        out.put_slice(reason);
    }
    out.put_slice(b"\r\n");
    for f in up_fields {
        let n = ubytes(&f.name);
        if one_of(n, &HOP_BY_HOP)
            || (name.is_some() && n.eq_ignore_ascii_case(SERVED_BY.as_bytes()))
            || (has_connection && h1::has_token(up_buf, up_fields, b"connection", n))
        {
            continue;
        }
        out.put_slice(ubytes(&f.line));
    }
    if framing == Framing::Chunked {
        out.put_slice(b"transfer-encoding: chunked\r\n");
    }
    if close_client {
        out.put_slice(b"connection: close\r\n");
    } else if old {
        out.put_slice(b"connection: keep-alive\r\n");
    }
    put_field(out, b"via", plan.via.as_bytes());
    if let Some(n) = name {
        put_field(out, SERVED_BY.as_bytes(), n.as_bytes());
    }
    if let Some(v) = &set_cookie {
        put_field(out, b"set-cookie", v.as_bytes());
    }
    out.put_slice(b"\r\n");
    match dest {
        Dest::Local => {
            ServiceCounters::bump(&counters.local);
            counters.routed_to(own, false);
        }
        Dest::Owner { index, .. } => {
            StickyCounters::bump(&counters.sticky.forwarded);
            ServiceCounters::bump(&counters.hops_out);
            counters.routed_to(index, true);
        }
    }

    // The body, as framed: what came with the head, then reads.
    let mut body = Body::new(framing);
    let after = &up_buf[resp.len..];
    let (mut ended, mut clean) = match body.advance(after) {
        Ok(p) => {
            out.put_slice(&after[..p.consumed]);
            (p.done, p.consumed == after.len())
        }
        Err(_) => (false, false),
    };
    let mut failed = !ended && !clean;
    if write_within(stream, out, idle).await.is_err() {
        counters.observe(start.elapsed(), served);
        return Next::Abort;
    }
    while !ended && !failed {
        b.up.clear();
        b.up.reserve(READ_CHUNK);
        match coarse::timeout(idle, up.read_buf(&mut b.up)).await {
            Ok(Ok(0)) => {
                // The end of a close-delimited body, else a short one.
                ended = framing == Framing::Close;
                failed = !ended;
                clean = false;
                break;
            }
            Ok(Ok(_)) => match body.advance(&b.up) {
                Ok(p) => {
                    if write_within(stream, &b.up[..p.consumed], idle)
                        .await
                        .is_err()
                    {
                        failed = true;
                        break;
                    }
                    ended = p.done;
                    clean = p.consumed == b.up.len();
                }
                Err(_) => failed = true,
            },
            Ok(Err(_)) | Err(_) => failed = true,
        }
    }
    counters.observe(start.elapsed(), served);
    if failed {
        // Headers were relayed: the client connection is aborted.
        if let Dest::Owner { .. } = dest {
            counters.sticky.error(StickyError::OwnerAborted);
            StickyCounters::bump(&counters.sticky.failed);
        }
        return Next::Abort;
    }
    if up_keeps && clean && !binds {
        dest.put(service, local, up);
    }
    if close_client {
        Next::Close
    } else if binds {
        // Connection-bound authentication starts: the full path binds
        // the client connection's next requests to one upstream.
        Next::HandOver
    } else {
        Next::Keep
    }
}

/// The longest response head taken from an upstream (beyond: 502).
const RESPONSE_HEAD_MAX: usize = 64 * 1024;
/// The most fields a response head may have (beyond: 502).
const RESPONSE_FIELDS_MAX: usize = 100;

/// Why no response head came.
#[derive(Debug)]
enum UpError {
    /// The connection closed (or failed) before any response byte.
    Closed,
    /// A response that is not HTTP/1.x, or whose head is malformed or too
    /// large, or bytes then a close.
    Bad,
}

/// Reads a response head into `buf` (cleared first) and parses it into
/// `fields`, skipping interim (1xx) responses.
async fn response_head(
    up: &mut RawConn,
    buf: &mut BytesMut,
    fields: &mut Vec<Field>,
) -> Result<h1::ResponseHead, UpError> {
    buf.clear();
    let mut any = false;
    loop {
        match h1::parse_response(buf, RESPONSE_HEAD_MAX, RESPONSE_FIELDS_MAX, fields) {
            Ok(Some(h)) if (100..200).contains(&h.status) => {
                if h.status == 101 {
                    return Err(UpError::Bad);
                }
                buf.advance(h.len);
                continue;
            }
            Ok(Some(h)) => return Ok(h),
            Ok(None) => {}
            Err(_) => return Err(UpError::Bad),
        }
        buf.reserve(READ_CHUNK);
        match up.read_buf(buf).await {
            Ok(0) | Err(_) if !any => return Err(UpError::Closed),
            Ok(0) | Err(_) => return Err(UpError::Bad),
            Ok(_) => any = true,
        }
    }
}

/// Relays the rest of a request body (`body`: its framing and how far it
/// came) from the client (`stream`, through `buf`) to the upstream; bytes
/// past its end stay in `buf` (the next request). A body that breaks its
/// chunked framing fails as the connection would.
async fn relay_body<S>(
    stream: &mut S,
    up: &mut RawConn,
    buf: &mut BytesMut,
    body: &mut Body,
    idle: Duration,
) -> std::io::Result<()>
where
    S: AsyncRead + Unpin,
{
    while !body.done() {
        if buf.is_empty() {
            buf.reserve(READ_CHUNK);
            match coarse::timeout(idle, stream.read_buf(buf)).await {
                Ok(Ok(0)) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(e),
                Err(_) => return Err(std::io::ErrorKind::TimedOut.into()),
            }
        }
        let p = body
            .advance(buf)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        write_within(up, &buf[..p.consumed], idle).await?;
        buf.advance(p.consumed);
    }
    Ok(())
}

/// The values of the fields of `kind` (`kinds`: each field's).
fn values<'b>(
    buf: &'b [u8],
    fields: &'b [Field],
    kinds: &'b [Kind],
    kind: Kind,
) -> impl Iterator<Item = &'b [u8]> + 'b {
    fields
        .iter()
        .zip(kinds)
        .filter(move |(_, k)| **k == kind)
        .map(move |(f, _)| buf.get(f.value.clone()).unwrap_or_default())
}

/// Writes all of `bytes` to `w` and flushes it, each step within `idle`
/// (a peer that stops reading for that long fails the write, as the other
/// side's silence fails a read).
async fn write_within<W>(w: &mut W, bytes: &[u8], idle: Duration) -> std::io::Result<()>
where
    W: AsyncWrite + Unpin,
{
    let mut rest = bytes;
    while !rest.is_empty() {
        match coarse::timeout(idle, w.write(rest)).await {
            Ok(Ok(0)) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(Ok(n)) => rest = rest.get(n..).unwrap_or_default(),
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(std::io::ErrorKind::TimedOut.into()),
        }
    }
    // A TLS stream may hold records back until flushed (a no-op on TCP).
    match coarse::timeout(idle, w.flush()).await {
        Ok(r) => r,
        Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
    }
}

/// `name: value` and its line end.
fn put_field(out: &mut BytesMut, name: &[u8], value: &[u8]) {
    out.put_slice(name);
    out.put_slice(b": ");
    out.put_slice(value);
    out.put_slice(b"\r\n");
}

/// Counts a request that got no usable answer from `dest` (`kind`: it
/// timed out, or failed after the request was sent) as the full path
/// counts it, and writes the answer into `out`: 504, or 502 saying
/// whether the owner failed.
fn failed_answer(
    service: &Service,
    dest: Dest,
    kind: ErrorKind,
    served: Option<usize>,
    close: bool,
    out: &mut BytesMut,
) {
    let counters = &service.counters;
    StickyCounters::bump(&counters.sticky.failed);
    let (status, text) = match (kind, dest) {
        (ErrorKind::Timeout, dest) => {
            if let Dest::Owner { .. } = dest {
                counters.sticky.error(StickyError::OwnerTimeout);
            }
            counters.error_at(kind, served);
            ("504 Gateway Timeout", "upstream timed out")
        }
        (_, Dest::Local) => {
            counters.error_at(kind, served);
            ("502 Bad Gateway", "no upstream could be reached")
        }
        (_, Dest::Owner { index, .. }) => {
            service.failed(index);
            if let Some(m) = counters.members.get(index) {
                m.error(ErrorKind::Unreachable);
            }
            counters.sticky.error(StickyError::OwnerFailed);
            ("502 Bad Gateway", OWNER_FAILED)
        }
    };
    out.clear();
    plain_answer(out, status, text, close);
}

/// A plain-text answer of the relay's own, as the full path's
/// [`super::proxy::answer`] makes it: the text and a line end.
fn plain_answer(out: &mut BytesMut, status: &str, text: &str, close: bool) {
    out.put_slice(b"HTTP/1.1 ");
    out.put_slice(status.as_bytes());
    out.put_slice(b"\r\ncontent-type: ");
    out.put_slice(TEXT_PLAIN.as_bytes());
    out.put_slice(b"\r\n");
    out.put_slice(format!("content-length: {}\r\n", text.len() + 1).as_bytes());
    if close {
        out.put_slice(b"connection: close\r\n");
    }
    out.put_slice(b"\r\n");
    out.put_slice(text.as_bytes());
    out.put_u8(b'\n');
}
