//! The schema walk for `[service.sticky]` (`route = "sticky"`).
//!
//! Same guarantees as the rest of the walk: every problem is reported at
//! its line and key path; values that failed fall back to their defaults
//! so later checks still run.

use std::collections::BTreeMap;

use shoal_dataplane::array::sticky::{
    Coherence, Controller, Glob, Owner, OwnerFailure, Policy, StaticRule, TrustedNet,
    DEFAULT_COOKIE, DEFAULT_MAX_AGE_S,
};
use shoal_dataplane::array::{HashMode, KeyParts};

use super::{Item, Reader, Table};
use crate::service::*;

const STICKY_KEYS: &[&str] = &[
    "local",
    "cookie",
    "cookie_max_age_s",
    "coherence",
    "session_cookies",
    "static",
    "controller",
    "on_owner_failure",
    "trusted_proxies",
    "hop_limit",
    "ocf",
    "tls",
    "backend_tls",
    "probe_interval_ms",
    "down_ttl_ms",
];
const CONTROLLER_KEYS: &[&str] = &["paths", "methods"];
const TLS_KEYS: &[&str] = &["cert", "key"];
const OCF_KEYS: &[&str] = &["name", "address"];

impl Reader<'_, '_> {
    /// `[service.sticky]` and the span of the table.
    pub(super) fn sticky(&mut self, item: &Item, path: &str) -> Option<(StickySection, usize)> {
        let t = self.as_table(item, path.to_string(), STICKY_KEYS)?;
        let local = match t.entry("local") {
            None => {
                self.missing(&t, "local");
                None
            }
            Some(e) => self.socket_addr(&e.item, &t.key_path("local")),
        };
        let cookie = match t.entry("cookie") {
            None => DEFAULT_COOKIE.to_string(),
            Some(e) => {
                let key = t.key_path("cookie");
                match self.string_item(&e.item, &key) {
                    Some(s) if cookie_name_ok(s) => s.to_string(),
                    Some(s) => {
                        self.diag.at(
                            e.item.span.start,
                            key,
                            format!(
                                "{s:?} is not a cookie name (1 to 64 letters, digits, `-`, `_`)"
                            ),
                        );
                        DEFAULT_COOKIE.to_string()
                    }
                    None => DEFAULT_COOKIE.to_string(),
                }
            }
        };
        let cookie_max_age_s = self.int(
            &t,
            "cookie_max_age_s",
            &COOKIE_MAX_AGE_RANGE,
            DEFAULT_MAX_AGE_S as u32,
        );
        let coherence = self.choice(&t, "coherence", Coherence::NAMES, Coherence::Always);
        let session_cookies: Vec<Glob> = self
            .strings(&t, "session_cookies", "cookie name patterns")
            .into_iter()
            .map(|(s, _)| Glob::new(&s))
            .collect();
        if coherence == Coherence::Session && session_cookies.is_empty() {
            let span = t
                .entry("coherence")
                .map_or(t.span.start, |e| e.item.span.start);
            self.diag.at(
                span,
                t.key_path("session_cookies"),
                "coherence = \"session\" needs at least one session cookie name",
            );
        }
        let mut statics = Vec::new();
        for (s, span) in self.strings(&t, "static", "extensions or path patterns") {
            match StaticRule::parse(&s) {
                Ok(r) => statics.push(r),
                Err(why) => self.diag.at(span, t.key_path("static"), why),
            }
        }
        let controller = self.controller(&t);
        let on_owner_failure = self.choice(
            &t,
            "on_owner_failure",
            OwnerFailure::NAMES,
            OwnerFailure::Repin,
        );
        let mut trusted_proxies = Vec::new();
        for (s, span) in self.strings(&t, "trusted_proxies", "addresses or networks") {
            match TrustedNet::parse(&s) {
                Ok(n) => trusted_proxies.push(n),
                Err(why) => self.diag.at(span, t.key_path("trusted_proxies"), why),
            }
        }
        let hop_limit = self.int(&t, "hop_limit", &HOP_LIMIT_RANGE, 1u8);
        let ocf = self.ocf(&t);
        let tls = self.tls(&t);
        let backend_tls = self.boolean(&t, "backend_tls", false);
        let probe_interval_ms = self.int(
            &t,
            "probe_interval_ms",
            &PROBE_INTERVAL_RANGE,
            DEFAULT_PROBE_INTERVAL_MS,
        );
        let down_ttl_ms = self.int(&t, "down_ttl_ms", &DOWN_TTL_RANGE, DEFAULT_DOWN_TTL_MS);
        let local = local?;
        let policy = Policy {
            coherence,
            session_cookies,
            statics,
            controller,
            on_owner_failure,
            hop_limit,
            ocf: ocf.iter().map(|o| o.name.clone()).collect(),
        };
        let array = CarpSection {
            hash: HashMode::Spec,
            key: KeyParts::ALL,
            members: CarpMembers::Cluster {
                local,
                load_factors: BTreeMap::new(),
            },
            exceptions: Vec::new(),
            direct: Vec::new(),
            list_ttl_s: DEFAULT_LIST_TTL_S,
            array_name: String::new(),
            probe_interval_ms,
            down_ttl_ms,
        };
        Some((
            StickySection {
                local,
                cookie,
                cookie_max_age_s,
                policy,
                ocf,
                trusted_proxies,
                tls,
                backend_tls,
                array,
            },
            t.span.start,
        ))
    }

