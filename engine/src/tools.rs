//! The offline operator tools: `ip2mac`, `owner`, `map`, `classify` and
//! `carp` ([`carp`]). No network: they read a config (and a capture) and
//! print. `owner` and `classify` also take the cluster key, which seeds the
//! bucket hash (so they need read access to the key file); `map`'s shares
//! do not depend on it.

pub mod carp;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use anyhow::{anyhow, bail, Context, Result};
use shoal_config::{ClusterKey, Config};
use shoal_dataplane::bucket::BUCKETS;
use shoal_dataplane::descriptor::DescriptorConfig;
use shoal_dataplane::mac::{igmp_group, igmp_mac, multicast_mac, unicast_mac};
use shoal_dataplane::map::{ClusterMap, RuleOwner, View};
use shoal_dataplane::packet::{parse_frame, FrameKind};
use shoal_dataplane::pipeline::{Dataplane, DropReason, Verdict};
use shoal_dataplane::sim::SimCluster;
use shoal_dataplane::{FilterMode, HostId, HostSet};

/// `shoal ip2mac VIP`: the three cluster MACs of a primary VIP.
pub fn ip2mac(vip: Ipv4Addr) -> String {
    format!(
        "unicast {}\nmulticast {}\nigmp {} group {}\n",
        unicast_mac(vip),
        multicast_mac(vip),
        igmp_mac(vip),
        igmp_group(vip)
    )
}

/// Parses `--members 1,2,3`; `None` means every configured host.
pub fn members(config: &Config, list: Option<&str>) -> Result<HostSet> {
    let Some(list) = list else {
        return Ok(config.host_ids());
    };
    let mut set = HostSet::EMPTY;
    for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let n: u8 = part
            .parse()
            .with_context(|| format!("--members: {part:?} is not a host ID"))?;
        let id =
            HostId::new(n).ok_or_else(|| anyhow!("--members: host ID {n} is outside 1..=64"))?;
        if config.host(id).is_none() {
            bail!(
                "--members: host {n} has no [[host]] in {}",
                config.source.display()
            );
        }
        set.insert(id);
    }
    Ok(set)
}

/// Parses `ADDR` or `ADDR:PORT` (`[v6]:PORT` for IPv6).
pub fn endpoint(s: &str) -> Result<(IpAddr, u16)> {
    if let Ok(sa) = s.parse::<SocketAddr>() {
        return Ok((sa.ip(), sa.port()));
    }
    let ip = s
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
        .with_context(|| format!("{s:?} is not an address or address:port"))?;
    Ok((ip, 0))
}

/// Parses a protocol name for `owner`.
pub fn protocol(s: &str) -> Result<u8> {
    match s.to_ascii_lowercase().as_str() {
        "tcp" => Ok(6),
        "udp" => Ok(17),
        other => bail!("protocol {other:?}: expected tcp or udp"),
    }
}

/// The bucket seed of a cluster keyed with `key`.
fn seed(key: &ClusterKey) -> u64 {
    shoal_controlplane::bucket_seed(key.as_bytes())
}

fn converged_map(config: &Config, bucket_seed: u64, members: HostSet) -> Result<ClusterMap> {
    let spec = config.spec(bucket_seed);
    let view = View::converged(&spec, members);
    let local = members
        .first()
        .ok_or_else(|| anyhow!("no members: the view is empty"))?;
    Ok(ClusterMap::build(&spec, &view, local, 1))
}

/// `shoal owner`: which host keeps a new flow, and its bucket.
pub fn owner(
    config: &Config,
    key: &ClusterKey,
    members: HostSet,
    proto: u8,
    client: (IpAddr, u16),
    vip: (IpAddr, u16),
) -> Result<String> {
    let map = converged_map(config, seed(key), members)?;
    Ok(owner_line(&map, proto, client, vip))
}

/// `shoal owner` with several clients: one line each, the client as given,
/// then what [`owner`] prints for it. The map is built once, so a lab judge
/// can ask for hundreds of clients in one call.
pub fn owners(
    config: &Config,
    key: &ClusterKey,
    members: HostSet,
    proto: u8,
    clients: &[(&str, (IpAddr, u16))],
    vip: (IpAddr, u16),
) -> Result<String> {
    let map = converged_map(config, seed(key), members)?;
    let mut out = String::new();
    for (given, client) in clients {
        out.push_str(given);
        out.push(' ');
        out.push_str(&owner_line(&map, proto, *client, vip));
    }
    Ok(out)
}

