//! GRE header: version 0 (RFC 2784 with the key and sequence number of
//! RFC 2890) and version 1, the enhanced GRE of PPTP (RFC 2637), whose key
//! field holds a payload length and the peer's call ID.
//!
//! Refused as [`Malformed::BadGre`]: versions above 1, the routing bit
//! (RFC 1701 source routing, deprecated and never parsed here), and any
//! version 1 header that is not PPTP's (it must carry the key, no checksum,
//! and protocol 0x880B).

use super::{read_u16, read_u32, write_u16, write_u32, Malformed};

/// Length of the mandatory part of the header.
pub const MIN_HEADER_LEN: usize = 4;

/// Flag bits of the first 16-bit word.
pub mod flags {
    /// Checksum present.
    pub const CHECKSUM: u16 = 0x8000;
    /// Routing present (refused).
    pub const ROUTING: u16 = 0x4000;
    /// Key present (PPTP: payload length and call ID).
    pub const KEY: u16 = 0x2000;
    /// Sequence number present.
    pub const SEQUENCE: u16 = 0x1000;
    /// Strict source route (RFC 1701).
    pub const STRICT_ROUTE: u16 = 0x0800;
    /// Recursion control (RFC 1701).
    pub const RECURSION: u16 = 0x0700;
    /// Acknowledgment number present (version 1 only).
    pub const ACK: u16 = 0x0080;
    /// The version bits.
    pub const VERSION: u16 = 0x0007;
}

mod field {
    pub const FLAGS_VERSION: usize = 0;
    pub const PROTOCOL: usize = 2;
    pub const OPTIONAL: usize = 4;
}

