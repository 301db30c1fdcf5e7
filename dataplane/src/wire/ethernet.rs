//! Ethernet II header and IEEE 802.1Q / 802.1ad VLAN tags.
//!
//! The frame holds no FCS (the NIC strips it). 802.3 length-field frames are
//! not told apart here: their "EtherType" is below 0x0600 and the frame path
//! classifies them as other traffic.

use super::{read_mac, read_u16, write_u16, Malformed};

/// Length of the Ethernet II header: destination, source, EtherType.
pub const HEADER_LEN: usize = 14;

/// Length of one VLAN tag after its TPID: TCI and the inner EtherType.
pub const VLAN_TAG_LEN: usize = 4;

/// Most stacked VLAN tags a frame may carry (802.1ad outer + 802.1Q inner).
pub const MAX_VLAN_TAGS: usize = 2;

mod field {
    use core::ops::Range;
    pub const DST: Range<usize> = 0..6;
    pub const SRC: Range<usize> = 6..12;
    pub const ETHERTYPE: usize = 12;
    pub const PAYLOAD: usize = 14;

    pub const TCI: usize = 0;
    pub const INNER_ETHERTYPE: usize = 2;
}

/// A view of an Ethernet II frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EthernetFrame<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> EthernetFrame<T> {
    /// Wraps `buffer` without checking its length (see the module contract).
    pub const fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// Wraps `buffer` after checking it holds the 14-byte header.
    pub fn new_checked(buffer: T) -> Result<Self, Malformed> {
        if buffer.as_ref().len() < HEADER_LEN {
            return Err(Malformed::TruncatedEthernet);
        }
        Ok(Self { buffer })
    }

    /// The wrapped buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// Destination MAC address.
    pub fn dst(&self) -> [u8; 6] {
        read_mac(self.buffer.as_ref(), field::DST.start)
    }

    /// Source MAC address.
    pub fn src(&self) -> [u8; 6] {
        read_mac(self.buffer.as_ref(), field::SRC.start)
    }

    /// EtherType (or TPID when the frame is VLAN tagged).
    pub fn ethertype(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::ETHERTYPE)
    }

    /// Everything after the 14-byte header (tags included, trailer included).
    pub fn payload(&self) -> &[u8] {
        self.buffer.as_ref().get(field::PAYLOAD..).unwrap_or(&[])
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> EthernetFrame<T> {
    /// Sets the destination MAC address.
    pub fn set_dst(&mut self, mac: [u8; 6]) {
        self.buffer.as_mut()[field::DST].copy_from_slice(&mac);
    }

    /// Sets the source MAC address.
    pub fn set_src(&mut self, mac: [u8; 6]) {
        self.buffer.as_mut()[field::SRC].copy_from_slice(&mac);
    }

    /// Sets the EtherType (or TPID).
    pub fn set_ethertype(&mut self, ethertype: u16) {
        write_u16(self.buffer.as_mut(), field::ETHERTYPE, ethertype);
    }

    /// Everything after the 14-byte header, writable.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        self.buffer
            .as_mut()
            .get_mut(field::PAYLOAD..)
            .unwrap_or(&mut [])
    }
}

