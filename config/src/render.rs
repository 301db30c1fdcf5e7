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
use crate::service::{CarpMembers, ServiceRoute, ServiceSection, StickySection};
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
        let _ = writeln!(
            out,
            "proxy_sched = \"{}\"",
            names::name_of(names::PROXY_SCHEDS, host.cores.proxy_sched)
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
        render_frontend(&mut out, rule);
    }

    for service in &c.services {
        render_service(&mut out, service);
    }
    out
}

fn render_frontend(out: &mut String, rule: &crate::RuleSection) {
    use crate::frontend::{ProbeKind, ProbeTimingSection};
    let timing = |out: &mut String, t: &ProbeTimingSection| {
        let _ = writeln!(out, "interval_ms = {}", t.interval_ms);
        let _ = writeln!(out, "timeout_ms = {}", t.timeout_ms);
        let _ = writeln!(out, "fall = {}", t.fall);
        let _ = writeln!(out, "rise = {}", t.rise);
    };
    let _ = writeln!(out, "hold_ms = {}", rule.hold_ms);
    if !rule.instances.is_empty() {
        let _ = writeln!(
            out,
            "instances = {}",
            list(&rule.instances, |i| format!(
                "{{ port = {}, weight = {} }}",
                i.port, i.weight
            ))
        );
        let _ = writeln!(out, "[rule.instance_probe]");
        match &rule.instance_probe.kind {
            ProbeKind::Tcp => {
                let _ = writeln!(out, "kind = \"tcp\"");
            }
            ProbeKind::Http { path } => {
                let _ = writeln!(out, "kind = \"http\"");
                let _ = writeln!(out, "path = {}", quote(path));
            }
        }
        timing(out, &rule.instance_probe.timing);
    }
    if let Some(h) = &rule.health {
        let _ = writeln!(out, "[rule.health]");
        match &h.kind {
            ProbeKind::Tcp => {
                let _ = writeln!(out, "tcp = {}", quote(&h.address.to_string()));
            }
            ProbeKind::Http { path } => {
                let _ = writeln!(
                    out,
                    "url = {}",
                    quote(&format!("http://{}{}", h.address, path))
                );
            }
        }
        timing(out, &h.timing);
    }
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
    let c = match &s.route {
        ServiceRoute::Carp(c) => c,
        ServiceRoute::Sticky(sticky) => {
            render_sticky(out, sticky);
            return;
        }
        ServiceRoute::Clb(c) => {
            let _ = writeln!(out, "route = \"clb\"");
            let _ = writeln!(out, "policy = \"{}\"", c.policy.name());
            let _ = writeln!(out, "poll_ms = {}", c.poll_ms);
            let _ = writeln!(out, "probe = {}", quote(&c.probe.to_string()));
            let _ = writeln!(out, "probe_timeout_ms = {}", c.probe_timeout_ms);
            let _ = writeln!(out, "decay_ms = {}", c.decay_ms);
            let _ = writeln!(out, "retries = {}", c.retries);
            let _ = writeln!(out, "fall = {}", c.fall);
            let _ = writeln!(out, "rise = {}", c.rise);
            let _ = writeln!(out, "eject_ms = {}", c.eject_ms);
            for b in &c.backends {
                let _ = writeln!(out, "[[service.backend]]");
                let _ = writeln!(out, "address = {}", quote(&b.address.to_string()));
                let _ = writeln!(out, "weight = {}", b.weight);
            }
            return;
        }
    };
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

fn name_of<T: PartialEq + Copy>(names: &[(&'static str, T)], v: T) -> &'static str {
    names.iter().find(|(_, x)| *x == v).map_or("", |(n, _)| *n)
}

fn render_sticky(out: &mut String, s: &StickySection) {
    use shoal_dataplane::array::sticky::{Coherence, OwnerFailure, StaticRule};
    let p = &s.policy;
    let _ = writeln!(out, "route = \"sticky\"");
    let _ = writeln!(out, "[service.sticky]");
    let _ = writeln!(out, "local = {}", quote(&s.local.to_string()));
    let _ = writeln!(out, "cookie = {}", quote(&s.cookie));
    let _ = writeln!(out, "cookie_max_age_s = {}", s.cookie_max_age_s);
    let _ = writeln!(
        out,
        "coherence = {}",
        quote(name_of(Coherence::NAMES, p.coherence))
    );
    let _ = writeln!(
        out,
        "session_cookies = {}",
        list(&p.session_cookies, |g| quote(g.as_str()))
    );
    let _ = writeln!(
        out,
        "static = {}",
        list(&p.statics, |r| match r {
            StaticRule::Extension(e) => quote(&format!(".{e}")),
            StaticRule::Path(g) => quote(g.as_str()),
        })
    );
    let _ = writeln!(
        out,
        "controller = {{ paths = {}, methods = {} }}",
        list(&p.controller.paths, |g| quote(g.as_str())),
        list(&p.controller.methods, |m| quote(m))
    );
    let _ = writeln!(
        out,
        "on_owner_failure = {}",
        quote(name_of(OwnerFailure::NAMES, p.on_owner_failure))
    );
    let _ = writeln!(
        out,
        "trusted_proxies = {}",
        list(&s.trusted_proxies, |n| quote(&n.to_string()))
    );
    let _ = writeln!(out, "hop_limit = {}", p.hop_limit);
    let _ = writeln!(out, "backend_tls = {}", s.backend_tls);
    let _ = writeln!(out, "probe_interval_ms = {}", s.array.probe_interval_ms);
    let _ = writeln!(out, "down_ttl_ms = {}", s.array.down_ttl_ms);
    if let Some(tls) = &s.tls {
        let _ = writeln!(
            out,
            "tls = {{ cert = {}, key = {} }}",
            quote(&tls.cert.to_string_lossy()),
            quote(&tls.key.to_string_lossy())
        );
    }
    for o in &s.ocf {
        let _ = writeln!(out, "[[service.sticky.ocf]]");
        let _ = writeln!(out, "name = {}", quote(&o.name));
        let _ = writeln!(out, "address = {}", quote(&o.address.to_string()));
    }
}
