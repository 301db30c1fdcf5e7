//! The kernel's trivial XDP drop, for the wire bench's ceiling: a
//! two-instruction program (`r0 = XDP_DROP; exit`) assembled with the
//! engine's eBPF encoder, loaded and attached through the engine's BPF seam
//! (`shoal_engine::sys::bpf`) in native (driver) or generic (skb) mode.
//!
//! # Contract
//!
//! * The attachment lives exactly as long as the returned [`XdpDrop`]:
//!   dropping it closes the link fd, which detaches the program; a killed
//!   bench leaves nothing attached.
//! * The interface is looked up, and the link made, inside a named network
//!   namespace, on a short-lived thread that enters it
//!   (`shoal_engine::sys::netns::run_in_named`), so the calling thread's
//!   namespace never changes.
//! * No `unsafe` here: every syscall goes through the engine's seam.

#![forbid(unsafe_code)]

use std::os::fd::{AsFd, OwnedFd};

use anyhow::{Context, Result};
use shoal_engine::sys::bpf::{self, AttachMode, Bpf};
use shoal_engine::sys::netns;
use shoal_engine::xdp::asm::{Asm, Reg};
use shoal_engine::xdp::XdpAction;

/// An attached XDP_DROP program; detached when dropped.
#[derive(Debug)]
pub struct XdpDrop {
    _link: OwnedFd,
    _prog: OwnedFd,
}

/// `r0 = XDP_DROP; exit`, encoded for `BPF_PROG_LOAD`.
fn program() -> Result<Vec<[u8; 8]>> {
    let mut asm = Asm::new();
    asm.mov64_imm(Reg::R0, XdpAction::Drop as i32);
    asm.exit();
    Ok(asm
        .finish()
        .context("assembling XDP_DROP")?
        .iter()
        .map(|insn| insn.encode())
        .collect())
}

fn load_and_attach(bpf: &impl Bpf, ifname: &str, mode: AttachMode) -> Result<XdpDrop> {
    let ifindex = bpf
        .ifindex(ifname)
        .with_context(|| format!("no interface {ifname}"))?;
    let prog = bpf.prog_load_xdp("bench_drp", &program()?)?;
    let link = bpf.link_create_xdp(prog.as_fd(), ifindex, mode)?;
    Ok(XdpDrop {
        _link: link,
        _prog: prog,
    })
}

impl XdpDrop {
    /// Attaches XDP_DROP to `ifname` inside network namespace `netns`
    /// (a name under /run/netns).
    ///
    /// # Errors
    /// When the namespace or interface is missing or the kernel refuses
    /// the program or the mode.
    pub fn attach(netns: &str, ifname: &str, mode: AttachMode) -> Result<Self> {
        netns::run_in_named(netns, || load_and_attach(&bpf::Kernel, ifname, mode))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_program_is_mov_r0_drop_then_exit() {
        // mov64 r0, 1 and exit, as bpftool prints them in hex (little-endian
        // bytes of the 64-bit words 0x0000_0001_0000_00b7 and 0x95).
        let insns: Vec<u64> = program()
            .unwrap()
            .iter()
            .map(|b| u64::from_ne_bytes(*b))
            .collect();
        if cfg!(target_endian = "little") {
            assert_eq!(insns, [0x0000_0001_0000_00b7, 0x95]);
        }
        assert_eq!(insns.len(), 2);
    }
}
