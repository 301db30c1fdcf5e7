//! Fuzz target `classify`: one frame, judged by every member of a
//! three-host cluster, as on a real segment.
//!
//! # What is checked
//!
//! For every input frame, [`Segment::check`] asks the dataplane's own parser
//! ([`parse_frame`]) and then every member's [`Dataplane`] for a verdict, and
//! panics when:
//!
//! 1. more than one member keeps the frame (README guarantee 1 allows
//!    "at most one" during convergence and "exactly one" when converged;
//!    the weaker form holds for every frame, cluster traffic or not);
//! 2. the members disagree about anything that does not depend on who they
//!    are: whether the frame is malformed (and why), the kernel's business
//!    (`Pass`) or the control plane's (`Control`). Only `Keep` versus
//!    `Drop` may differ between members;
//! 3. the verdict contradicts the parse: a frame [`parse_frame`] rejects
//!    must be dropped as malformed for that same reason, and a frame it
//!    accepts must not be;
//! 4. no member keeps a frame and every member drops it as another's
//!    (`NotOwner` or `DirtyElsewhere`): the view is converged and never
//!    changes, so nobody has dirty groups and the map places every frame
//!    it does not drop by policy (disabled rule, no owner, GRE or ESP
//!    without its control session) on exactly one member.
//!
//! # Design decisions
//!
//! * The cluster is built once per process ([`check`] keeps it in a
//!   static): building three 2^20-bucket maps costs far more than judging a
//!   frame. Its descriptor tables are small ([`CAPACITY`] entries) so that
//!   eviction and reuse happen within seconds of fuzzing.
//! * State carries from one input to the next, as it does on a segment: a
//!   SYN in one input and an ACK of the same connection in a later one meet
//!   the same descriptor tables. Virtual time advances [`STEP_NS`] per
//!   frame, so timeouts are crossed too. The price: a crash can depend on
//!   earlier inputs, so the panic message lists the last [`HISTORY`] frames
//!   (hex) to replay in order.
//! * The spec ([`spec`]) has a rule of every kind on both address families:
//!   multiple-host rules with each affinity and uneven and zero weights,
//!   single-host with reordered priorities, disabled, PPTP (GRE follows)
//!   and IKE (ESP follows) ports, extended affinity, and ports no rule
//!   covers (the default host's).

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::{LazyLock, Mutex, PoisonError};

use shoal_dataplane::descriptor::DescriptorConfig;
use shoal_dataplane::packet::parse_frame;
use shoal_dataplane::pipeline::{DropReason, Verdict};
use shoal_dataplane::sim::SimCluster;
use shoal_dataplane::{
    Affinity, ClusterMode, ClusterSpec, FilterMode, HostId, HostSet, PortRule, Protocol,
};

/// The cluster's primary (IPv4) VIP; it names the unicast cluster MAC.
pub const VIP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 100);
/// The cluster's IPv6 VIP.
pub const VIP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x100, 0, 0, 0, 0, 0, 0x100);
/// Member host IDs.
pub const MEMBERS: [u8; 3] = [1, 2, 3];
/// Descriptor table capacity of each member.
pub const CAPACITY: usize = 1 << 10;
/// Virtual time between two frames, ns.
pub const STEP_NS: u64 = 1_000_000;
/// Frames remembered for the panic message.
pub const HISTORY: usize = 16;

/// The ports the spec's rules name, for seed frames that reach each rule.
pub const RULE_PORTS: [u16; 10] = [80, 443, 1723, 53, 500, 4500, 5432, 23, 8080, 9999];

fn host(id: u8) -> HostId {
    HostId::new(id).unwrap_or_else(|| panic!("host ID {id} out of range"))
}

