//! `shoal run`: wires configuration, host setup, backends, pinned poll
//! loops, the exception path and the control thread together.
//!
//! # Threads and what they share
//!
//! * One poll loop per `[host.cores].poll` entry, pinned to its core. Each
//!   owns its backend sockets (one per rx queue it polls), its TAP queue and
//!   its own [`Dataplane`] (descriptor table included): flows stay on one rx
//!   queue, so no descriptor is shared. Per batch it reads the clock once,
//!   checks the published map's epoch (one atomic load; the lock is taken
//!   only when the epoch moved), judges the batch, writes kept frames to the
//!   TAP in one go and hands control frames to the control thread.
//! * The control thread (the main thread, pinned to `cores.control`)
//!   answers ARP and ND for the VIPs when this host is the default host,
//!   publishes maps, and writes the counters file. With the control plane
//!   (heartbeats, convergence) it also runs the membership machine; until
//!   then `--static-view` takes every configured host as live.
//! * With `[[service]]` sections, the array tier's proxy workers
//!   (`shoal-proxy-<core>`) and its health thread; see [`crate::array`].
//! * Shutdown: SIGINT or SIGTERM set a flag every loop checks per batch;
//!   everything shoal set up is undone on the way out.

use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::mpsc::sync_channel;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use parking_lot::Mutex;
use shoal_config::{Backend, Config, IdlePolicy};
use shoal_dataplane::descriptor::DescriptorConfig;
use shoal_dataplane::mac::{igmp_mac, masked_source_mac, multicast_mac, unicast_mac, Mac};
use shoal_dataplane::map::{ClusterMap, View};
use shoal_dataplane::pipeline::{Control, Counters, Dataplane, DropReason, Verdict};

use shoal_dataplane::{ClusterMode, HostId, HostSet};

use crate::control::{ControlLoop, Responder};
use crate::handoff::{apply_reset, Admission, ControlInbox, LoopStats, MapCell, Outbound};
use crate::io::{Delivery, FrameIo, MAX_BATCH};
use crate::sys::signal::{self, STOP};
use crate::sys::wake::{Bells, Sleeper};

/// `shoal run` options.
#[derive(clap::Args, Debug, Clone)]
pub struct RunArgs {
    /// Cluster configuration file.
    #[arg(long)]
    pub config: PathBuf,
    /// Which `[[host]]` this is (needed when the file describes several).
    #[arg(long)]
    pub host: Option<u8>,
    /// Take every configured host as live and converged (no heartbeats).
    #[arg(long)]
    pub static_view: bool,
    /// Write counters as JSON to this file every second.
    #[arg(long)]
    pub stats: Option<PathBuf>,
    /// Override `[io].backend` (af_xdp, af_packet, auto).
    #[arg(long)]
    pub backend: Option<String>,
    /// The admin socket (default `/run/shoal/host<ID>.sock`).
    #[arg(long)]
    pub admin_socket: Option<PathBuf>,
}

struct PollLoop {
    core: Option<usize>,
    backends: Vec<Box<dyn FrameIo>>,
    delivery: Box<dyn Delivery>,
    dataplane: Dataplane,
    cell: Arc<MapCell>,
    inbox: Arc<ControlInbox>,
    outbound: Arc<Outbound>,
    stats: Arc<Mutex<LoopStats>>,
    batch: usize,
    idle: IdlePolicy,
    start: Instant,
    /// This loop's line to the XDP fast path.
    fast_path: Option<Arc<crate::fastpath::LoopReport>>,
    /// Every loop's doorbell, and which one is this loop's.
    bells: Arc<Bells>,
    index: usize,
}

/// Hands the control thread's frames to `io` (the loop's first backend),
/// counting those it took and those it did not (no room, or the send
/// failed): a frame for the wire is never lost uncounted.
fn send_outbound(io: Option<&mut Box<dyn FrameIo>>, frames: &[Vec<u8>], stats: &mut LoopStats) {
    let refs: Vec<&[u8]> = frames.iter().map(|f| f.as_slice()).collect();
    let sent = match io {
        Some(io) => io.transmit(&refs).unwrap_or(0).min(refs.len()),
        None => 0,
    };
    stats.transmitted += sent as u64;
    stats.transmit_rejected += (refs.len() - sent) as u64;
}

/// How long an idle loop sleeps at most: a frame, a published map, a reset
/// request, a frame to send or the engine stopping wake it sooner (see
/// [`crate::sys::wake`]); the timeout only paces its housekeeping (expiry,
/// counters, the fast path's report), whose periods are 200 ms and longer.
pub(crate) const IDLE_SLEEP_MS: i32 = 50;
/// Empty polls (each followed by a `yield`) before an idle loop sleeps.
const IDLE_SPINS: u32 = 64;

