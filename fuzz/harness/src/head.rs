//! Fuzz target `head`: any request head, as the proxy hands it over after
//! parsing, through the array tier's classification and, when it names a
//! target, through a CARP router over any member list.
//!
//! # The input
//!
//! The first [`HEADER`] bytes choose the router as in the `route` target
//! (hash mode, key parts, member count 1 to 64, load factors, which members
//! are down) plus: whether `exceptions`/`direct` patterns are configured
//! (bit 7 of byte 1), and in byte 12 the limits (bit 0: small ones) and a
//! second allowed CONNECT port besides 443. The rest is the head, split at
//! each `\n`: the method, the target, then one header line per field,
//! `name:value`; fields named `host` (any case) are `Host` headers, the
//! first one's value the view's host. Member names come from the head's
//! bytes, the first member is "this" member for the loop check.
//!
//! # What is checked
//!
//! - Classification, routing and the loop check never panic.
//! - Each is deterministic: the same input twice gives the same result.
//! - A refusal's status and counter are among the documented ones, and
//!   size refusals happen exactly when a limit is exceeded.
//! - An accepted head keeps every limit; a CONNECT goes only to an allowed
//!   port; a routable form has a non-empty host.
//! - A route lists exactly the up members, so the owner is always a live
//!   member when any is up, and there is none when all are down.
//! - Verifying a `shoal-member` header value never panics.

use shoal_dataplane::array::{
    classify, member, seen, Carp, Decision, DomainPattern, Form, HashMode, HeadLimits, HeadView,
    KeyParts, MemberKey, MemberSpec, Refusal, Router,
};

/// Bytes the header of an input takes before the request head.
pub const HEADER: usize = 13;

/// Limits small enough that the fuzzer reaches them.
const SMALL: HeadLimits = HeadLimits {
    max_uri_bytes: 48,
    max_head_bytes: 160,
    max_headers: 4,
};

/// The head's parts, split as the module docs say.
#[derive(Debug)]
struct Split<'a> {
    view: HeadView<'a>,
    lines: Vec<(&'a [u8], &'a [u8])>,
}

fn split(head: &[u8]) -> Split<'_> {
    let mut fields = head.split(|&b| b == b'\n');
    let method = fields.next().unwrap_or_default();
    let target = fields.next().unwrap_or_default();
    let lines: Vec<(&[u8], &[u8])> = fields
        .map(|f| match f.iter().position(|&b| b == b':') {
            Some(i) => (&f[..i], &f[i + 1..]),
            None => (f, &b""[..]),
        })
        .collect();
    let mut hosts = lines
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(b"host"))
        .map(|(_, v)| *v);
    let host = hosts.next();
    let host_count = usize::from(host.is_some()) + hosts.count();
    Split {
        view: HeadView {
            method,
            target,
            host,
            host_count,
            head_bytes: head.len(),
            header_count: lines.len(),
        },
        lines,
    }
}

/// The router the header bytes describe (`None` when Squid's arithmetic
/// refuses the load factors).
fn router(h: &[u8], head: &[u8]) -> Option<(Router, Vec<bool>)> {
    let mode = [HashMode::Spec, HashMode::Squid, HashMode::Hrw][usize::from(h[0] % 3)];
    let bits = h[1] & 0b1_1111;
    let key = (0..5)
        .filter(|i| bits >> i & 1 == 1)
        .map(|i| ["scheme", "host", "port", "path", "query"][i])
        .collect::<Vec<_>>()
        .join(",");
    let key = if key.is_empty() {
        KeyParts::ALL
    } else {
        KeyParts::parse_list(&key).expect("part names are valid")
    };
    let count = usize::from(h[2] % 64) + 1;
    let down = u64::from_le_bytes(h[3..11].try_into().expect("8 bytes"));
    let specs: Vec<MemberSpec> = (0..count)
        .map(|i| {
            let b = head.get(i).copied().unwrap_or(0);
            let load = u32::from(h[11].rotate_left(i as u32) % 5) + u32::from(b & 1);
            MemberSpec::new(format!("m{i}-{}.example", b % 10), load)
        })
        .collect();
    let mut carp = Carp::new(mode, key, &specs).ok()?;
    let up: Vec<bool> = (0..count).map(|i| down >> i & 1 == 0).collect();
    for (i, &u) in up.iter().enumerate() {
        carp.set_up(i, u);
    }
    let mut router = Router::new(carp);
    if h[1] & 0x80 != 0 {
        router
            .exceptions
            .push(DomainPattern::parse("*.corp.example").expect("valid pattern"));
        router
            .direct
            .push(DomainPattern::parse("direct.example").expect("valid pattern"));
    }
    Some((router, up))
}

