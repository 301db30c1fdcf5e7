//! The cluster's domain model: hosts, modes, port rules and affinity.
//!
//! These are the owned, slow-path types that configuration produces and the
//! control plane agrees on. The frame path reads them through the compiled
//! [`crate::map::ClusterMap`], never directly.

use std::fmt;
use std::net::IpAddr;

/// Most hosts one cluster can hold (host IDs are `1..=MAX_HOSTS`).
pub const MAX_HOSTS: usize = 64;

/// Most port rules one cluster can hold (one heartbeat carries all of them).
pub const MAX_RULES: usize = 32;

/// NLB's default load weight for a host in a multiple-host rule.
pub const DEFAULT_WEIGHT: u8 = 50;

/// Largest load weight a host may be given.
pub const MAX_WEIGHT: u8 = 100;

/// A host's identity in the cluster, `1..=64`; also its priority (1 is highest).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HostId(u8);

impl HostId {
    /// Returns the host ID, or `None` when `id` is outside `1..=64`.
    pub const fn new(id: u8) -> Option<Self> {
        if id >= 1 && id as usize <= MAX_HOSTS {
            Some(Self(id))
        } else {
            None
        }
    }

    /// The numeric ID, `1..=64`.
    pub const fn get(self) -> u8 {
        self.0
    }

    /// Zero-based index, `0..64`, for per-host tables.
    pub const fn index(self) -> usize {
        self.0 as usize - 1
    }

    /// Every possible host ID in ascending order.
    pub fn all() -> impl Iterator<Item = HostId> {
        (1..=MAX_HOSTS as u8).map(HostId)
    }
}

impl fmt::Debug for HostId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "host{}", self.0)
    }
}

impl fmt::Display for HostId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A set of host IDs as a 64-bit mask (bit `id - 1`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct HostSet(u64);

impl HostSet {
    /// The empty set.
    pub const EMPTY: HostSet = HostSet(0);

    /// A set from its raw mask (bit `id - 1` set for each member).
    pub const fn from_bits(bits: u64) -> Self {
        Self(bits)
    }

    /// The raw mask.
    pub const fn bits(self) -> u64 {
        self.0
    }

    /// Adds `id`.
    pub fn insert(&mut self, id: HostId) {
        self.0 |= 1 << id.index();
    }

    /// Removes `id`.
    pub fn remove(&mut self, id: HostId) {
        self.0 &= !(1 << id.index());
    }

    /// Whether `id` is a member.
    pub const fn contains(self, id: HostId) -> bool {
        self.0 & (1 << id.index()) != 0
    }

    /// Number of members.
    pub const fn len(self) -> usize {
        self.0.count_ones() as usize
    }

    /// Whether the set has no member.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The member with the lowest ID (the highest priority).
    pub fn first(self) -> Option<HostId> {
        if self.0 == 0 {
            None
        } else {
            HostId::new(self.0.trailing_zeros() as u8 + 1)
        }
    }

    /// Members in ascending ID order.
    pub fn iter(self) -> impl Iterator<Item = HostId> {
        HostId::all().filter(move |h| self.contains(*h))
    }
}

impl FromIterator<HostId> for HostSet {
    fn from_iter<I: IntoIterator<Item = HostId>>(iter: I) -> Self {
        let mut s = HostSet::EMPTY;
        for h in iter {
            s.insert(h);
        }
        s
    }
}

impl fmt::Debug for HostSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter().map(|h| h.get())).finish()
    }
}

/// How cluster frames reach every host: the `mode` key of README's
/// Configuration section.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ClusterMode {
    /// Hosts receive frames for the unicast cluster MAC `02-bf-w-x-y-z`.
    Unicast,
    /// The multicast cluster MAC `03-bf-w-x-y-z` sits beside each NIC's own.
    Multicast,
    /// Hosts join group 239.255.y.z, MAC `01-00-5e-7f-y-z`.
    Igmp,
}

/// Which transport a port rule covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// TCP only.
    Tcp,
    /// UDP only.
    Udp,
    /// TCP and UDP.
    Both,
}

