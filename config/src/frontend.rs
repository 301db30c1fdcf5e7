//! A port rule's frontend instances and service health: `instances`,
//! `[rule.instance_probe]`, `[rule.health]` and `hold_ms`.
//!
//! Owns: the validated types and their ranges. Guarantees: a rule that
//! came out of [`crate::parse`] with instances is a TCP rule for one port
//! of one VIP, its instance ports are distinct and there are at most
//! [`shoal_dataplane::instances::MAX_INSTANCES`]; every probe's timeout is
//! at most its interval.

use std::net::SocketAddr;
use std::ops::RangeInclusive;

/// Accepted instance weights.
pub const INSTANCE_WEIGHT_RANGE: RangeInclusive<i64> = 1..=100;
/// Accepted instance ports.
pub const INSTANCE_PORT_RANGE: RangeInclusive<i64> = 1..=65_535;
/// Accepted probe `interval_ms` (100 ms to one minute).
pub const PROBE_INTERVAL_MS_RANGE: RangeInclusive<i64> = 100..=60_000;
/// Accepted probe `timeout_ms`.
pub const PROBE_TIMEOUT_MS_RANGE: RangeInclusive<i64> = 10..=60_000;
/// Accepted `fall` and `rise`.
pub const FALL_RISE_RANGE: RangeInclusive<i64> = 1..=100;
/// Accepted `hold_ms` (up to one hour).
pub const HOLD_MS_RANGE: RangeInclusive<i64> = 0..=3_600_000;
/// Default `hold_ms`: a rule left for its service's health is taken back
/// no sooner than this.
pub const DEFAULT_HOLD_MS: u32 = 10_000;

/// Interval, timeout and hysteresis of one probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ProbeTimingSection {
    /// `interval_ms`: time between two probes of one target.
    pub interval_ms: u32,
    /// `timeout_ms`: a probe not answered by then failed.
    pub timeout_ms: u32,
    /// `fall`: consecutive failures that take a target down.
    pub fall: u32,
    /// `rise`: consecutive successes that bring it back.
    pub rise: u32,
}

impl Default for ProbeTimingSection {
    /// Every second, 500 ms timeout, down after 3 failures, up after 2
    /// successes.
    fn default() -> Self {
        Self {
            interval_ms: 1_000,
            timeout_ms: 500,
            fall: 3,
            rise: 2,
        }
    }
}

/// What a probe does.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ProbeKind {
    /// Connects; success is an accepted TCP connection.
    Tcp,
    /// `GET path HTTP/1.1`; success is any status below 500.
    Http {
        /// The request target, starting with `/`.
        path: String,
    },
}

/// `[rule.instance_probe]`: how each instance is probed (on the VIP at the
/// instance's port).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct InstanceProbeSection {
    /// `kind = "tcp" | "http"` (with `path` for http, default `/`).
    pub kind: ProbeKind,
    /// Timing.
    pub timing: ProbeTimingSection,
}

impl Default for InstanceProbeSection {
    fn default() -> Self {
        Self {
            kind: ProbeKind::Tcp,
            timing: ProbeTimingSection::default(),
        }
    }
}

/// One frontend instance: a local TCP port and its relative share.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct InstanceSection {
    /// The port it listens on (on the rule's VIP).
    pub port: u16,
    /// Relative share of the rule's connections on this host.
    pub weight: u32,
}

/// `[rule.health]`: the probe of the rule's local service.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct HealthSection {
    /// `tcp = "ADDR:PORT"` (connect) or `url = "http://ADDR:PORT/PATH"`
    /// (GET; success is any status below 500).
    pub address: SocketAddr,
    /// What is sent.
    pub kind: ProbeKind,
    /// Timing.
    pub timing: ProbeTimingSection,
}

/// Parses `http://ADDR[:PORT]/PATH` with a literal IP address (IPv6 in
/// brackets); the port defaults to 80 and the path to `/`.
pub fn parse_probe_url(url: &str) -> Result<(SocketAddr, String), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url:?}: only http:// URLs are probed"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if path.bytes().any(|b| !b.is_ascii_graphic()) {
        return Err(format!(
            "{url:?}: the path must be printable ASCII without spaces"
        ));
    }
    let addr = authority
        .parse::<SocketAddr>()
        .or_else(|_| {
            authority
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<std::net::IpAddr>()
                .map(|ip| SocketAddr::new(ip, 80))
        })
        .map_err(|_| {
            format!("{url:?}: the host must be an IP address, e.g. http://127.0.0.1:8080/health")
        })?;
    if addr.port() == 0 || addr.ip().is_unspecified() || addr.ip().is_multicast() {
        return Err(format!("{url:?}: not an address a probe can reach"));
    }
    Ok((addr, path.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_urls() {
        assert_eq!(
            parse_probe_url("http://10.0.0.100:8080/health").unwrap(),
            ("10.0.0.100:8080".parse().unwrap(), "/health".to_string())
        );
        assert_eq!(
            parse_probe_url("http://10.0.0.100").unwrap(),
            ("10.0.0.100:80".parse().unwrap(), "/".to_string())
        );
        assert_eq!(
            parse_probe_url("http://[fd00::1]:81/x").unwrap().0,
            "[fd00::1]:81".parse().unwrap()
        );
        assert!(parse_probe_url("https://10.0.0.1/").is_err());
        assert!(parse_probe_url("http://example.com/").is_err());
        assert!(parse_probe_url("http://0.0.0.0:80/").is_err());
        assert!(parse_probe_url("http://10.0.0.1:80/a b").is_err());
    }
}
