//! Frontend instances and rule health: the probes of each port rule's
//! local service and instances, and the kernel NAT that spreads the
//! rule's connections over its live instances.
//!
//! Owns: the `shoal-frontend` thread, its short-lived probe threads, and
//! the nftables table `inet shoal_fe_<nic>` ([`nft`]). The decisions are
//! not made here: whether a target is up, and whether this host serves the
//! rule, is [`shoal_controlplane::rule_health::RuleHealth`]'s; which
//! instance a client bucket goes to is
//! [`shoal_dataplane::instances::InstanceTable`]'s; leaving a rule is
//! [`shoal_controlplane::Machine::handle_rule_health`]'s, which the control
//! thread calls with the changes this thread queues ([`Frontend::changes`]).
//!
//! # Why the kernel's NAT
//!
//! A connection this host keeps reaches the local kernel stack on the VIP
//! and the rule's port, whichever way frames arrive: through the TAP (the
//! AF_PACKET backend, and AF_XDP for every TCP frame) or handed to the
//! NIC's stack by the XDP program (`io.xdp_pass`). A destination NAT in the
//! `prerouting` hook sees both, with no interface match. Connection
//! tracking then does what a user-space balancer would have to rebuild:
//! it keeps every established connection on the instance it started on
//! whatever the map says later (so a map change moves only new
//! connections, and a dead instance's share moves without touching the
//! others' connections), and rewrites the replies' source port back to the
//! rule's. Nothing is copied through user space, and the proxy's own
//! `SO_REUSEPORT` workers are not involved (they need no such map).
//!
//! Exact shares come from the table, not from the kernel: `jhash` puts
//! clients into [`shoal_dataplane::instances::INSTANCE_BUCKETS`] buckets
//! (evenly, up to the clients' own spread) and the map gives each live
//! instance exactly its quota of buckets. iptables' `statistic --mode
//! random` chain gets shares only as good as its hand-computed
//! probabilities and never fails over; `numgen` round robin would be exact
//! but ignores the rule's affinity.
//!
//! # The probes
//!
//! Each probe runs on its own short-lived thread (a blocking connect, and
//! for HTTP one request, bounded by the probe's `timeout_ms`) and reports
//! to this thread, which feeds the machine and sleeps until its next
//! deadline or the next result. Instance probes go to the VIP at the
//! instance's port, from the host itself: the `prerouting` NAT never sees
//! them, so each probe reaches the instance it names.
//!
//! The table is made when the thread starts (replacing any stale one of a
//! previous run on the same NIC) and deleted when it stops. Host setup
//! records it in its crash-recovery journal beforehand ([`has_nat`],
//! [`crate::setup`]), so a killed engine's table is removed by `shoal
//! cleanup` or the next start, whatever that start's config says.

pub mod nft;

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use parking_lot::Mutex;
use shoal_config::{Config, ProbeKind, ProbeTimingSection, RuleSection};
use shoal_controlplane::rule_health::{ProbeTiming, Reason, RuleHealth, RuleHealthConfig, Target};
use shoal_dataplane::instances::{Instance, InstanceTable};

use crate::sys::host::{HostOps, Kernel};

use nft::NatRule;

/// One rule's probes, table and counters.
struct Watched {
    rule: usize,
    section: RuleSection,
    health: RuleHealth,
    nat: Option<NatRule>,
    table: InstanceTable,
    probes: u64,
    probe_failures: u64,
    nat_updates: u64,
    nat_errors: u64,
}

/// A change of whether this host serves a rule: `Some(reason)` leaves it.
pub type Change = (usize, Option<Reason>);

/// The state the stats file and `query` show, as JSON.
pub type FrontendReader = Arc<Mutex<serde_json::Value>>;

/// The running frontend thread (see the module docs).
pub struct Frontend {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    changes: Receiver<Change>,
    state: FrontendReader,
}

impl std::fmt::Debug for Frontend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Frontend").finish_non_exhaustive()
    }
}

fn timing(t: &ProbeTimingSection) -> ProbeTiming {
    ProbeTiming {
        interval_ms: t.interval_ms as u64,
        fall: t.fall,
        rise: t.rise,
    }
}

fn instances(section: &RuleSection, up: &[bool]) -> Vec<Instance> {
    section
        .instances
        .iter()
        .zip(up)
        .map(|(i, &up)| Instance {
            port: i.port,
            weight: if up { i.weight } else { 0 },
        })
        .collect()
}

