//! [`AfXdp`]: one AF_XDP socket on one rx queue of an [`XdpAttachment`]'s
//! interface, as a [`FrameIo`].
//!
//! The socket, its rings, its UMEM and the account of which frames the
//! kernel holds are the seam's [`Xsk`]; this room adds what a poll loop
//! needs on top: the configuration and its checks, registration in the
//! attachment's XSKMAP, the transmit kick policy, and counters.

use std::fmt;
use std::io;
use std::os::fd::RawFd;

use crate::io::{FrameIo, SocketDrops};
use crate::sys::xsk::{Kick, Xsk, XskConfig};

use super::{AfXdpError, XdpAttachment, XdpMode, DEFAULT_FRAME_SIZE, DEFAULT_RING_SIZE};

/// `sendto` returns after this many frames in copy mode (the kernel's
/// per-call budget); used to bound the kick loop.
const COPY_MODE_TX_BUDGET: usize = 32;

/// Configuration of one AF_XDP socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AfXdpConfig {
    /// The interface (must be the attachment's).
    pub ifname: String,
    /// The rx queue.
    pub queue: u32,
    /// Entries in each ring (power of two).
    pub ring_size: u32,
    /// UMEM frame size (power of two, 2048..=page size).
    pub frame_size: u32,
    /// The XDP mode required of the attachment; `Auto` accepts either.
    pub mode: XdpMode,
    /// Try a zero-copy bind first (falls back to copy mode).
    pub zero_copy: bool,
}

impl AfXdpConfig {
    /// Defaults for `ifname` queue `queue`: 16384-entry rings, 2048-byte
    /// frames, any XDP mode, copy mode.
    pub fn new(ifname: impl Into<String>, queue: u32) -> Self {
        Self {
            ifname: ifname.into(),
            queue,
            ring_size: DEFAULT_RING_SIZE,
            frame_size: DEFAULT_FRAME_SIZE,
            mode: XdpMode::Auto,
            zero_copy: false,
        }
    }

    /// Checks what can be checked without the kernel.
    pub fn validate(&self) -> Result<(), AfXdpError> {
        let bad = |msg: String| Err(AfXdpError::Config(msg));
        if self.ifname.is_empty() || self.ifname.len() >= libc::IFNAMSIZ {
            return bad(format!(
                "interface name {:?} must be 1..{} bytes",
                self.ifname,
                libc::IFNAMSIZ
            ));
        }
        if self.ifname.contains('\0') {
            return bad(format!("interface name {:?} contains NUL", self.ifname));
        }
        if !self.ring_size.is_power_of_two() || !(64..=(1 << 20)).contains(&self.ring_size) {
            return bad(format!(
                "ring size {} must be a power of two in 64..=1048576",
                self.ring_size
            ));
        }
        if !self.frame_size.is_power_of_two() || !(2048..=65536).contains(&self.frame_size) {
            return bad(format!(
                "frame size {} must be a power of two in 2048..=65536 (and at most the page size)",
                self.frame_size
            ));
        }
        if self.umem_len().is_none() {
            return bad("UMEM size overflows".to_owned());
        }
        Ok(())
    }

    fn umem_len(&self) -> Option<usize> {
        usize::try_from(u64::from(self.ring_size) * 2 * u64::from(self.frame_size)).ok()
    }
}

/// Counters of one socket: ours, and the kernel's (`XDP_STATISTICS`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AfXdpStats {
    /// Frames handed to the poll loop.
    pub rx_frames: u64,
    /// Rx descriptors outside the receive half of the UMEM, or overrunning
    /// their frame (dropped).
    pub rx_bad_descs: u64,
    /// Refills that left frames in the stash (the fill ring was full).
    pub fill_stash_events: u64,
    /// Frames waiting in the stash now.
    pub stashed: u64,
    /// Frames queued for transmission.
    pub tx_frames: u64,
    /// Frames not sent for lack of a free tx frame or ring slot.
    pub tx_no_room: u64,
    /// Frames not sent because they were empty or larger than a frame.
    pub tx_oversize: u64,
    /// Kicks the kernel refused with a hard error.
    pub tx_kick_errors: u64,
    /// Kernel: frames dropped for any reason (`rx_dropped`).
    pub kernel_rx_dropped: u64,
    /// Kernel: frames dropped because the rx ring was full.
    pub kernel_rx_ring_full: u64,
    /// Kernel: times the fill ring was empty when a frame arrived.
    pub kernel_fill_ring_empty: u64,
    /// Kernel: invalid rx descriptors.
    pub kernel_rx_invalid: u64,
    /// Kernel: invalid tx descriptors.
    pub kernel_tx_invalid: u64,
}