/// A view of one VLAN tag, starting right after its TPID: the 16-bit tag
/// control information (PCP, DEI, VLAN ID) and the EtherType it wraps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VlanTag<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> VlanTag<T> {
    /// Wraps `buffer` without checking its length (see the module contract).
    pub const fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// Wraps `buffer` after checking it holds the 4-byte tag.
    pub fn new_checked(buffer: T) -> Result<Self, Malformed> {
        if buffer.as_ref().len() < VLAN_TAG_LEN {
            return Err(Malformed::TruncatedVlan);
        }
        Ok(Self { buffer })
    }

    /// The wrapped buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// Priority code point (3 bits).
    pub fn priority(&self) -> u8 {
        (read_u16(self.buffer.as_ref(), field::TCI) >> 13) as u8
    }

    /// Drop eligible indicator.
    pub fn drop_eligible(&self) -> bool {
        read_u16(self.buffer.as_ref(), field::TCI) & 0x1000 != 0
    }

    /// VLAN ID (12 bits; 0 means priority-tagged only).
    pub fn vlan_id(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::TCI) & 0x0fff
    }

    /// The EtherType (or next TPID) the tag wraps.
    pub fn ethertype(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::INNER_ETHERTYPE)
    }

    /// Everything after the tag.
    pub fn payload(&self) -> &[u8] {
        self.buffer.as_ref().get(VLAN_TAG_LEN..).unwrap_or(&[])
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> VlanTag<T> {
    /// Sets PCP, DEI and VLAN ID at once (`vlan_id` is masked to 12 bits,
    /// `priority` to 3).
    pub fn set_tci(&mut self, priority: u8, drop_eligible: bool, vlan_id: u16) {
        let tci =
            (u16::from(priority & 7) << 13) | (u16::from(drop_eligible) << 12) | (vlan_id & 0x0fff);
        write_u16(self.buffer.as_mut(), field::TCI, tci);
    }

    /// Sets the wrapped EtherType (or next TPID).
    pub fn set_ethertype(&mut self, ethertype: u16) {
        write_u16(self.buffer.as_mut(), field::INNER_ETHERTYPE, ethertype);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::test_util::hex;

    const FRAME: &str = "ffffffffffff 0200c0a80101 8100 a00a 0800 45";

    #[test]
    fn reads_every_field() {
        let bytes = hex(FRAME);
        let frame = EthernetFrame::new_checked(&bytes[..]).unwrap();
        assert_eq!(frame.dst(), [0xff; 6]);
        assert_eq!(frame.src(), [0x02, 0x00, 0xc0, 0xa8, 0x01, 0x01]);
        assert_eq!(frame.ethertype(), 0x8100);
        let tag = VlanTag::new_checked(frame.payload()).unwrap();
        assert_eq!(tag.priority(), 5);
        assert!(!tag.drop_eligible());
        assert_eq!(tag.vlan_id(), 10);
        assert_eq!(tag.ethertype(), 0x0800);
        assert_eq!(tag.payload(), &[0x45]);
    }

    #[test]
    fn truncation_is_an_error() {
        let bytes = hex(FRAME);
        for len in 0..HEADER_LEN {
            assert_eq!(
                EthernetFrame::new_checked(&bytes[..len]),
                Err(Malformed::TruncatedEthernet)
            );
        }
        for len in 0..VLAN_TAG_LEN {
            assert_eq!(
                VlanTag::new_checked(&bytes[14..14 + len]),
                Err(Malformed::TruncatedVlan)
            );
        }
    }

    #[test]
    fn setters_round_trip() {
        let mut bytes = [0u8; 18];
        let mut frame = EthernetFrame::new_unchecked(&mut bytes[..]);
        frame.set_dst([1, 2, 3, 4, 5, 6]);
        frame.set_src([7, 8, 9, 10, 11, 12]);
        frame.set_ethertype(ethertype_qinq());
        let mut tag = VlanTag::new_unchecked(frame.payload_mut());
        tag.set_tci(7, true, 0xfff);
        tag.set_ethertype(0x86dd);
        let frame = EthernetFrame::new_checked(&bytes[..]).unwrap();
        assert_eq!(frame.dst(), [1, 2, 3, 4, 5, 6]);
        assert_eq!(frame.src(), [7, 8, 9, 10, 11, 12]);
        assert_eq!(frame.ethertype(), 0x88a8);
        let tag = VlanTag::new_checked(frame.payload()).unwrap();
        assert_eq!(
            (tag.priority(), tag.drop_eligible(), tag.vlan_id()),
            (7, true, 0xfff)
        );
        assert_eq!(tag.ethertype(), 0x86dd);
    }

    fn ethertype_qinq() -> u16 {
        crate::wire::ethertype::QINQ
    }
}
