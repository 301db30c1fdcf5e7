//! Health of an array service's members (or parents) as one proxy process
//! sees them: request-path failures, probe results, and when to probe.
//!
//! Owns: [`HealthConfig`] and [`Health`], a sans-IO state machine over a
//! fixed number of members. The engine reports what happened
//! ([`Health::failed`], [`Health::probed`]), asks whom to probe
//! ([`Health::due`], [`Health::next_deadline`]) and says when it sent a
//! probe ([`Health::mark_sent`]); it reads [`Health::is_up`] to mark members
//! up or down in its router.
//!
//! Guarantees:
//! - Memory is fixed when the machine is built: one small entry per member.
//! - No input sequence panics, whatever the member index (out of range is
//!   ignored and reads as down) or the times (a time earlier than one seen
//!   before is taken as that earlier time; nothing underflows or overflows).
//! - A member that failed on the request path is down at once and stays
//!   down for `down_ttl_ms` after its latest such failure, whatever probes
//!   say; only probe successes after that bring it back.
//! - A member's next probe time never moves earlier, so
//!   [`Health::next_deadline`] never moves earlier either, and after
//!   [`Health::mark_sent`] at `now` it is later than `now`.
//!
//! # The machine
//!
//! Every member starts up, with a probe due at once. Probes go to every
//! member, up or down, every `probe_interval_ms`, timed from when each was
//! sent; the engine reports each result (a probe that times out is a
//! failure) with [`Health::probed`].
//!
//! - Up: `fall` consecutive failed probes take it down. A request-path
//!   failure ([`Health::failed`]) takes it down at once.
//! - Down: `rise` consecutive successful probes bring it up, counting only
//!   probes whose results arrive once the hold of its latest request-path
//!   failure (`down_ttl_ms`) has passed. No probe is due during the hold.
//!
//! Consecutive means a result of the other kind resets the count, as in
//! pingora's health checks; `rise` and `fall` of 0 are taken as 1, and a
//! `probe_interval_ms` of 0 as 1.

//!
//! # How the engine drives this
//!
//! ```text
//! let mut health = Health::new(members.len(), cfg, now_ms());
//! // request path: connect failure or timeout before any response byte
//! if health.failed(i, now_ms()) { router.carp.set_up(i, false); }
//! // probe task, woken at health.next_deadline() or by a probe's result
//! for i in health.due(now).collect::<Vec<_>>() { health.mark_sent(i, now); spawn probe(i); }
//! on probe result (ok, or false on error or timeout):
//!     if health.probed(i, ok, now_ms()) { router.carp.set_up(i, health.is_up(i)); }
//! // the table's state time: health.since(i)
//! ```

/// How members are probed and how long a failure holds one down.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct HealthConfig {
    /// Time from one probe of a member to the next.
    pub probe_interval_ms: u64,
    /// How long a request-path failure holds a member down before probes
    /// may bring it back.
    pub down_ttl_ms: u64,
    /// Consecutive successful probes that bring a down member up.
    pub rise: u32,
    /// Consecutive failed probes that take an up member down.
    pub fall: u32,
}

impl HealthConfig {
    /// Probes every second, a failure held 5 s, up after 2 successes, down
    /// after 3 failures.
    pub const DEFAULT: HealthConfig = HealthConfig {
        probe_interval_ms: 1000,
        down_ttl_ms: 5000,
        rise: 2,
        fall: 3,
    };
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig::DEFAULT
    }
}

/// One member's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Entry {
    up: bool,
    /// When `up` last changed (or the machine was built).
    since: u64,
    /// Consecutive probe results against the current state: failures while
    /// up, successes (after the hold) while down.
    streak: u32,
    /// Down until at least this time (the hold of the latest request-path
    /// failure); 0 when never failed.
    hold_until: u64,
    /// When the next probe is due.
    next_probe: u64,
}

/// The health of one service's members in one proxy process (see the
/// module docs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Health {
    cfg: HealthConfig,
    members: Box<[Entry]>,
}

impl Health {
    /// `members` members, all up since `now`, each with a probe due at
    /// `now`.
    pub fn new(members: usize, cfg: HealthConfig, now: u64) -> Health {
        let cfg = HealthConfig {
            probe_interval_ms: cfg.probe_interval_ms.max(1),
            rise: cfg.rise.max(1),
            fall: cfg.fall.max(1),
            ..cfg
        };
        let entry = Entry {
            up: true,
            since: now,
            streak: 0,
            hold_until: 0,
            next_probe: now,
        };
        Health {
            cfg,
            members: vec![entry; members].into_boxed_slice(),
        }
    }

    /// The configuration in force (zeros raised to 1 as the module docs
    /// say).
    pub fn config(&self) -> HealthConfig {
        self.cfg
    }

    /// How many members.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether there are no members.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Whether member `i` is up (`false` out of range).
    pub fn is_up(&self, i: usize) -> bool {
        self.members.get(i).is_some_and(|e| e.up)
    }

