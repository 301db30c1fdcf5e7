//! The general path: [`Dataplane`]'s judgement of a frame
//! [`parse_frame`](crate::packet::parse_frame) summarized, by the
//! [`ClusterMap`](crate::map::ClusterMap)'s own lookups; and the steps
//! both paths share (the descriptor steps of a TCP segment, extended
//! affinity, GRE and ESP links, the owner's verdict). It is the reference
//! the shortcut is held to, and the path of every frame the common-frame
//! reader declines. Its functions return verdicts; the caller counts them.

use std::net::IpAddr;

use super::{Control, Dataplane, DropReason, Verdict, ACK, FIN, IKE_PORTS, PPTP_PORT, RST, SYN};
use crate::bucket::{bucket_of, group_of};
use crate::descriptor::{Entry, FlowKey, Kind, Slot, State};
use crate::hash::affinity_hash;
use crate::map::RuleOwner;
use crate::model::{Affinity, ClusterMode, FilterMode, HostId};
use crate::packet::{Fragment, FrameInfo, FrameKind, IpInfo, L4};

/// The verdict for a new flow whose bucket owner is host ID `owner` (0:
/// none), on host `local`: [`Dataplane::new_owner_verdict`] past its
/// disabled checks.
#[inline(always)]
pub(super) fn owner_verdict(owner: u8, local: u8) -> Verdict {
    if owner == local {
        Verdict::Keep
    } else if HostId::new(owner).is_some() {
        Verdict::Drop(DropReason::NotOwner)
    } else {
        Verdict::Drop(DropReason::NoOwner)
    }
}

/// A flow as the rules see it: client side, server (VIP) side.
#[derive(Clone, Copy, Debug)]
pub(super) struct Flow {
    pub(super) client: IpAddr,
    pub(super) vip: IpAddr,
    pub(super) client_port: u16,
    pub(super) server_port: u16,
    pub(super) proto: u8,
}

pub(super) fn addr16(ip: IpAddr) -> ([u8; 16], bool) {
    match ip {
        IpAddr::V4(a) => (a.to_ipv6_mapped().octets(), true),
        IpAddr::V6(a) => (a.octets(), false),
    }
}

pub(super) fn flow_key(
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
    fn is_cluster_mac(&self, mac: [u8; 6]) -> bool {
        mac == self.map.cluster_mac.0
    }

    /// The verdict of a parsed frame, not yet counted.
    pub(super) fn judge_parsed(&mut self, info: &FrameInfo, now: u64) -> Verdict {
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
                _ => self.foreign_verdict(info.dst_mac),
            };
        }
        if let L4::Icmpv6Nd { icmp_type: 135, .. } = ip.l4 {
            return Verdict::Control(Control::Nd);
        }
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

    /// An IP frame to no VIP and not for the control plane, sent to
    /// `dst_mac`: the kernel's, unless it was sent to the cluster MAC.
    #[inline]
    pub(super) fn foreign_verdict(&self, dst_mac: [u8; 6]) -> Verdict {
        if self.is_cluster_mac(dst_mac) {
            Verdict::Drop(DropReason::ForeignDestination)
        } else {
            Verdict::Pass
        }
    }

    /// Traffic to a VIP that no rule covers: the default host's.
    pub(super) fn default_host_verdict(&self) -> Verdict {
        match self.map.default_host {
            Some(h) if h == self.map.local => Verdict::Keep,
            Some(_) => Verdict::Drop(DropReason::NotOwner),
            None => Verdict::Drop(DropReason::NoOwner),
        }
    }

    /// The bucket of a flow under rule `r`.
    #[inline]
    pub(super) fn bucket(&self, r: usize, client: IpAddr, client_port: u16) -> u32 {
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
    pub(super) fn judge_tcp_rule(&mut self, r: usize, flow: Flow, flags: u8, now: u64) -> Verdict {
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
    pub(super) fn judge_tcp_keyed(
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
    pub(super) fn judge_udp_rule(&mut self, r: usize, flow: Flow, now: u64) -> Verdict {
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
    pub(super) fn note_link(&mut self, flow: Flow, now: u64) {
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
    pub(super) fn link_verdict(&mut self, kind: Kind, key: &FlowKey, now: u64) -> Verdict {
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
}
