//! Bucket maps: which live host owns each hash bucket of a multiple-host rule.
//!
//! # Contract
//!
//! A [`BucketMap`] is a pure function of the eligible hosts and their load
//! weights (README guarantee 6): every host computes the same map from the
//! same agreed view, with no history. Each bucket has exactly one owner, or
//! none when no host is eligible.
//!
//! # Algorithm and bucket count, and why
//!
//! Weighted rendezvous hashing (HRW) per bucket: every eligible host `h` draws
//! for bucket `b` an exponential "arrival time" `-ln(u(h, b)) / w(h)` with `u`
//! a deterministic hash in (0, 1); the earliest arrival owns the bucket. Host
//! `h` then wins each bucket with probability exactly `w(h) / Σw`, and:
//!
//! * when a host joins, the only buckets that change hands are the ones the
//!   joiner wins; when a host leaves, only its own buckets move. Nothing ever
//!   moves between two hosts that stayed, so movement is the joiner's (or
//!   leaver's) share and nothing more;
//! * no per-map state or ordering is involved, so the map is a pure function.
//!
//! What remains is sampling noise: with `B` buckets, a host of ideal share
//! `p` owns `p ± sqrt(p(1-p)/B)` of them. Quota-balancing schemes (greedy
//! capacity filling, iterative weight fitting) remove the share error but
//! move well over the minimum at tens of hosts, because
//! correcting one host's noise shifts buckets between hosts that stayed. So
//! shoal keeps pure HRW and makes `B` large: `B = 2^20`. Then a share is
//! within 0.05 percentage points of ideal for 2 or 3 hosts (the bound is 1),
//! and a joiner of share 1/64 moves 1/64 ± 0.8 % relative (the bound is 5 %,
//! over six standard deviations). The owner table costs one byte per bucket
//! (1 MiB per distinct weight vector, shared between rules with equal
//! weights) and one lookup per frame; computing it costs `B × hosts`
//! score evaluations (about 10 ms for 3 hosts, 0.25 s for 64, once per
//! convergence, off the frame path).
//!
//! Scores use [`crate::hash::neg_ln_unit`], which is bit-identical on every
//! platform; ties (practically impossible) go to the lower host ID.

use crate::hash::{mix64, neg_ln_unit};
use crate::model::{HostId, HostSet, MAX_HOSTS};

/// log2 of the number of buckets per multiple-host rule.
pub const BUCKET_BITS: u32 = 20;

/// Number of buckets per multiple-host rule.
pub const BUCKETS: usize = 1 << BUCKET_BITS;

/// log2 of the number of buckets in a dirty-tracking group.
pub const GROUP_SHIFT: u32 = 8;

/// Number of dirty-tracking groups per rule (`BUCKETS >> GROUP_SHIFT`).
pub const GROUPS: usize = BUCKETS >> GROUP_SHIFT;

/// The bucket of a 64-bit flow hash: its top [`BUCKET_BITS`] bits.
#[inline(always)]
pub const fn bucket_of(hash: u64) -> u32 {
    (hash >> (64 - BUCKET_BITS)) as u32
}

/// The dirty-tracking group of a bucket.
#[inline(always)]
pub const fn group_of(bucket: u32) -> u32 {
    bucket >> GROUP_SHIFT
}

/// Per-host salts, so each host's draws are independent of every other's.
fn host_salt(host: HostId) -> u64 {
    mix64(0x0073_686f_616c_0000 ^ host.get() as u64)
}

fn bucket_salt(bucket: u32) -> u64 {
    mix64(0x6275_636b_6574_0000 ^ bucket as u64)
}

/// Which host owns each bucket of a multiple-host rule.
#[derive(Clone, PartialEq, Eq)]
pub struct BucketMap {
    /// Owner host ID per bucket, 0 for none. A fixed-size array, so an
    /// index masked to `BUCKETS - 1` needs no bounds check.
    owners: Box<[u8; BUCKETS]>,
}

impl std::fmt::Debug for BucketMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BucketMap")
            .field("counts", &self.counts())
            .finish()
    }
}

impl BucketMap {
    /// Computes the map for hosts with a non-zero weight in `weights`
    /// (indexed by host index) that are also in `eligible`.
    ///
    /// Bounded work: `BUCKETS × eligible hosts` score evaluations.
    pub fn compute(eligible: HostSet, weights: &[u8; MAX_HOSTS]) -> Self {
        match Self::compute_unless(eligible, weights, &|| false) {
            Some(m) => m,
            None => unreachable!("a computation that is never stopped finishes"),
        }
    }

