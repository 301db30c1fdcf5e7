//! Tests of [`parse_frame`](super::parse_frame): byte-vector frames of every
//! family it summarizes, an example of every [`Malformed`](super::Malformed)
//! reason, and the properties that no input makes it panic and that its
//! offsets stay inside the frame.

use super::*;
use crate::wire::tcp::flags;
use crate::wire::test_util::hex;
use crate::wire::{ip_proto, EthernetFrame, Ipv4Packet, Ipv6Packet, VlanTag};

const CLUSTER_MAC: [u8; 6] = [0x02, 0xbf, 10, 0, 0, 100];
const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 1];

fn vip4() -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 0, 100)
}
fn client4() -> Ipv4Addr {
    Ipv4Addr::new(192, 168, 1, 7)
}
fn vip6() -> Ipv6Addr {
    "2001:db8::64".parse().unwrap()
}
fn client6() -> Ipv6Addr {
    "2001:db8:1::7".parse().unwrap()
}

/// An Ethernet frame with the given VLAN tags (TPID, VLAN ID) in order.
fn eth_tagged(tags: &[(u16, u16)], ether_type: u16, payload: &[u8]) -> Vec<u8> {
    let mut frame = vec![0; 14 + 4 * tags.len()];
    let mut eth = EthernetFrame::new_unchecked(&mut frame[..]);
    eth.set_dst(CLUSTER_MAC);
    eth.set_src(CLIENT_MAC);
    let mut next_at = 12;
    for (tpid, vid) in tags {
        frame[next_at..next_at + 2].copy_from_slice(&tpid.to_be_bytes());
        let mut tag = VlanTag::new_unchecked(&mut frame[next_at + 2..next_at + 6]);
        tag.set_tci(0, false, *vid);
        next_at += 4;
    }
    frame[next_at..next_at + 2].copy_from_slice(&ether_type.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

fn eth(ether_type: u16, payload: &[u8]) -> Vec<u8> {
    eth_tagged(&[], ether_type, payload)
}

/// An IPv4 datagram; `options` must be a multiple of 4 bytes.
fn ipv4_with(
    proto: u8,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    options: &[u8],
    frag: (bool, u16),
    payload: &[u8],
) -> Vec<u8> {
    let header_len = 20 + options.len();
    let mut bytes = vec![0; header_len + payload.len()];
    let mut ip = Ipv4Packet::new_unchecked(&mut bytes[..]);
    ip.set_version_and_header_len(header_len);
    ip.set_total_len((header_len + payload.len()) as u16);
    ip.set_ident(0xbeef);
    ip.set_fragment(false, frag.0, frag.1);
    ip.set_ttl(64);
    ip.set_protocol(proto);
    ip.set_src(src);
    ip.set_dst(dst);
    bytes[20..header_len].copy_from_slice(options);
    bytes[header_len..].copy_from_slice(payload);
    Ipv4Packet::new_unchecked(&mut bytes[..]).fill_checksum();
    bytes
}

fn ipv4(proto: u8, payload: &[u8]) -> Vec<u8> {
    ipv4_with(proto, client4(), vip4(), &[], (false, 0), payload)
}

fn ipv6_with(next: u8, src: Ipv6Addr, dst: Ipv6Addr, payload: &[u8]) -> Vec<u8> {
    let mut bytes = vec![0; 40 + payload.len()];
    let mut ip = Ipv6Packet::new_unchecked(&mut bytes[..]);
    ip.set_version_class_flow(0, 0);
    ip.set_payload_len(payload.len() as u16);
    ip.set_next_header(next);
    ip.set_hop_limit(64);
    ip.set_src(src);
    ip.set_dst(dst);
    bytes[40..].copy_from_slice(payload);
    bytes
}

fn ipv6(next: u8, payload: &[u8]) -> Vec<u8> {
    ipv6_with(next, client6(), vip6(), payload)
}

fn tcp(src_port: u16, dst_port: u16, flag_bits: u8) -> Vec<u8> {
    let mut bytes = vec![0; 20];
    let mut segment = TcpSegment::new_unchecked(&mut bytes[..]);
    segment.set_src_port(src_port);
    segment.set_dst_port(dst_port);
    segment.set_seq(1000);
    segment.set_header_len(20);
    segment.set_flags(flag_bits);
    segment.set_window(65535);
    bytes
}

fn udp(src_port: u16, dst_port: u16, length: u16, data: &[u8]) -> Vec<u8> {
    let mut bytes = vec![0; 8];
    let mut datagram = UdpDatagram::new_unchecked(&mut bytes[..]);
    datagram.set_src_port(src_port);
    datagram.set_dst_port(dst_port);
    datagram.set_length(length);
    bytes.extend_from_slice(data);
    bytes
}

fn ip_info(info: &FrameInfo) -> IpInfo {
    match info.kind {
        FrameKind::Ipv4(ip) | FrameKind::Ipv6(ip) => ip,
        other => panic!("not IP: {other:?}"),
    }
}

fn syn4() -> Vec<u8> {
    eth(
        ethertype::IPV4,
        &ipv4(ip_proto::TCP, &tcp(49152, 80, flags::SYN)),
    )
}

#[test]
fn tcp_over_ipv4_with_padding() {
    let mut frame = syn4();
    assert_eq!(frame.len(), 54);
    frame.resize(60, 0);
    let info = parse_frame(&frame).unwrap();
    assert_eq!(info.dst_mac, CLUSTER_MAC);
    assert_eq!(info.src_mac, CLIENT_MAC);
    assert_eq!(
        (info.vlan, info.ethertype, info.l3_offset),
        (None, ethertype::IPV4, 14)
    );
    let FrameKind::Ipv4(ip) = info.kind else {
        panic!("{info:?}")
    };
    assert_eq!(ip.src, IpAddr::V4(client4()));
    assert_eq!(ip.dst, IpAddr::V4(vip4()));
    assert_eq!(
        (ip.proto, ip.fragment, ip.l4_offset),
        (ip_proto::TCP, Fragment::Whole, 34)
    );
    assert_eq!(
        ip.l4,
        L4::Tcp {
            src_port: 49152,
            dst_port: 80,
            flags: flags::SYN
        }
    );
}

#[test]
fn vlan_and_qinq_tags() {
    let datagram = ipv4(ip_proto::TCP, &tcp(1, 2, flags::ACK));
    let tagged = eth_tagged(&[(ethertype::VLAN, 10)], ethertype::IPV4, &datagram);
    let info = parse_frame(&tagged).unwrap();
    assert_eq!(
        (info.vlan, info.ethertype, info.l3_offset),
        (Some(10), ethertype::IPV4, 18)
    );
    assert_eq!(ip_info(&info).l4_offset, 38);

    for outer in [ethertype::QINQ, ethertype::QINQ_LEGACY] {
        let qinq = eth_tagged(
            &[(outer, 100), (ethertype::VLAN, 10)],
            ethertype::IPV4,
            &datagram,
        );
        let info = parse_frame(&qinq).unwrap();
        assert_eq!(
            (info.vlan, info.ethertype, info.l3_offset),
            (Some(100), ethertype::IPV4, 22)
        );
        assert_eq!(
            ip_info(&info).l4,
            L4::Tcp {
                src_port: 1,
                dst_port: 2,
                flags: flags::ACK
            }
        );
    }

    let triple = eth_tagged(
        &[
            (ethertype::QINQ, 1),
            (ethertype::VLAN, 2),
            (ethertype::VLAN, 3),
        ],
        ethertype::IPV4,
        &datagram,
    );
    assert_eq!(parse_frame(&triple), Err(Malformed::TooManyVlanTags));
    let cut = &eth_tagged(&[(ethertype::VLAN, 10)], ethertype::IPV4, &[])[..16];
    assert_eq!(parse_frame(cut), Err(Malformed::TruncatedVlan));
}

#[test]
fn ipv4_with_options() {
    // Router alert and a no-op, padded to 8 bytes.
    let options = hex("94040000 01010100");
    let datagram = ipv4_with(
        ip_proto::UDP,
        client4(),
        vip4(),
        &options,
        (false, 0),
        &udp(5353, 53, 10, &[1, 2]),
    );
    let info = parse_frame(&eth(ethertype::IPV4, &datagram)).unwrap();
    let ip = ip_info(&info);
    assert_eq!(ip.l4_offset, 14 + 28);
    assert_eq!(
        ip.l4,
        L4::Udp {
            src_port: 5353,
            dst_port: 53
        }
    );
}

#[test]
fn ipv4_fragments() {
    // First fragment: the UDP length covers the whole 2008-byte datagram.
    let first = ipv4_with(
        ip_proto::UDP,
        client4(),
        vip4(),
        &[],
        (true, 0),
        &udp(4000, 53, 2008, &[0; 1472]),
    );
    let info = parse_frame(&eth(ethertype::IPV4, &first)).unwrap();
    let ip = ip_info(&info);
    assert_eq!(ip.fragment, Fragment::First { id: 0xbeef });
    assert_eq!(
        ip.l4,
        L4::Udp {
            src_port: 4000,
            dst_port: 53
        }
    );

    let later = ipv4_with(
        ip_proto::UDP,
        client4(),
        vip4(),
        &[],
        (false, 1480),
        &[0; 528],
    );
    let info = parse_frame(&eth(ethertype::IPV4, &later)).unwrap();
    let ip = ip_info(&info);
    assert_eq!(
        ip.fragment,
        Fragment::Later {
            id: 0xbeef,
            offset: 1480,
            more: false
        }
    );
    assert_eq!(
        (ip.proto, ip.l4, ip.l4_offset),
        (ip_proto::UDP, L4::Unparsed, 34)
    );

    // A middle fragment of garbage still parses (no L4 is read).
    let middle = ipv4_with(ip_proto::TCP, client4(), vip4(), &[], (true, 8), &[0xff; 8]);
    let ip = ip_info(&parse_frame(&eth(ethertype::IPV4, &middle)).unwrap());
    assert_eq!(
        ip.fragment,
        Fragment::Later {
            id: 0xbeef,
            offset: 8,
            more: true
        }
    );

    // A tiny first fragment that cuts the TCP header is refused (RFC 1858).
    let tiny = ipv4_with(
        ip_proto::TCP,
        client4(),
        vip4(),
        &[],
        (true, 0),
        &tcp(1, 2, 0)[..8],
    );
    assert_eq!(
        parse_frame(&eth(ethertype::IPV4, &tiny)),
        Err(Malformed::TruncatedTcp)
    );
}

/// Hop-by-hop (PadN) then a fragment header, then `rest`.
fn hbh_frag(offset: u16, more: bool, next: u8, rest: &[u8]) -> Vec<u8> {
    let mut payload = hex("2c 00 0104 00000000");
    let mut frag = vec![0; 8];
    let mut header = crate::wire::Ipv6FragmentHeader::new_unchecked(&mut frag[..]);
    header.set_next_header(next);
    header.set_fragment(offset, more);
    header.set_ident(0x0102_0304);
    payload.extend_from_slice(&frag);
    payload.extend_from_slice(rest);
    ipv6(ip_proto::HOP_BY_HOP, &payload)
}

#[test]
fn ipv6_extension_chain_and_fragments() {
    let mut first_data = tcp(49152, 443, flags::SYN);
    first_data.extend_from_slice(&[0; 12]);
    let first = eth(
        ethertype::IPV6,
        &hbh_frag(0, true, ip_proto::TCP, &first_data),
    );
    let info = parse_frame(&first).unwrap();
    let FrameKind::Ipv6(ip) = info.kind else {
        panic!("{info:?}")
    };
    assert_eq!(
        (ip.src, ip.dst),
        (IpAddr::V6(client6()), IpAddr::V6(vip6()))
    );
    assert_eq!(ip.proto, ip_proto::TCP);
    assert_eq!(ip.fragment, Fragment::First { id: 0x0102_0304 });
    assert_eq!(ip.l4_offset, 14 + 40 + 16);
    assert_eq!(
        ip.l4,
        L4::Tcp {
            src_port: 49152,
            dst_port: 443,
            flags: flags::SYN
        }
    );

    let later = eth(
        ethertype::IPV6,
        &hbh_frag(1232, false, ip_proto::TCP, &[0xaa; 100]),
    );
    let ip = ip_info(&parse_frame(&later).unwrap());
    assert_eq!(
        ip.fragment,
        Fragment::Later {
            id: 0x0102_0304,
            offset: 1232,
            more: false
        }
    );
    assert_eq!(
        (ip.proto, ip.l4, ip.l4_offset),
        (ip_proto::TCP, L4::Unparsed, 70)
    );

    // Atomic fragment (RFC 6946): whole UDP datagram, length checked.
    let atomic = eth(
        ethertype::IPV6,
        &hbh_frag(0, false, ip_proto::UDP, &udp(1, 2, 8, &[])),
    );
    let ip = ip_info(&parse_frame(&atomic).unwrap());
    assert_eq!(ip.fragment, Fragment::Whole);
    assert_eq!(
        ip.l4,
        L4::Udp {
            src_port: 1,
            dst_port: 2
        }
    );

    // A non-final fragment whose data is not a multiple of 8.
    let odd = eth(
        ethertype::IPV6,
        &hbh_frag(0, true, ip_proto::TCP, &tcp(1, 2, 0)[..20]),
    );
    assert_eq!(parse_frame(&odd), Err(Malformed::BadFragment));
    // Offset plus length beyond 65535.
    let huge = eth(
        ethertype::IPV6,
        &hbh_frag(65528, false, ip_proto::TCP, &[0; 16]),
    );
    assert_eq!(parse_frame(&huge), Err(Malformed::BadFragment));

    // No next header: nothing to parse, still fine.
    let nothing = eth(ethertype::IPV6, &ipv6(ip_proto::NO_NEXT_HEADER, &[]));
    let ip = ip_info(&parse_frame(&nothing).unwrap());
    assert_eq!(
        (ip.proto, ip.l4, ip.l4_offset),
        (ip_proto::NO_NEXT_HEADER, L4::Unparsed, 54)
    );
}

#[test]
fn ipv4_ah_is_stepped_over() {
    // AH with a 12-byte ICV (length field 4: 24 bytes), then TCP.
    let mut payload = hex("06 04 0000 00000100 00000001");
    payload.extend_from_slice(&[0xee; 12]);
    payload.extend_from_slice(&tcp(1234, 80, flags::ACK));
    let ip = ip_info(&parse_frame(&eth(ethertype::IPV4, &ipv4(ip_proto::AH, &payload))).unwrap());
    assert_eq!((ip.proto, ip.l4_offset), (ip_proto::TCP, 14 + 20 + 24));
    assert_eq!(
        ip.l4,
        L4::Tcp {
            src_port: 1234,
            dst_port: 80,
            flags: flags::ACK
        }
    );
    let cut = eth(ethertype::IPV4, &ipv4(ip_proto::AH, &payload[..20]));
    assert_eq!(parse_frame(&cut), Err(Malformed::TruncatedExtensionHeader));
}

#[test]
fn pptp_gre_and_esp() {
    let gre = hex("3081 880b 0002 4001 00000007 00000005 ff03");
    let ip = ip_info(&parse_frame(&eth(ethertype::IPV4, &ipv4(ip_proto::GRE, &gre))).unwrap());
    assert_eq!(
        ip.l4,
        L4::Gre {
            version: 1,
            protocol: 0x880b,
            call_id: Some(0x4001)
        }
    );
    let plain = hex("0000 0800 45");
    let ip = ip_info(&parse_frame(&eth(ethertype::IPV4, &ipv4(ip_proto::GRE, &plain))).unwrap());
    assert_eq!(
        ip.l4,
        L4::Gre {
            version: 0,
            protocol: 0x0800,
            call_id: None
        }
    );

    let esp = hex("00001001 00000001 00112233");
    let ip = ip_info(&parse_frame(&eth(ethertype::IPV4, &ipv4(ip_proto::ESP, &esp))).unwrap());
    assert_eq!(ip.l4, L4::Esp { spi: 0x1001 });
    let ip = ip_info(&parse_frame(&eth(ethertype::IPV6, &ipv6(ip_proto::ESP, &esp))).unwrap());
    assert_eq!((ip.proto, ip.l4), (ip_proto::ESP, L4::Esp { spi: 0x1001 }));
}

#[test]
fn icmp_error_carries_the_inner_flow() {
    // The VIP's SYN-ACK to the client, quoted by a router: frag needed.
    let original = ipv4_with(
        ip_proto::TCP,
        vip4(),
        client4(),
        &[],
        (false, 0),
        &tcp(80, 49152, flags::SYN | flags::ACK),
    );
    let mut icmp = hex("03 04 0000 000005a0");
    icmp.extend_from_slice(&original[..28]);
    let router = Ipv4Addr::new(10, 0, 0, 254);
    let frame = eth(
        ethertype::IPV4,
        &ipv4_with(ip_proto::ICMP, router, vip4(), &[], (false, 0), &icmp),
    );
    let ip = ip_info(&parse_frame(&frame).unwrap());
    let inner = InnerFlow {
        src: IpAddr::V4(vip4()),
        dst: IpAddr::V4(client4()),
        proto: 6,
        src_port: 80,
        dst_port: 49152,
    };
    assert_eq!(
        ip.l4,
        L4::Icmp {
            icmp_type: 3,
            code: 4,
            inner: Some(inner)
        }
    );

    // A quote cut before the ports keeps the addresses.
    let mut short = hex("0b 00 0000 00000000");
    short.extend_from_slice(&original[..22]);
    let frame = eth(ethertype::IPV4, &ipv4(ip_proto::ICMP, &short));
    let ip = ip_info(&parse_frame(&frame).unwrap());
    let L4::Icmp {
        inner: Some(inner), ..
    } = ip.l4
    else {
        panic!("{ip:?}")
    };
    assert_eq!((inner.proto, inner.src_port, inner.dst_port), (6, 0, 0));

    // An unreadable quote is not the error's fault.
    let garbage = hex("03 01 0000 00000000 ffff");
    let ip = ip_info(&parse_frame(&eth(ethertype::IPV4, &ipv4(ip_proto::ICMP, &garbage))).unwrap());
    assert_eq!(
        ip.l4,
        L4::Icmp {
            icmp_type: 3,
            code: 1,
            inner: None
        }
    );

    // Echo is not an error.
    let echo = hex("08 00 0000 00010001");
    let ip = ip_info(&parse_frame(&eth(ethertype::IPV4, &ipv4(ip_proto::ICMP, &echo))).unwrap());
    assert_eq!(
        ip.l4,
        L4::Icmp {
            icmp_type: 8,
            code: 0,
            inner: None
        }
    );
}

#[test]
fn icmpv6_packet_too_big_and_neighbor_solicitation() {
    // Quoted packet: VIP -> client UDP behind a destination options header.
    let mut quoted_payload = hex("11 00 0104 00000000");
    quoted_payload.extend_from_slice(&udp(53, 5353, 1400, &[]));
    let original = ipv6_with(
        ip_proto::DESTINATION_OPTIONS,
        vip6(),
        client6(),
        &quoted_payload,
    );
    let mut icmp = hex("02 00 0000 00000500");
    icmp.extend_from_slice(&original);
    let frame = eth(ethertype::IPV6, &ipv6(ip_proto::ICMPV6, &icmp));
    let ip = ip_info(&parse_frame(&frame).unwrap());
    let inner = InnerFlow {
        src: IpAddr::V6(vip6()),
        dst: IpAddr::V6(client6()),
        proto: 17,
        src_port: 53,
        dst_port: 5353,
    };
    assert_eq!(
        ip.l4,
        L4::Icmp {
            icmp_type: 2,
            code: 0,
            inner: Some(inner)
        }
    );

    let mut ns = hex("87 00 0000 00000000");
    ns.extend_from_slice(&vip6().octets());
    ns.extend_from_slice(&hex("0101 020000000001"));
    let frame = eth(
        ethertype::IPV6,
        &ipv6_with(
            ip_proto::ICMPV6,
            "fe80::1".parse().unwrap(),
            "ff02::1:ff00:64".parse().unwrap(),
            &ns,
        ),
    );
    let ip = ip_info(&parse_frame(&frame).unwrap());
    assert_eq!(
        ip.l4,
        L4::Icmpv6Nd {
            icmp_type: 135,
            target: vip6()
        }
    );

    // ICMP numbers in the wrong family are not summarized.
    let ip = ip_info(&parse_frame(&eth(ethertype::IPV6, &ipv6(ip_proto::ICMP, &[0; 8]))).unwrap());
    assert_eq!(ip.l4, L4::Unparsed);
    let ip =
        ip_info(&parse_frame(&eth(ethertype::IPV4, &ipv4(ip_proto::ICMPV6, &[0; 8]))).unwrap());
    assert_eq!(ip.l4, L4::Unparsed);
}

#[test]
fn igmp_report_and_arp_request_and_others() {
    let group = Ipv4Addr::new(239, 255, 0, 100);
    let mut report = hex("16 00 0000 00000000");
    report[4..].copy_from_slice(&group.octets());
    let datagram = ipv4_with(
        ip_proto::IGMP,
        client4(),
        group,
        &hex("94040000"),
        (false, 0),
        &report,
    );
    let mut frame = eth(ethertype::IPV4, &datagram);
    frame.resize(60, 0);
    let ip = ip_info(&parse_frame(&frame).unwrap());
    assert_eq!(
        ip.l4,
        L4::Igmp {
            igmp_type: 0x16,
            group
        }
    );

    let arp = hex("0001 0800 06 04 0001 020000000001 c0a80107 000000000000 0a000064");
    let mut frame = eth(ethertype::ARP, &arp);
    frame.resize(60, 0);
    let info = parse_frame(&frame).unwrap();
    let expected = ArpInfo {
        op: 1,
        sender_mac: CLIENT_MAC,
        sender_ip: client4(),
        target_mac: [0; 6],
        target_ip: vip4(),
    };
    assert_eq!(info.kind, FrameKind::Arp(expected));

    let heartbeat = eth_tagged(&[(ethertype::VLAN, 5)], ethertype::HEARTBEAT, &[1, 2, 3]);
    let info = parse_frame(&heartbeat).unwrap();
    assert_eq!(
        (info.kind, info.l3_offset, info.vlan),
        (FrameKind::Heartbeat, 18, Some(5))
    );
    let lldp = eth(0x88cc, &[0; 46]);
    assert_eq!(parse_frame(&lldp).unwrap().kind, FrameKind::Other);
    let llc = eth(0x0026, &[0; 46]);
    assert_eq!(parse_frame(&llc).unwrap().kind, FrameKind::Other);
}

/// One frame per reason; the test checks every reason is covered.
fn malformed_examples() -> Vec<(Malformed, Vec<u8>)> {
    let mut bad_version4 = ipv4(ip_proto::TCP, &tcp(1, 2, 0));
    bad_version4[0] = 0x55;
    let mut bad_ihl = ipv4(ip_proto::TCP, &tcp(1, 2, 0));
    bad_ihl[0] = 0x44;
    let mut bad_total = ipv4(ip_proto::TCP, &tcp(1, 2, 0));
    bad_total[2..4].copy_from_slice(&10u16.to_be_bytes());
    let bad_options = ipv4_with(
        ip_proto::TCP,
        client4(),
        vip4(),
        &hex("07 09 0000"),
        (false, 0),
        &tcp(1, 2, 0),
    );
    let mut bad_version6 = ipv6(ip_proto::TCP, &tcp(1, 2, 0));
    bad_version6[0] = 0x40;
    let mut long_chain = Vec::new();
    for _ in 0..9 {
        long_chain.extend_from_slice(&hex("3c 00 0000 00000000"));
    }
    let mut bad_offset = tcp(1, 2, 0);
    bad_offset[12] = 0x30;
    let truncated_udp = ipv4(ip_proto::UDP, &[0; 7]);
    let bad_udp = ipv4(ip_proto::UDP, &udp(1, 2, 100, &[0; 4]));
    vec![
        (Malformed::TruncatedEthernet, vec![0; 13]),
        (
            Malformed::TooManyVlanTags,
            eth_tagged(&[(0x8100, 1), (0x8100, 2), (0x8100, 3)], 0x0800, &[]),
        ),
        (
            Malformed::TruncatedVlan,
            eth_tagged(&[(0x8100, 1)], 0x0800, &[])[..17].to_vec(),
        ),
        (Malformed::TruncatedArp, eth(ethertype::ARP, &[0; 27])),
        (Malformed::BadArp, eth(ethertype::ARP, &[0; 28])),
        (Malformed::TruncatedIpv4, syn4()[..50].to_vec()),
        (
            Malformed::BadIpv4Version,
            eth(ethertype::IPV4, &bad_version4),
        ),
        (
            Malformed::BadIpv4HeaderLength,
            eth(ethertype::IPV4, &bad_ihl),
        ),
        (
            Malformed::BadIpv4TotalLength,
            eth(ethertype::IPV4, &bad_total),
        ),
        (
            Malformed::BadIpv4Options,
            eth(ethertype::IPV4, &bad_options),
        ),
        (
            Malformed::TruncatedIpv6,
            eth(ethertype::IPV6, &ipv6(ip_proto::TCP, &tcp(1, 2, 0))[..59]),
        ),
        (
            Malformed::BadIpv6Version,
            eth(ethertype::IPV6, &bad_version6),
        ),
        (
            Malformed::BadIpv6PayloadLength,
            eth(ethertype::IPV6, &ipv6(ip_proto::TCP, &[])),
        ),
        (
            Malformed::ExtensionChainTooLong,
            eth(
                ethertype::IPV6,
                &ipv6(ip_proto::DESTINATION_OPTIONS, &long_chain),
            ),
        ),
        (
            Malformed::TruncatedExtensionHeader,
            eth(
                ethertype::IPV6,
                &ipv6(ip_proto::ROUTING, &hex("06 01 0000 00000000")),
            ),
        ),
        (
            Malformed::BadExtensionHeader,
            eth(
                ethertype::IPV6,
                &ipv6(
                    ip_proto::ROUTING,
                    &hex("00 00 0000 00000000 06 00 0000 00000000"),
                ),
            ),
        ),
        (
            Malformed::TruncatedTcp,
            eth(ethertype::IPV4, &ipv4(ip_proto::TCP, &[0; 19])),
        ),
        (
            Malformed::BadTcpOffset,
            eth(ethertype::IPV4, &ipv4(ip_proto::TCP, &bad_offset)),
        ),
        (
            Malformed::TruncatedUdp,
            eth(ethertype::IPV4, &truncated_udp),
        ),
        (Malformed::BadUdpLength, eth(ethertype::IPV4, &bad_udp)),
        (
            Malformed::TruncatedGre,
            eth(
                ethertype::IPV4,
                &ipv4(ip_proto::GRE, &hex("3081 880b 0002")),
            ),
        ),
        (
            Malformed::BadGre,
            eth(ethertype::IPV4, &ipv4(ip_proto::GRE, &hex("0003 0800"))),
        ),
        (
            Malformed::TruncatedIcmp,
            eth(
                ethertype::IPV6,
                &ipv6(ip_proto::ICMPV6, &hex("87 00 0000 00000000 2001")),
            ),
        ),
        (
            Malformed::TruncatedIgmp,
            eth(ethertype::IPV4, &ipv4(ip_proto::IGMP, &[0x16, 0, 0, 0])),
        ),
        (
            Malformed::TruncatedEsp,
            eth(ethertype::IPV4, &ipv4(ip_proto::ESP, &[0; 7])),
        ),
        (
            Malformed::BadFragment,
            eth(
                ethertype::IPV4,
                &ipv4_with(ip_proto::UDP, client4(), vip4(), &[], (true, 0), &[0; 12]),
            ),
        ),
    ]
}

#[test]
fn every_malformed_reason_is_produced() {
    let examples = malformed_examples();
    for (reason, frame) in &examples {
        assert_eq!(parse_frame(frame), Err(*reason), "{}", reason.name());
    }
    let mut covered: Vec<Malformed> = examples.iter().map(|(reason, _)| *reason).collect();
    covered.sort_unstable();
    covered.dedup();
    assert_eq!(covered, Malformed::ALL.to_vec());
}

fn valid_examples() -> Vec<Vec<u8>> {
    let gre = hex("3081 880b 0002 4001 00000007 00000005 ff03");
    let mut ns = hex("87 00 0000 00000000");
    ns.extend_from_slice(&vip6().octets());
    vec![
        syn4(),
        eth_tagged(
            &[(ethertype::QINQ, 1), (ethertype::VLAN, 2)],
            ethertype::IPV4,
            &ipv4(ip_proto::UDP, &udp(1, 2, 8, &[])),
        ),
        eth(ethertype::IPV4, &ipv4(ip_proto::GRE, &gre)),
        eth(
            ethertype::IPV6,
            &hbh_frag(
                0,
                true,
                ip_proto::TCP,
                &[tcp(1, 2, 2), vec![0; 12]].concat(),
            ),
        ),
        eth(ethertype::IPV6, &ipv6(ip_proto::ICMPV6, &ns)),
        eth(
            ethertype::ARP,
            &hex("0001 0800 06 04 0001 020000000001 c0a80107 000000000000 0a000064"),
        ),
    ]
}

#[test]
fn every_truncation_of_valid_frames_is_an_error_not_a_panic() {
    for frame in valid_examples() {
        assert!(parse_frame(&frame).is_ok());
        for len in 0..frame.len() {
            assert!(
                parse_frame(&frame[..len]).is_err(),
                "len {len} of {frame:02x?}"
            );
        }
    }
}

proptest::proptest! {
    #[test]
    fn never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
        let _ = parse_frame(&bytes);
    }

    #[test]
    fn never_panics_on_mutated_frames(
        which in 0usize..6,
        edits in proptest::collection::vec((proptest::num::usize::ANY, proptest::num::u8::ANY), 1..8),
        cut in proptest::num::usize::ANY,
    ) {
        let mut frame = valid_examples().swap_remove(which);
        for (at, value) in edits {
            let at = at % frame.len();
            frame[at] = value;
        }
        let len = cut % (frame.len() + 1);
        if let Ok(info) = parse_frame(&frame[..len]) {
            // Offsets always point inside the parsed frame.
            proptest::prop_assert!(info.l3_offset <= len);
            if let FrameKind::Ipv4(ip) | FrameKind::Ipv6(ip) = info.kind {
                proptest::prop_assert!(ip.l4_offset <= len);
            }
        }
    }
}
