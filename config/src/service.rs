//! `[[service]]`: the array tier's services, and how a CARP service's
//! member set is built from the configuration.
//!
//! Owns: [`ServiceSection`], [`CarpSection`], [`StickySection`],
//! [`ClbSection`] and the conversions to the dataplane's [`Router`].
//! Guarantees: a section that came out of
//! [`crate::parse`] builds a router for any non-empty set of its members
//! (names unique, squid shares in range, at most 64 members).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;

use shoal_dataplane::array::sticky::{Policy as StickyPolicy, TrustedNet};
use shoal_dataplane::array::{
    Carp, CarpError, DomainPattern, HashMode, KeyParts, MemberSpec, Policy, Router,
};
use shoal_dataplane::{HostId, HostSet};

use crate::Config;

/// Accepted service ports.
pub const SERVICE_PORT_RANGE: RangeInclusive<i64> = 1..=65_535;
/// Accepted CARP load factors.
pub const LOAD_FACTOR_RANGE: RangeInclusive<i64> = 0..=1000;
/// Default CARP load factor.
pub const DEFAULT_LOAD_FACTOR: u32 = 1;
/// Accepted `list_ttl_s` (up to one day).
pub const LIST_TTL_RANGE: RangeInclusive<i64> = 1..=86_400;
/// Default `list_ttl_s`.
pub const DEFAULT_LIST_TTL_S: u32 = 300;
/// Longest service, member, parent and array name.
pub const MAX_NAME_LEN: usize = 255;
/// Accepted `connect_timeout_ms` (up to one minute).
pub const CONNECT_TIMEOUT_RANGE: RangeInclusive<i64> = 1..=60_000;
/// Accepted `first_byte_timeout_ms` (up to ten minutes).
pub const FIRST_BYTE_TIMEOUT_RANGE: RangeInclusive<i64> = 1..=600_000;
/// Accepted `idle_timeout_s` (up to one hour).
pub const IDLE_TIMEOUT_RANGE: RangeInclusive<i64> = 1..=3_600;
/// Accepted `max_connections`.
pub const MAX_CONNECTIONS_RANGE: RangeInclusive<i64> = 1..=1_000_000;
/// Accepted `connect_ports` entries.
pub const CONNECT_PORT_RANGE: RangeInclusive<i64> = 1..=65_535;
/// Accepted `max_head_bytes` (1 KiB to 1 MiB).
pub const MAX_HEAD_BYTES_RANGE: RangeInclusive<i64> = 1_024..=1_048_576;
/// Accepted `max_uri_bytes` (at most `max_head_bytes` too, and under the
/// HTTP library's own bound of 65,534).
pub const MAX_URI_BYTES_RANGE: RangeInclusive<i64> = 64..=65_000;
/// Accepted `max_headers`.
pub const MAX_HEADERS_RANGE: RangeInclusive<i64> = 1..=1_000;
/// Accepted `probe_interval_ms` (100 ms to one minute).
pub const PROBE_INTERVAL_RANGE: RangeInclusive<i64> = 100..=60_000;
/// Accepted `down_ttl_ms` (up to one hour).
pub const DOWN_TTL_RANGE: RangeInclusive<i64> = 0..=3_600_000;
/// Default `probe_interval_ms`.
pub const DEFAULT_PROBE_INTERVAL_MS: u32 = 1_000;
/// Default `down_ttl_ms`.
pub const DEFAULT_DOWN_TTL_MS: u32 = 5_000;

/// Accepted `poll_ms` of a CLB service (10 ms to one minute).
pub const POLL_RANGE: RangeInclusive<i64> = 10..=60_000;
/// Default `poll_ms` (Application Center's 200 ms).
pub const DEFAULT_POLL_MS: u32 = 200;
/// Accepted `probe_timeout_ms`.
pub const PROBE_TIMEOUT_RANGE: RangeInclusive<i64> = 1..=60_000;
/// Default `probe_timeout_ms`.
pub const DEFAULT_PROBE_TIMEOUT_MS: u32 = 100;
/// Accepted `decay_ms` (peak-EWMA's time constant).
pub const DECAY_RANGE: RangeInclusive<i64> = 1..=600_000;
/// Default `decay_ms`.
pub const DEFAULT_DECAY_MS: u32 = 10_000;
/// Accepted `retries` (further back ends tried after a refusal).
pub const RETRIES_RANGE: RangeInclusive<i64> = 0..=8;
/// Default `retries`.
pub const DEFAULT_RETRIES: u32 = 2;
/// Default `fall`.
pub const DEFAULT_FALL: u32 = 3;
/// Default `rise`.
pub const DEFAULT_RISE: u32 = 2;
/// Accepted `eject_ms` (up to one hour).
pub const EJECT_RANGE: RangeInclusive<i64> = 0..=3_600_000;
/// Default `eject_ms`.
pub const DEFAULT_EJECT_MS: u32 = 5_000;
/// Accepted back-end `weight`.
pub const BACKEND_WEIGHT_RANGE: RangeInclusive<i64> = 1..=1_000;
/// Most `[[service.backend]]` of one service.
pub const MAX_BACKENDS: usize = shoal_dataplane::array::MAX_BACKENDS;
/// Default `probe`.
pub const DEFAULT_PROBE: &str = "GET /";