/// Whether `config` has a rule whose instances this module NATs (a VIP
/// and at least one instance): host setup then records the table before
/// [`Frontend::start`] makes it.
pub fn has_nat(config: &Config) -> bool {
    config
        .rules
        .iter()
        .any(|r| r.vip.is_some() && !r.instances.is_empty())
}

impl Frontend {
    /// Starts the thread for `config`'s rules with `instances` or `health`
    /// on NIC `interface`; `None` when no rule has either. `seed` seeds
    /// the kernel's client hash.
    ///
    /// # Errors
    /// The NAT table could not be installed, or the thread not started.
    pub fn start(config: &Config, interface: &str, seed: u32) -> Result<Option<Self>> {
        let now = 0;
        let mut watched = Vec::new();
        for (r, section) in config.rules.iter().enumerate() {
            if section.instances.is_empty() && section.health.is_none() {
                continue;
            }
            let cfg = RuleHealthConfig {
                service: section.health.as_ref().map(|h| timing(&h.timing)),
                instances: section.instances.len(),
                instance_probe: timing(&section.instance_probe.timing),
                hold_ms: section.hold_ms as u64,
            };
            let health = RuleHealth::new(cfg, now);
            let nat = match (section.vip, section.instances.is_empty()) {
                (Some(vip), false) => Some(NatRule {
                    rule: r,
                    vip,
                    port: section.port_start,
                    mode: section.mode,
                    ipv6_prefix: config.cluster.ipv6_network_prefix,
                    ports: section.instances.iter().map(|i| i.port).collect(),
                    seed,
                }),
                _ => None,
            };
            let table = InstanceTable::build(&instances(section, &health.instances_up()));
            watched.push(Watched {
                rule: r,
                section: section.clone(),
                health,
                nat,
                table,
                probes: 0,
                probe_failures: 0,
                nat_updates: 0,
                nat_errors: 0,
            });
        }
        if watched.is_empty() {
            return Ok(None);
        }
        let table_name = nft::table_name(interface);
        let nats: Vec<NatRule> = watched.iter().filter_map(|w| w.nat.clone()).collect();
        if !nats.is_empty() {
            let mut script = nft::ruleset(&table_name, &nats);
            for w in &watched {
                if let Some(n) = &w.nat {
                    script.push_str(&nft::map_update(&table_name, n, &w.table));
                }
            }
            run_nft(&script).context("installing the frontend instance NAT table")?;
            tracing::info!(table = %table_name, rules = nats.len(), "frontend instance NAT installed");
        }
        let stop = Arc::new(AtomicBool::new(false));
        let (change_tx, changes) = mpsc::channel();
        let state: FrontendReader = Arc::new(Mutex::new(serde_json::Value::Null));
        let mut runner = Runner {
            watched,
            table_name,
            has_nat: !nats.is_empty(),
            start: Instant::now(),
            change_tx,
            state: state.clone(),
        };
        runner.publish();
        let thread = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("shoal-frontend".into())
                .spawn(move || runner.run(&stop))
                .context("spawning the frontend probe thread")?
        };
        Ok(Some(Self {
            stop,
            thread: Some(thread),
            changes,
            state,
        }))
    }

    /// Changes of whether this host serves a rule since the last call, in
    /// order, for [`shoal_controlplane::Machine::handle_rule_health`].
    pub fn changes(&self) -> Vec<Change> {
        self.changes.try_iter().collect()
    }

    /// The `rule_health` JSON.
    pub fn reader(&self) -> FrontendReader {
        self.state.clone()
    }

    /// Stops the thread and deletes the NAT table.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Frontend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run_nft(script: &str) -> Result<()> {
    let out = Kernel.run("nft", &["-f", "-"], Some(script))?;
    if !out.success {
        anyhow::bail!("nft -f - failed: {}", out.stderr);
    }
    Ok(())
}

/// A probe's result: rule position in `watched`, target, success.
type ProbeResult = (usize, Target, bool);

struct Runner {
    watched: Vec<Watched>,
    table_name: String,
    has_nat: bool,
    start: Instant,
    change_tx: Sender<Change>,
    state: FrontendReader,
}

