//! Frame builders: Ethernet, VLAN tags, IPv4, IPv6, TCP, UDP, PPTP's GRE,
//! ARP, ICMP echo and neighbour solicitations, each written through the
//! setters of the dataplane's wire views (`shoal_dataplane::wire`), so a
//! builder and the parser agree on every offset by construction.
//!
//! Header builders (`tcp`, `udp`, `pptp_gre`) return the header (and
//! payload) alone; [`Ipv4::packet`] and [`ipv6`] wrap a transport in an IP
//! header; [`ethernet`] wraps anything in a frame. Checksums: the IPv4
//! header checksum is always filled; transport checksums are 0 unless the
//! builder's name or docs say otherwise ([`Ipv4::packet_checksummed`]),
//! because the dataplane never verifies them and only frames a kernel
//! socket receives need them. `write_*` variants write in place into a
//! caller's buffer, for pools of frames that must not allocate per frame.

use std::net::{Ipv4Addr, Ipv6Addr};

use shoal_dataplane::wire::{
    arp, ethernet as eth, ethertype, gre, icmpv4, icmpv6, ip_proto, ipv4 as ip4, ipv6 as ip6,
    tcp as tcp_wire, udp as udp_wire, ArpPacket, EthernetFrame, GrePacket, Icmpv4Packet,
    Icmpv6Packet, Ipv4Packet, Ipv6Packet, TcpSegment, UdpDatagram, VlanTag,
};

/// The source MAC of test clients (locally administered).
pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x99];
/// The broadcast MAC.
pub const BROADCAST: [u8; 6] = [0xff; 6];
/// Bytes of a minimum Ethernet frame without its FCS.
pub const MIN_FRAME_LEN: usize = 60;

fn len16(n: usize) -> u16 {
    u16::try_from(n).expect("a test frame longer than a 16-bit length field")
}

/// An Ethernet frame: `dst`, `src`, `ethertype`, then `payload` (no
/// padding; see [`padded`]).
pub fn ethernet(dst: [u8; 6], src: [u8; 6], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0u8; eth::HEADER_LEN + payload.len()];
    let mut view = EthernetFrame::new_unchecked(&mut f[..]);
    view.set_dst(dst);
    view.set_src(src);
    view.set_ethertype(ethertype);
    view.payload_mut().copy_from_slice(payload);
    f
}

/// Writes an Ethernet header into `buf` (at least 14 bytes).
pub fn write_ethernet(buf: &mut [u8], dst: [u8; 6], src: [u8; 6], ethertype: u16) {
    let mut view = EthernetFrame::new_unchecked(buf);
    view.set_dst(dst);
    view.set_src(src);
    view.set_ethertype(ethertype);
}

/// `frame` with a VLAN tag (TPID `tpid`, priority 0, VLAN `vlan_id`)
/// inserted after the MACs.
pub fn vlan_tagged(frame: &[u8], tpid: u16, vlan_id: u16) -> Vec<u8> {
    let mut f = Vec::with_capacity(frame.len() + eth::VLAN_TAG_LEN);
    f.extend_from_slice(&frame[..12]);
    f.extend_from_slice(&[0; eth::VLAN_TAG_LEN]);
    f.extend_from_slice(&frame[12..]);
    EthernetFrame::new_unchecked(&mut f[..]).set_ethertype(tpid);
    let mut tag = VlanTag::new_unchecked(&mut f[eth::HEADER_LEN..]);
    tag.set_tci(0, false, vlan_id);
    tag.set_ethertype(u16::from_be_bytes([frame[12], frame[13]]));
    f
}

/// `frame` zero-padded to Ethernet's 60-byte minimum.
pub fn padded(mut frame: Vec<u8>) -> Vec<u8> {
    frame.resize(frame.len().max(MIN_FRAME_LEN), 0);
    frame
}

/// An IPv4 header's fields. [`Ipv4::new`] gives the usual test values;
/// change fields with struct update syntax.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv4 {
    /// Source address.
    pub src: Ipv4Addr,
    /// Destination address.
    pub dst: Ipv4Addr,
    /// Protocol of the payload (`shoal_dataplane::wire::ip_proto`).
    pub protocol: u8,
    /// Identification.
    pub ident: u16,
    /// Flags and fragment offset as on the wire: 0x4000 don't fragment,
    /// 0x2000 more fragments, the low 13 bits the offset in 8-byte units.
    pub fragment: u16,
    /// Time to live.
    pub ttl: u8,
    /// Bytes of options (NOPs), a multiple of 4 up to 40.
    pub options: usize,
}

