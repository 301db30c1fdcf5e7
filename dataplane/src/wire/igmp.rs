//! IGMP versions 1, 2 (RFC 2236) and 3 (RFC 3376).
//!
//! Queries and v1/v2 reports and leaves carry one group address at offset 4.
//! A v3 report instead carries group records; [`IgmpPacket::group`] gives the
//! first record's group (enough for the frame path to route it to the
//! control plane) and [`IgmpPacket::group_records`] walks them all.

use std::net::Ipv4Addr;

use super::ipv4::ipv4_checksum;
use super::{read_ipv4, read_u16, write_u16, Malformed};

/// Length of an IGMPv1/v2 message (and the part every message has).
pub const HEADER_LEN: usize = 8;

/// Length of an IGMPv3 query without sources.
pub const V3_QUERY_LEN: usize = 12;

/// Length of a v3 group record without sources or auxiliary data.
pub const GROUP_RECORD_LEN: usize = 8;

/// Message types.
pub mod types {
    /// Membership query (all versions; v3 when at least 12 bytes long).
    pub const QUERY: u8 = 0x11;
    /// IGMPv1 membership report.
    pub const V1_REPORT: u8 = 0x12;
    /// IGMPv2 membership report.
    pub const V2_REPORT: u8 = 0x16;
    /// IGMPv2 leave group.
    pub const LEAVE: u8 = 0x17;
    /// IGMPv3 membership report.
    pub const V3_REPORT: u8 = 0x22;
}

mod field {
    pub const TYPE: usize = 0;
    pub const MAX_RESP: usize = 1;
    pub const CHECKSUM: usize = 2;
    pub const GROUP: usize = 4;
    pub const V3_RECORD_COUNT: usize = 6;
    pub const V3_RECORDS: usize = 8;
}

/// A view of an IGMP message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IgmpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> IgmpPacket<T> {
    /// Wraps `buffer` without checks (see the module contract in [`crate::wire`]).
    pub const fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// Wraps `buffer` after checking it holds 8 bytes, and for a v3 report
    /// announcing records, the first record's fixed part.
    pub fn new_checked(buffer: T) -> Result<Self, Malformed> {
        let len = buffer.as_ref().len();
        if len < HEADER_LEN {
            return Err(Malformed::TruncatedIgmp);
        }
        let packet = Self { buffer };
        if packet.msg_type() == types::V3_REPORT
            && packet.record_count() > 0
            && len < field::V3_RECORDS + GROUP_RECORD_LEN
        {
            return Err(Malformed::TruncatedIgmp);
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

    /// Protocol version this message belongs to: 1, 2 or 3 (RFC 3376 §7.1:
    /// a query is v3 when 12 bytes or longer, v1 when its max response is 0).
    /// Unknown types report 0.
    pub fn version(&self) -> u8 {
        match self.msg_type() {
            types::QUERY if self.buffer.as_ref().len() >= V3_QUERY_LEN => 3,
            types::QUERY if self.max_resp_code() == 0 => 1,
            types::QUERY => 2,
            types::V1_REPORT => 1,
            types::V2_REPORT | types::LEAVE => 2,
            types::V3_REPORT => 3,
            _ => 0,
        }
    }

    /// Max response code (time or, in v3, an encoded time).
    pub fn max_resp_code(&self) -> u8 {
        self.buffer.as_ref()[field::MAX_RESP]
    }

    /// Checksum field.
    pub fn checksum(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::CHECKSUM)
    }

    fn record_count(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::V3_RECORD_COUNT)
    }

    /// The group the message is about: the group field, or for a v3 report
    /// the first record's group (unspecified when it has no records).
    pub fn group(&self) -> Ipv4Addr {
        let b = self.buffer.as_ref();
        if self.msg_type() != types::V3_REPORT {
            return read_ipv4(b, field::GROUP);
        }
        self.group_records()
            .next()
            .map_or(Ipv4Addr::UNSPECIFIED, |(_, group)| group)
    }

    /// The records of a v3 report as (record type, group); empty for other
    /// messages. Stops at the announced count or at the first record that
    /// does not fit the buffer.
    pub fn group_records(&self) -> GroupRecords<'_> {
        let b = self.buffer.as_ref();
        let is_report = self.msg_type() == types::V3_REPORT;
        GroupRecords {
            rest: if is_report {
                b.get(field::V3_RECORDS..).unwrap_or(&[])
            } else {
                &[]
            },
            remaining: if is_report { self.record_count() } else { 0 },
        }
    }

    /// True when the checksum over the whole message is right.
    pub fn verify_checksum(&self) -> bool {
        ipv4_checksum(self.buffer.as_ref()) == 0
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> IgmpPacket<T> {
    /// Sets the message type.
    pub fn set_msg_type(&mut self, igmp_type: u8) {
        self.buffer.as_mut()[field::TYPE] = igmp_type;
    }

    /// Sets the max response code.
    pub fn set_max_resp_code(&mut self, code: u8) {
        self.buffer.as_mut()[field::MAX_RESP] = code;
    }

    /// Sets the group field (v1/v2 messages and queries).
    pub fn set_group(&mut self, group: Ipv4Addr) {
        self.buffer.as_mut()[field::GROUP..field::GROUP + 4].copy_from_slice(&group.octets());
    }

    /// Sets the checksum field.
    pub fn set_checksum(&mut self, checksum: u16) {
        write_u16(self.buffer.as_mut(), field::CHECKSUM, checksum);
    }

    /// Computes the checksum over the whole buffer and writes it.
    pub fn fill_checksum(&mut self) {
        self.set_checksum(0);
        let checksum = ipv4_checksum(self.buffer.as_ref());
        self.set_checksum(checksum);
    }
}

/// Iterator over IGMPv3 group records; see [`IgmpPacket::group_records`].
#[derive(Debug, Clone)]
pub struct GroupRecords<'a> {
    rest: &'a [u8],
    remaining: u16,
}

