//! The nftables rendering of AF_PACKET mode's ingress drop table: one
//! `netdev` table per NIC whose ingress chain drops cluster frames before
//! the kernel stack sees them (AF_PACKET taps run before the hook, so the
//! engine still receives them). Text only: loading it is
//! [`super::HostSetup`]'s job, through `nft -f -`.
//!
//! Cluster frames are those to a cluster MAC, heartbeats, ARP and
//! neighbour solicitations for a VIP, and every IPv4 or IPv6 packet to a
//! VIP whatever its destination MAC (broadcast, another multicast group,
//! another host's MAC, this host's own): the engine judges each one as
//! cluster traffic, and the host keeps it, through the TAP, only when its
//! filter says so; the NIC's stack, where the VIP is a local address, never
//! answers it. The one exception is IGMP to the cluster MAC, accepted so the
//! kernel still answers group-specific queries.

use std::fmt::Write as _;
use std::net::IpAddr;

use shoal_dataplane::wire::ethertype;

use super::HostSetupConfig;
use crate::tap::format_mac;

/// The table name for NIC `interface`: `shoal_<nic>`, with characters nft
/// does not allow in names replaced by `_`.
pub(super) fn table_name(interface: &str) -> String {
    let clean: String = interface
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("shoal_{clean}")
}

/// The ruleset that installs the table, replacing any stale one in the same
/// transaction: cluster MACs dropped (except IGMP, so the kernel still
/// answers group-specific queries), heartbeats dropped, ARP for a VIP and
/// IPv6 neighbour solicitations for a VIP dropped.
pub(super) fn ruleset(config: &HostSetupConfig) -> String {
    let table = table_name(&config.interface);
    let mut s = String::new();
    // Declaring then deleting makes the load replace any stale table in
    // the same transaction, and not fail when there is none.
    let _ = writeln!(s, "table netdev {table} {{}}");
    let _ = writeln!(s, "delete table netdev {table}");
    let _ = writeln!(s, "table netdev {table} {{");
    let _ = writeln!(s, "  chain ingress {{");
    let _ = writeln!(
        s,
        "    type filter hook ingress device \"{}\" priority -500; policy accept;",
        config.interface
    );
    let macs: Vec<String> = config.cluster_macs.iter().map(|m| format_mac(*m)).collect();
    let macs = macs.join(", ");
    let _ = writeln!(s, "    ether daddr {{ {macs} }} ip protocol igmp accept");
    let _ = writeln!(s, "    ether daddr {{ {macs} }} drop");
    let _ = writeln!(s, "    ether type 0x{:04x} drop", ethertype::HEARTBEAT);
    let v4: Vec<String> = config
        .vips
        .iter()
        .filter(|v| v.is_ipv4())
        .map(ToString::to_string)
        .collect();
    if !v4.is_empty() {
        let _ = writeln!(s, "    arp daddr ip {{ {} }} drop", v4.join(", "));
        let _ = writeln!(s, "    ip daddr {{ {} }} drop", v4.join(", "));
    }
    for vip in &config.vips {
        if let IpAddr::V6(v6) = vip {
            // nft 1.0.6 has no `icmpv6 taddr`: the NS target address is
            // the 128 bits after the 8-byte ICMPv6 header.
            let _ = writeln!(
                s,
                "    icmpv6 type nd-neighbor-solicit @th,64,128 0x{:032x} drop",
                u128::from(*v6)
            );
        }
    }
    let v6: Vec<String> = config
        .vips
        .iter()
        .filter(|v| v.is_ipv6())
        .map(ToString::to_string)
        .collect();
    if !v6.is_empty() {
        let _ = writeln!(s, "    ip6 daddr {{ {} }} drop", v6.join(", "));
    }
    let _ = writeln!(s, "  }}");
    let _ = writeln!(s, "}}");
    s
}

/// A script that deletes table `family name` if it exists (and does not
/// fail when it does not).
pub(super) fn delete_script(family: &str, name: &str) -> String {
    format!("table {family} {name} {{}}\ndelete table {family} {name}\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ruleset_covers_every_cluster_frame_kind() {
        let mut config = HostSetupConfig::new(
            "eth0",
            vec!["10.0.0.100".parse().unwrap(), "fd00::100".parse().unwrap()],
        );
        config.cluster_macs = vec![[2, 0xbf, 10, 0, 0, 100]];
        let text = ruleset(&config);
        assert!(text.contains("device \"eth0\""));
        assert!(text.contains("ether daddr { 02:bf:0a:00:00:64 } drop"));
        assert!(text.contains("ether type 0x886f drop"));
        assert!(text.contains("arp daddr ip { 10.0.0.100 } drop"));
        assert!(text.contains("@th,64,128 0xfd000000000000000000000000000100 drop"));
        assert_eq!(table_name("eth0.100"), "shoal_eth0_100");
    }

    #[test]
    fn packets_to_a_vip_are_dropped_whatever_their_mac_after_the_igmp_exception() {
        let mut config = HostSetupConfig::new(
            "eth0",
            vec![
                "10.0.0.100".parse().unwrap(),
                "10.0.0.101".parse().unwrap(),
                "fd00::100".parse().unwrap(),
            ],
        );
        config.cluster_macs = vec![[1, 0, 0x5e, 0x7f, 0, 100]];
        let text = ruleset(&config);
        let line = |needle: &str| {
            text.lines()
                .position(|l| l.trim() == needle)
                .unwrap_or_else(|| panic!("no line {needle:?} in\n{text}"))
        };
        let igmp = line("ether daddr { 01:00:5e:7f:00:64 } ip protocol igmp accept");
        let v4 = line("ip daddr { 10.0.0.100, 10.0.0.101 } drop");
        let v6 = line("ip6 daddr { fd00::100 } drop");
        assert!(igmp < v4 && igmp < v6, "{text}");
        // No MAC condition on the VIP rules.
        assert!(!text.lines().nth(v4).unwrap().contains("ether"));

        let only_v4 = ruleset(&HostSetupConfig::new(
            "eth0",
            vec!["10.0.0.100".parse().unwrap()],
        ));
        assert!(!only_v4.contains("ip6 daddr"), "{only_v4}");
    }
}
