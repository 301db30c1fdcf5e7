//! The XDP fast path: drop, in the kernel, the IPv4 TCP and UDP frames of
//! buckets this host would drop in userspace anyway.
//!
//! # What it owns
//!
//! The frame layout the program understands ([`FastPathLayout`]: the port
//! rules in lookup order and the cluster's hash seed, compiled into the
//! program), the meaning of the three maps it reads and writes (their
//! layouts are the constants below), and the instructions
//! ([`emit`]). Keeping the maps current is [`crate::fastpath`]'s job.
//!
//! # What the program decides
//!
//! For a frame to a cluster MAC that is untagged or carries one 802.1Q /
//! 802.1ad tag, IPv4 (any IHL ≥ 5, options stepped over), not a fragment
//! (MF clear, offset 0), TCP or UDP with at least the four port bytes present,
//! to one of the IPv4 VIPs:
//!
//! 1. the rule: the first of [`FastPathLayout::rules`] (lookup order:
//!    specific-VIP rules first, then lowest port start, then configuration
//!    order — `ClusterMap::rule_for` exactly) covering VIP, protocol and
//!    destination port; none → redirect (the default host's traffic);
//! 2. the bucket: for a multiple-host rule `bucket_of(affinity_hash(seed,
//!    affinity, client, client_port, _))`, computed bit for bit as
//!    `shoal_dataplane::hash` does; 0 for other rules, as the pipeline does;
//! 3. the rule's action from the actions map (`slot` = the rule's position in
//!    the layout): [`ACTION_REDIRECT`], [`ACTION_DROP`], or [`ACTION_BITMAP`]:
//!    look up bit `bucket` of the slot's keep bitmap, clear → drop.
//!
//! 4. *pass* (only when built with a pass MAC, see below): an untagged UDP
//!    datagram of a rule without extended affinity (`FastRule::
//!    udp_untracked`), not to an IKE port (500, 4500: userspace notes IKE so
//!    ESP can follow it), whose slot's action carries [`ACTION_PASS`] and whose
//!    bucket bit is set in the slot's *pass bitmap*, gets its destination MAC
//!    rewritten to the NIC's own and is handed to the kernel stack on the NIC
//!    (`XDP_PASS`), where the VIP is a local address: no copy to userspace,
//!    no TAP write. The pipeline keeps exactly these datagrams (its verdict
//!    for an untracked UDP datagram is the bucket's owner alone), and
//!    [`crate::fastpath`] sets a pass bit only where every map a poll loop may
//!    be judging with keeps it.
//!
//! Every other frame to a cluster MAC (ARP, IPv6, fragments, two VLAN tags,
//! GRE, ESP, ICMP, AH, truncated headers, non-VIP destinations) is redirected
//! to the AF_XDP socket exactly as without the fast path. A failed map lookup
//! redirects. So the fast path drops nothing the maps do not tell it to drop
//! (the redirect itself drops, counted, only what no socket could take: see
//! [`super::program`]).
//!
//! Each judged frame is counted in the stats map at the key of the CPU it ran
//! on (an ordinary ARRAY indexed by `bpf_get_smp_processor_id()`: per-CPU
//! slots without a per-CPU map type, each 64 bytes so CPUs never share a
//! cache line), together with the last bucket and slot judged there, which
//! lets tests check the program's hash against the dataplane's.
//!
//! # Design decisions
//!
//! - Rules, VIPs and the seed are immediates, not map data: they come from
//!   the configuration and change only with it, and a chain of compares
//!   against immediates is the cheapest rule match there is. What changes
//!   with the view (who owns what) lives in the maps.
//! - One bitmap of 2^20 bits (128 KiB) per rule slot, one ARRAY element per
//!   slot: the lookup is inlined by the verifier, the bit is one load.
//! - All packet loads are 8-, 16- or 32-bit at offsets aligned for a frame
//!   that starts at `NET_IP_ALIGN`, so strict-alignment verifiers accept it.

use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsRawFd, BorrowedFd};

use shoal_dataplane::map::ClusterMap;
use shoal_dataplane::{Affinity, FilterMode, Protocol, MAX_RULES};

use super::asm::{Alu, Asm, Cond, Label, Reg, Size};

