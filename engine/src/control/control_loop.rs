//! The control thread's loop when the host runs the control plane: drives
//! the sans-IO [`shoal_controlplane::Machine`] with heartbeats from the poll
//! loops, admin requests from the local socket and the clock; installs the
//! maps it asks for in every poll loop; sends its heartbeats; leaves the
//! neighbour duties to its [`Responder`].
//!
//! # The ordering that keeps frames on at most one host
//!
//! On `EffectiveViewChanged { view, epoch }` the map is compiled on a
//! worker thread (`compiler`; 2^20 buckets per rule: tens of
//! milliseconds on a loaded machine), published to the poll loops, and each
//! loop acknowledges the epoch it runs, at most a batch or an idle wait
//! later. Only when every loop has acknowledged are the loops' dirty groups
//! for that epoch handed to the machine with `handle_dirty`, and the machine
//! advertises a new bound ("every bucket I take new connections in is mine
//! in the view I proposed") only after that call: the machine never
//! advertises a promise the dataplane does not yet keep.
//!
//! Design decision: the install does not block this thread. Heartbeats keep
//! being handled and sent while a map is compiled and picked up, because a
//! control thread that stops for the install stops hearing and being heard:
//! at 50–100 ms periods with tolerance 3, an install slowed by a busy
//! machine outlasts the liveness window, and every host declares every
//! other dead in turn. What a heartbeat sent meanwhile promises is still the
//! previous, acknowledged bound. A newer view replaces a pending one; a
//! stale compile is discarded. A loop that does not acknowledge within
//! [`INSTALL_TIMEOUT`] is logged; it delays convergence, never safety.
//!
//! `stop` and `suspend` make every loop drop its tracked connections
//! before the bound that says so is advertised; that too is waited for
//! without blocking: until every loop has a fresh table (at most
//! [`INSTALL_TIMEOUT`]), the install stays pending and the machine hears no
//! dirty groups, while heartbeats promising the previous bound keep
//! leaving. No admin verb blocks this thread either: `reload`'s file is
//! read on the admin socket's thread ([`super::admin::Call::Reload`]).
//!
//! Which view to install is the machine's to say, including when not to
//! serve alone ([`shoal_controlplane::lone`]); this loop only installs.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use shoal_controlplane::admin::Body;
use shoal_controlplane::heartbeat::{claim, Claim};
use shoal_controlplane::{Event, Machine, Request, Response};
use shoal_dataplane::map::{ClusterMap, GroupBits};
use shoal_dataplane::packet::{parse_frame, FrameKind};
use shoal_dataplane::{HostId, MAX_RULES};

use super::admin::{AdminCall, Call, Reload};
use super::compiler::{CompileRequest, Compiler};
use super::responder::Responder;
use crate::handoff::{ControlInbox, Lane, LoopStats, MapCell, Outbound};

/// Longest the control thread waits for every poll loop to run a new map.
pub const INSTALL_TIMEOUT: Duration = Duration::from_secs(2);

/// Heartbeats authenticated per round of [`ControlLoop::run`] at most from
/// the members' lanes, and at most as many again from strangers (see
/// [`ControlInbox`]).
pub const HEARTBEATS_PER_ROUND: usize = 64;
/// ARP, ND and IGMP frames handled per round of [`ControlLoop::run`] at most.
pub const NEIGHBOUR_PER_ROUND: usize = 64;

/// The control thread's loop with a control plane: the machine, the map
/// installs it asks for, its heartbeats and the admin verbs (see the module
/// docs).
pub struct ControlLoop {
    /// The membership and convergence machine.
    pub machine: Machine,
    local: HostId,
    cell: Arc<MapCell>,
    loops: Vec<Arc<Mutex<LoopStats>>>,
    outbound: Arc<Outbound>,
    /// ARP/ND answers, gratuitous ARP and IGMP reports.
    pub responder: Responder,
    start: Instant,
    /// Epoch of the map in force.
    epoch: u64,
    /// Heartbeats sent.
    pub sent: u64,
    /// Heartbeats refused, by reason name.
    pub refused: std::collections::BTreeMap<String, u64>,
    last_period: Instant,
    /// Builds maps off this thread.
    compiler: Compiler,
    /// The newest view asked for and not yet running in every loop.
    pending: Option<Pending>,
    /// `stop` / `suspend`: drop tracked connections when `pending` completes.
    reset_on_install: bool,
    /// A reset asked of the poll loops and not yet done by all of them.
    resetting: Option<ResetRequest>,
    /// The configuration in force, when known (see
    /// [`ControlLoop::set_running_config`]).
    running: Option<shoal_config::Config>,
    /// The array tier's counters, for `query` and `display`.
    services: Option<crate::array::ServicesReader>,
    /// Rule health and instances, for `query` and `display`.
    rule_health: Option<crate::frontend::FrontendReader>,
    /// Convergences completed.
    pub convergences: u64,
    /// The last convergence: how long it took (ns) and when it ended.
    pub last_convergence: Option<(u64, Instant)>,
    /// When a stall was last logged, and the stalls since (logged at most
    /// once a second: an overloaded host stalls often).
    stall_log: (Option<Instant>, u64),
    /// Up to when the poll loops' silence was last reported to the machine
    /// (see [`ControlLoop::note_deafness`]).
    deaf_reported_to: Option<Instant>,
    /// Where convergence times go, seconds (the metrics endpoint's).
    pub convergence_times: Option<prometheus_client::metrics::histogram::Histogram>,
}

