//! Descriptors: the connections (and affinity and link entries) a host
//! tracks so that they keep reaching it across every convergence.
//!
//! # Contract
//!
//! * Bounded: the table never holds more than [`DescriptorTable::capacity`]
//!   entries and never allocates after construction (README guarantee 7).
//! * Set-associative: a key hashes (with a per-table secret seed, so remote
//!   clients cannot aim at one set) to a set of [`WAYS`] slots; lookup and
//!   insert touch one set only, so every operation is O(WAYS).
//! * Eviction policy when a set is full, "half-open and idle first":
//!   an expired entry is reused first; then a half-open entry, then a
//!   closing one, then an idle UDP-affinity or link entry, the least
//!   recently seen first. An established TCP connection is only ever
//!   evicted to make room for another established one (adoption), never for
//!   a SYN: a SYN flood churns half-open entries and leaves established
//!   connections alone. A SYN that finds no room is still judged normally
//!   but is not tracked (`insert_failed`).
//! * Time is an input (`now` in nanoseconds of any monotonic clock).
//! * Per-rule, per-group counts of *foreign* entries (whose bucket the
//!   local host no longer owns) give the dirty groups a host advertises.

use crate::bucket::{group_of, GROUPS};
use crate::hash::mix64;
use crate::map::{ClusterMap, GroupBits};
use crate::model::MAX_RULES;

/// Slots per set.
pub const WAYS: usize = 8;

/// What a descriptor tracks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Kind {
    /// A TCP connection (5-tuple).
    Tcp = 1,
    /// Extended affinity: a client (or client network) stays on this host.
    Affinity = 2,
    /// GRE following a PPTP control connection (client, VIP).
    GreLink = 3,
    /// ESP following an IKE session (client, VIP).
    EspLink = 4,
}

/// Lifecycle state; decides the timeout and the eviction order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum State {
    /// SYN seen, no further frame yet.
    HalfOpen = 0,
    /// FIN or RST seen; lingers so retransmissions still reach this host.
    Closing = 1,
    /// UDP affinity or GRE/ESP link entry.
    Soft = 2,
    /// An established TCP connection.
    Established = 3,
}

/// The identity of a descriptor. Addresses are stored as 16 bytes (IPv4 as
/// IPv4-mapped IPv6, with `v4` set so the families stay distinct).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct FlowKey {
    /// Client address (or affinity prefix).
    pub client: [u8; 16],
    /// VIP.
    pub server: [u8; 16],
    /// Client port (0 for affinity and link entries).
    pub client_port: u16,
    /// Server port (affinity entries: the rule index).
    pub server_port: u16,
    /// [`Kind`] as a byte.
    pub kind: u8,
    /// Whether the addresses are IPv4.
    pub v4: bool,
}

/// Timeouts and size of a descriptor table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DescriptorConfig {
    /// Most entries (rounded down to a power-of-two number of sets of [`WAYS`]).
    pub capacity: usize,
    /// Half-open TCP timeout, ns.
    pub half_open_ns: u64,
    /// Established TCP idle timeout, ns.
    pub established_ns: u64,
    /// Closing TCP timeout, ns.
    pub closing_ns: u64,
    /// GRE/ESP link entry timeout, ns.
    pub link_ns: u64,
    /// Extended-affinity entry timeout, ns (per rule timeouts override).
    pub affinity_ns: u64,
}

impl Default for DescriptorConfig {
    /// NLB's 512 × 512 descriptors and conventional timeouts.
    fn default() -> Self {
        const S: u64 = 1_000_000_000;
        Self {
            capacity: 262_144,
            half_open_ns: 30 * S,
            established_ns: 3600 * S,
            closing_ns: 60 * S,
            link_ns: 300 * S,
            affinity_ns: 120 * S,
        }
    }
}

