//! `query`'s duplicate-ID report: the `duplicate_id` flag says a duplicate
//! is being heard now, `counters.duplicate_id` counts the heartbeats refused
//! for it, and the two agree on every host (incumbent, newcomer, third
//! party) before, during and after a duplicate shows up.

use shoal_controlplane::admin::{Body, QueryReport};
use shoal_controlplane::heartbeat::MAX_FRAME;
use shoal_controlplane::{Config, Machine, Request};
use shoal_dataplane::{Affinity, ClusterSpec, HostId};
use shoal_testkit::spec;

const MS: u64 = 1_000_000;
const PERIOD: u64 = 100 * MS;
const KEY: [u8; 32] = [0x42; 32];

fn spec() -> ClusterSpec {
    spec::one_vip(vec![spec::tcp_port(80, spec::multiple(Affinity::None))])
}

fn machine(id: u8, boot: u64, now: u64) -> Machine {
    let mut c = Config::new(HostId::new(id).unwrap(), KEY, boot);
    c.period_ns = PERIOD;
    c.tolerance = 3;
    Machine::new(c, spec(), now)
}

fn query(m: &mut Machine, now: u64) -> QueryReport {
    match m.handle_admin(&Request::Query, now).body {
        Body::Query(q) => q,
        other => panic!("query answered {other:?}"),
    }
}

/// Runs `hosts` (all hearing each other, no loss) from `from` to `to` in
/// 1 ms steps; returns the heartbeats each host sent.
fn run(hosts: &mut [Machine], from: u64, to: u64) -> Vec<u64> {
    let mut sent = vec![0; hosts.len()];
    let mut buf = [0u8; MAX_FRAME];
    let mut now = from;
    while now < to {
        for i in 0..hosts.len() {
            hosts[i].handle_timeout(now);
            while hosts[i].poll_event().is_some() {}
            while let Some(n) = hosts[i].poll_transmit(now, &mut buf) {
                sent[i] += 1;
                for (j, h) in hosts.iter_mut().enumerate() {
                    if j != i {
                        // Refusals are the point here; they are counted.
                        let _ = h.handle_heartbeat(&buf[..n], now);
                    }
                }
            }
        }
        now += MS;
    }
    sent
}

#[test]
fn duplicate_flag_and_counter_agree() {
    let boot = 1_700_000_000_000_000_000u64;
    let mut now = 1_000 * MS;
    let mut hosts = vec![machine(1, boot, now), machine(2, boot + 1, now)];
    run(&mut hosts, now, now + 20 * PERIOD);
    now += 20 * PERIOD;
    for h in hosts.iter_mut() {
        let q = query(h, now);
        assert!(!q.duplicate_id, "no duplicate yet: {q:?}");
        assert_eq!(q.counters.duplicate_id, 0);
        assert_eq!(q.members, vec![1, 2]);
    }

    // A second host 2 (a later boot: the newcomer) joins the segment.
    hosts.push(machine(2, boot + 5_000_000_000, now));
    let sent = run(&mut hosts, now, now + 10 * PERIOD);
    now += 10 * PERIOD;
    let q1 = query(&mut hosts[0], now);
    let q2 = query(&mut hosts[1], now);
    let q3 = query(&mut hosts[2], now);
    // The third party and the incumbent refuse every heartbeat of the
    // newcomer; the newcomer refuses every heartbeat of the incumbent.
    assert!(q1.duplicate_id && q2.duplicate_id && q3.duplicate_id);
    assert_eq!(
        q1.counters.duplicate_id, sent[2],
        "host 1 refused the newcomer's"
    );
    assert_eq!(
        q2.counters.duplicate_id, sent[2],
        "the incumbent refused the newcomer's"
    );
    assert_eq!(
        q3.counters.duplicate_id, sent[1],
        "the newcomer refused the incumbent's"
    );
    assert_eq!(q1.excluded_duplicate_id, vec![2]);
    // Only the newcomer stepped back; the view is untouched.
    assert!(q3.stepped_back_duplicate_id && !q2.stepped_back_duplicate_id);
    assert_eq!(q1.members, vec![1, 2]);

    // The newcomer leaves: after tolerance × period the flag drops, the
    // counters keep their totals.
    hosts.pop();
    run(&mut hosts, now, now + 4 * PERIOD);
    now += 4 * PERIOD;
    let after1 = query(&mut hosts[0], now);
    let after2 = query(&mut hosts[1], now);
    assert!(!after1.duplicate_id && !after2.duplicate_id);
    assert_eq!(after1.counters.duplicate_id, q1.counters.duplicate_id);
    assert_eq!(after2.counters.duplicate_id, q2.counters.duplicate_id);
    assert_eq!(after1.members, vec![1, 2]);
}
