//! Seed inputs: frames that reach every rule of the `classify` cluster,
//! capture files in the formats the pcap reader knows, and the on-disk
//! corpus directory libFuzzer reads and grows.
//!
//! Real traffic comes from the shared tcpdump corpus (read by
//! `src/bin/seeds.rs`); it is rich in odd encapsulations but almost never
//! addressed to our VIPs, so [`cluster_frames`] adds frames that are: every
//! rule's port over TCP and UDP on both families, fragments, GRE after PPTP,
//! ESP after IKE, ICMP errors, ARP and neighbour solicitations for the VIPs,
//! IGMP, a heartbeat, a VLAN tag. The tcpdump corpus has only classic pcap
//! files, so [`capture_files`] writes pcapng in both byte orders (and a
//! nanosecond classic file) around given frames.

use std::collections::HashSet;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use shoal_dataplane::mac::unicast_mac;
use shoal_dataplane::wire::ethertype;
use shoal_dataplane::wire::ip_proto;
use shoal_dataplane::wire::tcp::flags::{ACK, FIN, RST, SYN};
use shoal_testkit::frame::{self, padded, pptp_gre, tcp, udp, vlan_tagged, BROADCAST, CLIENT_MAC};

use crate::classify::{RULE_PORTS, VIP, VIP6};

fn cluster_mac() -> [u8; 6] {
    unicast_mac(VIP).0
}

/// An Ethernet frame from a client MAC to `dst`.
fn eth(dst: [u8; 6], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    frame::ethernet(dst, CLIENT_MAC, ethertype, payload)
}

/// An IPv4 packet (to the cluster MAC) with fragment word `frag` and `id`,
/// padded to Ethernet's 60-byte minimum.
pub fn ipv4(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    proto: u8,
    payload: &[u8],
    id: u16,
    frag: u16,
) -> Vec<u8> {
    let header = frame::Ipv4 {
        ident: id,
        fragment: frag,
        ..frame::Ipv4::new(src, dst, proto)
    };
    header.frame(cluster_mac(), payload)
}

/// An IPv6 packet (to the cluster MAC) with next header `next`.
pub fn ipv6(src: Ipv6Addr, dst: Ipv6Addr, next: u8, hop_limit: u8, payload: &[u8]) -> Vec<u8> {
    let packet = frame::ipv6(src, dst, next, hop_limit, payload);
    eth(cluster_mac(), ethertype::IPV6, &packet)
}

/// A UDP header and `payload` zero bytes.
fn udp_zeros(sport: u16, dport: u16, payload: usize) -> Vec<u8> {
    udp(sport, dport, &vec![0; payload])
}

/// TCP from `client` to the IPv4 VIP.
pub fn tcp4(client: Ipv4Addr, sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    ipv4(
        client,
        VIP,
        ip_proto::TCP,
        &tcp(sport, dport, flags),
        1,
        0x4000,
    )
}

/// TCP from `client` to the IPv6 VIP.
pub fn tcp6(client: Ipv6Addr, sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    ipv6(client, VIP6, ip_proto::TCP, 64, &tcp(sport, dport, flags))
}

/// UDP from `client` to the IPv4 VIP.
pub fn udp4(client: Ipv4Addr, sport: u16, dport: u16) -> Vec<u8> {
    ipv4(
        client,
        VIP,
        ip_proto::UDP,
        &udp_zeros(sport, dport, 4),
        1,
        0,
    )
}

/// UDP from `client` to the IPv6 VIP.
pub fn udp6(client: Ipv6Addr, sport: u16, dport: u16) -> Vec<u8> {
    ipv6(client, VIP6, ip_proto::UDP, 64, &udp_zeros(sport, dport, 4))
}

fn client4(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(192, 0, 2, n)
}

fn client6(n: u16) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, n, 0, 0, 0, 0, n + 1)
}

