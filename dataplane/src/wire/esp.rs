//! IPsec ESP header (RFC 4303): the SPI and sequence number in clear; the
//! rest is ciphertext and is never looked at.

use super::{read_u32, write_u32, Malformed};

/// Length of the clear-text ESP header.
pub const HEADER_LEN: usize = 8;

mod field {
    pub const SPI: usize = 0;
    pub const SEQ: usize = 4;
}

/// A view of an ESP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EspPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> EspPacket<T> {
    /// Wraps `buffer` without checks (see the module contract in [`crate::wire`]).
    pub const fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// Wraps `buffer` after checking it holds the 8-byte header.
    pub fn new_checked(buffer: T) -> Result<Self, Malformed> {
        if buffer.as_ref().len() < HEADER_LEN {
            return Err(Malformed::TruncatedEsp);
        }
        Ok(Self { buffer })
    }

    /// The wrapped buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// Security parameters index.
    pub fn spi(&self) -> u32 {
        read_u32(self.buffer.as_ref(), field::SPI)
    }

    /// Sequence number.
    pub fn seq(&self) -> u32 {
        read_u32(self.buffer.as_ref(), field::SEQ)
    }

    /// The encrypted rest.
    pub fn payload(&self) -> &[u8] {
        self.buffer.as_ref().get(HEADER_LEN..).unwrap_or(&[])
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> EspPacket<T> {
    /// Sets the security parameters index.
    pub fn set_spi(&mut self, spi: u32) {
        write_u32(self.buffer.as_mut(), field::SPI, spi);
    }

    /// Sets the sequence number.
    pub fn set_seq(&mut self, seq: u32) {
        write_u32(self.buffer.as_mut(), field::SEQ, seq);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::test_util::hex;

    const ESP: &str = "12345678 00000009 cafe";

    #[test]
    fn reads_every_field() {
        let bytes = hex(ESP);
        let esp = EspPacket::new_checked(&bytes[..]).unwrap();
        assert_eq!(esp.spi(), 0x1234_5678);
        assert_eq!(esp.seq(), 9);
        assert_eq!(esp.payload(), &[0xca, 0xfe]);
    }

    #[test]
    fn truncation_is_an_error() {
        let bytes = hex(ESP);
        for len in 0..HEADER_LEN {
            assert_eq!(
                EspPacket::new_checked(&bytes[..len]),
                Err(Malformed::TruncatedEsp)
            );
        }
    }

    #[test]
    fn setters_round_trip() {
        let mut bytes = [0u8; 10];
        let mut esp = EspPacket::new_unchecked(&mut bytes[..]);
        esp.set_spi(0x1234_5678);
        esp.set_seq(9);
        bytes[8..].copy_from_slice(&[0xca, 0xfe]);
        assert_eq!(&bytes[..], &hex(ESP)[..]);
    }
}
