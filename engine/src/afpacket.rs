//! The AF_PACKET fallback backend: a TPACKET_V3 receive ring per poll loop.
//!
//! Owns one packet socket bound to one interface for every ether type
//! (`ETH_P_ALL`), its mmap'ed receive ring, and the link-layer memberships
//! the cluster mode needs (promiscuous for unicast mode, the cluster's
//! multicast MAC for multicast and IGMP modes).
//!
//! Guarantees:
//! - [`FrameIo::receive`] never blocks, hands out at most `max` frames as
//!   slices into the ring (zero-copy), skips frames this host transmitted,
//!   and returns every fully consumed block to the kernel before it returns.
//!   A block is walked at most once; a block only partly handed out (because
//!   `max` was reached) is resumed on the next call, never re-read.
//! - Corrupt ring headers are never trusted: the rest of that block is
//!   skipped and counted in [`AfPacketStats::malformed_blocks`].
//! - With a fanout group, every poll loop opens its own [`AfPacket`] with the
//!   same group id; the kernel splits the interface's frames by flow hash
//!   (`PACKET_FANOUT_HASH`, symmetric in addresses and ports), so one flow
//!   always reaches one poll loop and no frame reaches two. Fragments carry
//!   no ports, so every fragment of a datagram hashes alike (on addresses).
//!   No rollover flag: rollover would move flows between loops.
//! - Memberships are held by the socket: the kernel drops them when the
//!   socket closes, including after a crash, so nothing needs undoing.
//!
//! Design decisions: `PACKET_IGNORE_OUTGOING` keeps this host's own
//! transmissions out of the ring; the `sll_pkttype` check below is a second
//! line for kernels that ignore the option. Frames the engine originates
//! leave through `send` on the same socket (the rate is low: ARP/ND
//! answers, heartbeats), not a TX ring. Frames that arrive between `bind`
//! and joining the fanout group (a few microseconds at start) may reach two
//! loops: the kernel only lets a bound socket join a group.
//! Receive-side VLAN tags the NIC strips are not re-inserted.

use std::fmt;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::Arc;

use crate::io::{FrameIo, MAX_BATCH};
use crate::sys::packet::{
    Kernel, KernelStatistics, PacketSys, RingGeometry, RxRing, SocketOption, ETH_P_ALL,
    PACKET_OUTGOING,
};

pub use crate::sys::packet::MembershipKind as Membership;

/// Shape and behaviour of one AF_PACKET receive socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AfPacketConfig {
    /// Bytes per ring block; a multiple of the page size (default 256 KiB).
    pub block_size: u32,
    /// Ring blocks (default 64, so 16 MiB per socket).
    pub block_count: u32,
    /// Nominal frame slot (default 2048; V3 packs frames tightly anyway).
    pub frame_size: u32,
    /// How long the kernel waits before handing over a partly filled block,
    /// in milliseconds (default 1; the kernel rounds up to a jiffy). This is
    /// the added latency at low rates.
    pub retire_timeout_ms: u32,
    /// Fanout group shared by the poll loops on this interface; `None` for a
    /// single socket.
    pub fanout_group: Option<u16>,
    /// Memberships to hold on the interface while the socket is open.
    pub memberships: Vec<Membership>,
}

impl Default for AfPacketConfig {
    fn default() -> Self {
        Self {
            block_size: 256 * 1024,
            block_count: 64,
            frame_size: 2048,
            retire_timeout_ms: 1,
            fanout_group: None,
            memberships: Vec::new(),
        }
    }
}

/// Why an AF_PACKET socket could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum AfPacketError {
    /// The ring configuration is unusable.
    #[error("invalid AF_PACKET ring config: {0}")]
    Config(&'static str),
    /// The interface does not exist.
    #[error("interface {interface:?} not found: {source}")]
    NoInterface {
        /// Interface name.
        interface: String,
        /// What the kernel said.
        source: io::Error,
    },
    /// A setup syscall failed.
    #[error("AF_PACKET {step} on {interface:?} failed: {source}")]
    Syscall {
        /// Which step (`socket`, `PACKET_RX_RING`, `bind`, ...).
        step: &'static str,
        /// Interface name.
        interface: String,
        /// What the kernel said.
        source: io::Error,
    },
}