impl PollLoop {
    fn run(mut self) {
        if let Some(core) = self.core {
            if !core_affinity::set_for_current(core_affinity::CoreId { id: core }) {
                tracing::warn!(core, "could not pin poll loop");
            }
        }
        let mut verdicts = [Verdict::Pass; MAX_BATCH];
        let mut local = LoopStats::default();
        // Sleep on every backend and this loop's bell at once, when every
        // backend has a descriptor to sleep on.
        let bell = self.bells.get(self.index);
        let mut sleeper = self
            .backends
            .iter()
            .map(|io| io.wake_fd())
            .chain(std::iter::once(bell.map(|b| b.fd().as_raw_fd())))
            .collect::<Option<Vec<_>>>()
            .map(|fds| Sleeper::new(&fds));
        let mut idle_rounds = 0u32;
        let mut last_publish = Instant::now();
        let mut seen_seq = 0u64;
        while !STOP.load(Ordering::Relaxed) {
            let instant = Instant::now();
            let now = instant.duration_since(self.start).as_nanos() as u64;
            self.inbox.loop_ran(self.index, instant);
            if apply_reset(&self.cell, &mut self.dataplane, &mut local) {
                if let Some(f) = &self.fast_path {
                    f.record(&self.dataplane);
                }
                // Acknowledge at once: the control thread waits for it.
                local.snapshot(&self.dataplane);
                *self.stats.lock() = local.clone();
            }
            if let Some((seq, map)) = self.cell.newer_than(seen_seq) {
                seen_seq = seq;
                self.dataplane.set_map(map);
                if let Some(f) = &self.fast_path {
                    f.record(&self.dataplane);
                }
                // Acknowledge at once: the control thread waits for it.
                local.snapshot(&self.dataplane);
                *self.stats.lock() = local.clone();
            }
            let mut got = 0;
            for io in &mut self.backends {
                let dp = &mut self.dataplane;
                let delivery = &mut self.delivery;
                let inbox = &self.inbox;
                let local = &mut local;
                let res = io.receive(self.batch, &mut |frames| {
                    judge_and_deliver(
                        dp,
                        frames,
                        now,
                        &mut verdicts,
                        &mut **delivery,
                        &mut |kind, f| inbox.push(kind, f),
                        local,
                    );
                });
                match res {
                    Ok(n) => got += n,
                    Err(e) => tracing::debug!(error = %e, "receive failed"),
                }
            }
            // Frames the control thread wants on the wire leave through the
            // first backend.
            if let Some(pending) = self.outbound.take() {
                send_outbound(self.backends.first_mut(), &pending, &mut local);
            }
            self.dataplane.tick(now, 256);
            if last_publish.elapsed() >= Duration::from_millis(200) {
                if let Some(f) = &self.fast_path {
                    f.record(&self.dataplane);
                }
                local.snapshot(&self.dataplane);
                local.socket_drops = socket_drops(&self.backends);
                *self.stats.lock() = local.clone();
                last_publish = Instant::now();
            }
            if got == 0 {
                idle_rounds = idle_rounds.saturating_add(1);
                match self.idle {
                    IdlePolicy::Busy => std::hint::spin_loop(),
                    IdlePolicy::Backoff => {
                        if idle_rounds <= IDLE_SPINS {
                            std::thread::yield_now();
                        } else if let Some(s) = &mut sleeper {
                            if !self.backends.iter().any(|io| io.has_pending()) {
                                let _ = s.sleep(IDLE_SLEEP_MS);
                                if let Some(b) = bell {
                                    b.silence();
                                }
                            }
                        } else if let Some(io) = self.backends.first_mut() {
                            let _ = io.wait(1);
                        }
                    }
                }
            } else {
                idle_rounds = 0;
            }
        }
        local.snapshot(&self.dataplane);
        local.socket_drops = socket_drops(&self.backends);
        *self.stats.lock() = local;
    }
}

/// The kernel's drop counters, summed over `backends`.
fn socket_drops(backends: &[Box<dyn FrameIo>]) -> crate::io::SocketDrops {
    let mut sum = crate::io::SocketDrops::default();
    for d in backends.iter().filter_map(|io| io.socket_drops()) {
        sum.add(&d);
    }
    sum
}

