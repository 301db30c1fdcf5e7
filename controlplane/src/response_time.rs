//! The response-time table of a `route = "clb"` service as one front end
//! sees it: probe rounds, ejections, and the sorted table (seed 002,
//! "The COM+ CLB Service" and "Is it a heartbeat?").
//!
//! Owns: [`PollConfig`] and [`ResponseTimes`], a sans-IO state machine over
//! a fixed number of back-end servers. The engine asks when the next round
//! is due ([`ResponseTimes::next_deadline`]), takes the round's probes
//! ([`ResponseTimes::poll_round`]), reports each probe's result with its
//! response time ([`ResponseTimes::handle_probe`]; a probe that timed out is
//! a failure) and each request-path result
//! ([`ResponseTimes::handle_request`]), and reads the table
//! ([`ResponseTimes::poll_table`]) whenever it changed.
//!
//! # The machine
//!
//! - Every `poll_ms` a round starts: every server is probed, in the table
//!   or not, all at once. The engine runs the probes concurrently, each
//!   with its own timeout, so one hung server delays nothing: a round ends
//!   when every probe of it has a result, which is at most the probe
//!   timeout after it started. Rounds start on time even when the previous
//!   one has not ended; a server whose probe is still out is not probed
//!   again (it is counted as not answering).
//! - When a round ends the table is rebuilt: the servers that answered
//!   their latest probe and are not ejected, sorted by that probe's
//!   response time, fastest first (ties by index). That is CLB's table;
//!   the other policies use it as the set of servers that are up.
//! - A failed probe takes its server out of the table at once (the table
//!   changes without waiting for the round); the next answered probe brings
//!   it back at the end of its round.
//! - Request path: `fall` consecutive request failures (refused, reset,
//!   timed out) eject the server for `eject_ms`; after that, `rise`
//!   consecutive answered probes bring it back. An answered request resets
//!   the failure count.
//!
//! Guarantees: memory is fixed when the machine is built; no input panics
//! (out-of-range indices are ignored, times may go backward and are then
//! taken as the latest seen); the table only ever holds servers in range,
//! each at most once; [`ResponseTimes::next_deadline`] is after `now` once
//! [`ResponseTimes::poll_round`] was called at `now`.

/// How a front end polls its back-end servers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PollConfig {
    /// Time from the start of one round to the next.
    pub poll_ms: u64,
    /// Consecutive request failures that eject a server.
    pub fall: u32,
    /// Consecutive answered probes that bring an ejected server back.
    pub rise: u32,
    /// How long an ejection lasts before probes may bring it back.
    pub eject_ms: u64,
}

