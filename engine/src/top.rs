//! `shoal top`: a live terminal view of one engine, drawn with `ratatui`
//! over the crossterm backend.
//!
//! # What it owns
//!
//! * [`Snapshot`]: what one `display` answer of the admin socket says (the
//!   `query` report with the engine's `frames` and `services` counters,
//!   and the peers heard).
//! * [`View`]: the view model, a pure function of two successive snapshots
//!   and the time between them ([`View::new`]): members and their state,
//!   epoch and last convergence, this host's kept frames per second and its
//!   share of the cluster's frames, drops by reason, and each service's
//!   requests and errors per second and latency over the interval.
//! * [`render`]: draws a [`View`] into a ratatui frame; also pure, so tests
//!   draw into ratatui's `TestBackend` and read the cells.
//! * [`run`]: the thin I/O loop: ask the engine once a second, draw, quit
//!   on `q` (or Esc, or Ctrl-C).
//!
//! # What it guarantees
//!
//! * **Rates come from counters, never from the engine's word.** Every
//!   per-second figure is the difference of two counter readings divided
//!   by the time measured between them here; the first screen, with one
//!   reading, shows totals and `-` for rates. A counter that went backwards
//!   (the engine restarted) gives `-`, not a negative or huge rate.
//! * **The share is measured, not configured.** Every host sees every
//!   frame, so this host's share is its kept frames over the frames
//!   addressed to the cluster it saw in the interval (those its poll loops
//!   judged, plus those its XDP fast path dropped as another host's).
//!   Other hosts' kept rates live on their own engines: run `shoal top`
//!   there (or read the Prometheus families); their rows here show state.
//! * **The terminal is restored** on every exit path of [`run`], errors
//!   included.
//! * An engine that does not answer is shown as such (the last good
//!   screen stays, with the error below it); `top` keeps asking.

#![forbid(unsafe_code)]

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Block, Borders, Cell, Paragraph, Row, Table};
use ratatui::Frame;
use serde_json::Value;
use shoal_controlplane::admin::{Body, PeerReport, QueryReport};
use shoal_controlplane::Request;

/// How often `top` asks the engine.
pub const REFRESH: Duration = Duration::from_secs(1);

/// One reading of the engine: its `display` answer.
#[derive(Clone, Debug, PartialEq)]
pub struct Snapshot {
    /// The `query` part (with `frames` and `services`).
    pub query: QueryReport,
    /// The peers heard.
    pub peers: Vec<PeerReport>,
}

impl Snapshot {
    /// The snapshot in a `display` answer; `None` for any other body.
    pub fn from_body(body: Body) -> Option<Self> {
        match body {
            Body::Display { query, peers, .. } => Some(Self { query, peers }),
            _ => None,
        }
    }
}

/// One row of the members table.
#[derive(Clone, Debug, PartialEq)]
pub struct MemberRow {
    /// Host ID.
    pub host: u8,
    /// This engine's host.
    pub local: bool,
    /// In the adopted view.
    pub in_view: bool,
    /// Its state and phase, as reported (`converged`, `stable`, ...).
    pub state: String,
    /// Its phase.
    pub phase: String,
    /// Milliseconds since it was last heard (peers only).
    pub heard_ms_ago: Option<u64>,
    /// Kept frames per second over the interval (this host only).
    pub kept_per_s: Option<f64>,
    /// Its share of the cluster's frames over the interval (0..=1; this
    /// host only).
    pub share: Option<f64>,
}

/// One drop reason with a non-zero count.
#[derive(Clone, Debug, PartialEq)]
pub struct DropRow {
    /// Reason name, as in the `--stats` file (`xdp_dropped` for the XDP
    /// fast path's, `malformed.<reason>` for malformed frames).
    pub reason: String,
    /// Since the engine started.
    pub total: u64,
    /// Per second over the interval.
    pub per_s: Option<f64>,
}

