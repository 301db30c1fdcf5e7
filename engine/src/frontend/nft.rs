//! The nftables text of the frontend instance NAT: one `inet` table per
//! NIC, a `prerouting` NAT chain with one rule per port rule that has
//! `instances`, and one map per such rule from a client bucket to the
//! instance (VIP and port) that bucket's new connections go to. Text only:
//! loading it is [`super::Frontend`]'s job, through `nft -f -`.
//!
//! The rule hashes the client with the kernel's `jhash` into
//! [`INSTANCE_BUCKETS`] buckets, over the fields the rule's affinity keeps
//! (none: source address and port; single: source address; network:
//! source address masked to its /24 for IPv4 and to the cluster's
//! `ipv6_network_prefix` for IPv6), and looks the bucket up in the map the
//! dataplane's [`shoal_dataplane::instances::InstanceTable`] fills. A
//! bucket with no element (no live instance) is not translated: the packet
//! goes on to the rule's own port.

use std::fmt::Write as _;
use std::net::IpAddr;

use shoal_dataplane::instances::{InstanceTable, INSTANCE_BUCKETS};
use shoal_dataplane::{Affinity, FilterMode};

/// One rule's NAT: where it matches and how it hashes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NatRule {
    /// Index of the port rule (names the map `r<index>`).
    pub rule: usize,
    /// The VIP.
    pub vip: IpAddr,
    /// The rule's port (what clients connect to).
    pub port: u16,
    /// The rule's filtering mode (its affinity picks the hashed fields).
    pub mode: FilterMode,
    /// IPv6 prefix `Affinity::Network` keeps.
    pub ipv6_prefix: u8,
    /// The instance ports, in configuration order (the table's indices).
    pub ports: Vec<u16>,
    /// The hash seed (the same on every start, so a restart does not move
    /// clients between instances).
    pub seed: u32,
}

/// The table name for NIC `interface`: `shoal_fe_<nic>`.
pub fn table_name(interface: &str) -> String {
    let clean: String = interface
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("shoal_fe_{clean}")
}

fn hash_input(r: &NatRule) -> String {
    let affinity = match r.mode {
        FilterMode::Multiple { affinity } => affinity,
        _ => Affinity::None,
    };
    match (r.vip, affinity) {
        (IpAddr::V4(_), Affinity::None) => "ip saddr . tcp sport".into(),
        (IpAddr::V4(_), Affinity::Single) => "ip saddr".into(),
        (IpAddr::V4(_), Affinity::Network) => "ip saddr and 255.255.255.0".into(),
        (IpAddr::V6(_), Affinity::None) => "ip6 saddr . tcp sport".into(),
        (IpAddr::V6(_), Affinity::Single) => "ip6 saddr".into(),
        (IpAddr::V6(_), Affinity::Network) => {
            let p = r.ipv6_prefix.clamp(1, 128) as u32;
            let mask = std::net::Ipv6Addr::from(u128::MAX << (128 - p));
            format!("ip6 saddr and {mask}")
        }
    }
}

fn family(vip: IpAddr) -> &'static str {
    if vip.is_ipv4() {
        "ip"
    } else {
        "ip6"
    }
}

/// The whole table, replacing any stale one in the same transaction, with
/// every map empty (nothing translated until [`map_update`]).
pub fn ruleset(table: &str, rules: &[NatRule]) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "table inet {table} {{}}");
    let _ = writeln!(s, "delete table inet {table}");
    let _ = writeln!(s, "table inet {table} {{");
    for r in rules {
        let f = family(r.vip);
        let _ = writeln!(s, "  map r{} {{", r.rule);
        let _ = writeln!(
            s,
            "    typeof numgen inc mod {INSTANCE_BUCKETS} : {f} daddr . tcp dport"
        );
        let _ = writeln!(s, "  }}");
    }
    let _ = writeln!(s, "  chain prerouting {{");
    let _ = writeln!(
        s,
        "    type nat hook prerouting priority dstnat; policy accept;"
    );
    for r in rules {
        let f = family(r.vip);
        let _ = writeln!(
            s,
            "    {f} daddr {} tcp dport {} dnat {f} to jhash {} mod {INSTANCE_BUCKETS} seed 0x{:x} map @r{}",
            r.vip,
            r.port,
            hash_input(r),
            r.seed,
            r.rule
        );
    }
    let _ = writeln!(s, "  }}");
    let _ = writeln!(s, "}}");
    s
}

