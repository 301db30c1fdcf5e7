//! The control thread with a control plane: drives the sans-IO
//! [`shoal_controlplane::Machine`] with heartbeats from the poll loops, admin
//! requests from the local socket and the clock; installs the maps it asks
//! for in every poll loop; sends its heartbeats; answers ARP/ND for the VIPs
//! when this host is the default host of the map in force.
//!
//! # The ordering that keeps frames on at most one host
//!
//! On `EffectiveViewChanged { view, epoch }` the map is compiled on a
//! worker thread (2^20 buckets per rule: tens of milliseconds on a loaded
//! machine), published to the poll loops, and each loop acknowledges the
//! epoch it runs, at most a batch or an idle wait later. Only when every
//! loop has acknowledged are the loops' dirty groups for that epoch handed
//! to the machine with `handle_dirty`, and the machine advertises a new
//! bound ("every bucket I take new connections in is mine in the view I
//! proposed") only after that call: the machine never advertises a promise
//! the dataplane does not yet keep.
//!
//! Design decision: the install does not block this thread. Heartbeats keep
//! being handled and sent while a map is compiled and picked up, because a
//! control thread that stops for the install stops hearing and being heard:
//! at 50–100 ms periods with tolerance 3, an install slowed by a busy machine
//! outlasted the liveness window, and every host declared every other dead
//! in turn (a churn soak measured installs of p50 308 ms, max 555 ms, and
//! 22,026 false `HostDown`s in 30 minutes). What a heartbeat sent meanwhile
//! promises is still the previous, acknowledged bound. A newer view replaces
//! a pending one; a stale compile is discarded. A loop that does not
//! acknowledge within [`INSTALL_TIMEOUT`] is logged; it delays convergence,
//! never safety.
//!
//! `stop` and `suspend` still wait (at most [`INSTALL_TIMEOUT`]) for every
//! loop to drop its tracked connections before the heartbeat that says so
//! leaves: that wait is a fresh table, not a compile, and is short.
//!
//! # The admin socket
//!
//! A root-only (0600) Unix stream socket, one JSON request line in, one JSON
//! response line out (`shoal_controlplane::admin`). Its default path is
//! `/run/shoal/host<ID>.sock`; `shoal run --admin-socket` and the verbs'
//! `--socket` change it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use shoal_controlplane::admin::{decode_request, encode_response, Body};
use shoal_controlplane::{Event, Machine, Request, Response, ReturnCode};
use shoal_dataplane::mac::Mac;
use shoal_dataplane::map::{BucketCache, ClusterMap, GroupBits};
use shoal_dataplane::packet::{parse_frame, FrameKind, L4};
use shoal_dataplane::reply;
use shoal_dataplane::{HostId, MAX_RULES};

use crate::runtime::{LoopStats, MapCell, Outbound};

/// Longest the control thread waits for every poll loop to run a new map.
pub const INSTALL_TIMEOUT: Duration = Duration::from_secs(2);

/// The default admin socket of host `id`.
pub fn default_socket(id: u8) -> PathBuf {
    PathBuf::from(format!("/run/shoal/host{id}.sock"))
}

/// One admin request and where its answer goes.
pub type AdminCall = (Request, SyncSender<Response>);

/// Serves the admin socket on its own thread until `stop` is set: each
/// connection carries one request line and gets one response line.
pub fn serve_admin(
    path: &Path,
    calls: SyncSender<AdminCall>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    // A stale socket of a dead process is in the way of bind.
    if path.exists() && UnixStream::connect(path).is_err() {
        let _ = std::fs::remove_file(path);
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    listener.set_nonblocking(true)?;
    let path = path.to_path_buf();
    std::thread::Builder::new()
        .name("shoal-admin".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let _ = answer(stream, &calls);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "admin socket accept failed");
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            }
            let _ = std::fs::remove_file(&path);
        })
}