/// One service's row.
#[derive(Clone, Debug, PartialEq)]
pub struct ServiceRow {
    /// Service name.
    pub name: String,
    /// Requests per second over the interval.
    pub requests_per_s: Option<f64>,
    /// Requests since the engine started.
    pub requests: u64,
    /// Errors (every kind) per second over the interval.
    pub errors_per_s: Option<f64>,
    /// Errors since the engine started, every kind.
    pub errors: u64,
    /// Mean latency over the interval, ms (none without requests in it).
    pub mean_ms: Option<f64>,
    /// The bound of the latency bucket holding the interval's 99th
    /// percentile, ms (`None` when it falls in the open last bucket or
    /// nothing was measured).
    pub p99_ms: Option<f64>,
    /// Members up, and members.
    pub members_up: (usize, usize),
}

/// What the screen shows: a pure function of two snapshots.
#[derive(Clone, Debug, PartialEq)]
pub struct View {
    /// This host.
    pub host: u8,
    /// Its state.
    pub state: String,
    /// Its phase.
    pub phase: String,
    /// Epoch of the adopted view.
    pub epoch: u64,
    /// The adopted view's members.
    pub members: Vec<u8>,
    /// Duration of the last convergence, ms.
    pub last_convergence_ms: Option<f64>,
    /// Things an operator must see (outvoted, duplicate ID, held back,
    /// rules left).
    pub warnings: Vec<String>,
    /// Every host known: the view's members, the peers heard, this host.
    pub rows: Vec<MemberRow>,
    /// Cluster frames seen per second over the interval.
    pub cluster_per_s: Option<f64>,
    /// Drop reasons with a non-zero total.
    pub drops: Vec<DropRow>,
    /// Services, by name.
    pub services: Vec<ServiceRow>,
    /// The seconds the rates span (`None` on the first reading).
    pub interval_s: Option<f64>,
}

fn name<T: serde::Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(Value::String(s)) => s,
        _ => "?".to_string(),
    }
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

/// `(now - before) / secs`, `None` without a previous reading, a zero
/// interval, or a counter that went backwards.
fn rate(now: u64, before: Option<u64>, secs: Option<f64>) -> Option<f64> {
    let (before, secs) = (before?, secs?);
    (now >= before && secs > 0.0).then(|| (now - before) as f64 / secs)
}

fn errors_total(service: &Value) -> u64 {
    service["errors"]
        .as_object()
        .map_or(0, |m| m.values().map(u).sum())
}

/// `(mean ms, p99 bound ms)` of the latency histogram's growth between
/// `prev` and `cur` (`{bounds_s, counts, sum_s}`; counts per bucket, the
/// last one open).
fn latency(cur: &Value, prev: Option<&Value>) -> (Option<f64>, Option<f64>) {
    let counts = |v: &Value| -> Vec<u64> {
        v["counts"]
            .as_array()
            .map(|a| a.iter().map(u).collect())
            .unwrap_or_default()
    };
    let bounds: Vec<f64> = cur["bounds_s"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_f64).collect())
        .unwrap_or_default();
    let now = counts(cur);
    let before = prev.map(counts).unwrap_or_default();
    if now.len() != bounds.len() + 1 {
        return (None, None);
    }
    let delta: Vec<u64> = now
        .iter()
        .enumerate()
        .map(|(i, n)| n.saturating_sub(before.get(i).copied().unwrap_or(0)))
        .collect();
    let count: u64 = delta.iter().sum();
    if count == 0 {
        return (None, None);
    }
    let sum = cur["sum_s"].as_f64().unwrap_or(0.0)
        - prev.and_then(|p| p["sum_s"].as_f64()).unwrap_or(0.0);
    let mean = (sum >= 0.0).then(|| sum / count as f64 * 1e3);
    // The smallest bucket whose cumulative count reaches 99 %.
    let wanted = count - count / 100;
    let mut seen = 0;
    let mut p99 = None;
    for (i, n) in delta.iter().enumerate() {
        seen += n;
        if seen >= wanted {
            p99 = bounds.get(i).map(|b| b * 1e3);
            break;
        }
    }
    (mean, p99)
}

