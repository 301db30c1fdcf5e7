//! Brings a host up for `shoal run` and takes it down again: host setup
//! (TAP with the VIPs, ARP/ND suppression, memberships, the nftables
//! ingress drop for AF_PACKET), the XDP attachment, and one backend socket
//! per rx queue, grouped by poll loop.
//!
//! `backend = "auto"` tries AF_XDP and falls back to AF_PACKET with the
//! reason logged; the backend in use is named in the logs and the counters.
//! AF_XDP comes with the XDP fast path (other hosts' buckets dropped in the
//! kernel, see [`crate::fastpath`]) unless `io.xdp_fast_path = false` or
//! `SHOAL_XDP_FAST_PATH=0` (the environment switch is for benchmarks that
//! compare both on one config). With it, kept untracked UDP datagrams go to
//! the kernel stack from the XDP program itself (see [`crate::xdp::fast`])
//! unless `io.xdp_pass = false` or `SHOAL_XDP_PASS=0`; the program writes
//! the NIC's MAC, read at start, into their destination.
//! `io.xdp_zero_copy = true` or
//! `SHOAL_XDP_ZERO_COPY=1` tries a zero-copy bind first.
//!
//! AF_XDP refuses to start (with `backend = "auto"` too: falling back would
//! hide a configuration error) unless the poll loops' queues cover every rx
//! queue of the NIC: the XDP program drops the cluster's frames on a queue
//! without a socket, so an uncovered queue would lose its share. UMEM
//! frames are `io.frame_size` bytes; the program drops and counts selected
//! frames longer than one holds (see [`crate::xdp::program`]).

use std::net::IpAddr;

use anyhow::{anyhow, Context, Result};
use shoal_config::{Backend, Config, HostSection, XdpMode as ConfigXdpMode};
use shoal_dataplane::mac::Mac;
use shoal_dataplane::{ClusterMode, ClusterSpec};

use crate::afpacket::{AfPacket, AfPacketConfig, Membership};
use crate::afxdp::{
    check_queue_coverage, AfXdp, AfXdpConfig, AfXdpError, GuardReader, XdpAttachment, XdpMode,
};
use crate::io::{Delivery, FrameIo};
use crate::setup::{HostSetup, HostSetupConfig};
use crate::sys::bpf;
use crate::sys::bpf::Bpf;
use crate::tap::TapConfig;
use crate::xdp::fast::{FastPathLayout, FastPathPlan};
use crate::xdp::program::{max_frame_len, XdpParams};

/// One poll loop: the core it is pinned to and the rx queues it polls.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PollPlan {
    /// Core to pin to (`None`: unpinned).
    pub core: Option<usize>,
    /// Rx queues of the interface.
    pub queues: Vec<u32>,
}

/// The poll loops a host's core map asks for.
pub fn poll_plan(host: &HostSection) -> Vec<PollPlan> {
    let available = core_affinity::get_core_ids().map(|c| c.len()).unwrap_or(1);
    host.cores
        .poll
        .iter()
        .map(|p| PollPlan {
            core: if p.core < available {
                Some(p.core)
            } else {
                tracing::warn!(
                    core = p.core,
                    available,
                    "core map names a core this machine lacks; poll loop left unpinned"
                );
                None
            },
            queues: p.queues.clone(),
        })
        .collect()
}

/// Everything brought up for one run.
pub struct Wiring {
    /// Per poll loop, its backends (one per rx queue).
    pub backends: Vec<Vec<Box<dyn FrameIo>>>,
    /// Per poll loop, its TAP queue.
    pub deliveries: Vec<Box<dyn Delivery>>,
    /// e.g. `af_xdp native copy` or `af_packet (af_xdp unavailable: …)`.
    pub backend_name: String,
    setup: Option<HostSetup>,
    attachment: Option<XdpAttachment>,
}

impl std::fmt::Debug for Wiring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wiring")
            .field("backend", &self.backend_name)
            .finish_non_exhaustive()
    }
}

fn memberships(mode: ClusterMode, mac: Mac) -> Vec<Membership> {
    match mode {
        // Unicast: the NIC must accept frames for a MAC that is not its own.
        ClusterMode::Unicast => vec![Membership::Promiscuous],
        ClusterMode::Multicast | ClusterMode::Igmp => vec![Membership::Multicast(mac.0)],
    }
}

/// Per poll loop, its backend sockets.
type LoopBackends = Vec<Vec<Box<dyn FrameIo>>>;

