//! The frame path: parse ▶ match VIP/rule ▶ hash ▶ bucket owner ▶
//! descriptors ▶ verdict, for one local host.
//!
//! # Contract
//!
//! * Sans-IO and deterministic: a [`Dataplane`] judges bytes at a given time
//!   (`now`, nanoseconds of any monotonic clock) against the current
//!   [`ClusterMap`] and its own descriptor table. No syscalls, no clock, no
//!   allocation per frame; bounded work per frame.
//! * Exactly one (DESIGN.md invariant 1): with every host holding the same
//!   converged map, each frame for a VIP is kept by exactly one host: the one
//!   that tracks its connection, else the owner of its bucket; a single-host
//!   rule's frames by its best live host; a disabled rule's by nobody;
//!   traffic no rule covers by the default host.
//! * Survival (invariant 3): a frame of a connection this host tracks is kept
//!   here even after its bucket moved away. A non-SYN frame the new owner does
//!   not track, in a group another host reports dirty, is left to that host.
//!   A SYN always follows the current map; a tracked entry on a host that no
//!   longer owns the bucket is retired by a new SYN of the same 5-tuple.
//! * Fragments (invariant 5): every fragment of a datagram, first or later,
//!   is judged by the client address alone (ports are absent from later
//!   fragments), under the lowest-port rule for that VIP and protocol, so all
//!   of them land on one host. With Single or Network affinity this is the
//!   same host as the unfragmented traffic of that client; with None
//!   affinity it may differ (NLB's advice stands: no None affinity for UDP).
//! * GRE follows PPTP (invariant 4): keeping a frame of a TCP connection to
//!   port 1723 creates or refreshes a GRE link entry for (client, VIP); GRE
//!   from that client is kept only where such an entry lives. ESP follows
//!   IKE (UDP 500/4500) the same way.
//! * Malformed frames are never errors: they are dropped and counted by reason.
//! * Two paths, one behaviour: [`Dataplane::judge`] reads the common frame
//!   (untagged Ethernet II, option-less IPv4, a whole TCP, UDP, GRE or ESP
//!   datagram to a VIP, at least 54 bytes) at fixed offsets and judges it
//!   on integers against a compiled form of the map (per-VIP port segments
//!   that carry each rule's owner table); every other frame takes the
//!   general parser ([`Dataplane::judge_general`]). Verdicts, descriptor
//!   state and counters are the same on both, frame by frame: the
//!   property tests below hold the shortcut to the general path.
//! * The batch loop ([`Dataplane::judge_batch`]) inlines only the hot
//!   part of the shortcut (a common UDP or TCP frame to the first VIP
//!   under a multiple-host rule whose verdict needs no descriptor), and
//!   counts `frames` and `for_cluster` once per batch; every other frame
//!   leaves the loop through one call. The counters after a batch are
//!   those of judging its frames one by one (tested).

use std::net::IpAddr;
use std::sync::Arc;

use crate::bucket::{bucket_of, group_of, BucketMap};
use crate::descriptor::{DescriptorConfig, DescriptorTable, Entry, FlowKey, Kind, Slot, State};
use crate::hash::{affinity_hash, affinity_masks_v4, masked_hash_v4};
use crate::map::{ClusterMap, RuleOwner};
use crate::model::{Affinity, ClusterMode, FilterMode, HostId};
use crate::packet::{parse_frame, Fragment, FrameInfo, FrameKind, IpInfo, Malformed, L4};
use crate::wire::{esp, ip_proto, GrePacket};

/// TCP flag bits.
const FIN: u8 = 0x01;
const SYN: u8 = 0x02;
const RST: u8 = 0x04;
const ACK: u8 = 0x10;

/// PPTP's control port.
pub const PPTP_PORT: u16 = 1723;
/// IKE's ports.
pub const IKE_PORTS: [u16; 2] = [500, 4500];
/// shoal's heartbeat EtherType (NLB's).
pub const HEARTBEAT_ETHERTYPE: u16 = 0x886f;

/// Why a frame was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// Another host keeps it (the normal case for most frames).
    NotOwner,
    /// Another host still serves connections in its bucket group.
    DirtyElsewhere,
    /// Its port rule is disabled (cluster-wide or on this host).
    RuleDisabled,
    /// No live host may take it (empty view, or every weight zero).
    NoOwner,
    /// Sent to the cluster MAC but not to a VIP.
    ForeignDestination,
    /// Not IP, ARP or heartbeat, sent to the cluster MAC.
    NotIp,
    /// GRE with no PPTP control connection tracked here.
    GreWithoutPptp,
    /// ESP with no IKE session tracked here.
    EspWithoutIke,
    /// Could not be parsed.
    Malformed(Malformed),
}

impl DropReason {
    /// Reasons other than malformed, in counter order.
    pub const POLICY: [DropReason; 8] = [
        DropReason::NotOwner,
        DropReason::DirtyElsewhere,
        DropReason::RuleDisabled,
        DropReason::NoOwner,
        DropReason::ForeignDestination,
        DropReason::NotIp,
        DropReason::GreWithoutPptp,
        DropReason::EspWithoutIke,
    ];

    /// A stable snake_case name for counters and JSON.
    pub fn name(self) -> &'static str {
        match self {
            DropReason::NotOwner => "not_owner",
            DropReason::DirtyElsewhere => "dirty_elsewhere",
            DropReason::RuleDisabled => "rule_disabled",
            DropReason::NoOwner => "no_owner",
            DropReason::ForeignDestination => "foreign_destination",
            DropReason::NotIp => "not_ip",
            DropReason::GreWithoutPptp => "gre_without_pptp",
            DropReason::EspWithoutIke => "esp_without_ike",
            DropReason::Malformed(m) => m.name(),
        }
    }

    /// Its index in [`Self::POLICY`] (a match, not a search: counted once
    /// per dropped frame). Tested against the table.
    #[inline(always)]
    fn policy_index(self) -> Option<usize> {
        Some(match self {
            DropReason::NotOwner => 0,
            DropReason::DirtyElsewhere => 1,
            DropReason::RuleDisabled => 2,
            DropReason::NoOwner => 3,
            DropReason::ForeignDestination => 4,
            DropReason::NotIp => 5,
            DropReason::GreWithoutPptp => 6,
            DropReason::EspWithoutIke => 7,
            DropReason::Malformed(_) => return None,
        })
    }
}

/// Frames the control plane handles.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Control {
    /// A cluster heartbeat (EtherType 0x886F).
    Heartbeat,
    /// An ARP request for a VIP.
    Arp,
    /// An IPv6 neighbour solicitation for a VIP.
    Nd,
    /// IGMP (igmp mode): queries to answer, reports to note.
    Igmp,
}

impl Control {
    /// Every kind, in counter order.
    pub const ALL: [Control; 4] = [Control::Heartbeat, Control::Arp, Control::Nd, Control::Igmp];

    /// A stable snake_case name.
    pub fn name(self) -> &'static str {
        match self {
            Control::Heartbeat => "heartbeat",
            Control::Arp => "arp",
            Control::Nd => "nd",
            Control::Igmp => "igmp",
        }
    }
}

/// What to do with one frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Verdict {
    /// Cluster traffic this host serves: deliver to the local stack.
    Keep,
    /// Cluster traffic this host does not serve, or bad input.
    Drop(DropReason),
    /// For the control plane.
    Control(Control),
    /// Not cluster traffic: the kernel's business.
    #[default]
    Pass,
}

/// Number of [`Malformed`] reasons (the length of [`Counters::malformed`]).
pub const MALFORMED_REASONS: usize = Malformed::ALL.len();

/// Per-dataplane counters (one per poll loop; summed for reports).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Frames judged.
    pub frames: u64,
    /// Frames addressed to a VIP (kept or dropped by policy).
    pub for_cluster: u64,
    /// Frames kept.
    pub kept: u64,
    /// Frames passed to the kernel.
    pub passed: u64,
    /// Control frames, by [`Control::ALL`] index.
    pub control: [u64; 4],
    /// Policy drops, by [`DropReason::POLICY`] index.
    pub dropped: [u64; 8],
    /// Malformed frames, by [`Malformed::ALL`] index.
    pub malformed: [u64; MALFORMED_REASONS],
    /// SYNs kept without a descriptor because the table had no room.
    pub untracked: u64,
    /// TCP segments other than a SYN that opened a descriptor: connections
    /// this owner took over mid-stream because no host reported them (their
    /// old host left, or tracked them nowhere). Each such connection is
    /// reset by this host's kernel unless it already holds the socket, so a
    /// count that grows while every host is up points at a host whose
    /// connections went unreported.
    pub adopted: u64,
}

impl Counters {
    /// Adds a verdict.
    #[inline(always)]
    pub fn count(&mut self, v: Verdict) {
        self.frames += 1;
        match v {
            Verdict::Keep => self.kept += 1,
            Verdict::Pass => self.passed += 1,
            Verdict::Control(c) => self.control[c as usize] += 1,
            Verdict::Drop(DropReason::Malformed(m)) => {
                if let Some(n) = self.malformed.get_mut(m as usize) {
                    *n += 1;
                }
            }
            Verdict::Drop(r) => {
                if let Some(i) = r.policy_index() {
                    self.dropped[i] += 1;
                }
            }
        }
    }

    /// Sum of malformed frames.
    pub fn malformed_total(&self) -> u64 {
        self.malformed.iter().sum()
    }

    /// Adds `other` into `self`.
    pub fn merge(&mut self, other: &Counters) {
        self.frames += other.frames;
        self.for_cluster += other.for_cluster;
        self.kept += other.kept;
        self.passed += other.passed;
        self.untracked += other.untracked;
        self.adopted += other.adopted;
        for (a, b) in self.control.iter_mut().zip(other.control) {
            *a += b;
        }
        for (a, b) in self.dropped.iter_mut().zip(other.dropped) {
            *a += b;
        }
        for (a, b) in self.malformed.iter_mut().zip(&other.malformed) {
            *a += b;
        }
    }
}

/// The filter of one host (one per poll loop).
#[derive(Debug)]
pub struct Dataplane {
    map: Arc<ClusterMap>,
    table: DescriptorTable,
    counters: Counters,
    /// The map compiled for the common IPv4 frame.
    fast: FastV4,
    /// The (seed, IPv6 network prefix) every tracked entry's bucket was
    /// computed under: while it is the map's, a TCP segment of a bucket
    /// this host does not own, in a group where it tracks nothing foreign,
    /// skips the table probe (see [`DescriptorTable::tracks_foreign`]).
    buckets_under: (u64, u8),
    /// Whether `buckets_under` is the map's (see [`Self::rebind_probe`]).
    skip_probe: bool,
}

/// A rule as [`segments`] resolves it: [`ClusterMap::rule_for`] for an
/// IPv4 VIP, without `IpAddr` comparisons.
#[derive(Clone, Copy, Debug)]
struct RuleV4 {
    /// `None`: every VIP.
    vip: Option<u32>,
    tcp: bool,
    udp: bool,
    port_start: u16,
    port_end: u16,
    index: usize,
}

