//! Picking a back-end server for each request of a `route = "clb"`
//! service: Component Load Balancing's sorted round robin (seed 002,
//! "Component Load Balancing" through "The CLB routing process") and three
//! policies that do not herd.
//!
//! Owns: [`Policy`], [`Balancer`] (one per proxy worker and service) and
//! its peak-EWMA latency estimate. The engine hands in everything that
//! varies: the response-time table the control plane sorted
//! ([`Balancer::set_table`]), which servers are up ([`Balancer::set_up`]),
//! when a request starts and ends ([`Balancer::start`],
//! [`Balancer::finish`]) and the time (`now_ns`, any monotonic origin). A
//! pick ([`Balancer::pick`]) is a pure function of that state and of a
//! seeded random source; it never allocates and does work bounded by the
//! number of servers ([`MAX_BACKENDS`]).
//!
//! # Policies
//!
//! - [`Policy::Clb`]: Application Center's rule. The table holds the
//!   servers that answered the latest poll, fastest first; requests go down
//!   the table in order, round robin from the fastest, and the walk
//!   restarts at the top whenever a new table arrives. Weights are not
//!   part of CLB and are ignored. Every front end that polls at the same
//!   moment sees the same "fastest" server and sends its next requests
//!   there: that is the herding this policy keeps for fidelity.
//! - [`Policy::RoundRobin`]: smooth weighted round robin over the servers
//!   that are up (each server's share is its weight; picks of a heavier
//!   server are spread, not bunched).
//! - [`Policy::LeastRequest`]: two random choices (weighted by `weight`),
//!   the one with fewer pending requests per unit of weight wins.
//! - [`Policy::PeakEwma`] (the default): the lowest cost wins, where
//!   cost = peak-EWMA of observed latency × (pending + 1) ÷ weight, among
//!   every server when at most [`COMPARE_ALL_UP_TO`] are eligible and
//!   among two random choices otherwise (see "Two choices, or all"). The
//!   estimate jumps up to any slower observation at once (the "peak") and
//!   decays toward faster ones, and toward zero while idle, with time
//!   constant `decay` — the design of tower's `load::PeakEwma`.
//!
//! # Two choices, or all
//!
//! Two random choices keep front ends with similar views from all
//! choosing the same server: the cheapest server can get at most about
//! twice its share. Their price is that the cheapest server is one of the
//! two in only 2/n of the picks: with four servers, half the requests go
//! to one of the other three however much cheaper it is. That is what
//! matters after an overload: the server that just recovered (or just
//! thawed) is idle while the others hold queues, and every request sent
//! to a queue waits behind it. With at most [`COMPARE_ALL_UP_TO`] servers
//! `peak_ewma` therefore compares them all (ties go to a random one). The
//! herding this allows is bounded twice: each balancer's pending counts
//! and estimates are its own, so one balancer moves on after a request or
//! two, and a server of four can get at most four times its share (the
//! herding simulation of `shoal bench clb` shows no herd). With more
//! servers, two random choices.
//!
//! # A server that stalls
//!
//! Completions alone teach the estimate nothing while a server is stalled
//! (a garbage-collection pause, a full disk): its pending requests never
//! finish, so its estimate stays at its last fast value (and even decays
//! toward zero) while requests pile up behind the stall; only the
//! (pending + 1) factor pushes back, one request at a time. Two rules fix
//! both ends of a stall:
//!
//! - *The stall counts while it lasts.* While a server has requests
//!   pending, the time since it last answered anything (or since its
//!   first pending request left, if later) is a lower bound on the
//!   latency of its oldest pending request, so the latency used for its
//!   cost is at least that: a server that has not answered for 50 ms
//!   while its peers answer in 5 ms costs ten times as much, at once,
//!   without waiting for a completion.
//! - *A fresh probe retires a stale peak.* The requests that were stuck
//!   finish together when the stall ends and push the estimate to the
//!   stall's length; a server priced at seconds then gets few requests,
//!   and faster observations move the estimate only with time constant
//!   `decay` (about five constants to fall from 2 s to 10 ms: with the
//!   default 10 s, the server is lost for the better part of a minute). A
//!   probe that left after the peak (the latest observation that raised
//!   the estimate) and answered faster is newer evidence of the server's
//!   current latency (queue included, as the probe waits in it):
//!   [`Balancer::observe_probe`] lowers the estimate to the slower of the
//!   probe and the latest request sent after the peak and answered (a
//!   probe cheaper than real requests does not make the server look
//!   cheaper than its requests are; the other requests of the stall,
//!   sent before the peak finished, are no such evidence: they waited in
//!   the same stall). Answers that arrive while the probe is out
//!   do not make it older evidence: a server back from a stall answers
//!   requests at once. A server still stalled does not answer its probe,
//!   so nothing is forgiven early, and if it stalls again the first rule
//!   catches it within a few of its peers' response times.
//!
//! # A server too busy for its probe
//!
//! A probe waits in the server's queue like any request, so a saturated
//! server's probe times out and the table drops the server, though it
//! answers every request it gets; when the whole tier is saturated (one
//! server stalled, the others taking its share) every probe fails, and an
//! empty table lets every server count again, the stalled one included,
//! idle and therefore cheapest. The policies that weigh load
//! (`least_request`, `peak_ewma`) have better evidence than the probe: a
//! server that answered a request after its failed probe left is alive,
//! and its cost already says how busy it is. Such a server stays a choice
//! ([`Balancer::probe_failed`]) until a request to it fails or a later
//! probe fails with no answer after it; one that has answered nothing
//! since (stalled, dead) stays out. `clb` and `round_robin` keep the
//! table's word.
//!
//! Pending counts and latency estimates belong to one balancer (one
//! worker); the table comes from the control plane's probes.
#![forbid(unsafe_code)]