fn open_af_xdp(
    config: &Config,
    spec: &ClusterSpec,
    host: &HostSection,
    cluster_mac: Mac,
    polls: &[PollPlan],
) -> Result<(XdpAttachment, LoopBackends, String)> {
    let vips_v4 = config
        .cluster
        .vips
        .iter()
        .filter_map(|v| {
            if let IpAddr::V4(a) = v {
                Some(*a)
            } else {
                None
            }
        })
        .collect();
    let vips_v6 = config
        .cluster
        .vips
        .iter()
        .filter_map(|v| {
            if let IpAddr::V6(a) = v {
                Some(*a)
            } else {
                None
            }
        })
        .collect();
    let params = XdpParams {
        cluster_macs: vec![cluster_mac.0],
        vips_v4,
        vips_v6,
        max_frame_len: max_frame_len(config.io.frame_size),
        ..XdpParams::default()
    };
    let bpf: std::sync::Arc<dyn Bpf> = std::sync::Arc::new(bpf::Kernel);
    let rx_queues = bpf
        .rx_queue_count(&host.interface)
        .with_context(|| format!("counting the rx queues of {}", host.interface))?;
    let configured: Vec<u32> = polls
        .iter()
        .flat_map(|p| p.queues.iter().copied())
        .collect();
    check_queue_coverage(&host.interface, rx_queues, &configured)?;
    let mode = match config.io.xdp_mode {
        ConfigXdpMode::Native => XdpMode::Native,
        ConfigXdpMode::Generic => XdpMode::Generic,
        ConfigXdpMode::Auto => XdpMode::Auto,
    };
    // The XDP fast path (see crate::fastpath) is compiled for the rules and
    // VIPs; the view does not matter here, so an empty one keeps this cheap.
    let fast_path = (config.io.xdp_fast_path && crate::fastpath::enabled_by_env()).then(|| {
        let view = shoal_dataplane::map::View::converged(spec, shoal_dataplane::HostSet::EMPTY);
        let layout = FastPathLayout::of(&shoal_dataplane::map::ClusterMap::build(
            spec, &view, host.id, 0,
        ));
        let pass_to = if config.io.xdp_pass && crate::fastpath::env_allows("SHOAL_XDP_PASS") {
            match nic_mac(&host.interface) {
                Ok(mac) => Some(mac),
                Err(e) => {
                    tracing::warn!(interface = %host.interface, error = %e,
                        "no XDP pass: every kept frame goes through the TAP");
                    None
                }
            }
        } else {
            None
        };
        FastPathPlan { layout, pass_to }
    });
    let attachment =
        XdpAttachment::attach_with_fast_path(bpf, &host.interface, &params, fast_path, mode)
            .with_context(|| format!("attaching XDP to {}", host.interface))?;
    let mut per_loop: Vec<Vec<Box<dyn FrameIo>>> = Vec::new();
    for plan in polls {
        let mut socks: Vec<Box<dyn FrameIo>> = Vec::new();
        for &q in &plan.queues {
            let mut c = AfXdpConfig::new(host.interface.clone(), q);
            c.ring_size = config.io.ring_size;
            c.frame_size = config.io.frame_size;
            // On NICs whose driver supports it, zero copy is tried first (the
            // socket falls back to copy mode, and says so in its description,
            // where the driver has none).
            c.zero_copy = config.io.xdp_zero_copy
                || std::env::var_os("SHOAL_XDP_ZERO_COPY").is_some_and(|v| v == "1");
            let sock = AfXdp::open(&c, &attachment)
                .with_context(|| format!("AF_XDP socket on queue {q}"))?;
            socks.push(Box::new(sock));
        }
        per_loop.push(socks);
    }
    let zero_copy = per_loop
        .iter()
        .flatten()
        .any(|s| s.describe().contains("zero-copy"));
    let name = format!(
        "af_xdp {} {}{}",
        attachment.mode(),
        if zero_copy { "zero-copy" } else { "copy" },
        match (attachment.fast_path().is_some(), attachment.passes()) {
            (true, true) => " +xdp fast path +pass",
            (true, false) => " +xdp fast path",
            _ => "",
        }
    );
    Ok((attachment, per_loop, name))
}

/// The interface's own MAC (`SIOCGIFHWADDR`, in this thread's network
/// namespace, whatever sysfs shows).
fn nic_mac(interface: &str) -> Result<[u8; 6]> {
    use crate::sys::tap::TapSys;
    crate::sys::tap::Kernel
        .mac(interface)
        .with_context(|| format!("reading the MAC of {interface}"))
}

fn open_af_packet(
    config: &Config,
    host: &HostSection,
    cluster_mac: Mac,
    polls: &[PollPlan],
) -> Result<Vec<Vec<Box<dyn FrameIo>>>> {
    // One socket per poll loop, all in one hash fanout group, so a flow
    // stays on one loop.
    let group = (std::process::id() & 0xffff) as u16;
    let mut per_loop: Vec<Vec<Box<dyn FrameIo>>> = Vec::new();
    for _ in polls {
        let c = AfPacketConfig {
            fanout_group: if polls.len() > 1 { Some(group) } else { None },
            memberships: memberships(config.cluster.mode, cluster_mac),
            ..AfPacketConfig::default()
        };
        let sock = AfPacket::open(&host.interface, &c)
            .with_context(|| format!("AF_PACKET socket on {}", host.interface))?;
        per_loop.push(vec![Box::new(sock) as Box<dyn FrameIo>]);
    }
    Ok(per_loop)
}

