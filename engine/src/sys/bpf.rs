//! The kernel seam for XDP: the `bpf(2)` syscall, interface look-ups, and the
//! few raw calls an AF_XDP socket needs beyond what `xdpilone` does (the UMEM
//! mapping, `poll`, the transmit kick).
//!
//! # Contract
//!
//! - Every `unsafe` block of the XDP backend lives in this file, each with a
//!   `// SAFETY:` comment naming the invariant it relies on.
//! - Everything the kernel hands back is an [`OwnedFd`]: dropping a program,
//!   map or link closes it. A BPF link detaches its XDP program when its last
//!   fd closes, so a process that dies (even by `SIGKILL`) leaves nothing
//!   attached to the interface.
//! - Errors are typed ([`BpfError`]) and carry the syscall name and `errno`;
//!   a rejected program carries the verifier's log.
//! - The [`Bpf`] trait is the fakeable part: [`KernelBpf`] is the real one,
//!   and the unit tests of the callers substitute a fake to reach error paths
//!   (load fails, native attach fails, the kernel lacks AF_XDP) without root.
//!
//! Layouts of `union bpf_attr` follow `include/uapi/linux/bpf.h`. Each command
//! gets its own `#[repr(C)]` prefix of the union; the kernel zero-fills the
//! bytes past the size passed, which is exactly "unused fields are zero".

use std::ffi::CString;
use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;

/// `BPF_MAP_CREATE`.
const BPF_MAP_CREATE: libc::c_int = 0;
/// `BPF_MAP_LOOKUP_ELEM`.
const BPF_MAP_LOOKUP_ELEM: libc::c_int = 1;
/// `BPF_MAP_UPDATE_ELEM`.
const BPF_MAP_UPDATE_ELEM: libc::c_int = 2;
/// `BPF_MAP_DELETE_ELEM`.
const BPF_MAP_DELETE_ELEM: libc::c_int = 3;
/// `BPF_PROG_LOAD`.
const BPF_PROG_LOAD: libc::c_int = 5;
/// `BPF_PROG_TEST_RUN`.
const BPF_PROG_TEST_RUN: libc::c_int = 10;
/// `BPF_LINK_CREATE`.
const BPF_LINK_CREATE: libc::c_int = 28;

/// `BPF_PROG_TYPE_XDP`.
const BPF_PROG_TYPE_XDP: u32 = 6;
/// `BPF_XDP`, the attach type of an XDP link.
pub const BPF_XDP: u32 = 37;
/// `BPF_PROG_TYPE_SCHED_CLS`.
const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;
/// `BPF_TCX_INGRESS`, the attach type of a tcx ingress link (Linux 6.6+).
pub const BPF_TCX_INGRESS: u32 = 46;
/// `XDP_FLAGS_SKB_MODE`: generic XDP, run from the core receive path.
pub const XDP_FLAGS_SKB_MODE: u32 = 2;
/// `XDP_FLAGS_DRV_MODE`: native XDP, run by the driver.
pub const XDP_FLAGS_DRV_MODE: u32 = 4;

/// Size of the verifier log buffer used when a load is retried for its log.
const VERIFIER_LOG_SIZE: usize = 1 << 20;

/// `SIOCETHTOOL`.
const SIOCETHTOOL: libc::c_ulong = 0x8946;
/// `ETHTOOL_GCHANNELS`.
const ETHTOOL_GCHANNELS: u32 = 0x3c;

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

/// The real kernel.
#[derive(Debug, Default, Clone, Copy)]
pub struct KernelBpf;

fn sys_bpf<T>(cmd: libc::c_int, attr: &mut T) -> libc::c_long {
    // SAFETY: `attr` is a valid, exclusively borrowed `#[repr(C)]` prefix of
    // `union bpf_attr` of exactly `size_of::<T>()` bytes; the kernel reads (and
    // for some commands writes) at most that many bytes. Any pointers inside it
    // were set by the callers below to buffers that outlive this call and are
    // as large as the sizes passed beside them.
    unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T as *mut libc::c_void,
            std::mem::size_of::<T>() as libc::c_uint,
        )
    }
}

