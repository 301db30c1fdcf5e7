//! The agreed view and the immutable cluster map compiled from it.
//!
//! The control plane agrees on a [`View`] (who is live, with which weights and
//! drain states) and compiles it with the [`ClusterSpec`] into a
//! [`ClusterMap`]: everything a poll loop needs to judge a frame, immutable,
//! shared behind an `Arc` and swapped once per batch. Building a map is the
//! slow path (bucket maps are computed here); reading one is the frame path.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use crate::bucket::{BucketMap, GROUPS};
use crate::mac::{cluster_mac, Mac};
use crate::model::{ClusterMode, ClusterSpec, FilterMode, HostId, HostSet, PortRule, MAX_HOSTS};

/// What the cluster agreed on: live members and their per-rule standing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct View {
    /// Live hosts.
    pub members: HostSet,
    /// Effective load weight per rule (same order as the spec's rules) and
    /// host index. `0` means the host takes no new connections under that
    /// rule (drained, or weight 0) but keeps serving the ones it tracks.
    pub weights: Vec<[u8; MAX_HOSTS]>,
    /// Per rule, the hosts on which the rule is disabled: they take none of
    /// its traffic, not even connections they track.
    pub disabled: Vec<HostSet>,
}

impl View {
    /// The converged view in which `members` are live with their configured
    /// weights, nobody draining and every rule enabled.
    pub fn converged(spec: &ClusterSpec, members: HostSet) -> Self {
        Self {
            members,
            weights: spec.rules.iter().map(|r| r.weights).collect(),
            disabled: vec![HostSet::EMPTY; spec.rules.len()],
        }
    }

    /// Marks `host` as draining on every rule: no new connections anywhere.
    pub fn drain_host(&mut self, host: HostId) {
        for w in &mut self.weights {
            w[host.index()] = 0;
        }
    }
}

/// Who takes new connections under one rule.
#[derive(Clone, Debug)]
pub enum RuleOwner {
    /// Multiple-host rule: a bucket map.
    Buckets(Arc<BucketMap>),
    /// Single-host rule: the live host with the best handling priority.
    Single(Option<HostId>),
    /// Disabled rule: nobody.
    Disabled,
}

/// One port rule, compiled against the view.
#[derive(Clone, Debug)]
pub struct CompiledRule {
    /// The rule as configured.
    pub rule: PortRule,
    /// Its owner(s) for new connections.
    pub owner: RuleOwner,
    /// Whether the rule is disabled on the local host.
    pub disabled_here: bool,
    /// Groups (see [`crate::bucket::GROUPS`]) in which some other host still
    /// serves connections it tracks: non-SYN frames there are left to them.
    pub dirty_elsewhere: Arc<GroupBits>,
}

/// A bitmap over the dirty-tracking groups of one rule.
#[derive(Clone, PartialEq, Eq)]
pub struct GroupBits(Box<[u64]>);

impl std::fmt::Debug for GroupBits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GroupBits({} set)", self.count())
    }
}

impl Default for GroupBits {
    fn default() -> Self {
        Self(vec![0u64; GROUPS / 64].into_boxed_slice())
    }
}

impl GroupBits {
    /// Whether group `g` is set.
    #[inline(always)]
    pub fn contains(&self, g: u32) -> bool {
        let g = g as usize % GROUPS;
        self.0[g / 64] & (1 << (g % 64)) != 0
    }

    /// Sets group `g`.
    pub fn insert(&mut self, g: u32) {
        let g = g as usize % GROUPS;
        self.0[g / 64] |= 1 << (g % 64);
    }

    /// Number of groups set.
    pub fn count(&self) -> usize {
        self.0.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// Set groups in ascending order.
    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        (0..GROUPS as u32).filter(|&g| self.contains(g))
    }

    /// Whether no group is set.
    pub fn is_empty(&self) -> bool {
        self.0.iter().all(|&w| w == 0)
    }
}

