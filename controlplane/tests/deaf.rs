//! A host whose receive path stops while its control thread runs (the
//! engine's poll loops starved of CPU): [`Machine::handle_deaf`] keeps it
//! from declaring its peers dead for a silence it could not have heard,
//! and a peer that really dies is still found dead once it hears again.

use shoal_controlplane::heartbeat::MAX_FRAME;
use shoal_controlplane::{Config, Event, Machine};
use shoal_dataplane::{Affinity, ClusterSpec, HostId};
use shoal_testkit::spec::{self, multiple, tcp_port};

const MS: u64 = 1_000_000;
const PERIOD: u64 = 100 * MS;
const TICK: u64 = 5 * MS;
/// The engine reports a receive path silent for longer than this.
const DEAF_AFTER: u64 = 100 * MS;

fn spec() -> ClusterSpec {
    spec::one_vip(vec![tcp_port(80, multiple(Affinity::None))])
}

fn host(n: u8) -> HostId {
    HostId::new(n).unwrap()
}

/// Two hosts on a lossless wire, stepped every [`TICK`].
struct Pair {
    now: u64,
    m: [Machine; 2],
    /// Host 1's receive path is stopped until this time (its frames to
    /// host 2 are not sent meanwhile, host 2's frames wait for it).
    deaf_until: u64,
    /// When host 1's receive path last ran, and up to when its deafness
    /// was reported (the engine's bookkeeping).
    heard_at: u64,
    reported_to: u64,
    /// Whether host 1's deafness is reported at all.
    report: bool,
    held: Vec<Vec<u8>>,
    /// `HostDown` events per host index.
    downs: [Vec<HostId>; 2],
    h2_alive: bool,
}

impl Pair {
    fn new(report: bool) -> Self {
        let mk = |h: u8| {
            let mut cfg = Config::new(host(h), [7; 32], 1);
            cfg.period_ns = PERIOD;
            cfg.tolerance = 3;
            Machine::new(cfg, spec(), 0)
        };
        Pair {
            now: 0,
            m: [mk(1), mk(2)],
            deaf_until: 0,
            heard_at: 0,
            reported_to: 0,
            report,
            held: Vec::new(),
            downs: [Vec::new(), Vec::new()],
            h2_alive: true,
        }
    }

    fn run_for(&mut self, ns: u64) {
        let end = self.now + ns;
        while self.now < end {
            self.now += TICK;
            let now = self.now;
            let deaf = now < self.deaf_until;
            if !deaf {
                for frame in std::mem::take(&mut self.held) {
                    let _ = self.m[0].handle_heartbeat(&frame, now);
                }
                self.heard_at = now;
            } else if self.report && now - self.heard_at > DEAF_AFTER {
                let from = self.heard_at.max(self.reported_to);
                self.m[0].handle_deaf(now - from, now);
                self.reported_to = now;
            }
            for i in 0..2 {
                if i == 1 && !self.h2_alive {
                    continue;
                }
                if self.m[i].poll_timeout() <= now {
                    self.m[i].handle_timeout(now);
                }
                let mut buf = [0u8; MAX_FRAME];
                while let Some(len) = self.m[i].poll_transmit(now, &mut buf) {
                    let frame = buf[..len].to_vec();
                    match i {
                        // Host 1's heartbeats leave through its stopped
                        // poll loops: not sent while deaf.
                        0 if deaf => {}
                        0 if self.h2_alive => {
                            let _ = self.m[1].handle_heartbeat(&frame, now);
                        }
                        0 => {}
                        _ if deaf => self.held.push(frame),
                        _ => {
                            let _ = self.m[0].handle_heartbeat(&frame, now);
                        }
                    }
                }
                while let Some(e) = self.m[i].poll_event() {
                    if let Event::HostDown(h) = e {
                        self.downs[i].push(h);
                    }
                }
            }
        }
    }

    fn members_of_host1(&self) -> Vec<u8> {
        self.m[0]
            .effective_view()
            .0
            .members
            .iter()
            .map(|h| h.get())
            .collect()
    }
}

/// Deaf for ten failure windows: reported, host 1 keeps host 2; host 2
/// (which heard nothing from host 1 meanwhile) rightly declares it down.
/// Unreported, host 1 declares host 2 down too.
fn deaf_second(report: bool) -> Pair {
    let mut p = Pair::new(report);
    p.run_for(3_000 * MS);
    assert_eq!(p.members_of_host1(), vec![1, 2], "converged first");
    p.deaf_until = p.now + 10 * 3 * PERIOD;
    p.run_for(10 * 3 * PERIOD + 50 * MS);
    p
}

#[test]
fn a_deaf_host_does_not_declare_its_peers_dead() {
    let p = deaf_second(true);
    assert!(
        p.downs[0].is_empty(),
        "host 1 declared {:?} down",
        p.downs[0]
    );
    assert_eq!(p.downs[1], vec![host(1)], "host 2 stopped hearing host 1");
    assert!(p.m[0].counters().stalls >= 1);
}

#[test]
fn unreported_deafness_declares_the_peer_dead() {
    let p = deaf_second(false);
    assert_eq!(p.downs[0], vec![host(2)]);
}

#[test]
fn a_peer_that_dies_is_still_found_dead_once_the_host_hears_again() {
    let mut p = deaf_second(true);
    p.run_for(2_000 * MS);
    assert_eq!(p.members_of_host1(), vec![1, 2], "rejoined");
    p.h2_alive = false;
    let died = p.now;
    p.run_for(10 * PERIOD);
    assert_eq!(p.downs[0], vec![host(2)]);
    assert_eq!(p.members_of_host1(), vec![1]);
    assert!(p.now - died <= 10 * PERIOD);
}