    /// An optional array of strings, each with its span.
    fn strings(&mut self, t: &Table<'_>, key: &str, what: &str) -> Vec<(String, usize)> {
        let Some(e) = t.entry(key) else {
            return Vec::new();
        };
        let path = t.key_path(key);
        let Some(items) = self.array_item(&e.item, &path, what) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for element in items {
            if let Some(s) = self.string_item(element, &path) {
                out.push((s.to_string(), element.span.start));
            }
        }
        out
    }

    fn controller(&mut self, t: &Table<'_>) -> Controller {
        let Some(e) = t.entry("controller") else {
            return Controller::default();
        };
        let Some(c) = self.as_table(&e.item, t.key_path("controller"), CONTROLLER_KEYS) else {
            return Controller::default();
        };
        let mut out = Controller::default();
        for (s, span) in self.strings(&c, "paths", "path patterns") {
            if s.starts_with('/') {
                out.paths.push(Glob::new(&s));
            } else {
                self.diag.at(
                    span,
                    c.key_path("paths"),
                    format!("{s:?} must start with \"/\""),
                );
            }
        }
        for (s, span) in self.strings(&c, "methods", "method names") {
            if !s.is_empty() && s.bytes().all(|b| b.is_ascii_uppercase() || b == b'-') {
                out.methods.push(s);
            } else {
                self.diag.at(
                    span,
                    c.key_path("methods"),
                    format!("{s:?} is not a method name (upper-case letters and `-`)"),
                );
            }
        }
        out
    }

    fn tls(&mut self, t: &Table<'_>) -> Option<TlsFiles> {
        let e = t.entry("tls")?;
        let tls = self.as_table(&e.item, t.key_path("tls"), TLS_KEYS)?;
        let mut file = |k: &str| match tls.entry(k) {
            None => {
                self.missing(&tls, k);
                None
            }
            Some(e) => match self.string_item(&e.item, &tls.key_path(k)) {
                Some("") => {
                    self.diag
                        .at(e.item.span.start, tls.key_path(k), "an empty path");
                    None
                }
                Some(s) => Some(std::path::PathBuf::from(s)),
                None => None,
            },
        };
        let cert = file("cert");
        let key = file("key");
        Some(TlsFiles {
            cert: cert?,
            key: key?,
        })
    }

    fn ocf(&mut self, t: &Table<'_>) -> Vec<OcfMember> {
        let mut out: Vec<OcfMember> = Vec::new();
        let items = self.tables_in(t, "ocf", "service.sticky.ocf", None);
        for (i, item) in items.iter().enumerate() {
            let path = format!("{}[{}]", t.key_path("ocf"), i + 1);
            let Some(o) = self.as_table(item, path, OCF_KEYS) else {
                continue;
            };
            let name = match o.entry("name") {
                None => {
                    self.missing(&o, "name");
                    None
                }
                Some(e) => match self.string_item(&e.item, &o.key_path("name")) {
                    Some(n) if Owner::valid_name(n.as_bytes()) => {
                        if out.iter().any(|x| x.name == n) {
                            self.diag.at(
                                e.item.span.start,
                                o.key_path("name"),
                                format!("another ocf member is named {n:?}"),
                            );
                            None
                        } else {
                            Some(n.to_string())
                        }
                    }
                    Some(n) => {
                        self.diag.at(
                            e.item.span.start,
                            o.key_path("name"),
                            format!("{n:?}: 1 to 64 letters, digits, `-`, `_`, and not h<digits> (which names a host)"),
                        );
                        None
                    }
                    None => None,
                },
            };
            let address = match o.entry("address") {
                None => {
                    self.missing(&o, "address");
                    None
                }
                Some(e) => self.socket_addr(&e.item, &o.key_path("address")),
            };
            if let (Some(name), Some(address)) = (name, address) {
                out.push(OcfMember { name, address });
            }
        }
        out
    }
}

fn cookie_name_ok(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}
