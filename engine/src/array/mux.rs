//! Multiplexed hops: many hop tunnels between two members over one
//! connection (`Upgrade: shoal-mux/1`; the framing and why it exists are in
//! [`shoal_dataplane::array::mux`]).
//!
//! A [`Mux`] is one such connection as one worker holds it; a [`Driver`]
//! task moves its bytes, and each tunnel on it is a [`MuxStream`], a byte
//! stream that the HTTP library (on the opener) or the tunnel relay (on
//! the owner) uses as it would a TCP connection. Streams write into one
//! shared buffer and wake the driver, which writes everything queued in
//! one send the next time it runs: requests that became ready in the same
//! turn of the worker leave together. It reads as much as the socket holds
//! and hands each stream its frames.
//!
//! Guarantees:
//! - A stream never holds more than [`mux::WINDOW`] unread bytes on
//!   either side: writes wait for credit.
//! - A failed connection (closed, reset, a protocol error) fails every
//!   stream on it at once: reads and writes return an error, an opening
//!   returns an error, and the HTTP library on top reports the exchange
//!   failed as it would for a broken TCP connection.
//! - A stream dropped before both sides closed it is reset at the other
//!   end; a refused opening frees its id.
//! - The opener closes a connection that has had no stream for the idle
//!   time; the owner, which cannot tell a quiet opener from a vanished one,
//!   after four times that, so it never closes one the opener is about to
//!   use.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use shoal_dataplane::array::mux::{self as frame, Kind, HEADER_LEN, MAX_PAYLOAD, MAX_STREAMS};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::coarse;

/// The most bytes one read takes off the connection.
const READ_CHUNK: usize = 64 * 1024;

/// Reads per driver turn before it yields to the worker's other tasks.
const READS_PER_TURN: usize = 16;

/// A stream gives credit back once it has read this much.
const CREDIT_AT: u32 = frame::WINDOW / 4;

/// One stream's state.
#[derive(Default)]
struct Slot {
    /// Received and not yet read.
    inbound: VecDeque<Bytes>,
    unread: usize,
    /// Read and not yet given back as credit.
    unacked: u32,
    /// How many more bytes this side may send.
    credit: u32,
    /// The other side closed its half.
    eof: bool,
    /// This side closed its half.
    closed: bool,
    /// Reset by the other side (or the connection failed).
    reset: bool,
    /// Opener only: `None` while the owner has not answered the opening,
    /// then whether it accepted.
    accepted: Option<bool>,
    /// The id was given back (a refused opening): no reset on drop.
    released: bool,
    reader: Option<Waker>,
    writer: Option<Waker>,
}

impl Slot {
    fn fail(&mut self) {
        self.reset = true;
        if let Some(w) = self.reader.take() {
            w.wake();
        }
        if let Some(w) = self.writer.take() {
            w.wake();
        }
    }
}

/// What a connection's streams and its driver share.
struct Shared {
    /// Frames queued for the connection.
    out: BytesMut,
    slots: HashMap<u32, Slot>,
    /// The opener's next stream id.
    next_id: u32,
    failed: bool,
    driver: Option<Waker>,
}

impl Shared {
    fn queue(&mut self, stream: u32, kind: Kind, payload: &[u8]) {
        self.out
            .extend_from_slice(&frame::header(stream, kind, payload.len()));
        self.out.extend_from_slice(payload);
        if let Some(w) = self.driver.take() {
            w.wake();
        }
    }

    fn fail(&mut self) {
        self.failed = true;
        for slot in self.slots.values_mut() {
            slot.fail();
        }
    }
}

/// One multiplexed hop connection, as a worker holds it: cloned by every
/// request that opens a stream on it.
#[derive(Clone)]
pub(super) struct Mux {
    shared: Rc<RefCell<Shared>>,
}