/// Poll loops silent for longer than this (twice an idle loop's longest
/// sleep) are deaf: the machine is told ([`Machine::handle_deaf`]).
pub const DEAF_AFTER: Duration = Duration::from_millis(2 * crate::runtime::IDLE_SLEEP_MS as u64);

/// A fresh descriptor table asked of every poll loop.
#[derive(Debug)]
struct ResetRequest {
    /// Done when every loop's [`LoopStats::resets`] reaches it.
    wanted: u64,
    since: Instant,
}

/// An install in progress.
#[derive(Debug)]
struct Pending {
    epoch: u64,
    members: shoal_dataplane::HostSet,
    since: Instant,
    /// The compiled map has been published to the loops.
    published: bool,
    /// Microseconds from `since` until the compiled map arrived, and until
    /// its publication (the XDP fast path's bitmaps written) returned.
    timings: (u64, u64),
    warned: bool,
}

impl std::fmt::Debug for ControlLoop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlLoop")
            .field("local", &self.local)
            .field("epoch", &self.epoch)
            .finish_non_exhaustive()
    }
}

impl ControlLoop {
    /// A control thread for `machine`, publishing into `cell`, reading the
    /// poll loops' shared `loops` stats, sending through `outbound`.
    pub fn new(
        machine: Machine,
        cell: Arc<MapCell>,
        loops: Vec<Arc<Mutex<LoopStats>>>,
        outbound: Arc<Outbound>,
        responder: Responder,
    ) -> Self {
        let local = machine.host();
        Self {
            machine,
            local,
            cell,
            loops,
            outbound,
            responder,
            start: Instant::now(),
            epoch: 0,
            sent: 0,
            refused: Default::default(),
            last_period: Instant::now(),
            compiler: Compiler::spawn(),
            pending: None,
            reset_on_install: false,
            resetting: None,
            running: None,
            services: None,
            rule_health: None,
            convergences: 0,
            last_convergence: None,
            stall_log: (None, 0),
            deaf_reported_to: None,
            convergence_times: None,
        }
    }

    /// The configuration the engine runs with: `reload` then refuses files
    /// that change what only a restart can change (see
    /// [`shoal_config::Config::restart_only_changes`]).
    pub fn set_running_config(&mut self, config: shoal_config::Config) {
        self.running = Some(config);
    }

