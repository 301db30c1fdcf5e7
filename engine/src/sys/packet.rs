//! AF_PACKET syscalls and the TPACKET_V3 receive ring, behind [`PacketSys`].
//!
//! Owns every `unsafe` operation the AF_PACKET backend needs: socket options,
//! `bind`, `mmap`/`munmap` of the ring, `send`, `poll`, and the reads of
//! block and frame headers inside the shared ring memory.
//!
//! # The ring contract (TPACKET_V3, `Documentation/networking/packet_mmap.rst`)
//! The ring is `block_count` blocks of `block_size` bytes. Each block starts
//! with a `tpacket_block_desc`; its `block_status` word says who owns it.
//! While `TP_STATUS_USER` is set the kernel does not touch the block, so
//! [`RxRing::block`] hands out `&[u8]` views into it; [`RxRing::release`]
//! (which needs `&mut self`, so no view can outlive it) stores
//! `TP_STATUS_KERNEL` with release ordering and gives the block back.
//! Everything read from the ring is bounds-checked against the block: a
//! corrupt header is reported as [`RingError`], never trusted.
//!
//! [`RxRing::heap`] builds the same layout in ordinary memory so tests can
//! play the kernel's part without root.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};

/// `ETH_P_ALL`: every protocol, including frames the kernel has no handler for.
pub const ETH_P_ALL: u16 = 0x0003;

const TPACKET_V3: libc::c_int = 2;
const TP_STATUS_USER: u32 = 1;
const TP_STATUS_KERNEL: u32 = 0;
const TP_STATUS_VLAN_VALID: u32 = 1 << 4;

/// Size of `struct tpacket_block_desc` (version, offset_to_priv, hdr_v1).
const BLOCK_HEADER_LEN: usize = 48;
// Offsets inside `struct tpacket_block_desc`.
const BLOCK_STATUS_AT: usize = 8;
const BLOCK_NUM_PKTS_AT: usize = 12;
const BLOCK_FIRST_PKT_AT: usize = 16;
const BLOCK_LEN_AT: usize = 20;

/// Size of `struct tpacket3_hdr`, already `TPACKET_ALIGN`ed.
pub const FRAME_HEADER_LEN: usize = 48;
// Offsets inside `struct tpacket3_hdr`.
const FRAME_NEXT_AT: usize = 0;
const FRAME_SNAPLEN_AT: usize = 12;
const FRAME_LEN_AT: usize = 16;
const FRAME_STATUS_AT: usize = 20;
const FRAME_MAC_AT: usize = 24;
const FRAME_VLAN_TCI_AT: usize = 32;
/// `struct sockaddr_ll` follows the aligned frame header; `sll_pkttype` is
/// its byte 10.
const FRAME_PKTTYPE_AT: usize = FRAME_HEADER_LEN + 10;
const SOCKADDR_LL_LEN: usize = 20;

/// `sll_pkttype` of frames this host sent (`PACKET_OUTGOING`).
pub const PACKET_OUTGOING: u8 = 4;

/// Shape of a TPACKET_V3 receive ring (`struct tpacket_req3`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingGeometry {
    /// Bytes per block; a multiple of the page size.
    pub block_size: u32,
    /// Number of blocks.
    pub block_count: u32,
    /// Nominal frame slot size (the kernel only uses it for bookkeeping in V3).
    pub frame_size: u32,
    /// Milliseconds after which the kernel retires a partly filled block.
    pub retire_timeout_ms: u32,
}

impl RingGeometry {
    /// Total bytes mapped.
    pub fn len(&self) -> usize {
        self.block_size as usize * self.block_count as usize
    }

    /// Whether the ring would map nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Kind of link-layer membership a packet socket can hold on an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MembershipKind {
    /// `PACKET_MR_PROMISC`: the interface accepts every unicast address.
    Promiscuous,
    /// `PACKET_MR_MULTICAST`: the MAC joins the interface's multicast filter.
    Multicast([u8; 6]),
}

/// A socket option the AF_PACKET backend sets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SocketOption {
    /// `PACKET_VERSION = TPACKET_V3`.
    Version3,
    /// `PACKET_RX_RING` with this geometry.
    RxRing(RingGeometry),
    /// `PACKET_FANOUT`, hash mode, this group id.
    FanoutHash(u16),
    /// `PACKET_ADD_MEMBERSHIP` on interface `ifindex`.
    AddMembership {
        /// Interface index.
        ifindex: u32,
        /// What to join.
        kind: MembershipKind,
    },
    /// `PACKET_IGNORE_OUTGOING`: do not see frames this host transmits.
    IgnoreOutgoing,
}

