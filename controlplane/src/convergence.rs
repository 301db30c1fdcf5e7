//! Convergence: the state machine that turns heartbeats into the view each
//! host judges frames by.
//!
//! # What this module owns
//!
//! [`Machine`], one per host: its administrative settings (weights, drain,
//! enable/disable, stop/suspend), its proposal, the agreement and release
//! protocol, the view it has adopted, and the *effective view* the engine
//! compiles into the [`shoal_dataplane::map::ClusterMap`] its poll loops use.
//!
//! It is one module, past the house's usual size, because its one job is one
//! state machine: the steps of a round (propose, agree, release, adopt) read
//! and write the same round state, and splitting them would turn that state
//! into an interface. What is not the round lives elsewhere: liveness and
//! exclusions in [`crate::membership`], the lone-host guard in
//! [`crate::lone`], the wire format in [`crate::heartbeat`].
//!
//! # The protocol
//!
//! Every host proposes a view: the live, participating members of the
//! winning rule fingerprint (see [`crate::membership`]) with the weights,
//! drain and disable flags each of them advertises. A proposal is named by
//! its digest (SHA-256 of the rule fingerprint and the whole view, 64 bits):
//! equal digests mean equal views, which is stronger than an epoch number
//! two hosts could assign differently.
//!
//! 1. **Agree.** A host *agrees* on its proposal `T` when it has sent
//!    `converge_periods` heartbeats carrying `T`'s digest and has received
//!    `converge_periods` consecutive heartbeats carrying the same digest
//!    from every member of `T` (losses delay this, they do not reset it),
//!    and it has listened for at least `tolerance × period` since it booted.
//! 2. **Release.** On agreement the host narrows its effective view to the
//!    *conservative combination* of what it had and `T` (below): it takes
//!    new connections only in buckets it owns both before and in `T`. Once
//!    the dataplane has been switched and has reported the resulting dirty
//!    groups (`handle_dirty`), the host advertises `bound = digest(T)`:
//!    "every bucket I take new connections in is mine in `T`".
//! 3. **Adopt.** A host adopts `T` (effective view := `T`) when every live
//!    host it hears — members, hosts with other rules, stopped hosts —
//!    advertises `bound ∈ {digest(T), 0}` (`0`: "I take no new connection
//!    anywhere").
//!
//! The period is halved while the cluster converges (NLB), and a heartbeat
//! is sent at once (at most every quarter period) whenever the proposal or
//! the advertised bound changes.
//!
//! # Why at most one host keeps a frame, even mid-convergence
//!
//! *New connections.* Each host's effective view only ever shrinks the set
//! of buckets it takes new connections in, except at adoption; and a host
//! adopts `T` only after every live host has said its set is within its
//! share of `T`. At any instant, take the hosts that have adopted `T`: they
//! own disjoint shares of `T`; every other live host takes new connections
//! only inside its own share of `T` (it advertised so, and it can only
//! shrink further until it adopts a later view, which in turn needs *this*
//! host's promise for that later view). So two hosts taking the same bucket
//! would both own it in `T`, which a bucket map forbids.
//! The conservative combination is a single [`View`] computed per host: the
//! local host gets the *minimum* of its effective weights in the two views
//! (0 where it is absent or disabled in either), every other host the
//! *maximum*. Weighted rendezvous hashing (the dataplane's bucket map)
//! gives a host bucket `b` iff its score beats every other's; lowering the
//! local weight and raising the others' only makes that harder, so a bucket
//! the local host wins in the combination it wins in both views. The same
//! holds for single-host rules (the best live priority) and for the default
//! host (the lowest member, which the local host only is when it is a
//! member of both views).
//!
//! *Existing connections* are kept where they are tracked. Before a host
//! advertises a new bound, its dataplane has re-marked the connections in
//! buckets it no longer owns as foreign, and those groups ride in the same
//! heartbeat as the bound; a host that adopts has therefore already received
//! every dirty group it must leave alone (an incompletely paged set counts
//! as "dirty everywhere" for its rules).
//!
//! *Local reductions apply at once.* Draining, disabling, lowering a weight
//! or stopping only ever shrink what the local host takes, so they reach the
//! effective view immediately; raising a weight or enabling waits for
//! agreement.
//!
//! *A host others think dead steps back.* A member that hears another
//! member propose a view without it takes no new connections (bound 0) until
//! it is back in an agreed view: the other side may be about to hand its
//! buckets out. This keeps a two-host cluster from duplicating after a burst
//! of lost heartbeats.
//!
//! *What no protocol can give:* hosts that cannot hear each other at all (a
//! partition of the heartbeat path that still delivers client frames to
//! both sides) form two clusters. When such a partition heals, both sides
//! own their views until each hears the other (up to one period), then step
//! back and converge as above.
//!
//! # Drain
//!
//! `drain` of a rule or `drainstop` of the host sets the weight to 0 for new
//! connections at once; tracked connections keep being served. When the
//! open connections of the drained scope reach 0 (`handle_load`: half-open
//! or established, closing ones do not count) after the cluster has adopted
//! the drain, or the drain timeout (default 20 min) expires, a drained rule
//! becomes disabled on this host and a drained host stops.

use std::collections::VecDeque;
use std::fmt;

use shoal_dataplane::map::{GroupBits, View};
use shoal_dataplane::{ClusterSpec, HostId, HostSet, MAX_HOSTS, MAX_RULES};

use crate::heartbeat::{
    digest64, rule_fingerprint, ClaimedSender, ClusterAuth, DirtyPager, Heartbeat, HeartbeatError,
    HostState, Phase, MAX_FRAME,
};
use crate::lone::{LoneGuard, Screened, Suspicion, MIN_SUSPICION_NS};
use crate::membership::{Membership, MembershipCounters, Notice, Standing};
use crate::rule_health::Reason;

/// Nanoseconds per second.
const SEC: u64 = 1_000_000_000;

