//! shoal's XDP pre-classifier, built from parameters at run time.
//!
//! The program sends the cluster's frames to the AF_XDP socket of the rx queue
//! they arrived on and leaves everything else to the kernel stack:
//!
//! 1. heartbeats: ethertype [`HEARTBEAT_ETHERTYPE`] (or whatever the
//!    parameters say), untagged or under one or two VLAN tags;
//! 2. frames whose destination MAC is a cluster MAC (unicast `02-BF-…`,
//!    multicast `03-BF-…`, IGMP `01-00-5E-7F-…`);
//! 3. ARP (Ethernet/IPv4 only) whose target protocol address is a VIP;
//! 4. ICMPv6 neighbour solicitations (type 135) whose target is a VIP, when
//!    ICMPv6 immediately follows the IPv6 header (as RFC 4861 packets do);
//! 5. anything else: `XDP_PASS`.
//!
//! With the fast path ([`XdpProgram::build_with_maps`], see [`super::fast`]),
//! frames of case 2 are first judged in the kernel: IPv4 TCP/UDP frames of
//! buckets this host neither owns nor tracks connections in are dropped
//! there; every other one is redirected as above.
//!
//! "Redirect" is `bpf_redirect_map(&xskmap, ctx->rx_queue_index, XDP_PASS)`:
//! a queue without a socket in the map falls back to the kernel, so a frame
//! is never lost because the engine has not opened that queue yet.
//!
//! # Design decisions
//!
//! - Every packet access is a 16-bit or 8-bit load at an even offset, so the
//!   program passes the verifier's strict-alignment rules too (frames start at
//!   `NET_IP_ALIGN`).
//! - Comparisons against immediates use 32-bit jumps (`BPF_JMP32`, Linux 5.1)
//!   so constants with the top bit set compare as written.
//! - Matching is a linear chain of compares, unrolled for the untagged, one-tag
//!   and two-tag layouts. That is the cheapest shape for the handful of MACs
//!   and VIPs a cluster has; the caps below keep jumps within 16 bits and the
//!   per-frame cost bounded. A cluster with many more VIPs would want a hash
//!   map lookup instead.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, BorrowedFd};

use shoal_dataplane::MAX_RULES;

use super::asm::{Asm, AsmError, Cond, Insn, Label, Reg, Size};
use super::fast::{FastPathFds, FastPathLayout};

/// The ethertype of shoal's heartbeats (NLB's own).
pub const HEARTBEAT_ETHERTYPE: u16 = 0x886F;
/// Most cluster MACs a program matches.
pub const MAX_CLUSTER_MACS: usize = 64;
/// Most IPv4 VIPs a program matches ARP for.
pub const MAX_VIPS_V4: usize = 256;
/// Most IPv6 VIPs a program matches neighbour solicitations for.
pub const MAX_VIPS_V6: usize = 64;

/// `bpf_redirect_map`.
const HELPER_REDIRECT_MAP: i32 = 51;
/// Offset of `rx_queue_index` in `struct xdp_md`.
const XDP_MD_RX_QUEUE_INDEX: i16 = 16;

const ETH_HLEN: i16 = 14;
const VLAN_HLEN: i16 = 4;
const ETHERTYPE_ARP: u16 = 0x0806;
const ETHERTYPE_IPV6: u16 = 0x86DD;
const ETHERTYPE_VLAN: u16 = 0x8100;
const ETHERTYPE_QINQ: u16 = 0x88A8;
/// ARP body for Ethernet/IPv4: 28 bytes, target protocol address at 24.
const ARP_LEN: i16 = 28;
const ARP_TPA: i16 = 24;
const IPV6_HLEN: i16 = 40;
const IPV6_NEXT_HEADER: i16 = 6;
const IPPROTO_ICMPV6: u32 = 58;
const ICMPV6_NEIGHBOR_SOLICIT: u32 = 135;
/// Type, code, checksum, reserved, then the 16-byte target.
const NS_TARGET: i16 = 8;
const NS_LEN: i16 = 24;

