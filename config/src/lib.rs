//! shoal's configuration: one TOML file describes the whole cluster.
//!
//! Owns: the schema, its defaults (NLB's where NLB has one, see
//! `NLB-FACTS.md`), validation with errors that name file, line, key and
//! reason, the normalized form, and the cluster key file format. Every host
//! runs with the same file and picks itself with `--host ID`
//! ([`Config::select_host`]); a file with exactly one `[[host]]` needs no ID.
//!
//! Guarantees:
//! - [`parse`] either returns a [`Config`] in which every value is in range
//!   and every cross-reference holds (unique host IDs, rules naming existing
//!   hosts and VIPs, no two rules covering the same VIP/port/protocol, at least
//!   one IPv4 VIP), or returns *every* problem it found ([`ConfigErrors`]).
//!   Only a TOML syntax error stops it early, because nothing after it can be
//!   read reliably.
//! - Unknown keys are errors anywhere, with the accepted keys listed.
//! - [`Config::to_normalized_toml`] writes every default out, in a stable
//!   order, and parses back to an equal [`Config`].
//! - [`Config::spec`] is a pure function of the file and the bucket seed, so
//!   every host that loads the same file and holds the same key computes the
//!   same [`ClusterSpec`] (and rule fingerprint).
//! - No I/O except [`load`] reading the file and [`Config::check_key_file`]
//!   looking at the key file's metadata. Nothing here panics on bad input.
//!
//! # The format
//!
//! ```toml
//! [cluster]
//! vips = ["10.0.0.100", "fd00:100::100"]  # required, >= 1; the first IPv4 VIP is the primary VIP
//! mode = "unicast"                         # unicast | multicast | igmp (default unicast)
//! key_file = "cluster.key"                 # required; relative to this file's directory
//! ipv6_network_prefix = 64                 # Network affinity prefix for IPv6 clients, 1..=128
//!
//! [heartbeat]
//! period_ms = 1000                         # 50..=10000 (NLB: 100..=10000)
//! tolerance = 5                            # missed periods before a host is dead, 3..=100 (NLB: 5..=100)
//! converge_periods = 3                     # periods of agreement before a view is adopted, 1..=20
//!
//! [descriptors]
//! capacity = 262144                        # NLB's 512 x 512; 1..=16777216
//! tcp_idle_timeout_s = 3600                # 1..=604800
//! tcp_half_open_timeout_s = 30             # 1..=3600
//! tcp_closing_timeout_s = 60               # 1..=3600
//! gre_timeout_s = 300                      # 1..=86400
//! udp_timeout_s = 120                      # 1..=86400 (extended affinity only)
//!
//! [io]
//! backend = "auto"                         # af_xdp | af_packet | auto
//! ring_size = 16384                        # power of two, 512..=65536
//! frame_size = 2048                        # af_xdp UMEM frame: 2048 or 4096 (frames up to size - 256)
//! batch_size = 64                          # 1..=256
//! idle = "backoff"                         # busy | backoff
//! xdp_mode = "auto"                        # native | generic | auto
//! delivery = "tap"                         # tap | veth
//! xdp_fast_path = true                     # af_xdp: drop other hosts' buckets in the kernel
//! xdp_pass = true                          # af_xdp fast path: kept untracked UDP goes to the stack in the kernel
//! xdp_zero_copy = false                    # af_xdp: try a zero-copy bind first
//!
//! [admin]
//! group = "shoal"                          # optional: this group may use the admin socket too (default: root only)
//!
//! [metrics]
//! listen = "127.0.0.1:9810"                # optional: Prometheus / OpenMetrics text at http://ADDRESS:PORT/metrics (default: off)
//!
//! [[host]]
//! id = 1                                   # required, 1..=64, unique; also the host priority
//! interface = "eth0"                       # required
//! dedicated = ["10.0.0.11/24"]             # the host's own addresses, ADDRESS/PREFIX
//! weight = 50                              # default weight in multiple-host rules, 0..=100
//! [host.cores]
//! control = 0                              # control-plane core, 0..=1023
//! poll = [{ core = 1, queues = [0] }]      # one loop per core, each queue once
//! proxy = [1]                              # array tier proxy workers, one per core (default: the poll cores)
//! proxy_sched = "batch"                    # batch (woken workers do not preempt) | normal (SCHED_OTHER)
//!
//! [[rule]]                                 # up to 32; none at all means NLB's default rule
//! vip = "all"                              # "all" or one of cluster.vips
//! ports = [0, 65535]                       # [START, END] or one port
//! protocol = "both"                        # tcp | udp | both
//! mode = "multiple"                        # multiple | single | disabled
//! affinity = "single"                      # none | single | network (multiple only)
//! weights = { 3 = 100 }                    # per-host weight overrides (multiple only)
//! extended_affinity_s = 0                  # 0..=86400, 0 = off (multiple only)
//! # priorities = { 1 = 2, 2 = 1 }          # single only: 1..=64, distinct; default = host ID
//! # instances = [3129, { port = 3130, weight = 2 }]  # local frontend instances (TCP, one port, one VIP), up to 64
//! hold_ms = 10000                          # least time out of a rule left for its health, 0..=3600000
//! # [rule.instance_probe]                  # with instances: kind = "tcp" | "http" (+ path = "/")
//! # interval_ms = 1000; timeout_ms = 500; fall = 3; rise = 2   # 100..=60000, 10..=60000 (<= interval), 1..=100
//! # [rule.health]                          # the local service: tcp = "ADDR:PORT" or url = "http://ADDR:PORT/PATH"
//! # interval_ms = 1000; timeout_ms = 500; fall = 3; rise = 2
//!
//! [[service]]                              # array tier services (up to one per port)
//! name = "web-cache"                       # required, unique
//! port = 8080                              # required TCP port; a [[rule]] must cover it
//! route = "carp"                           # required: carp
//! connect_timeout_ms = 2000                # to owner, parent or local, 1..=60000
//! first_byte_timeout_ms = 15000            # response head within this, else 504; 1..=600000
//! idle_timeout_s = 60                      # keep-alive and CONNECT tunnel idle, 1..=3600
//! max_connections = 10000                  # client connections per host, beyond: 503; 1..=1000000
//! connect_ports = [443]                    # CONNECT only to these ports ([] = no CONNECT)
//! max_head_bytes = 16384                   # request head, beyond: 431; 1024..=1048576
//! max_uri_bytes = 8192                     # request target, beyond: 414; 64..=65000, at most max_head_bytes
//! max_headers = 100                        # header fields, beyond: 431; 1..=1000
//! [service.carp]
//! hash = "spec"                            # spec | squid | hrw
//! key = ["scheme", "host", "port", "path", "query"]  # URL parts hashed (TMG: ["host"])
//! members = "cluster"                      # cluster (hosts, by [[host]] name) | parents
//! local = "127.0.0.1:3128"                 # cluster: the local cache each host serves its URLs from
//! load_factors = { 3 = 2 }                 # cluster: per host ID, 0..=1000 (default 1)
//! exceptions = ["*.corp.example"]          # hosts the receiving member serves itself
//! direct = ["intranet.example"]            # hosts the PAC script sends DIRECT
//! list_ttl_s = 300                         # membership table ListTTL, 1..=86400
//! array_name = "web-cache"                 # default: the service name
//! probe_interval_ms = 1000                 # health probes of members/parents/local, 100..=60000
//! down_ttl_ms = 5000                       # request-path failure keeps a member down this long, 0..=3600000
//! # [[service.carp.parent]]                # members = "parents": upstream proxies
//! # name = "p1.example"; address = "10.0.9.1:3128"; load_factor = 1
//! ```
//!
//! A host's member `name` (in `[[host]]`) defaults to its first dedicated
//! address; with a `members = "cluster"` service every host needs one, and
//! names are unique ignoring case.
//!
//! Without any `[[rule]]`, the cluster has NLB's default rule: every VIP,
//! ports 0-65535, TCP and UDP, multiple host, Single affinity, each host at
//! its `weight`. A rule for one VIP takes precedence over an `"all"` rule, so
//! those two never overlap (as in NLB and `PortRule::overlaps`).
//!
//! # The key file
//!
//! One line of 64 hex digits (the 32-byte key that authenticates
//! heartbeats and seeds the bucket hash); blank lines and `#` comment lines
//! are ignored. Make one with `shoal keygen FILE`. A running host refuses a
//! key file that group or others can access, that root does not own, or
//! that holds the published sample key of `config/examples/`
//! ([`key_file_problems`]). See [`parse_cluster_key`].
#![forbid(unsafe_code)]

