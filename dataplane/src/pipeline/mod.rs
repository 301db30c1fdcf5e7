//! The frame path: parse ▶ match VIP/rule ▶ hash ▶ bucket owner ▶
//! descriptors ▶ verdict, for one local host.
//!
//! # Contract
//!
//! * Sans-IO and deterministic: a [`Dataplane`] judges bytes at a given time
//!   (`now`, nanoseconds of any monotonic clock) against the current
//!   [`ClusterMap`] and its own descriptor table. No syscalls, no clock, no
//!   allocation per frame; bounded work per frame.
//! * Exactly one (README guarantee 1): with every host holding the same
//!   converged map, each frame for a VIP is kept by exactly one host: the one
//!   that tracks its connection, else the owner of its bucket; a single-host
//!   rule's frames by its best live host; a disabled rule's by nobody;
//!   traffic no rule covers by the default host.
//! * Survival (invariant 3): a frame of a connection this host tracks is kept
//!   here even after its bucket moved away. A non-SYN frame the new owner does
//!   not track, in a group another host reports dirty, is left to that host.
//!   A SYN always follows the current map; a tracked entry on a host that no
//!   longer owns the bucket is retired by a new SYN of the same 5-tuple.
//! * Fragments (invariant 5): every fragment of a datagram, first or later,
//!   is judged by the client address alone (ports are absent from later
//!   fragments), under the lowest-port rule for that VIP and protocol, so all
//!   of them land on one host. With Single or Network affinity this is the
//!   same host as the unfragmented traffic of that client; with None
//!   affinity it may differ (NLB's advice stands: no None affinity for UDP).
//! * GRE follows PPTP (invariant 4): keeping a frame of a TCP connection to
//!   port 1723 creates or refreshes a GRE link entry for (client, VIP); GRE
//!   from that client is kept only where such an entry lives. ESP follows
//!   IKE (UDP 500/4500) the same way.
//! * Malformed frames are never errors: they are dropped and counted by reason.
//! * Two paths, one behaviour: [`Dataplane::judge`] reads the common frame
//!   (untagged Ethernet II, option-less IPv4, a whole TCP, UDP, GRE or ESP
//!   datagram, at least 54 bytes) at fixed offsets and judges it on
//!   integers against a compiled form of the map (per-VIP port segments
//!   that carry each rule's owner table); every other frame takes the
//!   general parser ([`Dataplane::judge_general`]). Verdicts, descriptor
//!   state and counters are the same on both, frame by frame: the
//!   property tests in `tests.rs` hold the shortcut to the general path.
//! * One parse per frame: a frame the common-frame reader accepts is judged
//!   through the checked view of its header the reader hands on to every
//!   later step (no check is made twice, and [`parse_frame`] never sees
//!   it); a frame the reader declines after its few checks is parsed by
//!   [`parse_frame`], once.
//! * One count per frame: each frame is counted once, by its verdict, when
//!   the verdict is known ([`Counters::count`]); the judging steps return
//!   verdicts and count nothing of them, and the totals are sums of the
//!   verdict counters.
//! * The batch loop ([`Dataplane::judge_batch`]) inlines only the hot
//!   part of the shortcut (a common UDP or TCP frame to the first VIP
//!   under a multiple-host rule whose verdict needs no descriptor); every
//!   other frame leaves the loop through one call.
//!
//! # Layout
//!
//! The verdict and its counters (`verdict.rs`); the common frame and its
//! fixed-offset reader (`common.rs`); the map compiled for it
//! (`compiled.rs`); the shortcut's judgement of a common frame
//! (`shortcut.rs`); the general path and the descriptor steps both paths
//! share (`general.rs`); the properties that hold the two paths together
//! (`tests.rs`).

use std::net::IpAddr;
use std::sync::Arc;

use crate::bucket::bucket_of;
use crate::descriptor::{DescriptorConfig, DescriptorTable};
use crate::hash::affinity_hash;
use crate::map::ClusterMap;
use crate::model::{FilterMode, HostId};
use crate::packet::parse_frame;

mod common;
mod compiled;
mod general;
mod shortcut;
#[cfg(test)]
mod tests;
mod verdict;

use compiled::FastV4;
pub use verdict::{Control, Counters, DropReason, Verdict, MALFORMED_REASONS};

use crate::wire::tcp::flags::{ACK, FIN, RST, SYN};

/// PPTP's control port.
pub const PPTP_PORT: u16 = 1723;
/// IKE's ports.
pub const IKE_PORTS: [u16; 2] = [500, 4500];

/// The filter of one host (one per poll loop).
#[derive(Debug)]
pub struct Dataplane {
    map: Arc<ClusterMap>,
    table: DescriptorTable,
    counters: Counters,
    /// The map compiled for the common IPv4 frame.
    fast: FastV4,
    /// The (seed, IPv6 network prefix) every tracked entry's bucket was
    /// computed under: while it is the map's, a TCP segment of a bucket
    /// this host does not own, in a group where it tracks nothing foreign,
    /// skips the table probe (see [`DescriptorTable::tracks_foreign`]).
    buckets_under: (u64, u8),
    /// Whether `buckets_under` is the map's (see [`Self::rebind_probe`]).
    skip_probe: bool,
}

impl Dataplane {
    /// A dataplane judging for `map.local`, with a descriptor table sized by
    /// `cfg` and keyed by the secret `seed`.
    pub fn new(map: Arc<ClusterMap>, cfg: DescriptorConfig, seed: u64) -> Self {
        Self {
            fast: FastV4::new(&map),
            buckets_under: (map.seed, map.ipv6_network_prefix),
            skip_probe: true,
            map,
            table: DescriptorTable::new(cfg, seed),
            counters: Counters::default(),
        }
    }