/// Turns a non-negative syscall return value into an owned fd.
fn owned_fd(ret: libc::c_long, call: &'static str) -> Result<OwnedFd, BpfError> {
    if ret < 0 {
        return Err(BpfError::last(call));
    }
    let fd = RawFd::try_from(ret).map_err(|_| BpfError::Syscall {
        call,
        source: io::Error::other("fd out of range"),
    })?;
    // SAFETY: the kernel just returned `fd` as a new descriptor owned by this
    // process, and nothing else has seen it, so we are its sole owner.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn object_name(name: &str) -> [u8; 16] {
    let mut out = [0u8; 16];
    // The kernel accepts only alphanumerics, '_' and '.', 15 bytes at most.
    for (slot, b) in out.iter_mut().zip(
        name.bytes()
            .filter(|b| b.is_ascii_alphanumeric() || *b == b'_' || *b == b'.')
            .take(15),
    ) {
        *slot = b;
    }
    out
}

#[repr(C)]
#[derive(Default)]
struct MapCreateAttr {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    inner_map_fd: u32,
    numa_node: u32,
    map_name: [u8; 16],
}

#[repr(C)]
#[derive(Default)]
struct MapElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
}

#[repr(C)]
#[derive(Default)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_ifindex: u32,
    attach_type: u32,
    flags: u32,
}

#[repr(C)]
#[derive(Default)]
struct EthtoolChannels {
    cmd: u32,
    max_rx: u32,
    max_tx: u32,
    max_other: u32,
    max_combined: u32,
    rx_count: u32,
    tx_count: u32,
    other_count: u32,
    combined_count: u32,
}

fn fd_u32(fd: BorrowedFd<'_>) -> u32 {
    // Valid fds are non-negative.
    fd.as_raw_fd() as u32
}

impl KernelBpf {
    fn prog_load_once(
        (prog_type, expected_attach_type): (u32, u32),
        insns: &[[u8; 8]],
        name: [u8; 16],
        log: Option<&mut [u8]>,
    ) -> Result<OwnedFd, io::Error> {
        const LICENSE: &[u8] = b"GPL\0";
        let insn_cnt =
            u32::try_from(insns.len()).map_err(|_| io::Error::from_raw_os_error(libc::E2BIG))?;
        let mut attr = ProgLoadAttr {
            prog_type,
            insn_cnt,
            insns: insns.as_ptr() as u64,
            license: LICENSE.as_ptr() as u64,
            prog_name: name,
            expected_attach_type,
            ..ProgLoadAttr::default()
        };
        if let Some(buf) = log {
            attr.log_level = 1;
            attr.log_size = u32::try_from(buf.len()).unwrap_or(u32::MAX);
            attr.log_buf = buf.as_mut_ptr() as u64;
        }
        let ret = sys_bpf(BPF_PROG_LOAD, &mut attr);
        owned_fd(ret, "BPF_PROG_LOAD").map_err(|e| match e {
            BpfError::Syscall { source, .. } => source,
            other => io::Error::other(other.to_string()),
        })
    }

    /// `BPF_LINK_CREATE` of `prog` on `ifindex` as `attach_type`.
    fn link_create(
        prog: BorrowedFd<'_>,
        ifindex: u32,
        attach_type: u32,
        flags: u32,
    ) -> Result<OwnedFd, BpfError> {
        let mut attr = LinkCreateAttr {
            prog_fd: fd_u32(prog),
            target_ifindex: ifindex,
            attach_type,
            flags,
        };
        owned_fd(sys_bpf(BPF_LINK_CREATE, &mut attr), "BPF_LINK_CREATE")
    }

    /// Loads a program of `kind` (type, expected attach type), first without
    /// a log (cheaper); on failure again with a log so that the error
    /// explains itself.
    fn prog_load(kind: (u32, u32), name: &str, insns: &[[u8; 8]]) -> Result<OwnedFd, BpfError> {
        let kname = object_name(name);
        let first = match Self::prog_load_once(kind, insns, kname, None) {
            Ok(fd) => return Ok(fd),
            Err(e) => e,
        };
        let mut log = vec![0u8; VERIFIER_LOG_SIZE];
        match Self::prog_load_once(kind, insns, kname, Some(&mut log)) {
            Ok(fd) => Ok(fd),
            Err(_) => {
                let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
                Err(BpfError::ProgramRejected {
                    name: name.to_owned(),
                    source: first,
                    log: String::from_utf8_lossy(&log[..end]).into_owned(),
                })
            }
        }
    }
}

