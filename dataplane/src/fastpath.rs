//! The XDP fast path's plan: for every rule slot of a kernel pre-filter, the
//! buckets whose frames it may drop (all but the *keep* set) and the buckets
//! whose untracked UDP datagrams it may hand the local stack itself (the
//! *pass* set), under every cluster map a poll loop may be judging with.
//! Sans-IO: maps and the poll loops' reports in, bucket sets out; writing
//! them into the kernel is the engine's job.
//!
//! # What it owns
//!
//! - [`MapsInFlight`]: the maps a poll loop may be judging with, oldest
//!   first, and each one's share per slot, computed once. It is told about
//!   every map before the map is published ([`MapsInFlight::prepare`]),
//!   forgets older maps once every loop has reported under the newest
//!   ([`MapsInFlight::settle`]), and plans ([`MapsInFlight::plan`]).
//! - [`Report`]: what one poll loop last said: the map it judges with and,
//!   per slot, the bucket groups in which its descriptor table holds foreign
//!   entries.
//! - [`SlotPlan`]: one slot's keep and pass sets and the action they call
//!   for ([`SlotAction`]).
//!
//! # The argument: the kernel drops only what userspace would drop
//!
//! For one rule slot and one map `M` a poll loop may be judging with, call
//! `K(M)` the buckets in the slot's keep set (all buckets for
//! [`SlotAction::Everything`], none for [`SlotAction::Drop`]). The plan
//! keeps, at every instant,
//!
//! ```text
//! K ⊇ ⋃ over maps M in flight of  ∅                          if the rule is disabled in M (or here)
//!                                  owned(M) ∪ ownerless(M) ∪ dirty   otherwise
//! ```
//!
//! where `dirty` is the union, over poll loops, of the bucket groups in which
//! the loop's descriptor table holds *foreign* entries (entries whose bucket
//! the local host does not own under the loop's map;
//! [`DescriptorTable::dirty_groups`]). Take an IPv4 TCP or UDP frame the
//! pre-filter judges, of rule `r` (the same rule [`ClusterMap::rule_for`]
//! finds: the slots are the map's lookup order) and bucket `b` (the same
//! bucket: the program computes `affinity_hash` bit for bit; the engine's
//! tests check it), with `b` outside the keep set. Then, for whichever
//! in-flight map the loop uses:
//!
//! 1. rule disabled (cluster-wide or here): the pipeline drops
//!    (`RuleDisabled`) before it looks at descriptors;
//! 2. otherwise `b` is neither owned by this host nor ownerless, so the
//!    new-connection verdict is `NotOwner`; and no descriptor of the frame's
//!    flow exists: a TCP or affinity entry of this rule and flow lives in
//!    bucket `b`, and an entry in a bucket this host does not own is foreign
//!    and so lies in a dirty group, which would have put `b` in the set;
//! 3. so the pipeline returns `Drop`. "Dirty elsewhere" and SYN retirement
//!    only ever turn a keep into a drop, never the reverse; they cannot break
//!    this. Frames in a bucket of the keep set may still be dropped by
//!    userspace: the kernel only pre-filters.
//!
//! Why the invariant holds over time:
//!
//! - Entries are only inserted in owned buckets (new connections, adoption,
//!   affinity), so between two maps the foreign set only shrinks; a loop
//!   reports its dirty groups right after adopting a map (`set_map` re-marks
//!   foreign entries) and periodically after. Any report is thus a superset
//!   of its loop's foreign entries until the loop's next map.
//! - A new map is prepared *before* it is published: the keep set grows to
//!   include it first (new buckets are added before old ones leave). Only
//!   when every loop has reported under the newest map (the very `Arc`
//!   published, not merely its epoch, since a view can be republished) are
//!   older maps forgotten and their buckets dropped from the set.
//! - The writer orders its writes per slot (a bitmap before the action that
//!   makes the program read it); concurrent readers see each bit either old
//!   or new, and both are supersets.
//! - The slots (rules, seed) are compiled into the program; a map whose
//!   layout differs is the writer's to refuse (it turns the fast path off),
//!   since stale descriptors could then sit in buckets the program no longer
//!   computes.
//!
//! # The pass: the kernel keeps only what userspace would keep
//!
//! A slot may pass ([`Slot::passes`]) when the program is built to pass and
//! its rule covers UDP without extended affinity. The pipeline's verdict on
//! such a rule's untracked datagram under map `M` is "keep" exactly when `M`
//! gives its bucket to this host (nothing else, descriptors or dirty groups,
//! enters it). The plan keeps
//!
//! ```text
//! P = ⋂ over maps M in flight of  pass(M)
//! ```
//!
//! so a passed datagram is one every poll loop would keep, whichever map it
//! judges with. A new map is prepared before it is published, which shrinks
//! `P` at once (the kernel stops passing buckets the new map moves away
//! before any loop adopts it, and so before the control plane hears that
//! the loops have moved); `P` grows only when [`MapsInFlight::settle`]
//! forgets the older maps. A pass set never exceeds the keep set (it is the
//! newest map's own buckets at most), and a dropping slot never passes
//! ([`SlotPlan::passes`]).

