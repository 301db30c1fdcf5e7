//! The AF_XDP socket seam: one socket bound to one rx queue, its four rings,
//! its UMEM, and the account of which UMEM frames the kernel holds.
//!
//! # What it owns and guarantees
//!
//! - [`Xsk`] owns an anonymous mapping of `2 × ring_size` frames registered
//!   as the socket's UMEM, the socket, and its fill, completion, rx and tx
//!   rings. The first half of the UMEM cycles through the fill and rx rings,
//!   the second half through the tx and completion rings.
//! - Every frame is in exactly one place: with the kernel (given through the
//!   fill or tx ring and not yet back through the rx or completion ring), in
//!   the stash of receive frames waiting for a fill slot, in the free list of
//!   tx frames, or lent to the caller for the length of one call. Userspace
//!   reads or writes a frame only while the kernel does not hold it. This
//!   account is kept entirely inside this module: it is what makes reading
//!   and writing the shared mapping sound, so no caller can break it.
//! - Descriptors the kernel hands back are checked against that layout: a
//!   receive descriptor outside the receive half, or overrunning its frame,
//!   is counted and never read; a completion outside the tx half is ignored.
//! - Dropping an [`Xsk`] closes the socket and unmaps its rings before the
//!   UMEM is unmapped (see the type's invariant).
//! - Nothing asserts on ring state: frames the fill ring cannot take yet wait
//!   in the stash and are retried on every [`Xsk::refill`].

use std::ffi::CString;
use std::io;
use std::mem::ManuallyDrop;
use std::num::NonZeroU32;
use std::os::fd::RawFd;
use std::ptr::NonNull;
use std::time::Duration;

use xdpilone::xdp::{XdpDesc, XdpStatisticsV2};
use xdpilone::{DeviceQueue, IfInfo, RingRx, RingTx, Socket, SocketConfig, Umem, UmemConfig, User};

use crate::io::MAX_BATCH;

/// Bind attempts when the kernel answers `EBUSY`.
const BIND_ATTEMPTS: u32 = 8;
/// First back-off after `EBUSY`; doubles up to [`BIND_MAX_DELAY`].
const BIND_FIRST_DELAY: Duration = Duration::from_millis(25);
const BIND_MAX_DELAY: Duration = Duration::from_millis(400);

/// Where one AF_XDP socket goes and how large its rings and frames are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct XskConfig<'a> {
    /// The interface.
    pub ifname: &'a str,
    /// The rx queue.
    pub queue: u32,
    /// Entries in each ring (a power of two).
    pub ring_size: u32,
    /// UMEM frame size (a power of two).
    pub frame_size: u32,
    /// Try a zero-copy bind first (falls back to copy mode).
    pub zero_copy: bool,
}

/// A step of opening a socket that failed, with its `errno`.
#[derive(Debug, thiserror::Error)]
#[error("{step} failed: {source}")]
pub struct XskError {
    /// The step (for example `bind` or `mmap UMEM`).
    pub step: &'static str,
    /// The `errno`.
    #[source]
    pub source: io::Error,
}

impl XskError {
    fn new(step: &'static str, source: io::Error) -> Self {
        Self { step, source }
    }

    fn errno(step: &'static str, e: &xdpilone::Errno) -> Self {
        Self::new(step, errno_error(e))
    }
}

fn errno_error(e: &xdpilone::Errno) -> io::Error {
    // xdpilone reports some errors as negative errno values.
    io::Error::from_raw_os_error(e.get_raw().abs())
}

/// What one [`Xsk::receive`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Received {
    /// Frames handed to the callback.
    pub frames: usize,
    /// Descriptors refused (outside the receive half or overrunning their
    /// frame).
    pub bad_descs: u64,
}

/// What one [`Xsk::transmit`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sent {
    /// Frames queued in the tx ring.
    pub frames: usize,
    /// Frames skipped because they were empty or larger than a UMEM frame.
    pub oversize: u64,
}

/// What a transmit kick achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kick {
    /// The kernel drained the transmit ring.
    Done,
    /// The kernel stopped early (copy mode sends a bounded batch per kick, or
    /// the device was busy); kick again later.
    Again,
}