impl Bpf for KernelBpf {
    fn map_create(&self, spec: &MapSpec) -> Result<BpfMap, BpfError> {
        let mut attr = MapCreateAttr {
            map_type: spec.kind.raw(),
            key_size: spec.key_size,
            value_size: spec.value_size,
            max_entries: spec.max_entries,
            map_name: object_name(&spec.name),
            ..MapCreateAttr::default()
        };
        let fd = owned_fd(sys_bpf(BPF_MAP_CREATE, &mut attr), "BPF_MAP_CREATE")?;
        Ok(BpfMap {
            fd,
            kind: spec.kind,
            key_size: spec.key_size,
            value_size: spec.value_size,
            max_entries: spec.max_entries,
        })
    }

    fn map_update(&self, map: &BpfMap, key: &[u8], value: &[u8]) -> Result<(), BpfError> {
        map.check_key(key)?;
        map.check_value(value)?;
        let mut attr = MapElemAttr {
            map_fd: fd_u32(map.fd()),
            key: key.as_ptr() as u64,
            value: value.as_ptr() as u64,
            flags: 0, // BPF_ANY
            ..MapElemAttr::default()
        };
        if sys_bpf(BPF_MAP_UPDATE_ELEM, &mut attr) < 0 {
            return Err(BpfError::last("BPF_MAP_UPDATE_ELEM"));
        }
        Ok(())
    }

    fn map_delete(&self, map: &BpfMap, key: &[u8]) -> Result<bool, BpfError> {
        map.check_key(key)?;
        let mut attr = MapElemAttr {
            map_fd: fd_u32(map.fd()),
            key: key.as_ptr() as u64,
            ..MapElemAttr::default()
        };
        if sys_bpf(BPF_MAP_DELETE_ELEM, &mut attr) < 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::ENOENT) {
                return Ok(false);
            }
            return Err(BpfError::Syscall {
                call: "BPF_MAP_DELETE_ELEM",
                source: err,
            });
        }
        Ok(true)
    }

    fn map_lookup(&self, map: &BpfMap, key: &[u8], value: &mut [u8]) -> Result<bool, BpfError> {
        map.check_key(key)?;
        map.check_value(value)?;
        let mut attr = MapElemAttr {
            map_fd: fd_u32(map.fd()),
            key: key.as_ptr() as u64,
            value: value.as_mut_ptr() as u64,
            ..MapElemAttr::default()
        };
        if sys_bpf(BPF_MAP_LOOKUP_ELEM, &mut attr) < 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::ENOENT) {
                return Ok(false);
            }
            return Err(BpfError::Syscall {
                call: "BPF_MAP_LOOKUP_ELEM",
                source: err,
            });
        }
        Ok(true)
    }

    fn prog_load_xdp(&self, name: &str, insns: &[[u8; 8]]) -> Result<OwnedFd, BpfError> {
        Self::prog_load((BPF_PROG_TYPE_XDP, BPF_XDP), name, insns)
    }

    fn prog_load_tcx(&self, name: &str, insns: &[[u8; 8]]) -> Result<OwnedFd, BpfError> {
        Self::prog_load((BPF_PROG_TYPE_SCHED_CLS, BPF_TCX_INGRESS), name, insns)
    }

    fn link_create_tcx_ingress(
        &self,
        prog: BorrowedFd<'_>,
        ifindex: u32,
    ) -> Result<OwnedFd, BpfError> {
        Self::link_create(prog, ifindex, BPF_TCX_INGRESS, 0)
    }

    fn prog_test_run_frame(
        &self,
        prog: BorrowedFd<'_>,
        frame: &[u8],
    ) -> Result<(u32, Vec<u8>), BpfError> {
        let data_size_in = u32::try_from(frame.len())
            .map_err(|_| BpfError::InvalidArgument("test frame too large".into()))?;
        // Room for what an XDP program can grow a frame to (it may move its
        // head or tail); the kernel says how much it wrote.
        let mut out = vec![0u8; frame.len() + 4096];
        let mut attr = TestRunAttr {
            prog_fd: fd_u32(prog),
            data_size_in,
            data_size_out: out.len() as u32,
            data_in: frame.as_ptr() as u64,
            data_out: out.as_mut_ptr() as u64,
            repeat: 1,
            ..TestRunAttr::default()
        };
        if sys_bpf(BPF_PROG_TEST_RUN, &mut attr) < 0 {
            return Err(BpfError::last("BPF_PROG_TEST_RUN"));
        }
        out.truncate(attr.data_size_out as usize);
        Ok((attr.retval, out))
    }

    fn link_create_xdp(
        &self,
        prog: BorrowedFd<'_>,
        ifindex: u32,
        mode: AttachMode,
    ) -> Result<OwnedFd, BpfError> {
        Self::link_create(prog, ifindex, BPF_XDP, mode.flags())
    }

    fn ifindex(&self, ifname: &str) -> Result<u32, BpfError> {
        let name = interface_name(ifname)?;
        // SAFETY: `name` is a valid NUL-terminated string that outlives the call.
        let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if index == 0 {
            return Err(BpfError::last("if_nametoindex"));
        }
        Ok(index)
    }

    fn rx_queue_count(&self, ifname: &str) -> Result<u32, BpfError> {
        if let Some(n) = ethtool_rx_channels(ifname)? {
            return Ok(n);
        }
        // The driver does not report channels: count the sysfs queues (only
        // right when /sys belongs to the caller's network namespace).
        let dir = format!("/sys/class/net/{ifname}/queues");
        let count = std::fs::read_dir(&dir)
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .filter(|e| e.file_name().to_string_lossy().starts_with("rx-"))
                    .count()
            })
            .unwrap_or(0);
        Ok(u32::try_from(count).unwrap_or(u32::MAX).max(1))
    }
}