/// A view of a GRE header and its payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GrePacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> GrePacket<T> {
    /// Wraps `buffer` without checks (see the module contract in [`crate::wire`]).
    pub const fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// Wraps `buffer` after checking the version and flags (see the module
    /// docs) and that every optional field the flags announce is present.
    pub fn new_checked(buffer: T) -> Result<Self, Malformed> {
        if buffer.as_ref().len() < MIN_HEADER_LEN {
            return Err(Malformed::TruncatedGre);
        }
        let packet = Self { buffer };
        let word = packet.flags_version();
        match packet.version() {
            0 => {
                if word & flags::ROUTING != 0 {
                    return Err(Malformed::BadGre);
                }
            }
            1 => {
                let refused =
                    flags::CHECKSUM | flags::ROUTING | flags::STRICT_ROUTE | flags::RECURSION;
                if word & refused != 0
                    || word & flags::KEY == 0
                    || packet.protocol() != super::ethertype::PPP
                {
                    return Err(Malformed::BadGre);
                }
            }
            _ => return Err(Malformed::BadGre),
        }
        if packet.buffer.as_ref().len() < packet.header_len() {
            return Err(Malformed::TruncatedGre);
        }
        Ok(packet)
    }

    /// The wrapped buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// The raw first word: flags and version.
    pub fn flags_version(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::FLAGS_VERSION)
    }

    /// Version (0 for GRE, 1 for PPTP's enhanced GRE).
    pub fn version(&self) -> u8 {
        (self.flags_version() & flags::VERSION) as u8
    }

    /// Protocol type of the payload (an EtherType; 0x880B for PPP).
    pub fn protocol(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::PROTOCOL)
    }

    fn has(&self, flag: u16) -> bool {
        self.flags_version() & flag != 0
    }

    fn key_at(&self) -> usize {
        let checksum = self.version() == 0 && self.has(flags::CHECKSUM | flags::ROUTING);
        field::OPTIONAL + if checksum { 4 } else { 0 }
    }

    fn seq_at(&self) -> usize {
        self.key_at() + if self.has(flags::KEY) { 4 } else { 0 }
    }

    fn ack_at(&self) -> usize {
        self.seq_at() + if self.has(flags::SEQUENCE) { 4 } else { 0 }
    }

    fn ack_present(&self) -> bool {
        self.version() == 1 && self.has(flags::ACK)
    }

    /// Header length in bytes, optional fields included.
    pub fn header_len(&self) -> usize {
        self.ack_at() + if self.ack_present() { 4 } else { 0 }
    }

    /// Checksum, when present (version 0).
    pub fn checksum(&self) -> Option<u16> {
        (self.version() == 0 && self.has(flags::CHECKSUM))
            .then(|| read_u16(self.buffer.as_ref(), field::OPTIONAL))
    }

    /// Key, when present (for version 1 this is payload length and call ID).
    pub fn key(&self) -> Option<u32> {
        self.has(flags::KEY)
            .then(|| read_u32(self.buffer.as_ref(), self.key_at()))
    }

    /// PPTP payload length (version 1 key, high half).
    pub fn payload_len(&self) -> Option<u16> {
        if self.version() != 1 {
            return None;
        }
        self.key().map(|key| (key >> 16) as u16)
    }

    /// PPTP call ID of the receiving peer (version 1 key, low half).
    pub fn call_id(&self) -> Option<u16> {
        if self.version() != 1 {
            return None;
        }
        self.key().map(|key| key as u16)
    }

    /// Sequence number, when present.
    pub fn seq(&self) -> Option<u32> {
        self.has(flags::SEQUENCE)
            .then(|| read_u32(self.buffer.as_ref(), self.seq_at()))
    }

    /// Acknowledgment number, when present (version 1).
    pub fn ack(&self) -> Option<u32> {
        self.ack_present()
            .then(|| read_u32(self.buffer.as_ref(), self.ack_at()))
    }

    /// Bytes after the header.
    pub fn payload(&self) -> &[u8] {
        self.buffer.as_ref().get(self.header_len()..).unwrap_or(&[])
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> GrePacket<T> {
    /// Sets the raw first word (flags and version). Set it first: it decides
    /// where the optional fields are.
    pub fn set_flags_version(&mut self, word: u16) {
        write_u16(self.buffer.as_mut(), field::FLAGS_VERSION, word);
    }

    /// Sets the protocol type.
    pub fn set_protocol(&mut self, protocol: u16) {
        write_u16(self.buffer.as_mut(), field::PROTOCOL, protocol);
    }

    /// Sets the checksum; does nothing unless the flags announce one.
    pub fn set_checksum(&mut self, checksum: u16) {
        if self.checksum().is_some() {
            write_u16(self.buffer.as_mut(), field::OPTIONAL, checksum);
        }
    }

    /// Sets the key; does nothing unless the flags announce one.
    pub fn set_key(&mut self, key: u32) {
        if self.has(flags::KEY) {
            let at = self.key_at();
            write_u32(self.buffer.as_mut(), at, key);
        }
    }

    /// Sets PPTP's payload length and call ID (the version 1 key).
    pub fn set_pptp_key(&mut self, payload_len: u16, call_id: u16) {
        self.set_key((u32::from(payload_len) << 16) | u32::from(call_id));
    }

    /// Sets the sequence number; does nothing unless the flags announce one.
    pub fn set_seq(&mut self, seq: u32) {
        if self.has(flags::SEQUENCE) {
            let at = self.seq_at();
            write_u32(self.buffer.as_mut(), at, seq);
        }
    }

    /// Sets the acknowledgment number; does nothing unless the flags announce one.
    pub fn set_ack(&mut self, ack: u32) {
        if self.ack_present() {
            let at = self.ack_at();
            write_u32(self.buffer.as_mut(), at, ack);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::test_util::hex;

    // PPTP data: K, S and A set, version 1, PPP, payload length 2,
    // call ID 0x4001, seq 7, ack 5, then two bytes of PPP.
    const PPTP: &str = "3081 880b 0002 4001 00000007 00000005 ff03";
    // Plain GRE with checksum and key, carrying IPv4.
    const KEYED: &str = "a000 0800 1234 0000 0000002a 45";

    #[test]
    fn reads_pptp_fields() {
        let bytes = hex(PPTP);
        let gre = GrePacket::new_checked(&bytes[..]).unwrap();
        assert_eq!(gre.version(), 1);
        assert_eq!(gre.protocol(), 0x880b);
        assert_eq!(gre.header_len(), 16);
        assert_eq!(gre.checksum(), None);
        assert_eq!(gre.key(), Some(0x0002_4001));
        assert_eq!(gre.payload_len(), Some(2));
        assert_eq!(gre.call_id(), Some(0x4001));
        assert_eq!(gre.seq(), Some(7));
        assert_eq!(gre.ack(), Some(5));
        assert_eq!(gre.payload(), &[0xff, 0x03]);
    }

    #[test]
    fn reads_keyed_gre_fields() {
        let bytes = hex(KEYED);
        let gre = GrePacket::new_checked(&bytes[..]).unwrap();
        assert_eq!(gre.version(), 0);
        assert_eq!(gre.protocol(), 0x0800);
        assert_eq!(gre.header_len(), 12);
        assert_eq!(gre.checksum(), Some(0x1234));
        assert_eq!(gre.key(), Some(42));
        assert_eq!((gre.call_id(), gre.payload_len()), (None, None));
        assert_eq!((gre.seq(), gre.ack()), (None, None));
        assert_eq!(gre.payload(), &[0x45]);
    }

    #[test]
    fn truncation_and_bad_headers_are_errors() {
        for vector in [PPTP, KEYED] {
            let bytes = hex(vector);
            let header_len = GrePacket::new_checked(&bytes[..]).unwrap().header_len();
            for len in 0..header_len {
                assert_eq!(
                    GrePacket::new_checked(&bytes[..len]),
                    Err(Malformed::TruncatedGre),
                    "{vector} {len}"
                );
            }
        }
        let bad_vectors = [
            "4000 0800 00000000",          // routing present
            "0002 0800",                   // version 2
            "2001 0800 00000000",          // version 1 not carrying PPP
            "1081 880b 00000000 00000000", // version 1 without the key
            "a001 880b 00000000 00000000", // version 1 with a checksum
        ];
        for vector in bad_vectors {
            assert_eq!(
                GrePacket::new_checked(&hex(vector)[..]),
                Err(Malformed::BadGre),
                "{vector}"
            );
        }
    }

    #[test]
    fn setters_round_trip() {
        let mut bytes = [0u8; 18];
        let mut gre = GrePacket::new_unchecked(&mut bytes[..]);
        gre.set_flags_version(0x3081);
        gre.set_protocol(0x880b);
        gre.set_checksum(0xffff); // absent: must not write
        gre.set_pptp_key(2, 0x4001);
        gre.set_seq(7);
        gre.set_ack(5);
        bytes[16..].copy_from_slice(&[0xff, 0x03]);
        assert_eq!(&bytes[..], &hex(PPTP)[..]);

        let mut bytes = [0u8; 13];
        let mut gre = GrePacket::new_unchecked(&mut bytes[..]);
        gre.set_flags_version(0xa000);
        gre.set_protocol(0x0800);
        gre.set_checksum(0x1234);
        gre.set_key(42);
        gre.set_seq(9); // absent: must not write
        gre.set_ack(9); // absent: must not write
        bytes[12] = 0x45;
        assert_eq!(&bytes[..], &hex(KEYED)[..]);
    }
}