/// Replaces rule `r`'s map with `table` in one transaction.
pub fn map_update(table_name: &str, r: &NatRule, table: &InstanceTable) -> String {
    let mut s = format!("flush map inet {table_name} r{}\n", r.rule);
    let vip = match r.vip {
        IpAddr::V4(a) => a.to_string(),
        IpAddr::V6(a) => a.to_string(),
    };
    let elements: Vec<String> = (0..INSTANCE_BUCKETS)
        .filter_map(|b| {
            let i = table.owner(b)?;
            let port = r.ports.get(i)?;
            Some(format!("{b} : {vip} . {port}"))
        })
        .collect();
    if !elements.is_empty() {
        let _ = writeln!(
            s,
            "add element inet {table_name} r{} {{ {} }}",
            r.rule,
            elements.join(", ")
        );
    }
    s
}

/// Deletes table `name` if it exists.
pub fn delete_script(name: &str) -> String {
    format!("table inet {name} {{}}\ndelete table inet {name}\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_dataplane::instances::Instance;

    fn rule(vip: &str, affinity: Affinity) -> NatRule {
        NatRule {
            rule: 2,
            vip: vip.parse().unwrap(),
            port: 3128,
            mode: FilterMode::Multiple { affinity },
            ipv6_prefix: 64,
            ports: vec![3128, 3129],
            seed: 0x5348,
        }
    }

    #[test]
    fn the_hash_follows_the_affinity() {
        let t = ruleset("shoal_fe_eth0", &[rule("10.0.0.100", Affinity::None)]);
        assert!(
            t.contains("typeof numgen inc mod 1024 : ip daddr . tcp dport"),
            "{t}"
        );
        assert!(t.contains(
            "ip daddr 10.0.0.100 tcp dport 3128 dnat ip to jhash ip saddr . tcp sport mod 1024 seed 0x5348 map @r2"
        ), "{t}");
        let t = ruleset("x", &[rule("10.0.0.100", Affinity::Network)]);
        assert!(t.contains("jhash ip saddr and 255.255.255.0 mod"), "{t}");
        let t = ruleset("x", &[rule("fd00::100", Affinity::Network)]);
        assert!(t.contains("ip6 daddr fd00::100 tcp dport 3128 dnat ip6 to jhash ip6 saddr and ffff:ffff:ffff:ffff:: mod"), "{t}");
        let t = ruleset("x", &[rule("fd00::100", Affinity::Single)]);
        assert!(t.contains("jhash ip6 saddr mod"), "{t}");
        assert_eq!(table_name("eth0.5"), "shoal_fe_eth0_5");
    }

    #[test]
    fn the_map_names_every_bucket_of_a_live_instance() {
        let r = rule("10.0.0.100", Affinity::None);
        let t = InstanceTable::build(&[
            Instance {
                port: 3128,
                weight: 1,
            },
            Instance {
                port: 3129,
                weight: 0,
            },
        ]);
        let s = map_update("x", &r, &t);
        assert!(s.starts_with("flush map inet x r2\n"));
        assert_eq!(s.matches("10.0.0.100 . 3128").count(), INSTANCE_BUCKETS);
        assert!(!s.contains(". 3129"));
        let none = map_update("x", &r, &InstanceTable::empty());
        assert_eq!(none, "flush map inet x r2\n");
    }
}
