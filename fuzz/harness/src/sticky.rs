//! Fuzz target `sticky`: the sticky cookie and the forwarding-field parsers
//! of the request forwarder on any bytes.
//!
//! # The input
//!
//! The whole input is, in turn: a cookie value checked, a `Cookie` field
//! scanned, a `Set-Cookie` field read, a `Forwarded` field and an
//! `X-Forwarded-For` field parsed and walked with every peer trusted and
//! with none. When it is at least 10 bytes long, byte 0 is a host ID and
//! bytes 1-8 an issue time for a cookie issued and checked back.
//!
//! # What is checked
//!
//! - Nothing panics, whatever the bytes.
//! - A value this harness did not issue never checks.
//! - An issued cookie checks, naming its owner, and every proper prefix of
//!   it is refused, also by a connection that has just verified the whole
//!   value (`check_remembering`).
//! - A client chain is never empty, never longer than its bound, ends with
//!   the peer, and is the peer alone when nothing is trusted.

use std::net::{IpAddr, Ipv4Addr};

use shoal_dataplane::array::sticky::cookie::{
    check as check_cookie, check_remembering, cookie_values, issue, set_cookie_name, Verified,
};
use shoal_dataplane::array::sticky::forwarded::{
    client_chain, forwarded_for, render_forwarded, render_xff, xff_addresses, MAX_CHAIN,
};
use shoal_dataplane::array::sticky::{CookieKey, Owner, TrustedNet};
use shoal_dataplane::HostId;

/// The fuzz target's body.
///
/// # Panics
/// When a contract in the module docs breaks.
pub fn check(input: &[u8]) {
    let key = CookieKey::derive(b"fuzz cluster key");
    assert!(
        check_cookie(&key, input, 80, u64::MAX / 2, u64::MAX).is_err(),
        "an unissued cookie checked: {input:?}"
    );
    for v in cookie_values(input, b"RQFW") {
        let _ = check_cookie(&key, v, 80, 0, 0);
    }
    let _ = set_cookie_name(input);
    let peer = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
    let all = [
        TrustedNet::parse("0.0.0.0/0").expect("a network"),
        TrustedNet::parse("::/0").expect("a network"),
    ];
    for nodes in [forwarded_for([input]), xff_addresses([input])] {
        for trusted in [&all[..], &[]] {
            let chain = client_chain(peer, trusted, &nodes);
            assert!(!chain.is_empty() && chain.len() <= MAX_CHAIN, "{chain:?}");
            assert_eq!(chain.last(), Some(&peer));
            if trusted.is_empty() {
                assert_eq!(chain, [peer]);
            }
            let _ = render_xff(&chain);
            let _ = render_forwarded(&chain, Some(input), "http");
        }
    }
    if input.len() < 10 {
        return;
    }
    let Some(host) = HostId::new(input[0] % 64 + 1) else {
        return;
    };
    let issued = u64::from_le_bytes(input[1..9].try_into().expect("8 bytes")) >> 2;
    let value = issue(&key, Owner::Host(host), 443, issued);
    let c = check_cookie(&key, value.as_bytes(), 443, issued, 0).expect("an issued cookie checks");
    assert_eq!(c.owner, Owner::Host(host));
    let mut memo = Verified::default();
    check_remembering(&key, value.as_bytes(), 443, issued, 0, &mut memo).expect("it checks");
    for cut in 0..value.len() {
        assert!(check_cookie(&key, &value.as_bytes()[..cut], 443, issued, 0).is_err());
        assert!(check_remembering(&key, &value.as_bytes()[..cut], 443, issued, 0, &mut memo).is_err());
    }
}

/// Seed inputs: a cookie field, forwarding fields, issue fields.
pub fn seeds() -> Vec<Vec<u8>> {
    let key = CookieKey::derive(b"another key");
    let value = issue(&key, Owner::Host(HostId::new(2).expect("an id")), 80, 1_780_000_000);
    vec![
        format!("a=1; RQFW={value}; b=\"2\"").into_bytes(),
        b"for=192.0.2.60;proto=http;by=203.0.113.43, for=\"[2001:db8:cafe::17]:4711\"".to_vec(),
        b"203.0.113.5, 10.0.0.2, unknown, 198.51.100.7:80".to_vec(),
        b"JSESSIONID=abc; Path=/; HttpOnly".to_vec(),
        vec![3, 0, 0x10, 0x20, 0x30, 0, 0, 0, 0, 9],
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_and_odd_inputs_pass() {
        for s in seeds() {
            check(&s);
        }
        for odd in [&b""[..], b",,,", b"for=\"", b"\"\\", &[0xff; 40]] {
            check(odd);
        }
    }
}