    fn now(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    /// How long to wait for input before the machine's next deadline.
    pub fn wait(&self) -> Duration {
        let now = self.now();
        let deadline = self.machine.poll_timeout();
        Duration::from_nanos(deadline.saturating_sub(now))
            .clamp(Duration::from_millis(1), Duration::from_millis(50))
    }

    /// A control frame from a poll loop. Returns what a heartbeat that
    /// authenticated and was accepted claims (a peer's, never this host's):
    /// its host, boot counter and sequence number, now vouched for.
    pub fn handle_frame(&mut self, frame: &[u8]) -> Option<Claim> {
        let now = self.now();
        let info = parse_frame(frame).ok()?;
        match info.kind {
            FrameKind::Heartbeat => match self.machine.handle_heartbeat(frame, now) {
                // Authenticated: what the header claims is the sender's.
                Ok(()) => claim(frame).filter(|c| c.host != self.local),
                Err(e) => {
                    *self.refused.entry(e.name().to_string()).or_default() += 1;
                    None
                }
            },
            _ => {
                self.responder.handle(frame, now);
                None
            }
        }
    }

    /// One round's heartbeats from `inbox` (at most [`HEARTBEATS_PER_ROUND`]
    /// from the member lanes, then as many from strangers), through
    /// [`ControlLoop::handle_frame`]. A peer whose heartbeat is accepted
    /// gets a lane in `inbox` for the frame's source MAC and for sequence
    /// numbers past that frame's (see [`ControlInbox`]): from then on its
    /// new heartbeats from that MAC never wait behind strangers'.
    pub fn handle_heartbeats(&mut self, inbox: &ControlInbox, frames: &mut Vec<Vec<u8>>) {
        inbox.take_heartbeats(HEARTBEATS_PER_ROUND, HEARTBEATS_PER_ROUND, frames);
        for frame in frames.drain(..) {
            let Some(claim) = self.handle_frame(&frame) else {
                continue;
            };
            if let Some(source) = frame.get(6..12).and_then(|m| <[u8; 6]>::try_from(m).ok()) {
                inbox.trust(claim, source);
            }
        }
    }

    /// An admin verb: the machine answers (`reload` comes with its file
    /// read, through [`ControlLoop::handle_reload`]).
    pub fn handle_admin(&mut self, req: &Request) -> Response {
        let now = self.now();
        let mut resp = self.machine.handle_admin(req, now);
        if let Some(reader) = &self.services {
            match &mut resp.body {
                Body::Query(q) | Body::Display { query: q, .. } => q.services = Some(reader.json()),
                _ => {}
            }
        }
        if let Body::Query(q) | Body::Display { query: q, .. } = &mut resp.body {
            q.frames = Some(self.frames_json());
        }
        if let Some(reader) = &self.rule_health {
            match &mut resp.body {
                Body::Query(q) | Body::Display { query: q, .. } => {
                    q.rule_health = Some(reader.lock().clone())
                }
                _ => {}
            }
        }
        resp
    }

    /// This host's frame counters over every poll loop, for `query` and
    /// `display` (`shoal top` reads them): the `--stats` file's names.
    fn frames_json(&self) -> serde_json::Value {
        let mut total = shoal_dataplane::pipeline::Counters::default();
        for l in &self.loops {
            total.merge(&l.lock().dataplane);
        }
        let dropped: serde_json::Map<String, serde_json::Value> =
            shoal_dataplane::pipeline::DropReason::POLICY
                .iter()
                .zip(total.dropped)
                .map(|(r, n)| (r.name().to_string(), n.into()))
                .collect();
        let malformed: serde_json::Map<String, serde_json::Value> =
            shoal_dataplane::packet::Malformed::ALL
                .iter()
                .zip(total.malformed.iter().copied())
                .filter(|(_, n)| *n > 0)
                .map(|(m, n)| (m.name().to_string(), n.into()))
                .collect();
        serde_json::json!({
            "received": total.frames(),
            "for_cluster": total.for_cluster(),
            "kept": total.kept,
            "passed": total.passed,
            "dropped": dropped,
            "malformed": malformed,
            "xdp_dropped": self.cell.xdp_counters().dropped(),
        })
    }

    /// Adds the frontend thread's `rule_health` state to `query` and
    /// `display` answers.
    pub fn set_rule_health(&mut self, reader: crate::frontend::FrontendReader) {
        self.rule_health = Some(reader);
    }

    /// A rule's service health changed (see [`crate::frontend`]):
    /// `Some(reason)` leaves the rule, `None` takes it back.
    pub fn handle_rule_health(
        &mut self,
        rule: usize,
        left: Option<shoal_controlplane::rule_health::Reason>,
    ) {
        let now = self.now();
        self.machine.handle_rule_health(rule, left, now);
    }

    /// Adds the array tier's `services` counters to `query` and `display`
    /// answers.
    pub fn set_services(&mut self, reader: crate::array::ServicesReader) {
        self.services = Some(reader);
    }

    /// `reload`, with the configuration already read off this thread (see
    /// [`super::admin::apply_reload`]).
    pub fn handle_reload(&mut self, reload: Reload) -> Response {
        let now = self.now();
        super::admin::apply_reload(reload, &mut self.running, &mut self.machine, now)
    }

    /// Timers, events, map installs, dirty and load reports, heartbeats.
    pub fn step(&mut self) {
        let now = self.now();
        self.machine.handle_timeout(now);
        self.drain_events();
        self.progress_install();
        let period = Duration::from_nanos(self.machine.period_in_use().max(1_000_000));
        if self.last_period.elapsed() >= period {
            self.last_period = Instant::now();
            self.report_dataplane();
            self.drain_events();
        }
        let mut buf = [0u8; 1536];
        while let Some(n) = self.machine.poll_transmit(self.now(), &mut buf) {
            if self.outbound.push(Lane::Heartbeat, &buf[..n]) {
                self.sent += 1;
            }
        }
    }

    fn drain_events(&mut self) {
        while let Some(ev) = self.machine.poll_event() {
            match ev {
                Event::EffectiveViewChanged { view, epoch, .. } => self.install(view, epoch),
                Event::StateChanged(
                    state @ (shoal_controlplane::HostState::Stopped
                    | shoal_controlplane::HostState::Suspended),
                ) => {
                    tracing::info!(
                        ?state,
                        "cluster operations stopped: dropping tracked connections"
                    );
                    // With the map that takes nothing on its way, drop the
                    // connections once it runs (before its dirty groups
                    // reach the machine, so before the bound it realises is
                    // advertised); otherwise at once.
                    if self.pending.is_some() {
                        self.reset_on_install = true;
                    } else {
                        self.request_reset();
                    }
                }
                Event::DirtyElsewhereChanged => self.refresh_dirty_elsewhere(),
                Event::ViewAdopted { ref view, epoch } => {
                    let (mine, peers) = self.machine.bounds();
                    tracing::info!(
                        epoch,
                        members = ?view.members,
                        bound = format_args!("{mine:016x}"),
                        peer_bounds = ?peers
                            .iter()
                            .map(|(h, b)| format!("{}:{b:016x}", h.get()))
                            .collect::<Vec<_>>(),
                        "view adopted"
                    );
                }
                Event::LoneViewWithheld { epoch, why } => tracing::warn!(
                    epoch,
                    claimed_host = why.sender.host,
                    source_mac = %why.sender.source,
                    frames = why.frames,
                    "a stream of heartbeats for this cluster fails authentication (another key on \
                     the segment, or a forger): not serving alone until it stops"
                ),
                Event::ClockBehind { host, behind_ns } => tracing::warn!(
                    peer = host.get(),
                    behind_ms = behind_ns / 1_000_000,
                    "clock is {} ms behind peers; heartbeats now carry the peer's time; fix NTP",
                    behind_ns / 1_000_000
                ),
                Event::LoneViewReleased { epoch } => {
                    tracing::info!(epoch, "no more unauthenticated heartbeats: serving alone")
                }
                Event::Rejected(e) => tracing::debug!(reason = %e, "heartbeat refused"),
                Event::Converged {
                    members,
                    epoch,
                    duration_ns,
                } => {
                    self.convergences += 1;
                    self.last_convergence = Some((duration_ns, Instant::now()));
                    if let Some(h) = &self.convergence_times {
                        h.observe(duration_ns as f64 / 1e9);
                    }
                    tracing::info!(
                        epoch,
                        ?members,
                        duration_ms = duration_ns / 1_000_000,
                        "converged"
                    );
                }
                Event::DuplicateId(h) => tracing::warn!(
                    host = h.get(),
                    "two hosts use this ID: kept out of the view"
                ),
                Event::Stalled { late_ns } => self.log_stall("the control thread ran", late_ns),
                Event::Deaf { deaf_ns } => self.log_stall("the poll loops ran", deaf_ns),
                other => tracing::info!(event = ?other, "control plane"),
            }
        }
    }

    /// Logs a stall or a deaf stretch of `ns` (`what` ran late or did not
    /// run), at most once a second with the count since the last line.
    fn log_stall(&mut self, what: &str, ns: u64) {
        let (last, unlogged) = &mut self.stall_log;
        *unlogged += 1;
        if last.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
            tracing::warn!(
                late_ms = ns / 1_000_000,
                stalls = *unlogged,
                "{what} {} ms late (host overloaded or paused): \
                 peers' silence meanwhile is not counted against them",
                ns / 1_000_000
            );
            *last = Some(Instant::now());
            *unlogged = 0;
        }
    }