/// Frames addressed to the `classify` cluster: see the module docs.
pub fn cluster_frames() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for (i, &port) in RULE_PORTS.iter().enumerate() {
        let n = u8::try_from(i).unwrap_or(u8::MAX);
        let c4 = client4(n + 1);
        let c6 = client6(u16::from(n) + 1);
        for flags in [SYN, ACK, FIN | ACK, RST] {
            out.push(tcp4(c4, 40000 + u16::from(n), port, flags));
            out.push(tcp6(c6, 40000 + u16::from(n), port, flags));
        }
        out.push(udp4(c4, 50000, port));
        out.push(udp6(c6, 50000, port));
    }

    // All fragments of one UDP datagram to DNS: first (MF, offset 0), later
    // (offset 24 bytes).
    let mut first = udp_zeros(5353, 53, 16);
    first[4..6].copy_from_slice(&1000u16.to_be_bytes());
    first.truncate(24);
    out.push(ipv4(client4(40), VIP, 17, &first, 77, 0x2000));
    out.push(ipv4(client4(40), VIP, 17, &[0u8; 16], 77, 3));
    // IPv6 fragment header (44) ahead of a first fragment of UDP.
    let mut frag6 = vec![17, 0, 0x00, 0x01, 0, 0, 0, 9];
    frag6.extend_from_slice(&udp_zeros(5353, 53, 8));
    out.push(ipv6(client6(40), VIP6, 44, 64, &frag6));

    // PPTP control connection, then enhanced GRE (PPP) from that client.
    let pptp = client4(50);
    out.push(tcp4(pptp, 1050, 1723, SYN));
    out.push(tcp4(pptp, 1050, 1723, ACK));
    let gre = pptp_gre(0x1234, 1);
    out.push(ipv4(pptp, VIP, 47, &gre, 7, 0));
    out.push(ipv4(client4(51), VIP, 47, &gre, 8, 0));

    // IKE, then ESP from that client.
    let ike = client4(60);
    out.push(udp4(ike, 500, 500));
    let esp = [0, 0, 0x10, 0x01, 0, 0, 0, 1, 0xaa, 0xbb, 0xcc, 0xdd];
    out.push(ipv4(ike, VIP, 50, &esp, 9, 0));

    // ICMP destination unreachable quoting a segment the VIP sent.
    let mut quoted = ipv4(VIP, client4(70), 6, &tcp(80, 40070, ACK), 3, 0x4000);
    let quoted = quoted.split_off(14);
    let mut icmp = vec![3, 4, 0, 0, 0, 0, 0x05, 0xdc];
    icmp.extend_from_slice(&quoted[..28]);
    out.push(ipv4(client4(70), VIP, 1, &icmp, 10, 0));
    // Echo request to the VIP (no ports: the default host's).
    out.push(ipv4(client4(71), VIP, 1, &[8, 0, 0, 0, 0, 1, 0, 1], 11, 0));

    // ARP request for the VIP, broadcast.
    let arp = frame::arp_request(CLIENT_MAC, client4(80), VIP);
    out.push(padded(eth(BROADCAST, ethertype::ARP, &arp)));

    // Neighbour solicitation for the IPv6 VIP (hop limit 255).
    let option = frame::source_link_layer_option(CLIENT_MAC);
    let ns = frame::neighbour_solicitation(client6(81), VIP6, &option);
    out.push(eth(cluster_mac(), ethertype::IPV6, &ns));

    // IGMPv2 membership report for the cluster's group.
    let group = Ipv4Addr::new(239, 255, 0, 100);
    let mut igmp = vec![0x16, 0, 0, 0];
    igmp.extend_from_slice(&group.octets());
    out.push(ipv4(client4(82), group, 2, &igmp, 12, 0));

    // A heartbeat-typed frame (its body is the control plane's business).
    out.push(eth(BROADCAST, ethertype::HEARTBEAT, &[0x5a; 46]));

    // A VLAN-tagged SYN.
    let syn = tcp4(client4(90), 1234, 80, SYN);
    out.push(vlan_tagged(&syn, ethertype::VLAN, 10));

    // To the cluster MAC but not a VIP; not IP at all.
    out.push(ipv4(
        client4(91),
        Ipv4Addr::new(10, 0, 0, 11),
        6,
        &tcp(1, 22, SYN),
        1,
        0,
    ));
    out.push(padded(eth(cluster_mac(), 0x88b5, &[])));
    out
}

/// Capture files around `frames`: pcapng little and big endian (section
/// header, an interface with `if_tsresol` and `if_tsoffset`, enhanced,
/// simple and obsolete packet blocks, one block type the reader skips, and a
/// second section), and a big-endian nanosecond classic pcap file.
pub fn capture_files(frames: &[&[u8]]) -> Vec<Vec<u8>> {
    vec![
        pcapng(frames, false),
        pcapng(frames, true),
        classic_nanos_big_endian(frames),
    ]
}

