//! HostSetup in private namespaces: the nftables ingress table hides
//! cluster frames from the kernel while AF_PACKET still sees them, and
//! teardown (explicit, or on the next start after a crash) leaves the host
//! as it was.

#[path = "afpacket_support/mod.rs"]
mod support;

use std::net::{IpAddr, Ipv6Addr};
use std::path::Path;
use std::time::Duration;

use shoal_dataplane::wire::ethertype;
use shoal_engine::afpacket::{AfPacket, AfPacketConfig, Membership};
use shoal_engine::io::FrameIo;
use shoal_engine::setup::{HostSetup, HostSetupConfig};
use support::*;

/// Multicast-mode cluster MAC: the kernel accepts frames to it (pkt_type
/// multicast) and would answer a ping to the VIP — exactly what the table
/// must stop.
const CLUSTER_MAC: [u8; 6] = [0x03, 0xbf, 10, 63, 0, 100];
const VIP: [u8; 4] = [10, 63, 0, 100];
const NIC_IP: [u8; 4] = [10, 63, 0, 1];
const PEER: [u8; 4] = [10, 63, 0, 2];
const VIP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x63, 0, 0, 0, 0, 0, 0x100);
const NIC6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x63, 0, 0, 0, 0, 0, 1);
const PEER6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x63, 0, 0, 0, 0, 0, 2);

fn config(state: &Path, ingress_filter: bool) -> HostSetupConfig {
    let mut c = HostSetupConfig::new("h0", vec![IpAddr::from(VIP), IpAddr::from(VIP6)]);
    c.cluster_macs = vec![CLUSTER_MAC];
    c.ingress_filter = ingress_filter;
    c.state_dir = state.to_path_buf();
    c
}

fn echo_reply(f: &[u8], id: u16) -> bool {
    ipv4_of(f).is_some_and(|(p, src, dst, l4)| {
        p == 1
            && src == VIP
            && dst == PEER
            && l4.len() >= 8
            && l4[0] == 0
            && l4[4..6] == id.to_be_bytes()
    })
}

fn echo_request(f: &[u8], id: u16) -> bool {
    ipv4_of(f).is_some_and(|(p, _, dst, l4)| {
        p == 1 && dst == VIP && l4.len() >= 8 && l4[0] == 8 && l4[4..6] == id.to_be_bytes()
    })
}

fn arp_reply_for(f: &[u8], ip: [u8; 4]) -> bool {
    f.len() >= 42 && f[12..14] == [8, 6] && f[20..22] == [0, 2] && f[28..32] == ip
}

fn sysctls(ns: &Netns) -> Vec<String> {
    [
        "/proc/sys/net/ipv4/conf/h0/arp_ignore",
        "/proc/sys/net/ipv4/conf/h0/arp_announce",
        "/proc/sys/net/ipv4/conf/all/rp_filter",
    ]
    .iter()
    .map(|p| ns.read(p))
    .collect()
}

fn no_leftovers(ns: &Netns) {
    assert!(!ns.try_sh("ip link show dev shoal0"), "TAP left behind");
    assert!(
        !ns.try_sh("nft list table netdev shoal_h0"),
        "nft table left behind"
    );
    assert!(
        !ns.try_sh("nft list table inet shoal_fe_h0"),
        "frontend NAT table left behind"
    );
}

/// The frontend instances' NAT table as the frontend thread makes it.
fn make_frontend_table(ns: &Netns) {
    ns.sh(
        "printf 'table inet shoal_fe_h0 {\n chain prerouting {\n  type nat hook prerouting priority dstnat; policy accept;\n }\n}\n' | nft -f -",
    );
    assert!(ns.try_sh("nft list table inet shoal_fe_h0"));
}