fn owner_line(map: &ClusterMap, proto: u8, client: (IpAddr, u16), vip: (IpAddr, u16)) -> String {
    if !map.is_vip(vip.0) {
        return format!("none ({} is not a VIP of this cluster)\n", vip.0);
    }
    let o = Dataplane::owner_of(map, proto, client.0, client.1, vip.0, vip.1);
    let host = o.host.map_or("none".to_string(), |h| format!("host {h}"));
    let rule = o
        .rule
        .map_or("no rule covers it: default host".to_string(), |r| {
            format!("rule {}", r + 1)
        });
    let bucket = o.bucket.map_or(String::new(), |b| format!(" bucket {b}"));
    format!("{host} ({rule}{bucket})\n")
}

/// `shoal map`: each rule's bucket shares per host against the configured weights.
pub fn map(config: &Config, members: HostSet) -> Result<String> {
    // Shares do not depend on the bucket seed.
    let map = converged_map(config, 0, members)?;
    let spec = config.spec(0);
    let mut out = String::new();
    writeln!(out, "members: {members:?}").ok();
    for (i, r) in map.rules.iter().enumerate() {
        let rule = &r.rule;
        let vip = rule.vip.map_or("all".to_string(), |v| v.to_string());
        writeln!(
            out,
            "rule {} vip {} ports {}-{} {:?} {:?}",
            i + 1,
            vip,
            rule.port_start,
            rule.port_end,
            rule.protocol,
            rule.mode
        )
        .ok();
        match &r.owner {
            RuleOwner::Buckets(m) => {
                let counts = m.counts();
                let total_w: u32 = members
                    .iter()
                    .map(|h| spec.rules[i].weights[h.index()] as u32)
                    .sum();
                writeln!(out, "  host  weight  expected  buckets  share").ok();
                for h in members.iter() {
                    let w = spec.rules[i].weights[h.index()] as u32;
                    let expected = if total_w == 0 {
                        0.0
                    } else {
                        100.0 * w as f64 / total_w as f64
                    };
                    let n = counts[h.index()];
                    writeln!(
                        out,
                        "  {:>4}  {:>6}  {:>7.2}%  {:>7}  {:>5.2}%",
                        h.get(),
                        w,
                        expected,
                        n,
                        100.0 * n as f64 / BUCKETS as f64
                    )
                    .ok();
                }
            }
            RuleOwner::Single(h) => {
                let h = h.map_or("none".to_string(), |h| format!("host {h}"));
                writeln!(out, "  single host: {h} takes all").ok();
            }
            RuleOwner::Disabled => {
                writeln!(out, "  disabled: every host drops it").ok();
            }
        }
        if let FilterMode::Multiple { affinity } = rule.mode {
            writeln!(out, "  affinity {affinity:?}").ok();
        }
    }
    writeln!(
        out,
        "default host: {}",
        map.default_host.map_or("none".into(), |h| h.to_string())
    )
    .ok();
    Ok(out)
}

/// What `classify` found in a capture.
#[derive(Debug, Default, serde::Serialize)]
pub struct ClassifyReport {
    /// Ethernet frames read.
    pub frames: u64,
    /// Frames for a VIP.
    pub for_cluster: u64,
    /// Frames each host kept.
    pub kept_by_host: BTreeMap<String, u64>,
    /// Frames every host dropped, by the reason.
    pub dropped_by_reason: BTreeMap<String, u64>,
    /// Control frames by kind.
    pub control: BTreeMap<String, u64>,
    /// Frames that are not cluster traffic.
    pub pass: u64,
    /// Malformed frames by reason.
    pub malformed: BTreeMap<String, u64>,
    /// Frames kept by more than one host (must be 0).
    pub duplicates: u64,
    /// Frames for the cluster that a rule or the default host covers.
    pub covered: u64,
    /// Records skipped: not Ethernet.
    pub skipped_link_type: u64,
}

/// Rewrites the IP destination of `frame` to the cluster's VIP of the same
/// family, so captures of any traffic exercise the cluster path.
fn rewrite_to_vip(frame: &mut [u8], vip4: Option<Ipv4Addr>, vip6: Option<std::net::Ipv6Addr>) {
    let Ok(info) = parse_frame(frame) else { return };
    let o = info.l3_offset;
    match info.kind {
        FrameKind::Ipv4(_) => {
            if let (Some(v), Some(dst)) = (vip4, frame.get_mut(o + 16..o + 20)) {
                dst.copy_from_slice(&v.octets());
            }
        }
        FrameKind::Ipv6(_) => {
            if let (Some(v), Some(dst)) = (vip6, frame.get_mut(o + 24..o + 40)) {
                dst.copy_from_slice(&v.octets());
            }
        }
        _ => {}
    }
}

/// `shoal classify`: replays a capture through one simulated dataplane per
/// member with a converged view.
pub fn classify(
    config: &Config,
    key: &ClusterKey,
    members: HostSet,
    capture: &[u8],
    rewrite_vip: bool,
) -> Result<ClassifyReport> {
    Classifier::new(config, key, members)?.replay(capture, rewrite_vip)
}

