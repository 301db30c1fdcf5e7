//! IPv6 header (RFC 8200) and its extension header chain.
//!
//! [`Ipv6Packet::new_checked`] trusts the payload length: bytes after it
//! (Ethernet padding) are ignored, a buffer shorter than it is
//! [`Malformed::TruncatedIpv6`]. [`walk_extension_headers`] follows hop-by-hop
//! (0), routing (43), fragment (44), destination options (60) and AH (51)
//! headers, at most [`MAX_EXTENSION_HEADERS`] of them, and stops at anything
//! else (ESP 50 and no-next-header 59 included): that is the upper layer.

use std::net::Ipv6Addr;

use super::ip_proto::{AH, DESTINATION_OPTIONS, FRAGMENT, HOP_BY_HOP, ROUTING};
use super::{read_ipv6, read_u16, read_u32, write_u16, write_u32, Malformed};

/// Length of the fixed IPv6 header.
pub const HEADER_LEN: usize = 40;

/// Length of the fragment extension header.
pub const FRAGMENT_HEADER_LEN: usize = 8;

/// Most extension headers [`walk_extension_headers`] follows before it
/// gives up with [`Malformed::ExtensionChainTooLong`]. Real traffic rarely
/// has more than three; the cap bounds the work an attacker can demand.
pub const MAX_EXTENSION_HEADERS: usize = 8;

mod field {
    pub const VER_TC_FLOW: usize = 0;
    pub const PAYLOAD_LEN: usize = 4;
    pub const NEXT_HEADER: usize = 6;
    pub const HOP_LIMIT: usize = 7;
    pub const SRC: usize = 8;
    pub const DST: usize = 24;

    pub const EXT_NEXT_HEADER: usize = 0;
    pub const EXT_LEN: usize = 1;
    pub const FRAG_OFFSET_FLAGS: usize = 2;
    pub const FRAG_IDENT: usize = 4;
}

/// A view of an IPv6 packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv6Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Ipv6Packet<T> {
    /// Wraps `buffer` without checks (see the module contract in [`crate::wire`]).
    pub const fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// Wraps a received packet after checking: the 40-byte header, version
    /// 6, a non-zero payload length unless the next header is 59, and the
    /// whole payload present.
    pub fn new_checked(buffer: T) -> Result<Self, Malformed> {
        let packet = Self::new_checked_header(buffer)?;
        let payload_len = usize::from(packet.payload_len());
        if payload_len == 0 && packet.next_header() != super::ip_proto::NO_NEXT_HEADER {
            return Err(Malformed::BadIpv6PayloadLength);
        }
        if packet.buffer.as_ref().len() < HEADER_LEN + payload_len {
            return Err(Malformed::TruncatedIpv6);
        }
        Ok(packet)
    }

    /// Wraps a header whose packet may be cut short, as quoted inside an
    /// ICMPv6 error: checks only the 40-byte header and the version.
    pub fn new_checked_header(buffer: T) -> Result<Self, Malformed> {
        if buffer.as_ref().len() < HEADER_LEN {
            return Err(Malformed::TruncatedIpv6);
        }
        let packet = Self { buffer };
        if packet.version() != 6 {
            return Err(Malformed::BadIpv6Version);
        }
        Ok(packet)
    }

    /// The wrapped buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// Version field (6 for a checked view).
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::VER_TC_FLOW] >> 4
    }

    /// Traffic class.
    pub fn traffic_class(&self) -> u8 {
        (read_u16(self.buffer.as_ref(), field::VER_TC_FLOW) >> 4) as u8
    }

    /// Flow label (20 bits).
    pub fn flow_label(&self) -> u32 {
        read_u32(self.buffer.as_ref(), field::VER_TC_FLOW) & 0x000f_ffff
    }

    /// Payload length (everything after the fixed header, extension headers included).
    pub fn payload_len(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::PAYLOAD_LEN)
    }

    /// Next header (first extension header or upper layer).
    pub fn next_header(&self) -> u8 {
        self.buffer.as_ref()[field::NEXT_HEADER]
    }

    /// Hop limit.
    pub fn hop_limit(&self) -> u8 {
        self.buffer.as_ref()[field::HOP_LIMIT]
    }

    /// Source address.
    pub fn src(&self) -> Ipv6Addr {
        read_ipv6(self.buffer.as_ref(), field::SRC)
    }

    /// Destination address.
    pub fn dst(&self) -> Ipv6Addr {
        read_ipv6(self.buffer.as_ref(), field::DST)
    }

    /// Bytes after the fixed header up to the payload length, never beyond the buffer.
    pub fn payload(&self) -> &[u8] {
        let b = self.buffer.as_ref();
        let start = HEADER_LEN.min(b.len());
        let end = (HEADER_LEN + usize::from(self.payload_len())).clamp(start, b.len());
        &b[start..end]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv6Packet<T> {
    /// Sets version 6, the traffic class and the flow label (masked to 20 bits).
    pub fn set_version_class_flow(&mut self, traffic_class: u8, flow_label: u32) {
        let word = (6 << 28) | (u32::from(traffic_class) << 20) | (flow_label & 0x000f_ffff);
        write_u32(self.buffer.as_mut(), field::VER_TC_FLOW, word);
    }

    /// Sets the payload length.
    pub fn set_payload_len(&mut self, len: u16) {
        write_u16(self.buffer.as_mut(), field::PAYLOAD_LEN, len);
    }

    /// Sets the next header.
    pub fn set_next_header(&mut self, next_header: u8) {
        self.buffer.as_mut()[field::NEXT_HEADER] = next_header;
    }

    /// Sets the hop limit.
    pub fn set_hop_limit(&mut self, hop_limit: u8) {
        self.buffer.as_mut()[field::HOP_LIMIT] = hop_limit;
    }

    /// Sets the source address.
    pub fn set_src(&mut self, ip: Ipv6Addr) {
        self.buffer.as_mut()[field::SRC..field::SRC + 16].copy_from_slice(&ip.octets());
    }

    /// Sets the destination address.
    pub fn set_dst(&mut self, ip: Ipv6Addr) {
        self.buffer.as_mut()[field::DST..field::DST + 16].copy_from_slice(&ip.octets());
    }

    /// Bytes after the fixed header up to the payload length, writable.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let len = self.buffer.as_ref().len();
        let start = HEADER_LEN.min(len);
        let end = (HEADER_LEN + usize::from(self.payload_len())).clamp(start, len);
        &mut self.buffer.as_mut()[start..end]
    }
}