/// Timing and identity of one host's control plane. Its `Debug` output
/// shows every field but the key.
#[derive(Clone)]
pub struct Config {
    /// This host's ID.
    pub host: HostId,
    /// The 32-byte cluster key.
    pub key: [u8; 32],
    /// Boot counter: must be higher at every start of the host than at any
    /// start before (the engine keeps it across restarts), or a restarted
    /// host's heartbeats are refused as replays until peers forget it.
    pub boot_id: u64,
    /// Wall-clock time minus the monotonic `now` passed to the machine, ns:
    /// heartbeats carry `now + wall_offset_ns` as their send time (moved
    /// forward to faster peers' clocks, see [`crate::membership`]). 0 makes
    /// the monotonic clock the wall clock, which hosts driven by one
    /// simulated clock share.
    pub wall_offset_ns: i64,
    /// Heartbeat period, ns (NLB's AliveMsgPeriod; default 1 s).
    pub period_ns: u64,
    /// Missed periods before a host is dead (AliveMsgTolerance; default 5).
    pub tolerance: u32,
    /// Heartbeats of agreement needed before a view is adopted (default 3).
    pub converge_periods: u32,
    /// Longest a drain waits for connections to end (default 20 min).
    pub drain_timeout_ns: u64,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Destructured so that a new field cannot be left out unnoticed.
        let Config {
            host,
            key: _,
            boot_id,
            wall_offset_ns,
            period_ns,
            tolerance,
            converge_periods,
            drain_timeout_ns,
        } = self;
        f.debug_struct("Config")
            .field("host", host)
            .field("key", &format_args!("<redacted>"))
            .field("boot_id", boot_id)
            .field("wall_offset_ns", wall_offset_ns)
            .field("period_ns", period_ns)
            .field("tolerance", tolerance)
            .field("converge_periods", converge_periods)
            .field("drain_timeout_ns", drain_timeout_ns)
            .finish()
    }
}

impl Config {
    /// NLB's defaults for `host`.
    pub fn new(host: HostId, key: [u8; 32], boot_id: u64) -> Self {
        Self {
            host,
            key,
            boot_id,
            wall_offset_ns: 0,
            period_ns: SEC,
            tolerance: 5,
            converge_periods: 3,
            drain_timeout_ns: 20 * 60 * SEC,
        }
    }

    /// How long after a heartbeat for this cluster fails authentication a
    /// lone host keeps from serving (see [`crate::lone`]): the liveness
    /// window, `tolerance × period`, and at least [`MIN_SUSPICION_NS`].
    pub fn suspicion_ns(&self) -> u64 {
        (self.tolerance as u64)
            .saturating_mul(self.period_ns)
            .max(MIN_SUSPICION_NS)
    }
}

/// What the engine must act on or report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// Compile `view` into a `ClusterMap` with `epoch`, give it
    /// [`Machine::dirty_elsewhere`] for every rule, install it in every poll
    /// loop, then report the dataplane's dirty groups with
    /// [`Machine::handle_dirty`] (same `epoch`). Do this before the next
    /// [`Machine::poll_transmit`].
    EffectiveViewChanged {
        /// The view to compile: the effective view, or while a lone view is
        /// withheld, that view with no member (see [`crate::lone`]).
        view: View,
        /// The map epoch: increases with every new effective view; a lone
        /// view released after being withheld comes again under its epoch.
        epoch: u64,
        /// The phase that produced it.
        phase: Phase,
    },
    /// A view in which this host is the only member is withheld: heartbeats
    /// for this cluster fail authentication (another key on the segment?).
    /// The [`Event::EffectiveViewChanged`] that follows carries the view
    /// with no member instead (see [`crate::lone`]). Sent when a
    /// withholding starts, not for every view it replaces.
    LoneViewWithheld {
        /// The epoch of the withheld view.
        epoch: u64,
        /// The stream of heartbeats failing authentication that made the
        /// guard suspect.
        why: Suspicion,
    },
    /// No heartbeat has failed authentication for the suspicion window: the
    /// withheld lone view follows in an [`Event::EffectiveViewChanged`].
    LoneViewReleased {
        /// Its epoch.
        epoch: u64,
    },
    /// Other hosts' dirty groups changed: refresh every rule's
    /// `dirty_elsewhere` on the installed map.
    DirtyElsewhereChanged,
    /// The host adopted an agreed view (informational: the effective view
    /// follows in an [`Event::EffectiveViewChanged`]).
    ViewAdopted {
        /// The view.
        view: View,
        /// Its cluster epoch.
        epoch: u64,
    },
    /// This host was called `late_ns` after it was due (it did not run):
    /// its peers' silence over that time was excused (see
    /// [`crate::membership::Membership::excuse`]).
    Stalled {
        /// How late, ns.
        late_ns: u64,
    },
    /// This host ran but its receive path did not for `deaf_ns` (the
    /// engine said so through [`Machine::handle_deaf`]): its peers'
    /// silence over that time was excused, as for a stall.
    Deaf {
        /// How long it could not hear, ns.
        deaf_ns: u64,
    },
    /// A peer became live.
    HostUp(HostId),
    /// A peer stopped being heard.
    HostDown(HostId),
    /// A peer restarted (new boot id).
    HostRestarted(HostId),
    /// This host's heartbeat clock was `behind_ns` behind `host`'s
    /// authenticated send time and has moved forward to it (see
    /// [`crate::membership`]): the host's wall clock is off, fix NTP.
    ClockBehind {
        /// The peer with the faster clock.
        host: HostId,
        /// By how much this host's clock was behind, ns.
        behind_ns: u64,
    },
    /// A heartbeat was refused (rate-limited per reason).
    Rejected(HeartbeatError),
    /// Two hosts use this ID; it is kept out of the view.
    DuplicateId(HostId),
    /// A host's rules differ from the winning fingerprint; it is kept out.
    RuleMismatch {
        /// The host (may be the local one).
        host: HostId,
        /// Its fingerprint.
        fingerprint: u64,
    },
    /// The cluster started converging.
    ConvergenceStarted,
    /// The cluster converged.
    Converged {
        /// Members of the adopted view.
        members: HostSet,
        /// Its cluster epoch.
        epoch: u64,
        /// Time since convergence started, ns.
        duration_ns: u64,
    },
    /// The host's state changed.
    StateChanged(HostState),
    /// A drain finished (`rules`: the rules it covered; the host stops when
    /// it was a `drainstop`).
    DrainFinished {
        /// Rules (bit per rule).
        rules: u32,
        /// Whether it ended by timeout rather than by connections ending.
        timed_out: bool,
    },
}

