//! The admin protocol as data: NLB's verbs, their answers and return codes,
//! and the line encoding the engine's Unix socket carries.
//!
//! # What this module owns
//!
//! [`Request`] (one variant per verb), [`Response`] (a return code, a
//! message and a typed body, `serde`-serialisable for `--json`),
//! [`ReturnCode`] (NLB's `WLBS_*` numbers), the wire encoding (one JSON
//! object per line, at most [`MAX_LINE`] bytes) and
//! [`Machine::handle_admin`], which applies a verb to a control plane.
//!
//! # Semantics (NLB's)
//!
//! * `query` answers the host state as its code: `CONVERGING`, `CONVERGED`,
//!   `DEFAULT` (converged and the default host), `DRAINING`, `STOPPED` or
//!   `SUSPENDED`, with members, epoch, exclusions and counters.
//! * `start`/`stop`: `ALREADY` when nothing changes; `DRAIN_STOP` when they
//!   interrupt a `drainstop`. `stop` drops every connection at once.
//! * `drainstop`: no new connections; stops when the last one ends or the
//!   drain timeout passes.
//! * `suspend`: stops and refuses every verb but `resume`, `query`,
//!   `display` and `params` (`SUSPENDED`); `resume` leaves it stopped.
//! * `enable|disable|drain VIP[:PORT]|PORT|all`: on the rules covering that
//!   VIP and port (`NOT_FOUND` when none). `disable` drops the rule's
//!   traffic on this host, existing connections included; `drain` stops new
//!   ones and disables the rule when the last ends; `enable` undoes both.
//! * `reload` needs the new spec, which the engine reads from the config
//!   file and passes to [`Machine::handle_reload`]; [`Machine::handle_admin`]
//!   refuses it with `BAD_PARAMS` so that the verb cannot silently do nothing.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use shoal_dataplane::{HostId, MAX_RULES};

use crate::convergence::{Admin, Machine};
use crate::heartbeat::{HostState, Phase};
use crate::membership::{MembershipCounters, Standing};

/// Longest request or response line accepted, bytes.
pub const MAX_LINE: usize = 1 << 20;

/// NLB's return codes (`WLBS_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReturnCode {
    /// 1000: done.
    Ok,
    /// 1001: already in the requested state.
    Already,
    /// 1002: a drainstop was interrupted.
    DrainStop,
    /// 1003: bad parameters.
    BadParams,
    /// 1004: no such port rule.
    NotFound,
    /// 1005: cluster operations are stopped on this host.
    Stopped,
    /// 1006: the host is converging.
    Converging,
    /// 1007: the host is converged.
    Converged,
    /// 1008: converged, and this host is the default host.
    Default,
    /// 1009: the host is draining.
    Draining,
    /// 1013: the host is suspended.
    Suspended,
}

impl ReturnCode {
    /// Every code.
    pub const ALL: [ReturnCode; 11] = [
        ReturnCode::Ok,
        ReturnCode::Already,
        ReturnCode::DrainStop,
        ReturnCode::BadParams,
        ReturnCode::NotFound,
        ReturnCode::Stopped,
        ReturnCode::Converging,
        ReturnCode::Converged,
        ReturnCode::Default,
        ReturnCode::Draining,
        ReturnCode::Suspended,
    ];

    /// The numeric code.
    pub const fn code(self) -> u32 {
        match self {
            ReturnCode::Ok => 1000,
            ReturnCode::Already => 1001,
            ReturnCode::DrainStop => 1002,
            ReturnCode::BadParams => 1003,
            ReturnCode::NotFound => 1004,
            ReturnCode::Stopped => 1005,
            ReturnCode::Converging => 1006,
            ReturnCode::Converged => 1007,
            ReturnCode::Default => 1008,
            ReturnCode::Draining => 1009,
            ReturnCode::Suspended => 1013,
        }
    }

