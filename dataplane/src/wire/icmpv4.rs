//! ICMP for IPv4 (RFC 792): type, code, checksum, the 4-byte rest of
//! header, and for error messages the quoted original datagram (its IP
//! header and at least its first 8 bytes), which tells whose flow the error
//! is about.

use super::{ipv4_checksum, read_u16, read_u32, write_u16, write_u32, Malformed};

/// Length of the ICMP header (type, code, checksum, rest of header).
pub const HEADER_LEN: usize = 8;

/// Message types shoal names.
pub mod types {
    /// Echo reply.
    pub const ECHO_REPLY: u8 = 0;
    /// Destination unreachable (code 4: fragmentation needed, for PMTU discovery).
    pub const DEST_UNREACHABLE: u8 = 3;
    /// Source quench (deprecated, still an error carrying a quote).
    pub const SOURCE_QUENCH: u8 = 4;
    /// Redirect.
    pub const REDIRECT: u8 = 5;
    /// Echo request.
    pub const ECHO_REQUEST: u8 = 8;
    /// Time exceeded.
    pub const TIME_EXCEEDED: u8 = 11;
    /// Parameter problem.
    pub const PARAMETER_PROBLEM: u8 = 12;

    /// True for the error messages that quote the original datagram.
    pub const fn is_error(icmp_type: u8) -> bool {
        matches!(
            icmp_type,
            DEST_UNREACHABLE | SOURCE_QUENCH | REDIRECT | TIME_EXCEEDED | PARAMETER_PROBLEM
        )
    }
}

mod field {
    pub const TYPE: usize = 0;
    pub const CODE: usize = 1;
    pub const CHECKSUM: usize = 2;
    pub const REST: usize = 4;
    pub const DATA: usize = 8;
}

/// A view of an ICMPv4 message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Icmpv4Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Icmpv4Packet<T> {
    /// Wraps `buffer` without checks (see the module contract in [`crate::wire`]).
    pub const fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// Wraps `buffer` after checking it holds the 8-byte header.
    pub fn new_checked(buffer: T) -> Result<Self, Malformed> {
        if buffer.as_ref().len() < HEADER_LEN {
            return Err(Malformed::TruncatedIcmp);
        }
        Ok(Self { buffer })
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

    /// The 4-byte rest of header (echo identifier and sequence, next-hop
    /// MTU for "fragmentation needed", gateway for redirects...).
    pub fn rest_of_header(&self) -> u32 {
        read_u32(self.buffer.as_ref(), field::REST)
    }

    /// Echo identifier (meaningful for echo request and reply).
    pub fn echo_ident(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::REST)
    }

    /// Echo sequence number (meaningful for echo request and reply).
    pub fn echo_seq(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::REST + 2)
    }

    /// Next-hop MTU of a "fragmentation needed" message (RFC 1191).
    pub fn next_hop_mtu(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::REST + 2)
    }

    /// Bytes after the header.
    pub fn data(&self) -> &[u8] {
        self.buffer.as_ref().get(field::DATA..).unwrap_or(&[])
    }

    /// The quoted original datagram, for error types 3, 4, 5, 11 and 12.
    /// It may be cut short; read it with `Ipv4Packet::new_checked_header`.
    pub fn original_datagram(&self) -> Option<&[u8]> {
        types::is_error(self.msg_type()).then(|| self.data())
    }

    /// True when the checksum over the whole message is right.
    pub fn verify_checksum(&self) -> bool {
        ipv4_checksum(self.buffer.as_ref()) == 0
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Icmpv4Packet<T> {
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

    /// Sets the rest of header.
    pub fn set_rest_of_header(&mut self, rest: u32) {
        write_u32(self.buffer.as_mut(), field::REST, rest);
    }

    /// Bytes after the header, writable.
    pub fn data_mut(&mut self) -> &mut [u8] {
        self.buffer
            .as_mut()
            .get_mut(field::DATA..)
            .unwrap_or(&mut [])
    }

    /// Computes the checksum over the whole buffer and writes it.
    pub fn fill_checksum(&mut self) {
        self.set_checksum(0);
        let checksum = ipv4_checksum(self.buffer.as_ref());
        self.set_checksum(checksum);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::test_util::hex;

    // Fragmentation needed, next-hop MTU 1400, quoting a TCP segment's
    // IP header and first 8 bytes.
    const FRAG_NEEDED: &str = "03 04 0000 00000578
        4500 05dc 0001 4000 3f06 0000 0a000064 c0a80001 0050 c000 00000001";

    #[test]
    fn reads_every_field() {
        let mut bytes = hex(FRAG_NEEDED);
        Icmpv4Packet::new_unchecked(&mut bytes[..]).fill_checksum();
        let icmp = Icmpv4Packet::new_checked(&bytes[..]).unwrap();
        assert_eq!((icmp.msg_type(), icmp.code()), (types::DEST_UNREACHABLE, 4));
        assert_eq!(icmp.rest_of_header(), 1400);
        assert_eq!(icmp.next_hop_mtu(), 1400);
        assert_eq!((icmp.echo_ident(), icmp.echo_seq()), (0, 1400));
        assert_eq!(icmp.original_datagram().unwrap().len(), 28);
        assert_eq!(icmp.data().len(), 28);
        assert!(icmp.verify_checksum());
        assert_ne!(icmp.checksum(), 0);
    }

    #[test]
    fn only_errors_quote() {
        let bytes = hex("08 00 0000 00010002 6869");
        let icmp = Icmpv4Packet::new_checked(&bytes[..]).unwrap();
        assert_eq!((icmp.echo_ident(), icmp.echo_seq()), (1, 2));
        assert_eq!(icmp.original_datagram(), None);
        for t in [3, 4, 5, 11, 12] {
            assert!(types::is_error(t));
        }
        assert!(!types::is_error(0));
    }

    #[test]
    fn truncation_is_an_error() {
        let bytes = hex(FRAG_NEEDED);
        for len in 0..HEADER_LEN {
            assert_eq!(
                Icmpv4Packet::new_checked(&bytes[..len]),
                Err(Malformed::TruncatedIcmp)
            );
        }
    }

    #[test]
    fn setters_round_trip() {
        let mut bytes = [0u8; 36];
        let mut icmp = Icmpv4Packet::new_unchecked(&mut bytes[..]);
        icmp.set_msg_type(3);
        icmp.set_code(4);
        icmp.set_rest_of_header(1400);
        icmp.data_mut().copy_from_slice(&hex(FRAG_NEEDED)[8..]);
        assert_eq!(&bytes[..], &hex(FRAG_NEEDED)[..]);
        let mut icmp = Icmpv4Packet::new_unchecked(&mut bytes[..]);
        icmp.set_checksum(0xbeef);
        assert_eq!(icmp.checksum(), 0xbeef);
    }
}