/// The work of one batch, shared by the poll loops and [`drain`]: judge the
/// frames, hand kept ones to `delivery` in one call, and control frames to
/// `control` with their kind (it says what became of each: a frame refused,
/// or one that replaced a queued heartbeat, is counted in
/// [`LoopStats::control_dropped`] and, for heartbeats,
/// [`LoopStats::heartbeat_dropped`]).
pub fn judge_and_deliver(
    dp: &mut Dataplane,
    frames: &[&[u8]],
    now: u64,
    verdicts: &mut [Verdict; MAX_BATCH],
    delivery: &mut dyn Delivery,
    control: &mut dyn FnMut(Control, &[u8]) -> Admission,
    stats: &mut LoopStats,
) {
    if frames.is_empty() {
        return;
    }
    let frames = &frames[..frames.len().min(MAX_BATCH)];
    stats.batches += 1;
    dp.judge_batch(frames, now, &mut verdicts[..frames.len()]);
    let mut kept: [&[u8]; MAX_BATCH] = [&[]; MAX_BATCH];
    let mut n = 0;
    for (f, v) in frames.iter().zip(verdicts.iter()) {
        match v {
            Verdict::Keep => {
                kept[n] = f;
                n += 1;
            }
            Verdict::Control(kind) => match control(*kind, f) {
                Admission::Queued => {}
                Admission::ReplacedOldest => {
                    stats.control_dropped[*kind as usize] += 1;
                    stats.heartbeat_dropped[0] += 1;
                }
                Admission::Refused => {
                    stats.control_dropped[*kind as usize] += 1;
                    if *kind == Control::Heartbeat {
                        stats.heartbeat_dropped[1] += 1;
                    }
                }
            },
            _ => {}
        }
    }
    if n > 0 {
        match delivery.deliver(&kept[..n]) {
            Ok(d) => {
                stats.delivered += d as u64;
                stats.delivery_errors += (n - d) as u64;
            }
            Err(e) => {
                stats.delivery_errors += n as u64;
                tracing::debug!(error = %e, "delivery failed");
            }
        }
    }
}

/// Runs one backend dry through `dp` on the calling thread (a replay, a
/// test, a benchmark): batches of `batch` frames until `io` hands out no
/// more. Control frames are counted and dropped. `now` is read once per
/// batch from `clock`.
pub fn drain(
    io: &mut dyn FrameIo,
    dp: &mut Dataplane,
    delivery: &mut dyn Delivery,
    batch: usize,
    clock: &mut dyn FnMut() -> u64,
) -> std::io::Result<LoopStats> {
    let mut verdicts = [Verdict::Pass; MAX_BATCH];
    let mut stats = LoopStats::default();
    loop {
        let now = clock();
        let got = io.receive(batch, &mut |frames| {
            judge_and_deliver(
                dp,
                frames,
                now,
                &mut verdicts,
                delivery,
                &mut |_, _| Admission::Queued,
                &mut stats,
            );
        })?;
        if got == 0 {
            break;
        }
    }
    stats.dataplane = dp.counters().clone();
    stats.descriptors = dp.table().len() as u64;
    stats.descriptors_by_state = dp.table().live_by_state();
    Ok(stats)
}

/// The cluster MAC frames for this cluster arrive on, by mode.
pub fn cluster_mac(config: &Config) -> Mac {
    let vip = config.primary_vip();
    match config.cluster.mode {
        ClusterMode::Unicast => unicast_mac(vip),
        ClusterMode::Multicast => multicast_mac(vip),
        ClusterMode::Igmp => igmp_mac(vip),
    }
}

fn descriptor_config(config: &Config) -> DescriptorConfig {
    const S: u64 = 1_000_000_000;
    let d = &config.descriptors;
    DescriptorConfig {
        capacity: d.capacity as usize,
        half_open_ns: d.tcp_half_open_timeout_s as u64 * S,
        established_ns: d.tcp_idle_timeout_s as u64 * S,
        closing_ns: d.tcp_closing_timeout_s as u64 * S,
        link_ns: d.gre_timeout_s as u64 * S,
        affinity_ns: d.udp_timeout_s as u64 * S,
    }
}

fn random_seed() -> u64 {
    let mut buf = [0u8; 8];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut buf))
        .is_err()
    {
        let t = Instant::now().elapsed().as_nanos() as u64 ^ std::process::id() as u64;
        return t.rotate_left(29) ^ 0x9e37_79b9_7f4a_7c15;
    }
    u64::from_ne_bytes(buf)
}

