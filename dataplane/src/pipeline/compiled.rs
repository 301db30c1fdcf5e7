//! The map compiled for the common IPv4 frame ([`FastV4`]): each IPv4 VIP
//! as an integer, its ports split into segments that each name one rule
//! (or none) and carry what the verdict reads of it, down to the owner of
//! every bucket as a host ID byte.
//!
//! # Contract
//!
//! A pure function of the [`ClusterMap`], rebuilt with it; its answers are
//! the map's (`rule_for`, `owner`, and the bucket arithmetic of
//! [`affinity_hash`](crate::hash::affinity_hash)), which the tests here and
//! in `tests.rs` check.

use std::net::IpAddr;
use std::sync::Arc;

use crate::bucket::{bucket_of, BucketMap};
use crate::hash::{affinity_masks_v4, masked_hash_v4};
use crate::map::{ClusterMap, RuleOwner};
use crate::model::{FilterMode, HostId};

/// A rule as [`segments`] resolves it: [`ClusterMap::rule_for`] for an
/// IPv4 VIP, without `IpAddr` comparisons.
#[derive(Clone, Copy, Debug)]
pub(super) struct RuleV4 {
    /// `None`: every VIP.
    pub(super) vip: Option<u32>,
    pub(super) tcp: bool,
    pub(super) udp: bool,
    pub(super) port_start: u16,
    pub(super) port_end: u16,
    pub(super) index: usize,
}

/// The rules that can cover an IPv4 VIP, in the map's lookup order (rules
/// for an IPv6 VIP never do).
pub(super) fn rules_v4(map: &ClusterMap) -> Vec<RuleV4> {
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

/// "No rule covers this port": the default host's traffic.
pub(super) const NO_RULE: u32 = u32::MAX;

/// A multiple-host rule as the common frame reads it: the bucket is the
/// hash of the client address and port masked by its affinity's masks,
/// owned per `owners`.
#[derive(Clone, Debug)]
pub(super) struct Hashed {
    pub(super) addr_mask: u32,
    pub(super) port_mask: u16,
    pub(super) owners: Arc<BucketMap>,
}

/// How a common frame under a port segment is judged.
#[derive(Clone, Debug)]
pub(super) enum Path {
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
pub(super) struct Segment {
    pub(super) end: u16,
    pub(super) rule: u32,
    /// `Some` exactly when `path` is [`Path::Hashed`] (the frame path
    /// tests this pointer, not the enum).
    pub(super) hashed: Option<Hashed>,
    pub(super) path: Path,
}

/// The rule lookup of one IPv4 VIP.
#[derive(Clone, Debug)]
pub(super) struct VipV4 {
    pub(super) addr: u32,
    /// Per protocol (TCP, then UDP): segments in ascending port order that
    /// together cover 0..=65535, adjacent ones naming different rules.
    pub(super) segments: [Vec<Segment>; 2],
    /// Per protocol, the first segment, held inline: with the usual single
    /// all-ports rule, the lookup is one compare.
    pub(super) first: [Segment; 2],
}

impl VipV4 {
    pub(super) fn new(map: &ClusterMap, rules: &[RuleV4], addr: u32) -> Self {
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
    pub(super) fn segment(&self, port: u16, udp: bool) -> &Segment {
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
    pub(super) fn rule(&self, port: u16, udp: bool) -> u32 {
        self.segment(port, udp).rule
    }
}

/// The ports of `vip` and TCP (or UDP when `udp`) split where the rules
/// that apply start or end; within a piece the covering rule cannot
/// change, so the rule at its first port is the rule at every port.
pub(super) fn segments(map: &ClusterMap, rules: &[RuleV4], vip: u32, udp: bool) -> Vec<Segment> {
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
pub(super) fn path(map: &ClusterMap, rule: u32, udp: bool) -> (Path, Option<Hashed>) {
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

/// The map compiled for [`Dataplane::judge`](super::Dataplane::judge)'s common IPv4 frame: VIPs as
/// integers with their port rules resolved into segments that carry each
/// rule's owners as host ID bytes, so the verdict builds no `IpAddr` and
/// walks no rule list. A pure function of the map, rebuilt with it; its
/// answers are the map's (`rule_for`, `owner`, and the bucket arithmetic
/// of [`affinity_hash`](crate::hash::affinity_hash)), which the tests check.
#[derive(Clone, Debug)]
pub(super) struct FastV4 {
    /// The first IPv4 VIP's address, or (no IPv4 VIP) a value no `u32`
    /// equals.
    pub(super) first_addr: u64,
    /// `first.addr` as a frame carries it (its four bytes in native
    /// order), for the hot path's compare without a byte swap. (With no
    /// IPv4 VIP, `first` has no hashed segment, so the hot path never
    /// gets as far as comparing.)
    pub(super) first_addr_wire: u32,
    /// The first IPv4 VIP, held inline (most clusters have one; a VIP of
    /// no rule when there is none, never returned).
    pub(super) first: VipV4,
    /// The others.
    pub(super) rest: Vec<VipV4>,
    pub(super) local: u8,
    pub(super) seed: u64,
}

impl FastV4 {
    pub(super) fn new(map: &ClusterMap) -> Self {
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
    pub(super) fn vip(&self, addr: u32) -> Option<&VipV4> {
        if u64::from(addr) == self.first_addr {
            return Some(&self.first);
        }
        self.rest.iter().find(|v| v.addr == addr)
    }
}

/// The bucket of an IPv4 flow under a hashed rule and that bucket's owner
/// (host ID, 0 for none): `Dataplane::bucket` and [`ClusterMap::owner`].
#[inline(always)]
pub(super) fn hashed_owner(seed: u64, rule: &Hashed, client: u32, client_port: u16) -> (u32, u8) {
    let b = bucket_of(masked_hash_v4(
        seed,
        client & rule.addr_mask,
        client_port & rule.port_mask,
    ));
    (b, rule.owners.owner_id(b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::descriptor::DescriptorConfig;
    use crate::model::{PortRule, Protocol};
    use crate::pipeline::tests::{build_map, rules, variant_maps, VIP};
    use crate::pipeline::Dataplane;
    use proptest::prelude::*;
    use std::net::Ipv4Addr;

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
}
