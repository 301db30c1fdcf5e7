//! [`Kernel`], the real [`Bpf`]: the `bpf(2)` syscall, `if_nametoindex` and
//! the ethtool channel count.
//!
//! Layouts of `union bpf_attr` follow `include/uapi/linux/bpf.h`. Each command
//! gets its own `#[repr(C)]` prefix of the union; the kernel zero-fills the
//! bytes past the size passed, which is exactly "unused fields are zero".

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use super::{AttachMode, Bpf, BpfError, BpfMap, MapSpec, BPF_TCX_INGRESS, BPF_XDP};

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
/// `BPF_PROG_TYPE_SCHED_CLS`.
const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;

/// Size of the verifier log buffer used when a load is retried for its log.
const VERIFIER_LOG_SIZE: usize = 1 << 20;

/// `SIOCETHTOOL`.
const SIOCETHTOOL: libc::c_ulong = 0x8946;
/// `ETHTOOL_GCHANNELS`.
const ETHTOOL_GCHANNELS: u32 = 0x3c;

/// The real kernel.
#[derive(Debug, Default, Clone, Copy)]
pub struct Kernel;

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

impl Kernel {
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

impl Bpf for Kernel {
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
        Ok(BpfMap::created(fd, spec))
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
        let bpf = Kernel;
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
        let fake = crate::sys::bpf::fake::Fake::default();
        let map = fake.map_create(&MapSpec::xsk_map("t", 1)).unwrap();
        // The real implementation checks sizes first, too: a short key would
        // let the kernel read past our buffer.
        let real = Kernel;
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
}
