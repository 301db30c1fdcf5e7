//! Connections to upstreams (the owner's dedicated address, a parent,
//! `local`, an origin): one pool per worker per service, no locks (the
//! worker is single-threaded).
//!
//! Guarantees: a pooled connection is handed out only when idle and
//! younger than the idle timeout; a connection goes back to the pool only
//! once its response was read to the end (its body, a [`Returning`], puts
//! it back when dropped there: no task per request); a connect attempt
//! never takes longer than its timeout. Idle ages are read on the pool's
//! clock, which the worker refreshes every [`CLOCK_TICK`] (no clock read
//! per request); a connection is handed out only while its age plus one
//! tick is under the idle timeout.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{Either, Empty};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use shoal_dataplane::array::member::{self, MemberKey, MEMBER_HEADER, TUNNEL_PROTOCOL};
use tokio::net::TcpStream;

use super::mux::{Mux, MuxStream};

/// The body of a request sent upstream: the client's, or none.
pub(super) type UpBody = Either<Incoming, Empty<Bytes>>;

/// An idle connection and since when it is idle (on the pool's clock).
type Idle = (SendRequest<UpBody>, Instant);

/// Idle connections kept per upstream address.
const IDLE_PER_ADDRESS: usize = 64;

/// How often the worker refreshes every pool's clock ([`Pool::tick`]).
pub(super) const CLOCK_TICK: Duration = Duration::from_millis(100);

/// A worker's idle upstream connections, by address.
#[derive(Debug)]
pub(super) struct Pool {
    idle: RefCell<HashMap<SocketAddr, Vec<Idle>>>,
    /// Idle connections of the byte relay (`super::relay`), which speaks
    /// HTTP/1 on them itself: plain sockets, no connection task.
    raw: RefCell<HashMap<SocketAddr, Vec<(RawConn, Instant)>>>,
    idle_timeout: Duration,
    /// The worker's coarse clock: at most about [`CLOCK_TICK`] behind.
    clock: Cell<Instant>,
}

impl Pool {
    /// An empty pool whose connections expire after `idle_timeout` idle.
    pub(super) fn new(idle_timeout: Duration) -> Self {
        Self {
            idle: RefCell::new(HashMap::new()),
            raw: RefCell::new(HashMap::new()),
            idle_timeout,
            clock: Cell::new(Instant::now()),
        }
    }

    /// Sets the pool's clock to `now` (the worker, every [`CLOCK_TICK`]).
    pub(super) fn tick(&self, now: Instant) {
        self.clock.set(now);
    }

    /// Whether a connection idle since `since` may still be used: its age
    /// plus one tick (how far the clock may lag) under the idle timeout.
    fn fresh(&self, since: Instant) -> bool {
        self.clock.get().saturating_duration_since(since) + CLOCK_TICK < self.idle_timeout
    }

    /// An idle connection to `addr`, if one is ready.
    pub(super) fn take(&self, addr: SocketAddr) -> Option<SendRequest<UpBody>> {
        let mut idle = self.idle.borrow_mut();
        let list = idle.get_mut(&addr)?;
        while let Some((sender, since)) = list.pop() {
            if self.fresh(since) && sender.is_ready() && !sender.is_closed() {
                return Some(sender);
            }
        }
        None
    }

    /// An idle relay connection to `addr` that is still open: one that
    /// became readable while idle (the upstream closed it, or sent bytes
    /// nobody asked for) is closed instead. No system call unless the
    /// socket's readiness says it became readable.
    pub(super) fn take_raw(&self, addr: SocketAddr) -> Option<RawConn> {
        let mut raw = self.raw.borrow_mut();
        let list = raw.get_mut(&addr)?;
        while let Some((stream, since)) = list.pop() {
            if self.fresh(since) && stream.quiet() {
                return Some(stream);
            }
        }
        None
    }

    /// Keeps `stream`, a relay connection whose exchange is over (its
    /// response read to the end and nothing after it), for the next
    /// request to `addr`; closed when the pool for `addr` is full.
    pub(super) fn put_raw(&self, addr: SocketAddr, stream: RawConn) {
        let mut raw = self.raw.borrow_mut();
        let list = raw.entry(addr).or_default();
        if list.len() >= IDLE_PER_ADDRESS {
            list.retain(|(s, since)| self.fresh(*since) && s.quiet());
        }
        if list.len() < IDLE_PER_ADDRESS {
            list.push((stream, self.clock.get()));
        }
    }