fn interface_name(ifname: &str) -> Result<CString, BpfError> {
    if ifname.is_empty() || ifname.len() >= libc::IFNAMSIZ {
        return Err(BpfError::InvalidArgument(format!(
            "interface name {ifname:?} must be 1..{} bytes",
            libc::IFNAMSIZ
        )));
    }
    CString::new(ifname)
        .map_err(|_| BpfError::InvalidArgument(format!("interface name {ifname:?} contains NUL")))
}

/// Rx queues reported by ethtool, or `None` when the driver does not say.
fn ethtool_rx_channels(ifname: &str) -> Result<Option<u32>, BpfError> {
    let name = interface_name(ifname)?;
    // SAFETY: plain socket(2) call with constant arguments.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    let sock = owned_fd(raw as libc::c_long, "socket(AF_INET)")?;
    let mut channels = EthtoolChannels {
        cmd: ETHTOOL_GCHANNELS,
        ..EthtoolChannels::default()
    };
    // SAFETY: `ifreq` is plain old data; all-zero is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in ifr.ifr_name.iter_mut().zip(name.as_bytes()) {
        *dst = *src as libc::c_char;
    }
    ifr.ifr_ifru.ifru_data = (&mut channels as *mut EthtoolChannels).cast();
    // SAFETY: SIOCETHTOOL reads `ifr` (a NUL-terminated name, since the name is
    // shorter than IFNAMSIZ and the rest is zero) and the `ethtool_channels`
    // that `ifru_data` points to, which lives until after the call.
    let ret = unsafe { libc::ioctl(sock.as_raw_fd(), SIOCETHTOOL as _, &mut ifr) };
    if ret < 0 {
        let err = io::Error::last_os_error();
        return match err.raw_os_error() {
            Some(libc::EOPNOTSUPP) | Some(libc::EINVAL) => Ok(None),
            _ => Err(BpfError::Syscall {
                call: "ioctl(SIOCETHTOOL, ETHTOOL_GCHANNELS)",
                source: err,
            }),
        };
    }
    let n = channels.rx_count.max(channels.combined_count);
    Ok((n > 0).then_some(n))
}

// ---------------------------------------------------------------------------
// AF_XDP socket calls.