/// Counters the kernel keeps per packet socket (`struct tpacket_stats_v3`),
/// reset by each read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelStatistics {
    /// Frames the kernel handed to the socket (including dropped ones).
    pub packets: u32,
    /// Frames dropped because the ring was full.
    pub drops: u32,
    /// Times the ring was frozen (every block owned by user space).
    pub freezes: u32,
}

/// The syscall seam for AF_PACKET. [`Kernel`] is the real one; tests supply
/// fakes to exercise error paths without root.
pub trait PacketSys: Send + Sync {
    /// `if_nametoindex`.
    fn interface_index(&self, name: &str) -> io::Result<u32>;
    /// A non-blocking, close-on-exec `AF_PACKET`/`SOCK_RAW` socket with
    /// protocol 0 (it receives nothing until bound).
    fn open(&self) -> io::Result<OwnedFd>;
    /// `setsockopt(SOL_PACKET, ...)`.
    fn set_option(&self, fd: BorrowedFd<'_>, option: SocketOption) -> io::Result<()>;
    /// Binds to interface `ifindex` for ether type `protocol` (host order).
    fn bind(&self, fd: BorrowedFd<'_>, ifindex: u32, protocol: u16) -> io::Result<()>;
    /// Maps the receive ring configured with [`SocketOption::RxRing`].
    fn map_rx_ring(&self, fd: BorrowedFd<'_>, geometry: RingGeometry) -> io::Result<RxRing>;
    /// Sends one whole Ethernet frame without blocking.
    fn send(&self, fd: BorrowedFd<'_>, frame: &[u8]) -> io::Result<usize>;
    /// Waits up to `timeout_ms` for the socket to become readable.
    fn poll_readable(&self, fd: BorrowedFd<'_>, timeout_ms: i32) -> io::Result<bool>;
    /// Reads (and resets) the kernel's counters for this socket.
    fn statistics(&self, fd: BorrowedFd<'_>) -> io::Result<KernelStatistics>;
    /// The system page size.
    fn page_size(&self) -> usize;
}

/// The real kernel.
#[derive(Clone, Copy, Debug, Default)]
pub struct Kernel;

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn set_raw<T>(fd: BorrowedFd<'_>, name: libc::c_int, value: &T) -> io::Result<()> {
    // SAFETY: `value` points to a live, initialised `T` of exactly
    // `size_of::<T>()` bytes for the duration of the call, and every caller
    // passes the C struct type the option `name` expects.
    check(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_PACKET,
            name,
            (value as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    })
    .map(drop)
}

impl PacketSys for Kernel {
    fn interface_index(&self, name: &str) -> io::Result<u32> {
        let c = CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: `c` is a valid NUL-terminated string that outlives the call.
        let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
        if index == 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(index)
        }
    }

    fn open(&self) -> io::Result<OwnedFd> {
        // SAFETY: plain syscall with constant arguments.
        let fd = check(unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                0,
            )
        })?;
        // SAFETY: `fd` was just returned by `socket` and nothing else owns it.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    fn set_option(&self, fd: BorrowedFd<'_>, option: SocketOption) -> io::Result<()> {
        match option {
            SocketOption::Version3 => set_raw(fd, libc::PACKET_VERSION, &TPACKET_V3),
            SocketOption::RxRing(g) => {
                let frames_per_block = g.block_size / g.frame_size.max(1);
                let req = libc::tpacket_req3 {
                    tp_block_size: g.block_size,
                    tp_block_nr: g.block_count,
                    tp_frame_size: g.frame_size,
                    tp_frame_nr: frames_per_block * g.block_count,
                    tp_retire_blk_tov: g.retire_timeout_ms,
                    tp_sizeof_priv: 0,
                    tp_feature_req_word: 0,
                };
                set_raw(fd, libc::PACKET_RX_RING, &req)
            }
            SocketOption::FanoutHash(group) => {
                let arg: libc::c_int =
                    libc::c_int::from(group) | ((libc::PACKET_FANOUT_HASH as libc::c_int) << 16);
                set_raw(fd, libc::PACKET_FANOUT, &arg)
            }
            SocketOption::AddMembership { ifindex, kind } => {
                let mut req = libc::packet_mreq {
                    mr_ifindex: ifindex as libc::c_int,
                    mr_type: 0,
                    mr_alen: 0,
                    mr_address: [0; 8],
                };
                match kind {
                    MembershipKind::Promiscuous => req.mr_type = libc::PACKET_MR_PROMISC as u16,
                    MembershipKind::Multicast(mac) => {
                        req.mr_type = libc::PACKET_MR_MULTICAST as u16;
                        req.mr_alen = 6;
                        req.mr_address[..6].copy_from_slice(&mac);
                    }
                }
                set_raw(fd, libc::PACKET_ADD_MEMBERSHIP, &req)
            }
            SocketOption::IgnoreOutgoing => {
                set_raw(fd, libc::PACKET_IGNORE_OUTGOING, &(1 as libc::c_int))
            }
        }
    }

    fn bind(&self, fd: BorrowedFd<'_>, ifindex: u32, protocol: u16) -> io::Result<()> {
        // SAFETY: `sockaddr_ll` is plain old data; all-zero is a valid value.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = protocol.to_be();
        addr.sll_ifindex = ifindex as libc::c_int;
        // SAFETY: `addr` is a valid `sockaddr_ll` that lives across the call
        // and the length passed is its size.
        check(unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        })
        .map(drop)
    }

    fn map_rx_ring(&self, fd: BorrowedFd<'_>, geometry: RingGeometry) -> io::Result<RxRing> {
        let len = geometry.len();
        // SAFETY: mapping a packet socket's configured ring: a fresh shared
        // mapping chosen by the kernel, not overlapping any Rust object.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_LOCKED | libc::MAP_POPULATE,
                fd.as_raw_fd(),
                0,
            )
        };
        let ptr = if ptr == libc::MAP_FAILED {
            // MAP_LOCKED fails under a small RLIMIT_MEMLOCK; the ring still
            // works unlocked.
            // SAFETY: as above, without MAP_LOCKED.
            let again = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED | libc::MAP_POPULATE,
                    fd.as_raw_fd(),
                    0,
                )
            };
            if again == libc::MAP_FAILED {
                return Err(io::Error::last_os_error());
            }
            again
        } else {
            ptr
        };
        let base =
            NonNull::new(ptr.cast::<u8>()).ok_or_else(|| io::Error::from(io::ErrorKind::Other))?;
        Ok(RxRing {
            base,
            geometry,
            backing: Backing::Mapped,
        })
    }

    fn send(&self, fd: BorrowedFd<'_>, frame: &[u8]) -> io::Result<usize> {
        // SAFETY: `frame` is a valid readable buffer of `frame.len()` bytes.
        let n = unsafe {
            libc::send(
                fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                libc::MSG_DONTWAIT,
            )
        };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }

    fn poll_readable(&self, fd: BorrowedFd<'_>, timeout_ms: i32) -> io::Result<bool> {
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN | libc::POLLERR,
            revents: 0,
        };
        // SAFETY: `pfd` is one valid `pollfd` and we pass a count of 1.
        let n = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                return Ok(false);
            }
            return Err(err);
        }
        Ok(n > 0)
    }

    fn statistics(&self, fd: BorrowedFd<'_>) -> io::Result<KernelStatistics> {
        let mut stats = libc::tpacket_stats_v3 {
            tp_packets: 0,
            tp_drops: 0,
            tp_freeze_q_cnt: 0,
        };
        let mut len = std::mem::size_of::<libc::tpacket_stats_v3>() as libc::socklen_t;
        // SAFETY: `stats` is writable for `len` bytes and `len` is a valid
        // in/out length for the duration of the call.
        check(unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_STATISTICS,
                (&mut stats as *mut libc::tpacket_stats_v3).cast(),
                &mut len,
            )
        })?;
        Ok(KernelStatistics {
            packets: stats.tp_packets,
            drops: stats.tp_drops,
            freezes: stats.tp_freeze_q_cnt,
        })
    }

    fn page_size(&self) -> usize {
        // SAFETY: `sysconf` has no preconditions.
        let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        if size > 0 {
            size as usize
        } else {
            4096
        }
    }
}