    /// Closes every connection idle longer than the idle timeout (or
    /// closed by the upstream).
    pub(super) fn sweep(&self) {
        self.idle.borrow_mut().retain(|_, list| {
            list.retain(|(s, since)| self.fresh(*since) && !s.is_closed());
            !list.is_empty()
        });
        self.raw.borrow_mut().retain(|_, list| {
            list.retain(|(s, since)| self.fresh(*since) && s.quiet());
            !list.is_empty()
        });
    }

    /// Keeps `sender`, whose exchange is over, for the next request to
    /// `addr`; dropped (closed) when the pool for `addr` is full of
    /// connections still usable.
    fn put(&self, addr: SocketAddr, sender: SendRequest<UpBody>) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.idle.borrow_mut();
        let list = idle.entry(addr).or_default();
        if list.len() >= IDLE_PER_ADDRESS {
            list.retain(|(s, since)| self.fresh(*since) && !s.is_closed());
        }
        if list.len() < IDLE_PER_ADDRESS {
            list.push((sender, self.clock.get()));
        }
    }
}

/// A connection of the byte relay (`super::relay`): a TCP connection to
/// `local`, or a hop tunnel's stream on a multiplexed hop to an owner.
pub(super) enum RawConn {
    /// A TCP connection.
    Tcp(TcpStream),
    /// A stream of a multiplexed hop.
    Mux(MuxStream),
}

impl std::fmt::Debug for RawConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RawConn::Tcp(_) => "RawConn::Tcp",
            RawConn::Mux(_) => "RawConn::Mux",
        })
    }
}