/// Administrative state set by the verbs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Admin {
    /// Taking part.
    Started,
    /// `stop`.
    Stopped,
    /// `suspend`.
    Suspended,
}

/// The local host's settings.
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    pub(crate) admin: Admin,
    /// Configured weight per rule.
    pub(crate) weights: [u8; MAX_RULES],
    /// Rules disabled here.
    pub(crate) disabled: u32,
    /// Rules draining here, with when each started.
    pub(crate) draining: [Option<u64>; MAX_RULES],
    /// `drainstop` in progress since.
    pub(crate) host_drain: Option<u64>,
    /// Rules this host has left because their service is unhealthy, with
    /// why (see [`crate::rule_health`]): weight 0, like a drain that never
    /// finishes, until the engine says the service is back.
    pub(crate) left: [Option<Reason>; MAX_RULES],
}

#[derive(Clone, Debug)]
struct Adopted {
    view: View,
    digest: u64,
    epoch: u64,
}

/// One host's control plane. See the module docs and the crate docs for the
/// calling order.
#[derive(Debug)]
pub struct Machine {
    pub(crate) cfg: Config,
    pub(crate) spec: ClusterSpec,
    auth: ClusterAuth,
    fingerprint: u64,
    pub(crate) membership: Membership,
    started_at: u64,
    pub(crate) settings: Settings,
    load: [Option<u64>; MAX_RULES],
    adopted: Option<Adopted>,
    effective: View,
    map_epoch: u64,
    /// Digest bounding the effective view's new connections (0: none).
    bound: u64,
    /// Map epoch at which `bound` was last set.
    bound_epoch: u64,
    /// The bound heartbeats carry (lags `bound` until dirty is reported).
    advertised_bound: u64,
    target: Option<(View, u64)>,
    proposal: View,
    proposal_digest: u64,
    own_run: u32,
    standing: Standing,
    mismatched: HostSet,
    pub(crate) state: HostState,
    converging_since: Option<u64>,
    seq: u64,
    next_tx: u64,
    last_tx: Option<u64>,
    pager: DirtyPager,
    local_dirty: Vec<GroupBits>,
    dirty_epoch: u64,
    dirty_elsewhere: Vec<GroupBits>,
    dirty_stale: bool,
    events: VecDeque<Event>,
    pub(crate) last_convergence_ns: Option<u64>,
    listened: bool,
    /// The latest `now` the machine has seen.
    last_update: u64,
    /// When the machine last asked to be called again ([`Machine::poll_timeout`]
    /// as of its latest update, never before that update): a call much
    /// later than this means this host did not run (see [`Machine::excuse_stall`]).
    due: u64,
    /// Holds a lone view back while heartbeats fail authentication.
    lone: LoneGuard,
}

fn rules_mask(n: usize) -> u32 {
    if n >= 32 {
        u32::MAX
    } else {
        (1u32 << n) - 1
    }
}

/// The effective weight of `h` under rule `r` in `v` (0 when absent or
/// disabled there).
fn eff(v: &View, h: HostId, r: usize) -> u8 {
    if v.members.contains(h) && !v.disabled.get(r).is_some_and(|d| d.contains(h)) {
        v.weights.get(r).map_or(0, |w| w[h.index()])
    } else {
        0
    }
}

/// A view in which `local` takes nothing new and no host is a member.
fn empty_view(rules: usize) -> View {
    View {
        members: HostSet::EMPTY,
        weights: vec![[0; MAX_HOSTS]; rules],
        disabled: vec![HostSet::EMPTY; rules],
    }
}

/// The conservative combination for `local` of `a` and `b` (module docs):
/// `local` wins a bucket in it only if it wins it in both.
pub fn conservative(local: HostId, a: &View, b: &View, rules: usize) -> View {
    let mut members = HostSet::from_bits(a.members.bits() | b.members.bits());
    members.remove(local);
    if a.members.contains(local) && b.members.contains(local) {
        members.insert(local);
    }
    let mut weights = vec![[0u8; MAX_HOSTS]; rules];
    let mut disabled = vec![HostSet::EMPTY; rules];
    for r in 0..rules {
        for h in HostId::all() {
            let (x, y) = (eff(a, h, r), eff(b, h, r));
            weights[r][h.index()] = if h == local { x.min(y) } else { x.max(y) };
        }
        let off = |v: &View| v.disabled.get(r).is_some_and(|d| d.contains(local));
        if off(a) || off(b) {
            disabled[r].insert(local);
        }
    }
    View {
        members,
        weights,
        disabled,
    }
}

/// The digest naming `view` under rule fingerprint `fingerprint`.
pub fn view_digest(fingerprint: u64, view: &View) -> u64 {
    let mut w = Vec::with_capacity(view.weights.len() * MAX_HOSTS);
    for r in &view.weights {
        for h in HostId::all() {
            w.push(if view.members.contains(h) {
                r[h.index()]
            } else {
                0
            });
        }
    }
    let mut d = Vec::with_capacity(view.disabled.len() * 8);
    for s in &view.disabled {
        d.extend_from_slice(&(s.bits() & view.members.bits()).to_be_bytes());
    }
    digest64(
        b"shoal view v1",
        &[
            &fingerprint.to_be_bytes(),
            &view.members.bits().to_be_bytes(),
            &w,
            &d,
        ],
    )
}

