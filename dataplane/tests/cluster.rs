//! Cluster-wide invariants, judged by several simulated members at once:
//! exactly one keeper, affinity, fragments, survival across view changes,
//! GRE following PPTP, and the bucket map's shares and movement.

mod common;

use std::net::IpAddr;

use common::*;
use proptest::prelude::*;
use shoal_dataplane::bucket::{BucketMap, BUCKETS};
use shoal_dataplane::map::{RuleOwner, View};
use shoal_dataplane::pipeline::{DropReason, Verdict};
use shoal_dataplane::{Affinity, FilterMode, HostId, HostSet, PortRule, Protocol, MAX_HOSTS};

/// Either exactly one member keeps the frame, or every member drops it for
/// a reason other than "another host has it".
fn assert_exactly_one(verdicts: &[(HostId, Verdict)], what: &str) -> Option<HostId> {
    let keepers: Vec<HostId> = verdicts
        .iter()
        .filter(|(_, v)| *v == Verdict::Keep)
        .map(|(h, _)| *h)
        .collect();
    assert!(keepers.len() <= 1, "{what}: kept by {keepers:?}");
    if keepers.is_empty() {
        assert!(
            verdicts
                .iter()
                .all(|(_, v)| matches!(v, Verdict::Drop(r) if *r != DropReason::NotOwner)),
            "{what}: nobody kept it, yet someone said another host has it: {verdicts:?}"
        );
    }
    keepers.first().copied()
}

fn arb_affinity() -> impl Strategy<Value = Affinity> {
    prop_oneof![
        Just(Affinity::None),
        Just(Affinity::Single),
        Just(Affinity::Network)
    ]
}

