//! TCP header (RFC 9293): ports, sequence numbers, data offset, flags.

use std::net::Ipv4Addr;

use super::ipv4::{checksum_fold, pseudo_header_sum};
use super::{ip_proto, read_u16, read_u32, write_u16, write_u32, Malformed};

/// Length of the TCP header without options.
pub const MIN_HEADER_LEN: usize = 20;

/// TCP flag bits, as in the low byte of the flags field.
pub mod flags {
    /// No more data from sender.
    pub const FIN: u8 = 0x01;
    /// Synchronize sequence numbers.
    pub const SYN: u8 = 0x02;
    /// Reset the connection.
    pub const RST: u8 = 0x04;
    /// Push function.
    pub const PSH: u8 = 0x08;
    /// Acknowledgment field is significant.
    pub const ACK: u8 = 0x10;
    /// Urgent pointer field is significant.
    pub const URG: u8 = 0x20;
    /// ECN echo.
    pub const ECE: u8 = 0x40;
    /// Congestion window reduced.
    pub const CWR: u8 = 0x80;
}

mod field {
    pub const SRC_PORT: usize = 0;
    pub const DST_PORT: usize = 2;
    pub const SEQ: usize = 4;
    pub const ACK: usize = 8;
    pub const OFFSET: usize = 12;
    pub const FLAGS: usize = 13;
    pub const WINDOW: usize = 14;
    pub const CHECKSUM: usize = 16;
    pub const URGENT: usize = 18;
}