/// One tracked entry.
#[derive(Clone, Copy, Debug, Default)]
pub struct Entry {
    /// Its key.
    pub key: FlowKey,
    /// Lifecycle state.
    pub state: u8,
    /// Rule index the flow matched.
    pub rule: u8,
    /// Whether the local host no longer owns `bucket`.
    pub foreign: bool,
    /// Bucket of the flow under its rule.
    pub bucket: u32,
    /// Last frame seen, ns.
    pub last_seen: u64,
    /// Timeout override for this entry, ns (0: by state).
    pub timeout_ns: u64,
}

impl Entry {
    /// Its lifecycle state.
    pub fn state(&self) -> State {
        match self.state {
            0 => State::HalfOpen,
            1 => State::Closing,
            2 => State::Soft,
            _ => State::Established,
        }
    }
}

/// Counters of one table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TableCounters {
    /// Entries created.
    pub inserted: u64,
    /// Entries removed because they timed out.
    pub expired: u64,
    /// Entries evicted for room, by [`State`] index.
    pub evicted: [u64; 4],
    /// Inserts refused because the set held only entries the policy keeps.
    pub insert_failed: u64,
}

impl TableCounters {
    /// Adds `other` (another poll loop's table) to these.
    pub fn merge(&mut self, other: &TableCounters) {
        self.inserted += other.inserted;
        self.expired += other.expired;
        self.insert_failed += other.insert_failed;
        for (a, b) in self.evicted.iter_mut().zip(other.evicted) {
            *a += b;
        }
    }
}

/// A bounded, set-associative descriptor table. See the module docs.
#[derive(Debug)]
pub struct DescriptorTable {
    cfg: DescriptorConfig,
    /// Timeouts by [`State`] index (links for `Soft`), from `cfg`.
    by_state: [u64; 4],
    seed: u64,
    /// `mix64(seed)`: the first round of [`Self::hash`] for every key whose
    /// client's first (native-endian) half is zero, which is every IPv4
    /// key on a little-endian host.
    seed_zero: u64,
    set_mask: usize,
    /// Per slot: 0 when empty, else a 32-bit tag of the key hash (never 0).
    tags: Box<[u32]>,
    entries: Box<[Entry]>,
    live: usize,
    sweep_cursor: usize,
    /// Foreign entries per rule and group.
    foreign: Box<[[u32; GROUPS]; MAX_RULES]>,
    /// The sum of `foreign`: the entries marked foreign.
    foreign_len: usize,
    /// Live entries per rule (entries with no rule are not counted).
    by_rule: [u32; MAX_RULES],
    /// Open TCP connections (half-open or established) per rule.
    open: [u32; MAX_RULES],
    /// Live entries per [`State`] index (kept as entries change, so a
    /// report reads it without a scan).
    live_states: [u32; 4],
    counters: TableCounters,
}

/// Whether `e` is an open TCP connection (what a drain waits for).
fn is_open(e: &Entry) -> bool {
    e.key.kind == Kind::Tcp as u8 && matches!(e.state(), State::HalfOpen | State::Established)
}

/// Where a key that is not in the table would go: its hash, from
/// [`DescriptorTable::lookup_or_vacancy`] for [`DescriptorTable::insert_at`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Vacancy(u64);

/// Where an entry lives, returned by lookups so callers can update it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slot(usize);

impl DescriptorTable {
    /// A table for at most `cfg.capacity` entries. `seed` should be secret
    /// and random per process.
    pub fn new(cfg: DescriptorConfig, seed: u64) -> Self {
        let sets = (cfg.capacity / WAYS).max(1);
        let sets = if sets.is_power_of_two() {
            sets
        } else {
            sets.next_power_of_two() / 2
        };
        let slots = sets * WAYS;
        let seed = mix64(seed ^ 0x6465_7363);
        Self {
            cfg,
            by_state: [
                cfg.half_open_ns,
                cfg.closing_ns,
                cfg.link_ns,
                cfg.established_ns,
            ],
            seed,
            seed_zero: mix64(seed),
            set_mask: sets - 1,
            tags: vec![0u32; slots].into_boxed_slice(),
            entries: vec![Entry::default(); slots].into_boxed_slice(),
            live: 0,
            sweep_cursor: 0,
            // A fixed-size array: masked indexes need no bounds check.
            foreign: vec![[0u32; GROUPS]; MAX_RULES]
                .into_boxed_slice()
                .try_into()
                .unwrap_or_else(|_| unreachable!("a vector of MAX_RULES rows")),
            foreign_len: 0,
            by_rule: [0; MAX_RULES],
            open: [0; MAX_RULES],
            live_states: [0; 4],
            counters: TableCounters::default(),
        }
    }

