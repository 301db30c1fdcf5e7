//! Whether this host should serve a port rule: the health of the rule's
//! local service and of its frontend instances, with hysteresis and a
//! minimum hold time (times in milliseconds).
//!
//! Owns: [`RuleHealth`], a sans-IO machine per rule over two kinds of
//! probe targets ([`Target`]): the rule's service (`health`, at most one)
//! and its instances (`instances`, each probed by `instance_probe`). Each
//! kind is a [`Health`] (consecutive `fall` failures take a target down,
//! `rise` successes bring it back). The engine sends the probes the
//! machine asks for ([`RuleHealth::due`], [`RuleHealth::mark_sent`]),
//! reports their results ([`RuleHealth::probed`]), wakes at
//! [`RuleHealth::next_deadline`] to call [`RuleHealth::handle_timeout`], and
//! reads [`RuleHealth::serving`]: while it is false the host drains the
//! rule (it advertises weight 0 through the normal convergence:
//! [`crate::Machine::handle_rule_health`]).
//!
//! # When the host leaves and when it comes back
//!
//! The rule *should* be served when the service is up (or has no probe) and
//! at least one instance is up (or the rule has none). The host leaves the
//! rule as soon as that stops being true: clients must not be sent to a
//! dead service for longer than `fall` probes. It comes back when it is
//! true again **and** it has been out for at least `hold_ms`.
//!
//! # Why a flapping service cannot flap the cluster
//!
//! `fall` and `rise` already ignore a single bad or good probe. A service
//! that dies and comes back faster than that is never seen to change. One
//! slower than that but still flapping would, without a hold, move the
//! rule's buckets out and back on every flap; every move is a convergence
//! of the whole cluster and a reshuffle of new connections. The hold bounds
//! it: the rule's state changes at most twice per `hold_ms` (out at once,
//! back no earlier than `hold_ms` later), whatever the service does. The
//! asymmetry is deliberate: leaving is what protects clients, coming back
//! only restores balance, so only coming back waits.
//!
//! Guarantees: fixed memory after [`RuleHealth::new`]; no input panics
//! (an out-of-range instance is ignored; a time earlier than one seen
//! before is taken as that earlier time by [`Health`], and the hold uses
//! saturating arithmetic).

use crate::health::{Health, HealthConfig};

/// How one kind of target is probed (`interval_ms`, `fall`, `rise`; the
/// timeout is the engine's).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ProbeTiming {
    /// Time from one probe of a target to the next.
    pub interval_ms: u64,
    /// Consecutive failures that take a target down.
    pub fall: u32,
    /// Consecutive successes that bring it back.
    pub rise: u32,
}

impl ProbeTiming {
    fn health(self) -> HealthConfig {
        HealthConfig {
            probe_interval_ms: self.interval_ms,
            down_ttl_ms: 0,
            rise: self.rise,
            fall: self.fall,
        }
    }
}

/// What a rule's health machine watches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RuleHealthConfig {
    /// The service probe, if the rule has `health`.
    pub service: Option<ProbeTiming>,
    /// How many instances and how they are probed (0: no `instances`).
    pub instances: usize,
    /// The instance probe's timing.
    pub instance_probe: ProbeTiming,
    /// Least time out of the rule before coming back.
    pub hold_ms: u64,
}

/// A probe target of a rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Target {
    /// The rule's service (`health`).
    Service,
    /// Instance `i` (index into `instances`).
    Instance(usize),
}

/// Why a rule is (or is not) served here.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    /// Served.
    Serving,
    /// Left: the service failed `fall` probes in a row.
    ServiceDown,
    /// Left: every instance failed `fall` probes in a row.
    InstancesDown,
    /// Out, the service is healthy again, but the hold has not passed.
    Held,
}

impl Reason {
    /// The words `shoal query` shows.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Serving => "serving",
            Reason::ServiceDown => "service down (health probe failed)",
            Reason::InstancesDown => "every instance down (instance probes failed)",
            Reason::Held => "service healthy again, held out for the minimum hold time",
        }
    }
}

