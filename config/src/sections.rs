//! The validated configuration's sections, their defaults and their ranges.
//!
//! Owns: one type per TOML section, the small enums behind string settings,
//! the [`Cidr`] address type, and the constants that state every default and
//! every accepted range. Guarantees: a value of these types that came out of
//! [`crate::parse`] is inside the documented ranges; `Default` is NLB's
//! default where NLB has one (NLB-FACTS.md) and shoal's otherwise.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::str::FromStr;

use crate::frontend::{HealthSection, InstanceProbeSection, InstanceSection, DEFAULT_HOLD_MS};
use shoal_dataplane::{Affinity, ClusterMode, FilterMode, HostId, Protocol, DEFAULT_WEIGHT};

/// Accepted `cluster.ipv6_network_prefix` values.
pub const IPV6_PREFIX_RANGE: RangeInclusive<i64> = 1..=128;
/// Default prefix that `Affinity::Network` groups IPv6 clients by.
pub const DEFAULT_IPV6_NETWORK_PREFIX: u8 = 64;

/// Accepted `heartbeat.period_ms` (NLB: 100..=10000; 50 allows sub-second failover).
pub const PERIOD_MS_RANGE: RangeInclusive<i64> = 50..=10_000;
/// Accepted `heartbeat.tolerance` (NLB: 5..=100; 3 allows faster failover).
pub const TOLERANCE_RANGE: RangeInclusive<i64> = 3..=100;
/// Accepted `heartbeat.converge_periods`.
pub const CONVERGE_PERIODS_RANGE: RangeInclusive<i64> = 1..=20;

/// Accepted `descriptors.capacity`.
pub const CAPACITY_RANGE: RangeInclusive<i64> = 1..=16_777_216;
/// Accepted `descriptors.tcp_idle_timeout_s` (up to one week).
pub const TCP_IDLE_RANGE: RangeInclusive<i64> = 1..=604_800;
/// Accepted `descriptors.tcp_half_open_timeout_s`.
pub const TCP_HALF_OPEN_RANGE: RangeInclusive<i64> = 1..=3_600;
/// Accepted `descriptors.tcp_closing_timeout_s`.
pub const TCP_CLOSING_RANGE: RangeInclusive<i64> = 1..=3_600;
/// Accepted `descriptors.gre_timeout_s` (up to one day).
pub const GRE_TIMEOUT_RANGE: RangeInclusive<i64> = 1..=86_400;
/// Accepted `descriptors.udp_timeout_s` (up to one day).
pub const UDP_TIMEOUT_RANGE: RangeInclusive<i64> = 1..=86_400;

/// Accepted `io.ring_size` (and it must be a power of two).
pub const RING_SIZE_RANGE: RangeInclusive<i64> = 512..=65_536;
/// Accepted `io.frame_size` (AF_XDP UMEM frame bytes; the kernel keeps 256
/// of them as headroom, so 2048 receives frames up to 1792 bytes and 4096
/// up to 3840).
pub const FRAME_SIZES: [u32; 2] = [2048, 4096];
/// Accepted `io.batch_size`.
pub const BATCH_SIZE_RANGE: RangeInclusive<i64> = 1..=256;

/// Accepted host IDs.
pub const HOST_ID_RANGE: RangeInclusive<i64> = 1..=64;
/// Accepted load weights.
pub const WEIGHT_RANGE: RangeInclusive<i64> = 0..=100;
/// Accepted single-host handling priorities.
pub const PRIORITY_RANGE: RangeInclusive<i64> = 1..=64;
/// Accepted CPU core numbers (Linux's default `CPU_SETSIZE` is 1024).
pub const CORE_RANGE: RangeInclusive<i64> = 0..=1023;
/// Accepted NIC queue numbers.
pub const QUEUE_RANGE: RangeInclusive<i64> = 0..=1023;
/// Accepted port numbers.
pub const PORT_RANGE: RangeInclusive<i64> = 0..=65_535;
/// Accepted `rule.extended_affinity_s` (0 is off; up to one day).
pub const EXTENDED_AFFINITY_RANGE: RangeInclusive<i64> = 0..=86_400;
/// Longest Linux interface name (`IFNAMSIZ` - 1).
pub const MAX_INTERFACE_NAME: usize = 15;