    /// Most entries the table can hold.
    pub fn capacity(&self) -> usize {
        self.tags.len()
    }

    /// Entries held now.
    pub fn len(&self) -> usize {
        self.live
    }

    /// Whether the table holds nothing.
    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// The table's configuration.
    pub fn config(&self) -> &DescriptorConfig {
        &self.cfg
    }

    /// Its counters.
    pub fn counters(&self) -> &TableCounters {
        &self.counters
    }

    /// Live entries per [`State`] index, kept as entries are inserted,
    /// change state and leave: O(1).
    pub fn live_by_state(&self) -> [u32; 4] {
        self.live_states
    }

    /// Entries per [`State`] index (a full scan: for tests, not per frame).
    pub fn states(&self) -> [usize; 4] {
        let mut s = [0usize; 4];
        for (t, e) in self.tags.iter().zip(self.entries.iter()) {
            if *t != 0 {
                s[e.state() as usize] += 1;
            }
        }
        s
    }

    #[inline(always)]
    fn hash(&self, key: &FlowKey) -> u64 {
        let c = u128::from_ne_bytes(key.client);
        let s = u128::from_ne_bytes(key.server);
        let mut h = if c as u64 == 0 {
            self.seed_zero
        } else {
            mix64(self.seed ^ c as u64)
        };
        h = mix64(h ^ (c >> 64) as u64);
        h = mix64(h ^ s as u64 ^ ((s >> 64) as u64).rotate_left(17));
        mix64(
            h ^ ((key.client_port as u64) << 32)
                ^ ((key.server_port as u64) << 16)
                ^ ((key.kind as u64) << 8)
                ^ key.v4 as u64,
        )
    }

    /// An entry's timeout: its own, else by [`State`] (read from a table
    /// indexed by the state byte, as [`Entry::state`] reads it: bytes above
    /// 3 are established), an affinity entry's apart.
    #[inline(always)]
    fn timeout(&self, e: &Entry) -> u64 {
        if e.timeout_ns != 0 {
            return e.timeout_ns;
        }
        if e.state == State::Soft as u8 && e.key.kind == Kind::Affinity as u8 {
            return self.cfg.affinity_ns;
        }
        self.by_state[usize::from(e.state.min(State::Established as u8))]
    }

    fn expired(&self, e: &Entry, now: u64) -> bool {
        now.saturating_sub(e.last_seen) > self.timeout(e)
    }

    fn free_slot(&mut self, i: usize) {
        if self.tags[i] == 0 {
            return;
        }
        let e = &self.entries[i];
        if e.foreign {
            let c = &mut self.foreign[e.rule as usize % MAX_RULES]
                [group_of(e.bucket) as usize % GROUPS];
            *c = c.saturating_sub(1);
            self.foreign_len = self.foreign_len.saturating_sub(1);
        }
        if let Some(c) = self.by_rule.get_mut(e.rule as usize) {
            *c = c.saturating_sub(1);
        }
        if is_open(e) {
            if let Some(c) = self.open.get_mut(e.rule as usize) {
                *c = c.saturating_sub(1);
            }
        }
        let st = &mut self.live_states[e.state() as usize];
        *st = st.saturating_sub(1);
        self.tags[i] = 0;
        self.live -= 1;
    }

