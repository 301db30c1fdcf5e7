//! The schema walk: from the spanned TOML tree to a validated [`Config`].
//!
//! Owns: every check a configuration must pass. Guarantees: the walk never
//! stops at the first problem; it records each one with its line and key path
//! and carries on with a stand-in value, so one run reports everything. Checks
//! that relate two places (duplicate host IDs, rules naming hosts, overlapping
//! rules) run after every section has been read, and are skipped for values
//! that already failed their own check, so one mistake yields one error.
//!
//! The walk is one file, past the house's usual size, because it is one
//! pass over one tree: every section's reader shares the walker's
//! diagnostics, stand-in values and cross-section checks. The array tier's
//! `[[service]]` sections, which relate to the rest only through ports and
//! host names, are read in [`service`].

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::ops::{Range, RangeInclusive};
use std::path::{Path, PathBuf};

use shoal_dataplane::{
    Affinity, ClusterMode, FilterMode, HostId, PortRule, Protocol, MAX_HOSTS, MAX_RULES,
};

use crate::document::{self, Entry, Item, Node};
use crate::error::{ConfigErrors, Diagnostics};
use crate::sections::names::{self, RuleMode};
use crate::sections::*;
use crate::Config;

mod frontend;
mod service;
mod sticky;

/// Parses and validates `text`, read from `path`.
pub(crate) fn parse(text: &str, path: &Path) -> Result<Config, ConfigErrors> {
    let mut diag = Diagnostics::new(path, text);
    let root = match document::parse(text) {
        Ok(root) => root,
        Err(e) => {
            match e.span {
                Some(span) => diag.at(span.start, "syntax", e.message),
                None => diag.unplaced("syntax", e.message),
            }
            return Err(diag.into_errors());
        }
    };
    let config = Reader { diag: &mut diag }.config(&root, path);
    if diag.is_empty() {
        Ok(config)
    } else {
        Err(diag.into_errors())
    }
}

const ROOT_KEYS: &[&str] = &[
    "cluster",
    "heartbeat",
    "descriptors",
    "io",
    "admin",
    "metrics",
    "host",
    "rule",
    "service",
];
const CLUSTER_KEYS: &[&str] = &["vips", "mode", "key_file", "ipv6_network_prefix"];
const HEARTBEAT_KEYS: &[&str] = &["period_ms", "tolerance", "converge_periods"];
const ADMIN_KEYS: &[&str] = &["group"];
const METRICS_KEYS: &[&str] = &["listen"];
const DESCRIPTOR_KEYS: &[&str] = &[
    "capacity",
    "tcp_idle_timeout_s",
    "tcp_half_open_timeout_s",
    "tcp_closing_timeout_s",
    "gre_timeout_s",
    "udp_timeout_s",
];
const IO_KEYS: &[&str] = &[
    "backend",
    "ring_size",
    "frame_size",
    "batch_size",
    "idle",
    "xdp_mode",
    "delivery",
    "xdp_fast_path",
    "xdp_pass",
    "xdp_zero_copy",
];
const HOST_KEYS: &[&str] = &["id", "interface", "dedicated", "weight", "cores", "name"];
const CORES_KEYS: &[&str] = &["control", "poll", "proxy", "proxy_sched"];
const POLL_KEYS: &[&str] = &["core", "queues"];
const RULE_KEYS: &[&str] = &[
    "vip",
    "ports",
    "protocol",
    "mode",
    "affinity",
    "weights",
    "priorities",
    "extended_affinity_s",
    "instances",
    "instance_probe",
    "health",
    "hold_ms",
];

/// The entries of one table, with which of them the schema has consumed.
struct Table<'t> {
    path: String,
    span: Range<usize>,
    entries: &'t [Entry],
    known: &'static [&'static str],
}

impl<'t> Table<'t> {
    fn entry(&self, key: &str) -> Option<&'t Entry> {
        self.entries.iter().find(|e| e.key == key)
    }

    fn key_path(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{}", self.path, key)
        }
    }
}

/// A rule as read, with the spans that cross-checks point at.
struct RuleDraft {
    index: usize,
    span: Range<usize>,
    vip: Option<IpAddr>,
    vip_span: Option<Range<usize>>,
    port_start: u16,
    port_end: u16,
    protocol: Protocol,
    mode: FilterMode,
    /// `(host, value, key span)` overrides, in file order.
    weights: Vec<(HostId, u8, Range<usize>)>,
    priorities: Vec<(HostId, u8, Range<usize>)>,
    extended_affinity_s: u32,
    /// `instances`, `instance_probe`, `health`, `hold_ms`.
    frontend: frontend::FrontendDraft,
    /// Whether every field read cleanly; cross-checks skip broken rules.
    sound: bool,
}

/// A host as read, with the span of its ID.
struct HostDraft {
    /// 1-based position among the `[[host]]` sections.
    index: usize,
    section: HostSection,
    id_span: Range<usize>,
    dedicated_span: Range<usize>,
}

struct Reader<'d, 'p> {
    diag: &'d mut Diagnostics<'p>,
}

