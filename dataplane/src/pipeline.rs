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

use std::net::IpAddr;
use std::sync::Arc;

use crate::bucket::{bucket_of, group_of};
use crate::descriptor::{DescriptorConfig, DescriptorTable, Entry, FlowKey, Kind, State};
use crate::hash::affinity_hash;
use crate::map::{ClusterMap, RuleOwner};
use crate::model::{Affinity, ClusterMode, FilterMode, HostId};
use crate::packet::{parse_frame, Fragment, FrameInfo, FrameKind, IpInfo, Malformed, L4};

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

    fn policy_index(self) -> Option<usize> {
        Self::POLICY.iter().position(|r| *r == self)
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
    pub malformed: Vec<u64>,
    /// SYNs kept without a descriptor because the table had no room.
    pub untracked: u64,
}

impl Counters {
    /// Adds a verdict.
    #[inline]
    pub fn count(&mut self, v: Verdict) {
        self.frames += 1;
        match v {
            Verdict::Keep => self.kept += 1,
            Verdict::Pass => self.passed += 1,
            Verdict::Control(c) => self.control[c as usize] += 1,
            Verdict::Drop(DropReason::Malformed(m)) => {
                if self.malformed.len() < Malformed::ALL.len() {
                    self.malformed.resize(Malformed::ALL.len(), 0);
                }
                self.malformed[m as usize] += 1;
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
        for (a, b) in self.control.iter_mut().zip(other.control) {
            *a += b;
        }
        for (a, b) in self.dropped.iter_mut().zip(other.dropped) {
            *a += b;
        }
        if self.malformed.len() < other.malformed.len() {
            self.malformed.resize(other.malformed.len(), 0);
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
            map,
            table: DescriptorTable::new(cfg, seed),
            counters: Counters {
                malformed: vec![0; Malformed::ALL.len()],
                ..Counters::default()
            },
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
        if !same_rules {
            self.table.rebind_rules(&map);
        }
        self.table.remap(&map);
        self.map = map;
    }

    /// Forgets every tracked connection (the host stopped cluster
    /// operations: NLB's `stop` drops them all).
    pub fn reset_descriptors(&mut self) {
        self.table.clear();
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
    ///
    /// # Panics
    /// If `out` is shorter than `frames`.
    pub fn judge_batch(&mut self, frames: &[&[u8]], now: u64, out: &mut [Verdict]) {
        assert!(out.len() >= frames.len(), "verdict slice too short");
        for (f, v) in frames.iter().zip(out.iter_mut()) {
            *v = self.judge(f, now);
        }
    }

    /// Judges one frame and counts the verdict.
    #[inline]
    pub fn judge(&mut self, frame: &[u8], now: u64) -> Verdict {
        let v = match parse_frame(frame) {
            Ok(info) => self.judge_parsed(&info, now),
            Err(m) => Verdict::Drop(DropReason::Malformed(m)),
        };
        self.counters.count(v);
        v
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
        if self.map.rules[r].disabled_here || matches!(self.map.rules[r].owner, RuleOwner::Disabled)
        {
            return Verdict::Drop(DropReason::RuleDisabled);
        }
        let key = flow_key(
            Kind::Tcp,
            flow.client,
            flow.vip,
            flow.client_port,
            flow.server_port,
        );
        let is_syn = flags & (SYN | ACK) == SYN;
        // A tracked connection needs neither its bucket nor its owner (the
        // common case of established traffic): look it up first.
        if let Some(slot) = self.table.lookup(&key, now) {
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
            if flags & RST != 0 || flags & FIN != 0 {
                e.state = State::Closing as u8;
            } else if e.state() == State::HalfOpen && flags & ACK != 0 {
                e.state = State::Established as u8;
            }
            self.note_link(flow, now);
            return Verdict::Keep;
        }
        let b = self.bucket(r, flow.client, flow.client_port);
        let owner_verdict = self.new_owner_verdict(r, b);
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
        let entry = Entry {
            key,
            state: state as u8,
            rule: r as u8,
            bucket: b,
            ..Entry::default()
        };
        if self.table.insert(entry, now).is_none() {
            self.counters.untracked += 1;
        }
        self.note_link(flow, now);
        Verdict::Keep
    }

    fn judge_udp(&mut self, flow: Flow, now: u64) -> Verdict {
        let Some(r) = self.map.rule_for(flow.vip, flow.server_port, 17) else {
            return self.default_host_verdict();
        };
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
        if let Some(slot) = self.table.lookup(&key, now) {
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
