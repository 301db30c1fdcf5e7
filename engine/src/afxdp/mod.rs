//! The AF_XDP backend: shoal's XDP program on an interface ([`XdpAttachment`],
//! in `attachment.rs`) and one AF_XDP socket per rx queue ([`AfXdp`], a
//! [`FrameIo`](crate::io::FrameIo), in `socket.rs`, over the seam's [`crate::sys::xsk::Xsk`]).
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
//!   The kernel removes the socket from the map when the socket closes. The
//!   socket is closed and its rings unmapped before the UMEM is unmapped
//!   (the invariant of [`crate::sys::xsk::Xsk`]).
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

use std::fmt;
use std::io;

use crate::sys::bpf::BpfError;
use crate::xdp::program::ProgramError;

mod attachment;
mod socket;

pub use attachment::{check_queue_coverage, GuardReader, XdpAttachment};
pub use socket::{AfXdp, AfXdpConfig, AfXdpStats};

/// Ring size the lab notes recommend (smaller rings lose frames to an empty
/// fill ring when the consumer is briefly preempted on 2 vCPUs).
pub const DEFAULT_RING_SIZE: u32 = 16384;
/// Frame size: one page half, enough for a 1500-byte MTU frame (1792 bytes
/// after the kernel's headroom).
pub const DEFAULT_FRAME_SIZE: u32 = crate::xdp::program::DEFAULT_UMEM_FRAME_SIZE;
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
    /// The poll loops do not own every rx queue of the interface.
    #[error(
        "rx queues {} of {ifname} have no poll loop ({ifname} has {count} rx queues): \
         their cluster frames would be dropped; reduce the queues with \
         `ethtool -L {ifname} combined {configured}` (or `rx {configured}`), or \
         list every queue below {count} in [host.cores].poll",
        join(.missing)
    )]
    QueuesUncovered {
        /// The interface.
        ifname: String,
        /// How many rx queues it has.
        count: u32,
        /// The queues no poll loop owns.
        missing: Vec<u32>,
        /// How many queues the poll loops own.
        configured: u32,
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

fn join(queues: &[u32]) -> String {
    queues
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(", ")
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
