//! Frames the engine originates for the cluster: ARP replies and gratuitous
//! ARP for IPv4 VIPs, neighbour advertisements for IPv6 VIPs. Sans-IO: they
//! write into a caller's buffer and return the frame length.
//!
//! Replies say "VIP is at the cluster MAC"; their Ethernet source is the
//! sender's masked MAC (`02-<host>-w-x-y-z`, NLB's MaskSourceMAC) so that
//! switches never learn the cluster MAC on one port and keep flooding it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::mac::Mac;
use crate::packet::{parse_frame, FrameKind, L4};

/// Longest frame a builder here writes.
pub const MAX_REPLY: usize = 86;

const ETH_ARP: u16 = 0x0806;
const ETH_IPV6: u16 = 0x86dd;

fn eth(buf: &mut [u8], dst: Mac, src: Mac, ethertype: u16) {
    buf[0..6].copy_from_slice(&dst.0);
    buf[6..12].copy_from_slice(&src.0);
    buf[12..14].copy_from_slice(&ethertype.to_be_bytes());
}

fn arp(buf: &mut [u8], op: u16, sha: Mac, spa: Ipv4Addr, tha: Mac, tpa: Ipv4Addr) {
    let a = &mut buf[14..42];
    a[0..2].copy_from_slice(&1u16.to_be_bytes()); // Ethernet
    a[2..4].copy_from_slice(&0x0800u16.to_be_bytes());
    a[4] = 6;
    a[5] = 4;
    a[6..8].copy_from_slice(&op.to_be_bytes());
    a[8..14].copy_from_slice(&sha.0);
    a[14..18].copy_from_slice(&spa.octets());
    a[18..24].copy_from_slice(&tha.0);
    a[24..28].copy_from_slice(&tpa.octets());
}

/// Writes the ARP reply to `request` ("`vip` is at `cluster_mac`") into `buf`
/// and returns its length (60: padded to the Ethernet minimum), or `None`
/// when `request` is not an ARP request for a VIP in `vips`.
pub fn arp_reply(
    request: &[u8],
    vips: &[IpAddr],
    cluster_mac: Mac,
    source_mac: Mac,
    buf: &mut [u8; MAX_REPLY],
) -> Option<usize> {
    let info = parse_frame(request).ok()?;
    let FrameKind::Arp(a) = info.kind else {
        return None;
    };
    if a.op != 1 || !vips.contains(&IpAddr::V4(a.target_ip)) {
        return None;
    }
    buf.fill(0);
    eth(buf, Mac(a.sender_mac), source_mac, ETH_ARP);
    arp(
        buf,
        2,
        cluster_mac,
        a.target_ip,
        Mac(a.sender_mac),
        a.sender_ip,
    );
    Some(60)
}

/// Writes a gratuitous ARP ("`vip` is at `cluster_mac`", a broadcast request
/// for itself) into `buf`; returns its length.
pub fn gratuitous_arp(
    vip: Ipv4Addr,
    cluster_mac: Mac,
    source_mac: Mac,
    buf: &mut [u8; MAX_REPLY],
) -> usize {
    buf.fill(0);
    eth(buf, Mac::BROADCAST, source_mac, ETH_ARP);
    arp(buf, 1, cluster_mac, vip, Mac([0; 6]), vip);
    60
}

/// Writes an IGMPv2 membership report for `group` from `source_ip` (the
/// host's dedicated address) into `buf` and returns its length (60). Sent
/// periodically in igmp mode so that snooping switches forward the cluster
/// group to this port (RFC 2236; TTL 1, router alert option).
pub fn igmp_report(
    group: Ipv4Addr,
    source_mac: Mac,
    source_ip: Ipv4Addr,
    buf: &mut [u8; MAX_REPLY],
) -> usize {
    buf.fill(0);
    let g = group.octets();
    eth(
        buf,
        Mac([0x01, 0x00, 0x5e, g[1] & 0x7f, g[2], g[3]]),
        source_mac,
        0x0800,
    );
    let ip = &mut buf[14..38];
    ip[0] = 0x46; // IHL 6: 4 bytes of options
    ip[2..4].copy_from_slice(&32u16.to_be_bytes());
    ip[8] = 1; // TTL
    ip[9] = 2; // IGMP
    ip[12..16].copy_from_slice(&source_ip.octets());
    ip[16..20].copy_from_slice(&g);
    ip[20..24].copy_from_slice(&[0x94, 0x04, 0x00, 0x00]); // router alert
    let c = crate::wire::ipv4_checksum(&buf[14..38]);
    buf[24..26].copy_from_slice(&c.to_be_bytes());
    let igmp = &mut buf[38..46];
    igmp[0] = 0x16; // v2 membership report
    igmp[4..8].copy_from_slice(&g);
    let c = crate::wire::ipv4_checksum(&buf[38..46]);
    buf[40..42].copy_from_slice(&c.to_be_bytes());
    60
}

