//! The kernel's trivial XDP drop, for the wire bench's ceiling: a
//! two-instruction program (`r0 = XDP_DROP; exit`) loaded with
//! `BPF_PROG_LOAD` and attached with `BPF_LINK_CREATE` in native (driver)
//! or generic (skb) mode.
//!
//! # Contract
//!
//! * The attachment lives exactly as long as the returned [`XdpDrop`]:
//!   dropping it closes the link fd, which detaches the program; a killed
//!   bench leaves nothing attached.
//! * The interface is looked up, and the link made, inside a named network
//!   namespace, on a short-lived thread that enters it with `setns`, so the
//!   calling thread's namespace never changes.
//! * This is the perf crate's only `unsafe`: two `bpf(2)` calls, one
//!   `setns(2)`, each with the invariant it relies on stated beside it.
//!   (The engine has a full eBPF toolkit, but the engine depends on this
//!   crate for `shoal bench`, so this crate cannot depend on it.)

#![allow(unsafe_code)]

use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use anyhow::{anyhow, bail, Context, Result};

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_PROG_TYPE_XDP: u32 = 6;
const BPF_XDP: u32 = 37;
const XDP_FLAGS_SKB_MODE: u32 = 2;
const XDP_FLAGS_DRV_MODE: u32 = 4;
const XDP_DROP: i32 = 1;

/// Native (driver) or generic (skb) XDP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// `XDP_FLAGS_DRV_MODE`.
    Native,
    /// `XDP_FLAGS_SKB_MODE`.
    Generic,
}

/// An attached XDP_DROP program; detached when dropped.
#[derive(Debug)]
pub struct XdpDrop {
    _link: OwnedFd,
    _prog: OwnedFd,
}

/// The `BPF_PROG_LOAD` prefix of `union bpf_attr` (the kernel zero-fills
/// the rest up to its own size).
#[repr(C, align(8))]
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

/// The `BPF_LINK_CREATE` prefix of `union bpf_attr`.
#[repr(C, align(8))]
struct LinkCreateAttr {
    prog_fd: u32,
    target_ifindex: u32,
    attach_type: u32,
    flags: u32,
}

/// One eBPF instruction: opcode, registers (dst low nibble), offset, imm.
fn insn(code: u8, dst: u8, imm: i32) -> u64 {
    u64::from(code) | (u64::from(dst & 0xf) << 8) | (u64::from(imm as u32) << 32)
}

fn owned(ret: libc::c_long, what: &str) -> Result<OwnedFd> {
    if ret < 0 {
        return Err(anyhow!("{what}: {}", std::io::Error::last_os_error()));
    }
    let fd = i32::try_from(ret).map_err(|_| anyhow!("{what}: fd {ret} out of range"))?;
    // SAFETY: the kernel just returned `fd` as a new descriptor owned by
    // nobody else in this process; `OwnedFd` takes sole ownership and
    // closes it once.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn load_and_attach(ifname: &str, mode: Mode) -> Result<XdpDrop> {
    let name = CString::new(ifname).context("interface name")?;
    // SAFETY: `name` is a valid NUL-terminated string for the call.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if ifindex == 0 {
        bail!("no interface {ifname}: {}", std::io::Error::last_os_error());
    }
    // r0 = XDP_DROP; exit
    let prog: [u64; 2] = [insn(0xb7, 0, XDP_DROP), insn(0x95, 0, 0)];
    let license = c"GPL";
    let mut pname = [0u8; 16];
    pname[..9].copy_from_slice(b"bench_drp");
    let mut attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_XDP,
        insn_cnt: prog.len() as u32,
        insns: prog.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 0,
        log_size: 0,
        log_buf: 0,
        kern_version: 0,
        prog_flags: 0,
        prog_name: pname,
        prog_ifindex: 0,
        expected_attach_type: BPF_XDP,
    };
    // SAFETY: `attr` is a properly aligned `#[repr(C)]` prefix of
    // `union bpf_attr` for BPF_PROG_LOAD, its size is passed, and the
    // pointers in it (`prog`, `license`) are live for the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_LOAD,
            &mut attr as *mut ProgLoadAttr,
            std::mem::size_of::<ProgLoadAttr>() as u32,
        )
    };
    let prog_fd = owned(ret, "BPF_PROG_LOAD")?;
    let mut link = LinkCreateAttr {
        prog_fd: prog_fd.as_raw_fd() as u32,
        target_ifindex: ifindex,
        attach_type: BPF_XDP,
        flags: match mode {
            Mode::Native => XDP_FLAGS_DRV_MODE,
            Mode::Generic => XDP_FLAGS_SKB_MODE,
        },
    };
    // SAFETY: `link` is a properly aligned `#[repr(C)]` prefix of
    // `union bpf_attr` for BPF_LINK_CREATE and its size is passed; it
    // holds no pointers.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_LINK_CREATE,
            &mut link as *mut LinkCreateAttr,
            std::mem::size_of::<LinkCreateAttr>() as u32,
        )
    };
    let link_fd = owned(ret, "BPF_LINK_CREATE")?;
    Ok(XdpDrop {
        _link: link_fd,
        _prog: prog_fd,
    })
}

impl XdpDrop {
    /// Attaches XDP_DROP to `ifname` inside network namespace `netns`
    /// (a name under /run/netns).
    ///
    /// # Errors
    /// When the namespace or interface is missing or the kernel refuses
    /// the program or the mode.
    pub fn attach(netns: &str, ifname: &str, mode: Mode) -> Result<Self> {
        let path = format!("/run/netns/{netns}");
        let ns = File::open(&path).with_context(|| format!("opening {path}"))?;
        let ifname = ifname.to_string();
        std::thread::spawn(move || {
            // SAFETY: `ns` is an open network-namespace fd; setns only
            // changes this short-lived thread's namespace.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                bail!("setns({path}): {}", std::io::Error::last_os_error());
            }
            load_and_attach(&ifname, mode)
        })
        .join()
        .map_err(|_| anyhow!("the XDP attach thread panicked"))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instructions_encode_as_the_kernel_expects() {
        // mov64 r0, 1 and exit, as bpftool prints them in hex.
        assert_eq!(insn(0xb7, 0, 1), 0x0000_0001_0000_00b7);
        assert_eq!(insn(0x95, 0, 0), 0x95);
    }
}