    /// [`BucketMap::compute`], giving up (`None`) as soon as `stop` returns
    /// true; it is asked every 1,024 buckets.
    pub fn compute_unless(
        eligible: HostSet,
        weights: &[u8; MAX_HOSTS],
        stop: &dyn Fn() -> bool,
    ) -> Option<Self> {
        let hosts: Vec<(u8, u64, f64)> = eligible
            .iter()
            .filter(|h| weights[h.index()] > 0)
            .map(|h| (h.get(), host_salt(h), 1.0 / weights[h.index()] as f64))
            .collect();
        let mut owners: Box<[u8; BUCKETS]> = vec![0u8; BUCKETS]
            .into_boxed_slice()
            .try_into()
            .unwrap_or_else(|_| unreachable!("a vector of BUCKETS bytes"));
        if hosts.is_empty() {
            return Some(Self { owners });
        }
        if hosts.len() == 1 {
            owners.fill(hosts[0].0);
            return Some(Self { owners });
        }
        for (b, owner) in owners.iter_mut().enumerate() {
            if b % (1 << 10) == 0 && stop() {
                return None;
            }
            let bs = bucket_salt(b as u32);
            let mut best = f64::INFINITY;
            let mut best_host = 0u8;
            for &(id, salt, inv_w) in &hosts {
                let key = neg_ln_unit(mix64(salt ^ bs)) * inv_w;
                if key < best {
                    best = key;
                    best_host = id;
                }
            }
            *owner = best_host;
        }
        Some(Self { owners })
    }

    /// The owner of `bucket`, if any host is eligible.
    #[inline(always)]
    pub fn owner(&self, bucket: u32) -> Option<HostId> {
        HostId::new(self.owner_id(bucket))
    }

    /// The raw owner byte of `bucket` (a host ID, 0 for none), for the
    /// frame path's compare against the local host ID.
    #[inline(always)]
    pub fn owner_id(&self, bucket: u32) -> u8 {
        self.owners[bucket as usize & (BUCKETS - 1)]
    }

    /// Raw owner bytes (host ID, 0 for none), one per bucket.
    pub fn owners(&self) -> &[u8] {
        &self.owners[..]
    }

    /// Buckets owned per host index.
    pub fn counts(&self) -> [u32; MAX_HOSTS] {
        let mut c = [0u32; MAX_HOSTS];
        for &o in self.owners.iter() {
            if o != 0 {
                c[o as usize - 1] += 1;
            }
        }
        c
    }

    /// Fraction of buckets whose owner differs between `self` and `other`.
    pub fn moved_fraction(&self, other: &BucketMap) -> f64 {
        let moved = self
            .owners
            .iter()
            .zip(other.owners.iter())
            .filter(|(a, b)| a != b)
            .count();
        moved as f64 / BUCKETS as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(ids: &[u8]) -> HostSet {
        ids.iter().map(|&i| HostId::new(i).unwrap()).collect()
    }

    #[test]
    fn one_owner_per_bucket_and_only_eligible_hosts() {
        let w = [50u8; MAX_HOSTS];
        let m = BucketMap::compute(set(&[2, 5, 9]), &w);
        let c = m.counts();
        assert_eq!(c.iter().map(|&x| x as usize).sum::<usize>(), BUCKETS);
        for (i, &n) in c.iter().enumerate() {
            assert_eq!(n > 0, [1, 4, 8].contains(&i), "host index {i}");
        }
    }

    #[test]
    fn empty_and_zero_weight_views_own_nothing() {
        let mut w = [50u8; MAX_HOSTS];
        assert!(BucketMap::compute(HostSet::EMPTY, &w).owner(7).is_none());
        w[0] = 0;
        let m = BucketMap::compute(set(&[1]), &w);
        assert!(m.owner(0).is_none());
        let m = BucketMap::compute(set(&[1, 2]), &w);
        assert_eq!(m.counts()[1] as usize, BUCKETS);
    }

    #[test]
    fn three_equal_hosts_share_within_a_point() {
        let m = BucketMap::compute(set(&[1, 2, 3]), &[50; MAX_HOSTS]);
        for &n in &m.counts()[..3] {
            let share = n as f64 / BUCKETS as f64;
            assert!((share - 1.0 / 3.0).abs() < 0.01, "share {share}");
        }
    }

    #[test]
    fn leave_moves_only_the_leavers_buckets() {
        let w = [50u8; MAX_HOSTS];
        let before = BucketMap::compute(set(&[1, 2, 3, 4]), &w);
        let after = BucketMap::compute(set(&[1, 2, 4]), &w);
        for b in 0..BUCKETS as u32 {
            let (x, y) = (before.owner(b), after.owner(b));
            if x != y {
                assert_eq!(x, HostId::new(3));
            }
        }
    }
}