    /// NLB's name, e.g. `WLBS_OK`.
    pub const fn name(self) -> &'static str {
        match self {
            ReturnCode::Ok => "WLBS_OK",
            ReturnCode::Already => "WLBS_ALREADY",
            ReturnCode::DrainStop => "WLBS_DRAIN_STOP",
            ReturnCode::BadParams => "WLBS_BAD_PARAMS",
            ReturnCode::NotFound => "WLBS_NOT_FOUND",
            ReturnCode::Stopped => "WLBS_STOPPED",
            ReturnCode::Converging => "WLBS_CONVERGING",
            ReturnCode::Converged => "WLBS_CONVERGED",
            ReturnCode::Default => "WLBS_DEFAULT",
            ReturnCode::Draining => "WLBS_DRAINING",
            ReturnCode::Suspended => "WLBS_SUSPENDED",
        }
    }

    /// The code for a number.
    pub fn from_code(code: u32) -> Option<Self> {
        Self::ALL.iter().copied().find(|c| c.code() == code)
    }
}

impl Serialize for ReturnCode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u32(self.code())
    }
}

impl<'de> Deserialize<'de> for ReturnCode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let n = u32::deserialize(d)?;
        ReturnCode::from_code(n)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown return code {n}")))
    }
}

/// Which rules a port verb acts on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// Every rule.
    All,
    /// The rules covering this VIP (any when `None`) and port (any when `None`).
    Rule {
        /// VIP, or every VIP.
        vip: Option<IpAddr>,
        /// Port, or every port.
        port: Option<u16>,
    },
}

impl Scope {
    /// Parses `all`, `VIP`, `VIP:PORT`, `[V6]:PORT` or `PORT`.
    ///
    /// # Errors
    /// A message naming what could not be read.
    pub fn parse(s: &str) -> Result<Self, AdminError> {
        let bad = || AdminError::BadArgument(s.to_string());
        if s.eq_ignore_ascii_case("all") {
            return Ok(Scope::All);
        }
        if let Ok(port) = s.parse::<u16>() {
            return Ok(Scope::Rule {
                vip: None,
                port: Some(port),
            });
        }
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Ok(Scope::Rule {
                vip: Some(ip),
                port: None,
            });
        }
        let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        Ok(Scope::Rule {
            vip: Some(host.parse().map_err(|_| bad())?),
            port: Some(port.parse().map_err(|_| bad())?),
        })
    }
}

/// One admin verb.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "verb", rename_all = "snake_case")]
pub enum Request {
    /// Host state and cluster membership.
    Query,
    /// State of the rules covering a VIP and port.
    Queryport {
        /// What to look up.
        scope: Scope,
    },
    /// Start cluster operations.
    Start,
    /// Stop cluster operations (drops every connection).
    Stop,
    /// Drain, then stop.
    Drainstop,
    /// Stop and ignore verbs until `resume`.
    Suspend,
    /// Accept verbs again (the host stays stopped).
    Resume,
    /// Enable rules.
    Enable {
        /// Which.
        scope: Scope,
    },
    /// Disable rules.
    Disable {
        /// Which.
        scope: Scope,
    },
    /// Drain rules.
    Drain {
        /// Which.
        scope: Scope,
    },
    /// Configuration, state and peers.
    Display,
    /// Timing parameters.
    Params,
    /// Re-read the configuration (carried out by the engine).
    Reload,
}

impl Request {
    /// Parses command-line words: `query`, `enable 10.0.0.1:80`, `drain all`…
    ///
    /// # Errors
    /// An unknown verb or a missing or bad argument.
    pub fn from_args(args: &[&str]) -> Result<Self, AdminError> {
        let verb = args.first().ok_or(AdminError::MissingVerb)?;
        let scope = || -> Result<Scope, AdminError> {
            let a = args
                .get(1)
                .ok_or_else(|| AdminError::BadArgument(format!("{verb} needs VIP[:PORT]|all")))?;
            Scope::parse(a)
        };
        let no_more = |r: Request, n: usize| {
            if args.len() > n {
                Err(AdminError::BadArgument(args[n..].join(" ")))
            } else {
                Ok(r)
            }
        };
        match verb.to_ascii_lowercase().as_str() {
            "query" => no_more(Request::Query, 1),
            "queryport" => no_more(Request::Queryport { scope: scope()? }, 2),
            "start" => no_more(Request::Start, 1),
            "stop" => no_more(Request::Stop, 1),
            "drainstop" => no_more(Request::Drainstop, 1),
            "suspend" => no_more(Request::Suspend, 1),
            "resume" => no_more(Request::Resume, 1),
            "enable" => no_more(Request::Enable { scope: scope()? }, 2),
            "disable" => no_more(Request::Disable { scope: scope()? }, 2),
            "drain" => no_more(Request::Drain { scope: scope()? }, 2),
            "display" => no_more(Request::Display, 1),
            "params" => no_more(Request::Params, 1),
            "reload" => no_more(Request::Reload, 1),
            other => Err(AdminError::UnknownVerb(other.to_string())),
        }
    }
}

