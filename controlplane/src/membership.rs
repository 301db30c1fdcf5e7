//! Membership: who is alive, who may take part, and who is refused.
//!
//! # What this module owns
//!
//! Per-peer records built from authenticated heartbeats: liveness, the last
//! heartbeat accepted from each host, the run length of its proposal, its
//! assembled dirty groups, and the exclusion verdicts with their counters.
//! It decides nothing about views; [`crate::convergence`] reads it.
//!
//! # Guarantees
//!
//! * **Liveness.** A peer is live while its last accepted heartbeat is at
//!   most `tolerance × period` old, with the longer of the local and the
//!   peer's base period (never the halved one, so a peer that slows down
//!   after converging is not lost).
//! * **Losses do not look like deaths.** With independent losses `p` and
//!   one heartbeat per period, `tolerance` losses in a row happen with
//!   probability `p^tolerance` per period and per pair of hosts: at 10 %
//!   loss and tolerance 3 that is 10⁻³, several false deaths an hour for a
//!   small cluster at 100 ms. So a miss is made loud and answered: a peer
//!   not heard for 1.5 periods is *late*; heartbeats carry as `hears` only
//!   the hosts heard within that window ([`Membership::fresh`]); and a host
//!   that has a late peer, or sees itself missing from a live peer's
//!   `hears`, sends every quarter period ([`Membership::urgent`]) until
//!   both directions are heard again. Before a live host is declared dead,
//!   its peer has then missed about eight of its heartbeats instead of
//!   three (probability ~10⁻⁸ per period and pair at 10 % loss), while a
//!   dead host is still declared dead `tolerance × period` after its last
//!   heartbeat. The extra heartbeats only flow while losses are happening.
//! * **Nobody joins by forging or replaying.** Only heartbeats whose tag
//!   verifies under the cluster key and whose `(boot, seq)` is newer than
//!   everything heard from that host reach a record ([`ReplayGuard`]).
//!   Bad tags and replays are counted by reason and reported as
//!   [`Notice::Rejected`], at most once per reason per period so a flood
//!   cannot flood the event queue.
//! * **A captured heartbeat is worth nothing after a restart, and little
//!   at all.** Every heartbeat carries, inside the authenticated body, its
//!   boot counter (the engine keeps it across restarts and raises it at
//!   every start) and its send time on the sender's heartbeat clock
//!   ([`HeartbeatClock`]). A heartbeat whose send time is more than
//!   [`MAX_CLOCK_SKEW_NS`] behind or ahead of the receiver's heartbeat
//!   clock is refused ([`HeartbeatError::Stale`], [`HeartbeatError::Future`]),
//!   so a captured frame stays usable for at most that long anywhere. A
//!   heartbeat from a lower boot counter than the highest accepted from its
//!   host is refused as [`HeartbeatError::Replayed`] unless it was sent
//!   after that boot's first accepted heartbeat (see [`ReplayGuard`]): the
//!   previous run of a restarted host stopped before its current run began,
//!   so its frames can never pass, however soon after the restart they are
//!   replayed; only a second live host with the same ID can.
//! * **A host whose clock is behind (or ahead) still joins.** Hosts agree
//!   on the fastest clock among them: a host that accepts or refuses, as
//!   [`HeartbeatError::Future`], an authenticated heartbeat sent more than
//!   [`CLOCK_FOLLOW_NS`] ahead of its own heartbeat clock moves that clock
//!   forward to the heartbeat's send time and reports by how much
//!   ([`Notice::ClockBehind`]: the engine logs it with a request to fix
//!   NTP). Its next heartbeats carry the peers' time and are accepted. The
//!   clock only ever moves forward, and only on frames that authenticate
//!   (a replay carries a past time), so following it never makes an old
//!   frame acceptable again. A host whose clock is wrong is thus refused
//!   for one or two periods, as `stale` at its peers or `future` at itself,
//!   then joins.
//! * **Duplicate host IDs are refused and reported, and change no view.**
//!   A heartbeat from a second boot id of a host whose current boot is still
//!   live is a second host with that ID: the incumbent (the boot heard
//!   first) keeps its place, the other's heartbeats are refused, counted and
//!   reported ([`Notice::DuplicateId`]). The newcomer sees the incumbent's
//!   heartbeats carrying its own ID and an older boot id, and steps back
//!   ([`Standing::DuplicateId`]: it takes no new connections). A new boot id
//!   replaces the current one only once the current boot has been silent
//!   for `tolerance × period` (a restart: the restarted host listens that
//!   long anyway before it may adopt a view).
//!   The refused boot may still serve connections it tracks (it only
//!   stepped back from new ones), and which boot a receiver hears first is
//!   an accident (a healed partition can reverse it), so the dirty groups a
//!   refused boot reports are kept beside the incumbent's (`Shadow`) and
//!   honoured in [`Membership::dirty_union`] until it has been silent for
//!   `tolerance × period`. Its heartbeats are authenticated, and dirty
//!   groups only ever stop a host taking a connection over mid-stream, so
//!   this never makes a host keep more. (Without it, the simulator found a
//!   frame kept twice: a partition healed onto the other boot, and the
//!   connections of the boot now refused were taken over while it still
//!   served them.)
//! * **Mismatched rules are refused and reported.** Peers are grouped by
//!   rule fingerprint; the group with the most participating hosts wins
//!   (ties: the group holding the lowest host ID), so a rolling `reload`
//!   moves the cluster over once half of it has the new rules. Hosts outside
//!   the winning group are excluded with [`Notice::RuleMismatch`]; if the
//!   local host is outside it, it takes no new connections
//!   ([`Standing::Outvoted`]).
//! * Bounded: 64 records, no growth with traffic.

use shoal_dataplane::bucket::GROUPS;
use shoal_dataplane::map::GroupBits;
use shoal_dataplane::{HostId, HostSet, MAX_HOSTS, MAX_RULES};

