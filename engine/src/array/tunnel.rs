//! A `CONNECT` tunnel: bytes copied both ways until each side has closed,
//! one fails, or no byte has moved either way for the service's
//! `idle_timeout_s`.
//!
//! The HTTP side's idle bound stops applying once a connection is
//! upgraded: the HTTP library hands the raw stream over and forgets it.
//! Without a bound of its own, a tunnel whose two ends went quiet (a client
//! gone without a FIN, a NAT that forgot the flow) would hold two sockets
//! and a task for as long as the process runs. So both directions raise
//! one shared flag whenever bytes move, and a watchdog that wakes four
//! times per idle period lowers it; once it has found the flag down for a
//! whole idle period it ends the tunnel. A tunnel that carries bytes in
//! either direction is never cut, and a quiet one ends between one idle
//! period and a quarter more. (A flag, not a clock reading: a hop tunnel
//! carries a request and its answer in a few reads and writes, and reading
//! the clock at each was a measurable share of its relay's time.)

use std::cell::Cell;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// How a tunnel ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Ended {
    /// Both sides closed, or one failed.
    Closed,
    /// Nothing moved either way for the idle time.
    Idle,
}

/// Copies `a` to `b` and `b` to `a` until they close or go idle for
/// `idle` (see the module docs).
pub(super) async fn splice<A, B>(a: A, b: B, idle: Duration) -> Ended
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let moved = Rc::new(Cell::new(false));
    let mut a = Stamped {
        inner: a,
        moved: moved.clone(),
    };
    let mut b = Stamped {
        inner: b,
        moved: moved.clone(),
    };
    let copy = tokio::io::copy_bidirectional(&mut a, &mut b);
    tokio::pin!(copy);
    let tick = (idle / 4).max(Duration::from_millis(1));
    // Ticks in a row that found nothing moved.
    let mut quiet_ticks = 0u32;
    let mut next = Instant::now() + tick;
    loop {
        tokio::select! {
            _ = &mut copy => return Ended::Closed,
            () = tokio::time::sleep_until(next) => {}
        }
        if moved.replace(false) {
            quiet_ticks = 0;
        } else {
            quiet_ticks += 1;
            if tick * quiet_ticks >= idle {
                return Ended::Idle;
            }
        }
        next += tick;
    }
}

/// A stream that raises `moved` whenever bytes move through it.
struct Stamped<S> {
    inner: S,
    moved: Rc<Cell<bool>>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Stamped<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.moved.set(true);
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Stamped<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.moved.set(true);
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A stream whose first bytes were already read off it (`head`, what the
/// HTTP/1 connection had buffered past an upgrade): reads give `head`
/// first, then the stream's own.
pub(super) struct Rewind<S> {
    head: bytes::Bytes,
    stream: S,
}

impl<S> Rewind<S> {
    pub(super) fn new(stream: S, head: bytes::Bytes) -> Self {
        Self { head, stream }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.head.is_empty() {
            let n = this.head.len().min(buf.remaining());
            buf.put_slice(&this.head.split_to(n));
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.stream).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const IDLE: Duration = Duration::from_secs(60);

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap()
    }

    #[test]
    fn a_quiet_tunnel_ends_after_the_idle_time_and_not_before() {
        runtime().block_on(async {
            let (client, _client_far) = tokio::io::duplex(1024);
            let (server, _server_far) = tokio::io::duplex(1024);
            let started = Instant::now();
            let ended = splice(client, server, IDLE).await;
            assert_eq!(ended, Ended::Idle);
            let took = started.elapsed();
            assert!(took >= IDLE && took <= IDLE + IDLE / 4, "{took:?}");
        });
    }

    #[test]
    fn bytes_in_either_direction_keep_a_tunnel_open() {
        runtime().block_on(async {
            let (client, mut client_far) = tokio::io::duplex(1024);
            let (server, mut server_far) = tokio::io::duplex(1024);
            let local = tokio::task::LocalSet::new();
            local
                .run_until(async move {
                    let tunnel = tokio::task::spawn_local(splice(client, server, IDLE));
                    // Ten idle periods, a byte each way every half period,
                    // alternating the direction.
                    let mut got = [0u8; 1];
                    for i in 0..20 {
                        tokio::time::sleep(IDLE / 2).await;
                        if i % 2 == 0 {
                            client_far.write_all(b"c").await.unwrap();
                            server_far.read_exact(&mut got).await.unwrap();
                            assert_eq!(&got, b"c");
                        } else {
                            server_far.write_all(b"s").await.unwrap();
                            client_far.read_exact(&mut got).await.unwrap();
                            assert_eq!(&got, b"s");
                        }
                    }
                    assert!(!tunnel.is_finished(), "a busy tunnel was cut");
                    // Then quiet: ended within the idle time and a tick.
                    let quiet = Instant::now();
                    assert_eq!(tunnel.await.unwrap(), Ended::Idle);
                    assert!(quiet.elapsed() <= IDLE + IDLE / 4);
                })
                .await;
        });
    }

    #[test]
    fn closing_both_sides_ends_the_tunnel_at_once() {
        runtime().block_on(async {
            let (client, client_far) = tokio::io::duplex(1024);
            let (server, server_far) = tokio::io::duplex(1024);
            drop((client_far, server_far));
            let started = Instant::now();
            assert_eq!(splice(client, server, IDLE).await, Ended::Closed);
            assert!(started.elapsed() < IDLE);
        });
    }
}
