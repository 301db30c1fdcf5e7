//! The normalized TOML form of a [`Config`].
//!
//! Guarantees: every setting is written, defaults included, in a fixed order
//! (sections as in the schema, hosts by ID, rules in file order, map keys by
//! host ID), so two equal configurations render to the same text and the text
//! parses back to an equal [`Config`] (the tests check this for every
//! example). Strings are quoted by `toml` itself.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use shoal_dataplane::{FilterMode, HostId};

use crate::sections::names::{self, RuleMode};
use crate::service::{CarpMembers, ServiceRoute, ServiceSection};
use crate::Config;

fn quote(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

fn host_map(map: &BTreeMap<HostId, u8>) -> String {
    let body: Vec<String> = map.iter().map(|(h, v)| format!("{h} = {v}")).collect();
    format!("{{ {} }}", body.join(", "))
}

fn list<T>(items: impl IntoIterator<Item = T>, f: impl Fn(T) -> String) -> String {
    let body: Vec<String> = items.into_iter().map(f).collect();
    format!("[{}]", body.join(", "))
}

pub(crate) fn render(c: &Config) -> String {
    // `write!` into a `String` cannot fail; the results are ignored on purpose.
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# shoal configuration, normalized: every default written out."
    );
    let _ = writeln!(out, "[cluster]");
    let _ = writeln!(
        out,
        "vips = {}",
        list(&c.cluster.vips, |v| quote(&v.to_string()))
    );
    let _ = writeln!(
        out,
        "mode = \"{}\"",
        names::name_of(names::CLUSTER_MODES, c.cluster.mode)
    );
    let _ = writeln!(
        out,
        "key_file = {}",
        quote(&c.cluster.key_file.to_string_lossy())
    );
    let _ = writeln!(
        out,
        "ipv6_network_prefix = {}",
        c.cluster.ipv6_network_prefix
    );

    let h = &c.heartbeat;
    let _ = writeln!(out, "\n[heartbeat]");
    let _ = writeln!(out, "period_ms = {}", h.period_ms);
    let _ = writeln!(out, "tolerance = {}", h.tolerance);
    let _ = writeln!(out, "converge_periods = {}", h.converge_periods);

    let d = &c.descriptors;
    let _ = writeln!(out, "\n[descriptors]");
    let _ = writeln!(out, "capacity = {}", d.capacity);
    let _ = writeln!(out, "tcp_idle_timeout_s = {}", d.tcp_idle_timeout_s);
    let _ = writeln!(
        out,
        "tcp_half_open_timeout_s = {}",
        d.tcp_half_open_timeout_s
    );
    let _ = writeln!(out, "tcp_closing_timeout_s = {}", d.tcp_closing_timeout_s);
    let _ = writeln!(out, "gre_timeout_s = {}", d.gre_timeout_s);
    let _ = writeln!(out, "udp_timeout_s = {}", d.udp_timeout_s);

    let io = &c.io;
    let _ = writeln!(out, "\n[io]");
    let _ = writeln!(
        out,
        "backend = \"{}\"",
        names::name_of(names::BACKENDS, io.backend)
    );
    let _ = writeln!(out, "ring_size = {}", io.ring_size);
    let _ = writeln!(out, "frame_size = {}", io.frame_size);
    let _ = writeln!(out, "batch_size = {}", io.batch_size);
    let _ = writeln!(
        out,
        "idle = \"{}\"",
        names::name_of(names::IDLE_POLICIES, io.idle)
    );
    let _ = writeln!(
        out,
        "xdp_mode = \"{}\"",
        names::name_of(names::XDP_MODES, io.xdp_mode)
    );
    let _ = writeln!(
        out,
        "delivery = \"{}\"",
        names::name_of(names::DELIVERIES, io.delivery)
    );
    let _ = writeln!(out, "xdp_fast_path = {}", io.xdp_fast_path);
    let _ = writeln!(out, "xdp_pass = {}", io.xdp_pass);
    let _ = writeln!(out, "xdp_zero_copy = {}", io.xdp_zero_copy);

    // No group (root only) has no TOML spelling but absence.
    if let Some(group) = &c.admin.group {
        let _ = writeln!(out, "\n[admin]");
        let _ = writeln!(out, "group = {}", quote(group));
    }
    if let Some(listen) = c.metrics.listen {
        let _ = writeln!(out, "\n[metrics]");
        let _ = writeln!(out, "listen = {}", quote(&listen.to_string()));
    }

    for host in &c.hosts {
        let _ = writeln!(out, "\n[[host]]");
        let _ = writeln!(out, "id = {}", host.id);
        if let Some(name) = &host.name {
            let _ = writeln!(out, "name = {}", quote(name));
        }
        let _ = writeln!(out, "interface = {}", quote(&host.interface));
        let _ = writeln!(
            out,
            "dedicated = {}",
            list(&host.dedicated, |d| quote(&d.to_string()))
        );
        let _ = writeln!(out, "weight = {}", host.weight);
        let _ = writeln!(out, "[host.cores]");
        let _ = writeln!(out, "control = {}", host.cores.control);
        let poll = list(&host.cores.poll, |p| {
            format!(
                "{{ core = {}, queues = {} }}",
                p.core,
                list(&p.queues, |q| q.to_string())
            )
        });
        let _ = writeln!(out, "poll = {poll}");
        let _ = writeln!(
            out,
            "proxy = {}",
            list(&host.cores.proxy, |c| c.to_string())
        );
    }

    for rule in &c.rules {
        let _ = writeln!(out, "\n[[rule]]");
        let vip = rule
            .vip
            .map_or_else(|| "all".to_string(), |v| v.to_string());
        let _ = writeln!(out, "vip = {}", quote(&vip));
        let _ = writeln!(out, "ports = [{}, {}]", rule.port_start, rule.port_end);
        let _ = writeln!(
            out,
            "protocol = \"{}\"",
            names::name_of(names::PROTOCOLS, rule.protocol)
        );
        let mode = match rule.mode {
            FilterMode::Multiple { .. } => RuleMode::Multiple,
            FilterMode::Single => RuleMode::Single,
            FilterMode::Disabled => RuleMode::Disabled,
        };
        let _ = writeln!(
            out,
            "mode = \"{}\"",
            names::name_of(names::RULE_MODES, mode)
        );
        match rule.mode {
            FilterMode::Multiple { affinity } => {
                let _ = writeln!(
                    out,
                    "affinity = \"{}\"",
                    names::name_of(names::AFFINITIES, affinity)
                );
                let _ = writeln!(out, "weights = {}", host_map(&rule.weights));
                let _ = writeln!(out, "extended_affinity_s = {}", rule.extended_affinity_s);
            }
            FilterMode::Single => {
                let _ = writeln!(out, "priorities = {}", host_map(&rule.priorities));
            }
            FilterMode::Disabled => {}
        }
    }

    for service in &c.services {
        render_service(&mut out, service);
    }
    out
}