use crate::heartbeat::{
    ClusterAuth, DirtyPage, Freshness, Heartbeat, HeartbeatError, HostState, ReplayGuard,
};

/// Counters of accepted and refused heartbeats (for `query` and `display`).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MembershipCounters {
    /// Heartbeats accepted.
    pub accepted: u64,
    /// Our own heartbeats seen looped back (ignored).
    pub own: u64,
    /// Shorter than their headers.
    pub truncated: u64,
    /// Larger than a 1500-byte payload.
    pub oversized: u64,
    /// Not the heartbeat EtherType.
    pub not_heartbeat: u64,
    /// Bad magic.
    pub bad_magic: u64,
    /// Unknown version.
    pub bad_version: u64,
    /// Another cluster's.
    pub wrong_cluster: u64,
    /// A header field checked before the tag holds an impossible value.
    pub bad_header: u64,
    /// Failed authentication (wrong key or forged).
    pub bad_mac: u64,
    /// Authenticated but malformed.
    pub malformed: u64,
    /// Replayed: not newer than what its boot sent before, or from a boot
    /// of its host older than the one heard.
    pub replayed: u64,
    /// Sent more than the clock skew bound before the receiver's clock.
    pub stale: u64,
    /// Sent more than the clock skew bound after the receiver's clock.
    pub future: u64,
    /// Heartbeats refused because a second host uses their sender's ID
    /// (this host's or a live peer's): the newcomer's when this host is
    /// the incumbent or a third party, the incumbent's when this host is
    /// the newcomer.
    pub duplicate_id: u64,
    /// Heartbeats from hosts whose rule fingerprint lost the vote.
    pub rule_mismatch: u64,
    /// Times this host ran late enough that its peers' silence was excused
    /// ([`Membership::excuse`]).
    #[serde(default)]
    pub stalls: u64,
    /// Their total length, ms.
    #[serde(default)]
    pub stalled_ms: u64,
}

impl MembershipCounters {
    fn count(&mut self, e: HeartbeatError) {
        let c = match e {
            HeartbeatError::Truncated => &mut self.truncated,
            HeartbeatError::Oversized => &mut self.oversized,
            HeartbeatError::NotHeartbeat => &mut self.not_heartbeat,
            HeartbeatError::BadMagic => &mut self.bad_magic,
            HeartbeatError::BadVersion(_) => &mut self.bad_version,
            HeartbeatError::WrongCluster => &mut self.wrong_cluster,
            HeartbeatError::BadHeader(_) => &mut self.bad_header,
            HeartbeatError::BadMac => &mut self.bad_mac,
            HeartbeatError::Malformed(_) | HeartbeatError::BufferTooSmall => &mut self.malformed,
            HeartbeatError::Replayed => &mut self.replayed,
            HeartbeatError::Stale => &mut self.stale,
            HeartbeatError::Future => &mut self.future,
        };
        *c += 1;
    }
}

/// Something membership wants reported (turned into [`crate::Event`]s).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Notice {
    /// A peer became live.
    Up(HostId),
    /// A peer stopped being heard.
    Down(HostId),
    /// A peer restarted (new boot id).
    Restarted(HostId),
    /// A heartbeat was refused.
    Rejected(HeartbeatError),
    /// Two hosts use this ID (possibly the local one).
    DuplicateId(HostId),
    /// This host's heartbeat clock was behind a peer's authenticated send
    /// time by `behind_ns` and has moved forward to it.
    ClockBehind {
        /// The peer.
        host: HostId,
        /// By how much, ns.
        behind_ns: u64,
    },
    /// A host's rule fingerprint differs from the winning one.
    RuleMismatch {
        /// The host.
        host: HostId,
        /// Its fingerprint.
        fingerprint: u64,
    },
}

/// How the local host stands in the fingerprint vote and the ID check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Standing {
    /// It may take part.
    Member,
    /// Its rules lost the vote: it takes no new connections.
    Outvoted,
    /// Another host uses its ID: it takes no new connections.
    DuplicateId,
    /// A heartbeat with its ID and an older boot was heard and is not yet
    /// shown to come from a live host: it takes no new connections until
    /// that is settled either way.
    Contested,
}

/// One peer's assembled dirty groups.
#[derive(Clone, Debug, Default)]
struct DirtyAssembly {
    complete: Option<(u16, Vec<GroupBits>)>,
    assembling: Option<Assembling>,
}

#[derive(Clone, Debug)]
struct Assembling {
    generation: u16,
    pages: u8,
    received: Vec<bool>,
    rules: u32,
    subset: bool,
    groups: Vec<GroupBits>,
}

impl DirtyAssembly {
    /// Adds a page; returns whether the assembled view changed.
    fn add(&mut self, page: &DirtyPage) -> bool {
        let fresh = match &self.assembling {
            Some(a) => a.generation != page.generation || a.pages != page.pages,
            None => true,
        };
        let already = self
            .complete
            .as_ref()
            .is_some_and(|(g, _)| *g == page.generation);
        if already {
            return false;
        }
        if fresh {
            self.assembling = Some(Assembling {
                generation: page.generation,
                pages: page.pages,
                received: vec![false; page.pages as usize],
                rules: page.rules,
                subset: page.subset_of_previous,
                groups: vec![GroupBits::default(); MAX_RULES],
            });
        }
        let Some(a) = self.assembling.as_mut() else {
            return fresh;
        };
        let mut changed = fresh;
        if let Some(seen) = a.received.get_mut(page.page as usize) {
            if !*seen {
                *seen = true;
                changed = true;
                for (rule, s) in &page.sections {
                    if let Some(g) = a.groups.get_mut(*rule as usize) {
                        s.add_to(g);
                    }
                }
            }
        }
        if a.received.iter().all(|&r| r) {
            let done = self.assembling.take();
            if let Some(a) = done {
                self.complete = Some((a.generation, a.groups));
            }
        }
        changed
    }