/// What the program classifies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XdpParams {
    /// Frames to these destination MACs are cluster frames.
    pub cluster_macs: Vec<[u8; 6]>,
    /// ARP whose target IP is one of these goes to the engine.
    pub vips_v4: Vec<Ipv4Addr>,
    /// Neighbour solicitations whose target is one of these go to the engine.
    pub vips_v6: Vec<Ipv6Addr>,
    /// Frames of this ethertype (heartbeats) go to the engine.
    pub heartbeat_ethertype: u16,
}

impl Default for XdpParams {
    fn default() -> Self {
        Self {
            cluster_macs: Vec::new(),
            vips_v4: Vec::new(),
            vips_v6: Vec::new(),
            heartbeat_ethertype: HEARTBEAT_ETHERTYPE,
        }
    }
}

/// XDP return codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum XdpAction {
    /// `XDP_ABORTED`.
    Aborted = 0,
    /// `XDP_DROP`.
    Drop = 1,
    /// `XDP_PASS`.
    Pass = 2,
    /// `XDP_TX`.
    Tx = 3,
    /// `XDP_REDIRECT`.
    Redirect = 4,
}

impl XdpAction {
    /// The action for a raw return code.
    pub fn from_raw(raw: u32) -> Option<Self> {
        Some(match raw {
            0 => Self::Aborted,
            1 => Self::Drop,
            2 => Self::Pass,
            3 => Self::Tx,
            4 => Self::Redirect,
            _ => return None,
        })
    }
}

/// Why a program could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProgramError {
    /// More entries than the program matches.
    #[error("{count} {what} exceed the XDP program's limit of {max}")]
    TooMany {
        /// What there are too many of.
        what: &'static str,
        /// How many were given.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// The fallback must be pass or drop (the only ones
    /// `bpf_redirect_map` accepts besides aborted).
    #[error("redirect fallback {0:?} is not XDP_PASS, XDP_DROP or XDP_ABORTED")]
    BadFallback(XdpAction),
    /// The assembler failed (a bug in this module).
    #[error("assembling the XDP program failed: {0}")]
    Asm(#[from] AsmError),
}

/// A built program, ready for `BPF_PROG_LOAD`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XdpProgram {
    insns: Vec<Insn>,
}

/// The frame's two bytes at an offset as a 16-bit load sees them.
fn half(bytes: [u8; 2]) -> u32 {
    u32::from(u16::from_ne_bytes(bytes))
}

fn ethertype(value: u16) -> u32 {
    half(value.to_be_bytes())
}

struct Builder<'p> {
    asm: Asm,
    params: &'p XdpParams,
    pass: Label,
    redirect: Label,
}