impl Default for PollConfig {
    fn default() -> Self {
        PollConfig {
            poll_ms: 200,
            fall: 3,
            rise: 2,
            eject_ms: 5_000,
        }
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct Server {
    /// The latest answered probe's response time, while its latest probe
    /// answered.
    response_us: Option<u64>,
    /// A probe of this server is out.
    probing: bool,
    /// Consecutive request failures.
    failures: u32,
    /// Ejected until this time (ms), if ejected.
    ejected_until: Option<u64>,
    /// Consecutive answered probes since the ejection ended.
    rises: u32,
    /// Ejections so far.
    ejections: u64,
}

impl Server {
    fn ejected(&self) -> bool {
        self.ejected_until.is_some()
    }
}

/// One front end's response-time table for one service.
#[derive(Clone, Debug)]
pub struct ResponseTimes {
    config: PollConfig,
    servers: Vec<Server>,
    table: Vec<usize>,
    next_round_ms: u64,
    latest_ms: u64,
    changed: bool,
    rounds: u64,
}

impl ResponseTimes {
    /// A machine over `servers` back ends, none in the table yet, the first
    /// round due at `now_ms`. Until the first round ends the table is
    /// every server (so requests flow while the first probes are out).
    pub fn new(servers: usize, config: PollConfig, now_ms: u64) -> Self {
        let config = PollConfig {
            poll_ms: config.poll_ms.max(1),
            fall: config.fall.max(1),
            rise: config.rise.max(1),
            ..config
        };
        let mut table = Vec::with_capacity(servers);
        table.extend(0..servers);
        ResponseTimes {
            config,
            servers: vec![Server::default(); servers],
            table,
            next_round_ms: now_ms,
            latest_ms: now_ms,
            changed: true,
            rounds: 0,
        }
    }

    fn now(&mut self, now_ms: u64) -> u64 {
        self.latest_ms = self.latest_ms.max(now_ms);
        self.latest_ms
    }

    /// When the next round is due.
    pub fn next_deadline(&self) -> u64 {
        self.next_round_ms
    }

    /// Rounds started so far.
    pub fn rounds(&self) -> u64 {
        self.rounds
    }

    /// If a round is due at `now_ms`, starts it and yields the servers to
    /// probe now (every server whose previous probe is not still out);
    /// else yields none.
    pub fn poll_round(&mut self, now_ms: u64) -> impl Iterator<Item = usize> + '_ {
        let now = self.now(now_ms);
        let due = now >= self.next_round_ms;
        if due {
            self.rounds += 1;
            // The next round keeps its cadence; a caller that slept past
            // several rounds starts one, not a burst.
            let behind = (now - self.next_round_ms) / self.config.poll_ms;
            self.next_round_ms += (behind + 1) * self.config.poll_ms;
        }
        self.servers
            .iter_mut()
            .enumerate()
            .filter_map(move |(i, s)| {
                if due && !s.probing {
                    s.probing = true;
                    Some(i)
                } else {
                    None
                }
            })
    }

    /// Server `i`'s probe ended: `Some(response time)` when it answered,
    /// `None` when it failed or timed out. Returns whether the table
    /// changed.
    pub fn handle_probe(&mut self, i: usize, response_us: Option<u64>, now_ms: u64) -> bool {
        let now = self.now(now_ms);
        let rise = self.config.rise;
        let Some(s) = self.servers.get_mut(i) else {
            return false;
        };
        s.probing = false;
        s.response_us = response_us;
        match (response_us, s.ejected_until) {
            (Some(_), Some(until)) if now >= until => {
                s.rises += 1;
                if s.rises >= rise {
                    s.ejected_until = None;
                    s.failures = 0;
                }
            }
            (None, Some(_)) => s.rises = 0,
            _ => {}
        }
        if response_us.is_none() {
            if let Some(pos) = self.table.iter().position(|&k| k == i) {
                self.table.remove(pos);
                self.changed = true;
            }
        }
        if self.servers.iter().all(|s| !s.probing) {
            self.rebuild();
        }
        self.changed
    }

    /// A request to server `i` ended: `answered` when a response head
    /// came back, else it was refused, reset or timed out. Returns whether
    /// the server was ejected (and the table changed).
    pub fn handle_request(&mut self, i: usize, answered: bool, now_ms: u64) -> bool {
        let now = self.now(now_ms);
        let config = self.config;
        let Some(s) = self.servers.get_mut(i) else {
            return false;
        };
        if answered {
            s.failures = 0;
            return false;
        }
        s.failures = s.failures.saturating_add(1);
        if s.failures < config.fall || s.ejected() {
            return false;
        }
        s.ejected_until = Some(now.saturating_add(config.eject_ms));
        s.rises = 0;
        s.ejections += 1;
        if let Some(pos) = self.table.iter().position(|&k| k == i) {
            self.table.remove(pos);
        }
        self.changed = true;
        true
    }

    fn rebuild(&mut self) {
        let mut table = std::mem::take(&mut self.table);
        table.clear();
        for (i, s) in self.servers.iter().enumerate() {
            if s.response_us.is_some() && !s.ejected() {
                table.push(i);
            }
        }
        let servers = &self.servers;
        table.sort_by_key(|&i| (servers[i].response_us, i));
        self.table = table;
        self.changed = true;
    }

    /// The table if it changed since the last call: servers in the table,
    /// fastest first.
    pub fn poll_table(&mut self) -> Option<&[usize]> {
        if std::mem::take(&mut self.changed) {
            Some(&self.table)
        } else {
            None
        }
    }

    /// The table as it is.
    pub fn table(&self) -> &[usize] {
        &self.table
    }

    /// Whether server `i` is in the table.
    pub fn in_table(&self, i: usize) -> bool {
        self.table.contains(&i)
    }

    /// Whether server `i` is ejected.
    pub fn is_ejected(&self, i: usize) -> bool {
        self.servers.get(i).is_some_and(Server::ejected)
    }

    /// Server `i`'s latest answered probe's response time, while its latest
    /// probe answered.
    pub fn response_us(&self, i: usize) -> Option<u64> {
        self.servers.get(i).and_then(|s| s.response_us)
    }

    /// Ejections of server `i` so far.
    pub fn ejections(&self, i: usize) -> u64 {
        self.servers.get(i).map_or(0, |s| s.ejections)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cfg() -> PollConfig {
        PollConfig {
            poll_ms: 200,
            fall: 2,
            rise: 2,
            eject_ms: 1_000,
        }
    }

    fn round(m: &mut ResponseTimes, now: u64, times: &[Option<u64>]) {
        let due: Vec<usize> = m.poll_round(now).collect();
        for i in due {
            m.handle_probe(i, times[i], now + 1);
        }
    }

    #[test]
    fn a_round_sorts_by_response_time_fastest_first() {
        let mut m = ResponseTimes::new(3, cfg(), 0);
        assert_eq!(m.poll_table(), Some(&[0, 1, 2][..]));
        // Seed 002's example: S3 answers in 25 ms, then S1, then S2.
        round(&mut m, 0, &[Some(40_000), Some(90_000), Some(25_000)]);
        assert_eq!(m.poll_table(), Some(&[2, 0, 1][..]));
        assert_eq!(m.poll_table(), None);
        assert_eq!(m.next_deadline(), 200);
        assert_eq!(m.poll_round(199).count(), 0);
    }

    #[test]
    fn the_table_waits_for_the_round_but_a_failure_leaves_at_once() {
        let mut m = ResponseTimes::new(3, cfg(), 0);
        round(&mut m, 0, &[Some(1), Some(2), Some(3)]);
        let _ = m.poll_table();
        let due: Vec<usize> = m.poll_round(200).collect();
        assert_eq!(due, [0, 1, 2]);
        m.handle_probe(2, Some(1), 201);
        assert_eq!(m.poll_table(), None);
        assert!(m.handle_probe(0, None, 202));
        assert_eq!(m.poll_table(), Some(&[1, 2][..]));
        m.handle_probe(1, Some(5), 203);
        assert_eq!(m.poll_table(), Some(&[2, 1][..]));
        // It answers again: back at the end of the next round.
        round(&mut m, 400, &[Some(1), Some(5), Some(9)]);
        assert_eq!(m.poll_table(), Some(&[0, 1, 2][..]));
    }

    #[test]
    fn a_hung_probe_does_not_stop_rounds_and_is_not_sent_twice() {
        let mut m = ResponseTimes::new(2, cfg(), 0);
        let due: Vec<usize> = m.poll_round(0).collect();
        assert_eq!(due, [0, 1]);
        m.handle_probe(0, Some(10), 1);
        // Server 1's probe is still out at the next round.
        let due: Vec<usize> = m.poll_round(200).collect();
        assert_eq!(due, [0]);
        m.handle_probe(0, Some(10), 201);
        m.handle_probe(1, None, 250);
        assert_eq!(m.table(), &[0]);
        assert_eq!(m.next_deadline(), 400);
    }

    #[test]
    fn fall_failures_eject_and_rise_probes_after_the_hold_bring_back() {
        let mut m = ResponseTimes::new(2, cfg(), 0);
        round(&mut m, 0, &[Some(1), Some(2)]);
        assert!(!m.handle_request(1, false, 10));
        assert!(!m.handle_request(1, true, 11));
        assert!(!m.handle_request(1, false, 12));
        assert!(m.handle_request(1, false, 13));
        assert!(m.is_ejected(1));
        assert_eq!(m.ejections(1), 1);
        assert_eq!(m.table(), &[0]);
        // Probes answer during the hold: still out.
        round(&mut m, 200, &[Some(1), Some(2)]);
        round(&mut m, 800, &[Some(1), Some(2)]);
        assert!(m.is_ejected(1));
        assert_eq!(m.table(), &[0]);
        // After the hold, two answered probes.
        round(&mut m, 1_200, &[Some(1), Some(2)]);
        assert!(m.is_ejected(1));
        round(&mut m, 1_400, &[Some(1), Some(2)]);
        assert!(!m.is_ejected(1));
        assert_eq!(m.table(), &[0, 1]);
    }

    #[test]
    fn late_callers_get_one_round_not_a_burst() {
        let mut m = ResponseTimes::new(1, cfg(), 0);
        round(&mut m, 0, &[Some(1)]);
        assert_eq!(m.poll_round(1_050).count(), 1);
        assert_eq!(m.next_deadline(), 1_200);
        assert_eq!(m.poll_round(1_100).count(), 0);
    }

    proptest! {
        #[test]
        fn any_inputs_keep_the_table_sound(
            n in 0usize..10,
            events in prop::collection::vec((0u8..3, 0usize..12, prop::option::of(0u64..1_000_000), 0u64..3_000), 0..200),
        ) {
            let mut m = ResponseTimes::new(n, cfg(), 0);
            let mut now = 0u64;
            for (kind, i, rt, dt) in events {
                now = if dt % 7 == 0 { now.saturating_sub(dt) } else { now + dt };
                match kind {
                    0 => { let _ = m.poll_round(now).count(); prop_assert!(m.next_deadline() > m.latest_ms); }
                    1 => { m.handle_probe(i, rt, now); }
                    _ => { m.handle_request(i, rt.is_some(), now); }
                }
                let t = m.table();
                prop_assert!(t.iter().all(|&k| k < n));
                let mut sorted = t.to_vec();
                sorted.sort_unstable();
                sorted.dedup();
                prop_assert_eq!(sorted.len(), t.len());
                prop_assert!(t.iter().all(|&k| !m.is_ejected(k)));
            }
        }
    }
}