/// Action: hand the rule's frames to userspace.
pub const ACTION_REDIRECT: u32 = 0;
/// Action: drop every frame of the rule.
pub const ACTION_DROP: u32 = 1;
/// Action: drop the frames whose bucket bit is clear in the keep bitmap.
pub const ACTION_BITMAP: u32 = 2;
/// Flag on a redirect or bitmap action: first pass the untracked UDP
/// datagrams whose bit is set in the slot's pass bitmap. Never on
/// [`ACTION_DROP`]; turning the fast path off writes plain actions, which
/// stops passing as well as dropping.
pub const ACTION_PASS: u32 = 0x100;
/// The action without [`ACTION_PASS`].
pub const ACTION_MASK: u32 = 0xff;

/// Bytes of one keep bitmap (2^20 bits).
pub const KEEP_BITMAP_BYTES: u32 = (shoal_dataplane::bucket::BUCKETS / 8) as u32;
/// Bytes of one CPU's stats slot.
pub const STATS_SLOT_BYTES: u32 = 64;
/// Stats word: frames the fast path judged.
pub const STAT_JUDGED: usize = 0;
/// Stats word: frames dropped because their bucket bit was clear.
pub const STAT_DROPPED_BUCKET: usize = 1;
/// Stats word: frames dropped because their rule's action is drop.
pub const STAT_DROPPED_RULE: usize = 2;
/// Stats word: the bucket of the last frame judged on this CPU.
pub const STAT_LAST_BUCKET: usize = 3;
/// Stats word: the slot of the last frame judged on this CPU.
pub const STAT_LAST_SLOT: usize = 4;
/// Stats word: datagrams handed to the kernel stack (`XDP_PASS`).
pub const STAT_PASSED: usize = 5;
/// The UDP ports of IKE, which userspace must see (ESP follows IKE).
pub const IKE_PORTS: [u16; 2] = [500, 4500];

/// `bpf_map_lookup_elem`.
const HELPER_MAP_LOOKUP: i32 = 1;
/// `bpf_get_smp_processor_id`.
const HELPER_SMP_PROCESSOR_ID: i32 = 8;

/// The golden-ratio multiplier of `shoal_dataplane::hash::fold`.
const FOLD_MUL: u64 = 0x9e37_79b9_7f4a_7c15;
/// The multipliers of `shoal_dataplane::hash::mix64`.
const MIX_MUL_1: u64 = 0xff51_afd7_ed55_8ccd;
const MIX_MUL_2: u64 = 0xc4ce_b9fe_1a85_ec53;

const ETH_HLEN: i16 = 14;
const VLAN_HLEN: i16 = 4;
const IPV4_MIN_HLEN: i32 = 20;

/// One port rule as the program matches it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FastRule {
    /// Index of the rule in the cluster map (and the spec).
    pub rule: usize,
    /// The rule's VIP; `None` covers every VIP.
    pub vip: Option<Ipv4Addr>,
    /// First destination port covered.
    pub port_start: u16,
    /// Last destination port covered.
    pub port_end: u16,
    /// Covers TCP.
    pub tcp: bool,
    /// Covers UDP.
    pub udp: bool,
    /// The affinity of a multiple-host rule (its frames are hashed); `None`
    /// for single-host and disabled rules (bucket 0, as in the pipeline).
    pub affinity: Option<Affinity>,
    /// Its UDP datagrams open no descriptor (no extended affinity), so the
    /// pipeline's verdict on them is the bucket's owner alone: they may be
    /// passed in the kernel.
    pub udp_untracked: bool,
}

/// What the program is compiled for: the rules that can match an IPv4 frame,
/// in lookup order (a rule's position is its slot), and the hash seed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FastPathLayout {
    /// The cluster's hash seed (`ClusterMap::seed`).
    pub seed: u64,
    /// Rules in lookup order.
    pub rules: Vec<FastRule>,
}