impl Mux {
    /// A connection over `io`, and the driver task that moves its bytes
    /// (to be spawned on the worker). `on_open` makes the owner's side:
    /// it is given each stream the opener opens, to `accept` or `refuse`.
    /// `idle`: how long the connection may have no stream (four times
    /// that on the owner's side, see the module docs).
    pub(super) fn new<S>(
        io: S,
        idle: Duration,
        on_open: Option<Box<dyn Fn(MuxStream)>>,
    ) -> (Mux, Driver<S>)
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let shared = Rc::new(RefCell::new(Shared {
            out: BytesMut::with_capacity(READ_CHUNK),
            slots: HashMap::new(),
            next_id: 1,
            failed: false,
            driver: None,
        }));
        let idle = if on_open.is_some() { idle * 4 } else { idle };
        let driver = Driver {
            io,
            shared: shared.clone(),
            inbound: BytesMut::new(),
            chunk: vec![0; READ_CHUNK],
            on_open,
            idle,
            quiet: None,
        };
        (Mux { shared }, driver)
    }

    /// Whether the connection failed or was closed.
    pub(super) fn failed(&self) -> bool {
        self.shared.borrow().failed
    }

    /// Whether the connection carries [`MAX_STREAMS`] streams already.
    pub(super) fn full(&self) -> bool {
        self.shared.borrow().slots.len() >= MAX_STREAMS
    }

    /// Opens a stream: `Ok(Some)` once the owner accepted it, `Ok(None)`
    /// when it refused (its application did not accept a connection), an
    /// error when the connection failed or has too many streams. The caller
    /// bounds the wait; a stream given up on is reset.
    pub(super) async fn open(&self) -> io::Result<Option<MuxStream>> {
        let id = {
            let mut sh = self.shared.borrow_mut();
            if sh.failed {
                return Err(io::ErrorKind::ConnectionReset.into());
            }
            if sh.slots.len() >= MAX_STREAMS {
                return Err(io::Error::other("too many streams on the hop"));
            }
            let mut id = sh.next_id;
            while sh.slots.contains_key(&id) {
                id = id.wrapping_add(2);
            }
            sh.next_id = id.wrapping_add(2);
            sh.slots.insert(
                id,
                Slot {
                    credit: frame::WINDOW,
                    ..Slot::default()
                },
            );
            sh.queue(id, Kind::Open, &[]);
            id
        };
        let stream = MuxStream {
            id,
            shared: self.shared.clone(),
        };
        let accepted = std::future::poll_fn(|cx| {
            let mut sh = stream.shared.borrow_mut();
            let Some(slot) = sh.slots.get_mut(&id) else {
                return Poll::Ready(Err(io::Error::from(io::ErrorKind::ConnectionReset)));
            };
            match slot.accepted {
                Some(a) => Poll::Ready(Ok(a)),
                None if slot.reset => {
                    Poll::Ready(Err(io::Error::from(io::ErrorKind::ConnectionReset)))
                }
                None => {
                    slot.reader = Some(cx.waker().clone());
                    Poll::Pending
                }
            }
        })
        .await?;
        if accepted {
            Ok(Some(stream))
        } else {
            if let Some(slot) = stream.shared.borrow_mut().slots.get_mut(&id) {
                slot.released = true;
            }
            Ok(None)
        }
    }
}

/// One tunnel on a [`Mux`]: a byte stream.
pub(super) struct MuxStream {
    id: u32,
    shared: Rc<RefCell<Shared>>,
}

impl MuxStream {
    /// Whether the stream is open both ways with nothing unread on it (an
    /// idle stream that may carry another exchange).
    pub(super) fn quiet(&self) -> bool {
        let sh = self.shared.borrow();
        !sh.failed
            && sh.slots.get(&self.id).is_some_and(|s| {
                s.unread == 0 && !s.eof && !s.closed && !s.reset && s.inbound.is_empty()
            })
    }

    /// The owner's side: the stream is connected to the application.
    pub(super) fn accept(&self) {
        self.shared.borrow_mut().queue(self.id, Kind::Accept, &[]);
    }

    /// The owner's side: the application did not accept a connection.
    pub(super) fn refuse(self) {
        let mut sh = self.shared.borrow_mut();
        if let Some(slot) = sh.slots.get_mut(&self.id) {
            slot.released = true;
        }
        sh.queue(self.id, Kind::Refuse, &[]);
    }
}

