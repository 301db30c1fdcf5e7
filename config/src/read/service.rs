//! The schema walk for `[[service]]` and host member names.
//!
//! Same guarantees as the rest of the walk: every problem is reported with
//! its line and key path, and cross-checks (port rules, member names,
//! host IDs in `load_factors`) skip values that already failed.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use shoal_dataplane::array::{
    Carp, DomainPattern, HashMode, KeyPart, KeyParts, MemberSpec, Policy,
};
use shoal_dataplane::{FilterMode, HostId, Protocol};

use super::{HostDraft, Item, Node, Reader, Table};
use crate::frontend::FALL_RISE_RANGE;
use crate::sections::RuleSection;
use crate::service::*;

const SERVICE_KEYS: &[&str] = &[
    "name",
    "port",
    "route",
    "carp",
    "sticky",
    "connect_timeout_ms",
    "first_byte_timeout_ms",
    "idle_timeout_s",
    "max_connections",
    "connect_ports",
    "max_head_bytes",
    "max_uri_bytes",
    "max_headers",
    "backend",
    "policy",
    "poll_ms",
    "probe",
    "probe_timeout_ms",
    "decay_ms",
    "retries",
    "fall",
    "rise",
    "eject_ms",
];
/// The `[[service]]` keys that belong to `route = "clb"`.
const CLB_KEYS: &[&str] = &[
    "backend",
    "policy",
    "poll_ms",
    "probe",
    "probe_timeout_ms",
    "decay_ms",
    "retries",
    "fall",
    "rise",
    "eject_ms",
];
const BACKEND_KEYS: &[&str] = &["address", "weight"];
const CARP_KEYS: &[&str] = &[
    "hash",
    "key",
    "members",
    "local",
    "load_factors",
    "parent",
    "exceptions",
    "direct",
    "list_ttl_s",
    "array_name",
    "probe_interval_ms",
    "down_ttl_ms",
];
const PARENT_KEYS: &[&str] = &["name", "address", "load_factor"];
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RouteKind {
    Carp,
    Sticky,
    Clb,
}
const ROUTES: &[(&str, RouteKind)] = &[
    ("carp", RouteKind::Carp),
    ("sticky", RouteKind::Sticky),
    ("clb", RouteKind::Clb),
];
const MEMBER_KINDS: &[(&str, bool)] = &[("cluster", true), ("parents", false)];