use std::fmt;
use std::sync::Arc;

use crate::bucket::{BUCKETS, GROUPS, GROUP_SHIFT};
use crate::descriptor::DescriptorTable;
use crate::map::{ClusterMap, GroupBits, RuleOwner};

/// 64-bit words in one bucket set.
pub const WORDS: usize = BUCKETS / 64;
/// 64-bit words per bucket group.
const WORDS_PER_GROUP: usize = (1 << GROUP_SHIFT) / 64;

/// A set of buckets of one rule: bit `b % 64` of word `b / 64` for bucket
/// `b`, the layout of the XDP program's bitmaps.
#[derive(Clone, PartialEq, Eq)]
pub struct BucketBits {
    words: Box<[u64]>,
}

impl fmt::Debug for BucketBits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BucketBits({} buckets)", self.count())
    }
}

impl BucketBits {
    /// No bucket.
    pub fn none() -> Self {
        Self {
            words: vec![0u64; WORDS].into_boxed_slice(),
        }
    }

    /// The set's words ([`WORDS`] of them).
    pub fn words(&self) -> &[u64] {
        &self.words
    }

    fn fill(&mut self) {
        self.words.fill(u64::MAX);
    }

    /// Adds bucket `bucket`.
    pub fn insert(&mut self, bucket: usize) {
        self.words[bucket / 64] |= 1 << (bucket % 64);
    }

    /// Whether bucket `bucket` is in the set.
    pub fn contains(&self, bucket: u32) -> bool {
        self.words[bucket as usize / 64] & (1 << (bucket % 64)) != 0
    }

    fn insert_group(&mut self, group: u32) {
        let start = group as usize % GROUPS * WORDS_PER_GROUP;
        self.words[start..start + WORDS_PER_GROUP].fill(u64::MAX);
    }

    /// Buckets in the set.
    pub fn count(&self) -> usize {
        self.words.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.words.iter().all(|&w| w == 0)
    }

    fn is_full(&self) -> bool {
        self.words.iter().all(|&w| w == u64::MAX)
    }

    fn union(&mut self, other: &BucketBits) {
        for (w, o) in self.words.iter_mut().zip(other.words.iter()) {
            *w |= o;
        }
    }

    fn intersect(&mut self, other: &BucketBits) {
        for (w, o) in self.words.iter_mut().zip(other.words.iter()) {
            *w &= o;
        }
    }
}

/// One rule slot of the pre-filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    /// Index of the rule in the cluster map.
    pub rule: usize,
    /// Whether the program may pass this slot's untracked UDP datagrams: it
    /// is built to pass, and the rule covers UDP without extended affinity.
    pub passes: bool,
}

