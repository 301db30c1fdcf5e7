//! How many ARP, ND and IGMP answers a host sends, per source and in all:
//! a policy with time as an input, no clock and no socket.
//!
//! # What it guarantees
//!
//! [`AnswerLimiter::handle_request`] says whether to answer one request.
//! Over any interval of `t` seconds it allows at most
//! `per_source.burst + per_source.rate × t` answers to one source (while the
//! source keeps its slot, see below) and at most
//! `global.burst + global.rate × t` answers in all, whatever the sources.
//! Work per request is constant (one hash, four slots compared); memory is
//! fixed at construction.
//!
//! # The source table and its overflow policy
//!
//! Sources (the requester's Ethernet source MAC and its IP address) live in
//! a set-associative table of [`SETS`] × [`WAYS`] slots. A source's set is
//! chosen by a hash keyed with a seed the caller picks at random, so a
//! requester cannot aim many sources at one set without knowing it. When a
//! new source finds its set full, the slot heard from least recently is
//! taken over, and the new source starts with a full bucket. A flood from
//! more sources than the table holds therefore defeats the per-source limit
//! (each source looks new), but never the global one: the global bucket is
//! what bounds the answers then, and a source that stays in its slot (a
//! flooder that does not spoof) is held to its own rate.
//!
//! A request refused by its source's bucket takes nothing from the global
//! one, so one noisy source cannot spend the budget of the others.

use std::hash::{Hash, Hasher};
use std::net::IpAddr;

/// Sets in the source table.
pub const SETS: usize = 64;
/// Slots per set.
pub const WAYS: usize = 4;

const NS: u64 = 1_000_000_000;

/// A token bucket's shape: `rate` tokens a second, at most `burst` saved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    /// Tokens added per second (at least 1).
    pub rate: u32,
    /// Tokens a bucket holds at most (at least 1).
    pub burst: u32,
}

impl Rate {
    fn interval(self) -> u64 {
        NS / u64::from(self.rate.max(1))
    }

    fn depth(self) -> u64 {
        self.interval() * u64::from(self.burst.max(1))
    }
}

/// The limits an [`AnswerLimiter`] enforces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AnswerLimits {
    /// Per source.
    pub per_source: Rate,
    /// Over all sources.
    pub global: Rate,
}

impl AnswerLimits {
    /// ARP and ND answers: 5 a second per source (burst 10), 500 a second
    /// in all (burst 500). A host re-asks for an address a few times a
    /// minute at most; a burst covers a neighbour table flushed at once.
    pub const NEIGHBOUR: AnswerLimits = AnswerLimits {
        per_source: Rate { rate: 5, burst: 10 },
        global: Rate {
            rate: 500,
            burst: 500,
        },
    };

    /// IGMP membership reports sent in answer to queries: 2 a second per
    /// querier, 10 a second in all (a querier asks every 125 s by default).
    pub const IGMP: AnswerLimits = AnswerLimits {
        per_source: Rate { rate: 2, burst: 4 },
        global: Rate {
            rate: 10,
            burst: 10,
        },
    };
}

/// Who asked: the frame's Ethernet source MAC and the requester's address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Requester {
    /// Ethernet source MAC.
    pub mac: [u8; 6],
    /// The sender's IP address (ARP sender protocol address, IPv6 source).
    pub ip: IpAddr,
}

/// What [`AnswerLimiter::handle_request`] decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Answer it.
    Answer,
    /// Refused: this source used up its own budget.
    SourceLimited,
    /// Refused: every source together used up the global budget.
    GlobalLimited,
}

/// What an [`AnswerLimiter`] counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LimitCounters {
    /// Requests allowed an answer.
    pub answered: u64,
    /// Requests refused by their source's bucket.
    pub source_limited: u64,
    /// Requests refused by the global bucket.
    pub global_limited: u64,
    /// Sources that took over the slot of another (see the module docs).
    pub evicted: u64,
}