/// Most back-end servers of one service (exclusion sets are a `u64`).
pub const MAX_BACKENDS: usize = 64;

/// Up to this many servers to choose from, `peak_ewma` compares them all
/// instead of two random ones (see "Two choices, or all").
pub const COMPARE_ALL_UP_TO: usize = 4;

/// How a back-end server is chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Policy {
    /// Sorted response-time table, round robin from the fastest.
    Clb,
    /// Smooth weighted round robin.
    RoundRobin,
    /// Two random choices, fewer pending requests wins.
    LeastRequest,
    /// Lower peak-EWMA latency × (pending + 1) wins: of every server in a
    /// small table, of two random choices otherwise.
    #[default]
    PeakEwma,
}

impl Policy {
    /// The configuration names.
    pub const NAMES: &'static [(&'static str, Policy)] = &[
        ("clb", Policy::Clb),
        ("round_robin", Policy::RoundRobin),
        ("least_request", Policy::LeastRequest),
        ("peak_ewma", Policy::PeakEwma),
    ];

    /// The configuration name.
    pub fn name(self) -> &'static str {
        match self {
            Policy::Clb => "clb",
            Policy::RoundRobin => "round_robin",
            Policy::LeastRequest => "least_request",
            Policy::PeakEwma => "peak_ewma",
        }
    }
}

/// A small seeded random source (xorshift64*): enough to spread two
/// random choices, reproducible from its seed in tests.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A source from `seed` (0 is replaced by a fixed odd constant).
    pub fn new(seed: u64) -> Self {
        Rng(if seed == 0 {
            0x9E37_79B9_7F4A_7C15
        } else {
            seed
        })
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `0..n` (`n` > 0), by multiply-shift.
    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }
}

/// Peak-EWMA of one server's latency, in nanoseconds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PeakEwma {
    estimate_ns: f64,
    at_ns: u64,
    /// When the estimate last jumped up to an observation (or a probe
    /// lowered it).
    peak_at_ns: u64,
    /// The latest observation of a request sent since then (0: none).
    last_ns: u64,
}

impl PeakEwma {
    /// An estimate that starts at `initial_ns` at `now_ns`.
    pub fn new(initial_ns: u64, now_ns: u64) -> Self {
        PeakEwma {
            estimate_ns: initial_ns as f64,
            at_ns: now_ns,
            peak_at_ns: now_ns,
            last_ns: 0,
        }
    }

    /// Folds in one observation: a slower one replaces the estimate; a
    /// faster one is weighted by how much time passed since the last
    /// update (`1 - e^(-elapsed/decay)`).
    pub fn observe(&mut self, latency_ns: u64, now_ns: u64, decay_ns: u64) {
        let latency = latency_ns as f64;
        if latency > self.estimate_ns {
            self.estimate_ns = latency;
            self.peak_at_ns = self.peak_at_ns.max(now_ns);
            self.last_ns = 0;
        } else {
            // Only a request sent after the peak is evidence of the
            // server's latency since: one sent before it waited in the
            // same stall as the peak (see "A server that stalls").
            if now_ns.saturating_sub(latency_ns) >= self.peak_at_ns {
                self.last_ns = latency_ns;
            }
            let elapsed = now_ns.saturating_sub(self.at_ns) as f64;
            let keep = (-elapsed / decay_ns.max(1) as f64).exp();
            self.estimate_ns = self.estimate_ns * keep + latency * (1.0 - keep);
        }
        self.at_ns = self.at_ns.max(now_ns);
    }

    /// The estimate at `now_ns`, decayed toward zero for the time since
    /// the last observation (an idle server is tried again), without
    /// changing the state.
    pub fn at(&self, now_ns: u64, decay_ns: u64) -> f64 {
        let elapsed = now_ns.saturating_sub(self.at_ns) as f64;
        self.estimate_ns * (-elapsed / decay_ns.max(1) as f64).exp()
    }

    /// Folds in a probe sent at `sent_ns` and answered after
    /// `response_ns`: when it left after the latest peak (the latest
    /// observation that raised the estimate, or the latest probe that
    /// lowered it), the estimate (decayed to the answer's time) falls to
    /// the slower of the probe and the latest observation since that
    /// peak, if that is lower; otherwise nothing changes (older evidence, or no faster).
    /// Returns whether it lowered the estimate.
    pub fn observe_probe(&mut self, sent_ns: u64, response_ns: u64, decay_ns: u64) -> bool {
        let answered_ns = sent_ns.saturating_add(response_ns);
        let floor = response_ns.max(self.last_ns);
        if sent_ns < self.peak_at_ns || floor as f64 >= self.at(answered_ns, decay_ns) {
            return false;
        }
        self.estimate_ns = floor as f64;
        self.at_ns = self.at_ns.max(answered_ns);
        self.peak_at_ns = answered_ns;
        self.last_ns = 0;
        true
    }
}