fn put16(out: &mut Vec<u8>, v: u16, big: bool) {
    out.extend_from_slice(&if big {
        v.to_be_bytes()
    } else {
        v.to_le_bytes()
    });
}

fn put32(out: &mut Vec<u8>, v: u32, big: bool) {
    out.extend_from_slice(&if big {
        v.to_be_bytes()
    } else {
        v.to_le_bytes()
    });
}

fn len32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// One pcapng block: type, length, `body` padded to 4 bytes, length again.
fn block(out: &mut Vec<u8>, kind: u32, body: &[u8], big: bool) {
    let padded = body.len().div_ceil(4) * 4;
    let total = len32(12 + padded);
    put32(out, kind, big);
    put32(out, total, big);
    out.extend_from_slice(body);
    out.resize(out.len() + padded - body.len(), 0);
    put32(out, total, big);
}

fn pcapng(frames: &[&[u8]], big: bool) -> Vec<u8> {
    let mut out = Vec::new();
    for section in 0..2 {
        let mut shb = Vec::new();
        put32(&mut shb, 0x1a2b_3c4d, big);
        put16(&mut shb, 1, big);
        put16(&mut shb, 0, big);
        shb.extend_from_slice(&u64::MAX.to_le_bytes()); // section length unknown
        block(&mut out, 0x0a0d_0d0a, &shb, big);

        // Interface 0: Ethernet, nanosecond resolution, 1 s offset.
        let mut idb = Vec::new();
        put16(&mut idb, 1, big);
        put16(&mut idb, 0, big);
        put32(&mut idb, 65535, big);
        put16(&mut idb, 9, big); // if_tsresol
        put16(&mut idb, 1, big);
        idb.extend_from_slice(&[9, 0, 0, 0]);
        put16(&mut idb, 14, big); // if_tsoffset
        put16(&mut idb, 8, big);
        if big {
            idb.extend_from_slice(&1i64.to_be_bytes());
        } else {
            idb.extend_from_slice(&1i64.to_le_bytes());
        }
        put16(&mut idb, 0, big); // opt_endofopt
        put16(&mut idb, 0, big);
        block(&mut out, 1, &idb, big);
        // Interface 1: Ethernet, binary (2^-10 s) resolution.
        let mut idb2 = Vec::new();
        put16(&mut idb2, 1, big);
        put16(&mut idb2, 0, big);
        put32(&mut idb2, 0, big);
        put16(&mut idb2, 9, big);
        put16(&mut idb2, 1, big);
        idb2.extend_from_slice(&[0x8a, 0, 0, 0]);
        block(&mut out, 1, &idb2, big);

        // A name resolution block: skipped by the reader.
        block(&mut out, 4, &[0, 0, 0, 0], big);

        for (i, frame) in frames.iter().enumerate() {
            let interface = len32((i + section) % 2);
            match i % 3 {
                0 => {
                    let mut epb = Vec::new();
                    put32(&mut epb, interface, big);
                    put32(&mut epb, 0x0005_e000, big);
                    put32(&mut epb, len32(i * 1000), big);
                    put32(&mut epb, len32(frame.len()), big);
                    put32(&mut epb, len32(frame.len() + 4), big);
                    epb.extend_from_slice(frame);
                    block(&mut out, 6, &epb, big);
                }
                1 => {
                    let mut spb = Vec::new();
                    put32(&mut spb, len32(frame.len()), big);
                    spb.extend_from_slice(frame);
                    block(&mut out, 3, &spb, big);
                }
                _ => {
                    let mut opb = Vec::new();
                    put16(&mut opb, u16::try_from(interface).unwrap_or(0), big);
                    put16(&mut opb, 0, big); // drops count
                    put32(&mut opb, 0, big);
                    put32(&mut opb, len32(i), big);
                    put32(&mut opb, len32(frame.len()), big);
                    put32(&mut opb, len32(frame.len()), big);
                    opb.extend_from_slice(frame);
                    block(&mut out, 2, &opb, big);
                }
            }
        }
    }
    out
}

