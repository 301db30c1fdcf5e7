//! IPv4 header (RFC 791) with options, and the Internet checksum (RFC 1071).
//!
//! [`Ipv4Packet::new_checked`] trusts the total length field: bytes after
//! it (Ethernet padding) are ignored by [`Ipv4Packet::payload`], and a buffer
//! shorter than it is [`Malformed::TruncatedIpv4`].

use std::net::Ipv4Addr;

use super::{read_ipv4, read_u16, write_u16, Malformed};

/// Length of the IPv4 header without options.
pub const MIN_HEADER_LEN: usize = 20;

/// Largest offset + length a fragment may reach (the datagram size limit).
pub const MAX_DATAGRAM_LEN: usize = 65_535;

mod field {
    pub const VER_IHL: usize = 0;
    pub const DSCP_ECN: usize = 1;
    pub const TOTAL_LEN: usize = 2;
    pub const IDENT: usize = 4;
    pub const FLAGS_FRAG: usize = 6;
    pub const TTL: usize = 8;
    pub const PROTOCOL: usize = 9;
    pub const CHECKSUM: usize = 10;
    pub const SRC: usize = 12;
    pub const DST: usize = 16;
    pub const OPTIONS: usize = 20;
}

const FLAG_DF: u16 = 0x4000;
const FLAG_MF: u16 = 0x2000;
const FRAG_OFFSET_MASK: u16 = 0x1fff;

/// The Internet checksum of `data`: the ones' complement of the ones'
/// complement sum of its 16-bit big-endian words (an odd last byte is padded
/// with zero). Over a header whose checksum field is filled in, the result is
/// 0 when the checksum is right.
pub fn ipv4_checksum(data: &[u8]) -> u16 {
    checksum_fold(checksum_accumulate(0, data))
}

/// Adds `data`'s 16-bit big-endian words to a running ones' complement sum
/// (an odd last byte is padded with zero). Pieces other than the last must
/// have even length.
pub(crate) fn checksum_accumulate(mut sum: u64, data: &[u8]) -> u64 {
    let mut words = data.chunks_exact(2);
    for word in &mut words {
        sum += u64::from(u16::from_be_bytes([word[0], word[1]]));
    }
    if let [last] = words.remainder() {
        sum += u64::from(u16::from_be_bytes([*last, 0]));
    }
    sum
}

/// The ones' complement sum of the IPv4 pseudo header (RFC 793 §3.1, RFC
/// 768) for a transport `message` of protocol `proto` between `src` and
/// `dst`, and of the message itself. Folding it gives the transport
/// checksum (0 over a message whose checksum field is right).
pub(crate) fn pseudo_header_sum(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, message: &[u8]) -> u64 {
    let mut sum = checksum_accumulate(0, &src.octets());
    sum = checksum_accumulate(sum, &dst.octets());
    sum = checksum_accumulate(sum, &[0, proto]);
    sum = checksum_accumulate(sum, &(message.len() as u16).to_be_bytes());
    checksum_accumulate(sum, message)
}