impl Wiring {
    /// Sets the host up and opens the backends; `spec` is `config`'s, with
    /// the cluster's bucket seed (the XDP fast path hashes with it).
    pub fn bring_up(
        config: &Config,
        spec: &ClusterSpec,
        host: &HostSection,
        cluster_mac: Mac,
        backend: Backend,
        polls: &[PollPlan],
    ) -> Result<Self> {
        if polls.is_empty() {
            return Err(anyhow!("host {} has no poll loop in its core map", host.id));
        }
        let mut attachment = None;
        let mut backends = None;
        let mut name = String::new();
        if matches!(backend, Backend::AfXdp | Backend::Auto) {
            match open_af_xdp(config, spec, host, cluster_mac, polls) {
                Ok((a, b, n)) => {
                    attachment = Some(a);
                    backends = Some(b);
                    name = n;
                }
                Err(e)
                    if backend == Backend::Auto
                        && !matches!(
                            e.downcast_ref::<AfXdpError>(),
                            Some(AfXdpError::QueuesUncovered { .. })
                        ) =>
                {
                    tracing::warn!(error = %format!("{e:#}"), "AF_XDP unavailable, falling back to AF_PACKET");
                    name = format!("af_packet (af_xdp unavailable: {e:#})");
                }
                Err(e) => return Err(e),
            }
        }
        let af_packet = backends.is_none();
        let mut setup_cfg = HostSetupConfig::new(&host.interface, config.cluster.vips.clone());
        setup_cfg.tap = TapConfig {
            queues: polls.len(),
            ..TapConfig::default()
        };
        setup_cfg.cluster_macs = vec![cluster_mac.0];
        setup_cfg.ingress_filter = af_packet;
        setup_cfg.frontend_nat = crate::frontend::has_nat(config);
        setup_cfg.memberships = if af_packet {
            Vec::new()
        } else {
            memberships(config.cluster.mode, cluster_mac)
        };
        let mut setup = HostSetup::apply(setup_cfg).context("host setup")?;
        let backends = match backends {
            Some(b) => b,
            None => {
                if name.is_empty() {
                    name = "af_packet".to_string();
                }
                open_af_packet(config, host, cluster_mac, polls)?
            }
        };
        let deliveries = setup
            .take_taps()
            .into_iter()
            .map(|t| Box::new(t) as Box<dyn Delivery>)
            .collect::<Vec<_>>();
        if deliveries.len() < polls.len() {
            return Err(anyhow!(
                "host setup made {} TAP queues for {} poll loops",
                deliveries.len(),
                polls.len()
            ));
        }
        for (plan, socks) in polls.iter().zip(&backends) {
            for s in socks {
                tracing::info!(core = ?plan.core, backend = %s.describe(), "poll loop socket");
            }
        }
        Ok(Self {
            backends,
            deliveries,
            backend_name: name,
            setup: Some(setup),
            attachment,
        })
    }

    /// A writer for the XDP fast path's maps, when the program has the fast
    /// path (AF_XDP backend, not turned off by `io.xdp_fast_path` or the environment).
    /// Make one per run: it is the maps' only writer.
    pub fn fast_path(&self) -> Option<std::sync::Arc<crate::fastpath::FastPath>> {
        let a = self.attachment.as_ref()?;
        let maps = a.fast_path()?.clone();
        Some(std::sync::Arc::new(crate::fastpath::FastPath::new(
            a.bpf().clone(),
            maps,
        )))
    }

    /// A reader of the XDP program's guard counters (AF_XDP backend only).
    pub fn xdp_guard(&self) -> Option<GuardReader> {
        self.attachment.as_ref().map(XdpAttachment::guard)
    }

    /// Undoes everything, in reverse order: sockets, XDP program, host setup.
    pub fn tear_down(&mut self) {
        self.backends.clear();
        self.deliveries.clear();
        self.attachment = None;
        if let Some(mut s) = self.setup.take() {
            if let Err(e) = s.teardown() {
                tracing::warn!(error = %e, "teardown incomplete");
            }
        }
    }
}

impl Drop for Wiring {
    fn drop(&mut self) {
        self.tear_down();
    }
}

/// `shoal cleanup`: undoes what a run of `host` that died left on this
/// machine (see [`HostSetup::clean`]) and removes its admin socket file,
/// starting nothing. Refuses while that host's engine answers on
/// `socket`: its setup is in use, not left over.
pub fn clean_leftovers(
    config: &Config,
    host: &HostSection,
    socket: &std::path::Path,
) -> Result<crate::setup::Cleaned> {
    if std::os::unix::net::UnixStream::connect(socket).is_ok() {
        return Err(anyhow!(
            "host {}'s engine is running (it answers on {}): stop it first; \
             it undoes its own setup on the way out",
            host.id,
            socket.display()
        ));
    }
    let setup = HostSetupConfig::new(&host.interface, config.cluster.vips.clone());
    let cleaned = HostSetup::clean(setup).context("cleaning up")?;
    match std::fs::remove_file(socket) {
        Ok(()) => {
            tracing::info!(socket = %socket.display(), "removed a dead engine's admin socket")
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(socket = %socket.display(), error = %e, "cannot remove the admin socket")
        }
    }
    tracing::info!(host = host.id.get(), interface = %host.interface, %cleaned, "cleanup finished");
    Ok(cleaned)
}