fn icmpv6_checksum(src: &Ipv6Addr, dst: &Ipv6Addr, body: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut add = |bytes: &[u8]| {
        for c in bytes.chunks(2) {
            let w = if c.len() == 2 {
                u16::from_be_bytes([c[0], c[1]])
            } else {
                u16::from_be_bytes([c[0], 0])
            };
            sum += w as u32;
        }
    };
    add(&src.octets());
    add(&dst.octets());
    add(&(body.len() as u32).to_be_bytes());
    add(&[0, 0, 0, 58]);
    add(body);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Writes the neighbour advertisement answering a neighbour solicitation
/// for a VIP in `vips` ("VIP is at `cluster_mac`", solicited, override
/// clear so real owners of other addresses are never displaced); returns its
/// length (86), or `None` when `request` is not such a solicitation.
pub fn neighbor_advert(
    request: &[u8],
    vips: &[IpAddr],
    cluster_mac: Mac,
    source_mac: Mac,
    buf: &mut [u8; MAX_REPLY],
) -> Option<usize> {
    let info = parse_frame(request).ok()?;
    let FrameKind::Ipv6(ip) = info.kind else {
        return None;
    };
    let L4::Icmpv6Nd {
        icmp_type: 135,
        target,
    } = ip.l4
    else {
        return None;
    };
    if !vips.contains(&IpAddr::V6(target)) {
        return None;
    }
    let IpAddr::V6(sender) = ip.src else {
        return None;
    };
    // Answer a DAD probe (unspecified source) to all-nodes, else unicast.
    let (dst_ip, dst_mac) = if sender.is_unspecified() {
        (
            Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1),
            Mac([0x33, 0x33, 0, 0, 0, 1]),
        )
    } else {
        (sender, Mac(info.src_mac))
    };
    buf.fill(0);
    eth(buf, dst_mac, source_mac, ETH_IPV6);
    let ip6 = &mut buf[14..54];
    ip6[0] = 0x60;
    ip6[4..6].copy_from_slice(&32u16.to_be_bytes());
    ip6[6] = 58;
    ip6[7] = 255;
    ip6[8..24].copy_from_slice(&target.octets());
    ip6[24..40].copy_from_slice(&dst_ip.octets());
    let body = &mut buf[54..86];
    body[0] = 136;
    body[4] = if sender.is_unspecified() { 0 } else { 0x40 }; // Solicited
    body[8..24].copy_from_slice(&target.octets());
    body[24] = 2; // target link-layer address option
    body[25] = 1;
    body[26..32].copy_from_slice(&cluster_mac.0);
    let c = icmpv6_checksum(&target, &dst_ip, &buf[54..86]);
    buf[56..58].copy_from_slice(&c.to_be_bytes());
    Some(86)
}

#[cfg(test)]
mod tests {
    use super::*;