impl Reader<'_, '_> {
    /// Every `[[service]]`, checked against the hosts and the final rules.
    pub(super) fn services(
        &mut self,
        root: &Table<'_>,
        hosts: &[HostDraft],
        hosts_sound: bool,
        rules: &[RuleSection],
    ) -> Vec<ServiceSection> {
        let items = self.table_array(root, "service");
        let mut out: Vec<ServiceSection> = Vec::new();
        let mut cluster_service = None;
        for (i, item) in items.iter().enumerate() {
            let index = i + 1;
            let Some(t) = self.as_table(item, format!("service[{index}]"), SERVICE_KEYS) else {
                continue;
            };
            let name = self.name_key(&t, "name");
            if let Some(n) = &name {
                if out.iter().any(|s| &s.name == n) {
                    let span = t.entry("name").map_or(t.span.start, |e| e.item.span.start);
                    self.diag.at(
                        span,
                        t.key_path("name"),
                        format!("another [[service]] is named {n:?}"),
                    );
                }
            }
            let port = match t.entry("port") {
                None => {
                    self.missing(&t, "port");
                    None
                }
                Some(e) => self
                    .int_item(&e.item, &t.key_path("port"), &SERVICE_PORT_RANGE)
                    .ok()
                    .map(|p| (p as u16, e.item.span.start)),
            };
            if let Some((p, span)) = port {
                if let Some(other) = out.iter().find(|s| s.port == p) {
                    self.diag.at(
                        span,
                        t.key_path("port"),
                        format!("port {p} is already service {:?}'s", other.name),
                    );
                } else if !rules.iter().any(|r| covers(r, p)) {
                    self.diag.at(
                        span,
                        t.key_path("port"),
                        format!("no [[rule]] covers TCP port {p}; add one that does (mode multiple or single)"),
                    );
                }
            }
            let route = match t.entry("route") {
                None => {
                    self.missing(&t, "route");
                    None
                }
                Some(e) => self.choice_item(&e.item, &t.key_path("route"), ROUTES),
            };
            if route.is_some() && route != Some(RouteKind::Clb) {
                self.only_for_clb(&t);
            }
            if route.is_some() && route != Some(RouteKind::Sticky) {
                if let Some(e) = t.entry("sticky") {
                    self.diag.at(
                        e.key_span.start,
                        t.key_path("sticky"),
                        "[service.sticky] needs route = \"sticky\"",
                    );
                }
            }
            if route.is_some() && route != Some(RouteKind::Carp) {
                if let Some(e) = t.entry("carp") {
                    self.diag.at(
                        e.key_span.start,
                        t.key_path("carp"),
                        "[service.carp] needs route = \"carp\"",
                    );
                }
            }
            let section = match route {
                Some(RouteKind::Carp) | None => match (route, t.entry("carp")) {
                    (Some(_), None) => {
                        self.missing(&t, "carp");
                        None
                    }
                    (_, Some(e)) => self
                        .carp(&e.item, &t.key_path("carp"), hosts, hosts_sound)
                        .map(|(c, span)| (ServiceRoute::Carp(c), span)),
                    (None, None) => None,
                },
                Some(RouteKind::Sticky) => match t.entry("sticky") {
                    None => {
                        self.missing(&t, "sticky");
                        None
                    }
                    Some(e) => self
                        .sticky(&e.item, &t.key_path("sticky"))
                        .map(|(s, span)| (ServiceRoute::Sticky(Box::new(s)), span)),
                },
                Some(RouteKind::Clb) => self.clb(&t).map(|c| (ServiceRoute::Clb(c), t.span.start)),
            };
            let limits = self.limits(&t);
            if let Some((route, span)) = &section {
                let cluster = match route {
                    ServiceRoute::Carp(c) => matches!(c.members, CarpMembers::Cluster { .. }),
                    ServiceRoute::Sticky(_) => true,
                    ServiceRoute::Clb(_) => false,
                };
                if cluster {
                    cluster_service.get_or_insert(*span);
                }
            }
            if let (Some(name), Some((p, _)), Some((route, _))) = (name, port, section) {
                let route = match route {
                    ServiceRoute::Carp(mut carp) => {
                        if carp.array_name.is_empty() {
                            carp.array_name = name.clone();
                        }
                        ServiceRoute::Carp(carp)
                    }
                    ServiceRoute::Sticky(mut sticky) => {
                        sticky.array.array_name = name.clone();
                        ServiceRoute::Sticky(sticky)
                    }
                    clb @ ServiceRoute::Clb(_) => clb,
                };
                out.push(ServiceSection {
                    name,
                    port: p,
                    route,
                    limits,
                });
            }
        }
        if let Some(span) = cluster_service {
            self.member_names(hosts, hosts_sound, span, &out);
        }
        out
    }

    /// Reports each CLB key on a service of another route.
    fn only_for_clb(&mut self, t: &Table<'_>) {
        for key in CLB_KEYS {
            if let Some(e) = t.entry(key) {
                self.diag.at(
                    e.key_span.start,
                    t.key_path(key),
                    "only for route = \"clb\"",
                );
            }
        }
    }