#[derive(Debug)]
enum Backing {
    /// `mmap`ed from a packet socket; unmapped on drop.
    Mapped,
    /// Ordinary memory standing in for the kernel's ring (tests).
    Heap(#[allow(dead_code)] Box<[u64]>),
}

/// A mapped TPACKET_V3 receive ring.
#[derive(Debug)]
pub struct RxRing {
    base: NonNull<u8>,
    geometry: RingGeometry,
    backing: Backing,
}

// SAFETY: the ring is plain memory shared with the kernel; the pointer is
// not tied to the creating thread, and all access goes through `&self` /
// `&mut self` methods that follow the block ownership protocol.
unsafe impl Send for RxRing {}

/// A frame header or block header in the ring that does not fit its block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RingError {
    /// A block's header points outside the block.
    #[error("block header out of bounds")]
    BadBlock,
    /// A frame's header, offsets or length point outside its block.
    #[error("frame header out of bounds")]
    BadFrame,
}

/// One frame inside a user-owned block.
#[derive(Clone, Copy, Debug)]
pub struct RingFrame<'a> {
    /// The captured bytes, starting with the Ethernet header.
    pub data: &'a [u8],
    /// Length on the wire (larger than `data.len()` when truncated).
    pub wire_len: u32,
    /// `sll_pkttype` (`PACKET_HOST`, `PACKET_OTHERHOST`, `PACKET_OUTGOING`, ...).
    pub pkt_type: u8,
    /// The VLAN tag the NIC stripped, if any.
    pub vlan_tci: Option<u16>,
}