/// Longest accepted `admin.group` (the usual `LOGIN_NAME_MAX`-bound 32).
pub const MAX_GROUP_NAME: usize = 32;

/// `[admin]`: who may use the admin socket besides root.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AdminSection {
    /// A group whose members may use the admin socket (its mode becomes
    /// 0660 with this group); `None`: root only (mode 0600). The name is
    /// checked here; the engine resolves it when it starts.
    pub group: Option<String>,
}

/// `[metrics]`: the Prometheus / OpenMetrics endpoint.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MetricsSection {
    /// Where `/metrics` is served (HTTP); `None` (the section or the key
    /// absent): no endpoint.
    pub listen: Option<std::net::SocketAddr>,
}

/// `[cluster]`: what every host must agree on about the cluster itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterSection {
    /// Virtual IPs in file order; at least one is IPv4, none repeats.
    pub vips: Vec<IpAddr>,
    /// How cluster frames reach every host.
    pub mode: ClusterMode,
    /// The cluster key file as written; see [`crate::Config::key_path`].
    pub key_file: PathBuf,
    /// Prefix that `Affinity::Network` groups IPv6 clients by.
    pub ipv6_network_prefix: u8,
}

/// `[heartbeat]`: timing of liveness and convergence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeartbeatSection {
    /// Milliseconds between two heartbeats of one host.
    pub period_ms: u32,
    /// Missed periods after which a host is declared dead.
    pub tolerance: u32,
    /// Periods every member must report the same view before it is adopted.
    pub converge_periods: u32,
}

impl Default for HeartbeatSection {
    /// NLB's AliveMsgPeriod (1000 ms) and AliveMsgTolerance (5).
    fn default() -> Self {
        Self {
            period_ms: 1000,
            tolerance: 5,
            converge_periods: 3,
        }
    }
}

/// `[descriptors]`: the connection table's size and timeouts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DescriptorSection {
    /// Most descriptors a host tracks at once.
    pub capacity: u32,
    /// Established TCP connection idle timeout, seconds.
    pub tcp_idle_timeout_s: u32,
    /// SYN seen but not established, seconds.
    pub tcp_half_open_timeout_s: u32,
    /// After FIN or RST, seconds.
    pub tcp_closing_timeout_s: u32,
    /// GRE/IKE/ESP entries that outlived their control connection, seconds.
    pub gre_timeout_s: u32,
    /// UDP affinity entries (only with extended affinity), seconds.
    pub udp_timeout_s: u32,
}

impl Default for DescriptorSection {
    /// NLB's 512 × 512 descriptors.
    fn default() -> Self {
        Self {
            capacity: 512 * 512,
            tcp_idle_timeout_s: 3600,
            tcp_half_open_timeout_s: 30,
            tcp_closing_timeout_s: 60,
            gre_timeout_s: 300,
            udp_timeout_s: 120,
        }
    }
}

/// Which frame I/O backend the engine uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Backend {
    /// AF_XDP sockets fed by an XDP pre-classifier.
    AfXdp,
    /// AF_PACKET TPACKET_V3 rings.
    AfPacket,
    /// AF_XDP when the kernel and interface allow it, else AF_PACKET.
    Auto,
}

/// What a poll loop does when a batch comes back empty.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IdlePolicy {
    /// Spin: lowest latency, one core fully used.
    Busy,
    /// Spin briefly (64 empty polls, yielding), then sleep until a frame,
    /// a new map or a frame to send wakes the loop.
    Backoff,
}

/// How the XDP program is attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum XdpMode {
    /// Driver mode.
    Native,
    /// Generic (skb) mode.
    Generic,
    /// Native when the driver supports it, else generic.
    Auto,
}

/// How kept frames reach the local kernel stack.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Delivery {
    /// A TAP device.
    Tap,
    /// A veth pair.
    Veth,
}