impl View {
    /// The view of `cur`, with rates against `prev` taken `elapsed`
    /// earlier (or none).
    pub fn new(cur: &Snapshot, prev: Option<(&Snapshot, Duration)>) -> Self {
        let q = &cur.query;
        let secs = prev.map(|(_, d)| d.as_secs_f64()).filter(|s| *s > 0.0);
        let pq = prev.filter(|_| secs.is_some()).map(|(p, _)| &p.query);
        let null = Value::Null;
        let frames = q.frames.as_ref().unwrap_or(&null);
        let pframes = pq.map(|p| p.frames.as_ref().unwrap_or(&null));
        let field = |f: &Value, k: &str| u(&f[k]);
        let cluster = |f: &Value| field(f, "for_cluster") + field(f, "xdp_dropped");
        let cluster_per_s = rate(cluster(frames), pframes.map(cluster), secs);
        let kept_per_s = rate(
            field(frames, "kept"),
            pframes.map(|p| field(p, "kept")),
            secs,
        );
        let share = match (kept_per_s, cluster_per_s) {
            (Some(k), Some(c)) if c > 0.0 => Some(k / c),
            _ => None,
        };

        let mut hosts: Vec<u8> = q.members.clone();
        hosts.extend(cur.peers.iter().map(|p| p.host));
        hosts.push(q.host);
        hosts.sort_unstable();
        hosts.dedup();
        let rows = hosts
            .into_iter()
            .map(|h| {
                let local = h == q.host;
                let peer = cur.peers.iter().find(|p| p.host == h);
                let (state, phase) = if local {
                    (name(&q.state), name(&q.phase))
                } else if let Some(p) = peer {
                    (name(&p.state), name(&p.phase))
                } else {
                    ("unheard".to_string(), "-".to_string())
                };
                MemberRow {
                    host: h,
                    local,
                    in_view: q.members.contains(&h),
                    state,
                    phase,
                    heard_ms_ago: peer.map(|p| p.last_heard_ns_ago / 1_000_000),
                    kept_per_s: if local { kept_per_s } else { None },
                    share: if local { share } else { None },
                }
            })
            .collect();

        let mut drops = Vec::new();
        let mut reasons = |key: &str, prefix: &str| {
            if let Some(m) = frames[key].as_object() {
                for (reason, n) in m {
                    let total = u(n);
                    if total > 0 {
                        let before = pframes.map(|p| u(&p[key][reason]));
                        drops.push(DropRow {
                            reason: format!("{prefix}{reason}"),
                            total,
                            per_s: rate(total, before, secs),
                        });
                    }
                }
            }
        };
        reasons("dropped", "");
        reasons("malformed", "malformed.");
        let xdp = field(frames, "xdp_dropped");
        if xdp > 0 {
            drops.push(DropRow {
                reason: "xdp_dropped".to_string(),
                total: xdp,
                per_s: rate(xdp, pframes.map(|p| field(p, "xdp_dropped")), secs),
            });
        }

        let services_of = |q: &QueryReport| q.services.clone().unwrap_or(Value::Null);
        let services_now = services_of(q);
        let services_before = pq.map(services_of);
        let services = services_now
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(name, s)| {
                        let p = services_before.as_ref().map(|b| &b[name]);
                        let p = p.filter(|p| p.is_object());
                        let requests = u(&s["requests"]);
                        let errors = errors_total(s);
                        let (mean_ms, p99_ms) = latency(&s["latency"], p.map(|p| &p["latency"]));
                        let members = s["members"].as_array();
                        ServiceRow {
                            name: name.clone(),
                            requests_per_s: rate(requests, p.map(|p| u(&p["requests"])), secs),
                            requests,
                            errors_per_s: rate(errors, p.map(errors_total), secs),
                            errors,
                            mean_ms: if p.is_some() { mean_ms } else { None },
                            p99_ms: if p.is_some() { p99_ms } else { None },
                            members_up: (
                                members.map_or(0, |a| a.iter().filter(|m| m["up"] == true).count()),
                                members.map_or(0, Vec::len),
                            ),
                        }
                    })
                    .collect()
            })
            .unwrap_or_default();

        let mut warnings = Vec::new();
        if q.outvoted {
            warnings.push("this host's rules lost the vote".to_string());
        }
        if q.duplicate_id {
            warnings.push("a second host uses one ID".to_string());
        }
        if q.stepped_back_duplicate_id {
            warnings.push("stepped back: duplicate ID".to_string());
        }
        if let Some(b) = &q.blocked_reason {
            warnings.push(format!("held back: {b}"));
        }
        for r in &q.rules_left {
            warnings.push(format!("rule {} left: {}", r.rule, r.reason));
        }
        for (what, hosts) in [
            ("rules differ", &q.excluded_rule_mismatch),
            ("duplicate ID", &q.excluded_duplicate_id),
        ] {
            if !hosts.is_empty() {
                warnings.push(format!("excluded ({what}): {}", ids(hosts)));
            }
        }

        Self {
            host: q.host,
            state: name(&q.state),
            phase: name(&q.phase),
            epoch: q.epoch,
            members: q.members.clone(),
            last_convergence_ms: q.last_convergence_ns.map(|n| n as f64 / 1e6),
            warnings,
            rows,
            cluster_per_s,
            drops,
            services,
            interval_s: secs,
        }
    }
}