/// The rules that can cover an IPv4 VIP, in the map's lookup order (rules
/// for an IPv6 VIP never do).
fn rules_v4(map: &ClusterMap) -> Vec<RuleV4> {
    map.order
        .iter()
        .filter_map(|&index| {
            let r = &map.rules.get(index)?.rule;
            let vip = match r.vip {
                None => None,
                Some(IpAddr::V4(a)) => Some(u32::from(a)),
                Some(IpAddr::V6(_)) => return None,
            };
            Some(RuleV4 {
                vip,
                tcp: r.protocol.covers(6),
                udp: r.protocol.covers(17),
                port_start: r.port_start,
                port_end: r.port_end,
                index,
            })
        })
        .collect()
}

/// The fields the verdict needs from the common frame (see [`common_v4`]).
#[derive(Clone, Copy, Debug)]
struct CommonV4 {
    src: u32,
    dst: u32,
    proto: u8,
    /// TCP and UDP only (0 for GRE and ESP).
    src_port: u16,
    dst_port: u16,
    /// TCP only.
    flags: u8,
}

impl CommonV4 {
    /// The flow as the general path sees it.
    fn flow(&self) -> Flow {
        Flow {
            client: IpAddr::V4(self.src.into()),
            vip: IpAddr::V4(self.dst.into()),
            client_port: self.src_port,
            server_port: self.dst_port,
            proto: self.proto,
        }
    }
}

/// Bytes the common frame is read from at fixed offsets: Ethernet, the
/// option-less IPv4 header and the fixed TCP header (every Ethernet frame
/// has them: the minimum is 60 bytes).
const COMMON_LEN: usize = 14 + 20 + 20;
const ETH: usize = 14;
const IP: usize = 20;
/// Where the transport header starts in a common frame.
const L4: usize = ETH + IP;

/// The first [`COMMON_LEN`] bytes of a common frame and the length of its
/// IPv4 payload.
type CommonHeader<'a> = (&'a [u8; COMMON_LEN], usize);

/// The Ethernet and IPv4 part of [`common_v4`]: untagged Ethernet II, IPv4
/// without options, a whole datagram inside the frame, at least
/// [`COMMON_LEN`] bytes, checked as [`parse_frame`] checks them.
#[inline(always)]
fn common_ipv4(frame: &[u8]) -> Option<CommonHeader<'_>> {
    // One length check; the fixed offsets below then need none.
    let h: &[u8; COMMON_LEN] = frame.get(..COMMON_LEN)?.try_into().ok()?;
    // EtherType IPv4 (0x0800), version 4 and IHL 5 (0x45).
    if u16::from_ne_bytes([h[12], h[13]]) != u16::from_ne_bytes([0x08, 0x00]) || h[14] != 0x45 {
        return None;
    }
    // A whole datagram: MF clear, offset 0 (the reserved and DF bits do not
    // matter to the parser), of at least a header, inside the frame
    // (`total - IP` wraps above any frame length when `total < IP`).
    let payload = usize::from(u16::from_be_bytes([h[16], h[17]])).wrapping_sub(IP);
    if u16::from_be_bytes([h[20], h[21]]) & 0x3fff != 0 || payload > frame.len() - L4 {
        return None;
    }
    Some((h, payload))
}

impl CommonV4 {
    /// A UDP datagram whose length field is right (8 <= length <= payload,
    /// as `parse_l4` checks it).
    #[inline(always)]
    fn udp((h, payload): CommonHeader<'_>) -> Option<Self> {
        let udp_len = usize::from(u16::from_be_bytes([h[L4 + 4], h[L4 + 5]]));
        if udp_len < 8 || udp_len > payload {
            return None;
        }
        Some(Self::ports(h, ip_proto::UDP, 0))
    }

    /// A TCP segment whose data offset is right (20 <= offset <= payload,
    /// as `parse_l4` checks it; so the fixed header is in the datagram).
    #[inline(always)]
    fn tcp((h, payload): CommonHeader<'_>) -> Option<Self> {
        let offset = usize::from(h[L4 + 12] >> 4) * 4;
        if offset < 20 || offset > payload {
            return None;
        }
        Some(Self::ports(h, ip_proto::TCP, h[L4 + 13]))
    }

    /// A GRE header as `parse_l4` checks it, or ESP of at least a header.
    #[inline(always)]
    fn gre_or_esp(frame: &[u8], (h, payload): CommonHeader<'_>) -> Option<Self> {
        let proto = h[23];
        match proto {
            ip_proto::GRE => {
                GrePacket::new_checked(frame.get(L4..L4 + payload)?).ok()?;
            }
            ip_proto::ESP if payload >= esp::HEADER_LEN => {}
            _ => return None,
        }
        Some(Self {
            src: u32::from_be_bytes([h[26], h[27], h[28], h[29]]),
            dst: u32::from_be_bytes([h[30], h[31], h[32], h[33]]),
            proto,
            src_port: 0,
            dst_port: 0,
            flags: 0,
        })
    }

    #[inline(always)]
    fn ports(h: &[u8; COMMON_LEN], proto: u8, flags: u8) -> Self {
        // Both ports in one load.
        let ports = u32::from_be_bytes([h[L4], h[L4 + 1], h[L4 + 2], h[L4 + 3]]);
        Self {
            src: u32::from_be_bytes([h[26], h[27], h[28], h[29]]),
            dst: u32::from_be_bytes([h[30], h[31], h[32], h[33]]),
            proto,
            src_port: (ports >> 16) as u16,
            dst_port: ports as u16,
            flags,
        }
    }
}

/// Reads the common frame — untagged Ethernet II, IPv4 without options,
/// a whole datagram, TCP, UDP, GRE or ESP, at least [`COMMON_LEN`] bytes —
/// at fixed offsets, with the very checks [`parse_frame`] makes on such a
/// frame, so that whenever this returns `Some`, `parse_frame` would have
/// returned `Ok` with these fields. Any other frame (options, VLAN tags,
/// fragments, other protocols, anything malformed) returns `None` and
/// takes the full parser, which names the reason. ([`Dataplane::judge`]
/// takes the same steps with one dispatch on the protocol.)
#[cfg(test)]
fn common_v4(frame: &[u8]) -> Option<CommonV4> {
    let header = common_ipv4(frame)?;
    match header.0[23] {
        ip_proto::UDP => CommonV4::udp(header),
        ip_proto::TCP => CommonV4::tcp(header),
        _ => CommonV4::gre_or_esp(frame, header),
    }
}

/// The fields of a frame [`common_ipv4`] and [`CommonV4::tcp`] (or, when
/// `udp`, [`CommonV4::udp`]) accepted, read again without the checks.
/// `None` only for a frame shorter than [`COMMON_LEN`], which they never
/// accept.
#[inline(always)]
fn common_fields(frame: &[u8], udp: bool) -> Option<CommonV4> {
    let h = frame.first_chunk::<COMMON_LEN>()?;
    Some(if udp {
        CommonV4::ports(h, ip_proto::UDP, 0)
    } else {
        CommonV4::ports(h, ip_proto::TCP, h[L4 + 13])
    })
}

/// "No rule covers this port": the default host's traffic.
const NO_RULE: u32 = u32::MAX;

/// A multiple-host rule as the common frame reads it: the bucket is the
/// hash of the client address and port masked by its affinity's masks,
/// owned per `owners`.
#[derive(Clone, Debug)]
struct Hashed {
    addr_mask: u32,
    port_mask: u16,
    owners: Arc<BucketMap>,
}

/// How a common frame under a port segment is judged.
#[derive(Clone, Debug)]
enum Path {
    /// A multiple-host rule (see [`Segment::hashed`]).
    Hashed,
    /// A single-host rule: bucket 0, owned by this host ID (0: none).
    Fixed(u8),
    /// No rule covers the port: the default host's traffic.
    NoRule,
    /// The rule is disabled cluster-wide or on this host.
    Disabled,
    /// Through the general functions by rule index: UDP under extended
    /// affinity, or a rule whose mode and owner disagree.
    General,
}

/// A run of ports, ending at `end` (inclusive), that one rule covers (or
/// none, [`NO_RULE`]), with everything the common frame's verdict reads of
/// that rule.
#[derive(Clone, Debug)]
struct Segment {
    end: u16,
    rule: u32,
    /// `Some` exactly when `path` is [`Path::Hashed`] (the frame path
    /// tests this pointer, not the enum).
    hashed: Option<Hashed>,
    path: Path,
}

/// The rule lookup of one IPv4 VIP.
#[derive(Clone, Debug)]
struct VipV4 {
    addr: u32,
    /// Per protocol (TCP, then UDP): segments in ascending port order that
    /// together cover 0..=65535, adjacent ones naming different rules.
    segments: [Vec<Segment>; 2],
    /// Per protocol, the first segment, held inline: with the usual single
    /// all-ports rule, the lookup is one compare.
    first: [Segment; 2],
}

impl VipV4 {
    fn new(map: &ClusterMap, rules: &[RuleV4], addr: u32) -> Self {
        let segments = [
            segments(map, rules, addr, false),
            segments(map, rules, addr, true),
        ];
        let none = Segment {
            end: u16::MAX,
            rule: NO_RULE,
            hashed: None,
            path: Path::NoRule,
        };
        Self {
            addr,
            first: [
                segments[0].first().cloned().unwrap_or(none.clone()),
                segments[1].first().cloned().unwrap_or(none),
            ],
            segments,
        }
    }

    /// The segment covering `port` (TCP, or UDP when `udp`).
    #[inline(always)]
    fn segment(&self, port: u16, udp: bool) -> &Segment {
        let first = &self.first[usize::from(udp)];
        if port <= first.end {
            return first;
        }
        // The last segment ends at 65535: the search always succeeds.
        self.segments[usize::from(udp)]
            .iter()
            .find(|s| port <= s.end)
            .unwrap_or(first)
    }

    /// The rule index covering `port`, or [`NO_RULE`].
    #[cfg(test)]
    fn rule(&self, port: u16, udp: bool) -> u32 {
        self.segment(port, udp).rule
    }
}

/// The ports of `vip` and TCP (or UDP when `udp`) split where the rules
/// that apply start or end; within a piece the covering rule cannot
/// change, so the rule at its first port is the rule at every port.
fn segments(map: &ClusterMap, rules: &[RuleV4], vip: u32, udp: bool) -> Vec<Segment> {
    let mut cuts = vec![0u32];
    for r in rules {
        if r.vip.is_none_or(|v| v == vip) && if udp { r.udp } else { r.tcp } {
            cuts.push(u32::from(r.port_start));
            cuts.push(u32::from(r.port_end) + 1);
        }
    }
    cuts.retain(|&c| c <= u32::from(u16::MAX));
    cuts.sort_unstable();
    cuts.dedup();
    let mut out: Vec<Segment> = Vec::with_capacity(cuts.len());
    for (i, &start) in cuts.iter().enumerate() {
        let end = cuts.get(i + 1).map_or(u16::MAX, |&n| (n - 1) as u16);
        let port = start as u16;
        let rule = rules
            .iter()
            .find(|r| {
                r.vip.is_none_or(|v| v == vip)
                    && if udp { r.udp } else { r.tcp }
                    && r.port_start <= port
                    && port <= r.port_end
            })
            .map_or(NO_RULE, |r| r.index as u32);
        match out.last_mut() {
            Some(last) if last.rule == rule => last.end = end,
            _ => {
                let (path, hashed) = path(map, rule, udp);
                out.push(Segment {
                    end,
                    rule,
                    hashed,
                    path,
                })
            }
        }
    }
    out
}