#[test]
fn ingress_table_hides_cluster_frames_from_the_kernel_but_not_from_af_packet() {
    if !privileged(
        "setup_netns::ingress_table_hides_cluster_frames_from_the_kernel_but_not_from_af_packet",
    ) {
        return;
    }
    assert!(
        std::process::Command::new("nft")
            .arg("--version")
            .output()
            .is_ok(),
        "nft is not installed: apt-get install -y nftables"
    );
    let host = Netns::new("set-h");
    let peer = Netns::new("set-p");
    veth(&host, "h0", "10.63.0.1", &peer, "p0", "10.63.0.2");
    host.sh("sysctl -qw net.ipv4.conf.all.rp_filter=1");
    host.sh("ip addr add fd00:63::1/64 dev h0 nodad");
    let before = sysctls(&host);
    let host_mac = host.mac("h0");
    let peer_mac = peer.mac("p0");
    let mut peer_io = peer
        .run(|| AfPacket::open("p0", &AfPacketConfig::default()))
        .expect("peer socket");
    let state = std::env::temp_dir().join(format!("shoal-setup-test-{}", std::process::id()));

    // Without the table the kernel answers a ping sent to the cluster MAC:
    // this is what makes the test able to fail.
    host.run(|| {
        let _setup = HostSetup::apply(config(&state, false)).expect("setup without table");
        let ping = icmp_echo_frame(CLUSTER_MAC, peer_mac, PEER, VIP, 1);
        // IPv6: the NIC answers NS for its own address, never for the VIP
        // (which lives only on the TAP), even without the table.
        let ns_nic = neighbour_solicitation(peer_mac, PEER6, NIC6);
        let ns_vip = neighbour_solicitation(peer_mac, PEER6, VIP6);
        assert_eq!(peer_io.transmit(&[&ping, &ns_nic, &ns_vip]).unwrap(), 3);
        let seen = collect(&mut peer_io, Duration::from_secs(3), |s| {
            s.iter().any(|f| echo_reply(f, 1)) && s.iter().any(|f| is_neighbour_advert(f, NIC6))
        });
        assert!(
            seen.iter().any(|f| echo_reply(f, 1)),
            "kernel should answer without the table"
        );
        assert!(
            seen.iter().any(|f| is_neighbour_advert(f, NIC6)),
            "no NA for the NIC's own address"
        );
        assert!(
            !seen.iter().any(|f| is_neighbour_advert(f, VIP6)),
            "NIC answered NS for the VIP"
        );
    });
    no_leftovers(&host);
    assert_eq!(sysctls(&host), before);

    host.run(|| {
        let mut setup = HostSetup::apply(config(&state, true)).expect("setup with table");
        let afp_config = AfPacketConfig {
            memberships: vec![Membership::Multicast(CLUSTER_MAC)],
            ..AfPacketConfig::default()
        };
        let mut engine = AfPacket::open("h0", &afp_config).expect("engine socket");
        assert!(host.try_sh("nft list table netdev shoal_h0"));

        let ping = icmp_echo_frame(CLUSTER_MAC, peer_mac, PEER, VIP, 2);
        let heartbeat = ether(
            [0xff; 6],
            peer_mac,
            ethertype::HEARTBEAT,
            b"heartbeat-body-padded-to-minimum-length.....",
        );
        let arp_vip = arp_request(peer_mac, PEER, VIP);
        let arp_nic = arp_request(peer_mac, PEER, NIC_IP);
        let ns_vip = neighbour_solicitation(peer_mac, PEER6, VIP6);
        let batch: [&[u8]; 5] = [&ping, &heartbeat, &arp_vip, &arp_nic, &ns_vip];
        assert_eq!(peer_io.transmit(&batch).unwrap(), 5);

        // AF_PACKET runs before netdev ingress: the engine sees them all.
        let got = collect(&mut engine, Duration::from_secs(3), |s| {
            s.iter().any(|f| echo_request(f, 2))
                && s.contains(&heartbeat)
                && s.contains(&arp_vip)
                && s.contains(&ns_vip)
        });
        assert!(got.contains(&ns_vip), "engine missed the NS for the VIP");
        assert!(
            got.iter().any(|f| echo_request(f, 2)),
            "engine missed the ping"
        );
        assert!(got.contains(&heartbeat), "engine missed the heartbeat");
        assert!(got.contains(&arp_vip), "engine missed the ARP for the VIP");

        // The kernel answers ARP for its own address (the capture works) but
        // neither the ping nor the ARP for the VIP.
        let answers = collect(&mut peer_io, Duration::from_secs(1), |_| false);
        assert!(
            answers
                .iter()
                .any(|f| arp_reply_for(f, NIC_IP) && f[6..12] == host_mac),
            "no ARP reply for the NIC address"
        );
        assert!(
            !answers.iter().any(|f| echo_reply(f, 2)),
            "kernel answered a ping to the cluster MAC"
        );
        assert!(
            !answers.iter().any(|f| arp_reply_for(f, VIP)),
            "kernel answered ARP for the VIP"
        );

        let counters = host.sh("nft list table netdev shoal_h0");
        assert!(
            counters.contains(&format!("0x{:04x}", ethertype::HEARTBEAT)),
            "{counters}"
        );
        drop(engine);
        setup.teardown().expect("teardown");
        setup.teardown().expect("second teardown is a no-op");
    });
    no_leftovers(&host);
    assert_eq!(sysctls(&host), before, "sysctls restored");
    assert!(
        std::fs::read_dir(&state)
            .map(|d| d.count() == 0)
            .unwrap_or(true),
        "crash record removed"
    );
    let _ = std::fs::remove_dir_all(&state);
}