fn socket_error(step: &'static str, config: &AfXdpConfig, source: io::Error) -> AfXdpError {
    if step == "socket" && source.raw_os_error() == Some(libc::EAFNOSUPPORT) {
        return AfXdpError::Unsupported(format!("socket(AF_XDP): {source}"));
    }
    AfXdpError::Socket {
        step,
        ifname: config.ifname.clone(),
        queue: config.queue,
        source,
    }
}

/// One AF_XDP socket on one rx queue: a [`FrameIo`].
pub struct AfXdp {
    xsk: Xsk,
    stats: AfXdpStats,
    mode: XdpMode,
    ifname: String,
    queue: u32,
}

impl fmt::Debug for AfXdp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AfXdp")
            .field("ifname", &self.ifname)
            .field("queue", &self.queue)
            .field("mode", &self.mode)
            .field("zero_copy", &self.xsk.zero_copy())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl AfXdp {
    /// Opens a socket on `config.queue` of the attachment's interface and
    /// registers it in the attachment's XSKMAP.
    pub fn open(config: &AfXdpConfig, attachment: &XdpAttachment) -> Result<Self, AfXdpError> {
        config.validate()?;
        if config.ifname != attachment.ifname() {
            return Err(AfXdpError::WrongInterface {
                attached: attachment.ifname().to_owned(),
                requested: config.ifname.clone(),
            });
        }
        attachment.check_queue(config.queue)?;
        if config.mode != XdpMode::Auto && config.mode != attachment.mode() {
            return Err(AfXdpError::Config(format!(
                "{} XDP was required but {} is attached in {} mode",
                config.mode,
                attachment.ifname(),
                attachment.mode()
            )));
        }
        let xsk = Xsk::open(&XskConfig {
            ifname: &config.ifname,
            queue: config.queue,
            ring_size: config.ring_size,
            frame_size: config.frame_size,
            zero_copy: config.zero_copy,
        })
        .map_err(|e| socket_error(e.step, config, e.source))?;
        let this = Self {
            xsk,
            stats: AfXdpStats::default(),
            mode: attachment.mode(),
            ifname: config.ifname.clone(),
            queue: config.queue,
        };
        // The fill ring is full: let the program send frames here.
        attachment.register(config.queue, this.xsk.fd())?;
        tracing::info!(
            ifname = %this.ifname,
            queue = this.queue,
            mode = %this.mode,
            zero_copy = this.xsk.zero_copy(),
            ring_size = config.ring_size,
            "AF_XDP socket bound"
        );
        Ok(this)
    }

    /// The XDP mode of the attachment this socket was opened on.
    pub fn mode(&self) -> XdpMode {
        self.mode
    }

    /// Whether the socket is bound in zero-copy mode.
    pub fn zero_copy(&self) -> bool {
        self.xsk.zero_copy()
    }

    /// The rx queue.
    pub fn queue(&self) -> u32 {
        self.queue
    }

    /// Our counters and the kernel's (`getsockopt(XDP_STATISTICS)`).
    pub fn stats(&self) -> io::Result<AfXdpStats> {
        let k = self.xsk.statistics()?;
        Ok(AfXdpStats {
            stashed: self.xsk.stashed() as u64,
            kernel_rx_dropped: k.rx_dropped,
            kernel_rx_ring_full: k.rx_ring_full,
            kernel_fill_ring_empty: k.rx_fill_ring_empty_descs,
            kernel_rx_invalid: k.rx_invalid_descs,
            kernel_tx_invalid: k.tx_invalid_descs,
            ..self.stats
        })
    }

    /// Gives stashed receive frames back to the fill ring, as many as fit.
    fn refill(&mut self) {
        if self.xsk.refill() {
            self.stats.fill_stash_events += 1;
        }
    }

    /// Kicks the transmit ring until the kernel has taken everything or says
    /// it is busy; at most enough rounds for `frames` frames.
    fn kick(&mut self, frames: usize) {
        let rounds = frames / COPY_MODE_TX_BUDGET + 2;
        for _ in 0..rounds {
            match self.xsk.kick() {
                Ok(Kick::Done) => return,
                Ok(Kick::Again) => {
                    if self.xsk.tx_pending() == 0 {
                        return;
                    }
                }
                Err(e) => {
                    self.stats.tx_kick_errors += 1;
                    tracing::debug!(ifname = %self.ifname, queue = self.queue, error = %e, "AF_XDP tx kick failed");
                    return;
                }
            }
        }
    }
}

impl FrameIo for AfXdp {
    fn receive(&mut self, max: usize, handle: &mut dyn FnMut(&[&[u8]])) -> io::Result<usize> {
        self.refill();
        if self.xsk.tx_pending() > 0 {
            self.kick(self.xsk.tx_pending() as usize);
        }
        let got = self.xsk.receive(max, handle);
        self.stats.rx_bad_descs += got.bad_descs;
        self.stats.rx_frames += got.frames as u64;
        self.refill();
        Ok(got.frames)
    }