impl Reader<'_, '_> {
    fn config(&mut self, root: &[Entry], path: &Path) -> Config {
        let root = Table {
            path: String::new(),
            span: 0..0,
            entries: root,
            known: ROOT_KEYS,
        };
        self.unknown_keys(&root);

        let (cluster, vips_sound) = self.cluster(&root);
        let heartbeat = self.heartbeat(&root);
        let descriptors = self.descriptors(&root);
        let io = self.io(&root);
        let admin = self.admin(&root);
        let metrics = self.metrics(&root);
        let (mut hosts, hosts_sound) = self.hosts(&root, &cluster);
        let drafts = self.rules(&root);

        self.check_hosts(&hosts);
        hosts.sort_by_key(|h| h.section.id);
        let host_sections: Vec<HostSection> = hosts.iter().map(|h| h.section.clone()).collect();
        let rules = if drafts.is_empty() && root.entry("rule").is_none() {
            vec![RuleSection::nlb_default(&host_sections)]
        } else {
            self.check_rules(&drafts, &cluster, vips_sound, &hosts, hosts_sound)
        };
        let services = self.services(&root, &hosts, hosts_sound, &rules);

        Config {
            cluster,
            heartbeat,
            descriptors,
            io,
            admin,
            metrics,
            hosts: host_sections,
            rules,
            services,
            source: path.to_path_buf(),
        }
    }

    // ---- generic readers -------------------------------------------------

    fn unknown_keys(&mut self, table: &Table<'_>) {
        for e in table.entries {
            if !table.known.contains(&e.key.as_str()) {
                self.diag.at(
                    e.key_span.start,
                    table.key_path(&e.key),
                    format!(
                        "unknown key `{}`; expected one of: {}",
                        e.key,
                        table.known.join(", ")
                    ),
                );
            }
        }
    }

