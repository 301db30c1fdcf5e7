//! Heartbeat codec: round trips, size budget, authentication, replay,
//! malformed input.

use std::net::{IpAddr, Ipv4Addr};

use proptest::prelude::*;
use shoal_controlplane::heartbeat::*;
use shoal_dataplane::map::GroupBits;
use shoal_dataplane::{Affinity, ClusterSpec, HostId, HostSet, PortRule, Protocol, MAX_RULES};
use shoal_testkit::spec::{self, multiple};

const KEY: [u8; 32] = [7; 32];

fn spec(rules: usize) -> ClusterSpec {
    let rule = |i: usize| {
        let low = i as u16 * 10;
        PortRule::new(
            None,
            (low, low + 5),
            Protocol::Tcp,
            multiple(Affinity::Single),
        )
    };
    spec::one_vip((0..rules).map(rule).collect())
}

fn auth() -> ClusterAuth {
    ClusterAuth::new(KEY, &spec(2))
}

fn sample() -> Heartbeat {
    let mut weights = [0u8; MAX_RULES];
    for (i, w) in weights.iter_mut().enumerate() {
        *w = i as u8 * 3;
    }
    Heartbeat {
        host: HostId::new(64).unwrap(),
        state: HostState::Draining,
        phase: Phase::Releasing,
        rule_count: 32,
        boot: 1_700_000_000_000_000_000,
        seq: 42,
        sent: 1_700_000_123_456_789_012,
        base_period_us: 100_000,
        period_us: 50_000,
        hears: HostSet::from_bits(u64::MAX),
        proposed: HostSet::from_bits(0xdead_beef_0000_0001),
        proposal_digest: 0x1111,
        adopted: HostSet::from_bits(0x8000_0000_0000_0001),
        adopted_epoch: 9,
        adopted_digest: 0x2222,
        bound: 0x3333,
        fingerprint: 0x4444,
        weights,
        disabled: 0x8000_0001,
        draining: 0x0000_0102,
        dirty: DirtyPage {
            generation: 7,
            page: 1,
            pages: 3,
            rules: 0b101,
            subset_of_previous: true,
            sections: vec![
                (0, DirtySection::List(vec![0, 1, 4095])),
                (2, {
                    let mut b = Box::new([0u8; BITMAP_BYTES]);
                    b[0] = 0x81;
                    b[511] = 0x80;
                    DirtySection::Bitmap(b)
                }),
            ],
        },
    }
}

#[test]
fn round_trip_every_field() {
    let hb = sample();
    let mut buf = [0u8; MAX_FRAME];
    let n = hb.encode(&auth(), &mut buf).unwrap();
    assert_eq!(n, hb.frame_len());
    assert_eq!(&buf[..6], &[0xff; 6]);
    assert_eq!(&buf[6..12], &[0x02, 64, 10, 0, 0, 100]);
    assert_eq!(&buf[12..14], &[0x88, 0x6f]);
    let back = Heartbeat::decode(&buf[..n], &auth()).unwrap();
    assert_eq!(back, hb);
    let mut g = GroupBits::default();
    back.dirty.sections[1].1.add_to(&mut g);
    assert_eq!(g.iter().collect::<Vec<_>>(), vec![0, 7, 4095]);
}

#[test]
fn vlan_tagged_decodes() {
    let hb = sample();
    let mut buf = [0u8; MAX_FRAME];
    let n = hb.encode(&auth(), &mut buf).unwrap();
    let mut tagged = buf[..12].to_vec();
    tagged.extend_from_slice(&[0x81, 0x00, 0x00, 0x05]);
    tagged.extend_from_slice(&buf[12..n]);
    assert_eq!(Heartbeat::decode(&tagged, &auth()).unwrap(), hb);
}

#[test]
fn full_heartbeat_for_64_hosts_and_32_rules_fits_1500() {
    let mut hb = sample();
    // Fill a page as far as the pager allows: every rule dirty and dense.
    let all: Vec<GroupBits> = (0..MAX_RULES)
        .map(|r| {
            let mut g = GroupBits::default();
            for x in (r as u32..4096).step_by(3) {
                g.insert(x);
            }
            g
        })
        .collect();
    let mut pager = DirtyPager::new();
    let first = pager.next(&all);
    assert!(first.pages > 1, "32 dense rules need paging");
    let mut union = vec![GroupBits::default(); MAX_RULES];
    let mut pages = vec![first];
    for _ in 1..pages[0].pages {
        pages.push(pager.next(&all));
    }
    for p in &pages {
        assert_eq!(p.generation, pages[0].generation);
        hb.dirty = p.clone();
        assert!(hb.payload_len() <= MAX_PAYLOAD, "{}", hb.payload_len());
        let mut buf = [0u8; MAX_FRAME];
        let n = hb.encode(&auth(), &mut buf).unwrap();
        assert!(n <= 1514);
        let back = Heartbeat::decode(&buf[..n], &auth()).unwrap();
        for (r, s) in &back.dirty.sections {
            s.add_to(&mut union[*r as usize]);
        }
    }
    assert_eq!(union, all, "pages reassemble to the full set");
    // The fixed part alone is small and independent of host count.
    assert_eq!(FIXED_PAYLOAD, 182);
    assert_eq!(DIRTY_BUDGET, 1318);
}