/// One back-end server as a balancer sees it.
#[derive(Clone, Debug)]
struct Server {
    weight: u32,
    up: bool,
    pending: u32,
    /// While `pending` > 0: the latest of the last answer (or failure) and
    /// the moment `pending` left 0; the oldest pending request has waited
    /// at least since then.
    quiet_since_ns: u64,
    /// When the latest answer came, unless a request failed after it.
    answered_ns: Option<u64>,
    /// When the latest failed probe left.
    probe_failed_ns: Option<u64>,
    /// When the latest answered probe left.
    probe_answered_ns: Option<u64>,
    ewma: PeakEwma,
    /// Smooth weighted round robin's running weight.
    current: i64,
}

/// What a balancer is built with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BalancerConfig {
    /// The policy.
    pub policy: Policy,
    /// Peak-EWMA decay time constant.
    pub decay_ns: u64,
    /// The latency a server is assumed to have before its first answer.
    pub initial_latency_ns: u64,
}

impl Default for BalancerConfig {
    fn default() -> Self {
        BalancerConfig {
            policy: Policy::PeakEwma,
            decay_ns: 10_000_000_000,
            initial_latency_ns: 1_000_000,
        }
    }
}

/// One worker's picker over one service's back-end servers.
///
/// Every server starts up; the CLB table starts as every server in
/// configuration order until the first [`Balancer::set_table`].
#[derive(Clone, Debug)]
pub struct Balancer {
    config: BalancerConfig,
    servers: Vec<Server>,
    /// CLB's table: server indices, fastest first.
    table: Vec<usize>,
    /// Next table position (CLB).
    cursor: usize,
    rng: Rng,
    /// Set during a pick that found no server up: every server counts.
    panic: bool,
}

impl Balancer {
    /// A balancer over servers with `weights` (at most [`MAX_BACKENDS`]
    /// are kept; a weight of 0 is taken as 1), seeded with `seed`.
    pub fn new(config: BalancerConfig, weights: &[u32], seed: u64, now_ns: u64) -> Self {
        let servers: Vec<Server> = weights
            .iter()
            .take(MAX_BACKENDS)
            .map(|w| Server {
                weight: (*w).max(1),
                up: true,
                pending: 0,
                quiet_since_ns: now_ns,
                answered_ns: None,
                probe_failed_ns: None,
                probe_answered_ns: None,
                ewma: PeakEwma::new(config.initial_latency_ns, now_ns),
                current: 0,
            })
            .collect();
        let mut table = Vec::with_capacity(servers.len());
        table.extend(0..servers.len());
        Balancer {
            config,
            servers,
            table,
            cursor: 0,
            rng: Rng::new(seed),
            panic: false,
        }
    }

    /// The policy.
    pub fn policy(&self) -> Policy {
        self.config.policy
    }

    /// Number of servers.
    pub fn len(&self) -> usize {
        self.servers.len()
    }

    /// Whether there are no servers.
    pub fn is_empty(&self) -> bool {
        self.servers.is_empty()
    }

    /// Replaces CLB's table with `order` (server indices, fastest first;
    /// unknown and repeated indices are skipped) and restarts the walk at
    /// its top. Does not allocate.
    pub fn set_table(&mut self, order: &[usize]) {
        self.table.clear();
        for &i in order {
            if i < self.servers.len() && !self.table.contains(&i) {
                self.table.push(i);
            }
        }
        self.cursor = 0;
    }

    /// CLB's table as last set.
    pub fn table(&self) -> &[usize] {
        &self.table
    }

    /// Marks server `i` up or down (ignored when out of range).
    pub fn set_up(&mut self, i: usize, up: bool) {
        if let Some(s) = self.servers.get_mut(i) {
            s.up = up;
        }
    }

    /// Whether server `i` is up.
    pub fn is_up(&self, i: usize) -> bool {
        self.servers.get(i).is_some_and(|s| s.up)
    }

    /// Requests sent to server `i` and not yet finished.
    pub fn pending(&self, i: usize) -> u32 {
        self.servers.get(i).map_or(0, |s| s.pending)
    }

    /// Server `i`'s latency estimate at `now_ns`, in nanoseconds: the
    /// peak-EWMA, and at least the time its pending requests have gone
    /// without an answer (see "A server that stalls").
    pub fn latency_ns(&self, i: usize, now_ns: u64) -> f64 {
        self.servers
            .get(i)
            .map_or(0.0, |s| self.estimate(s, now_ns))
    }

    fn estimate(&self, s: &Server, now_ns: u64) -> f64 {
        let ewma = s.ewma.at(now_ns, self.config.decay_ns);
        if s.pending == 0 {
            return ewma;
        }
        ewma.max(now_ns.saturating_sub(s.quiet_since_ns) as f64)
    }

    /// A request goes to server `i` at `now_ns`.
    pub fn start(&mut self, i: usize, now_ns: u64) {
        if let Some(s) = self.servers.get_mut(i) {
            if s.pending == 0 {
                s.quiet_since_ns = now_ns;
            }
            s.pending = s.pending.saturating_add(1);
        }
    }