/// A view of a generic extension header (hop-by-hop, routing, destination
/// options, AH): next header, a length byte, and opaque data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv6ExtensionHeader<T: AsRef<[u8]>> {
    buffer: T,
    is_ah: bool,
}

impl<T: AsRef<[u8]>> Ipv6ExtensionHeader<T> {
    /// Wraps `buffer` without checks; `kind` is the header's protocol
    /// number (AH counts its length in 4-byte units, the rest in 8).
    pub const fn new_unchecked(buffer: T, kind: u8) -> Self {
        Self {
            buffer,
            is_ah: kind == AH,
        }
    }

    /// Wraps `buffer` after checking it holds the whole header its length
    /// byte announces.
    pub fn new_checked(buffer: T, kind: u8) -> Result<Self, Malformed> {
        let header = Self::new_unchecked(buffer, kind);
        let len = header.buffer.as_ref().len();
        if len < 2 || len < header.header_len() {
            return Err(Malformed::TruncatedExtensionHeader);
        }
        Ok(header)
    }

    /// The wrapped buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// The header after this one.
    pub fn next_header(&self) -> u8 {
        self.buffer.as_ref()[field::EXT_NEXT_HEADER]
    }

    /// Length of this header in bytes: (len + 1) × 8, or (len + 2) × 4 for AH.
    pub fn header_len(&self) -> usize {
        let units = usize::from(self.buffer.as_ref()[field::EXT_LEN]);
        if self.is_ah {
            (units + 2) * 4
        } else {
            (units + 1) * 8
        }
    }

