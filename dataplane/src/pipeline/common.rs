//! The common frame: untagged Ethernet II, option-less IPv4, a whole TCP,
//! UDP, GRE or ESP datagram, read at fixed offsets.

use std::net::IpAddr;

use super::general::Flow;
use crate::wire::{esp, ip_proto, GrePacket};

/// The fields the verdict needs from the common frame (see [`common_v4`]).
#[derive(Clone, Copy, Debug)]
pub(super) struct CommonV4 {
    pub(super) src: u32,
    pub(super) dst: u32,
    pub(super) proto: u8,
    /// TCP and UDP only (0 for GRE and ESP).
    pub(super) src_port: u16,
    pub(super) dst_port: u16,
    /// TCP only.
    pub(super) flags: u8,
}

impl CommonV4 {
    /// The flow as the general path sees it.
    pub(super) fn flow(&self) -> Flow {
        Flow {
            client: IpAddr::V4(self.src.into()),
            vip: IpAddr::V4(self.dst.into()),
            client_port: self.src_port,
            server_port: self.dst_port,
            proto: self.proto,
        }
    }
}

/// Bytes the common frame is read from at fixed offsets: Ethernet, the
/// option-less IPv4 header and the fixed TCP header (every Ethernet frame
/// has them: the minimum is 60 bytes).
pub(super) const COMMON_LEN: usize = 14 + 20 + 20;
pub(super) const ETH: usize = 14;
pub(super) const IP: usize = 20;
/// Where the transport header starts in a common frame.
pub(super) const L4: usize = ETH + IP;

/// The first [`COMMON_LEN`] bytes of a common frame and the length of its
/// IPv4 payload.
pub(super) type CommonHeader<'a> = (&'a [u8; COMMON_LEN], usize);

/// The Ethernet and IPv4 part of [`common_v4`]: untagged Ethernet II, IPv4
/// without options, a whole datagram inside the frame, at least
/// [`COMMON_LEN`] bytes, checked as [`parse_frame`] checks them.
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

impl CommonV4 {
    /// A UDP datagram whose length field is right (8 <= length <= payload,
    /// as `parse_l4` checks it).
    #[inline(always)]
    pub(super) fn udp((h, payload): CommonHeader<'_>) -> Option<Self> {
        let udp_len = usize::from(u16::from_be_bytes([h[L4 + 4], h[L4 + 5]]));
        if udp_len < 8 || udp_len > payload {
            return None;
        }
        Some(Self::ports(h, ip_proto::UDP, 0))
    }

    /// A TCP segment whose data offset is right (20 <= offset <= payload,
    /// as `parse_l4` checks it; so the fixed header is in the datagram).
    #[inline(always)]
    pub(super) fn tcp((h, payload): CommonHeader<'_>) -> Option<Self> {
        let offset = usize::from(h[L4 + 12] >> 4) * 4;
        if offset < 20 || offset > payload {
            return None;
        }
        Some(Self::ports(h, ip_proto::TCP, h[L4 + 13]))
    }

    /// A GRE header as `parse_l4` checks it, or ESP of at least a header.
    #[inline(always)]
    pub(super) fn gre_or_esp(frame: &[u8], (h, payload): CommonHeader<'_>) -> Option<Self> {
        let proto = h[23];
        match proto {
            ip_proto::GRE => {
                GrePacket::new_checked(frame.get(L4..L4 + payload)?).ok()?;
            }
            ip_proto::ESP if payload >= esp::HEADER_LEN => {}
            _ => return None,
        }
        Some(Self {
            src: u32::from_be_bytes([h[26], h[27], h[28], h[29]]),
            dst: u32::from_be_bytes([h[30], h[31], h[32], h[33]]),
            proto,
            src_port: 0,
            dst_port: 0,
            flags: 0,
        })
    }

    #[inline(always)]
    pub(super) fn ports(h: &[u8; COMMON_LEN], proto: u8, flags: u8) -> Self {
        // Both ports in one load.
        let ports = u32::from_be_bytes([h[L4], h[L4 + 1], h[L4 + 2], h[L4 + 3]]);
        Self {
            src: u32::from_be_bytes([h[26], h[27], h[28], h[29]]),
            dst: u32::from_be_bytes([h[30], h[31], h[32], h[33]]),
            proto,
            src_port: (ports >> 16) as u16,
            dst_port: ports as u16,
            flags,
        }
    }
}

/// Reads the common frame — untagged Ethernet II, IPv4 without options,
/// a whole datagram, TCP, UDP, GRE or ESP, at least [`COMMON_LEN`] bytes —
/// at fixed offsets, with the very checks [`parse_frame`] makes on such a
/// frame, so that whenever this returns `Some`, `parse_frame` would have
/// returned `Ok` with these fields. Any other frame (options, VLAN tags,
/// fragments, other protocols, anything malformed) returns `None` and
/// takes the full parser, which names the reason. ([`Dataplane::judge`]
/// takes the same steps with one dispatch on the protocol.)
#[cfg(test)]
pub(super) fn common_v4(frame: &[u8]) -> Option<CommonV4> {
    let header = common_ipv4(frame)?;
    match header.0[23] {
        ip_proto::UDP => CommonV4::udp(header),
        ip_proto::TCP => CommonV4::tcp(header),
        _ => CommonV4::gre_or_esp(frame, header),
    }
}

/// The fields of a frame [`common_ipv4`] and [`CommonV4::tcp`] (or, when
/// `udp`, [`CommonV4::udp`]) accepted, read again without the checks.
/// `None` only for a frame shorter than [`COMMON_LEN`], which they never
/// accept.
#[inline(always)]
pub(super) fn common_fields(frame: &[u8], udp: bool) -> Option<CommonV4> {
    let h = frame.first_chunk::<COMMON_LEN>()?;
    Some(if udp {
        CommonV4::ports(h, ip_proto::UDP, 0)
    } else {
        CommonV4::ports(h, ip_proto::TCP, h[L4 + 13])
    })
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
                prop_assert_eq!(ip.src, IpAddr::V4(c.src.into()));
                prop_assert_eq!(ip.dst, IpAddr::V4(c.dst.into()));
                prop_assert_eq!(ip.fragment, Fragment::Whole);
                match ip.l4 {
                    L4::Tcp { src_port, dst_port, flags } => {
                        prop_assert_eq!((c.proto, c.src_port, c.dst_port, c.flags), (6, src_port, dst_port, flags));
                    }
                    L4::Udp { src_port, dst_port } => {
                        prop_assert_eq!((c.proto, c.src_port, c.dst_port), (17, src_port, dst_port));
                    }
                    L4::Gre { .. } => prop_assert_eq!((c.proto, ip.proto), (47, 47)),
                    L4::Esp { .. } => prop_assert_eq!((c.proto, ip.proto), (50, 50)),
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
            assert_eq!((c.src_port, c.dst_port), (1234, 80));
            assert_eq!(c.dst, u32::from_be_bytes(VIP));
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
                (c.proto, c.src),
                (proto, u32::from_be_bytes([192, 0, 2, 1]))
            );
        }
    }
}