    /// A request to server `i` ended after `latency_ns`; `observed` says
    /// whether the latency is the server's (an answer) rather than a
    /// failure that says nothing about its speed.
    pub fn finish(&mut self, i: usize, latency_ns: u64, observed: bool, now_ns: u64) {
        let decay = self.config.decay_ns;
        if let Some(s) = self.servers.get_mut(i) {
            s.pending = s.pending.saturating_sub(1);
            s.quiet_since_ns = s.quiet_since_ns.max(now_ns);
            if observed {
                s.ewma.observe(latency_ns, now_ns, decay);
                s.answered_ns = Some(s.answered_ns.map_or(now_ns, |a| a.max(now_ns)));
            } else {
                s.answered_ns = None;
            }
        }
    }

    /// Server `i`'s probe, sent at `sent_ns`, answered after
    /// `response_ns`: retires a stale peak ([`PeakEwma::observe_probe`]).
    /// Returns whether the estimate changed.
    pub fn observe_probe(&mut self, i: usize, sent_ns: u64, response_ns: u64) -> bool {
        let decay = self.config.decay_ns;
        self.servers.get_mut(i).is_some_and(|s| {
            s.probe_answered_ns = Some(s.probe_answered_ns.map_or(sent_ns, |a| a.max(sent_ns)));
            s.ewma.observe_probe(sent_ns, response_ns, decay)
        })
    }

    /// Server `i`'s probe sent at `sent_ns` failed (no answer within its
    /// timeout, or an error). Under the policies that weigh load, a server
    /// that has answered a request since that probe left still counts as
    /// up while the table leaves it out (see "A server too busy for its
    /// probe"). Idempotent; ignored when out of range.
    pub fn probe_failed(&mut self, i: usize, sent_ns: u64) {
        if let Some(s) = self.servers.get_mut(i) {
            s.probe_failed_ns = Some(s.probe_failed_ns.map_or(sent_ns, |f| f.max(sent_ns)));
        }
    }

    /// Whether server `i`'s latest probe failed and it has answered a
    /// request since that probe left, under a policy that weighs load.
    fn answering(&self, i: usize) -> bool {
        let s = &self.servers[i];
        matches!(self.config.policy, Policy::LeastRequest | Policy::PeakEwma)
            && s.probe_failed_ns.is_some_and(|p| {
                s.probe_answered_ns.is_none_or(|a| p > a) && s.answered_ns.is_some_and(|a| a >= p)
            })
    }

    /// The server for the next request, skipping those down and those in
    /// `exclude` (bit `i` for server `i`: servers already tried); `None`
    /// when none is left. Bounded by the number of servers; no allocation.
    ///
    /// When no server outside `exclude` is up (for `clb`: none is in the
    /// table), every server outside `exclude` counts as up for this pick,
    /// and `clb` goes round robin over them: a table that emptied under
    /// load says more about probes timing out in queues than about the
    /// servers, and refusing everything would turn a slow tier into a
    /// dead one (Envoy's panic threshold at 0%).
    pub fn pick(&mut self, now_ns: u64, exclude: u64) -> Option<usize> {
        let open = |i: usize| exclude & (1u64 << i) == 0;
        self.panic = match self.config.policy {
            Policy::Clb => !self.table.iter().any(|&i| self.servers[i].up && open(i)),
            _ => !(0..self.servers.len())
                .any(|i| (self.servers[i].up || self.answering(i)) && open(i)),
        };
        let pick = match (self.config.policy, self.panic) {
            (Policy::Clb, false) => self.pick_clb(exclude),
            (Policy::Clb, true) | (Policy::RoundRobin, _) => self.pick_round_robin(exclude),
            (Policy::LeastRequest, _) => self.pick_two(now_ns, exclude),
            (Policy::PeakEwma, _) => {
                let eligible = (0..self.servers.len())
                    .filter(|&i| self.eligible(i, exclude))
                    .count();
                if eligible <= COMPARE_ALL_UP_TO {
                    self.pick_cheapest(now_ns, exclude)
                } else {
                    self.pick_two(now_ns, exclude)
                }
            }
        };
        self.panic = false;
        pick
    }

    fn eligible(&self, i: usize, exclude: u64) -> bool {
        (self.panic || self.servers[i].up || self.answering(i)) && exclude & (1u64 << i) == 0
    }

    fn pick_clb(&mut self, exclude: u64) -> Option<usize> {
        let n = self.table.len();
        for step in 0..n {
            let pos = (self.cursor + step) % n;
            let i = self.table[pos];
            if self.eligible(i, exclude) {
                self.cursor = (pos + 1) % n;
                return Some(i);
            }
        }
        None
    }

    /// Smooth weighted round robin: every eligible server gains its weight,
    /// the largest running weight wins and pays the total back.
    fn pick_round_robin(&mut self, exclude: u64) -> Option<usize> {
        let mut total = 0i64;
        let mut best: Option<usize> = None;
        for i in 0..self.servers.len() {
            if !self.eligible(i, exclude) {
                continue;
            }
            let s = &mut self.servers[i];
            s.current += i64::from(s.weight);
            total += i64::from(s.weight);
            let current = s.current;
            if best.is_none_or(|b| current > self.servers[b].current) {
                best = Some(i);
            }
        }
        let b = best?;
        self.servers[b].current -= total;
        Some(b)
    }