/// Counters of one AF_PACKET socket since it opened.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AfPacketStats {
    /// Frames handed to the poll loop.
    pub received: u64,
    /// Frames this host sent that still showed up in the ring (skipped).
    pub outgoing_skipped: u64,
    /// Blocks whose headers did not fit the block (rest of block skipped).
    pub malformed_blocks: u64,
    /// Frames truncated by the ring (snap length below wire length); still
    /// handed over, the dataplane sees the short frame.
    pub truncated: u64,
    /// Frames accepted by `send`.
    pub transmitted: u64,
    /// Frames `send` refused for lack of room (`EAGAIN`/`ENOBUFS`).
    pub transmit_full: u64,
    /// Frames `send` rejected for another reason.
    pub transmit_errors: u64,
    /// Frames the kernel dropped because the ring was full.
    pub kernel_drops: u64,
    /// Times the kernel found every block owned by user space.
    pub kernel_freezes: u64,
}

/// Where the next `receive` resumes inside a partly handed-out block.
#[derive(Clone, Copy, Debug)]
struct Resume {
    /// Frames of the block already handed out.
    done: u32,
    /// Offset of the next frame header.
    offset: usize,
}

/// One AF_PACKET TPACKET_V3 socket: the receive side of one poll loop.
pub struct AfPacket {
    // Field order matters: the ring is unmapped before the socket closes.
    ring: RxRing,
    fd: OwnedFd,
    sys: Arc<dyn PacketSys>,
    interface: String,
    ifindex: u32,
    config: AfPacketConfig,
    next_block: usize,
    resume: Option<Resume>,
    stats: AfPacketStats,
}

impl fmt::Debug for AfPacket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AfPacket")
            .field("interface", &self.interface)
            .field("ifindex", &self.ifindex)
            .field("config", &self.config)
            .field("next_block", &self.next_block)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl AfPacketConfig {
    fn geometry(&self, page_size: usize) -> Result<RingGeometry, AfPacketError> {
        let page = page_size as u64;
        if self.block_size == 0 || !u64::from(self.block_size).is_multiple_of(page) {
            return Err(AfPacketError::Config(
                "block_size must be a non-zero multiple of the page size",
            ));
        }
        if self.frame_size < 128
            || !self.frame_size.is_multiple_of(16)
            || self.frame_size > self.block_size
        {
            return Err(AfPacketError::Config(
                "frame_size must be a multiple of 16, at least 128 and at most block_size",
            ));
        }
        if self.block_count == 0 || self.block_count > 65536 {
            return Err(AfPacketError::Config("block_count must be in 1..=65536"));
        }
        if u64::from(self.block_size) * u64::from(self.block_count) > 1 << 30 {
            return Err(AfPacketError::Config("ring larger than 1 GiB"));
        }
        Ok(RingGeometry {
            block_size: self.block_size,
            block_count: self.block_count,
            frame_size: self.frame_size,
            retire_timeout_ms: self.retire_timeout_ms,
        })
    }
}

fn room_error(err: &io::Error) -> bool {
    matches!(err.raw_os_error(), Some(libc::EAGAIN) | Some(libc::ENOBUFS))
}

impl AfPacket {
    /// Opens a TPACKET_V3 socket on `interface` with the real kernel.
    pub fn open(interface: &str, config: &AfPacketConfig) -> Result<Self, AfPacketError> {
        Self::open_with(Arc::new(Kernel), interface, config)
    }