fn ids(hosts: &[u8]) -> String {
    hosts
        .iter()
        .map(u8::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

fn per_s(v: Option<f64>) -> String {
    v.map_or("-".to_string(), |r| format!("{r:.1}"))
}

fn ms(v: Option<f64>) -> String {
    v.map_or("-".to_string(), |r| format!("{r:.2}"))
}

/// Draws `view` into `frame`, with `error` (the last failed reading, if
/// any) on the bottom line.
pub fn render(frame: &mut Frame<'_>, view: Option<&View>, error: Option<&str>) {
    let area = frame.area();
    let Some(v) = view else {
        let text = vec![
            Line::from("shoal top: waiting for the engine's first answer (q quits)"),
            Line::from(error.unwrap_or("").to_string()),
        ];
        frame.render_widget(Paragraph::new(text), area);
        return;
    };
    let bold = Style::default().add_modifier(Modifier::BOLD);
    let drops_h = v.drops.len().max(1) as u16 + 3;
    let services_h = v.services.len().max(1) as u16 + 3;
    let [head, members, drops, services, foot] = Layout::vertical([
        Constraint::Length(4 + v.warnings.len() as u16),
        Constraint::Length(v.rows.len() as u16 + 3),
        Constraint::Length(drops_h),
        Constraint::Length(services_h),
        Constraint::Min(1),
    ])
    .areas(area);

    let conv = v
        .last_convergence_ms
        .map_or("none yet".to_string(), |m| format!("{m:.1} ms"));
    let mut lines = vec![
        Line::from(format!(
            "host {}  {} / {}  epoch {}  members [{}]  last convergence {}",
            v.host,
            v.state,
            v.phase,
            v.epoch,
            ids(&v.members),
            conv
        ))
        .style(bold),
        Line::from(format!(
            "cluster frames/s {}  interval {}  (q quits)",
            per_s(v.cluster_per_s),
            v.interval_s
                .map_or("-".to_string(), |s| format!("{s:.2} s")),
        )),
    ];
    lines.extend(v.warnings.iter().map(|w| Line::from(format!("! {w}"))));
    frame.render_widget(
        Paragraph::new(lines).block(Block::default().borders(Borders::BOTTOM).title("shoal top")),
        head,
    );

    let rows = v.rows.iter().map(|r| {
        Row::new(vec![
            Cell::from(format!("{}{}", r.host, if r.local { "*" } else { "" })),
            Cell::from(if r.in_view { "yes" } else { "no" }),
            Cell::from(r.state.clone()),
            Cell::from(r.phase.clone()),
            Cell::from(r.heard_ms_ago.map_or("-".to_string(), |m| format!("{m}"))),
            Cell::from(per_s(r.kept_per_s)),
            Cell::from(
                r.share
                    .map_or("-".to_string(), |s| format!("{:.1}%", s * 100.0)),
            ),
        ])
    });
    let table = Table::new(
        rows,
        [
            Constraint::Length(6),
            Constraint::Length(8),
            Constraint::Length(12),
            Constraint::Length(10),
            Constraint::Length(10),
            Constraint::Length(12),
            Constraint::Length(8),
        ],
    )
    .header(
        Row::new([
            "host", "in view", "state", "phase", "heard ms", "kept/s", "share",
        ])
        .style(bold),
    )
    .block(
        Block::default()
            .borders(Borders::TOP)
            .title("members (* = this host)"),
    );
    frame.render_widget(table, members);

    let drop_rows: Vec<Row<'_>> = if v.drops.is_empty() {
        vec![Row::new(["none"])]
    } else {
        v.drops
            .iter()
            .map(|d| Row::new([d.reason.clone(), d.total.to_string(), per_s(d.per_s)]))
            .collect()
    };
    let table = Table::new(
        drop_rows,
        [
            Constraint::Length(28),
            Constraint::Length(14),
            Constraint::Length(12),
        ],
    )
    .header(Row::new(["reason", "total", "per s"]).style(bold))
    .block(Block::default().borders(Borders::TOP).title("drops"));
    frame.render_widget(table, drops);

    let service_rows: Vec<Row<'_>> = if v.services.is_empty() {
        vec![Row::new(["none"])]
    } else {
        v.services
            .iter()
            .map(|s| {
                Row::new([
                    s.name.clone(),
                    per_s(s.requests_per_s),
                    s.requests.to_string(),
                    per_s(s.errors_per_s),
                    s.errors.to_string(),
                    ms(s.mean_ms),
                    s.p99_ms.map_or("-".to_string(), |p| format!("<={p:.0}")),
                    format!("{}/{}", s.members_up.0, s.members_up.1),
                ])
            })
            .collect()
    };
    let table = Table::new(
        service_rows,
        [
            Constraint::Length(16),
            Constraint::Length(10),
            Constraint::Length(12),
            Constraint::Length(9),
            Constraint::Length(10),
            Constraint::Length(10),
            Constraint::Length(10),
            Constraint::Length(10),
        ],
    )
    .header(
        Row::new([
            "service", "req/s", "requests", "errors/s", "errors", "mean ms", "p99 ms", "up",
        ])
        .style(bold),
    )
    .block(Block::default().borders(Borders::TOP).title("services"));
    frame.render_widget(table, services);

    if let Some(e) = error {
        frame.render_widget(Paragraph::new(format!("engine: {e}")), foot);
    }
}