    /// When member `i` last changed state, or the machine was built (0 out
    /// of range).
    pub fn since(&self, i: usize) -> u64 {
        self.members.get(i).map_or(0, |e| e.since)
    }

    /// Member `i` failed on the request path (no response byte): down at
    /// once, held down until `now + down_ttl_ms`, no probe before then.
    /// Returns whether it was up.
    pub fn failed(&mut self, i: usize, now: u64) -> bool {
        let ttl = self.cfg.down_ttl_ms;
        let Some(e) = self.members.get_mut(i) else {
            return false;
        };
        let now = now.max(e.since);
        let was_up = e.up;
        if was_up {
            e.up = false;
            e.since = now;
        }
        e.streak = 0;
        e.hold_until = e.hold_until.max(now.saturating_add(ttl));
        e.next_probe = e.next_probe.max(e.hold_until);
        was_up
    }

    /// A probe of member `i` answered (`ok`) or failed at `now`. Returns
    /// whether the member changed state.
    pub fn probed(&mut self, i: usize, ok: bool, now: u64) -> bool {
        let HealthConfig { rise, fall, .. } = self.cfg;
        let Some(e) = self.members.get_mut(i) else {
            return false;
        };
        let now = now.max(e.since);
        match (e.up, ok) {
            (true, true) => e.streak = 0,
            (true, false) => {
                e.streak = e.streak.saturating_add(1);
                if e.streak >= fall {
                    e.up = false;
                    e.since = now;
                    e.streak = 0;
                    return true;
                }
            }
            (false, false) => e.streak = 0,
            (false, true) => {
                if now < e.hold_until {
                    return false;
                }
                e.streak = e.streak.saturating_add(1);
                if e.streak >= rise {
                    e.up = true;
                    e.since = now;
                    e.streak = 0;
                    return true;
                }
            }
        }
        false
    }

