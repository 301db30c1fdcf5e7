//! The in-memory half of `shoal bench array`: CARP routing decisions per
//! second on one core, through the router the proxy calls.
//!
//! # What is measured, and how
//!
//! * A [`Router`] over 4, 16 and 64 members (equal load factors but one in
//!   four at 2, names like `cache7.array.example.net`), in each hash mode
//!   (`spec`, `squid`, `hrw`), with every URL part hashed (the default key)
//!   and one exception and one direct pattern, so [`Router::decide`] checks
//!   patterns before hashing as it does in service.
//! * A pool of [`POOL`] realistic URLs from a fixed seed ([`url_mix`]):
//!   a few hundred hosts (mixed case, some with explicit ports), paths of
//!   one to six segments, file extensions, percent-encoded segments, query
//!   strings on about a third, and long paths (hundreds of bytes, as
//!   tracking and CDN URLs have) on about one in twelve. The URLs are
//!   parsed into [`RequestTarget`]s before timing: a decision is
//!   `Router::decide` and taking the owner (the first member of the order),
//!   which is what the proxy does for each request it routes.
//! * Time: passes over the pool on one thread pinned to the last CPU; the
//!   figure is decisions per second of the thread's own CPU time
//!   (`/proc/thread-self/schedstat`, nanoseconds), so other work sharing
//!   the machine does not lower it; wall-clock rates are kept beside it.
//!   Rounds interleave the cases; medians over rounds.

#![forbid(unsafe_code)]

use std::fmt::Write as _;
use std::hint::black_box;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use shoal_dataplane::array::{
    Carp, Decision, DomainPattern, HashMode, KeyParts, MemberSpec, RequestTarget, Router,
};

use crate::stats::median;

/// URLs in the pool.
pub const POOL: usize = 16_384;

/// Member counts measured.
pub const MEMBERS: [usize; 3] = [4, 16, 64];

/// The target, decisions per second per core at 16 members.
pub const TARGET_DECISIONS_PER_S: f64 = 10e6;

/// One (mode, member count) case.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RoutingCase {
    /// `spec`, `squid` or `hrw`.
    pub mode: String,
    /// Members in the set.
    pub members: usize,
    /// Decisions per second of the thread's CPU time (median of rounds).
    pub decisions_per_s: f64,
    /// Nanoseconds of CPU per decision (from `decisions_per_s`).
    pub ns_per_decision: f64,
    /// Decisions per wall-clock second (median of rounds).
    pub wall_decisions_per_s: f64,
    /// Each round's `decisions_per_s`.
    pub rounds_decisions_per_s: Vec<f64>,
}

/// The in-memory report.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct RoutingReport {
    /// URLs in the pool.
    pub urls: usize,
    /// Mean URL length in bytes.
    pub mean_url_bytes: f64,
    /// Longest URL in bytes.
    pub max_url_bytes: usize,
    /// Measured seconds per case and round.
    pub seconds: f64,
    /// Rounds.
    pub rounds: usize,
    /// The CPU the thread was pinned to.
    pub cpu: usize,
    /// Every case.
    pub cases: Vec<RoutingCase>,
    /// The target at 16 members.
    pub target_decisions_per_s: f64,
}

/// A splitmix64 stream: the URL mix is the same on every run.
struct Seq(u64);

impl Seq {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
        from[self.below(from.len() as u64) as usize]
    }
}

const WORDS: [&str; 24] = [
    "news", "images", "static", "video", "api", "v2", "users", "assets", "css", "js", "products",
    "category", "search", "blog", "2026", "media", "thumbs", "download", "docs", "en-US", "cart",
    "item", "Gallery", "feeds",
];
const EXTENSIONS: [&str; 9] = [
    "", "", ".html", ".jpg", ".png", ".js", ".css", ".json", ".php",
];
const TLDS: [&str; 6] = ["com", "net", "org", "co.uk", "de", "io"];
const SUBDOMAINS: [&str; 7] = ["www", "cdn", "img", "API", "static", "m", "Www"];
const PARAMS: [&str; 8] = [
    "id",
    "q",
    "utm_source",
    "page",
    "session",
    "lang",
    "ref",
    "sort",
];

