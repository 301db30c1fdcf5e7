//! The schema walk for a rule's `instances`, `[rule.instance_probe]`,
//! `[rule.health]` and `hold_ms`. Cross-checks that need the whole rule
//! (TCP, one port, one VIP) run in [`Reader::check_frontend`].

use std::collections::BTreeMap;
use std::ops::Range;

use shoal_dataplane::instances::MAX_INSTANCES;
use shoal_dataplane::{FilterMode, Protocol};

use super::{Item, Node, Reader, RuleDraft, Table};
use crate::frontend::*;

const INSTANCE_KEYS: &[&str] = &["port", "weight"];
const INSTANCE_PROBE_KEYS: &[&str] = &["kind", "path", "interval_ms", "timeout_ms", "fall", "rise"];
const HEALTH_KEYS: &[&str] = &["tcp", "url", "interval_ms", "timeout_ms", "fall", "rise"];
const PROBE_KINDS: &[(&str, bool)] = &[("tcp", false), ("http", true)];

/// What the walk read of a rule's frontend keys.
#[derive(Default)]
pub(super) struct FrontendDraft {
    pub(super) instances: Vec<InstanceSection>,
    pub(super) instances_span: Option<Range<usize>>,
    pub(super) instance_probe: InstanceProbeSection,
    pub(super) health: Option<HealthSection>,
    pub(super) hold_ms: u32,
}

impl Reader<'_, '_> {
    /// Reads the frontend keys of rule table `t`.
    pub(super) fn frontend(&mut self, t: &Table<'_>) -> FrontendDraft {
        let mut d = FrontendDraft {
            hold_ms: self.int(t, "hold_ms", &HOLD_MS_RANGE, DEFAULT_HOLD_MS),
            ..FrontendDraft::default()
        };
        if let Some(e) = t.entry("instances") {
            d.instances_span = Some(e.item.span.clone());
            d.instances = self.instances(&e.item, &t.key_path("instances"));
        }
        if let Some(p) = self.table(t, "instance_probe", INSTANCE_PROBE_KEYS) {
            if t.entry("instances").is_none() {
                self.diag.at(
                    p.span.start,
                    p.path.clone(),
                    "only applies to a rule with `instances`",
                );
            }
            let http = self.choice(&p, "kind", PROBE_KINDS, false);
            let path = self.probe_path(&p);
            if path.is_some() && !http {
                let span = p.entry("path").map_or(p.span.start, |e| e.key_span.start);
                self.diag
                    .at(span, p.key_path("path"), "only applies to kind = \"http\"");
            }
            d.instance_probe = InstanceProbeSection {
                kind: if http {
                    ProbeKind::Http {
                        path: path.unwrap_or_else(|| "/".into()),
                    }
                } else {
                    ProbeKind::Tcp
                },
                timing: self.probe_timing(&p),
            };
        }
        if let Some(h) = self.table(t, "health", HEALTH_KEYS) {
            d.health = self.health(&h);
        }
        d
    }

    fn probe_path(&mut self, p: &Table<'_>) -> Option<String> {
        let e = p.entry("path")?;
        let s = self.string_item(&e.item, &p.key_path("path"))?;
        if !s.starts_with('/') || s.bytes().any(|b| !b.is_ascii_graphic()) {
            self.diag.at(
                e.item.span.start,
                p.key_path("path"),
                format!("{s:?}: expected a path starting with `/`, printable ASCII without spaces"),
            );
            return None;
        }
        Some(s.to_string())
    }

    fn probe_timing(&mut self, p: &Table<'_>) -> ProbeTimingSection {
        let def = ProbeTimingSection::default();
        let timing = ProbeTimingSection {
            interval_ms: self.int(p, "interval_ms", &PROBE_INTERVAL_MS_RANGE, def.interval_ms),
            timeout_ms: self.int(p, "timeout_ms", &PROBE_TIMEOUT_MS_RANGE, def.timeout_ms),
            fall: self.int(p, "fall", &FALL_RISE_RANGE, def.fall),
            rise: self.int(p, "rise", &FALL_RISE_RANGE, def.rise),
        };
        if timing.timeout_ms > timing.interval_ms {
            let span = p
                .entry("timeout_ms")
                .or_else(|| p.entry("interval_ms"))
                .map_or(p.span.start, |e| e.item.span.start);
            self.diag.at(
                span,
                p.key_path("timeout_ms"),
                format!(
                    "{} ms is longer than interval_ms ({} ms); a probe must end before the next",
                    timing.timeout_ms, timing.interval_ms
                ),
            );
        }
        timing
    }