/// Simulated members that replay captures (state carries over between
/// replays, as on a live segment).
#[derive(Debug)]
pub struct Classifier {
    sim: SimCluster,
    members: HostSet,
    vip4: Option<Ipv4Addr>,
    vip6: Option<std::net::Ipv6Addr>,
}

impl Classifier {
    /// Members of `config` in a converged view.
    pub fn new(config: &Config, key: &ClusterKey, members: HostSet) -> Result<Self> {
        if members.is_empty() {
            bail!("--members: the view is empty");
        }
        let spec = config.spec(seed(key));
        let vip4 = spec.vips.iter().find_map(|v| match v {
            IpAddr::V4(a) => Some(*a),
            _ => None,
        });
        let vip6 = spec.vips.iter().find_map(|v| match v {
            IpAddr::V6(a) => Some(*a),
            _ => None,
        });
        let sim = SimCluster::new(spec, members, DescriptorConfig::default());
        Ok(Self {
            sim,
            members,
            vip4,
            vip6,
        })
    }

    /// Replays one capture; with `rewrite_vip`, every IP destination is
    /// rewritten to the cluster's VIP of its family first.
    pub fn replay(&mut self, capture: &[u8], rewrite_vip: bool) -> Result<ClassifyReport> {
        let sim = &mut self.sim;
        let mut report = ClassifyReport::default();
        for h in self.members.iter() {
            report.kept_by_host.insert(h.to_string(), 0);
        }
        let mut buf = Vec::with_capacity(65536);
        for record in shoal_dataplane::pcap::frames(capture).context("reading the capture")? {
            let record = match record {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("warning: capture ends early: {e}");
                    break;
                }
            };
            if record.link_type != 1 {
                report.skipped_link_type += 1;
                continue;
            }
            report.frames += 1;
            buf.clear();
            buf.extend_from_slice(record.data);
            if rewrite_vip {
                rewrite_to_vip(&mut buf, self.vip4, self.vip6);
            }
            let now = record.timestamp_ns;
            let before = sim.members()[0].1.counters().for_cluster();
            let verdicts = sim.judge(&buf, now);
            if sim.members()[0].1.counters().for_cluster() > before {
                report.for_cluster += 1;
            }
            let keepers: Vec<HostId> = verdicts
                .iter()
                .filter(|(_, v)| *v == Verdict::Keep)
                .map(|(h, _)| *h)
                .collect();
            if keepers.len() > 1 {
                report.duplicates += 1;
            }
            if let Some(h) = keepers.first() {
                *report.kept_by_host.entry(h.to_string()).or_default() += 1;
                report.covered += 1;
                continue;
            }
            match verdicts[0].1 {
                Verdict::Control(c) => *report.control.entry(c.name().into()).or_default() += 1,
                Verdict::Pass => report.pass += 1,
                Verdict::Drop(DropReason::Malformed(m)) => {
                    *report.malformed.entry(m.name().into()).or_default() += 1
                }
                Verdict::Drop(_) => {
                    // Nobody kept it: report the reason that is not merely
                    // "another host has it".
                    let reason = verdicts
                        .iter()
                        .filter_map(|(_, v)| match v {
                            Verdict::Drop(r) if *r != DropReason::NotOwner => Some(*r),
                            _ => None,
                        })
                        .next()
                        .unwrap_or(DropReason::NotOwner);
                    *report
                        .dropped_by_reason
                        .entry(reason.name().into())
                        .or_default() += 1;
                }
                Verdict::Keep => {}
            }
        }
        Ok(report)
    }
}

/// Renders a classify report for people.
pub fn classify_text(r: &ClassifyReport) -> String {
    let mut out = String::new();
    writeln!(out, "frames       {}", r.frames).ok();
    writeln!(out, "for cluster  {}", r.for_cluster).ok();
    for (h, n) in &r.kept_by_host {
        writeln!(out, "kept host {h:<3} {n}").ok();
    }
    for (k, n) in &r.dropped_by_reason {
        writeln!(out, "dropped {k:<20} {n}").ok();
    }
    for (k, n) in &r.control {
        writeln!(out, "control {k:<20} {n}").ok();
    }
    writeln!(out, "pass         {}", r.pass).ok();
    for (k, n) in &r.malformed {
        writeln!(out, "malformed {k:<26} {n}").ok();
    }
    writeln!(out, "duplicates   {}", r.duplicates).ok();
    if r.skipped_link_type > 0 {
        writeln!(out, "skipped (not Ethernet) {}", r.skipped_link_type).ok();
    }
    out
}