mod document;
mod error;
mod frontend;
mod key;
mod read;
mod render;
mod sections;
mod service;

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use shoal_dataplane::{ClusterSpec, FilterMode, HostId, HostSet, PortRule, MAX_HOSTS};

pub use error::{ConfigError, ConfigErrors};
pub use frontend::*;
pub use key::{
    format_cluster_key, key_file_problems, parse_cluster_key, ClusterKey, KeyFileProblem,
    KeyFormatError, CLUSTER_KEY_LEN, EXAMPLE_KEY_FILE,
};
pub use sections::*;
pub use service::*;

/// A validated cluster configuration (see the crate docs for what holds).
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// `[cluster]`.
    pub cluster: ClusterSection,
    /// `[heartbeat]`, defaults filled in.
    pub heartbeat: HeartbeatSection,
    /// `[descriptors]`, defaults filled in.
    pub descriptors: DescriptorSection,
    /// `[io]`, defaults filled in.
    pub io: IoSection,
    /// `[admin]`, defaults filled in.
    pub admin: AdminSection,
    /// `[metrics]`, defaults filled in.
    pub metrics: MetricsSection,
    /// `[[host]]` sections, sorted by host ID.
    pub hosts: Vec<HostSection>,
    /// `[[rule]]` sections in file order, normalized (NLB's default rule when
    /// the file has none).
    pub rules: Vec<RuleSection>,
    /// `[[service]]` sections in file order.
    pub services: Vec<ServiceSection>,
    /// The file this configuration was read from.
    pub source: PathBuf,
}

