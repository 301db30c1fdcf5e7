//! Cluster fixtures: the VIPs, rules and specs the tests share.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use shoal_dataplane::{
    Affinity, ClusterMode, ClusterSpec, FilterMode, HostId, HostSet, PortRule, Protocol,
};

/// The IPv4 VIP of the shared fixtures.
pub const VIP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 100);
/// The IPv6 VIP of the shared fixtures.
pub const VIP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0x100);

/// The bucket seed of the shared fixtures. The dataplane takes any value;
/// the control-plane simulator's random-event seeds were chosen and checked
/// under this one (another sends them down other paths).
pub const BUCKET_SEED: u64 = 0x967a_276c_516b_4211;

/// Host `n`.
///
/// # Panics
/// If `n` is not a host ID (1..=64).
pub fn host(n: u8) -> HostId {
    HostId::new(n).unwrap_or_else(|| panic!("{n} is not a host ID"))
}

/// The hosts `ids`.
pub fn hosts(ids: &[u8]) -> HostSet {
    ids.iter().map(|&i| host(i)).collect()
}

/// Load-balanced over the members with `affinity`.
pub const fn multiple(affinity: Affinity) -> FilterMode {
    FilterMode::Multiple { affinity }
}

/// A rule for one TCP `port` on every VIP.
pub fn tcp_port(port: u16, mode: FilterMode) -> PortRule {
    PortRule::new(None, (port, port), Protocol::Tcp, mode)
}

/// Every port, both protocols, every VIP, load-balanced with `affinity`.
pub fn default_rule(affinity: Affinity) -> PortRule {
    PortRule::new(None, (0, 65535), Protocol::Both, multiple(affinity))
}

/// A unicast-mode cluster on `vips` with `rules`, a /64 IPv6 network
/// prefix and [`BUCKET_SEED`].
pub fn unicast(vips: &[IpAddr], rules: Vec<PortRule>) -> ClusterSpec {
    ClusterSpec {
        vips: vips.to_vec(),
        mode: ClusterMode::Unicast,
        ipv6_network_prefix: 64,
        rules,
        bucket_seed: BUCKET_SEED,
    }
}

/// [`unicast`] on [`VIP`] alone.
pub fn one_vip(rules: Vec<PortRule>) -> ClusterSpec {
    unicast(&[IpAddr::V4(VIP)], rules)
}

/// [`unicast`] on [`VIP`] and [`VIP6`].
pub fn dual_stack(rules: Vec<PortRule>) -> ClusterSpec {
    unicast(&[IpAddr::V4(VIP), IpAddr::V6(VIP6)], rules)
}

/// A web cluster on [`VIP`]: port 80 spread with no affinity, port 22
/// on a single host.
pub fn web() -> ClusterSpec {
    one_vip(vec![
        tcp_port(80, multiple(Affinity::None)),
        tcp_port(22, FilterMode::Single),
    ])
}