/// How frames under rule index `rule` (or [`NO_RULE`]) are judged; `udp`:
/// for UDP, else TCP.
fn path(map: &ClusterMap, rule: u32, udp: bool) -> (Path, Option<Hashed>) {
    let Some(r) = map.rules.get(rule as usize) else {
        return (Path::NoRule, None);
    };
    if r.disabled_here || matches!(r.owner, RuleOwner::Disabled) {
        return (Path::Disabled, None);
    }
    if udp && r.rule.extended_affinity_timeout_s != 0 {
        return (Path::General, None);
    }
    match (r.rule.mode, &r.owner) {
        (FilterMode::Multiple { affinity }, RuleOwner::Buckets(owners)) => {
            let (addr_mask, port_mask) = affinity_masks_v4(affinity);
            let hashed = Hashed {
                addr_mask,
                port_mask,
                owners: owners.clone(),
            };
            (Path::Hashed, Some(hashed))
        }
        (FilterMode::Single, RuleOwner::Single(h)) => (Path::Fixed(h.map_or(0, HostId::get)), None),
        _ => (Path::General, None),
    }
}

/// The map compiled for [`Dataplane::judge`]'s common IPv4 frame: VIPs as
/// integers with their port rules resolved into segments that carry each
/// rule's owners as host ID bytes, so the verdict builds no `IpAddr` and
/// walks no rule list. A pure function of the map, rebuilt with it; its
/// answers are the map's (`rule_for`, `owner`, and the bucket arithmetic
/// of [`affinity_hash`]), which the tests check.
#[derive(Clone, Debug)]
struct FastV4 {
    /// The first IPv4 VIP's address, or (no IPv4 VIP) a value no `u32`
    /// equals.
    first_addr: u64,
    /// `first.addr` as a frame carries it (its four bytes in native
    /// order), for the hot path's compare without a byte swap. (With no
    /// IPv4 VIP, `first` has no hashed segment, so the hot path never
    /// gets as far as comparing.)
    first_addr_wire: u32,
    /// The first IPv4 VIP, held inline (most clusters have one; a VIP of
    /// no rule when there is none, never returned).
    first: VipV4,
    /// The others.
    rest: Vec<VipV4>,
    local: u8,
    seed: u64,
}

impl FastV4 {
    fn new(map: &ClusterMap) -> Self {
        let rules_v4 = rules_v4(map);
        let vips = map
            .vips
            .iter()
            .filter_map(|v| match v {
                IpAddr::V4(a) => Some(u32::from(*a)),
                IpAddr::V6(_) => None,
            })
            .map(|addr| VipV4::new(map, &rules_v4, addr));
        let mut vips = vips.collect::<Vec<_>>().into_iter();
        let first = vips.next();
        Self {
            first_addr: first.as_ref().map_or(u64::MAX, |v| u64::from(v.addr)),
            first_addr_wire: first
                .as_ref()
                .map_or(0, |v| u32::from_ne_bytes(v.addr.to_be_bytes())),
            first: first.unwrap_or_else(|| VipV4::new(map, &[], 0)),
            rest: vips.collect(),
            local: map.local.get(),
            seed: map.seed,
        }
    }

    /// The lookup of IPv4 VIP `addr`, if it is one.
    #[inline(always)]
    fn vip(&self, addr: u32) -> Option<&VipV4> {
        if u64::from(addr) == self.first_addr {
            return Some(&self.first);
        }
        self.rest.iter().find(|v| v.addr == addr)
    }
}

/// The bucket of an IPv4 flow under a hashed rule and that bucket's owner
/// (host ID, 0 for none): [`Dataplane::bucket`] and [`ClusterMap::owner`].
#[inline(always)]
fn hashed_owner(seed: u64, rule: &Hashed, client: u32, client_port: u16) -> (u32, u8) {
    let b = bucket_of(masked_hash_v4(
        seed,
        client & rule.addr_mask,
        client_port & rule.port_mask,
    ));
    (b, rule.owners.owner_id(b))
}

/// The verdict for a new flow whose bucket owner is host ID `owner` (0:
/// none), on host `local`: [`Dataplane::new_owner_verdict`] past its
/// disabled checks.
#[inline(always)]
fn owner_verdict(owner: u8, local: u8) -> Verdict {
    if owner == local {
        Verdict::Keep
    } else if HostId::new(owner).is_some() {
        Verdict::Drop(DropReason::NotOwner)
    } else {
        Verdict::Drop(DropReason::NoOwner)
    }
}

/// An IPv4 address as the descriptor table stores it (IPv4-mapped IPv6).
#[inline(always)]
fn mapped_v4(a: u32) -> [u8; 16] {
    ((0xffff_u128 << 32) | u128::from(a)).to_be_bytes()
}

/// [`flow_key`] of IPv4 addresses given as integers.
#[inline(always)]
fn flow_key_v4(kind: Kind, client: u32, vip: u32, client_port: u16, server_port: u16) -> FlowKey {
    FlowKey {
        client: mapped_v4(client),
        server: mapped_v4(vip),
        client_port,
        server_port,
        kind: kind as u8,
        v4: true,
    }
}

/// A flow as the rules see it: client side, server (VIP) side.
#[derive(Clone, Copy, Debug)]
struct Flow {
    client: IpAddr,
    vip: IpAddr,
    client_port: u16,
    server_port: u16,
    proto: u8,
}

fn addr16(ip: IpAddr) -> ([u8; 16], bool) {
    match ip {
        IpAddr::V4(a) => (a.to_ipv6_mapped().octets(), true),
        IpAddr::V6(a) => (a.octets(), false),
    }
}

fn flow_key(
    kind: Kind,
    client: IpAddr,
    vip: IpAddr,
    client_port: u16,
    server_port: u16,
) -> FlowKey {
    let (c, v4) = addr16(client);
    let (s, _) = addr16(vip);
    FlowKey {
        client: c,
        server: s,
        client_port,
        server_port,
        kind: kind as u8,
        v4,
    }
}

impl Dataplane {
    /// A dataplane judging for `map.local`, with a descriptor table sized by
    /// `cfg` and keyed by the secret `seed`.
    pub fn new(map: Arc<ClusterMap>, cfg: DescriptorConfig, seed: u64) -> Self {
        Self {
            fast: FastV4::new(&map),
            buckets_under: (map.seed, map.ipv6_network_prefix),
            skip_probe: true,
            map,
            table: DescriptorTable::new(cfg, seed),
            counters: Counters::default(),
        }
    }

    /// The map in force.
    pub fn map(&self) -> &Arc<ClusterMap> {
        &self.map
    }

    /// Adopts a new map (call between batches). Re-marks tracked entries
    /// whose buckets moved away as foreign: O(table capacity).
    pub fn set_map(&mut self, map: Arc<ClusterMap>) {
        let same_rules = self.map.rules.len() == map.rules.len()
            && self.map.rules.iter().zip(&map.rules).all(|(a, b)| {
                // Weights and priorities change at run time without moving
                // anything between rules; these fields name the rule.
                let (a, b) = (&a.rule, &b.rule);
                (a.vip, a.port_start, a.port_end, a.protocol, a.mode)
                    == (b.vip, b.port_start, b.port_end, b.protocol, b.mode)
            });
        if !same_rules || self.table.is_empty() {
            // Rebinding recomputes every bucket under the new map.
            if !same_rules {
                self.table.rebind_rules(&map);
            }
            self.buckets_under = (map.seed, map.ipv6_network_prefix);
        }
        self.table.remap(&map);
        self.fast = FastV4::new(&map);
        self.map = map;
        self.rebind_probe();
    }

    /// Forgets every tracked connection (the host stopped cluster
    /// operations: NLB's `stop` drops them all).
    pub fn reset_descriptors(&mut self) {
        self.table.clear();
        self.buckets_under = (self.map.seed, self.map.ipv6_network_prefix);
        self.rebind_probe();
    }

    /// Recomputes `skip_probe` after `buckets_under` or the map changed.
    fn rebind_probe(&mut self) {
        self.skip_probe = self.buckets_under == (self.map.seed, self.map.ipv6_network_prefix);
    }

    /// Counters so far.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// The descriptor table.
    pub fn table(&self) -> &DescriptorTable {
        &self.table
    }

    /// Housekeeping between batches: expires up to `budget` entries.
    pub fn tick(&mut self, now: u64, budget: usize) {
        self.table.sweep(now, budget);
    }

    /// Judges a batch: `out[i]` receives the verdict of `frames[i]`.
    /// Verdicts, descriptor state and counters are those of [`Self::judge`]
    /// called on each frame in order.
    ///
    /// Out of line (one call per batch), so that the frame loop is
    /// compiled once, around [`Self::judge_precounted`].
    ///
    /// # Panics
    /// If `out` is shorter than `frames`.
    #[inline(never)]
    pub fn judge_batch(&mut self, frames: &[&[u8]], now: u64, out: &mut [Verdict]) {
        assert!(out.len() >= frames.len(), "verdict slice too short");
        let n = frames.len() as u64;
        self.counters.frames += n;
        self.counters.for_cluster += n;
        for (f, v) in frames.iter().zip(out.iter_mut()) {
            self.judge_precounted(f, now, v);
        }
    }

    /// Judges one frame and counts the verdict.
    #[inline]
    pub fn judge(&mut self, frame: &[u8], now: u64) -> Verdict {
        self.counters.frames += 1;
        self.counters.for_cluster += 1;
        let mut v = Verdict::Pass;
        self.judge_precounted(frame, now, &mut v);
        v
    }

    /// [`Self::judge`] of a frame already counted in `frames` and
    /// `for_cluster` (the common case is cluster traffic, so the batch
    /// counts both once, and the rarer paths take them back).
    ///
    /// The hot path, on no state but the map, the foreign counts and the
    /// counters: a common UDP or TCP frame (see [`common_ipv4`]) to the
    /// first IPv4 VIP, under the multiple-host rule of the first port
    /// segment, whose verdict needs no descriptor: UDP (but IKE kept here,
    /// which notes a link), and TCP of a bucket another host owns in a
    /// group where this host tracks nothing foreign. It is inlined into
    /// the batch loop without a call; every other frame leaves through one
    /// out-of-line `cold_*` call, which judges it as before. The verdict
    /// is written to `out` where it is known, so that each constant
    /// verdict is one store.
    #[inline(always)]
    fn judge_precounted(&mut self, frame: &[u8], now: u64, out: &mut Verdict) {
        // The common frame to a VIP skips the general parser; everything
        // else, and every malformed frame, takes it.
        let Some(header) = common_ipv4(frame) else {
            *out = self.cold_general(frame, now);
            return;
        };
        // One dispatch on the protocol; one copy of the verdict code per
        // protocol.
        // The destination as the frame carries it: the VIP compare needs no
        // byte swap.
        let h = header.0;
        let dst_wire = u32::from_ne_bytes([h[30], h[31], h[32], h[33]]);
        match header.0[23] {
            ip_proto::UDP => match CommonV4::udp(header) {
                Some(c) => self.judge_hot(c, dst_wire, true, frame, now, out),
                None => *out = self.cold_general(frame, now),
            },
            ip_proto::TCP => match CommonV4::tcp(header) {
                Some(c) => self.judge_hot(c, dst_wire, false, frame, now, out),
                None => *out = self.cold_general(frame, now),
            },
            _ => {
                *out = match CommonV4::gre_or_esp(frame, header) {
                    Some(c) => self.cold_link(c, frame, now),
                    None => self.cold_general(frame, now),
                }
            }
        }
    }

