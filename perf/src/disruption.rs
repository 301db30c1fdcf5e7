//! `shoal bench disruption`: the share of buckets (and so of flows) that
//! change hands on a join, a leave and a weight change, against the
//! smallest share that could move, from [`BucketMap`] at 2 to 64 hosts.
//!
//! * join: host `n` joins hosts `1..n`; the minimum is the joiner's ideal
//!   share `1/n`.
//! * leave: host `⌈n/2⌉` leaves hosts `1..=n` (a middle host, not the
//!   newest: with rendezvous hashing the newest host's leave is its join
//!   reversed); the minimum is its ideal share `1/n`.
//! * weight: host 1 goes from 50 to 100 among `n` hosts of weight 50; the
//!   minimum is the growth of its ideal share.
//!
//! The ratio moved/minimum is what the disruption target bounds (≤ 1.05×). A bucket is
//! 2^-20 of the flows of a rule, so buckets moved is flows moved.

#![forbid(unsafe_code)]

use anyhow::Result;
use serde::{Deserialize, Serialize};
use shoal_dataplane::bucket::BucketMap;
use shoal_dataplane::{HostId, HostSet, DEFAULT_WEIGHT, MAX_HOSTS};

/// The bound on moved/minimum.
pub const TARGET_RATIO: f64 = 1.05;

/// One change at one cluster size.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Change {
    /// `join`, `leave` or `weight`.
    pub kind: String,
    /// Hosts in the larger of the two views.
    pub hosts: usize,
    /// Share of buckets whose owner changed.
    pub moved: f64,
    /// The smallest share that could have moved.
    pub minimum: f64,
    /// `moved / minimum`.
    pub ratio: f64,
}

/// The disruption bench's report.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DisruptionReport {
    /// Every change measured.
    pub changes: Vec<Change>,
    /// Largest ratio seen.
    pub worst_ratio: f64,
    /// The bound.
    pub target_ratio: f64,
}

fn set(n: usize) -> HostSet {
    (1..=n as u8).filter_map(HostId::new).collect()
}

/// Runs the bench at the given cluster sizes (each in `2..=64`).
///
/// # Errors
/// Never at valid sizes; sizes outside `2..=64` are skipped.
pub fn run(sizes: &[usize]) -> Result<DisruptionReport> {
    let equal = [DEFAULT_WEIGHT; MAX_HOSTS];
    let mut changes = Vec::new();
    for &n in sizes.iter().filter(|&&n| (2..=MAX_HOSTS).contains(&n)) {
        let full = BucketMap::compute(set(n), &equal);
        let before_join = BucketMap::compute(set(n - 1), &equal);
        let min = 1.0 / n as f64;
        changes.push(change("join", n, before_join.moved_fraction(&full), min));
        let mut without = set(n);
        if let Some(leaver) = HostId::new(n.div_ceil(2) as u8) {
            without.remove(leaver);
        }
        let after_leave = BucketMap::compute(without, &equal);
        changes.push(change("leave", n, full.moved_fraction(&after_leave), min));
        let mut heavier = equal;
        heavier[0] = 2 * DEFAULT_WEIGHT;
        let weighted = BucketMap::compute(set(n), &heavier);
        let w = DEFAULT_WEIGHT as f64;
        let grown = 2.0 * w / (2.0 * w + (n - 1) as f64 * w) - 1.0 / n as f64;
        changes.push(change("weight", n, full.moved_fraction(&weighted), grown));
    }
    let worst_ratio = changes.iter().map(|c| c.ratio).fold(0.0, f64::max);
    Ok(DisruptionReport {
        changes,
        worst_ratio,
        target_ratio: TARGET_RATIO,
    })
}

fn change(kind: &str, hosts: usize, moved: f64, minimum: f64) -> Change {
    Change {
        kind: kind.to_string(),
        hosts,
        moved,
        minimum,
        ratio: if minimum > 0.0 { moved / minimum } else { 0.0 },
    }
}

/// Cluster sizes of a full run and of a smoke run.
pub fn sizes(smoke: bool) -> Vec<usize> {
    if smoke {
        vec![2, 3, 8]
    } else {
        vec![2, 3, 4, 8, 16, 32, 64]
    }
}

/// Text table of a report.
pub fn text(r: &DisruptionReport) -> String {
    let mut s = String::from("disruption: share of buckets moved against the minimum\n");
    s += &format!(
        "{:<7} {:>5} {:>9} {:>9} {:>7}\n",
        "change", "hosts", "moved", "minimum", "ratio"
    );
    for c in &r.changes {
        s += &format!(
            "{:<7} {:>5} {:>8.3}% {:>8.3}% {:>6.3}x\n",
            c.kind,
            c.hosts,
            c.moved * 100.0,
            c.minimum * 100.0,
            c.ratio
        );
    }
    s += &format!(
        "worst {:.3}x (target <= {}x)\n",
        r.worst_ratio, r.target_ratio
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_clusters_move_close_to_the_minimum() {
        let r = run(&[2, 3]).expect("runs");
        assert_eq!(r.changes.len(), 6);
        for c in &r.changes {
            assert!(c.moved > 0.0, "{c:?}");
            assert!(c.ratio > 0.9 && c.ratio < 1.1, "{c:?}");
        }
    }
}