impl Drop for MuxStream {
    fn drop(&mut self) {
        let mut sh = self.shared.borrow_mut();
        if let Some(slot) = sh.slots.remove(&self.id) {
            let whole = slot.closed && slot.eof;
            if !sh.failed && !slot.reset && !slot.released && !whole {
                sh.queue(self.id, Kind::Reset, &[]);
            }
        }
    }
}

fn reset() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionReset, "hop stream reset")
}

impl AsyncRead for MuxStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let id = self.id;
        let mut sh = self.shared.borrow_mut();
        let failed = sh.failed;
        let Some(slot) = sh.slots.get_mut(&id) else {
            return Poll::Ready(Err(reset()));
        };
        if let Some(front) = slot.inbound.front_mut() {
            let n = front.len().min(buf.remaining());
            buf.put_slice(&front[..n]);
            front.advance(n);
            if front.is_empty() {
                slot.inbound.pop_front();
            }
            slot.unread -= n;
            slot.unacked += n as u32;
            if slot.unacked >= CREDIT_AT && !failed {
                let give = std::mem::take(&mut slot.unacked);
                sh.queue(id, Kind::Credit, &give.to_be_bytes());
            }
            return Poll::Ready(Ok(()));
        }
        if slot.eof {
            return Poll::Ready(Ok(()));
        }
        if slot.reset || failed {
            return Poll::Ready(Err(reset()));
        }
        slot.reader = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl AsyncWrite for MuxStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let id = self.id;
        let mut sh = self.shared.borrow_mut();
        let failed = sh.failed;
        let Some(slot) = sh.slots.get_mut(&id) else {
            return Poll::Ready(Err(reset()));
        };
        if slot.reset || failed || slot.closed {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if slot.credit == 0 {
            slot.writer = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let n = buf.len().min(slot.credit as usize).min(MAX_PAYLOAD);
        slot.credit -= n as u32;
        sh.queue(id, Kind::Data, &buf[..n]);
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // The driver sends what is queued the next time it runs.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let id = self.id;
        let mut sh = self.shared.borrow_mut();
        let failed = sh.failed;
        if let Some(slot) = sh.slots.get_mut(&id) {
            if !slot.closed && !slot.reset && !failed {
                slot.closed = true;
                sh.queue(id, Kind::Close, &[]);
            }
        }
        Poll::Ready(Ok(()))
    }
}

/// The task that moves a [`Mux`]'s bytes; it ends when the connection
/// fails, is closed by the other side, or has had no stream for its idle
/// time, failing every stream still on it.
pub(super) struct Driver<S> {
    io: S,
    shared: Rc<RefCell<Shared>>,
    /// Received bytes not yet a whole frame.
    inbound: BytesMut,
    chunk: Vec<u8>,
    on_open: Option<Box<dyn Fn(MuxStream)>>,
    idle: Duration,
    /// Armed while the connection has no stream.
    quiet: Option<coarse::Sleep>,
}

/// Why a driver ended.
#[derive(Debug, thiserror::Error)]
pub(super) enum DriverEnd {
    /// No stream for the idle time.
    #[error("no stream for the idle time")]
    Idle,
    /// The other side closed the connection.
    #[error("closed by the other member")]
    Closed,
    /// The connection failed.
    #[error("{0}")]
    Io(io::Error),
    /// The other side broke the protocol.
    #[error("protocol error: {0}")]
    Protocol(String),
}