    /// [`Self::judge_common`] for a precounted frame, with the first VIP's
    /// first port segment and a hashed rule inline (see
    /// [`Self::judge_precounted`]).
    #[inline(always)]
    fn judge_hot(
        &mut self,
        c: CommonV4,
        dst_wire: u32,
        udp: bool,
        frame: &[u8],
        now: u64,
        out: &mut Verdict,
    ) {
        // `FastV4::vip` and `VipV4::segment`, their first answers only.
        let seg = &self.fast.first.first[usize::from(udp)];
        let hashed = match &seg.hashed {
            Some(h) if dst_wire == self.fast.first_addr_wire && c.dst_port <= seg.end => h,
            _ => {
                *out = self.cold_common(udp, frame, now);
                return;
            }
        };
        let (b, owner) = hashed_owner(self.fast.seed, hashed, c.src, c.src_port);
        if owner == self.fast.local {
            // `judge_udp_v4`'s keep, but IKE's (it notes a link).
            if udp && !IKE_PORTS.contains(&c.dst_port) {
                self.counters.kept += 1;
                *out = Verdict::Keep;
                return;
            }
        } else if udp || (self.skips_probe() && !self.tracks_foreign(seg.rule as usize, b)) {
            // `counted_elsewhere`, as `judge_udp_v4` and `judge_tcp_v4`
            // reach it.
            if HostId::new(owner).is_some() {
                self.counters.dropped[0] += 1;
                *out = Verdict::Drop(DropReason::NotOwner);
            } else {
                self.counters.dropped[3] += 1;
                *out = Verdict::Drop(DropReason::NoOwner);
            }
            return;
        }
        *out = if udp {
            self.cold_common(udp, frame, now)
        } else {
            self.cold_tcp(seg.rule, b, owner, frame, now)
        };
    }

    /// Takes back the precount of [`Self::judge_precounted`].
    #[inline(always)]
    fn uncount(&mut self) {
        self.counters.frames -= 1;
        self.counters.for_cluster -= 1;
    }

    /// A precounted frame for the general parser.
    #[inline(always)]
    fn cold_general(&mut self, frame: &[u8], now: u64) -> Verdict {
        self.uncount();
        self.judge_general(frame, now)
    }

    /// A precounted common TCP (or, when `udp`, UDP) frame through
    /// [`Self::judge_common`]. Out of line, as are the other `cold_*`: the
    /// descriptor steps do not crowd the hot path's registers. Takes the
    /// frame, not what was read of it, so that the hot path keeps nothing
    /// for it.
    #[inline(never)]
    fn cold_common(&mut self, udp: bool, frame: &[u8], now: u64) -> Verdict {
        self.uncount();
        let Some(c) = common_fields(frame, udp) else {
            return self.judge_general(frame, now);
        };
        match self.judge_common(c, udp, now) {
            Some(v) => v,
            None => self.judge_general(frame, now),
        }
    }

    /// A precounted common GRE or ESP frame through
    /// [`Self::judge_common_link`].
    #[inline(never)]
    fn cold_link(&mut self, c: CommonV4, frame: &[u8], now: u64) -> Verdict {
        self.uncount();
        match self.judge_common_link(c, now) {
            Some(v) => v,
            None => self.judge_general(frame, now),
        }
    }

    /// A precounted common TCP segment to a VIP under hashed rule `rule`,
    /// in bucket `b` owned by `owner`: [`Self::judge_tcp_v4`] (which
    /// counts `frames`; `for_cluster` stays counted, as
    /// [`Self::judge_common`] counts it).
    #[inline(never)]
    fn cold_tcp(&mut self, rule: u32, b: u32, owner: u8, frame: &[u8], now: u64) -> Verdict {
        let Some(c) = common_fields(frame, false) else {
            // (Not reached: the hot path read this frame as common TCP.)
            return self.cold_general(frame, now);
        };
        self.counters.frames -= 1;
        self.judge_tcp_v4(rule as usize, b, owner, c, now)
    }

    /// [`Self::judge_ip`] for a common GRE or ESP frame, if it is to a VIP;
    /// counted.
    #[inline(always)]
    fn judge_common_link(&mut self, c: CommonV4, now: u64) -> Option<Verdict> {
        self.fast.vip(c.dst)?;
        self.counters.for_cluster += 1;
        let kind = if c.proto == ip_proto::GRE {
            Kind::GreLink
        } else {
            Kind::EspLink
        };
        Some(self.judge_link_v4(kind, c, now))
    }

    /// [`Self::judge_ip`] for a common TCP (or, when `udp`, UDP) frame (see
    /// [`common_v4`]), if it is to a VIP: the same steps on integers,
    /// without building a [`FrameInfo`], an `IpAddr` or a [`Flow`]. The
    /// verdict comes back counted (where it is known, counting folds to
    /// one increment).
    #[inline(always)]
    fn judge_common(&mut self, c: CommonV4, udp: bool, now: u64) -> Option<Verdict> {
        let seg = self.fast.vip(c.dst)?.segment(c.dst_port, udp);
        let r = seg.rule as usize;
        self.counters.for_cluster += 1;
        // The bucket and its owner, or a verdict without one.
        let (b, owner) = if let Some(hashed) = &seg.hashed {
            hashed_owner(self.fast.seed, hashed, c.src, c.src_port)
        } else {
            match seg.path {
                Path::Fixed(h) => (0, h),
                Path::Disabled => {
                    return Some(self.counted(Verdict::Drop(DropReason::RuleDisabled)));
                }
                Path::General if udp => {
                    let v = self.judge_udp_rule(r, c.flow(), now);
                    return Some(self.counted(v));
                }
                Path::General => {
                    let v = self.judge_tcp_rule(r, c.flow(), c.flags, now);
                    return Some(self.counted(v));
                }
                // (`Hashed` has `hashed`, so is not here.)
                Path::NoRule | Path::Hashed => {
                    let v = self.default_host_verdict();
                    return Some(self.counted(v));
                }
            }
        };
        Some(if udp {
            self.judge_udp_v4(owner, c, now)
        } else {
            self.judge_tcp_v4(r, b, owner, c, now)
        })
    }

    /// Counts `v` and returns it.
    #[inline(always)]
    fn counted(&mut self, v: Verdict) -> Verdict {
        self.counters.count(v);
        v
    }

    /// [`owner_verdict`] for an owner other than the local host, counted.
    #[inline(always)]
    fn counted_elsewhere(&mut self, owner: u8) -> Verdict {
        if HostId::new(owner).is_some() {
            self.counted(Verdict::Drop(DropReason::NotOwner))
        } else {
            self.counted(Verdict::Drop(DropReason::NoOwner))
        }
    }

    /// [`Self::judge_udp_rule`] for a common frame under an enabled rule
    /// without extended affinity, whose bucket's owner is `owner`; counted.
    #[inline(always)]
    fn judge_udp_v4(&mut self, owner: u8, c: CommonV4, now: u64) -> Verdict {
        if owner != self.fast.local {
            return self.counted_elsewhere(owner);
        }
        // `note_link` notes IKE only.
        if IKE_PORTS.contains(&c.dst_port) {
            self.note_link(c.flow(), now);
        }
        self.counted(Verdict::Keep)
    }

    /// [`Self::judge_tcp_rule`] for a common frame under enabled rule `r`,
    /// in bucket `b` whose owner is `owner`; counted.
    #[inline(always)]
    fn judge_tcp_v4(&mut self, r: usize, b: u32, owner: u8, c: CommonV4, now: u64) -> Verdict {
        if owner != self.fast.local && self.skips_probe() && !self.tracks_foreign(r, b) {
            return self.counted_elsewhere(owner);
        }
        let key = flow_key_v4(Kind::Tcp, c.src, c.dst, c.src_port, c.dst_port);
        let verdict = self.judge_tcp_keyed(r, b, owner, key, c.flags, now);
        // `note_link` notes PPTP only.
        if verdict == Verdict::Keep && c.dst_port == PPTP_PORT {
            self.note_link(c.flow(), now);
        }
        self.counted(verdict)
    }

    /// [`Self::judge_link`] for a common frame; counted.
    #[inline(always)]
    fn judge_link_v4(&mut self, kind: Kind, c: CommonV4, now: u64) -> Verdict {
        let key = flow_key_v4(kind, c.src, c.dst, 0, 0);
        let v = self.link_verdict(kind, &key, now);
        self.counted(v)
    }

    /// Whether a TCP segment of a bucket this host does not own, in a
    /// group where it tracks nothing foreign, may skip the table probe:
    /// while every entry's bucket was computed under this map's seed and
    /// prefix (see `buckets_under`).
    #[inline(always)]
    fn skips_probe(&self) -> bool {
        self.skip_probe
    }

    /// [`DescriptorTable::tracks_foreign`], with the usual answer (no
    /// foreign entry at all) first.
    #[inline(always)]
    fn tracks_foreign(&self, r: usize, b: u32) -> bool {
        self.table.foreign_len() != 0 && self.table.tracks_foreign(r, b)
    }

    /// [`ClusterMap::rule_for`] for an IPv4 VIP of the map and TCP (6) or
    /// UDP (17), through the segments the common frame uses.
    #[cfg(test)]
    fn rule_v4(&self, vip: u32, port: u16, proto: u8) -> Option<usize> {
        let r = self.fast.vip(vip)?.rule(port, proto == 17);
        (r != NO_RULE).then_some(r as usize)
    }

    /// [`Self::judge`] through the general parser only, without the
    /// common-frame shortcut: the same verdict, state and counters, more
    /// work. The reference the shortcut is tested against, and the
    /// "before" column of `shoal bench pipeline`. Out of line, so that
    /// the general parser does not crowd the common path's registers.
    #[inline(never)]
    pub fn judge_general(&mut self, frame: &[u8], now: u64) -> Verdict {
        let v = match parse_frame(frame) {
            Ok(info) => self.judge_parsed(&info, now),
            Err(m) => Verdict::Drop(DropReason::Malformed(m)),
        };
        self.counters.count(v);
        v
    }

    /// [`Self::judge_batch`] through [`Self::judge_general`].
    ///
    /// # Panics
    /// If `out` is shorter than `frames`.
    #[inline(never)]
    pub fn judge_batch_general(&mut self, frames: &[&[u8]], now: u64, out: &mut [Verdict]) {
        assert!(out.len() >= frames.len(), "verdict slice too short");
        for (f, v) in frames.iter().zip(out.iter_mut()) {
            *v = self.judge_general(f, now);
        }
    }

