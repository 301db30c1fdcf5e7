//! What the dataplane says about a frame ([`Verdict`], with the
//! [`DropReason`] or [`Control`] kind it names) and what it counts of them
//! ([`Counters`]).

use crate::packet::Malformed;

/// Why a frame was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// Another host keeps it (the normal case for most frames).
    NotOwner,
    /// Another host still serves connections in its bucket group.
    DirtyElsewhere,
    /// Its port rule is disabled (cluster-wide or on this host).
    RuleDisabled,
    /// No live host may take it (empty view, or every weight zero).
    NoOwner,
    /// Sent to the cluster MAC but not to a VIP.
    ForeignDestination,
    /// Not IP, ARP or heartbeat, sent to the cluster MAC.
    NotIp,
    /// GRE with no PPTP control connection tracked here.
    GreWithoutPptp,
    /// ESP with no IKE session tracked here.
    EspWithoutIke,
    /// Could not be parsed.
    Malformed(Malformed),
}

impl DropReason {
    /// Reasons other than malformed, in counter order.
    pub const POLICY: [DropReason; 8] = [
        DropReason::NotOwner,
        DropReason::DirtyElsewhere,
        DropReason::RuleDisabled,
        DropReason::NoOwner,
        DropReason::ForeignDestination,
        DropReason::NotIp,
        DropReason::GreWithoutPptp,
        DropReason::EspWithoutIke,
    ];

    /// A stable snake_case name for counters and JSON.
    pub fn name(self) -> &'static str {
        match self {
            DropReason::NotOwner => "not_owner",
            DropReason::DirtyElsewhere => "dirty_elsewhere",
            DropReason::RuleDisabled => "rule_disabled",
            DropReason::NoOwner => "no_owner",
            DropReason::ForeignDestination => "foreign_destination",
            DropReason::NotIp => "not_ip",
            DropReason::GreWithoutPptp => "gre_without_pptp",
            DropReason::EspWithoutIke => "esp_without_ike",
            DropReason::Malformed(m) => m.name(),
        }
    }

    /// Whether a frame dropped for this reason was addressed to a VIP and
    /// judged by the cluster's rules: every policy reason but
    /// [`Self::ForeignDestination`] and [`Self::NotIp`] (frames to no VIP),
    /// and no malformed one.
    pub fn is_for_cluster(self) -> bool {
        !matches!(
            self,
            DropReason::ForeignDestination | DropReason::NotIp | DropReason::Malformed(_)
        )
    }

    /// Its index in [`Self::POLICY`] (a match, not a search: counted once
    /// per dropped frame). Tested against the table.
    #[inline(always)]
    fn policy_index(self) -> Option<usize> {
        Some(match self {
            DropReason::NotOwner => 0,
            DropReason::DirtyElsewhere => 1,
            DropReason::RuleDisabled => 2,
            DropReason::NoOwner => 3,
            DropReason::ForeignDestination => 4,
            DropReason::NotIp => 5,
            DropReason::GreWithoutPptp => 6,
            DropReason::EspWithoutIke => 7,
            DropReason::Malformed(_) => return None,
        })
    }
}

/// Frames the control plane handles.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Control {
    /// A cluster heartbeat (EtherType 0x886F).
    Heartbeat,
    /// An ARP request for a VIP.
    Arp,
    /// An IPv6 neighbour solicitation for a VIP.
    Nd,
    /// IGMP (igmp mode): queries to answer, reports to note.
    Igmp,
}

impl Control {
    /// Every kind, in counter order.
    pub const ALL: [Control; 4] = [Control::Heartbeat, Control::Arp, Control::Nd, Control::Igmp];

    /// A stable snake_case name.
    pub fn name(self) -> &'static str {
        match self {
            Control::Heartbeat => "heartbeat",
            Control::Arp => "arp",
            Control::Nd => "nd",
            Control::Igmp => "igmp",
        }
    }
}

/// What to do with one frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Verdict {
    /// Cluster traffic this host serves: deliver to the local stack.
    Keep,
    /// Cluster traffic this host does not serve, or bad input.
    Drop(DropReason),
    /// For the control plane.
    Control(Control),
    /// Not cluster traffic: the kernel's business.
    #[default]
    Pass,
}

/// Number of [`Malformed`] reasons (the length of [`Counters::malformed`]).
pub const MALFORMED_REASONS: usize = Malformed::ALL.len();