    /// The way of the set at `base` holding `key` (whose tag is `tag`):
    /// the set's tags and entries as fixed arrays, so the scan unrolls
    /// into eight compares with no bounds checks.
    #[inline(always)]
    fn find_way(&self, base: usize, tag: u32, key: &FlowKey) -> Option<usize> {
        let tags: &[u32; WAYS] = self.tags.get(base..base + WAYS)?.try_into().ok()?;
        let entries: &[Entry; WAYS] = self.entries.get(base..base + WAYS)?.try_into().ok()?;
        (0..WAYS).find(|&k| tags[k] == tag && entries[k].key == *key)
    }

    /// Finds `key`; an expired entry is removed and not found.
    #[inline(always)]
    pub fn lookup(&mut self, key: &FlowKey, now: u64) -> Option<Slot> {
        self.lookup_or_vacancy(key, now).ok()
    }

    /// [`Self::lookup`], and on a miss the key's place for
    /// [`Self::insert_at`], so a miss followed by an insert hashes once.
    #[inline(always)]
    pub(crate) fn lookup_or_vacancy(&mut self, key: &FlowKey, now: u64) -> Result<Slot, Vacancy> {
        let h = self.hash(key);
        let tag = (h >> 32) as u32 | 1;
        let base = (h as usize & self.set_mask) * WAYS;
        let Some(k) = self.find_way(base, tag, key) else {
            return Err(Vacancy(h));
        };
        let i = base + k;
        if self.expired(&self.entries[i], now) {
            self.free_slot(i);
            self.counters.expired += 1;
            return Err(Vacancy(h));
        }
        Ok(Slot(i))
    }

    /// The entry at `slot`.
    pub fn entry(&self, slot: Slot) -> &Entry {
        &self.entries[slot.0]
    }

    /// The entry at `slot`, to update its state or `last_seen`.
    pub fn entry_mut(&mut self, slot: Slot) -> &mut Entry {
        &mut self.entries[slot.0]
    }

    /// Moves the entry at `slot` to `state`, keeping the count of open
    /// connections ([`Self::open_by_rule`]) right. State changes go through
    /// here, not through [`Self::entry_mut`].
    pub fn set_state(&mut self, slot: Slot, state: State) {
        let e = &mut self.entries[slot.0];
        let was = is_open(e);
        let st = &mut self.live_states[e.state() as usize];
        *st = st.saturating_sub(1);
        self.live_states[state as usize] += 1;
        e.state = state as u8;
        let now_open = is_open(e);
        if let Some(c) = self.open.get_mut(e.rule as usize) {
            match (was, now_open) {
                (true, false) => *c = c.saturating_sub(1),
                (false, true) => *c += 1,
                _ => {}
            }
        }
    }

    /// Removes the entry at `slot`.
    pub fn remove(&mut self, slot: Slot) {
        self.free_slot(slot.0);
    }

    /// Inserts `entry` (its key must not be present). Returns `None` when the
    /// eviction policy keeps every entry of the key's set.
    pub fn insert(&mut self, entry: Entry, now: u64) -> Option<Slot> {
        let h = self.hash(&entry.key);
        self.insert_at(Vacancy(h), entry, now)
    }