fn counters_json(
    host: HostId,
    backend: &str,
    stats: &[LoopStats],
    thread: &Responder,
    guard: Option<&crate::afxdp::GuardReader>,
) -> serde_json::Value {
    let answered = thread.answered;
    let xdp = thread.cell.xdp_counters();
    let guard = guard.map(|g| g.counters()).unwrap_or_default();
    let mut xsk = crate::io::SocketDrops::default();
    let mut total = Counters::default();
    let mut delivered = 0;
    let mut delivery_errors = 0;
    let mut control_dropped = [0u64; 4];
    let mut heartbeat_dropped = [0u64; 2];
    let mut transmit_rejected = 0;
    let mut batches = 0;
    let mut descriptors = 0;
    let mut by_state = [0u64; 4];
    let mut capacity = 0;
    let mut table = shoal_dataplane::descriptor::TableCounters::default();
    for s in stats {
        capacity += s.table_capacity;
        table.merge(&s.table);
        total.merge(&s.dataplane);
        delivered += s.delivered;
        delivery_errors += s.delivery_errors;
        for (a, b) in control_dropped.iter_mut().zip(s.control_dropped) {
            *a += b;
        }
        for (a, b) in heartbeat_dropped.iter_mut().zip(s.heartbeat_dropped) {
            *a += b;
        }
        batches += s.batches;
        transmit_rejected += s.transmit_rejected;
        descriptors += s.descriptors;
        for (a, b) in by_state.iter_mut().zip(s.descriptors_by_state) {
            *a += u64::from(b);
        }
        xsk.add(&s.socket_drops);
    }
    let dropped: serde_json::Map<String, serde_json::Value> = DropReason::POLICY
        .iter()
        .zip(total.dropped)
        .map(|(r, n)| (r.name().to_string(), n.into()))
        .collect();
    let control: serde_json::Map<String, serde_json::Value> = Control::ALL
        .iter()
        .zip(total.control)
        .map(|(c, n)| (c.name().to_string(), n.into()))
        .collect();
    let malformed: serde_json::Map<String, serde_json::Value> =
        shoal_dataplane::packet::Malformed::ALL
            .iter()
            .zip(total.malformed.iter().copied().chain(std::iter::repeat(0)))
            .filter(|(_, n)| *n > 0)
            .map(|(m, n)| (m.name().to_string(), n.into()))
            .collect();
    let control_by_kind: serde_json::Map<String, serde_json::Value> = Control::ALL
        .iter()
        .zip(control_dropped)
        .map(|(c, n)| (c.name().to_string(), n.into()))
        .collect();
    let limited = thread.limited();
    let outbound_dropped = thread.outbound_dropped();
    let per_core: Vec<serde_json::Value> = stats
        .iter()
        .map(|s| {
            serde_json::json!({
                "received": s.dataplane.frames(),
                "kept": s.dataplane.kept,
                "passed": s.dataplane.passed,
                "control": s.dataplane.control.iter().sum::<u64>(),
                "dropped": s.dataplane.dropped.iter().sum::<u64>(),
                "malformed": s.dataplane.malformed_total(),
                "delivery_errors": s.delivery_errors,
                "descriptors": s.descriptors,
                "batches": s.batches,
                "batch_fill": if s.batches == 0 { 0.0 } else { s.dataplane.frames() as f64 / s.batches as f64 },
            })
        })
        .collect();
    serde_json::json!({
        "host": host.get(),
        "backend": backend,
        "received": total.frames(),
        "for_cluster": total.for_cluster(),
        "kept": total.kept,
        "passed": total.passed,
        "dropped": dropped,
        "control": control,
        "malformed": malformed,
        "delivered": delivered,
        "delivery_errors": delivery_errors,
        "control_overflow": control_dropped.iter().sum::<u64>(),
        "control_dropped": control_by_kind,
        "control_dropped_heartbeat": {
            "member": heartbeat_dropped[0],
            "stranger": heartbeat_dropped[1],
        },
        "arp_nd_answered": answered,
        "answers_limited": {
            "source": limited.neighbour.source_limited,
            "global": limited.neighbour.global_limited,
            "sources_evicted": limited.neighbour.evicted,
        },
        "igmp_queries_unanswered": limited.igmp.source_limited + limited.igmp.global_limited,
        "outbound_dropped": {
            "heartbeat": outbound_dropped.0,
            "answer": outbound_dropped.1,
            "transmit": transmit_rejected,
        },
        "igmp_reports": thread.igmp_reports,
        "batches": batches,
        "descriptors": descriptors,
        "descriptor_table": {
            "capacity": capacity,
            "inserted": table.inserted,
            "expired": table.expired,
            "insert_failed": table.insert_failed,
            "live": {
                "half_open": by_state[0],
                "closing": by_state[1],
                "soft": by_state[2],
                "established": by_state[3],
            },
            "evicted": {
                "half_open": table.evicted[0],
                "closing": table.evicted[1],
                "soft": table.evicted[2],
                "established": table.evicted[3],
            },
        },
        "untracked": total.untracked,
        "adopted": total.adopted,
        "xdp_dropped": xdp.dropped(),
        "xdp_passed": xdp.passed,
        "xdp_unowned_queue": guard.unowned_queue,
        "xdp_oversize": guard.oversize,
        "xdp_other_mac": guard.other_mac,
        "xsk": {
            "rx_dropped": xsk.rx_dropped,
            "rx_invalid_descs": xsk.rx_invalid_descs,
            "rx_ring_full": xsk.rx_ring_full,
            "rx_fill_ring_empty_descs": xsk.rx_fill_ring_empty_descs,
        },
        "per_core": per_core,
    })
}

/// Where the boot counter is kept (beside the admin sockets and the setup
/// journal).
const BOOT_STATE_DIR: &str = "/run/shoal";