    /// Sets the dirty groups other hosts hold on `map`'s rules, as the
    /// machine knows them now.
    fn mark_dirty_elsewhere(&mut self, map: &mut ClusterMap) {
        for r in 0..map.rules.len() {
            map.set_dirty_elsewhere(r, self.machine.dirty_elsewhere(r));
        }
    }

    /// Starts installing `view`'s map, of `epoch`, in every poll loop; the
    /// install completes in [`ControlLoop::step`] (see the module docs).
    fn install(&mut self, view: shoal_dataplane::map::View, epoch: u64) {
        if let Some(old) = &self.pending {
            tracing::debug!(
                replaced = old.epoch,
                epoch,
                "a newer view replaces a pending install"
            );
        }
        self.pending = Some(Pending {
            epoch,
            members: view.members,
            since: Instant::now(),
            published: false,
            timings: (0, 0),
            warned: false,
        });
        let request = CompileRequest {
            spec: self.machine.spec().clone(),
            view,
            local: self.local,
            epoch,
        };
        self.compiler.waiting.store(true, Ordering::Release);
        if let Err(std::sync::mpsc::SendError(req)) = self.compiler.requests.send(request) {
            let map = ClusterMap::build(&req.spec, &req.view, req.local, req.epoch);
            self.publish(map);
        }
    }

    /// Publishes a compiled map if it is the pending one (with the dirty
    /// groups known now: they may have changed while it was compiled).
    fn publish(&mut self, mut map: ClusterMap) {
        let Some(pending) = self.pending.as_mut() else {
            return;
        };
        if map.epoch != pending.epoch {
            return;
        }
        pending.published = true;
        let compiled_us = pending.since.elapsed().as_micros() as u64;
        self.epoch = map.epoch;
        self.mark_dirty_elsewhere(&mut map);
        self.cell.publish(Arc::new(map));
        if let Some(p) = self.pending.as_mut() {
            p.timings = (compiled_us, p.since.elapsed().as_micros() as u64);
        }
    }

    /// Publishes a finished compile; completes the install once every poll
    /// loop runs it: the loops' dirty groups go to the machine and the
    /// default host announces the VIPs.
    fn progress_install(&mut self) {
        while let Ok(map) = self.compiler.results.try_recv() {
            self.publish(map);
        }
        let Some(pending) = self.pending.as_mut() else {
            return;
        };
        let epoch = pending.epoch;
        if !pending.published || !self.loops.iter().all(|l| l.lock().epoch >= epoch) {
            if !pending.warned && pending.since.elapsed() > INSTALL_TIMEOUT {
                pending.warned = true;
                tracing::warn!(
                    epoch,
                    published = pending.published,
                    "the new map is not running in every poll loop yet; convergence waits"
                );
            }
            return;
        }
        if std::mem::take(&mut self.reset_on_install) {
            self.request_reset();
        }
        // The bound this install realises is advertised only once every
        // loop has dropped what it tracked (see the module docs).
        if !self.reset_done() {
            return;
        }
        let Some(pending) = self.pending.take() else {
            return;
        };
        let took_us = pending.since.elapsed().as_micros() as u64;
        let (compiled_us, published_us) = pending.timings;
        let members = pending.members;
        let dirty = self.dirty_union();
        self.machine.handle_dirty(epoch, &dirty, self.now());
        let current = self.cell.current();
        let elsewhere: Vec<usize> = current
            .rules
            .iter()
            .map(|r| r.dirty_elsewhere.count())
            .collect();
        let here: Vec<usize> = dirty.iter().map(|g| g.count()).collect();
        tracing::info!(
            epoch,
            members = ?members,
            took_us,
            compiled_us,
            published_us,
            dirty_here = ?here,
            dirty_elsewhere = ?elsewhere,
            "map installed"
        );
        // The default host tells the segment where the VIPs are (after a
        // failover the new default host's gratuitous ARP refreshes caches).
        self.responder.announce(&self.cell.current());
    }

    /// Asks every poll loop for a fresh descriptor table, without waiting
    /// (each loop checks once per iteration, so this takes about a batch;
    /// [`ControlLoop::reset_done`] says when). Called on `stop` / `suspend`
    /// once the map that takes nothing runs, before its dirty groups go to
    /// the machine: the other hosts adopt a view without this host only
    /// after it advertises that bound, and by then no loop serves a
    /// connection it tracked.
    fn request_reset(&mut self) {
        self.resetting = Some(ResetRequest {
            wanted: self.cell.request_reset(),
            since: Instant::now(),
        });
    }