    /// A random eligible server, chosen in proportion to weight, other
    /// than `not`.
    fn weighted(&mut self, exclude: u64, not: Option<usize>) -> Option<usize> {
        let total: u64 = (0..self.servers.len())
            .filter(|&i| self.eligible(i, exclude) && Some(i) != not)
            .map(|i| u64::from(self.servers[i].weight))
            .sum();
        if total == 0 {
            return None;
        }
        let mut r = self.rng.below(total);
        for i in 0..self.servers.len() {
            if !self.eligible(i, exclude) || Some(i) == not {
                continue;
            }
            let w = u64::from(self.servers[i].weight);
            if r < w {
                return Some(i);
            }
            r -= w;
        }
        None
    }

    fn cost(&self, i: usize, now_ns: u64) -> f64 {
        let s = &self.servers[i];
        let load = f64::from(s.pending) + 1.0;
        let cost = match self.config.policy {
            Policy::PeakEwma => self.estimate(s, now_ns) * load,
            _ => load,
        };
        cost / f64::from(s.weight)
    }

    /// The eligible server of lowest cost; ties go to a random one of them.
    fn pick_cheapest(&mut self, now_ns: u64, exclude: u64) -> Option<usize> {
        let mut best: Option<(f64, u64, usize)> = None;
        for i in 0..self.servers.len() {
            if !self.eligible(i, exclude) {
                continue;
            }
            let cost = self.cost(i, now_ns);
            let draw = self.rng.next_u64();
            if best.is_none_or(|(c, d, _)| cost < c || (cost == c && draw < d)) {
                best = Some((cost, draw, i));
            }
        }
        best.map(|(_, _, i)| i)
    }