    /// Adds this peer's dirty groups of `rule` to `into`.
    fn add_rule_to(&self, rule: usize, into: &mut GroupBits) {
        if let Some(a) = &self.assembling {
            let usable_previous = a.subset
                && self
                    .complete
                    .as_ref()
                    .is_some_and(|(g, _)| *g == a.generation.wrapping_sub(1));
            if !usable_previous {
                if a.rules & (1 << (rule % 32)) != 0 {
                    // Incomplete: the rule is dirty everywhere until every
                    // page of the generation has arrived.
                    fill(into);
                }
                return;
            }
        }
        if let Some((_, groups)) = &self.complete {
            if let Some(g) = groups.get(rule) {
                for x in g.iter() {
                    into.insert(x);
                }
            }
        }
    }

    fn any_dirty(&self) -> bool {
        self.assembling.as_ref().is_some_and(|a| a.rules != 0)
            || self
                .complete
                .as_ref()
                .is_some_and(|(_, g)| g.iter().any(|x| !x.is_empty()))
    }
}

/// Sets every group.
pub fn fill(into: &mut GroupBits) {
    for g in 0..GROUPS as u32 {
        into.insert(g);
    }
}

/// What is known of one peer.
#[derive(Clone, Debug)]
pub struct Peer {
    /// Its last accepted heartbeat (dirty sections dropped).
    pub latest: Heartbeat,
    /// When it was accepted.
    pub last_heard: u64,
    /// When its current boot was first heard.
    pub boot_seen_at: u64,
    /// Consecutive heartbeats with its current proposal digest.
    pub run: u32,
    /// Until when its ID counts as duplicated.
    pub duplicate_until: u64,
    /// An older boot heard beside the current one: (boot, first heard, count).
    older_rival: Option<(u64, u64, u32)>,
    live: bool,
    dirty: DirtyAssembly,
    /// A second live boot using this ID whose heartbeats are refused (see
    /// [`Shadow`]).
    shadow: Option<Shadow>,
}

/// The dirty groups of a refused boot of a duplicated ID.
///
/// Two hosts holding the cluster key can share an ID (a misconfiguration,
/// or a host that came back beside its stand-in). One is the incumbent and
/// is heard; the other's heartbeats are refused, yet it may still track
/// connections (it stepped back from new ones only). Its heartbeats are
/// authenticated, so the groups it reports dirty are honoured like any
/// peer's: they only ever stop this host taking a connection over
/// mid-stream, never make it keep more. Without them a host that heals
/// onto the wrong boot of a duplicated ID would take over the other boot's
/// connections while that boot still serves them.
#[derive(Clone, Debug)]
struct Shadow {
    boot: u64,
    state: crate::heartbeat::HostState,
    fingerprint: u64,
    last_heard: u64,
    dirty: DirtyAssembly,
}

impl Peer {
    /// Records a refused heartbeat of a second live boot of this ID (its
    /// dirty page); returns whether its dirty groups changed.
    fn shadow_heard(&mut self, hb: &Heartbeat, now: u64) -> bool {
        let sh = match &mut self.shadow {
            Some(sh) if sh.boot == hb.boot => sh,
            slot => slot.insert(Shadow {
                boot: hb.boot,
                state: hb.state,
                fingerprint: hb.fingerprint,
                last_heard: now,
                dirty: DirtyAssembly::default(),
            }),
        };
        let moved = sh.state != hb.state || sh.fingerprint != hb.fingerprint;
        sh.state = hb.state;
        sh.fingerprint = hb.fingerprint;
        sh.last_heard = now;
        sh.dirty.add(&hb.dirty) || moved
    }
}

/// Liveness and exclusion records for every peer.
#[derive(Debug)]
pub struct Membership {
    local: HostId,
    local_boot: u64,
    clock: HeartbeatClock,
    /// The local heartbeat clock when this run started: frames with the
    /// local ID and an older boot sent before it are the previous run's.
    local_started: u64,
    tolerance: u64,
    base_period_ns: u64,
    guard: ReplayGuard,
    peers: Vec<Option<Peer>>,
    counters: MembershipCounters,
    self_duplicate_until: u64,
    self_rival_until: u64,
    self_older_rival: Option<(u64, u64, u32)>,
    self_suspect_until: u64,
    /// When a heartbeat showing a duplicated ID was last heard.
    duplicate_seen_at: Option<u64>,
    dirty_changed: bool,
    rejected_reported: [u64; ERROR_KINDS],
    notices: Vec<Notice>,
}

fn error_index(e: HeartbeatError) -> usize {
    match e {
        HeartbeatError::Truncated => 0,
        HeartbeatError::Oversized => 1,
        HeartbeatError::NotHeartbeat => 2,
        HeartbeatError::BadMagic => 3,
        HeartbeatError::BadVersion(_) => 4,
        HeartbeatError::WrongCluster => 5,
        HeartbeatError::BadMac => 6,
        HeartbeatError::Malformed(_) => 7,
        HeartbeatError::Replayed => 8,
        HeartbeatError::BufferTooSmall => 9,
        HeartbeatError::BadHeader(_) => 10,
        HeartbeatError::Stale => 11,
        HeartbeatError::Future => 12,
    }
}

const ERROR_KINDS: usize = 13;

/// How far (ns) a heartbeat's send time may lie behind or ahead of the
/// receiver's heartbeat clock: further and it is refused as
/// [`HeartbeatError::Stale`] or [`HeartbeatError::Future`]. It covers the
/// transit and queueing delay of a heartbeat and the error between clocks
/// that [`HeartbeatClock`] has not absorbed yet (it absorbs anything above
/// [`CLOCK_FOLLOW_NS`] with the first heartbeat from a faster peer); it is
/// also the longest any captured heartbeat stays usable.
pub const MAX_CLOCK_SKEW_NS: u64 = 2_000_000_000;