/// `[io]`: how frames enter and leave the engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IoSection {
    /// Frame I/O backend.
    pub backend: Backend,
    /// Entries per ring; a power of two.
    pub ring_size: u32,
    /// AF_XDP UMEM frame size in bytes, one of [`FRAME_SIZES`]: the kernel
    /// keeps 256 bytes of headroom, so a frame longer than `frame_size -
    /// 256` cannot be received; the XDP program drops and counts such
    /// frames (`xdp_oversize`). 4096 for NICs whose MTU needs it.
    pub frame_size: u32,
    /// Most frames one poll handles.
    pub batch_size: u16,
    /// Behaviour of an idle poll loop.
    pub idle: IdlePolicy,
    /// XDP attach mode.
    pub xdp_mode: XdpMode,
    /// Exception path into the local stack.
    pub delivery: Delivery,
    /// AF_XDP: the XDP program drops, in the kernel, frames of buckets this
    /// host neither owns nor holds connections in (the engine stays
    /// authoritative for everything it passes up). Off: every cluster frame
    /// is copied to userspace and judged there.
    pub xdp_fast_path: bool,
    /// AF_XDP with the fast path: the XDP program also hands the kernel
    /// stack, on the NIC itself, the UDP datagrams this host surely keeps
    /// (untagged, rules without extended affinity, buckets it owns under
    /// every map in flight, not IKE), instead of copying them to userspace
    /// and writing them into the TAP. Off: every kept frame takes the TAP.
    pub xdp_pass: bool,
    /// AF_XDP: try a zero-copy bind first on drivers that support it (the
    /// socket falls back to copy mode, and says so, where they do not).
    pub xdp_zero_copy: bool,
}

impl Default for IoSection {
    /// 16384-entry rings: smaller rings lost frames on this 2-vCPU machine
    /// (LAB-NOTES.md, "AF_XDP on veth").
    fn default() -> Self {
        Self {
            backend: Backend::Auto,
            ring_size: 16_384,
            frame_size: 2048,
            batch_size: 64,
            idle: IdlePolicy::Backoff,
            xdp_mode: XdpMode::Auto,
            delivery: Delivery::Tap,
            xdp_fast_path: true,
            xdp_pass: true,
            xdp_zero_copy: false,
        }
    }
}

/// An interface address with its prefix length, as `ip addr add` takes it
/// (`10.0.0.11/24`); the host bits are kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr {
    addr: IpAddr,
    prefix_len: u8,
}

impl Cidr {
    /// `addr/prefix_len`, or `None` when the prefix length is 0 or longer
    /// than the address.
    pub fn new(addr: IpAddr, prefix_len: u8) -> Option<Self> {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        (1..=max)
            .contains(&prefix_len)
            .then_some(Self { addr, prefix_len })
    }

    /// The address.
    pub fn addr(self) -> IpAddr {
        self.addr
    }

    /// The prefix length.
    pub fn prefix_len(self) -> u8 {
        self.prefix_len
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

/// Why a string is not a [`Cidr`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    /// No `/PREFIX` part.
    #[error("expected ADDRESS/PREFIX, e.g. \"10.0.0.11/24\"")]
    MissingPrefix,
    /// The address part does not parse.
    #[error("`{0}` is not an IPv4 or IPv6 address")]
    Address(String),
    /// The prefix part does not parse or is out of range.
    #[error("prefix length `{0}` must be 1..=32 for IPv4 or 1..=128 for IPv6")]
    Prefix(String),
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Self, CidrError> {
        let (addr, prefix) = s.split_once('/').ok_or(CidrError::MissingPrefix)?;
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| CidrError::Address(addr.to_string()))?;
        prefix
            .parse::<u8>()
            .ok()
            .and_then(|p| Cidr::new(addr, p))
            .ok_or_else(|| CidrError::Prefix(prefix.to_string()))
    }
}

/// `[host.cores]`: which cores the host's threads run on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CoreMap {
    /// Core of the control-plane thread.
    pub control: usize,
    /// Poll loops; no core and no queue appears twice.
    pub poll: Vec<PollLoop>,
    /// Cores of the array tier's proxy workers, one worker per core, none
    /// twice, at least one (default: the poll loops' cores). Used only when
    /// the configuration has a `[[service]]`.
    pub proxy: Vec<usize>,
    /// How the kernel schedules the proxy workers.
    pub proxy_sched: ProxySched,
}