    /// Opens a socket through the given syscall seam (tests pass fakes).
    pub fn open_with(
        sys: Arc<dyn PacketSys>,
        interface: &str,
        config: &AfPacketConfig,
    ) -> Result<Self, AfPacketError> {
        let geometry = config.geometry(sys.page_size())?;
        let ifindex =
            sys.interface_index(interface)
                .map_err(|source| AfPacketError::NoInterface {
                    interface: interface.to_owned(),
                    source,
                })?;
        let fail = |step: &'static str| {
            let interface = interface.to_owned();
            move |source| AfPacketError::Syscall {
                step,
                interface,
                source,
            }
        };
        let fd = sys.open().map_err(fail("socket"))?;
        sys.set_option(fd.as_fd(), SocketOption::Version3)
            .map_err(fail("PACKET_VERSION"))?;
        sys.set_option(fd.as_fd(), SocketOption::RxRing(geometry))
            .map_err(fail("PACKET_RX_RING"))?;
        let ring = sys
            .map_rx_ring(fd.as_fd(), geometry)
            .map_err(fail("mmap"))?;
        sys.set_option(fd.as_fd(), SocketOption::IgnoreOutgoing)
            .map_err(fail("PACKET_IGNORE_OUTGOING"))?;
        sys.bind(fd.as_fd(), ifindex, ETH_P_ALL)
            .map_err(fail("bind"))?;
        if let Some(group) = config.fanout_group {
            sys.set_option(fd.as_fd(), SocketOption::FanoutHash(group))
                .map_err(fail("PACKET_FANOUT"))?;
        }
        for &kind in &config.memberships {
            sys.set_option(fd.as_fd(), SocketOption::AddMembership { ifindex, kind })
                .map_err(fail("PACKET_ADD_MEMBERSHIP"))?;
        }
        Ok(Self {
            ring,
            fd,
            sys,
            interface: interface.to_owned(),
            ifindex,
            config: config.clone(),
            next_block: 0,
            resume: None,
            stats: AfPacketStats::default(),
        })
    }

    /// Counters so far, folding in the kernel's ring-full drops.
    pub fn stats(&mut self) -> AfPacketStats {
        if let Ok(KernelStatistics { drops, freezes, .. }) = self.sys.statistics(self.fd.as_fd()) {
            self.stats.kernel_drops += u64::from(drops);
            self.stats.kernel_freezes += u64::from(freezes);
        }
        self.stats
    }

    /// The interface index the socket is bound to.
    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }
}

impl FrameIo for AfPacket {
    fn receive(&mut self, max: usize, handle: &mut dyn FnMut(&[&[u8]])) -> io::Result<usize> {
        let max = max.min(MAX_BATCH);
        let block_count = self.ring.geometry().block_count as usize;
        let mut frames: [&[u8]; MAX_BATCH] = [&[]; MAX_BATCH];
        let mut n = 0;
        let first_block = self.next_block;
        let mut finished_blocks = 0;
        let mut resume = self.resume.take();
        let mut next_block = self.next_block;

        while n < max && finished_blocks < block_count {
            let Some(block) = self.ring.block(next_block) else {
                break;
            };
            let total = block.num_packets();
            let (mut done, mut offset) = match resume.take() {
                Some(r) => (r.done, Some(r.offset)),
                None => (0, block.first_offset().ok()),
            };
            let mut broken = total > 0 && offset.is_none();
            while done < total && n < max {
                let Some(at) = offset else {
                    broken = true;
                    break;
                };
                match block.frame_at(at) {
                    Ok((frame, next)) => {
                        done += 1;
                        offset = next;
                        if frame.pkt_type == PACKET_OUTGOING {
                            self.stats.outgoing_skipped += 1;
                            continue;
                        }
                        if (frame.data.len() as u64) < u64::from(frame.wire_len) {
                            self.stats.truncated += 1;
                        }
                        frames[n] = frame.data;
                        n += 1;
                    }
                    Err(_) => {
                        broken = true;
                        break;
                    }
                }
            }
            if broken {
                self.stats.malformed_blocks += 1;
                tracing::debug!(interface = %self.interface, block = next_block, "malformed TPACKET_V3 block skipped");
            }
            if done < total && !broken {
                // `max` reached inside this block: resume here next time.
                match offset {
                    Some(offset) => {
                        resume = Some(Resume { done, offset });
                        break;
                    }
                    None => self.stats.malformed_blocks += 1,
                }
            }
            finished_blocks += 1;
            next_block = (next_block + 1) % block_count;
        }

        handle(&frames[..n]);
        self.stats.received += n as u64;
        for i in 0..finished_blocks {
            self.ring.release((first_block + i) % block_count);
        }
        self.next_block = next_block;
        self.resume = resume;
        Ok(n)
    }

    fn transmit(&mut self, frames: &[&[u8]]) -> io::Result<usize> {
        let mut accepted = 0;
        for (i, frame) in frames.iter().enumerate() {
            match self.sys.send(self.fd.as_fd(), frame) {
                Ok(_) => {
                    accepted += 1;
                    self.stats.transmitted += 1;
                }
                Err(err) if room_error(&err) => {
                    self.stats.transmit_full += (frames.len() - i) as u64;
                    break;
                }
                Err(err) => {
                    self.stats.transmit_errors += 1;
                    tracing::debug!(interface = %self.interface, error = %err, "AF_PACKET send failed");
                }
            }
        }
        Ok(accepted)
    }