/// How far (ns) a peer's authenticated send time must lie ahead of the
/// local heartbeat clock before the local clock follows it and says so.
pub const CLOCK_FOLLOW_NS: u64 = 100_000_000;

/// The clock heartbeats are stamped with and judged by: wall-clock time
/// (the monotonic `now` plus the offset the engine measured at start),
/// moved forward, never back, to the fastest authenticated peer (see the
/// module docs).
#[derive(Clone, Copy, Debug)]
pub struct HeartbeatClock {
    /// Wall-clock minus monotonic time, ns.
    wall_offset_ns: i64,
    /// How far ahead of the wall clock the peers' clocks have taken it.
    ahead_ns: u64,
}

impl HeartbeatClock {
    /// A clock reading `now + wall_offset_ns` (saturating at 0).
    pub fn new(wall_offset_ns: i64) -> Self {
        Self {
            wall_offset_ns,
            ahead_ns: 0,
        }
    }

    /// The heartbeat clock at monotonic `now`.
    pub fn at(&self, now: u64) -> u64 {
        (now as i64).saturating_add(self.wall_offset_ns).max(0) as u64 + self.ahead_ns
    }

    /// Moves the clock forward to `sent` when that lies more than
    /// [`CLOCK_FOLLOW_NS`] ahead of it at `now`; returns by how much.
    pub fn follow(&mut self, sent: u64, now: u64) -> Option<u64> {
        let behind = sent.checked_sub(self.at(now))?;
        if behind <= CLOCK_FOLLOW_NS {
            return None;
        }
        self.ahead_ns = self.ahead_ns.saturating_add(behind);
        Some(behind)
    }
}

impl Membership {
    /// Records for `local` (boot counter `local_boot`, started at monotonic
    /// `now`, wall clock `now + wall_offset_ns`), declaring peers dead after
    /// `tolerance` missed periods of `base_period_ns`.
    pub fn new(
        local: HostId,
        local_boot: u64,
        wall_offset_ns: i64,
        tolerance: u32,
        base_period_ns: u64,
        now: u64,
    ) -> Self {
        let clock = HeartbeatClock::new(wall_offset_ns);
        Self {
            local,
            local_boot,
            clock,
            local_started: clock.at(now),
            tolerance: tolerance.max(1) as u64,
            base_period_ns: base_period_ns.max(1),
            guard: ReplayGuard::new(),
            peers: vec![None; MAX_HOSTS],
            counters: MembershipCounters::default(),
            self_duplicate_until: 0,
            self_rival_until: 0,
            self_older_rival: None,
            self_suspect_until: 0,
            duplicate_seen_at: None,
            dirty_changed: false,
            rejected_reported: [0; ERROR_KINDS],
            notices: Vec::new(),
        }
    }

    /// The heartbeat clock at `now`: what the local heartbeats carry as
    /// their send time.
    pub fn clock(&self, now: u64) -> u64 {
        self.clock.at(now)
    }

    /// Counters so far.
    pub fn counters(&self) -> &MembershipCounters {
        &self.counters
    }

    /// Takes the notices raised since the last call.
    pub fn take_notices(&mut self) -> Vec<Notice> {
        std::mem::take(&mut self.notices)
    }

    fn timeout_of(&self, p: &Peer) -> u64 {
        let theirs = p.latest.base_period_us as u64 * 1000;
        self.tolerance * self.base_period_ns.max(theirs)
    }

    fn window(&self) -> u64 {
        self.tolerance * self.base_period_ns
    }

    /// How long after its last heartbeat a peer counts as late: one and a
    /// half of the longer base period (one heartbeat missed, with half a
    /// period of slack for delay and jitter).
    fn late_after(&self, p: &Peer) -> u64 {
        let period = self
            .base_period_ns
            .max(p.latest.base_period_us as u64 * 1000);
        period + period / 2
    }

    /// Hosts heard within their lateness window (the local one included):
    /// what heartbeats carry as `hears`, so that a peer missing from it
    /// learns that its heartbeats are not getting through.
    pub fn fresh(&self, now: u64) -> HostSet {
        let mut s: HostSet = self
            .live_peers()
            .filter(|p| now.saturating_sub(p.last_heard) <= self.late_after(p))
            .map(|p| p.latest.host)
            .collect();
        s.insert(self.local);
        s
    }

    /// Whether a heartbeat should go out early: a live peer is late here,
    /// or a live peer's latest heartbeat says it has not heard this host
    /// lately. Either way, losses are eating the heartbeats between two
    /// live hosts, and sending more often keeps a run of losses from
    /// looking like a death (see the module docs).
    pub fn urgent(&self, now: u64) -> bool {
        self.live_peers().any(|p| {
            now.saturating_sub(p.last_heard) > self.late_after(p)
                || !p.latest.hears.contains(self.local)
        })
    }

    /// The next instant at which a live peer turns late or expires.
    pub fn next_deadline(&self, now: u64) -> Option<u64> {
        self.live_peers()
            .flat_map(|p| {
                let late = p.last_heard + self.late_after(p) + 1;
                let expiry = p.last_heard + self.timeout_of(p) + 1;
                [late, expiry]
            })
            .filter(|&t| t > now)
            .min()
    }