impl RawConn {
    /// Whether an idle connection is still quiet. A TCP connection: not
    /// readable (the usual case, told by its readiness without a system
    /// call), or readable with nothing to read after all; readable with
    /// bytes or an end of stream, the upstream closed it or broke the
    /// protocol, and it is not used again. A stream: open both ways with
    /// nothing unread, on a hop that has not failed.
    fn quiet(&self) -> bool {
        match self {
            RawConn::Tcp(stream) => {
                let mut cx = Context::from_waker(std::task::Waker::noop());
                match stream.poll_read_ready(&mut cx) {
                    Poll::Pending => true,
                    Poll::Ready(Err(_)) => false,
                    Poll::Ready(Ok(())) => {
                        let mut byte = [0u8; 1];
                        matches!(stream.try_read(&mut byte), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
                    }
                }
            }
            RawConn::Mux(stream) => stream.quiet(),
        }
    }
}

impl tokio::io::AsyncRead for RawConn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            RawConn::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            RawConn::Mux(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl tokio::io::AsyncWrite for RawConn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            RawConn::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            RawConn::Mux(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            RawConn::Tcp(s) => Pin::new(s).poll_flush(cx),
            RawConn::Mux(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            RawConn::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            RawConn::Mux(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// Where a response's connection goes back to.
pub(super) struct CheckIn {
    /// The worker's pool for the service.
    pub pool: Rc<Pool>,
    /// The upstream's address.
    pub addr: SocketAddr,
    /// The connection the response came over.
    pub sender: SendRequest<UpBody>,
}

/// An upstream's response body, relayed to the client as it comes; when
/// dropped after its end was read, its connection goes back to the pool
/// (dropped before, the connection closes with it).
pub(super) struct Returning {
    body: Incoming,
    ended: bool,
    check_in: Option<CheckIn>,
    /// Called once if the body fails (the upstream broke off).
    on_error: Option<Rc<dyn Fn()>>,
}

impl Returning {
    /// `body`, returning its connection per `check_in` (`None`: a
    /// connection of its own, never pooled).
    pub(super) fn new(body: Incoming, check_in: Option<CheckIn>) -> Self {
        Self {
            body,
            ended: false,
            check_in,
            on_error: None,
        }
    }

    /// Calls `f` once if the body fails before its end.
    pub(super) fn on_error(mut self, f: Rc<dyn Fn()>) -> Self {
        self.on_error = Some(f);
        self
    }
}

impl Body for Returning {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let frame = Pin::new(&mut this.body).poll_frame(cx);
        match &frame {
            Poll::Ready(None) => this.ended = true,
            Poll::Ready(Some(Err(_))) => {
                if let Some(f) = this.on_error.take() {
                    f();
                }
            }
            _ => {}
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for Returning {
    fn drop(&mut self) {
        if self.ended || self.body.is_end_stream() {
            if let Some(c) = self.check_in.take() {
                c.pool.put(c.addr, c.sender);
            }
        }
    }
}

/// Why no connection was made.
#[derive(Debug, thiserror::Error)]
pub(super) enum ConnectError {
    /// The TCP connect failed.
    #[error("connect: {0}")]
    Io(#[from] io::Error),
    /// The TCP connect took longer than its timeout.
    #[error("connect timed out")]
    Timeout,
    /// The TLS handshake failed or timed out (`backend_tls`).
    #[error("TLS: {0}")]
    Tls(io::Error),
    /// The HTTP/1 handshake failed.
    #[error("handshake: {0}")]
    Http(#[from] hyper::Error),
    /// The owner answered a hop tunnel's opening with this status instead
    /// of `101`.
    #[error("tunnel refused with status {0}")]
    Refused(u16),
}

/// A TCP connection to `addr` within `timeout`.
pub(super) async fn tcp(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, ConnectError> {
    let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| ConnectError::Timeout)??;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// A new HTTP/1 connection to `addr`; its connection task runs on the
/// worker (with upgrades, for `CONNECT`).
pub(super) async fn connect(
    addr: SocketAddr,
    timeout: Duration,
) -> Result<SendRequest<UpBody>, ConnectError> {
    connect_tls(addr, timeout, None).await
}

/// A new HTTP/1 connection to `addr`, over TLS with `tls` (a hop of a
/// sticky service with `backend_tls`); the TLS handshake has its own
/// `timeout`.
pub(super) async fn connect_tls(
    addr: SocketAddr,
    timeout: Duration,
    tls: Option<&tokio_rustls::TlsConnector>,
) -> Result<SendRequest<UpBody>, ConnectError> {
    let stream = tcp(addr, timeout).await?;
    match tls {
        None => handshake(stream).await,
        Some(connector) => {
            let stream = tokio::time::timeout(
                timeout,
                connector.connect(super::tls::hop_name(addr), stream),
            )
            .await
            .map_err(|_| ConnectError::Tls(io::ErrorKind::TimedOut.into()))?
            .map_err(ConnectError::Tls)?;
            handshake(stream).await
        }
    }
}

async fn handshake<S>(stream: S) -> Result<SendRequest<UpBody>, ConnectError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (sender, conn) = http1::Builder::new()
        .handshake(TokioIo::new(stream))
        .await?;
    tokio::task::spawn_local(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "upstream connection ended with an error");
        }
    });
    Ok(sender)
}

/// What signs a hop tunnel's opening: the member key and this member's
/// host id.
pub(super) struct TunnelOpen<'a> {
    /// The member key.
    pub key: &'a MemberKey,
    /// This member's host id.
    pub from: u8,
}

/// A new hop tunnel to the owner's dedicated address `addr` (over TLS with
/// `tls`): one `Upgrade` request signed for this connection's source
/// address (`member::tunnel_target`), and on `101` an HTTP/1 connection
/// over the upgraded stream, which the owner relays to its application
/// unparsed. Any other answer is [`ConnectError::Refused`]; the whole
/// opening, TCP to `101`, takes at most `timeout`.
pub(super) async fn connect_tunnel(
    addr: SocketAddr,
    timeout: Duration,
    tls: Option<&tokio_rustls::TlsConnector>,
    open: &TunnelOpen<'_>,
) -> Result<SendRequest<UpBody>, ConnectError> {
    let opening = async {
        match open_hop(addr, timeout, tls, open, TUNNEL_PROTOCOL).await? {
            HopIo::Tcp(stream) => handshake(stream).await,
            HopIo::Upgraded(up) => handshake(TokioIo::new(up)).await,
        }
    };
    tokio::time::timeout(timeout, opening)
        .await
        .map_err(|_| ConnectError::Timeout)?
}

/// A new multiplexed hop to the owner's dedicated address `addr`, opened
/// like a hop tunnel but with `Upgrade: ` [`member::MUX_PROTOCOL`]; its
/// driver runs on the worker until the connection ends or has had no
/// stream for `idle`. The whole opening takes at most `timeout`.
pub(super) async fn connect_mux(
    addr: SocketAddr,
    timeout: Duration,
    tls: Option<&tokio_rustls::TlsConnector>,
    open: &TunnelOpen<'_>,
    idle: Duration,
) -> Result<Mux, ConnectError> {
    let opened = tokio::time::timeout(
        timeout,
        open_hop(addr, timeout, tls, open, member::MUX_PROTOCOL),
    )
    .await
    .map_err(|_| ConnectError::Timeout)??;
    let mux = match opened {
        HopIo::Tcp(stream) => spawn_mux(stream, idle),
        HopIo::Upgraded(up) => spawn_mux(TokioIo::new(up), idle),
    };
    Ok(mux)
}

fn spawn_mux<S>(io: S, idle: Duration) -> Mux
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + 'static,
{
    let (mux, driver) = Mux::new(io, idle, None);
    tokio::task::spawn_local(async move {
        let end = driver.await;
        tracing::debug!(%end, "multiplexed hop ended");
    });
    mux
}

/// A new HTTP/1 connection over a new stream of `mux`: `Refused(502)` when
/// the owner's application did not accept a connection for it.
pub(super) async fn connect_stream(mux: &Mux) -> Result<SendRequest<UpBody>, ConnectError> {
    match mux.open().await? {
        Some(stream) => {
            // A sticky hop never upgrades (the forwarder drops `Upgrade`).
            let (sender, conn) = http1::Builder::new()
                .handshake(TokioIo::new(stream))
                .await?;
            tokio::task::spawn_local(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "hop stream ended with an error");
                }
            });
            Ok(sender)
        }
        None => Err(ConnectError::Refused(StatusCode::BAD_GATEWAY.as_u16())),
    }
}

/// An opened hop's stream: the TCP socket itself (nothing was buffered
/// past the `101`), or the upgrade's stream (over TLS).
enum HopIo {
    Tcp(TcpStream),
    Upgraded(hyper::upgrade::Upgraded),
}

/// Opens a hop to `addr` with `Upgrade: protocol`: one `GET` signed for
/// this connection's source address (`member::tunnel_target`); the
/// upgraded stream on `101`, [`ConnectError::Refused`] on any other answer.
async fn open_hop(
    addr: SocketAddr,
    timeout: Duration,
    tls: Option<&tokio_rustls::TlsConnector>,
    open: &TunnelOpen<'_>,
    protocol: &'static str,
) -> Result<HopIo, ConnectError> {
    let stream = tcp(addr, timeout).await?;
    let target = member::tunnel_target(stream.local_addr()?);
    let signature = member::sign(
        open.key,
        open.from,
        addr.port(),
        super::proxy::wall_ms(),
        b"GET",
        target.as_bytes(),
    );
    let mut request = Request::new(Either::Right(Empty::new()));
    *request.method_mut() = Method::GET;
    *request.uri_mut() = target
        .parse()
        .map_err(|_| ConnectError::Io(io::ErrorKind::InvalidInput.into()))?;
    let headers = request.headers_mut();
    let host = HeaderValue::try_from(addr.to_string())
        .map_err(|_| ConnectError::Io(io::ErrorKind::InvalidInput.into()))?;
    headers.insert(header::HOST, host);
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static(protocol));
    if let Ok(v) = HeaderValue::try_from(signature) {
        headers.insert(MEMBER_HEADER, v);
    }
    let upgraded = match tls {
        None => upgrade(stream, request).await?,
        Some(connector) => {
            let stream = connector
                .connect(super::tls::hop_name(addr), stream)
                .await
                .map_err(ConnectError::Tls)?;
            upgrade(stream, request).await?
        }
    };
    // Over plain TCP the hop speaks to the socket itself, not through the
    // upgrade's boxed stream. The owner sends nothing after its `101`
    // until it is asked, so nothing can be buffered.
    match upgraded.downcast::<TokioIo<TcpStream>>() {
        Ok(parts) if parts.read_buf.is_empty() => Ok(HopIo::Tcp(parts.io.into_inner())),
        Ok(_) => Err(ConnectError::Refused(101)),
        Err(upgraded) => Ok(HopIo::Upgraded(upgraded)),
    }
}

/// Sends the tunnel's opening `request` over `stream`; the upgraded stream
/// on `101`.
async fn upgrade<S>(
    stream: S,
    request: Request<UpBody>,
) -> Result<hyper::upgrade::Upgraded, ConnectError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let mut sender = handshake(stream).await?;
    let resp = sender.send_request(request).await?;
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        return Err(ConnectError::Refused(resp.status().as_u16()));
    }
    Ok(hyper::upgrade::on(resp).await?)
}