    /// [`Self::insert`] at the place a [`Self::lookup_or_vacancy`] of
    /// `entry.key` returned.
    pub(crate) fn insert_at(&mut self, place: Vacancy, entry: Entry, now: u64) -> Option<Slot> {
        let h = place.0;
        debug_assert_eq!(h, self.hash(&entry.key), "a vacancy of another key");
        let tag = (h >> 32) as u32 | 1;
        let base = (h as usize & self.set_mask) * WAYS;
        // The first way, in order, that is empty or expired.
        let mut chosen = None;
        for i in base..base + WAYS {
            if self.tags[i] == 0 {
                chosen = Some(i);
                break;
            }
            if self.expired(&self.entries[i], now) {
                self.free_slot(i);
                self.counters.expired += 1;
                chosen = Some(i);
                break;
            }
        }
        let i = match chosen {
            Some(i) => i,
            // Every way is live: evict by the policy, if it lets us.
            None => match self.victim(base, &entry) {
                Some((i, state)) => {
                    self.counters.evicted[state as usize % 4] += 1;
                    self.free_slot(i);
                    i
                }
                None => {
                    self.counters.insert_failed += 1;
                    return None;
                }
            },
        };
        self.tags[i] = tag;
        self.entries[i] = Entry {
            last_seen: now,
            foreign: false,
            ..entry
        };
        if let Some(c) = self.by_rule.get_mut(entry.rule as usize) {
            *c += 1;
        }
        if is_open(&entry) {
            if let Some(c) = self.open.get_mut(entry.rule as usize) {
                *c += 1;
            }
        }
        self.live_states[entry.state() as usize] += 1;
        self.live += 1;
        self.counters.inserted += 1;
        Some(Slot(i))
    }

    /// The entry of the full set at `base` that `entry` may evict, and its
    /// state byte: the lowest (state, last seen), established entries only
    /// for an established one; the first of equals.
    fn victim(&self, base: usize, entry: &Entry) -> Option<(usize, u8)> {
        let mut victim: Option<(usize, (u8, u64))> = None;
        for i in base..base + WAYS {
            let e = &self.entries[i];
            // Established entries only yield to established ones.
            if e.state() == State::Established && entry.state() != State::Established {
                continue;
            }
            let rank = (e.state, e.last_seen);
            if victim.is_none_or(|(_, r)| rank < r) {
                victim = Some((i, rank));
            }
        }
        victim.map(|(i, (state, _))| (i, state))
    }

    /// Removes up to `budget` expired entries, continuing where the last
    /// sweep stopped. Bounded work: `budget` slots visited.
    pub fn sweep(&mut self, now: u64, budget: usize) {
        let n = self.tags.len();
        for _ in 0..budget.min(n) {
            let i = self.sweep_cursor;
            self.sweep_cursor = (i + 1) % n;
            if self.tags[i] != 0 && self.expired(&self.entries[i], now) {
                self.free_slot(i);
                self.counters.expired += 1;
            }
        }
    }

    /// Re-marks every entry foreign or not under `map` and recounts the
    /// foreign entries per group. O(capacity): once per new map.
    pub fn remap(&mut self, map: &ClusterMap) {
        for f in self.foreign.iter_mut() {
            f.fill(0);
        }
        self.foreign_len = 0;
        for i in 0..self.tags.len() {
            if self.tags[i] == 0 {
                continue;
            }
            let e = &mut self.entries[i];
            let rule = e.rule as usize;
            e.foreign = rule < map.rules.len() && map.owner(rule, e.bucket) != Some(map.local);
            if e.foreign {
                self.foreign[rule % MAX_RULES][group_of(e.bucket) as usize % GROUPS] += 1;
                self.foreign_len += 1;
            }
        }
    }

    /// Forgets every entry (cluster operations stopped: NLB's `stop` drops
    /// every connection). O(capacity).
    pub fn clear(&mut self) {
        self.tags.fill(0);
        self.live = 0;
        for f in self.foreign.iter_mut() {
            f.fill(0);
        }
        self.foreign_len = 0;
        self.by_rule = [0; MAX_RULES];
        self.open = [0; MAX_RULES];
        self.live_states = [0; 4];
    }