/// One `[[service]]`.
#[derive(Clone, Debug, PartialEq)]
pub struct ServiceSection {
    /// Unique service name.
    pub name: String,
    /// TCP port served on every VIP and on each host's dedicated address.
    pub port: u16,
    /// How requests are routed.
    pub route: ServiceRoute,
    /// Timeouts and limits of the proxy serving it.
    pub limits: ServiceLimits,
}

/// A service's operator limits: timeouts, connection and head bounds,
/// CONNECT ports. [`Default`] holds the documented defaults.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceLimits {
    /// `connect_timeout_ms`: connecting to an owner, parent or `local`.
    pub connect_timeout_ms: u32,
    /// `first_byte_timeout_ms`: the response head must start within this
    /// after the request was sent (else 504).
    pub first_byte_timeout_ms: u32,
    /// `idle_timeout_s`: keep-alive idle time, both sides, and how long a
    /// `CONNECT` tunnel may carry nothing either way.
    pub idle_timeout_s: u32,
    /// `max_connections`: client connections per host (beyond: 503).
    pub max_connections: u32,
    /// `connect_ports`: the ports CONNECT may reach (empty: no CONNECT).
    pub connect_ports: Vec<u16>,
    /// `max_head_bytes`: largest request head (431 beyond).
    pub max_head_bytes: u32,
    /// `max_uri_bytes`: longest request target (414 beyond); at most
    /// `max_head_bytes`.
    pub max_uri_bytes: u32,
    /// `max_headers`: most header fields in a request head (431 beyond).
    pub max_headers: u32,
}

impl Default for ServiceLimits {
    fn default() -> Self {
        Self {
            connect_timeout_ms: 2_000,
            first_byte_timeout_ms: 15_000,
            idle_timeout_s: 60,
            max_connections: 10_000,
            connect_ports: vec![443],
            max_head_bytes: 16_384,
            max_uri_bytes: 8_192,
            max_headers: 100,
        }
    }
}

/// `route` and its settings.
#[derive(Clone, Debug, PartialEq)]
pub enum ServiceRoute {
    /// `route = "carp"` with `[service.carp]`.
    Carp(CarpSection),
    /// `route = "sticky"` with `[service.sticky]`.
    Sticky(Box<StickySection>),
    /// `route = "clb"` with `[[service.backend]]`.
    Clb(ClbSection),
}

/// A `route = "clb"` service's settings (keys of the `[[service]]` itself).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClbSection {
    /// `policy` (default `peak_ewma`).
    pub policy: Policy,
    /// `[[service.backend]]`, in file order.
    pub backends: Vec<BackendSection>,
    /// `poll_ms`: time between probe rounds.
    pub poll_ms: u32,
    /// `probe`: the request each poll sends, `"METHOD /path"`.
    pub probe: ProbeRequest,
    /// `probe_timeout_ms`: a probe not answered by then failed.
    pub probe_timeout_ms: u32,
    /// `decay_ms`: peak-EWMA's time constant.
    pub decay_ms: u32,
    /// `retries`: other back ends tried after a refusal or reset before
    /// any request byte was sent.
    pub retries: u32,
    /// `fall`: consecutive request failures that eject a back end.
    pub fall: u32,
    /// `rise`: consecutive answered probes that bring it back.
    pub rise: u32,
    /// `eject_ms`: how long an ejection lasts at least.
    pub eject_ms: u32,
}

/// One `[[service.backend]]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendSection {
    /// Where the back end listens.
    pub address: SocketAddr,
    /// Relative share (default 1).
    pub weight: u32,
}

/// `probe = "METHOD /path"`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeRequest {
    /// An HTTP method token.
    pub method: String,
    /// An origin-form target (starts with `/`).
    pub path: String,
}