#[test]
fn long_sparse_list_pages_and_reassembles() {
    let mut g = GroupBits::default();
    for x in 0..250u32 {
        g.insert(x * 16);
    }
    let sets = vec![g.clone(); 8];
    let mut pager = DirtyPager::new();
    let p = pager.next(&sets);
    assert!(p.pages >= 2);
    let mut union = vec![GroupBits::default(); 8];
    let mut page = p;
    for i in 0..page.pages {
        if i > 0 {
            page = pager.next(&sets);
        }
        assert_eq!(page.page, i);
        for (r, s) in &page.sections {
            s.add_to(&mut union[*r as usize]);
        }
    }
    assert_eq!(union, sets);
    // A shrink is flagged as a subset; growth is not.
    let mut smaller = sets.clone();
    smaller[0] = GroupBits::default();
    let s = pager.next(&smaller);
    assert!(s.subset_of_previous);
    assert_ne!(s.generation, page.generation);
    let mut bigger = smaller.clone();
    bigger[0].insert(1);
    let b = pager.next(&bigger);
    assert!(!b.subset_of_previous);
    assert_ne!(b.generation, s.generation);
}

fn encoded() -> Vec<u8> {
    let mut buf = [0u8; MAX_FRAME];
    let n = sample().encode(&auth(), &mut buf).unwrap();
    buf[..n].to_vec()
}

#[test]
fn forged_and_wrong_key_rejected() {
    let mut f = encoded();
    // Flip a weight byte: the tag no longer verifies.
    f[14 + 116 + 3] ^= 1;
    assert_eq!(Heartbeat::decode(&f, &auth()), Err(HeartbeatError::BadMac));
    let other = ClusterAuth::new([8; 32], &spec(2));
    assert_eq!(
        Heartbeat::decode(&encoded(), &other),
        Err(HeartbeatError::BadMac)
    );
    // A tag of zeros.
    let mut f = encoded();
    let n = f.len();
    f[n - 16..].fill(0);
    assert_eq!(Heartbeat::decode(&f, &auth()), Err(HeartbeatError::BadMac));
}

#[test]
fn header_checks() {
    let mut f = encoded();
    f[14] = 0;
    assert_eq!(
        Heartbeat::decode(&f, &auth()),
        Err(HeartbeatError::BadMagic)
    );
    let mut f = encoded();
    f[16] = 1;
    assert_eq!(
        Heartbeat::decode(&f, &auth()),
        Err(HeartbeatError::BadVersion(1))
    );
    let mut f = encoded();
    f[12] = 0x08;
    f[13] = 0x00;
    assert_eq!(
        Heartbeat::decode(&f, &auth()),
        Err(HeartbeatError::NotHeartbeat)
    );
    let mut other = spec(2);
    other.vips = vec![IpAddr::V4(Ipv4Addr::new(10, 0, 0, 101))];
    assert_eq!(
        Heartbeat::decode(&encoded(), &ClusterAuth::new(KEY, &other)),
        Err(HeartbeatError::WrongCluster)
    );
}

#[test]
fn truncated_and_oversized_rejected() {
    let f = encoded();
    for cut in [0, 5, 13, 14, 20, 30, f.len() - 1] {
        let e = Heartbeat::decode(&f[..cut], &auth()).unwrap_err();
        assert!(
            matches!(e, HeartbeatError::Truncated),
            "cut at {cut}: {e:?}"
        );
    }
    let mut big = f.clone();
    big.resize(1515, 0);
    assert_eq!(
        Heartbeat::decode(&big, &auth()),
        Err(HeartbeatError::Oversized)
    );
    // Trailing non-zero bytes after the tag.
    let mut trail = f.clone();
    trail.push(1);
    assert!(matches!(
        Heartbeat::decode(&trail, &auth()),
        Err(HeartbeatError::Malformed(_))
    ));
    // Zero padding (Ethernet minimum size) is fine.
    let mut pad = f;
    pad.push(0);
    assert!(Heartbeat::decode(&pad, &auth()).is_ok());
    // Encoding refuses an oversized page and a short buffer.
    let mut hb = sample();
    hb.dirty.sections = vec![(0, DirtySection::List(vec![1; 700]))];
    let mut buf = [0u8; MAX_FRAME];
    assert_eq!(hb.encode(&auth(), &mut buf), Err(HeartbeatError::Oversized));
    assert_eq!(
        sample().encode(&auth(), &mut buf[..100]),
        Err(HeartbeatError::BufferTooSmall)
    );
}

