//! The kernel seam for BPF: the [`Bpf`] trait (`bpf(2)` and the interface
//! look-ups an XDP attachment needs), the objects it hands back, and its
//! real implementation, [`Kernel`].
//!
//! # Contract
//!
//! - Everything the kernel hands back is an [`OwnedFd`]: dropping a program,
//!   map or link closes it. A BPF link detaches its XDP program when its last
//!   fd closes, so a process that dies (even by `SIGKILL`) leaves nothing
//!   attached to the interface.
//! - Errors are typed ([`BpfError`]) and carry the syscall name and `errno`;
//!   a rejected program carries the verifier's log.
//! - Map accesses are checked against the map's key and value sizes before
//!   the kernel reads or writes the caller's buffers.
//! - [`Kernel`] (in `kernel.rs`, with the `union bpf_attr` layouts) is the
//!   real kernel; the unit tests of the callers substitute `fake::Fake` to
//!   reach error paths (load fails, native attach fails, the kernel lacks
//!   AF_XDP) without root. The AF_XDP socket itself is [`crate::sys::xsk`].

use std::fmt;
use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};

mod kernel;
pub use kernel::Kernel;

#[cfg(test)]
pub(crate) mod fake;

/// `BPF_XDP`, the attach type of an XDP link.
pub const BPF_XDP: u32 = 37;
/// `BPF_TCX_INGRESS`, the attach type of a tcx ingress link (Linux 6.6+).
pub const BPF_TCX_INGRESS: u32 = 46;
/// `XDP_FLAGS_SKB_MODE`: generic XDP, run from the core receive path.
pub const XDP_FLAGS_SKB_MODE: u32 = 2;
/// `XDP_FLAGS_DRV_MODE`: native XDP, run by the driver.
pub const XDP_FLAGS_DRV_MODE: u32 = 4;

/// A failure of the kernel seam.
#[derive(Debug, thiserror::Error)]
pub enum BpfError {
    /// A syscall failed; `call` names it (for example `BPF_MAP_CREATE`).
    #[error("{call} failed: {source}")]
    Syscall {
        /// The syscall or command that failed.
        call: &'static str,
        /// The `errno` it failed with.
        #[source]
        source: io::Error,
    },
    /// `BPF_PROG_LOAD` refused the program; `log` is the verifier's account.
    #[error("BPF_PROG_LOAD rejected XDP program {name:?}: {source}; verifier log:\n{log}")]
    ProgramRejected {
        /// The program's name.
        name: String,
        /// The `errno` of the load.
        #[source]
        source: io::Error,
        /// The verifier log (may be empty when the kernel gave none).
        log: String,
    },
    /// A name or buffer the caller passed cannot be handed to the kernel.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

impl BpfError {
    /// The `errno` behind this error, when there is one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Self::Syscall { source, .. } | Self::ProgramRejected { source, .. } => {
                source.raw_os_error()
            }
            Self::InvalidArgument(_) => None,
        }
    }

    fn last(call: &'static str) -> Self {
        Self::Syscall {
            call,
            source: io::Error::last_os_error(),
        }
    }
}

/// The BPF map types shoal uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapKind {
    /// `BPF_MAP_TYPE_HASH`.
    Hash,
    /// `BPF_MAP_TYPE_ARRAY`.
    Array,
    /// `BPF_MAP_TYPE_XSKMAP`: rx queue index to AF_XDP socket.
    XskMap,
}

impl MapKind {
    fn raw(self) -> u32 {
        match self {
            Self::Hash => 1,
            Self::Array => 2,
            Self::XskMap => 17,
        }
    }
}

/// What to create with [`Bpf::map_create`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapSpec {
    /// The map type.
    pub kind: MapKind,
    /// Key size in bytes.
    pub key_size: u32,
    /// Value size in bytes.
    pub value_size: u32,
    /// Most entries.
    pub max_entries: u32,
    /// Name shown by `bpftool` (at most 15 bytes are kept).
    pub name: String,
}

impl MapSpec {
    /// An `XSKMAP` of `queues` slots: rx queue index to AF_XDP socket, the
    /// 4-byte key and value the kernel requires.
    pub fn xsk_map(name: &str, queues: u32) -> Self {
        Self {
            kind: MapKind::XskMap,
            key_size: 4,
            value_size: 4,
            max_entries: queues,
            name: name.into(),
        }
    }
}

/// A BPF map: its fd and the sizes it was created with, so that every access
/// can be checked against them before the kernel reads or writes our buffers.
#[derive(Debug)]
pub struct BpfMap {
    fd: OwnedFd,
    kind: MapKind,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
}

impl BpfMap {
    /// The map `spec` describes, behind `fd`: what every [`Bpf::map_create`]
    /// returns once its map exists.
    fn created(fd: OwnedFd, spec: &MapSpec) -> Self {
        Self {
            fd,
            kind: spec.kind,
            key_size: spec.key_size,
            value_size: spec.value_size,
            max_entries: spec.max_entries,
        }
    }