/// Non-overlapping rules: the port space split at random points, each
/// slice with a random protocol split and mode.
fn arb_rules() -> impl Strategy<Value = Vec<PortRule>> {
    (
        prop::collection::btree_set(1u16..65535, 0..5),
        prop::collection::vec((arb_affinity(), 0u8..10, 1u8..=100), 6),
    )
        .prop_map(|(cuts, modes)| {
            let mut bounds: Vec<u16> = cuts.into_iter().collect();
            bounds.push(65535);
            let mut start = 0u16;
            let mut rules = Vec::new();
            for (i, end) in bounds.into_iter().enumerate() {
                let (affinity, kind, w) = modes[i % modes.len()];
                let mode = match kind {
                    0 => FilterMode::Disabled,
                    1 | 2 => FilterMode::Single,
                    _ => FilterMode::Multiple { affinity },
                };
                let mut rule = PortRule::new(None, (start, end.max(start)), Protocol::Both, mode);
                for (h, weight) in rule.weights.iter_mut().enumerate() {
                    *weight = ((h as u8).wrapping_mul(37).wrapping_add(w)) % 100 + 1;
                }
                rules.push(rule);
                if end == 65535 {
                    break;
                }
                start = end + 1;
            }
            rules
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn exactly_one_member_keeps_each_frame(
        rules in arb_rules(),
        member_bits in 1u64..(1 << 8),
        flows in prop::collection::vec((0u32..5000, any::<u16>(), any::<u16>(), 0u8..6), 1..200),
    ) {
        let ids: Vec<u8> = (1..=8u8).filter(|i| member_bits & (1 << (i - 1)) != 0).collect();
        let mut c = cluster(rules, &ids);
        for (i, (cl, sport, dport, kind)) in flows.into_iter().enumerate() {
            let frame = match kind {
                0 => tcp(client(cl), sport, dport, SYN),
                1 => tcp(client(cl), sport, dport, ACK),
                2 => udp(client(cl), sport, dport),
                3 => tcp6(client6(cl), sport, dport, SYN),
                4 => udp_fragments(client(cl), sport, dport, sport).1,
                _ => ipv4(client(cl), VIP, 1, &[8, 0, 0, 0, 0, 1, 0, 1], 1, 0),
            };
            let v = c.judge(&frame, i as u64);
            assert_exactly_one(&v, &format!("flow {i} kind {kind}"));
        }
    }

    #[test]
    fn affinity_keeps_clients_and_networks_on_one_host(
        cl in 0u32..1_000_000,
        ports in prop::collection::vec(1024u16..65535, 2..12),
        ids in prop::sample::subsequence((1u8..=16).collect::<Vec<_>>(), 2..10),
    ) {
        let mut single = cluster(vec![default_rule(Affinity::Single)], &ids);
        let mut network = cluster(vec![default_rule(Affinity::Network)], &ids);
        let keep_single: Vec<_> = ports.iter().map(|&p| single.keepers(&tcp(client(cl), p, 80, SYN), 0)).collect();
        prop_assert!(keep_single.iter().all(|k| k.len() == 1 && k == &keep_single[0]));
        // Network affinity: every address of the client's /24 lands together.
        let base = client(cl).octets();
        let keep_net: Vec<_> = ports.iter().enumerate().map(|(i, &p)| {
            let c = std::net::Ipv4Addr::new(base[0], base[1], base[2], (i * 23 % 256) as u8);
            network.keepers(&tcp(c, p, 443, SYN), 0)
        }).collect();
        prop_assert!(keep_net.iter().all(|k| k.len() == 1 && k == &keep_net[0]));
        // And IPv6 clients in one /64.
        let keep6: Vec<_> = ports.iter().enumerate().map(|(i, &p)| {
            let mut o = client6(cl).octets();
            o[15] = i as u8;
            o[9] = (i * 7) as u8;
            network.keepers(&tcp6(std::net::Ipv6Addr::from(o), p, 443, SYN), 0)
        }).collect();
        prop_assert!(keep6.iter().all(|k| k.len() == 1 && k == &keep6[0]));
    }

    #[test]
    fn fragments_follow_their_datagram(
        cl in 0u32..1_000_000, sport in any::<u16>(), id in any::<u16>(),
        affinity in arb_affinity(),
        ids in prop::sample::subsequence((1u8..=8).collect::<Vec<_>>(), 1..8),
    ) {
        let mut c = cluster(vec![default_rule(affinity)], &ids);
        let (first, later) = udp_fragments(client(cl), sport, 53, id);
        let a = c.keepers(&first, 0);
        let b = c.keepers(&later, 1);
        prop_assert_eq!(a.len(), 1);
        prop_assert_eq!(a, b);
    }
}

#[test]
fn bucket_map_is_deterministic() {
    let mut w = [50u8; MAX_HOSTS];
    w[2] = 100;
    let a = BucketMap::compute(hosts(&[1, 3, 4, 9]), &w);
    let b = BucketMap::compute(hosts(&[1, 3, 4, 9]), &w);
    assert!(a == b);
}

fn shares(m: &BucketMap) -> [f64; MAX_HOSTS] {
    let c = m.counts();
    let mut s = [0.0; MAX_HOSTS];
    for i in 0..MAX_HOSTS {
        s[i] = c[i] as f64 / BUCKETS as f64;
    }
    s
}

/// Checks the share bound (within one percentage point of the weight's
/// share) and the movement bound (at most 1.05× the joiner's ideal share)
/// for one view and one joiner; returns the movement ratio.
fn check_join(ids: &[u8], weights: &[u8; MAX_HOSTS], joiner: u8) -> f64 {
    let before: HostSet = hosts(ids);
    let mut after = before;
    after.insert(host(joiner));
    let a = BucketMap::compute(before, weights);
    let b = BucketMap::compute(after, weights);
    for (set, m) in [(before, &a), (after, &b)] {
        let total: f64 = set.iter().map(|h| weights[h.index()] as f64).sum();
        let s = shares(m);
        for h in set.iter() {
            let ideal = weights[h.index()] as f64 / total;
            assert!(
                (s[h.index()] - ideal).abs() <= 0.01,
                "host {h} share {} ideal {ideal} in {set:?}",
                s[h.index()]
            );
        }
    }
    let total_after: f64 = after.iter().map(|h| weights[h.index()] as f64).sum();
    let ideal = weights[host(joiner).index()] as f64 / total_after;
    let ratio = a.moved_fraction(&b) / ideal;
    assert!(
        ratio <= 1.05,
        "join of {joiner} to {ids:?}: moved {ratio:.4}× the ideal"
    );
    // Leaving is the same pair of maps read backwards.
    ratio
}

#[test]
fn shares_and_movement_equal_weights_2_to_64_hosts() {
    let w = [50u8; MAX_HOSTS];
    for n in [1usize, 2, 3, 4, 7, 15, 31, 63] {
        let ids: Vec<u8> = (1..=n as u8).collect();
        let joiner = n as u8 + 1;
        let r = check_join(&ids, &w, joiner);
        eprintln!("{} → {} hosts: moved {r:.4}× the ideal", n, n + 1);
        // A middle host leaving (not only the last one).
        let mut without: Vec<u8> = ids.clone();
        if n >= 3 {
            without.retain(|&i| i != 2);
            check_join(&without, &w, 2);
        }
    }
}

#[test]
fn shares_and_movement_weighted() {
    // Deterministic spread of weights in 10..=100 (a 10:1 ratio at most).
    for seed in 0..6u64 {
        let mut w = [0u8; MAX_HOSTS];
        for (i, x) in w.iter_mut().enumerate() {
            let r = shoal_dataplane::hash::mix64(seed * 1000 + i as u64);
            *x = 10 + (r % 91) as u8;
        }
        let n = 2 + (seed as usize * 3) % 12;
        let ids: Vec<u8> = (1..=n as u8).collect();
        check_join(&ids, &w, n as u8 + 1);
    }
}

/// 300 connections over three hosts; then a join, the leave of another
/// host, a weight change and a drain. Every frame of every surviving old
/// connection is kept by its original host only; new connections follow
/// the new map.
#[test]
fn connections_survive_every_kind_of_convergence() {
    let rule = default_rule(Affinity::None);
    let mut c = cluster(vec![rule], &[1, 2, 3]);
    let mut now = 1u64;
    let mut conns: Vec<(u32, u16, HostId)> = Vec::new();
    for i in 0..300u32 {
        let (cl, port) = (i % 97, 10_000 + i as u16);
        let k = assert_exactly_one(&c.judge(&tcp(client(cl), port, 80, SYN), now), "syn")
            .expect("SYN kept");
        assert_eq!(
            assert_exactly_one(&c.judge(&tcp(client(cl), port, 80, ACK), now), "ack"),
            Some(k)
        );
        conns.push((cl, port, k));
        now += 1;
    }
    let spec = c.spec().clone();
    let mut events: Vec<(&str, View)> = Vec::new();
    let mut join = View::converged(&spec, hosts(&[1, 2, 3, 4]));
    events.push(("join of 4", join.clone()));
    let leave = View::converged(&spec, hosts(&[1, 3, 4]));
    events.push(("leave of 2", leave.clone()));
    join = leave.clone();
    join.weights[0][0] = 100;
    events.push(("weight change", join.clone()));
    let mut drain = join.clone();
    drain.drain_host(host(3));
    events.push(("drain of 3", drain));

    c.add_member(host(4), small_table());
    let mut next_port = 40_000u16;
    let adopted = |c: &shoal_dataplane::sim::SimCluster| -> u64 {
        c.members().iter().map(|(_, d)| d.counters().adopted).sum()
    };
    for (name, view) in events {
        let gone = c.member(host(2)).is_some() && !view.members.contains(host(2));
        if gone {
            c.remove_member(host(2));
        }
        c.apply_view(view.clone());
        if gone {
            // Host 2's connections, with nobody reporting them: their new
            // owners take them over mid-stream, and count it.
            let before = adopted(&c);
            // (Those in a group another host reports dirty stay dropped.)
            let mut kept = 0u64;
            for &(cl, port, _) in conns.iter().filter(|(_, _, h)| *h == host(2)) {
                let v = c.judge(&tcp(client(cl), port, 80, ACK), now);
                let n = v.iter().filter(|(_, v)| *v == Verdict::Keep).count() as u64;
                assert!(n <= 1, "{name}: an orphan kept twice: {v:?}");
                kept += n;
            }
            assert!(kept > 0, "{name}: no orphan taken over");
            assert_eq!(adopted(&c) - before, kept, "{name}");
            conns.retain(|(_, _, h)| *h != host(2));
        }
        let before = adopted(&c);
        for &(cl, port, owner) in &conns {
            let v = c.judge(&tcp(client(cl), port, 80, ACK | 0x08), now);
            assert_eq!(
                assert_exactly_one(&v, name),
                Some(owner),
                "{name}: connection {cl}:{port} moved"
            );
        }
        // New connections follow the new map, never to a drained host.
        for i in 0..200u32 {
            let (cl, port) = (1000 + i, next_port);
            next_port += 1;
            let k = assert_exactly_one(&c.judge(&tcp(client(cl), port, 80, SYN), now), name)
                .expect("new SYN kept");
            let o = shoal_dataplane::pipeline::Dataplane::owner_of(
                c.members()[0].1.map(),
                6,
                IpAddr::V4(client(cl)),
                port,
                IpAddr::V4(VIP),
                80,
            );
            assert_eq!(
                Some(k),
                o.host,
                "{name}: new connection not with the map's owner"
            );
            assert!(
                view.weights[0][k.index()] > 0,
                "{name}: new connection on a draining host"
            );
            assert_eq!(
                assert_exactly_one(&c.judge(&tcp(client(cl), port, 80, ACK), now), name),
                Some(k)
            );
            conns.push((cl, port, k));
        }
        assert_eq!(
            adopted(&c),
            before,
            "{name}: a tracked connection was taken over mid-stream"
        );
        now += 1_000_000;
    }
    // Connections that end free their bucket: after FIN the drained host
    // still takes the closing exchange, then nothing.
    let (cl, port, owner) = conns[0];
    assert_eq!(
        assert_exactly_one(&c.judge(&tcp(client(cl), port, 80, FIN | ACK), now), "fin"),
        Some(owner)
    );
}

#[test]
fn gre_follows_its_pptp_control_connection_across_a_join() {
    let rules = vec![default_rule(Affinity::Single)];
    let mut c = cluster(rules, &[1, 2, 3]);
    let mut pptp = Vec::new();
    for i in 0..60u32 {
        let cl = client(5000 + i);
        let k = assert_exactly_one(
            &c.judge(&tcp(cl, 2000 + i as u16, 1723, SYN), 1),
            "pptp syn",
        )
        .unwrap();
        assert_exactly_one(
            &c.judge(&tcp(cl, 2000 + i as u16, 1723, ACK), 2),
            "pptp ack",
        );
        assert_eq!(assert_exactly_one(&c.judge(&gre(cl, 7), 3), "gre"), Some(k));
        pptp.push((cl, k));
    }
    // GRE from a client with no control connection is nobody's.
    let v = c.judge(&gre(client(9999), 1), 4);
    assert!(v
        .iter()
        .all(|(_, v)| *v == Verdict::Drop(DropReason::GreWithoutPptp)));
    c.add_member(host(4), small_table());
    let spec = c.spec().clone();
    c.apply_view(View::converged(&spec, hosts(&[1, 2, 3, 4])));
    let mut moved_buckets = 0;
    for (cl, k) in &pptp {
        assert_eq!(
            assert_exactly_one(&c.judge(&gre(*cl, 7), 5), "gre after join"),
            Some(*k)
        );
        let o = shoal_dataplane::pipeline::Dataplane::owner_of(
            c.members()[0].1.map(),
            6,
            IpAddr::V4(*cl),
            0,
            IpAddr::V4(VIP),
            1723,
        );
        if o.host != Some(*k) {
            moved_buckets += 1;
        }
    }
    assert!(
        moved_buckets > 0,
        "the join moved none of the PPTP clients' buckets: the test proves nothing"
    );
}

#[test]
fn single_host_rule_and_disabled_rule() {
    let mut single = PortRule::new(None, (0, 1000), Protocol::Both, FilterMode::Single);
    single.priorities[2] = 1; // host 3 has the best handling priority,
    single.priorities[0] = 3; // host 1 the worst
    let disabled = PortRule::new(None, (1001, 2000), Protocol::Both, FilterMode::Disabled);
    let rest = PortRule::new(
        None,
        (2001, 65535),
        Protocol::Both,
        FilterMode::Multiple {
            affinity: Affinity::Single,
        },
    );
    let mut c = cluster(vec![single, disabled, rest], &[1, 2, 3]);
    assert_eq!(c.keepers(&tcp(client(1), 5555, 80, SYN), 0), vec![host(3)]);
    assert!(c.keepers(&tcp(client(1), 5555, 1500, SYN), 0).is_empty());
    // ICMP echo to the VIP: no rule covers it, the default host keeps it.
    assert_eq!(
        c.keepers(&ipv4(client(1), VIP, 1, &[8, 0, 0, 0, 0, 1, 0, 1], 1, 0), 0),
        vec![host(1)]
    );
    // Host 3 leaves: the next priority (host 2) takes over.
    c.remove_member(host(3));
    let spec = c.spec().clone();
    c.apply_view(View::converged(&spec, hosts(&[1, 2])));
    assert_eq!(c.keepers(&tcp(client(1), 5556, 80, SYN), 0), vec![host(2)]);
}

/// A reload that inserts a rule in front shifts every rule index: tracked
/// connections are re-bound to their new rule and keep reaching their host.
#[test]
fn connections_survive_a_reload_that_renumbers_rules() {
    let web = PortRule::new(
        None,
        (80, 80),
        Protocol::Tcp,
        FilterMode::Multiple {
            affinity: Affinity::None,
        },
    );
    let rest = PortRule::new(
        None,
        (81, 65535),
        Protocol::Both,
        FilterMode::Multiple {
            affinity: Affinity::Single,
        },
    );
    let before = cluster(vec![web, rest.clone()], &[1, 2, 3]);
    // The new spec: a low-port rule first, then port 80 with Single
    // affinity (its buckets move), then the rest.
    let low = PortRule::new(
        None,
        (0, 79),
        Protocol::Both,
        FilterMode::Multiple {
            affinity: Affinity::Single,
        },
    );
    let web2 = PortRule::new(
        None,
        (80, 80),
        Protocol::Tcp,
        FilterMode::Multiple {
            affinity: Affinity::Single,
        },
    );
    let after = cluster(vec![low, web2, rest], &[1, 2, 3]);
    let mut dp = shoal_dataplane::pipeline::Dataplane::new(
        before.members()[0].1.map().clone(),
        small_table(),
        9,
    );
    let tracked: Vec<u32> = (0..300u32)
        .filter(|&i| dp.judge(&tcp(client(i), 30_000 + i as u16, 80, SYN), 1) == Verdict::Keep)
        .collect();
    assert!(tracked.len() > 50);
    assert_eq!(dp.table().live_by_rule()[0] as usize, tracked.len());
    dp.set_map(after.members()[0].1.map().clone());
    assert_eq!(
        dp.table().len(),
        tracked.len(),
        "TCP entries survive the rebind"
    );
    assert_eq!(
        dp.table().live_by_rule()[1] as usize,
        tracked.len(),
        "entries now under the new rule index"
    );
    let mut moved = 0;
    for &i in &tracked {
        let o = shoal_dataplane::pipeline::Dataplane::owner_of(
            dp.map(),
            6,
            IpAddr::V4(client(i)),
            30_000 + i as u16,
            IpAddr::V4(VIP),
            80,
        );
        if o.host != Some(host(1)) {
            moved += 1;
        }
        assert_eq!(
            dp.judge(&tcp(client(i), 30_000 + i as u16, 80, ACK), 3),
            Verdict::Keep,
            "connection {i} lost after the reload"
        );
    }
    assert!(
        moved > 0,
        "the reload moved no tracked connection's bucket: the test proves nothing"
    );
    // And the host reports the moved ones as dirty under the new rule.
    assert!(!dp.table().dirty_groups(1).is_empty());
}

/// A kept bucket cache changes no map: warmed for the view a failure would
/// bring, it makes that view's build compute nothing, and the result is the
/// map a fresh build computes. A stopped warm-up adds nothing.
#[test]
fn a_warmed_bucket_cache_builds_the_same_maps() {
    use shoal_dataplane::map::{BucketCache, ClusterMap};
    let mut weighted = PortRule::new(
        None,
        (1000, 1999),
        Protocol::Udp,
        FilterMode::Multiple {
            affinity: Affinity::None,
        },
    );
    weighted.weights[1] = 100;
    let spec = spec_with(vec![
        PortRule::new(
            None,
            (0, 999),
            Protocol::Both,
            FilterMode::Multiple {
                affinity: Affinity::Single,
            },
        ),
        weighted,
        PortRule::new(None, (2000, 2000), Protocol::Tcp, FilterMode::Single),
    ]);
    let local = HostId::new(1).unwrap();
    let three = View::converged(&spec, hosts(&[1, 2, 3]));
    let mut after = three.clone();
    after.members.remove(HostId::new(2).unwrap());

    let mut cache = BucketCache::default();
    let before = ClusterMap::build_cached(&spec, &three, local, 1, &mut cache);
    assert_eq!(cache.len(), 2, "one bucket map per distinct weight vector");
    cache.retain_used_by(&before);
    assert_eq!(cache.len(), 2);

    assert!(
        !cache.warm(&spec, &after, &|| true),
        "a stopped warm-up says so"
    );
    assert_eq!(cache.len(), 2, "and adds nothing");
    assert!(cache.warm(&spec, &after, &|| false));
    // Without host 2 (the one with weight 100) both rules weigh hosts 1
    // and 3 alike: one more map.
    assert_eq!(cache.len(), 3);
    let cached = ClusterMap::build_cached(&spec, &after, local, 2, &mut cache);
    assert_eq!(cache.len(), 3, "the failure's view computed no bucket map");
    let fresh = ClusterMap::build(&spec, &after, local, 2);
    for (a, b) in cached.rules.iter().zip(&fresh.rules) {
        match (&a.owner, &b.owner) {
            (RuleOwner::Buckets(x), RuleOwner::Buckets(y)) => assert!(x == y),
            (x, y) => assert_eq!(format!("{x:?}"), format!("{y:?}")),
        }
    }
    cache.retain_used_by(&cached);
    assert_eq!(cache.len(), 1, "only the maps in use are kept");
}