impl Builder<'_> {
    /// `if data + len > data_end goto pass`.
    fn bounds(&mut self, len: i16) {
        self.asm.mov64_reg(Reg::R4, Reg::R2);
        self.asm.add64_imm(Reg::R4, i32::from(len));
        self.asm.jmp_reg(Cond::Gt, Reg::R4, Reg::R3, self.pass);
    }

    /// Redirects when the bytes at `off` equal `bytes` (even length), loading
    /// 16 bits at a time; falls through otherwise.
    fn match_bytes(&mut self, off: i16, bytes: &[u8]) {
        self.match_bytes_to(off, bytes, self.redirect);
    }

    /// Jumps to `hit` when the bytes at `off` equal `bytes` (even length);
    /// falls through otherwise.
    fn match_bytes_to(&mut self, off: i16, bytes: &[u8], hit: Label) {
        let miss = self.asm.label();
        let halves: Vec<u32> = bytes.chunks_exact(2).map(|c| half([c[0], c[1]])).collect();
        let last = halves.len().saturating_sub(1);
        for (i, h) in halves.iter().enumerate() {
            // Offsets stay below 100 bytes; `i` is below 8.
            let at = off + 2 * i as i16;
            self.asm.ldx(Size::H, Reg::R7, Reg::R2, at);
            if i == last {
                self.asm.jmp32_imm(Cond::Eq, Reg::R7, *h, hit);
            } else {
                self.asm.jmp32_imm(Cond::Ne, Reg::R7, *h, miss);
            }
        }
        self.asm.bind(miss);
    }

    /// Classifies the payload of an Ethernet header of `l2` bytes whose
    /// ethertype is in `r5`. Falls through when the ethertype is none of ours.
    fn layer3(&mut self, l2: i16) {
        let p = self.params;
        self.asm.jmp32_imm(
            Cond::Eq,
            Reg::R5,
            ethertype(p.heartbeat_ethertype),
            self.redirect,
        );

        if !p.vips_v4.is_empty() {
            let not_arp = self.asm.label();
            self.asm
                .jmp32_imm(Cond::Ne, Reg::R5, ethertype(ETHERTYPE_ARP), not_arp);
            self.bounds(l2 + ARP_LEN);
            // hlen 6, plen 4: only then is offset 24 the target IPv4 address.
            self.asm.ldx(Size::H, Reg::R7, Reg::R2, l2 + 4);
            self.asm
                .jmp32_imm(Cond::Ne, Reg::R7, half([6, 4]), self.pass);
            for vip in &p.vips_v4 {
                self.match_bytes(l2 + ARP_TPA, &vip.octets());
            }
            self.asm.ja(self.pass);
            self.asm.bind(not_arp);
        }

        if !p.vips_v6.is_empty() {
            let not_v6 = self.asm.label();
            self.asm
                .jmp32_imm(Cond::Ne, Reg::R5, ethertype(ETHERTYPE_IPV6), not_v6);
            self.bounds(l2 + IPV6_HLEN + NS_LEN);
            self.asm
                .ldx(Size::B, Reg::R7, Reg::R2, l2 + IPV6_NEXT_HEADER);
            self.asm
                .jmp32_imm(Cond::Ne, Reg::R7, IPPROTO_ICMPV6, self.pass);
            self.asm.ldx(Size::B, Reg::R7, Reg::R2, l2 + IPV6_HLEN);
            self.asm
                .jmp32_imm(Cond::Ne, Reg::R7, ICMPV6_NEIGHBOR_SOLICIT, self.pass);
            for vip in &p.vips_v6 {
                self.match_bytes(l2 + IPV6_HLEN + NS_TARGET, &vip.octets());
            }
            self.asm.ja(self.pass);
            self.asm.bind(not_v6);
        }
    }

    /// Jumps to `tagged` when `r5` is a VLAN tag protocol.
    fn vlan_check(&mut self, tagged: Label) {
        self.asm
            .jmp32_imm(Cond::Eq, Reg::R5, ethertype(ETHERTYPE_VLAN), tagged);
        self.asm
            .jmp32_imm(Cond::Eq, Reg::R5, ethertype(ETHERTYPE_QINQ), tagged);
        self.asm.ja(self.pass);
    }
}

impl XdpProgram {
    /// Builds the classifier redirecting into the XSKMAP `xskmap`, falling
    /// back to `XDP_PASS` when the queue has no socket.
    pub fn build(params: &XdpParams, xskmap: BorrowedFd<'_>) -> Result<Self, ProgramError> {
        Self::build_with_fallback(params, xskmap, XdpAction::Pass)
    }

    /// As [`XdpProgram::build`], with another action when the redirect finds
    /// no socket. Tests use `XdpAction::Drop` so that `BPF_PROG_TEST_RUN`
    /// tells redirected frames (1) from passed ones (2) without a socket.
    pub fn build_with_fallback(
        params: &XdpParams,
        xskmap: BorrowedFd<'_>,
        fallback: XdpAction,
    ) -> Result<Self, ProgramError> {
        Self::build_with_maps(params, xskmap, None, fallback)
    }