    /// Re-resolves every entry's rule and bucket under `map`, after the
    /// port rules changed (a reload): rule indexes of the old rules mean
    /// nothing in the new ones. Affinity entries, whose key names their old
    /// rule, are dropped. O(capacity); follow with [`Self::remap`].
    pub fn rebind_rules(&mut self, map: &ClusterMap) {
        self.by_rule = [0; MAX_RULES];
        self.open = [0; MAX_RULES];
        for i in 0..self.tags.len() {
            if self.tags[i] == 0 {
                continue;
            }
            let e = self.entries[i];
            let server = std::net::Ipv6Addr::from(e.key.server);
            let vip = if e.key.v4 {
                std::net::IpAddr::V4(
                    server
                        .to_ipv4_mapped()
                        .unwrap_or(std::net::Ipv4Addr::UNSPECIFIED),
                )
            } else {
                std::net::IpAddr::V6(server)
            };
            let client6 = std::net::Ipv6Addr::from(e.key.client);
            let client = if e.key.v4 {
                std::net::IpAddr::V4(
                    client6
                        .to_ipv4_mapped()
                        .unwrap_or(std::net::Ipv4Addr::UNSPECIFIED),
                )
            } else {
                std::net::IpAddr::V6(client6)
            };
            let found = match e.key.kind {
                k if k == Kind::Tcp as u8 => map.rule_for(vip, e.key.server_port, 6),
                k if k == Kind::GreLink as u8 => map.rule_for(vip, 1723, 6),
                k if k == Kind::EspLink as u8 => map.rule_for(vip, 500, 17),
                _ => None,
            };
            let Some(rule) = found.filter(|_| e.key.kind != Kind::Affinity as u8) else {
                let st = &mut self.live_states[e.state() as usize];
                *st = st.saturating_sub(1);
                self.tags[i] = 0;
                self.live -= 1;
                continue;
            };
            let bucket = match map.rules[rule].rule.mode {
                crate::model::FilterMode::Multiple { affinity } => {
                    crate::bucket::bucket_of(crate::hash::affinity_hash(
                        map.seed,
                        affinity,
                        client,
                        e.key.client_port,
                        map.ipv6_network_prefix,
                    ))
                }
                _ => 0,
            };
            let entry = &mut self.entries[i];
            entry.rule = rule as u8;
            entry.bucket = bucket;
            entry.foreign = false;
            self.by_rule[rule % MAX_RULES] += 1;
            if is_open(entry) {
                self.open[rule % MAX_RULES] += 1;
            }
        }
    }

    /// Whether the last [`Self::remap`] counted, and no removal has since
    /// uncounted, a foreign entry of `rule` in `bucket`'s group. O(1).
    ///
    /// The pipeline inserts entries only in buckets the local host owns
    /// under the map in force, and every new map is followed by a remap, so
    /// an entry whose bucket the local host does not own is always counted
    /// here (counts only over-estimate: rules beyond [`MAX_RULES`] share
    /// counters). `false` for a bucket the local host does not own thus
    /// means no entry of that rule and bucket exists.
    #[inline]
    pub fn tracks_foreign(&self, rule: usize, bucket: u32) -> bool {
        self.foreign[rule % MAX_RULES][group_of(bucket) as usize % GROUPS] != 0
    }

    /// Entries the last [`Self::remap`] marked foreign, less those removed
    /// since: the sum of the counts [`Self::tracks_foreign`] reads, so 0
    /// means it is `false` for every rule and bucket (one compare for the
    /// frame path in the usual state, where no bucket moved away from a
    /// live connection). O(1).
    #[inline]
    pub fn foreign_len(&self) -> usize {
        self.foreign_len
    }

    /// Live entries under each rule (every kind and state). O(1).
    pub fn live_by_rule(&self) -> &[u32; MAX_RULES] {
        &self.by_rule
    }

    /// Open TCP connections (half-open or established, not closing) under
    /// each rule: what a drain waits for. Closing entries, which only
    /// linger for retransmissions, and affinity and GRE/ESP link entries
    /// are not counted. An expired entry counts until it is swept or looked
    /// up. O(1).
    pub fn open_by_rule(&self) -> &[u32; MAX_RULES] {
        &self.open
    }