fn answer(stream: UnixStream, calls: &SyncSender<AdminCall>) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut line = String::new();
    BufReader::new(stream.try_clone()?)
        .take(64 * 1024)
        .read_line(&mut line)?;
    let response = match decode_request(&line) {
        Ok(req) => {
            let (tx, rx) = sync_channel(1);
            if calls.send((req, tx)).is_err() {
                Response::new(ReturnCode::Stopped, "shoal is shutting down", Body::None)
            } else {
                rx.recv_timeout(Duration::from_secs(10))
                    .unwrap_or_else(|_| {
                        Response::new(
                            ReturnCode::Converging,
                            "the control thread did not answer in time",
                            Body::None,
                        )
                    })
            }
        }
        Err(e) => Response::new(
            ReturnCode::BadParams,
            format!("bad request: {e}"),
            Body::None,
        ),
    };
    let mut stream = stream;
    stream.write_all(encode_response(&response).as_bytes())
}

/// Sends one request to a running shoal and reads its answer.
pub fn call(path: &Path, req: &Request) -> std::io::Result<Response> {
    let mut stream = UnixStream::connect(path)?;
    stream.set_read_timeout(Some(Duration::from_secs(15)))?;
    stream.write_all(shoal_controlplane::admin::encode_request(req).as_bytes())?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line)?;
    shoal_controlplane::admin::decode_response(&line)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))
}

/// How often a host repeats its IGMP membership report (the default query
/// interval of RFC 2236 is 125 s; reporting more often keeps a snooping
/// switch's membership fresh across querier restarts).
pub const IGMP_REPORT_INTERVAL: Duration = Duration::from_secs(10);

/// The control thread's neighbour duties, the same with or without a control
/// plane: the default host of the map in force answers ARP and ND for the
/// VIPs and announces them with gratuitous ARP; in igmp mode every host
/// reports its membership of the cluster group, and answers queries.
#[derive(Debug)]
pub struct Responder {
    local: HostId,
    cluster_mac: Mac,
    source_mac: Mac,
    pub(crate) cell: Arc<MapCell>,
    outbound: Arc<Outbound>,
    /// ARP and ND requests answered.
    pub answered: u64,
    /// In igmp mode: the cluster group and the address reports come from.
    igmp: Option<(Ipv4Addr, Ipv4Addr)>,
    /// IGMP membership reports sent.
    pub igmp_reports: u64,
}

impl Responder {
    /// A responder for `local`, reading the map in force from `cell` and
    /// sending through `outbound`; `igmp` is (group, source) in igmp mode.
    pub fn new(
        local: HostId,
        cluster_mac: Mac,
        source_mac: Mac,
        cell: Arc<MapCell>,
        outbound: Arc<Outbound>,
        igmp: Option<(Ipv4Addr, Ipv4Addr)>,
    ) -> Self {
        Self {
            local,
            cluster_mac,
            source_mac,
            cell,
            outbound,
            answered: 0,
            igmp,
            igmp_reports: 0,
        }
    }

    fn send(&self, frame: &[u8]) {
        self.outbound.push(frame);
    }

    /// Sends an IGMPv2 membership report for the cluster group (igmp mode).
    pub fn report_membership(&mut self) {
        if let Some((group, source)) = self.igmp {
            let mut buf = [0u8; reply::MAX_REPLY];
            let n = reply::igmp_report(group, self.source_mac, source, &mut buf);
            self.send(&buf[..n]);
            self.igmp_reports += 1;
        }
    }

    /// A control frame that is not a heartbeat: an IGMP query (igmp mode),
    /// or an ARP request or neighbour solicitation for a VIP.
    pub fn handle(&mut self, frame: &[u8]) {
        let Ok(info) = parse_frame(frame) else { return };
        if let FrameKind::Ipv4(ip) = info.kind {
            if matches!(
                ip.l4,
                L4::Igmp {
                    igmp_type: 0x11,
                    ..
                }
            ) {
                if self.igmp.is_some() {
                    self.report_membership();
                }
                return;
            }
        }
        let map = self.cell.current();
        if map.default_host != Some(self.local) {
            return;
        }
        let mut buf = [0u8; reply::MAX_REPLY];
        let n = reply::arp_reply(
            frame,
            &map.vips,
            self.cluster_mac,
            self.source_mac,
            &mut buf,
        )
        .or_else(|| {
            reply::neighbor_advert(
                frame,
                &map.vips,
                self.cluster_mac,
                self.source_mac,
                &mut buf,
            )
        });
        if let Some(n) = n {
            self.send(&buf[..n]);
            self.answered += 1;
        }
    }