#[test]
fn leftovers_of_a_killed_run_are_cleaned_on_the_next_start() {
    if !privileged("setup_netns::leftovers_of_a_killed_run_are_cleaned_on_the_next_start") {
        return;
    }
    let host = Netns::new("stale-h");
    let peer = Netns::new("stale-p");
    veth(&host, "h0", "10.64.0.1", &peer, "p0", "10.64.0.2");
    host.sh("sysctl -qw net.ipv4.conf.all.rp_filter=1");
    let before = sysctls(&host);
    let state = std::env::temp_dir().join(format!("shoal-stale-test-{}", std::process::id()));

    host.run(|| {
        let mut c = config(&state, true);
        c.frontend_nat = true;
        let mut first = HostSetup::apply(c).expect("first run");
        make_frontend_table(&host);
        // Keep the TAP open (as a live process would) and skip every undo,
        // as SIGKILL would.
        let taps = first.take_taps();
        std::mem::forget(first);
        assert!(host.try_sh("ip link show dev shoal0"));
        assert!(host.try_sh("nft list table netdev shoal_h0"));
        assert_ne!(sysctls(&host), before);

        // The next run has no instances: the dead run's table goes anyway.
        let mut second =
            HostSetup::apply(config(&state, true)).expect("second run cleans up first");
        assert!(!host.try_sh("nft list table inet shoal_fe_h0"));
        assert_eq!(second.take_taps().len(), 1);
        second.teardown().expect("teardown");
        drop(taps);
    });
    no_leftovers(&host);
    assert_eq!(
        sysctls(&host),
        before,
        "original values, not the first run's"
    );
    let _ = std::fs::remove_dir_all(&state);
}

#[test]
fn shoal_cleanup_undoes_a_killed_run_and_starts_nothing() {
    if !privileged("setup_netns::shoal_cleanup_undoes_a_killed_run_and_starts_nothing") {
        return;
    }
    let host = Netns::new("clean-h");
    let peer = Netns::new("clean-p");
    veth(&host, "h0", "10.65.0.1", &peer, "p0", "10.65.0.2");
    host.sh("sysctl -qw net.ipv4.conf.all.rp_filter=1");
    let before = sysctls(&host);
    let dir = std::env::temp_dir().join(format!("shoal-cleanup-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("shoal.toml");
    std::fs::write(
        &file,
        "[cluster]\nvips = [\"10.63.0.100\", \"fd00:63::100\"]\nkey_file = \"k\"\n\n\
         [[host]]\nid = 1\ninterface = \"h0\"\ndedicated = [\"10.65.0.1/24\"]\n",
    )
    .unwrap();
    // The engine's own state directory, as `shoal run` uses it: the record's
    // name carries this namespace's inode, so it is this test's alone.
    let state = Path::new("/run/shoal");
    let taps = host.run(|| {
        let mut c = config(state, true);
        c.frontend_nat = true;
        let mut run = HostSetup::apply(c).expect("setup");
        make_frontend_table(&host);
        let taps = run.take_taps();
        // SIGKILL: nothing undone, the record stays.
        std::mem::forget(run);
        taps
    });
    assert!(host.try_sh("nft list table netdev shoal_h0"));
    assert_ne!(sysctls(&host), before);
    let cleanup = format!(
        "{} cleanup --config {} --host 1 --admin-socket {}",
        env!("CARGO_BIN_EXE_shoal"),
        file.display(),
        dir.join("host1.sock").display()
    );
    let said = host.sh(&cleanup);
    assert!(
        said.contains("replayed the crash-recovery record"),
        "{said}"
    );
    assert!(said.contains("removed the TAP"), "{said}");
    assert!(said.contains("removed the nftables table"), "{said}");
    assert!(said.contains("removed the frontend NAT table"), "{said}");
    drop(taps);
    no_leftovers(&host);
    assert_eq!(sysctls(&host), before, "sysctls restored");
    assert!(
        !host.try_sh("ls /run/shoal/h0-netns*.state"),
        "record left: {}",
        host.sh("ls /run/shoal")
    );
    // Nothing was started: no VIP anywhere, and a second cleanup finds
    // nothing.
    assert!(!host.sh("ip addr").contains("10.63.0.100"));
    let again = host.sh(&cleanup);
    assert!(again.contains("nothing was left"), "{again}");
    let _ = std::fs::remove_dir_all(&dir);
}
