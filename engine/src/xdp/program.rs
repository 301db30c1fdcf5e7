//! shoal's XDP pre-classifier, built from parameters at run time.
//!
//! The program sends the frames the engine must see to the AF_XDP socket of
//! the rx queue they arrived on and leaves everything else to the kernel
//! stack. It selects:
//!
//! 1. heartbeats: ethertype [`HEARTBEAT_ETHERTYPE`] (or whatever the
//!    parameters say), untagged or under one or two VLAN tags;
//! 2. frames whose destination MAC is a cluster MAC (unicast `02-BF-…`,
//!    multicast `03-BF-…`, IGMP `01-00-5E-7F-…`);
//! 3. ARP (Ethernet/IPv4 only) whose target protocol address is a VIP;
//! 4. IPv4 and IPv6 frames whose destination address is a VIP, whatever
//!    their destination MAC (broadcast, a multicast group that is not the
//!    cluster's, another host's MAC, this host's own MAC), untagged or under
//!    one or two VLAN tags: counted in [`GUARD_OTHER_MAC`] and judged by the
//!    engine exactly like cluster traffic, so at most one host keeps each
//!    (exactly one for a frame every host receives, such as a broadcast).
//!    The kernel stack, where the VIP is a local address, never sees them;
//! 5. ICMPv6 neighbour solicitations (type 135) whose target is a VIP, when
//!    ICMPv6 immediately follows the IPv6 header (as RFC 4861 packets do);
//! 6. anything else: `XDP_PASS`.
//!
//! With the fast path ([`XdpProgram::build_with_maps`], see [`super::fast`]),
//! frames of case 2 are first judged in the kernel: IPv4 TCP/UDP frames of
//! buckets this host neither owns nor tracks connections in are dropped
//! there, and (with a pass MAC) datagrams it surely keeps are passed; every
//! other one is redirected as above. Case 4 frames skip the fast path.
//!
//! "Redirect" is, for a selected frame that fits in a UMEM frame
//! ([`XdpParams::max_frame_len`]), `bpf_redirect_map(&xskmap,
//! ctx->rx_queue_index, XDP_DROP)`. A selected frame never reaches the
//! kernel stack by accident:
//!
//! - a queue without a socket in the map drops the frame and counts it in
//!   [`GUARD_UNOWNED_QUEUE`] (the engine refuses to start unless its poll
//!   loops cover every rx queue, so this happens only before the sockets
//!   are bound and after they close);
//! - a frame longer than a UMEM frame holds is dropped and counted in
//!   [`GUARD_OVERSIZE`] (the socket would drop it, counted only in its own
//!   statistics).
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
//! - Guard counters ([`super::guard`]) are touched only on the rare paths
//!   (case 4, a missing socket, an oversize frame): the common redirect
//!   costs no map lookup.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, BorrowedFd};

use shoal_dataplane::wire::ethertype::{
    ARP as ETHERTYPE_ARP, HEARTBEAT as HEARTBEAT_ETHERTYPE, IPV4 as ETHERTYPE_IPV4,
    IPV6 as ETHERTYPE_IPV6, QINQ as ETHERTYPE_QINQ, VLAN as ETHERTYPE_VLAN,
};
use shoal_dataplane::MAX_RULES;

use super::asm::{Asm, AsmError, Cond, Insn, Label, Reg, Size};
use super::fast::{FastPathFds, FastPathLayout};
use super::guard::{self, GUARD_OTHER_MAC, GUARD_OVERSIZE, GUARD_UNOWNED_QUEUE};

/// Most cluster MACs a program matches.
pub const MAX_CLUSTER_MACS: usize = 64;
/// Most IPv4 VIPs a program matches ARP for.
pub const MAX_VIPS_V4: usize = 256;
/// Most IPv6 VIPs a program matches neighbour solicitations for.
pub const MAX_VIPS_V6: usize = 64;

/// Bytes the kernel keeps in front of a received frame in a UMEM frame
/// (`XDP_PACKET_HEADROOM`; shoal registers its UMEM with no extra headroom).
pub const XDP_PACKET_HEADROOM: u32 = 256;
/// The UMEM frame size shoal uses unless configured otherwise.
pub const DEFAULT_UMEM_FRAME_SIZE: u32 = 2048;

/// The longest frame a UMEM frame of `frame_size` bytes receives: what is
/// left after the kernel's headroom.
pub const fn max_frame_len(frame_size: u32) -> u32 {
    frame_size.saturating_sub(XDP_PACKET_HEADROOM)
}