impl Machine {
    /// A control plane for `cfg.host` in the cluster `spec`, booted at `now`.
    /// It starts [`Phase::Idle`] (taking no new connections) and listens for
    /// `tolerance × period` before it may adopt a view.
    pub fn new(cfg: Config, spec: ClusterSpec, now: u64) -> Self {
        let rules = spec.rules.len().min(MAX_RULES);
        let mut spec = spec;
        spec.rules.truncate(rules);
        let mut weights = [0u8; MAX_RULES];
        for (r, rule) in spec.rules.iter().enumerate() {
            weights[r] = rule.weights[cfg.host.index()];
        }
        let auth = ClusterAuth::new(cfg.key, &spec);
        let fingerprint = rule_fingerprint(&spec);
        let membership = Membership::new(
            cfg.host,
            cfg.boot_id,
            cfg.wall_offset_ns,
            cfg.tolerance,
            cfg.period_ns,
            now,
        );
        let empty = empty_view(rules);
        let proposal_digest = view_digest(fingerprint, &empty);
        let lone = LoneGuard::new(cfg.host, cfg.suspicion_ns(), cfg.period_ns);
        Self {
            cfg,
            spec,
            auth,
            fingerprint,
            membership,
            started_at: now,
            settings: Settings {
                admin: Admin::Started,
                weights,
                disabled: 0,
                draining: [None; MAX_RULES],
                host_drain: None,
                left: [None; MAX_RULES],
            },
            load: [None; MAX_RULES],
            adopted: None,
            effective: empty.clone(),
            map_epoch: 1,
            bound: 0,
            bound_epoch: 1,
            advertised_bound: 0,
            target: None,
            proposal: empty,
            proposal_digest,
            own_run: 0,
            standing: Standing::Member,
            mismatched: HostSet::EMPTY,
            state: HostState::Converging,
            converging_since: Some(now),
            seq: 0,
            next_tx: now,
            last_tx: None,
            pager: DirtyPager::new(),
            local_dirty: vec![GroupBits::default(); rules],
            dirty_epoch: 1,
            dirty_elsewhere: vec![GroupBits::default(); rules],
            dirty_stale: false,
            events: VecDeque::new(),
            last_convergence_ns: None,
            listened: false,
            last_update: now,
            due: now,
            lone,
        }
    }

    // ---- accessors -------------------------------------------------------

    /// This host's ID.
    pub fn host(&self) -> HostId {
        self.cfg.host
    }

    /// The cluster spec in force.
    pub fn spec(&self) -> &ClusterSpec {
        &self.spec
    }

    /// The rule fingerprint of the spec in force.
    pub fn fingerprint(&self) -> u64 {
        self.fingerprint
    }

    /// The effective view (what the installed map is built from, unless a
    /// lone view is withheld: [`Machine::lone_view_withheld`]) and its map
    /// epoch.
    pub fn effective_view(&self) -> (&View, u64) {
        (&self.effective, self.map_epoch)
    }

    /// Each live peer's advertised bound (the digest of the view it
    /// promises to stay within; 0: it takes nothing new), and the bound this
    /// host advertises, for the logs.
    pub fn bounds(&self) -> (u64, Vec<(HostId, u64)>) {
        (
            self.advertised_bound,
            self.membership
                .live_peers()
                .map(|p| (p.latest.host, p.latest.bound))
                .collect(),
        )
    }

    /// The adopted view and its cluster epoch, if any.
    pub fn adopted_view(&self) -> Option<(&View, u64)> {
        self.adopted.as_ref().map(|a| (&a.view, a.epoch))
    }

    /// The view this host proposes.
    pub fn proposal(&self) -> &View {
        &self.proposal
    }

    /// The host's state.
    pub fn state(&self) -> HostState {
        self.state
    }

    /// The host's convergence phase.
    pub fn phase(&self) -> Phase {
        if self.bound == 0 {
            Phase::Idle
        } else if self.target.is_some() {
            Phase::Releasing
        } else if self.proposal_digest != self.bound {
            Phase::Agreeing
        } else {
            Phase::Stable
        }
    }

    /// Heartbeat counters.
    pub fn counters(&self) -> &MembershipCounters {
        self.membership.counters()
    }

    /// Hosts excluded for their rules.
    pub fn mismatched(&self) -> HostSet {
        self.mismatched
    }

    /// Whether a lone view is withheld because heartbeats for this cluster
    /// fail authentication (see [`crate::lone`]).
    pub fn lone_view_withheld(&self) -> bool {
        self.lone.withholds()
    }

    /// Why a lone view is withheld, while one is: the claimed sender of the
    /// heartbeats failing authentication and how many it sent.
    pub fn lone_view_withheld_because(&self) -> Option<Suspicion> {
        self.lone.withheld_because()
    }

    /// Whether the local host is outvoted or duplicated.
    pub fn standing(&self) -> Standing {
        self.standing
    }

    /// The union of the dirty groups of `rule` reported by the other live
    /// hosts: set it on the installed map's rule.
    pub fn dirty_elsewhere(&mut self, rule: usize) -> GroupBits {
        if self.membership.take_dirty_changed() {
            self.dirty_stale = true;
        }
        self.refresh_dirty();
        self.dirty_elsewhere.get(rule).cloned().unwrap_or_default()
    }

    /// The period in use, ns (halved while converging).
    pub fn period_in_use(&self) -> u64 {
        if self.state == HostState::Converging {
            (self.cfg.period_ns / 2).max(1)
        } else {
            self.cfg.period_ns.max(1)
        }
    }

    fn rules(&self) -> usize {
        self.spec.rules.len()
    }

    fn participates(&self) -> bool {
        self.settings.admin == Admin::Started
    }

    // ---- inputs ----------------------------------------------------------

    /// A heartbeat frame (Ethernet header included) received at `now`.
    ///
    /// # Errors
    /// Why it was refused (also counted and reported); refusals never change
    /// the agreed view. A refusal for a bad tag keeps a lone view from being
    /// served for a while (see [`crate::lone`]).
    pub fn handle_heartbeat(&mut self, frame: &[u8], now: u64) -> Result<(), HeartbeatError> {
        let r = self.membership.handle_frame(frame, &self.auth, now);
        if matches!(r, Err(HeartbeatError::BadMac)) {
            if let Some(sender) = ClaimedSender::of(frame) {
                self.lone.handle_bad_mac(sender, now);
            }
        }
        self.update(now);
        r.map(|_| ())
    }

    /// Timers: call when [`Machine::poll_timeout`] has passed (calling it
    /// more often is harmless).
    pub fn handle_timeout(&mut self, now: u64) {
        self.update(now);
    }

    /// This host ran, but what brings its heartbeats in did not for the
    /// `deaf_ns` up to `now` (the engine's poll loops were descheduled
    /// while its control thread was not): nothing could be heard, so the
    /// peers' silence over that time is not held against them, exactly as
    /// for this host's own stall ([`Event::Stalled`]). Without
    /// it, a host whose poll loops were starved for longer than the
    /// tolerance declared every peer dead and took their buckets over. The
    /// engine reports each stretch once; a receive path that never runs
    /// again keeps peers alive here, and this host, whose heartbeats go
    /// out the same way, is the one its peers declare dead.
    pub fn handle_deaf(&mut self, deaf_ns: u64, now: u64) {
        if deaf_ns > 0 && self.membership.live_peers().next().is_some() {
            self.membership.excuse(deaf_ns, now);
            self.events.push_back(Event::Deaf { deaf_ns });
        }
        self.update(now);
    }