impl FastPathLayout {
    /// The layout of `map`: its rules for all VIPs or an IPv4 VIP, ordered
    /// as `ClusterMap::rule_for` tries them (specific VIP first, then lowest
    /// port start, then configuration order). Rules for an IPv6 VIP never
    /// match an IPv4 frame and are left out; their relative order is kept,
    /// so the first match is the same.
    pub fn of(map: &ClusterMap) -> Self {
        let mut order: Vec<usize> = (0..map.rules.len()).collect();
        order.sort_by_key(|&i| {
            (
                map.rules[i].rule.vip.is_none(),
                map.rules[i].rule.port_start,
                i,
            )
        });
        let rules = order
            .into_iter()
            .filter_map(|i| {
                let r = &map.rules[i].rule;
                let vip = match r.vip {
                    None => None,
                    Some(IpAddr::V4(a)) => Some(a),
                    Some(IpAddr::V6(_)) => return None,
                };
                let (tcp, udp) = match r.protocol {
                    Protocol::Tcp => (true, false),
                    Protocol::Udp => (false, true),
                    Protocol::Both => (true, true),
                };
                let affinity = match r.mode {
                    FilterMode::Multiple { affinity } => Some(affinity),
                    FilterMode::Single | FilterMode::Disabled => None,
                };
                Some(FastRule {
                    rule: i,
                    vip,
                    port_start: r.port_start,
                    port_end: r.port_end,
                    tcp,
                    udp,
                    affinity,
                    udp_untracked: r.extended_affinity_timeout_s == 0,
                })
            })
            .take(MAX_RULES)
            .collect();
        Self {
            seed: map.seed,
            rules,
        }
    }

    /// Number of slots (bitmaps, actions) the maps need: at least 1, so the
    /// maps can always be created.
    pub fn slots(&self) -> u32 {
        self.rules.len().max(1) as u32
    }
}

/// What an XDP attachment builds its fast path for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FastPathPlan {
    /// The rules and seed.
    pub layout: FastPathLayout,
    /// The NIC's own MAC, to pass kept untracked UDP to the kernel stack;
    /// `None` passes nothing (every kept frame goes through userspace).
    pub pass_to: Option<[u8; 6]>,
}

/// The maps the fast path reads and writes, by fd.
#[derive(Debug, Clone, Copy)]
pub struct FastPathFds<'a> {
    /// ARRAY, `u32` slot → `u32` action.
    pub actions: BorrowedFd<'a>,
    /// ARRAY, `u32` slot → keep bitmap of [`KEEP_BITMAP_BYTES`].
    pub keep: BorrowedFd<'a>,
    /// ARRAY, `u32` CPU → [`STATS_SLOT_BYTES`] of `u64` counters.
    pub stats: BorrowedFd<'a>,
    /// ARRAY, `u32` slot → pass bitmap of [`KEEP_BITMAP_BYTES`].
    pub pass: BorrowedFd<'a>,
    /// The NIC's own MAC: passed datagrams get it as destination (the stack
    /// drops frames for another host's MAC). `None`: the program passes
    /// nothing.
    pub pass_to: Option<[u8; 6]>,
}

/// The frame's bytes as a load of their width sees them.
fn raw32(octets: [u8; 4]) -> u32 {
    u32::from_ne_bytes(octets)
}

fn raw16(value: u16) -> u32 {
    u32::from(u16::from_ne_bytes(value.to_be_bytes()))
}

/// `x ^= x >> 33` with `tmp` as scratch.
fn xor_shift(asm: &mut Asm, x: Reg, tmp: Reg) {
    asm.mov64_reg(tmp, x);
    asm.alu64_imm(Alu::Rsh, tmp, 33);
    asm.alu64_reg(Alu::Xor, x, tmp);
}

/// `x = mix64(x)` (`shoal_dataplane::hash::mix64`), `tmp` as scratch.
fn mix64(asm: &mut Asm, x: Reg, tmp: Reg) {
    xor_shift(asm, x, tmp);
    asm.ld_imm64(tmp, MIX_MUL_1);
    asm.alu64_reg(Alu::Mul, x, tmp);
    xor_shift(asm, x, tmp);
    asm.ld_imm64(tmp, MIX_MUL_2);
    asm.alu64_reg(Alu::Mul, x, tmp);
    xor_shift(asm, x, tmp);
}

/// `h = fold(h, word)` (`shoal_dataplane::hash::fold`): `rotl(mix64(h ^
/// word * K), 23)`; `tmp` as scratch, `word` is left unchanged.
fn fold(asm: &mut Asm, h: Reg, word: Reg, tmp: Reg) {
    asm.ld_imm64(tmp, FOLD_MUL);
    asm.alu64_reg(Alu::Mul, tmp, word);
    asm.alu64_reg(Alu::Xor, h, tmp);
    mix64(asm, h, tmp);
    asm.mov64_reg(tmp, h);
    asm.alu64_imm(Alu::Rsh, tmp, 64 - 23);
    asm.alu64_imm(Alu::Lsh, h, 23);
    asm.alu64_reg(Alu::Or, h, tmp);
}