/// The cluster every `classify` input is judged by (see the module docs).
pub fn spec() -> ClusterSpec {
    let v4 = Some(IpAddr::V4(VIP));
    let v6 = Some(IpAddr::V6(VIP6));
    let multiple = |affinity| FilterMode::Multiple { affinity };

    let web = PortRule::new(v4, (80, 80), Protocol::Tcp, multiple(Affinity::None));
    let mut tls = PortRule::new(v4, (443, 443), Protocol::Tcp, multiple(Affinity::None));
    tls.weights[host(3).index()] = 100;
    let pptp = PortRule::new(
        None,
        (1723, 1723),
        Protocol::Tcp,
        multiple(Affinity::Single),
    );
    let mut dns = PortRule::new(None, (53, 53), Protocol::Udp, multiple(Affinity::Single));
    dns.extended_affinity_timeout_s = 60;
    let ike = PortRule::new(None, (500, 500), Protocol::Udp, multiple(Affinity::Single));
    let ike_nat = PortRule::new(
        None,
        (4500, 4500),
        Protocol::Udp,
        multiple(Affinity::Single),
    );
    let mut database = PortRule::new(v4, (5432, 5432), Protocol::Tcp, FilterMode::Single);
    database.priorities[host(1).index()] = 2;
    database.priorities[host(2).index()] = 1;
    database.priorities[host(3).index()] = 3;
    let telnet = PortRule::new(None, (23, 23), Protocol::Both, FilterMode::Disabled);
    let mut apps = PortRule::new(
        v4,
        (8000, 8999),
        Protocol::Both,
        multiple(Affinity::Network),
    );
    apps.weights[host(2).index()] = 0;
    let v6_low = PortRule::new(v6, (0, 1000), Protocol::Both, multiple(Affinity::Network));

    ClusterSpec {
        vips: vec![IpAddr::V4(VIP), IpAddr::V6(VIP6)],
        mode: ClusterMode::Unicast,
        ipv6_network_prefix: 56,
        rules: vec![
            web, tls, pptp, dns, ike, ike_nat, database, telnet, apps, v6_low,
        ],
        bucket_seed: 0x5eed,
    }
}

/// Three converged members, a virtual clock and the last frames judged.
#[derive(Debug)]
pub struct Segment {
    cluster: SimCluster,
    now: u64,
    history: VecDeque<Vec<u8>>,
}

impl Default for Segment {
    fn default() -> Self {
        Self::new()
    }
}

impl Segment {
    /// Builds the cluster of [`spec`] with all of [`MEMBERS`] live.
    pub fn new() -> Self {
        let members: HostSet = MEMBERS.iter().map(|&id| host(id)).collect();
        let cfg = DescriptorConfig {
            capacity: CAPACITY,
            ..DescriptorConfig::default()
        };
        Self {
            cluster: SimCluster::new(spec(), members, cfg),
            now: 0,
            history: VecDeque::with_capacity(HISTORY),
        }
    }

    /// Judges `frame` on every member and checks the module's invariants.
    /// Returns every member's verdict, in member order.
    ///
    /// # Panics
    /// When an invariant breaks (that is the fuzzing crash).
    pub fn check(&mut self, frame: &[u8]) -> Vec<(HostId, Verdict)> {
        self.now += STEP_NS;
        if self.history.len() == HISTORY {
            self.history.pop_front();
        }
        self.history.push_back(frame.to_vec());

        let parsed = parse_frame(frame);
        let verdicts = self.cluster.judge(frame, self.now);
        let keepers = keepers(&verdicts);
        let broken = if keepers.len() > 1 {
            Some("kept by more than one member".to_owned())
        } else if !verdicts.is_empty() && verdicts.iter().all(|(_, v)| is_someone_elses(*v)) {
            Some("every member left it to another: the converged map lost it".to_owned())
        } else if let Some(first) = verdicts.first() {
            let shared = host_independent(first.1);
            if verdicts.iter().any(|(_, v)| host_independent(*v) != shared) {
                Some("members disagree about a host-independent verdict".to_owned())
            } else {
                match (&parsed, first.1) {
                    (Err(m), Verdict::Drop(DropReason::Malformed(d))) if *m == d => None,
                    (Err(m), v) => Some(format!("parser says malformed ({m:?}), verdict is {v:?}")),
                    (Ok(_), Verdict::Drop(DropReason::Malformed(d))) => {
                        Some(format!("parser accepts, verdict is malformed ({d:?})"))
                    }
                    (Ok(_), _) => None,
                }
            }
        } else {
            Some("the cluster has no member".to_owned())
        };
        if let Some(what) = broken {
            panic!(
                "classify: {what}\nframe: {}\nparse: {parsed:?}\nverdicts: {verdicts:?}\n{}",
                hex(frame),
                self.replay_recipe()
            );
        }
        verdicts
    }

