//! The common frame and its reader: untagged Ethernet II, option-less
//! IPv4, a whole TCP, UDP, GRE or ESP datagram, at least [`COMMON_LEN`]
//! bytes, read at fixed offsets.
//!
//! # Contract
//!
//! The reader ([`common_ipv4`], then [`CommonV4::udp`], [`CommonV4::tcp`]
//! or [`CommonV4::gre_or_esp`]) makes the very checks
//! [`parse_frame`](crate::packet::parse_frame) makes on such a frame, so
//! whenever it accepts a frame, `parse_frame` would have returned `Ok` with
//! the same fields (a property test holds it to that). It declines every
//! other frame (VLAN tags, IP options, fragments, other protocols, anything
//! malformed) after a few compares, and the general parser reads that frame
//! instead, once. It never panics and does constant work.
//!
//! What it accepts it hands on as a [`CommonV4`]: a view of the checked
//! header whose fields are read at fixed offsets where they are needed,
//! with no check left to make and no way to build one but the reader.

use std::net::IpAddr;

use super::general::Flow;
use crate::wire::{esp, ip_proto, GrePacket};

/// Bytes the common frame is read from at fixed offsets: Ethernet, the
/// option-less IPv4 header and the fixed TCP header (every Ethernet frame
/// has them: the minimum is 60 bytes).
pub(super) const COMMON_LEN: usize = 14 + 20 + 20;
const ETH: usize = 14;
const IP: usize = 20;
/// Where the transport header starts in a common frame.
const L4: usize = ETH + IP;

/// The first [`COMMON_LEN`] bytes of a frame [`common_ipv4`] accepted and
/// the length of its IPv4 payload.
pub(super) type CommonHeader<'a> = (&'a [u8; COMMON_LEN], usize);

/// The Ethernet and IPv4 part of the reader: untagged Ethernet II, IPv4
/// without options, a whole datagram inside the frame, at least
/// [`COMMON_LEN`] bytes, checked as
/// [`parse_frame`](crate::packet::parse_frame) checks them.
#[inline(always)]
pub(super) fn common_ipv4(frame: &[u8]) -> Option<CommonHeader<'_>> {
    // One length check; the fixed offsets below then need none.
    let h: &[u8; COMMON_LEN] = frame.get(..COMMON_LEN)?.try_into().ok()?;
    // EtherType IPv4 (0x0800), version 4 and IHL 5 (0x45).
    if u16::from_ne_bytes([h[12], h[13]]) != u16::from_ne_bytes([0x08, 0x00]) || h[14] != 0x45 {
        return None;
    }
    // A whole datagram: MF clear, offset 0 (the reserved and DF bits do not
    // matter to the parser), of at least a header, inside the frame
    // (`total - IP` wraps above any frame length when `total < IP`).
    let payload = usize::from(u16::from_be_bytes([h[16], h[17]])).wrapping_sub(IP);
    if u16::from_be_bytes([h[20], h[21]]) & 0x3fff != 0 || payload > frame.len() - L4 {
        return None;
    }
    Some((h, payload))
}

/// A common frame the reader accepted: its checked header, read at fixed
/// offsets. Only [`Self::udp`], [`Self::tcp`] and [`Self::gre_or_esp`]
/// make one, so holding one means the frame passed their checks.
#[derive(Clone, Copy, Debug)]
pub(super) struct CommonV4<'a> {
    h: &'a [u8; COMMON_LEN],
}

impl<'a> CommonV4<'a> {
    /// A UDP datagram whose length field is right (8 <= length <= payload,
    /// as `parse_l4` checks it).
    #[inline(always)]
    pub(super) fn udp((h, payload): CommonHeader<'a>) -> Option<Self> {
        let udp_len = usize::from(u16::from_be_bytes([h[L4 + 4], h[L4 + 5]]));
        if udp_len < 8 || udp_len > payload {
            return None;
        }
        Some(Self { h })
    }

    /// A TCP segment whose data offset is right (20 <= offset <= payload,
    /// as `parse_l4` checks it; so the fixed header is in the datagram).
    #[inline(always)]
    pub(super) fn tcp((h, payload): CommonHeader<'a>) -> Option<Self> {
        let offset = usize::from(h[L4 + 12] >> 4) * 4;
        if offset < 20 || offset > payload {
            return None;
        }
        Some(Self { h })
    }

    /// A GRE header as `parse_l4` checks it, or ESP of at least a header.
    #[inline(always)]
    pub(super) fn gre_or_esp(frame: &[u8], (h, payload): CommonHeader<'a>) -> Option<Self> {
        match h[23] {
            ip_proto::GRE => {
                GrePacket::new_checked(frame.get(L4..L4 + payload)?).ok()?;
            }
            ip_proto::ESP if payload >= esp::HEADER_LEN => {}
            _ => return None,
        }
        Some(Self { h })
    }

    /// The destination MAC address.
    #[inline(always)]
    pub(super) fn dst_mac(self) -> [u8; 6] {
        let h = self.h;
        [h[0], h[1], h[2], h[3], h[4], h[5]]
    }

    /// The IP protocol: TCP, UDP, GRE or ESP.
    #[inline(always)]
    pub(super) fn proto(self) -> u8 {
        self.h[23]
    }

    /// The source address.
    #[inline(always)]
    pub(super) fn src(self) -> u32 {
        let h = self.h;
        u32::from_be_bytes([h[26], h[27], h[28], h[29]])
    }

    /// The destination address.
    #[inline(always)]
    pub(super) fn dst(self) -> u32 {
        u32::from_be(self.dst_wire())
    }

