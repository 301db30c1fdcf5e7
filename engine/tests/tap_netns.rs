//! The TAP exception path in a private namespace: a SYN for the VIP written
//! into the TAP, carrying the cluster MAC, makes the kernel answer out of the
//! real interface with that interface's own MAC.

#[path = "afpacket_support/mod.rs"]
mod support;

use std::net::IpAddr;
use std::time::Duration;

use shoal_engine::afpacket::{AfPacket, AfPacketConfig};
use shoal_engine::io::Delivery;
use shoal_engine::setup::{HostSetup, HostSetupConfig};
use support::*;

const CLUSTER_MAC: [u8; 6] = [0x02, 0xbf, 10, 62, 0, 100];
const VIP: [u8; 4] = [10, 62, 0, 100];
const PEER: [u8; 4] = [10, 62, 0, 2];

fn is_synack(f: &[u8], sport: u16, dport: u16) -> bool {
    ipv4_of(f).is_some_and(|(proto, src, dst, l4)| {
        proto == 6
            && src == VIP
            && dst == PEER
            && l4.len() >= 20
            && u16::from_be_bytes([l4[0], l4[1]]) == sport
            && u16::from_be_bytes([l4[2], l4[3]]) == dport
            && l4[13] & 0x12 == 0x12
    })
}

#[test]
fn syn_into_tap_is_answered_out_of_the_nic_with_its_own_mac() {
    if !privileged("tap_netns::syn_into_tap_is_answered_out_of_the_nic_with_its_own_mac") {
        return;
    }
    let host = Netns::new("tap-h");
    let peer = Netns::new("tap-p");
    veth(&host, "h0", "10.62.0.1", &peer, "p0", "10.62.0.2");
    let host_mac = host.mac("h0");
    let peer_mac = peer.mac("p0");
    // Strict reverse-path filtering everywhere: the setup must cope with it.
    host.sh("sysctl -qw net.ipv4.conf.all.rp_filter=1 net.ipv4.conf.h0.rp_filter=1");
    let mut watch = peer
        .run(|| AfPacket::open("p0", &AfPacketConfig::default()))
        .expect("peer socket");
    let state = std::env::temp_dir().join(format!("shoal-tap-test-{}", std::process::id()));

    let seen = host.run(|| {
        let mut config = HostSetupConfig::new("h0", vec![IpAddr::from(VIP)]);
        config.tap.queues = 2;
        config.state_dir = state.clone();
        let mut setup = HostSetup::apply(config).expect("host setup");
        let mut taps = setup.take_taps();
        assert_eq!(taps.len(), 2);
        let listener = std::net::TcpListener::bind("10.62.0.100:8080").expect("listen on the VIP");

        // One SYN through each queue, both addressed to the cluster MAC.
        let syn0 = tcp_syn_frame(CLUSTER_MAC, peer_mac, PEER, VIP, 40000, 8080);
        let syn1 = tcp_syn_frame(CLUSTER_MAC, peer_mac, PEER, VIP, 40001, 8080);
        assert_eq!(taps[0].deliver(&[&syn0]).unwrap(), 1);
        assert_eq!(taps[1].deliver(&[&syn1]).unwrap(), 1);
        let seen = collect(&mut watch, Duration::from_secs(3), |seen| {
            seen.iter().any(|f| is_synack(f, 8080, 40000))
                && seen.iter().any(|f| is_synack(f, 8080, 40001))
        });
        assert_eq!(taps[0].stats().delivered, 1);
        drop(listener);
        drop(taps);
        setup.teardown().expect("teardown");
        seen
    });
    let _ = std::fs::remove_dir_all(&state);

    for port in [40000, 40001] {
        let synack = seen
            .iter()
            .find(|f| is_synack(f, 8080, port))
            .unwrap_or_else(|| {
                panic!(
                    "no SYN-ACK for client port {port}; saw {} frames",
                    seen.len()
                )
            });
        assert_eq!(&synack[..6], &peer_mac, "SYN-ACK goes to the client's MAC");
        assert_eq!(
            &synack[6..12],
            &host_mac,
            "SYN-ACK leaves with the NIC's own MAC, not the cluster MAC"
        );
    }
    // The kernel resolved the client with the NIC's address, never the VIP
    // (arp_announce=2).
    for arp in seen
        .iter()
        .filter(|f| f.len() >= 42 && f[12..14] == [8, 6] && f[6..12] == host_mac)
    {
        assert_eq!(
            &arp[28..32],
            &[10, 62, 0, 1],
            "ARP sender address is the NIC's"
        );
    }
}