impl<S: AsyncRead + AsyncWrite + Unpin> Driver<S> {
    /// Sends what is queued; `Ok(true)` when everything left.
    fn send(&mut self, cx: &mut Context<'_>) -> Result<bool, DriverEnd> {
        let mut wrote = false;
        loop {
            let mut sh = self.shared.borrow_mut();
            if sh.out.is_empty() {
                break;
            }
            match Pin::new(&mut self.io).poll_write(cx, &sh.out) {
                Poll::Ready(Ok(0)) => return Err(DriverEnd::Closed),
                Poll::Ready(Ok(n)) => {
                    sh.out.advance(n);
                    wrote = true;
                }
                Poll::Ready(Err(e)) => return Err(DriverEnd::Io(e)),
                Poll::Pending => return Ok(false),
            }
        }
        if wrote {
            // A TLS stream holds records until flushed.
            if let Poll::Ready(Err(e)) = Pin::new(&mut self.io).poll_flush(cx) {
                return Err(DriverEnd::Io(e));
            }
        }
        Ok(true)
    }

    /// Reads what the connection holds and hands out its frames; the
    /// streams the opener opened (owner's side), for `on_open`.
    fn receive(&mut self, cx: &mut Context<'_>, opened: &mut Vec<u32>) -> Result<(), DriverEnd> {
        for turn in 0..READS_PER_TURN {
            let mut rb = ReadBuf::new(&mut self.chunk);
            match Pin::new(&mut self.io).poll_read(cx, &mut rb) {
                Poll::Ready(Ok(())) if rb.filled().is_empty() => return Err(DriverEnd::Closed),
                Poll::Ready(Ok(())) => {
                    let n = rb.filled().len();
                    self.inbound.extend_from_slice(&self.chunk[..n]);
                    self.dispatch(opened)?;
                }
                Poll::Ready(Err(e)) => return Err(DriverEnd::Io(e)),
                Poll::Pending => return Ok(()),
            }
            if turn + 1 == READS_PER_TURN {
                // More may be waiting: come back after the others ran.
                cx.waker().wake_by_ref();
            }
        }
        Ok(())
    }

    /// Hands out every whole frame in `inbound`.
    fn dispatch(&mut self, opened: &mut Vec<u32>) -> Result<(), DriverEnd> {
        let owner = self.on_open.is_some();
        let mut sh = self.shared.borrow_mut();
        loop {
            let h = match frame::parse(&self.inbound) {
                Ok(Some(h)) => h,
                Ok(None) => return Ok(()),
                Err(e) => return Err(DriverEnd::Protocol(e.to_string())),
            };
            if self.inbound.len() < HEADER_LEN + h.len {
                return Ok(());
            }
            self.inbound.advance(HEADER_LEN);
            let payload = self.inbound.split_to(h.len).freeze();
            let protocol =
                |what: &str| Err(DriverEnd::Protocol(format!("{what} (stream {})", h.stream)));
            match h.kind {
                Kind::Open => {
                    if !owner {
                        return protocol("the owner opened a stream");
                    }
                    if sh.slots.contains_key(&h.stream) {
                        return protocol("a stream opened twice");
                    }
                    if sh.slots.len() >= MAX_STREAMS {
                        sh.queue(h.stream, Kind::Refuse, &[]);
                        continue;
                    }
                    sh.slots.insert(
                        h.stream,
                        Slot {
                            credit: frame::WINDOW,
                            accepted: Some(true),
                            ..Slot::default()
                        },
                    );
                    opened.push(h.stream);
                }
                Kind::Accept | Kind::Refuse => {
                    if owner {
                        return protocol("the opener answered an opening");
                    }
                    if let Some(slot) = sh.slots.get_mut(&h.stream) {
                        slot.accepted = Some(h.kind == Kind::Accept);
                        if let Some(w) = slot.reader.take() {
                            w.wake();
                        }
                    }
                }
                Kind::Data => {
                    // A stream this side dropped (and reset) may still get
                    // what was in flight: dropped.
                    if let Some(slot) = sh.slots.get_mut(&h.stream) {
                        if slot.unread + h.len > frame::WINDOW as usize {
                            return protocol("data past the window");
                        }
                        slot.unread += h.len;
                        slot.inbound.push_back(payload);
                        if let Some(w) = slot.reader.take() {
                            w.wake();
                        }
                    }
                }
                Kind::Close => {
                    if let Some(slot) = sh.slots.get_mut(&h.stream) {
                        slot.eof = true;
                        if let Some(w) = slot.reader.take() {
                            w.wake();
                        }
                    }
                }
                Kind::Reset => {
                    if let Some(slot) = sh.slots.get_mut(&h.stream) {
                        slot.fail();
                    }
                }
                Kind::Credit => {
                    if let Some(slot) = sh.slots.get_mut(&h.stream) {
                        slot.credit = slot.credit.saturating_add(frame::credit_count(&payload));
                        if let Some(w) = slot.writer.take() {
                            w.wake();
                        }
                    }
                }
            }
        }
    }