    fn health(&mut self, h: &Table<'_>) -> Option<HealthSection> {
        let timing = self.probe_timing(h);
        match (h.entry("tcp"), h.entry("url")) {
            (Some(e), None) => {
                let key = h.key_path("tcp");
                let s = self.string_item(&e.item, &key)?;
                match s.parse::<std::net::SocketAddr>() {
                    Ok(a) if a.port() != 0 && !a.ip().is_unspecified() => Some(HealthSection {
                        address: a,
                        kind: ProbeKind::Tcp,
                        timing,
                    }),
                    _ => {
                        self.diag.at(
                            e.item.span.start,
                            key,
                            format!("{s:?}: expected ADDRESS:PORT, e.g. \"10.0.0.100:80\""),
                        );
                        None
                    }
                }
            }
            (None, Some(e)) => {
                let key = h.key_path("url");
                let s = self.string_item(&e.item, &key)?;
                match parse_probe_url(s) {
                    Ok((address, path)) => Some(HealthSection {
                        address,
                        kind: ProbeKind::Http { path },
                        timing,
                    }),
                    Err(why) => {
                        self.diag.at(e.item.span.start, key, why);
                        None
                    }
                }
            }
            (Some(_), Some(e)) => {
                self.diag.at(
                    e.key_span.start,
                    h.key_path("url"),
                    "give either `tcp` or `url`, not both",
                );
                None
            }
            (None, None) => {
                self.diag.at(
                    h.span.start,
                    h.path.clone(),
                    "needs `tcp = \"ADDRESS:PORT\"` or `url = \"http://ADDRESS:PORT/PATH\"`",
                );
                None
            }
        }
    }

    /// `instances = [PORT, { port = PORT, weight = W }, ...]`.
    fn instances(&mut self, item: &Item, key: &str) -> Vec<InstanceSection> {
        let Some(items) = self.array_item(item, key, "ports or { port, weight } tables") else {
            return Vec::new();
        };
        if items.is_empty() {
            self.diag.at(
                item.span.start,
                key,
                "an empty instance list; omit `instances`",
            );
        }
        if items.len() > MAX_INSTANCES {
            self.diag.at(
                items[MAX_INSTANCES].span.start,
                key,
                format!("{} instances; at most {MAX_INSTANCES}", items.len()),
            );
        }
        let mut out = Vec::new();
        let mut seen: BTreeMap<u16, usize> = BTreeMap::new();
        for (i, it) in items.iter().enumerate().take(MAX_INSTANCES) {
            let ik = format!("{key}[{}]", i + 1);
            let inst = match &it.node {
                Node::Integer(_) => {
                    self.int_item(it, &ik, &INSTANCE_PORT_RANGE)
                        .ok()
                        .map(|p| InstanceSection {
                            port: p as u16,
                            weight: 1,
                        })
                }
                Node::Table(_) => {
                    let Some(t) = self.as_table(it, ik.clone(), INSTANCE_KEYS) else {
                        continue;
                    };
                    let weight = self.int(&t, "weight", &INSTANCE_WEIGHT_RANGE, 1u32);
                    match t.entry("port") {
                        None => {
                            self.missing(&t, "port");
                            None
                        }
                        Some(e) => self
                            .int_item(&e.item, &t.key_path("port"), &INSTANCE_PORT_RANGE)
                            .ok()
                            .map(|p| InstanceSection {
                                port: p as u16,
                                weight,
                            }),
                    }
                }
                other => {
                    self.diag.at(
                        it.span.start,
                        ik.clone(),
                        format!(
                            "expected a port or {{ port = PORT, weight = W }}, found {}",
                            other.kind()
                        ),
                    );
                    None
                }
            };
            if let Some(inst) = inst {
                if let Some(prev) = seen.insert(inst.port, i + 1) {
                    self.diag.at(
                        it.span.start,
                        ik,
                        format!("port {} is also instance {prev}", inst.port),
                    );
                    continue;
                }
                out.push(inst);
            }
        }
        out
    }

    /// A rule with instances must be one TCP port of one VIP, not
    /// disabled.
    pub(super) fn check_frontend(&mut self, d: &RuleDraft, key: &str) {
        let Some(span) = &d.frontend.instances_span else {
            return;
        };
        let mut problems = Vec::new();
        if d.protocol != Protocol::Tcp {
            problems.push("protocol = \"tcp\"");
        }
        if d.port_start != d.port_end {
            problems.push("a single port");
        }
        if d.vip.is_none() {
            problems.push("one VIP (not \"all\")");
        }
        if d.mode == FilterMode::Disabled {
            problems.push("mode \"multiple\" or \"single\"");
        }
        if !problems.is_empty() {
            self.diag.at(
                span.start,
                format!("{key}.instances"),
                format!(
                    "instances need a rule with {} (the NAT to an instance maps one VIP and port)",
                    problems.join(", ")
                ),
            );
        }
    }
}
