//! Frame builders and cluster fixtures shared by the integration tests.
#![allow(dead_code)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use shoal_dataplane::descriptor::DescriptorConfig;
use shoal_dataplane::mac::unicast_mac;
use shoal_dataplane::sim::SimCluster;
use shoal_dataplane::wire::ipv4_checksum;
use shoal_dataplane::{
    Affinity, ClusterMode, ClusterSpec, FilterMode, HostId, HostSet, PortRule, Protocol,
};

pub const VIP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 100);
pub const VIP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0x100);

pub const FIN: u8 = 0x01;
pub const SYN: u8 = 0x02;
pub const RST: u8 = 0x04;
pub const ACK: u8 = 0x10;

pub fn host(n: u8) -> HostId {
    HostId::new(n).unwrap()
}

pub fn hosts(ids: &[u8]) -> HostSet {
    ids.iter().map(|&i| host(i)).collect()
}

pub fn spec_with(rules: Vec<PortRule>) -> ClusterSpec {
    ClusterSpec {
        vips: vec![IpAddr::V4(VIP), IpAddr::V6(VIP6)],
        mode: ClusterMode::Unicast,
        ipv6_network_prefix: 64,
        rules,
    }
}

pub fn default_rule(affinity: Affinity) -> PortRule {
    PortRule::new(
        None,
        (0, 65535),
        Protocol::Both,
        FilterMode::Multiple { affinity },
    )
}

pub fn small_table() -> DescriptorConfig {
    DescriptorConfig {
        capacity: 1 << 14,
        ..DescriptorConfig::default()
    }
}

pub fn cluster(rules: Vec<PortRule>, ids: &[u8]) -> SimCluster {
    SimCluster::new(spec_with(rules), hosts(ids), small_table())
}

fn eth(dst: [u8; 6], ethertype: u16) -> Vec<u8> {
    let mut f = Vec::with_capacity(128);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x99]);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f
}

/// An IPv4 packet to `dst` from `src` with `proto` and `payload`, with
/// fragment fields `frag` (flags and offset word) and `id`.
pub fn ipv4(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    proto: u8,
    payload: &[u8],
    id: u16,
    frag: u16,
) -> Vec<u8> {
    let mut f = eth(unicast_mac(VIP).0, 0x0800);
    let total = 20 + payload.len();
    let mut h = [0u8; 20];
    h[0] = 0x45;
    h[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    h[4..6].copy_from_slice(&id.to_be_bytes());
    h[6..8].copy_from_slice(&frag.to_be_bytes());
    h[8] = 64;
    h[9] = proto;
    h[12..16].copy_from_slice(&src.octets());
    h[16..20].copy_from_slice(&dst.octets());
    let c = ipv4_checksum(&h);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&h);
    f.extend_from_slice(payload);
    while f.len() < 60 {
        f.push(0);
    }
    f
}

pub fn ipv6(src: Ipv6Addr, dst: Ipv6Addr, next: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = eth(unicast_mac(VIP).0, 0x86dd);
    let mut h = [0u8; 40];
    h[0] = 0x60;
    h[4..6].copy_from_slice(&(payload.len() as u16).to_be_bytes());
    h[6] = next;
    h[7] = 64;
    h[8..24].copy_from_slice(&src.octets());
    h[24..40].copy_from_slice(&dst.octets());
    f.extend_from_slice(&h);
    f.extend_from_slice(payload);
    f
}

pub fn tcp_hdr(sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    let mut t = vec![0u8; 20];
    t[0..2].copy_from_slice(&sport.to_be_bytes());
    t[2..4].copy_from_slice(&dport.to_be_bytes());
    t[12] = 5 << 4;
    t[13] = flags;
    t[14..16].copy_from_slice(&65535u16.to_be_bytes());
    t
}

pub fn udp_hdr(sport: u16, dport: u16, payload: usize) -> Vec<u8> {
    let mut u = vec![0u8; 8 + payload];
    u[0..2].copy_from_slice(&sport.to_be_bytes());
    u[2..4].copy_from_slice(&dport.to_be_bytes());
    u[4..6].copy_from_slice(&((8 + payload) as u16).to_be_bytes());
    u
}

pub fn tcp(client: Ipv4Addr, sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    ipv4(client, VIP, 6, &tcp_hdr(sport, dport, flags), 1, 0x4000)
}

pub fn tcp6(client: Ipv6Addr, sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    ipv6(client, VIP6, 6, &tcp_hdr(sport, dport, flags))
}

pub fn udp(client: Ipv4Addr, sport: u16, dport: u16) -> Vec<u8> {
    ipv4(client, VIP, 17, &udp_hdr(sport, dport, 4), 1, 0)
}

/// Enhanced GRE (PPTP) carrying PPP, from `client` to the VIP.
pub fn gre(client: Ipv4Addr, call_id: u16) -> Vec<u8> {
    let mut g = vec![0x30, 0x01, 0x88, 0x0b, 0, 4];
    g.extend_from_slice(&call_id.to_be_bytes());
    g.extend_from_slice(&[0, 0, 0, 1]); // sequence
    g.extend_from_slice(&[0xff, 0x03, 0x00, 0x21]);
    ipv4(client, VIP, 47, &g, 7, 0)
}

/// The first and a later fragment of one UDP datagram.
pub fn udp_fragments(client: Ipv4Addr, sport: u16, dport: u16, id: u16) -> (Vec<u8>, Vec<u8>) {
    let mut first_payload = udp_hdr(sport, dport, 16);
    first_payload[4..6].copy_from_slice(&1000u16.to_be_bytes());
    first_payload.truncate(24);
    let first = ipv4(client, VIP, 17, &first_payload, id, 0x2000); // MF, offset 0
    let later = ipv4(client, VIP, 17, &[0u8; 16], id, 3); // offset 24 bytes
    (first, later)
}

pub fn client(n: u32) -> Ipv4Addr {
    Ipv4Addr::from(0x0a01_0000u32 + n)
}

pub fn client6(n: u32) -> Ipv6Addr {
    Ipv6Addr::new(
        0x2001,
        0xdb8,
        (n >> 16) as u16,
        n as u16,
        0,
        0,
        0,
        (n % 7) as u16 + 1,
    )
}