    /// Groups of `rule` in which this host tracks entries it no longer owns:
    /// its dirty groups.
    pub fn dirty_groups(&self, rule: usize) -> GroupBits {
        let mut g = GroupBits::default();
        if let Some(counts) = self.foreign.get(rule) {
            for (i, &c) in counts.iter().enumerate() {
                if c > 0 {
                    g.insert(i as u32);
                }
            }
        }
        g
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u32) -> FlowKey {
        let mut k = FlowKey {
            kind: Kind::Tcp as u8,
            v4: true,
            server_port: 80,
            ..FlowKey::default()
        };
        k.client[12..].copy_from_slice(&n.to_be_bytes());
        k.client_port = (n % 60000) as u16;
        k
    }

    fn entry(n: u32, state: State) -> Entry {
        Entry {
            key: key(n),
            state: state as u8,
            ..Entry::default()
        }
    }

    #[test]
    fn insert_lookup_remove() {
        let mut t = DescriptorTable::new(
            DescriptorConfig {
                capacity: 64,
                ..Default::default()
            },
            1,
        );
        assert_eq!(t.capacity(), 64);
        let s = t.insert(entry(1, State::HalfOpen), 0).unwrap();
        assert_eq!(t.live_by_rule()[0], 1);
        assert_eq!(t.lookup(&key(1), 1), Some(s));
        assert_eq!(t.lookup(&key(2), 1), None);
        t.remove(s);
        assert_eq!(t.lookup(&key(1), 1), None);
        assert!(t.is_empty());
    }

    /// The kept per-state counts equal a full scan through inserts into
    /// full sets (evictions), state changes, removals, expiries, sweeps and
    /// a clear.
    #[test]
    fn live_by_state_matches_a_scan() {
        let mut t = DescriptorTable::new(
            DescriptorConfig {
                capacity: 64,
                ..Default::default()
            },
            7,
        );
        let states = [
            State::HalfOpen,
            State::Closing,
            State::Soft,
            State::Established,
        ];
        let scan = |t: &DescriptorTable| t.states().map(|n| n as u32);
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let mut now = 0;
        for step in 0..20_000u32 {
            now += 1_000_000;
            let r = next();
            let n = (r >> 8) as u32 % 300;
            let state = states[(r >> 40) as usize % 4];
            match r % 8 {
                0..=3 => {
                    if t.lookup(&key(n), now).is_none() {
                        let mut e = entry(n, state);
                        if state == State::Soft {
                            e.key.kind = Kind::Affinity as u8;
                        }
                        t.insert(e, now);
                    }
                }
                4 | 5 => {
                    if let Some(s) = t.lookup(&key(n), now) {
                        t.set_state(s, state);
                    }
                }
                6 => {
                    if let Some(s) = t.lookup(&key(n), now) {
                        t.remove(s);
                    }
                }
                _ => {
                    // Far in the future: half-open and closing entries expire.
                    t.sweep(now + 60 * 1_000_000_000, 16);
                }
            }
            assert_eq!(t.live_by_state(), scan(&t), "step {step}");
        }
        assert!(
            t.counters().evicted.iter().sum::<u64>() > 0,
            "sets filled up"
        );
        t.clear();
        assert_eq!(t.live_by_state(), [0; 4]);
    }

    #[test]
    fn open_connections_exclude_closing_and_soft_entries() {
        let mut t = DescriptorTable::new(DescriptorConfig::default(), 1);
        let a = t.insert(entry(1, State::HalfOpen), 0).unwrap();
        let b = t.insert(entry(2, State::Established), 0).unwrap();
        let mut soft = entry(3, State::Soft);
        soft.key.kind = Kind::Affinity as u8;
        t.insert(soft, 0).unwrap();
        assert_eq!((t.open_by_rule()[0], t.live_by_rule()[0]), (2, 3));
        t.set_state(a, State::Established);
        assert_eq!(t.open_by_rule()[0], 2);
        t.set_state(b, State::Closing);
        t.set_state(a, State::Closing);
        assert_eq!((t.open_by_rule()[0], t.live_by_rule()[0]), (0, 3));
        t.set_state(a, State::Established);
        assert_eq!(t.open_by_rule()[0], 1);
        t.remove(a);
        assert_eq!(t.open_by_rule()[0], 0);
        t.clear();
        assert_eq!((t.open_by_rule()[0], t.live_by_rule()[0]), (0, 0));
    }