/// How the kernel schedules the array tier's proxy workers
/// (`[host.cores].proxy_sched`).
///
/// A proxy worker is woken by its sockets many times per request: by the
/// poll loop's TAP write, by the client, by the application, by another
/// member's hop. Under `SCHED_OTHER` each wake-up may preempt whatever
/// runs on the core (the poll loop mid-batch, another worker) and switch
/// back soon after. Under `SCHED_BATCH` a woken worker does not preempt:
/// it runs when the running thread sleeps or its slice ends, and then
/// finds more events ready at once. On a core of its own nothing changes;
/// on a core it shares (with the poll loop, by default) it takes fewer
/// context switches per request, at the price of waiting behind a busy
/// neighbour for up to a scheduler slice.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ProxySched {
    /// `SCHED_BATCH`: woken workers do not preempt (the default).
    #[default]
    Batch,
    /// `SCHED_OTHER`: the kernel's default policy.
    Normal,
}

impl Default for CoreMap {
    /// The control plane, one poll loop for queue 0 and one proxy worker,
    /// all on core 0.
    fn default() -> Self {
        Self {
            control: 0,
            poll: vec![PollLoop {
                core: 0,
                queues: vec![0],
            }],
            proxy: vec![0],
            proxy_sched: ProxySched::default(),
        }
    }
}

/// One pinned poll loop and the NIC rx queues it serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PollLoop {
    /// CPU core the loop is pinned to.
    pub core: usize,
    /// Rx queues it polls (at least one).
    pub queues: Vec<u32>,
}

/// One `[[host]]`: a member of the cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostSection {
    /// Host ID, also the host priority.
    pub id: HostId,
    /// The member name array services hash (`None`: the first dedicated
    /// address, see [`crate::Config::member_name`]).
    pub name: Option<String>,
    /// Network interface the cluster's frames arrive on.
    pub interface: String,
    /// The host's own addresses (not the cluster's business).
    pub dedicated: Vec<Cidr>,
    /// Default load weight for every multiple-host rule.
    pub weight: u8,
    /// Core placement.
    pub cores: CoreMap,
}

/// One `[[rule]]`, normalized: every default filled in, and the per-host
/// values resolved for every configured host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleSection {
    /// The VIP it covers; `None` is `"all"`.
    pub vip: Option<IpAddr>,
    /// First port (inclusive).
    pub port_start: u16,
    /// Last port (inclusive).
    pub port_end: u16,
    /// Covered transport.
    pub protocol: Protocol,
    /// Filtering mode (with affinity for multiple-host rules).
    pub mode: FilterMode,
    /// Multiple-host rules: the effective load weight of every configured
    /// host (its `host.weight` unless the rule overrides it); empty otherwise.
    pub weights: BTreeMap<HostId, u8>,
    /// Single-host rules: the effective handling priority of every configured
    /// host (its host ID unless the rule overrides it), all distinct; empty
    /// otherwise.
    pub priorities: BTreeMap<HostId, u8>,
    /// Extended affinity timeout in seconds (0 = off); multiple-host rules only.
    pub extended_affinity_s: u32,
    /// `instances`: local frontend instances this host spreads the rule's
    /// connections over (empty: none, the service listens on the rule's
    /// port itself).
    pub instances: Vec<InstanceSection>,
    /// `[rule.instance_probe]`: how instances are probed.
    pub instance_probe: InstanceProbeSection,
    /// `[rule.health]`: the probe of the rule's local service.
    pub health: Option<HealthSection>,
    /// `hold_ms`: least time a host stays out of a rule it left for its
    /// service's health.
    pub hold_ms: u32,
}

impl RuleSection {
    /// NLB's default rule: every VIP, every port, TCP and UDP, multiple host
    /// with Single affinity, each host at its own default weight.
    pub fn nlb_default(hosts: &[HostSection]) -> Self {
        Self {
            vip: None,
            port_start: 0,
            port_end: u16::MAX,
            protocol: Protocol::Both,
            mode: FilterMode::Multiple {
                affinity: Affinity::Single,
            },
            weights: hosts.iter().map(|h| (h.id, h.weight)).collect(),
            priorities: BTreeMap::new(),
            extended_affinity_s: 0,
            instances: Vec::new(),
            instance_probe: InstanceProbeSection::default(),
            health: None,
            hold_ms: DEFAULT_HOLD_MS,
        }
    }
}