#[derive(Clone, Copy, Debug)]
struct Slot {
    who: Requester,
    /// Nanoseconds of credit; one answer costs `per_source.interval()`.
    credit: u64,
    /// When the credit was last brought up to date.
    last: u64,
}

/// Token buckets per source and in all (see the module docs).
#[derive(Debug)]
pub struct AnswerLimiter {
    limits: AnswerLimits,
    seed: u64,
    slots: Vec<Option<Slot>>,
    global_credit: u64,
    global_last: u64,
    counters: LimitCounters,
}

/// `credit` brought from `last` up to `now`, capped at `depth`.
fn refill(credit: u64, last: u64, now: u64, depth: u64) -> u64 {
    credit.saturating_add(now.saturating_sub(last)).min(depth)
}

impl AnswerLimiter {
    /// A limiter enforcing `limits`, with full buckets at time `now` (ns);
    /// `seed` keys the hash that places sources in the table (pick it at
    /// random).
    pub fn new(limits: AnswerLimits, seed: u64, now: u64) -> Self {
        Self {
            limits,
            seed,
            slots: vec![None; SETS * WAYS],
            global_credit: limits.global.depth(),
            global_last: now,
            counters: LimitCounters::default(),
        }
    }

    /// What it counted so far.
    pub fn counters(&self) -> LimitCounters {
        self.counters
    }

    fn set_of(&self, who: &Requester) -> usize {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.seed.hash(&mut h);
        who.hash(&mut h);
        (h.finish() % SETS as u64) as usize
    }

