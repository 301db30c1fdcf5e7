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
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

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
    idle_timeout: Duration,
    /// The worker's coarse clock: at most about [`CLOCK_TICK`] behind.
    clock: Cell<Instant>,
}

impl Pool {
    /// An empty pool whose connections expire after `idle_timeout` idle.
    pub(super) fn new(idle_timeout: Duration) -> Self {
        Self {
            idle: RefCell::new(HashMap::new()),
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

    /// Closes every connection idle longer than the idle timeout (or
    /// closed by the upstream).
    pub(super) fn sweep(&self) {
        self.idle.borrow_mut().retain(|_, list| {
            list.retain(|(s, since)| self.fresh(*since) && !s.is_closed());
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