    /// Decodes, authenticates and replay-checks `frame`; on success updates
    /// the sender's record and returns its host ID.
    ///
    /// # Errors
    /// The reason the frame was refused (also counted). Our own looped-back
    /// heartbeats are `Ok(None)`.
    pub fn handle_frame(
        &mut self,
        frame: &[u8],
        auth: &ClusterAuth,
        now: u64,
    ) -> Result<Option<HostId>, HeartbeatError> {
        let hb = match Heartbeat::decode(frame, auth) {
            Ok(hb) => hb,
            Err(e) => return Err(self.reject(e, now)),
        };
        if hb.host == self.local && hb.boot == self.local_boot {
            self.counters.own += 1;
            return Ok(None);
        }
        // Authenticated: a faster clock is followed (a replay carries a
        // past time and cannot move it), then the send time is judged.
        if let Some(behind_ns) = self.clock.follow(hb.sent, now) {
            self.notices.push(Notice::ClockBehind {
                host: hb.host,
                behind_ns,
            });
            if behind_ns > MAX_CLOCK_SKEW_NS {
                return Err(self.reject(HeartbeatError::Future, now));
            }
        }
        let clock = self.clock.at(now);
        if hb.sent.saturating_add(MAX_CLOCK_SKEW_NS) < clock {
            return Err(self.reject(HeartbeatError::Stale, now));
        }
        if hb.sent > clock.saturating_add(MAX_CLOCK_SKEW_NS) {
            return Err(self.reject(HeartbeatError::Future, now));
        }
        if hb.host == self.local {
            // Another host claims our ID with the cluster key, or our
            // previous run's frames are replayed: those were all sent
            // before this run started.
            if hb.boot < self.local_boot && hb.sent < self.local_started {
                return Err(self.reject(HeartbeatError::Replayed, now));
            }
            if let Err(e) = self.guard.check(hb.host, hb.boot, hb.seq, hb.sent) {
                return Err(self.reject(e, now));
            }
            self.count_duplicate(now);
            if self.self_duplicate_until < now && self.self_rival_until < now {
                self.notices.push(Notice::DuplicateId(self.local));
            }
            if hb.boot < self.local_boot {
                // It was there first: we are the newcomer and step back,
                // once it has shown itself alive for a period (one replayed
                // frame of our own previous incarnation must not do it).
                self.self_suspect_until = now + self.window();
                let proven = match &mut self.self_older_rival {
                    Some((b, since, n)) if *b == hb.boot => {
                        *n += 1;
                        *n >= 3 && now.saturating_sub(*since) >= self.base_period_ns
                    }
                    slot => {
                        *slot = Some((hb.boot, now, 1));
                        false
                    }
                };
                if proven {
                    self.self_duplicate_until = now + self.window();
                }
            } else {
                self.self_rival_until = now + self.window();
            }
            return Ok(None);
        }
        let fresh = match self.guard.check(hb.host, hb.boot, hb.seq, hb.sent) {
            Ok(f) => f,
            Err(e) => return Err(self.reject(e, now)),
        };
        let window = self.window();
        let idx = hb.host.index();
        if let Freshness::Rival { newer } = fresh {
            let current_alive = self.peers[idx]
                .as_ref()
                .is_some_and(|p| p.live && now.saturating_sub(p.last_heard) <= self.timeout_of(p));
            // An older boot displaces a live current one only after it has
            // shown itself alive for a period (a single replayed frame of an
            // old incarnation must not swap the record).
            let older_proven = !newer
                && current_alive
                && self.peers[idx]
                    .as_mut()
                    .is_some_and(|p| match &mut p.older_rival {
                        Some((b, since, n)) if *b == hb.boot => {
                            *n += 1;
                            *n >= 3 && now.saturating_sub(*since) >= self.base_period_ns
                        }
                        slot => {
                            *slot = Some((hb.boot, now, 1));
                            false
                        }
                    });
            if !current_alive || older_proven {
                // Either the current boot fell silent (a restart), or both
                // are alive and this one is older: the older boot was there
                // first and is the incumbent (the newer steps back by
                // itself), whichever a fresh receiver happened to hear first.
                if current_alive {
                    // This heartbeat is accepted (the older boot is the
                    // incumbent); the newer boot's are refused, and counted,
                    // from now on. A duplicate is being seen all the same.
                    self.duplicate_seen_at = Some(now);
                    let until = self.peers[idx].as_ref().map_or(0, |p| p.duplicate_until);
                    if until < now {
                        self.notices.push(Notice::DuplicateId(hb.host));
                    }
                }
                self.guard.promote(hb.host);
                if current_alive {
                    if let Some(p) = self.peers[idx].as_mut() {
                        p.duplicate_until = now + window;
                    }
                }
            } else {
                // Two live boots for one ID: the incumbent keeps its place,
                // the other is refused (and steps back by itself); what it
                // still tracks is honoured.
                self.count_duplicate(now);
                if let Some(p) = self.peers[idx].as_mut() {
                    if p.duplicate_until < now {
                        self.notices.push(Notice::DuplicateId(hb.host));
                    }
                    p.duplicate_until = now + window;
                    if p.shadow_heard(&hb, now) {
                        self.dirty_changed = true;
                    }
                }
                return Ok(None);
            }
        }
        self.counters.accepted += 1;
        let host = hb.host;
        let mut page = DirtyPage::default();
        let mut hb = hb;
        std::mem::swap(&mut page, &mut hb.dirty);
        let slot = &mut self.peers[idx];
        match slot {
            Some(p) if fresh == Freshness::Newer || fresh == Freshness::First => {
                // A run is of consecutive heartbeats while live: one that
                // arrives after the peer expired (a partition healing, or a
                // heartbeat delayed past the tolerance) starts a new run,
                // so agreement needs fresh heartbeats, not a stale one.
                p.run = if p.live && p.latest.proposal_digest == hb.proposal_digest {
                    p.run.saturating_add(1)
                } else {
                    1
                };
                if p.latest.state != hb.state || p.latest.fingerprint != hb.fingerprint {
                    self.dirty_changed = true;
                }
                p.latest = hb;
                p.last_heard = now;
                if p.dirty.add(&page) {
                    self.dirty_changed = true;
                }
                if !p.live {
                    self.dirty_changed = true;
                    p.live = true;
                    self.notices.push(Notice::Up(host));
                }
            }
            _ => {
                let restarted = slot.as_ref().is_some_and(|p| p.latest.boot < hb.boot);
                let duplicate_until = slot.as_ref().map_or(0, |p| p.duplicate_until);
                // An incumbent displaced while alive (an older boot proved
                // itself) is refused from now on: its groups stay honoured.
                let shadow = slot.as_mut().and_then(|p| {
                    let alive = p.live && duplicate_until > now;
                    alive.then(|| Shadow {
                        boot: p.latest.boot,
                        state: p.latest.state,
                        fingerprint: p.latest.fingerprint,
                        last_heard: p.last_heard,
                        dirty: std::mem::take(&mut p.dirty),
                    })
                });
                let mut dirty = DirtyAssembly::default();
                dirty.add(&page);
                let was_live = slot.as_ref().is_some_and(|p| p.live);
                self.dirty_changed = true;
                *slot = Some(Peer {
                    latest: hb,
                    last_heard: now,
                    boot_seen_at: now,
                    run: 1,
                    duplicate_until,
                    older_rival: None,
                    live: true,
                    dirty,
                    shadow,
                });
                if restarted {
                    self.notices.push(Notice::Restarted(host));
                }
                if !was_live {
                    self.notices.push(Notice::Up(host));
                }
            }
        }
        Ok(Some(host))
    }