/// Folds a running sum to 16 bits and complements it.
pub(crate) fn checksum_fold(mut sum: u64) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A view of an IPv4 datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Ipv4Packet<T> {
    /// Wraps `buffer` without checks (see the module contract in [`crate::wire`]).
    pub const fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// Wraps a received datagram after checking: version 4, IHL at least 5,
    /// header and options present and well formed, total length at least
    /// the header and at most the buffer, and a possible fragment (offset
    /// plus length within 65535; a non-final fragment a multiple of 8 long).
    pub fn new_checked(buffer: T) -> Result<Self, Malformed> {
        let packet = Self::new_checked_header(buffer)?;
        let len = packet.buffer.as_ref().len();
        let header_len = packet.header_len();
        let total_len = usize::from(packet.total_len());
        if total_len < header_len {
            return Err(Malformed::BadIpv4TotalLength);
        }
        if len < total_len {
            return Err(Malformed::TruncatedIpv4);
        }
        let payload_len = total_len - header_len;
        if packet.more_frags() || packet.frag_offset() != 0 {
            if usize::from(packet.frag_offset()) + payload_len > MAX_DATAGRAM_LEN {
                return Err(Malformed::BadFragment);
            }
            if packet.more_frags() && payload_len & 7 != 0 {
                return Err(Malformed::BadFragment);
            }
        }
        Ok(packet)
    }

    /// Wraps a header whose datagram may be cut short, as quoted inside an
    /// ICMP error: checks only the version, IHL, and that the header with
    /// its well-formed options is present. [`Self::payload`] is then
    /// whatever follows the header, up to the total length.
    pub fn new_checked_header(buffer: T) -> Result<Self, Malformed> {
        let b = buffer.as_ref();
        if b.len() < MIN_HEADER_LEN {
            return Err(Malformed::TruncatedIpv4);
        }
        let packet = Self { buffer };
        if packet.version() != 4 {
            return Err(Malformed::BadIpv4Version);
        }
        let header_len = packet.header_len();
        if header_len < MIN_HEADER_LEN {
            return Err(Malformed::BadIpv4HeaderLength);
        }
        if packet.buffer.as_ref().len() < header_len {
            return Err(Malformed::TruncatedIpv4);
        }
        if !options_well_formed(packet.options()) {
            return Err(Malformed::BadIpv4Options);
        }
        Ok(packet)
    }

    /// The wrapped buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// Version field (4 for a checked view).
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::VER_IHL] >> 4
    }

    /// Header length in bytes (IHL × 4), options included.
    pub fn header_len(&self) -> usize {
        usize::from(self.buffer.as_ref()[field::VER_IHL] & 0x0f) * 4
    }

    /// Differentiated services code point.
    pub fn dscp(&self) -> u8 {
        self.buffer.as_ref()[field::DSCP_ECN] >> 2
    }

    /// Explicit congestion notification bits.
    pub fn ecn(&self) -> u8 {
        self.buffer.as_ref()[field::DSCP_ECN] & 0x03
    }

    /// Total length of the datagram, header included.
    pub fn total_len(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::TOTAL_LEN)
    }

    /// Identification (groups the fragments of one datagram).
    pub fn ident(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::IDENT)
    }

    /// Don't-fragment flag.
    pub fn dont_frag(&self) -> bool {
        read_u16(self.buffer.as_ref(), field::FLAGS_FRAG) & FLAG_DF != 0
    }

    /// More-fragments flag.
    pub fn more_frags(&self) -> bool {
        read_u16(self.buffer.as_ref(), field::FLAGS_FRAG) & FLAG_MF != 0
    }

    /// Fragment offset in bytes (the field counts 8-byte units).
    pub fn frag_offset(&self) -> u16 {
        (read_u16(self.buffer.as_ref(), field::FLAGS_FRAG) & FRAG_OFFSET_MASK) << 3
    }

    /// Time to live.
    pub fn ttl(&self) -> u8 {
        self.buffer.as_ref()[field::TTL]
    }

    /// Upper-layer protocol number.
    pub fn protocol(&self) -> u8 {
        self.buffer.as_ref()[field::PROTOCOL]
    }

    /// Header checksum field.
    pub fn checksum(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::CHECKSUM)
    }

    /// Source address.
    pub fn src(&self) -> Ipv4Addr {
        read_ipv4(self.buffer.as_ref(), field::SRC)
    }

    /// Destination address.
    pub fn dst(&self) -> Ipv4Addr {
        read_ipv4(self.buffer.as_ref(), field::DST)
    }

    /// Option bytes (between the fixed header and the header length).
    pub fn options(&self) -> &[u8] {
        let b = self.buffer.as_ref();
        let end = self
            .header_len()
            .clamp(field::OPTIONS, b.len().max(field::OPTIONS));
        b.get(field::OPTIONS..end).unwrap_or(&[])
    }

    /// Bytes after the header up to the total length, never beyond the buffer.
    pub fn payload(&self) -> &[u8] {
        let b = self.buffer.as_ref();
        let start = self.header_len().min(b.len());
        let end = usize::from(self.total_len()).clamp(start, b.len());
        &b[start..end]
    }

    /// True when the header checksum is right. Not called on the frame
    /// path (see the module contract in [`crate::wire`]).
    pub fn verify_checksum(&self) -> bool {
        let b = self.buffer.as_ref();
        match b.get(..self.header_len()) {
            Some(header) => ipv4_checksum(header) == 0,
            None => false,
        }
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv4Packet<T> {
    /// Sets version 4 and the header length in bytes (rounded down to a
    /// multiple of 4, at most 60).
    pub fn set_version_and_header_len(&mut self, header_len: usize) {
        let ihl = (header_len.min(60) / 4) as u8;
        self.buffer.as_mut()[field::VER_IHL] = 0x40 | ihl;
    }

    /// Sets DSCP and ECN.
    pub fn set_dscp_ecn(&mut self, dscp: u8, ecn: u8) {
        self.buffer.as_mut()[field::DSCP_ECN] = (dscp << 2) | (ecn & 3);
    }

    /// Sets the total length.
    pub fn set_total_len(&mut self, len: u16) {
        write_u16(self.buffer.as_mut(), field::TOTAL_LEN, len);
    }

    /// Sets the identification.
    pub fn set_ident(&mut self, ident: u16) {
        write_u16(self.buffer.as_mut(), field::IDENT, ident);
    }

    /// Sets the flags and the fragment offset in bytes (rounded down to 8).
    pub fn set_fragment(&mut self, dont_frag: bool, more_frags: bool, offset: u16) {
        let mut value = (offset >> 3) & FRAG_OFFSET_MASK;
        if dont_frag {
            value |= FLAG_DF;
        }
        if more_frags {
            value |= FLAG_MF;
        }
        write_u16(self.buffer.as_mut(), field::FLAGS_FRAG, value);
    }

    /// Sets the time to live.
    pub fn set_ttl(&mut self, ttl: u8) {
        self.buffer.as_mut()[field::TTL] = ttl;
    }

    /// Sets the upper-layer protocol.
    pub fn set_protocol(&mut self, protocol: u8) {
        self.buffer.as_mut()[field::PROTOCOL] = protocol;
    }

    /// Sets the checksum field as given (see [`Self::fill_checksum`]).
    pub fn set_checksum(&mut self, checksum: u16) {
        write_u16(self.buffer.as_mut(), field::CHECKSUM, checksum);
    }

    /// Sets the source address.
    pub fn set_src(&mut self, ip: Ipv4Addr) {
        self.buffer.as_mut()[field::SRC..field::SRC + 4].copy_from_slice(&ip.octets());
    }

    /// Sets the destination address.
    pub fn set_dst(&mut self, ip: Ipv4Addr) {
        self.buffer.as_mut()[field::DST..field::DST + 4].copy_from_slice(&ip.octets());
    }

    /// Computes the header checksum over the current header (options
    /// included) and writes it.
    ///
    /// # Panics
    /// If the buffer is shorter than the header length (unchecked views only).
    pub fn fill_checksum(&mut self) {
        self.set_checksum(0);
        let header_len = self.header_len();
        let checksum = ipv4_checksum(&self.buffer.as_ref()[..header_len]);
        self.set_checksum(checksum);
    }

    /// Bytes after the header up to the total length, writable.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let len = self.buffer.as_ref().len();
        let start = self.header_len().min(len);
        let end = usize::from(self.total_len()).clamp(start, len);
        &mut self.buffer.as_mut()[start..end]
    }
}