    /// The local dataplane's dirty groups (one entry per rule) under the map
    /// of `epoch`, the one its poll loops run.
    ///
    /// A report for an older epoch than the effective view's (a newer map
    /// is still being compiled) is what the dataplane tracks *now*, so it
    /// is advertised all the same: ignoring it left connections that went
    /// foreign under the running map unreported, and others took them over
    /// mid-stream. Only a report under the newest map lets a new bound be
    /// advertised (`dirty_epoch`).
    pub fn handle_dirty(&mut self, epoch: u64, dirty: &[GroupBits], now: u64) {
        if epoch > self.map_epoch {
            return;
        }
        for (r, d) in dirty.iter().enumerate().take(self.rules()) {
            self.local_dirty[r] = d.clone();
        }
        self.dirty_epoch = self.dirty_epoch.max(epoch);
        self.update(now);
    }

    /// The local dataplane's open connections under `rule` (for drains):
    /// half-open or established TCP connections, not closing ones (FIN or
    /// RST seen), which only linger for retransmissions and must not hold
    /// a drain up. A drain of the rule ends when this is 0 and the cluster
    /// has adopted the drain.
    pub fn handle_load(&mut self, rule: usize, descriptors: u64, now: u64) {
        if let Some(l) = self.load.get_mut(rule) {
            *l = Some(descriptors);
        }
        self.update(now);
    }

    /// The health of `rule`'s local service changed (see
    /// [`crate::rule_health`]): `Some(reason)` leaves the rule (weight 0
    /// for new connections at once, existing connections stay where they
    /// are, as in a drain, but the rule is never disabled), `None` takes it
    /// back through agreement, like raising a weight. Out of range: ignored.
    pub fn handle_rule_health(&mut self, rule: usize, left: Option<Reason>, now: u64) {
        if rule >= self.rules() {
            return;
        }
        if self.settings.left[rule] != left {
            self.settings.left[rule] = left;
            self.update(now);
        }
    }

    /// Why this host has left `rule` for its service's health, if it has.
    pub fn rule_left(&self, rule: usize) -> Option<Reason> {
        self.settings.left.get(rule).copied().flatten()
    }

    /// Replaces the spec (`reload`). Weights take effect as a weight change;
    /// a change of rules (fingerprint) starts over from taking no new
    /// connections and joins whichever rules win the vote.
    pub fn handle_reload(&mut self, spec: ClusterSpec, now: u64) {
        let rules = spec.rules.len().min(MAX_RULES);
        let mut spec = spec;
        spec.rules.truncate(rules);
        let fingerprint = rule_fingerprint(&spec);
        for (r, rule) in spec.rules.iter().enumerate() {
            self.settings.weights[r] = rule.weights[self.cfg.host.index()];
        }
        if fingerprint != self.fingerprint || rules != self.rules() {
            self.auth = ClusterAuth::new(self.cfg.key, &spec);
            self.fingerprint = fingerprint;
            self.adopted = None;
            self.target = None;
            self.settings.disabled &= rules_mask(rules);
            for d in self.settings.draining.iter_mut().skip(rules) {
                *d = None;
            }
            for l in self.settings.left.iter_mut().skip(rules) {
                *l = None;
            }
            self.load = [None; MAX_RULES];
            self.local_dirty = vec![GroupBits::default(); rules];
            self.dirty_elsewhere = vec![GroupBits::default(); rules];
            self.spec = spec;
            self.set_effective(empty_view(rules));
            // After the map change: "0" waits for the dirty groups of every
            // tracked connection under the map that takes nothing.
            self.set_bound(0);
        } else {
            self.spec = spec;
        }
        self.update(now);
    }

    // ---- outputs ---------------------------------------------------------

    /// The next event for the engine.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`Machine::handle_timeout`] should next be called.
    pub fn poll_timeout(&self) -> u64 {
        let mut t = self.next_tx;
        if !self.listened {
            t = t.min(self.listen_until());
        }
        if let Some(d) = self.membership.next_deadline(self.last_update) {
            // A peer turning late (send early) or expiring (detect it on
            // time, not at the next heartbeat that happens to arrive).
            t = t.min(d);
        }
        for d in self.settings.draining.iter().flatten() {
            t = t.min(d + self.cfg.drain_timeout_ns);
        }
        if let Some(d) = self.settings.host_drain {
            t = t.min(d + self.cfg.drain_timeout_ns);
        }
        if let Some(d) = self.lone.deadline() {
            t = t.min(d);
        }
        t
    }

    /// Writes the heartbeat due at `now` into `buf` (at least
    /// [`MAX_FRAME`] bytes) and returns its length, or `None` when none is due.
    pub fn poll_transmit(&mut self, now: u64, buf: &mut [u8]) -> Option<usize> {
        if now < self.next_tx || buf.len() < MAX_FRAME {
            return None;
        }
        self.seq += 1;
        self.own_run = self.own_run.saturating_add(1);
        let hb = self.heartbeat(now);
        let len = hb.encode(&self.auth, buf).ok()?;
        self.last_tx = Some(now);
        self.next_tx = now + self.period_in_use();
        // Our own run may have completed an agreement.
        self.update(now);
        Some(len)
    }

