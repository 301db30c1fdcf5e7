//! Connections to upstreams (the owner's dedicated address, a parent,
//! `local`, an origin): one pool per worker per service, no locks (the
//! worker is single-threaded).
//!
//! Guarantees: a pooled connection is handed out only when idle and
//! younger than the idle timeout; a connection goes back to the pool only
//! once its response was read to the end; a connect attempt never takes
//! longer than its timeout.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{Either, Empty};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// The body of a request sent upstream: the client's, or none.
pub(super) type UpBody = Either<Incoming, Empty<Bytes>>;

/// An idle connection and since when it is idle.
type Idle = (SendRequest<UpBody>, Instant);

/// Idle connections kept per upstream address.
const IDLE_PER_ADDRESS: usize = 64;

/// A worker's idle upstream connections, by address.
#[derive(Debug)]
pub(super) struct Pool {
    idle: RefCell<HashMap<SocketAddr, Vec<Idle>>>,
    idle_timeout: Duration,
}

impl Pool {
    /// An empty pool whose connections expire after `idle_timeout` idle.
    pub(super) fn new(idle_timeout: Duration) -> Self {
        Self {
            idle: RefCell::new(HashMap::new()),
            idle_timeout,
        }
    }

    /// An idle connection to `addr`, if one is ready.
    pub(super) fn take(&self, addr: SocketAddr) -> Option<SendRequest<UpBody>> {
        let mut idle = self.idle.borrow_mut();
        let list = idle.get_mut(&addr)?;
        while let Some((sender, since)) = list.pop() {
            if since.elapsed() < self.idle_timeout && sender.is_ready() && !sender.is_closed() {
                return Some(sender);
            }
        }
        None
    }

    /// Closes every connection idle longer than the idle timeout (or
    /// closed by the upstream).
    pub(super) fn sweep(&self) {
        let timeout = self.idle_timeout;
        self.idle.borrow_mut().retain(|_, list| {
            list.retain(|(s, since)| since.elapsed() < timeout && !s.is_closed());
            !list.is_empty()
        });
    }

    /// Returns `sender` to the pool once its current exchange is over (the
    /// response read to the end); dropped when that fails or the pool for
    /// `addr` is full.
    pub(super) fn put_when_ready(
        self: &Rc<Self>,
        addr: SocketAddr,
        mut sender: SendRequest<UpBody>,
    ) {
        let pool = self.clone();
        tokio::task::spawn_local(async move {
            if sender.ready().await.is_err() {
                return;
            }
            let timeout = pool.idle_timeout;
            let mut idle = pool.idle.borrow_mut();
            let list = idle.entry(addr).or_default();
            list.retain(|(s, since)| since.elapsed() < timeout && !s.is_closed());
            if list.len() < IDLE_PER_ADDRESS {
                list.push((sender, Instant::now()));
            }
        });
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
    let stream = tcp(addr, timeout).await?;
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