/// One reading of the engine at `socket`.
fn read(socket: &Path) -> Result<Snapshot> {
    let resp = crate::control::call(socket, &Request::Display)
        .with_context(|| format!("talking to shoal at {}", socket.display()))?;
    let message = format!("{}: {}", resp.status, resp.message);
    Snapshot::from_body(resp.body).with_context(|| message)
}

/// Shows the engine at `socket` until `q`, Esc or Ctrl-C (see the module
/// docs).
///
/// # Errors
/// The terminal could not be set up or drawn on.
pub fn run(socket: &Path) -> Result<()> {
    let mut terminal = ratatui::try_init().context("setting up the terminal")?;
    let result = show(&mut terminal, socket);
    ratatui::restore();
    result
}

fn show(terminal: &mut ratatui::DefaultTerminal, socket: &Path) -> Result<()> {
    use crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};

    let mut last: Option<(Snapshot, Instant)> = None;
    let mut view: Option<View> = None;
    loop {
        let now = Instant::now();
        let error = match read(socket) {
            Ok(s) => {
                view = Some(View::new(
                    &s,
                    last.as_ref().map(|(p, at)| (p, now.duration_since(*at))),
                ));
                last = Some((s, now));
                None
            }
            Err(e) => Some(format!("{e:#}")),
        };
        terminal.draw(|f| render(f, view.as_ref(), error.as_deref()))?;
        let deadline = now + REFRESH;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            if event::poll(left)? {
                match event::read()? {
                    Event::Key(k) if k.kind == KeyEventKind::Press => {
                        let ctrl_c = k.code == KeyCode::Char('c')
                            && k.modifiers.contains(KeyModifiers::CONTROL);
                        if matches!(k.code, KeyCode::Char('q') | KeyCode::Esc) || ctrl_c {
                            return Ok(());
                        }
                    }
                    Event::Resize(..) => {
                        terminal.draw(|f| render(f, view.as_ref(), error.as_deref()))?;
                    }
                    _ => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ratatui::backend::TestBackend;
    use ratatui::Terminal;
    use serde_json::json;
    use shoal_controlplane::admin::RuleLeft;
    use shoal_controlplane::{HostState, Phase};

    fn report(frames: Value, services: Value) -> QueryReport {
        QueryReport {
            host: 2,
            state: HostState::Converged,
            phase: Phase::Stable,
            members: vec![1, 2],
            epoch: 7,
            default_host: Some(1),
            excluded_rule_mismatch: vec![],
            excluded_duplicate_id: vec![],
            outvoted: false,
            duplicate_id: false,
            stepped_back_duplicate_id: false,
            last_convergence_ns: Some(412_500_000),
            blocked_reason: None,
            counters: Default::default(),
            services: Some(services),
            rules_left: vec![],
            rule_health: None,
            frames: Some(frames),
        }
    }

    fn peer(host: u8, state: HostState) -> PeerReport {
        PeerReport {
            host,
            state,
            phase: Phase::Stable,
            last_heard_ns_ago: 250_000_000,
            rules_match: true,
            duplicate_id: false,
        }
    }

    fn frames(for_cluster: u64, xdp: u64, kept: u64, not_owner: u64) -> Value {
        json!({"received": for_cluster + 5, "for_cluster": for_cluster, "kept": kept,
               "passed": 5, "dropped": {"not_owner": not_owner, "not_ip": 0},
               "malformed": {"short_ip": 2}, "xdp_dropped": xdp})
    }

    fn web(requests: u64, errors: u64, counts: [u64; 3], sum_s: f64) -> Value {
        json!({"web": {"requests": requests, "errors": {"timeout": errors, "refused": 1},
            "members": [{"name": "c1", "up": true}, {"name": "c2", "up": false}],
            "latency": {"bounds_s": [0.01, 0.1], "counts": counts, "sum_s": sum_s}}})
    }

    fn snapshots() -> (Snapshot, Snapshot) {
        let peers = vec![peer(1, HostState::Converged), peer(3, HostState::Stopped)];
        let a = Snapshot {
            query: report(frames(1000, 0, 300, 700), web(10, 0, [0, 0, 0], 0.0)),
            peers: peers.clone(),
        };
        // Over 0.5 s: 600 judged + 400 dropped by XDP, 250 of them kept;
        // 100 requests, 90 under 10 ms, 9 under 100 ms, 1 above.
        let b = Snapshot {
            query: report(frames(1600, 400, 550, 1050), web(110, 4, [90, 9, 1], 1.5)),
            peers,
        };
        (a, b)
    }

    #[test]
    fn rates_and_share_come_from_the_counters_difference() {
        let (a, b) = snapshots();
        let v = View::new(&b, Some((&a, Duration::from_millis(500))));
        assert_eq!(v.cluster_per_s, Some(2000.0));
        let me = v.rows.iter().find(|r| r.local).unwrap();
        assert_eq!(me.host, 2);
        assert_eq!(me.kept_per_s, Some(500.0));
        assert_eq!(me.share, Some(0.25));
        let hosts: Vec<(u8, bool, &str)> = v
            .rows
            .iter()
            .map(|r| (r.host, r.in_view, r.state.as_str()))
            .collect();
        assert_eq!(
            hosts,
            [
                (1, true, "converged"),
                (2, true, "converged"),
                (3, false, "stopped")
            ]
        );
        assert!(v
            .rows
            .iter()
            .filter(|r| !r.local)
            .all(|r| r.share.is_none()));
        let drops: Vec<(&str, u64, Option<f64>)> = v
            .drops
            .iter()
            .map(|d| (d.reason.as_str(), d.total, d.per_s))
            .collect();
        assert_eq!(
            drops,
            [
                ("not_owner", 1050, Some(700.0)),
                ("malformed.short_ip", 2, Some(0.0)),
                ("xdp_dropped", 400, Some(800.0)),
            ]
        );
        let s = &v.services[0];
        assert_eq!(s.name, "web");
        assert_eq!(s.requests_per_s, Some(200.0));
        assert_eq!(s.errors, 5);
        assert_eq!(s.errors_per_s, Some(8.0));
        assert_eq!(s.mean_ms, Some(15.0));
        assert_eq!(s.p99_ms, Some(100.0));
        assert_eq!(s.members_up, (1, 2));
    }

    #[test]
    fn one_reading_shows_totals_and_no_rates() {
        let (a, _) = snapshots();
        let v = View::new(&a, None);
        assert_eq!(v.interval_s, None);
        assert!(v
            .rows
            .iter()
            .all(|r| r.kept_per_s.is_none() && r.share.is_none()));
        assert_eq!(v.drops[0].total, 700);
        assert_eq!(v.drops[0].per_s, None);
        assert_eq!(v.services[0].requests, 10);
        assert_eq!(v.services[0].mean_ms, None);
    }

    #[test]
    fn a_counter_that_went_backwards_gives_no_rate() {
        let (a, b) = snapshots();
        let v = View::new(&a, Some((&b, Duration::from_secs(1))));
        let me = v.rows.iter().find(|r| r.local).unwrap();
        assert_eq!(me.kept_per_s, None);
        assert_eq!(v.services[0].requests_per_s, None);
        assert_eq!(v.services[0].mean_ms, None);
        assert_eq!(View::new(&b, Some((&a, Duration::ZERO))).interval_s, None);
    }

    #[test]
    fn the_open_bucket_gives_no_p99_bound() {
        let now = json!({"bounds_s": [0.01], "counts": [1, 9], "sum_s": 2.0});
        let before = json!({"bounds_s": [0.01], "counts": [0, 0], "sum_s": 0.0});
        assert_eq!(latency(&now, Some(&before)), (Some(200.0), None));
        // Malformed histograms are ignored, not trusted.
        let bad = json!({"bounds_s": [0.01], "counts": [1]});
        assert_eq!(latency(&bad, None), (None, None));
    }

    fn screen(view: Option<&View>, error: Option<&str>) -> String {
        let mut terminal = Terminal::new(TestBackend::new(160, 50)).unwrap();
        terminal.draw(|f| render(f, view, error)).unwrap();
        let buffer = terminal.backend().buffer().clone();
        let mut out = String::new();
        for y in 0..buffer.area.height {
            for x in 0..buffer.area.width {
                out.push_str(buffer[(x, y)].symbol());
            }
            out.push('\n');
        }
        out
    }

    fn line_with<'a>(screen: &'a str, needle: &str) -> &'a str {
        screen
            .lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no line with {needle:?} in\n{screen}"))
    }

    #[test]
    fn the_screen_shows_members_drops_and_services() {
        let (a, mut b) = snapshots();
        b.query.rules_left = vec![RuleLeft {
            rule: 0,
            reason: "local service down".into(),
        }];
        let v = View::new(&b, Some((&a, Duration::from_millis(500))));
        let s = screen(Some(&v), None);
        let head = line_with(&s, "epoch 7");
        assert!(head.contains("host 2  converged / stable"), "{head}");
        assert!(head.contains("members [1,2]"), "{head}");
        assert!(head.contains("last convergence 412.5 ms"), "{head}");
        assert!(line_with(&s, "cluster frames/s").contains("2000.0"));
        assert!(s.contains("! rule 0 left: local service down"), "{s}");
        let me: Vec<&str> = line_with(&s, "2*").split_whitespace().collect();
        assert_eq!(
            me,
            ["2*", "yes", "converged", "stable", "-", "500.0", "25.0%"]
        );
        let other: Vec<&str> = line_with(&s, "stopped").split_whitespace().collect();
        assert_eq!(other, ["3", "no", "stopped", "stable", "250", "-", "-"]);
        let drop: Vec<&str> = line_with(&s, "not_owner").split_whitespace().collect();
        assert_eq!(drop, ["not_owner", "1050", "700.0"]);
        let web: Vec<&str> = line_with(&s, "web").split_whitespace().collect();
        assert_eq!(
            web,
            ["web", "200.0", "110", "8.0", "5", "15.00", "<=100", "1/2"]
        );
        assert!(!s.contains("engine:"), "{s}");
    }

    #[test]
    fn an_engine_that_stops_answering_is_shown_under_the_last_screen() {
        let (a, _) = snapshots();
        let v = View::new(&a, None);
        let s = screen(Some(&v), Some("connection refused"));
        assert!(s.contains("epoch 7"), "{s}");
        assert!(line_with(&s, "engine:").contains("connection refused"));
        let s = screen(None, Some("no such file"));
        assert!(s.contains("waiting for the engine's first answer"), "{s}");
        assert!(s.contains("no such file"), "{s}");
    }
}