    /// A `route = "clb"` service's keys and `[[service.backend]]`.
    fn clb(&mut self, t: &Table<'_>) -> Option<ClbSection> {
        let errors = self.diag_len();
        let policy = self.choice(t, "policy", Policy::NAMES, Policy::PeakEwma);
        let probe = match t.entry("probe") {
            None => ProbeRequest::parse(DEFAULT_PROBE).ok(),
            Some(e) => {
                let key = t.key_path("probe");
                let text = self.string_item(&e.item, &key)?;
                match ProbeRequest::parse(text) {
                    Ok(p) => Some(p),
                    Err(why) => {
                        self.diag.at(e.item.span.start, key, why);
                        None
                    }
                }
            }
        };
        let section = ClbSection {
            policy,
            backends: self.backends(t),
            poll_ms: self.int(t, "poll_ms", &POLL_RANGE, DEFAULT_POLL_MS),
            probe: probe?,
            probe_timeout_ms: self.int(
                t,
                "probe_timeout_ms",
                &PROBE_TIMEOUT_RANGE,
                DEFAULT_PROBE_TIMEOUT_MS,
            ),
            decay_ms: self.int(t, "decay_ms", &DECAY_RANGE, DEFAULT_DECAY_MS),
            retries: self.int(t, "retries", &RETRIES_RANGE, DEFAULT_RETRIES),
            fall: self.int(t, "fall", &FALL_RISE_RANGE, DEFAULT_FALL),
            rise: self.int(t, "rise", &FALL_RISE_RANGE, DEFAULT_RISE),
            eject_ms: self.int(t, "eject_ms", &EJECT_RANGE, DEFAULT_EJECT_MS),
        };
        (self.diag_len() == errors).then_some(section)
    }

    fn backends(&mut self, t: &Table<'_>) -> Vec<BackendSection> {
        let mut out: Vec<BackendSection> = Vec::new();
        let items = self.tables_in(
            t,
            "backend",
            "service.backend",
            Some("route = \"clb\" needs at least one [[service.backend]]"),
        );
        if items.len() > MAX_BACKENDS {
            self.diag.at(
                items[MAX_BACKENDS].span.start,
                t.key_path("backend"),
                format!("{} back ends; at most {MAX_BACKENDS}", items.len()),
            );
        }
        for (i, item) in items.iter().enumerate().take(MAX_BACKENDS) {
            let path = format!("{}[{}]", t.key_path("backend"), i + 1);
            let Some(b) = self.as_table(item, path, BACKEND_KEYS) else {
                continue;
            };
            let address = match b.entry("address") {
                None => {
                    self.missing(&b, "address");
                    None
                }
                Some(e) => {
                    let a = self.socket_addr(&e.item, &b.key_path("address"));
                    if let Some(a) = a {
                        if out.iter().any(|o| o.address == a) {
                            self.diag.at(
                                e.item.span.start,
                                b.key_path("address"),
                                format!("{a} is another back end's too"),
                            );
                        }
                    }
                    a
                }
            };
            let weight = self.int(&b, "weight", &BACKEND_WEIGHT_RANGE, 1);
            if let Some(address) = address {
                out.push(BackendSection { address, weight });
            }
        }
        out
    }

    /// The service's operator limits, defaults filled in.
    fn limits(&mut self, t: &Table<'_>) -> ServiceLimits {
        let d = ServiceLimits::default();
        let max_head_bytes = self.int(t, "max_head_bytes", &MAX_HEAD_BYTES_RANGE, d.max_head_bytes);
        let mut max_uri_bytes = self.int(t, "max_uri_bytes", &MAX_URI_BYTES_RANGE, d.max_uri_bytes);
        if max_uri_bytes > max_head_bytes {
            if let Some(e) = t.entry("max_uri_bytes") {
                self.diag.at(
                    e.item.span.start,
                    t.key_path("max_uri_bytes"),
                    format!("{max_uri_bytes} is above max_head_bytes ({max_head_bytes}); the target is part of the head"),
                );
            }
            max_uri_bytes = max_head_bytes;
        }
        ServiceLimits {
            connect_timeout_ms: self.int(
                t,
                "connect_timeout_ms",
                &CONNECT_TIMEOUT_RANGE,
                d.connect_timeout_ms,
            ),
            first_byte_timeout_ms: self.int(
                t,
                "first_byte_timeout_ms",
                &FIRST_BYTE_TIMEOUT_RANGE,
                d.first_byte_timeout_ms,
            ),
            idle_timeout_s: self.int(t, "idle_timeout_s", &IDLE_TIMEOUT_RANGE, d.idle_timeout_s),
            max_connections: self.int(
                t,
                "max_connections",
                &MAX_CONNECTIONS_RANGE,
                d.max_connections,
            ),
            connect_ports: match t.entry("connect_ports") {
                None => d.connect_ports,
                Some(e) => self.connect_ports(&e.item, &t.key_path("connect_ports")),
            },
            max_head_bytes,
            max_uri_bytes,
            max_headers: self.int(t, "max_headers", &MAX_HEADERS_RANGE, d.max_headers),
        }
    }