    /// The members whose probe is due at `now`, in index order.
    pub fn due(&self, now: u64) -> impl Iterator<Item = usize> + '_ {
        self.members
            .iter()
            .enumerate()
            .filter(move |(_, e)| e.next_probe <= now)
            .map(|(i, _)| i)
    }

    /// A probe of member `i` left at `now`: the next one is due a probe
    /// interval later.
    pub fn mark_sent(&mut self, i: usize, now: u64) {
        let interval = self.cfg.probe_interval_ms;
        if let Some(e) = self.members.get_mut(i) {
            e.next_probe = e.next_probe.max(now.saturating_add(interval));
        }
    }

    /// The earliest time a probe is due, `None` without members.
    pub fn next_deadline(&self) -> Option<u64> {
        self.members.iter().map(|e| e.next_probe).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const CFG: HealthConfig = HealthConfig {
        probe_interval_ms: 100,
        down_ttl_ms: 1000,
        rise: 2,
        fall: 3,
    };

    #[test]
    fn members_start_up_with_a_probe_due() {
        let h = Health::new(3, CFG, 50);
        assert!((0..3).all(|i| h.is_up(i) && h.since(i) == 50));
        assert_eq!(h.due(50).collect::<Vec<_>>(), [0, 1, 2]);
        assert_eq!(h.next_deadline(), Some(50));
        assert!(!h.is_up(3));
        assert_eq!(h.since(3), 0);
        assert_eq!(Health::new(0, CFG, 0).next_deadline(), None);
    }

    #[test]
    fn probes_are_scheduled_an_interval_after_they_leave() {
        let mut h = Health::new(2, CFG, 0);
        h.mark_sent(0, 0);
        assert_eq!(h.due(0).collect::<Vec<_>>(), [1]);
        h.mark_sent(1, 30);
        assert_eq!(h.next_deadline(), Some(100));
        assert_eq!(h.due(99).count(), 0);
        assert_eq!(h.due(100).collect::<Vec<_>>(), [0]);
        assert_eq!(h.due(130).collect::<Vec<_>>(), [0, 1]);
        // A late mark moves the probe later, an early one never earlier.
        h.mark_sent(0, 500);
        assert_eq!(h.due(130).collect::<Vec<_>>(), [1]);
        h.mark_sent(0, 0);
        assert_eq!(h.next_deadline(), Some(130));
    }

    #[test]
    fn fall_consecutive_probe_failures_take_a_member_down() {
        let mut h = Health::new(1, CFG, 0);
        assert!(!h.probed(0, false, 10));
        assert!(!h.probed(0, false, 20));
        assert!(!h.probed(0, true, 30)); // resets the count
        assert!(!h.probed(0, false, 40));
        assert!(!h.probed(0, false, 50));
        assert!(h.is_up(0));
        assert!(h.probed(0, false, 60));
        assert!(!h.is_up(0));
        assert_eq!(h.since(0), 60);
        // No hold after probe failures: rise successes bring it back.
        assert!(!h.probed(0, true, 70));
        assert!(!h.probed(0, false, 75));
        assert!(!h.probed(0, true, 80));
        assert!(h.probed(0, true, 90));
        assert!(h.is_up(0));
        assert_eq!(h.since(0), 90);
    }

    #[test]
    fn a_request_failure_holds_a_member_down_for_the_ttl() {
        let mut h = Health::new(2, CFG, 0);
        h.mark_sent(0, 0);
        assert!(h.failed(0, 200));
        assert!(!h.is_up(0));
        assert_eq!(h.since(0), 200);
        // No probe during the hold, and successes then do not count.
        assert_eq!(h.due(1199).collect::<Vec<_>>(), [1]);
        assert!(!h.probed(0, true, 500));
        assert!(!h.probed(0, true, 1100));
        assert!(!h.is_up(0));
        assert_eq!(h.due(1200).collect::<Vec<_>>(), [0, 1]);
        // Another failure while down extends the hold, keeps `since`.
        assert!(!h.failed(0, 1150));
        assert_eq!(h.since(0), 200);
        assert!(!h.probed(0, true, 1200));
        assert!(!h.probed(0, true, 2100));
        assert!(!h.probed(0, true, 2150));
        assert!(h.probed(0, true, 2250));
        assert!(h.is_up(0));
        assert_eq!(h.since(0), 2250);
        // The other member never moved.
        assert!(h.is_up(1));
        assert_eq!(h.since(1), 0);
    }

    #[test]
    fn zero_settings_are_raised_and_bad_indices_ignored() {
        let cfg = HealthConfig {
            probe_interval_ms: 0,
            down_ttl_ms: 0,
            rise: 0,
            fall: 0,
        };
        let mut h = Health::new(1, cfg, 0);
        assert_eq!(h.config().probe_interval_ms, 1);
        h.mark_sent(0, 5);
        assert_eq!(h.next_deadline(), Some(6));
        assert!(h.probed(0, false, 6));
        assert!(h.probed(0, true, 7));
        assert!(!h.failed(9, 7));
        assert!(!h.probed(9, true, 7));
        h.mark_sent(9, 7);
        assert_eq!(h.len(), 1);
        assert!(!h.is_empty());
    }

    #[derive(Clone, Debug)]
    enum Op {
        Failed(usize),
        Probed(usize, bool),
        MarkSent(usize),
        Advance(u64),
        Rewind(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0usize..5).prop_map(Op::Failed),
            (0usize..5, any::<bool>()).prop_map(|(i, ok)| Op::Probed(i, ok)),
            (0usize..5).prop_map(Op::MarkSent),
            (0u64..2000).prop_map(Op::Advance),
            (0u64..500).prop_map(Op::Rewind),
        ]
    }

    proptest! {
        #[test]
        fn any_sequence_keeps_the_guarantees(
            ops in proptest::collection::vec(op(), 0..200),
            interval in 0u64..300,
            ttl in 0u64..3000,
            rise in 0u32..4,
            fall in 0u32..4,
            start in prop_oneof![Just(0u64), Just(u64::MAX - 10_000), any::<u64>()],
        ) {
            let cfg = HealthConfig { probe_interval_ms: interval, down_ttl_ms: ttl, rise, fall };
            let mut h = Health::new(4, cfg, start);
            let mut now = start;
            let mut failed_at: [Option<u64>; 4] = [None; 4];
            let mut deadline = h.next_deadline();
            let mut high = now;
            for op in ops {
                match op {
                    Op::Failed(i) => {
                        h.failed(i, now);
                        if i < 4 {
                            prop_assert!(!h.is_up(i));
                            failed_at[i] = Some(failed_at[i].map_or(now, |t| t.max(now)));
                        }
                    }
                    Op::Probed(i, ok) => { h.probed(i, ok, now); }
                    Op::MarkSent(i) => {
                        h.mark_sent(i, now);
                        if i < 4 {
                            prop_assert!(!h.due(now).any(|d| d == i) || now.checked_add(interval.max(1)).is_none());
                        }
                    }
                    Op::Advance(d) => now = now.saturating_add(d),
                    // Clocks may be read out of order by callers.
                    Op::Rewind(d) => now = now.saturating_sub(d),
                }
                high = high.max(now);
                // The hold is a promise on the latest time seen: a caller
                // that reads its clock out of order may see a member up at
                // an earlier time than a failure, never at a later one.
                for (i, at) in failed_at.iter().enumerate() {
                    if let Some(at) = at {
                        if now == high && now < at.saturating_add(ttl) && now >= *at {
                            prop_assert!(!h.is_up(i), "member {} up {} ms after a failure", i, now - at);
                        }
                    }
                }
                let d = h.next_deadline();
                prop_assert!(d >= deadline, "deadline moved earlier: {:?} -> {:?}", deadline, d);
                deadline = d;
            }
        }
    }
}