/// Everything a poll loop needs to judge frames, for one local host and one
/// agreed view. Immutable; build a new one for a new view.
#[derive(Clone, Debug)]
pub struct ClusterMap {
    /// Increases with every map a control plane publishes.
    pub epoch: u64,
    /// The host this map judges for.
    pub local: HostId,
    /// The agreed view it was built from.
    pub view: View,
    /// Cluster mode.
    pub mode: ClusterMode,
    /// The cluster MAC for the mode.
    pub cluster_mac: Mac,
    /// The primary VIP (names the cluster MAC), if the cluster has an IPv4 VIP.
    pub primary_vip: Option<Ipv4Addr>,
    /// Every VIP.
    pub vips: Vec<IpAddr>,
    /// Rules, in the spec's order.
    pub rules: Vec<CompiledRule>,
    /// Lookup order: indexes into `rules`, specific-VIP rules first.
    pub(crate) order: Vec<usize>,
    /// The default host: the live member with the lowest ID. It keeps cluster
    /// traffic no rule covers and answers ARP/ND for the VIPs.
    pub default_host: Option<HostId>,
    /// IPv6 prefix length for network affinity.
    pub ipv6_network_prefix: u8,
    /// Hash seed shared by the cluster ([`ClusterSpec::bucket_seed`]).
    pub seed: u64,
}

/// Bucket maps by what they are computed from (the eligible hosts and their
/// weights), kept across builds: a compiler that keeps one can compute, while
/// nothing else is pending, the maps of views it expects next (a member
/// failing) so that the view, when it comes, compiles without computing a
/// bucket map.
#[derive(Debug, Default)]
pub struct BucketCache {
    maps: HashMap<(u64, [u8; MAX_HOSTS]), Arc<BucketMap>>,
}

impl BucketCache {
    fn get_or_compute(&mut self, eligible: HostSet, w: [u8; MAX_HOSTS]) -> Arc<BucketMap> {
        self.maps
            .entry((eligible.bits(), w))
            .or_insert_with(|| Arc::new(BucketMap::compute(eligible, &w)))
            .clone()
    }

    /// Computes the bucket maps `view` needs (see [`ClusterMap::build`])
    /// that are not held yet, unless `stop` says to give up (asked every
    /// 1,024 buckets). Returns whether all of them are now held.
    pub fn warm(&mut self, spec: &ClusterSpec, view: &View, stop: &dyn Fn() -> bool) -> bool {
        for i in 0..spec.rules.len() {
            let Some((eligible, w)) = bucket_inputs(spec, view, i) else {
                continue;
            };
            if self.maps.contains_key(&(eligible.bits(), w)) {
                continue;
            }
            match BucketMap::compute_unless(eligible, &w, stop) {
                Some(m) => {
                    self.maps.insert((eligible.bits(), w), Arc::new(m));
                }
                None => return false,
            }
        }
        true
    }

    /// Bucket maps held.
    pub fn len(&self) -> usize {
        self.maps.len()
    }

    /// Whether no bucket map is held.
    pub fn is_empty(&self) -> bool {
        self.maps.is_empty()
    }

    /// Keeps only the bucket maps `map` uses.
    pub fn retain_used_by(&mut self, map: &ClusterMap) {
        self.maps.retain(|_, m| {
            map.rules
                .iter()
                .any(|r| matches!(&r.owner, RuleOwner::Buckets(b) if Arc::ptr_eq(b, m)))
        });
    }
}

/// What rule `i`'s bucket map is computed from under `view`: its eligible
/// hosts (members, less those it is disabled on) and their weights (zero
/// elsewhere); `None` unless it is a multiple-host rule. Equal inputs give
/// equal bucket maps, so they key any cache of them.
pub fn bucket_inputs(
    spec: &ClusterSpec,
    view: &View,
    i: usize,
) -> Option<(HostSet, [u8; MAX_HOSTS])> {
    let rule = spec.rules.get(i)?;
    if !matches!(rule.mode, FilterMode::Multiple { .. }) {
        return None;
    }
    let disabled = view.disabled.get(i).copied().unwrap_or_default();
    let eligible = HostSet::from_bits(view.members.bits() & !disabled.bits());
    let weights = view.weights.get(i).copied().unwrap_or(rule.weights);
    let mut w = [0u8; MAX_HOSTS];
    for h in eligible.iter() {
        w[h.index()] = weights[h.index()];
    }
    Some((eligible, w))
}

impl ClusterMap {
    /// Compiles `spec` under `view` for `local`.
    ///
    /// Bucket maps are computed once per distinct weight vector and shared
    /// between rules. `view.weights` and `view.disabled` must have one entry
    /// per rule; missing entries are taken from the spec (configured weights,
    /// enabled).
    pub fn build(spec: &ClusterSpec, view: &View, local: HostId, epoch: u64) -> Self {
        Self::build_cached(spec, view, local, epoch, &mut BucketCache::default())
    }