impl ProbeRequest {
    /// Parses `"METHOD /path"`; the reason when it is not that.
    pub fn parse(text: &str) -> Result<ProbeRequest, String> {
        let mut parts = text.split(' ');
        let (Some(method), Some(path), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(format!("\"{text}\" is not \"METHOD /path\" (one space)"));
        };
        let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
        if method.is_empty() || !method.bytes().all(token) {
            return Err(format!("\"{method}\" is not an HTTP method"));
        }
        if !path.starts_with('/') || !path.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(format!(
                "\"{path}\" is not a path (starts with /, printable ASCII)"
            ));
        }
        Ok(ProbeRequest {
            method: method.to_string(),
            path: path.to_string(),
        })
    }
}

impl std::fmt::Display for ProbeRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.method, self.path)
    }
}

/// Accepted `hop_limit`.
pub const HOP_LIMIT_RANGE: RangeInclusive<i64> = 1..=8;
/// Accepted `cookie_max_age_s` (one minute to a year).
pub const COOKIE_MAX_AGE_RANGE: RangeInclusive<i64> = 60..=31_536_000;

/// `[service.sticky]`: sticky sessions with the request forwarder.
#[derive(Clone, Debug, PartialEq)]
pub struct StickySection {
    /// Where this member serves its own requests (`local`).
    pub local: SocketAddr,
    /// The cookie's name (`cookie`, default `RQFW`).
    pub cookie: String,
    /// `cookie_max_age_s`: a cookie older than this is refused (and the
    /// `Max-Age` it is set with).
    pub cookie_max_age_s: u32,
    /// `coherence`, `session_cookies`, `static`, `controller`,
    /// `on_owner_failure`, `hop_limit` and the `ocf` names.
    pub policy: StickyPolicy,
    /// `[[service.sticky.ocf]]`: out-of-cluster members, name and address
    /// (the order of [`StickyPolicy::ocf`]).
    pub ocf: Vec<OcfMember>,
    /// `trusted_proxies`: peers whose forwarding fields are believed.
    pub trusted_proxies: Vec<TrustedNet>,
    /// `tls = { cert, key }`: PEM files; the service terminates TLS.
    pub tls: Option<TlsFiles>,
    /// `backend_tls`: hops between members over TLS.
    pub backend_tls: bool,
    /// The member set as the array tier tracks it: the cluster's hosts,
    /// each serving its own requests at `local`, health-probed every
    /// `probe_interval_ms` like a CARP service with `members = "cluster"`.
    pub array: CarpSection,
}

/// One out-of-cluster member a cookie may name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OcfMember {
    /// The name cookies carry.
    pub name: String,
    /// Where to forward its requests.
    pub address: SocketAddr,
}

/// A certificate chain and its private key, PEM files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// `cert`.
    pub cert: std::path::PathBuf,
    /// `key`.
    pub key: std::path::PathBuf,
}

/// `[service.carp]`.
#[derive(Clone, Debug, PartialEq)]
pub struct CarpSection {
    /// Hash mode (default `spec`).
    pub hash: HashMode,
    /// URL parts hashed (default all).
    pub key: KeyParts,
    /// Who the members are.
    pub members: CarpMembers,
    /// Hosts served by the receiving member, never routed.
    pub exceptions: Vec<DomainPattern>,
    /// Hosts the PAC script sends DIRECT.
    pub direct: Vec<DomainPattern>,
    /// `ListTTL` of the membership table, seconds.
    pub list_ttl_s: u32,
    /// `ArrayName` of the membership table (default: the service name).
    pub array_name: String,
    /// `probe_interval_ms`: how often members, parents and `local` are
    /// health-probed.
    pub probe_interval_ms: u32,
    /// `down_ttl_ms`: how long a member that failed on the request path
    /// stays down before it is probed back.
    pub down_ttl_ms: u32,
}

/// `members` and what it brings.
#[derive(Clone, Debug, PartialEq)]
pub enum CarpMembers {
    /// `"cluster"`: the cluster's hosts; each sends the URLs it owns to its
    /// `local` cache.
    Cluster {
        /// The local cache every host sends its own URLs to.
        local: SocketAddr,
        /// Per-host load factors; hosts not named have
        /// [`DEFAULT_LOAD_FACTOR`].
        load_factors: BTreeMap<HostId, u32>,
    },
    /// `"parents"`: upstream proxies (hierarchical CARP).
    Parents(Vec<ParentSection>),
}

/// One `[[service.carp.parent]]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParentSection {
    /// The name hashed.
    pub name: String,
    /// Where the parent listens.
    pub address: SocketAddr,
    /// Relative load.
    pub load_factor: u32,
}

/// A CARP member resolved from the configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CarpMember {
    /// The host, for `members = "cluster"`.
    pub host: Option<HostId>,
    /// The name hashed.
    pub name: String,
    /// Where to reach it: the host's first dedicated address and the
    /// service port, or the parent's address.
    pub address: Option<SocketAddr>,
    /// Relative load.
    pub load_factor: u32,
}

