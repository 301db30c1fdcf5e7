//! The AF_XDP backend: shoal's XDP program on an interface ([`XdpAttachment`])
//! and one AF_XDP socket per rx queue ([`AfXdp`], a [`FrameIo`]).
//!
//! # What it owns and guarantees
//!
//! - [`XdpAttachment`] owns the program, the XSKMAP and the BPF link for one
//!   interface. Dropping it (or the process dying, even by `SIGKILL`) closes
//!   the link and so detaches the program: nothing is left on the interface.
//!   One attachment serves every queue's socket.
//! - [`AfXdp`] owns one socket bound to one rx queue, its UMEM (`2 × ring_size`
//!   frames: the first half cycles through the fill and rx rings, the second
//!   half through the tx and completion rings) and its place in the XSKMAP.
//!   The kernel removes the socket from the map when the socket closes.
//! - Received frames are handed to the poll loop as slices into the UMEM (no
//!   copy) and go back to the fill ring when the callback returns. Frames the
//!   fill ring cannot take yet (the kernel may publish rx descriptors before it
//!   frees fill slots) wait in a stash and are retried on every call; nothing
//!   asserts on ring state.
//! - Transmitted frames are copied into tx frames; the kernel is kicked with
//!   `sendto` (copy mode always needs it, and sends a bounded batch per kick,
//!   so kicks repeat while the kernel says "again" and pending frames are
//!   kicked again on the next call).
//! - Every kernel interaction that can fail returns a typed [`AfXdpError`];
//!   malformed descriptors are counted, never trusted.
//!
//! # Modes
//!
//! [`XdpMode::Auto`] tries native (driver) XDP and falls back to generic
//! (skb) XDP, logging which one is in use. Sockets bind in copy mode unless
//! [`AfXdpConfig::zero_copy`] asks to try zero-copy first (veth has none: the
//! bind fails with `EOPNOTSUPP` and copy mode is used). A bind that fails with
//! `EBUSY` (the previous owner's buffer pool is released a little after it
//! exits) is retried with a short back-off.
//!
//! # Use from a poll loop
//!
//! ```no_run
//! # use shoal_engine::afxdp::{AfXdp, AfXdpConfig, XdpAttachment, XdpMode};
//! # use shoal_engine::io::FrameIo;
//! # use shoal_engine::xdp::XdpParams;
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let attachment = XdpAttachment::attach("eth0", &XdpParams::default(), XdpMode::Auto)?;
//! let mut io = AfXdp::open(&AfXdpConfig::new("eth0", 0), &attachment)?;
//! loop {
//!     let n = io.receive(256, &mut |frames| { /* judge frames in place */ })?;
//!     if n == 0 {
//!         io.wait(10)?;
//!     }
//! }
//! # }
//! ```

use std::ffi::CString;
use std::fmt;
use std::io;
use std::num::NonZeroU32;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

use xdpilone::xdp::XdpDesc;
use xdpilone::{DeviceQueue, IfInfo, RingRx, RingTx, Socket, SocketConfig, Umem, UmemConfig, User};

use crate::fastpath::{FastPathError, FastPathMaps};
use crate::io::{FrameIo, MAX_BATCH};
use crate::sys::bpf::{
    self, AttachMode, Bpf, BpfError, BpfMap, KernelBpf, Kick, MapSpec, UmemArea,
};
use crate::xdp::fast::FastPathPlan;
use crate::xdp::program::ProgramError;
use crate::xdp::{XdpAction, XdpParams, XdpProgram};

/// Ring size the lab notes recommend (smaller rings lose frames to an empty
/// fill ring when the consumer is briefly preempted on 2 vCPUs).
pub const DEFAULT_RING_SIZE: u32 = 16384;
/// Frame size: one page half, enough for a 1500-byte MTU frame.
pub const DEFAULT_FRAME_SIZE: u32 = 2048;

/// Bind attempts when the kernel answers `EBUSY`.
const BIND_ATTEMPTS: u32 = 8;
/// First back-off after `EBUSY`; doubles up to [`BIND_MAX_DELAY`].
const BIND_FIRST_DELAY: Duration = Duration::from_millis(25);
const BIND_MAX_DELAY: Duration = Duration::from_millis(400);
/// `sendto` returns after this many frames in copy mode (the kernel's
/// per-call budget); used to bound the kick loop.
const COPY_MODE_TX_BUDGET: usize = 32;
/// `ENOTSUPP`, the kernel-internal errno some BPF paths leak.
const ENOTSUPP: i32 = 524;

