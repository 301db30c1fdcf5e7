//! The properties that hold the shortcut to the general path, and the
//! fixtures the pipeline's tests share.

use super::compiled::{hashed_owner, path, Path};
use super::general::flow_key;
use super::shortcut::flow_key_v4;
use super::*;
use crate::descriptor::{DescriptorConfig, Kind};
use crate::map::View;
use crate::model::{Affinity, ClusterMode, ClusterSpec, HostSet, PortRule, Protocol};
use crate::packet::{FrameInfo, FrameKind, L4};
use proptest::prelude::*;
use std::net::Ipv4Addr;

pub(super) const VIP: [u8; 4] = [10, 0, 0, 100];

/// A well-formed frame: Ethernet, IPv4 (no options), TCP or UDP.
pub(super) fn frame(
    tcp: bool,
    src: [u8; 4],
    sport: u16,
    dport: u16,
    flags: u8,
    pad: usize,
) -> Vec<u8> {
    frame_of(if tcp { 6 } else { 17 }, src, sport, dport, flags, pad)
}

/// A well-formed frame: Ethernet, IPv4 (no options), then TCP (6), UDP
/// (17), PPTP's GRE (47: ports and flags unused) or ESP (50: the SPI
/// made of the ports).
pub(super) fn frame_of(
    proto: u8,
    src: [u8; 4],
    sport: u16,
    dport: u16,
    flags: u8,
    pad: usize,
) -> Vec<u8> {
    let header = match proto {
        6 => 20,
        47 => 12,
        _ => 8,
    };
    let total = 20 + header + pad;
    let mut f = vec![0x03, 0xbf, 10, 0, 0, 100, 2, 0, 0, 0, 0, 1, 0x08, 0x00];
    f.extend_from_slice(&[0x45, 0, (total >> 8) as u8, total as u8, 0, 1, 0x40, 0, 64]);
    f.push(proto);
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(&src);
    f.extend_from_slice(&VIP);
    match proto {
        6 => {
            f.extend_from_slice(&sport.to_be_bytes());
            f.extend_from_slice(&dport.to_be_bytes());
            f.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
        }
        17 => {
            f.extend_from_slice(&sport.to_be_bytes());
            f.extend_from_slice(&dport.to_be_bytes());
            f.extend_from_slice(&((8 + pad) as u16).to_be_bytes());
            f.extend_from_slice(&[0, 0]);
        }
        47 => {
            // Version 1, key and sequence present, PPP; payload length,
            // call ID, sequence number.
            f.extend_from_slice(&[0x30, 0x01, 0x88, 0x0b]);
            f.extend_from_slice(&(pad as u16).to_be_bytes());
            f.extend_from_slice(&sport.to_be_bytes());
            f.extend_from_slice(&[0, 0, 0, 1]);
        }
        _ => {
            f.extend_from_slice(&sport.to_be_bytes());
            f.extend_from_slice(&dport.to_be_bytes());
            f.extend_from_slice(&[0, 0, 0, 1]);
        }
    }
    f.resize(14 + total, 0xab);
    f
}

/// A valid frame, then up to four byte changes in the headers and a
/// length change: mostly frames near the edges of the checks.
pub(super) fn arb_frame() -> impl Strategy<Value = Vec<u8>> {
    (
        prop_oneof![4 => Just(6u8), 4 => Just(17), 1 => Just(47), 1 => Just(50)],
        // A few clients recur, so PPTP and IKE entries meet their GRE
        // and ESP, and connections their later segments.
        prop_oneof![
            Just([192, 0, 2, 1]),
            Just([192, 0, 2, 2]),
            Just([198, 51, 100, 7]),
            any::<[u8; 4]>()
        ],
        any::<u16>(),
        prop_oneof![
            Just(80u16),
            Just(1723),
            Just(500),
            Just(2500),
            Just(8050),
            any::<u16>()
        ],
        any::<u8>(),
        // Mostly frames of Ethernet's 60 bytes or more.
        6usize..60,
        prop::collection::vec((0usize..60, any::<u8>()), 0..4),
        -30i32..30,
    )
        .prop_map(|(proto, src, sport, dport, flags, pad, edits, resize)| {
            let mut f = frame_of(proto, src, sport, dport, flags, pad);
            for (at, b) in edits {
                if at < f.len() {
                    f[at] = b;
                }
            }
            let len = (f.len() as i32 + resize).max(0) as usize;
            f.resize(len, 0);
            f
        })
}