    fn heartbeat(&mut self, now: u64) -> Heartbeat {
        let rules = self.rules();
        let mut weights = [0u8; MAX_RULES];
        for (r, w) in weights.iter_mut().enumerate().take(rules) {
            *w = self.advertised_weight(r);
        }
        // Stopped or suspended too: the dataplane forgets its connections
        // only once the map that takes nothing runs, and serves them until
        // then; its reports (empty after the reset) say when it is done.
        let dirty = self.pager.next(&self.local_dirty);
        Heartbeat {
            host: self.cfg.host,
            state: self.state,
            phase: self.phase(),
            rule_count: rules as u8,
            boot: self.cfg.boot_id,
            seq: self.seq,
            sent: self.membership.clock(now),
            base_period_us: (self.cfg.period_ns / 1000).clamp(1, u32::MAX as u64) as u32,
            period_us: (self.period_in_use() / 1000).clamp(1, u32::MAX as u64) as u32,
            hears: self.membership.fresh(now),
            proposed: self.proposal.members,
            proposal_digest: self.proposal_digest,
            adopted: self
                .adopted
                .as_ref()
                .map_or(HostSet::EMPTY, |a| a.view.members),
            adopted_epoch: self.adopted.as_ref().map_or(0, |a| a.epoch),
            adopted_digest: self.adopted.as_ref().map_or(0, |a| a.digest),
            bound: self.advertised_bound,
            fingerprint: self.fingerprint,
            weights,
            disabled: self.settings.disabled,
            draining: self.draining_mask(),
            dirty,
        }
    }

    /// Hosts this host hears (itself included).
    pub fn hears(&self) -> HostSet {
        self.membership.hears()
    }

    /// Rules draining on this host (all of them during a `drainstop`).
    pub fn draining_rules(&self) -> u32 {
        self.draining_mask()
    }

    pub(crate) fn draining_mask(&self) -> u32 {
        let all = rules_mask(self.rules());
        if self.settings.host_drain.is_some() {
            return all;
        }
        let mut m = 0;
        for (r, d) in self.settings.draining.iter().enumerate() {
            if d.is_some() {
                m |= 1 << r;
            }
        }
        m & all
    }

    /// The weight this host advertises for rule `r`.
    fn advertised_weight(&self, r: usize) -> u8 {
        if self.draining_mask() & (1 << r) != 0
            || self.settings.disabled & (1 << r) != 0
            || self.settings.left.get(r).is_some_and(Option::is_some)
        {
            0
        } else {
            self.settings.weights[r]
        }
    }

    fn listen_until(&self) -> u64 {
        self.started_at + self.cfg.tolerance as u64 * self.cfg.period_ns
    }

    // ---- the machine -----------------------------------------------------

    /// Whether heartbeats go every quarter of the base period rather than
    /// every period in use: while a view change is in flight for a member
    /// (agreement is counted in heartbeats, so this shortens it and makes
    /// a lost heartbeat cost a quarter period), and while losses are
    /// eating heartbeats between this host and a live peer
    /// ([`Membership::urgent`]).
    fn hurried(&self, now: u64) -> bool {
        let in_flight = self.state == HostState::Converging
            && self.participates()
            && self.standing == Standing::Member;
        in_flight || self.membership.urgent(now)
    }

    fn trigger(&mut self, now: u64) {
        let earliest = self
            .last_tx
            .map_or(now, |t| t + self.period_in_use() / 4)
            .max(now);
        self.next_tx = self.next_tx.min(earliest);
    }

    fn set_effective(&mut self, view: View) {
        if view == self.effective {
            return;
        }
        if view.members != self.effective.members {
            self.dirty_stale = true;
        }
        self.effective = view;
        self.map_epoch += 1;
        let epoch = self.map_epoch;
        let view = match self.lone.screen(&self.effective, epoch, self.last_update) {
            Screened::Install => self.effective.clone(),
            Screened::Withhold { instead, first } => {
                if first {
                    if let Some(why) = self.lone.withheld_because() {
                        self.events
                            .push_back(Event::LoneViewWithheld { epoch, why });
                    }
                }
                instead
            }
        };
        self.events.push_back(Event::EffectiveViewChanged {
            view,
            epoch,
            phase: self.phase(),
        });
    }

    /// Hands over a withheld lone view once the guard no longer suspects.
    fn release_lone_view(&mut self, now: u64) {
        if let Some((view, epoch)) = self.lone.release(now) {
            self.events.push_back(Event::LoneViewReleased { epoch });
            self.events.push_back(Event::EffectiveViewChanged {
                view,
                epoch,
                phase: self.phase(),
            });
        }
    }

    fn set_bound(&mut self, bound: u64) {
        if bound != self.bound {
            self.bound = bound;
        }
        // The map change (if any) has been queued; the bound is advertised
        // once the dirty groups under it have been reported.
        self.bound_epoch = self.map_epoch;
    }

    /// The local settings applied to `v`: only ever removes what the local
    /// host takes.
    fn reduce(&self, v: &View) -> View {
        let me = self.cfg.host;
        let rules = self.rules();
        if !self.participates() {
            let mut s = empty_view(rules);
            for d in s.disabled.iter_mut() {
                d.insert(me);
            }
            return s;
        }
        let mut v = v.clone();
        for r in 0..rules {
            let w = self.advertised_weight(r);
            if let Some(x) = v.weights.get_mut(r) {
                x[me.index()] = x[me.index()].min(w);
            }
            if self.settings.disabled & (1 << r) != 0 {
                if let Some(d) = v.disabled.get_mut(r) {
                    d.insert(me);
                }
            }
        }
        v
    }

    /// The proposal from the eligible members and what each advertises.
    fn build_proposal(&self, members: HostSet) -> View {
        let rules = self.rules();
        let mut v = empty_view(rules);
        v.members = members;
        for h in members.iter() {
            let (weights, disabled) = if h == self.cfg.host {
                let mut w = [0u8; MAX_RULES];
                for (r, x) in w.iter_mut().enumerate().take(rules) {
                    *x = self.advertised_weight(r);
                }
                (w, self.settings.disabled)
            } else {
                match self.membership.live_peer(h) {
                    Some(p) => (p.latest.weights, p.latest.disabled),
                    None => ([0; MAX_RULES], 0),
                }
            };
            for (r, &w) in weights.iter().enumerate().take(rules) {
                v.weights[r][h.index()] = w;
                if disabled & (1 << r) != 0 {
                    v.disabled[r].insert(h);
                }
            }
        }
        v
    }