/// The fields a receiver can judge without the key are judged before the
/// HMAC, each with its own error: a frame with an impossible host ID, state,
/// phase or rule count (and a tag that would not verify either) is
/// `BadHeader`, never `BadMac`, so it costs no HMAC and the lone-host guard
/// never hears it.
#[test]
fn cheap_fields_are_checked_before_the_tag() {
    let other = ClusterAuth::new([8; 32], &spec(2));
    for (at, value, what) in [
        (16, 0, "host id"),
        (16, 65, "host id"),
        (17, 0, "state"),
        (17, 6, "state"),
        (18, 4, "phase"),
        (19, 33, "rule count"),
    ] {
        let mut f = encoded();
        f[14 + at] = value;
        assert_eq!(
            Heartbeat::decode(&f, &auth()),
            Err(HeartbeatError::BadHeader(what)),
            "byte {at} = {value}"
        );
        // Under another key too: the header is judged first.
        assert_eq!(
            Heartbeat::decode(&f, &other),
            Err(HeartbeatError::BadHeader(what))
        );
        assert_eq!(HeartbeatError::BadHeader(what).name(), "bad_header");
    }
}

#[test]
fn claimed_sender_reads_the_unauthenticated_header() {
    let f = encoded();
    let c = ClaimedSender::of(&f).unwrap();
    assert_eq!(c.host, 64);
    assert_eq!(c.source.0, [0x02, 64, 10, 0, 0, 100]);
    assert_eq!(ClaimedSender::of(&f[..20]), None);
}

/// The key-less peek a poll loop uses to pick a heartbeat's queue: a real
/// heartbeat (tagged or not, padded or not) names its host; anything that
/// fails a cheap check names none.
#[test]
fn claimed_sender_peeks_without_the_key() {
    let f = encoded();
    assert_eq!(claimed_sender(&f), HostId::new(64));
    assert_eq!(
        claim(&f),
        Some(Claim {
            host: HostId::new(64).unwrap(),
            boot: sample().boot,
            seq: 42
        })
    );
    let mut hb = sample();
    hb.host = HostId::new(2).unwrap();
    hb.dirty.sections.clear();
    hb.dirty.rules = 0;
    let mut buf = [0u8; MAX_FRAME];
    let n = hb.encode(&auth(), &mut buf).unwrap();
    assert_eq!(claimed_sender(&buf[..n]), HostId::new(2));
    // A bad tag does not matter here: no HMAC is computed.
    let mut forged = buf[..n].to_vec();
    forged[n - 1] ^= 0xff;
    assert_eq!(claimed_sender(&forged), HostId::new(2));
    let mut tagged = buf[..12].to_vec();
    tagged.extend_from_slice(&[0x81, 0x00, 0x00, 0x05]);
    tagged.extend_from_slice(&buf[12..n]);
    assert_eq!(claimed_sender(&tagged), HostId::new(2));
    let mut padded = buf[..n].to_vec();
    padded.extend_from_slice(&[0; 8]);
    assert_eq!(claimed_sender(&padded), HostId::new(2));
    // Truncated anywhere before the declared end.
    for cut in [0, 1, 12, 13, 14, 15, 20, 30, 31, n - 1] {
        assert_eq!(claimed_sender(&buf[..cut]), None, "cut at {cut}");
    }
    // Each cheap field spoiled in turn.
    for (what, at, value) in [
        ("magic", 14, [0u8, 0]),
        ("version", 16, [1, 0]),
        ("declared length under the fixed part", 18, [0, 100]),
        ("declared length over 1500", 18, [0x06, 0]),
        ("host 0", 14 + 16, [0, 2]),
        ("host 65", 14 + 16, [65, 2]),
        ("EtherType IPv4", 12, [0x08, 0]),
    ] {
        let mut g = buf[..n].to_vec();
        g[at..at + 2].copy_from_slice(&value);
        assert_eq!(claimed_sender(&g), None, "{what}");
    }
    // A declared length beyond the frame.
    let mut long = buf[..n].to_vec();
    let declared = (n - 14 + 1) as u16;
    long[18..20].copy_from_slice(&declared.to_be_bytes());
    assert_eq!(claimed_sender(&long), None);
    // Other frames: an ARP request, garbage, an empty slice.
    let mut arp = vec![0xffu8; 6];
    arp.extend_from_slice(&[2, 0, 0, 0, 0, 9, 0x08, 0x06]);
    arp.resize(60, 0);
    assert_eq!(claimed_sender(&arp), None);
    assert_eq!(claimed_sender(&[0x5a; 300]), None);
    assert_eq!(claimed_sender(&[]), None);
}