    const VIP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 100);

    fn request(target: Ipv4Addr) -> [u8; 60] {
        let mut f = [0u8; 60];
        eth(&mut f, Mac::BROADCAST, Mac([2, 0, 0, 0, 0, 9]), ETH_ARP);
        arp(
            &mut f,
            1,
            Mac([2, 0, 0, 0, 0, 9]),
            Ipv4Addr::new(10, 0, 0, 200),
            Mac([0; 6]),
            target,
        );
        f
    }

    #[test]
    fn arp_reply_names_the_cluster_mac() {
        let vips = [IpAddr::V4(VIP)];
        let mut buf = [0u8; MAX_REPLY];
        let cm = Mac([2, 0xbf, 10, 0, 0, 100]);
        let src = Mac([2, 1, 10, 0, 0, 100]);
        let n = arp_reply(&request(VIP), &vips, cm, src, &mut buf).unwrap();
        let info = parse_frame(&buf[..n]).unwrap();
        let FrameKind::Arp(a) = info.kind else {
            panic!("not ARP")
        };
        assert_eq!((a.op, a.sender_mac, a.sender_ip), (2, cm.0, VIP));
        assert_eq!(a.target_ip, Ipv4Addr::new(10, 0, 0, 200));
        assert_eq!(info.dst_mac, [2, 0, 0, 0, 0, 9]);
        assert_eq!(info.src_mac, src.0);
        assert!(arp_reply(
            &request(Ipv4Addr::new(10, 0, 0, 5)),
            &vips,
            cm,
            src,
            &mut buf
        )
        .is_none());
    }

    #[test]
    fn gratuitous_arp_is_a_broadcast_request_for_itself() {
        let mut buf = [0u8; MAX_REPLY];
        let n = gratuitous_arp(
            VIP,
            Mac([2, 0xbf, 10, 0, 0, 100]),
            Mac([2, 1, 10, 0, 0, 100]),
            &mut buf,
        );
        let FrameKind::Arp(a) = parse_frame(&buf[..n]).unwrap().kind else {
            panic!("not ARP")
        };
        assert_eq!((a.op, a.sender_ip, a.target_ip), (1, VIP, VIP));
    }

    #[test]
    fn igmp_report_joins_the_cluster_group() {
        let mut buf = [0u8; MAX_REPLY];
        let group = Ipv4Addr::new(239, 255, 0, 100);
        let n = igmp_report(
            group,
            Mac([2, 1, 10, 0, 0, 100]),
            Ipv4Addr::new(10, 0, 0, 11),
            &mut buf,
        );
        let info = parse_frame(&buf[..n]).unwrap();
        assert_eq!(info.dst_mac, [0x01, 0x00, 0x5e, 0x7f, 0x00, 0x64]);
        let FrameKind::Ipv4(ip) = info.kind else {
            panic!("not IPv4")
        };
        assert_eq!(
            ip.l4,
            L4::Igmp {
                igmp_type: 0x16,
                group
            }
        );
        assert_eq!(
            crate::wire::ipv4_checksum(&buf[14..38]),
            0,
            "IP checksum verifies"
        );
        assert_eq!(
            crate::wire::ipv4_checksum(&buf[38..46]),
            0,
            "IGMP checksum verifies"
        );
    }

    #[test]
    fn neighbor_advert_answers_ns_for_vip() {
        let vip6: Ipv6Addr = "fd00::100".parse().unwrap();
        let client: Ipv6Addr = "fd00::200".parse().unwrap();
        let mut ns = [0u8; 86];
        eth(
            &mut ns,
            Mac([0x33, 0x33, 0xff, 0, 1, 0]),
            Mac([2, 0, 0, 0, 0, 9]),
            ETH_IPV6,
        );
        ns[14] = 0x60;
        ns[18..20].copy_from_slice(&32u16.to_be_bytes());
        ns[20] = 58;
        ns[21] = 255;
        ns[22..38].copy_from_slice(&client.octets());
        ns[38..54].copy_from_slice(&"ff02::1:ff00:100".parse::<Ipv6Addr>().unwrap().octets());
        ns[54] = 135;
        ns[62..78].copy_from_slice(&vip6.octets());
        ns[78] = 1;
        ns[79] = 1;
        ns[80..86].copy_from_slice(&[2, 0, 0, 0, 0, 9]);
        let mut buf = [0u8; MAX_REPLY];
        let cm = Mac([3, 0xbf, 10, 0, 0, 100]);
        let n = neighbor_advert(
            &ns,
            &[IpAddr::V6(vip6)],
            cm,
            Mac([2, 1, 10, 0, 0, 100]),
            &mut buf,
        )
        .unwrap();
        let info = parse_frame(&buf[..n]).unwrap();
        let FrameKind::Ipv6(ip) = info.kind else {
            panic!("not IPv6")
        };
        assert_eq!(
            ip.l4,
            L4::Icmpv6Nd {
                icmp_type: 136,
                target: vip6
            }
        );
        assert_eq!(ip.dst, IpAddr::V6(client));
        assert_eq!(
            icmpv6_checksum(&vip6, &client, &buf[54..86]),
            0,
            "checksum verifies"
        );
        assert_eq!(&buf[80..86], &cm.0);
    }
}