/// The fuzz target's body.
///
/// # Panics
/// When a contract in the module docs breaks.
pub fn check(input: &[u8]) {
    if input.len() < HEADER {
        return;
    }
    let (h, head) = input.split_at(HEADER);
    let limits = if h[12] & 1 == 1 {
        SMALL
    } else {
        HeadLimits::DEFAULT
    };
    let ports = [443, 8000 + u16::from(h[12] >> 1)];
    let Split { view, lines } = split(head);

    let form = classify(&view, &limits, &ports);
    assert_eq!(
        form,
        classify(&view, &limits, &ports),
        "classify is not deterministic"
    );
    let too_long = view.target.len() > limits.max_uri_bytes;
    let too_large =
        view.head_bytes > limits.max_head_bytes || view.header_count > limits.max_headers;
    assert_eq!(
        form == Err(Refusal::UriTooLong),
        too_long,
        "{view:?} {form:?}"
    );
    assert_eq!(
        form == Err(Refusal::HeadTooLarge),
        too_large && !too_long,
        "{view:?} {form:?}"
    );
    match form {
        Err(r) => {
            assert!(
                [400, 403, 414, 431, 508].contains(&r.status()),
                "{r:?}: status {}",
                r.status()
            );
            assert!(Refusal::COUNTERS.contains(&r.counter()), "{r:?}");
        }
        Ok(form) => {
            if let Form::Connect(t) = form {
                assert!(t.port().is_some_and(|p| ports.contains(&p)), "{t:?}");
                assert_eq!(view.method, b"CONNECT");
            }
            if let Some(t) = form.target() {
                assert!(!t.host().is_empty(), "{form:?}");
                route(h, head, t);
            }
        }
    }

    // The loop check, on the head's Via and CDN-Loop lines.
    let values = |name: &'static [u8]| {
        lines
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| *v)
    };
    let own = "m0-0.example";
    let looped = seen(own, values(b"via"), values(b"cdn-loop"));
    assert_eq!(looped, seen(own, values(b"via"), values(b"cdn-loop")));

    // Any member header value is refused without a panic.
    let key = MemberKey::derive(b"fuzz cluster key");
    for v in values(b"shoal-member") {
        let r = member::verify(&key, v, 3128, view.method, view.target, 0, 5000);
        assert!(r.is_err(), "an unsigned value verified: {v:?}");
    }
}

fn route(h: &[u8], head: &[u8], target: &shoal_dataplane::array::RequestTarget<'_>) {
    let Some((router, up)) = router(h, head) else {
        return;
    };
    match router.decide(target) {
        Decision::Route(order) => {
            let first: Vec<usize> = order.collect();
            let again: Vec<usize> = match router.decide(target) {
                Decision::Route(o) => o.collect(),
                other => panic!("decision changed to {other:?}"),
            };
            assert_eq!(first, again, "the order is not deterministic");
            if let Some(&owner) = first.first() {
                assert!(up[owner], "owner {owner} is down");
            }
            let mut sorted = first.clone();
            sorted.sort_unstable();
            let live: Vec<usize> = (0..up.len()).filter(|&i| up[i]).collect();
            assert_eq!(sorted, live, "the order is not exactly the up members");
        }
        d @ (Decision::Direct | Decision::Exception) => {
            assert!(h[1] & 0x80 != 0, "{d:?} without patterns");
        }
    }
}

/// Seed inputs: heads of every form and refusal, with a router header.
pub fn seeds() -> Vec<Vec<u8>> {
    let heads: [&[u8]; 14] = [
        b"GET\nhttp://www.example.com/a?b\nhost:x\nvia:1.1 other (squid)",
        b"GET\n/index.html\nHost:www.example.com:8080\nuser-agent:t",
        b"POST\n/x?y=1\nhost:a.corp.example",
        b"CONNECT\nwww.example.com:443\nhost:www.example.com:443",
        b"CONNECT\nwww.example.com:22",
        b"GET\n/array.dll?Get.Info.v1",
        b"GET\n/array.dll?Get.Routing.Script\nhost:vip",
        b"GET\n/proxy.pac",
        b"GET\n/wpad.dat",
        b"GET\n/array.dll?Get.Health\nhost:m1",
        b"GET\n/x\nhost:a\nhost:b",
        b"GET\nhttp://direct.example/\nvia:1.0 a, 1.1 m0-0.example:8080 (shoal)",
        b"GET\nhttp://a.example/\ncdn-loop:foo; x=\"a, b\", m0-0.example",
        b"GET\nhttp://a.example/\nshoal-member:v1.3.0.00",
    ];
    let mut out = Vec::new();
    for (i, head) in heads.iter().enumerate() {
        for small in [0u8, 1] {
            let mut input = vec![
                i as u8 % 3,
                if i % 2 == 0 { 0x80 } else { 0 },
                (i as u8) * 3,
                0b1010,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                7,
                small,
            ];
            input.extend_from_slice(head);
            out.push(input);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_and_junk_pass_the_check() {
        for seed in seeds() {
            check(&seed);
        }
        let mut all_down = vec![
            0, 0, 63, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 1, 0,
        ];
        all_down.extend_from_slice(b"GET\nhttp://a/");
        check(&all_down);
        check(&[0; HEADER]);
        check(&[0xff; 64]);
        check(b"\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n");
    }

    #[test]
    fn heads_split_into_method_target_and_headers() {
        let s = split(b"GET\n/x\nHost: a\nvia:1.1 b\nHOST:c\nbare");
        assert_eq!(s.view.method, b"GET");
        assert_eq!(s.view.target, b"/x");
        assert_eq!(s.view.host, Some(&b" a"[..]));
        assert_eq!(s.view.host_count, 2);
        assert_eq!(s.view.header_count, 4);
        assert_eq!(s.lines[3], (&b"bare"[..], &b""[..]));
        let empty = split(b"");
        assert_eq!(empty.view.method, b"");
        assert_eq!(empty.view.target, b"");
        assert_eq!(empty.view.host, None);
    }
}