    fn wake_fd(&self) -> Option<std::os::fd::RawFd> {
        Some(self.fd.as_raw_fd())
    }

    fn has_pending(&self) -> bool {
        self.resume.is_some() || self.ring.block(self.next_block).is_some()
    }

    fn wait(&mut self, timeout_ms: i32) -> io::Result<()> {
        if self.has_pending() {
            return Ok(());
        }
        self.sys
            .poll_readable(self.fd.as_fd(), timeout_ms)
            .map(drop)
    }

    fn describe(&self) -> String {
        let fanout = match self.config.fanout_group {
            Some(g) => format!(" fanout hash group {g}"),
            None => String::new(),
        };
        format!(
            "af_packet tpacket_v3 {}{} ({} x {} KiB blocks)",
            self.interface,
            fanout,
            self.config.block_count,
            self.config.block_size / 1024
        )
    }
}

/// Link-layer memberships held on an interface by a packet socket that
/// receives nothing (protocol 0, never bound): for backends other than
/// AF_PACKET (AF_XDP) that still need promiscuous mode or a multicast MAC.
/// Dropping it, or the process dying, releases the memberships.
pub struct MembershipHold {
    _fd: OwnedFd,
    interface: String,
    memberships: Vec<Membership>,
}

impl fmt::Debug for MembershipHold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MembershipHold")
            .field("interface", &self.interface)
            .field("memberships", &self.memberships)
            .finish()
    }
}

impl MembershipHold {
    /// Joins `memberships` on `interface` with the real kernel.
    pub fn join(interface: &str, memberships: &[Membership]) -> Result<Self, AfPacketError> {
        Self::join_with(&Kernel, interface, memberships)
    }