    fn pick_two(&mut self, now_ns: u64, exclude: u64) -> Option<usize> {
        let a = self.weighted(exclude, None)?;
        let Some(b) = self.weighted(exclude, Some(a)) else {
            return Some(a);
        };
        if self.cost(b, now_ns) < self.cost(a, now_ns) {
            Some(b)
        } else {
            Some(a)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MS: u64 = 1_000_000;

    fn balancer(policy: Policy, weights: &[u32]) -> Balancer {
        Balancer::new(
            BalancerConfig {
                policy,
                decay_ns: 1_000 * MS,
                initial_latency_ns: MS,
            },
            weights,
            7,
            0,
        )
    }

    #[test]
    fn clb_walks_the_table_from_the_fastest_and_restarts_on_a_new_table() {
        let mut b = balancer(Policy::Clb, &[1, 1, 1]);
        // Seed 002's example: S3 fastest, then S1, then S2.
        b.set_table(&[2, 0, 1]);
        let picks: Vec<_> = (0..5).map(|_| b.pick(0, 0).unwrap()).collect();
        assert_eq!(picks, [2, 0, 1, 2, 0]);
        b.set_table(&[1, 2]);
        assert_eq!(b.pick(0, 0), Some(1));
        assert_eq!(b.pick(0, 0), Some(2));
        assert_eq!(b.pick(0, 0), Some(1));
    }

    #[test]
    fn clb_skips_down_and_tried_servers_and_ignores_bad_indices() {
        let mut b = balancer(Policy::Clb, &[1, 1, 1]);
        b.set_table(&[2, 9, 2, 0, 1]);
        assert_eq!(b.table(), &[2, 0, 1]);
        b.set_up(2, false);
        assert_eq!(b.pick(0, 0), Some(0));
        assert_eq!(b.pick(0, 1 << 1), Some(0));
        // Nothing in the table: every server not tried, round robin.
        b.set_table(&[]);
        let mut seen = 0u64;
        for _ in 0..3 {
            seen |= 1 << b.pick(0, 1 << 1).unwrap();
        }
        assert_eq!(seen, 0b101);
        assert_eq!(b.pick(0, 0b111), None);
    }

    #[test]
    fn with_every_server_down_each_policy_still_picks() {
        for (_, policy) in Policy::NAMES {
            let mut b = balancer(*policy, &[1, 1]);
            b.set_up(0, false);
            b.set_up(1, false);
            assert!(b.pick(0, 0).is_some(), "{policy:?}");
            assert_eq!(b.pick(0, 0b01), Some(1), "{policy:?}");
            assert_eq!(b.pick(0, 0b11), None, "{policy:?}");
        }
    }

    #[test]
    fn round_robin_shares_follow_weights_and_spread() {
        let mut b = balancer(Policy::RoundRobin, &[5, 1, 1]);
        let picks: Vec<_> = (0..7).map(|_| b.pick(0, 0).unwrap()).collect();
        assert_eq!(picks.iter().filter(|&&i| i == 0).count(), 5);
        assert_eq!(picks.iter().filter(|&&i| i == 1).count(), 1);
        // Smooth: the heavy server never takes all of the first five.
        assert!(picks[..5].iter().any(|&i| i != 0), "{picks:?}");
    }

    #[test]
    fn least_request_avoids_a_server_with_many_pending() {
        let mut b = balancer(Policy::LeastRequest, &[1, 1, 1, 1]);
        for _ in 0..50 {
            b.start(0, 0);
        }
        let to_zero = (0..1000).filter(|_| b.pick(0, 0) == Some(0)).count();
        assert_eq!(to_zero, 0);
    }

    #[test]
    fn peak_ewma_jumps_to_a_slow_answer_and_decays_back() {
        let mut e = PeakEwma::new(MS, 0);
        e.observe(100 * MS, 10 * MS, 1_000 * MS);
        assert_eq!(e.at(10 * MS, 1_000 * MS), (100 * MS) as f64);
        // A fast answer right after moves the estimate only a little.
        e.observe(MS, 11 * MS, 1_000 * MS);
        assert!(e.at(11 * MS, 1_000 * MS) > (98 * MS) as f64);
        // Many fast answers over seconds bring it down.
        for k in 1..=100 {
            e.observe(MS, 11 * MS + k * 50 * MS, 1_000 * MS);
        }
        assert!(e.at(5_011 * MS, 1_000 * MS) < (3 * MS) as f64);
    }

    #[test]
    fn peak_ewma_sends_less_to_a_slow_server() {
        let mut b = balancer(Policy::PeakEwma, &[1, 1, 1, 1]);
        let mut counts = [0u32; 4];
        let mut now = 0;
        for _ in 0..4000 {
            now += MS / 10;
            let i = b.pick(now, 0).unwrap();
            counts[i] += 1;
            b.start(i, now);
            let latency = if i == 3 { 5 * MS } else { MS };
            b.finish(i, latency, true, now);
        }
        assert!(counts[3] * 4 < counts[0], "{counts:?}");
    }

    /// Servers 0 to 2 answered in 300 ms, server 3 in 5 ms, none has a
    /// request pending: with four servers every pick is server 3 (two
    /// random choices would leave it out of half the pairs); with eight,
    /// two random choices still spread the picks.
    #[test]
    fn peak_ewma_compares_every_server_of_a_small_table() {
        for (n, all) in [(4usize, true), (8, false)] {
            let mut b = balancer(Policy::PeakEwma, &vec![1; n]);
            for i in 0..n {
                b.start(i, 0);
                let latency = if i == 3 { 5 * MS } else { 300 * MS };
                b.finish(i, latency, true, latency);
            }
            let now = 400 * MS;
            let to_three = (0..1000).filter(|_| b.pick(now, 0) == Some(3)).count();
            if all {
                assert_eq!(to_three, 1000, "{n} servers");
            } else {
                assert!((100..500).contains(&to_three), "{n} servers: {to_three}");
            }
        }
    }

    /// Every probe of the last round failed: servers 0 to 2 are saturated
    /// (their probes waited behind requests past the timeout) but answered
    /// requests after those probes left; server 3 is frozen and has
    /// answered nothing since. Out of the table all four, yet the policies
    /// that weigh load keep choosing among 0 to 2 and never pick 3 (before,
    /// an empty table let every server count, the idle frozen one the
    /// cheapest of all). `round_robin` and `clb` keep the table's word.
    #[test]
    fn a_server_too_busy_for_its_probe_stays_a_choice_and_a_frozen_one_does_not() {
        for policy in [Policy::PeakEwma, Policy::LeastRequest, Policy::RoundRobin] {
            let mut b = balancer(policy, &[1, 1, 1, 1]);
            for i in 0..4 {
                b.start(i, 0);
                b.finish(i, 5 * MS, true, 5 * MS);
                b.observe_probe(i, 0, MS);
            }
            for i in 0..4 {
                b.probe_failed(i, 100 * MS);
                b.set_up(i, false);
            }
            for i in 0..3 {
                b.start(i, 90 * MS);
                b.finish(i, 60 * MS, true, 150 * MS);
            }
            // An older answered probe, fed again, changes nothing.
            b.observe_probe(0, 0, MS);
            let now = 160 * MS;
            let mut counts = [0u32; 4];
            for _ in 0..1000 {
                counts[b.pick(now, 0).unwrap()] += 1;
            }
            if policy == Policy::RoundRobin {
                assert!(counts[3] > 0, "{policy:?} {counts:?}");
                continue;
            }
            assert_eq!(counts[3], 0, "{policy:?} {counts:?}");
            assert!(counts[..3].iter().all(|&c| c > 0), "{policy:?} {counts:?}");
            // A failed request since its answer: not a choice any more.
            b.start(0, now);
            b.finish(0, 0, false, now);
            assert!((0..1000).all(|_| b.pick(now, 0) != Some(0)), "{policy:?}");
            // A probe that left after the failed one and answered: the
            // table decides again.
            b.observe_probe(1, 120 * MS, MS);
            assert!((0..1000).all(|_| b.pick(now, 0) != Some(1)), "{policy:?}");
        }
    }

    #[test]
    fn equal_servers_share_the_picks() {
        let mut b = balancer(Policy::PeakEwma, &[1, 1, 1, 1]);
        let mut counts = [0u32; 4];
        for _ in 0..4000 {
            counts[b.pick(0, 0).unwrap()] += 1;
        }
        assert!(counts.iter().all(|&c| c > 700), "{counts:?}");
    }

    #[test]
    fn pending_is_never_negative_and_bad_indices_are_ignored() {
        let mut b = balancer(Policy::LeastRequest, &[1, 1]);
        b.finish(0, MS, true, 0);
        b.finish(7, MS, true, 0);
        b.start(9, 0);
        b.set_up(9, false);
        assert_eq!(b.pending(0), 0);
        assert_eq!(b.pending(9), 0);
        assert!(!b.is_up(9));
    }

    /// Servers 0..3 answer in 5 ms and have two requests each in flight
    /// that left just now; server 3 has one that left 100 ms ago and no
    /// answer since. By (pending + 1) alone server 3 is the cheapest; its
    /// stall makes it the dearest.
    #[test]
    fn a_stalled_server_is_dear_before_any_answer_comes() {
        let mut b = balancer(Policy::PeakEwma, &[1, 1, 1, 1]);
        for i in 0..4 {
            b.start(i, 0);
            b.finish(i, 5 * MS, true, 5 * MS);
        }
        b.start(3, 10 * MS);
        let now = 110 * MS;
        for i in 0..3 {
            b.start(i, now);
            b.start(i, now);
        }
        assert!(b.latency_ns(3, now) >= (100 * MS) as f64);
        assert!(b.latency_ns(0, now) < (6 * MS) as f64);
        let to_three = (0..1000).filter(|_| b.pick(now, 0) == Some(3)).count();
        assert_eq!(to_three, 0);
        // Once it answers, the stall no longer counts beyond its latency.
        b.finish(3, 100 * MS, true, now);
        assert!(b.latency_ns(3, now) <= (100 * MS) as f64 + 1.0);
    }

    #[test]
    fn a_fresh_faster_probe_retires_a_stale_peak_and_nothing_else_does() {
        let mut b = balancer(Policy::PeakEwma, &[1, 1]);
        // Requests stuck in a 2 s stall all finish at 3 s.
        b.start(1, 1_000 * MS);
        b.finish(1, 2_000 * MS, true, 3_000 * MS);
        assert_eq!(b.latency_ns(1, 3_000 * MS), (2_000 * MS) as f64);
        // A probe that left before that answer is older evidence.
        assert!(!b.observe_probe(1, 2_990 * MS, 5 * MS));
        // A newer probe that is slower than the estimate changes nothing.
        assert!(!b.observe_probe(1, 3_100 * MS, 2_500 * MS));
        assert!(b.latency_ns(1, 3_100 * MS) > (1_000 * MS) as f64);
        // A newer, faster one replaces the estimate.
        assert!(b.observe_probe(1, 3_100 * MS, 5 * MS));
        assert_eq!(b.latency_ns(1, 3_105 * MS), (5 * MS) as f64);
        assert!(!b.observe_probe(9, 3_200 * MS, MS));
    }

    /// A server back from a stall takes requests at once (it answers), so
    /// an answer usually lands between a probe's departure and its answer:
    /// the probe is still newer than the stall's peak, and brings the
    /// estimate down to the slower of itself and the latest answer (before,
    /// such a probe counted as older evidence and the 2 s peak stayed,
    /// decaying over `decay`).
    #[test]
    fn a_probe_newer_than_the_peak_retires_it_though_requests_answered_since() {
        let mut b = balancer(Policy::PeakEwma, &[1, 1]);
        b.start(1, 1_000 * MS);
        b.finish(1, 2_000 * MS, true, 3_000 * MS);
        for (sent, latency) in [(3_040, 10), (3_068, 9), (3_092, 12)] {
            b.start(1, sent * MS);
            b.finish(1, latency * MS, true, (sent + latency) * MS);
        }
        // Sent at 3.1 s, answered at 3.105 s, after the answer at 3.102 s.
        assert!(b.observe_probe(1, 3_100 * MS, 5 * MS));
        let estimate = b.latency_ns(1, 3_105 * MS);
        assert!((estimate - (12 * MS) as f64).abs() < 1.0, "{estimate}");
        // Fed again, the same probe changes nothing.
        assert!(!b.observe_probe(1, 3_100 * MS, 5 * MS));
    }

    /// Requests stuck in one stall finish one after another when it ends:
    /// the first sets the peak, the others (sent before it finished, so
    /// waiting in the same stall) are no evidence against a probe sent
    /// after it.
    #[test]
    fn requests_of_the_same_stall_do_not_hold_a_peak_against_a_newer_probe() {
        let mut b = balancer(Policy::PeakEwma, &[1, 1]);
        for sent in [1_000, 1_010, 1_020] {
            b.start(1, sent * MS);
        }
        // The stall ends at 3 s: the three answer 4 ms apart.
        for (i, sent) in [1_000u64, 1_010, 1_020].into_iter().enumerate() {
            let done = 3_004 + 4 * i as u64;
            b.finish(1, (done - sent) * MS, true, done * MS);
        }
        // A probe sent at 3.05 s answers in 5 ms: the stall is over.
        assert!(b.observe_probe(1, 3_050 * MS, 5 * MS));
        let estimate = b.latency_ns(1, 3_055 * MS);
        assert!((estimate - (5 * MS) as f64).abs() < 1.0, "{estimate}");
    }

    /// Four single-worker servers (4 ms each) at 70% load in virtual time;
    /// server 3 freezes from 1 s to 3 s (requests wait for the end), and
    /// is probed every 200 ms (a probe of a frozen server times out and
    /// takes it out of the table). Few requests may be caught in the
    /// freeze, and the server must carry its share again after it.
    #[test]
    fn peak_ewma_rides_out_a_freezing_server() {
        const SERVICE: u64 = 4;
        let (freeze, thaw) = (1_000u64, 3_000u64);
        let mut b = Balancer::new(
            BalancerConfig {
                policy: Policy::PeakEwma,
                decay_ns: 10_000 * MS,
                initial_latency_ns: MS,
            },
            &[1, 1, 1, 1],
            5,
            0,
        );
        let mut busy_until = [0u64; 4];
        let mut done: Vec<(u64, usize, u64)> = Vec::new();
        let (mut stuck, mut after) = (0u32, 0u32);
        for t in 0..6_000u64 {
            done.sort_unstable_by_key(|d| std::cmp::Reverse(d.0));
            while done.last().is_some_and(|d| d.0 <= t) {
                let (at, i, lat) = done.pop().unwrap();
                b.finish(i, lat * MS, true, at * MS);
            }
            // The probe that left as the freeze began times out 100 ms on.
            if t == freeze + 100 {
                b.set_up(3, false);
            }
            if t % 200 == 0 && !(freeze..thaw).contains(&t) {
                b.set_up(3, true);
                let wait = busy_until[3].saturating_sub(t) + SERVICE;
                b.observe_probe(3, t * MS, wait * MS);
            }
            // 700 requests/s: 7 every 10 ms.
            for _ in 0..usize::from(t % 10 < 7) {
                let i = b.pick(t * MS, 0).unwrap();
                b.start(i, t * MS);
                let mut begin = busy_until[i].max(t);
                if i == 3 && begin < thaw && begin + SERVICE > freeze {
                    begin = begin.max(thaw);
                }
                busy_until[i] = begin + SERVICE;
                if i == 3 && (freeze..thaw).contains(&t) {
                    stuck += 1;
                }
                if i == 3 && t >= thaw + 1_000 {
                    after += 1;
                }
                done.push((busy_until[i], i, busy_until[i] - t));
            }
        }
        assert!(stuck <= 10, "{stuck} requests sent into the freeze");
        // 2 s after the thaw at 700/s over four servers: about 350 each.
        assert!(after > 150, "only {after} requests after the thaw");
    }

    /// Several front ends, each with its own balancer and the same probe
    /// view: after every poll, under `clb` every front end sends its next
    /// request to the same server; under `peak_ewma` they spread.
    #[test]
    fn clb_herds_across_front_ends_and_peak_ewma_does_not() {
        fn largest_herd(policy: Policy) -> u32 {
            let mut fronts: Vec<Balancer> = (0..8)
                .map(|k| {
                    let config = BalancerConfig {
                        policy,
                        ..BalancerConfig::default()
                    };
                    Balancer::new(config, &[1, 1, 1, 1], k + 1, 0)
                })
                .collect();
            let mut worst = 0;
            for poll in 0..50u64 {
                let fastest = (poll % 4) as usize;
                let table: [usize; 4] = core::array::from_fn(|k| (fastest + k) % 4);
                let mut per_server = [0u32; 4];
                for f in &mut fronts {
                    f.set_table(&table);
                    per_server[f.pick(poll * 200 * MS, 0).unwrap()] += 1;
                }
                worst = worst.max(per_server.into_iter().max().unwrap_or(0));
            }
            worst
        }
        assert_eq!(largest_herd(Policy::Clb), 8);
        assert!(largest_herd(Policy::PeakEwma) < 8);
    }

    proptest! {
        #[test]
        fn a_pick_is_up_not_excluded_and_in_range(
            policy in prop::sample::select(vec![Policy::Clb, Policy::RoundRobin, Policy::LeastRequest, Policy::PeakEwma]),
            weights in prop::collection::vec(0u32..10, 1..20),
            up in any::<u64>(),
            exclude in any::<u64>(),
            table in prop::collection::vec(0usize..30, 0..30),
            ops in prop::collection::vec((0usize..25, 0u64..1_000_000_000, any::<bool>()), 0..50),
            seed in any::<u64>(),
        ) {
            let mut b = Balancer::new(BalancerConfig { policy, ..BalancerConfig::default() }, &weights, seed, 0);
            let n = weights.len();
            for i in 0..n {
                b.set_up(i, up & (1 << i) != 0);
            }
            b.set_table(&table);
            let mut now = 0;
            for (i, lat, start) in ops {
                now += lat;
                if start { b.start(i, now) } else { b.finish(i, lat, true, now) }
            }
            let pick = b.pick(now, exclude);
            let open: Vec<usize> = (0..n).filter(|&i| exclude & (1 << i) == 0).collect();
            let candidates: Vec<usize> = open
                .iter()
                .copied()
                .filter(|&i| up & (1 << i) != 0)
                .filter(|i| policy != Policy::Clb || table.contains(i))
                .collect();
            // No candidate: panic, any server not excluded.
            let allowed = if candidates.is_empty() { &open } else { &candidates };
            match pick {
                Some(i) => prop_assert!(allowed.contains(&i)),
                None => prop_assert!(open.is_empty()),
            }
        }
    }
}