/// `count` URLs from a fixed seed (see the module docs).
pub fn url_mix(count: usize) -> Vec<String> {
    let mut r = Seq(0x5eed_0ca7_a44a_7e57);
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let mut u = String::with_capacity(128);
        u += if r.below(10) == 0 {
            "HTTP://"
        } else {
            "http://"
        };
        let site = r.below(300);
        let _ = write!(
            u,
            "{}.{}{site}.{}",
            r.pick(&SUBDOMAINS),
            r.pick(&["example", "Shop", "news-site", "media", "search"]),
            r.pick(&TLDS)
        );
        if r.below(12) == 0 {
            let _ = write!(u, ":{}", [8080, 8000, 80, 3000][r.below(4) as usize]);
        }
        for _ in 0..1 + r.below(6) {
            u.push('/');
            match r.below(8) {
                0 => {
                    let _ = write!(u, "{}", r.below(1_000_000));
                }
                1 => {
                    let _ = write!(u, "{}%20{}", r.pick(&WORDS), r.pick(&WORDS));
                }
                _ => u += r.pick(&WORDS),
            }
        }
        if r.below(12) == 0 {
            // A long opaque segment: tokens, signed CDN paths, tracking.
            u.push('/');
            for _ in 0..(100 + r.below(300)) / 16 {
                let _ = write!(u, "{:016x}", r.next());
            }
        }
        u += r.pick(&EXTENSIONS);
        if r.below(3) == 0 {
            for i in 0..1 + r.below(4) {
                u.push(if i == 0 { '?' } else { '&' });
                let _ = write!(u, "{}={}", r.pick(&PARAMS), r.below(100_000));
            }
        }
        out.push(u);
    }
    out
}

/// The router measured: `members` members, every fourth with load 2.
///
/// # Errors
/// When the set cannot be built (never for these names).
pub fn router(mode: HashMode, members: usize) -> Result<Router> {
    let specs: Vec<MemberSpec> = (0..members)
        .map(|i| {
            MemberSpec::new(
                format!("cache{i}.array.example.net"),
                if i % 4 == 3 { 2 } else { 1 },
            )
        })
        .collect();
    let carp = Carp::new(mode, KeyParts::ALL, &specs).context("building the member set")?;
    let mut router = Router::new(carp);
    router
        .exceptions
        .push(DomainPattern::parse("*.corp.example").context("exception pattern")?);
    router
        .direct
        .push(DomainPattern::parse("intranet.example").context("direct pattern")?);
    Ok(router)
}