    /// Gratuitous ARP for every IPv4 VIP, when `map` makes this host the
    /// default host.
    pub fn announce(&self, map: &ClusterMap) {
        if map.default_host != Some(self.local) {
            return;
        }
        for vip in &map.vips {
            if let IpAddr::V4(v) = vip {
                let mut buf = [0u8; reply::MAX_REPLY];
                let n = reply::gratuitous_arp(*v, self.cluster_mac, self.source_mac, &mut buf);
                self.send(&buf[..n]);
            }
        }
    }
}

/// The control thread's state with a control plane.
pub struct Clustered {
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
    config_path: PathBuf,
    /// When a heartbeat for this cluster last failed authentication.
    last_bad_mac: Option<Instant>,
    /// A view this host would serve alone, held back while unauthenticated
    /// heartbeats for this cluster are heard (see [`Clustered::install`]).
    pub blocked: Option<(shoal_dataplane::map::View, u64)>,
    /// How long bad-MAC heartbeats keep a lone host from serving.
    suspicion: Duration,
    /// Builds maps off this thread.
    compiler: Compiler,
    /// The newest view asked for and not yet running in every loop.
    pending: Option<Pending>,
    /// `stop` / `suspend`: drop tracked connections when `pending` completes.
    reset_on_install: bool,
    /// The configuration in force, when known (see
    /// [`Clustered::set_running_config`]).
    running: Option<shoal_config::Config>,
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

/// A worker thread that compiles bucket maps, newest request first.
///
/// It keeps the bucket maps of the last view it compiled and, while no
/// request waits, computes those of each view that view would become if one
/// member failed (up to [`SPECULATE_MAX_MEMBERS`] members): a failover then
/// compiles from the cache instead of computing 2^20 buckets × hosts while
/// the failed host's clients wait. A request that arrives meanwhile waits at
/// most for the one bucket map being computed.
struct Compiler {
    requests: std::sync::mpsc::Sender<CompileRequest>,
    results: Receiver<ClusterMap>,
    /// Set before a request is sent, cleared when the worker takes it: a
    /// speculative computation gives up when it is set.
    waiting: Arc<AtomicBool>,
}

struct CompileRequest {
    spec: shoal_dataplane::ClusterSpec,
    view: shoal_dataplane::map::View,
    local: HostId,
    epoch: u64,
}

/// Largest view whose one-member-less successors the compiler precomputes
/// (each costs up to a 1 MiB bucket map per distinct weight vector).
const SPECULATE_MAX_MEMBERS: usize = 16;

/// Computes into `cache` the bucket maps of `req`'s view without each of its
/// members in turn, at the lowest priority, giving up as soon as `waiting`
/// says a request has been sent.
fn speculate(req: &CompileRequest, cache: &mut BucketCache, waiting: &AtomicBool) {
    let members = req.view.members;
    if !(2..=SPECULATE_MAX_MEMBERS).contains(&members.len()) {
        return;
    }
    // Guesswork yields to the poll loops and the control thread.
    let _ = crate::sys::sched::set_thread_nice(19);
    let stop = || waiting.load(Ordering::Acquire);
    for gone in members.iter() {
        let mut view = req.view.clone();
        view.members.remove(gone);
        if !cache.warm(&req.spec, &view, &stop) {
            break;
        }
    }
    if let Err(e) = crate::sys::sched::set_thread_nice(0) {
        tracing::debug!(error = %e, "map compiler stays at nice 19");
    }
}

impl Compiler {
    fn spawn() -> Self {
        let (requests, inbox) = std::sync::mpsc::channel::<CompileRequest>();
        let (done, results) = std::sync::mpsc::channel();
        let waiting = Arc::new(AtomicBool::new(false));
        let flag = waiting.clone();
        let spawned = std::thread::Builder::new()
            .name("shoal-compile".into())
            .spawn(move || {
                let mut cache = BucketCache::default();
                while let Ok(mut req) = inbox.recv() {
                    flag.store(false, Ordering::Release);
                    // Only the newest view matters: skip those it replaced.
                    while let Ok(newer) = inbox.try_recv() {
                        req = newer;
                    }
                    let map = ClusterMap::build_cached(
                        &req.spec, &req.view, req.local, req.epoch, &mut cache,
                    );
                    cache.retain_used_by(&map);
                    if done.send(map).is_err() {
                        return;
                    }
                    speculate(&req, &mut cache, &flag);
                }
            });
        if let Err(err) = spawned {
            // Without the worker, requests fail to send and are compiled
            // on the control thread instead (see `Clustered::install`).
            tracing::warn!(error = %err, "no map compiler thread: compiling inline");
        }
        Self {
            requests,
            results,
            waiting,
        }
    }
}

impl std::fmt::Debug for Clustered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Clustered")
            .field("local", &self.local)
            .field("epoch", &self.epoch)
            .finish_non_exhaustive()
    }
}