/// The rings of one bound socket, and through them the socket itself.
struct Rings {
    rx: RingRx,
    tx: RingTx,
    device: DeviceQueue,
    user: User,
}

/// One AF_XDP socket on one rx queue, with its rings and UMEM.
///
/// # Invariant
///
/// The kernel and the rings hold pointers into `area` for as long as the
/// socket and the rings exist, so `area` must be unmapped only after they
/// are gone. `Drop` releases `rings` (closing the socket and unmapping the
/// rings) before it returns, and fields are dropped only after `Drop::drop`
/// returns: the order therefore holds whatever order the fields are
/// declared in. `rings` is a [`ManuallyDrop`] so that nothing else drops it.
pub struct Xsk {
    rings: ManuallyDrop<Rings>,
    area: UmemArea,
    fd: RawFd,
    frame_size: u64,
    /// UMEM offsets below this are receive frames; the rest are tx frames.
    rx_end: u64,
    zero_copy: bool,
    /// Descriptors read by the current [`Xsk::receive`].
    descs: Vec<XdpDesc>,
    /// Receive frames waiting for a fill-ring slot.
    stash: Vec<u64>,
    /// Tx frames the kernel does not hold.
    tx_free: Vec<u64>,
}

impl Drop for Xsk {
    fn drop(&mut self) {
        // SAFETY: `rings` is dropped exactly once, here; `self` is not used
        // again after `drop`, and no method hands out the rings.
        unsafe { ManuallyDrop::drop(&mut self.rings) };
        // `area` is unmapped when the fields drop, after this returns.
    }
}

impl std::fmt::Debug for Xsk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Xsk")
            .field("fd", &self.fd)
            .field("frame_size", &self.frame_size)
            .field("zero_copy", &self.zero_copy)
            .field("stashed", &self.stash.len())
            .field("tx_free", &self.tx_free.len())
            .finish_non_exhaustive()
    }
}

impl Xsk {
    /// Maps the UMEM, opens the socket on `config.queue` of
    /// `config.ifname`, binds it (zero-copy first when asked, else copy
    /// mode; an `EBUSY` bind is retried with a short back-off), marks it
    /// close-on-exec, and fills the fill ring.
    ///
    /// # Errors
    /// The first step that failed.
    pub fn open(config: &XskConfig<'_>) -> Result<Self, XskError> {
        let invalid = || XskError::new("UMEM geometry", io::Error::from_raw_os_error(libc::EINVAL));
        if !config.ring_size.is_power_of_two() || !config.frame_size.is_power_of_two() {
            return Err(invalid());
        }
        let frame_size = u64::from(config.frame_size);
        let rx_end = u64::from(config.ring_size) * frame_size;
        let len = rx_end
            .checked_mul(2)
            .and_then(|l| usize::try_from(l).ok())
            .ok_or_else(invalid)?;
        let area = UmemArea::map(len).map_err(|e| XskError::new("mmap UMEM", e))?;

        let mut bound = None;
        if config.zero_copy {
            match bind(config, &area, SocketConfig::XDP_BIND_ZEROCOPY) {
                Ok(rings) => bound = Some((rings, true)),
                Err(e) => tracing::info!(
                    ifname = %config.ifname,
                    queue = config.queue,
                    error = %e,
                    "zero-copy bind failed, using copy mode"
                ),
            }
        }
        let (rings, zero_copy) = match bound {
            Some(b) => b,
            None => (bind(config, &area, SocketConfig::XDP_BIND_COPY)?, false),
        };
        let fd = rings.user.as_raw_fd();
        let mut this = Self {
            rings: ManuallyDrop::new(rings),
            area,
            fd,
            frame_size,
            rx_end,
            zero_copy,
            descs: Vec::with_capacity(MAX_BATCH),
            stash: (0..u64::from(config.ring_size))
                .map(|i| i * frame_size)
                .collect(),
            tx_free: (0..u64::from(config.ring_size))
                .map(|i| rx_end + i * frame_size)
                .collect(),
        };
        // xdpilone opens the socket without SOCK_CLOEXEC; a child the engine
        // spawns must not keep the queue (and its UMEM) busy.
        set_cloexec(fd).map_err(|e| XskError::new("fcntl(FD_CLOEXEC)", e))?;
        this.refill();
        Ok(this)
    }