    /// Reads the sub-table `key` of `parent`; `None` when absent or not a table.
    fn table<'t>(
        &mut self,
        parent: &Table<'t>,
        key: &str,
        known: &'static [&'static str],
    ) -> Option<Table<'t>> {
        let entry = parent.entry(key)?;
        self.as_table(&entry.item, parent.key_path(key), known)
    }

    fn as_table<'t>(
        &mut self,
        item: &'t Item,
        path: String,
        known: &'static [&'static str],
    ) -> Option<Table<'t>> {
        match &item.node {
            Node::Table(entries) => {
                let t = Table {
                    path,
                    span: item.span.clone(),
                    entries,
                    known,
                };
                self.unknown_keys(&t);
                Some(t)
            }
            other => {
                self.diag.at(
                    item.span.start,
                    path,
                    format!("expected a table, found {}", other.kind()),
                );
                None
            }
        }
    }

    fn missing(&mut self, table: &Table<'_>, key: &str) {
        self.diag.at(
            table.span.start,
            table.key_path(key),
            "required key is missing",
        );
    }

    /// An integer in `range`; `Err(())` (already reported) when wrong.
    fn int_item(&mut self, item: &Item, key: &str, range: &RangeInclusive<i64>) -> Result<i64, ()> {
        match item.node {
            Node::Integer(v) if range.contains(&v) => Ok(v),
            Node::Integer(v) => {
                self.diag.at(
                    item.span.start,
                    key,
                    format!(
                        "{v} is out of range; expected {}..={}",
                        range.start(),
                        range.end()
                    ),
                );
                Err(())
            }
            ref other => {
                self.diag.at(
                    item.span.start,
                    key,
                    format!(
                        "expected an integer in {}..={}, found {}",
                        range.start(),
                        range.end(),
                        other.kind()
                    ),
                );
                Err(())
            }
        }
    }

    /// Optional integer `key` of `table` in `range`, converted to `T`;
    /// `default` when absent or wrong (wrong is reported).
    fn int<T: TryFrom<i64>>(
        &mut self,
        table: &Table<'_>,
        key: &str,
        range: &RangeInclusive<i64>,
        default: T,
    ) -> T {
        let Some(entry) = table.entry(key) else {
            return default;
        };
        match self.int_item(&entry.item, &table.key_path(key), range) {
            Ok(v) => T::try_from(v).unwrap_or(default),
            Err(()) => default,
        }
    }

    fn string_item<'t>(&mut self, item: &'t Item, key: &str) -> Option<&'t str> {
        match &item.node {
            Node::String(s) => Some(s),
            other => {
                self.diag.at(
                    item.span.start,
                    key,
                    format!("expected a string, found {}", other.kind()),
                );
                None
            }
        }
    }

    /// Optional boolean `key` of `table`; `default` when absent or wrong
    /// (wrong is reported).
    fn boolean(&mut self, table: &Table<'_>, key: &str, default: bool) -> bool {
        let Some(entry) = table.entry(key) else {
            return default;
        };
        match &entry.item.node {
            Node::Bool(v) => *v,
            other => {
                self.diag.at(
                    entry.item.span.start,
                    table.key_path(key),
                    format!("expected true or false, found {}", other.kind()),
                );
                default
            }
        }
    }

    /// Optional string setting `key` of `table` naming one of `choices`.
    fn choice<T: Copy>(
        &mut self,
        table: &Table<'_>,
        key: &str,
        choices: &[(&'static str, T)],
        default: T,
    ) -> T {
        let Some(entry) = table.entry(key) else {
            return default;
        };
        self.choice_item(&entry.item, &table.key_path(key), choices)
            .unwrap_or(default)
    }

    fn choice_item<T: Copy>(
        &mut self,
        item: &Item,
        key: &str,
        choices: &[(&'static str, T)],
    ) -> Option<T> {
        let expected = choices
            .iter()
            .map(|(n, _)| format!("\"{n}\""))
            .collect::<Vec<_>>()
            .join(", ");
        match &item.node {
            Node::String(s) => match choices.iter().find(|(n, _)| n == s) {
                Some((_, v)) => Some(*v),
                None => {
                    self.diag.at(
                        item.span.start,
                        key,
                        format!("\"{s}\" is not one of {expected}"),
                    );
                    None
                }
            },
            other => {
                self.diag.at(
                    item.span.start,
                    key,
                    format!("expected one of {expected}, found {}", other.kind()),
                );
                None
            }
        }
    }

    fn array_item<'t>(&mut self, item: &'t Item, key: &str, what: &str) -> Option<&'t [Item]> {
        match &item.node {
            Node::Array(items) => Some(items),
            other => {
                self.diag.at(
                    item.span.start,
                    key,
                    format!("expected an array of {what}, found {}", other.kind()),
                );
                None
            }
        }
    }

    // ---- sections --------------------------------------------------------

    /// `[cluster]`, and whether `vips` read cleanly.
    fn cluster(&mut self, root: &Table<'_>) -> (ClusterSection, bool) {
        let mut section = ClusterSection {
            vips: Vec::new(),
            mode: ClusterMode::Unicast,
            key_file: PathBuf::new(),
            ipv6_network_prefix: DEFAULT_IPV6_NETWORK_PREFIX,
        };
        if root.entry("cluster").is_none() {
            self.diag
                .unplaced("cluster", "required section [cluster] is missing");
            return (section, false);
        }
        let Some(t) = self.table(root, "cluster", CLUSTER_KEYS) else {
            return (section, false);
        };
        let vips_sound = match t.entry("vips") {
            None => {
                self.missing(&t, "vips");
                false
            }
            Some(e) => self.vips(&e.item, &t.key_path("vips"), &mut section.vips),
        };
        section.mode = self.choice(&t, "mode", names::CLUSTER_MODES, ClusterMode::Unicast);
        match t.entry("key_file") {
            None => self.missing(&t, "key_file"),
            Some(e) => {
                let key = t.key_path("key_file");
                if let Some(s) = self.string_item(&e.item, &key) {
                    if s.is_empty() {
                        self.diag
                            .at(e.item.span.start, key, "must name a file, found \"\"");
                    } else {
                        section.key_file = PathBuf::from(s);
                    }
                }
            }
        }
        section.ipv6_network_prefix = self.int(
            &t,
            "ipv6_network_prefix",
            &IPV6_PREFIX_RANGE,
            DEFAULT_IPV6_NETWORK_PREFIX,
        );
        (section, vips_sound)
    }

    /// Reads `cluster.vips` into `out`; whether every element was sound.
    fn vips(&mut self, item: &Item, key: &str, out: &mut Vec<IpAddr>) -> bool {
        let Some(items) = self.array_item(item, key, "IP address strings") else {
            return false;
        };
        let mut sound = true;
        for element in items {
            let Some(text) = self.string_item(element, key) else {
                sound = false;
                continue;
            };
            let Ok(ip) = text.parse::<IpAddr>() else {
                self.diag.at(
                    element.span.start,
                    key,
                    format!("\"{text}\" is not an IPv4 or IPv6 address"),
                );
                sound = false;
                continue;
            };
            if let Some(why) = unusable_address(ip) {
                self.diag.at(
                    element.span.start,
                    key,
                    format!("{ip} cannot be a VIP: it is {why}"),
                );
                sound = false;
                continue;
            }
            if out.contains(&ip) {
                self.diag
                    .at(element.span.start, key, format!("duplicate VIP {ip}"));
                continue;
            }
            out.push(ip);
        }
        if items.is_empty() {
            self.diag
                .at(item.span.start, key, "at least one VIP is required");
        } else if sound && !out.iter().any(IpAddr::is_ipv4) {
            self.diag.at(
                item.span.start,
                key,
                "no IPv4 VIP: the first IPv4 VIP is the primary VIP that names the cluster MAC",
            );
        }
        sound
    }

    fn heartbeat(&mut self, root: &Table<'_>) -> HeartbeatSection {
        let d = HeartbeatSection::default();
        let Some(t) = self.table(root, "heartbeat", HEARTBEAT_KEYS) else {
            return d;
        };
        HeartbeatSection {
            period_ms: self.int(&t, "period_ms", &PERIOD_MS_RANGE, d.period_ms),
            tolerance: self.int(&t, "tolerance", &TOLERANCE_RANGE, d.tolerance),
            converge_periods: self.int(
                &t,
                "converge_periods",
                &CONVERGE_PERIODS_RANGE,
                d.converge_periods,
            ),
        }
    }

    fn admin(&mut self, root: &Table<'_>) -> AdminSection {
        let mut section = AdminSection::default();
        let Some(t) = self.table(root, "admin", ADMIN_KEYS) else {
            return section;
        };
        if let Some(e) = t.entry("group") {
            let key = t.key_path("group");
            if let Some(name) = self.string_item(&e.item, &key) {
                match check_group_name(name) {
                    Ok(()) => section.group = Some(name.to_string()),
                    Err(why) => self.diag.at(e.item.span.start, key, why),
                }
            }
        }
        section
    }

    fn metrics(&mut self, root: &Table<'_>) -> MetricsSection {
        let mut section = MetricsSection::default();
        let Some(t) = self.table(root, "metrics", METRICS_KEYS) else {
            return section;
        };
        if let Some(e) = t.entry("listen") {
            let key = t.key_path("listen");
            if let Some(text) = self.string_item(&e.item, &key) {
                match text.parse::<std::net::SocketAddr>() {
                    Ok(addr) => section.listen = Some(addr),
                    Err(_) => self.diag.at(
                        e.item.span.start,
                        key,
                        format!(
                            "expected ADDRESS:PORT (e.g. \"127.0.0.1:9810\" or \"[::1]:9810\"), got {text:?}"
                        ),
                    ),
                }
            }
        }
        section
    }

    fn descriptors(&mut self, root: &Table<'_>) -> DescriptorSection {
        let d = DescriptorSection::default();
        let Some(t) = self.table(root, "descriptors", DESCRIPTOR_KEYS) else {
            return d;
        };
        DescriptorSection {
            capacity: self.int(&t, "capacity", &CAPACITY_RANGE, d.capacity),
            tcp_idle_timeout_s: self.int(
                &t,
                "tcp_idle_timeout_s",
                &TCP_IDLE_RANGE,
                d.tcp_idle_timeout_s,
            ),
            tcp_half_open_timeout_s: self.int(
                &t,
                "tcp_half_open_timeout_s",
                &TCP_HALF_OPEN_RANGE,
                d.tcp_half_open_timeout_s,
            ),
            tcp_closing_timeout_s: self.int(
                &t,
                "tcp_closing_timeout_s",
                &TCP_CLOSING_RANGE,
                d.tcp_closing_timeout_s,
            ),
            gre_timeout_s: self.int(&t, "gre_timeout_s", &GRE_TIMEOUT_RANGE, d.gre_timeout_s),
            udp_timeout_s: self.int(&t, "udp_timeout_s", &UDP_TIMEOUT_RANGE, d.udp_timeout_s),
        }
    }

    fn io(&mut self, root: &Table<'_>) -> IoSection {
        let d = IoSection::default();
        let Some(t) = self.table(root, "io", IO_KEYS) else {
            return d;
        };
        let ring_size = match t.entry("ring_size") {
            None => d.ring_size,
            Some(e) => {
                let key = t.key_path("ring_size");
                match self.int_item(&e.item, &key, &RING_SIZE_RANGE) {
                    Ok(v) if (v as u64).is_power_of_two() => v as u32,
                    Ok(v) => {
                        self.diag.at(
                            e.item.span.start,
                            key,
                            format!("{v} is not a power of two; expected 512, 1024, ... 65536"),
                        );
                        d.ring_size
                    }
                    Err(()) => d.ring_size,
                }
            }
        };
        let frame_size = match t.entry("frame_size") {
            None => d.frame_size,
            Some(e) => {
                let key = t.key_path("frame_size");
                match self.int_item(&e.item, &key, &(2048..=4096)) {
                    Ok(v) if FRAME_SIZES.contains(&(v as u32)) => v as u32,
                    Ok(v) => {
                        self.diag.at(
                            e.item.span.start,
                            key,
                            format!("{v} is not a UMEM frame size; expected 2048 or 4096"),
                        );
                        d.frame_size
                    }
                    Err(()) => d.frame_size,
                }
            }
        };
        IoSection {
            backend: self.choice(&t, "backend", names::BACKENDS, d.backend),
            ring_size,
            frame_size,
            batch_size: self.int(&t, "batch_size", &BATCH_SIZE_RANGE, d.batch_size),
            idle: self.choice(&t, "idle", names::IDLE_POLICIES, d.idle),
            xdp_mode: self.choice(&t, "xdp_mode", names::XDP_MODES, d.xdp_mode),
            delivery: self.choice(&t, "delivery", names::DELIVERIES, d.delivery),
            xdp_fast_path: self.boolean(&t, "xdp_fast_path", d.xdp_fast_path),
            xdp_pass: self.boolean(&t, "xdp_pass", d.xdp_pass),
            xdp_zero_copy: self.boolean(&t, "xdp_zero_copy", d.xdp_zero_copy),
        }
    }

    /// The items of an array of tables (`[[name]]`), or none when absent.
    fn table_array<'t>(&mut self, root: &Table<'t>, name: &str) -> &'t [Item] {
        self.tables_in(root, name, name, None)
    }

    /// The items of the array of tables `key` of `t`, shown to the user as
    /// `[[section]]`; none when absent, which is an error saying `required`
    /// when given.
    fn tables_in<'t>(
        &mut self,
        t: &Table<'t>,
        key: &str,
        section: &str,
        required: Option<&str>,
    ) -> &'t [Item] {
        let Some(entry) = t.entry(key) else {
            if let Some(why) = required {
                self.diag.at(t.span.start, t.key_path(key), why);
            }
            return &[];
        };
        match &entry.item.node {
            Node::Array(items) => items,
            other => {
                self.diag.at(
                    entry.item.span.start,
                    t.key_path(key),
                    format!(
                        "expected an array of tables ([[{section}]] sections), found {}",
                        other.kind()
                    ),
                );
                &[]
            }
        }
    }

    /// Every `[[host]]` whose ID reads cleanly, and whether all of them did.
    fn hosts(&mut self, root: &Table<'_>, cluster: &ClusterSection) -> (Vec<HostDraft>, bool) {
        if root.entry("host").is_none() {
            self.diag
                .unplaced("host", "at least one [[host]] section is required");
            return (Vec::new(), false);
        }
        let items = self.table_array(root, "host");
        if let Some(e) = root
            .entry("host")
            .filter(|e| matches!(&e.item.node, Node::Array(a) if a.is_empty()))
        {
            self.diag.at(
                e.item.span.start,
                "host",
                "at least one [[host]] section is required",
            );
        }
        if items.len() > MAX_HOSTS {
            self.diag.at(
                items[MAX_HOSTS].span.start,
                "host",
                format!("{} hosts; a cluster holds at most {MAX_HOSTS}", items.len()),
            );
        }
        let mut hosts = Vec::new();
        for (i, item) in items.iter().enumerate() {
            if let Some(h) = self.host(item, i + 1, cluster) {
                hosts.push(h);
            }
        }
        let sound = !items.is_empty() && hosts.len() == items.len();
        (hosts, sound)
    }

    fn host(&mut self, item: &Item, index: usize, cluster: &ClusterSection) -> Option<HostDraft> {
        let t = self.as_table(item, format!("host[{index}]"), HOST_KEYS)?;
        let (id, id_span) = match t.entry("id") {
            None => {
                self.missing(&t, "id");
                (None, t.span.clone())
            }
            Some(e) => {
                let id = self
                    .int_item(&e.item, &t.key_path("id"), &HOST_ID_RANGE)
                    .ok()
                    .and_then(|v| u8::try_from(v).ok())
                    .and_then(HostId::new);
                (id, e.item.span.clone())
            }
        };
        let interface = match t.entry("interface") {
            None => {
                self.missing(&t, "interface");
                String::new()
            }
            Some(e) => {
                let key = t.key_path("interface");
                match self.string_item(&e.item, &key) {
                    Some(name) => {
                        if let Some(why) = bad_interface_name(name) {
                            self.diag.at(e.item.span.start, key, why);
                        }
                        name.to_string()
                    }
                    None => String::new(),
                }
            }
        };
        let (dedicated, dedicated_span) = match t.entry("dedicated") {
            None => (Vec::new(), t.span.clone()),
            Some(e) => (
                self.dedicated(&e.item, &t.key_path("dedicated"), cluster),
                e.item.span.clone(),
            ),
        };
        let name = match t.entry("name") {
            None => None,
            Some(e) => {
                let key = t.key_path("name");
                match self.string_item(&e.item, &key) {
                    Some(n) => match crate::service::name_problem(n) {
                        Some(why) => {
                            self.diag.at(e.item.span.start, key, why);
                            None
                        }
                        None => Some(n.to_string()),
                    },
                    None => None,
                }
            }
        };
        let weight = self.int(&t, "weight", &WEIGHT_RANGE, DEFAULT_HOST_WEIGHT);
        let cores = match self.table(&t, "cores", CORES_KEYS) {
            None => CoreMap::default(),
            Some(c) => self.cores(&c),
        };
        let id = id?;
        Some(HostDraft {
            index,
            section: HostSection {
                id,
                name,
                interface,
                dedicated,
                weight,
                cores,
            },
            id_span,
            dedicated_span,
        })
    }

    fn dedicated(&mut self, item: &Item, key: &str, cluster: &ClusterSection) -> Vec<Cidr> {
        let mut out: Vec<Cidr> = Vec::new();
        let Some(items) = self.array_item(item, key, "CIDR strings") else {
            return out;
        };
        for element in items {
            let Some(text) = self.string_item(element, key) else {
                continue;
            };
            let cidr = match text.parse::<Cidr>() {
                Ok(c) => c,
                Err(e) => {
                    self.diag.at(
                        element.span.start,
                        key,
                        format!("\"{text}\" is not a valid CIDR: {e}"),
                    );
                    continue;
                }
            };
            if let Some(why) = unusable_address(cidr.addr()) {
                self.diag.at(
                    element.span.start,
                    key,
                    format!("{} cannot be a dedicated address: it is {why}", cidr.addr()),
                );
            } else if cluster.vips.contains(&cidr.addr()) {
                self.diag.at(
                    element.span.start,
                    key,
                    format!(
                        "{} is a cluster VIP; a dedicated address is the host's own",
                        cidr.addr()
                    ),
                );
            } else if out.iter().any(|c| c.addr() == cidr.addr()) {
                self.diag.at(
                    element.span.start,
                    key,
                    format!("duplicate dedicated address {}", cidr.addr()),
                );
            } else {
                out.push(cidr);
            }
        }
        out
    }

    fn cores(&mut self, t: &Table<'_>) -> CoreMap {
        let control = self.int(t, "control", &CORE_RANGE, CoreMap::default().control);
        let poll = self.poll_loops(t);
        let proxy = match t.entry("proxy") {
            None => poll.iter().map(|p| p.core).collect(),
            Some(e) => self.proxy_cores(&e.item, &t.key_path("proxy")),
        };
        let proxy_sched = self.choice(
            t,
            "proxy_sched",
            names::PROXY_SCHEDS,
            CoreMap::default().proxy_sched,
        );
        CoreMap {
            control,
            poll,
            proxy,
            proxy_sched,
        }
    }

    /// `proxy`: distinct cores, at least one.
    fn proxy_cores(&mut self, item: &Item, key: &str) -> Vec<usize> {
        let default = CoreMap::default().proxy;
        let Some(items) = self.array_item(item, key, "core numbers") else {
            return default;
        };
        if items.is_empty() {
            self.diag
                .at(item.span.start, key, "at least one proxy core is required");
            return default;
        }
        let mut out: Vec<usize> = Vec::new();
        for element in items {
            let Ok(c) = self.int_item(element, key, &CORE_RANGE) else {
                continue;
            };
            let c = c as usize;
            if out.contains(&c) {
                self.diag.at(
                    element.span.start,
                    key,
                    format!("core {c} is named twice; one proxy worker per core"),
                );
            } else {
                out.push(c);
            }
        }
        if out.is_empty() {
            default
        } else {
            out
        }
    }

    /// `poll`: the poll loops (default: one on core 0 for queue 0).
    fn poll_loops(&mut self, t: &Table<'_>) -> Vec<PollLoop> {
        let d = CoreMap::default();
        let Some(entry) = t.entry("poll") else {
            return d.poll;
        };
        let key = t.key_path("poll");
        let Some(items) = self.array_item(&entry.item, &key, "{ core, queues } tables") else {
            return d.poll;
        };
        if items.is_empty() {
            self.diag.at(
                entry.item.span.start,
                &key,
                "at least one poll loop is required",
            );
        }
        let mut poll = Vec::new();
        let mut cores_seen: BTreeMap<usize, usize> = BTreeMap::new();
        let mut queues_seen: BTreeMap<u32, usize> = BTreeMap::new();
        for (i, item) in items.iter().enumerate() {
            let Some(p) = self.as_table(item, format!("{key}[{}]", i + 1), POLL_KEYS) else {
                continue;
            };
            let core = match p.entry("core") {
                None => {
                    self.missing(&p, "core");
                    None
                }
                Some(e) => {
                    let ck = p.key_path("core");
                    match self.int_item(&e.item, &ck, &CORE_RANGE) {
                        Ok(c) => {
                            let c = c as usize;
                            if let Some(prev) = cores_seen.insert(c, i + 1) {
                                self.diag.at(
                                    e.item.span.start,
                                    ck,
                                    format!("core {c} already runs {key}[{prev}]; one poll loop per core"),
                                );
                            }
                            Some(c)
                        }
                        Err(()) => None,
                    }
                }
            };
            let mut queues = Vec::new();
            match p.entry("queues") {
                None => self.missing(&p, "queues"),
                Some(e) => {
                    let qk = p.key_path("queues");
                    if let Some(qs) = self.array_item(&e.item, &qk, "queue numbers") {
                        if qs.is_empty() {
                            self.diag
                                .at(e.item.span.start, &qk, "at least one queue is required");
                        }
                        for q in qs {
                            let Ok(n) = self.int_item(q, &qk, &QUEUE_RANGE) else {
                                continue;
                            };
                            let n = n as u32;
                            if let Some(prev) = queues_seen.insert(n, i + 1) {
                                self.diag.at(
                                    q.span.start,
                                    &qk,
                                    format!("queue {n} is already polled by {key}[{prev}]; each queue has one poll loop"),
                                );
                            } else {
                                queues.push(n);
                            }
                        }
                    }
                }
            }
            if let Some(core) = core {
                poll.push(PollLoop { core, queues });
            }
        }
        poll
    }

    fn rules(&mut self, root: &Table<'_>) -> Vec<RuleDraft> {
        let items = self.table_array(root, "rule");
        let mut drafts = Vec::new();
        if let Some(e) = root
            .entry("rule")
            .filter(|e| matches!(&e.item.node, Node::Array(a) if a.is_empty()))
        {
            self.diag.at(
                e.item.span.start,
                "rule",
                "an empty rule list covers nothing; omit `rule` for NLB's default rule",
            );
        }
        if items.len() > MAX_RULES {
            self.diag.at(
                items[MAX_RULES].span.start,
                "rule",
                format!(
                    "{} rules; at most {MAX_RULES} fit in a heartbeat",
                    items.len()
                ),
            );
        }
        for (i, item) in items.iter().enumerate() {
            if let Some(d) = self.rule(item, i + 1) {
                drafts.push(d);
            }
        }
        drafts
    }

    fn rule(&mut self, item: &Item, index: usize) -> Option<RuleDraft> {
        let t = self.as_table(item, format!("rule[{index}]"), RULE_KEYS)?;
        let errors_before = self.diag_len();
        let mut draft = RuleDraft {
            index,
            span: t.span.clone(),
            vip: None,
            vip_span: None,
            port_start: 0,
            port_end: u16::MAX,
            protocol: Protocol::Both,
            mode: FilterMode::Multiple {
                affinity: Affinity::Single,
            },
            weights: Vec::new(),
            priorities: Vec::new(),
            extended_affinity_s: 0,
            frontend: frontend::FrontendDraft::default(),
            sound: true,
        };
        if let Some(e) = t.entry("vip") {
            let key = t.key_path("vip");
            if let Some(s) = self.string_item(&e.item, &key) {
                if s != "all" {
                    match s.parse::<IpAddr>() {
                        Ok(ip) => {
                            draft.vip = Some(ip);
                            draft.vip_span = Some(e.item.span.clone());
                        }
                        Err(_) => self.diag.at(
                            e.item.span.start,
                            key,
                            format!("\"{s}\" is neither \"all\" nor an IP address"),
                        ),
                    }
                }
            }
        }
        if let Some(e) = t.entry("ports") {
            if let Some((start, end)) = self.ports(&e.item, &t.key_path("ports")) {
                draft.port_start = start;
                draft.port_end = end;
            }
        }
        draft.protocol = self.choice(&t, "protocol", names::PROTOCOLS, Protocol::Both);
        // `None` when `mode` is present but unreadable: then which keys apply
        // is unknown and not checked, so one typo gives one error.
        let known_mode = match t.entry("mode") {
            None => Some(RuleMode::Multiple),
            Some(e) => self.choice_item(&e.item, &t.key_path("mode"), names::RULE_MODES),
        };
        let mode = known_mode.unwrap_or(RuleMode::Multiple);
        let mode_name = names::name_of(names::RULE_MODES, mode);
        let affinity = self.choice(&t, "affinity", names::AFFINITIES, Affinity::Single);
        draft.mode = match mode {
            RuleMode::Multiple => FilterMode::Multiple { affinity },
            RuleMode::Single => FilterMode::Single,
            RuleMode::Disabled => FilterMode::Disabled,
        };
        for (key, allowed) in [
            ("affinity", RuleMode::Multiple),
            ("weights", RuleMode::Multiple),
            ("extended_affinity_s", RuleMode::Multiple),
            ("priorities", RuleMode::Single),
        ] {
            if let Some(e) = t.entry(key) {
                if known_mode.is_some_and(|m| m != allowed) {
                    self.diag.at(
                        e.key_span.start,
                        t.key_path(key),
                        format!(
                            "only applies to mode = \"{}\" rules; this rule is \"{mode_name}\"",
                            names::name_of(names::RULE_MODES, allowed)
                        ),
                    );
                }
            }
        }
        if let Some(e) = t.entry("weights") {
            draft.weights = self.host_map(&e.item, &t.key_path("weights"), &WEIGHT_RANGE);
        }
        if let Some(e) = t.entry("priorities") {
            draft.priorities = self.host_map(&e.item, &t.key_path("priorities"), &PRIORITY_RANGE);
        }
        draft.extended_affinity_s =
            self.int(&t, "extended_affinity_s", &EXTENDED_AFFINITY_RANGE, 0);
        draft.frontend = self.frontend(&t);
        draft.sound = self.diag_len() == errors_before;
        Some(draft)
    }

    fn diag_len(&self) -> usize {
        self.diag.len()
    }

    /// `ports = N` or `ports = [START, END]`.
    fn ports(&mut self, item: &Item, key: &str) -> Option<(u16, u16)> {
        match &item.node {
            Node::Integer(_) => {
                let p = self.int_item(item, key, &PORT_RANGE).ok()? as u16;
                Some((p, p))
            }
            Node::Array(items) if items.len() == 2 => {
                let start = self.int_item(&items[0], key, &PORT_RANGE);
                let end = self.int_item(&items[1], key, &PORT_RANGE);
                let (start, end) = (start.ok()? as u16, end.ok()? as u16);
                if start > end {
                    self.diag.at(
                        item.span.start,
                        key,
                        format!("start port {start} is after end port {end}"),
                    );
                    return None;
                }
                Some((start, end))
            }
            other => {
                self.diag.at(
                    item.span.start,
                    key,
                    format!(
                        "expected a port or [START, END] (0..=65535), found {}",
                        match other {
                            Node::Array(a) => format!("an array of {} elements", a.len()),
                            other => other.kind().to_string(),
                        }
                    ),
                );
                None
            }
        }
    }

    /// `{ HOST_ID = VALUE, ... }` with values in `range`.
    fn host_map(
        &mut self,
        item: &Item,
        key: &str,
        range: &RangeInclusive<i64>,
    ) -> Vec<(HostId, u8, Range<usize>)> {
        let mut out = Vec::new();
        let Node::Table(entries) = &item.node else {
            self.diag.at(
                item.span.start,
                key,
                format!(
                    "expected a table of host ID = value, e.g. {{ 3 = 100 }}, found {}",
                    item.node.kind()
                ),
            );
            return out;
        };
        for e in entries {
            let ek = format!("{key}.{}", e.key);
            let id = e.key.parse::<u8>().ok().and_then(HostId::new);
            let value = self.int_item(&e.item, &ek, range);
            match (id, value) {
                (None, _) => self.diag.at(
                    e.key_span.start,
                    ek,
                    format!("`{}` is not a host ID; expected 1..=64", e.key),
                ),
                (Some(id), Ok(v)) => out.push((id, v as u8, e.key_span.clone())),
                (Some(_), Err(())) => {}
            }
        }
        out
    }

    // ---- cross-checks ------------------------------------------------------

    fn check_hosts(&mut self, hosts: &[HostDraft]) {
        let mut seen: BTreeMap<HostId, &HostDraft> = BTreeMap::new();
        let mut addrs: BTreeMap<IpAddr, HostId> = BTreeMap::new();
        for h in hosts {
            let id = h.section.id;
            if let Some(prev) = seen.insert(id, h) {
                self.diag.at(
                    h.id_span.start,
                    format!("host[{}].id", h.index),
                    format!(
                        "duplicate host ID {id}: host[{}] (line {}) has it too",
                        prev.index,
                        self.diag.line(prev.id_span.start)
                    ),
                );
                continue;
            }
            for c in &h.section.dedicated {
                if let Some(other) = addrs.insert(c.addr(), id) {
                    self.diag.at(
                        h.dedicated_span.start,
                        format!("host[{}].dedicated", h.index),
                        format!("{} is also a dedicated address of host {other}", c.addr()),
                    );
                }
            }
        }
    }

    fn check_rules(
        &mut self,
        drafts: &[RuleDraft],
        cluster: &ClusterSection,
        vips_sound: bool,
        hosts: &[HostDraft],
        hosts_sound: bool,
    ) -> Vec<RuleSection> {
        let configured: BTreeSet<HostId> = hosts.iter().map(|h| h.section.id).collect();
        let mut rules = Vec::new();
        let mut placed: Vec<(&RuleDraft, PortRule)> = Vec::new();
        for d in drafts {
            let key = format!("rule[{}]", d.index);
            if let (Some(vip), Some(span)) = (d.vip, &d.vip_span) {
                if vips_sound && !cluster.vips.contains(&vip) {
                    self.diag.at(
                        span.start,
                        format!("{key}.vip"),
                        format!("{vip} is not one of cluster.vips"),
                    );
                }
            }
            for (field, map) in [("weights", &d.weights), ("priorities", &d.priorities)] {
                for (id, _, span) in map {
                    if hosts_sound && !configured.contains(id) {
                        self.diag.at(
                            span.start,
                            format!("{key}.{field}.{id}"),
                            format!("no [[host]] has id = {id}"),
                        );
                    }
                }
            }
            let weights: BTreeMap<HostId, u8> = match d.mode {
                FilterMode::Multiple { .. } => {
                    let mut w: BTreeMap<HostId, u8> = hosts
                        .iter()
                        .map(|h| (h.section.id, h.section.weight))
                        .collect();
                    for (id, v, _) in &d.weights {
                        if configured.contains(id) {
                            w.insert(*id, *v);
                        }
                    }
                    if d.sound && !w.is_empty() && w.values().all(|&v| v == 0) {
                        self.diag.at(
                            d.span.start,
                            key.clone(),
                            "every host has weight 0, so no host would take new connections; use mode = \"disabled\" to block this traffic",
                        );
                    }
                    w
                }
                _ => BTreeMap::new(),
            };
            let priorities = match d.mode {
                FilterMode::Single => self.priorities(d, &key, hosts),
                _ => BTreeMap::new(),
            };
            let rule = RuleSection {
                vip: d.vip,
                port_start: d.port_start,
                port_end: d.port_end,
                protocol: d.protocol,
                mode: d.mode,
                weights,
                priorities,
                extended_affinity_s: d.extended_affinity_s,
                instances: d.frontend.instances.clone(),
                instance_probe: d.frontend.instance_probe.clone(),
                health: d.frontend.health.clone(),
                hold_ms: d.frontend.hold_ms,
            };
            if d.sound {
                self.check_frontend(d, &key);
                let port_rule =
                    PortRule::new(d.vip, (d.port_start, d.port_end), d.protocol, d.mode);
                for (other, other_rule) in &placed {
                    if port_rule.overlaps(other_rule) {
                        self.diag.at(
                            d.span.start,
                            key.clone(),
                            format!(
                                "overlaps rule[{}] (line {}) on {}",
                                other.index,
                                self.diag.line(other.span.start),
                                shared_traffic(&port_rule, other_rule)
                            ),
                        );
                    }
                }
                placed.push((d, port_rule));
            }
            rules.push(rule);
        }
        rules
    }

    /// Effective priorities of a single-host rule (overrides, else the host
    /// ID), checked to be distinct.
    fn priorities(
        &mut self,
        d: &RuleDraft,
        key: &str,
        hosts: &[HostDraft],
    ) -> BTreeMap<HostId, u8> {
        let mut effective: BTreeMap<HostId, u8> = hosts
            .iter()
            .map(|h| (h.section.id, h.section.id.get()))
            .collect();
        let mut spans: BTreeMap<HostId, &Range<usize>> = BTreeMap::new();
        for (id, v, span) in &d.priorities {
            if let Some(p) = effective.get_mut(id) {
                *p = *v;
                spans.insert(*id, span);
            }
        }
        let mut holders: BTreeMap<u8, HostId> = BTreeMap::new();
        for (&id, &p) in &effective {
            let Some(prev) = holders.insert(p, id) else {
                continue;
            };
            // Defaults are distinct, so at least one of the two is an override.
            let (culprit, other) = if spans.contains_key(&id) {
                (id, prev)
            } else {
                (prev, id)
            };
            let Some(span) = spans.get(&culprit) else {
                continue;
            };
            let note = if spans.contains_key(&other) {
                String::new()
            } else {
                format!(" (host {other} has no override, so its priority is its host ID)")
            };
            self.diag.at(
                span.start,
                format!("{key}.priorities.{culprit}"),
                format!(
                    "priority {p} is also host {other}'s priority{note}; priorities in a rule must be distinct"
                ),
            );
        }
        effective
    }
}