impl Runner {
    fn now(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    fn run(&mut self, stop: &AtomicBool) {
        let (tx, rx) = mpsc::channel::<ProbeResult>();
        let mut last_publish = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            let now = self.now();
            for w in 0..self.watched.len() {
                for target in self.watched[w].health.due(now) {
                    self.watched[w].health.mark_sent(target, now);
                    self.watched[w].probes += 1;
                    self.spawn_probe(w, target, &tx);
                }
            }
            let next = self
                .watched
                .iter()
                .filter_map(|w| w.health.next_deadline())
                .min()
                .unwrap_or(now + 100);
            let wait = Duration::from_millis(next.saturating_sub(now).clamp(1, 100));
            let mut changed = false;
            if let Ok(first) = rx.recv_timeout(wait) {
                changed |= self.handle(first);
                while let Ok(more) = rx.try_recv() {
                    changed |= self.handle(more);
                }
            }
            let now = self.now();
            for w in 0..self.watched.len() {
                if self.watched[w].health.handle_timeout(now) {
                    self.report(w);
                    changed = true;
                }
            }
            if changed || last_publish.elapsed() >= Duration::from_millis(250) {
                last_publish = Instant::now();
                self.publish();
            }
        }
        if self.has_nat {
            if let Err(e) = run_nft(&nft::delete_script(&self.table_name)) {
                tracing::warn!(error = %e, "deleting the frontend instance NAT table");
            }
        }
    }

    fn spawn_probe(&self, w: usize, target: Target, tx: &Sender<ProbeResult>) {
        let section = &self.watched[w].section;
        let (addr, kind, timeout) = match target {
            Target::Service => {
                let Some(h) = &section.health else { return };
                (h.address, h.kind.clone(), h.timing.timeout_ms)
            }
            Target::Instance(i) => {
                let (Some(vip), Some(inst)) = (section.vip, section.instances.get(i)) else {
                    return;
                };
                (
                    SocketAddr::new(vip, inst.port),
                    section.instance_probe.kind.clone(),
                    section.instance_probe.timing.timeout_ms,
                )
            }
        };
        let to_probe = tx.clone();
        let spawned = std::thread::Builder::new()
            .name("shoal-probe".into())
            .stack_size(64 * 1024)
            .spawn(move || {
                let ok = probe(addr, &kind, Duration::from_millis(timeout as u64));
                let _ = to_probe.send((w, target, ok));
            });
        if spawned.is_err() {
            let _ = tx.send((w, target, false));
        }
    }

    /// Feeds one result; returns whether anything changed.
    fn handle(&mut self, (w, target, ok): ProbeResult) -> bool {
        let now = self.now();
        let Some(watched) = self.watched.get_mut(w) else {
            return false;
        };
        if !ok {
            watched.probe_failures += 1;
        }
        let was_serving = watched.health.serving();
        let changed = watched.health.probed(target, ok, now);
        if changed {
            match target {
                Target::Service => tracing::warn!(
                    rule = watched.rule,
                    up = watched.health.service_up(),
                    "rule service health changed"
                ),
                Target::Instance(i) => {
                    tracing::warn!(
                        rule = watched.rule,
                        port = watched.section.instances.get(i).map(|x| x.port),
                        up = watched.health.instance_up(i),
                        "frontend instance changed"
                    );
                    self.update_nat(w);
                }
            }
        }
        if self.watched[w].health.serving() != was_serving {
            self.report(w);
        }
        changed || self.watched[w].health.serving() != was_serving
    }

    fn update_nat(&mut self, w: usize) {
        let table_name = self.table_name.clone();
        let watched = &mut self.watched[w];
        let Some(nat) = &watched.nat else { return };
        let next = watched
            .table
            .rebuild(&instances(&watched.section, &watched.health.instances_up()));
        match run_nft(&nft::map_update(&table_name, nat, &next)) {
            Ok(()) => {
                watched.table = next;
                watched.nat_updates += 1;
            }
            Err(e) => {
                watched.nat_errors += 1;
                tracing::warn!(error = %e, rule = watched.rule, "updating the instance map");
            }
        }
    }

    fn report(&self, w: usize) {
        let watched = &self.watched[w];
        let left = (!watched.health.serving()).then(|| watched.health.reason());
        tracing::warn!(
            rule = watched.rule,
            serving = watched.health.serving(),
            reason = watched.health.reason().as_str(),
            "rule health: {}",
            if left.is_some() {
                "leaving the rule"
            } else {
                "taking the rule back"
            }
        );
        let _ = self.change_tx.send((watched.rule, left));
    }

