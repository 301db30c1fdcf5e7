//! Zero-copy views over the protocol headers shoal reads and writes.
//!
//! # Contract
//!
//! Every header is a view `Foo<T: AsRef<[u8]>>` over a byte buffer, in the
//! style of smoltcp's `wire` module:
//!
//! - `Foo::new_checked(buffer)` checks, once, that the buffer holds the whole
//!   header (and every length field the header carries is consistent with the
//!   buffer), and returns a [`Malformed`] reason otherwise. After that, every
//!   getter reads a field at a named offset and cannot panic.
//! - `Foo::new_unchecked(buffer)` skips the checks; it exists for building
//!   headers into a buffer the caller sized. Getters and setters on an
//!   unchecked view panic if the buffer is shorter than the header: that is a
//!   programming error, never a property of received bytes.
//! - Setters exist only for `T: AsRef<[u8]> + AsMut<[u8]>`. They write fields;
//!   they never resize anything and never recompute checksums unless their
//!   name says so (`fill_checksum`).
//! - Variable regions (`payload`, `options`) are always clamped to the buffer,
//!   so they never panic, even on an unchecked view whose length field lies.
//!
//! Views never allocate, copy, or verify checksums on their own: checksum
//! verification is an explicit call, because the frame path does not pay for
//! it (the kernel or the NIC already did, and a bad checksum does not change
//! which host owns a flow).
//!
//! All multi-byte fields are network byte order (big endian).
#![forbid(unsafe_code)]

pub mod arp;
pub mod esp;
pub mod ethernet;
pub mod gre;
pub mod icmpv4;
pub mod icmpv6;
pub mod igmp;
pub mod ipv4;
pub mod ipv6;
pub mod tcp;
pub mod udp;

pub use arp::ArpPacket;
pub use esp::EspPacket;
pub use ethernet::{EthernetFrame, VlanTag};
pub use gre::GrePacket;
pub use icmpv4::Icmpv4Packet;
pub use icmpv6::Icmpv6Packet;
pub use igmp::IgmpPacket;
pub use ipv4::{ipv4_checksum, Ipv4Packet};
pub use ipv6::{
    walk_extension_headers, ExtensionWalk, Ipv6ExtensionHeader, Ipv6FragmentHeader, Ipv6Packet,
};
pub use tcp::TcpSegment;
pub use udp::UdpDatagram;

/// EtherType values shoal tells apart (IEEE registry).
pub mod ethertype {
    /// IPv4.
    pub const IPV4: u16 = 0x0800;
    /// ARP.
    pub const ARP: u16 = 0x0806;
    /// IEEE 802.1Q customer VLAN tag.
    pub const VLAN: u16 = 0x8100;
    /// IEEE 802.1ad service VLAN tag (QinQ outer tag).
    pub const QINQ: u16 = 0x88a8;
    /// Pre-standard QinQ outer tag still sent by some switches.
    pub const QINQ_LEGACY: u16 = 0x9100;
    /// IPv6.
    pub const IPV6: u16 = 0x86dd;
    /// Cluster heartbeat (the EtherType Windows NLB uses for its heartbeats).
    pub const HEARTBEAT: u16 = 0x886f;
    /// PPP, carried by enhanced GRE (PPTP, RFC 2637).
    pub const PPP: u16 = 0x880b;

    /// True for the tag protocol identifiers shoal walks through
    /// (802.1Q, 802.1ad and the legacy 0x9100).
    pub const fn is_vlan_tag(ethertype: u16) -> bool {
        matches!(ethertype, VLAN | QINQ | QINQ_LEGACY)
    }
}

/// IP protocol numbers (IANA "Assigned Internet Protocol Numbers"); IPv6
/// extension headers share the same number space.
pub mod ip_proto {
    /// IPv6 hop-by-hop options header.
    pub const HOP_BY_HOP: u8 = 0;
    /// ICMP for IPv4.
    pub const ICMP: u8 = 1;
    /// IGMP.
    pub const IGMP: u8 = 2;
    /// TCP.
    pub const TCP: u8 = 6;
    /// UDP.
    pub const UDP: u8 = 17;
    /// DCCP (ports at the same offsets as TCP and UDP).
    pub const DCCP: u8 = 33;
    /// IPv6 routing header.
    pub const ROUTING: u8 = 43;
    /// IPv6 fragment header.
    pub const FRAGMENT: u8 = 44;
    /// GRE.
    pub const GRE: u8 = 47;
    /// IPsec ESP.
    pub const ESP: u8 = 50;
    /// IPsec AH.
    pub const AH: u8 = 51;
    /// ICMP for IPv6.
    pub const ICMPV6: u8 = 58;
    /// IPv6 "no next header".
    pub const NO_NEXT_HEADER: u8 = 59;
    /// IPv6 destination options header.
    pub const DESTINATION_OPTIONS: u8 = 60;
    /// SCTP (ports at the same offsets as TCP and UDP).
    pub const SCTP: u8 = 132;
    /// UDP-Lite (ports at the same offsets as UDP).
    pub const UDP_LITE: u8 = 136;