    /// The header's bytes after next header and length, up to its end.
    pub fn data(&self) -> &[u8] {
        let b = self.buffer.as_ref();
        let end = self.header_len().min(b.len());
        b.get(2..end).unwrap_or(&[])
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv6ExtensionHeader<T> {
    /// Sets the next header.
    pub fn set_next_header(&mut self, next_header: u8) {
        self.buffer.as_mut()[field::EXT_NEXT_HEADER] = next_header;
    }

    /// Sets the raw length byte (units as in [`Self::header_len`]).
    pub fn set_len_units(&mut self, units: u8) {
        self.buffer.as_mut()[field::EXT_LEN] = units;
    }
}

/// A view of the fragment extension header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv6FragmentHeader<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Ipv6FragmentHeader<T> {
    /// Wraps `buffer` without checks.
    pub const fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// Wraps `buffer` after checking it holds the 8-byte header.
    pub fn new_checked(buffer: T) -> Result<Self, Malformed> {
        if buffer.as_ref().len() < FRAGMENT_HEADER_LEN {
            return Err(Malformed::TruncatedExtensionHeader);
        }
        Ok(Self { buffer })
    }

    /// The wrapped buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// The header the fragmentable part starts with.
    pub fn next_header(&self) -> u8 {
        self.buffer.as_ref()[field::EXT_NEXT_HEADER]
    }

    /// Fragment offset in bytes.
    pub fn frag_offset(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::FRAG_OFFSET_FLAGS) & 0xfff8
    }

    /// More-fragments flag.
    pub fn more_frags(&self) -> bool {
        read_u16(self.buffer.as_ref(), field::FRAG_OFFSET_FLAGS) & 1 != 0
    }

    /// Identification (groups the fragments of one packet).
    pub fn ident(&self) -> u32 {
        read_u32(self.buffer.as_ref(), field::FRAG_IDENT)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv6FragmentHeader<T> {
    /// Sets the next header.
    pub fn set_next_header(&mut self, next_header: u8) {
        self.buffer.as_mut()[field::EXT_NEXT_HEADER] = next_header;
    }

    /// Sets the offset in bytes (rounded down to 8) and the M flag; clears
    /// the reserved bits.
    pub fn set_fragment(&mut self, offset: u16, more_frags: bool) {
        let b = self.buffer.as_mut();
        b[1] = 0;
        write_u16(
            b,
            field::FRAG_OFFSET_FLAGS,
            (offset & 0xfff8) | u16::from(more_frags),
        );
    }

    /// Sets the identification.
    pub fn set_ident(&mut self, ident: u32) {
        write_u32(self.buffer.as_mut(), field::FRAG_IDENT, ident);
    }
}

/// What a fragment header said, as found by [`walk_extension_headers`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv6Fragment {
    /// Identification.
    pub ident: u32,
    /// Offset of this fragment's data in the original packet, in bytes.
    pub offset: u16,
    /// More fragments follow.
    pub more: bool,
    /// Where this fragment's data (the fragmentable part) starts, relative
    /// to the slice given to the walk.
    pub data_offset: usize,
}

impl Ipv6Fragment {
    /// True when a fragment with `data_len` bytes of fragment data is
    /// possible: it ends within 65535 bytes and, unless it is the last, its
    /// length is a multiple of 8 (RFC 8200 §4.5).
    pub const fn is_possible(&self, data_len: usize) -> bool {
        self.offset as usize + data_len <= super::ipv4::MAX_DATAGRAM_LEN
            && (!self.more || data_len & 7 == 0)
    }

    /// An atomic fragment (offset 0, no more fragments, RFC 6946): the
    /// whole packet is here.
    pub const fn is_atomic(&self) -> bool {
        self.offset == 0 && !self.more
    }
}

/// Where an extension header walk ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExtensionWalk {
    /// Protocol number of the upper layer (or of the first header of a
    /// later fragment's data, which the walk does not enter).
    pub upper_layer: u8,
    /// Where the upper layer starts, relative to the slice given to the walk.
    pub upper_layer_offset: usize,
    /// The fragment header, if the chain had one.
    pub fragment: Option<Ipv6Fragment>,
    /// Number of extension headers followed.
    pub headers: usize,
}