/// Adds the control plane's state to the counters JSON: `cluster` with
/// `state`, `epoch`, `members`, `heartbeats_sent`, `heartbeats_refused` (by
/// reason), `stalls` and `stalled_ms` (the control thread ran late and its
/// peers' silence was excused) and `arp_nd_answered`.
fn with_cluster(mut json: serde_json::Value, c: Option<&ControlLoop>) -> serde_json::Value {
    if let Some(c) = c {
        let (view, epoch) = c.machine.effective_view();
        json["cluster"] = serde_json::json!({
            "state": format!("{:?}", c.machine.state()).to_lowercase(),
            "phase": format!("{:?}", c.machine.phase()).to_lowercase(),
            "epoch": epoch,
            "members": view.members.iter().map(|h| h.get()).collect::<Vec<_>>(),
            "heartbeats_sent": c.sent,
            "heartbeats_refused": c.refused,
            "blocked": c.machine.lone_view_withheld().then_some("alone while heartbeats fail authentication"),
            "blocked_reason": c.machine.lone_view_withheld_because().map(|w| w.to_string()),
            "convergences": c.convergences,
            "stalls": c.machine.counters().stalls,
            "stalled_ms": c.machine.counters().stalled_ms,
            "last_convergence_ms": c.last_convergence.map(|(ns, _)| ns / 1_000_000),
            "last_convergence_age_s": c.last_convergence.map(|(_, at)| at.elapsed().as_secs()),
        });
    }
    json
}

/// Who may use the admin socket: root, and the members of `[admin] group`,
/// resolved now.
fn admission(config: &Config) -> Result<crate::control::Admission> {
    let group = match &config.admin.group {
        None => None,
        Some(name) => match crate::sys::peer::group_id(name) {
            Ok(Some(gid)) => Some((name.clone(), gid)),
            Ok(None) => bail!(
                "{}: [admin] group = {name:?}: no such group on this host (create it with \
                 `groupadd {name}`, or remove the key to allow root only)",
                config.source.display()
            ),
            Err(e) => bail!("looking up [admin] group {name:?}: {e}"),
        },
    };
    Ok(crate::control::Admission { group })
}

/// Stops the poll loops: raises the stop flag, wakes every loop that
/// sleeps and waits for each to end.
fn stop_poll_loops(bells: &Bells, threads: Vec<std::thread::JoinHandle<()>>) {
    STOP.store(true, Ordering::SeqCst);
    bells.ring();
    for t in threads {
        let _ = t.join();
    }
}