impl Iterator for GroupRecords<'_> {
    type Item = (u8, Ipv4Addr);

    fn next(&mut self) -> Option<Self::Item> {
        if self.remaining == 0 || self.rest.len() < GROUP_RECORD_LEN {
            return None;
        }
        let record_type = self.rest[0];
        let aux_len = usize::from(self.rest[1]) * 4;
        let sources = usize::from(read_u16(self.rest, 2)) * 4;
        let group = read_ipv4(self.rest, 4);
        let len = GROUP_RECORD_LEN + sources + aux_len;
        self.remaining -= 1;
        match self.rest.get(len..) {
            Some(rest) => self.rest = rest,
            // The record overruns the message: report its group, then stop.
            None => {
                self.rest = &[];
                self.remaining = 0;
            }
        }
        Some((record_type, group))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::test_util::hex;

    const V2_REPORT: &str = "16 00 0000 effa0001";
    // v3 report: two records, the first with one source.
    const V3_REPORT: &str = "22 00 0000 0000 0002
        04 00 0001 effa0002 0a000001
        03 00 0000 effa0003";

    #[test]
    fn reads_v2_report() {
        let mut bytes = hex(V2_REPORT);
        IgmpPacket::new_unchecked(&mut bytes[..]).fill_checksum();
        let igmp = IgmpPacket::new_checked(&bytes[..]).unwrap();
        assert_eq!(igmp.msg_type(), types::V2_REPORT);
        assert_eq!(igmp.version(), 2);
        assert_eq!(igmp.max_resp_code(), 0);
        assert_eq!(igmp.group(), Ipv4Addr::new(239, 250, 0, 1));
        assert_eq!(igmp.group_records().count(), 0);
        assert!(igmp.verify_checksum());
        assert_ne!(igmp.checksum(), 0);
    }

    #[test]
    fn reads_v3_report_and_queries() {
        let bytes = hex(V3_REPORT);
        let igmp = IgmpPacket::new_checked(&bytes[..]).unwrap();
        assert_eq!(igmp.version(), 3);
        assert_eq!(igmp.group(), Ipv4Addr::new(239, 250, 0, 2));
        let records: Vec<_> = igmp.group_records().collect();
        assert_eq!(
            records,
            vec![
                (4, Ipv4Addr::new(239, 250, 0, 2)),
                (3, Ipv4Addr::new(239, 250, 0, 3))
            ]
        );
        // A record count that overstates what is there stops early.
        let cut = &bytes[..20];
        assert_eq!(
            IgmpPacket::new_checked(cut)
                .unwrap()
                .group_records()
                .count(),
            1
        );

        let v1_query = hex("11 00 0000 00000000");
        assert_eq!(IgmpPacket::new_checked(&v1_query[..]).unwrap().version(), 1);
        let v2_query = hex("11 64 0000 00000000");
        assert_eq!(IgmpPacket::new_checked(&v2_query[..]).unwrap().version(), 2);
        let v3_query = hex("11 64 0000 effa0001 02 7d 0000");
        let query = IgmpPacket::new_checked(&v3_query[..]).unwrap();
        assert_eq!(
            (query.version(), query.group()),
            (3, Ipv4Addr::new(239, 250, 0, 1))
        );
        let leave = hex("17 00 0000 effa0001");
        assert_eq!(IgmpPacket::new_checked(&leave[..]).unwrap().version(), 2);
        let unknown = hex("99 00 0000 00000000");
        assert_eq!(IgmpPacket::new_checked(&unknown[..]).unwrap().version(), 0);
    }

    #[test]
    fn truncation_is_an_error() {
        let bytes = hex(V3_REPORT);
        for len in 0..16 {
            assert_eq!(
                IgmpPacket::new_checked(&bytes[..len]),
                Err(Malformed::TruncatedIgmp),
                "len {len}"
            );
        }
        let empty_v3 = hex("22 00 0000 0000 0000");
        assert_eq!(
            IgmpPacket::new_checked(&empty_v3[..]).unwrap().group(),
            Ipv4Addr::UNSPECIFIED
        );
    }

    #[test]
    fn setters_round_trip() {
        let mut bytes = [0u8; 8];
        let mut igmp = IgmpPacket::new_unchecked(&mut bytes[..]);
        igmp.set_msg_type(types::V2_REPORT);
        igmp.set_max_resp_code(0);
        igmp.set_group(Ipv4Addr::new(239, 250, 0, 1));
        igmp.set_checksum(0);
        assert_eq!(&bytes[..], &hex(V2_REPORT)[..]);
    }
}