    /// Counts a heartbeat refused because another host uses its ID.
    fn count_duplicate(&mut self, now: u64) {
        self.counters.duplicate_id += 1;
        self.duplicate_seen_at = Some(now);
    }

    /// Whether a second host using an ID (the local one's or a peer's) has
    /// been heard within the last `tolerance × period`: the `query` flag
    /// that goes with [`MembershipCounters::duplicate_id`], which counts the
    /// heartbeats refused for it.
    pub fn sees_duplicate(&self, now: u64) -> bool {
        self.duplicate_seen_at
            .is_some_and(|t| now.saturating_sub(t) < self.window())
    }

    fn reject(&mut self, e: HeartbeatError, now: u64) -> HeartbeatError {
        self.counters.count(e);
        let i = error_index(e);
        if e != HeartbeatError::NotHeartbeat && now >= self.rejected_reported[i] {
            self.rejected_reported[i] = now + self.base_period_ns;
            self.notices.push(Notice::Rejected(e));
        }
        e
    }

    /// This host did not run for `late_ns` (up to `now`): every peer's
    /// silence over that time is excused, its last heartbeat counted as
    /// heard that much later (never after `now`). A peer is thus declared
    /// dead only after `tolerance × period` during which this host was
    /// running, and heard nothing from it.
    pub fn excuse(&mut self, late_ns: u64, now: u64) {
        self.counters.stalls += 1;
        self.counters.stalled_ms += late_ns / 1_000_000;
        let excused = |heard: u64| heard.saturating_add(late_ns).min(now.max(heard));
        for p in self.peers.iter_mut().flatten() {
            p.last_heard = excused(p.last_heard);
            if let Some(sh) = p.shadow.as_mut() {
                sh.last_heard = excused(sh.last_heard);
            }
        }
    }

    /// Expires peers not heard within their timeout; returns the next
    /// deadline at which one would expire.
    pub fn expire(&mut self, now: u64) -> Option<u64> {
        let mut next: Option<u64> = None;
        let window = self.window();
        for i in 0..MAX_HOSTS {
            // A refused second boot counts until it falls silent for the
            // suspicion window.
            if let Some(p) = self.peers[i].as_mut() {
                if let Some(sh) = &p.shadow {
                    let deadline = sh.last_heard + window;
                    if now > deadline {
                        p.shadow = None;
                        self.dirty_changed = true;
                    } else {
                        next = Some(next.map_or(deadline + 1, |n| n.min(deadline + 1)));
                    }
                }
            }
            let Some(p) = self.peers[i].as_ref() else {
                continue;
            };
            if !p.live {
                continue;
            }
            let deadline = p.last_heard + self.timeout_of(p);
            if now > deadline {
                if let Some(p) = self.peers[i].as_mut() {
                    p.live = false;
                    self.dirty_changed = true;
                    let host = p.latest.host;
                    self.notices.push(Notice::Down(host));
                }
            } else {
                next = Some(next.map_or(deadline + 1, |n| n.min(deadline + 1)));
            }
        }
        next
    }

    /// A peer's record, live or not.
    pub fn peer(&self, host: HostId) -> Option<&Peer> {
        self.peers[host.index()].as_ref()
    }

    /// A live peer's record.
    pub fn live_peer(&self, host: HostId) -> Option<&Peer> {
        self.peers[host.index()].as_ref().filter(|p| p.live)
    }

    /// Live peers in ascending ID order.
    pub fn live_peers(&self) -> impl Iterator<Item = &Peer> {
        self.peers.iter().flatten().filter(|p| p.live)
    }

    /// Live hosts, the local one included.
    pub fn hears(&self) -> HostSet {
        let mut s: HostSet = self.live_peers().map(|p| p.latest.host).collect();
        s.insert(self.local);
        s
    }

    /// Whether `host`'s ID is currently shown duplicated.
    pub fn is_duplicate(&self, host: HostId, now: u64) -> bool {
        if host == self.local {
            return now < self.self_duplicate_until || now < self.self_rival_until;
        }
        self.peers[host.index()]
            .as_ref()
            .is_some_and(|p| now < p.duplicate_until)
    }