/// Why a request or response could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AdminError {
    /// No verb given.
    #[error("no verb given")]
    MissingVerb,
    /// Not one of NLB's verbs.
    #[error("unknown verb {0:?}")]
    UnknownVerb(String),
    /// A bad or missing argument.
    #[error("bad argument: {0}")]
    BadArgument(String),
    /// The line is longer than [`MAX_LINE`].
    #[error("line longer than {MAX_LINE} bytes")]
    TooLong,
    /// Not valid JSON for the expected message.
    #[error("bad message: {0}")]
    Json(String),
}

/// One peer as `query` and `display` show it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerReport {
    /// Host ID.
    pub host: u8,
    /// Its state.
    pub state: HostState,
    /// Its phase.
    pub phase: Phase,
    /// Nanoseconds since it was last heard.
    pub last_heard_ns_ago: u64,
    /// Whether its rules match the winning fingerprint.
    pub rules_match: bool,
    /// Whether its ID is seen duplicated.
    pub duplicate_id: bool,
}

/// The body of `query`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueryReport {
    /// This host.
    pub host: u8,
    /// Its state.
    pub state: HostState,
    /// Its phase.
    pub phase: Phase,
    /// Members of the adopted view.
    pub members: Vec<u8>,
    /// Epoch of the adopted view.
    pub epoch: u64,
    /// The default host of the adopted view.
    pub default_host: Option<u8>,
    /// Hosts excluded because their rules differ.
    pub excluded_rule_mismatch: Vec<u8>,
    /// Hosts excluded because their ID is duplicated.
    pub excluded_duplicate_id: Vec<u8>,
    /// Whether this host's own rules lost the vote.
    pub outvoted: bool,
    /// Whether a second host using one ID (this host's or a peer's) has
    /// been heard within the last `tolerance × period`; while it is,
    /// `counters.duplicate_id` (the heartbeats refused for it) grows.
    pub duplicate_id: bool,
    /// Whether this host is the newcomer of a duplicated ID and has
    /// stepped back (takes no traffic).
    pub stepped_back_duplicate_id: bool,
    /// Duration of the last convergence, ns.
    pub last_convergence_ns: Option<u64>,
    /// Why this host holds back from serving alone, while it does: the
    /// claimed sender (host ID and source MAC, unauthenticated) of the
    /// heartbeats failing authentication and how many it sent (see
    /// [`crate::lone`]).
    #[serde(default)]
    pub blocked_reason: Option<String>,
    /// Heartbeat counters.
    pub counters: MembershipCounters,
    /// The array tier's counters per service (the engine's `services`
    /// object, as in its `--stats` file); absent without `[[service]]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub services: Option<serde_json::Value>,
    /// Rules this host has left because their local service (or every
    /// frontend instance) is down, with why (see
    /// [`crate::rule_health`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules_left: Vec<RuleLeft>,
    /// The engine's rule health and instance state (its `--stats` file's
    /// `rule_health` object); absent without `health` or `instances`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule_health: Option<serde_json::Value>,
    /// This host's frame counters since it started (`received`,
    /// `for_cluster`, `kept`, `passed`, `dropped` and `malformed` by
    /// reason, `xdp_dropped`), as the engine's `--stats` file names them;
    /// filled by the engine, absent from the machine alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frames: Option<serde_json::Value>,
}

/// A rule this host has left for its service's health.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleLeft {
    /// Rule index.
    pub rule: usize,
    /// Why, in words.
    pub reason: String,
}

/// One rule as `queryport` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortReport {
    /// Rule index.
    pub rule: usize,
    /// VIP, or `None` for every VIP.
    pub vip: Option<IpAddr>,
    /// First port.
    pub port_start: u16,
    /// Last port.
    pub port_end: u16,
    /// `enabled`, `disabled`, `draining` or `left` (its service is down:
    /// see `query`'s `rules_left`).
    pub status: String,
    /// This host's configured weight.
    pub weight: u8,
    /// This host's descriptor count under the rule, when reported.
    pub descriptors: Option<u64>,
}

