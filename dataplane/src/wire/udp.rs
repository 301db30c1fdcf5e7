//! UDP header (RFC 768).
//!
//! The length field covers the whole datagram. In a whole IP datagram it
//! must fit the IP payload ([`UdpDatagram::new_checked`]); in the first
//! fragment of a fragmented one it covers bytes this frame does not hold, so
//! the frame path uses [`UdpDatagram::new_checked_header`] there.

use std::net::Ipv4Addr;

use super::ipv4::{checksum_fold, pseudo_header_sum};
use super::{ip_proto, read_u16, write_u16, Malformed};

/// Length of the UDP header.
pub const HEADER_LEN: usize = 8;

mod field {
    pub const SRC_PORT: usize = 0;
    pub const DST_PORT: usize = 2;
    pub const LENGTH: usize = 4;
    pub const CHECKSUM: usize = 6;
}

/// A view of a UDP datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpDatagram<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> UdpDatagram<T> {
    /// Wraps `buffer` without checks (see the module contract in [`crate::wire`]).
    pub const fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// Wraps a whole datagram (`buffer` is the entire IP payload) after
    /// checking the header and that the length is between 8 and the buffer
    /// length. Bytes after the length are ignored.
    pub fn new_checked(buffer: T) -> Result<Self, Malformed> {
        let datagram = Self::new_checked_header(buffer)?;
        if usize::from(datagram.length()) > datagram.buffer.as_ref().len() {
            return Err(Malformed::BadUdpLength);
        }
        Ok(datagram)
    }

    /// Wraps the start of a datagram that may continue in later fragments:
    /// checks the 8-byte header and a length of at least 8.
    pub fn new_checked_header(buffer: T) -> Result<Self, Malformed> {
        if buffer.as_ref().len() < HEADER_LEN {
            return Err(Malformed::TruncatedUdp);
        }
        let datagram = Self { buffer };
        if usize::from(datagram.length()) < HEADER_LEN {
            return Err(Malformed::BadUdpLength);
        }
        Ok(datagram)
    }

    /// The wrapped buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// Source port.
    pub fn src_port(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::SRC_PORT)
    }

    /// Destination port.
    pub fn dst_port(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::DST_PORT)
    }

    /// Length field (header plus data).
    pub fn length(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::LENGTH)
    }

    /// Checksum field (0 means none, over IPv4).
    pub fn checksum(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::CHECKSUM)
    }

    /// Data after the header up to the length field, never beyond the buffer.
    pub fn payload(&self) -> &[u8] {
        let b = self.buffer.as_ref();
        let start = HEADER_LEN.min(b.len());
        let end = usize::from(self.length()).clamp(start, b.len());
        &b[start..end]
    }

    /// True when the checksum is absent (0) or right over the IPv4 pseudo
    /// header for `src` and `dst` and the whole buffer.
    pub fn verify_checksum_v4(&self, src: Ipv4Addr, dst: Ipv4Addr) -> bool {
        self.checksum() == 0
            || checksum_fold(pseudo_header_sum(
                src,
                dst,
                ip_proto::UDP,
                self.buffer.as_ref(),
            )) == 0
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> UdpDatagram<T> {
    /// Sets the source port.
    pub fn set_src_port(&mut self, port: u16) {
        write_u16(self.buffer.as_mut(), field::SRC_PORT, port);
    }

    /// Sets the destination port.
    pub fn set_dst_port(&mut self, port: u16) {
        write_u16(self.buffer.as_mut(), field::DST_PORT, port);
    }

    /// Sets the length field.
    pub fn set_length(&mut self, len: u16) {
        write_u16(self.buffer.as_mut(), field::LENGTH, len);
    }

    /// Sets the checksum field.
    pub fn set_checksum(&mut self, checksum: u16) {
        write_u16(self.buffer.as_mut(), field::CHECKSUM, checksum);
    }

    /// Bytes after the header, writable, up to the end of the buffer (the
    /// length field is not consulted: the builder sets it).
    pub fn payload_mut(&mut self) -> &mut [u8] {
        self.buffer
            .as_mut()
            .get_mut(HEADER_LEN..)
            .unwrap_or(&mut [])
    }

    /// Computes the checksum over the IPv4 pseudo header for `src` and
    /// `dst` and the whole buffer, and writes it (a computed 0 is sent as
    /// 0xffff, RFC 768: 0 means "no checksum").
    pub fn fill_checksum_v4(&mut self, src: Ipv4Addr, dst: Ipv4Addr) {
        self.set_checksum(0);
        let sum = pseudo_header_sum(src, dst, ip_proto::UDP, self.buffer.as_ref());
        let checksum = match checksum_fold(sum) {
            0 => 0xffff,
            c => c,
        };
        self.set_checksum(checksum);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::test_util::hex;

    const DNS: &str = "d431 0035 000a 1234 beef";

    #[test]
    fn reads_every_field() {
        let bytes = hex(DNS);
        let udp = UdpDatagram::new_checked(&bytes[..]).unwrap();
        assert_eq!((udp.src_port(), udp.dst_port()), (54321, 53));
        assert_eq!(udp.length(), 10);
        assert_eq!(udp.checksum(), 0x1234);
        assert_eq!(udp.payload(), &[0xbe, 0xef]);
    }

    #[test]
    fn truncation_and_bad_length_are_errors() {
        let bytes = hex(DNS);
        for len in 0..HEADER_LEN {
            assert_eq!(
                UdpDatagram::new_checked(&bytes[..len]),
                Err(Malformed::TruncatedUdp)
            );
        }
        assert_eq!(
            UdpDatagram::new_checked(&bytes[..9]),
            Err(Malformed::BadUdpLength)
        );
        assert!(UdpDatagram::new_checked_header(&bytes[..9]).is_ok());
        let mut bad = bytes.clone();
        bad[5] = 7;
        assert_eq!(
            UdpDatagram::new_checked_header(&bad[..]),
            Err(Malformed::BadUdpLength)
        );
    }

    #[test]
    fn setters_round_trip() {
        let mut bytes = [0u8; 10];
        let mut udp = UdpDatagram::new_unchecked(&mut bytes[..]);
        udp.set_src_port(54321);
        udp.set_dst_port(53);
        udp.set_length(10);
        udp.set_checksum(0x1234);
        udp.payload_mut().copy_from_slice(&[0xbe, 0xef]);
        assert_eq!(&bytes[..], &hex(DNS)[..]);
    }

    #[test]
    fn checksum_covers_the_pseudo_header() {
        let (src, dst) = (Ipv4Addr::new(192, 0, 2, 1), Ipv4Addr::new(10, 0, 0, 100));
        let mut bytes = hex(DNS);
        let mut udp = UdpDatagram::new_unchecked(&mut bytes[..]);
        udp.fill_checksum_v4(src, dst);
        assert!(udp.verify_checksum_v4(src, dst));
        assert!(!udp.verify_checksum_v4(dst, src.to_bits().wrapping_add(1).into()));
        let mut whole = Vec::new();
        whole.extend_from_slice(&src.octets());
        whole.extend_from_slice(&dst.octets());
        whole.extend_from_slice(&[0, ip_proto::UDP, 0, 10]);
        let mut zeroed = hex(DNS);
        zeroed[6..8].fill(0);
        whole.extend_from_slice(&zeroed);
        let expect = crate::wire::ipv4_checksum(&whole);
        assert_eq!(UdpDatagram::new_unchecked(&bytes[..]).checksum(), expect);
    }
}
