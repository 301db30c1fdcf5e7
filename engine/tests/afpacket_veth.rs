//! AF_PACKET backend on a veth pair between two namespaces this test creates.

#[path = "afpacket_support/mod.rs"]
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use shoal_dataplane::wire::ethertype;
use shoal_engine::afpacket::{AfPacket, AfPacketConfig, Membership};
use shoal_engine::io::FrameIo;
use support::*;

const CLUSTER_MAC: [u8; 6] = [0x02, 0xbf, 10, 60, 0, 100];
const IFF_PROMISC: u32 = 0x100;

fn flags(ns: &Netns, ifname: &str) -> u32 {
    let text = ns.read(&format!("/sys/class/net/{ifname}/flags"));
    u32::from_str_radix(text.trim_start_matches("0x"), 16).expect("flags")
}

#[test]
fn receives_cluster_and_normal_frames_but_not_its_own() {
    if !privileged("afpacket_veth::receives_cluster_and_normal_frames_but_not_its_own") {
        return;
    }
    let host = Netns::new("afp-h");
    let peer = Netns::new("afp-p");
    veth(&host, "h0", "10.60.0.1", &peer, "p0", "10.60.0.2");
    let host_mac = host.mac("h0");
    let peer_mac = peer.mac("p0");

    let config = AfPacketConfig {
        memberships: vec![Membership::Promiscuous],
        ..AfPacketConfig::default()
    };
    let mut rx = host
        .run(|| AfPacket::open("h0", &config))
        .expect("open host socket");
    assert_ne!(
        flags(&host, "h0") & IFF_PROMISC,
        0,
        "promiscuous while the socket is open"
    );
    assert!(rx.describe().contains("h0"));
    let mut tx = peer
        .run(|| AfPacket::open("p0", &AfPacketConfig::default()))
        .expect("open peer socket");

    let to_cluster = udp_frame(
        CLUSTER_MAC,
        peer_mac,
        [10, 60, 0, 2],
        [10, 60, 0, 100],
        5000,
        80,
        b"cluster",
    );
    let to_host = udp_frame(
        host_mac,
        peer_mac,
        [10, 60, 0, 2],
        [10, 60, 0, 1],
        5001,
        81,
        b"normal",
    );
    let heartbeat = ether(
        [0xff; 6],
        peer_mac,
        ethertype::HEARTBEAT,
        b"heartbeat-body-padding-to-minimum-size......",
    );
    assert_eq!(
        tx.transmit(&[&to_cluster, &to_host, &heartbeat]).unwrap(),
        3
    );
    // Frames the host itself sends (here: a datagram from the host kernel)
    // must not come back into its ring.
    host.run(|| {
        let sock = std::net::UdpSocket::bind("10.60.0.1:0").expect("bind");
        sock.send_to(b"kernel-outgoing", "10.60.0.2:9")
            .expect("send");
    });
    let own = |f: &Vec<u8>| {
        ipv4_of(f).is_some_and(|(p, src, _, l4)| {
            p == 17 && src == [10, 60, 0, 1] && l4.ends_with(b"kernel-outgoing")
        })
    };
    let wanted = [to_cluster.clone(), to_host.clone(), heartbeat.clone()];
    let seen = collect(&mut rx, Duration::from_secs(3), |seen| {
        wanted.iter().all(|w| seen.contains(w))
    });
    for w in &wanted {
        assert!(seen.contains(w), "frame to {:02x?} not received", &w[..6]);
    }
    // Give a stray own frame time to show up, then check it never did.
    let more = collect(&mut rx, Duration::from_millis(200), |_| false);
    assert!(
        !seen.iter().chain(&more).any(own),
        "own outgoing frame was received"
    );
    // The peer did see it, so it really left.
    let at_peer = collect(&mut tx, Duration::from_secs(2), |seen| seen.iter().any(own));
    assert!(
        at_peer.iter().any(own),
        "host datagram never reached the peer"
    );
    assert!(rx.stats().received >= 3);

    drop(rx);
    assert_eq!(
        flags(&host, "h0") & IFF_PROMISC,
        0,
        "promiscuous mode released with the socket"
    );
}

#[test]
fn fanout_splits_flows_without_duplicating() {
    if !privileged("afpacket_veth::fanout_splits_flows_without_duplicating") {
        return;
    }
    let host = Netns::new("fan-h");
    let peer = Netns::new("fan-p");
    veth(&host, "h0", "10.61.0.1", &peer, "p0", "10.61.0.2");
    let peer_mac = peer.mac("p0");
    let config = AfPacketConfig {
        fanout_group: Some(0x5ea1),
        ..AfPacketConfig::default()
    };
    let (a, b) = host.run(|| (AfPacket::open("h0", &config), AfPacket::open("h0", &config)));
    let mut a = a.expect("first fanout member");
    let mut b = b.expect("second fanout member");
    let mut tx = peer
        .run(|| AfPacket::open("p0", &AfPacketConfig::default()))
        .expect("peer socket");

    const FLOWS: u16 = 64;
    const PER_FLOW: u16 = 5;
    let mut frames = Vec::new();
    for round in 0..PER_FLOW {
        for flow in 0..FLOWS {
            let payload = [
                b's',
                b'h',
                (flow >> 8) as u8,
                flow as u8,
                round as u8,
                0,
                0,
                0,
            ];
            frames.push(udp_frame(
                CLUSTER_MAC,
                peer_mac,
                [10, 61, 1, (flow % 200) as u8 + 1],
                [10, 61, 0, 100],
                20000 + flow,
                80,
                &payload,
            ));
        }
    }
    for chunk in frames.chunks(32) {
        let refs: Vec<&[u8]> = chunk.iter().map(Vec::as_slice).collect();
        assert_eq!(tx.transmit(&refs).unwrap(), refs.len());
        std::thread::sleep(Duration::from_millis(2));
    }

    // Drain both members until every frame arrived somewhere.
    let total = usize::from(FLOWS * PER_FLOW);
    let mut got: [Vec<Vec<u8>>; 2] = [Vec::new(), Vec::new()];
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let ours = |f: &[u8]| {
        ipv4_of(f).is_some_and(|(p, _, dst, l4)| {
            p == 17 && dst == [10, 61, 0, 100] && l4.len() >= 16 && &l4[8..10] == b"sh"
        })
    };
    while got[0].len() + got[1].len() < total && std::time::Instant::now() < deadline {
        for (i, sock) in [&mut a, &mut b].into_iter().enumerate() {
            sock.receive(256, &mut |fs| {
                got[i].extend(fs.iter().filter(|f| ours(f)).map(|f| f.to_vec()))
            })
            .unwrap();
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let flow_of = |f: &Vec<u8>| u16::from_be_bytes([f[34], f[35]]);
    let mut owner: BTreeMap<u16, usize> = BTreeMap::new();
    let mut distinct = BTreeSet::new();
    for (i, frames) in got.iter().enumerate() {
        for f in frames {
            assert!(distinct.insert(f.clone()), "frame delivered twice");
            let prev = owner.insert(flow_of(f), i);
            assert!(
                prev.is_none() || prev == Some(i),
                "flow {} split across sockets",
                flow_of(f)
            );
        }
    }
    assert_eq!(
        distinct.len(),
        total,
        "every frame reached exactly one member"
    );
    let on_a = owner.values().filter(|&&i| i == 0).count();
    assert!(
        on_a > 0 && on_a < usize::from(FLOWS),
        "hash fanout used both members ({on_a} of {FLOWS} flows on the first)"
    );
    eprintln!(
        "fanout: {on_a} flows on member 0, {} on member 1",
        usize::from(FLOWS) - on_a
    );
}