    fn push_notices(&mut self) {
        for n in self.membership.take_notices() {
            let e = match n {
                Notice::Up(h) => Event::HostUp(h),
                Notice::Down(h) => {
                    self.dirty_stale = true;
                    Event::HostDown(h)
                }
                Notice::Restarted(h) => Event::HostRestarted(h),
                Notice::ClockBehind { host, behind_ns } => Event::ClockBehind { host, behind_ns },
                Notice::Rejected(e) => Event::Rejected(e),
                Notice::DuplicateId(h) => Event::DuplicateId(h),
                Notice::RuleMismatch { host, fingerprint } => {
                    Event::RuleMismatch { host, fingerprint }
                }
            };
            self.events.push_back(e);
        }
    }

    fn update(&mut self, now: u64) {
        self.excuse_stall(now);
        self.update_views(now);
        self.due = self.poll_timeout().max(now);
    }

    /// A call that comes more than a quarter period after the machine was
    /// due means this host did not run meanwhile (descheduled, a stalled
    /// VM, a control thread busy elsewhere): it could not have heard
    /// anything, so its peers' silence over that time is not held against
    /// them (their records are moved forward by the lateness, see
    /// [`Membership::excuse`]). Liveness is judged over the time this host
    /// was listening: a dead peer is still declared dead after
    /// `tolerance × period` of it, and a host that wakes from a stall does
    /// not declare every peer dead and take their buckets over, connections
    /// and all, moments before their queued heartbeats reach it.
    fn excuse_stall(&mut self, now: u64) {
        if let Some(late) = self.stalled_for(now) {
            if self.membership.live_peers().next().is_some() {
                self.membership.excuse(late, now);
                self.events.push_back(Event::Stalled { late_ns: late });
            }
        }
    }

    /// How late a call at `now` comes after the machine was due, when
    /// that is more than a quarter period: this host did not run
    /// meanwhile, and the machine's next input excuses it (a stall).
    pub fn stalled_for(&self, now: u64) -> Option<u64> {
        let late = now.saturating_sub(self.due);
        (late > self.cfg.period_ns / 4).then_some(late)
    }

    fn update_views(&mut self, now: u64) {
        let me = self.cfg.host;
        let rules = self.rules();
        self.last_update = self.last_update.max(now);
        self.membership.expire(now);
        self.listened |= now >= self.listen_until();
        self.finish_drains(now);

        // Who may take part.
        let participates = self.participates();
        let (members, standing, mismatched) =
            self.membership
                .eligible(self.fingerprint, participates, now);
        for h in mismatched.iter() {
            let fp = self
                .membership
                .live_peer(h)
                .map_or(0, |p| p.latest.fingerprint);
            self.membership
                .note_mismatch(h, fp, !self.mismatched.contains(h));
        }
        if standing == Standing::Outvoted && self.standing != Standing::Outvoted {
            self.events.push_back(Event::RuleMismatch {
                host: me,
                fingerprint: self.fingerprint,
            });
        }
        self.mismatched = mismatched;
        self.standing = standing;

        // What we propose.
        let proposal = self.build_proposal(members);
        let digest = view_digest(self.fingerprint, &proposal);
        if digest != self.proposal_digest {
            self.proposal = proposal;
            self.proposal_digest = digest;
            self.own_run = 0;
            self.trigger(now);
        }

        let member = participates && standing == Standing::Member;
        // Someone we count as a member proposes a view without us: it may
        // hand our buckets out, so take nothing new until agreed again.
        let dropped_by_peer = self
            .membership
            .live_peers()
            .any(|p| members.contains(p.latest.host) && !p.latest.proposed.contains(me));
        if !member || dropped_by_peer {
            if !participates {
                self.target = None;
            }
            // The map that takes nothing first, then the bound: `set_bound`
            // ties the bound to the map epoch in force, and "0" may only be
            // advertised once the dataplane has reported, under that map,
            // the dirty groups of everything it tracks. (Set the other way
            // round, 0 went out at once with the old map's dirty groups; a
            // joining host that heard 0 from everyone adopted and took over
            // the connections in the buckets it was given mid-stream.)
            let idle = conservative(me, &self.effective, &empty_view(rules), rules);
            let v = self.reduce(&idle);
            self.set_effective(v);
            if self.bound != 0 || self.target.is_some() {
                self.target = None;
                self.set_bound(0);
                self.trigger(now);
            }
        } else {
            self.agree_and_adopt(now);
        }
        let v = self.reduce(&self.effective);
        self.set_effective(v);

        // Advertise the bound once the dataplane has reported its dirty
        // groups under the map that realises it.
        if self.advertised_bound != self.bound
            && (self.dirty_epoch >= self.bound_epoch || rules == 0)
        {
            self.advertised_bound = self.bound;
            self.trigger(now);
        }

        self.update_state(now);
        if self.hurried(now) {
            let t = self
                .last_tx
                .map_or(now, |t| t + self.cfg.period_ns / 4)
                .max(now);
            self.next_tx = self.next_tx.min(t);
        }
        self.push_notices();
        if self.membership.take_dirty_changed() {
            self.dirty_stale = true;
        }
        if self.dirty_stale {
            self.refresh_dirty();
        }
        self.release_lone_view(now);
    }

    fn agree_and_adopt(&mut self, now: u64) {
        let me = self.cfg.host;
        let rules = self.rules();
        let k = self.cfg.converge_periods.max(1);
        let listened = now >= self.listen_until();
        let agreed = listened
            && self.own_run >= k
            && self.proposal.members.contains(me)
            && self.proposal.members.iter().all(|h| {
                h == me
                    || self.membership.live_peer(h).is_some_and(|p| {
                        p.latest.proposal_digest == self.proposal_digest && p.run >= k
                    })
            });
        let already = self.target.as_ref().map(|t| t.1) == Some(self.proposal_digest)
            || (self.target.is_none() && self.bound == self.proposal_digest);
        if agreed && !already {
            let combined = conservative(me, &self.effective, &self.proposal, rules);
            let v = self.reduce(&combined);
            self.set_effective(v);
            self.target = Some((self.proposal.clone(), self.proposal_digest));
            self.set_bound(self.proposal_digest);
            self.trigger(now);
        }
        let Some((view, digest)) = self.target.clone() else {
            return;
        };
        let all_bound = self
            .membership
            .live_peers()
            .all(|p| p.latest.bound == 0 || p.latest.bound == digest);
        if !(listened && all_bound) {
            return;
        }
        // Adopt.
        let same: Option<u64> = self
            .membership
            .live_peers()
            .filter(|p| p.latest.adopted_digest == digest)
            .map(|p| p.latest.adopted_epoch)
            .max();
        let epoch = match same {
            Some(e) => e,
            None => {
                let mine = self.adopted.as_ref().map_or(0, |a| a.epoch);
                let theirs = self
                    .membership
                    .live_peers()
                    .map(|p| p.latest.adopted_epoch)
                    .max()
                    .unwrap_or(0);
                mine.max(theirs) + 1
            }
        };
        self.target = None;
        self.adopted = Some(Adopted {
            view: view.clone(),
            digest,
            epoch,
        });
        self.events.push_back(Event::ViewAdopted {
            view: view.clone(),
            epoch,
        });
        let v = self.reduce(&view);
        self.set_effective(v);
        self.set_bound(digest);
        self.trigger(now);
    }