/// An anonymous, page-aligned, pre-faulted mapping used as an AF_XDP UMEM.
///
/// The area is shared with the kernel: frames handed to the fill or transmit
/// ring belong to the kernel until they come back through the receive or
/// completion ring. The frame accessors are therefore `unsafe`: the caller
/// vouches that it owns the frame it touches.
#[derive(Debug)]
pub struct UmemArea {
    base: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain memory owned by this value; it is not tied to
// the thread that created it, and all access goes through `&self`/`&mut self`.
unsafe impl Send for UmemArea {}

impl UmemArea {
    /// Maps `len` bytes (rounded up by the kernel to whole pages).
    pub fn map(len: usize) -> io::Result<Self> {
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
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the area is empty (never, for a mapped area).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The whole area as a raw slice pointer, for registering it as a UMEM.
    pub fn as_raw(&self) -> NonNull<[u8]> {
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
    pub unsafe fn frame(&self, offset: u64, len: usize) -> Option<&[u8]> {
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
    pub unsafe fn frame_mut(&mut self, offset: u64, len: usize) -> Option<&mut [u8]> {
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
pub fn poll_readable(fd: RawFd, timeout_ms: i32) -> io::Result<bool> {
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
pub fn set_cloexec(fd: RawFd) -> io::Result<()> {
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

/// What a transmit kick achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kick {
    /// The kernel drained the transmit ring.
    Done,
    /// The kernel stopped early (copy mode sends a bounded batch per kick, or
    /// the device was busy); kick again later.
    Again,
}

/// Kicks an AF_XDP socket's transmit ring with an empty `sendto`.
///
/// Takes a raw fd because a zero-length send reads no memory; callers pass
/// the socket they own.
pub fn kick_tx(fd: RawFd) -> io::Result<Kick> {
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
pub(crate) mod fake {
    //! A scripted [`Bpf`] for unit tests of error and fallback paths.

    use super::*;
    use parking_lot::Mutex;

    /// Which operations fail, and with which errno.
    #[derive(Debug, Default, Clone)]
    pub(crate) struct Script {
        pub map_create: Option<i32>,
        pub map_update: Option<i32>,
        pub prog_load: Option<(i32, &'static str)>,
        pub link_driver: Option<i32>,
        pub link_skb: Option<i32>,
        pub link_tcx: Option<i32>,
        pub ifindex: Option<i32>,
        pub rx_queues: u32,
    }

    /// A fake kernel: fds are `/dev/null` handles, calls are recorded.
    #[derive(Debug, Default)]
    pub(crate) struct FakeBpf {
        pub script: Script,
        pub calls: Mutex<Vec<String>>,
    }

    impl FakeBpf {
        pub(crate) fn new(script: Script) -> Self {
            Self {
                script,
                calls: Mutex::new(Vec::new()),
            }
        }

        fn record(&self, call: impl Into<String>) {
            self.calls.lock().push(call.into());
        }

        pub(crate) fn calls(&self) -> Vec<String> {
            self.calls.lock().clone()
        }
    }

    fn null_fd() -> OwnedFd {
        OwnedFd::from(std::fs::File::open("/dev/null").expect("/dev/null opens"))
    }

    fn fail(call: &'static str, errno: i32) -> BpfError {
        BpfError::Syscall {
            call,
            source: io::Error::from_raw_os_error(errno),
        }
    }

    impl Bpf for FakeBpf {
        fn map_create(&self, spec: &MapSpec) -> Result<BpfMap, BpfError> {
            self.record(format!("map_create {:?} {}", spec.kind, spec.max_entries));
            if let Some(e) = self.script.map_create {
                return Err(fail("BPF_MAP_CREATE", e));
            }
            Ok(BpfMap {
                fd: null_fd(),
                kind: spec.kind,
                key_size: spec.key_size,
                value_size: spec.value_size,
                max_entries: spec.max_entries,
            })
        }

        fn map_update(&self, map: &BpfMap, key: &[u8], value: &[u8]) -> Result<(), BpfError> {
            map.check_key(key)?;
            map.check_value(value)?;
            self.record("map_update");
            match self.script.map_update {
                Some(e) => Err(fail("BPF_MAP_UPDATE_ELEM", e)),
                None => Ok(()),
            }
        }

        fn map_delete(&self, map: &BpfMap, key: &[u8]) -> Result<bool, BpfError> {
            map.check_key(key)?;
            self.record("map_delete");
            Ok(true)
        }

        fn map_lookup(&self, map: &BpfMap, key: &[u8], value: &mut [u8]) -> Result<bool, BpfError> {
            map.check_key(key)?;
            map.check_value(value)?;
            self.record("map_lookup");
            Ok(false)
        }

        fn prog_load_xdp(&self, name: &str, insns: &[[u8; 8]]) -> Result<OwnedFd, BpfError> {
            self.record(format!("prog_load {name} {}", insns.len()));
            if let Some((e, log)) = self.script.prog_load {
                return Err(BpfError::ProgramRejected {
                    name: name.to_owned(),
                    source: io::Error::from_raw_os_error(e),
                    log: log.to_owned(),
                });
            }
            Ok(null_fd())
        }

        fn prog_load_tcx(&self, name: &str, insns: &[[u8; 8]]) -> Result<OwnedFd, BpfError> {
            self.record(format!("prog_load_tcx {name} {}", insns.len()));
            Ok(null_fd())
        }

        fn link_create_tcx_ingress(
            &self,
            _prog: BorrowedFd<'_>,
            ifindex: u32,
        ) -> Result<OwnedFd, BpfError> {
            self.record(format!("link_create_tcx {ifindex}"));
            match self.script.link_tcx {
                Some(e) => Err(fail("BPF_LINK_CREATE", e)),
                None => Ok(null_fd()),
            }
        }

        fn prog_test_run_frame(
            &self,
            _prog: BorrowedFd<'_>,
            _frame: &[u8],
        ) -> Result<(u32, Vec<u8>), BpfError> {
            self.record("prog_test_run");
            Err(fail("BPF_PROG_TEST_RUN", libc::ENOTSUP))
        }

        fn link_create_xdp(
            &self,
            _prog: BorrowedFd<'_>,
            ifindex: u32,
            mode: AttachMode,
        ) -> Result<OwnedFd, BpfError> {
            self.record(format!("link_create {ifindex} {mode:?}"));
            let script = match mode {
                AttachMode::Driver => self.script.link_driver,
                AttachMode::Skb => self.script.link_skb,
            };
            match script {
                Some(e) => Err(fail("BPF_LINK_CREATE", e)),
                None => Ok(null_fd()),
            }
        }

        fn ifindex(&self, ifname: &str) -> Result<u32, BpfError> {
            self.record(format!("ifindex {ifname}"));
            match self.script.ifindex {
                Some(e) => Err(fail("if_nametoindex", e)),
                None => Ok(7),
            }
        }

        fn rx_queue_count(&self, _ifname: &str) -> Result<u32, BpfError> {
            Ok(self.script.rx_queues.max(1))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attr_layouts_match_the_uapi() {
        assert_eq!(std::mem::size_of::<MapCreateAttr>(), 44);
        assert_eq!(std::mem::size_of::<MapElemAttr>(), 32);
        assert_eq!(std::mem::size_of::<ProgLoadAttr>(), 72);
        assert_eq!(std::mem::offset_of!(ProgLoadAttr, prog_name), 48);
        assert_eq!(std::mem::offset_of!(ProgLoadAttr, expected_attach_type), 68);
        assert_eq!(std::mem::offset_of!(TestRunAttr, repeat), 32);
        assert_eq!(std::mem::size_of::<LinkCreateAttr>(), 16);
        assert_eq!(std::mem::size_of::<EthtoolChannels>(), 36);
    }

    #[test]
    fn object_names_are_sanitised_and_truncated() {
        assert_eq!(&object_name("shoal_xsk")[..10], b"shoal_xsk\0");
        let long = object_name("a-very-long-name-with-dashes");
        assert_eq!(&long[..15], b"averylongnamewi");
        assert_eq!(long[15], 0);
    }

    #[test]
    fn bad_interface_names_are_refused_before_the_kernel() {
        let bpf = KernelBpf;
        assert!(matches!(bpf.ifindex(""), Err(BpfError::InvalidArgument(_))));
        assert!(matches!(
            bpf.ifindex("0123456789abcdefg"),
            Err(BpfError::InvalidArgument(_))
        ));
        assert!(matches!(
            bpf.ifindex("a\0b"),
            Err(BpfError::InvalidArgument(_))
        ));
        let missing = bpf.ifindex("shoal-nope0").unwrap_err();
        assert_eq!(missing.errno(), Some(libc::ENODEV));
        assert!(missing.to_string().contains("if_nametoindex"), "{missing}");
    }

    #[test]
    fn map_access_checks_sizes_before_the_kernel() {
        let fake = fake::FakeBpf::default();
        let map = fake.map_create(&MapSpec::xsk_map("t", 1)).unwrap();
        // The real implementation checks sizes first, too: a short key would
        // let the kernel read past our buffer.
        let real = KernelBpf;
        assert!(matches!(
            real.map_update(&map, &[0; 2], &[0; 4]),
            Err(BpfError::InvalidArgument(_))
        ));
        let mut small = [0u8; 2];
        assert!(matches!(
            real.map_lookup(&map, &[0; 4], &mut small),
            Err(BpfError::InvalidArgument(_))
        ));
    }

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
}