impl Ipv4 {
    /// `src` to `dst` carrying `protocol`: identification 1, don't
    /// fragment, TTL 64, no options.
    pub const fn new(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8) -> Self {
        Self {
            src,
            dst,
            protocol,
            ident: 1,
            fragment: 0x4000,
            ttl: 64,
            options: 0,
        }
    }

    /// Header length in bytes.
    pub const fn header_len(&self) -> usize {
        ip4::MIN_HEADER_LEN + self.options
    }

    /// Writes this header (checksum filled) for `payload_len` bytes of
    /// payload into `buf`; returns the header length.
    ///
    /// # Panics
    /// If `buf` is shorter than the header, or the options are not a
    /// multiple of 4 up to 40.
    pub fn write(&self, buf: &mut [u8], payload_len: usize) -> usize {
        assert!(self.options & 3 == 0 && self.options <= 40, "IPv4 options");
        let header_len = self.header_len();
        buf[ip4::MIN_HEADER_LEN..header_len].fill(1); // NOP options
        let mut ip = Ipv4Packet::new_unchecked(&mut buf[..header_len]);
        ip.set_version_and_header_len(header_len);
        ip.set_dscp_ecn(0, 0);
        ip.set_total_len(len16(header_len + payload_len));
        ip.set_ident(self.ident);
        ip.set_fragment(
            self.fragment & 0x4000 != 0,
            self.fragment & 0x2000 != 0,
            (self.fragment & 0x1fff) << 3,
        );
        ip.set_ttl(self.ttl);
        ip.set_protocol(self.protocol);
        ip.set_src(self.src);
        ip.set_dst(self.dst);
        ip.fill_checksum();
        header_len
    }

    /// This header and `payload` (an IP packet, no Ethernet header).
    pub fn packet(&self, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0u8; self.header_len() + payload.len()];
        let at = self.write(&mut p, payload.len());
        p[at..].copy_from_slice(payload);
        p
    }

    /// [`Ipv4::packet`], with the TCP or UDP checksum of `payload` filled
    /// over this header's pseudo header (other protocols: as is).
    pub fn packet_checksummed(&self, payload: &[u8]) -> Vec<u8> {
        let mut p = self.packet(payload);
        let l4 = &mut p[self.header_len()..];
        match self.protocol {
            ip_proto::TCP => TcpSegment::new_unchecked(l4).fill_checksum_v4(self.src, self.dst),
            ip_proto::UDP => UdpDatagram::new_unchecked(l4).fill_checksum_v4(self.src, self.dst),
            _ => {}
        }
        p
    }

    /// An Ethernet frame from [`CLIENT_MAC`] to `dst_mac` carrying
    /// [`Ipv4::packet`] of `payload`, padded to 60 bytes.
    pub fn frame(&self, dst_mac: [u8; 6], payload: &[u8]) -> Vec<u8> {
        padded(ethernet(
            dst_mac,
            CLIENT_MAC,
            ethertype::IPV4,
            &self.packet(payload),
        ))
    }
}

/// An IPv6 packet `src` to `dst` with `next_header` and `hop_limit`
/// carrying `payload` (no Ethernet header).
pub fn ipv6(
    src: Ipv6Addr,
    dst: Ipv6Addr,
    next_header: u8,
    hop_limit: u8,
    payload: &[u8],
) -> Vec<u8> {
    let mut p = vec![0u8; ip6::HEADER_LEN + payload.len()];
    let mut ip = Ipv6Packet::new_unchecked(&mut p[..]);
    ip.set_version_class_flow(0, 0);
    ip.set_payload_len(len16(payload.len()));
    ip.set_next_header(next_header);
    ip.set_hop_limit(hop_limit);
    ip.set_src(src);
    ip.set_dst(dst);
    ip.payload_mut().copy_from_slice(payload);
    p
}

/// Writes a 20-byte TCP header into `buf`: ports, `flags`, sequence
/// number 1, window 65535, checksum 0.
pub fn write_tcp(buf: &mut [u8], sport: u16, dport: u16, flags: u8) {
    let mut t = TcpSegment::new_unchecked(&mut buf[..tcp_wire::MIN_HEADER_LEN]);
    t.set_src_port(sport);
    t.set_dst_port(dport);
    t.set_seq(1);
    t.set_ack_number(0);
    t.set_header_len(tcp_wire::MIN_HEADER_LEN);
    t.set_flags(flags);
    t.set_window(65535);
    t.set_checksum(0);
    t.set_urgent(0);
}