    /// Whether no reset is outstanding: every loop carried out the last
    /// one, or it has waited [`INSTALL_TIMEOUT`] (logged, and given up
    /// on, so that a stuck loop delays a `stop` by a bounded time).
    fn reset_done(&mut self) -> bool {
        let Some(r) = &self.resetting else {
            return true;
        };
        if !self.loops.iter().all(|l| l.lock().resets >= r.wanted) {
            if r.since.elapsed() <= INSTALL_TIMEOUT {
                return false;
            }
            tracing::warn!("a poll loop did not drop its tracked connections in time");
        }
        self.resetting = None;
        true
    }

    fn refresh_dirty_elsewhere(&mut self) {
        let current = self.cell.current();
        let mut map = (*current).clone();
        self.mark_dirty_elsewhere(&mut map);
        self.cell.publish(Arc::new(map));
    }

    fn dirty_union(&self) -> Vec<GroupBits> {
        let rules = self.machine.spec().rules.len();
        let mut union = vec![GroupBits::default(); rules];
        for l in &self.loops {
            let l = l.lock();
            for (r, bits) in l.dirty.iter().enumerate().take(rules) {
                for g in bits.iter() {
                    union[r].insert(g);
                }
            }
        }
        union
    }

    /// Once per period: the loops' dirty groups and live descriptors per rule.
    fn report_dataplane(&mut self) {
        let now = self.now();
        if self.epoch > 0
            && self.reset_done()
            && self.loops.iter().all(|l| l.lock().epoch >= self.epoch)
        {
            let dirty = self.dirty_union();
            self.machine.handle_dirty(self.epoch, &dirty, now);
        }
        let mut by_rule = [0u64; MAX_RULES];
        for l in &self.loops {
            for (a, b) in by_rule.iter_mut().zip(l.lock().by_rule.iter()) {
                *a += *b as u64;
            }
        }
        for (rule, n) in by_rule
            .iter()
            .enumerate()
            .take(self.machine.spec().rules.len())
        {
            self.machine.handle_load(rule, *n, now);
        }
    }

    /// Runs until `stop`: control frames from `inbox`, admin calls from
    /// `admin`.
    ///
    /// Each round handles, in this order: at most [`HEARTBEATS_PER_ROUND`]
    /// heartbeats from members' lanes and as many from strangers
    /// ([`ControlLoop::handle_heartbeats`]), at most
    /// [`NEIGHBOUR_PER_ROUND`] ARP/ND/IGMP frames, the
    /// admin calls, then the machine's timers and transmissions
    /// ([`ControlLoop::step`]). Heartbeats that arrived before a deadline
    /// are heard before it fires, and however much is queued, a round (and
    /// so the time between two looks at the timers) stays bounded: a flood
    /// of frames that fail authentication, or of neighbour requests, delays
    /// the next heartbeat sent by at most one round's work.
    pub fn run(
        &mut self,
        inbox: &ControlInbox,
        admin: &Receiver<AdminCall>,
        stop: &AtomicBool,
        mut tick: impl FnMut(&mut Self),
    ) {
        let mut frames = Vec::with_capacity(HEARTBEATS_PER_ROUND.max(NEIGHBOUR_PER_ROUND));
        while !stop.load(Ordering::Relaxed) {
            inbox.wait(self.wait());
            self.note_deafness(inbox);
            self.handle_heartbeats(inbox, &mut frames);
            inbox.take_neighbour(NEIGHBOUR_PER_ROUND, &mut frames);
            for frame in frames.drain(..) {
                self.handle_frame(&frame);
            }
            while let Ok((call, reply)) = admin.try_recv() {
                let resp = match call {
                    Call::Verb(req) => self.handle_admin(&req),
                    Call::Reload(reload) => self.handle_reload(*reload),
                };
                // The reply channel holds one answer: this never blocks.
                let _ = reply.send(resp);
            }
            self.step();
            tick(self);
        }
    }

    /// Tells the machine how long the poll loops have not run while this
    /// thread has (they bring the heartbeats in and take this host's out):
    /// a silence of more than [`DEAF_AFTER`] (twice an idle loop's longest
    /// sleep), counted from the loop that ran least recently, is this
    /// host's deafness, not its peers' ([`Machine::handle_deaf`]); each
    /// stretch is reported once. This thread's own lateness is the
    /// machine's to excuse, so a round that comes late reports nothing.
    fn note_deafness(&mut self, inbox: &ControlInbox) {
        let now = Instant::now();
        let at = self.now();
        if self.machine.stalled_for(at).is_some() {
            self.deaf_reported_to = Some(now);
            return;
        }
        let silent = Duration::from_nanos(inbox.silent_ns(now));
        if silent <= DEAF_AFTER {
            return;
        }
        let from = now.checked_sub(silent).unwrap_or(now);
        let from = self.deaf_reported_to.map_or(from, |t| t.max(from));
        let deaf = now.saturating_duration_since(from);
        self.deaf_reported_to = Some(now);
        if !deaf.is_zero() {
            self.machine.handle_deaf(deaf.as_nanos() as u64, at);
        }
    }

