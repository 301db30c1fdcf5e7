//! Cluster MAC addresses derived from the primary VIP (NLB's `ip2mac`).
//!
//! For primary VIP `w.x.y.z`: unicast `02-bf-w-x-y-z`, multicast
//! `03-bf-w-x-y-z`, IGMP multicast `01-00-5e-7f-y-z` for group `239.255.y.z`,
//! and the per-host masked source MAC `02-<host>-w-x-y-z` (NLB's
//! MaskSourceMAC) that keeps switches from learning the cluster MAC.

use std::fmt;
use std::net::Ipv4Addr;

use crate::model::{ClusterMode, HostId};

/// A 48-bit Ethernet address.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct Mac(pub [u8; 6]);

impl Mac {
    /// The broadcast address.
    pub const BROADCAST: Mac = Mac([0xff; 6]);

    /// Whether the group (multicast or broadcast) bit is set.
    pub const fn is_multicast(self) -> bool {
        self.0[0] & 1 != 0
    }
}

impl fmt::Display for Mac {
    /// NLB's notation: lowercase hex octets joined by `-`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}-{:02x}-{:02x}-{:02x}-{:02x}-{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

impl fmt::Debug for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Unicast-mode cluster MAC `02-bf-w-x-y-z`.
pub fn unicast_mac(vip: Ipv4Addr) -> Mac {
    let o = vip.octets();
    Mac([0x02, 0xbf, o[0], o[1], o[2], o[3]])
}

/// Multicast-mode cluster MAC `03-bf-w-x-y-z`.
pub fn multicast_mac(vip: Ipv4Addr) -> Mac {
    let o = vip.octets();
    Mac([0x03, 0xbf, o[0], o[1], o[2], o[3]])
}

/// IGMP-mode group `239.255.y.z` for VIP `w.x.y.z`.
pub fn igmp_group(vip: Ipv4Addr) -> Ipv4Addr {
    let o = vip.octets();
    Ipv4Addr::new(239, 255, o[2], o[3])
}

/// IGMP-mode cluster MAC `01-00-5e-7f-y-z` (the IPv4 multicast MAC of
/// [`igmp_group`]).
pub fn igmp_mac(vip: Ipv4Addr) -> Mac {
    let o = vip.octets();
    Mac([0x01, 0x00, 0x5e, 0x7f, o[2], o[3]])
}

/// The cluster MAC for `mode`.
pub fn cluster_mac(mode: ClusterMode, vip: Ipv4Addr) -> Mac {
    match mode {
        ClusterMode::Unicast => unicast_mac(vip),
        ClusterMode::Multicast => multicast_mac(vip),
        ClusterMode::Igmp => igmp_mac(vip),
    }
}

/// Unicast mode's masked source MAC `02-<host>-w-x-y-z` for frames a host sends.
pub fn masked_source_mac(host: HostId, vip: Ipv4Addr) -> Mac {
    let o = vip.octets();
    Mac([0x02, host.get(), o[0], o[1], o[2], o[3]])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nlb_formats() {
        let vip = Ipv4Addr::new(10, 0, 0, 100);
        assert_eq!(unicast_mac(vip).to_string(), "02-bf-0a-00-00-64");
        assert_eq!(multicast_mac(vip).to_string(), "03-bf-0a-00-00-64");
        assert_eq!(igmp_mac(vip).to_string(), "01-00-5e-7f-00-64");
        assert_eq!(igmp_group(vip), Ipv4Addr::new(239, 255, 0, 100));
        assert_eq!(
            masked_source_mac(HostId::new(3).unwrap(), vip).to_string(),
            "02-03-0a-00-00-64"
        );
        assert!(!unicast_mac(vip).is_multicast());
        assert!(multicast_mac(vip).is_multicast() && igmp_mac(vip).is_multicast());
    }
}