/// A 20-byte TCP header (see [`write_tcp`]).
pub fn tcp(sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    let mut t = vec![0u8; tcp_wire::MIN_HEADER_LEN];
    write_tcp(&mut t, sport, dport, flags);
    t
}

/// Writes a UDP header into `buf` with length field `len` (header
/// included) and checksum 0.
pub fn write_udp(buf: &mut [u8], sport: u16, dport: u16, len: usize) {
    let mut u = UdpDatagram::new_unchecked(&mut buf[..udp_wire::HEADER_LEN]);
    u.set_src_port(sport);
    u.set_dst_port(dport);
    u.set_length(len16(len));
    u.set_checksum(0);
}

/// A UDP datagram carrying `payload`, checksum 0.
pub fn udp(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut u = vec![0u8; udp_wire::HEADER_LEN + payload.len()];
    let len = u.len();
    write_udp(&mut u, sport, dport, len);
    UdpDatagram::new_unchecked(&mut u[..])
        .payload_mut()
        .copy_from_slice(payload);
    u
}

/// Bytes of [`pptp_gre`].
pub const PPTP_GRE_LEN: usize = 16;

/// Writes enhanced GRE (version 1, PPTP) into `buf`: key and sequence
/// present, protocol PPP, a 4-byte payload length, `call_id`, `seq`, then a
/// PPP header for IPv4 (`ff 03 00 21`).
pub fn write_pptp_gre(buf: &mut [u8], call_id: u16, seq: u32) {
    let mut g = GrePacket::new_unchecked(&mut buf[..PPTP_GRE_LEN]);
    g.set_flags_version(gre::flags::KEY | gre::flags::SEQUENCE | 1);
    g.set_protocol(ethertype::PPP);
    g.set_pptp_key(4, call_id);
    g.set_seq(seq);
    buf[12..PPTP_GRE_LEN].copy_from_slice(&[0xff, 0x03, 0x00, 0x21]);
}

/// Enhanced GRE (PPTP) carrying a PPP header (see [`write_pptp_gre`]).
pub fn pptp_gre(call_id: u16, seq: u32) -> Vec<u8> {
    let mut g = vec![0u8; PPTP_GRE_LEN];
    write_pptp_gre(&mut g, call_id, seq);
    g
}

/// An ARP request body (Ethernet/IPv4): who has `target`? tell
/// `sender`/`sender_mac`.
pub fn arp_request(sender_mac: [u8; 6], sender: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
    let mut a = vec![0u8; arp::LEN];
    let mut view = ArpPacket::new_unchecked(&mut a[..]);
    view.set_ethernet_ipv4();
    view.set_operation(arp::OP_REQUEST);
    view.set_sender_mac(sender_mac);
    view.set_sender_ip(sender);
    view.set_target_mac([0; 6]);
    view.set_target_ip(target);
    a
}

/// An ICMP echo request (`ident`, `seq`, `data`), checksum filled.
pub fn icmp_echo_request(ident: u16, seq: u16, data: &[u8]) -> Vec<u8> {
    let mut i = vec![0u8; icmpv4::HEADER_LEN + data.len()];
    let mut view = Icmpv4Packet::new_unchecked(&mut i[..]);
    view.set_msg_type(icmpv4::types::ECHO_REQUEST);
    view.set_code(0);
    view.set_rest_of_header((u32::from(ident) << 16) | u32::from(seq));
    view.data_mut().copy_from_slice(data);
    view.fill_checksum();
    i
}

/// The solicited-node multicast group of `target` (RFC 4291 §2.7.1).
pub fn solicited_node(target: Ipv6Addr) -> Ipv6Addr {
    let t = target.octets();
    Ipv6Addr::new(
        0xff02,
        0,
        0,
        0,
        0,
        1,
        0xff00 | u16::from(t[13]),
        u16::from_be_bytes([t[14], t[15]]),
    )
}

/// The Ethernet multicast MAC of IPv6 group `group` (RFC 2464 §7).
pub fn ipv6_multicast_mac(group: Ipv6Addr) -> [u8; 6] {
    let g = group.octets();
    [0x33, 0x33, g[12], g[13], g[14], g[15]]
}