    #[test]
    fn expiry_by_state() {
        let cfg = DescriptorConfig {
            capacity: 64,
            half_open_ns: 10,
            established_ns: 1000,
            ..Default::default()
        };
        let mut t = DescriptorTable::new(cfg, 1);
        t.insert(entry(1, State::HalfOpen), 0).unwrap();
        t.insert(entry(2, State::Established), 0).unwrap();
        assert!(t.lookup(&key(1), 11).is_none());
        assert!(t.lookup(&key(2), 11).is_some());
        t.sweep(2000, 64);
        assert!(t.is_empty());
        assert_eq!(t.counters().expired, 2);
    }

    /// The timeout table reads the state byte as [`Entry::state`] does
    /// (bytes above 3 are established), affinity entries apart, and an
    /// entry's own timeout wins.
    #[test]
    fn timeouts_by_state_byte_and_kind() {
        let cfg = DescriptorConfig {
            half_open_ns: 1,
            closing_ns: 2,
            link_ns: 3,
            affinity_ns: 4,
            established_ns: 5,
            ..Default::default()
        };
        let t = DescriptorTable::new(cfg, 1);
        for state in 0..=6u8 {
            for kind in [Kind::Tcp, Kind::Affinity, Kind::GreLink, Kind::EspLink] {
                let mut e = Entry {
                    key: FlowKey {
                        kind: kind as u8,
                        ..FlowKey::default()
                    },
                    state,
                    ..Entry::default()
                };
                let want = match e.state() {
                    State::HalfOpen => 1,
                    State::Closing => 2,
                    State::Soft if kind == Kind::Affinity => 4,
                    State::Soft => 3,
                    State::Established => 5,
                };
                assert_eq!(t.timeout(&e), want, "state {state} kind {kind:?}");
                e.timeout_ns = 77;
                assert_eq!(t.timeout(&e), 77);
            }
        }
    }

    /// A miss's vacancy takes the entry where `insert` would have put it.
    #[test]
    fn vacancy_inserts_where_insert_does() {
        let cfg = DescriptorConfig {
            capacity: 64,
            ..Default::default()
        };
        let (mut a, mut b) = (DescriptorTable::new(cfg, 9), DescriptorTable::new(cfg, 9));
        for n in 0..40 {
            let Err(place) = a.lookup_or_vacancy(&key(n), 0) else {
                panic!("key {n} found in an empty table");
            };
            let sa = a.insert_at(place, entry(n, State::Established), 0);
            let sb = b.insert(entry(n, State::Established), 0);
            assert_eq!(sa, sb, "key {n}");
            if let Some(slot) = sa {
                assert_eq!(a.lookup_or_vacancy(&key(n), 1), Ok(slot));
            }
        }
        assert_eq!(a.counters(), b.counters());
    }

    #[test]
    fn syn_flood_never_evicts_established() {
        let cfg = DescriptorConfig {
            capacity: 256,
            ..Default::default()
        };
        let mut t = DescriptorTable::new(cfg, 7);
        let mut established = vec![];
        for n in 0..100 {
            if let Some(s) = t.insert(entry(n, State::Established), n as u64) {
                established.push((n, s));
            }
        }
        for n in 1000..200_000 {
            let _ = t.insert(entry(n, State::HalfOpen), 1000 + n as u64);
        }
        assert!(t.len() <= t.capacity());
        for (n, _) in &established {
            assert!(
                t.lookup(&key(*n), 300_000).is_some(),
                "established {n} evicted"
            );
        }
        assert!(t.counters().evicted[State::HalfOpen as usize] > 0);
    }
}