/// Runs the engine until SIGINT or SIGTERM.
pub fn run(config: Config, args: RunArgs) -> Result<()> {
    // A peer that closes its connection mid-answer must cost that
    // connection, not the engine (see `sys::signal`).
    crate::sys::signal::ignore_sigpipe();
    // A no-op when the binary installed one already (`--log-format`).
    crate::logging::init(crate::logging::LogFormat::Text);
    let host = config
        .select_host(args.host)
        .map_err(|e| anyhow!("{e}"))?
        .clone();
    let local = host.id;
    // The key is checked before anything on the host changes.
    let key = crate::keyfile::for_run(&config)?;
    signal::catch_stop();
    let spec = config.spec(shoal_controlplane::bucket_seed(key.as_bytes()));
    // A static view takes every configured host as live at once; with the
    // control plane, nobody owns anything until the cluster converges.
    let members = if args.static_view {
        config.host_ids()
    } else {
        HostSet::EMPTY
    };
    let view = View::converged(&spec, members);
    let map = Arc::new(ClusterMap::build(
        &spec,
        &view,
        local,
        if args.static_view { 1 } else { 0 },
    ));
    let cell = Arc::new(MapCell::new(map.clone()));
    let cluster_mac = cluster_mac(&config);
    let backend_choice = match args.backend.as_deref() {
        None => config.io.backend,
        Some("af_xdp") => Backend::AfXdp,
        Some("af_packet") => Backend::AfPacket,
        Some("auto") => Backend::Auto,
        Some(other) => bail!("--backend {other:?}: expected af_xdp, af_packet or auto"),
    };

    let polls = crate::wiring::poll_plan(&host);
    let mut wiring =
        crate::wiring::Wiring::bring_up(&config, &spec, &host, cluster_mac, backend_choice, &polls)
            .context("setting up the host")?;
    let backend_name = wiring.backend_name.clone();
    let guard = wiring.xdp_guard();
    // The array tier's listeners (VIPs live on the TAP from here on) are
    // made before privileges go; its threads start after.
    let array = match crate::array::Bound::bind(&config, local, key.as_bytes(), cell.clone()) {
        Ok(a) => a,
        Err(e) => {
            wiring.tear_down();
            return Err(e.context("starting the array tier"));
        }
    };
    // Setup is done: from here on (every thread started below included)
    // the engine holds only what it still needs.
    let kept = crate::privileges::drop_after_setup(
        backend_name.starts_with("af_xdp"),
        config.admin.group.is_some(),
    )?;
    tracing::info!(kept = ?kept.iter().map(|c| c.name()).collect::<Vec<_>>(),
        "dropped every other capability; no_new_privs set");
    let fast_path = wiring.fast_path();
    if let Some(f) = &fast_path {
        cell.attach_fast_path(f.clone());
        crate::fastpath::FastPath::spawn_settler(f, Duration::from_millis(250))
            .context("spawning the XDP fast path settler")?;
    }
    tracing::info!(host = local.get(), backend = %backend_name, vips = ?config.cluster.vips, cluster_mac = %cluster_mac, "shoal running");

    let inbox = Arc::new(ControlInbox::default());
    let outbound = Arc::new(Outbound::default());
    let bells = Arc::new(Bells::new(polls.len()).context("creating the poll loops' doorbells")?);
    cell.attach_bells(bells.clone());
    outbound.attach_bells(bells.clone());
    let start = Instant::now();
    let dcfg = descriptor_config(&config);
    let mut stats = Vec::new();
    let mut threads = Vec::new();
    for (i, plan) in polls.iter().enumerate() {
        let backends = std::mem::take(&mut wiring.backends[i]);
        let delivery = wiring.deliveries.remove(0);
        let s = Arc::new(Mutex::new(LoopStats::default()));
        stats.push(s.clone());
        let pl = PollLoop {
            core: plan.core,
            backends,
            delivery,
            dataplane: Dataplane::new(map.clone(), dcfg, random_seed()),
            cell: cell.clone(),
            inbox: inbox.clone(),
            outbound: outbound.clone(),
            stats: s,
            batch: (config.io.batch_size as usize).clamp(1, MAX_BATCH),
            idle: config.io.idle,
            start,
            fast_path: fast_path.as_ref().map(|f| f.loop_report()),
            bells: bells.clone(),
            index: i,
        };
        threads.push(
            std::thread::Builder::new()
                .name(format!("shoal-poll-{i}"))
                .spawn(move || pl.run())
                .context("spawning a poll loop")?,
        );
    }
    // The metrics endpoint reads what the loops publish anyway.
    let metrics = match config.metrics.listen {
        None => None,
        Some(addr) => {
            let mut sources = crate::metrics::Sources::new(
                stats.clone(),
                host.cores.poll.iter().map(|p| p.core).collect(),
            );
            if fast_path.is_some() {
                sources.xdp = Some(cell.clone());
            }
            match crate::metrics::MetricsServer::spawn(addr, sources.clone()) {
                Ok(server) => {
                    tracing::info!(addr = %server.addr, "metrics at /metrics");
                    Some((server, sources))
                }
                Err(e) => {
                    stop_poll_loops(&bells, threads);
                    wiring.tear_down();
                    return Err(e);
                }
            }
        }
    };
    let array = match array.map(crate::array::Bound::start).transpose() {
        Ok(a) => a,
        Err(e) => {
            stop_poll_loops(&bells, threads);
            wiring.tear_down();
            return Err(e);
        }
    };
    // Rule health and frontend instances: probes, and the NAT map over
    // the live instances (the table is made here, after the drop, with
    // the CAP_NET_ADMIN the engine keeps to undo setup).
    let seed = spec.bucket_seed;
    let frontend = match crate::frontend::Frontend::start(
        &config,
        &host.interface,
        (seed ^ (seed >> 32)) as u32,
    ) {
        Ok(f) => f,
        Err(e) => {
            stop_poll_loops(&bells, threads);
            if let Some(a) = array {
                a.stop();
            }
            wiring.tear_down();
            return Err(e);
        }
    };
    let _ = core_affinity::set_for_current(core_affinity::CoreId {
        id: host.cores.control,
    });

    let mut control = Responder::new(
        local,
        cluster_mac,
        masked_source_mac(local, config.primary_vip()),
        cell.clone(),
        outbound.clone(),
        (config.cluster.mode == ClusterMode::Igmp).then(|| {
            let source = host
                .dedicated
                .iter()
                .find_map(|c| match c.addr() {
                    IpAddr::V4(a) => Some(a),
                    IpAddr::V6(_) => None,
                })
                .unwrap_or(std::net::Ipv4Addr::UNSPECIFIED);
            (
                shoal_dataplane::mac::igmp_group(config.primary_vip()),
                source,
            )
        }),
    );
    control.report_membership();
    let mut last_report = Instant::now();
    let mut last_stats = Instant::now() - Duration::from_secs(2);
    let admin_counters = Arc::new(crate::control::AdminCounters::default());
    let summary = metrics.as_ref().map(|(_, s)| s.summary.clone());
    let stats_file = args
        .stats
        .clone()
        .map(StatsFile::spawn)
        .transpose()
        .context("starting the stats file writer")?;
    let write_stats = |control: &Responder, clustered: Option<&ControlLoop>| -> Result<()> {
        if args.stats.is_some() || summary.is_some() {
            let snapshot: Vec<LoopStats> = stats.iter().map(|s| s.lock().clone()).collect();
            let mut json = with_cluster(
                counters_json(local, &backend_name, &snapshot, control, guard.as_ref()),
                clustered,
            );
            if clustered.is_some() {
                json["admin"] = admin_counters.to_json();
            }
            if let Some(a) = &array {
                json["services"] = a.counters_json();
            }
            if let Some(f) = &frontend {
                json["rule_health"] = f.reader().lock().clone();
            }
            if let Some(file) = &stats_file {
                file.offer(serde_json::to_vec_pretty(&json)?);
            }
            if let Some(cell) = &summary {
                *cell.lock() = json;
            }
        }
        Ok(())
    };
    let mut clustered = None;
    let mut static_responder = None;
    if args.static_view {
        control.announce(&map);
        let mut frames = Vec::new();
        while !STOP.load(Ordering::Relaxed) {
            // No control plane: heartbeats are taken and left unread.
            inbox.wait(Duration::from_millis(100));
            inbox.take_heartbeats(usize::MAX, usize::MAX, &mut frames);
            frames.clear();
            inbox.take_neighbour(crate::control::NEIGHBOUR_PER_ROUND, &mut frames);
            let now = start.elapsed().as_nanos() as u64;
            for frame in frames.drain(..) {
                control.handle(&frame, now);
            }
            if last_report.elapsed() >= crate::control::IGMP_REPORT_INTERVAL {
                last_report = Instant::now();
                control.report_membership();
            }
            if last_stats.elapsed() >= Duration::from_secs(1) {
                last_stats = Instant::now();
                write_stats(&control, None)?;
            }
        }
        static_responder = Some(control);
    } else {
        let wall_ns = || {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0)
        };
        // Before the first heartbeat: a restart must carry a higher counter.
        let boot_file = crate::bootcount::path(Path::new(BOOT_STATE_DIR), local.get());
        let boot_id = crate::bootcount::next(&boot_file, wall_ns())
            .with_context(|| format!("keeping the boot counter in {}", boot_file.display()))?;
        let mut ccfg = shoal_controlplane::Config::new(local, *key.as_bytes(), boot_id);
        // The machine's `now` starts at 0 here.
        ccfg.wall_offset_ns = wall_ns().min(i64::MAX as u64) as i64;
        ccfg.period_ns = config.heartbeat.period_ms as u64 * 1_000_000;
        ccfg.tolerance = config.heartbeat.tolerance;
        ccfg.converge_periods = config.heartbeat.converge_periods;
        let machine = shoal_controlplane::Machine::new(ccfg, spec.clone(), 0);
        let (admin_tx, admin_rx) = sync_channel(16);
        let socket = args
            .admin_socket
            .clone()
            .unwrap_or_else(|| crate::control::default_socket(local.get()));
        let admin = crate::control::AdminServer::spawn(
            crate::control::AdminOptions {
                socket: socket.clone(),
                config: config.source.clone(),
                admission: admission(&config)?,
                limits: crate::control::Limits::default(),
            },
            admin_tx,
            admin_counters.clone(),
        )
        .with_context(|| format!("admin socket {}", socket.display()))?;
        tracing::info!(socket = %socket.display(), period_ms = config.heartbeat.period_ms, tolerance = config.heartbeat.tolerance, "control plane running");
        let mut c = ControlLoop::new(
            machine,
            cell.clone(),
            stats.clone(),
            outbound.clone(),
            control,
        );
        c.set_running_config(config.clone());
        c.convergence_times = metrics.as_ref().map(|(_, s)| s.convergence.clone());
        if let Some(a) = &array {
            c.set_services(a.reader());
        }
        if let Some(f) = &frontend {
            c.set_rule_health(f.reader());
        }
        c.run(&inbox, &admin_rx, &STOP, |c| {
            if let Some(f) = &frontend {
                for (rule, left) in f.changes() {
                    c.handle_rule_health(rule, left);
                }
            }
            if last_report.elapsed() >= crate::control::IGMP_REPORT_INTERVAL {
                last_report = Instant::now();
                c.responder.report_membership();
            }
            if last_stats.elapsed() >= Duration::from_secs(1) {
                last_stats = Instant::now();
                if let Err(e) = write_stats(&c.responder, Some(c)) {
                    tracing::debug!(error = %e, "writing stats");
                }
            }
        });
        admin.shut_down();
        clustered = Some(c);
    }
    stop_poll_loops(&bells, threads);
    // The last periodic copy is written before the final one.
    if let Some(file) = stats_file {
        file.finish();
    }
    if let Some((server, _)) = metrics {
        server.shut_down();
    }
    let services = array.map(|a| {
        let json = a.counters_json();
        a.stop();
        json
    });
    let rule_health = frontend.map(|f| {
        let json = f.reader().lock().clone();
        f.stop();
        json
    });
    let snapshot: Vec<LoopStats> = stats.iter().map(|s| s.lock().clone()).collect();
    let mut json = match (&clustered, &static_responder) {
        (Some(c), _) => with_cluster(
            counters_json(
                local,
                &backend_name,
                &snapshot,
                &c.responder,
                guard.as_ref(),
            ),
            Some(c),
        ),
        (None, Some(r)) => counters_json(local, &backend_name, &snapshot, r, guard.as_ref()),
        (None, None) => serde_json::Value::Null,
    };
    if let (Some(services), Some(object)) = (services, json.as_object_mut()) {
        object.insert("services".into(), services);
    }
    if let (Some(rule_health), Some(object)) = (rule_health, json.as_object_mut()) {
        object.insert("rule_health".into(), rule_health);
    }
    if let Some(path) = &args.stats {
        let _ = std::fs::write(path, serde_json::to_vec_pretty(&json)?);
    }
    tracing::info!(counters = %json, "shoal stopping");
    wiring.tear_down();
    Ok(())
}