/// How the XDP program is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XdpMode {
    /// Driver (native) mode only.
    Native,
    /// Generic (skb) mode only.
    Generic,
    /// Native if the driver supports it, else generic.
    Auto,
}

impl fmt::Display for XdpMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Native => "native",
            Self::Generic => "generic",
            Self::Auto => "auto",
        })
    }
}

/// Everything that can go wrong attaching or opening.
#[derive(Debug, thiserror::Error)]
pub enum AfXdpError {
    /// The kernel has no AF_XDP (or no XSKMAP).
    #[error("the kernel lacks AF_XDP support: {0}")]
    Unsupported(String),
    /// The configuration cannot work.
    #[error("invalid AF_XDP configuration: {0}")]
    Config(String),
    /// The parameters do not make a program.
    #[error("building the XDP program failed: {0}")]
    Program(#[from] ProgramError),
    /// The kernel refused the program (the source carries the verifier log).
    #[error("loading the XDP program failed: {0}")]
    Load(#[source] BpfError),
    /// No attach mode worked.
    #[error("attaching XDP to {ifname} failed: {}", describe_attempts(.attempts))]
    Attach {
        /// The interface.
        ifname: String,
        /// Each mode tried and why it failed.
        attempts: Vec<(XdpMode, BpfError)>,
    },
    /// Another kernel call failed.
    #[error(transparent)]
    Bpf(#[from] BpfError),
    /// The queue does not exist on the interface.
    #[error("queue {queue} is out of range: {ifname} has {count} rx queues")]
    QueueOutOfRange {
        /// The interface.
        ifname: String,
        /// The queue asked for.
        queue: u32,
        /// How many rx queues it has.
        count: u32,
    },
    /// The socket's interface is not the attachment's.
    #[error("the XDP attachment is on {attached}, not {requested}")]
    WrongInterface {
        /// Where the program is attached.
        attached: String,
        /// Where the socket was asked for.
        requested: String,
    },
    /// A socket set-up step failed.
    #[error("AF_XDP {step} failed on {ifname} queue {queue}: {source}")]
    Socket {
        /// The step (for example `bind`).
        step: &'static str,
        /// The interface.
        ifname: String,
        /// The queue.
        queue: u32,
        /// The `errno`.
        #[source]
        source: io::Error,
    },
}

fn describe_attempts(attempts: &[(XdpMode, BpfError)]) -> String {
    if attempts.is_empty() {
        return "no mode was tried".to_owned();
    }
    attempts
        .iter()
        .map(|(mode, e)| format!("{mode} mode: {e}"))
        .collect::<Vec<_>>()
        .join("; ")
}

fn is_unsupported_errno(errno: Option<i32>) -> bool {
    matches!(
        errno,
        Some(libc::EINVAL | libc::EOPNOTSUPP | libc::ENOSYS | libc::EAFNOSUPPORT | ENOTSUPP)
    )
}

/// shoal's XDP program attached to one interface, with the XSKMAP its
/// per-queue sockets register in. Dropping it detaches the program.
#[derive(Debug)]
pub struct XdpAttachment {
    // Declared first so it is closed first: the program leaves the interface
    // before the map and program fds go.
    link: OwnedFd,
    program: OwnedFd,
    /// The tcx companion of the XDP pass (link, then program), when the
    /// program passes datagrams (see [`crate::xdp::reclassify`]).
    reclassify: Option<(OwnedFd, OwnedFd)>,
    xskmap: BpfMap,
    /// The XDP fast path's maps, when the program judges cluster frames in
    /// the kernel (see [`crate::fastpath`]).
    fast_path: Option<Arc<FastPathMaps>>,
    bpf: Arc<dyn Bpf>,
    ifname: String,
    ifindex: u32,
    queues: u32,
    mode: XdpMode,
}

/// Loads and links [`crate::xdp::reclassify`] on `ifindex`'s tcx ingress;
/// returns (link, program).
fn attach_reclassify(
    bpf: &dyn Bpf,
    ifindex: u32,
    mac: [u8; 6],
) -> Result<(OwnedFd, OwnedFd), AfXdpError> {
    let insns = crate::xdp::reclassify::program(mac).map_err(ProgramError::from)?;
    let encoded: Vec<[u8; 8]> = insns.iter().map(|i| i.encode()).collect();
    let program = bpf
        .prog_load_tcx("shoal_reclass", &encoded)
        .map_err(AfXdpError::Load)?;
    let link = bpf.link_create_tcx_ingress(program.as_fd(), ifindex)?;
    Ok((link, program))
}

impl XdpAttachment {
    /// Builds, loads and attaches shoal's program to `ifname` (in the calling
    /// thread's network namespace).
    pub fn attach(ifname: &str, params: &XdpParams, mode: XdpMode) -> Result<Self, AfXdpError> {
        Self::attach_with(Arc::new(KernelBpf), ifname, params, mode)
    }

    /// As [`XdpAttachment::attach`], through the given kernel seam.
    pub fn attach_with(
        bpf: Arc<dyn Bpf>,
        ifname: &str,
        params: &XdpParams,
        mode: XdpMode,
    ) -> Result<Self, AfXdpError> {
        Self::attach_with_fast_path(bpf, ifname, params, None, mode)
    }

    /// As [`XdpAttachment::attach_with`]; with `fast_path`, the attachment
    /// also creates and owns the fast path's maps and the program drops, in
    /// the kernel, what they say this host does not keep, and (with a pass
    /// MAC) hands the kernel stack what they say it surely keeps (nothing
    /// until a [`crate::fastpath::FastPath`] writes them).
    pub fn attach_with_fast_path(
        bpf: Arc<dyn Bpf>,
        ifname: &str,
        params: &XdpParams,
        fast_path: Option<FastPathPlan>,
        mode: XdpMode,
    ) -> Result<Self, AfXdpError> {
        let ifindex = bpf.ifindex(ifname)?;
        let queues = bpf.rx_queue_count(ifname)?.max(1);
        let xskmap = bpf
            .map_create(&MapSpec::xsk_map("shoal_xsks", queues))
            .map_err(|e| {
                if is_unsupported_errno(e.errno()) {
                    AfXdpError::Unsupported(e.to_string())
                } else {
                    AfXdpError::Bpf(e)
                }
            })?;
        // The pass needs its tcx companion on veth: without it, nothing is
        // passed (every kept frame takes userspace and the TAP).
        let mut reclassify = None;
        let fast_path = fast_path.map(|mut plan| {
            if let Some(mac) = plan.pass_to {
                match attach_reclassify(&*bpf, ifindex, mac) {
                    Ok(fds) => reclassify = Some(fds),
                    Err(e) => {
                        tracing::warn!(ifname, error = %e,
                            "no tcx ingress link: the XDP program passes nothing to the stack");
                        plan.pass_to = None;
                    }
                }
            }
            plan
        });
        let fast_path = match fast_path {
            Some(plan) => Some(Arc::new(
                FastPathMaps::create(&*bpf, plan.layout, plan.pass_to).map_err(|e| match e {
                    FastPathError::Bpf(b) => AfXdpError::Bpf(b),
                })?,
            )),
            None => None,
        };
        let program = XdpProgram::build_with_maps(
            params,
            xskmap.fd(),
            fast_path.as_deref().map(|m| (m.layout(), m.fds())),
            XdpAction::Pass,
        )?;
        let program = bpf
            .prog_load_xdp("shoal_xdp", &program.encode())
            .map_err(AfXdpError::Load)?;

        let order: &[(XdpMode, AttachMode)] = match mode {
            XdpMode::Native => &[(XdpMode::Native, AttachMode::Driver)],
            XdpMode::Generic => &[(XdpMode::Generic, AttachMode::Skb)],
            XdpMode::Auto => &[
                (XdpMode::Native, AttachMode::Driver),
                (XdpMode::Generic, AttachMode::Skb),
            ],
        };
        let mut attempts = Vec::new();
        for &(actual, how) in order {
            match bpf.link_create_xdp(program.as_fd(), ifindex, how) {
                Ok(link) => {
                    tracing::info!(
                        ifname,
                        ifindex,
                        queues,
                        mode = %actual,
                        "shoal XDP program attached"
                    );
                    return Ok(Self {
                        link,
                        program,
                        reclassify,
                        xskmap,
                        fast_path,
                        bpf,
                        ifname: ifname.to_owned(),
                        ifindex,
                        queues,
                        mode: actual,
                    });
                }
                Err(e) => {
                    tracing::warn!(ifname, mode = %actual, error = %e, "XDP attach failed");
                    attempts.push((actual, e));
                }
            }
        }
        Err(AfXdpError::Attach {
            ifname: ifname.to_owned(),
            attempts,
        })
    }

    /// Whether the program hands datagrams to the stack itself (its tcx
    /// companion is attached).
    pub fn passes(&self) -> bool {
        self.reclassify.is_some()
    }

    /// The mode actually in use (never [`XdpMode::Auto`]).
    pub fn mode(&self) -> XdpMode {
        self.mode
    }

    /// The interface.
    pub fn ifname(&self) -> &str {
        &self.ifname
    }

    /// The interface index.
    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    /// How many rx queues the XSKMAP covers.
    pub fn queue_count(&self) -> u32 {
        self.queues
    }

    /// The BPF link holding the program on the interface.
    pub fn link(&self) -> BorrowedFd<'_> {
        self.link.as_fd()
    }

    /// The loaded program (for `BPF_PROG_TEST_RUN` and introspection).
    pub fn program(&self) -> BorrowedFd<'_> {
        self.program.as_fd()
    }

    /// The XSKMAP.
    pub fn xskmap(&self) -> &BpfMap {
        &self.xskmap
    }

    /// The fast path's maps, when the program has the fast path.
    pub fn fast_path(&self) -> Option<&Arc<FastPathMaps>> {
        self.fast_path.as_ref()
    }

    /// The kernel seam this attachment uses.
    pub fn bpf(&self) -> &Arc<dyn Bpf> {
        &self.bpf
    }

    fn check_queue(&self, queue: u32) -> Result<(), AfXdpError> {
        if queue >= self.queues {
            return Err(AfXdpError::QueueOutOfRange {
                ifname: self.ifname.clone(),
                queue,
                count: self.queues,
            });
        }
        Ok(())
    }

    /// Directs `queue`'s cluster frames to the AF_XDP socket `socket`.
    pub fn register(&self, queue: u32, socket: RawFd) -> Result<(), AfXdpError> {
        self.check_queue(queue)?;
        let fd = u32::try_from(socket)
            .map_err(|_| AfXdpError::Config(format!("socket fd {socket} is negative")))?;
        self.bpf
            .map_update(&self.xskmap, &queue.to_ne_bytes(), &fd.to_ne_bytes())?;
        Ok(())
    }

    /// Stops directing `queue`'s frames to a socket (they reach the kernel
    /// stack instead). Closing the socket does this too. (An XSKMAP does not
    /// report whether the slot was occupied.)
    pub fn unregister(&self, queue: u32) -> Result<(), AfXdpError> {
        self.check_queue(queue)?;
        self.bpf.map_delete(&self.xskmap, &queue.to_ne_bytes())?;
        Ok(())
    }
}

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

/// The rings of one bound socket.
struct Bound {
    rx: RingRx,
    tx: RingTx,
    device: DeviceQueue,
    user: User,
}

/// One AF_XDP socket on one rx queue: a [`FrameIo`].
pub struct AfXdp {
    // Rings and socket first: they are dropped (unmapped, closed) before the
    // UMEM they describe.
    rx: RingRx,
    tx: RingTx,
    device: DeviceQueue,
    user: User,
    area: UmemArea,
    fd: RawFd,
    frame_size: u64,
    /// UMEM offsets below this are receive frames; the rest are tx frames.
    rx_end: u64,
    descs: Vec<XdpDesc>,
    stash: Vec<u64>,
    tx_free: Vec<u64>,
    stats: AfXdpStats,
    mode: XdpMode,
    zero_copy: bool,
    ifname: String,
    queue: u32,
}

impl fmt::Debug for AfXdp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AfXdp")
            .field("ifname", &self.ifname)
            .field("queue", &self.queue)
            .field("mode", &self.mode)
            .field("zero_copy", &self.zero_copy)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

fn errno_error(e: &xdpilone::Errno) -> io::Error {
    // xdpilone reports some errors as negative errno values.
    io::Error::from_raw_os_error(e.get_raw().abs())
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
        let len = config
            .umem_len()
            .ok_or_else(|| AfXdpError::Config("UMEM size overflows".to_owned()))?;
        let area = UmemArea::map(len).map_err(|source| AfXdpError::Socket {
            step: "mmap UMEM",
            ifname: config.ifname.clone(),
            queue: config.queue,
            source,
        })?;

        let mut bound = None;
        if config.zero_copy {
            match Self::bind(config, &area, SocketConfig::XDP_BIND_ZEROCOPY) {
                Ok(b) => bound = Some((b, true)),
                Err(e) => tracing::info!(
                    ifname = %config.ifname,
                    queue = config.queue,
                    error = %e,
                    "zero-copy bind failed, using copy mode"
                ),
            }
        }
        let (b, zero_copy) = match bound {
            Some(b) => b,
            None => (
                Self::bind(config, &area, SocketConfig::XDP_BIND_COPY)?,
                false,
            ),
        };
        let fd = b.user.as_raw_fd();
        // xdpilone opens the socket without SOCK_CLOEXEC; a child the engine
        // spawns must not keep the queue (and its UMEM) busy.
        bpf::set_cloexec(fd).map_err(|source| AfXdpError::Socket {
            step: "fcntl(FD_CLOEXEC)",
            ifname: config.ifname.clone(),
            queue: config.queue,
            source,
        })?;

        let frame_size = u64::from(config.frame_size);
        let rx_end = u64::from(config.ring_size) * frame_size;
        let mut this = Self {
            rx: b.rx,
            tx: b.tx,
            device: b.device,
            user: b.user,
            area,
            fd,
            frame_size,
            rx_end,
            descs: Vec::with_capacity(MAX_BATCH),
            stash: (0..u64::from(config.ring_size))
                .map(|i| i * frame_size)
                .collect(),
            tx_free: (0..u64::from(config.ring_size))
                .map(|i| rx_end + i * frame_size)
                .collect(),
            stats: AfXdpStats::default(),
            mode: attachment.mode(),
            zero_copy,
            ifname: config.ifname.clone(),
            queue: config.queue,
        };
        // Fill first, then let the program send frames here.
        this.refill();
        attachment.register(config.queue, fd)?;
        tracing::info!(
            ifname = %this.ifname,
            queue = this.queue,
            mode = %this.mode,
            zero_copy,
            ring_size = config.ring_size,
            "AF_XDP socket bound"
        );
        Ok(this)
    }