/// `bpf_redirect_map`.
const HELPER_REDIRECT_MAP: i32 = 51;
/// Offset of `rx_queue_index` in `struct xdp_md`.
const XDP_MD_RX_QUEUE_INDEX: i16 = 16;

const ETH_HLEN: i16 = 14;
const VLAN_HLEN: i16 = 4;
/// IPv4 header: the destination address at 16, 20 bytes without options.
const IPV4_HLEN: i16 = 20;
const IPV4_DST: i16 = 16;
/// IPv6 header: the destination address at 24.
const IPV6_DST: i16 = 24;
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
    /// The longest selected frame handed to a socket (see
    /// [`max_frame_len`]); longer ones are dropped and counted.
    pub max_frame_len: u32,
}

impl Default for XdpParams {
    fn default() -> Self {
        Self {
            cluster_macs: Vec::new(),
            vips_v4: Vec::new(),
            vips_v6: Vec::new(),
            heartbeat_ethertype: HEARTBEAT_ETHERTYPE,
            max_frame_len: max_frame_len(DEFAULT_UMEM_FRAME_SIZE),
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
    /// The fallback must be drop or aborted: a selected frame never falls
    /// back to the kernel stack.
    #[error("redirect fallback {0:?} is not XDP_DROP or XDP_ABORTED")]
    BadFallback(XdpAction),
    /// The frame length limit is not one the verifier can check against.
    #[error("max_frame_len {0} is not in 64..=65535")]
    BadFrameLen(u32),
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
    /// An IP frame to a VIP that did not come to a cluster MAC.
    vip_frame: Label,
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

        if !p.vips_v4.is_empty() {
            let not_v4 = self.asm.label();
            self.asm
                .jmp32_imm(Cond::Ne, Reg::R5, ethertype(ETHERTYPE_IPV4), not_v4);
            self.bounds(l2 + IPV4_HLEN);
            for vip in &p.vips_v4 {
                self.match_bytes_to(l2 + IPV4_DST, &vip.octets(), self.vip_frame);
            }
            self.asm.ja(self.pass);
            self.asm.bind(not_v4);
        }

        if !p.vips_v6.is_empty() {
            let not_v6 = self.asm.label();
            self.asm
                .jmp32_imm(Cond::Ne, Reg::R5, ethertype(ETHERTYPE_IPV6), not_v6);
            self.bounds(l2 + IPV6_HLEN);
            for vip in &p.vips_v6 {
                self.match_bytes_to(l2 + IPV6_DST, &vip.octets(), self.vip_frame);
            }
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

/// The maps a program uses, by fd.
#[derive(Debug, Clone, Copy)]
pub struct ProgramMaps<'a> {
    /// The XSKMAP: rx queue index to AF_XDP socket.
    pub xskmap: BorrowedFd<'a>,
    /// The guard counters (see [`super::guard`]).
    pub guard: BorrowedFd<'a>,
}

impl XdpProgram {
    /// Builds the classifier redirecting into `maps.xskmap`; a selected
    /// frame whose queue has no socket is dropped and counted.
    pub fn build(params: &XdpParams, maps: ProgramMaps<'_>) -> Result<Self, ProgramError> {
        Self::build_with_fallback(params, maps, XdpAction::Drop)
    }

    /// As [`XdpProgram::build`], with another action when the redirect finds
    /// no socket (still counted). Tests use `XdpAction::Aborted` so that
    /// `BPF_PROG_TEST_RUN` tells redirected frames (0) from dropped (1) and
    /// passed (2) ones without a socket.
    pub fn build_with_fallback(
        params: &XdpParams,
        maps: ProgramMaps<'_>,
        fallback: XdpAction,
    ) -> Result<Self, ProgramError> {
        Self::build_with_maps(params, maps, None, fallback)
    }

    /// As [`XdpProgram::build_with_fallback`], with the fast path (see
    /// [`super::fast`]) judging frames to the cluster MACs before they are
    /// redirected, when `fast` gives its layout and maps.
    pub fn build_with_maps(
        params: &XdpParams,
        maps: ProgramMaps<'_>,
        fast: Option<(&FastPathLayout, FastPathFds<'_>)>,
        fallback: XdpAction,
    ) -> Result<Self, ProgramError> {
        check_len("cluster MACs", params.cluster_macs.len(), MAX_CLUSTER_MACS)?;
        check_len("IPv4 VIPs", params.vips_v4.len(), MAX_VIPS_V4)?;
        check_len("IPv6 VIPs", params.vips_v6.len(), MAX_VIPS_V6)?;
        if !matches!(fallback, XdpAction::Drop | XdpAction::Aborted) {
            return Err(ProgramError::BadFallback(fallback));
        }
        if !(64..=65535).contains(&params.max_frame_len) {
            return Err(ProgramError::BadFrameLen(params.max_frame_len));
        }

        let mut asm = Asm::new();
        let pass = asm.label();
        let redirect = asm.label();
        let vip_frame = asm.label();
        let mut b = Builder {
            asm,
            params,
            pass,
            redirect,
            vip_frame,
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

        // A VIP frame to another MAC: counted, then redirected. (Without
        // VIPs nothing jumps here, and the verifier refuses unreachable
        // code.)
        if !params.vips_v4.is_empty() || !params.vips_v6.is_empty() {
            b.asm.bind(vip_frame);
            guard::emit_bump(&mut b.asm, maps.guard, GUARD_OTHER_MAC);
            b.asm.ja(redirect);
        }

        if let Some((layout, fds)) = fast {
            check_len("fast path rules", layout.rules.len(), MAX_RULES)?;
            super::fast::emit(&mut b.asm, layout, fds, &params.vips_v4, cluster, redirect);
        }

        // r2 = data; r3 = data_end (calls may have clobbered them). A frame
        // longer than a UMEM frame holds is dropped here, counted.
        let oversize = b.asm.label();
        let done = b.asm.label();
        b.asm.bind(redirect);
        b.asm.ldx(Size::W, Reg::R2, Reg::R6, 0);
        b.asm.ldx(Size::W, Reg::R3, Reg::R6, 4);
        b.asm.mov64_reg(Reg::R4, Reg::R2);
        // Checked above: 64..=65535.
        b.asm.add64_imm(Reg::R4, params.max_frame_len as i32);
        b.asm.jmp_reg(Cond::Lt, Reg::R4, Reg::R3, oversize);
        b.asm.ldx(Size::W, Reg::R2, Reg::R6, XDP_MD_RX_QUEUE_INDEX);
        b.asm.ld_map_fd(Reg::R1, maps.xskmap.as_raw_fd());
        b.asm.mov64_imm(Reg::R3, fallback as i32);
        b.asm.call(HELPER_REDIRECT_MAP);
        b.asm
            .jmp32_imm(Cond::Eq, Reg::R0, XdpAction::Redirect as u32, done);
        // No socket on this queue: the fallback, counted.
        b.asm.mov64_reg(Reg::R9, Reg::R0);
        guard::emit_bump(&mut b.asm, maps.guard, GUARD_UNOWNED_QUEUE);
        b.asm.mov64_reg(Reg::R0, Reg::R9);
        b.asm.bind(done);
        b.asm.exit();

        b.asm.bind(oversize);
        guard::emit_bump(&mut b.asm, maps.guard, GUARD_OVERSIZE);
        b.asm.mov64_imm(Reg::R0, XdpAction::Drop as i32);
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

    fn maps(f: &std::fs::File) -> ProgramMaps<'_> {
        ProgramMaps {
            xskmap: f.as_fd(),
            guard: f.as_fd(),
        }
    }

    fn params(n: usize) -> XdpParams {
        XdpParams {
            cluster_macs: (0..n).map(|i| [0x02, 0xbf, 10, 0, 0, i as u8]).collect(),
            vips_v4: (0..n).map(|i| Ipv4Addr::new(10, 0, 0, i as u8)).collect(),
            vips_v6: (0..n)
                .map(|i| Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, i as u16))
                .collect(),
            ..XdpParams::default()
        }
    }

    #[test]
    fn redirects_with_a_drop_fallback_after_the_length_check() {
        let f = some_fd();
        let prog = XdpProgram::build(&params(2), maps(&f)).unwrap();
        let insns = prog.instructions();
        let call = insns
            .iter()
            .position(|i| i.code == 0x85 && i.imm == HELPER_REDIRECT_MAP)
            .unwrap();
        // ldxw r2, [r6+16]; ld_imm64 r1, map; mov r3, XDP_DROP; call 51
        assert_eq!(insns[call - 4].code, 0x61);
        assert_eq!(
            (
                insns[call - 4].dst,
                insns[call - 4].src,
                insns[call - 4].off
            ),
            (2, 6, 16)
        );
        assert_eq!(insns[call - 3].code, 0x18);
        assert_eq!(insns[call - 3].src, 1);
        assert_eq!(insns[call - 3].imm, f.as_raw_fd());
        assert_eq!(
            insns[call - 1],
            Insn {
                code: 0xb7,
                dst: 3,
                src: 0,
                off: 0,
                imm: XdpAction::Drop as i32
            }
        );
        // Before it: data + max_frame_len < data_end jumps to the oversize drop.
        assert_eq!(
            insns[call - 6].imm,
            max_frame_len(DEFAULT_UMEM_FRAME_SIZE) as i32
        );
        assert_eq!(insns[call - 5].code, 0xad, "jlt r4, r3");
        // After it: a redirect returns at once.
        assert_eq!(insns[call + 1].code, 0x16, "jeq32 r0, XDP_REDIRECT");
        assert_eq!(insns[call + 1].imm, XdpAction::Redirect as i32);
        assert_eq!(insns.last().unwrap().code, 0x95);
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
                XdpProgram::build(&params(n), maps(&f))
                    .unwrap()
                    .instructions()
                    .len()
            })
            .collect();
        let step = sizes[2] - sizes[1];
        for w in sizes[1..].windows(2) {
            assert_eq!(w[1] - w[0], step, "{sizes:?}");
        }
        // Per entry: a MAC (3 loads + 3 jumps); an IPv4 VIP (2 + 2) for ARP
        // and again for the destination; an IPv6 VIP (8 + 8) for the
        // destination and again for the NS target; the VIPs unrolled for
        // three VLAN layouts.
        assert_eq!(step, 6 + 3 * (2 * 4 + 2 * 16));
    }

    #[test]
    fn every_jump_lands_inside_the_program() {
        let f = some_fd();
        for n in [0, 1, 4] {
            let prog = XdpProgram::build(&params(n), maps(&f)).unwrap();
            let len = prog.instructions().len() as i64;
            for (i, insn) in prog.instructions().iter().enumerate() {
                let class = insn.code & 0x07;
                let op = insn.code & 0xf0;
                if (class == 0x05 || class == 0x06) && op != 0x80 && op != 0x90 {
                    let to = i as i64 + 1 + i64::from(insn.off);
                    assert!(to > i as i64 && to < len, "{n}: insn {i} jumps to {to}");
                }
            }
        }
    }

    #[test]
    fn limits_are_errors() {
        let f = some_fd();
        let mut p = params(0);
        p.cluster_macs = vec![[0; 6]; MAX_CLUSTER_MACS + 1];
        assert!(matches!(
            XdpProgram::build(&p, maps(&f)),
            Err(ProgramError::TooMany {
                what: "cluster MACs",
                ..
            })
        ));
        let mut p = params(0);
        p.vips_v6 = vec![Ipv6Addr::LOCALHOST; MAX_VIPS_V6 + 1];
        assert!(XdpProgram::build(&p, maps(&f)).is_err());
        for bad in [XdpAction::Tx, XdpAction::Pass] {
            assert_eq!(
                XdpProgram::build_with_fallback(&params(1), maps(&f), bad),
                Err(ProgramError::BadFallback(bad))
            );
        }
        for bad in [0, 63, 65536] {
            let p = XdpParams {
                max_frame_len: bad,
                ..params(1)
            };
            assert_eq!(
                XdpProgram::build(&p, maps(&f)),
                Err(ProgramError::BadFrameLen(bad))
            );
        }
        // The largest allowed program still assembles (jumps fit 16 bits).
        let p = XdpParams {
            cluster_macs: vec![[2; 6]; MAX_CLUSTER_MACS],
            vips_v4: vec![Ipv4Addr::LOCALHOST; MAX_VIPS_V4],
            vips_v6: vec![Ipv6Addr::LOCALHOST; MAX_VIPS_V6],
            ..XdpParams::default()
        };
        assert!(XdpProgram::build(&p, maps(&f)).is_ok());
    }

    #[test]
    fn frame_room_leaves_the_kernel_headroom() {
        assert_eq!(max_frame_len(2048), 1792);
        assert_eq!(max_frame_len(4096), 3840);
        assert_eq!(XdpParams::default().max_frame_len, 1792);
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