fn classic_nanos_big_endian(frames: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    put32(&mut out, 0xa1b2_3c4d, true);
    put16(&mut out, 2, true);
    put16(&mut out, 4, true);
    put32(&mut out, 0, true);
    put32(&mut out, 0, true);
    put32(&mut out, 65535, true);
    put32(&mut out, 1, true);
    for (i, frame) in frames.iter().enumerate() {
        put32(&mut out, 1_700_000_000 + len32(i), true);
        put32(&mut out, 999_999_999, true);
        put32(&mut out, len32(frame.len()), true);
        put32(&mut out, len32(frame.len() + 100), true);
        out.extend_from_slice(frame);
    }
    out
}

/// A libFuzzer corpus directory being seeded. Inputs are named by a hash of
/// their content, so seeding twice writes nothing new and inputs libFuzzer
/// added stay untouched.
#[derive(Debug)]
pub struct Corpus {
    dir: PathBuf,
    seen: HashSet<u64>,
    written: usize,
    present: usize,
}

impl Corpus {
    /// Opens (creating) `dir`.
    ///
    /// # Errors
    /// When the directory cannot be created.
    pub fn open(dir: &Path) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            seen: HashSet::new(),
            written: 0,
            present: 0,
        })
    }

    /// Adds one input unless an identical one is already there.
    ///
    /// # Errors
    /// When the file cannot be written.
    pub fn add(&mut self, input: &[u8]) -> io::Result<()> {
        let hash = fnv1a(input);
        if !self.seen.insert(hash) {
            return Ok(());
        }
        let path = self.dir.join(format!("seed-{hash:016x}"));
        if path.exists() {
            self.present += 1;
        } else {
            std::fs::write(&path, input)?;
            self.written += 1;
        }
        Ok(())
    }

    /// Distinct inputs offered so far.
    pub fn distinct(&self) -> usize {
        self.seen.len()
    }

    /// Inputs written by this run (the others were already there).
    pub fn written(&self) -> usize {
        self.written
    }

    /// Inputs that were already present.
    pub fn present(&self) -> usize {
        self.present
    }
}

/// FNV-1a, 64 bits: stable across runs and platforms (file names).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Whether `ip` is one of the `classify` cluster's VIPs.
pub fn is_vip(ip: IpAddr) -> bool {
    ip == IpAddr::V4(VIP) || ip == IpAddr::V6(VIP6)
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_dataplane::packet::{parse_frame, FrameKind};
    use shoal_dataplane::pcap::{frames, LINKTYPE_ETHERNET};

    #[test]
    fn cluster_frames_parse_and_most_are_for_a_vip() {
        let all = cluster_frames();
        let mut for_vip = 0;
        for f in &all {
            let info = parse_frame(f).unwrap_or_else(|m| panic!("{m:?}: {f:02x?}"));
            if let FrameKind::Ipv4(ip) | FrameKind::Ipv6(ip) = info.kind {
                if is_vip(ip.dst) {
                    for_vip += 1;
                }
            }
        }
        assert!(for_vip * 4 >= all.len() * 3, "{for_vip} of {}", all.len());
    }

    #[test]
    fn capture_files_read_back_every_frame() {
        let all = cluster_frames();
        let refs: Vec<&[u8]> = all.iter().map(Vec::as_slice).collect();
        for file in capture_files(&refs) {
            let read: Vec<_> = frames(&file)
                .expect("header")
                .collect::<Result<Vec<_>, _>>()
                .expect("no error item");
            // pcapng files hold two sections of every frame.
            let copies = read.len() / refs.len();
            assert!(copies == 1 || copies == 2, "{} frames read", read.len());
            assert_eq!(read.len(), copies * refs.len());
            for (got, want) in read.iter().zip(refs.iter().cycle()) {
                assert_eq!(got.data, *want);
                assert_eq!(got.link_type, LINKTYPE_ETHERNET);
            }
        }
    }

    #[test]
    fn corpus_names_by_content_and_skips_duplicates() {
        let dir = std::env::temp_dir().join(format!("shoal-fuzz-seeds-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut c = Corpus::open(&dir).expect("open");
        c.add(b"one").expect("add");
        c.add(b"one").expect("add");
        c.add(b"two").expect("add");
        assert_eq!((c.distinct(), c.written(), c.present()), (2, 2, 0));
        let mut again = Corpus::open(&dir).expect("open");
        again.add(b"two").expect("add");
        assert_eq!((again.written(), again.present()), (0, 1));
        assert_eq!(std::fs::read_dir(&dir).expect("dir").count(), 2);
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