    fn transmit(&mut self, frames: &[&[u8]]) -> io::Result<usize> {
        let sent = self.xsk.transmit(frames);
        self.stats.tx_frames += sent.frames as u64;
        self.stats.tx_oversize += sent.oversize;
        self.stats.tx_no_room +=
            (frames.len().saturating_sub(sent.frames) as u64).saturating_sub(sent.oversize);
        if sent.frames > 0 {
            self.kick(sent.frames);
        }
        Ok(sent.frames)
    }

    fn wait(&mut self, timeout_ms: i32) -> io::Result<()> {
        if self.has_pending() {
            return Ok(());
        }
        self.xsk.wait_readable(timeout_ms).map(|_| ())
    }

    fn wake_fd(&self) -> Option<RawFd> {
        Some(self.xsk.fd())
    }

    fn has_pending(&self) -> bool {
        self.xsk.has_pending()
    }

    fn socket_drops(&self) -> Option<SocketDrops> {
        let k = self.xsk.statistics().ok()?;
        Some(SocketDrops {
            rx_dropped: k.rx_dropped,
            rx_invalid_descs: k.rx_invalid_descs,
            rx_ring_full: k.rx_ring_full,
            rx_fill_ring_empty_descs: k.rx_fill_ring_empty_descs,
        })
    }

    fn describe(&self) -> String {
        format!(
            "af_xdp {} {} queue {} on {}",
            self.mode,
            if self.xsk.zero_copy() {
                "zero-copy"
            } else {
                "copy"
            },
            self.queue,
            self.ifname
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::bpf::fake::{Fake, Script};
    use crate::xdp::XdpParams;
    use std::net::Ipv4Addr;
    use std::sync::Arc;

    fn attachment() -> XdpAttachment {
        let params = XdpParams {
            cluster_macs: vec![[0x02, 0xbf, 10, 0, 0, 1]],
            vips_v4: vec![Ipv4Addr::new(10, 0, 0, 1)],
            ..XdpParams::default()
        };
        let fake = Arc::new(Fake::new(Script::default()));
        XdpAttachment::attach_with(fake, "veth0", &params, XdpMode::Auto).unwrap()
    }

    #[test]
    fn open_refuses_mismatches_before_touching_the_kernel() {
        let a = attachment();
        let e = AfXdp::open(&AfXdpConfig::new("veth1", 0), &a).unwrap_err();
        assert!(matches!(e, AfXdpError::WrongInterface { .. }), "{e:?}");
        let e = AfXdp::open(&AfXdpConfig::new("veth0", 1), &a).unwrap_err();
        assert!(matches!(e, AfXdpError::QueueOutOfRange { .. }), "{e:?}");
        let mut c = AfXdpConfig::new("veth0", 0);
        c.mode = XdpMode::Generic;
        let e = AfXdp::open(&c, &a).unwrap_err();
        assert!(e.to_string().contains("generic XDP was required"), "{e}");
    }

    #[test]
    fn config_validation() {
        let ok = AfXdpConfig::new("eth0", 0);
        assert!(ok.validate().is_ok());
        for bad in [
            AfXdpConfig {
                ring_size: 1000,
                ..ok.clone()
            },
            AfXdpConfig {
                ring_size: 32,
                ..ok.clone()
            },
            AfXdpConfig {
                frame_size: 1024,
                ..ok.clone()
            },
            AfXdpConfig {
                frame_size: 3000,
                ..ok.clone()
            },
            AfXdpConfig {
                ifname: String::new(),
                ..ok.clone()
            },
            AfXdpConfig {
                ifname: "a-very-long-interface".into(),
                ..ok.clone()
            },
            AfXdpConfig {
                ifname: "a\0b".into(),
                ..ok.clone()
            },
        ] {
            assert!(
                matches!(bad.validate(), Err(AfXdpError::Config(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn socket_errors_map_to_unsupported_only_for_a_missing_family() {
        let c = AfXdpConfig::new("eth0", 0);
        let e = socket_error(
            "socket",
            &c,
            io::Error::from_raw_os_error(libc::EAFNOSUPPORT),
        );
        assert!(matches!(e, AfXdpError::Unsupported(_)), "{e:?}");
        let e = socket_error("bind", &c, io::Error::from_raw_os_error(libc::EBUSY));
        match e {
            AfXdpError::Socket { step, source, .. } => {
                assert_eq!(step, "bind");
                assert_eq!(source.raw_os_error(), Some(libc::EBUSY));
            }
            other => panic!("{other:?}"),
        }
    }
}