/// What a slot's keep set calls for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotAction {
    /// Drop every frame of the rule (the keep set is empty).
    Drop,
    /// Hand every frame of the rule to userspace (the keep set is full).
    Everything,
    /// Drop the frames whose bucket is not in the keep set.
    Bitmap,
}

/// One slot's plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotPlan {
    /// The buckets whose frames the pre-filter must not drop.
    pub keep: BucketBits,
    /// The buckets whose untracked UDP datagrams it may pass.
    pub pass: BucketBits,
}

impl SlotPlan {
    /// The action the keep set calls for.
    pub fn action(&self) -> SlotAction {
        if self.keep.is_empty() {
            SlotAction::Drop
        } else if self.keep.is_full() {
            SlotAction::Everything
        } else {
            SlotAction::Bitmap
        }
    }

    /// Whether the slot passes datagrams: some bucket passes and the slot
    /// does not drop everything.
    pub fn passes(&self) -> bool {
        self.action() != SlotAction::Drop && !self.pass.is_empty()
    }
}

/// What one poll loop last reported: the map it judges with and, per slot,
/// the bucket groups in which it holds foreign entries.
#[derive(Debug, Clone)]
pub struct Report {
    /// The map the loop judges with.
    pub map: Arc<ClusterMap>,
    /// Per slot, the groups of the slot's rule holding foreign entries.
    pub dirty: Vec<GroupBits>,
}

impl Report {
    /// A loop's report: `table`'s dirty groups for each of `slots`, under
    /// `map`, the map it judges with. Bounded work: `GROUPS` counters per
    /// slot.
    pub fn of(map: &Arc<ClusterMap>, table: &DescriptorTable, slots: &[Slot]) -> Self {
        Self {
            map: map.clone(),
            dirty: slots.iter().map(|s| table.dirty_groups(s.rule)).collect(),
        }
    }
}

/// What one map lets a poll loop keep under one rule, before dirty groups.
#[derive(Debug)]
enum Share {
    /// Nothing, whatever is tracked (the rule is disabled, or disabled here).
    Nothing,
    /// Everything (a single-host rule this host serves, or nobody does).
    Everything,
    /// A single-host rule another host serves: only what is tracked.
    Tracked,
    /// A multiple-host rule: the buckets this host owns or nobody owns, and
    /// what is tracked.
    Buckets(BucketBits),
}

/// A map in flight and its shares, per slot, computed once.
#[derive(Debug)]
struct InFlight {
    map: Arc<ClusterMap>,
    shares: Vec<Share>,
    /// Per slot, the buckets whose untracked UDP this map surely keeps
    /// (`None`: none, or the slot passes nothing).
    passes: Vec<Option<BucketBits>>,
}

/// The maps a poll loop may be judging with, and the plan they call for.
/// See the module docs.
#[derive(Debug)]
pub struct MapsInFlight {
    slots: Vec<Slot>,
    /// Oldest first.
    in_flight: Vec<InFlight>,
}

impl MapsInFlight {
    /// No map in flight yet, for the pre-filter's `slots`.
    pub fn new(slots: Vec<Slot>) -> Self {
        Self {
            slots,
            in_flight: Vec::new(),
        }
    }

    /// The slots.
    pub fn slots(&self) -> &[Slot] {
        &self.slots
    }

    /// Maps in flight.
    pub fn len(&self) -> usize {
        self.in_flight.len()
    }

    /// Whether no map is in flight.
    pub fn is_empty(&self) -> bool {
        self.in_flight.is_empty()
    }

    /// Call before publishing `next` to the poll loops: from now on the plan
    /// covers `next` as well as every map still in flight. A republished map
    /// of the same view and host (new dirty groups elsewhere) replaces the
    /// newest rather than piling up: it has the same shares.
    pub fn prepare(&mut self, next: &Arc<ClusterMap>) {
        let shares = self
            .slots
            .iter()
            .map(|s| share_under(next, s.rule))
            .collect();
        let passes = self
            .slots
            .iter()
            .map(|s| s.passes.then(|| pass_under(next, s.rule)).flatten())
            .collect();
        if self
            .in_flight
            .last()
            .is_some_and(|f| f.map.view == next.view && f.map.local == next.local)
        {
            self.in_flight.pop();
        }
        self.in_flight.push(InFlight {
            map: next.clone(),
            shares,
            passes,
        });
    }