    /// As [`XdpProgram::build_with_fallback`], with the fast path (see
    /// [`super::fast`]) judging frames to the cluster MACs before they are
    /// redirected, when `fast` gives its layout and maps.
    pub fn build_with_maps(
        params: &XdpParams,
        xskmap: BorrowedFd<'_>,
        fast: Option<(&FastPathLayout, FastPathFds<'_>)>,
        fallback: XdpAction,
    ) -> Result<Self, ProgramError> {
        check_len("cluster MACs", params.cluster_macs.len(), MAX_CLUSTER_MACS)?;
        check_len("IPv4 VIPs", params.vips_v4.len(), MAX_VIPS_V4)?;
        check_len("IPv6 VIPs", params.vips_v6.len(), MAX_VIPS_V6)?;
        if !matches!(
            fallback,
            XdpAction::Pass | XdpAction::Drop | XdpAction::Aborted
        ) {
            return Err(ProgramError::BadFallback(fallback));
        }

        let mut asm = Asm::new();
        let pass = asm.label();
        let redirect = asm.label();
        let mut b = Builder {
            asm,
            params,
            pass,
            redirect,
        };

        // r6 = ctx; r2 = data; r3 = data_end.
        b.asm.mov64_reg(Reg::R6, Reg::R1);
        b.asm.ldx(Size::W, Reg::R2, Reg::R1, 0);
        b.asm.ldx(Size::W, Reg::R3, Reg::R1, 4);
        b.bounds(ETH_HLEN);

        let cluster = match fast {
            Some(_) => b.asm.label(),
            None => redirect,
        };
        for mac in &params.cluster_macs {
            b.match_bytes_to(0, mac, cluster);
        }

        // Untagged, then up to two VLAN tags.
        let one_tag = b.asm.label();
        let two_tags = b.asm.label();
        b.asm.ldx(Size::H, Reg::R5, Reg::R2, ETH_HLEN - 2);
        b.layer3(ETH_HLEN);
        b.vlan_check(one_tag);

        b.asm.bind(one_tag);
        b.bounds(ETH_HLEN + VLAN_HLEN);
        b.asm
            .ldx(Size::H, Reg::R5, Reg::R2, ETH_HLEN + VLAN_HLEN - 2);
        b.layer3(ETH_HLEN + VLAN_HLEN);
        b.vlan_check(two_tags);

        b.asm.bind(two_tags);
        b.bounds(ETH_HLEN + 2 * VLAN_HLEN);
        b.asm
            .ldx(Size::H, Reg::R5, Reg::R2, ETH_HLEN + 2 * VLAN_HLEN - 2);
        b.layer3(ETH_HLEN + 2 * VLAN_HLEN);

        b.asm.bind(pass);
        b.asm.mov64_imm(Reg::R0, XdpAction::Pass as i32);
        b.asm.exit();

        if let Some((layout, fds)) = fast {
            check_len("fast path rules", layout.rules.len(), MAX_RULES)?;
            super::fast::emit(&mut b.asm, layout, fds, &params.vips_v4, cluster, redirect);
        }

        b.asm.bind(redirect);
        b.asm.ldx(Size::W, Reg::R2, Reg::R6, XDP_MD_RX_QUEUE_INDEX);
        b.asm.ld_map_fd(Reg::R1, xskmap.as_raw_fd());
        b.asm.mov64_imm(Reg::R3, fallback as i32);
        b.asm.call(HELPER_REDIRECT_MAP);
        b.asm.exit();

        Ok(Self {
            insns: b.asm.finish()?,
        })
    }

    /// The instructions.
    pub fn instructions(&self) -> &[Insn] {
        &self.insns
    }

    /// The instructions as `struct bpf_insn` bytes.
    pub fn encode(&self) -> Vec<[u8; 8]> {
        self.insns.iter().map(Insn::encode).collect()
    }
}

fn check_len(what: &'static str, count: usize, max: usize) -> Result<(), ProgramError> {
    if count > max {
        return Err(ProgramError::TooMany { what, count, max });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    fn some_fd() -> std::fs::File {
        std::fs::File::open("/dev/null").unwrap()
    }

    fn params(n: usize) -> XdpParams {
        XdpParams {
            cluster_macs: (0..n).map(|i| [0x02, 0xbf, 10, 0, 0, i as u8]).collect(),
            vips_v4: (0..n).map(|i| Ipv4Addr::new(10, 0, 0, i as u8)).collect(),
            vips_v6: (0..n)
                .map(|i| Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, i as u16))
                .collect(),
            heartbeat_ethertype: HEARTBEAT_ETHERTYPE,
        }
    }

    #[test]
    fn ends_with_the_redirect_sequence() {
        let f = some_fd();
        let prog = XdpProgram::build(&params(2), f.as_fd()).unwrap();
        let insns = prog.instructions();
        let n = insns.len();
        // ldxw r2, [r6+16]; ld_imm64 r1, map; mov r3, XDP_PASS; call 51; exit
        assert_eq!(insns[n - 6].code, 0x61);
        assert_eq!(
            (insns[n - 6].dst, insns[n - 6].src, insns[n - 6].off),
            (2, 6, 16)
        );
        assert_eq!(insns[n - 5].code, 0x18);
        assert_eq!(insns[n - 5].src, 1);
        assert_eq!(insns[n - 5].imm, f.as_raw_fd());
        assert_eq!(
            insns[n - 3],
            Insn {
                code: 0xb7,
                dst: 3,
                src: 0,
                off: 0,
                imm: 2
            }
        );
        assert_eq!(insns[n - 2].imm, 51);
        assert_eq!(insns[n - 1].code, 0x95);
        // The program opens by saving the context.
        assert_eq!(
            insns[0],
            Insn {
                code: 0xbf,
                dst: 6,
                src: 1,
                off: 0,
                imm: 0
            }
        );
    }

    #[test]
    fn grows_linearly_with_entries() {
        let f = some_fd();
        let sizes: Vec<usize> = (0..=4)
            .map(|n| {
                XdpProgram::build(&params(n), f.as_fd())
                    .unwrap()
                    .instructions()
                    .len()
            })
            .collect();
        let step = sizes[2] - sizes[1];
        for w in sizes[1..].windows(2) {
            assert_eq!(w[1] - w[0], step, "{sizes:?}");
        }
        // Per entry: a MAC (3 loads + 3 jumps), an IPv4 VIP (2 + 2) and an IPv6
        // VIP (8 + 8), the last two unrolled for three VLAN layouts.
        assert_eq!(step, 6 + 3 * (4 + 16));
    }

    #[test]
    fn every_jump_lands_inside_the_program() {
        let f = some_fd();
        let prog = XdpProgram::build(&params(4), f.as_fd()).unwrap();
        let n = prog.instructions().len() as i64;
        for (i, insn) in prog.instructions().iter().enumerate() {
            let class = insn.code & 0x07;
            let op = insn.code & 0xf0;
            if (class == 0x05 || class == 0x06) && op != 0x80 && op != 0x90 {
                let to = i as i64 + 1 + i64::from(insn.off);
                assert!(to > i as i64 && to < n, "insn {i} jumps to {to}");
            }
        }
    }

    #[test]
    fn limits_are_errors() {
        let f = some_fd();
        let mut p = params(0);
        p.cluster_macs = vec![[0; 6]; MAX_CLUSTER_MACS + 1];
        assert!(matches!(
            XdpProgram::build(&p, f.as_fd()),
            Err(ProgramError::TooMany {
                what: "cluster MACs",
                ..
            })
        ));
        let mut p = params(0);
        p.vips_v6 = vec![Ipv6Addr::LOCALHOST; MAX_VIPS_V6 + 1];
        assert!(XdpProgram::build(&p, f.as_fd()).is_err());
        assert_eq!(
            XdpProgram::build_with_fallback(&params(1), f.as_fd(), XdpAction::Tx),
            Err(ProgramError::BadFallback(XdpAction::Tx))
        );
        // The largest allowed program still assembles (jumps fit 16 bits).
        let p = XdpParams {
            cluster_macs: vec![[2; 6]; MAX_CLUSTER_MACS],
            vips_v4: vec![Ipv4Addr::LOCALHOST; MAX_VIPS_V4],
            vips_v6: vec![Ipv6Addr::LOCALHOST; MAX_VIPS_V6],
            heartbeat_ethertype: HEARTBEAT_ETHERTYPE,
        };
        assert!(XdpProgram::build(&p, f.as_fd()).is_ok());
    }

    #[test]
    fn action_codes_round_trip() {
        for a in [
            XdpAction::Aborted,
            XdpAction::Drop,
            XdpAction::Pass,
            XdpAction::Tx,
            XdpAction::Redirect,
        ] {
            assert_eq!(XdpAction::from_raw(a as u32), Some(a));
        }
        assert_eq!(XdpAction::from_raw(5), None);
    }
}
