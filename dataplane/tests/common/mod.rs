//! Frame builders and cluster fixtures shared by the integration tests.
#![allow(dead_code, unused_imports)]

use std::net::{Ipv4Addr, Ipv6Addr};

use shoal_dataplane::descriptor::DescriptorConfig;
use shoal_dataplane::mac::unicast_mac;
use shoal_dataplane::sim::SimCluster;
use shoal_dataplane::wire::{ethertype, ip_proto};
use shoal_dataplane::PortRule;
use shoal_testkit::frame::{self, pptp_gre, udp as udp_hdr_with, CLIENT_MAC};

pub use shoal_dataplane::wire::tcp::flags::{ACK, FIN, RST, SYN};
pub use shoal_testkit::frame::tcp as tcp_hdr;
pub use shoal_testkit::spec::{default_rule, dual_stack as spec_with, host, hosts, VIP, VIP6};

pub fn small_table() -> DescriptorConfig {
    DescriptorConfig {
        capacity: 1 << 14,
        ..DescriptorConfig::default()
    }
}

pub fn cluster(rules: Vec<PortRule>, ids: &[u8]) -> SimCluster {
    SimCluster::new(spec_with(rules), hosts(ids), small_table())
}

/// An IPv4 packet to `dst` from `src` with `proto` and `payload`, with
/// fragment fields `frag` (flags and offset word) and `id`, in a frame to
/// the VIP's cluster MAC padded to 60 bytes.
pub fn ipv4(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    proto: u8,
    payload: &[u8],
    id: u16,
    frag: u16,
) -> Vec<u8> {
    let header = frame::Ipv4 {
        ident: id,
        fragment: frag,
        ..frame::Ipv4::new(src, dst, proto)
    };
    header.frame(unicast_mac(VIP).0, payload)
}

pub fn ipv6(src: Ipv6Addr, dst: Ipv6Addr, next: u8, payload: &[u8]) -> Vec<u8> {
    let packet = frame::ipv6(src, dst, next, 64, payload);
    frame::ethernet(unicast_mac(VIP).0, CLIENT_MAC, ethertype::IPV6, &packet)
}

/// A UDP header and `payload` zero bytes.
pub fn udp_hdr(sport: u16, dport: u16, payload: usize) -> Vec<u8> {
    udp_hdr_with(sport, dport, &vec![0; payload])
}

pub fn tcp(client: Ipv4Addr, sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    let segment = tcp_hdr(sport, dport, flags);
    ipv4(client, VIP, ip_proto::TCP, &segment, 1, 0x4000)
}

pub fn tcp6(client: Ipv6Addr, sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    ipv6(client, VIP6, ip_proto::TCP, &tcp_hdr(sport, dport, flags))
}

pub fn udp(client: Ipv4Addr, sport: u16, dport: u16) -> Vec<u8> {
    ipv4(client, VIP, ip_proto::UDP, &udp_hdr(sport, dport, 4), 1, 0)
}

/// Enhanced GRE (PPTP) carrying PPP, from `client` to the VIP.
pub fn gre(client: Ipv4Addr, call_id: u16) -> Vec<u8> {
    ipv4(client, VIP, ip_proto::GRE, &pptp_gre(call_id, 1), 7, 0)
}

/// The first and a later fragment of one UDP datagram.
pub fn udp_fragments(client: Ipv4Addr, sport: u16, dport: u16, id: u16) -> (Vec<u8>, Vec<u8>) {
    let mut first_payload = udp_hdr(sport, dport, 16);
    first_payload[4..6].copy_from_slice(&1000u16.to_be_bytes());
    first_payload.truncate(24);
    let first = ipv4(client, VIP, ip_proto::UDP, &first_payload, id, 0x2000); // MF, offset 0
    let later = ipv4(client, VIP, ip_proto::UDP, &[0u8; 16], id, 3); // offset 24 bytes
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