    /// The destination address as the frame carries it (its four bytes in
    /// native order), for compares without a byte swap.
    #[inline(always)]
    pub(super) fn dst_wire(self) -> u32 {
        let h = self.h;
        u32::from_ne_bytes([h[30], h[31], h[32], h[33]])
    }

    /// The source and destination ports, in one load (TCP and UDP only).
    #[inline(always)]
    pub(super) fn ports(self) -> (u16, u16) {
        let h = self.h;
        let ports = u32::from_be_bytes([h[L4], h[L4 + 1], h[L4 + 2], h[L4 + 3]]);
        ((ports >> 16) as u16, ports as u16)
    }

    /// The source port (TCP and UDP only).
    #[inline(always)]
    pub(super) fn src_port(self) -> u16 {
        self.ports().0
    }

    /// The destination port (TCP and UDP only).
    #[inline(always)]
    pub(super) fn dst_port(self) -> u16 {
        self.ports().1
    }

    /// The TCP flags (TCP only).
    #[inline(always)]
    pub(super) fn flags(self) -> u8 {
        self.h[L4 + 13]
    }

    /// The flow as the general path sees it (TCP and UDP only).
    pub(super) fn flow(self) -> Flow {
        let (client_port, server_port) = self.ports();
        Flow {
            client: IpAddr::V4(self.src().into()),
            vip: IpAddr::V4(self.dst().into()),
            client_port,
            server_port,
            proto: self.proto(),
        }
    }
}

/// The whole reader, one call: whenever this returns `Some`, `parse_frame`
/// would have returned `Ok` with these fields; any other frame returns
/// `None`. (`Dataplane::judge_into` takes the same steps with one dispatch
/// on the protocol.)
#[cfg(test)]
pub(super) fn common_v4(frame: &[u8]) -> Option<CommonV4<'_>> {
    let header = common_ipv4(frame)?;
    match header.0[23] {
        ip_proto::UDP => CommonV4::udp(header),
        ip_proto::TCP => CommonV4::tcp(header),
        _ => CommonV4::gre_or_esp(frame, header),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::{parse_frame, Fragment, FrameKind, L4};
    use crate::pipeline::tests::{arb_frame, frame, frame_of, VIP};
    use crate::pipeline::SYN;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1024))]
        /// Whenever the shortcut reads a frame, the general parser accepts
        /// it and reads the same fields.
        #[test]
        fn common_frames_read_as_the_parser_reads_them(f in arb_frame()) {
            if let Some(c) = common_v4(&f) {
                let info = parse_frame(&f);
                prop_assert!(info.is_ok(), "shortcut read a frame the parser rejects: {info:?}");
                let Ok(info) = info else { unreachable!() };
                let FrameKind::Ipv4(ip) = info.kind else {
                    return Err(TestCaseError::fail(format!("not IPv4: {info:?}")));
                };
                prop_assert_eq!(ip.src, IpAddr::V4(c.src().into()));
                prop_assert_eq!(ip.dst, IpAddr::V4(c.dst().into()));
                prop_assert_eq!(ip.fragment, Fragment::Whole);
                match ip.l4 {
                    L4::Tcp { src_port, dst_port, flags } => {
                        prop_assert_eq!((c.proto(), c.src_port(), c.dst_port(), c.flags()), (6, src_port, dst_port, flags));
                    }
                    L4::Udp { src_port, dst_port } => {
                        prop_assert_eq!((c.proto(), c.src_port(), c.dst_port()), (17, src_port, dst_port));
                    }
                    L4::Gre { .. } => prop_assert_eq!((c.proto(), ip.proto), (47, 47)),
                    L4::Esp { .. } => prop_assert_eq!((c.proto(), ip.proto), (50, 50)),
                    other => return Err(TestCaseError::fail(format!("l4 {other:?}"))),
                }
            }
        }
    }

    #[test]
    fn unmodified_frames_take_the_shortcut() {
        for tcp in [false, true] {
            // Padded to Ethernet's minimum of 60 bytes.
            let f = frame(tcp, [192, 0, 2, 1], 1234, 80, SYN, 18);
            let c = common_v4(&f).expect("common frame");
            assert_eq!((c.src_port(), c.dst_port()), (1234, 80));
            assert_eq!(c.dst(), u32::from_be_bytes(VIP));
        }
        // A VLAN tag, a fragment, IP options: the general parser's.
        let mut tagged = frame(false, [192, 0, 2, 1], 1, 2, 0, 0);
        tagged.splice(12..12, [0x81, 0x00, 0, 5]);
        assert!(common_v4(&tagged).is_none());
        let mut frag = frame(false, [192, 0, 2, 1], 1, 2, 0, 0);
        frag[20] |= 0x20;
        assert!(common_v4(&frag).is_none());
        let mut opts = frame(false, [192, 0, 2, 1], 1, 2, 0, 0);
        opts[14] = 0x46;
        assert!(common_v4(&opts).is_none());
        // Shorter than any Ethernet frame: the general parser's.
        assert!(common_v4(&frame(false, [192, 0, 2, 1], 1, 2, 0, 11)).is_none());
        // GRE and ESP take it too, with their addresses.
        for proto in [47, 50] {
            let f = frame_of(proto, [192, 0, 2, 1], 1, 2, 0, 14);
            let c = common_v4(&f).expect("common frame");
            assert_eq!(
                (c.proto(), c.src()),
                (proto, u32::from_be_bytes([192, 0, 2, 1]))
            );
        }
    }
}