/// The stats file (`run --stats`), written off the control thread: the
/// control loop hands each second's JSON to this writer thread, which writes
/// a temporary file and renames it over the file. The disk can take seconds
/// (a loaded VM, a filesystem mounted with `discard`) and the heartbeats
/// must never wait on it: a copy offered while the previous one is still
/// being written is skipped, so the file is then a second or two older.
struct StatsFile {
    copies: std::sync::mpsc::SyncSender<Vec<u8>>,
    writer: std::thread::JoinHandle<()>,
}

impl StatsFile {
    fn spawn(path: PathBuf) -> Result<Self> {
        let (copies, rx) = sync_channel::<Vec<u8>>(1);
        let writer = std::thread::Builder::new()
            .name("shoal-stats".into())
            .spawn(move || {
                let tmp = path.with_extension("tmp");
                for bytes in rx {
                    if std::fs::write(&tmp, &bytes).is_ok() {
                        let _ = std::fs::rename(&tmp, &path);
                    }
                }
            })?;
        Ok(Self { copies, writer })
    }

    /// Hands `bytes` to the writer, or drops them when it is still busy.
    fn offer(&self, bytes: Vec<u8>) {
        let _ = self.copies.try_send(bytes);
    }

    /// Waits for the copy being written, if any, and ends the writer.
    fn finish(self) {
        drop(self.copies);
        let _ = self.writer.join();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;

    /// A backend whose transmit takes `room` frames, or fails.
    struct Tx {
        room: Option<usize>,
    }

    impl FrameIo for Tx {
        fn receive(&mut self, _max: usize, handle: &mut dyn FnMut(&[&[u8]])) -> io::Result<usize> {
            handle(&[]);
            Ok(0)
        }
        fn transmit(&mut self, frames: &[&[u8]]) -> io::Result<usize> {
            match self.room {
                Some(room) => Ok(frames.len().min(room)),
                None => Err(io::Error::other("send failed")),
            }
        }
        fn wait(&mut self, _timeout_ms: i32) -> io::Result<()> {
            Ok(())
        }
        fn describe(&self) -> String {
            "tx test".into()
        }
    }

    #[test]
    fn the_stats_file_is_written_off_the_caller_and_the_last_copy_lands() {
        let dir = std::env::temp_dir().join(format!("shoal-stats-file-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("stats.json");
        let file = StatsFile::spawn(path.clone()).unwrap();
        // Copies offered while the writer is busy are dropped, never queued
        // behind it; the file holds a whole copy.
        for i in 0..1000 {
            file.offer(format!("{{\"copy\":{i}}}").into_bytes());
        }
        file.finish();
        let text = std::fs::read_to_string(&path).unwrap();
        let copy: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert!(copy["copy"].as_u64().is_some_and(|n| n < 1000), "{text}");
        assert!(
            !dir.join("stats.tmp").exists(),
            "the temporary file was renamed"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn outbound_frames_the_backend_does_not_take_are_counted() {
        let frames = vec![vec![1u8; 60]; 5];
        let mut stats = LoopStats::default();
        let mut roomy: Box<dyn FrameIo> = Box::new(Tx { room: Some(8) });
        send_outbound(Some(&mut roomy), &frames, &mut stats);
        assert_eq!((stats.transmitted, stats.transmit_rejected), (5, 0));
        let mut full: Box<dyn FrameIo> = Box::new(Tx { room: Some(2) });
        send_outbound(Some(&mut full), &frames, &mut stats);
        assert_eq!((stats.transmitted, stats.transmit_rejected), (7, 3));
        let mut failing: Box<dyn FrameIo> = Box::new(Tx { room: None });
        send_outbound(Some(&mut failing), &frames, &mut stats);
        assert_eq!((stats.transmitted, stats.transmit_rejected), (7, 8));
        send_outbound(None, &frames, &mut stats);
        assert_eq!((stats.transmitted, stats.transmit_rejected), (7, 13));
    }
}
