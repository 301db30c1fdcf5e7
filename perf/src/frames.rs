//! 64-byte test frames for the pipeline bench: the builders write into
//! fixed 64-byte slots (the frame is 60 bytes, as a NIC hands it over
//! without its FCS) so a pool is one flat buffer, like a UMEM.
//!
//! Only the fields the dataplane reads are meaningful; checksums are filled
//! where cheap (IPv4 header) because the dataplane never verifies them.

#![forbid(unsafe_code)]

use std::net::Ipv4Addr;

use shoal_dataplane::mac::Mac;
use shoal_dataplane::wire::{ethernet, ethertype, ip_proto, tcp, udp, Ipv4Packet, TcpSegment};
use shoal_testkit::frame::{self, write_ethernet, write_pptp_gre, write_tcp, write_udp, Ipv4};

/// Bytes of a minimum Ethernet frame without its FCS.
pub const FRAME_LEN: usize = frame::MIN_FRAME_LEN;
/// Slot size of a frame in a pool.
pub const STRIDE: usize = 64;

/// The source MAC of bench clients.
const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xc8];
/// Where the IPv4 header starts in an untagged frame.
const L3: usize = ethernet::HEADER_LEN;
/// Where the transport header starts (no IPv4 options).
const L4: usize = L3 + 20;

/// The transport of a test frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// TCP with these flags.
    Tcp {
        /// Flags byte.
        flags: u8,
    },
    /// UDP.
    Udp,
    /// Enhanced GRE (PPTP) carrying PPP.
    Gre,
}

/// Writes a 60-byte IPv4 frame from `client:sport` to `vip:dport` into
/// `slot` (at least [`FRAME_LEN`] bytes). The IPv4 identification is the
/// source port (the GRE call ID for GRE); don't fragment is set.
pub fn write_ipv4(
    slot: &mut [u8],
    dst_mac: Mac,
    client: Ipv4Addr,
    vip: Ipv4Addr,
    sport: u16,
    dport: u16,
    transport: Transport,
) {
    let f = &mut slot[..FRAME_LEN];
    f.fill(0);
    write_ethernet(f, dst_mac.0, CLIENT_MAC, ethertype::IPV4);
    let (proto, l4_len) = match transport {
        Transport::Tcp { .. } => (ip_proto::TCP, tcp::MIN_HEADER_LEN),
        Transport::Udp => (ip_proto::UDP, udp::HEADER_LEN + 18),
        Transport::Gre => (ip_proto::GRE, frame::PPTP_GRE_LEN),
    };
    let ip = Ipv4 {
        ident: sport,
        ..Ipv4::new(client, vip, proto)
    };
    ip.write(&mut f[L3..], l4_len);
    let l4 = &mut f[L4..];
    match transport {
        Transport::Tcp { flags } => write_tcp(l4, sport, dport, flags),
        Transport::Udp => write_udp(l4, sport, dport, l4_len),
        Transport::Gre => write_pptp_gre(l4, sport, 1),
    }
}

/// Rewrites the IPv4 source address and transport source port of a frame
/// written by [`write_ipv4`] (the IPv4 checksum is left stale: the
/// dataplane does not verify it, and a real spoofer's would be right).
pub fn respoof(slot: &mut [u8], client: Ipv4Addr, sport: u16) {
    Ipv4Packet::new_unchecked(&mut slot[L3..L4]).set_src(client);
    // The source port sits at the same offset in TCP and UDP.
    TcpSegment::new_unchecked(&mut slot[L4..L4 + tcp::MIN_HEADER_LEN]).set_src_port(sport);
}

/// A pool of frames in one flat buffer, [`STRIDE`] bytes apart.
#[derive(Clone, Debug)]
pub struct Pool {
    buf: Vec<u8>,
    len: usize,
}

impl Pool {
    /// `len` zeroed slots.
    pub fn new(len: usize) -> Self {
        Self {
            buf: vec![0u8; len * STRIDE],
            len,
        }
    }

    /// Number of frames.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the pool holds no frame.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Frame `i`.
    pub fn frame(&self, i: usize) -> &[u8] {
        &self.buf[i * STRIDE..i * STRIDE + FRAME_LEN]
    }

    /// Slot `i`, for writing.
    pub fn slot_mut(&mut self, i: usize) -> &mut [u8] {
        &mut self.buf[i * STRIDE..(i + 1) * STRIDE]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_dataplane::mac::unicast_mac;
    use shoal_dataplane::packet::{parse_frame, FrameKind, L4};
    use shoal_dataplane::wire::tcp::flags::SYN;

    const VIP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 100);

    #[test]
    fn frames_parse_as_what_they_claim() {
        let mut slot = [0u8; STRIDE];
        let c = Ipv4Addr::new(11, 2, 3, 4);
        for t in [
            Transport::Tcp { flags: SYN },
            Transport::Udp,
            Transport::Gre,
        ] {
            write_ipv4(&mut slot, unicast_mac(VIP), c, VIP, 4242, 80, t);
            let info = parse_frame(&slot[..FRAME_LEN]).expect("parses");
            let FrameKind::Ipv4(ip) = info.kind else {
                panic!("not IPv4: {:?}", info.kind)
            };
            assert_eq!(ip.src, c);
            assert_eq!(ip.dst, VIP);
            match (t, ip.l4) {
                (
                    Transport::Tcp { .. },
                    L4::Tcp {
                        src_port, flags, ..
                    },
                ) => {
                    assert_eq!((src_port, flags), (4242, SYN));
                }
                (Transport::Udp, L4::Udp { src_port, dst_port }) => {
                    assert_eq!((src_port, dst_port), (4242, 80));
                }
                (Transport::Gre, L4::Gre { .. }) => {}
                (t, l4) => panic!("{t:?} parsed as {l4:?}"),
            }
        }
    }

    #[test]
    fn respoof_changes_source_only() {
        let mut slot = [0u8; STRIDE];
        write_ipv4(
            &mut slot,
            unicast_mac(VIP),
            Ipv4Addr::new(11, 0, 0, 1),
            VIP,
            1,
            80,
            Transport::Tcp { flags: SYN },
        );
        respoof(&mut slot, Ipv4Addr::new(12, 0, 0, 2), 999);
        let info = parse_frame(&slot[..FRAME_LEN]).expect("parses");
        let FrameKind::Ipv4(ip) = info.kind else {
            panic!("not IPv4")
        };
        assert_eq!(ip.src, Ipv4Addr::new(12, 0, 0, 2));
        assert!(matches!(
            ip.l4,
            L4::Tcp {
                src_port: 999,
                dst_port: 80,
                ..
            }
        ));
    }
}