/// Transitions counted for the stats JSON.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RuleHealthCounters {
    /// Times the host left the rule.
    pub left: u64,
    /// Times it came back.
    pub returned: u64,
    /// Instances seen going down.
    pub instance_down: u64,
    /// Instances seen coming back.
    pub instance_up: u64,
    /// Service probe state changes (down or up) seen.
    pub service_changes: u64,
}

/// One rule's health (see the module docs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleHealth {
    cfg: RuleHealthConfig,
    service: Option<Health>,
    instances: Health,
    serving: bool,
    /// When the host last left the rule.
    left_at: Option<u64>,
    counters: RuleHealthCounters,
}

impl RuleHealth {
    /// A rule served from `now`, every target up with a probe due at once.
    pub fn new(cfg: RuleHealthConfig, now: u64) -> Self {
        Self {
            cfg,
            service: cfg.service.map(|t| Health::new(1, t.health(), now)),
            instances: Health::new(cfg.instances, cfg.instance_probe.health(), now),
            serving: true,
            left_at: None,
            counters: RuleHealthCounters::default(),
        }
    }

    /// Whether this host should take new connections under the rule.
    pub fn serving(&self) -> bool {
        self.serving
    }

    /// Why.
    pub fn reason(&self) -> Reason {
        if self.serving {
            Reason::Serving
        } else if !self.service_up() {
            Reason::ServiceDown
        } else if !self.any_instance_up() {
            Reason::InstancesDown
        } else {
            Reason::Held
        }
    }

    /// Whether instance `i` is up (`false` out of range).
    pub fn instance_up(&self, i: usize) -> bool {
        self.instances.is_up(i)
    }

    /// Up-or-down of every instance, in order.
    pub fn instances_up(&self) -> Vec<bool> {
        (0..self.instances.len())
            .map(|i| self.instances.is_up(i))
            .collect()
    }

    /// Whether the service probe says up (true without a probe).
    pub fn service_up(&self) -> bool {
        self.service.as_ref().is_none_or(|h| h.is_up(0))
    }

    fn any_instance_up(&self) -> bool {
        self.instances.is_empty() || (0..self.instances.len()).any(|i| self.instances.is_up(i))
    }

    /// The transitions so far.
    pub fn counters(&self) -> RuleHealthCounters {
        self.counters
    }

    /// The targets whose probe is due at `now`.
    pub fn due(&self, now: u64) -> Vec<Target> {
        let mut v = Vec::new();
        if let Some(s) = &self.service {
            if s.due(now).next().is_some() {
                v.push(Target::Service);
            }
        }
        v.extend(self.instances.due(now).map(Target::Instance));
        v
    }

    /// A probe of `target` left at `now`.
    pub fn mark_sent(&mut self, target: Target, now: u64) {
        match target {
            Target::Service => {
                if let Some(s) = &mut self.service {
                    s.mark_sent(0, now);
                }
            }
            Target::Instance(i) => self.instances.mark_sent(i, now),
        }
    }

    /// A probe of `target` answered (`ok`) or failed at `now`. Returns
    /// whether that target changed state (an instance's change means the
    /// instance table must be rebuilt); [`RuleHealth::serving`] may change
    /// too.
    pub fn probed(&mut self, target: Target, ok: bool, now: u64) -> bool {
        let changed = match target {
            Target::Service => match &mut self.service {
                Some(s) => s.probed(0, ok, now),
                None => false,
            },
            Target::Instance(i) => self.instances.probed(i, ok, now),
        };
        if changed {
            match target {
                Target::Service => self.counters.service_changes += 1,
                Target::Instance(i) if self.instances.is_up(i) => self.counters.instance_up += 1,
                Target::Instance(_) => self.counters.instance_down += 1,
            }
        }
        self.handle_timeout(now);
        changed
    }

    /// Re-evaluates whether to serve at `now` (the hold may have passed).
    /// Returns whether [`RuleHealth::serving`] changed.
    pub fn handle_timeout(&mut self, now: u64) -> bool {
        let healthy = self.service_up() && self.any_instance_up();
        match (self.serving, healthy) {
            (true, false) => {
                self.serving = false;
                self.left_at = Some(now);
                self.counters.left += 1;
                true
            }
            (false, true) if now >= self.hold_end() => {
                self.serving = true;
                self.counters.returned += 1;
                true
            }
            _ => false,
        }
    }