    /// A list of distinct TCP ports (may be empty).
    fn connect_ports(&mut self, item: &Item, key: &str) -> Vec<u16> {
        let mut out: Vec<u16> = Vec::new();
        let Some(items) = self.array_item(item, key, "port numbers") else {
            return out;
        };
        for element in items {
            let Ok(p) = self.int_item(element, key, &CONNECT_PORT_RANGE) else {
                continue;
            };
            let p = p as u16;
            if out.contains(&p) {
                self.diag
                    .at(element.span.start, key, format!("port {p} is named twice"));
            } else {
                out.push(p);
            }
        }
        out
    }

    /// A required name key, checked with [`name_problem`].
    fn name_key(&mut self, t: &Table<'_>, key: &str) -> Option<String> {
        let Some(e) = t.entry(key) else {
            self.missing(t, key);
            return None;
        };
        let s = self.string_item(&e.item, &t.key_path(key))?;
        if let Some(why) = name_problem(s) {
            self.diag.at(e.item.span.start, t.key_path(key), why);
            return None;
        }
        Some(s.to_string())
    }

    /// `[service.carp]` and the span of its `members` (or of the table).
    fn carp(
        &mut self,
        item: &Item,
        path: &str,
        hosts: &[HostDraft],
        hosts_sound: bool,
    ) -> Option<(CarpSection, usize)> {
        let t = self.as_table(item, path.to_string(), CARP_KEYS)?;
        let errors = self.diag_len();
        let hash = self.choice(&t, "hash", HashMode::NAMES, HashMode::Spec);
        let key = match t.entry("key") {
            None => KeyParts::ALL,
            Some(e) => self.key_parts(&e.item, &t.key_path("key")),
        };
        let cluster = self.choice(&t, "members", MEMBER_KINDS, true);
        let members_span = t
            .entry("members")
            .map_or(t.span.start, |e| e.item.span.start);
        let members = if cluster {
            if let Some(e) = t.entry("parent") {
                self.diag.at(
                    e.key_span.start,
                    t.key_path("parent"),
                    "[[service.carp.parent]] needs members = \"parents\"",
                );
            }
            let local = match t.entry("local") {
                None => {
                    self.missing(&t, "local");
                    None
                }
                Some(e) => self.socket_addr(&e.item, &t.key_path("local")),
            };
            let load_factors = self.load_factors(&t, hosts, hosts_sound);
            local.map(|local| CarpMembers::Cluster {
                local,
                load_factors,
            })
        } else {
            for key in ["local", "load_factors"] {
                if let Some(e) = t.entry(key) {
                    self.diag.at(
                        e.key_span.start,
                        t.key_path(key),
                        "only for members = \"cluster\" (a parent has its own load_factor)",
                    );
                }
            }
            Some(CarpMembers::Parents(self.parents(&t)))
        };
        let exceptions = self.patterns(&t, "exceptions");
        let direct = self.patterns(&t, "direct");
        let list_ttl_s = self.int(&t, "list_ttl_s", &LIST_TTL_RANGE, DEFAULT_LIST_TTL_S);
        let array_name = match t.entry("array_name") {
            None => String::new(),
            Some(_) => self.name_key(&t, "array_name").unwrap_or_default(),
        };
        let probe_interval_ms = self.int(
            &t,
            "probe_interval_ms",
            &PROBE_INTERVAL_RANGE,
            DEFAULT_PROBE_INTERVAL_MS,
        );
        let down_ttl_ms = self.int(&t, "down_ttl_ms", &DOWN_TTL_RANGE, DEFAULT_DOWN_TTL_MS);
        let section = CarpSection {
            probe_interval_ms,
            down_ttl_ms,
            hash,
            key,
            members: members?,
            exceptions,
            direct,
            list_ttl_s,
            array_name,
        };
        if let (CarpMembers::Parents(parents), true) = (&section.members, self.diag_len() == errors)
        {
            let specs: Vec<MemberSpec> = parents
                .iter()
                .map(|p| MemberSpec::new(p.name.clone(), p.load_factor))
                .collect();
            if let Err(e) = Carp::new(hash, key, &specs) {
                self.diag
                    .at(members_span, t.key_path("parent"), e.to_string());
            }
        }
        Some((section, members_span))
    }

