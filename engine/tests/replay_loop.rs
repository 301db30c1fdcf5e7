//! The pcap-replay backend driven through the poll loops' own batch path
//! (`runtime::drain`): every capture of the shared corpus, three hosts'
//! dataplanes, kept frames into a recording delivery. Each cluster frame is
//! delivered by exactly one host, and every frame is accounted for.

use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::Arc;

use shoal_dataplane::descriptor::DescriptorConfig;
use shoal_dataplane::map::{ClusterMap, View};
use shoal_dataplane::pipeline::Dataplane;
use shoal_dataplane::wire::{ethertype, ip_proto, tcp::flags};
use shoal_engine::io::Delivery;
use shoal_engine::replay::PcapReplay;
use shoal_engine::runtime::drain;
use shoal_testkit::frame::{self, Ipv4};

/// Records what it is given.
#[derive(Default)]
struct Recorder(Vec<Vec<u8>>);

impl Delivery for Recorder {
    fn deliver(&mut self, frames: &[&[u8]]) -> std::io::Result<usize> {
        self.0.extend(frames.iter().map(|f| f.to_vec()));
        Ok(frames.len())
    }
}

#[test]
fn corpus_replayed_through_three_hosts_is_delivered_once() {
    let cfg = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/examples/lab-3host.toml");
    let config = shoal_config::load(&cfg).unwrap();
    let spec = config.spec(0x5eed);
    let view = View::converged(&spec, config.host_ids());
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/corpus/tcpdump");
    assert!(corpus.is_dir(), "corpus missing at {}", corpus.display());
    let mut paths: Vec<_> = std::fs::read_dir(&corpus)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    paths.sort();
    let small = DescriptorConfig {
        capacity: 1 << 12,
        ..DescriptorConfig::default()
    };
    let mut hosts: Vec<(Dataplane, Recorder)> = config
        .host_ids()
        .iter()
        .map(|h| {
            let map = Arc::new(ClusterMap::build(&spec, &view, h, 1));
            (
                Dataplane::new(map, small, h.get() as u64),
                Recorder::default(),
            )
        })
        .collect();
    let mut frames_total = 0u64;
    let mut tick = 0u64;
    // Cluster traffic: 3000 SYNs to the VIP from distinct clients, as a
    // pcap, replayed first.
    let syns = syn_capture(3000);
    frames_total += 3000;
    for (dp, rec) in hosts.iter_mut() {
        let mut io = PcapReplay::from_bytes(syns.clone(), 1, "syns").unwrap();
        drain(&mut io, dp, rec, 64, &mut || 1).unwrap();
    }
    let per_host: Vec<usize> = hosts.iter().map(|(_, r)| r.0.len()).collect();
    assert_eq!(
        per_host.iter().sum::<usize>(),
        3000,
        "each SYN delivered exactly once: {per_host:?}"
    );
    assert!(per_host.iter().all(|&n| n > 800), "shares {per_host:?}");
    for path in &paths {
        let Ok(replay) = PcapReplay::open(path, 1) else {
            continue;
        };
        frames_total += replay.len() as u64;
        for (dp, rec) in hosts.iter_mut() {
            let mut io = PcapReplay::open(path, 1).unwrap();
            let stats = drain(&mut io, dp, rec, 64, &mut || {
                tick += 1_000;
                tick
            })
            .unwrap();
            assert_eq!(stats.delivery_errors, 0);
        }
    }
    // The corpus is not addressed to the lab VIP: only frames that are for
    // the cluster may be delivered, and each by exactly one host.
    let mut all: Vec<&Vec<u8>> = hosts.iter().flat_map(|(_, r)| r.0.iter()).collect();
    let delivered = all.len() as u64;
    let for_cluster: u64 = hosts[0].0.counters().for_cluster();
    let kept: u64 = hosts.iter().map(|(dp, _)| dp.counters().kept).sum();
    assert_eq!(delivered, kept);
    assert!(kept <= for_cluster);
    for (dp, _) in &hosts {
        assert_eq!(
            dp.counters().frames(),
            frames_total,
            "every frame judged by every host"
        );
    }
    all.sort();
    let before = all.len();
    all.dedup();
    assert_eq!(before, all.len(), "a frame was delivered twice");
    eprintln!(
        "replayed {frames_total} frames, {for_cluster} for the cluster, {delivered} delivered"
    );
    assert!(frames_total > 7000);
}

/// A classic pcap of `n` TCP SYNs to 10.0.0.100:80 from distinct clients,
/// addressed to the lab's unicast cluster MAC.
fn syn_capture(n: u32) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
    f.extend_from_slice(&2u16.to_le_bytes());
    f.extend_from_slice(&4u16.to_le_bytes());
    f.extend_from_slice(&[0; 8]);
    f.extend_from_slice(&65535u32.to_le_bytes());
    f.extend_from_slice(&1u32.to_le_bytes());
    for i in 0..n {
        let client = Ipv4Addr::from(0x0a01_0000u32 + i);
        let ip = Ipv4::new(client, Ipv4Addr::new(10, 0, 0, 100), ip_proto::TCP);
        let sport = 20_000 + (i % 40_000) as u16;
        let packet = ip.packet(&frame::tcp(sport, 80, flags::SYN));
        let frame = frame::padded(frame::ethernet(
            [0x02, 0xbf, 10, 0, 0, 100],
            [0x02, 0, 0, 0, 0, 9],
            ethertype::IPV4,
            &packet,
        ));
        f.extend_from_slice(&i.to_le_bytes());
        f.extend_from_slice(&0u32.to_le_bytes());
        f.extend_from_slice(&(frame.len() as u32).to_le_bytes());
        f.extend_from_slice(&(frame.len() as u32).to_le_bytes());
        f.extend_from_slice(&frame);
    }
    f
}