    /// The socket's fd (for the XSKMAP and for waiting on it). Valid while
    /// `self` lives.
    pub fn fd(&self) -> RawFd {
        self.fd
    }

    /// Whether the socket is bound in zero-copy mode.
    pub fn zero_copy(&self) -> bool {
        self.zero_copy
    }

    /// Receive frames waiting for a fill-ring slot.
    pub fn stashed(&self) -> usize {
        self.stash.len()
    }

    /// The kernel's counters (`getsockopt(XDP_STATISTICS)`).
    pub fn statistics(&self) -> io::Result<XdpStatisticsV2> {
        self.rings.user.statistics_v2().map_err(|e| errno_error(&e))
    }

    /// Frames in the tx ring the kernel has not taken yet.
    pub fn tx_pending(&self) -> u32 {
        self.rings.tx.pending()
    }

    /// Whether received frames are waiting in the rx ring.
    pub fn has_pending(&self) -> bool {
        self.rings.rx.available() > 0
    }

    /// Gives stashed receive frames back to the fill ring, as many as fit.
    /// Returns whether some had to stay in the stash (the ring was full).
    pub fn refill(&mut self) -> bool {
        if self.stash.is_empty() {
            return false;
        }
        let want = u32::try_from(self.stash.len()).unwrap_or(u32::MAX);
        let mut writer = self.rings.device.fill(want);
        let put = writer.insert(self.stash.iter().rev().copied()) as usize;
        writer.commit();
        drop(writer);
        let keep = self.stash.len().saturating_sub(put);
        self.stash.truncate(keep);
        keep > 0
    }

    /// Reads up to `max` (at most [`MAX_BATCH`]) descriptors from the rx
    /// ring, hands the frames they describe to `handle` as slices into the
    /// UMEM (no copy), then puts them in the stash for the next
    /// [`Xsk::refill`]. Does not refill.
    pub fn receive(&mut self, max: usize, handle: &mut dyn FnMut(&[&[u8]])) -> Received {
        let want = u32::try_from(max.min(MAX_BATCH)).unwrap_or(0);
        self.descs.clear();
        if want > 0 {
            let mut reader = self.rings.rx.receive(want);
            while let Some(desc) = reader.read() {
                self.descs.push(desc);
            }
            reader.release();
        }

        let mut slices: [&[u8]; MAX_BATCH] = [&[]; MAX_BATCH];
        let mut done = Received::default();
        for desc in &self.descs {
            let within = desc.addr % self.frame_size;
            let fits = within + u64::from(desc.len) <= self.frame_size;
            if desc.addr >= self.rx_end || !fits {
                done.bad_descs += 1;
                continue;
            }
            // SAFETY: the kernel handed this frame back through the rx ring,
            // so it no longer writes to it; it returns to the kernel only
            // through the stash and the fill ring, after `handle` has
            // returned and `slices` is gone. The range lies inside one
            // receive frame (checked above).
            match unsafe { self.area.frame(desc.addr, desc.len as usize) } {
                Some(frame) => {
                    slices[done.frames] = frame;
                    done.frames += 1;
                }
                None => done.bad_descs += 1,
            }
        }
        handle(&slices[..done.frames]);

        for desc in &self.descs {
            if desc.addr < self.rx_end {
                self.stash.push(desc.addr - desc.addr % self.frame_size);
            }
        }
        done
    }

    /// Takes transmitted frames back from the completion ring.
    fn reclaim(&mut self) {
        let tx_frames = (self.rx_end / self.frame_size) as usize;
        let outstanding = tx_frames.saturating_sub(self.tx_free.len());
        if outstanding == 0 {
            return;
        }
        let mut reader = self
            .rings
            .device
            .complete(u32::try_from(outstanding).unwrap_or(u32::MAX));
        while let Some(addr) = reader.read() {
            let base = addr - addr % self.frame_size;
            if base >= self.rx_end
                && base < self.area.len() as u64
                && self.tx_free.len() < tx_frames
            {
                self.tx_free.push(base);
            }
        }
        reader.release();
    }