/// A block the kernel has handed to user space.
#[derive(Clone, Copy, Debug)]
pub struct Block<'a> {
    bytes: &'a [u8],
}

fn read_u32(bytes: &[u8], at: usize) -> Option<u32> {
    let b = bytes.get(at..at + 4)?;
    Some(u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
}

fn read_u16(bytes: &[u8], at: usize) -> Option<u16> {
    let b = bytes.get(at..at + 2)?;
    Some(u16::from_ne_bytes([b[0], b[1]]))
}

impl<'a> Block<'a> {
    /// Number of frames the kernel put in the block.
    pub fn num_packets(&self) -> u32 {
        read_u32(self.bytes, BLOCK_NUM_PKTS_AT).unwrap_or(0)
    }

    /// Offset of the first frame header, checked to lie inside the block.
    pub fn first_offset(&self) -> Result<usize, RingError> {
        let first = read_u32(self.bytes, BLOCK_FIRST_PKT_AT).ok_or(RingError::BadBlock)? as usize;
        if first < BLOCK_HEADER_LEN || first + FRAME_HEADER_LEN > self.used_len() {
            return Err(RingError::BadBlock);
        }
        Ok(first)
    }

    fn used_len(&self) -> usize {
        let len = read_u32(self.bytes, BLOCK_LEN_AT).unwrap_or(0) as usize;
        len.min(self.bytes.len())
    }

    /// The frame whose header starts at `offset`, and the offset of the next
    /// frame's header (`None` when the kernel marked it the last).
    pub fn frame_at(&self, offset: usize) -> Result<(RingFrame<'a>, Option<usize>), RingError> {
        let used = self.used_len();
        if offset + FRAME_HEADER_LEN + SOCKADDR_LL_LEN > used {
            return Err(RingError::BadFrame);
        }
        let bytes: &'a [u8] = self.bytes;
        let hdr = &bytes[offset..];
        let next = read_u32(hdr, FRAME_NEXT_AT).ok_or(RingError::BadFrame)? as usize;
        let snaplen = read_u32(hdr, FRAME_SNAPLEN_AT).ok_or(RingError::BadFrame)? as usize;
        let wire_len = read_u32(hdr, FRAME_LEN_AT).ok_or(RingError::BadFrame)?;
        let status = read_u32(hdr, FRAME_STATUS_AT).ok_or(RingError::BadFrame)?;
        let mac = read_u16(hdr, FRAME_MAC_AT).ok_or(RingError::BadFrame)? as usize;
        let tci = read_u32(hdr, FRAME_VLAN_TCI_AT).ok_or(RingError::BadFrame)?;
        let pkt_type = *hdr.get(FRAME_PKTTYPE_AT).ok_or(RingError::BadFrame)?;
        let start = offset + mac;
        let end = start.checked_add(snaplen).ok_or(RingError::BadFrame)?;
        if mac < FRAME_HEADER_LEN || end > used {
            return Err(RingError::BadFrame);
        }
        let next = match next {
            0 => None,
            n if n < FRAME_HEADER_LEN || offset + n + FRAME_HEADER_LEN > used => {
                return Err(RingError::BadFrame)
            }
            n => Some(offset + n),
        };
        let frame = RingFrame {
            data: &bytes[start..end],
            wire_len,
            pkt_type,
            vlan_tci: (status & TP_STATUS_VLAN_VALID != 0).then_some(tci as u16),
        };
        Ok((frame, next))
    }
}

impl RxRing {
    /// A ring in ordinary memory with every block owned by the "kernel"
    /// (tests fill blocks with [`RxRing::fill_block`]).
    pub fn heap(geometry: RingGeometry) -> Self {
        let words = geometry.len().div_ceil(8).max(1);
        let mut memory = vec![0u64; words].into_boxed_slice();
        let base = NonNull::new(memory.as_mut_ptr().cast::<u8>()).unwrap_or(NonNull::dangling());
        RxRing {
            base,
            geometry,
            backing: Backing::Heap(memory),
        }
    }

    /// The ring's shape.
    pub fn geometry(&self) -> RingGeometry {
        self.geometry
    }

    fn block_ptr(&self, index: usize) -> Option<*mut u8> {
        if index >= self.geometry.block_count as usize {
            return None;
        }
        // SAFETY: `index < block_count`, so the offset stays inside the
        // `block_count * block_size` bytes this ring maps.
        Some(unsafe {
            self.base
                .as_ptr()
                .add(index * self.geometry.block_size as usize)
        })
    }

    fn status(&self, index: usize) -> Option<&AtomicU32> {
        let block = self.block_ptr(index)?;
        // SAFETY: block starts are page- (or, for heap rings, 8-byte-) aligned,
        // so `block + 8` is 4-byte aligned and inside the block; the word is
        // shared with the kernel, which is why it is only accessed atomically.
        Some(unsafe { &*block.add(BLOCK_STATUS_AT).cast::<AtomicU32>() })
    }

    /// The block at `index` if the kernel has handed it to user space.
    pub fn block(&self, index: usize) -> Option<Block<'_>> {
        let status = self.status(index)?.load(Ordering::Acquire);
        if status & TP_STATUS_USER == 0 {
            return None;
        }
        let block = self.block_ptr(index)?;
        // SAFETY: the acquire load saw TP_STATUS_USER, so the kernel finished
        // writing this block and will not write it again until `release`,
        // which takes `&mut self` and so cannot run while this borrow lives.
        // The slice covers exactly this block's bytes inside the mapping.
        let bytes = unsafe { std::slice::from_raw_parts(block, self.geometry.block_size as usize) };
        Some(Block { bytes })
    }

    /// Gives the block at `index` back to the kernel.
    pub fn release(&mut self, index: usize) {
        if let Some(status) = self.status(index) {
            status.store(TP_STATUS_KERNEL, Ordering::Release);
        }
    }

    /// Plays the kernel for tests: lays `frames` (`(bytes, pkt_type)`) out in
    /// block `index` the way TPACKET_V3 does and marks it user-owned.
    /// Only heap rings accept this; returns whether the frames fit.
    pub fn fill_block(&mut self, index: usize, frames: &[(&[u8], u8)]) -> bool {
        if !matches!(self.backing, Backing::Heap(_)) {
            return false;
        }
        let Some(block) = self.block_ptr(index) else {
            return false;
        };
        let size = self.geometry.block_size as usize;
        let mut image = vec![0u8; size];
        let mut offset = BLOCK_HEADER_LEN;
        let mut last_header = None;
        for (data, pkt_type) in frames {
            let mac = FRAME_HEADER_LEN + SOCKADDR_LL_LEN.next_multiple_of(16);
            let total = (mac + data.len()).next_multiple_of(16);
            if offset + total > size {
                return false;
            }
            let h = &mut image[offset..offset + total];
            h[FRAME_SNAPLEN_AT..FRAME_SNAPLEN_AT + 4]
                .copy_from_slice(&(data.len() as u32).to_ne_bytes());
            h[FRAME_LEN_AT..FRAME_LEN_AT + 4].copy_from_slice(&(data.len() as u32).to_ne_bytes());
            h[FRAME_MAC_AT..FRAME_MAC_AT + 2].copy_from_slice(&(mac as u16).to_ne_bytes());
            h[FRAME_PKTTYPE_AT] = *pkt_type;
            h[mac..mac + data.len()].copy_from_slice(data);
            if let Some(prev) = last_header {
                let delta = (offset - prev) as u32;
                image[prev..prev + 4].copy_from_slice(&delta.to_ne_bytes());
            }
            last_header = Some(offset);
            offset += total;
        }
        image[BLOCK_NUM_PKTS_AT..BLOCK_NUM_PKTS_AT + 4]
            .copy_from_slice(&(frames.len() as u32).to_ne_bytes());
        image[BLOCK_FIRST_PKT_AT..BLOCK_FIRST_PKT_AT + 4]
            .copy_from_slice(&(BLOCK_HEADER_LEN as u32).to_ne_bytes());
        image[BLOCK_LEN_AT..BLOCK_LEN_AT + 4].copy_from_slice(&(offset as u32).to_ne_bytes());
        // SAFETY: heap ring, `&mut self` excludes every `Block` borrow, and
        // the copy stays within block `index` (`size` bytes).
        unsafe { std::ptr::copy_nonoverlapping(image.as_ptr(), block, size) };
        if let Some(status) = self.status(index) {
            status.store(TP_STATUS_USER, Ordering::Release);
        }
        true
    }

    /// Plays a corrupt kernel for tests: overwrites a 32-bit word inside a
    /// heap ring's block. Returns false for mapped rings or out-of-range spots.
    pub fn poke_for_test(&mut self, index: usize, at: usize, value: u32) -> bool {
        if !matches!(self.backing, Backing::Heap(_))
            || at + 4 > self.geometry.block_size as usize
            || !at.is_multiple_of(4)
        {
            return false;
        }
        let Some(block) = self.block_ptr(index) else {
            return false;
        };
        // SAFETY: heap ring, exclusive borrow, 4-byte aligned spot inside the block.
        unsafe { block.add(at).cast::<u32>().write(value) };
        true
    }
}

