//! Fuzz target `route`: any request head, any member list, through the
//! array tier's CARP router.
//!
//! The input's first bytes choose the hash mode, the key parts, the member
//! count (1 to 64), their load factors and which of them are down; member
//! names come from the input too (made unique by an index prefix); the rest
//! is the request head.
//!
//! # What is checked
//!
//! - Parsing the head and deciding never panic.
//! - A decision is deterministic: two decisions of the same target give
//!   the same order.
//! - The order lists every up member exactly once and no down member, so
//!   the owner is always a live member (and there is none when all are
//!   down); the scores behind it are in descending order.
//! - The membership table has one line per member, and the PAC script
//!   renders.

use shoal_dataplane::array::{
    membership_table, pac_script, ArrayInfo, Carp, Decision, HashMode, KeyParts, MemberSpec,
    PacTargets, RequestTarget, Router, TableMember,
};

/// Bytes the header of an input takes before the request head.
pub const HEADER: usize = 12;

/// The fuzz target's body.
///
/// # Panics
/// When a contract in the module docs breaks.
pub fn check(input: &[u8]) {
    if input.len() < HEADER {
        return;
    }
    let (h, head) = input.split_at(HEADER);
    let mode = [HashMode::Spec, HashMode::Squid, HashMode::Hrw][usize::from(h[0] % 3)];
    let key = match h[1] & 0b1_1111 {
        0 => KeyParts::ALL,
        bits => KeyParts::parse_list(
            &["scheme", "host", "port", "path", "query"]
                .iter()
                .enumerate()
                .filter(|(i, _)| bits >> i & 1 == 1)
                .map(|(_, n)| *n)
                .collect::<Vec<_>>()
                .join(","),
        )
        .expect("part names are valid"),
    };
    let count = usize::from(h[2] % 64) + 1;
    let down = u64::from_le_bytes(h[3..11].try_into().expect("8 bytes"));
    let specs: Vec<MemberSpec> = (0..count)
        .map(|i| {
            let b = head.get(i).copied().unwrap_or(0);
            let load = u32::from(h[11].rotate_left(i as u32) % 5) + u32::from(b & 1);
            MemberSpec::new(format!("{i}-{}", (b as char).escape_default()), load)
        })
        .collect();
    let mut carp = match Carp::new(mode, key, &specs) {
        Ok(c) => c,
        Err(_) => return, // squid refuses shares under 0.1%
    };
    for i in 0..count {
        carp.set_up(i, down >> i & 1 == 0);
    }
    let router = Router::new(carp);
    let Ok(target) = RequestTarget::from_head(head, b"http") else {
        return;
    };
    let Decision::Route(order) = router.decide(&target) else {
        unreachable!("no patterns configured")
    };
    let scores = order.scores().to_vec();
    assert!(
        scores.windows(2).all(|w| w[0].score >= w[1].score),
        "scores out of order: {scores:?}"
    );
    let first: Vec<usize> = order.collect();
    let again: Vec<usize> = router.carp.order(&target).collect();
    assert_eq!(first, again, "the order is not deterministic");
    let up: Vec<usize> = (0..count).filter(|i| down >> i & 1 == 0).collect();
    let mut sorted = first.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, up, "the order is not exactly the up members");
    assert_eq!(router.carp.owner(&target), first.first().copied());

    let rows: Vec<TableMember> = (0..count)
        .map(|i| TableMember {
            address: format!("10.0.0.{i}"),
            port: 3128,
            state_time_s: 0,
            cache_mb: 0,
        })
        .collect();
    let info = ArrayInfo {
        array_name: "fuzz",
        list_ttl_s: 60,
        epoch: down,
        agent: "shoal",
    };
    let table = membership_table(&info, &router.carp, &rows);
    assert_eq!(table.matches("\r\n").count(), 6 + count, "{table:?}");
    let targets = PacTargets {
        proxies: rows
            .iter()
            .map(|r| format!("{}:{}", r.address, r.port))
            .collect(),
        exception_proxy: None,
    };
    assert!(pac_script(&router, &targets, "fuzz").contains("FindProxyForURL"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_of_every_form_and_junk_pass_the_check() {
        let mut input = vec![1, 0, 7, 0b101, 0, 0, 0, 0, 0, 0, 0, 3];
        for head in [
            &b"GET http://Example.com:8080/a%20b?q HTTP/1.1\r\n\r\n"[..],
            b"GET /x HTTP/1.1\r\nHost: a.b\r\n\r\n",
            b"CONNECT a.b:443 HTTP/1.1\r\n\r\n",
            b"\xff\x00 junk",
            b"",
        ] {
            for mode in 0..3 {
                input[0] = mode;
                input.truncate(HEADER);
                input.extend_from_slice(head);
                check(&input);
            }
        }
        // Every member down.
        let mut all_down = vec![2, 3, 63, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 1];
        all_down.extend_from_slice(b"GET http://a/ HTTP/1.1\r\n\r\n");
        check(&all_down);
        check(&[0; 3]);
    }
}