impl Clustered {
    /// A control thread for `machine`, publishing into `cell`, reading the
    /// poll loops' shared `loops` stats, sending through `outbound`.
    pub fn new(
        machine: Machine,
        cell: Arc<MapCell>,
        loops: Vec<Arc<Mutex<LoopStats>>>,
        outbound: Arc<Outbound>,
        responder: Responder,
        config_path: PathBuf,
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
            config_path,
            last_bad_mac: None,
            blocked: None,
            suspicion: Duration::from_secs(3),
            compiler: Compiler::spawn(),
            pending: None,
            reset_on_install: false,
            running: None,
        }
    }

    /// The configuration the engine runs with: `reload` then refuses files
    /// that change what only a restart can change (see
    /// [`shoal_config::Config::restart_only_changes`]).
    pub fn set_running_config(&mut self, config: shoal_config::Config) {
        self.running = Some(config);
    }

    /// Sets how long heartbeats that fail authentication keep a lone host
    /// from serving (the engine uses tolerance × period, at least 1 s).
    pub fn set_suspicion(&mut self, d: Duration) {
        self.suspicion = d;
    }

    fn bad_mac_recent(&self) -> bool {
        self.last_bad_mac
            .is_some_and(|t| t.elapsed() < self.suspicion)
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

    /// A control frame from a poll loop.
    pub fn handle_frame(&mut self, frame: &[u8]) {
        let now = self.now();
        let Ok(info) = parse_frame(frame) else { return };
        match info.kind {
            FrameKind::Heartbeat => {
                if let Err(e) = self.machine.handle_heartbeat(frame, now) {
                    *self.refused.entry(e.name().to_string()).or_default() += 1;
                    if e == shoal_controlplane::HeartbeatError::BadMac {
                        self.last_bad_mac = Some(Instant::now());
                    }
                }
            }
            _ => self.responder.handle(frame),
        }
    }

    /// An admin request.
    pub fn handle_admin(&mut self, req: &Request) -> Response {
        let now = self.now();
        if *req == Request::Reload {
            return match shoal_config::load(&self.config_path) {
                Ok(config) => {
                    let needs_restart = self
                        .running
                        .as_ref()
                        .map(|r| r.restart_only_changes(&config, self.local))
                        .unwrap_or_default();
                    if !needs_restart.is_empty() {
                        return Response::new(
                            ReturnCode::BadParams,
                            format!(
                                "{} changes {}: reload applies rules and weights only; restart \
                                 shoal to change these (nothing was reloaded)",
                                self.config_path.display(),
                                needs_restart.join(", ")
                            ),
                            Body::None,
                        );
                    }
                    self.machine.handle_reload(config.spec(), now);
                    self.running = self.running.take().map(|_| config);
                    Response::new(
                        ReturnCode::Ok,
                        format!("reloaded {}", self.config_path.display()),
                        Body::None,
                    )
                }
                Err(errors) => Response::new(ReturnCode::BadParams, errors.to_string(), Body::None),
            };
        }
        self.machine.handle_admin(req, now)
    }

    /// Timers, events, map installs, dirty and load reports, heartbeats.
    pub fn step(&mut self) {
        let now = self.now();
        self.machine.handle_timeout(now);
        self.drain_events();
        if self.blocked.is_some() && !self.bad_mac_recent() {
            if let Some((view, epoch)) = self.blocked.take() {
                tracing::info!("no more unauthenticated heartbeats: serving alone");
                self.install(view, epoch);
            }
        }
        self.progress_install();
        let period = Duration::from_nanos(self.machine.period_in_use().max(1_000_000));
        if self.last_period.elapsed() >= period {
            self.last_period = Instant::now();
            self.report_dataplane();
            self.drain_events();
        }
        let mut buf = [0u8; 1536];
        while let Some(n) = self.machine.poll_transmit(self.now(), &mut buf) {
            self.outbound.push(&buf[..n]);
            self.sent += 1;
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
                        self.reset_descriptors();
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
                Event::Rejected(e) => tracing::debug!(reason = %e, "heartbeat refused"),
                Event::DuplicateId(h) => tracing::warn!(
                    host = h.get(),
                    "two hosts use this ID: kept out of the view"
                ),
                other => tracing::info!(event = ?other, "control plane"),
            }
        }
    }

    /// Sets the dirty groups other hosts hold on `map`'s rules, as the
    /// machine knows them now.
    fn mark_dirty_elsewhere(&mut self, map: &mut ClusterMap) {
        for r in 0..map.rules.len() {
            map.set_dirty_elsewhere(r, self.machine.dirty_elsewhere(r));
        }
    }

    /// Starts installing the effective view's map in every poll loop; the
    /// install completes in [`Clustered::step`] (see the module docs).
    ///
    /// A host that would serve alone while it hears heartbeats for its
    /// cluster that fail authentication installs an empty map instead: the
    /// segment carries a cluster it cannot verify (a wrong key on one side),
    /// and serving alone would keep frames that cluster keeps too. It serves
    /// once those heartbeats have stopped for the suspicion window, and says
    /// so in the logs and in `cluster.blocked` of the counters. (A forger can
    /// thus keep a lone host idle; it cannot make any host keep frames
    /// another keeps.)
    fn install(&mut self, view: shoal_dataplane::map::View, epoch: u64) {
        let alone =
            view.members.iter().all(|h| h == self.local) && view.members.contains(self.local);
        let view = if alone && self.bad_mac_recent() {
            if self.blocked.is_none() {
                tracing::warn!(
                    "heartbeats for this cluster fail authentication (another key on the segment?): \
                     not serving alone until they stop"
                );
            }
            self.blocked = Some((view.clone(), epoch));
            let mut empty = view.clone();
            empty.members = shoal_dataplane::HostSet::EMPTY;
            empty
        } else {
            self.blocked = None;
            view
        };
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
        let took_us = pending.since.elapsed().as_micros() as u64;
        let (compiled_us, published_us) = pending.timings;
        let members = pending.members;
        self.pending = None;
        if std::mem::take(&mut self.reset_on_install) {
            self.reset_descriptors();
        }
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

    /// Gives every poll loop a fresh descriptor table and waits until each
    /// has one (each loop checks once per iteration, so this takes about a
    /// batch; at most [`INSTALL_TIMEOUT`]). Called on `stop` / `suspend`
    /// once the map that takes nothing runs, before its dirty groups go to
    /// the machine: the other hosts adopt a view without this host only
    /// after it advertises that bound, and by then no loop serves a
    /// connection it tracked.
    pub fn reset_descriptors(&mut self) -> bool {
        let started = Instant::now();
        let wanted = self.cell.request_reset();
        loop {
            if self.loops.iter().all(|l| l.lock().resets >= wanted) {
                return true;
            }
            if started.elapsed() > INSTALL_TIMEOUT {
                tracing::warn!("a poll loop did not drop its tracked connections in time");
                return false;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
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
        if self.epoch > 0 && self.loops.iter().all(|l| l.lock().epoch >= self.epoch) {
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

    /// Runs until `stop`: control frames from `frames`, admin calls from `admin`.
    pub fn run(
        &mut self,
        frames: &Receiver<Vec<u8>>,
        admin: &Receiver<AdminCall>,
        stop: &AtomicBool,
        mut tick: impl FnMut(&mut Self),
    ) {
        while !stop.load(Ordering::Relaxed) {
            match frames.recv_timeout(self.wait()) {
                Ok(frame) => {
                    self.handle_frame(&frame);
                    // Take whatever else is queued without waiting.
                    while let Ok(frame) = frames.try_recv() {
                        self.handle_frame(&frame);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            while let Ok((req, reply)) = admin.try_recv() {
                let resp = self.handle_admin(&req);
                let _ = reply.send(resp);
            }
            self.step();
            tick(self);
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
    use shoal_controlplane::{Config, HostState};
    use shoal_dataplane::descriptor::DescriptorConfig;
    use shoal_dataplane::mac::unicast_mac;
    use shoal_dataplane::map::View;
    use shoal_dataplane::pipeline::{Dataplane, Verdict};
    use shoal_dataplane::wire::ipv4_checksum;
    use shoal_dataplane::{
        Affinity, ClusterMode, ClusterSpec, FilterMode, HostSet, PortRule, Protocol,
    };

    const VIP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 100);

    fn syn(client: Ipv4Addr, sport: u16) -> Vec<u8> {
        let mut f = Vec::with_capacity(54);
        f.extend_from_slice(&unicast_mac(VIP).0);
        f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x99]);
        f.extend_from_slice(&0x0800u16.to_be_bytes());
        let mut h = [0u8; 20];
        h[0] = 0x45;
        h[2..4].copy_from_slice(&40u16.to_be_bytes());
        h[8] = 64;
        h[9] = 6;
        h[12..16].copy_from_slice(&client.octets());
        h[16..20].copy_from_slice(&VIP.octets());
        let c = ipv4_checksum(&h);
        h[10..12].copy_from_slice(&c.to_be_bytes());
        f.extend_from_slice(&h);
        let mut t = [0u8; 20];
        t[0..2].copy_from_slice(&sport.to_be_bytes());
        t[2..4].copy_from_slice(&80u16.to_be_bytes());
        t[12] = 5 << 4;
        t[13] = 0x02;
        t[14..16].copy_from_slice(&65535u16.to_be_bytes());
        f.extend_from_slice(&t);
        f
    }

    /// One VIP, one TCP port-80 rule.
    fn web_spec() -> ClusterSpec {
        ClusterSpec {
            vips: vec![IpAddr::V4(VIP)],
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
        }
    }

    /// A control thread for `machine` over one poll loop's `stats`.
    fn clustered(
        machine: Machine,
        cell: &Arc<MapCell>,
        stats: &Arc<Mutex<LoopStats>>,
        outbound: &Arc<Outbound>,
    ) -> Clustered {
        let responder = Responder::new(
            machine.host(),
            unicast_mac(VIP),
            Mac([2, 0, 0, 0, 0, 1]),
            cell.clone(),
            outbound.clone(),
            None,
        );
        Clustered::new(
            machine,
            cell.clone(),
            vec![stats.clone()],
            outbound.clone(),
            responder,
            PathBuf::from("/nonexistent"),
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
                    let mut changed = crate::runtime::apply_reset(&cell, &mut dp, &mut local);
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
        let spec = config.spec();
        let local = HostId::new(1).unwrap();
        let view = View::converged(&spec, HostSet::from_iter([local]));
        let cell = Arc::new(MapCell::new(Arc::new(ClusterMap::build(
            &spec, &view, local, 1,
        ))));
        let outbound = Arc::new(Outbound::default());
        let stats = Arc::new(Mutex::new(LoopStats::default()));
        let machine = Machine::new(Config::new(local, [9; 32], 1), spec, 0);
        let mut c = clustered(machine, &cell, &stats, &outbound);
        c.config_path = path.clone();
        c.set_running_config(config);

        let edited = |from: &str, to: &str| {
            assert!(original.contains(from), "{from}");
            std::fs::write(&path, original.replace(from, to)).unwrap();
        };
        edited(
            "key_file = \"cluster.key\"",
            "key_file = \"cluster.key\"\nipv6_network_prefix = 48\n\n[heartbeat]\nperiod_ms = 100",
        );
        let r = c.handle_admin(&Request::Reload);
        assert_eq!(r.code, ReturnCode::BadParams, "{r:?}");
        assert!(
            r.message
                .contains("cluster.ipv6_network_prefix, heartbeat.period_ms"),
            "{}",
            r.message
        );
        edited("vips = [\"10.0.0.100\"]", "vips = [\"10.0.0.101\"]");
        let r = c.handle_admin(&Request::Reload);
        assert!(r.message.contains("cluster.vips"), "{}", r.message);
        // A rule change is what reload is for.
        edited("affinity = \"single\"", "affinity = \"none\"");
        let r = c.handle_admin(&Request::Reload);
        assert_eq!(r.code, ReturnCode::Ok, "{r:?}");
        std::fs::remove_dir_all(&dir).unwrap();
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