    /// Decides who may take part: live, participating, not duplicated, and
    /// in the winning fingerprint group. Returns the eligible peers (local
    /// host included when it stands as a member), the local standing, and
    /// the peers excluded for their rules.
    pub fn eligible(
        &mut self,
        local_fingerprint: u64,
        local_participates: bool,
        now: u64,
    ) -> (HostSet, Standing, HostSet) {
        // Votes per fingerprint: (count, lowest host ID).
        let mut votes: Vec<(u64, usize, u8)> = Vec::new();
        let mut vote = |fp: u64, id: u8| match votes.iter_mut().find(|v| v.0 == fp) {
            Some(v) => {
                v.1 += 1;
                v.2 = v.2.min(id);
            }
            None => votes.push((fp, 1, id)),
        };
        if local_participates && now >= self.self_duplicate_until {
            vote(local_fingerprint, self.local.get());
        }
        for p in self.peers.iter().flatten() {
            if p.live && p.latest.state.participates() {
                vote(p.latest.fingerprint, p.latest.host.get());
            }
        }
        let winner = votes
            .iter()
            .max_by_key(|v| (v.1, std::cmp::Reverse(v.2)))
            .map(|v| v.0)
            .unwrap_or(local_fingerprint);
        let mut members = HostSet::EMPTY;
        let mut mismatched = HostSet::EMPTY;
        for p in self.peers.iter_mut().flatten() {
            if !p.live || !p.latest.state.participates() {
                continue;
            }
            if p.latest.fingerprint == winner {
                members.insert(p.latest.host);
            } else {
                mismatched.insert(p.latest.host);
            }
        }
        let standing = if now < self.self_duplicate_until {
            Standing::DuplicateId
        } else if now < self.self_suspect_until {
            Standing::Contested
        } else if local_fingerprint != winner {
            Standing::Outvoted
        } else {
            if local_participates {
                members.insert(self.local);
            }
            Standing::Member
        };
        (members, standing, mismatched)
    }

    /// Counts a heartbeat refused for its rules and reports it once per
    /// mismatch episode.
    pub fn note_mismatch(&mut self, host: HostId, fingerprint: u64, first: bool) {
        self.counters.rule_mismatch += 1;
        if first {
            self.notices
                .push(Notice::RuleMismatch { host, fingerprint });
        }
    }

    /// The union of `rule`'s dirty groups over the peers in `from` (live or
    /// not: a peer suspected dead may still serve); peers
    /// whose fingerprint differs from `fingerprint` count as dirty
    /// everywhere when they report anything dirty (their rule numbering
    /// is not ours).
    pub fn dirty_union(&self, rule: usize, from: HostSet, fingerprint: u64) -> GroupBits {
        let mut g = GroupBits::default();
        for p in self.peers.iter().flatten() {
            // A refused second boot of this ID, then the heard one.
            // In any state: a boot that stepped back or stopped still
            // serves what it tracks until its reset, and says so.
            let shadow = p.shadow.as_ref().map(|sh| (&sh.dirty, sh.fingerprint));
            let heard = from
                .contains(p.latest.host)
                .then_some((&p.dirty, p.latest.fingerprint));
            for (dirty, theirs) in shadow.into_iter().chain(heard) {
                if theirs == fingerprint {
                    dirty.add_rule_to(rule, &mut g);
                } else if dirty.any_dirty() {
                    // Other rules: its groups mean nothing here, so every
                    // group is dirty while it reports any.
                    fill(&mut g);
                    return g;
                }
            }
        }
        g
    }

    /// Whether any peer's dirty groups or liveness changed since the last
    /// call (clears the flag).
    pub fn take_dirty_changed(&mut self) -> bool {
        std::mem::take(&mut self.dirty_changed)
    }

    /// Forgets everything heard (not the replay guard).
    pub fn forget_peers(&mut self) {
        for p in self.peers.iter_mut() {
            *p = None;
        }
    }