#[test]
fn replay_guard() {
    let h = HostId::new(3).unwrap();
    let mut g = ReplayGuard::new();
    assert_eq!(g.check(h, 100, 1, 1_000), Ok(Freshness::First));
    assert_eq!(g.check(h, 100, 2, 1_100), Ok(Freshness::Newer));
    assert_eq!(g.check(h, 100, 2, 1_100), Err(HeartbeatError::Replayed));
    assert_eq!(g.check(h, 100, 1, 1_000), Err(HeartbeatError::Replayed));
    // A lower boot sent before the current boot's first frame is the
    // previous run: refused, whatever its sequence number.
    assert_eq!(g.check(h, 99, 50, 999), Err(HeartbeatError::Replayed));
    assert_eq!(g.check(h, 99, 5_000, 999), Err(HeartbeatError::Replayed));
    // A higher boot is a rival until membership promotes it.
    assert_eq!(
        g.check(h, 200, 1, 2_000),
        Ok(Freshness::Rival { newer: true })
    );
    assert_eq!(g.check(h, 200, 1, 2_000), Err(HeartbeatError::Replayed));
    assert_eq!(
        g.check(h, 200, 2, 2_100),
        Ok(Freshness::Rival { newer: true })
    );
    g.promote(h);
    assert_eq!(g.check(h, 200, 3, 2_200), Ok(Freshness::Newer));
    // The old boot's frames, replayed after the restart, stay refused…
    assert_eq!(g.check(h, 100, 2, 1_100), Err(HeartbeatError::Replayed));
    assert_eq!(g.check(h, 100, 3, 1_900), Err(HeartbeatError::Replayed));
    // …and so do those of every older boot (not only the last one).
    assert_eq!(g.check(h, 50, 9, 1_950), Err(HeartbeatError::Replayed));
    // Fresh frames from the old boot sent after the new boot began mean a
    // second live host.
    assert_eq!(
        g.check(h, 100, 4, 2_300),
        Ok(Freshness::Rival { newer: false })
    );
    assert_eq!(g.check(h, 100, 4, 2_300), Err(HeartbeatError::Replayed));
    // Other hosts are independent.
    assert_eq!(
        g.check(HostId::new(4).unwrap(), 1, 1, 5),
        Ok(Freshness::First)
    );
}

#[test]
fn fingerprint_ignores_weights_but_not_rules() {
    let a = spec(3);
    let mut b = a.clone();
    b.rules[1].weights[5] = 99;
    assert_eq!(rule_fingerprint(&a), rule_fingerprint(&b));
    b.rules[1].port_end += 1;
    assert_ne!(rule_fingerprint(&a), rule_fingerprint(&b));
    let mut c = a.clone();
    c.vips.reverse();
    assert_eq!(cluster_id(&a.vips), cluster_id(&c.vips));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..1600)) {
        let _ = Heartbeat::decode(&bytes, &auth());
        let _ = claim(&bytes);
    }

    #[test]
    fn decode_never_panics_on_mutations(
        flips in proptest::collection::vec((0usize..600, any::<u8>()), 1..8),
        cut in 0usize..700,
    ) {
        let mut f = encoded();
        for (i, x) in flips {
            if let Some(b) = f.get_mut(i) { *b ^= x; }
        }
        f.truncate(cut.max(1));
        let r = Heartbeat::decode(&f, &auth());
        // Any change to authenticated bytes must be refused.
        prop_assert!(r.is_err() || r == Ok(sample()));
        // What decodes names its host to the key-less peek too.
        if let Ok(hb) = r {
            let c = claim(&f);
            prop_assert_eq!(c, Some(Claim { host: hb.host, boot: hb.boot, seq: hb.seq }));
        }
    }
}