/// A view of a TCP segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpSegment<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> TcpSegment<T> {
    /// Wraps `buffer` without checks (see the module contract in [`crate::wire`]).
    pub const fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// Wraps `buffer` after checking the fixed header, a data offset of at
    /// least 5, and that the options the offset announces are present.
    pub fn new_checked(buffer: T) -> Result<Self, Malformed> {
        if buffer.as_ref().len() < MIN_HEADER_LEN {
            return Err(Malformed::TruncatedTcp);
        }
        let segment = Self { buffer };
        let header_len = segment.header_len();
        if header_len < MIN_HEADER_LEN {
            return Err(Malformed::BadTcpOffset);
        }
        if segment.buffer.as_ref().len() < header_len {
            return Err(Malformed::TruncatedTcp);
        }
        Ok(segment)
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

    /// Sequence number.
    pub fn seq(&self) -> u32 {
        read_u32(self.buffer.as_ref(), field::SEQ)
    }

    /// Acknowledgment number.
    pub fn ack_number(&self) -> u32 {
        read_u32(self.buffer.as_ref(), field::ACK)
    }

    /// Header length in bytes (data offset × 4), options included.
    pub fn header_len(&self) -> usize {
        usize::from(self.buffer.as_ref()[field::OFFSET] >> 4) * 4
    }

    /// The eight flag bits (see [`flags`]).
    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[field::FLAGS]
    }

    /// SYN is set.
    pub fn syn(&self) -> bool {
        self.flags() & flags::SYN != 0
    }

    /// ACK is set.
    pub fn ack(&self) -> bool {
        self.flags() & flags::ACK != 0
    }

    /// FIN is set.
    pub fn fin(&self) -> bool {
        self.flags() & flags::FIN != 0
    }

    /// RST is set.
    pub fn rst(&self) -> bool {
        self.flags() & flags::RST != 0
    }

    /// Receive window.
    pub fn window(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::WINDOW)
    }

    /// Checksum field.
    pub fn checksum(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::CHECKSUM)
    }

    /// Urgent pointer.
    pub fn urgent(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::URGENT)
    }

    /// Option bytes.
    pub fn options(&self) -> &[u8] {
        let b = self.buffer.as_ref();
        let end = self
            .header_len()
            .clamp(MIN_HEADER_LEN, b.len().max(MIN_HEADER_LEN));
        b.get(MIN_HEADER_LEN..end).unwrap_or(&[])
    }

    /// Bytes after the header.
    pub fn payload(&self) -> &[u8] {
        let b = self.buffer.as_ref();
        b.get(self.header_len()..).unwrap_or(&[])
    }

    /// True when the checksum over the IPv4 pseudo header for `src` and
    /// `dst` and the whole buffer (header and payload) is right.
    pub fn verify_checksum_v4(&self, src: Ipv4Addr, dst: Ipv4Addr) -> bool {
        checksum_fold(pseudo_header_sum(
            src,
            dst,
            ip_proto::TCP,
            self.buffer.as_ref(),
        )) == 0
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> TcpSegment<T> {
    /// Sets the source port.
    pub fn set_src_port(&mut self, port: u16) {
        write_u16(self.buffer.as_mut(), field::SRC_PORT, port);
    }

    /// Sets the destination port.
    pub fn set_dst_port(&mut self, port: u16) {
        write_u16(self.buffer.as_mut(), field::DST_PORT, port);
    }

    /// Sets the sequence number.
    pub fn set_seq(&mut self, seq: u32) {
        write_u32(self.buffer.as_mut(), field::SEQ, seq);
    }

    /// Sets the acknowledgment number.
    pub fn set_ack_number(&mut self, ack: u32) {
        write_u32(self.buffer.as_mut(), field::ACK, ack);
    }

    /// Sets the header length in bytes (rounded down to 4, at most 60).
    pub fn set_header_len(&mut self, len: usize) {
        self.buffer.as_mut()[field::OFFSET] = ((len.min(60) / 4) as u8) << 4;
    }

    /// Sets the eight flag bits.
    pub fn set_flags(&mut self, flags: u8) {
        self.buffer.as_mut()[field::FLAGS] = flags;
    }

    /// Sets the receive window.
    pub fn set_window(&mut self, window: u16) {
        write_u16(self.buffer.as_mut(), field::WINDOW, window);
    }

    /// Sets the checksum field.
    pub fn set_checksum(&mut self, checksum: u16) {
        write_u16(self.buffer.as_mut(), field::CHECKSUM, checksum);
    }

    /// Sets the urgent pointer.
    pub fn set_urgent(&mut self, urgent: u16) {
        write_u16(self.buffer.as_mut(), field::URGENT, urgent);
    }

    /// Bytes after the header (as its data offset says), writable; empty
    /// when the offset points past the buffer.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let start = self.header_len();
        self.buffer.as_mut().get_mut(start..).unwrap_or(&mut [])
    }

    /// Computes the checksum over the IPv4 pseudo header for `src` and
    /// `dst` and the whole buffer (header and payload), and writes it.
    pub fn fill_checksum_v4(&mut self, src: Ipv4Addr, dst: Ipv4Addr) {
        self.set_checksum(0);
        let sum = pseudo_header_sum(src, dst, ip_proto::TCP, self.buffer.as_ref());
        self.set_checksum(checksum_fold(sum));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::test_util::hex;

    // 49152 -> 80, SYN with an MSS option, seq 1, ack 0, window 64240.
    const SYN: &str = "c000 0050 00000001 00000000 60 02 faf0 abcd 0000 020405b4 aa";

    #[test]
    fn reads_every_field() {
        let bytes = hex(SYN);
        let tcp = TcpSegment::new_checked(&bytes[..]).unwrap();
        assert_eq!((tcp.src_port(), tcp.dst_port()), (49152, 80));
        assert_eq!((tcp.seq(), tcp.ack_number()), (1, 0));
        assert_eq!(tcp.header_len(), 24);
        assert_eq!(tcp.flags(), flags::SYN);
        assert!(tcp.syn() && !tcp.ack() && !tcp.fin() && !tcp.rst());
        assert_eq!(tcp.window(), 64240);
        assert_eq!(tcp.checksum(), 0xabcd);
        assert_eq!(tcp.urgent(), 0);
        assert_eq!(tcp.options(), &[2, 4, 5, 0xb4]);
        assert_eq!(tcp.payload(), &[0xaa]);
    }

    #[test]
    fn truncation_and_bad_offset_are_errors() {
        let bytes = hex(SYN);
        for len in 0..24 {
            assert_eq!(
                TcpSegment::new_checked(&bytes[..len]),
                Err(Malformed::TruncatedTcp)
            );
        }
        let mut bad = bytes.clone();
        bad[12] = 0x40;
        assert_eq!(
            TcpSegment::new_checked(&bad[..]),
            Err(Malformed::BadTcpOffset)
        );
    }

    #[test]
    fn checksum_covers_the_pseudo_header() {
        let (src, dst) = (Ipv4Addr::new(192, 0, 2, 1), Ipv4Addr::new(10, 0, 0, 100));
        let mut bytes = hex(SYN);
        let mut tcp = TcpSegment::new_unchecked(&mut bytes[..]);
        tcp.fill_checksum_v4(src, dst);
        assert!(tcp.verify_checksum_v4(src, dst));
        assert!(!tcp.verify_checksum_v4(dst, Ipv4Addr::new(10, 0, 0, 101)));
        // The same sum written out: pseudo header, then the segment with a
        // zero checksum field.
        let mut whole = Vec::new();
        whole.extend_from_slice(&src.octets());
        whole.extend_from_slice(&dst.octets());
        whole.extend_from_slice(&[0, ip_proto::TCP, 0, 25]);
        let mut zeroed = hex(SYN);
        zeroed[16..18].fill(0);
        whole.extend_from_slice(&zeroed);
        let expect = crate::wire::ipv4_checksum(&whole);
        assert_eq!(TcpSegment::new_unchecked(&bytes[..]).checksum(), expect);
    }

    #[test]
    fn setters_round_trip() {
        let mut bytes = [0u8; 25];
        let mut tcp = TcpSegment::new_unchecked(&mut bytes[..]);
        tcp.set_src_port(49152);
        tcp.set_dst_port(80);
        tcp.set_seq(1);
        tcp.set_ack_number(0);
        tcp.set_header_len(24);
        tcp.set_flags(flags::SYN);
        tcp.set_window(64240);
        tcp.set_checksum(0xabcd);
        tcp.set_urgent(0);
        tcp.payload_mut().copy_from_slice(&[0xaa]);
        bytes[20..24].copy_from_slice(&[2, 4, 5, 0xb4]);
        assert_eq!(&bytes[..], &hex(SYN)[..]);
    }
}