    /// Forgets the maps before the newest once every poll loop has reported
    /// under the newest (`reports`: one per loop, `None` until it first
    /// reports).
    pub fn settle(&mut self, reports: &[Option<Report>]) {
        let Some(newest) = self.in_flight.last().map(|f| f.map.clone()) else {
            return;
        };
        let all_moved = reports
            .iter()
            .all(|r| r.as_ref().is_some_and(|rep| Arc::ptr_eq(&rep.map, &newest)));
        if all_moved && self.in_flight.len() > 1 {
            let keep_from = self.in_flight.len() - 1;
            self.in_flight.drain(..keep_from);
        }
    }

    /// Forgets every map (the fast path is off for good).
    pub fn clear(&mut self) {
        self.in_flight.clear();
    }

    /// The keep and pass sets of every slot for the maps in flight and the
    /// loops' latest `reports`.
    pub fn plan(&self, reports: &[Option<Report>]) -> Vec<SlotPlan> {
        let reports: Vec<&Report> = reports.iter().flatten().collect();
        (0..self.slots.len())
            .map(|slot| {
                let mut dirty = GroupBits::default();
                let mut any_dirty = false;
                for rep in &reports {
                    if let Some(g) = rep.dirty.get(slot) {
                        for group in g.iter() {
                            dirty.insert(group);
                            any_dirty = true;
                        }
                    }
                }
                let mut keep = BucketBits::none();
                for f in &self.in_flight {
                    match &f.shares[slot] {
                        Share::Nothing => {}
                        Share::Everything => keep.fill(),
                        Share::Tracked => {
                            if any_dirty {
                                keep.fill();
                            }
                        }
                        Share::Buckets(owned) => {
                            keep.union(owned);
                            for g in dirty.iter() {
                                keep.insert_group(g);
                            }
                        }
                    }
                }
                // Passed only where every map in flight keeps: the kernel
                // then decides as any poll loop would.
                let mut pass: Option<BucketBits> = None;
                for f in &self.in_flight {
                    match (&f.passes[slot], &mut pass) {
                        (None, _) => {
                            pass = Some(BucketBits::none());
                            break;
                        }
                        (Some(p), None) => pass = Some(p.clone()),
                        (Some(p), Some(acc)) => acc.intersect(p),
                    }
                }
                SlotPlan {
                    keep,
                    pass: pass.unwrap_or_else(BucketBits::none),
                }
            })
            .collect()
    }
}

/// The buckets of rule `rule` in which a poll loop judging with `map` keeps
/// every untracked UDP datagram (not to an IKE port): the pipeline's verdict
/// on those is "the bucket's owner is this host". A single-host rule's frames
/// all have bucket 0, as in the program. `None`: no bucket.
fn pass_under(map: &ClusterMap, rule: usize) -> Option<BucketBits> {
    let compiled = map.rules.get(rule)?;
    if compiled.disabled_here || compiled.rule.extended_affinity_timeout_s != 0 {
        return None;
    }
    let local = map.local.get();
    let mut pass = BucketBits::none();
    match &compiled.owner {
        RuleOwner::Disabled => return None,
        RuleOwner::Single(owner) => {
            if owner.is_some_and(|h| h.get() == local) {
                pass.insert(0);
            }
        }
        RuleOwner::Buckets(buckets) => {
            for (b, &o) in buckets.owners().iter().enumerate() {
                if o == local {
                    pass.insert(b);
                }
            }
        }
    }
    (!pass.is_empty()).then_some(pass)
}