    fn is_cluster_mac(&self, mac: [u8; 6]) -> bool {
        mac == self.map.cluster_mac.0
    }

    fn judge_parsed(&mut self, info: &FrameInfo, now: u64) -> Verdict {
        match &info.kind {
            FrameKind::Heartbeat => Verdict::Control(Control::Heartbeat),
            FrameKind::Arp(arp) => {
                if arp.op == 1 && self.map.is_vip(IpAddr::V4(arp.target_ip)) {
                    Verdict::Control(Control::Arp)
                } else {
                    Verdict::Pass
                }
            }
            FrameKind::Other => {
                if self.is_cluster_mac(info.dst_mac) {
                    Verdict::Drop(DropReason::NotIp)
                } else {
                    Verdict::Pass
                }
            }
            FrameKind::Ipv4(ip) | FrameKind::Ipv6(ip) => self.judge_ip(info, ip, now),
        }
    }

    fn judge_ip(&mut self, info: &FrameInfo, ip: &IpInfo, now: u64) -> Verdict {
        if !self.map.is_vip(ip.dst) {
            return match ip.l4 {
                L4::Icmpv6Nd {
                    icmp_type: 135,
                    target,
                } if self.map.is_vip(IpAddr::V6(target)) => Verdict::Control(Control::Nd),
                L4::Igmp { .. } if self.map.mode == ClusterMode::Igmp => {
                    Verdict::Control(Control::Igmp)
                }
                _ if self.is_cluster_mac(info.dst_mac) => {
                    Verdict::Drop(DropReason::ForeignDestination)
                }
                _ => Verdict::Pass,
            };
        }
        if let L4::Icmpv6Nd { icmp_type: 135, .. } = ip.l4 {
            return Verdict::Control(Control::Nd);
        }
        self.counters.for_cluster += 1;
        if ip.fragment != Fragment::Whole {
            return self.judge_fragment(ip);
        }
        match ip.l4 {
            L4::Tcp {
                src_port,
                dst_port,
                flags,
            } => {
                let flow = Flow {
                    client: ip.src,
                    vip: ip.dst,
                    client_port: src_port,
                    server_port: dst_port,
                    proto: 6,
                };
                self.judge_tcp(flow, flags, now)
            }
            L4::Udp { src_port, dst_port } => {
                let flow = Flow {
                    client: ip.src,
                    vip: ip.dst,
                    client_port: src_port,
                    server_port: dst_port,
                    proto: 17,
                };
                self.judge_udp(flow, now)
            }
            L4::Gre { .. } => self.judge_link(Kind::GreLink, ip, now),
            L4::Esp { .. } => self.judge_link(Kind::EspLink, ip, now),
            L4::Icmp {
                inner: Some(inner), ..
            } if inner.src == ip.dst => {
                // An error about a datagram the VIP sent to the client: it
                // belongs with that connection.
                let flow = Flow {
                    client: inner.dst,
                    vip: ip.dst,
                    client_port: inner.dst_port,
                    server_port: inner.src_port,
                    proto: inner.proto,
                };
                self.judge_related(flow, now)
            }
            _ => self.default_host_verdict(),
        }
    }

    fn default_host_verdict(&self) -> Verdict {
        match self.map.default_host {
            Some(h) if h == self.map.local => Verdict::Keep,
            Some(_) => Verdict::Drop(DropReason::NotOwner),
            None => Verdict::Drop(DropReason::NoOwner),
        }
    }

    /// The bucket of a flow under rule `r`.
    #[inline]
    fn bucket(&self, r: usize, client: IpAddr, client_port: u16) -> u32 {
        match self.map.rules[r].rule.mode {
            FilterMode::Multiple { affinity } => bucket_of(affinity_hash(
                self.map.seed,
                affinity,
                client,
                client_port,
                self.map.ipv6_network_prefix,
            )),
            _ => 0,
        }
    }

    /// New-connection owner check for rule `r`, bucket `b`.
    #[inline]
    fn new_owner_verdict(&self, r: usize, b: u32) -> Verdict {
        let rule = &self.map.rules[r];
        if matches!(rule.owner, RuleOwner::Disabled) || rule.disabled_here {
            return Verdict::Drop(DropReason::RuleDisabled);
        }
        match self.map.owner(r, b) {
            Some(h) if h == self.map.local => Verdict::Keep,
            Some(_) => Verdict::Drop(DropReason::NotOwner),
            None => Verdict::Drop(DropReason::NoOwner),
        }
    }

    fn judge_fragment(&mut self, ip: &IpInfo) -> Verdict {
        let Some(r) = self.map.fragment_rule(ip.dst, ip.proto) else {
            return self.default_host_verdict();
        };
        let b = match self.map.rules[r].rule.mode {
            FilterMode::Multiple { affinity } => {
                let aff = if affinity == Affinity::Network {
                    Affinity::Network
                } else {
                    Affinity::Single
                };
                bucket_of(affinity_hash(
                    self.map.seed,
                    aff,
                    ip.src,
                    0,
                    self.map.ipv6_network_prefix,
                ))
            }
            _ => 0,
        };
        self.new_owner_verdict(r, b)
    }

    fn judge_tcp(&mut self, flow: Flow, flags: u8, now: u64) -> Verdict {
        let Some(r) = self.map.rule_for(flow.vip, flow.server_port, 6) else {
            return self.default_host_verdict();
        };
        self.judge_tcp_rule(r, flow, flags, now)
    }

    /// A TCP segment of a flow under rule `r`.
    #[inline]
    fn judge_tcp_rule(&mut self, r: usize, flow: Flow, flags: u8, now: u64) -> Verdict {
        if self.map.rules[r].disabled_here || matches!(self.map.rules[r].owner, RuleOwner::Disabled)
        {
            return Verdict::Drop(DropReason::RuleDisabled);
        }
        let b = self.bucket(r, flow.client, flow.client_port);
        let owner = self.map.owner(r, b).map_or(0, HostId::get);
        let local = self.map.local.get();
        // Another host's bucket, in a group where this host tracks nothing
        // foreign: no entry of this rule and bucket exists, so the probe
        // would miss and the owner's verdict (`new_owner_verdict` past the
        // disabled checks above) would stand.
        if owner != local && self.skips_probe() && !self.table.tracks_foreign(r, b) {
            return owner_verdict(owner, local);
        }
        let key = flow_key(
            Kind::Tcp,
            flow.client,
            flow.vip,
            flow.client_port,
            flow.server_port,
        );
        let verdict = self.judge_tcp_keyed(r, b, owner, key, flags, now);
        if verdict == Verdict::Keep {
            self.note_link(flow, now);
        }
        verdict
    }

    /// The descriptor steps of a TCP segment under enabled rule `r`, in
    /// bucket `b` whose owner is host ID `owner` (0: none), with table key
    /// `key`. Every `Keep` is to be followed by [`Self::note_link`] (the
    /// callers do it: it needs the flow, which the common path builds only
    /// for PPTP).
    #[inline(always)]
    fn judge_tcp_keyed(
        &mut self,
        r: usize,
        b: u32,
        owner: u8,
        key: FlowKey,
        flags: u8,
        now: u64,
    ) -> Verdict {
        let is_syn = flags & (SYN | ACK) == SYN;
        let vacancy = match self.table.lookup_or_vacancy(&key, now) {
            Ok(slot) => return self.judge_tracked(r, slot, is_syn, flags, now),
            Err(vacancy) => vacancy,
        };
        let owner_verdict = owner_verdict(owner, self.map.local.get());
        if owner_verdict != Verdict::Keep {
            return owner_verdict;
        }
        if !is_syn && self.map.rules[r].dirty_elsewhere.contains(group_of(b)) {
            return Verdict::Drop(DropReason::DirtyElsewhere);
        }
        // New connection (SYN), or one this owner adopts mid-stream.
        let state = if is_syn {
            State::HalfOpen
        } else if flags & (RST | FIN) != 0 {
            State::Closing
        } else {
            State::Established
        };
        if !is_syn {
            self.counters.adopted += 1;
        }
        let entry = Entry {
            key,
            state: state as u8,
            rule: r as u8,
            bucket: b,
            ..Entry::default()
        };
        if self.table.insert_at(vacancy, entry, now).is_none() {
            self.counters.untracked += 1;
        }
        Verdict::Keep
    }

    /// A TCP segment of a connection tracked at `slot`.
    #[inline(always)]
    fn judge_tracked(
        &mut self,
        r: usize,
        slot: Slot,
        is_syn: bool,
        flags: u8,
        now: u64,
    ) -> Verdict {
        if is_syn && self.table.entry(slot).foreign {
            let owner_verdict = self.new_owner_verdict(r, self.table.entry(slot).bucket);
            if owner_verdict != Verdict::Keep {
                // A new connection reusing the 5-tuple: it follows the map.
                self.table.remove(slot);
                return owner_verdict;
            }
        }
        let e = self.table.entry_mut(slot);
        e.last_seen = now;
        let state = e.state();
        if flags & RST != 0 || flags & FIN != 0 {
            self.table.set_state(slot, State::Closing);
        } else if state == State::HalfOpen && flags & ACK != 0 {
            self.table.set_state(slot, State::Established);
        }
        Verdict::Keep
    }

    fn judge_udp(&mut self, flow: Flow, now: u64) -> Verdict {
        let Some(r) = self.map.rule_for(flow.vip, flow.server_port, 17) else {
            return self.default_host_verdict();
        };
        self.judge_udp_rule(r, flow, now)
    }

    /// A UDP datagram of a flow under rule `r`.
    #[inline]
    fn judge_udp_rule(&mut self, r: usize, flow: Flow, now: u64) -> Verdict {
        if self.map.rules[r].disabled_here || matches!(self.map.rules[r].owner, RuleOwner::Disabled)
        {
            return Verdict::Drop(DropReason::RuleDisabled);
        }
        let b = self.bucket(r, flow.client, flow.client_port);
        let timeout_s = self.map.rules[r].rule.extended_affinity_timeout_s;
        let verdict = if timeout_s > 0 {
            self.judge_affinity(r, b, flow, timeout_s, now)
        } else {
            self.new_owner_verdict(r, b)
        };
        if verdict == Verdict::Keep {
            self.note_link(flow, now);
        }
        verdict
    }

    /// Extended affinity: the client (or its network) stays where it is for
    /// `timeout_s` after its last datagram, across remaps.
    fn judge_affinity(
        &mut self,
        r: usize,
        b: u32,
        flow: Flow,
        timeout_s: u32,
        now: u64,
    ) -> Verdict {
        let affinity = match self.map.rules[r].rule.mode {
            FilterMode::Multiple { affinity } => affinity,
            _ => Affinity::Single,
        };
        let client = match (affinity, flow.client) {
            (Affinity::Network, IpAddr::V4(a)) => IpAddr::V4((u32::from(a) & 0xffff_ff00).into()),
            (Affinity::Network, IpAddr::V6(a)) => {
                let p = self.map.ipv6_network_prefix.min(128) as u32;
                let mask = if p == 0 { 0 } else { u128::MAX << (128 - p) };
                IpAddr::V6((u128::from(a) & mask).into())
            }
            _ => flow.client,
        };
        let port = if affinity == Affinity::None {
            flow.client_port
        } else {
            0
        };
        let key = flow_key(Kind::Affinity, client, flow.vip, port, r as u16);
        if let Some(slot) = self.table.lookup(&key, now) {
            self.table.entry_mut(slot).last_seen = now;
            return Verdict::Keep;
        }
        let v = self.new_owner_verdict(r, b);
        if v != Verdict::Keep {
            return v;
        }
        if self.map.rules[r].dirty_elsewhere.contains(group_of(b)) {
            return Verdict::Drop(DropReason::DirtyElsewhere);
        }
        let entry = Entry {
            key,
            state: State::Soft as u8,
            rule: r as u8,
            bucket: b,
            timeout_ns: timeout_s as u64 * 1_000_000_000,
            ..Entry::default()
        };
        if self.table.insert(entry, now).is_none() {
            self.counters.untracked += 1;
        }
        Verdict::Keep
    }