/// An IPv6 packet (hop limit 255) from `src` to the solicited-node group
/// of `target` carrying a neighbour solicitation for `target` followed by
/// `options` (raw option bytes), ICMPv6 checksum filled.
pub fn neighbour_solicitation(src: Ipv6Addr, target: Ipv6Addr, options: &[u8]) -> Vec<u8> {
    let group = solicited_node(target);
    let mut icmp = vec![0u8; icmpv6::ND_LEN + options.len()];
    let mut view = Icmpv6Packet::new_unchecked(&mut icmp[..]);
    view.set_msg_type(icmpv6::types::NEIGHBOR_SOLICIT);
    view.set_code(0);
    view.set_body_word(0);
    view.set_target(target);
    icmp[icmpv6::ND_LEN..].copy_from_slice(options);
    Icmpv6Packet::new_unchecked(&mut icmp[..]).fill_checksum(src, group);
    ipv6(src, group, ip_proto::ICMPV6, 255, &icmp)
}

/// The source link-layer address option of neighbour discovery for `mac`.
pub fn source_link_layer_option(mac: [u8; 6]) -> [u8; 8] {
    let mut o = [1, 1, 0, 0, 0, 0, 0, 0];
    o[2..].copy_from_slice(&mac);
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_dataplane::packet::{parse_frame, FrameKind, L4};
    use shoal_dataplane::wire::tcp::flags;

    const CLIENT: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 7);
    const VIP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 100);

    #[test]
    fn ipv4_tcp_reads_back_through_the_views() {
        let ip = Ipv4 {
            options: 8,
            ..Ipv4::new(CLIENT, VIP, ip_proto::TCP)
        };
        let p = ip.packet_checksummed(&tcp(40000, 80, flags::SYN));
        let v = Ipv4Packet::new_checked(&p[..]).unwrap();
        assert!(v.verify_checksum());
        assert_eq!(
            (v.src(), v.dst(), v.protocol()),
            (CLIENT, VIP, ip_proto::TCP)
        );
        assert_eq!((v.header_len(), v.ttl(), v.ident()), (28, 64, 1));
        assert!(v.dont_frag() && !v.more_frags());
        let t = TcpSegment::new_checked(v.payload()).unwrap();
        assert_eq!(
            (t.src_port(), t.dst_port(), t.flags()),
            (40000, 80, flags::SYN)
        );
        assert!(t.verify_checksum_v4(CLIENT, VIP));
    }

    #[test]
    fn fragment_word_is_written_as_given() {
        let ip = Ipv4 {
            fragment: 0x2003,
            ..Ipv4::new(CLIENT, VIP, ip_proto::UDP)
        };
        let p = ip.packet(&[0; 16]);
        assert_eq!(&p[6..8], &[0x20, 0x03]);
    }

    #[test]
    fn frames_parse_as_the_pipeline_reads_them() {
        let f = Ipv4::new(CLIENT, VIP, ip_proto::UDP).frame([2; 6], &udp(5, 53, b"ping"));
        assert_eq!(f.len(), MIN_FRAME_LEN);
        let info = parse_frame(&f).unwrap();
        let FrameKind::Ipv4(ip) = info.kind else {
            panic!("{info:?}")
        };
        assert!(matches!(ip.l4, L4::Udp { dst_port: 53, .. }), "{ip:?}");
        let tagged = vlan_tagged(&f, ethertype::VLAN, 5);
        let info = parse_frame(&tagged).unwrap();
        assert_eq!(info.vlan, Some(5), "{info:?}");
    }

    #[test]
    fn udp_gre_arp_icmp_and_ns_read_back() {
        let u = udp(1, 2, b"abc");
        let v = UdpDatagram::new_checked(&u[..]).unwrap();
        assert_eq!((v.length(), v.payload()), (11, &b"abc"[..]));
        let g = pptp_gre(0x1234, 1);
        let v = GrePacket::new_checked(&g[..]).unwrap();
        assert_eq!(v.protocol(), ethertype::PPP);
        let a = arp_request(CLIENT_MAC, CLIENT, VIP);
        let v = ArpPacket::new_checked(&a[..]).unwrap();
        assert_eq!((v.sender_ip(), v.target_ip()), (CLIENT, VIP));
        let i = icmp_echo_request(7, 1, b"x");
        let v = Icmpv4Packet::new_checked(&i[..]).unwrap();
        assert!(v.verify_checksum());
        assert_eq!((v.echo_ident(), v.echo_seq()), (7, 1));
        let src: Ipv6Addr = "fe80::1".parse().unwrap();
        let target: Ipv6Addr = "fd00::100".parse().unwrap();
        let p = neighbour_solicitation(src, target, &source_link_layer_option(CLIENT_MAC));
        let ip = Ipv6Packet::new_checked(&p[..]).unwrap();
        assert_eq!(ip.dst(), solicited_node(target));
        let ns = Icmpv6Packet::new_checked(ip.payload()).unwrap();
        assert!(ns.verify_checksum(src, ip.dst()));
    }
}