/// Walks the option list: end-of-list (0) stops, no-op (1) is one byte,
/// every other option has a length byte of at least 2 that stays inside the
/// header. Bounded by the 40 option bytes.
fn options_well_formed(options: &[u8]) -> bool {
    let mut at = 0;
    while at < options.len() {
        match options[at] {
            0 => return true,
            1 => at += 1,
            _ => {
                let Some(&len) = options.get(at + 1) else {
                    return false;
                };
                let len = usize::from(len);
                if len < 2 || at + len > options.len() {
                    return false;
                }
                at += len;
            }
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::test_util::hex;

    // 10.0.0.1 -> 10.0.0.100, TCP, 24-byte header with a router-alert
    // option, 4 bytes of payload, DF set, correct checksum.
    fn datagram() -> Vec<u8> {
        let mut bytes = hex("46 00 001c 1234 4000 40 06 0000 0a000001 0a000064 94040000 deadbeef");
        Ipv4Packet::new_unchecked(&mut bytes[..]).fill_checksum();
        bytes
    }

    #[test]
    fn reads_every_field() {
        let bytes = datagram();
        let ip = Ipv4Packet::new_checked(&bytes[..]).unwrap();
        assert_eq!(ip.version(), 4);
        assert_eq!(ip.header_len(), 24);
        assert_eq!((ip.dscp(), ip.ecn()), (0, 0));
        assert_eq!(ip.total_len(), 28);
        assert_eq!(ip.ident(), 0x1234);
        assert!(ip.dont_frag());
        assert!(!ip.more_frags());
        assert_eq!(ip.frag_offset(), 0);
        assert_eq!(ip.ttl(), 64);
        assert_eq!(ip.protocol(), 6);
        assert_eq!(ip.src(), Ipv4Addr::new(10, 0, 0, 1));
        assert_eq!(ip.dst(), Ipv4Addr::new(10, 0, 0, 100));
        assert_eq!(ip.options(), &[0x94, 0x04, 0, 0]);
        assert_eq!(ip.payload(), &[0xde, 0xad, 0xbe, 0xef]);
        assert!(ip.verify_checksum());
        assert_ne!(ip.checksum(), 0);
    }

    #[test]
    fn known_checksum_vector() {
        // The classic example header from many references: checksum 0xb861.
        let header = hex("4500 0073 0000 4000 4011 0000 c0a8 0001 c0a8 00c7");
        assert_eq!(ipv4_checksum(&header), 0xb861);
        assert_eq!(ipv4_checksum(&[0xff]), 0x00ff);
        assert_eq!(ipv4_checksum(&[]), 0xffff);
    }

    #[test]
    fn padding_is_ignored_and_truncation_is_an_error() {
        let mut bytes = datagram();
        bytes.extend_from_slice(&[0; 18]);
        let ip = Ipv4Packet::new_checked(&bytes[..]).unwrap();
        assert_eq!(ip.payload().len(), 4);
        for len in 0..28 {
            let err = Ipv4Packet::new_checked(&bytes[..len]).unwrap_err();
            assert_eq!(err, Malformed::TruncatedIpv4, "len {len}");
        }
    }

    #[test]
    fn bad_fields_are_errors() {
        let mut bad = datagram();
        bad[0] = 0x66;
        assert_eq!(
            Ipv4Packet::new_checked(&bad[..]),
            Err(Malformed::BadIpv4Version)
        );
        bad[0] = 0x44;
        assert_eq!(
            Ipv4Packet::new_checked(&bad[..]),
            Err(Malformed::BadIpv4HeaderLength)
        );
        let mut bad = datagram();
        bad[3] = 20;
        assert_eq!(
            Ipv4Packet::new_checked(&bad[..]),
            Err(Malformed::BadIpv4TotalLength)
        );
        let mut bad = datagram();
        bad[21] = 5; // option length overruns the header
        assert_eq!(
            Ipv4Packet::new_checked(&bad[..]),
            Err(Malformed::BadIpv4Options)
        );
        bad[21] = 1; // option length below 2
        assert_eq!(
            Ipv4Packet::new_checked(&bad[..]),
            Err(Malformed::BadIpv4Options)
        );
        let mut bad = datagram();
        bad.extend_from_slice(&[0; 8]);
        bad[3] = 36; // last fragment at offset 65528 with 12 bytes
        bad[6] = 0x1f;
        bad[7] = 0xff;
        assert_eq!(
            Ipv4Packet::new_checked(&bad[..]),
            Err(Malformed::BadFragment)
        );
        let mut bad = datagram();
        bad[6] = 0x20; // more fragments, 4-byte payload is not a multiple of 8
        assert_eq!(
            Ipv4Packet::new_checked(&bad[..]),
            Err(Malformed::BadFragment)
        );
    }

    #[test]
    fn quoted_header_may_be_cut_short() {
        let bytes = datagram();
        let ip = Ipv4Packet::new_checked_header(&bytes[..26]).unwrap();
        assert_eq!(ip.payload(), &[0xde, 0xad]);
        assert_eq!(
            Ipv4Packet::new_checked_header(&bytes[..23]),
            Err(Malformed::TruncatedIpv4)
        );
    }

    #[test]
    fn setters_round_trip() {
        let mut bytes = [0u8; 28];
        let mut ip = Ipv4Packet::new_unchecked(&mut bytes[..]);
        ip.set_version_and_header_len(24);
        ip.set_dscp_ecn(0, 0);
        ip.set_total_len(28);
        ip.set_ident(0x1234);
        ip.set_fragment(true, false, 0);
        ip.set_ttl(64);
        ip.set_protocol(6);
        ip.set_src(Ipv4Addr::new(10, 0, 0, 1));
        ip.set_dst(Ipv4Addr::new(10, 0, 0, 100));
        bytes[20..24].copy_from_slice(&[0x94, 0x04, 0, 0]);
        let mut ip = Ipv4Packet::new_unchecked(&mut bytes[..]);
        ip.payload_mut().copy_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
        ip.fill_checksum();
        assert_eq!(&bytes[..], &datagram()[..]);
        let mut ip = Ipv4Packet::new_unchecked(&mut bytes[..]);
        ip.set_fragment(false, true, 1480);
        ip.set_dscp_ecn(46, 1);
        assert!(ip.more_frags() && !ip.dont_frag());
        assert_eq!(ip.frag_offset(), 1480);
        assert_eq!((ip.dscp(), ip.ecn()), (46, 1));
        assert!(!ip.verify_checksum());
    }
}
