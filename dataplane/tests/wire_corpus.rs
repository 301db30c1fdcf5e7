//! Replays every capture of the shared tcpdump corpus through the pcap
//! reader and the frame parser: nothing may panic, every Ethernet frame is
//! either summarized or counted by malformed reason, and the corpus must
//! exercise ARP, IPv4, IPv6 and some malformed frames.
//!
//! The corpus lives outside the repository (`/work/shared/corpus/tcpdump`
//! next to the checkout). Without it the test fails, unless
//! `SHOAL_CORPUS_OPTIONAL=1` says it may be skipped.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use shoal_dataplane::packet::{parse_frame, FrameKind, Malformed, L4};
use shoal_dataplane::pcap::{self, LINKTYPE_ETHERNET};

const CORPUS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/corpus/tcpdump");

fn corpus_files() -> Option<Vec<PathBuf>> {
    let dir = Path::new(CORPUS);
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) => {
            let optional = std::env::var("SHOAL_CORPUS_OPTIONAL").is_ok_and(|v| v == "1");
            assert!(
                optional,
                "frame corpus not readable at {} ({err}); set SHOAL_CORPUS_OPTIONAL=1 to skip",
                dir.display()
            );
            eprintln!("SKIPPED: frame corpus missing at {} ({err})", dir.display());
            return None;
        }
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| {
            path.extension()
                .is_some_and(|ext| ext == "pcap" || ext == "pcapng")
        })
        .collect();
    files.sort();
    Some(files)
}

#[derive(Default, Debug)]
struct Tally {
    files: usize,
    unreadable_files: usize,
    files_ending_in_error: usize,
    frames: usize,
    non_ethernet: usize,
    arp: usize,
    ipv4: usize,
    ipv6: usize,
    heartbeat: usize,
    other: usize,
    fragments: usize,
    l4: BTreeMap<&'static str, usize>,
    malformed: BTreeMap<&'static str, usize>,
}

fn l4_name(l4: &L4) -> &'static str {
    match l4 {
        L4::Tcp { .. } => "tcp",
        L4::Udp { .. } => "udp",
        L4::Gre { .. } => "gre",
        L4::Esp { .. } => "esp",
        L4::Icmp { inner: Some(_), .. } => "icmp_error_with_flow",
        L4::Icmp { .. } => "icmp",
        L4::Icmpv6Nd { .. } => "icmpv6_nd",
        L4::Igmp { .. } => "igmp",
        L4::Unparsed => "unparsed",
    }
}

#[test]
fn corpus_replays_without_panic_and_covers_every_family() {
    let Some(files) = corpus_files() else {
        return;
    };
    assert!(!files.is_empty(), "no .pcap or .pcapng files in {CORPUS}");
    let mut tally = Tally::default();
    for path in &files {
        let bytes =
            std::fs::read(path).unwrap_or_else(|err| panic!("read {}: {err}", path.display()));
        tally.files += 1;
        let Ok(iter) = pcap::frames(&bytes) else {
            tally.unreadable_files += 1;
            continue;
        };
        for item in iter {
            let frame = match item {
                Ok(frame) => frame,
                Err(_) => {
                    tally.files_ending_in_error += 1;
                    break;
                }
            };
            tally.frames += 1;
            if frame.link_type != LINKTYPE_ETHERNET {
                tally.non_ethernet += 1;
                continue;
            }
            match parse_frame(frame.data) {
                Ok(info) => {
                    assert!(info.l3_offset <= frame.data.len());
                    match info.kind {
                        FrameKind::Arp(_) => tally.arp += 1,
                        FrameKind::Heartbeat => tally.heartbeat += 1,
                        FrameKind::Other => tally.other += 1,
                        FrameKind::Ipv4(ip) | FrameKind::Ipv6(ip) => {
                            if matches!(info.kind, FrameKind::Ipv4(_)) {
                                tally.ipv4 += 1;
                            } else {
                                tally.ipv6 += 1;
                            }
                            assert!(
                                ip.l4_offset <= frame.data.len(),
                                "{}: {info:?}",
                                path.display()
                            );
                            if ip.fragment != shoal_dataplane::packet::Fragment::Whole {
                                tally.fragments += 1;
                            }
                            *tally.l4.entry(l4_name(&ip.l4)).or_default() += 1;
                        }
                    }
                }
                Err(reason) => *tally.malformed.entry(reason.name()).or_default() += 1,
            }
        }
    }
    eprintln!("corpus tally: {tally:#?}");
    let malformed: usize = tally.malformed.values().sum();
    assert!(tally.arp > 0, "no ARP frames in the corpus");
    assert!(tally.ipv4 > 0, "no IPv4 frames in the corpus");
    assert!(tally.ipv6 > 0, "no IPv6 frames in the corpus");
    assert!(
        malformed > 0,
        "no malformed frames in a corpus built to crash parsers"
    );
    assert!(tally.fragments > 0, "no fragments in the corpus");
    for family in ["tcp", "udp", "gre", "esp", "icmp", "icmpv6_nd", "igmp"] {
        assert!(
            tally.l4.get(family).copied().unwrap_or(0) > 0,
            "no {family} in the corpus"
        );
    }
    // Every counted reason is a known one.
    for name in tally.malformed.keys() {
        assert!(Malformed::ALL.iter().any(|reason| reason.name() == *name));
    }
}