/// Maps that reach every way the shortcut can go: the test map; a
/// Network-affinity rule, a single-host UDP rule for every VIP, a
/// disabled rule and ports no rule covers; rule 0 disabled on the
/// local host and another rule dirty elsewhere in half its groups; a
/// view in which the local host is not a member and every weight of
/// rule 0 is zero (no owner); rule 0 dirty elsewhere in half its
/// groups (TCP adoption refused there).
pub(super) fn variant_maps() -> &'static [Arc<ClusterMap>] {
    static MAPS: std::sync::OnceLock<Vec<Arc<ClusterMap>>> = std::sync::OnceLock::new();
    MAPS.get_or_init(|| {
        let vip = Some(IpAddr::V4(Ipv4Addr::from(VIP)));
        let spec = |rules| ClusterSpec {
            vips: vec![IpAddr::V4(Ipv4Addr::from(VIP))],
            mode: ClusterMode::Multicast,
            ipv6_network_prefix: 64,
            rules,
            bucket_seed: 0x5eed,
        };
        let hosts =
            |ids: &[u8]| -> HostSet { ids.iter().filter_map(|&i| HostId::new(i)).collect() };
        let local = HostId::new(2).expect("host id");
        let mixed = spec(vec![
            PortRule::new(
                vip,
                (0, 1000),
                Protocol::Both,
                FilterMode::Multiple {
                    affinity: Affinity::Network,
                },
            ),
            PortRule::new(None, (0, 65535), Protocol::Udp, FilterMode::Single),
            PortRule::new(vip, (2000, 3000), Protocol::Tcp, FilterMode::Disabled),
        ]);
        let mut disabled_here = View::converged(&spec(rules()), hosts(&[1, 2, 3]));
        disabled_here.disabled[0] = hosts(&[2]);
        let mut dirty = ClusterMap::build(&spec(rules()), &disabled_here, local, 1);
        let mut groups = crate::map::GroupBits::default();
        for g in (0..crate::bucket::GROUPS as u32).step_by(2) {
            groups.insert(g);
        }
        dirty.set_dirty_elsewhere(1, groups.clone());
        let mut dirty_tcp = build_map(rules());
        dirty_tcp.set_dirty_elsewhere(0, groups);
        let mut ownerless = View::converged(&spec(rules()), hosts(&[1, 3]));
        ownerless.weights[0] = [0; crate::model::MAX_HOSTS];
        vec![
            Arc::new(build_map(rules())),
            Arc::new(ClusterMap::build(
                &mixed,
                &View::converged(&mixed, hosts(&[1, 2, 3])),
                local,
                1,
            )),
            Arc::new(dirty),
            Arc::new(ClusterMap::build(&spec(rules()), &ownerless, local, 1)),
            Arc::new(dirty_tcp),
        ]
    })
}

pub(super) fn dataplane() -> Dataplane {
    static MAP: std::sync::OnceLock<Arc<ClusterMap>> = std::sync::OnceLock::new();
    let map = MAP.get_or_init(|| Arc::new(build_map(rules()))).clone();
    let cfg = DescriptorConfig {
        capacity: 1 << 12,
        ..DescriptorConfig::default()
    };
    Dataplane::new(map, cfg, 7)
}

pub(super) fn build_map(rules: Vec<PortRule>) -> ClusterMap {
    let spec = ClusterSpec {
        vips: vec![IpAddr::V4(Ipv4Addr::from(VIP))],
        mode: ClusterMode::Multicast,
        ipv6_network_prefix: 64,
        rules,
        bucket_seed: 0x5eed,
    };
    let members: HostSet = [1, 2, 3].iter().filter_map(|&i| HostId::new(i)).collect();
    let local = HostId::new(2).expect("host id");
    ClusterMap::build(&spec, &View::converged(&spec, members), local, 1)
}