    /// Joins through the given syscall seam.
    pub fn join_with(
        sys: &dyn PacketSys,
        interface: &str,
        memberships: &[Membership],
    ) -> Result<Self, AfPacketError> {
        let ifindex =
            sys.interface_index(interface)
                .map_err(|source| AfPacketError::NoInterface {
                    interface: interface.to_owned(),
                    source,
                })?;
        let fail = |step: &'static str| {
            let interface = interface.to_owned();
            move |source| AfPacketError::Syscall {
                step,
                interface,
                source,
            }
        };
        let fd = sys.open().map_err(fail("socket"))?;
        for &kind in memberships {
            sys.set_option(fd.as_fd(), SocketOption::AddMembership { ifindex, kind })
                .map_err(fail("PACKET_ADD_MEMBERSHIP"))?;
        }
        Ok(Self {
            _fd: fd,
            interface: interface.to_owned(),
            memberships: memberships.to_vec(),
        })
    }

    /// The memberships held.
    pub fn memberships(&self) -> &[Membership] {
        &self.memberships
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use parking_lot::Mutex;
    use std::os::fd::BorrowedFd;

    /// A kernel stand-in: a heap ring it fills on demand and scripted failures.
    #[derive(Default)]
    struct Fake {
        fail_step: Option<&'static str>,
        options: Mutex<Vec<SocketOption>>,
        sent: Mutex<Vec<Vec<u8>>>,
        send_script: Mutex<Vec<Option<i32>>>,
    }

    impl Fake {
        fn failing(step: &'static str) -> Self {
            Self {
                fail_step: Some(step),
                ..Self::default()
            }
        }
        fn maybe_fail(&self, step: &'static str) -> io::Result<()> {
            if self.fail_step == Some(step) {
                Err(io::Error::from_raw_os_error(libc::EPERM))
            } else {
                Ok(())
            }
        }
    }

    impl PacketSys for Fake {
        fn interface_index(&self, name: &str) -> io::Result<u32> {
            if name == "missing0" {
                return Err(io::Error::from_raw_os_error(libc::ENODEV));
            }
            Ok(7)
        }
        fn open(&self) -> io::Result<OwnedFd> {
            self.maybe_fail("socket")?;
            // Any real descriptor will do; the fake never issues syscalls on it.
            let file = std::fs::File::open("/dev/null")?;
            Ok(OwnedFd::from(file))
        }
        fn set_option(&self, _fd: BorrowedFd<'_>, option: SocketOption) -> io::Result<()> {
            let step = match option {
                SocketOption::Version3 => "version",
                SocketOption::RxRing(_) => "rx_ring",
                SocketOption::FanoutHash(_) => "fanout",
                SocketOption::AddMembership { .. } => "membership",
                SocketOption::IgnoreOutgoing => "ignore_outgoing",
            };
            self.maybe_fail(step)?;
            self.options.lock().push(option);
            Ok(())
        }
        fn bind(&self, _fd: BorrowedFd<'_>, _ifindex: u32, protocol: u16) -> io::Result<()> {
            assert_eq!(protocol, ETH_P_ALL);
            self.maybe_fail("bind")
        }
        fn map_rx_ring(&self, _fd: BorrowedFd<'_>, geometry: RingGeometry) -> io::Result<RxRing> {
            self.maybe_fail("mmap")?;
            Ok(RxRing::heap(geometry))
        }
        fn send(&self, _fd: BorrowedFd<'_>, frame: &[u8]) -> io::Result<usize> {
            if let Some(Some(errno)) = self.send_script.lock().pop() {
                return Err(io::Error::from_raw_os_error(errno));
            }
            self.sent.lock().push(frame.to_vec());
            Ok(frame.len())
        }
        fn poll_readable(&self, _fd: BorrowedFd<'_>, _timeout_ms: i32) -> io::Result<bool> {
            Ok(false)
        }
        fn statistics(&self, _fd: BorrowedFd<'_>) -> io::Result<KernelStatistics> {
            Ok(KernelStatistics {
                packets: 10,
                drops: 3,
                freezes: 1,
            })
        }
        fn page_size(&self) -> usize {
            4096
        }
    }

    fn small() -> AfPacketConfig {
        AfPacketConfig {
            block_size: 4096,
            block_count: 4,
            frame_size: 2048,
            fanout_group: Some(9),
            memberships: vec![
                Membership::Promiscuous,
                Membership::Multicast([3, 0xbf, 10, 0, 0, 1]),
            ],
            ..AfPacketConfig::default()
        }
    }

    fn collect(afp: &mut AfPacket, max: usize) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let n = afp
            .receive(max, &mut |frames| {
                out.extend(frames.iter().map(|f| f.to_vec()))
            })
            .unwrap();
        assert_eq!(n, out.len());
        out
    }

    #[test]
    fn every_setup_failure_is_a_named_error() {
        for step in [
            "socket",
            "version",
            "rx_ring",
            "mmap",
            "ignore_outgoing",
            "bind",
            "fanout",
            "membership",
        ] {
            let err =
                AfPacket::open_with(Arc::new(Fake::failing(step)), "eth9", &small()).unwrap_err();
            let msg = err.to_string();
            assert!(
                matches!(err, AfPacketError::Syscall { .. }),
                "{step}: {msg}"
            );
            assert!(
                msg.contains("eth9") && msg.contains("permitted"),
                "{step}: {msg}"
            );
        }
        let err = AfPacket::open_with(Arc::new(Fake::default()), "missing0", &small()).unwrap_err();
        assert!(matches!(err, AfPacketError::NoInterface { .. }));
    }

    #[test]
    fn bad_geometry_is_refused_before_any_syscall() {
        let sys = Arc::new(Fake::failing("socket"));
        for config in [
            AfPacketConfig {
                block_size: 5000,
                ..small()
            },
            AfPacketConfig {
                frame_size: 8,
                ..small()
            },
            AfPacketConfig {
                block_count: 0,
                ..small()
            },
            AfPacketConfig {
                block_size: 1 << 22,
                block_count: 1024,
                ..small()
            },
        ] {
            assert!(matches!(
                AfPacket::open_with(sys.clone(), "eth9", &config),
                Err(AfPacketError::Config(_))
            ));
        }
    }

    #[test]
    fn options_follow_config() {
        let sys = Arc::new(Fake::default());
        let afp = AfPacket::open_with(sys.clone(), "eth9", &small()).unwrap();
        let options = sys.options.lock().clone();
        assert!(options.contains(&SocketOption::FanoutHash(9)));
        assert!(options.contains(&SocketOption::IgnoreOutgoing));
        assert!(options.contains(&SocketOption::AddMembership {
            ifindex: 7,
            kind: Membership::Promiscuous
        }));
        assert!(afp.describe().contains("fanout hash group 9"));
    }

    #[test]
    fn receive_walks_blocks_in_order_skips_outgoing_and_releases() {
        let mut afp = AfPacket::open_with(Arc::new(Fake::default()), "eth9", &small()).unwrap();
        assert!(afp
            .ring
            .fill_block(0, &[(b"a1", 0), (b"own", PACKET_OUTGOING), (b"a2", 3)]));
        assert!(afp.ring.fill_block(1, &[(b"b1", 0)]));
        let got = collect(&mut afp, 64);
        assert_eq!(got, vec![b"a1".to_vec(), b"a2".to_vec(), b"b1".to_vec()]);
        assert!(
            afp.ring.block(0).is_none() && afp.ring.block(1).is_none(),
            "blocks returned"
        );
        assert_eq!(afp.stats.outgoing_skipped, 1);
        // Nothing more until the kernel hands over block 2.
        assert!(collect(&mut afp, 64).is_empty());
        assert!(afp.ring.fill_block(2, &[(b"c1", 0)]));
        assert_eq!(collect(&mut afp, 64), vec![b"c1".to_vec()]);
    }

    #[test]
    fn max_splits_a_block_without_rereading_or_losing_frames() {
        let mut afp = AfPacket::open_with(Arc::new(Fake::default()), "eth9", &small()).unwrap();
        let frames: Vec<Vec<u8>> = (0..10u8).map(|i| vec![i; 20]).collect();
        let refs: Vec<(&[u8], u8)> = frames.iter().map(|f| (f.as_slice(), 0)).collect();
        assert!(afp.ring.fill_block(0, &refs));
        let mut seen = Vec::new();
        for _ in 0..5 {
            let batch = collect(&mut afp, 3);
            assert!(batch.len() <= 3);
            seen.extend(batch);
        }
        assert_eq!(seen, frames);
        assert!(afp.ring.block(0).is_none());
    }

    #[test]
    fn wraps_around_the_ring() {
        let mut afp = AfPacket::open_with(Arc::new(Fake::default()), "eth9", &small()).unwrap();
        for round in 0..3u8 {
            for b in 0..4 {
                assert!(afp.ring.fill_block(b, &[(&[round, b as u8], 0)]));
            }
            let got = collect(&mut afp, 256);
            assert_eq!(got.len(), 4, "round {round}");
            assert_eq!(got[3], vec![round, 3]);
        }
    }

    #[test]
    fn corrupt_block_is_skipped_and_counted() {
        let mut afp = AfPacket::open_with(Arc::new(Fake::default()), "eth9", &small()).unwrap();
        assert!(afp.ring.fill_block(0, &[(b"x", 0), (b"y", 0)]));
        // Second frame's header offset points past the block.
        assert!(afp.ring.poke_for_test(0, 48, 1 << 20));
        assert!(afp.ring.fill_block(1, &[(b"ok", 0)]));
        let got = collect(&mut afp, 64);
        assert_eq!(got, vec![b"ok".to_vec()]);
        assert_eq!(afp.stats.malformed_blocks, 1);
        assert!(
            afp.ring.block(0).is_none(),
            "corrupt block still returned to the kernel"
        );
    }

    #[test]
    fn transmit_counts_full_and_errors_without_failing() {
        let sys = Arc::new(Fake::default());
        let mut afp = AfPacket::open_with(sys.clone(), "eth9", &small()).unwrap();
        // Popped from the back: f1 EMSGSIZE, f2 sent, f3 EAGAIN.
        *sys.send_script.lock() = vec![Some(libc::EAGAIN), None, Some(libc::EMSGSIZE)];
        let n = afp.transmit(&[b"f1", b"f2", b"f3", b"f4"]).unwrap();
        assert_eq!(
            n, 1,
            "f1 rejected, f2 sent, f3 hit EAGAIN and stopped the batch"
        );
        assert_eq!(sys.sent.lock().as_slice(), &[b"f2".to_vec()]);
        let stats = afp.stats();
        assert_eq!(stats.transmit_errors, 1);
        assert_eq!(stats.transmit_full, 2);
        assert_eq!(stats.kernel_drops, 3);
    }

    #[test]
    fn membership_hold_reports_failures() {
        let err = MembershipHold::join_with(
            &Fake::failing("membership"),
            "eth9",
            &[Membership::Promiscuous],
        )
        .unwrap_err();
        assert!(err.to_string().contains("PACKET_ADD_MEMBERSHIP"));
        let hold = MembershipHold::join_with(&Fake::default(), "eth9", &[Membership::Promiscuous])
            .unwrap();
        assert_eq!(hold.memberships(), &[Membership::Promiscuous]);
    }
}