impl Drop for RxRing {
    fn drop(&mut self) {
        if matches!(self.backing, Backing::Mapped) {
            // SAFETY: `base`/`len` are exactly the mapping `map_rx_ring`
            // created, and no `Block` borrow can outlive `&mut self`.
            unsafe { libc::munmap(self.base.as_ptr().cast(), self.geometry.len()) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn geometry() -> RingGeometry {
        RingGeometry {
            block_size: 4096,
            block_count: 4,
            frame_size: 2048,
            retire_timeout_ms: 1,
        }
    }

    #[test]
    fn heap_ring_round_trips_frames() {
        let mut ring = RxRing::heap(geometry());
        assert!(ring.block(0).is_none());
        assert!(ring.fill_block(0, &[(b"hello frame 1", 0), (b"second", PACKET_OUTGOING)]));
        let block = ring.block(0).expect("user-owned");
        assert_eq!(block.num_packets(), 2);
        let (f1, next) = block.frame_at(block.first_offset().unwrap()).unwrap();
        assert_eq!(f1.data, b"hello frame 1");
        let (f2, last) = block.frame_at(next.unwrap()).unwrap();
        assert_eq!(f2.data, b"second");
        assert_eq!(f2.pkt_type, PACKET_OUTGOING);
        assert!(last.is_none());
        ring.release(0);
        assert!(ring.block(0).is_none());
    }

    #[test]
    fn corrupt_headers_are_errors_not_reads_out_of_bounds() {
        let mut ring = RxRing::heap(geometry());
        assert!(ring.fill_block(1, &[(b"abc", 0)]));
        // Snap length far past the block.
        assert!(ring.poke_for_test(1, BLOCK_HEADER_LEN + FRAME_SNAPLEN_AT, 1 << 30));
        let block = ring.block(1).unwrap();
        assert_eq!(
            block.frame_at(block.first_offset().unwrap()).unwrap_err(),
            RingError::BadFrame
        );
        // First-packet offset past the used length.
        assert!(ring.poke_for_test(1, BLOCK_FIRST_PKT_AT, 4000));
        assert_eq!(
            ring.block(1).unwrap().first_offset().unwrap_err(),
            RingError::BadBlock
        );
        assert!(ring.block(7).is_none());
    }
}
