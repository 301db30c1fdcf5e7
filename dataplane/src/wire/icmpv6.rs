//! ICMP for IPv6 (RFC 4443) and the neighbour discovery messages shoal
//! answers for its VIPs (RFC 4861 neighbour solicitation and advertisement).
//!
//! Error messages (types 1 to 4) quote as much of the original packet as
//! fits; neighbour solicitation (135) and advertisement (136) carry a target
//! address, which [`Icmpv6Packet::new_checked`] guarantees is present.

use std::net::Ipv6Addr;

use super::ipv4::{checksum_accumulate, checksum_fold};
use super::{read_ipv6, read_u16, read_u32, write_u16, write_u32, Malformed};

/// Length of the ICMPv6 header shoal requires (type, code, checksum and
/// the 4-byte message body start every message has).
pub const HEADER_LEN: usize = 8;

/// Length of a neighbour solicitation or advertisement without options.
pub const ND_LEN: usize = 24;

/// Message types shoal names.
pub mod types {
    /// Destination unreachable.
    pub const DEST_UNREACHABLE: u8 = 1;
    /// Packet too big (PMTU discovery).
    pub const PACKET_TOO_BIG: u8 = 2;
    /// Time exceeded.
    pub const TIME_EXCEEDED: u8 = 3;
    /// Parameter problem.
    pub const PARAMETER_PROBLEM: u8 = 4;
    /// Echo request.
    pub const ECHO_REQUEST: u8 = 128;
    /// Echo reply.
    pub const ECHO_REPLY: u8 = 129;
    /// Neighbour solicitation.
    pub const NEIGHBOR_SOLICIT: u8 = 135;
    /// Neighbour advertisement.
    pub const NEIGHBOR_ADVERT: u8 = 136;

    /// True for the error messages that quote the original packet.
    pub const fn is_error(icmp_type: u8) -> bool {
        matches!(icmp_type, DEST_UNREACHABLE..=PARAMETER_PROBLEM)
    }

    /// True for neighbour solicitation and advertisement.
    pub const fn is_neighbor_discovery(icmp_type: u8) -> bool {
        matches!(icmp_type, NEIGHBOR_SOLICIT | NEIGHBOR_ADVERT)
    }
}

/// Neighbour discovery option types carrying a link-layer address.
pub mod nd_option {
    /// Source link-layer address (in solicitations).
    pub const SOURCE_LINK_ADDR: u8 = 1;
    /// Target link-layer address (in advertisements).
    pub const TARGET_LINK_ADDR: u8 = 2;
}

/// Neighbour advertisement flags (first byte of the body).
pub mod na_flags {
    /// Sender is a router.
    pub const ROUTER: u8 = 0x80;
    /// Sent in response to a solicitation.
    pub const SOLICITED: u8 = 0x40;
    /// Override an existing cache entry.
    pub const OVERRIDE: u8 = 0x20;
}

mod field {
    pub const TYPE: usize = 0;
    pub const CODE: usize = 1;
    pub const CHECKSUM: usize = 2;
    pub const BODY: usize = 4;
    pub const DATA: usize = 8;
    pub const TARGET: usize = 8;
    pub const ND_OPTIONS: usize = 24;
}