    fn hold_end(&self) -> u64 {
        self.left_at
            .map_or(0, |t| t.saturating_add(self.cfg.hold_ms))
    }

    /// When to call [`RuleHealth::handle_timeout`] or send probes next.
    pub fn next_deadline(&self) -> Option<u64> {
        let mut t = self.instances.next_deadline();
        if let Some(s) = &self.service {
            t = min_opt(t, s.next_deadline());
        }
        if !self.serving && self.service_up() && self.any_instance_up() {
            t = min_opt(t, Some(self.hold_end()));
        }
        t
    }
}

fn min_opt(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, None) => a,
        (None, b) => b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const T: ProbeTiming = ProbeTiming {
        interval_ms: 100,
        fall: 2,
        rise: 2,
    };

    fn cfg(instances: usize, hold_ms: u64) -> RuleHealthConfig {
        RuleHealthConfig {
            service: Some(T),
            instances,
            instance_probe: T,
            hold_ms,
        }
    }

    #[test]
    fn a_dead_service_leaves_the_rule_after_fall_probes_and_returns_after_rise_and_hold() {
        let mut h = RuleHealth::new(cfg(0, 1000), 0);
        assert!(h.serving());
        assert_eq!(h.due(0), vec![Target::Service]);
        h.probed(Target::Service, false, 100);
        assert!(h.serving());
        h.probed(Target::Service, false, 200);
        assert!(!h.serving());
        assert_eq!(h.reason(), Reason::ServiceDown);
        h.probed(Target::Service, true, 300);
        h.probed(Target::Service, true, 400);
        assert!(!h.serving());
        assert_eq!(h.reason(), Reason::Held);
        assert!(h.next_deadline().unwrap() <= 1200);
        assert!(!h.handle_timeout(1199));
        assert!(h.handle_timeout(1200));
        assert!(h.serving());
        let c = h.counters();
        assert_eq!((c.left, c.returned, c.service_changes), (1, 1, 2));
    }

    #[test]
    fn the_rule_is_left_only_when_every_instance_is_dead() {
        let mut h = RuleHealth::new(
            RuleHealthConfig {
                service: None,
                ..cfg(3, 0)
            },
            0,
        );
        for i in 0..2 {
            h.probed(Target::Instance(i), false, 10);
            assert!(h.probed(Target::Instance(i), false, 20));
        }
        assert!(h.serving());
        assert_eq!(h.instances_up(), vec![false, false, true]);
        h.probed(Target::Instance(2), false, 30);
        h.probed(Target::Instance(2), false, 40);
        assert!(!h.serving());
        assert_eq!(h.reason(), Reason::InstancesDown);
        h.probed(Target::Instance(1), true, 50);
        h.probed(Target::Instance(1), true, 60);
        assert!(h.serving());
        assert_eq!(h.counters().instance_down, 3);
        assert_eq!(h.counters().instance_up, 1);
        // Out of range: ignored.
        assert!(!h.probed(Target::Instance(9), false, 70));
    }

    proptest! {
        /// Whatever the probe results, the rule changes state at most
        /// twice per hold time: every return is at least `hold_ms` after
        /// the departure before it.
        #[test]
        fn a_flapping_service_changes_the_rule_at_most_twice_per_hold(
            results in proptest::collection::vec(any::<bool>(), 1..400),
            hold in 0u64..3000,
        ) {
            let mut h = RuleHealth::new(cfg(0, hold), 0);
            let mut left_at = None;
            let mut now = 0;
            for ok in results {
                now += 50;
                let before = h.serving();
                h.probed(Target::Service, ok, now);
                h.handle_timeout(now);
                match (before, h.serving()) {
                    (true, false) => left_at = Some(now),
                    (false, true) => prop_assert!(now >= left_at.unwrap() + hold),
                    _ => {}
                }
            }
        }
    }
}