/// Emits the fast path at `entry`. On entry `r2` = `data`, `r3` =
/// `data_end`, `r6` = the context; frames it does not drop continue at
/// `redirect` (which needs only `r6`). `vips` are the cluster's IPv4 VIPs.
pub fn emit(
    asm: &mut Asm,
    layout: &FastPathLayout,
    fds: FastPathFds<'_>,
    vips: &[Ipv4Addr],
    entry: Label,
    redirect: Label,
) {
    let untagged = asm.label();
    let tagged = asm.label();
    let ip = asm.label();
    let l4 = asm.label();
    let is_vip = asm.label();
    let hash = asm.label();
    let judge = asm.label();
    let keep = asm.label();
    let drop_bucket = asm.label();
    let drop_rule = asm.label();
    let passed = asm.label();
    let account = asm.label();
    let verdict = asm.label();
    // Whether any datagram can be passed: stack word `PASS_OK` then says
    // whether this frame may be (untagged, UDP, not IKE, an untracked rule).
    let passing = fds.pass_to.is_some() && layout.rules.iter().any(|r| r.udp && r.udp_untracked);

    asm.bind(entry);
    if layout.rules.is_empty() || vips.is_empty() {
        asm.ja(redirect);
        return;
    }

    // Layer 2: untagged or one tag; r7 = the IPv4 header.
    asm.ldx(Size::H, Reg::R5, Reg::R2, ETH_HLEN - 2);
    asm.jmp32_imm(Cond::Eq, Reg::R5, raw16(0x0800), untagged);
    asm.jmp32_imm(Cond::Eq, Reg::R5, raw16(0x8100), tagged);
    asm.jmp32_imm(Cond::Eq, Reg::R5, raw16(0x88a8), tagged);
    asm.ja(redirect);

    asm.bind(tagged);
    if passing {
        asm.st_imm(Size::W, Reg::R10, PASS_OK, 0);
    }
    asm.mov64_reg(Reg::R4, Reg::R2);
    asm.add64_imm(Reg::R4, i32::from(ETH_HLEN + VLAN_HLEN));
    asm.jmp_reg(Cond::Gt, Reg::R4, Reg::R3, redirect);
    asm.ldx(Size::H, Reg::R5, Reg::R2, ETH_HLEN + VLAN_HLEN - 2);
    asm.jmp32_imm(Cond::Ne, Reg::R5, raw16(0x0800), redirect);
    asm.mov64_reg(Reg::R7, Reg::R2);
    asm.add64_imm(Reg::R7, i32::from(ETH_HLEN + VLAN_HLEN));
    asm.ja(ip);

    asm.bind(untagged);
    if passing {
        asm.st_imm(Size::W, Reg::R10, PASS_OK, 1);
    }
    asm.mov64_reg(Reg::R7, Reg::R2);
    asm.add64_imm(Reg::R7, i32::from(ETH_HLEN));

    // IPv4 header: version 4, IHL ≥ 5, whole datagram, TCP or UDP.
    asm.bind(ip);
    asm.mov64_reg(Reg::R4, Reg::R7);
    asm.add64_imm(Reg::R4, IPV4_MIN_HLEN);
    asm.jmp_reg(Cond::Gt, Reg::R4, Reg::R3, redirect);
    asm.ldx(Size::B, Reg::R5, Reg::R7, 0);
    asm.mov64_reg(Reg::R4, Reg::R5);
    asm.alu64_imm(Alu::And, Reg::R4, 0xf0);
    asm.jmp32_imm(Cond::Ne, Reg::R4, 0x40, redirect);
    asm.alu64_imm(Alu::And, Reg::R5, 0x0f);
    asm.alu64_imm(Alu::Lsh, Reg::R5, 2);
    asm.jmp_imm(Cond::Lt, Reg::R5, IPV4_MIN_HLEN, redirect);
    asm.ldx(Size::H, Reg::R4, Reg::R7, 6);
    asm.to_be(Reg::R4, 16);
    asm.alu64_imm(Alu::And, Reg::R4, 0x3fff);
    asm.jmp_imm(Cond::Ne, Reg::R4, 0, redirect);
    asm.ldx(Size::B, Reg::R9, Reg::R7, 9);
    asm.jmp32_imm(Cond::Eq, Reg::R9, 6, l4);
    asm.jmp32_imm(Cond::Eq, Reg::R9, 17, l4);
    asm.ja(redirect);

    // r1 = destination (as loaded); a VIP or not ours to judge.
    asm.bind(l4);
    asm.ldx(Size::W, Reg::R1, Reg::R7, 16);
    for vip in vips {
        asm.jmp32_imm(Cond::Eq, Reg::R1, raw32(vip.octets()), is_vip);
    }
    asm.ja(redirect);

    // r0 = client (as a number), r8 = client port, r4 = server port.
    asm.bind(is_vip);
    asm.ldx(Size::W, Reg::R0, Reg::R7, 12);
    asm.to_be(Reg::R0, 32);
    if passing {
        // r2 = the IP total length (r2 is free from here on).
        asm.ldx(Size::H, Reg::R2, Reg::R7, 2);
        asm.to_be(Reg::R2, 16);
    }
    asm.alu64_reg(Alu::Add, Reg::R7, Reg::R5);
    asm.mov64_reg(Reg::R4, Reg::R7);
    asm.add64_imm(Reg::R4, 4);
    asm.jmp_reg(Cond::Gt, Reg::R4, Reg::R3, redirect);
    asm.ldx(Size::H, Reg::R8, Reg::R7, 0);
    asm.to_be(Reg::R8, 16);
    asm.ldx(Size::H, Reg::R4, Reg::R7, 2);
    asm.to_be(Reg::R4, 16);
    if passing {
        // Only what the pipeline reads as a well-formed datagram may pass:
        // UDP, no IP options, the datagram inside the frame, 8 <= UDP
        // length <= IP payload (the checks of its common-frame reader), not
        // to an IKE port. r7 = the UDP header, r2 = the IP total length,
        // r5 = the IP header length (free after this).
        let no = asm.label();
        let checked = asm.label();
        asm.jmp32_imm(Cond::Ne, Reg::R9, 17, no);
        asm.jmp_imm(Cond::Ne, Reg::R5, IPV4_MIN_HLEN, no);
        for port in IKE_PORTS {
            asm.jmp32_imm(Cond::Eq, Reg::R4, u32::from(port), no);
        }
        asm.jmp_imm(Cond::Lt, Reg::R2, IPV4_MIN_HLEN + 8, no);
        asm.add64_imm(Reg::R2, -IPV4_MIN_HLEN);
        asm.mov64_reg(Reg::R5, Reg::R7);
        asm.alu64_reg(Alu::Add, Reg::R5, Reg::R2);
        asm.jmp_reg(Cond::Gt, Reg::R5, Reg::R3, no);
        asm.mov64_reg(Reg::R5, Reg::R7);
        asm.add64_imm(Reg::R5, 8);
        asm.jmp_reg(Cond::Gt, Reg::R5, Reg::R3, no);
        asm.ldx(Size::H, Reg::R5, Reg::R7, 4);
        asm.to_be(Reg::R5, 16);
        asm.jmp_imm(Cond::Lt, Reg::R5, 8, no);
        asm.jmp_reg(Cond::Gt, Reg::R5, Reg::R2, no);
        asm.ja(checked);
        asm.bind(no);
        asm.st_imm(Size::W, Reg::R10, PASS_OK, 0);
        asm.bind(checked);
    }
    asm.mov64_reg(Reg::R7, Reg::R0);

    // The rule: first match in lookup order. On a match r9 = slot and
    // (r7, r8) = the hash inputs the rule's affinity selects. The verifier
    // refuses unreachable code, so nothing is emitted after a rule that
    // matches every frame, and the hash only when some rule jumps to it.
    let mut falls_through = true;
    let mut hashed = false;
    for (slot, rule) in layout.rules.iter().enumerate() {
        if !rule.tcp && !rule.udp {
            continue;
        }
        let catch_all = rule.vip.is_none()
            && rule.tcp
            && rule.udp
            && rule.port_start == 0
            && rule.port_end == u16::MAX;
        hashed |= rule.affinity.is_some();
        let next = asm.label();
        if let Some(vip) = rule.vip {
            asm.jmp32_imm(Cond::Ne, Reg::R1, raw32(vip.octets()), next);
        }
        if !rule.udp {
            asm.jmp32_imm(Cond::Ne, Reg::R9, 6, next);
        }
        if !rule.tcp {
            asm.jmp32_imm(Cond::Ne, Reg::R9, 17, next);
        }
        if rule.port_start > 0 {
            asm.jmp32_imm(Cond::Lt, Reg::R4, u32::from(rule.port_start), next);
        }
        if rule.port_end < u16::MAX {
            asm.jmp32_imm(Cond::Gt, Reg::R4, u32::from(rule.port_end), next);
        }
        if passing && rule.udp && !rule.udp_untracked {
            asm.st_imm(Size::W, Reg::R10, PASS_OK, 0);
        }
        // Slots are below MAX_RULES.
        asm.mov64_imm(Reg::R9, slot as i32);
        match rule.affinity {
            Some(Affinity::None) => asm.ja(hash),
            Some(Affinity::Single) => {
                asm.mov64_imm(Reg::R8, 0);
                asm.ja(hash);
            }
            Some(Affinity::Network) => {
                asm.mov64_imm(Reg::R8, 0);
                asm.alu64_imm(Alu::And, Reg::R7, 0xffff_ff00_u32 as i32);
                asm.ja(hash);
            }
            None => {
                asm.mov64_imm(Reg::R7, 0);
                asm.ja(judge);
            }
        }
        asm.bind(next);
        if catch_all {
            falls_through = false;
            break;
        }
    }
    if falls_through {
        asm.ja(redirect);
    }

    // r7 = bucket_of(fold(fold(seed ^ 4, client), port)).
    asm.bind(hash);
    if hashed {
        asm.ld_imm64(Reg::R0, layout.seed ^ 4);
        fold(asm, Reg::R0, Reg::R7, Reg::R1);
        fold(asm, Reg::R0, Reg::R8, Reg::R1);
        asm.alu64_imm(
            Alu::Rsh,
            Reg::R0,
            64 - shoal_dataplane::bucket::BUCKET_BITS as i32,
        );
        asm.mov64_reg(Reg::R7, Reg::R0);
    }

    // The slot's action, then (for a bitmap) the bucket's bit.
    asm.bind(judge);
    lookup_slot(asm, fds.actions.as_raw_fd());
    asm.jmp_imm(Cond::Eq, Reg::R0, 0, redirect);
    asm.ldx(Size::W, Reg::R1, Reg::R0, 0);
    asm.jmp32_imm(Cond::Eq, Reg::R1, ACTION_DROP, drop_rule);
    if passing {
        // The pass bitmap, when the action says so and the frame may pass.
        let reload = asm.label();
        let no = asm.label();
        asm.mov64_reg(Reg::R2, Reg::R1);
        asm.alu64_imm(Alu::And, Reg::R2, ACTION_PASS as i32);
        asm.jmp_imm(Cond::Eq, Reg::R2, 0, no);
        asm.ldx(Size::W, Reg::R2, Reg::R10, PASS_OK);
        asm.jmp_imm(Cond::Eq, Reg::R2, 0, no);
        asm.stx(Size::W, Reg::R10, Reg::R1, SAVED_ACTION);
        lookup_slot(asm, fds.pass.as_raw_fd());
        asm.jmp_imm(Cond::Eq, Reg::R0, 0, reload);
        bucket_bit(asm);
        asm.jmp_imm(Cond::Ne, Reg::R1, 0, passed);
        asm.bind(reload);
        asm.ldx(Size::W, Reg::R1, Reg::R10, SAVED_ACTION);
        asm.bind(no);
        asm.alu64_imm(Alu::And, Reg::R1, ACTION_MASK as i32);
    }
    asm.jmp32_imm(Cond::Ne, Reg::R1, ACTION_BITMAP, keep);
    lookup_slot(asm, fds.keep.as_raw_fd());
    asm.jmp_imm(Cond::Eq, Reg::R0, 0, keep);
    bucket_bit(asm);
    asm.jmp_imm(Cond::Eq, Reg::R1, 0, drop_bucket);

    // r8 = the stats word to add one to besides "judged" (0: none).
    asm.bind(keep);
    asm.mov64_imm(Reg::R8, 0);
    asm.ja(account);
    if passing {
        asm.bind(passed);
        asm.mov64_imm(Reg::R8, STAT_PASSED as i32);
        asm.ja(account);
    }
    asm.bind(drop_bucket);
    asm.mov64_imm(Reg::R8, STAT_DROPPED_BUCKET as i32);
    asm.ja(account);
    asm.bind(drop_rule);
    asm.mov64_imm(Reg::R8, STAT_DROPPED_RULE as i32);

    asm.bind(account);
    asm.call(HELPER_SMP_PROCESSOR_ID);
    asm.stx(Size::W, Reg::R10, Reg::R0, -4);
    asm.ld_map_fd(Reg::R1, fds.stats.as_raw_fd());
    asm.mov64_reg(Reg::R2, Reg::R10);
    asm.add64_imm(Reg::R2, -4);
    asm.call(HELPER_MAP_LOOKUP);
    asm.jmp_imm(Cond::Eq, Reg::R0, 0, verdict);
    let word = |w: usize| (w * 8) as i16;
    asm.ldx(Size::Dw, Reg::R1, Reg::R0, word(STAT_JUDGED));
    asm.add64_imm(Reg::R1, 1);
    asm.stx(Size::Dw, Reg::R0, Reg::R1, word(STAT_JUDGED));
    asm.stx(Size::Dw, Reg::R0, Reg::R7, word(STAT_LAST_BUCKET));
    asm.stx(Size::Dw, Reg::R0, Reg::R9, word(STAT_LAST_SLOT));
    for counter in [STAT_DROPPED_BUCKET, STAT_DROPPED_RULE, STAT_PASSED] {
        let other = asm.label();
        asm.jmp_imm(Cond::Ne, Reg::R8, counter as i32, other);
        asm.ldx(Size::Dw, Reg::R1, Reg::R0, word(counter));
        asm.add64_imm(Reg::R1, 1);
        asm.stx(Size::Dw, Reg::R0, Reg::R1, word(counter));
        asm.bind(other);
    }

    asm.bind(verdict);
    asm.jmp_imm(Cond::Eq, Reg::R8, 0, redirect);
    let rewrite = asm.label();
    if passing {
        asm.jmp_imm(Cond::Eq, Reg::R8, STAT_PASSED as i32, rewrite);
    }
    asm.mov64_imm(Reg::R0, super::XdpAction::Drop as i32);
    asm.exit();

    // The NIC's MAC as destination (three aligned 16-bit stores), then the
    // stack. The packet pointers are read again: calls clobbered them.
    if let (true, Some(mac)) = (passing, fds.pass_to) {
        asm.bind(rewrite);
        asm.ldx(Size::W, Reg::R2, Reg::R6, 0);
        asm.ldx(Size::W, Reg::R3, Reg::R6, 4);
        asm.mov64_reg(Reg::R4, Reg::R2);
        asm.add64_imm(Reg::R4, ETH_HLEN.into());
        asm.jmp_reg(Cond::Gt, Reg::R4, Reg::R3, redirect);
        for (i, pair) in mac.chunks_exact(2).enumerate() {
            let half = i32::from(u16::from_ne_bytes([pair[0], pair[1]]));
            asm.st_imm(Size::H, Reg::R2, (2 * i) as i16, half);
        }
        asm.mov64_imm(Reg::R0, super::XdpAction::Pass as i32);
        asm.exit();
    }
}