    fn update_state(&mut self, now: u64) {
        let state = match self.settings.admin {
            // Another host with our ID was there first: we do not take
            // part, and say so, so nobody counts us as a member.
            _ if self.standing == Standing::DuplicateId => HostState::Stopped,
            Admin::Stopped => HostState::Stopped,
            Admin::Suspended => HostState::Suspended,
            Admin::Started => {
                let quiet = self.phase() == Phase::Stable
                    && self.advertised_bound == self.bound
                    && self.proposal.members.iter().all(|h| {
                        h == self.cfg.host
                            || self.membership.live_peer(h).is_some_and(|p| {
                                p.latest.proposal_digest == self.proposal_digest
                                    && p.latest.bound == self.proposal_digest
                                    && p.latest.adopted_digest == self.proposal_digest
                            })
                    });
                if !quiet {
                    HostState::Converging
                } else if self.settings.host_drain.is_some() {
                    HostState::Draining
                } else {
                    HostState::Converged
                }
            }
        };
        if state == HostState::Converging && self.converging_since.is_none() {
            self.converging_since = Some(now);
            self.events.push_back(Event::ConvergenceStarted);
        }
        if state != HostState::Converging {
            if let Some(since) = self.converging_since.take() {
                let duration_ns = now.saturating_sub(since);
                self.last_convergence_ns = Some(duration_ns);
                let (members, epoch) = self
                    .adopted
                    .as_ref()
                    .map_or((HostSet::EMPTY, 0), |a| (a.view.members, a.epoch));
                self.events.push_back(Event::Converged {
                    members,
                    epoch,
                    duration_ns,
                });
            }
        }
        if state != self.state {
            let was = self.period_in_use();
            self.state = state;
            self.events.push_back(Event::StateChanged(state));
            if self.period_in_use() < was {
                // Speed up at once rather than after the slow period.
                let t = self.last_tx.map_or(now, |t| t + self.period_in_use());
                self.next_tx = self.next_tx.min(t.max(now));
            }
        }
    }

    fn finish_drains(&mut self, now: u64) {
        let me = self.cfg.host;
        let timeout = self.cfg.drain_timeout_ns;
        // The drain has reached the cluster when the adopted view gives us
        // weight 0 under the rule (or we are not in it).
        let adopted_zero = |r: usize| {
            self.adopted
                .as_ref()
                .is_none_or(|a| eff(&a.view, me, r) == 0)
        };
        let mut finished = 0u32;
        let mut timed_out = false;
        for r in 0..self.rules() {
            let Some(since) = self.settings.draining[r] else {
                continue;
            };
            let idle = self.load[r] == Some(0) && adopted_zero(r);
            let late = now >= since + timeout;
            if idle || late {
                finished |= 1 << r;
                timed_out |= late && !idle;
            }
        }
        if finished != 0 {
            for r in 0..self.rules() {
                if finished & (1 << r) != 0 {
                    self.settings.draining[r] = None;
                    self.settings.disabled |= 1 << r;
                }
            }
            self.events.push_back(Event::DrainFinished {
                rules: finished,
                timed_out,
            });
        }
        if let Some(since) = self.settings.host_drain {
            let idle = (0..self.rules()).all(|r| self.load[r] == Some(0) && adopted_zero(r));
            let late = now >= since + timeout;
            if idle || late {
                self.settings.host_drain = None;
                self.settings.admin = Admin::Stopped;
                self.events.push_back(Event::DrainFinished {
                    rules: rules_mask(self.rules()),
                    timed_out: late && !idle,
                });
            }
        }
    }

    fn refresh_dirty(&mut self) {
        if !self.dirty_stale {
            return;
        }
        self.dirty_stale = false;
        // Live peers in any state, and every member of the view our map is
        // built from even if it fell silent: until a view without it is
        // adopted it may be alive and serving (a false suspicion), and its
        // connections must stay its own. A stopped or suspended peer counts
        // too: it forgets its connections only once its dataplane runs the
        // map that takes nothing, which can be after its heartbeats say
        // "stopped"; until then it still serves them, and its (then empty)
        // dirty groups say when it no longer does.
        let mut from: HostSet = self
            .membership
            .live_peers()
            .map(|p| p.latest.host)
            .collect();
        for h in self.effective.members.iter() {
            if h != self.cfg.host && self.membership.peer(h).is_some() {
                from.insert(h);
            }
        }
        let mut changed = false;
        for r in 0..self.rules() {
            let g = self.membership.dirty_union(r, from, self.fingerprint);
            if g != self.dirty_elsewhere[r] {
                self.dirty_elsewhere[r] = g;
                changed = true;
            }
        }
        if changed {
            self.events.push_back(Event::DirtyElsewhereChanged);
        }
    }

    // ---- verbs (used by crate::admin) ------------------------------------

    /// Applies a change of settings and re-runs the machine.
    pub(crate) fn settings_changed(&mut self, now: u64) {
        self.update(now);
    }

    /// Starts participating again after `stop`.
    pub(crate) fn restart_participation(&mut self) {
        self.settings.admin = Admin::Started;
        self.settings.host_drain = None;
        self.target = None;
        let rules = self.rules();
        self.set_effective(empty_view(rules));
        self.set_bound(0);
    }

    /// Seconds the last convergence took, if one finished.
    pub(crate) fn local_load(&self) -> [Option<u64>; MAX_RULES] {
        self.load
    }
}