    /// Records that this host serves the PPTP or IKE control traffic of a
    /// client, so its GRE or ESP follows.
    fn note_link(&mut self, flow: Flow, now: u64) {
        let kind = match (flow.proto, flow.server_port) {
            (6, PPTP_PORT) => Kind::GreLink,
            (17, p) if IKE_PORTS.contains(&p) => Kind::EspLink,
            _ => return,
        };
        let key = flow_key(kind, flow.client, flow.vip, 0, 0);
        if let Some(slot) = self.table.lookup(&key, now) {
            self.table.entry_mut(slot).last_seen = now;
            return;
        }
        let proto = if kind == Kind::GreLink { 6 } else { 17 };
        let (rule, bucket) = match self.map.rule_for(flow.vip, flow.server_port, proto) {
            Some(r) => (r as u8, self.bucket(r, flow.client, flow.client_port)),
            None => (u8::MAX, 0),
        };
        let entry = Entry {
            key,
            state: State::Soft as u8,
            rule,
            bucket,
            ..Entry::default()
        };
        if self.table.insert(entry, now).is_none() {
            self.counters.untracked += 1;
        }
    }

    fn judge_link(&mut self, kind: Kind, ip: &IpInfo, now: u64) -> Verdict {
        let key = flow_key(kind, ip.src, ip.dst, 0, 0);
        self.link_verdict(kind, &key, now)
    }

    /// GRE or ESP: kept where the link entry `key` lives.
    #[inline(always)]
    fn link_verdict(&mut self, kind: Kind, key: &FlowKey, now: u64) -> Verdict {
        if let Some(slot) = self.table.lookup(key, now) {
            self.table.entry_mut(slot).last_seen = now;
            return Verdict::Keep;
        }
        Verdict::Drop(if kind == Kind::GreLink {
            DropReason::GreWithoutPptp
        } else {
            DropReason::EspWithoutIke
        })
    }

    /// ICMP errors about a flow: kept where the flow is tracked, else by the
    /// owner of its bucket; never creates state.
    fn judge_related(&mut self, flow: Flow, now: u64) -> Verdict {
        let Some(r) = self.map.rule_for(flow.vip, flow.server_port, flow.proto) else {
            return self.default_host_verdict();
        };
        if flow.proto == 6 {
            let key = flow_key(
                Kind::Tcp,
                flow.client,
                flow.vip,
                flow.client_port,
                flow.server_port,
            );
            if self.table.lookup(&key, now).is_some() {
                return if self.map.rules[r].disabled_here {
                    Verdict::Drop(DropReason::RuleDisabled)
                } else {
                    Verdict::Keep
                };
            }
        }
        let b = self.bucket(r, flow.client, flow.client_port);
        let v = self.new_owner_verdict(r, b);
        if v == Verdict::Keep
            && flow.proto == 6
            && self.map.rules[r].dirty_elsewhere.contains(group_of(b))
        {
            return Verdict::Drop(DropReason::DirtyElsewhere);
        }
        v
    }

    /// Which host of the current map would keep a new flow (for `shoal owner`).
    pub fn owner_of(
        map: &ClusterMap,
        proto: u8,
        client: IpAddr,
        client_port: u16,
        vip: IpAddr,
        port: u16,
    ) -> Owner {
        if !map.is_vip(vip) {
            return Owner {
                host: None,
                rule: None,
                bucket: None,
            };
        }
        let Some(r) = map.rule_for(vip, port, proto) else {
            return Owner {
                host: map.default_host,
                rule: None,
                bucket: None,
            };
        };
        let bucket = match map.rules[r].rule.mode {
            FilterMode::Multiple { affinity } => Some(bucket_of(affinity_hash(
                map.seed,
                affinity,
                client,
                client_port,
                map.ipv6_network_prefix,
            ))),
            _ => None,
        };
        Owner {
            host: map.owner(r, bucket.unwrap_or(0)),
            rule: Some(r),
            bucket,
        }
    }
}