    fn turn(&mut self, cx: &mut Context<'_>) -> Poll<DriverEnd> {
        let mut opened = Vec::new();
        loop {
            let sent = match self.send(cx) {
                Ok(s) => s,
                Err(e) => return Poll::Ready(e),
            };
            if let Err(e) = self.receive(cx, &mut opened) {
                return Poll::Ready(e);
            }
            if !opened.is_empty() {
                if let Some(on_open) = &self.on_open {
                    for id in opened.drain(..) {
                        on_open(MuxStream {
                            id,
                            shared: self.shared.clone(),
                        });
                    }
                }
            }
            // What the frames just read made this side queue (refusals,
            // credit) goes now, unless the socket is full.
            if !sent || self.shared.borrow().out.is_empty() {
                break;
            }
        }
        let empty = self.shared.borrow().slots.is_empty();
        if empty {
            let idle = self.idle;
            let quiet = self.quiet.get_or_insert_with(|| coarse::Sleep::after(idle));
            if Pin::new(quiet).poll(cx).is_ready() {
                return Poll::Ready(DriverEnd::Idle);
            }
        } else {
            self.quiet = None;
        }
        self.shared.borrow_mut().driver = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Future for Driver<S> {
    type Output = DriverEnd;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<DriverEnd> {
        let this = self.get_mut();
        let end = std::task::ready!(this.turn(cx));
        this.shared.borrow_mut().fail();
        Poll::Ready(end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    /// Runs `f` on a current-thread runtime with the worker's coarse timer
    /// (paused clock with `paused`).
    fn run<F: Future<Output = ()>>(paused: bool, f: F) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(paused)
            .build()
            .expect("runtime");
        let local = tokio::task::LocalSet::new();
        local.block_on(&rt, async {
            tokio::task::spawn_local(coarse::drive());
            f.await;
        });
    }

    /// An opener and an owner over an in-memory connection; the owner
    /// echoes every stream it accepts (or refuses them all with
    /// `refuse`). Returns the opener and the owner's driver's end.
    fn pair(refuse: bool, idle: Duration) -> (Mux, tokio::task::JoinHandle<DriverEnd>, Mux) {
        let (a, b) = tokio::io::duplex(256 * 1024);
        let (opener, driver) = Mux::new(a, idle, None);
        let opener_end = tokio::task::spawn_local(driver);
        let on_open: Box<dyn Fn(MuxStream)> = Box::new(move |mut s: MuxStream| {
            if refuse {
                s.refuse();
                return;
            }
            s.accept();
            tokio::task::spawn_local(async move {
                let mut buf = vec![0u8; 4096];
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if s.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    }
                }
                let _ = s.shutdown().await;
            });
        });
        let (owner, owner_driver) = Mux::new(b, idle, Some(on_open));
        tokio::task::spawn_local(async move {
            let _ = owner_driver.await;
        });
        (opener, opener_end, owner)
    }

    /// An opener and an owner that accepts every stream and hands it
    /// over, over a connection buffering `buffer` bytes each way.
    fn accepting(buffer: usize) -> (Mux, tokio::sync::mpsc::UnboundedReceiver<MuxStream>) {
        let (a, b) = tokio::io::duplex(buffer);
        let (opener, d1) = Mux::new(a, Duration::from_secs(30), None);
        tokio::task::spawn_local(d1);
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let on_open: Box<dyn Fn(MuxStream)> = Box::new(move |s: MuxStream| {
            s.accept();
            let _ = tx.send(s);
        });
        let (owner, d2) = Mux::new(b, Duration::from_secs(30), Some(on_open));
        tokio::task::spawn_local(async move {
            let _owner = owner;
            d2.await
        });
        (opener, rx)
    }

    async fn echo(stream: &mut MuxStream, bytes: &[u8]) -> Vec<u8> {
        stream.write_all(bytes).await.expect("write");
        let mut back = vec![0u8; bytes.len()];
        stream.read_exact(&mut back).await.expect("read back");
        back
    }

    #[test]
    fn streams_carry_their_own_bytes_both_ways_and_close_cleanly() {
        run(false, async {
            let (opener, _end, _owner) = pair(false, Duration::from_secs(30));
            let mut streams = Vec::new();
            for _ in 0..50 {
                streams.push(opener.open().await.expect("open").expect("accepted"));
            }
            // Interleaved: each stream's echo is its own.
            for round in 0..3u8 {
                for (i, s) in streams.iter_mut().enumerate() {
                    let msg = format!("stream {i} round {round}");
                    assert_eq!(echo(s, msg.as_bytes()).await, msg.as_bytes());
                }
            }
            let mut s = streams.pop().expect("a stream");
            s.shutdown().await.expect("close");
            let mut rest = Vec::new();
            s.read_to_end(&mut rest)
                .await
                .expect("EOF after the owner closed");
            assert!(rest.is_empty());
            drop(s);
            drop(streams);
            tokio::task::yield_now().await;
            assert!(!opener.failed());
        });
    }

    #[test]
    fn a_stream_never_has_more_than_a_window_in_flight() {
        run(false, async {
            let (opener, mut rx) = accepting(1024 * 1024);
            let mut s = opener.open().await.expect("open").expect("accepted");
            let mut far = rx.recv().await.expect("the owner's stream");
            // Nobody reads the far side: writes stop at the window.
            let total = 3 * frame::WINDOW as usize;
            let data: Vec<u8> = (0..total).map(|i| (i % 251) as u8).collect();
            let mut sent = 0;
            while sent < total {
                match tokio::time::timeout(Duration::from_millis(200), s.write(&data[sent..])).await
                {
                    Ok(Ok(n)) => sent += n,
                    Ok(Err(e)) => panic!("write failed: {e}"),
                    Err(_) => break,
                }
            }
            assert_eq!(
                sent,
                frame::WINDOW as usize,
                "a writer with nobody reading stops at the window"
            );
            // Reading gives credit back: the rest goes through, in order.
            let writer = tokio::task::spawn_local(async move {
                s.write_all(&data[sent..]).await.expect("the rest");
                s.shutdown().await.expect("close");
                s
            });
            let mut got = Vec::new();
            far.read_to_end(&mut got).await.expect("read all");
            let _s = writer.await.expect("writer");
            assert_eq!(got.len(), total);
            assert!(got.iter().enumerate().all(|(i, b)| *b == (i % 251) as u8));
        });
    }

    #[test]
    fn a_refused_opening_is_none_and_frees_its_id() {
        run(false, async {
            let (opener, _end, _owner) = pair(true, Duration::from_secs(30));
            for _ in 0..3 {
                assert!(opener.open().await.expect("answered").is_none());
            }
            assert!(opener.shared.borrow().slots.is_empty());
            assert!(!opener.failed());
        });
    }

    #[test]
    fn a_dropped_stream_is_reset_at_the_other_end() {
        run(false, async {
            let (opener, mut rx) = accepting(64 * 1024);
            let s = opener.open().await.expect("open").expect("accepted");
            let mut far = rx.recv().await.expect("the owner's stream");
            drop(s);
            let mut buf = [0u8; 8];
            let e = far.read(&mut buf).await.expect_err("reset");
            assert_eq!(e.kind(), io::ErrorKind::ConnectionReset);
            assert!(far.write(b"x").await.is_err());
        });
    }

    #[test]
    fn a_failed_connection_fails_every_stream_and_every_opening() {
        run(false, async {
            let (a, b): (DuplexStream, DuplexStream) = tokio::io::duplex(64 * 1024);
            let (opener, d1) = Mux::new(a, Duration::from_secs(30), None);
            let end = tokio::task::spawn_local(d1);
            // The owner's side accepts one stream by hand, then goes away.
            let (owner, d2) = Mux::new(
                b,
                Duration::from_secs(30),
                Some(Box::new(|s: MuxStream| s.accept())),
            );
            let owner_task = tokio::task::spawn_local(d2);
            let opening = tokio::task::spawn_local({
                let opener = opener.clone();
                async move { opener.open().await }
            });
            let mut s = opening
                .await
                .expect("task")
                .expect("open")
                .expect("accepted");
            owner_task.abort();
            drop(owner);
            let mut buf = [0u8; 8];
            assert!(
                s.read(&mut buf).await.is_err(),
                "a read on a dead hop fails"
            );
            assert!(matches!(
                end.await.expect("driver"),
                DriverEnd::Closed | DriverEnd::Io(_)
            ));
            assert!(opener.failed());
            assert!(opener.open().await.is_err());
            assert!(s.write(b"x").await.is_err());
        });
    }

    #[test]
    fn garbage_from_the_other_side_ends_the_connection_with_a_protocol_error() {
        run(false, async {
            let (a, mut b) = tokio::io::duplex(64 * 1024);
            let (opener, d1) = Mux::new(a, Duration::from_secs(30), None);
            let end = tokio::task::spawn_local(d1);
            let opening = tokio::task::spawn_local({
                let opener = opener.clone();
                async move { opener.open().await }
            });
            // Read the opening, answer with an unknown kind.
            let mut head = [0u8; HEADER_LEN];
            b.read_exact(&mut head).await.expect("the opening");
            assert_eq!(frame::parse(&head).unwrap().unwrap().kind, Kind::Open);
            b.write_all(&[0, 0, 0, 1, 9, 0, 0, 0])
                .await
                .expect("garbage");
            assert!(matches!(end.await.expect("driver"), DriverEnd::Protocol(_)));
            assert!(opening.await.expect("task").is_err());
            // Data past the window is one too.
            let (a, mut b) = tokio::io::duplex(1024 * 1024);
            let (opener, d1) = Mux::new(a, Duration::from_secs(30), None);
            let end = tokio::task::spawn_local(d1);
            let opening = tokio::task::spawn_local({
                let opener = opener.clone();
                async move { opener.open().await }
            });
            b.read_exact(&mut head).await.expect("the opening");
            let id = frame::parse(&head).unwrap().unwrap().stream;
            b.write_all(&frame::header(id, Kind::Accept, 0))
                .await
                .expect("accept");
            let _s = opening
                .await
                .expect("task")
                .expect("open")
                .expect("accepted");
            let chunk = vec![7u8; MAX_PAYLOAD];
            for _ in 0..=(frame::WINDOW as usize / MAX_PAYLOAD) {
                b.write_all(&frame::header(id, Kind::Data, MAX_PAYLOAD))
                    .await
                    .expect("header");
                b.write_all(&chunk).await.expect("data");
            }
            assert!(matches!(end.await.expect("driver"), DriverEnd::Protocol(_)));
        });
    }

    #[test]
    fn the_opener_closes_a_hop_without_streams_after_the_idle_time() {
        run(true, async {
            let (opener, end, _owner) = pair(false, Duration::from_secs(10));
            let mut s = opener.open().await.expect("open").expect("accepted");
            assert_eq!(echo(&mut s, b"x").await, b"x");
            // A stream open: never idle.
            tokio::time::sleep(Duration::from_secs(30)).await;
            assert!(!opener.failed());
            drop(s);
            let started = tokio::time::Instant::now();
            assert!(matches!(end.await.expect("driver"), DriverEnd::Idle));
            let took = started.elapsed();
            assert!(
                took >= Duration::from_secs(10) && took < Duration::from_secs(11),
                "{took:?}"
            );
            assert!(opener.failed());
        });
    }
}