/// What a poll loop judging with `map` may keep under rule `rule`, before
/// tracked connections (see the module docs).
fn share_under(map: &ClusterMap, rule: usize) -> Share {
    let Some(compiled) = map.rules.get(rule) else {
        return Share::Everything;
    };
    if compiled.disabled_here {
        return Share::Nothing;
    }
    let local = map.local.get();
    match &compiled.owner {
        RuleOwner::Disabled => Share::Nothing,
        RuleOwner::Single(owner) => {
            if owner.is_none_or(|h| h.get() == local) {
                Share::Everything
            } else {
                Share::Tracked
            }
        }
        RuleOwner::Buckets(buckets) => {
            let mut keep = BucketBits::none();
            for (b, &o) in buckets.owners().iter().enumerate() {
                if o == local || o == 0 {
                    keep.insert(b);
                }
            }
            Share::Buckets(keep)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bucket::group_of;
    use crate::map::View;
    use crate::{
        Affinity, ClusterMode, ClusterSpec, FilterMode, HostId, HostSet, PortRule, Protocol,
    };
    use std::net::IpAddr;

    fn spec() -> ClusterSpec {
        let vip: IpAddr = "10.0.0.1".parse().unwrap();
        ClusterSpec {
            vips: vec![vip],
            mode: ClusterMode::Unicast,
            ipv6_network_prefix: 64,
            rules: vec![
                PortRule::new(
                    None,
                    (0, 65535),
                    Protocol::Both,
                    FilterMode::Multiple {
                        affinity: Affinity::Single,
                    },
                ),
                PortRule::new(Some(vip), (22, 22), Protocol::Tcp, FilterMode::Single),
                PortRule::new(Some(vip), (23, 23), Protocol::Tcp, FilterMode::Disabled),
            ],
            bucket_seed: 0x5eed,
        }
    }

    /// The slots of `spec()` in lookup order; `passing`: the program passes
    /// (only rule 0 covers UDP).
    fn slots(passing: bool) -> Vec<Slot> {
        [1, 2, 0]
            .into_iter()
            .map(|rule| Slot {
                rule,
                passes: passing && rule == 0,
            })
            .collect()
    }

    fn slot_of(rule: usize) -> usize {
        [1, 2, 0].iter().position(|&r| r == rule).unwrap()
    }

    fn hosts(ids: &[u8]) -> HostSet {
        ids.iter().map(|&i| HostId::new(i).unwrap()).collect()
    }

    fn map_of(spec: &ClusterSpec, members: &[u8], local: u8, epoch: u64) -> Arc<ClusterMap> {
        Arc::new(ClusterMap::build(
            spec,
            &View::converged(spec, hosts(members)),
            HostId::new(local).unwrap(),
            epoch,
        ))
    }

    fn map(members: &[u8], local: u8, epoch: u64) -> Arc<ClusterMap> {
        map_of(&spec(), members, local, epoch)
    }

    fn report(m: &Arc<ClusterMap>, dirty: Vec<GroupBits>) -> Option<Report> {
        Some(Report {
            map: m.clone(),
            dirty,
        })
    }

    fn clean() -> Vec<GroupBits> {
        vec![GroupBits::default(); 3]
    }

    fn plan_of(f: &MapsInFlight, reports: &[Option<Report>], rule: usize) -> SlotPlan {
        f.plan(reports)[slot_of(rule)].clone()
    }

    fn owned_by(m: &ClusterMap, host: u8) -> Vec<u32> {
        let RuleOwner::Buckets(b) = &m.rules[0].owner else {
            panic!()
        };
        (0..BUCKETS as u32)
            .filter(|&x| b.owner(x) == HostId::new(host))
            .collect()
    }

    #[test]
    fn actions_follow_the_owners() {
        let mut f = MapsInFlight::new(slots(false));
        let m = map(&[1, 2], 2, 1);
        f.prepare(&m);
        // Host 1 has the better priority for the single-host rule, so host
        // 2 drops its frames; the disabled rule drops everywhere.
        assert_eq!(plan_of(&f, &[], 1).action(), SlotAction::Drop);
        assert_eq!(plan_of(&f, &[], 2).action(), SlotAction::Drop);
        let p = plan_of(&f, &[], 0);
        assert_eq!(p.action(), SlotAction::Bitmap);
        let RuleOwner::Buckets(b) = &m.rules[0].owner else {
            panic!()
        };
        for bucket in (0..BUCKETS as u32).step_by(997) {
            assert_eq!(p.keep.contains(bucket), b.owner(bucket) == HostId::new(2));
        }
        // Alone, host 1 keeps everything of rule 0 and the single rule.
        let mut f = MapsInFlight::new(slots(false));
        f.prepare(&map(&[1], 1, 1));
        assert_eq!(plan_of(&f, &[], 0).action(), SlotAction::Everything);
        assert_eq!(plan_of(&f, &[], 1).action(), SlotAction::Everything);
        assert_eq!(plan_of(&f, &[], 2).action(), SlotAction::Drop);
    }

    #[test]
    fn new_buckets_are_kept_before_old_ones_leave() {
        let mut f = MapsInFlight::new(slots(false));
        let old = map(&[1], 1, 1);
        f.prepare(&old);
        let reports = [report(&old, clean())];
        f.settle(&reports);
        assert_eq!(plan_of(&f, &reports, 0).action(), SlotAction::Everything);
        // Host 2 joins: until the loop has adopted epoch 2, host 1 still
        // keeps every bucket (the old map says it owns them all).
        let new = map(&[1, 2], 1, 2);
        f.prepare(&new);
        assert_eq!(plan_of(&f, &reports, 0).action(), SlotAction::Everything);
        f.settle(&reports);
        assert_eq!(
            plan_of(&f, &reports, 0).action(),
            SlotAction::Everything,
            "loop still on epoch 1"
        );
        // The loop adopts epoch 2 and reports a foreign connection in one
        // group of rule 0.
        let foreign = owned_by(&new, 2)[0];
        let mut dirty = clean();
        dirty[slot_of(0)].insert(group_of(foreign));
        // A map of the same epoch but not the one published does not count.
        let reports = [report(&map(&[1, 2], 1, 2), dirty.clone())];
        f.settle(&reports);
        assert_eq!(f.len(), 2, "not the published map");
        let reports = [report(&new, dirty)];
        f.settle(&reports);
        assert_eq!(f.len(), 1);
        let p = plan_of(&f, &reports, 0);
        assert_eq!(p.action(), SlotAction::Bitmap);
        assert!(
            p.keep.contains(foreign),
            "a foreign connection's bucket is kept"
        );
        let other = owned_by(&new, 2)
            .into_iter()
            .find(|&x| group_of(x) != group_of(foreign))
            .unwrap();
        assert!(!p.keep.contains(other));
        // The connection ends: the next report clears its group.
        let reports = [report(&new, clean())];
        assert!(!plan_of(&f, &reports, 0).keep.contains(foreign));
    }

    #[test]
    fn every_loop_must_move_before_older_maps_are_forgotten() {
        let mut f = MapsInFlight::new(slots(false));
        let one = map(&[1], 1, 1);
        f.prepare(&one);
        let two = map(&[1, 2], 1, 2);
        f.prepare(&two);
        f.settle(&[report(&two, clean()), report(&one, clean())]);
        assert_eq!(f.len(), 2);
        f.settle(&[report(&two, clean()), None]);
        assert_eq!(f.len(), 2, "a loop that never reported");
        f.settle(&[report(&two, clean()), report(&two, clean())]);
        assert_eq!(f.len(), 1);
    }

    #[test]
    fn single_host_rules_keep_everything_while_tracking_foreign_entries() {
        let mut f = MapsInFlight::new(slots(false));
        let m = map(&[1, 2], 2, 1);
        f.prepare(&m);
        assert_eq!(plan_of(&f, &[], 1).action(), SlotAction::Drop);
        let mut dirty = clean();
        dirty[slot_of(1)].insert(0);
        let reports = [report(&m, dirty)];
        assert_eq!(plan_of(&f, &reports, 1).action(), SlotAction::Everything);
        // A disabled rule drops whatever is tracked.
        let mut dirty = clean();
        dirty[slot_of(2)].insert(0);
        let reports = [report(&m, dirty)];
        assert_eq!(plan_of(&f, &reports, 2).action(), SlotAction::Drop);
    }

    #[test]
    fn republished_views_do_not_pile_up() {
        let mut f = MapsInFlight::new(slots(false));
        f.prepare(&map(&[1], 1, 1));
        f.prepare(&map(&[1], 1, 1));
        assert_eq!(f.len(), 1);
        f.prepare(&map(&[1, 2], 1, 2));
        assert_eq!(f.len(), 2);
    }

    #[test]
    fn datagrams_pass_only_where_every_map_in_flight_keeps_them() {
        let mut f = MapsInFlight::new(slots(true));
        let two = map(&[1, 2], 1, 1);
        f.prepare(&two);
        // Rule 0 covers UDP without extended affinity: host 1's buckets pass.
        let p = plan_of(&f, &[], 0);
        assert!(p.passes());
        let mine = owned_by(&two, 1);
        assert_eq!(p.pass.count(), mine.len());
        assert!(mine.iter().all(|&b| p.pass.contains(b)));
        assert_eq!(p.action(), SlotAction::Bitmap);
        // TCP-only and disabled rules never pass.
        assert!(!plan_of(&f, &[], 1).passes());
        assert_eq!(plan_of(&f, &[], 2).action(), SlotAction::Drop);
        let reports = [report(&two, clean())];
        f.settle(&reports);

        // Host 3 joins: before any loop adopts the new map, only what both
        // maps give host 1 passes (the new map is prepared before it is
        // published).
        let three = map(&[1, 2, 3], 1, 2);
        f.prepare(&three);
        let p = plan_of(&f, &reports, 0);
        let moved: Vec<u32> = owned_by(&three, 3)
            .into_iter()
            .filter(|&b| mine.contains(&b))
            .collect();
        assert!(!moved.is_empty(), "host 3 takes some of host 1's buckets");
        assert!(
            moved.iter().all(|&b| !p.pass.contains(b)),
            "a moved bucket still passes"
        );
        // ... while the keep set still holds them (the loop may keep them).
        assert!(moved.iter().all(|&b| p.keep.contains(b)));
        // The loop moves: exactly host 1's new buckets pass.
        let reports = [report(&three, clean())];
        f.settle(&reports);
        let p = plan_of(&f, &reports, 0);
        let mut expected = BucketBits::none();
        for b in owned_by(&three, 1) {
            expected.insert(b as usize);
        }
        assert_eq!(p.pass, expected);

        // Alone, host 1 keeps everything and passes everything.
        let alone = map(&[1], 1, 3);
        f.prepare(&alone);
        let reports = [report(&alone, clean())];
        f.settle(&reports);
        let p = plan_of(&f, &reports, 0);
        assert_eq!(p.action(), SlotAction::Everything);
        assert!(p.passes());
        assert_eq!(p.pass.count(), BUCKETS);
        // The single-host rule is TCP: still no pass.
        assert!(!plan_of(&f, &reports, 1).passes());
    }

    #[test]
    fn extended_affinity_never_passes() {
        let mut sticky = spec();
        sticky.rules[0].extended_affinity_timeout_s = 30;
        let mut f = MapsInFlight::new(slots(true));
        f.prepare(&map_of(&sticky, &[1], 1, 1));
        let p = plan_of(&f, &[], 0);
        assert_eq!(p.action(), SlotAction::Everything);
        assert!(!p.passes());
    }
}