/// The answer of [`Dataplane::owner_of`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Owner {
    /// The host that keeps it, if any.
    pub host: Option<HostId>,
    /// The rule that covers it (`None`: the default host's traffic).
    pub rule: Option<usize>,
    /// Its bucket under a multiple-host rule.
    pub bucket: Option<u32>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::descriptor::DescriptorConfig;
    use crate::map::View;
    use crate::model::{ClusterSpec, HostSet, PortRule, Protocol};
    use proptest::prelude::*;
    use std::net::Ipv4Addr;

    const VIP: [u8; 4] = [10, 0, 0, 100];

    /// A well-formed frame: Ethernet, IPv4 (no options), TCP or UDP.
    fn frame(tcp: bool, src: [u8; 4], sport: u16, dport: u16, flags: u8, pad: usize) -> Vec<u8> {
        frame_of(if tcp { 6 } else { 17 }, src, sport, dport, flags, pad)
    }

    /// A well-formed frame: Ethernet, IPv4 (no options), then TCP (6), UDP
    /// (17), PPTP's GRE (47: ports and flags unused) or ESP (50: the SPI
    /// made of the ports).
    fn frame_of(proto: u8, src: [u8; 4], sport: u16, dport: u16, flags: u8, pad: usize) -> Vec<u8> {
        let header = match proto {
            6 => 20,
            47 => 12,
            _ => 8,
        };
        let total = 20 + header + pad;
        let mut f = vec![0x03, 0xbf, 10, 0, 0, 100, 2, 0, 0, 0, 0, 1, 0x08, 0x00];
        f.extend_from_slice(&[0x45, 0, (total >> 8) as u8, total as u8, 0, 1, 0x40, 0, 64]);
        f.push(proto);
        f.extend_from_slice(&[0, 0]);
        f.extend_from_slice(&src);
        f.extend_from_slice(&VIP);
        match proto {
            6 => {
                f.extend_from_slice(&sport.to_be_bytes());
                f.extend_from_slice(&dport.to_be_bytes());
                f.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
            }
            17 => {
                f.extend_from_slice(&sport.to_be_bytes());
                f.extend_from_slice(&dport.to_be_bytes());
                f.extend_from_slice(&((8 + pad) as u16).to_be_bytes());
                f.extend_from_slice(&[0, 0]);
            }
            47 => {
                // Version 1, key and sequence present, PPP; payload length,
                // call ID, sequence number.
                f.extend_from_slice(&[0x30, 0x01, 0x88, 0x0b]);
                f.extend_from_slice(&(pad as u16).to_be_bytes());
                f.extend_from_slice(&sport.to_be_bytes());
                f.extend_from_slice(&[0, 0, 0, 1]);
            }
            _ => {
                f.extend_from_slice(&sport.to_be_bytes());
                f.extend_from_slice(&dport.to_be_bytes());
                f.extend_from_slice(&[0, 0, 0, 1]);
            }
        }
        f.resize(14 + total, 0xab);
        f
    }

    /// A valid frame, then up to four byte changes in the headers and a
    /// length change: mostly frames near the edges of the checks.
    fn arb_frame() -> impl Strategy<Value = Vec<u8>> {
        (
            prop_oneof![4 => Just(6u8), 4 => Just(17), 1 => Just(47), 1 => Just(50)],
            // A few clients recur, so PPTP and IKE entries meet their GRE
            // and ESP, and connections their later segments.
            prop_oneof![
                Just([192, 0, 2, 1]),
                Just([192, 0, 2, 2]),
                Just([198, 51, 100, 7]),
                any::<[u8; 4]>()
            ],
            any::<u16>(),
            prop_oneof![
                Just(80u16),
                Just(1723),
                Just(500),
                Just(2500),
                Just(8050),
                any::<u16>()
            ],
            any::<u8>(),
            // Mostly frames of Ethernet's 60 bytes or more.
            6usize..60,
            prop::collection::vec((0usize..60, any::<u8>()), 0..4),
            -30i32..30,
        )
            .prop_map(|(proto, src, sport, dport, flags, pad, edits, resize)| {
                let mut f = frame_of(proto, src, sport, dport, flags, pad);
                for (at, b) in edits {
                    if at < f.len() {
                        f[at] = b;
                    }
                }
                let len = (f.len() as i32 + resize).max(0) as usize;
                f.resize(len, 0);
                f
            })
    }

    /// Maps that reach every way the shortcut can go: the test map; a
    /// Network-affinity rule, a single-host UDP rule for every VIP, a
    /// disabled rule and ports no rule covers; rule 0 disabled on the
    /// local host and another rule dirty elsewhere in half its groups; a
    /// view in which the local host is not a member and every weight of
    /// rule 0 is zero (no owner); rule 0 dirty elsewhere in half its
    /// groups (TCP adoption refused there).
    fn variant_maps() -> &'static [Arc<ClusterMap>] {
        static MAPS: std::sync::OnceLock<Vec<Arc<ClusterMap>>> = std::sync::OnceLock::new();
        MAPS.get_or_init(|| {
            let vip = Some(IpAddr::V4(Ipv4Addr::from(VIP)));
            let spec = |rules| ClusterSpec {
                vips: vec![IpAddr::V4(Ipv4Addr::from(VIP))],
                mode: ClusterMode::Multicast,
                ipv6_network_prefix: 64,
                rules,
            };
            let hosts =
                |ids: &[u8]| -> HostSet { ids.iter().filter_map(|&i| HostId::new(i)).collect() };
            let local = HostId::new(2).expect("host id");
            let mixed = spec(vec![
                PortRule::new(
                    vip,
                    (0, 1000),
                    Protocol::Both,
                    FilterMode::Multiple {
                        affinity: Affinity::Network,
                    },
                ),
                PortRule::new(None, (0, 65535), Protocol::Udp, FilterMode::Single),
                PortRule::new(vip, (2000, 3000), Protocol::Tcp, FilterMode::Disabled),
            ]);
            let mut disabled_here = View::converged(&spec(rules()), hosts(&[1, 2, 3]));
            disabled_here.disabled[0] = hosts(&[2]);
            let mut dirty = ClusterMap::build(&spec(rules()), &disabled_here, local, 1);
            let mut groups = crate::map::GroupBits::default();
            for g in (0..crate::bucket::GROUPS as u32).step_by(2) {
                groups.insert(g);
            }
            dirty.set_dirty_elsewhere(1, groups.clone());
            let mut dirty_tcp = build_map(rules());
            dirty_tcp.set_dirty_elsewhere(0, groups);
            let mut ownerless = View::converged(&spec(rules()), hosts(&[1, 3]));
            ownerless.weights[0] = [0; crate::model::MAX_HOSTS];
            vec![
                Arc::new(build_map(rules())),
                Arc::new(ClusterMap::build(
                    &mixed,
                    &View::converged(&mixed, hosts(&[1, 2, 3])),
                    local,
                    1,
                )),
                Arc::new(dirty),
                Arc::new(ClusterMap::build(&spec(rules()), &ownerless, local, 1)),
                Arc::new(dirty_tcp),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        /// The shortcut against the general path under every variant map.
        #[test]
        fn the_shortcut_agrees_under_every_kind_of_rule(
            m in 0usize..5,
            frames in prop::collection::vec(arb_frame(), 1..48),
        ) {
            let cfg = DescriptorConfig { capacity: 1 << 10, ..DescriptorConfig::default() };
            let map = &variant_maps()[m];
            let (mut fast, mut general) = (Dataplane::new(map.clone(), cfg, 5), Dataplane::new(map.clone(), cfg, 5));
            for (i, f) in frames.iter().enumerate() {
                let now = i as u64 * 1_000_000;
                prop_assert_eq!(fast.judge(f, now), general.judge_general(f, now), "map {} frame {:02x?}", m, f);
            }
            prop_assert_eq!(fast.counters(), general.counters());
            prop_assert_eq!(fast.table().len(), general.table().len());
            prop_assert_eq!(fast.table().counters(), general.table().counters());
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        /// `judge_batch` (whose hot loop counts `frames` and `for_cluster`
        /// per batch) against the general path frame by frame, under
        /// every variant map, in batches of any size.
        #[test]
        fn batches_agree_with_the_general_path(
            m in 0usize..5,
            frames in prop::collection::vec(arb_frame(), 1..160),
            size in 1usize..80,
        ) {
            let cfg = DescriptorConfig { capacity: 1 << 10, ..DescriptorConfig::default() };
            let map = &variant_maps()[m];
            let (mut batched, mut general) = (Dataplane::new(map.clone(), cfg, 5), Dataplane::new(map.clone(), cfg, 5));
            let refs: Vec<&[u8]> = frames.iter().map(Vec::as_slice).collect();
            let mut out = vec![Verdict::Pass; refs.len()];
            for (k, (chunk, verdicts)) in refs.chunks(size).zip(out.chunks_mut(size)).enumerate() {
                batched.judge_batch(chunk, k as u64 * 1_000_000, verdicts);
            }
            for (i, f) in frames.iter().enumerate() {
                let now = (i / size) as u64 * 1_000_000;
                prop_assert_eq!(out[i], general.judge_general(f, now), "map {} frame {} {:02x?}", m, i, f);
            }
            prop_assert_eq!(batched.counters(), general.counters());
            prop_assert_eq!(batched.table().len(), general.table().len());
            prop_assert_eq!(batched.table().counters(), general.table().counters());
        }
    }

    /// Each variant map sends common frames down the path it is there for.
    #[test]
    fn variant_maps_reach_every_path() {
        let maps = variant_maps();
        let seg = |m: usize, port: u16, udp: bool| {
            let fast = FastV4::new(&maps[m]);
            let v = fast
                .vip(u32::from_be_bytes(VIP))
                .expect("the VIP")
                .segment(port, udp)
                .clone();
            (v.hashed.is_some(), v.path)
        };
        assert!(matches!(seg(0, 80, false), (true, Path::Hashed)));
        assert!(matches!(seg(0, 500, true), (false, Path::General)));
        assert!(matches!(seg(0, 8050, false), (false, Path::Fixed(_))));
        assert!(matches!(seg(1, 80, true), (true, Path::Hashed)));
        assert!(matches!(seg(1, 2500, false), (false, Path::Disabled)));
        assert!(matches!(seg(1, 5000, false), (false, Path::NoRule)));
        assert!(matches!(seg(1, 5000, true), (false, Path::Fixed(_))));
        assert!(matches!(seg(2, 80, false), (false, Path::Disabled)));
        assert!(matches!(seg(3, 80, false), (true, Path::Hashed)));
        assert_eq!(maps[3].owner(0, 12345), None);
    }

    fn dataplane() -> Dataplane {
        static MAP: std::sync::OnceLock<Arc<ClusterMap>> = std::sync::OnceLock::new();
        let map = MAP.get_or_init(|| Arc::new(build_map(rules()))).clone();
        let cfg = DescriptorConfig {
            capacity: 1 << 12,
            ..DescriptorConfig::default()
        };
        Dataplane::new(map, cfg, 7)
    }

    fn build_map(rules: Vec<PortRule>) -> ClusterMap {
        let spec = ClusterSpec {
            vips: vec![IpAddr::V4(Ipv4Addr::from(VIP))],
            mode: ClusterMode::Multicast,
            ipv6_network_prefix: 64,
            rules,
        };
        let members: HostSet = [1, 2, 3].iter().filter_map(|&i| HostId::new(i)).collect();
        let local = HostId::new(2).expect("host id");
        ClusterMap::build(&spec, &View::converged(&spec, members), local, 1)
    }

    fn rules() -> Vec<PortRule> {
        let mut udp = PortRule::new(
            Some(IpAddr::V4(Ipv4Addr::from(VIP))),
            (400, 5000),
            Protocol::Udp,
            FilterMode::Multiple {
                affinity: Affinity::Single,
            },
        );
        udp.extended_affinity_timeout_s = 30;
        vec![
            PortRule::new(
                None,
                (0, 65535),
                Protocol::Both,
                FilterMode::Multiple {
                    affinity: Affinity::None,
                },
            ),
            udp,
            PortRule::new(
                Some(IpAddr::V4(Ipv4Addr::from(VIP))),
                (8000, 8100),
                Protocol::Tcp,
                FilterMode::Single,
            ),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1024))]
        /// Whenever the shortcut reads a frame, the general parser accepts
        /// it and reads the same fields.
        #[test]
        fn common_frames_read_as_the_parser_reads_them(f in arb_frame()) {
            if let Some(c) = common_v4(&f) {
                let info = parse_frame(&f);
                prop_assert!(info.is_ok(), "shortcut read a frame the parser rejects: {info:?}");
                let Ok(info) = info else { unreachable!() };
                let FrameKind::Ipv4(ip) = info.kind else {
                    return Err(TestCaseError::fail(format!("not IPv4: {info:?}")));
                };
                prop_assert_eq!(ip.src, IpAddr::V4(c.src.into()));
                prop_assert_eq!(ip.dst, IpAddr::V4(c.dst.into()));
                prop_assert_eq!(ip.fragment, Fragment::Whole);
                match ip.l4 {
                    L4::Tcp { src_port, dst_port, flags } => {
                        prop_assert_eq!((c.proto, c.src_port, c.dst_port, c.flags), (6, src_port, dst_port, flags));
                    }
                    L4::Udp { src_port, dst_port } => {
                        prop_assert_eq!((c.proto, c.src_port, c.dst_port), (17, src_port, dst_port));
                    }
                    L4::Gre { .. } => prop_assert_eq!((c.proto, ip.proto), (47, 47)),
                    L4::Esp { .. } => prop_assert_eq!((c.proto, ip.proto), (50, 50)),
                    other => return Err(TestCaseError::fail(format!("l4 {other:?}"))),
                }
            }
        }

        /// The same frames, in the same order, give the same verdicts and
        /// counters with and without the shortcut (descriptors included:
        /// SYNs create entries later frames hit).
        #[test]
        fn the_shortcut_changes_no_verdict(frames in prop::collection::vec(arb_frame(), 1..64)) {
            let mut fast = dataplane();
            let mut general = dataplane();
            for (i, f) in frames.iter().enumerate() {
                let now = i as u64 * 1_000_000;
                prop_assert_eq!(fast.judge(f, now), general.judge_general(f, now), "frame {:02x?}", f);
            }
            prop_assert_eq!(fast.counters(), general.counters());
            prop_assert_eq!(fast.table().len(), general.table().len());
        }
    }

    proptest! {
        /// The IPv4 rule table finds the rule `rule_for` finds.
        #[test]
        fn rule_v4_finds_what_rule_for_finds(
            spans in prop::collection::vec((0u16..3, 0u16..100, 0u16..100, 0u8..3), 0..6),
            probes in prop::collection::vec((0u16..3, 0u16..120, any::<bool>()), 32),
        ) {
            let vip = |k: u16| match k {
                0 => None,
                1 => Some(IpAddr::V4(Ipv4Addr::from(VIP))),
                _ => Some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 101))),
            };
            let rules: Vec<PortRule> = spans
                .iter()
                .map(|&(k, a, b, p)| {
                    let proto = [Protocol::Tcp, Protocol::Udp, Protocol::Both][usize::from(p)];
                    PortRule::new(vip(k), (a.min(b), a.max(b)), proto, FilterMode::Single)
                })
                .collect();
            let mut spec_map = build_map(rules);
            spec_map.vips.push(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 101)));
            let dp = Dataplane::new(Arc::new(spec_map), DescriptorConfig { capacity: 16, ..DescriptorConfig::default() }, 1);
            for (k, port, tcp) in probes {
                let dst = vip(k.max(1)).unwrap_or(IpAddr::V4(Ipv4Addr::from(VIP)));
                let IpAddr::V4(d) = dst else { unreachable!() };
                let proto = if tcp { 6 } else { 17 };
                prop_assert_eq!(dp.rule_v4(u32::from(d), port, proto), dp.map.rule_for(dst, port, proto));
            }
        }
    }

    /// A frame or a new view (members of hosts 1-3; local host 2).
    #[derive(Clone, Debug)]
    enum Op {
        Frame(Vec<u8>),
        View(Vec<u8>),
    }

    fn arb_ops() -> impl Strategy<Value = Vec<Op>> {
        let flows = (
            0u8..6,
            0u16..4,
            prop_oneof![
                Just(SYN),
                Just(ACK),
                Just(ACK | FIN),
                Just(RST),
                Just(SYN | ACK)
            ],
            any::<bool>(),
        )
            .prop_map(|(c, p, flags, tcp)| {
                Op::Frame(frame(tcp, [192, 0, 2, c], 1000 + p, 80, flags, 0))
            });
        let views = prop::sample::subsequence(vec![1u8, 2, 3], 1..=3).prop_map(Op::View);
        prop::collection::vec(prop_oneof![8 => flows, 1 => views], 1..120)
    }

    /// The map of a view, built once per member set (building is slow in
    /// debug builds).
    fn view_map(members: &[u8]) -> Arc<ClusterMap> {
        type Cache = std::sync::Mutex<Vec<(Vec<u8>, Arc<ClusterMap>)>>;
        static CACHE: std::sync::OnceLock<Cache> = std::sync::OnceLock::new();
        let cache = CACHE.get_or_init(Default::default);
        let mut cache = cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, m)) = cache.iter().find(|(k, _)| k == members) {
            return m.clone();
        }
        let m = build_view_map(members);
        cache.push((members.to_vec(), m.clone()));
        m
    }

    fn build_view_map(members: &[u8]) -> Arc<ClusterMap> {
        let rules = vec![PortRule::new(
            None,
            (0, 65535),
            Protocol::Both,
            FilterMode::Multiple {
                affinity: Affinity::None,
            },
        )];
        let spec = ClusterSpec {
            vips: vec![IpAddr::V4(Ipv4Addr::from(VIP))],
            mode: ClusterMode::Multicast,
            ipv6_network_prefix: 64,
            rules,
        };
        let set: HostSet = members.iter().filter_map(|&i| HostId::new(i)).collect();
        let local = HostId::new(2).expect("host id");
        Arc::new(ClusterMap::build(
            &spec,
            &View::converged(&spec, set),
            local,
            1,
        ))
    }

    proptest! {
        /// Skipping the table probe for other hosts' buckets changes no
        /// verdict, entry or counter, across views that move buckets away
        /// from connections this host tracks.
        #[test]
        fn skipping_the_probe_changes_nothing(ops in arb_ops()) {
            let cfg = DescriptorConfig { capacity: 1 << 10, ..DescriptorConfig::default() };
            let mut skip = Dataplane::new(view_map(&[1, 2, 3]), cfg, 3);
            let mut probe = Dataplane::new(view_map(&[1, 2, 3]), cfg, 3);
            probe.buckets_under = (!probe.map.seed, 0);
            probe.rebind_probe();
            for (i, op) in ops.iter().enumerate() {
                let now = i as u64 * 1_000_000;
                match op {
                    Op::Frame(f) => prop_assert_eq!(skip.judge(f, now), probe.judge(f, now), "op {}", i),
                    Op::View(m) => {
                        skip.set_map(view_map(m));
                        probe.set_map(view_map(m));
                        probe.buckets_under = (!probe.map.seed, 0);
                        probe.rebind_probe();
                    }
                }
                // The total the TCP drop reads first is the groups' sum.
                let dirty: usize = (0..crate::model::MAX_RULES).map(|r| skip.table().dirty_groups(r).count()).sum();
                prop_assert_eq!(skip.table().foreign_len() == 0, dirty == 0, "op {}", i);
            }
            prop_assert_eq!(skip.counters(), probe.counters());
            prop_assert_eq!(skip.table().len(), probe.table().len());
            prop_assert_eq!(skip.table().counters(), probe.table().counters());
        }
    }

    proptest! {
        /// The same across views that move buckets away from connections
        /// this host tracks, the frames between two views judged in one
        /// batch against the general path frame by frame (the hot loop's
        /// TCP drops read the foreign counts those views set).
        #[test]
        fn batches_agree_across_views(ops in arb_ops()) {
            let cfg = DescriptorConfig { capacity: 1 << 10, ..DescriptorConfig::default() };
            let mut batched = Dataplane::new(view_map(&[1, 2, 3]), cfg, 3);
            let mut general = Dataplane::new(view_map(&[1, 2, 3]), cfg, 3);
            let mut pending: Vec<&[u8]> = Vec::new();
            let mut t = 0u64;
            for op in ops.iter().chain([Op::View(vec![1, 2, 3])].iter()) {
                match op {
                    Op::Frame(f) => pending.push(f),
                    Op::View(m) => {
                        let mut out = vec![Verdict::Pass; pending.len()];
                        batched.judge_batch(&pending, t, &mut out);
                        for (f, v) in pending.iter().zip(&out) {
                            prop_assert_eq!(*v, general.judge_general(f, t), "frame {:02x?}", f);
                        }
                        pending.clear();
                        t += 1_000_000;
                        batched.set_map(view_map(m));
                        general.set_map(view_map(m));
                    }
                }
            }
            prop_assert_eq!(batched.counters(), general.counters());
            prop_assert_eq!(batched.table().len(), general.table().len());
            prop_assert_eq!(batched.table().counters(), general.table().counters());
        }
    }

    proptest! {
        /// The common frame's keys, buckets and owners are the general
        /// path's, for every rule of the test map.
        #[test]
        fn integer_forms_equal_the_general_forms(
            client: u32,
            vip: u32,
            client_port: u16,
            server_port: u16,
            kind in 1u8..=4,
        ) {
            let kind = [Kind::Tcp, Kind::Affinity, Kind::GreLink, Kind::EspLink][usize::from(kind - 1)];
            let (c, v) = (IpAddr::V4(client.into()), IpAddr::V4(vip.into()));
            prop_assert_eq!(
                flow_key_v4(kind, client, vip, client_port, server_port),
                flow_key(kind, c, v, client_port, server_port)
            );
            let dp = dataplane();
            for r in 0..dp.map.rules.len() {
                let b = dp.bucket(r, c, client_port);
                let owner = dp.map.owner(r, b).map_or(0, HostId::get);
                for udp in [false, true] {
                    match path(&dp.map, r as u32, udp) {
                        (Path::Hashed, Some(hashed)) => prop_assert_eq!(
                            hashed_owner(dp.fast.seed, &hashed, client, client_port),
                            (b, owner)
                        ),
                        (Path::Fixed(h), None) => prop_assert_eq!((0, h), (b, owner)),
                        (Path::General, None) => prop_assert!(udp && dp.map.rules[r].rule.extended_affinity_timeout_s != 0),
                        other => return Err(TestCaseError::fail(format!("rule {r}: {other:?}"))),
                    }
                }
            }
        }
    }

    #[test]
    fn policy_indexes_follow_the_table() {
        for (i, r) in DropReason::POLICY.iter().enumerate() {
            assert_eq!(r.policy_index(), Some(i), "{r:?}");
        }
        let m = DropReason::Malformed(Malformed::BadGre);
        assert_eq!(m.policy_index(), None);
        let mut c = Counters::default();
        c.count(Verdict::Drop(m));
        assert_eq!(c.malformed[Malformed::BadGre as usize], 1);
        assert_eq!(c.malformed_total(), 1);
    }

    #[test]
    fn segments_split_rules_by_port_and_precedence() {
        let vip = Some(IpAddr::V4(Ipv4Addr::from(VIP)));
        let rule = |vip, ports, proto| PortRule::new(vip, ports, proto, FilterMode::Single);
        let dp = Dataplane::new(
            Arc::new(build_map(vec![
                rule(None, (0, 65535), Protocol::Both),
                rule(vip, (80, 80), Protocol::Tcp),
                rule(vip, (100, 199), Protocol::Udp),
            ])),
            DescriptorConfig::default(),
            1,
        );
        let v = dp.fast.vip(u32::from_be_bytes(VIP)).expect("the VIP");
        let ends = |v: &VipV4, udp: bool| -> Vec<(u16, u32)> {
            v.segments[usize::from(udp)]
                .iter()
                .map(|s| (s.end, s.rule))
                .collect()
        };
        assert_eq!(ends(v, false), [(79, 0), (80, 1), (65535, 0)]);
        assert_eq!(ends(v, true), [(99, 0), (199, 2), (65535, 0)]);
        let single = dp.map.owner(0, 0).map(HostId::get);
        assert!(matches!(v.first[0].path, Path::Fixed(h) if Some(h) == single));
        assert!(dp.fast.vip(u32::from_be_bytes([10, 0, 0, 101])).is_none());
        // No rule for UDP at all: one segment naming none.
        let dp = Dataplane::new(
            Arc::new(build_map(vec![rule(vip, (1, 65535), Protocol::Tcp)])),
            DescriptorConfig::default(),
            1,
        );
        let v = dp.fast.vip(u32::from_be_bytes(VIP)).expect("the VIP");
        assert_eq!(ends(v, false), [(0, NO_RULE), (65535, 0)]);
        assert_eq!(ends(v, true), [(65535, NO_RULE)]);
        assert!(matches!(v.first[1].path, Path::NoRule));
        // No IPv4 VIP at all: no address is one, 0.0.0.0 included.
        let mut v6_only = build_map(rules());
        v6_only.vips = vec!["2001:db8::1".parse().expect("an address")];
        let dp = Dataplane::new(Arc::new(v6_only), DescriptorConfig::default(), 1);
        assert!(dp.fast.vip(0).is_none());
        assert!(dp.fast.vip(u32::from_be_bytes(VIP)).is_none());
    }

    /// GRE follows a PPTP connection kept here, on both paths, and ESP
    /// without an IKE session is dropped by name.
    #[test]
    fn gre_follows_pptp_on_the_shortcut() {
        let (mut fast, mut general) = (dataplane(), dataplane());
        let client = (1..=255u8)
            .map(|d| [198, 51, 100, d])
            .find(|&src| {
                let syn = frame(true, src, 40_000, PPTP_PORT, SYN, 0);
                let v = fast.judge(&syn, 1);
                assert_eq!(v, general.judge_general(&syn, 1));
                v == Verdict::Keep
            })
            .expect("some client's PPTP connection is this host's");
        let gre = frame_of(47, client, 0, 0, 0, 16);
        assert_eq!(fast.judge(&gre, 2), Verdict::Keep);
        assert_eq!(general.judge_general(&gre, 2), Verdict::Keep);
        let stranger = frame_of(47, [203, 0, 113, 9], 0, 0, 0, 16);
        let want = Verdict::Drop(DropReason::GreWithoutPptp);
        assert_eq!(fast.judge(&stranger, 3), want);
        assert_eq!(general.judge_general(&stranger, 3), want);
        let esp = frame_of(50, client, 1, 2, 0, 16);
        let want = Verdict::Drop(DropReason::EspWithoutIke);
        assert_eq!(fast.judge(&esp, 4), want);
        assert_eq!(general.judge_general(&esp, 4), want);
        assert_eq!(fast.counters(), general.counters());
    }

    #[test]
    fn unmodified_frames_take_the_shortcut() {
        for tcp in [false, true] {
            // Padded to Ethernet's minimum of 60 bytes.
            let f = frame(tcp, [192, 0, 2, 1], 1234, 80, SYN, 18);
            let c = common_v4(&f).expect("common frame");
            assert_eq!((c.src_port, c.dst_port), (1234, 80));
            assert_eq!(c.dst, u32::from_be_bytes(VIP));
        }
        // A VLAN tag, a fragment, IP options: the general parser's.
        let mut tagged = frame(false, [192, 0, 2, 1], 1, 2, 0, 0);
        tagged.splice(12..12, [0x81, 0x00, 0, 5]);
        assert!(common_v4(&tagged).is_none());
        let mut frag = frame(false, [192, 0, 2, 1], 1, 2, 0, 0);
        frag[20] |= 0x20;
        assert!(common_v4(&frag).is_none());
        let mut opts = frame(false, [192, 0, 2, 1], 1, 2, 0, 0);
        opts[14] = 0x46;
        assert!(common_v4(&opts).is_none());
        // Shorter than any Ethernet frame: the general parser's.
        assert!(common_v4(&frame(false, [192, 0, 2, 1], 1, 2, 0, 11)).is_none());
        // GRE and ESP take it too, with their addresses.
        for proto in [47, 50] {
            let f = frame_of(proto, [192, 0, 2, 1], 1, 2, 0, 14);
            let c = common_v4(&f).expect("common frame");
            assert_eq!(
                (c.proto, c.src),
                (proto, u32::from_be_bytes([192, 0, 2, 1]))
            );
        }
    }
}