fn render_service(out: &mut String, s: &ServiceSection) {
    let _ = writeln!(out, "\n[[service]]");
    let _ = writeln!(out, "name = {}", quote(&s.name));
    let _ = writeln!(out, "port = {}", s.port);
    let l = &s.limits;
    let _ = writeln!(out, "connect_timeout_ms = {}", l.connect_timeout_ms);
    let _ = writeln!(out, "first_byte_timeout_ms = {}", l.first_byte_timeout_ms);
    let _ = writeln!(out, "idle_timeout_s = {}", l.idle_timeout_s);
    let _ = writeln!(out, "max_connections = {}", l.max_connections);
    let _ = writeln!(
        out,
        "connect_ports = {}",
        list(&l.connect_ports, |p| p.to_string())
    );
    let _ = writeln!(out, "max_head_bytes = {}", l.max_head_bytes);
    let _ = writeln!(out, "max_uri_bytes = {}", l.max_uri_bytes);
    let _ = writeln!(out, "max_headers = {}", l.max_headers);
    let ServiceRoute::Carp(c) = &s.route;
    let _ = writeln!(out, "route = \"carp\"");
    let _ = writeln!(out, "[service.carp]");
    let _ = writeln!(out, "hash = \"{}\"", c.hash.name());
    let _ = writeln!(out, "key = {}", list(c.key.names(), quote));
    let patterns = |p: &[shoal_dataplane::array::DomainPattern]| list(p, |p| quote(&p.to_string()));
    let _ = writeln!(out, "exceptions = {}", patterns(&c.exceptions));
    let _ = writeln!(out, "direct = {}", patterns(&c.direct));
    let _ = writeln!(out, "list_ttl_s = {}", c.list_ttl_s);
    let _ = writeln!(out, "array_name = {}", quote(&c.array_name));
    let _ = writeln!(out, "probe_interval_ms = {}", c.probe_interval_ms);
    let _ = writeln!(out, "down_ttl_ms = {}", c.down_ttl_ms);
    match &c.members {
        CarpMembers::Cluster {
            local,
            load_factors,
        } => {
            let _ = writeln!(out, "members = \"cluster\"");
            let _ = writeln!(out, "local = {}", quote(&local.to_string()));
            let body: Vec<String> = load_factors
                .iter()
                .map(|(h, v)| format!("{h} = {v}"))
                .collect();
            let _ = writeln!(out, "load_factors = {{ {} }}", body.join(", "));
        }
        CarpMembers::Parents(parents) => {
            let _ = writeln!(out, "members = \"parents\"");
            for p in parents {
                let _ = writeln!(out, "[[service.carp.parent]]");
                let _ = writeln!(out, "name = {}", quote(&p.name));
                let _ = writeln!(out, "address = {}", quote(&p.address.to_string()));
                let _ = writeln!(out, "load_factor = {}", p.load_factor);
            }
        }
    }
}