/// Reads, parses and validates the configuration file at `path`.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::new(path, None, "file", format!("cannot read: {e}")))?;
    parse(&text, path)
}

/// Parses and validates configuration `text`; `path` names it in errors and
/// anchors a relative `key_file`. Does no I/O.
pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigErrors> {
    read::parse(text, path)
}

/// Why [`Config::select_host`] found no host to run as.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HostSelectError {
    /// The requested ID has no `[[host]]`.
    #[error("no [[host]] with id = {requested} in {file}; configured host IDs: {configured}")]
    UnknownHost {
        /// The requested ID.
        requested: u8,
        /// The configuration file.
        file: String,
        /// The configured IDs, comma-separated.
        configured: String,
    },
    /// No ID given and the file has several hosts.
    #[error("{file} describes {count} hosts; choose one with --host ID (one of {configured})")]
    Ambiguous {
        /// The configuration file.
        file: String,
        /// Number of hosts.
        count: usize,
        /// The configured IDs, comma-separated.
        configured: String,
    },
}

impl Config {
    /// The cluster-wide agreement the dataplane and control plane run on:
    /// VIPs, mode, IPv6 network prefix and the port rules. Per-host arrays
    /// are indexed by `HostId::index()`; hosts without a `[[host]]` get weight
    /// 0 and priority 0 (unused: they can never be in the view). Multiple-host
    /// rules carry each host's effective weight (`host.weight`, then the
    /// rule's override); single-host rules carry each host's effective
    /// priority and all-zero weights; disabled rules carry zeros.
    ///
    /// `bucket_seed` seeds the bucket hash and must be secret and the same
    /// on every host: the engine derives it from the cluster key
    /// (`shoal_controlplane::bucket_seed`); this crate does no cryptography.
    pub fn spec(&self, bucket_seed: u64) -> ClusterSpec {
        let rules = self
            .rules
            .iter()
            .map(|r| {
                let mut rule = PortRule::new(r.vip, (r.port_start, r.port_end), r.protocol, r.mode);
                rule.weights = [0; MAX_HOSTS];
                if let FilterMode::Multiple { .. } = r.mode {
                    for (id, w) in &r.weights {
                        rule.weights[id.index()] = *w;
                    }
                }
                if let FilterMode::Single = r.mode {
                    for (id, p) in &r.priorities {
                        rule.priorities[id.index()] = *p;
                    }
                }
                rule.extended_affinity_timeout_s = r.extended_affinity_s;
                rule
            })
            .collect();
        ClusterSpec {
            vips: self.cluster.vips.clone(),
            mode: self.cluster.mode,
            ipv6_network_prefix: self.cluster.ipv6_network_prefix,
            rules,
            bucket_seed,
        }
    }

    /// The `[[host]]` with ID `id`.
    pub fn host(&self, id: HostId) -> Option<&HostSection> {
        self.hosts.iter().find(|h| h.id == id)
    }