/// The body of `params`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParamsReport {
    /// Host ID.
    pub host: u8,
    /// Boot id.
    pub boot_id: u64,
    /// Heartbeat period, ms.
    pub period_ms: u64,
    /// Missed periods before a host is dead.
    pub tolerance: u32,
    /// Heartbeats of agreement before adopting.
    pub converge_periods: u32,
    /// Drain timeout, s.
    pub drain_timeout_s: u64,
    /// Rule fingerprint.
    pub fingerprint: String,
    /// Number of port rules.
    pub rules: usize,
}

/// A verb's typed answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Body {
    /// Nothing beyond the code.
    None,
    /// `query`.
    Query(QueryReport),
    /// `queryport`.
    Ports {
        /// The rules found.
        rules: Vec<PortReport>,
    },
    /// `display`.
    Display {
        /// State.
        query: QueryReport,
        /// Rules.
        rules: Vec<PortReport>,
        /// Peers heard.
        peers: Vec<PeerReport>,
        /// Parameters.
        params: ParamsReport,
    },
    /// `params`.
    Params(ParamsReport),
}

/// The answer to one request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    /// NLB's return code (serialised as its number).
    pub code: ReturnCode,
    /// Its name, e.g. `WLBS_OK`.
    pub status: String,
    /// A sentence for humans.
    pub message: String,
    /// The typed answer.
    pub body: Body,
}

impl Response {
    /// A response with `code`, `message` and `body`.
    pub fn new(code: ReturnCode, message: impl Into<String>, body: Body) -> Self {
        Self {
            code,
            status: code.name().to_string(),
            message: message.into(),
            body,
        }
    }
}

fn to_line<T: Serialize>(v: &T) -> String {
    let mut s = serde_json::to_string(v).unwrap_or_else(|e| {
        // Our types always serialise; keep the wire total anyway.
        format!("{{\"error\":{:?}}}", e.to_string())
    });
    s.push('\n');
    s
}

fn from_line<'a, T: Deserialize<'a>>(line: &'a str) -> Result<T, AdminError> {
    if line.len() > MAX_LINE {
        return Err(AdminError::TooLong);
    }
    serde_json::from_str(line.trim_end_matches(['\n', '\r']))
        .map_err(|e| AdminError::Json(e.to_string()))
}

/// A request as one line of JSON (newline included).
pub fn encode_request(r: &Request) -> String {
    to_line(r)
}

/// Reads a request line.
///
/// # Errors
/// Too long or not a request.
pub fn decode_request(line: &str) -> Result<Request, AdminError> {
    from_line(line)
}

/// A response as one line of JSON (newline included).
pub fn encode_response(r: &Response) -> String {
    to_line(r)
}

/// Reads a response line.
///
/// # Errors
/// Too long or not a response.
pub fn decode_response(line: &str) -> Result<Response, AdminError> {
    from_line(line)
}

fn ids(s: shoal_dataplane::HostSet) -> Vec<u8> {
    s.iter().map(HostId::get).collect()
}

impl Machine {
    fn rules_in(&self, scope: Scope) -> u32 {
        let mut m = 0u32;
        for (i, r) in self.spec.rules.iter().enumerate().take(MAX_RULES) {
            let hit = match scope {
                Scope::All => true,
                Scope::Rule { vip, port } => {
                    vip.is_none_or(|v| r.vip.is_none_or(|rv| rv == v))
                        && port.is_none_or(|p| r.port_start <= p && p <= r.port_end)
                }
            };
            if hit {
                m |= 1 << i;
            }
        }
        m
    }

