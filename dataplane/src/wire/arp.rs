//! ARP for IPv4 over Ethernet (RFC 826). Other hardware or protocol types
//! are refused as [`Malformed::BadArp`]: a cluster on Ethernet never needs them.

use std::net::Ipv4Addr;

use super::{read_ipv4, read_mac, read_u16, write_u16, Malformed};

/// Length of an Ethernet/IPv4 ARP packet.
pub const LEN: usize = 28;

/// ARP request operation.
pub const OP_REQUEST: u16 = 1;
/// ARP reply operation.
pub const OP_REPLY: u16 = 2;

mod field {
    pub const HTYPE: usize = 0;
    pub const PTYPE: usize = 2;
    pub const HLEN: usize = 4;
    pub const PLEN: usize = 5;
    pub const OPER: usize = 6;
    pub const SHA: usize = 8;
    pub const SPA: usize = 14;
    pub const THA: usize = 18;
    pub const TPA: usize = 24;
}

/// A view of an Ethernet/IPv4 ARP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> ArpPacket<T> {
    /// Wraps `buffer` without checks (see the module contract in [`crate::wire`]).
    pub const fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// Wraps `buffer` after checking it holds 28 bytes of Ethernet/IPv4 ARP.
    pub fn new_checked(buffer: T) -> Result<Self, Malformed> {
        let b = buffer.as_ref();
        if b.len() < LEN {
            return Err(Malformed::TruncatedArp);
        }
        let packet = Self { buffer };
        if packet.hardware_type() != 1
            || packet.protocol_type() != super::ethertype::IPV4
            || packet.hardware_len() != 6
            || packet.protocol_len() != 4
        {
            return Err(Malformed::BadArp);
        }
        Ok(packet)
    }

    /// The wrapped buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// Hardware type (1 = Ethernet).
    pub fn hardware_type(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::HTYPE)
    }

    /// Protocol type (0x0800 = IPv4).
    pub fn protocol_type(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::PTYPE)
    }

    /// Hardware address length (6).
    pub fn hardware_len(&self) -> u8 {
        self.buffer.as_ref()[field::HLEN]
    }

    /// Protocol address length (4).
    pub fn protocol_len(&self) -> u8 {
        self.buffer.as_ref()[field::PLEN]
    }

    /// Operation ([`OP_REQUEST`], [`OP_REPLY`], or another value).
    pub fn operation(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::OPER)
    }

    /// Sender hardware address.
    pub fn sender_mac(&self) -> [u8; 6] {
        read_mac(self.buffer.as_ref(), field::SHA)
    }

    /// Sender protocol address.
    pub fn sender_ip(&self) -> Ipv4Addr {
        read_ipv4(self.buffer.as_ref(), field::SPA)
    }

    /// Target hardware address.
    pub fn target_mac(&self) -> [u8; 6] {
        read_mac(self.buffer.as_ref(), field::THA)
    }

    /// Target protocol address.
    pub fn target_ip(&self) -> Ipv4Addr {
        read_ipv4(self.buffer.as_ref(), field::TPA)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> ArpPacket<T> {
    /// Writes the fixed Ethernet/IPv4 fields: hardware type 1, protocol
    /// 0x0800, lengths 6 and 4.
    pub fn set_ethernet_ipv4(&mut self) {
        let b = self.buffer.as_mut();
        write_u16(b, field::HTYPE, 1);
        write_u16(b, field::PTYPE, super::ethertype::IPV4);
        b[field::HLEN] = 6;
        b[field::PLEN] = 4;
    }

    /// Sets the operation.
    pub fn set_operation(&mut self, op: u16) {
        write_u16(self.buffer.as_mut(), field::OPER, op);
    }

    /// Sets the sender hardware address.
    pub fn set_sender_mac(&mut self, mac: [u8; 6]) {
        self.buffer.as_mut()[field::SHA..field::SHA + 6].copy_from_slice(&mac);
    }

    /// Sets the sender protocol address.
    pub fn set_sender_ip(&mut self, ip: Ipv4Addr) {
        self.buffer.as_mut()[field::SPA..field::SPA + 4].copy_from_slice(&ip.octets());
    }

    /// Sets the target hardware address.
    pub fn set_target_mac(&mut self, mac: [u8; 6]) {
        self.buffer.as_mut()[field::THA..field::THA + 6].copy_from_slice(&mac);
    }

    /// Sets the target protocol address.
    pub fn set_target_ip(&mut self, ip: Ipv4Addr) {
        self.buffer.as_mut()[field::TPA..field::TPA + 4].copy_from_slice(&ip.octets());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::test_util::hex;

    // Who has 10.0.0.100? Tell 10.0.0.1.
    const REQUEST: &str = "0001 0800 06 04 0001 020000000001 0a000001 000000000000 0a000064";

    #[test]
    fn reads_every_field() {
        let bytes = hex(REQUEST);
        let arp = ArpPacket::new_checked(&bytes[..]).unwrap();
        assert_eq!(arp.hardware_type(), 1);
        assert_eq!(arp.protocol_type(), 0x0800);
        assert_eq!((arp.hardware_len(), arp.protocol_len()), (6, 4));
        assert_eq!(arp.operation(), OP_REQUEST);
        assert_eq!(arp.sender_mac(), [2, 0, 0, 0, 0, 1]);
        assert_eq!(arp.sender_ip(), Ipv4Addr::new(10, 0, 0, 1));
        assert_eq!(arp.target_mac(), [0; 6]);
        assert_eq!(arp.target_ip(), Ipv4Addr::new(10, 0, 0, 100));
    }

    #[test]
    fn truncation_and_foreign_types_are_errors() {
        let bytes = hex(REQUEST);
        for len in 0..LEN {
            assert_eq!(
                ArpPacket::new_checked(&bytes[..len]),
                Err(Malformed::TruncatedArp)
            );
        }
        for at in [1, 2, 4, 5] {
            let mut bad = bytes.clone();
            bad[at] ^= 0x10;
            assert_eq!(ArpPacket::new_checked(&bad[..]), Err(Malformed::BadArp));
        }
    }

    #[test]
    fn setters_round_trip() {
        let mut bytes = [0u8; LEN];
        let mut arp = ArpPacket::new_unchecked(&mut bytes[..]);
        arp.set_ethernet_ipv4();
        arp.set_operation(OP_REQUEST);
        arp.set_sender_mac([2, 0, 0, 0, 0, 1]);
        arp.set_sender_ip(Ipv4Addr::new(10, 0, 0, 1));
        arp.set_target_mac([0; 6]);
        arp.set_target_ip(Ipv4Addr::new(10, 0, 0, 100));
        assert_eq!(&bytes[..], &hex(REQUEST)[..]);
    }
}