impl Config {
    /// The member name of host `id`: its `name`, else its first dedicated
    /// address; `None` when it has neither.
    pub fn member_name(&self, id: HostId) -> Option<String> {
        let host = self.host(id)?;
        host.name
            .clone()
            .or_else(|| host.dedicated.first().map(|c| c.addr().to_string()))
    }

    /// The `[[service]]` named `name`.
    pub fn service(&self, name: &str) -> Option<&ServiceSection> {
        self.services.iter().find(|s| s.name == name)
    }
}

impl ServiceSection {
    /// The CARP settings: a CARP service's, and for a sticky service its
    /// member set as a CARP service over the cluster (see
    /// [`StickySection::array`]); `None` for a CLB service.
    pub fn carp(&self) -> Option<&CarpSection> {
        match &self.route {
            ServiceRoute::Carp(c) => Some(c),
            ServiceRoute::Sticky(s) => Some(&s.array),
            ServiceRoute::Clb(_) => None,
        }
    }

    /// The sticky settings, for `route = "sticky"`.
    pub fn sticky(&self) -> Option<&StickySection> {
        match &self.route {
            ServiceRoute::Sticky(s) => Some(&**s),
            _ => None,
        }
    }

    /// The CLB settings (`None` for another route).
    pub fn clb(&self) -> Option<&ClbSection> {
        match &self.route {
            ServiceRoute::Clb(c) => Some(c),
            _ => None,
        }
    }

    /// The CARP members: for `"cluster"`, the hosts in `members` (every
    /// configured host when `None`) by host ID; for `"parents"`, every
    /// parent in file order.
    /// Empty for a service of another route.
    pub fn carp_members(&self, config: &Config, members: Option<HostSet>) -> Vec<CarpMember> {
        let Some(carp) = self.carp() else {
            return Vec::new();
        };
        match &carp.members {
            CarpMembers::Cluster { load_factors, .. } => config
                .hosts
                .iter()
                .filter(|h| members.is_none_or(|set| set.contains(h.id)))
                .map(|h| CarpMember {
                    host: Some(h.id),
                    name: config.member_name(h.id).unwrap_or_default(),
                    address: h
                        .dedicated
                        .first()
                        .map(|c| SocketAddr::new(c.addr(), self.port)),
                    load_factor: load_factors
                        .get(&h.id)
                        .copied()
                        .unwrap_or(DEFAULT_LOAD_FACTOR),
                })
                .collect(),
            CarpMembers::Parents(parents) => parents
                .iter()
                .map(|p| CarpMember {
                    host: None,
                    name: p.name.clone(),
                    address: Some(p.address),
                    load_factor: p.load_factor,
                })
                .collect(),
        }
    }

    /// The router over `members` (see [`ServiceSection::carp_members`]);
    /// a service of another route routes with CARP's defaults.
    pub fn router(&self, members: &[CarpMember]) -> Result<Router, CarpError> {
        let default = CarpSection {
            hash: HashMode::Spec,
            key: KeyParts::ALL,
            members: CarpMembers::Parents(Vec::new()),
            exceptions: Vec::new(),
            direct: Vec::new(),
            list_ttl_s: DEFAULT_LIST_TTL_S,
            array_name: self.name.clone(),
            probe_interval_ms: DEFAULT_PROBE_INTERVAL_MS,
            down_ttl_ms: DEFAULT_DOWN_TTL_MS,
        };
        let carp = self.carp().unwrap_or(&default);
        let specs: Vec<MemberSpec> = members
            .iter()
            .map(|m| MemberSpec::new(m.name.clone(), m.load_factor))
            .collect();
        let mut router = Router::new(Carp::new(carp.hash, carp.key, &specs)?);
        router.exceptions = carp.exceptions.clone();
        router.direct = carp.direct.clone();
        Ok(router)
    }
}

/// Whether `name` can be a member, parent, service or array name: 1 to
/// [`MAX_NAME_LEN`] printable ASCII bytes without spaces (it is one field of
/// a membership table line and a PAC string).
pub fn name_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("must not be empty".into());
    }
    if name.len() > MAX_NAME_LEN {
        return Some(format!("{} bytes; at most {MAX_NAME_LEN}", name.len()));
    }
    if !name.bytes().all(|b| b.is_ascii_graphic()) {
        return Some(format!(
            "{name:?}: only printable ASCII without spaces is allowed"
        ));
    }
    None
}

/// Whether `ip` can be reached as a member or parent address.
pub(crate) fn unroutable(ip: IpAddr) -> bool {
    ip.is_unspecified() || ip.is_multicast()
}