    fn key_parts(&mut self, item: &Item, key: &str) -> KeyParts {
        let Some(items) = self.array_item(item, key, "URL part names") else {
            return KeyParts::ALL;
        };
        let mut parts = KeyParts::NONE;
        for element in items {
            if let Some(part) = self.choice_item(element, key, KeyPart::NAMES) {
                if parts.contains(part) {
                    self.diag
                        .at(element.span.start, key, "a URL part is named twice");
                }
                parts = parts.with(part);
            }
        }
        if items.is_empty() {
            self.diag.at(
                item.span.start,
                key,
                "name at least one of \"scheme\", \"host\", \"port\", \"path\", \"query\"",
            );
            return KeyParts::ALL;
        }
        if parts.is_empty() {
            KeyParts::ALL
        } else {
            parts
        }
    }

    pub(super) fn socket_addr(&mut self, item: &Item, key: &str) -> Option<SocketAddr> {
        let text = self.string_item(item, key)?;
        match text.parse::<SocketAddr>() {
            Ok(a) if unroutable(a.ip()) || a.port() == 0 => {
                self.diag
                    .at(item.span.start, key, format!("{a} cannot be connected to"));
                None
            }
            Ok(a) => Some(a),
            Err(_) => {
                self.diag.at(
                    item.span.start,
                    key,
                    format!("\"{text}\" is not ADDRESS:PORT (IPv6: [ADDRESS]:PORT)"),
                );
                None
            }
        }
    }

    fn load_factors(
        &mut self,
        t: &Table<'_>,
        hosts: &[HostDraft],
        hosts_sound: bool,
    ) -> BTreeMap<HostId, u32> {
        let mut out = BTreeMap::new();
        let Some(e) = t.entry("load_factors") else {
            return out;
        };
        let key = t.key_path("load_factors");
        let Node::Table(entries) = &e.item.node else {
            self.diag.at(
                e.item.span.start,
                key,
                format!(
                    "expected a table of host ID = load factor, found {}",
                    e.item.node.kind()
                ),
            );
            return out;
        };
        for entry in entries {
            let k = format!("{key}.{}", entry.key);
            let Some(id) = entry.key.parse::<u8>().ok().and_then(HostId::new) else {
                self.diag
                    .at(entry.key_span.start, k, "expected a host ID in 1..=64");
                continue;
            };
            if hosts_sound && !hosts.iter().any(|h| h.section.id == id) {
                self.diag.at(
                    entry.key_span.start,
                    k,
                    format!("no [[host]] has id = {id}"),
                );
                continue;
            }
            if let Ok(v) = self.int_item(&entry.item, &k, &LOAD_FACTOR_RANGE) {
                out.insert(id, v as u32);
            }
        }
        out
    }