/// A view of an ICMPv6 message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Icmpv6Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Icmpv6Packet<T> {
    /// Wraps `buffer` without checks (see the module contract in [`crate::wire`]).
    pub const fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// Wraps `buffer` after checking it holds the 8-byte header, and for
    /// neighbour solicitation and advertisement the 16-byte target.
    pub fn new_checked(buffer: T) -> Result<Self, Malformed> {
        let len = buffer.as_ref().len();
        if len < HEADER_LEN {
            return Err(Malformed::TruncatedIcmp);
        }
        let packet = Self { buffer };
        if types::is_neighbor_discovery(packet.msg_type()) && len < ND_LEN {
            return Err(Malformed::TruncatedIcmp);
        }
        Ok(packet)
    }

    /// The wrapped buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// Message type.
    pub fn msg_type(&self) -> u8 {
        self.buffer.as_ref()[field::TYPE]
    }

    /// Message code.
    pub fn code(&self) -> u8 {
        self.buffer.as_ref()[field::CODE]
    }

    /// Checksum field.
    pub fn checksum(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::CHECKSUM)
    }

    /// The first four body bytes (MTU of "packet too big", pointer of
    /// "parameter problem", echo identifier and sequence, NA flags...).
    pub fn body_word(&self) -> u32 {
        read_u32(self.buffer.as_ref(), field::BODY)
    }

    /// Bytes after the first eight.
    pub fn data(&self) -> &[u8] {
        self.buffer.as_ref().get(field::DATA..).unwrap_or(&[])
    }

    /// The quoted original packet, for error types 1 to 4. It may be cut
    /// short; read it with `Ipv6Packet::new_checked_header`.
    pub fn original_packet(&self) -> Option<&[u8]> {
        types::is_error(self.msg_type()).then(|| self.data())
    }

    /// Target address of a neighbour solicitation or advertisement.
    pub fn target(&self) -> Option<Ipv6Addr> {
        let b = self.buffer.as_ref();
        (types::is_neighbor_discovery(self.msg_type()) && b.len() >= ND_LEN)
            .then(|| read_ipv6(b, field::TARGET))
    }

    /// Neighbour advertisement flags (see [`na_flags`]); meaningful for type 136.
    pub fn advert_flags(&self) -> u8 {
        self.buffer.as_ref()[field::BODY]
    }

    /// Option bytes of a neighbour solicitation or advertisement.
    pub fn nd_options(&self) -> &[u8] {
        if !types::is_neighbor_discovery(self.msg_type()) {
            return &[];
        }
        self.buffer.as_ref().get(field::ND_OPTIONS..).unwrap_or(&[])
    }

    /// The first link-layer address option of `kind` (see [`nd_option`])
    /// with an Ethernet address. Bounded: every option is at least 8
    /// bytes; a zero length ends the walk (RFC 4861 says drop, the caller
    /// then simply finds no address).
    pub fn link_layer_option(&self, kind: u8) -> Option<[u8; 6]> {
        let mut options = self.nd_options();
        while options.len() >= 8 {
            let len = usize::from(options[1]) * 8;
            if len == 0 || len > options.len() {
                return None;
            }
            if options[0] == kind && len == 8 {
                return Some(super::read_mac(options, 2));
            }
            options = &options[len..];
        }
        None
    }

    /// True when the checksum over the pseudo header (RFC 8200 §8.1) and
    /// the whole message is right.
    pub fn verify_checksum(&self, src: Ipv6Addr, dst: Ipv6Addr) -> bool {
        checksum_fold(pseudo_header_sum(src, dst, self.buffer.as_ref())) == 0
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Icmpv6Packet<T> {
    /// Sets the message type.
    pub fn set_msg_type(&mut self, icmp_type: u8) {
        self.buffer.as_mut()[field::TYPE] = icmp_type;
    }

    /// Sets the message code.
    pub fn set_code(&mut self, code: u8) {
        self.buffer.as_mut()[field::CODE] = code;
    }

    /// Sets the checksum field.
    pub fn set_checksum(&mut self, checksum: u16) {
        write_u16(self.buffer.as_mut(), field::CHECKSUM, checksum);
    }

    /// Sets the first four body bytes.
    pub fn set_body_word(&mut self, word: u32) {
        write_u32(self.buffer.as_mut(), field::BODY, word);
    }

    /// Sets the neighbour discovery target address.
    ///
    /// # Panics
    /// If the buffer is shorter than 24 bytes (unchecked views only).
    pub fn set_target(&mut self, target: Ipv6Addr) {
        self.buffer.as_mut()[field::TARGET..field::TARGET + 16].copy_from_slice(&target.octets());
    }

    /// Bytes after the first eight, writable.
    pub fn data_mut(&mut self) -> &mut [u8] {
        self.buffer
            .as_mut()
            .get_mut(field::DATA..)
            .unwrap_or(&mut [])
    }

    /// Computes the checksum over the pseudo header and the whole buffer
    /// and writes it.
    pub fn fill_checksum(&mut self, src: Ipv6Addr, dst: Ipv6Addr) {
        self.set_checksum(0);
        let checksum = checksum_fold(pseudo_header_sum(src, dst, self.buffer.as_ref()));
        self.set_checksum(checksum);
    }
}

fn pseudo_header_sum(src: Ipv6Addr, dst: Ipv6Addr, message: &[u8]) -> u64 {
    let mut sum = checksum_accumulate(0, &src.octets());
    sum = checksum_accumulate(sum, &dst.octets());
    sum = checksum_accumulate(sum, &(message.len() as u32).to_be_bytes());
    sum = checksum_accumulate(sum, &[0, 0, 0, super::ip_proto::ICMPV6]);
    checksum_accumulate(sum, message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::test_util::hex;

    // Neighbour solicitation for 2001:db8::64 with a source link-layer
    // address option.
    const NS: &str = "87 00 0000 00000000 20010db8000000000000000000000064 0101 020000000001";

    fn addrs() -> (Ipv6Addr, Ipv6Addr) {
        (
            "fe80::1".parse().unwrap(),
            "ff02::1:ff00:64".parse().unwrap(),
        )
    }

    #[test]
    fn reads_neighbor_solicitation() {
        let (src, dst) = addrs();
        let mut bytes = hex(NS);
        Icmpv6Packet::new_unchecked(&mut bytes[..]).fill_checksum(src, dst);
        let icmp = Icmpv6Packet::new_checked(&bytes[..]).unwrap();
        assert_eq!((icmp.msg_type(), icmp.code()), (types::NEIGHBOR_SOLICIT, 0));
        assert_eq!(icmp.body_word(), 0);
        assert_eq!(icmp.target(), Some("2001:db8::64".parse().unwrap()));
        assert_eq!(icmp.nd_options().len(), 8);
        assert_eq!(
            icmp.link_layer_option(nd_option::SOURCE_LINK_ADDR),
            Some([2, 0, 0, 0, 0, 1])
        );
        assert_eq!(icmp.link_layer_option(nd_option::TARGET_LINK_ADDR), None);
        assert_eq!(icmp.original_packet(), None);
        assert!(icmp.verify_checksum(src, dst));
        assert!(!icmp.verify_checksum(src, "fe80::2".parse().unwrap()));
        assert_ne!(icmp.checksum(), 0);
    }

    #[test]
    fn errors_quote_and_others_do_not() {
        let bytes = hex("02 00 0000 000005dc 6000000000000000");
        let icmp = Icmpv6Packet::new_checked(&bytes[..]).unwrap();
        assert_eq!(icmp.body_word(), 1500);
        assert_eq!(icmp.original_packet().unwrap().len(), 8);
        assert_eq!(icmp.target(), None);
        assert_eq!(icmp.nd_options(), &[] as &[u8]);
        let echo = hex("80 00 0000 00010002");
        assert_eq!(
            Icmpv6Packet::new_checked(&echo[..])
                .unwrap()
                .original_packet(),
            None
        );
    }

    #[test]
    fn truncation_is_an_error() {
        let bytes = hex(NS);
        for len in 0..ND_LEN {
            assert_eq!(
                Icmpv6Packet::new_checked(&bytes[..len]),
                Err(Malformed::TruncatedIcmp),
                "len {len}"
            );
        }
        let echo = hex("80 00 0000 00010002");
        assert!(Icmpv6Packet::new_checked(&echo[..]).is_ok());
        // A zero-length option ends the walk without an address.
        let mut bad = bytes.clone();
        bad[25] = 0;
        assert_eq!(
            Icmpv6Packet::new_checked(&bad[..])
                .unwrap()
                .link_layer_option(1),
            None
        );
    }

    #[test]
    fn setters_round_trip() {
        let mut bytes = [0u8; 32];
        let mut icmp = Icmpv6Packet::new_unchecked(&mut bytes[..]);
        icmp.set_msg_type(types::NEIGHBOR_SOLICIT);
        icmp.set_code(0);
        icmp.set_body_word(0);
        icmp.set_target("2001:db8::64".parse().unwrap());
        icmp.data_mut()[16..].copy_from_slice(&hex("0101 020000000001"));
        icmp.set_checksum(0);
        assert_eq!(&bytes[..], &hex(NS)[..]);
        let mut icmp = Icmpv6Packet::new_unchecked(&mut bytes[..]);
        icmp.set_msg_type(types::NEIGHBOR_ADVERT);
        icmp.set_body_word(u32::from(na_flags::SOLICITED | na_flags::OVERRIDE) << 24);
        assert_eq!(icmp.advert_flags(), 0x60);
    }
}