    fn replay_recipe(&self) -> String {
        let mut out = format!(
            "last {} frames judged, oldest first, 1 per {} ns from a fresh cluster \
             (earlier inputs may matter):\n",
            self.history.len(),
            STEP_NS
        );
        for f in &self.history {
            let _ = writeln!(out, "  {}", hex(f));
        }
        out
    }
}

/// The part of a verdict that must not depend on which member judged:
/// everything except whether cluster traffic is kept or dropped by policy.
fn host_independent(v: Verdict) -> Option<Verdict> {
    match v {
        Verdict::Drop(DropReason::Malformed(_)) | Verdict::Pass | Verdict::Control(_) => Some(v),
        // Every other drop is one member's policy decision (not the owner,
        // dirty elsewhere, a rule disabled on that host, GRE or ESP without
        // the control session that one member tracks).
        Verdict::Keep | Verdict::Drop(_) => None,
    }
}

/// The members whose verdict is `Keep`.
pub fn keepers(verdicts: &[(HostId, Verdict)]) -> Vec<HostId> {
    verdicts
        .iter()
        .filter(|(_, v)| *v == Verdict::Keep)
        .map(|(h, _)| *h)
        .collect()
}

/// A drop that says another member keeps the frame.
fn is_someone_elses(v: Verdict) -> bool {
    matches!(
        v,
        Verdict::Drop(DropReason::NotOwner | DropReason::DirtyElsewhere)
    )
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

static SEGMENT: LazyLock<Mutex<Segment>> = LazyLock::new(|| Mutex::new(Segment::new()));

/// The fuzz target's body: [`Segment::check`] on the process's one segment.
///
/// # Panics
/// When an invariant breaks.
pub fn check(frame: &[u8]) {
    // A poisoned lock means an earlier check panicked; libFuzzer has
    // already stopped then, but a replay under a test harness may go on.
    let mut segment = SEGMENT.lock().unwrap_or_else(PoisonError::into_inner);
    segment.check(frame);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seeds;
    use shoal_dataplane::wire::tcp::flags;

    #[test]
    fn spec_rules_do_not_overlap() {
        let rules = spec().rules;
        for (i, a) in rules.iter().enumerate() {
            for b in &rules[i + 1..] {
                assert!(!a.overlaps(b), "{a:?} overlaps {b:?}");
            }
        }
    }

    #[test]
    fn seed_frames_reach_the_cluster_and_one_member_keeps_each_syn() {
        let mut segment = Segment::new();
        let mut kept_by = [0usize; MEMBERS.len()];
        let mut syns = 0;
        for frame in seeds::cluster_frames() {
            for h in keepers(&segment.check(&frame)) {
                kept_by[usize::from(h.get()) - 1] += 1;
            }
        }
        for n in 0..200u32 {
            let client = Ipv4Addr::from(0x0a01_0000 + n * 7);
            let keepers = keepers(&segment.check(&seeds::tcp4(client, 40000, 80, flags::SYN)));
            assert_eq!(keepers.len(), 1, "SYN from {client} kept by {keepers:?}");
            syns += 1;
        }
        assert_eq!(syns, 200);
        assert!(
            kept_by.iter().all(|&n| n > 0),
            "every member keeps some seed frame: {kept_by:?}"
        );
    }

    #[test]
    fn disabled_rule_frames_are_kept_by_nobody() {
        let mut segment = Segment::new();
        let keepers = keepers(&segment.check(&seeds::tcp4(
            Ipv4Addr::new(10, 9, 9, 9),
            5555,
            23,
            flags::SYN,
        )));
        assert!(keepers.is_empty(), "telnet kept by {keepers:?}");
    }

    #[test]
    fn garbage_is_judged_without_a_crash() {
        let mut segment = Segment::new();
        for len in 0..80 {
            let frame: Vec<u8> = (0..len).map(|i| (i * 37 + len) as u8).collect();
            segment.check(&frame);
        }
    }
}