    /// The keys whose values differ between this (running) configuration
    /// and `next` but that a running host cannot take without a restart
    /// (`shoal reload` applies `[[rule]]` sections and weights only): the
    /// `[cluster]` keys, `[heartbeat]`, `[descriptors]`, `[io]` and `[admin]` keys, the
    /// `[[service]]` sections, and
    /// host `local`'s `interface`, `dedicated` and `cores`. Empty when
    /// `next` can be reloaded.
    pub fn restart_only_changes(&self, next: &Config, local: HostId) -> Vec<&'static str> {
        let mut changed = Vec::new();
        let mut check = |key: &'static str, differs: bool| {
            if differs {
                changed.push(key);
            }
        };
        let (a, b) = (&self.cluster, &next.cluster);
        check("cluster.vips", a.vips != b.vips);
        check("cluster.mode", a.mode != b.mode);
        check("cluster.key_file", a.key_file != b.key_file);
        check(
            "cluster.ipv6_network_prefix",
            a.ipv6_network_prefix != b.ipv6_network_prefix,
        );
        let (a, b) = (&self.heartbeat, &next.heartbeat);
        check("heartbeat.period_ms", a.period_ms != b.period_ms);
        check("heartbeat.tolerance", a.tolerance != b.tolerance);
        check(
            "heartbeat.converge_periods",
            a.converge_periods != b.converge_periods,
        );
        check("descriptors", self.descriptors != next.descriptors);
        check("io", self.io != next.io);
        check("admin.group", self.admin.group != next.admin.group);
        check("metrics.listen", self.metrics.listen != next.metrics.listen);
        check("service", self.services != next.services);
        fn frontend(
            c: &Config,
        ) -> Vec<(
            &[InstanceSection],
            &InstanceProbeSection,
            Option<&HealthSection>,
            u32,
        )> {
            c.rules
                .iter()
                .map(|r| {
                    (
                        &r.instances[..],
                        &r.instance_probe,
                        r.health.as_ref(),
                        r.hold_ms,
                    )
                })
                .collect()
        }
        check(
            "rule.instances, instance_probe, health or hold_ms",
            frontend(self) != frontend(next),
        );
        match (self.host(local), next.host(local)) {
            (Some(a), Some(b)) => {
                check("host.interface", a.interface != b.interface);
                check("host.dedicated", a.dedicated != b.dedicated);
                check("host.cores", a.cores != b.cores);
            }
            (Some(_), None) => check("host (this host's section is gone)", true),
            _ => {}
        }
        changed
    }

    /// Every configured host ID.
    pub fn host_ids(&self) -> HostSet {
        self.hosts.iter().map(|h| h.id).collect()
    }

    /// The primary VIP: the first IPv4 VIP, which names the cluster MAC.
    /// [`parse`] guarantees one exists; a hand-built `Config` without one
    /// gets `0.0.0.0`.
    pub fn primary_vip(&self) -> Ipv4Addr {
        self.cluster
            .vips
            .iter()
            .find_map(|ip| match ip {
                IpAddr::V4(v4) => Some(*v4),
                IpAddr::V6(_) => None,
            })
            .unwrap_or(Ipv4Addr::UNSPECIFIED)
    }

    /// The key file path, a relative `key_file` resolved against the
    /// configuration file's directory.
    pub fn key_path(&self) -> PathBuf {
        if self.cluster.key_file.is_absolute() {
            return self.cluster.key_file.clone();
        }
        match self.source.parent() {
            Some(dir) => dir.join(&self.cluster.key_file),
            None => self.cluster.key_file.clone(),
        }
    }

    /// Checks that [`Config::key_path`] names an existing regular file (its
    /// contents are the engine's to read, with [`parse_cluster_key`]).
    pub fn check_key_file(&self) -> Result<(), ConfigError> {
        let path = self.key_path();
        let problem = match std::fs::metadata(&path) {
            Ok(m) if m.is_file() => return Ok(()),
            Ok(_) => format!("{} is not a regular file", path.display()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                format!("key file {} does not exist", path.display())
            }
            Err(e) => format!("key file {}: {e}", path.display()),
        };
        Err(ConfigError::new(
            &self.source,
            None,
            "cluster.key_file",
            problem,
        ))
    }

    /// The host this process runs as: `requested` (from `--host`), or the
    /// only host when the file has exactly one.
    pub fn select_host(&self, requested: Option<u8>) -> Result<&HostSection, HostSelectError> {
        let configured = self
            .hosts
            .iter()
            .map(|h| h.id.to_string())
            .collect::<Vec<_>>()
            .join(", ");
        let file = self.source.display().to_string();
        match requested {
            Some(id) => {
                HostId::new(id)
                    .and_then(|id| self.host(id))
                    .ok_or(HostSelectError::UnknownHost {
                        requested: id,
                        file,
                        configured,
                    })
            }
            None => match self.hosts.as_slice() {
                [only] => Ok(only),
                hosts => Err(HostSelectError::Ambiguous {
                    file,
                    count: hosts.len(),
                    configured,
                }),
            },
        }
    }

    /// The configuration as TOML with every default written out, in a stable
    /// order; parsing it (with the same path) yields an equal `Config`.
    pub fn to_normalized_toml(&self) -> String {
        render::render(self)
    }
}