    /// True for transport protocols whose first four bytes are the source
    /// and destination ports.
    pub const fn has_ports(proto: u8) -> bool {
        matches!(proto, TCP | UDP | DCCP | SCTP | UDP_LITE)
    }
}

/// Why a frame was not parsed. One reason per check, so drops can be counted
/// by reason; [`Malformed::ALL`] and [`Malformed::name`] give a stable counter
/// table (the names are part of the metrics interface: never rename them).
///
/// "Truncated" means the frame holds fewer bytes than a header or a length
/// field requires; "bad" means a field's value is impossible or inconsistent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, thiserror::Error)]
#[repr(u8)]
pub enum Malformed {
    /// Fewer than 14 bytes of Ethernet header.
    #[error("frame shorter than an Ethernet header")]
    TruncatedEthernet = 0,
    /// More stacked VLAN tags than [`ethernet::MAX_VLAN_TAGS`].
    #[error("more stacked VLAN tags than allowed")]
    TooManyVlanTags,
    /// A VLAN tag cut short.
    #[error("VLAN tag cut short")]
    TruncatedVlan,
    /// Fewer than 28 bytes of ARP.
    #[error("ARP packet cut short")]
    TruncatedArp,
    /// ARP that is not Ethernet/IPv4 (hardware type 1, protocol 0x0800, lengths 6 and 4).
    #[error("ARP packet is not Ethernet/IPv4")]
    BadArp,
    /// IPv4 header, or the datagram its total length announces, cut short.
    #[error("IPv4 datagram cut short")]
    TruncatedIpv4,
    /// IPv4 EtherType but version is not 4.
    #[error("IPv4 version field is not 4")]
    BadIpv4Version,
    /// IPv4 IHL below 5.
    #[error("IPv4 header length below 20 bytes")]
    BadIpv4HeaderLength,
    /// IPv4 total length smaller than its header length.
    #[error("IPv4 total length smaller than its header")]
    BadIpv4TotalLength,
    /// IPv4 options whose lengths overrun the header.
    #[error("IPv4 options overrun the header")]
    BadIpv4Options,
    /// IPv6 header, or the payload its length announces, cut short.
    #[error("IPv6 datagram cut short")]
    TruncatedIpv6,
    /// IPv6 EtherType but version is not 6.
    #[error("IPv6 version field is not 6")]
    BadIpv6Version,
    /// IPv6 payload length zero with a next header (a jumbogram, RFC 2675,
    /// which cannot cross Ethernet).
    #[error("IPv6 payload length zero with a next header (jumbogram)")]
    BadIpv6PayloadLength,
    /// More IPv6 extension headers than [`ipv6::MAX_EXTENSION_HEADERS`].
    #[error("IPv6 extension header chain too long")]
    ExtensionChainTooLong,
    /// An IPv6 extension header (or an AH header after IPv4) cut short.
    #[error("IPv6 extension header or AH header cut short")]
    TruncatedExtensionHeader,
    /// An IPv6 extension header out of place (hop-by-hop not first).
    #[error("IPv6 extension header out of place")]
    BadExtensionHeader,
    /// Fewer bytes than the TCP header (or its data offset) needs.
    #[error("TCP header cut short")]
    TruncatedTcp,
    /// TCP data offset below 5.
    #[error("TCP data offset below 20 bytes")]
    BadTcpOffset,
    /// Fewer than 8 bytes of UDP header.
    #[error("UDP header cut short")]
    TruncatedUdp,
    /// UDP length below 8 or beyond the IP payload.
    #[error("UDP length below 8 or beyond the IP payload")]
    BadUdpLength,
    /// GRE header (with its optional fields) cut short.
    #[error("GRE header cut short")]
    TruncatedGre,
    /// GRE version other than 0 and 1, routing present, or an enhanced GRE
    /// (version 1) header that is not PPTP's.
    #[error("GRE header with unsupported version or flags")]
    BadGre,
    /// ICMP or ICMPv6 header cut short.
    #[error("ICMP message cut short")]
    TruncatedIcmp,
    /// IGMP message cut short.
    #[error("IGMP message cut short")]
    TruncatedIgmp,
    /// Fewer than 8 bytes of ESP header.
    #[error("ESP header cut short")]
    TruncatedEsp,
    /// Impossible fragment: data beyond offset 65535, a non-final fragment
    /// whose length is not a multiple of 8, or two IPv6 fragment headers.
    #[error("impossible fragment")]
    BadFragment,
}

impl Malformed {
    /// Number of reasons, for fixed-size counter tables indexed by `reason as usize`.
    pub const COUNT: usize = Self::ALL.len();