impl Protocol {
    /// Whether the rule protocol covers IP protocol number `ip_proto`.
    pub const fn covers(self, ip_proto: u8) -> bool {
        match self {
            Protocol::Tcp => ip_proto == 6,
            Protocol::Udp => ip_proto == 17,
            Protocol::Both => ip_proto == 6 || ip_proto == 17,
        }
    }
}

/// Which part of the client's address picks the bucket (NLB's affinity).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Affinity {
    /// Client address and port: spreads best, no stickiness.
    None,
    /// Client address: a client stays on one host (NLB's default).
    Single,
    /// Client network: IPv4 /24 ("Class C"), IPv6 the configured prefix.
    Network,
}

/// How a port rule spreads its traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FilterMode {
    /// Buckets are owned by live hosts in proportion to their load weights.
    Multiple {
        /// Which part of the client picks the bucket.
        affinity: Affinity,
    },
    /// The live host with the best handling priority takes all of it.
    Single,
    /// Nobody keeps it: every host drops it.
    Disabled,
}

/// One port rule: which traffic it covers and how that traffic is shared.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PortRule {
    /// The VIP it covers; `None` covers every VIP.
    pub vip: Option<IpAddr>,
    /// First port of the covered range (server port, inclusive).
    pub port_start: u16,
    /// Last port of the covered range (inclusive).
    pub port_end: u16,
    /// Covered transport.
    pub protocol: Protocol,
    /// How the covered traffic is shared.
    pub mode: FilterMode,
    /// Configured load weight per host index (`0..64`), for multiple-host rules.
    /// `0` means the host takes no new connections under this rule.
    pub weights: [u8; MAX_HOSTS],
    /// Handling priority per host index for single-host rules (lower is
    /// better; `0` means "use the host ID").
    pub priorities: [u8; MAX_HOSTS],
    /// Extended affinity: how long (seconds) a UDP or affinity client stays
    /// with its host after a remap; `0` is off (NLB's default).
    pub extended_affinity_timeout_s: u32,
}

impl PortRule {
    /// A rule covering `ports` of `vip` (or every VIP) with default weights.
    pub fn new(
        vip: Option<IpAddr>,
        ports: (u16, u16),
        protocol: Protocol,
        mode: FilterMode,
    ) -> Self {
        Self {
            vip,
            port_start: ports.0,
            port_end: ports.1,
            protocol,
            mode,
            weights: [DEFAULT_WEIGHT; MAX_HOSTS],
            priorities: [0; MAX_HOSTS],
            extended_affinity_timeout_s: 0,
        }
    }

    /// Whether two rules cover a common (VIP, port, protocol) triple.
    pub fn overlaps(&self, other: &PortRule) -> bool {
        let vip = match (self.vip, other.vip) {
            (Some(a), Some(b)) => a == b,
            // A specific-VIP rule takes precedence over an all-VIP rule, as in
            // NLB, so they never conflict.
            (None, None) => true,
            _ => false,
        };
        let proto = !matches!(
            (self.protocol, other.protocol),
            (Protocol::Tcp, Protocol::Udp) | (Protocol::Udp, Protocol::Tcp)
        );
        let ports = self.port_start <= other.port_end && other.port_start <= self.port_end;
        vip && proto && ports
    }

    /// The handling priority of `host` under a single-host rule (lower wins).
    pub fn priority(&self, host: HostId) -> u8 {
        match self.priorities[host.index()] {
            0 => host.get(),
            p => p,
        }
    }
}

/// Everything about the cluster every member must agree on, except who is live.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterSpec {
    /// Virtual IPs; the first IPv4 one is the primary VIP that names the
    /// cluster MAC.
    pub vips: Vec<IpAddr>,
    /// How frames reach every host.
    pub mode: ClusterMode,
    /// Prefix length that `Affinity::Network` groups IPv6 clients by.
    pub ipv6_network_prefix: u8,
    /// Port rules, checked not to overlap.
    pub rules: Vec<PortRule>,
    /// Seed of the bucket hash, the same on every member. It must be secret
    /// (the engine derives it from the cluster key): whoever knows it can
    /// compute which host owns which client. Tests may use any value.
    pub bucket_seed: u64,
}