    fn publish(&self) {
        let rules: Vec<serde_json::Value> = self
            .watched
            .iter()
            .map(|w| {
                let c = w.health.counters();
                let counts = w.table.counts(w.section.instances.len());
                let instances: Vec<serde_json::Value> = w
                    .section
                    .instances
                    .iter()
                    .enumerate()
                    .map(|(i, inst)| {
                        serde_json::json!({
                            "port": inst.port,
                            "weight": inst.weight,
                            "up": w.health.instance_up(i),
                            "buckets": counts.get(i).copied().unwrap_or(0),
                        })
                    })
                    .collect();
                serde_json::json!({
                    "rule": w.rule,
                    "vip": w.section.vip.map(|v| v.to_string()),
                    "port": w.section.port_start,
                    "serving": w.health.serving(),
                    "reason": w.health.reason().as_str(),
                    "service_up": w.section.health.as_ref().map(|_| w.health.service_up()),
                    "instances": instances,
                    "left": c.left,
                    "returned": c.returned,
                    "instance_down": c.instance_down,
                    "instance_up": c.instance_up,
                    "service_changes": c.service_changes,
                    "probes": w.probes,
                    "probe_failures": w.probe_failures,
                    "nat_updates": w.nat_updates,
                    "nat_errors": w.nat_errors,
                })
            })
            .collect();
        *self.state.lock() = serde_json::json!({ "rules": rules });
    }
}

/// One probe: a TCP connect, and for HTTP a GET whose status is below 500,
/// all within `timeout`.
pub fn probe(addr: SocketAddr, kind: &ProbeKind, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    let Ok(mut s) = TcpStream::connect_timeout(&addr, timeout) else {
        return false;
    };
    let ProbeKind::Http { path } = kind else {
        return true;
    };
    let left = || deadline.saturating_duration_since(Instant::now());
    if left().is_zero() {
        return false;
    }
    let host = match addr.ip() {
        IpAddr::V4(_) => addr.to_string(),
        IpAddr::V6(_) => format!("[{}]:{}", addr.ip(), addr.port()),
    };
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: shoal-probe\r\nConnection: close\r\n\r\n"
    );
    if s.set_write_timeout(Some(left())).is_err() || s.write_all(req.as_bytes()).is_err() {
        return false;
    }
    let mut buf = [0u8; 64];
    let mut got = 0;
    while got < 12 {
        let l = left();
        if l.is_zero() || s.set_read_timeout(Some(l)).is_err() {
            return false;
        }
        match s.read(&mut buf[got..]) {
            Ok(0) | Err(_) => return false,
            Ok(n) => got += n,
        }
    }
    status_ok(&buf[..got])
}

/// Whether a response starting with `head` has a status below 500.
fn status_ok(head: &[u8]) -> bool {
    let Some(rest) = head.strip_prefix(b"HTTP/1.") else {
        return false;
    };
    match rest.get(2..5) {
        Some(code) if code.iter().all(u8::is_ascii_digit) => code[0] < b'5',
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn statuses_below_500_are_healthy() {
        assert!(status_ok(b"HTTP/1.1 200 OK\r\n"));
        assert!(status_ok(b"HTTP/1.0 404 Not"));
        assert!(!status_ok(b"HTTP/1.1 503 Service"));
        assert!(!status_ok(b"SSH-2.0-OpenSSH"));
        assert!(!status_ok(b"HTTP/1.1 2x0"));
    }

    #[test]
    fn probes_tell_a_listener_from_a_closed_port_and_a_silent_one() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let t = Duration::from_millis(300);
        assert!(probe(addr, &ProbeKind::Tcp, t));
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        // Accepted but never answered: the HTTP probe times out.
        assert!(!probe(addr, &ProbeKind::Http { path: "/".into() }, t));
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut c, _) = l.accept().unwrap();
            let mut b = [0u8; 256];
            let _ = c.read(&mut b);
            c.write_all(b"HTTP/1.1 204 No Content\r\n\r\n").unwrap();
        });
        assert!(probe(addr, &ProbeKind::Http { path: "/h".into() }, t));
        server.join().unwrap();
        let closed = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        assert!(!probe(closed, &ProbeKind::Tcp, t));
    }
}