    fn query_report(&self, now: u64) -> QueryReport {
        let (members, epoch) = self
            .adopted_view()
            .map_or((shoal_dataplane::HostSet::EMPTY, 0), |(v, e)| {
                (v.members, e)
            });
        let dups: shoal_dataplane::HostSet = self
            .membership
            .live_peers()
            .map(|p| p.latest.host)
            .filter(|h| self.membership.is_duplicate(*h, now))
            .collect();
        QueryReport {
            host: self.host().get(),
            state: self.state(),
            phase: self.phase(),
            members: ids(members),
            epoch,
            default_host: members.first().map(HostId::get),
            excluded_rule_mismatch: ids(self.mismatched()),
            excluded_duplicate_id: ids(dups),
            outvoted: self.standing() == Standing::Outvoted,
            duplicate_id: self.membership.sees_duplicate(now),
            stepped_back_duplicate_id: self.standing() == Standing::DuplicateId,
            last_convergence_ns: self.last_convergence_ns,
            blocked_reason: self.lone_view_withheld_because().map(|w| w.to_string()),
            counters: self.counters().clone(),
            services: None,
            rules_left: (0..self.spec.rules.len())
                .filter_map(|r| {
                    self.rule_left(r).map(|why| RuleLeft {
                        rule: r,
                        reason: why.as_str().to_string(),
                    })
                })
                .collect(),
            rule_health: None,
            frames: None,
        }
    }

    fn port_reports(&self, mask: u32) -> Vec<PortReport> {
        let draining = self.draining_mask();
        let load = self.local_load();
        self.spec
            .rules
            .iter()
            .enumerate()
            .filter(|(i, _)| mask & (1 << i) != 0)
            .map(|(i, r)| PortReport {
                rule: i,
                vip: r.vip,
                port_start: r.port_start,
                port_end: r.port_end,
                status: if self.settings.disabled & (1 << i) != 0 {
                    "disabled"
                } else if draining & (1 << i) != 0 {
                    "draining"
                } else if self.rule_left(i).is_some() {
                    "left"
                } else {
                    "enabled"
                }
                .to_string(),
                weight: self.settings.weights[i],
                descriptors: load[i],
            })
            .collect()
    }

    fn params_report(&self) -> ParamsReport {
        ParamsReport {
            host: self.host().get(),
            boot_id: self.cfg.boot_id,
            period_ms: self.cfg.period_ns / 1_000_000,
            tolerance: self.cfg.tolerance,
            converge_periods: self.cfg.converge_periods,
            drain_timeout_s: self.cfg.drain_timeout_ns / 1_000_000_000,
            fingerprint: format!("{:016x}", self.fingerprint()),
            rules: self.spec.rules.len(),
        }
    }

    fn state_code(&self) -> ReturnCode {
        match self.state() {
            HostState::Converging => ReturnCode::Converging,
            HostState::Draining => ReturnCode::Draining,
            HostState::Stopped => ReturnCode::Stopped,
            HostState::Suspended => ReturnCode::Suspended,
            HostState::Converged => {
                let default =
                    self.adopted_view().and_then(|(v, _)| v.members.first()) == Some(self.host());
                if default {
                    ReturnCode::Default
                } else {
                    ReturnCode::Converged
                }
            }
        }
    }