    /// Takes completed tx frames back, then copies as many of `frames` as
    /// there are free tx frames and ring slots into the UMEM and queues
    /// them, in order. Does not kick the kernel.
    pub fn transmit(&mut self, frames: &[&[u8]]) -> Sent {
        self.reclaim();
        let room = frames.len().min(self.tx_free.len());
        let mut sent = Sent::default();
        let mut writer = self
            .rings
            .tx
            .transmit(u32::try_from(room).unwrap_or(u32::MAX));
        let capacity = writer.capacity() as usize;
        for frame in frames {
            if sent.frames == capacity {
                break;
            }
            if frame.is_empty() || frame.len() as u64 > self.frame_size {
                sent.oversize += 1;
                continue;
            }
            let Some(addr) = self.tx_free.pop() else {
                break;
            };
            // SAFETY: `addr` came from `tx_free`: a tx frame the kernel has
            // completed (or never had) and that is not in the tx ring; it
            // goes to the kernel only through `insert_once` below, after the
            // slice is gone.
            match unsafe { self.area.frame_mut(addr, frame.len()) } {
                Some(buf) => buf.copy_from_slice(frame),
                None => {
                    self.tx_free.push(addr);
                    break;
                }
            }
            let queued = writer.insert_once(XdpDesc {
                addr,
                len: frame.len() as u32,
                options: 0,
            });
            if !queued {
                self.tx_free.push(addr);
                break;
            }
            sent.frames += 1;
        }
        writer.commit();
        sent
    }

    /// Kicks the tx ring with an empty `sendto`.
    pub fn kick(&self) -> io::Result<Kick> {
        kick_tx(self.fd)
    }

    /// Waits up to `timeout_ms` for the socket to become readable.
    /// `Ok(false)` on timeout or interruption by a signal.
    pub fn wait_readable(&self, timeout_ms: i32) -> io::Result<bool> {
        poll_readable(self.fd, timeout_ms)
    }
}

/// Registers `area` as a UMEM and makes a socket with its four rings bound
/// to `config.queue` in `bind_flags` mode. On failure every ring and socket
/// made here is dropped before returning.
fn bind(config: &XskConfig<'_>, area: &UmemArea, bind_flags: u16) -> Result<Rings, XskError> {
    let umem_config = UmemConfig {
        fill_size: config.ring_size,
        complete_size: config.ring_size,
        frame_size: config.frame_size,
        headroom: 0,
        flags: 0,
    };
    // SAFETY: `area` is a page-aligned anonymous mapping of exactly
    // `2 * ring_size * frame_size` bytes (a non-zero power-of-two frame size,
    // checked by `Xsk::open`). It outlives every ring and socket made from
    // this Umem: they are returned only inside the `Xsk` that owns `area`,
    // whose `Drop` releases them first, and a failed bind drops them before
    // returning. The `Umem` value itself holds only the pointer and is
    // dropped at the end of this function without touching the memory.
    let umem = unsafe { Umem::new(umem_config, area.as_raw()) }
        .map_err(|e| XskError::errno("socket", &e))?;
    let name = CString::new(config.ifname).map_err(|_| {
        XskError::new(
            "if_nametoindex",
            io::Error::from(io::ErrorKind::InvalidInput),
        )
    })?;
    let mut info = IfInfo::invalid();
    info.from_name(&name)
        .map_err(|e| XskError::errno("if_nametoindex", &e))?;
    info.set_queue(config.queue);
    let sock = Socket::with_shared(&info, &umem).map_err(|e| XskError::errno("socket", &e))?;
    let device = umem
        .fq_cq(&sock)
        .map_err(|e| XskError::errno("fill/completion rings", &e))?;
    let user = umem
        .rx_tx(
            &sock,
            &SocketConfig {
                rx_size: NonZeroU32::new(config.ring_size),
                tx_size: NonZeroU32::new(config.ring_size),
                bind_flags,
            },
        )
        .map_err(|e| XskError::errno("rx/tx rings", &e))?;
    let rx = user
        .map_rx()
        .map_err(|e| XskError::errno("mmap rx ring", &e))?;
    let tx = user
        .map_tx()
        .map_err(|e| XskError::errno("mmap tx ring", &e))?;

    let mut delay = BIND_FIRST_DELAY;
    let mut attempt = 1;
    loop {
        match umem.bind(&user) {
            Ok(()) => break,
            Err(e) if e.get_raw().abs() == libc::EBUSY && attempt < BIND_ATTEMPTS => {
                tracing::debug!(
                    ifname = %config.ifname,
                    queue = config.queue,
                    attempt,
                    "AF_XDP bind busy, retrying"
                );
                std::thread::sleep(delay);
                delay = (delay * 2).min(BIND_MAX_DELAY);
                attempt += 1;
            }
            Err(e) => return Err(XskError::errno("bind", &e)),
        }
    }
    Ok(Rings {
        rx,
        tx,
        device,
        user,
    })
}