pub(super) fn rules() -> Vec<PortRule> {
    let mut udp = PortRule::new(
        Some(IpAddr::V4(Ipv4Addr::from(VIP))),
        (400, 5000),
        Protocol::Udp,
        FilterMode::Multiple {
            affinity: Affinity::Single,
        },
    );
    udp.extended_affinity_timeout_s = 30;
    vec![
        PortRule::new(
            None,
            (0, 65535),
            Protocol::Both,
            FilterMode::Multiple {
                affinity: Affinity::None,
            },
        ),
        udp,
        PortRule::new(
            Some(IpAddr::V4(Ipv4Addr::from(VIP))),
            (8000, 8100),
            Protocol::Tcp,
            FilterMode::Single,
        ),
    ]
}

proptest! {
    /// The same frames, in the same order, give the same verdicts and
    /// counters with and without the shortcut (descriptors included:
    /// SYNs create entries later frames hit).
    #[test]
    fn the_shortcut_changes_no_verdict(frames in prop::collection::vec(arb_frame(), 1..64)) {
        let mut fast = dataplane();
        let mut general = dataplane();
        for (i, f) in frames.iter().enumerate() {
            let now = i as u64 * 1_000_000;
            prop_assert_eq!(fast.judge(f, now), general.judge_general(f, now), "frame {:02x?}", f);
        }
        prop_assert_eq!(fast.counters(), general.counters());
        prop_assert_eq!(fast.table().len(), general.table().len());
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]
    /// The shortcut against the general path under every variant map; and
    /// the counted totals: every frame once, and as cluster traffic exactly
    /// the frames the parser finds addressed to a VIP (but a neighbour
    /// solicitation).
    #[test]
    fn the_shortcut_agrees_under_every_kind_of_rule(
        m in 0usize..5,
        frames in prop::collection::vec(arb_frame(), 1..48),
    ) {
        let cfg = DescriptorConfig { capacity: 1 << 10, ..DescriptorConfig::default() };
        let map = &variant_maps()[m];
        let (mut fast, mut general) = (Dataplane::new(map.clone(), cfg, 5), Dataplane::new(map.clone(), cfg, 5));
        let mut to_vip = 0u64;
        for (i, f) in frames.iter().enumerate() {
            let now = i as u64 * 1_000_000;
            prop_assert_eq!(fast.judge(f, now), general.judge_general(f, now), "map {} frame {:02x?}", m, f);
            if let Ok(FrameInfo { kind: FrameKind::Ipv4(ip) | FrameKind::Ipv6(ip), .. }) = parse_frame(f) {
                let nd = matches!(ip.l4, L4::Icmpv6Nd { icmp_type: 135, .. });
                to_vip += u64::from(map.is_vip(ip.dst) && !nd);
            }
        }
        prop_assert_eq!(fast.counters().frames(), frames.len() as u64);
        prop_assert_eq!(fast.counters().for_cluster(), to_vip);
        prop_assert_eq!(fast.counters(), general.counters());
        prop_assert_eq!(fast.table().len(), general.table().len());
        prop_assert_eq!(fast.table().counters(), general.table().counters());
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    /// `judge_batch` (whose hot loop inlines the shortcut's hot path)
    /// against the general path frame by frame, under
    /// every variant map, in batches of any size.
    #[test]
    fn batches_agree_with_the_general_path(
        m in 0usize..5,
        frames in prop::collection::vec(arb_frame(), 1..160),
        size in 1usize..80,
    ) {
        let cfg = DescriptorConfig { capacity: 1 << 10, ..DescriptorConfig::default() };
        let map = &variant_maps()[m];
        let (mut batched, mut general) = (Dataplane::new(map.clone(), cfg, 5), Dataplane::new(map.clone(), cfg, 5));
        let refs: Vec<&[u8]> = frames.iter().map(Vec::as_slice).collect();
        let mut out = vec![Verdict::Pass; refs.len()];
        for (k, (chunk, verdicts)) in refs.chunks(size).zip(out.chunks_mut(size)).enumerate() {
            batched.judge_batch(chunk, k as u64 * 1_000_000, verdicts);
        }
        for (i, f) in frames.iter().enumerate() {
            let now = (i / size) as u64 * 1_000_000;
            prop_assert_eq!(out[i], general.judge_general(f, now), "map {} frame {} {:02x?}", m, i, f);
        }
        prop_assert_eq!(batched.counters(), general.counters());
        prop_assert_eq!(batched.table().len(), general.table().len());
        prop_assert_eq!(batched.table().counters(), general.table().counters());
    }
}

/// A frame or a new view (members of hosts 1-3; local host 2).
#[derive(Clone, Debug)]
enum Op {
    Frame(Vec<u8>),
    View(Vec<u8>),
}

fn arb_ops() -> impl Strategy<Value = Vec<Op>> {
    let flows = (
        0u8..6,
        0u16..4,
        prop_oneof![
            Just(SYN),
            Just(ACK),
            Just(ACK | FIN),
            Just(RST),
            Just(SYN | ACK)
        ],
        any::<bool>(),
    )
        .prop_map(|(c, p, flags, tcp)| {
            Op::Frame(frame(tcp, [192, 0, 2, c], 1000 + p, 80, flags, 0))
        });
    let views = prop::sample::subsequence(vec![1u8, 2, 3], 1..=3).prop_map(Op::View);
    prop::collection::vec(prop_oneof![8 => flows, 1 => views], 1..120)
}

/// The map of a view, built once per member set (building is slow in
/// debug builds).
fn view_map(members: &[u8]) -> Arc<ClusterMap> {
    type Cache = std::sync::Mutex<Vec<(Vec<u8>, Arc<ClusterMap>)>>;
    static CACHE: std::sync::OnceLock<Cache> = std::sync::OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let mut cache = cache.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, m)) = cache.iter().find(|(k, _)| k == members) {
        return m.clone();
    }
    let m = build_view_map(members);
    cache.push((members.to_vec(), m.clone()));
    m
}