    /// Whether to answer a request from `who` at time `now` (ns, never
    /// going backwards); counts the decision. Constant work.
    pub fn handle_request(&mut self, who: Requester, now: u64) -> Decision {
        let per = self.limits.per_source;
        let set = self.set_of(&who) * WAYS;
        let ways = &mut self.slots[set..set + WAYS];
        let index = match ways
            .iter()
            .position(|s| s.as_ref().is_some_and(|s| s.who == who))
        {
            Some(i) => i,
            None => {
                // A free slot, else the one heard from least recently.
                let i = ways.iter().position(Option::is_none).unwrap_or_else(|| {
                    (0..WAYS)
                        .min_by_key(|&i| ways[i].map_or(0, |s| s.last))
                        .unwrap_or(0)
                });
                if ways[i].is_some() {
                    self.counters.evicted += 1;
                }
                ways[i] = Some(Slot {
                    who,
                    credit: per.depth(),
                    last: now,
                });
                i
            }
        };
        let slot = ways[index].as_mut().expect("slot just found or filled");
        slot.credit = refill(slot.credit, slot.last, now, per.depth());
        slot.last = now;
        if slot.credit < per.interval() {
            self.counters.source_limited += 1;
            return Decision::SourceLimited;
        }
        let global = self.limits.global;
        self.global_credit = refill(self.global_credit, self.global_last, now, global.depth());
        self.global_last = now;
        if self.global_credit < global.interval() {
            self.counters.global_limited += 1;
            return Decision::GlobalLimited;
        }
        slot.credit -= per.interval();
        self.global_credit -= global.interval();
        self.counters.answered += 1;
        Decision::Answer
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    const MS: u64 = 1_000_000;

    fn who(n: u32) -> Requester {
        let b = n.to_be_bytes();
        Requester {
            mac: [2, 0, b[0], b[1], b[2], b[3]],
            ip: IpAddr::V4(Ipv4Addr::from(0x0a00_0000 | n)),
        }
    }

    fn limits(per: (u32, u32), global: (u32, u32)) -> AnswerLimits {
        AnswerLimits {
            per_source: Rate {
                rate: per.0,
                burst: per.1,
            },
            global: Rate {
                rate: global.0,
                burst: global.1,
            },
        }
    }

    /// Answers allowed to `sources` asking round robin, each `every` ns,
    /// from `start` for `duration` ns.
    fn answered(
        l: &mut AnswerLimiter,
        sources: &[Requester],
        start: u64,
        every: u64,
        duration: u64,
    ) -> usize {
        let mut n = 0;
        let mut t = start;
        while t < start + duration {
            for s in sources {
                n += usize::from(l.handle_request(*s, t) == Decision::Answer);
            }
            t += every;
        }
        n
    }

    #[test]
    fn one_source_gets_its_burst_then_its_rate() {
        let mut l = AnswerLimiter::new(limits((5, 10), (1000, 1000)), 1, 0);
        // 10 s of requests every 1 ms: burst 10 plus 5 a second.
        let n = answered(&mut l, &[who(1)], 0, MS, 10_000 * MS);
        assert!((59..=60).contains(&n), "{n}");
        let c = l.counters();
        assert_eq!(c.answered as usize, n);
        assert_eq!(c.source_limited as usize, 10_000 - n);
        assert_eq!(c.global_limited, 0);
    }

    #[test]
    fn a_flooding_source_does_not_starve_a_quiet_one() {
        let mut l = AnswerLimiter::new(AnswerLimits::NEIGHBOUR, 7, 0);
        let flooder = who(1);
        let quiet = who(2);
        let mut quiet_answered = 0;
        for i in 0..1_000_000u64 {
            let t = i * 10_000; // 100k requests/s for 10 s
            let _ = l.handle_request(flooder, t);
            if i % 100_000 == 0 {
                // The quiet source asks once a second.
                quiet_answered += usize::from(l.handle_request(quiet, t) == Decision::Answer);
            }
        }
        assert_eq!(quiet_answered, 10);
        let c = l.counters();
        assert!(c.answered <= 10 + 50 + 10 + 1, "{c:?}");
        assert_eq!(
            c.global_limited, 0,
            "the flooder alone never reaches the global cap"
        );
    }

    #[test]
    fn the_global_cap_holds_against_spoofed_sources() {
        let mut l = AnswerLimiter::new(limits((5, 10), (100, 100)), 3, 0);
        // 100,000 distinct sources, one request each, over 10 s: every one
        // looks new, the global bucket bounds the answers.
        let mut n = 0u64;
        for i in 0..100_000u32 {
            let t = u64::from(i) * 100_000;
            n += u64::from(l.handle_request(who(i), t) == Decision::Answer);
        }
        assert!(n <= 100 + 100 * 10 + 1, "{n}");
        assert!(n >= 1000, "{n}");
        let c = l.counters();
        assert!(c.evicted >= 100_000 - (SETS * WAYS) as u64, "{c:?}");
        assert_eq!(c.answered + c.global_limited + c.source_limited, 100_000);
    }

    #[test]
    fn a_source_refused_by_its_bucket_spends_nothing_of_the_global_one() {
        let mut l = AnswerLimiter::new(limits((1, 1), (2, 2)), 5, 0);
        assert_eq!(l.handle_request(who(1), 0), Decision::Answer);
        for _ in 0..100 {
            assert_eq!(l.handle_request(who(1), 0), Decision::SourceLimited);
        }
        assert_eq!(l.handle_request(who(2), 0), Decision::Answer);
        assert_eq!(l.handle_request(who(3), 0), Decision::GlobalLimited);
        // Half a second later the global bucket has one token again.
        assert_eq!(l.handle_request(who(3), 500 * MS), Decision::Answer);
    }

    #[test]
    fn the_table_keeps_the_sources_heard_from_recently() {
        let mut l = AnswerLimiter::new(limits((1, 1), (1_000_000, 1_000_000)), 9, 0);
        let steady = who(0);
        assert_eq!(l.handle_request(steady, 0), Decision::Answer);
        // Many other sources pass through, while `steady` keeps asking
        // (so it is never the least recently heard in its set).
        for i in 1..10_000u32 {
            let t = u64::from(i) * 1000;
            let _ = l.handle_request(who(i), t);
            if i % 3 == 0 {
                // Refused (its bucket is empty) but heard: its slot stays.
                assert_eq!(l.handle_request(steady, t), Decision::SourceLimited, "{i}");
            }
        }
        assert!(l.slots.iter().flatten().count() <= SETS * WAYS);
    }
}