    fn bind(config: &AfXdpConfig, area: &UmemArea, bind_flags: u16) -> Result<Bound, AfXdpError> {
        let err = |step: &'static str| {
            move |e: xdpilone::Errno| socket_error(step, config, errno_error(&e))
        };
        let umem_config = UmemConfig {
            fill_size: config.ring_size,
            complete_size: config.ring_size,
            frame_size: config.frame_size,
            headroom: 0,
            flags: 0,
        };
        // SAFETY: `area` is a page-aligned anonymous mapping of exactly
        // `2 * ring_size * frame_size` bytes (validated, non-zero frame size).
        // It outlives every ring and socket made from this Umem: `AfXdp`
        // declares its rings before its `UmemArea`, so they are dropped first,
        // and a failed bind drops them before returning. The `Umem` value
        // itself holds only the pointer and is dropped at the end of this
        // function without touching the memory.
        let umem = unsafe { Umem::new(umem_config, area.as_raw()) }.map_err(err("socket"))?;
        let name = CString::new(config.ifname.as_str())
            .map_err(|_| AfXdpError::Config(format!("bad interface name {:?}", config.ifname)))?;
        let mut info = IfInfo::invalid();
        info.from_name(&name).map_err(err("if_nametoindex"))?;
        info.set_queue(config.queue);
        let sock = Socket::with_shared(&info, &umem).map_err(err("socket"))?;
        let device = umem.fq_cq(&sock).map_err(err("fill/completion rings"))?;
        let user = umem
            .rx_tx(
                &sock,
                &SocketConfig {
                    rx_size: NonZeroU32::new(config.ring_size),
                    tx_size: NonZeroU32::new(config.ring_size),
                    bind_flags,
                },
            )
            .map_err(err("rx/tx rings"))?;
        let rx = user.map_rx().map_err(err("mmap rx ring"))?;
        let tx = user.map_tx().map_err(err("mmap tx ring"))?;

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
                Err(e) => return Err(socket_error("bind", config, errno_error(&e))),
            }
        }
        Ok(Bound {
            rx,
            tx,
            device,
            user,
        })
    }

    /// The XDP mode of the attachment this socket was opened on.
    pub fn mode(&self) -> XdpMode {
        self.mode
    }

    /// Whether the socket is bound in zero-copy mode.
    pub fn zero_copy(&self) -> bool {
        self.zero_copy
    }

    /// The rx queue.
    pub fn queue(&self) -> u32 {
        self.queue
    }

    /// Our counters and the kernel's (`getsockopt(XDP_STATISTICS)`).
    pub fn stats(&self) -> io::Result<AfXdpStats> {
        let k = self.user.statistics_v2().map_err(|e| errno_error(&e))?;
        Ok(AfXdpStats {
            stashed: self.stash.len() as u64,
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
        if self.stash.is_empty() {
            return;
        }
        let want = u32::try_from(self.stash.len()).unwrap_or(u32::MAX);
        let mut writer = self.device.fill(want);
        let put = writer.insert(self.stash.iter().rev().copied()) as usize;
        writer.commit();
        drop(writer);
        let keep = self.stash.len().saturating_sub(put);
        self.stash.truncate(keep);
        if keep > 0 {
            self.stats.fill_stash_events += 1;
        }
    }

    /// Takes transmitted frames back from the completion ring.
    fn reclaim(&mut self) {
        let tx_frames = (self.rx_end / self.frame_size) as usize;
        let outstanding = tx_frames.saturating_sub(self.tx_free.len());
        if outstanding == 0 {
            return;
        }
        let mut reader = self
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

    /// Kicks the transmit ring until the kernel has taken everything or says
    /// it is busy; at most enough rounds for `frames` frames.
    fn kick(&mut self, frames: usize) {
        let rounds = frames / COPY_MODE_TX_BUDGET + 2;
        for _ in 0..rounds {
            match bpf::kick_tx(self.fd) {
                Ok(Kick::Done) => return,
                Ok(Kick::Again) => {
                    if self.tx.pending() == 0 {
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
        if self.tx.pending() > 0 {
            self.kick(self.tx.pending() as usize);
        }

        let want = u32::try_from(max.min(MAX_BATCH)).unwrap_or(0);
        self.descs.clear();
        if want > 0 {
            let mut reader = self.rx.receive(want);
            while let Some(desc) = reader.read() {
                self.descs.push(desc);
            }
            reader.release();
        }

        let mut slices: [&[u8]; MAX_BATCH] = [&[]; MAX_BATCH];
        let mut n = 0;
        for desc in &self.descs {
            let within = desc.addr % self.frame_size;
            let fits = within + u64::from(desc.len) <= self.frame_size;
            if desc.addr >= self.rx_end || !fits {
                self.stats.rx_bad_descs += 1;
                continue;
            }
            // SAFETY: the kernel handed this frame to us through the rx ring
            // and it goes back to the fill ring only below, after `handle` has
            // returned and `slices` is gone; the range is checked to lie inside
            // one receive frame.
            match unsafe { self.area.frame(desc.addr, desc.len as usize) } {
                Some(frame) => {
                    slices[n] = frame;
                    n += 1;
                }
                None => self.stats.rx_bad_descs += 1,
            }
        }
        handle(&slices[..n]);

        for desc in &self.descs {
            if desc.addr < self.rx_end {
                self.stash.push(desc.addr - desc.addr % self.frame_size);
            }
        }
        self.stats.rx_frames += n as u64;
        self.refill();
        Ok(n)
    }

    fn transmit(&mut self, frames: &[&[u8]]) -> io::Result<usize> {
        self.reclaim();
        let room = frames.len().min(self.tx_free.len());
        let mut sent = 0usize;
        let mut oversize = 0u64;
        {
            let mut writer = self.tx.transmit(u32::try_from(room).unwrap_or(u32::MAX));
            let capacity = writer.capacity() as usize;
            for frame in frames {
                if sent == capacity {
                    break;
                }
                if frame.is_empty() || frame.len() as u64 > self.frame_size {
                    oversize += 1;
                    continue;
                }
                let Some(addr) = self.tx_free.pop() else {
                    break;
                };
                // SAFETY: `addr` came from `tx_free`: a tx frame the kernel has
                // completed (or never had) and that is not in the tx ring.
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
                sent += 1;
            }
            writer.commit();
        }
        self.stats.tx_frames += sent as u64;
        self.stats.tx_oversize += oversize;
        self.stats.tx_no_room +=
            (frames.len().saturating_sub(sent) as u64).saturating_sub(oversize);
        if sent > 0 {
            self.kick(sent);
        }
        Ok(sent)
    }

    fn wait(&mut self, timeout_ms: i32) -> io::Result<()> {
        if self.has_pending() {
            return Ok(());
        }
        bpf::poll_readable(self.fd, timeout_ms).map(|_| ())
    }

    fn wake_fd(&self) -> Option<RawFd> {
        Some(self.fd)
    }

    fn has_pending(&self) -> bool {
        self.rx.available() > 0
    }

    fn describe(&self) -> String {
        format!(
            "af_xdp {} {} queue {} on {}",
            self.mode,
            if self.zero_copy { "zero-copy" } else { "copy" },
            self.queue,
            self.ifname
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::bpf::fake::{FakeBpf, Script};
    use std::net::Ipv4Addr;

    fn params() -> XdpParams {
        XdpParams {
            cluster_macs: vec![[0x02, 0xbf, 10, 0, 0, 1]],
            vips_v4: vec![Ipv4Addr::new(10, 0, 0, 1)],
            ..XdpParams::default()
        }
    }

    fn attach(script: Script, mode: XdpMode) -> (Arc<FakeBpf>, Result<XdpAttachment, AfXdpError>) {
        let fake = Arc::new(FakeBpf::new(script));
        let result = XdpAttachment::attach_with(fake.clone(), "veth0", &params(), mode);
        (fake, result)
    }

    fn links(fake: &FakeBpf) -> Vec<String> {
        fake.calls()
            .into_iter()
            .filter(|c| c.starts_with("link_create"))
            .collect()
    }

    #[test]
    fn auto_falls_back_to_generic_when_native_fails() {
        let (fake, r) = attach(
            Script {
                link_driver: Some(libc::EOPNOTSUPP),
                ..Script::default()
            },
            XdpMode::Auto,
        );
        let a = r.unwrap();
        assert_eq!(a.mode(), XdpMode::Generic);
        assert_eq!(
            links(&fake),
            vec!["link_create 7 Driver", "link_create 7 Skb"]
        );
    }

    #[test]
    fn the_fast_path_maps_are_created_with_the_program() {
        let fake = Arc::new(FakeBpf::new(Script::default()));
        let layout = crate::xdp::fast::FastPathLayout {
            seed: 7,
            rules: vec![crate::xdp::fast::FastRule {
                rule: 0,
                vip: None,
                port_start: 0,
                port_end: 65535,
                tcp: true,
                udp: true,
                affinity: Some(shoal_dataplane::Affinity::Single),
                udp_untracked: true,
            }],
        };
        let a = XdpAttachment::attach_with_fast_path(
            fake.clone(),
            "veth0",
            &params(),
            Some(FastPathPlan {
                layout: layout.clone(),
                pass_to: Some([2, 0, 0, 0, 0, 1]),
            }),
            XdpMode::Auto,
        )
        .unwrap();
        assert_eq!(a.fast_path().unwrap().layout(), &layout);
        let creates: Vec<String> = fake
            .calls()
            .into_iter()
            .filter(|c| c.starts_with("map_create"))
            .collect();
        assert_eq!(creates.len(), 5, "{creates:?}");
        assert!(attach(Script::default(), XdpMode::Auto)
            .1
            .unwrap()
            .fast_path()
            .is_none());
    }

    #[test]
    fn auto_prefers_native() {
        let (fake, r) = attach(Script::default(), XdpMode::Auto);
        assert_eq!(r.unwrap().mode(), XdpMode::Native);
        assert_eq!(links(&fake), vec!["link_create 7 Driver"]);
    }

    #[test]
    fn explicit_modes_do_not_fall_back() {
        let (fake, r) = attach(
            Script {
                link_driver: Some(libc::EOPNOTSUPP),
                ..Script::default()
            },
            XdpMode::Native,
        );
        match r {
            Err(AfXdpError::Attach { attempts, .. }) => {
                assert_eq!(attempts.len(), 1);
                assert_eq!(attempts[0].0, XdpMode::Native);
                assert_eq!(attempts[0].1.errno(), Some(libc::EOPNOTSUPP));
            }
            other => panic!("expected an attach error, got {other:?}"),
        }
        assert_eq!(links(&fake), vec!["link_create 7 Driver"]);

        let (fake, r) = attach(Script::default(), XdpMode::Generic);
        assert_eq!(r.unwrap().mode(), XdpMode::Generic);
        assert_eq!(links(&fake), vec!["link_create 7 Skb"]);
    }

    #[test]
    fn both_modes_failing_reports_both() {
        let (_, r) = attach(
            Script {
                link_driver: Some(libc::EOPNOTSUPP),
                link_skb: Some(libc::EBUSY),
                ..Script::default()
            },
            XdpMode::Auto,
        );
        let e = r.unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("native mode: BPF_LINK_CREATE failed"), "{msg}");
        assert!(
            msg.contains("generic mode: BPF_LINK_CREATE failed"),
            "{msg}"
        );
        assert!(msg.contains("veth0"), "{msg}");
    }

    #[test]
    fn a_rejected_program_carries_the_verifier_log() {
        let (fake, r) = attach(
            Script {
                prog_load: Some((libc::EACCES, "R2 invalid mem access 'scalar'")),
                ..Script::default()
            },
            XdpMode::Auto,
        );
        let e = r.unwrap_err();
        assert!(matches!(e, AfXdpError::Load(_)), "{e:?}");
        let full = format!("{e}: {}", std::error::Error::source(&e).unwrap());
        assert!(full.contains("invalid mem access"), "{full}");
        assert!(
            links(&fake).is_empty(),
            "nothing attached after a failed load"
        );
    }

    #[test]
    fn a_kernel_without_xskmap_is_unsupported() {
        let (_, r) = attach(
            Script {
                map_create: Some(libc::EINVAL),
                ..Script::default()
            },
            XdpMode::Auto,
        );
        assert!(matches!(r, Err(AfXdpError::Unsupported(_))), "{r:?}");

        // Permission problems are not "unsupported".
        let (_, r) = attach(
            Script {
                map_create: Some(libc::EPERM),
                ..Script::default()
            },
            XdpMode::Auto,
        );
        let e = r.unwrap_err();
        assert!(matches!(e, AfXdpError::Bpf(_)), "{e:?}");
        assert!(e.to_string().contains("BPF_MAP_CREATE"), "{e}");
    }

    #[test]
    fn a_missing_interface_is_named() {
        let (_, r) = attach(
            Script {
                ifindex: Some(libc::ENODEV),
                ..Script::default()
            },
            XdpMode::Auto,
        );
        let e = r.unwrap_err();
        assert!(e.to_string().contains("if_nametoindex"), "{e}");
    }

    #[test]
    fn xskmap_covers_every_queue_and_registration_checks_range() {
        let (fake, r) = attach(
            Script {
                rx_queues: 4,
                ..Script::default()
            },
            XdpMode::Auto,
        );
        let a = r.unwrap();
        assert_eq!(a.queue_count(), 4);
        assert!(fake.calls().contains(&"map_create XskMap 4".to_owned()));
        a.register(3, 9).unwrap();
        assert!(matches!(
            a.register(4, 9),
            Err(AfXdpError::QueueOutOfRange {
                queue: 4,
                count: 4,
                ..
            })
        ));
        assert!(a.register(0, -1).is_err());
        a.unregister(3).unwrap();
        assert!(a.unregister(4).is_err());
    }

    #[test]
    fn open_refuses_mismatches_before_touching_the_kernel() {
        let (_, r) = attach(Script::default(), XdpMode::Auto);
        let a = r.unwrap();
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