    /// [`ClusterMap::build`], taking bucket maps from `cache` and adding the
    /// ones it computes. A bucket map is a pure function of its key (the
    /// eligible hosts and their weights), so the result is the same.
    pub fn build_cached(
        spec: &ClusterSpec,
        view: &View,
        local: HostId,
        epoch: u64,
        cache: &mut BucketCache,
    ) -> Self {
        let rules = spec
            .rules
            .iter()
            .enumerate()
            .map(|(i, rule)| {
                let disabled = view.disabled.get(i).copied().unwrap_or_default();
                let eligible = HostSet::from_bits(view.members.bits() & !disabled.bits());
                let weights = view.weights.get(i).copied().unwrap_or(rule.weights);
                let owner = match rule.mode {
                    FilterMode::Disabled => RuleOwner::Disabled,
                    FilterMode::Single => RuleOwner::Single(
                        eligible
                            .iter()
                            .filter(|h| weights[h.index()] > 0)
                            .min_by_key(|h| (rule.priority(*h), h.get())),
                    ),
                    FilterMode::Multiple { .. } => match bucket_inputs(spec, view, i) {
                        Some((eligible, w)) => {
                            RuleOwner::Buckets(cache.get_or_compute(eligible, w))
                        }
                        None => unreachable!("a multiple-host rule has bucket inputs"),
                    },
                };
                CompiledRule {
                    rule: rule.clone(),
                    owner,
                    disabled_here: disabled.contains(local),
                    dirty_elsewhere: Arc::new(GroupBits::default()),
                }
            })
            .collect::<Vec<_>>();
        let mut order: Vec<usize> = (0..rules.len()).collect();
        order.sort_by_key(|&i| (rules[i].rule.vip.is_none(), rules[i].rule.port_start, i));
        let primary_vip = spec.vips.iter().find_map(|v| match v {
            IpAddr::V4(a) => Some(*a),
            IpAddr::V6(_) => None,
        });
        Self {
            epoch,
            local,
            view: view.clone(),
            mode: spec.mode,
            cluster_mac: primary_vip
                .map(|v| cluster_mac(spec.mode, v))
                .unwrap_or_default(),
            primary_vip,
            vips: spec.vips.clone(),
            rules,
            order,
            default_host: view.members.first(),
            ipv6_network_prefix: spec.ipv6_network_prefix,
            seed: spec.bucket_seed,
        }
    }

    /// The same map judged for another local host (simulations, `classify`).
    pub fn for_host(&self, local: HostId) -> Self {
        let mut m = self.clone();
        m.local = local;
        for (i, r) in m.rules.iter_mut().enumerate() {
            r.disabled_here = self.view.disabled.get(i).is_some_and(|d| d.contains(local));
        }
        m
    }

    /// Sets the groups of rule `rule` that other hosts report dirty.
    pub fn set_dirty_elsewhere(&mut self, rule: usize, groups: GroupBits) {
        if let Some(r) = self.rules.get_mut(rule) {
            r.dirty_elsewhere = Arc::new(groups);
        }
    }

    /// Whether `ip` is one of the cluster's VIPs.
    #[inline]
    pub fn is_vip(&self, ip: IpAddr) -> bool {
        self.vips.contains(&ip)
    }

    /// The rule covering `(vip, port, ip_proto)`: a rule for that VIP wins
    /// over an all-VIP rule.
    #[inline]
    pub fn rule_for(&self, vip: IpAddr, port: u16, ip_proto: u8) -> Option<usize> {
        self.order.iter().copied().find(|&i| {
            let r = &self.rules[i].rule;
            r.vip.is_none_or(|v| v == vip)
                && r.protocol.covers(ip_proto)
                && r.port_start <= port
                && port <= r.port_end
        })
    }

    /// The rule that judges fragments of `(vip, ip_proto)` (which carry no
    /// ports after the first): among the rules for that VIP and protocol,
    /// the one covering the lowest port, specific-VIP rules first.
    pub fn fragment_rule(&self, vip: IpAddr, ip_proto: u8) -> Option<usize> {
        self.order.iter().copied().find(|&i| {
            let r = &self.rules[i].rule;
            r.vip.is_none_or(|v| v == vip) && r.protocol.covers(ip_proto)
        })
    }

    /// Who takes new connections of rule `rule` whose flow falls in `bucket`.
    #[inline]
    pub fn owner(&self, rule: usize, bucket: u32) -> Option<HostId> {
        match &self.rules[rule].owner {
            RuleOwner::Buckets(m) => m.owner(bucket),
            RuleOwner::Single(h) => *h,
            RuleOwner::Disabled => None,
        }
    }
}