/// Why `ip` cannot be a VIP or a dedicated address, if it cannot.
fn unusable_address(ip: IpAddr) -> Option<&'static str> {
    if ip.is_unspecified() {
        Some("unspecified")
    } else if ip.is_multicast() {
        Some("multicast")
    } else if ip.is_loopback() {
        Some("loopback")
    } else if matches!(ip, IpAddr::V4(v4) if v4.is_broadcast()) {
        Some("broadcast")
    } else {
        None
    }
}

/// Why `name` cannot be a Linux interface name, if it cannot.
fn bad_interface_name(name: &str) -> Option<String> {
    if name.is_empty() {
        Some("interface name is empty".into())
    } else if name.len() > MAX_INTERFACE_NAME {
        Some(format!(
            "interface name \"{name}\" is longer than {MAX_INTERFACE_NAME} bytes"
        ))
    } else if name == "."
        || name == ".."
        || name.contains(['/', ':'])
        || name.contains(char::is_whitespace)
    {
        Some(format!(
            "\"{name}\" is not a valid interface name (no '/', ':', whitespace, \".\" or \"..\")"
        ))
    } else {
        None
    }
}

/// The first (VIP, port, protocol) two overlapping rules share, in words.
fn shared_traffic(a: &PortRule, b: &PortRule) -> String {
    let vip = match a.vip.or(b.vip) {
        Some(ip) => format!("VIP {ip}"),
        None => "all VIPs".to_string(),
    };
    let port = a.port_start.max(b.port_start);
    let last = a.port_end.min(b.port_end);
    let ports = if port == last {
        format!("port {port}")
    } else {
        format!("ports {port}-{last}")
    };
    let proto = match (a.protocol, b.protocol) {
        (Protocol::Both, Protocol::Both) => "tcp and udp",
        (Protocol::Udp, _) | (_, Protocol::Udp) => "udp",
        _ => "tcp",
    };
    format!("{vip}, {ports}, {proto}")
}

/// Whether `name` can be a group name: 1 to [`MAX_GROUP_NAME`] characters,
/// a letter or `_` first, then letters, digits, `_`, `-` or `.` (the
/// portable set `groupadd` accepts). Whether the group exists is the
/// engine's to check when it starts.
fn check_group_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if name.len() > MAX_GROUP_NAME || !first_ok || !rest_ok {
        return Err(format!(
            "{name:?} is not a group name: 1 to {MAX_GROUP_NAME} characters, a letter or `_` \
             first, then letters, digits, `_`, `-` or `.`"
        ));
    }
    Ok(())
}