/// Stack word: whether the frame may be passed (set on every path to the
/// judge when the program passes at all).
const PASS_OK: i16 = -8;
/// Stack word: the slot's action, kept across the pass bitmap lookup.
const SAVED_ACTION: i16 = -12;

/// `r0 = lookup(map, slot)` for the slot in `r9` (key at `fp - 4`).
fn lookup_slot(asm: &mut Asm, map_fd: i32) {
    asm.stx(Size::W, Reg::R10, Reg::R9, -4);
    asm.ld_map_fd(Reg::R1, map_fd);
    asm.mov64_reg(Reg::R2, Reg::R10);
    asm.add64_imm(Reg::R2, -4);
    asm.call(HELPER_MAP_LOOKUP);
}

/// `r1 = bit r7 of the bitmap at r0` (0 or 1); clobbers `r0` and `r2`.
fn bucket_bit(asm: &mut Asm) {
    asm.mov64_reg(Reg::R1, Reg::R7);
    asm.alu64_imm(Alu::Rsh, Reg::R1, 6);
    asm.alu64_imm(Alu::Lsh, Reg::R1, 3);
    asm.alu64_reg(Alu::Add, Reg::R0, Reg::R1);
    asm.ldx(Size::Dw, Reg::R1, Reg::R0, 0);
    asm.mov64_reg(Reg::R2, Reg::R7);
    asm.alu64_imm(Alu::And, Reg::R2, 63);
    asm.alu64_reg(Alu::Rsh, Reg::R1, Reg::R2);
    asm.alu64_imm(Alu::And, Reg::R1, 1);
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_dataplane::map::View;
    use shoal_dataplane::{ClusterMode, ClusterSpec, HostId, HostSet, PortRule};

    fn spec() -> ClusterSpec {
        let vip: IpAddr = "10.0.0.1".parse().unwrap();
        let vip6: IpAddr = "fd00::1".parse().unwrap();
        let rules = vec![
            PortRule::new(
                None,
                (0, 65535),
                Protocol::Both,
                FilterMode::Multiple {
                    affinity: Affinity::Single,
                },
            ),
            PortRule::new(Some(vip6), (80, 80), Protocol::Tcp, FilterMode::Single),
            PortRule::new(Some(vip), (443, 443), Protocol::Tcp, FilterMode::Disabled),
            PortRule::new(
                Some(vip),
                (53, 53),
                Protocol::Udp,
                FilterMode::Multiple {
                    affinity: Affinity::None,
                },
            ),
        ];
        ClusterSpec {
            vips: vec![vip, vip6],
            mode: ClusterMode::Unicast,
            ipv6_network_prefix: 64,
            rules,
            bucket_seed: 0x5eed,
        }
    }

    #[test]
    fn layout_follows_lookup_order_and_skips_ipv6_rules() {
        let spec = spec();
        let map = ClusterMap::build(
            &spec,
            &View::converged(&spec, HostSet::EMPTY),
            HostId::new(1).unwrap(),
            0,
        );
        let l = FastPathLayout::of(&map);
        assert_eq!(l.seed, map.seed);
        let order: Vec<usize> = l.rules.iter().map(|r| r.rule).collect();
        assert_eq!(order, vec![3, 2, 0]);
        assert_eq!(l.rules[0].affinity, Some(Affinity::None));
        assert_eq!((l.rules[0].tcp, l.rules[0].udp), (false, true));
        assert_eq!(l.rules[1].affinity, None);
        assert_eq!(l.rules[2].vip, None);
        assert_eq!(l.slots(), 3);
        // Every IPv4 (VIP, port, protocol) finds the same rule both ways.
        for port in [0u16, 52, 53, 54, 442, 443, 444, 65535] {
            for proto in [6u8, 17] {
                let want = map.rule_for("10.0.0.1".parse().unwrap(), port, proto);
                let got = l
                    .rules
                    .iter()
                    .find(|r| {
                        (if proto == 6 { r.tcp } else { r.udp })
                            && r.port_start <= port
                            && port <= r.port_end
                    })
                    .map(|r| r.rule);
                assert_eq!(got, want, "port {port} proto {proto}");
            }
        }
    }

    #[test]
    fn empty_layouts_emit_a_plain_redirect() {
        let mut asm = Asm::new();
        let entry = asm.label();
        let redirect = asm.label();
        let f = std::fs::File::open("/dev/null").unwrap();
        use std::os::fd::AsFd;
        let fds = FastPathFds {
            actions: f.as_fd(),
            keep: f.as_fd(),
            stats: f.as_fd(),
            pass: f.as_fd(),
            pass_to: None,
        };
        let layout = FastPathLayout {
            seed: 1,
            rules: Vec::new(),
        };
        emit(
            &mut asm,
            &layout,
            fds,
            &[Ipv4Addr::LOCALHOST],
            entry,
            redirect,
        );
        asm.bind(redirect);
        asm.exit();
        assert_eq!(asm.finish().unwrap().len(), 2);
    }
}