    /// Applies an admin verb at `now` and answers it.
    pub fn handle_admin(&mut self, req: &Request, now: u64) -> Response {
        use ReturnCode as C;
        let suspended = self.settings.admin == Admin::Suspended;
        let passive = matches!(
            req,
            Request::Query | Request::Display | Request::Params | Request::Resume
        );
        if suspended && !passive {
            return Response::new(C::Suspended, "host is suspended; resume first", Body::None);
        }
        let resp = match req {
            Request::Query => {
                let q = self.query_report(now);
                let mut msg = format!("host {} {:?}", q.host, q.state);
                if let Some(why) = &q.blocked_reason {
                    msg.push_str("; ");
                    msg.push_str(why);
                }
                Response::new(self.state_code(), msg, Body::Query(q))
            }
            Request::Queryport { scope } => {
                let mask = self.rules_in(*scope);
                if mask == 0 {
                    Response::new(C::NotFound, "no port rule covers it", Body::None)
                } else {
                    Response::new(C::Ok, "", Body::Ports { rules: self.port_reports(mask) })
                }
            }
            Request::Start => {
                if self.settings.host_drain.is_some() {
                    self.settings.host_drain = None;
                    Response::new(C::DrainStop, "drainstop interrupted; host started", Body::None)
                } else if self.settings.admin == Admin::Started {
                    Response::new(C::Already, "already started", Body::None)
                } else {
                    self.restart_participation();
                    Response::new(C::Ok, "cluster operations started", Body::None)
                }
            }
            Request::Stop => {
                if self.settings.admin == Admin::Stopped {
                    Response::new(C::Already, "already stopped", Body::None)
                } else {
                    let was_draining = self.settings.host_drain.take().is_some();
                    self.settings.admin = Admin::Stopped;
                    if was_draining {
                        Response::new(C::DrainStop, "drainstop interrupted; host stopped", Body::None)
                    } else {
                        Response::new(C::Ok, "cluster operations stopped", Body::None)
                    }
                }
            }
            Request::Drainstop => {
                if self.settings.admin == Admin::Stopped {
                    Response::new(C::Stopped, "host is stopped", Body::None)
                } else if self.settings.host_drain.is_some() {
                    Response::new(C::Already, "already draining", Body::None)
                } else {
                    self.settings.host_drain = Some(now);
                    Response::new(C::Ok, "draining; the host stops when its connections end", Body::None)
                }
            }
            Request::Suspend => {
                self.settings.host_drain = None;
                self.settings.admin = Admin::Suspended;
                Response::new(C::Ok, "cluster operations suspended", Body::None)
            }
            Request::Resume => {
                if suspended {
                    self.settings.admin = Admin::Stopped;
                    Response::new(C::Ok, "resumed; the host is stopped", Body::None)
                } else {
                    Response::new(C::Already, "not suspended", Body::None)
                }
            }
            Request::Enable { scope } | Request::Disable { scope } | Request::Drain { scope } => {
                let mask = self.rules_in(*scope);
                if mask == 0 {
                    Response::new(C::NotFound, "no port rule covers it", Body::None)
                } else if self.settings.admin == Admin::Stopped {
                    Response::new(C::Stopped, "host is stopped", Body::None)
                } else {
                    let before = (self.settings.disabled, self.draining_mask());
                    for r in 0..self.spec.rules.len().min(MAX_RULES) {
                        if mask & (1 << r) == 0 {
                            continue;
                        }
                        match req {
                            Request::Enable { .. } => {
                                self.settings.disabled &= !(1 << r);
                                self.settings.draining[r] = None;
                            }
                            Request::Disable { .. } => {
                                self.settings.disabled |= 1 << r;
                                self.settings.draining[r] = None;
                            }
                            _ => {
                                if self.settings.disabled & (1 << r) == 0
                                    && self.settings.draining[r].is_none()
                                {
                                    self.settings.draining[r] = Some(now);
                                }
                            }
                        }
                    }
                    if before == (self.settings.disabled, self.draining_mask()) {
                        Response::new(C::Already, "no change", Body::None)
                    } else {
                        Response::new(C::Ok, "", Body::Ports { rules: self.port_reports(mask) })
                    }
                }
            }
            Request::Display => {
                let peers = self
                    .membership
                    .live_peers()
                    .map(|p| PeerReport {
                        host: p.latest.host.get(),
                        state: p.latest.state,
                        phase: p.latest.phase,
                        last_heard_ns_ago: now.saturating_sub(p.last_heard),
                        rules_match: p.latest.fingerprint == self.fingerprint(),
                        duplicate_id: self.membership.is_duplicate(p.latest.host, now),
                    })
                    .collect();
                Response::new(
                    self.state_code(),
                    "",
                    Body::Display {
                        query: self.query_report(now),
                        rules: self.port_reports(u32::MAX),
                        peers,
                        params: self.params_report(),
                    },
                )
            }
            Request::Params => Response::new(C::Ok, "", Body::Params(self.params_report())),
            Request::Reload => Response::new(
                C::BadParams,
                "reload is carried out by the engine, which reads the config and calls handle_reload",
                Body::None,
            ),
        };
        self.settings_changed(now);
        resp
    }
}

/// Whether a response code means the verb did what was asked (for CLI exit
/// status: 0 for these, the code's low byte otherwise is the engine's call).
pub fn succeeded(code: ReturnCode) -> bool {
    matches!(
        code,
        ReturnCode::Ok
            | ReturnCode::Already
            | ReturnCode::Converged
            | ReturnCode::Converging
            | ReturnCode::Default
            | ReturnCode::Draining
            | ReturnCode::DrainStop
    )
}