/// Default `host.weight`.
pub const DEFAULT_HOST_WEIGHT: u8 = DEFAULT_WEIGHT;

/// The TOML spelling of each setting's choices, shared by the reader and the
/// writer so they cannot drift apart.
pub(crate) mod names {
    use super::*;

    pub(crate) const CLUSTER_MODES: &[(&str, ClusterMode)] = &[
        ("unicast", ClusterMode::Unicast),
        ("multicast", ClusterMode::Multicast),
        ("igmp", ClusterMode::Igmp),
    ];
    pub(crate) const BACKENDS: &[(&str, Backend)] = &[
        ("af_xdp", Backend::AfXdp),
        ("af_packet", Backend::AfPacket),
        ("auto", Backend::Auto),
    ];
    pub(crate) const PROXY_SCHEDS: &[(&str, ProxySched)] =
        &[("batch", ProxySched::Batch), ("normal", ProxySched::Normal)];
    pub(crate) const IDLE_POLICIES: &[(&str, IdlePolicy)] =
        &[("busy", IdlePolicy::Busy), ("backoff", IdlePolicy::Backoff)];
    pub(crate) const XDP_MODES: &[(&str, XdpMode)] = &[
        ("native", XdpMode::Native),
        ("generic", XdpMode::Generic),
        ("auto", XdpMode::Auto),
    ];
    pub(crate) const DELIVERIES: &[(&str, Delivery)] =
        &[("tap", Delivery::Tap), ("veth", Delivery::Veth)];
    pub(crate) const PROTOCOLS: &[(&str, Protocol)] = &[
        ("tcp", Protocol::Tcp),
        ("udp", Protocol::Udp),
        ("both", Protocol::Both),
    ];
    pub(crate) const AFFINITIES: &[(&str, Affinity)] = &[
        ("none", Affinity::None),
        ("single", Affinity::Single),
        ("network", Affinity::Network),
    ];

    /// Rule modes without their affinity.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub(crate) enum RuleMode {
        Multiple,
        Single,
        Disabled,
    }

    pub(crate) const RULE_MODES: &[(&str, RuleMode)] = &[
        ("multiple", RuleMode::Multiple),
        ("single", RuleMode::Single),
        ("disabled", RuleMode::Disabled),
    ];

    /// The TOML spelling of `value`.
    pub(crate) fn name_of<T: PartialEq + Copy>(
        table: &[(&'static str, T)],
        value: T,
    ) -> &'static str {
        table
            .iter()
            .find(|(_, v)| *v == value)
            .map_or("?", |(n, _)| n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_parses_and_prints() {
        let c: Cidr = "10.0.0.11/24".parse().unwrap();
        assert_eq!(c.addr(), "10.0.0.11".parse::<IpAddr>().unwrap());
        assert_eq!(c.prefix_len(), 24);
        assert_eq!(c.to_string(), "10.0.0.11/24");
        let c: Cidr = "fd00::11/64".parse().unwrap();
        assert_eq!(c.to_string(), "fd00::11/64");
        assert_eq!("10.0.0.1".parse::<Cidr>(), Err(CidrError::MissingPrefix));
        assert!(matches!(
            "10.0.0.1/33".parse::<Cidr>(),
            Err(CidrError::Prefix(_))
        ));
        assert!(matches!(
            "10.0.0.1/0".parse::<Cidr>(),
            Err(CidrError::Prefix(_))
        ));
        assert!(matches!(
            "fd00::1/129".parse::<Cidr>(),
            Err(CidrError::Prefix(_))
        ));
        assert!(matches!(
            "10.0.0/8".parse::<Cidr>(),
            Err(CidrError::Address(_))
        ));
    }

    #[test]
    fn every_choice_has_a_name() {
        assert_eq!(names::name_of(names::BACKENDS, Backend::AfXdp), "af_xdp");
        assert_eq!(
            names::name_of(names::CLUSTER_MODES, ClusterMode::Igmp),
            "igmp"
        );
        assert_eq!(
            names::name_of(names::AFFINITIES, Affinity::Network),
            "network"
        );
    }
}