/// Per-dataplane counters (one per poll loop; summed for reports).
///
/// Each frame judged is counted once, by its verdict ([`Self::count`]):
/// the totals ([`Self::frames`], [`Self::for_cluster`]) are sums of the
/// verdict counters, never counted apart from them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Frames kept.
    pub kept: u64,
    /// Frames passed to the kernel.
    pub passed: u64,
    /// Control frames, by [`Control::ALL`] index.
    pub control: [u64; 4],
    /// Policy drops, by [`DropReason::POLICY`] index.
    pub dropped: [u64; 8],
    /// Malformed frames, by [`Malformed::ALL`] index.
    pub malformed: [u64; MALFORMED_REASONS],
    /// SYNs kept without a descriptor because the table had no room.
    pub untracked: u64,
    /// TCP segments other than a SYN that opened a descriptor: connections
    /// this owner took over mid-stream because no host reported them (their
    /// old host left, or tracked them nowhere). Each such connection is
    /// reset by this host's kernel unless it already holds the socket, so a
    /// count that grows while every host is up points at a host whose
    /// connections went unreported.
    pub adopted: u64,
}

impl Counters {
    /// Counts one frame judged `v`: one increment of the counter `v`
    /// names (with `v` known where this is inlined, nothing else).
    #[inline(always)]
    pub fn count(&mut self, v: Verdict) {
        match v {
            Verdict::Keep => self.kept += 1,
            Verdict::Pass => self.passed += 1,
            Verdict::Control(c) => self.control[c as usize] += 1,
            Verdict::Drop(DropReason::Malformed(m)) => {
                if let Some(n) = self.malformed.get_mut(m as usize) {
                    *n += 1;
                }
            }
            Verdict::Drop(r) => {
                if let Some(i) = r.policy_index() {
                    self.dropped[i] += 1;
                }
            }
        }
    }

    /// Frames judged: every verdict counted.
    pub fn frames(&self) -> u64 {
        self.kept
            + self.passed
            + self.control.iter().sum::<u64>()
            + self.dropped.iter().sum::<u64>()
            + self.malformed_total()
    }

    /// Frames addressed to a VIP: kept, or dropped by a policy that judged
    /// cluster traffic (every reason but [`DropReason::ForeignDestination`]
    /// and [`DropReason::NotIp`]; see [`DropReason::is_for_cluster`]).
    pub fn for_cluster(&self) -> u64 {
        let dropped = DropReason::POLICY
            .iter()
            .zip(self.dropped)
            .filter(|(r, _)| r.is_for_cluster());
        self.kept + dropped.map(|(_, n)| n).sum::<u64>()
    }

    /// Sum of malformed frames.
    pub fn malformed_total(&self) -> u64 {
        self.malformed.iter().sum()
    }

    /// Adds `other` into `self`.
    pub fn merge(&mut self, other: &Counters) {
        self.kept += other.kept;
        self.passed += other.passed;
        self.untracked += other.untracked;
        self.adopted += other.adopted;
        for (a, b) in self.control.iter_mut().zip(other.control) {
            *a += b;
        }
        for (a, b) in self.dropped.iter_mut().zip(other.dropped) {
            *a += b;
        }
        for (a, b) in self.malformed.iter_mut().zip(&other.malformed) {
            *a += b;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_indexes_follow_the_table() {
        for (i, r) in DropReason::POLICY.iter().enumerate() {
            assert_eq!(r.policy_index(), Some(i), "{r:?}");
        }
        let m = DropReason::Malformed(Malformed::BadGre);
        assert_eq!(m.policy_index(), None);
        let mut c = Counters::default();
        c.count(Verdict::Drop(m));
        assert_eq!(c.malformed[Malformed::BadGre as usize], 1);
        assert_eq!(c.malformed_total(), 1);
    }

    /// Every verdict counts one frame, and one frame for the cluster
    /// exactly when it is a keep or a drop of cluster traffic.
    #[test]
    fn totals_are_sums_of_verdicts() {
        let mut verdicts = vec![Verdict::Keep, Verdict::Pass];
        verdicts.extend(Control::ALL.map(Verdict::Control));
        verdicts.extend(DropReason::POLICY.map(Verdict::Drop));
        verdicts.extend(
            Malformed::ALL
                .iter()
                .map(|&m| Verdict::Drop(DropReason::Malformed(m))),
        );
        let mut c = Counters::default();
        let mut for_cluster = 0;
        for (i, v) in verdicts.iter().enumerate() {
            let before = c.clone();
            c.count(*v);
            assert_eq!(c.frames(), i as u64 + 1, "{v:?}");
            let cluster = match v {
                Verdict::Keep => true,
                Verdict::Drop(r) => r.is_for_cluster(),
                _ => false,
            };
            for_cluster += u64::from(cluster);
            assert_eq!(c.for_cluster(), for_cluster, "{v:?}");
            let mut merged = before;
            let mut one = Counters::default();
            one.count(*v);
            merged.merge(&one);
            assert_eq!(merged, c, "{v:?}");
        }
        assert_eq!(for_cluster, 7);
    }
}