    /// The map's fd (for example to embed in a program with
    /// `ld_imm64 … pseudo map fd`).
    pub fn fd(&self) -> BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.fd.as_fd()
    }

    /// The map type.
    pub fn kind(&self) -> MapKind {
        self.kind
    }

    /// Key size in bytes.
    pub fn key_size(&self) -> u32 {
        self.key_size
    }

    /// Value size in bytes.
    pub fn value_size(&self) -> u32 {
        self.value_size
    }

    /// Most entries.
    pub fn max_entries(&self) -> u32 {
        self.max_entries
    }

    fn check_key(&self, key: &[u8]) -> Result<(), BpfError> {
        if key.len() != self.key_size as usize {
            return Err(BpfError::InvalidArgument(format!(
                "key of {} bytes for a map with {}-byte keys",
                key.len(),
                self.key_size
            )));
        }
        Ok(())
    }

    fn check_value(&self, value: &[u8]) -> Result<(), BpfError> {
        if value.len() != self.value_size as usize {
            return Err(BpfError::InvalidArgument(format!(
                "value of {} bytes for a map with {}-byte values",
                value.len(),
                self.value_size
            )));
        }
        Ok(())
    }
}

/// How an XDP link attaches its program.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachMode {
    /// Native (driver) mode, `XDP_FLAGS_DRV_MODE`.
    Driver,
    /// Generic (skb) mode, `XDP_FLAGS_SKB_MODE`.
    Skb,
}

impl AttachMode {
    /// The `XDP_FLAGS_*` value for `BPF_LINK_CREATE`.
    pub fn flags(self) -> u32 {
        match self {
            Self::Driver => XDP_FLAGS_DRV_MODE,
            Self::Skb => XDP_FLAGS_SKB_MODE,
        }
    }
}

/// The fakeable kernel operations of the XDP backend.
pub trait Bpf: Send + Sync + fmt::Debug {
    /// `BPF_MAP_CREATE`.
    fn map_create(&self, spec: &MapSpec) -> Result<BpfMap, BpfError>;
    /// `BPF_MAP_UPDATE_ELEM` with `BPF_ANY`.
    fn map_update(&self, map: &BpfMap, key: &[u8], value: &[u8]) -> Result<(), BpfError>;
    /// `BPF_MAP_DELETE_ELEM`; `Ok(false)` when the key was absent.
    fn map_delete(&self, map: &BpfMap, key: &[u8]) -> Result<bool, BpfError>;
    /// `BPF_MAP_LOOKUP_ELEM` into `value`; `Ok(false)` when the key is absent.
    fn map_lookup(&self, map: &BpfMap, key: &[u8], value: &mut [u8]) -> Result<bool, BpfError>;
    /// `BPF_PROG_LOAD` of an XDP program (license "GPL"). On rejection the
    /// error carries the verifier log.
    fn prog_load_xdp(&self, name: &str, insns: &[[u8; 8]]) -> Result<OwnedFd, BpfError>;
    /// `BPF_PROG_LOAD` of a tc classifier for a tcx ingress link.
    fn prog_load_tcx(&self, name: &str, insns: &[[u8; 8]]) -> Result<OwnedFd, BpfError>;
    /// `BPF_LINK_CREATE` of a tcx ingress link on `ifindex`, after any
    /// programs already there. Closing the returned fd detaches it.
    fn link_create_tcx_ingress(
        &self,
        prog: BorrowedFd<'_>,
        ifindex: u32,
    ) -> Result<OwnedFd, BpfError>;
    /// `BPF_PROG_TEST_RUN`: runs the program once on `frame`, returns its
    /// XDP action.
    fn prog_test_run(&self, prog: BorrowedFd<'_>, frame: &[u8]) -> Result<u32, BpfError> {
        self.prog_test_run_frame(prog, frame)
            .map(|(action, _)| action)
    }
    /// As [`Bpf::prog_test_run`], also returning the frame as the program
    /// left it.
    fn prog_test_run_frame(
        &self,
        prog: BorrowedFd<'_>,
        frame: &[u8],
    ) -> Result<(u32, Vec<u8>), BpfError>;
    /// `BPF_LINK_CREATE` of an XDP link on `ifindex`. Closing the returned fd
    /// detaches the program.
    fn link_create_xdp(
        &self,
        prog: BorrowedFd<'_>,
        ifindex: u32,
        mode: AttachMode,
    ) -> Result<OwnedFd, BpfError>;
    /// `if_nametoindex(3)`, in the calling thread's network namespace.
    fn ifindex(&self, ifname: &str) -> Result<u32, BpfError>;
    /// How many rx queues the interface has (ethtool `ETHTOOL_GCHANNELS`,
    /// else `/sys/class/net/IF/queues/rx-*`, else 1).
    fn rx_queue_count(&self, ifname: &str) -> Result<u32, BpfError>;
}