    /// The map in force.
    pub fn map(&self) -> &Arc<ClusterMap> {
        &self.map
    }

    /// Adopts a new map (call between batches). Re-marks tracked entries
    /// whose buckets moved away as foreign: O(table capacity).
    pub fn set_map(&mut self, map: Arc<ClusterMap>) {
        let same_rules = self.map.rules.len() == map.rules.len()
            && self.map.rules.iter().zip(&map.rules).all(|(a, b)| {
                // Weights and priorities change at run time without moving
                // anything between rules; these fields name the rule.
                let (a, b) = (&a.rule, &b.rule);
                (a.vip, a.port_start, a.port_end, a.protocol, a.mode)
                    == (b.vip, b.port_start, b.port_end, b.protocol, b.mode)
            });
        if !same_rules || self.table.is_empty() {
            // Rebinding recomputes every bucket under the new map.
            if !same_rules {
                self.table.rebind_rules(&map);
            }
            self.buckets_under = (map.seed, map.ipv6_network_prefix);
        }
        self.table.remap(&map);
        self.fast = FastV4::new(&map);
        self.map = map;
        self.rebind_probe();
    }

    /// Forgets every tracked connection (the host stopped cluster
    /// operations: NLB's `stop` drops them all).
    pub fn reset_descriptors(&mut self) {
        self.table.clear();
        self.buckets_under = (self.map.seed, self.map.ipv6_network_prefix);
        self.rebind_probe();
    }

    /// Recomputes `skip_probe` after `buckets_under` or the map changed.
    fn rebind_probe(&mut self) {
        self.skip_probe = self.buckets_under == (self.map.seed, self.map.ipv6_network_prefix);
    }

    /// Counters so far.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// The descriptor table.
    pub fn table(&self) -> &DescriptorTable {
        &self.table
    }

    /// Housekeeping between batches: expires up to `budget` entries.
    pub fn tick(&mut self, now: u64, budget: usize) {
        self.table.sweep(now, budget);
    }

    /// Judges a batch: `out[i]` receives the verdict of `frames[i]`.
    /// Verdicts, descriptor state and counters are those of [`Self::judge`]
    /// called on each frame in order.
    ///
    /// Out of line (one call per batch), so that the frame loop is
    /// compiled once, around the shortcut's hot path.
    ///
    /// # Panics
    /// If `out` is shorter than `frames`.
    #[inline(never)]
    pub fn judge_batch(&mut self, frames: &[&[u8]], now: u64, out: &mut [Verdict]) {
        assert!(out.len() >= frames.len(), "verdict slice too short");
        for (f, v) in frames.iter().zip(out.iter_mut()) {
            self.judge_into(f, now, v);
        }
    }

    /// Judges one frame and counts the verdict.
    #[inline]
    pub fn judge(&mut self, frame: &[u8], now: u64) -> Verdict {
        let mut v = Verdict::Pass;
        self.judge_into(frame, now, &mut v);
        v
    }

    /// [`Self::judge`] through the general parser only, without the
    /// common-frame shortcut: the same verdict, state and counters, more
    /// work. The reference the shortcut is tested against, and the
    /// "before" column of `shoal bench pipeline`. Out of line, so that
    /// the general parser does not crowd the common path's registers.
    #[inline(never)]
    pub fn judge_general(&mut self, frame: &[u8], now: u64) -> Verdict {
        let v = match parse_frame(frame) {
            Ok(info) => self.judge_parsed(&info, now),
            Err(m) => Verdict::Drop(DropReason::Malformed(m)),
        };
        self.counters.count(v);
        v
    }

    /// [`Self::judge_batch`] through [`Self::judge_general`].
    ///
    /// # Panics
    /// If `out` is shorter than `frames`.
    #[inline(never)]
    pub fn judge_batch_general(&mut self, frames: &[&[u8]], now: u64, out: &mut [Verdict]) {
        assert!(out.len() >= frames.len(), "verdict slice too short");
        for (f, v) in frames.iter().zip(out.iter_mut()) {
            *v = self.judge_general(f, now);
        }
    }

    /// Which host of the current map would keep a new flow (for `shoal owner`).
    pub fn owner_of(
        map: &ClusterMap,
        proto: u8,
        client: IpAddr,
        client_port: u16,
        vip: IpAddr,
        port: u16,
    ) -> Owner {
        if !map.is_vip(vip) {
            return Owner {
                host: None,
                rule: None,
                bucket: None,
            };
        }
        let Some(r) = map.rule_for(vip, port, proto) else {
            return Owner {
                host: map.default_host,
                rule: None,
                bucket: None,
            };
        };
        let bucket = match map.rules[r].rule.mode {
            FilterMode::Multiple { affinity } => Some(bucket_of(affinity_hash(
                map.seed,
                affinity,
                client,
                client_port,
                map.ipv6_network_prefix,
            ))),
            _ => None,
        };
        Owner {
            host: map.owner(r, bucket.unwrap_or(0)),
            rule: Some(r),
            bucket,
        }
    }
}

/// The answer of [`Dataplane::owner_of`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Owner {
    /// The host that keeps it, if any.
    pub host: Option<HostId>,
    /// The rule that covers it (`None`: the default host's traffic).
    pub rule: Option<usize>,
    /// Its bucket under a multiple-host rule.
    pub bucket: Option<u32>,
}