fn build_view_map(members: &[u8]) -> Arc<ClusterMap> {
    let rules = vec![PortRule::new(
        None,
        (0, 65535),
        Protocol::Both,
        FilterMode::Multiple {
            affinity: Affinity::None,
        },
    )];
    let spec = ClusterSpec {
        vips: vec![IpAddr::V4(Ipv4Addr::from(VIP))],
        mode: ClusterMode::Multicast,
        ipv6_network_prefix: 64,
        rules,
        bucket_seed: 0x5eed,
    };
    let set: HostSet = members.iter().filter_map(|&i| HostId::new(i)).collect();
    let local = HostId::new(2).expect("host id");
    Arc::new(ClusterMap::build(
        &spec,
        &View::converged(&spec, set),
        local,
        1,
    ))
}

proptest! {
    /// Skipping the table probe for other hosts' buckets changes no
    /// verdict, entry or counter, across views that move buckets away
    /// from connections this host tracks.
    #[test]
    fn skipping_the_probe_changes_nothing(ops in arb_ops()) {
        let cfg = DescriptorConfig { capacity: 1 << 10, ..DescriptorConfig::default() };
        let mut skip = Dataplane::new(view_map(&[1, 2, 3]), cfg, 3);
        let mut probe = Dataplane::new(view_map(&[1, 2, 3]), cfg, 3);
        probe.buckets_under = (!probe.map.seed, 0);
        probe.rebind_probe();
        for (i, op) in ops.iter().enumerate() {
            let now = i as u64 * 1_000_000;
            match op {
                Op::Frame(f) => prop_assert_eq!(skip.judge(f, now), probe.judge(f, now), "op {}", i),
                Op::View(m) => {
                    skip.set_map(view_map(m));
                    probe.set_map(view_map(m));
                    probe.buckets_under = (!probe.map.seed, 0);
                    probe.rebind_probe();
                }
            }
            // The total the TCP drop reads first is the groups' sum.
            let dirty: usize = (0..crate::model::MAX_RULES).map(|r| skip.table().dirty_groups(r).count()).sum();
            prop_assert_eq!(skip.table().foreign_len() == 0, dirty == 0, "op {}", i);
        }
        prop_assert_eq!(skip.counters(), probe.counters());
        prop_assert_eq!(skip.table().len(), probe.table().len());
        prop_assert_eq!(skip.table().counters(), probe.table().counters());
    }
}