    fn parents(&mut self, t: &Table<'_>) -> Vec<ParentSection> {
        let mut out: Vec<ParentSection> = Vec::new();
        let items = self.tables_in(
            t,
            "parent",
            "service.carp.parent",
            Some("members = \"parents\" needs at least one [[service.carp.parent]]"),
        );
        for (i, item) in items.iter().enumerate() {
            let path = format!("{}[{}]", t.key_path("parent"), i + 1);
            let Some(p) = self.as_table(item, path, PARENT_KEYS) else {
                continue;
            };
            let name = self.name_key(&p, "name");
            if let Some(n) = &name {
                if out.iter().any(|o| o.name.eq_ignore_ascii_case(n)) {
                    let span = p.entry("name").map_or(p.span.start, |e| e.item.span.start);
                    self.diag.at(
                        span,
                        p.key_path("name"),
                        format!("another parent is named {n:?} (names ignore case)"),
                    );
                }
            }
            let address = match p.entry("address") {
                None => {
                    self.missing(&p, "address");
                    None
                }
                Some(e) => self.socket_addr(&e.item, &p.key_path("address")),
            };
            let load_factor = self.int(&p, "load_factor", &LOAD_FACTOR_RANGE, DEFAULT_LOAD_FACTOR);
            if let (Some(name), Some(address)) = (name, address) {
                out.push(ParentSection {
                    name,
                    address,
                    load_factor,
                });
            }
        }
        out
    }

    fn patterns(&mut self, t: &Table<'_>, key: &str) -> Vec<DomainPattern> {
        let mut out = Vec::new();
        let Some(e) = t.entry(key) else {
            return out;
        };
        let path = t.key_path(key);
        let Some(items) = self.array_item(&e.item, &path, "domain patterns") else {
            return out;
        };
        for element in items {
            let Some(text) = self.string_item(element, &path) else {
                continue;
            };
            match DomainPattern::parse(text) {
                Ok(p) => out.push(p),
                Err(why) => self.diag.at(element.span.start, &path, why.to_string()),
            }
        }
        out
    }

    /// Every host needs a unique member name when a service routes over
    /// the cluster; squid shares must be in range over all hosts.
    fn member_names(
        &mut self,
        hosts: &[HostDraft],
        hosts_sound: bool,
        span: usize,
        services: &[ServiceSection],
    ) {
        if !hosts_sound {
            return;
        }
        let mut seen: BTreeSet<String> = BTreeSet::new();
        let mut names = Vec::new();
        for h in hosts {
            let name = h
                .section
                .name
                .clone()
                .or_else(|| h.section.dedicated.first().map(|c| c.addr().to_string()));
            let key = format!("host[{}].name", h.index);
            match name {
                None => self.diag.at(
                    h.id_span.start,
                    key,
                    "a CARP service with members = \"cluster\" needs each host's member name: set name or a dedicated address",
                ),
                Some(n) => {
                    if !seen.insert(n.to_ascii_lowercase()) {
                        self.diag.at(
                            h.id_span.start,
                            key,
                            format!("member name {n:?} is another host's too (names ignore case)"),
                        );
                    }
                    names.push((h.section.id, n));
                }
            }
        }
        if names.len() != hosts.len() || seen.len() != hosts.len() {
            return;
        }
        for s in services {
            let Some(c) = s.carp() else {
                continue;
            };
            if let CarpMembers::Cluster { load_factors, .. } = &c.members {
                let specs: Vec<MemberSpec> = names
                    .iter()
                    .map(|(id, n)| {
                        MemberSpec::new(
                            n.clone(),
                            load_factors.get(id).copied().unwrap_or(DEFAULT_LOAD_FACTOR),
                        )
                    })
                    .collect();
                if let Err(e) = Carp::new(c.hash, c.key, &specs) {
                    self.diag
                        .at(span, format!("service {:?}", s.name), e.to_string());
                }
            }
        }
    }
}

/// Whether `rule` lets TCP port `port` through to the hosts.
fn covers(rule: &RuleSection, port: u16) -> bool {
    (rule.port_start..=rule.port_end).contains(&port)
        && rule.protocol != Protocol::Udp
        && rule.mode != FilterMode::Disabled
}