/// One pass: every target decided, the owners folded into a checksum.
fn pass(router: &Router, targets: &[RequestTarget<'_>]) -> usize {
    let mut sum = 0usize;
    for t in targets {
        if let Decision::Route(mut order) = router.decide(black_box(t)) {
            sum = sum.wrapping_add(order.next().unwrap_or(usize::MAX));
        }
    }
    sum
}

/// CPU time of the calling thread in nanoseconds (`/proc/thread-self/schedstat`).
pub fn thread_cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Options of the in-memory half.
#[derive(Clone, Debug)]
pub struct RoutingOptions {
    /// Seconds per case and round.
    pub seconds: f64,
    /// Rounds.
    pub rounds: usize,
}

/// Runs every case.
///
/// # Errors
/// When a router cannot be built or a URL of the mix does not parse.
pub fn run(opts: &RoutingOptions) -> Result<RoutingReport> {
    // A thread of its own, so that pinning it leaves the caller's affinity
    // (the wire half pins its processes to every CPU in turn) alone.
    let opts = opts.clone();
    std::thread::spawn(move || measure(&opts))
        .join()
        .map_err(|_| anyhow::anyhow!("the routing thread panicked"))?
}

fn measure(opts: &RoutingOptions) -> Result<RoutingReport> {
    let urls = url_mix(POOL);
    let targets = urls
        .iter()
        .map(|u| RequestTarget::parse_absolute(u.as_bytes()))
        .collect::<Result<Vec<_>, _>>()
        .context("a URL of the mix does not parse")?;
    let cpu = core_affinity::get_core_ids()
        .and_then(|ids| ids.last().map(|c| c.id))
        .unwrap_or(0);
    if !core_affinity::set_for_current(core_affinity::CoreId { id: cpu }) {
        eprintln!("array: could not pin the routing thread to CPU {cpu}");
    }
    let modes = [HashMode::Spec, HashMode::Squid, HashMode::Hrw];
    let mut routers = Vec::new();
    for mode in modes {
        for members in MEMBERS {
            routers.push((mode, members, router(mode, members)?));
        }
    }
    let budget = Duration::from_secs_f64(opts.seconds);
    let mut per_case: Vec<(Vec<f64>, Vec<f64>)> = vec![(Vec::new(), Vec::new()); routers.len()];
    for _ in 0..opts.rounds {
        for (i, (_, _, router)) in routers.iter().enumerate() {
            black_box(pass(router, &targets[..1024]));
            let cpu0 = thread_cpu_ns();
            let t = Instant::now();
            let mut decisions = 0u64;
            while t.elapsed() < budget {
                black_box(pass(router, &targets));
                decisions += targets.len() as u64;
            }
            let wall = t.elapsed().as_secs_f64();
            let cpu_s = thread_cpu_ns().saturating_sub(cpu0) as f64 / 1e9;
            let cpu_s = if cpu_s > 0.0 { cpu_s } else { wall };
            per_case[i].0.push(decisions as f64 / cpu_s);
            per_case[i].1.push(decisions as f64 / wall);
        }
    }
    let cases = routers
        .iter()
        .zip(per_case)
        .map(|((mode, members, _), (cpu, wall))| {
            let d = median(&cpu);
            RoutingCase {
                mode: mode.name().to_string(),
                members: *members,
                decisions_per_s: d,
                ns_per_decision: 1e9 / d.max(1e-9),
                wall_decisions_per_s: median(&wall),
                rounds_decisions_per_s: cpu,
            }
        })
        .collect();
    Ok(RoutingReport {
        urls: urls.len(),
        mean_url_bytes: urls.iter().map(String::len).sum::<usize>() as f64 / urls.len() as f64,
        max_url_bytes: urls.iter().map(String::len).max().unwrap_or(0),
        seconds: opts.seconds,
        rounds: opts.rounds,
        cpu,
        cases,
        target_decisions_per_s: TARGET_DECISIONS_PER_S,
    })
}

/// The text summary.
pub fn text(r: &RoutingReport) -> String {
    let mut s = format!(
        "array routing: Router::decide + owner, {} URLs (mean {:.0} bytes, max {}), one thread \
         on CPU {}, {} round(s) × {} s, per CPU-second\n",
        r.urls, r.mean_url_bytes, r.max_url_bytes, r.cpu, r.rounds, r.seconds
    );
    for c in &r.cases {
        let _ = writeln!(
            s,
            "  {:<5} {:>2} members: {:>7.2} M decisions/s  {:>7.1} ns/decision",
            c.mode,
            c.members,
            c.decisions_per_s / 1e6,
            c.ns_per_decision
        );
    }
    s
}

/// The markdown section.
pub fn markdown(r: &RoutingReport) -> String {
    let mut s = format!(
        "### Routing decisions, in memory\n\nOne thread pinned to CPU {}: `Router::decide` and \
         the owner for each of {} pre-parsed URLs (mean {:.0} bytes, longest {}; hosts, ports, \
         segments, queries and long paths from a fixed seed), every URL part hashed; {} \
         round(s) × {} s per case, medians, per second of the thread's CPU time.\n\n\
         | mode | members | M decisions/s | ns/decision |\n|---|---:|---:|---:|\n",
        r.cpu, r.urls, r.mean_url_bytes, r.max_url_bytes, r.rounds, r.seconds
    );
    for c in &r.cases {
        let _ = writeln!(
            s,
            "| {} | {} | {:.2} | {:.1} |",
            c.mode,
            c.members,
            c.decisions_per_s / 1e6,
            c.ns_per_decision
        );
    }
    let at16: Vec<String> = r
        .cases
        .iter()
        .filter(|c| c.members == 16)
        .map(|c| {
            format!(
                "{} {:.2} M/s ({})",
                c.mode,
                c.decisions_per_s / 1e6,
                if c.decisions_per_s >= r.target_decisions_per_s {
                    "met"
                } else {
                    "not met"
                }
            )
        })
        .collect();
    let _ = writeln!(
        s,
        "\nTarget: ≥ {:.0} M decisions/s per core at 16 members: {}.\n",
        r.target_decisions_per_s / 1e6,
        at16.join(", ")
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mix_is_fixed_varied_and_parses() {
        let a = url_mix(2000);
        assert_eq!(a, url_mix(2000), "deterministic");
        let hosts: std::collections::HashSet<&[u8]> = a
            .iter()
            .map(|u| RequestTarget::parse_absolute(u.as_bytes()).unwrap().host())
            .collect();
        assert!(hosts.len() > 300, "{} hosts", hosts.len());
        assert!(a.iter().any(|u| u.len() > 200), "some long URLs");
        assert!(a.iter().filter(|u| u.contains('?')).count() > 400);
        assert!(a.iter().any(|u| u.contains("%20")));
        assert!(a.iter().any(|u| u.contains(":8080/")));
    }

    #[test]
    fn a_short_run_decides_in_every_case() {
        let r = run(&RoutingOptions {
            seconds: 0.01,
            rounds: 1,
        })
        .unwrap();
        assert_eq!(r.cases.len(), 9);
        assert!(r.cases.iter().all(|c| c.decisions_per_s > 0.0));
        assert!(markdown(&r).contains("| hrw | 64 |"));
    }
}