    /// The state of a live peer.
    pub fn state_of(&self, host: HostId) -> Option<HostState> {
        self.live_peer(host).map(|p| p.latest.state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::heartbeat::{DirtySection, HostState, Phase, MAX_FRAME};
    use shoal_dataplane::{
        Affinity, ClusterMode, ClusterSpec, FilterMode, PortRule, Protocol, MAX_RULES,
    };
    use std::net::{IpAddr, Ipv4Addr};

    const PERIOD: u64 = 100_000_000;
    const BOOT: u64 = 1_700_000_000_000_000_000;

    fn auth() -> ClusterAuth {
        let spec = ClusterSpec {
            vips: vec![IpAddr::V4(Ipv4Addr::new(10, 0, 0, 100))],
            mode: ClusterMode::Unicast,
            ipv6_network_prefix: 64,
            rules: vec![PortRule::new(
                None,
                (80, 80),
                Protocol::Tcp,
                FilterMode::Multiple {
                    affinity: Affinity::None,
                },
            )],
            bucket_seed: 0x5eed,
        };
        ClusterAuth::new([9; 32], &spec)
    }

    fn frame(boot: u64, seq: u64, dirty_group: Option<u16>) -> Vec<u8> {
        frame_in(HostState::Converged, boot, seq, dirty_group)
    }

    fn frame_in(state: HostState, boot: u64, seq: u64, dirty_group: Option<u16>) -> Vec<u8> {
        let hb = Heartbeat {
            host: HostId::new(2).unwrap(),
            state,
            phase: Phase::Stable,
            rule_count: 1,
            boot,
            seq,
            sent: seq * PERIOD,
            base_period_us: (PERIOD / 1000) as u32,
            period_us: (PERIOD / 1000) as u32,
            hears: HostSet::EMPTY,
            proposed: HostSet::EMPTY,
            proposal_digest: 1,
            adopted: HostSet::EMPTY,
            adopted_epoch: 1,
            adopted_digest: 1,
            bound: 1,
            fingerprint: 5,
            weights: [50; MAX_RULES],
            disabled: 0,
            draining: 0,
            dirty: DirtyPage {
                generation: 1,
                page: 0,
                pages: 1,
                rules: dirty_group.map_or(0, |_| 1),
                subset_of_previous: false,
                sections: dirty_group
                    .map(|g| vec![(0, DirtySection::List(vec![g]))])
                    .unwrap_or_default(),
            },
        };
        let mut buf = [0u8; MAX_FRAME];
        let n = hb.encode(&auth(), &mut buf).unwrap();
        buf[..n].to_vec()
    }

    /// Two live boots share ID 2: the older is heard, the newer refused;
    /// the groups the refused one reports dirty are honoured until it falls
    /// silent for the suspicion window.
    #[test]
    fn refused_duplicate_boot_keeps_its_dirty_groups_honoured() {
        let auth = auth();
        let mut m = Membership::new(HostId::new(1).unwrap(), BOOT, 0, 3, PERIOD, 0);
        let (incumbent, rival) = (BOOT - 10 * PERIOD, BOOT - 5 * PERIOD);
        let from = HostSet::from_bits(0b10);
        let mut now = 0;
        for seq in 10..13 {
            assert!(m
                .handle_frame(&frame(incumbent, seq, None), &auth, now)
                .is_ok());
            now += PERIOD / 2;
            assert_eq!(
                m.handle_frame(&frame(rival, seq, Some(77)), &auth, now),
                Ok(None),
                "the newer boot of a live ID is refused"
            );
            now += PERIOD / 2;
        }
        assert!(m.counters().duplicate_id >= 3);
        assert!(
            m.dirty_union(0, from, 5).contains(77),
            "refused boot's group honoured"
        );
        // Only the incumbent keeps talking: the shadow expires.
        for seq in 13..20 {
            now += PERIOD;
            m.handle_frame(&frame(incumbent, seq, None), &auth, now)
                .unwrap();
            m.expire(now);
        }
        assert!(
            !m.dirty_union(0, from, 5).contains(77),
            "a silent shadow is forgotten"
        );
    }

    /// A refused boot that stepped back (it reports a state that takes no
    /// part in views) still serves the connections it tracks: its dirty
    /// groups count all the same.
    #[test]
    fn a_stepped_back_refused_boot_keeps_its_dirty_groups_honoured() {
        let auth = auth();
        for state in [
            HostState::Stopped,
            HostState::Suspended,
            HostState::Converged,
        ] {
            let mut m = Membership::new(HostId::new(1).unwrap(), BOOT, 0, 3, PERIOD, 0);
            let (incumbent, rival) = (BOOT - 10 * PERIOD, BOOT - 5 * PERIOD);
            let mut now = 0;
            for seq in 10..13 {
                m.handle_frame(&frame(incumbent, seq, None), &auth, now)
                    .unwrap();
                now += PERIOD / 2;
                assert_eq!(
                    m.handle_frame(&frame_in(state, rival, seq, Some(78)), &auth, now),
                    Ok(None)
                );
                now += PERIOD / 2;
            }
            assert!(
                m.dirty_union(0, HostSet::from_bits(0b10), 5).contains(78),
                "{state:?}: the refused boot's group is honoured"
            );
        }
    }

    fn frame_sent(boot: u64, seq: u64, sent: u64) -> Vec<u8> {
        let mut f = frame(boot, seq, None);
        let mut hb = Heartbeat::decode(&f, &auth()).unwrap();
        hb.sent = sent;
        let mut buf = [0u8; MAX_FRAME];
        let n = hb.encode(&auth(), &mut buf).unwrap();
        f.clear();
        f.extend_from_slice(&buf[..n]);
        f
    }

    /// Send times outside the skew bound are refused and counted; a peer
    /// ahead of the local clock moves it forward, once, and says so.
    #[test]
    fn send_times_are_judged_against_the_heartbeat_clock() {
        let auth = auth();
        let now = 100 * PERIOD;
        let mut m = Membership::new(HostId::new(1).unwrap(), BOOT, 0, 3, PERIOD, now);
        let stale = now - MAX_CLOCK_SKEW_NS - 1;
        assert_eq!(
            m.handle_frame(&frame_sent(BOOT - 1, 1, stale), &auth, now),
            Err(HeartbeatError::Stale)
        );
        assert_eq!(m.counters().stale, 1);
        assert!(m
            .handle_frame(&frame_sent(BOOT - 1, 2, now - PERIOD), &auth, now)
            .is_ok());
        // 10 s ahead: refused as from the future, and followed.
        let ahead = now + 10_000_000_000;
        assert_eq!(
            m.handle_frame(&frame_sent(BOOT - 1, 3, ahead), &auth, now),
            Err(HeartbeatError::Future)
        );
        assert_eq!(m.counters().future, 1);
        assert_eq!(m.clock(now), ahead);
        assert!(m.take_notices().iter().any(|n| matches!(
            n,
            Notice::ClockBehind {
                behind_ns: 10_000_000_000,
                ..
            }
        )));
        assert!(m
            .handle_frame(
                &frame_sent(BOOT - 1, 4, ahead + PERIOD),
                &auth,
                now + PERIOD
            )
            .is_ok());
        // The clock never moves back: the old time is now stale.
        assert_eq!(
            m.handle_frame(&frame_sent(BOOT - 1, 5, now + PERIOD), &auth, now + PERIOD),
            Err(HeartbeatError::Stale)
        );
    }

    /// A frame with an impossible header is counted as such, whatever its
    /// tag.
    #[test]
    fn cheap_header_refusals_are_counted_by_check() {
        let mut f = frame(BOOT - 1, 1, None);
        f[14 + 16] = 99;
        let mut m = Membership::new(HostId::new(1).unwrap(), BOOT, 0, 3, PERIOD, 0);
        assert_eq!(
            m.handle_frame(&f, &auth(), 0),
            Err(HeartbeatError::BadHeader("host id"))
        );
        assert_eq!((m.counters().bad_header, m.counters().bad_mac), (1, 0));
    }
}