/// Follows the extension header chain that starts with protocol `first`
/// at the start of `data` (the IPv6 payload).
///
/// Bounded: at most [`MAX_EXTENSION_HEADERS`] headers. It stops at the first
/// protocol that is not an extension header, and right after a fragment
/// header whose offset is not zero (a later fragment's data is not headers).
/// Fragment sizes are not judged here (the slice may be a quote cut short);
/// see [`Ipv6Fragment::is_possible`].
///
/// # Errors
/// [`Malformed::ExtensionChainTooLong`], [`Malformed::TruncatedExtensionHeader`],
/// [`Malformed::BadExtensionHeader`] for a hop-by-hop header that is not
/// first, [`Malformed::BadFragment`] for a second fragment header.
pub fn walk_extension_headers(first: u8, data: &[u8]) -> Result<ExtensionWalk, Malformed> {
    let mut walk = ExtensionWalk {
        upper_layer: first,
        upper_layer_offset: 0,
        fragment: None,
        headers: 0,
    };
    loop {
        let next = walk.upper_layer;
        if !matches!(
            next,
            HOP_BY_HOP | ROUTING | FRAGMENT | DESTINATION_OPTIONS | AH
        ) {
            return Ok(walk);
        }
        if walk.headers == MAX_EXTENSION_HEADERS {
            return Err(Malformed::ExtensionChainTooLong);
        }
        if next == HOP_BY_HOP && walk.headers != 0 {
            return Err(Malformed::BadExtensionHeader);
        }
        walk.headers += 1;
        let rest = data.get(walk.upper_layer_offset..).unwrap_or(&[]);
        if next == FRAGMENT {
            if walk.fragment.is_some() {
                return Err(Malformed::BadFragment);
            }
            let header = Ipv6FragmentHeader::new_checked(rest)?;
            walk.upper_layer_offset += FRAGMENT_HEADER_LEN;
            walk.upper_layer = header.next_header();
            walk.fragment = Some(Ipv6Fragment {
                ident: header.ident(),
                offset: header.frag_offset(),
                more: header.more_frags(),
                data_offset: walk.upper_layer_offset,
            });
            if header.frag_offset() != 0 {
                return Ok(walk);
            }
        } else {
            let header = Ipv6ExtensionHeader::new_checked(rest, next)?;
            walk.upper_layer_offset += header.header_len();
            walk.upper_layer = header.next_header();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::ip_proto::{NO_NEXT_HEADER, TCP, UDP};
    use crate::wire::test_util::hex;

    // 2001:db8::1 -> 2001:db8::64, hop-by-hop (8 bytes, PadN) then fragment
    // header (first fragment, more follow, id 0xdeadbeef) then 8 bytes of UDP.
    fn packet() -> Vec<u8> {
        hex("6 12 34567 0018 00 40
             20010db8000000000000000000000001
             20010db8000000000000000000000064
             2c 00 0104 00000000
             11 00 0001 deadbeef
             d431 0035 0008 0000")
    }

    #[test]
    fn reads_every_field() {
        let bytes = packet();
        let ip = Ipv6Packet::new_checked(&bytes[..]).unwrap();
        assert_eq!(ip.version(), 6);
        assert_eq!(ip.traffic_class(), 0x12);
        assert_eq!(ip.flow_label(), 0x34567);
        assert_eq!(ip.payload_len(), 24);
        assert_eq!(ip.next_header(), HOP_BY_HOP);
        assert_eq!(ip.hop_limit(), 64);
        assert_eq!(ip.src(), "2001:db8::1".parse::<Ipv6Addr>().unwrap());
        assert_eq!(ip.dst(), "2001:db8::64".parse::<Ipv6Addr>().unwrap());
        assert_eq!(ip.payload().len(), 24);
        let hbh = Ipv6ExtensionHeader::new_checked(ip.payload(), HOP_BY_HOP).unwrap();
        assert_eq!(hbh.next_header(), FRAGMENT);
        assert_eq!(hbh.header_len(), 8);
        assert_eq!(hbh.data(), &[1, 4, 0, 0, 0, 0]);
        let frag = Ipv6FragmentHeader::new_checked(&ip.payload()[8..]).unwrap();
        assert_eq!(frag.next_header(), UDP);
        assert_eq!(frag.frag_offset(), 0);
        assert!(frag.more_frags());
        assert_eq!(frag.ident(), 0xdead_beef);
        let walk = walk_extension_headers(ip.next_header(), ip.payload()).unwrap();
        assert_eq!(walk.upper_layer, UDP);
        assert_eq!(walk.upper_layer_offset, 16);
        assert_eq!(walk.headers, 2);
        let fragment = walk.fragment.unwrap();
        assert_eq!(
            (
                fragment.ident,
                fragment.offset,
                fragment.more,
                fragment.data_offset
            ),
            (0xdead_beef, 0, true, 16)
        );
        assert!(fragment.is_possible(8));
        assert!(!fragment.is_possible(9));
        assert!(!fragment.is_atomic());
    }

    #[test]
    fn truncation_is_an_error() {
        let bytes = packet();
        for len in 0..bytes.len() {
            let err = Ipv6Packet::new_checked(&bytes[..len]).unwrap_err();
            assert_eq!(err, Malformed::TruncatedIpv6, "len {len}");
        }
        for len in 0..16 {
            let err = walk_extension_headers(HOP_BY_HOP, &bytes[40..40 + len]).unwrap_err();
            assert_eq!(err, Malformed::TruncatedExtensionHeader, "len {len}");
        }
    }

    #[test]
    fn bad_fields_are_errors() {
        let mut bad = packet();
        bad[0] = 0x40;
        assert_eq!(
            Ipv6Packet::new_checked(&bad[..]),
            Err(Malformed::BadIpv6Version)
        );
        let mut bad = packet();
        bad[5] = 0;
        assert_eq!(
            Ipv6Packet::new_checked(&bad[..]),
            Err(Malformed::BadIpv6PayloadLength)
        );
        bad[6] = NO_NEXT_HEADER;
        assert!(Ipv6Packet::new_checked(&bad[..]).is_ok());
    }

    #[test]
    fn chain_rules() {
        // Hop-by-hop after a destination options header.
        let data = hex("00 00 0000 00000000  06 00 0000 00000000");
        assert_eq!(
            walk_extension_headers(DESTINATION_OPTIONS, &data),
            Err(Malformed::BadExtensionHeader)
        );
        // Two fragment headers.
        let data = hex("2c 00 0001 00000001  06 00 0001 00000001");
        assert_eq!(
            walk_extension_headers(FRAGMENT, &data),
            Err(Malformed::BadFragment)
        );
        // Nine destination options headers.
        let mut data = Vec::new();
        for _ in 0..9 {
            data.extend_from_slice(&hex("3c 00 0000 00000000"));
        }
        assert_eq!(
            walk_extension_headers(DESTINATION_OPTIONS, &data),
            Err(Malformed::ExtensionChainTooLong)
        );
        // Eight are fine (the eighth names TCP).
        data.truncate(64);
        data[56] = TCP;
        let walk = walk_extension_headers(DESTINATION_OPTIONS, &data).unwrap();
        assert_eq!(
            (walk.upper_layer, walk.upper_layer_offset, walk.headers),
            (TCP, 64, 8)
        );
        // AH counts 4-byte units: len 4 means 24 bytes.
        let mut data = hex("06 04 0000 00000001 00000002");
        data.extend_from_slice(&[0; 12]);
        let walk = walk_extension_headers(AH, &data).unwrap();
        assert_eq!((walk.upper_layer, walk.upper_layer_offset), (TCP, 24));
        // A later fragment stops the walk at its data.
        let data = hex("3c 00 0009 00000007  3c 00");
        let walk = walk_extension_headers(FRAGMENT, &data).unwrap();
        assert_eq!(
            (walk.upper_layer, walk.upper_layer_offset),
            (DESTINATION_OPTIONS, 8)
        );
        let fragment = walk.fragment.unwrap();
        assert_eq!(
            (fragment.offset, fragment.more, fragment.ident),
            (8, true, 7)
        );
        // An atomic fragment.
        let data = hex("06 00 0000 00000007");
        assert!(walk_extension_headers(FRAGMENT, &data)
            .unwrap()
            .fragment
            .unwrap()
            .is_atomic());
    }

    #[test]
    fn setters_round_trip() {
        let mut bytes = [0u8; 64];
        let mut ip = Ipv6Packet::new_unchecked(&mut bytes[..]);
        ip.set_version_class_flow(0x12, 0x34567);
        ip.set_payload_len(24);
        ip.set_next_header(HOP_BY_HOP);
        ip.set_hop_limit(64);
        ip.set_src("2001:db8::1".parse().unwrap());
        ip.set_dst("2001:db8::64".parse().unwrap());
        let payload = ip.payload_mut();
        let mut hbh = Ipv6ExtensionHeader::new_unchecked(&mut payload[..8], HOP_BY_HOP);
        hbh.set_next_header(FRAGMENT);
        hbh.set_len_units(0);
        payload[2..4].copy_from_slice(&[1, 4]);
        let mut frag = Ipv6FragmentHeader::new_unchecked(&mut payload[8..16]);
        frag.set_next_header(UDP);
        frag.set_fragment(0, true);
        frag.set_ident(0xdead_beef);
        payload[16..].copy_from_slice(&hex("d431 0035 0008 0000"));
        assert_eq!(&bytes[..], &packet()[..]);
    }
}