/// An anonymous, page-aligned, pre-faulted mapping used as an AF_XDP UMEM.
///
/// The area is shared with the kernel: frames handed to the fill or transmit
/// ring belong to the kernel until they come back through the receive or
/// completion ring. The frame accessors are therefore `unsafe`: the caller
/// vouches that it owns the frame it touches.
#[derive(Debug)]
struct UmemArea {
    base: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain memory owned by this value; it is not tied to
// the thread that created it, and all access goes through `&self`/`&mut self`.
unsafe impl Send for UmemArea {}

impl UmemArea {
    /// Maps `len` bytes (rounded up by the kernel to whole pages).
    fn map(len: usize) -> io::Result<Self> {
        if len == 0 {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        // SAFETY: anonymous private mapping with no address hint; it aliases
        // nothing in this process.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base = NonNull::new(ptr.cast::<u8>())
            .ok_or_else(|| io::Error::other("mmap returned a null mapping"))?;
        Ok(Self { base, len })
    }

    /// Length in bytes.
    fn len(&self) -> usize {
        self.len
    }

    /// The whole area as a raw slice pointer, for registering it as a UMEM.
    fn as_raw(&self) -> NonNull<[u8]> {
        NonNull::slice_from_raw_parts(self.base, self.len)
    }

    fn range(&self, offset: u64, len: usize) -> Option<usize> {
        let start = usize::try_from(offset).ok()?;
        let end = start.checked_add(len)?;
        (end <= self.len).then_some(start)
    }

    /// The `len` bytes at `offset`, or `None` when they leave the area.
    ///
    /// # Safety
    ///
    /// The caller owns that range: it is in a frame the kernel handed back
    /// (received or completed) and that has not been given to the kernel
    /// again, and it stays so while the returned slice lives.
    unsafe fn frame(&self, offset: u64, len: usize) -> Option<&[u8]> {
        let start = self.range(offset, len)?;
        // SAFETY: `start..start+len` lies inside the mapping (checked above),
        // which lives as long as `self`; the caller guarantees the kernel does
        // not write to it while the slice lives.
        Some(unsafe { std::slice::from_raw_parts(self.base.as_ptr().add(start), len) })
    }

    /// The `len` bytes at `offset`, writable, or `None` when they leave the
    /// area.
    ///
    /// # Safety
    ///
    /// As for [`UmemArea::frame`]: the caller owns that range.
    unsafe fn frame_mut(&mut self, offset: u64, len: usize) -> Option<&mut [u8]> {
        let start = self.range(offset, len)?;
        // SAFETY: in bounds (checked above); `&mut self` excludes other slices
        // from this area, and the caller guarantees the kernel does not touch
        // the range while the slice lives.
        Some(unsafe { std::slice::from_raw_parts_mut(self.base.as_ptr().add(start), len) })
    }
}

impl Drop for UmemArea {
    fn drop(&mut self) {
        // SAFETY: `base`/`len` describe exactly the mapping made in `map`, and
        // no slice borrowed from `self` can outlive this call.
        unsafe {
            libc::munmap(self.base.as_ptr().cast(), self.len);
        }
    }
}

/// Waits up to `timeout_ms` for `fd` to become readable. `Ok(false)` on
/// timeout or interruption by a signal.
///
/// Takes a raw fd because `poll` reads no memory through it: a stale fd
/// yields `POLLNVAL`, never unsoundness. Callers pass an fd they own.
fn poll_readable(fd: RawFd, timeout_ms: i32) -> io::Result<bool> {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: `pfd` is one valid pollfd, exclusively borrowed for the call.
    let ret = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
    if ret < 0 {
        let err = io::Error::last_os_error();
        if err.kind() == io::ErrorKind::Interrupted {
            return Ok(false);
        }
        return Err(err);
    }
    if ret > 0 && pfd.revents & libc::POLLNVAL != 0 {
        return Err(io::Error::from_raw_os_error(libc::EBADF));
    }
    Ok(ret > 0 && pfd.revents & libc::POLLIN != 0)
}

/// Sets `FD_CLOEXEC` on `fd` so that spawned programs do not inherit it.
///
/// Takes a raw fd because `fcntl(F_SETFD)` reads no memory; callers pass an
/// fd they own.
fn set_cloexec(fd: RawFd) -> io::Result<()> {
    // SAFETY: F_GETFD/F_SETFD only read and set the descriptor flags.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Kicks an AF_XDP socket's transmit ring with an empty `sendto`.
///
/// Takes a raw fd because a zero-length send reads no memory; callers pass
/// the socket they own.
fn kick_tx(fd: RawFd) -> io::Result<Kick> {
    // SAFETY: a zero-length send with null buffer and address is the
    // documented AF_XDP wake-up; the kernel reads no user memory.
    let ret = unsafe {
        libc::sendto(
            fd,
            std::ptr::null(),
            0,
            libc::MSG_DONTWAIT,
            std::ptr::null(),
            0,
        )
    };
    if ret >= 0 {
        return Ok(Kick::Done);
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EAGAIN) | Some(libc::EBUSY) | Some(libc::ENOBUFS) | Some(libc::EINTR) => {
            Ok(Kick::Again)
        }
        _ => Err(err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn cloexec_is_set() {
        let f = std::fs::File::open("/dev/null").unwrap();
        set_cloexec(f.as_raw_fd()).unwrap();
        // SAFETY: F_GETFD only reads the flags of an fd we own.
        let flags = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_GETFD) };
        assert_ne!(flags & libc::FD_CLOEXEC, 0);
        assert!(set_cloexec(-1).is_err());
    }

    #[test]
    fn umem_area_bounds_are_checked() {
        let mut area = UmemArea::map(8192).unwrap();
        assert_eq!(area.len(), 8192);
        // SAFETY: no kernel object knows this area; the test owns all of it.
        unsafe {
            assert!(area.frame(8192 - 10, 10).is_some());
            assert!(area.frame(8192 - 10, 11).is_none());
            assert!(area.frame(u64::MAX, 1).is_none());
            let f = area.frame_mut(100, 4).unwrap();
            f.copy_from_slice(&[1, 2, 3, 4]);
            assert_eq!(area.frame(100, 4).unwrap(), &[1, 2, 3, 4]);
        }
        assert!(UmemArea::map(0).is_err());
    }

    #[test]
    fn a_bad_geometry_is_refused_before_the_kernel() {
        let config = XskConfig {
            ifname: "lo",
            queue: 0,
            ring_size: 1000,
            frame_size: 2048,
            zero_copy: false,
        };
        let e = Xsk::open(&config).unwrap_err();
        assert_eq!(e.step, "UMEM geometry");
        let e = Xsk::open(&XskConfig {
            ring_size: 64,
            frame_size: 0,
            ..config
        })
        .unwrap_err();
        assert_eq!(e.step, "UMEM geometry");
    }
}
