//! The one narrow, batch-oriented interface every frame backend implements.
//!
//! AF_XDP, AF_PACKET and pcap replay all look the same to a poll loop: it asks
//! for a batch of received frames, judges them in place (zero-copy: the slices
//! point into the backend's ring or UMEM), and the frames are released back to
//! the kernel when the callback returns. Frames the engine originates (ARP
//! replies, heartbeats) leave through [`FrameIo::transmit`].

use std::io;

/// Most frames one receive batch hands to a poll loop.
pub const MAX_BATCH: usize = 256;

/// A source and sink of raw Ethernet frames on one rx queue.
pub trait FrameIo: Send {
    /// Receives up to `max` (at most [`MAX_BATCH`]) frames that are ready now
    /// and calls `handle` once with all of them (possibly zero), then returns
    /// their buffers to the kernel. Never blocks. Returns how many frames
    /// were handed over.
    fn receive(&mut self, max: usize, handle: &mut dyn FnMut(&[&[u8]])) -> io::Result<usize>;

    /// Queues `frames` for transmission on the wire and kicks the kernel.
    /// Returns how many were accepted (the rest were dropped for lack of room).
    fn transmit(&mut self, frames: &[&[u8]]) -> io::Result<usize>;

    /// Blocks up to `timeout_ms` until a frame may be ready (used by the
    /// back-off idle policy). Spurious wake-ups are allowed.
    fn wait(&mut self, timeout_ms: i32) -> io::Result<()>;

    /// The descriptor that polls readable (`poll(2)`, `POLLIN`) when frames
    /// may be waiting, for a loop that sleeps on several at once; `None`
    /// when the backend has none (the loop then falls back to
    /// [`FrameIo::wait`] with short pauses). It must stay open as long as
    /// the backend lives.
    fn wake_fd(&self) -> Option<std::os::fd::RawFd> {
        None
    }

    /// Frames are already waiting in a ring the kernel will not signal
    /// again: the loop must not sleep.
    fn has_pending(&self) -> bool {
        false
    }

    /// What the kernel counted against this socket's receive side, when the
    /// backend has such counters (AF_XDP's `XDP_STATISTICS`).
    fn socket_drops(&self) -> Option<SocketDrops> {
        None
    }

    /// Human-readable description, for logs and `query`
    /// (for example `af_xdp native copy queue 0`).
    fn describe(&self) -> String;
}

/// Frames the kernel could not hand to a socket, as it counts them
/// (AF_XDP's `XDP_STATISTICS`), summed over sockets with [`SocketDrops::add`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SocketDrops {
    /// Dropped for any reason (`rx_dropped`), a frame too long for a UMEM
    /// frame among them.
    pub rx_dropped: u64,
    /// Invalid rx descriptors (`rx_invalid_descs`).
    pub rx_invalid_descs: u64,
    /// Dropped because the rx ring was full (`rx_ring_full`).
    pub rx_ring_full: u64,
    /// Times the fill ring was empty when a frame arrived
    /// (`rx_fill_ring_empty_descs`).
    pub rx_fill_ring_empty_descs: u64,
}

impl SocketDrops {
    /// Adds `other` into `self`.
    pub fn add(&mut self, other: &Self) {
        self.rx_dropped += other.rx_dropped;
        self.rx_invalid_descs += other.rx_invalid_descs;
        self.rx_ring_full += other.rx_ring_full;
        self.rx_fill_ring_empty_descs += other.rx_fill_ring_empty_descs;
    }
}

/// Where kept frames go: the local kernel stack, through a device shoal owns.
pub trait Delivery: Send {
    /// Hands `frames` to the local kernel stack; returns how many were taken.
    fn deliver(&mut self, frames: &[&[u8]]) -> io::Result<usize>;
}
