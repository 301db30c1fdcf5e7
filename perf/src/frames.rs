//! 64-byte test frames for the pipeline bench: the builders write into
//! fixed 64-byte slots (the frame is 60 bytes, as a NIC hands it over
//! without its FCS) so a pool is one flat buffer, like a UMEM.
//!
//! Only the fields the dataplane reads are meaningful; checksums are filled
//! where cheap (IPv4 header) because the dataplane never verifies them.

#![forbid(unsafe_code)]

use std::net::Ipv4Addr;

use shoal_dataplane::mac::Mac;
use shoal_dataplane::wire::ipv4::ipv4_checksum;

/// Bytes of a minimum Ethernet frame without its FCS.
pub const FRAME_LEN: usize = 60;
/// Slot size of a frame in a pool.
pub const STRIDE: usize = 64;

/// Offsets inside an IPv4 frame (no options).
pub const SRC_IP: usize = 26;
/// Offset of the transport source port.
pub const SRC_PORT: usize = 34;

/// TCP flag bits.
pub const SYN: u8 = 0x02;
/// TCP ACK flag.
pub const ACK: u8 = 0x10;

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
/// `slot` (at least [`FRAME_LEN`] bytes).
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
    f[0..6].copy_from_slice(&dst_mac.0);
    f[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 0xc8]);
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let (proto, l4_len) = match transport {
        Transport::Tcp { .. } => (6u8, 20usize),
        Transport::Udp => (17, 8 + 18),
        Transport::Gre => (47, 16),
    };
    let ip = &mut f[14..34];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&((20 + l4_len) as u16).to_be_bytes());
    ip[4..6].copy_from_slice(&sport.to_be_bytes());
    ip[6..8].copy_from_slice(&0x4000u16.to_be_bytes());
    ip[8] = 64;
    ip[9] = proto;
    ip[12..16].copy_from_slice(&client.octets());
    ip[16..20].copy_from_slice(&vip.octets());
    let c = ipv4_checksum(ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let l4 = &mut f[34..];
    match transport {
        Transport::Tcp { flags } => {
            l4[0..2].copy_from_slice(&sport.to_be_bytes());
            l4[2..4].copy_from_slice(&dport.to_be_bytes());
            l4[4..8].copy_from_slice(&1u32.to_be_bytes());
            l4[12] = 5 << 4;
            l4[13] = flags;
            l4[14..16].copy_from_slice(&65535u16.to_be_bytes());
        }
        Transport::Udp => {
            l4[0..2].copy_from_slice(&sport.to_be_bytes());
            l4[2..4].copy_from_slice(&dport.to_be_bytes());
            l4[4..6].copy_from_slice(&(l4_len as u16).to_be_bytes());
        }
        Transport::Gre => {
            // Key and sequence present, version 1 (enhanced GRE), PPP.
            l4[0..4].copy_from_slice(&[0x30, 0x01, 0x88, 0x0b]);
            l4[4..6].copy_from_slice(&4u16.to_be_bytes());
            l4[6..8].copy_from_slice(&sport.to_be_bytes());
            l4[8..12].copy_from_slice(&1u32.to_be_bytes());
            l4[12..16].copy_from_slice(&[0xff, 0x03, 0x00, 0x21]);
        }
    }
}

/// Rewrites the IPv4 source address and transport source port of a frame
/// written by [`write_ipv4`] (the IPv4 checksum is left stale: the
/// dataplane does not verify it, and a real spoofer's would be right).
pub fn respoof(slot: &mut [u8], client: Ipv4Addr, sport: u16) {
    slot[SRC_IP..SRC_IP + 4].copy_from_slice(&client.octets());
    slot[SRC_PORT..SRC_PORT + 2].copy_from_slice(&sport.to_be_bytes());
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