    /// Every reason, in discriminant order (`ALL[r as usize] == r`).
    pub const ALL: &'static [Malformed] = &[
        Malformed::TruncatedEthernet,
        Malformed::TooManyVlanTags,
        Malformed::TruncatedVlan,
        Malformed::TruncatedArp,
        Malformed::BadArp,
        Malformed::TruncatedIpv4,
        Malformed::BadIpv4Version,
        Malformed::BadIpv4HeaderLength,
        Malformed::BadIpv4TotalLength,
        Malformed::BadIpv4Options,
        Malformed::TruncatedIpv6,
        Malformed::BadIpv6Version,
        Malformed::BadIpv6PayloadLength,
        Malformed::ExtensionChainTooLong,
        Malformed::TruncatedExtensionHeader,
        Malformed::BadExtensionHeader,
        Malformed::TruncatedTcp,
        Malformed::BadTcpOffset,
        Malformed::TruncatedUdp,
        Malformed::BadUdpLength,
        Malformed::TruncatedGre,
        Malformed::BadGre,
        Malformed::TruncatedIcmp,
        Malformed::TruncatedIgmp,
        Malformed::TruncatedEsp,
        Malformed::BadFragment,
    ];

    /// Stable snake_case name, for counters and logs.
    pub const fn name(self) -> &'static str {
        match self {
            Malformed::TruncatedEthernet => "truncated_ethernet",
            Malformed::TooManyVlanTags => "too_many_vlan_tags",
            Malformed::TruncatedVlan => "truncated_vlan",
            Malformed::TruncatedArp => "truncated_arp",
            Malformed::BadArp => "bad_arp",
            Malformed::TruncatedIpv4 => "truncated_ipv4",
            Malformed::BadIpv4Version => "bad_ipv4_version",
            Malformed::BadIpv4HeaderLength => "bad_ipv4_header_length",
            Malformed::BadIpv4TotalLength => "bad_ipv4_total_length",
            Malformed::BadIpv4Options => "bad_ipv4_options",
            Malformed::TruncatedIpv6 => "truncated_ipv6",
            Malformed::BadIpv6Version => "bad_ipv6_version",
            Malformed::BadIpv6PayloadLength => "bad_ipv6_payload_length",
            Malformed::ExtensionChainTooLong => "extension_chain_too_long",
            Malformed::TruncatedExtensionHeader => "truncated_extension_header",
            Malformed::BadExtensionHeader => "bad_extension_header",
            Malformed::TruncatedTcp => "truncated_tcp",
            Malformed::BadTcpOffset => "bad_tcp_offset",
            Malformed::TruncatedUdp => "truncated_udp",
            Malformed::BadUdpLength => "bad_udp_length",
            Malformed::TruncatedGre => "truncated_gre",
            Malformed::BadGre => "bad_gre",
            Malformed::TruncatedIcmp => "truncated_icmp",
            Malformed::TruncatedIgmp => "truncated_igmp",
            Malformed::TruncatedEsp => "truncated_esp",
            Malformed::BadFragment => "bad_fragment",
        }
    }
}

// Field readers and writers shared by the views. Callers have checked the
// length (that is the views' contract), so indexing is the intended failure
// mode for unchecked views only.

#[inline]
pub(crate) fn read_u16(buf: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([buf[at], buf[at + 1]])
}

#[inline]
pub(crate) fn read_u32(buf: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]])
}

#[inline]
pub(crate) fn read_mac(buf: &[u8], at: usize) -> [u8; 6] {
    let mut mac = [0; 6];
    mac.copy_from_slice(&buf[at..at + 6]);
    mac
}

#[inline]
pub(crate) fn read_ipv4(buf: &[u8], at: usize) -> std::net::Ipv4Addr {
    std::net::Ipv4Addr::from(read_u32(buf, at))
}

#[inline]
pub(crate) fn read_ipv6(buf: &[u8], at: usize) -> std::net::Ipv6Addr {
    let mut octets = [0; 16];
    octets.copy_from_slice(&buf[at..at + 16]);
    std::net::Ipv6Addr::from(octets)
}

#[inline]
pub(crate) fn write_u16(buf: &mut [u8], at: usize, value: u16) {
    buf[at..at + 2].copy_from_slice(&value.to_be_bytes());
}

#[inline]
pub(crate) fn write_u32(buf: &mut [u8], at: usize, value: u32) {
    buf[at..at + 4].copy_from_slice(&value.to_be_bytes());
}

#[cfg(test)]
pub(crate) mod test_util {
    /// Decodes a hex string, ignoring whitespace (test vectors only).
    pub fn hex(s: &str) -> Vec<u8> {
        let digits: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
        assert!(digits.len() & 1 == 0, "odd number of hex digits");
        digits
            .chunks(2)
            .map(|pair| {
                let text = std::str::from_utf8(pair).expect("ascii");
                u8::from_str_radix(text, 16).expect("hex digit")
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_is_in_discriminant_order_and_names_are_unique() {
        for (index, reason) in Malformed::ALL.iter().enumerate() {
            assert_eq!(*reason as usize, index);
        }
        let mut names: Vec<&str> = Malformed::ALL.iter().map(|r| r.name()).collect();
        for name in &names {
            assert!(name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'));
        }
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Malformed::COUNT);
    }

    #[test]
    fn vlan_tpids() {
        assert!(ethertype::is_vlan_tag(0x8100));
        assert!(ethertype::is_vlan_tag(0x88a8));
        assert!(ethertype::is_vlan_tag(0x9100));
        assert!(!ethertype::is_vlan_tag(0x0800));
    }
}