    /// The VIPs of the map in force.
    pub fn vips(&self) -> Vec<IpAddr> {
        self.cell.current().vips.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_controlplane::{Config, HostState, ReturnCode};
    use shoal_dataplane::descriptor::DescriptorConfig;
    use shoal_dataplane::mac::unicast_mac;
    use shoal_dataplane::mac::Mac;
    use shoal_dataplane::map::View;
    use shoal_dataplane::pipeline::{Dataplane, Verdict};
    use shoal_dataplane::wire::{ip_proto, tcp::flags};
    use shoal_dataplane::{Affinity, ClusterSpec, HostSet};
    use shoal_testkit::frame::{self, Ipv4};
    use shoal_testkit::spec::{self, VIP};
    use std::net::Ipv4Addr;

    fn syn(client: Ipv4Addr, sport: u16) -> Vec<u8> {
        let ip = Ipv4::new(client, VIP, ip_proto::TCP);
        ip.frame(unicast_mac(VIP).0, &frame::tcp(sport, 80, flags::SYN))
    }

    /// One VIP, one TCP port-80 rule.
    fn web_spec() -> ClusterSpec {
        spec::one_vip(vec![spec::tcp_port(80, spec::multiple(Affinity::None))])
    }

    /// A control thread for `machine` over one poll loop's `stats`.
    fn clustered(
        machine: Machine,
        cell: &Arc<MapCell>,
        stats: &Arc<Mutex<LoopStats>>,
        outbound: &Arc<Outbound>,
    ) -> ControlLoop {
        let responder = Responder::new(
            machine.host(),
            unicast_mac(VIP),
            Mac([2, 0, 0, 0, 0, 1]),
            cell.clone(),
            outbound.clone(),
            None,
        );
        ControlLoop::new(
            machine,
            cell.clone(),
            vec![stats.clone()],
            outbound.clone(),
            responder,
        )
    }

    /// `stop` (and `suspend`) leave every poll loop with an empty
    /// descriptor table before the control thread moves on.
    #[test]
    fn stop_and_suspend_give_the_loops_a_fresh_table() {
        let spec = web_spec();
        let local = HostId::new(1).unwrap();
        let view = View::converged(&spec, HostSet::from_iter([local]));
        let map = Arc::new(ClusterMap::build(&spec, &view, local, 1));
        let cell = Arc::new(MapCell::new(map.clone()));
        let outbound = Arc::new(Outbound::default());
        let stats = Arc::new(Mutex::new(LoopStats::default()));
        let done = Arc::new(AtomicBool::new(false));

        // A poll loop: tracks 100 connections, then honours installs and
        // resets the way the real loops do, reporting its table size.
        let mut dp = Dataplane::new(map, DescriptorConfig::default(), 7);
        for i in 0..100u16 {
            let v = dp.judge(&syn(Ipv4Addr::new(11, 0, 0, 1), 1024 + i), 0);
            assert_eq!(v, Verdict::Keep);
        }
        assert_eq!(dp.table().len(), 100);
        let loop_thread = {
            let (cell, stats, done) = (cell.clone(), stats.clone(), done.clone());
            std::thread::spawn(move || {
                let mut local = LoopStats::default();
                let mut seen = 0;
                local.snapshot(&dp);
                *stats.lock() = local.clone();
                while !done.load(Ordering::Relaxed) {
                    let mut changed = crate::handoff::apply_reset(&cell, &mut dp, &mut local);
                    if let Some((seq, m)) = cell.newer_than(seen) {
                        seen = seq;
                        dp.set_map(m);
                        changed = true;
                    }
                    if changed {
                        local.snapshot(&dp);
                        *stats.lock() = local.clone();
                    }
                    std::thread::sleep(Duration::from_micros(100));
                }
            })
        };

        let machine = Machine::new(Config::new(local, [9; 32], 1), spec, 0);
        let mut c = clustered(machine, &cell, &stats, &outbound);
        c.step();
        // The loop reports its table once it runs; give it the time.
        let started = Instant::now();
        while stats.lock().descriptors != 100 && started.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(stats.lock().descriptors, 100, "nothing dropped before stop");

        for verb in [Request::Stop, Request::Start, Request::Suspend] {
            let _ = c.handle_admin(&verb);
            // Installs complete asynchronously: step until nothing is
            // pending (bounded).
            let t = Instant::now();
            c.step();
            while c.pending.is_some() && t.elapsed() < INSTALL_TIMEOUT {
                std::thread::sleep(Duration::from_millis(1));
                c.step();
            }
            let s = stats.lock().clone();
            if verb == Request::Start {
                // Starting again keeps the (empty) table.
                assert_eq!(s.descriptors, 0);
                continue;
            }
            let state = c.machine.state();
            assert!(
                matches!(state, HostState::Stopped | HostState::Suspended),
                "{state:?}"
            );
            assert_eq!(s.descriptors, 0, "{verb:?}: tracked connections dropped");
            assert_eq!(s.resets, cell.resets(), "{verb:?}: the loop acknowledged");
        }
        done.store(true, Ordering::Relaxed);
        loop_thread.join().unwrap();
    }

    /// A map install never stops the control thread: while a poll loop has
    /// not picked the new map up, heartbeats still leave, and the machine
    /// hears of the new map's dirty groups only once every loop runs it.
    /// `reload` applies a rule or weight change and refuses, naming the
    /// keys, a file that changes what only a restart can change.
    #[test]
    fn reload_refuses_changes_that_need_a_restart() {
        let dir = std::env::temp_dir().join(format!("shoal-reload-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/examples");
        std::fs::copy(examples.join("cluster.key"), dir.join("cluster.key")).unwrap();
        let original = std::fs::read_to_string(examples.join("lab-3host.toml")).unwrap();
        let path = dir.join("cluster.toml");
        std::fs::write(&path, &original).unwrap();
        let config = shoal_config::load(&path).unwrap();
        let spec = config.spec(0x5eed);
        let local = HostId::new(1).unwrap();
        let view = View::converged(&spec, HostSet::from_iter([local]));
        let cell = Arc::new(MapCell::new(Arc::new(ClusterMap::build(
            &spec, &view, local, 1,
        ))));
        let outbound = Arc::new(Outbound::default());
        let stats = Arc::new(Mutex::new(LoopStats::default()));
        let machine = Machine::new(Config::new(local, [9; 32], 1), spec, 0);
        let mut c = clustered(machine, &cell, &stats, &outbound);
        c.set_running_config(config);

        let edited = |from: &str, to: &str| {
            assert!(original.contains(from), "{from}");
            std::fs::write(&path, original.replace(from, to)).unwrap();
        };
        edited(
            "key_file = \"cluster.key\"",
            "key_file = \"cluster.key\"\nipv6_network_prefix = 48\n\n[heartbeat]\nperiod_ms = 100",
        );
        let r = c.handle_reload(Reload::read(&path));
        assert_eq!(r.code, ReturnCode::BadParams, "{r:?}");
        assert!(
            r.message
                .contains("cluster.ipv6_network_prefix, heartbeat.period_ms"),
            "{}",
            r.message
        );
        edited("vips = [\"10.0.0.100\"]", "vips = [\"10.0.0.101\"]");
        let r = c.handle_reload(Reload::read(&path));
        assert!(r.message.contains("cluster.vips"), "{}", r.message);
        // A rule change is what reload is for.
        edited("affinity = \"single\"", "affinity = \"none\"");
        let r = c.handle_reload(Reload::read(&path));
        assert_eq!(r.code, ReturnCode::Ok, "{r:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// `stop` and `suspend` with a poll loop slow to drop its tracked
    /// connections: heartbeats keep their 50 ms period meanwhile, and the
    /// stop completes (the machine hears the new map's dirty groups) only
    /// once the loop has a fresh table.
    #[test]
    fn a_slow_reset_does_not_hold_heartbeats_back() {
        const PERIOD: Duration = Duration::from_millis(50);
        let spec = web_spec();
        let local = HostId::new(1).unwrap();
        let view = View::converged(&spec, HostSet::from_iter([local]));
        let cell = Arc::new(MapCell::new(Arc::new(ClusterMap::build(
            &spec, &view, local, 1,
        ))));
        let outbound = Arc::new(Outbound::default());
        let stats = Arc::new(Mutex::new(LoopStats::default()));
        // A poll loop that runs every map at once but drops its tracked
        // connections only when `release` says so.
        let release = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicBool::new(false));
        let loop_thread = {
            let (cell, stats, release, done) =
                (cell.clone(), stats.clone(), release.clone(), done.clone());
            std::thread::spawn(move || {
                let mut seen = 0;
                while !done.load(Ordering::Relaxed) {
                    if let Some((seq, m)) = cell.newer_than(seen) {
                        seen = seq;
                        stats.lock().epoch = m.epoch;
                    }
                    if release.load(Ordering::Relaxed) {
                        stats.lock().resets = cell.resets();
                    }
                    std::thread::sleep(Duration::from_micros(200));
                }
            })
        };
        let mut cfg = Config::new(local, [9; 32], 1);
        cfg.period_ns = PERIOD.as_nanos() as u64;
        let machine = Machine::new(cfg, spec, 0);
        let mut c = clustered(machine, &cell, &stats, &outbound);
        // Run until converged alone (a few periods).
        let t = Instant::now();
        while !matches!(c.machine.state(), HostState::Converged) || c.pending.is_some() {
            assert!(t.elapsed() < Duration::from_secs(10), "never converged");
            c.step();
            outbound.take();
            std::thread::sleep(Duration::from_millis(1));
        }

        for verb in [Request::Stop, Request::Start, Request::Suspend] {
            release.store(false, Ordering::Relaxed);
            let _ = c.handle_admin(&verb);
            let mut last = Instant::now();
            let mut worst = Duration::ZERO;
            let t = Instant::now();
            while t.elapsed() < 8 * PERIOD {
                c.step();
                if outbound.take().is_some() {
                    worst = worst.max(last.elapsed());
                    last = Instant::now();
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            worst = worst.max(last.elapsed());
            assert!(
                worst < 2 * PERIOD,
                "{verb:?}: heartbeats gapped {worst:?} at a {PERIOD:?} period"
            );
            if verb != Request::Start {
                assert!(
                    c.pending.is_some() || c.resetting.is_some(),
                    "{verb:?}: completed before the loop dropped its connections"
                );
            }
            release.store(true, Ordering::Relaxed);
            let t = Instant::now();
            while c.pending.is_some() || c.resetting.is_some() {
                assert!(t.elapsed() < INSTALL_TIMEOUT, "{verb:?}: never completed");
                c.step();
                std::thread::sleep(Duration::from_millis(1));
            }
            assert_eq!(stats.lock().resets, cell.resets(), "{verb:?}");
        }
        done.store(true, Ordering::Relaxed);
        loop_thread.join().unwrap();
    }

    /// A peer's heartbeat that authenticates gives the peer a lane in the
    /// inbox at the frame's source MAC; the same frame with a spoiled tag
    /// from another MAC gives nothing, nor does a frame with this host's
    /// own ID.
    #[test]
    fn an_accepted_heartbeat_gives_its_sender_a_lane() {
        use crate::handoff::Admission;
        use shoal_controlplane::heartbeat::MAX_FRAME;
        use shoal_dataplane::pipeline::Control;
        const M: [u8; 6] = [0x02, 0x22, 0, 0, 0, 2];
        const A: [u8; 6] = [0x02, 0xaa, 0, 0, 0, 0x62];
        let spec = web_spec();
        let (local, peer) = (HostId::new(1).unwrap(), HostId::new(2).unwrap());
        let view = View::converged(&spec, HostSet::from_iter([local]));
        let cell = Arc::new(MapCell::new(Arc::new(ClusterMap::build(
            &spec, &view, local, 1,
        ))));
        let outbound = Arc::new(Outbound::default());
        let stats = Arc::new(Mutex::new(LoopStats::default()));
        let machine = Machine::new(Config::new(local, [9; 32], 1), spec.clone(), 0);
        let mut c = clustered(machine, &cell, &stats, &outbound);
        let mut other = Machine::new(Config::new(peer, [9; 32], 1), spec, 0);
        let mut buf = vec![0u8; MAX_FRAME];
        let n = other
            .poll_transmit(c.now(), &mut buf)
            .expect("the peer's first heartbeat");
        let mut real = buf[..n].to_vec();
        real[6..12].copy_from_slice(&M);
        let mut forged = real.clone();
        forged[n - 1] ^= 1;
        forged[6..12].copy_from_slice(&A);

        let inbox = ControlInbox::default();
        let mut frames = Vec::new();
        assert_eq!(inbox.push(Control::Heartbeat, &forged), Admission::Queued);
        c.handle_heartbeats(&inbox, &mut frames);
        assert_eq!(c.refused.get("bad_mac"), Some(&1));
        assert_eq!(inbox.trusted(peer), None, "a forgery earns no lane");

        assert_eq!(inbox.push(Control::Heartbeat, &real), Admission::Queued);
        assert_eq!(
            inbox.queued_heartbeats(),
            (0, 1),
            "a stranger until it authenticates"
        );
        c.handle_heartbeats(&inbox, &mut frames);
        assert_eq!(inbox.queued(), (0, 0));
        assert_eq!(c.refused.values().sum::<u64>(), 1, "{:?}", c.refused);
        assert_eq!(inbox.trusted(peer), Some(M));
        // From now on its new frames from M take its lane; from A, or
        // replayed, they do not.
        let mut next = real.clone();
        let seq = u64::from_be_bytes(next[14 + 28..14 + 36].try_into().unwrap());
        next[14 + 28..14 + 36].copy_from_slice(&(seq + 1).to_be_bytes());
        let _ = inbox.push(Control::Heartbeat, &next);
        let _ = inbox.push(Control::Heartbeat, &forged);
        let _ = inbox.push(Control::Heartbeat, &real);
        assert_eq!(inbox.queued_heartbeats(), (1, 2));
        c.handle_heartbeats(&inbox, &mut frames);

        // This host's own heartbeat (looped back) gives no lane.
        let n = c
            .machine
            .poll_transmit(c.now(), &mut buf)
            .expect("this host's first heartbeat");
        let _ = inbox.push(Control::Heartbeat, &buf[..n]);
        c.handle_heartbeats(&inbox, &mut frames);
        assert_eq!(inbox.trusted(local), None);
    }

    #[test]
    fn an_install_does_not_hold_heartbeats_back() {
        let spec = web_spec();
        let local = HostId::new(1).unwrap();
        let view = View::converged(&spec, HostSet::from_iter([local]));
        let cell = Arc::new(MapCell::new(Arc::new(ClusterMap::build(
            &spec, &view, local, 1,
        ))));
        let outbound = Arc::new(Outbound::default());
        // A poll loop that is slow to pick maps up: it acknowledges only
        // when the test says so.
        let stats = Arc::new(Mutex::new(LoopStats::default()));
        stats.lock().epoch = 1;
        let mut cfg = Config::new(local, [9; 32], 1);
        cfg.period_ns = 1_000_000;
        let machine = Machine::new(cfg, spec.clone(), 0);
        let mut c = clustered(machine, &cell, &stats, &outbound);
        c.install(view.clone(), 7);
        let started = Instant::now();
        let mut sent_while_pending = 0;
        while c.pending.as_ref().is_some_and(|p| !p.published) {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "compile never finished"
            );
            c.step();
            sent_while_pending += outbound.take().map_or(0, |f| f.len());
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(cell.current().epoch, 7, "the compiled map is published");
        for _ in 0..20 {
            c.step();
            sent_while_pending += outbound.take().map_or(0, |f| f.len());
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(c.pending.is_some(), "not installed before the loop runs it");
        assert!(
            sent_while_pending > 0,
            "heartbeats leave while the loop has not picked the map up"
        );
        stats.lock().epoch = 7;
        c.step();
        assert!(c.pending.is_none(), "installed once every loop runs it");

        // A newer view replaces a pending one; the older compile is dropped.
        let mut two = view.clone();
        two.members = HostSet::EMPTY;
        c.install(view.clone(), 8);
        c.install(two, 9);
        let started = Instant::now();
        while c.pending.as_ref().is_some_and(|p| !p.published) {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "compile never finished"
            );
            c.step();
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(cell.current().epoch, 9);
        assert_eq!(c.pending.as_ref().map(|p| p.epoch), Some(9));
    }
}