proptest! {
    /// The same across views that move buckets away from connections
    /// this host tracks, the frames between two views judged in one
    /// batch against the general path frame by frame (the hot loop's
    /// TCP drops read the foreign counts those views set).
    #[test]
    fn batches_agree_across_views(ops in arb_ops()) {
        let cfg = DescriptorConfig { capacity: 1 << 10, ..DescriptorConfig::default() };
        let mut batched = Dataplane::new(view_map(&[1, 2, 3]), cfg, 3);
        let mut general = Dataplane::new(view_map(&[1, 2, 3]), cfg, 3);
        let mut pending: Vec<&[u8]> = Vec::new();
        let mut t = 0u64;
        for op in ops.iter().chain([Op::View(vec![1, 2, 3])].iter()) {
            match op {
                Op::Frame(f) => pending.push(f),
                Op::View(m) => {
                    let mut out = vec![Verdict::Pass; pending.len()];
                    batched.judge_batch(&pending, t, &mut out);
                    for (f, v) in pending.iter().zip(&out) {
                        prop_assert_eq!(*v, general.judge_general(f, t), "frame {:02x?}", f);
                    }
                    pending.clear();
                    t += 1_000_000;
                    batched.set_map(view_map(m));
                    general.set_map(view_map(m));
                }
            }
        }
        prop_assert_eq!(batched.counters(), general.counters());
        prop_assert_eq!(batched.table().len(), general.table().len());
        prop_assert_eq!(batched.table().counters(), general.table().counters());
    }
}

proptest! {
    /// The common frame's keys, buckets and owners are the general
    /// path's, for every rule of the test map.
    #[test]
    fn integer_forms_equal_the_general_forms(
        client: u32,
        vip: u32,
        client_port: u16,
        server_port: u16,
        kind in 1u8..=4,
    ) {
        let kind = [Kind::Tcp, Kind::Affinity, Kind::GreLink, Kind::EspLink][usize::from(kind - 1)];
        let (c, v) = (IpAddr::V4(client.into()), IpAddr::V4(vip.into()));
        prop_assert_eq!(
            flow_key_v4(kind, client, vip, client_port, server_port),
            flow_key(kind, c, v, client_port, server_port)
        );
        let dp = dataplane();
        for r in 0..dp.map.rules.len() {
            let b = dp.bucket(r, c, client_port);
            let owner = dp.map.owner(r, b).map_or(0, HostId::get);
            for udp in [false, true] {
                match path(&dp.map, r as u32, udp) {
                    (Path::Hashed, Some(hashed)) => prop_assert_eq!(
                        hashed_owner(dp.fast.seed, &hashed, client, client_port),
                        (b, owner)
                    ),
                    (Path::Fixed(h), None) => prop_assert_eq!((0, h), (b, owner)),
                    (Path::General, None) => prop_assert!(udp && dp.map.rules[r].rule.extended_affinity_timeout_s != 0),
                    other => return Err(TestCaseError::fail(format!("rule {r}: {other:?}"))),
                }
            }
        }
    }
}

/// GRE follows a PPTP connection kept here, on both paths, and ESP
/// without an IKE session is dropped by name.
#[test]
fn gre_follows_pptp_on_the_shortcut() {
    let (mut fast, mut general) = (dataplane(), dataplane());
    let client = (1..=255u8)
        .map(|d| [198, 51, 100, d])
        .find(|&src| {
            let syn = frame(true, src, 40_000, PPTP_PORT, SYN, 0);
            let v = fast.judge(&syn, 1);
            assert_eq!(v, general.judge_general(&syn, 1));
            v == Verdict::Keep
        })
        .expect("some client's PPTP connection is this host's");
    let gre = frame_of(47, client, 0, 0, 0, 16);
    assert_eq!(fast.judge(&gre, 2), Verdict::Keep);
    assert_eq!(general.judge_general(&gre, 2), Verdict::Keep);
    let stranger = frame_of(47, [203, 0, 113, 9], 0, 0, 0, 16);
    let want = Verdict::Drop(DropReason::GreWithoutPptp);
    assert_eq!(fast.judge(&stranger, 3), want);
    assert_eq!(general.judge_general(&stranger, 3), want);
    let esp = frame_of(50, client, 1, 2, 0, 16);
    let want = Verdict::Drop(DropReason::EspWithoutIke);
    assert_eq!(fast.judge(&esp, 4), want);
    assert_eq!(general.judge_general(&esp, 4), want);
    assert_eq!(fast.counters(), general.counters());
}
