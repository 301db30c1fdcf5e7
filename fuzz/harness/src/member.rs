//! Fuzz target `member`: the member-to-member hop header's verification
//! on any bytes, and signing with any inputs.
//!
//! # The input
//!
//! The whole input is first verified as a header value. Then, when it is
//! at least [`HEADER`] bytes long: byte 0 is the sender id, bytes 1-2 the
//! port, 3-10 the signing time, 11-18 the allowed skew, 19-26 the verifier's
//! clock, and the rest is `method\ntarget`.
//!
//! # What is checked
//!
//! - Verification never panics, whatever the value, request or times.
//! - A value this harness did not sign never verifies.
//! - A signed value verifies, naming its sender, exactly when the clocks
//!   are within the skew, and only for the same port, method and target;
//!   every proper prefix of it is refused.

use shoal_dataplane::array::member::{sign, verify, MemberError, MemberKey};

/// Bytes the fixed fields take before `method\ntarget`.
pub const HEADER: usize = 27;

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// The fuzz target's body.
///
/// # Panics
/// When a contract in the module docs breaks.
pub fn check(input: &[u8]) {
    let key = MemberKey::derive(b"fuzz cluster key");
    let now = if input.len() >= 8 {
        u64_at(input, 0)
    } else {
        0
    };
    let forged = verify(
        &key,
        input,
        8080,
        b"GET",
        b"http://a.example/",
        now,
        u64::MAX,
    );
    assert!(forged.is_err(), "an unsigned value verified: {input:?}");
    if input.len() < HEADER {
        return;
    }
    let from = input[0];
    let port = u16::from_le_bytes([input[1], input[2]]);
    let time = u64_at(input, 3);
    let skew = u64_at(input, 11) >> (input[11] % 64);
    let now = u64_at(input, 19);
    let rest = &input[HEADER..];
    let (method, target) = match rest.iter().position(|&b| b == b'\n') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &b""[..]),
    };
    let value = sign(&key, from, port, time, method, target);
    let r = verify(&key, value.as_bytes(), port, method, target, now, skew);
    if time.abs_diff(now) <= skew {
        assert_eq!(r, Ok(from), "{value}");
    } else {
        assert!(
            matches!(
                r,
                Err(MemberError::Stale { .. } | MemberError::Future { .. })
            ),
            "{value}: {r:?}"
        );
    }
    let other_port = verify(
        &key,
        value.as_bytes(),
        port.wrapping_add(1),
        method,
        target,
        time,
        skew,
    );
    assert_eq!(other_port, Err(MemberError::BadTag));
    let mut longer = target.to_vec();
    longer.push(b'x');
    let other_target = verify(&key, value.as_bytes(), port, method, &longer, time, skew);
    assert_eq!(other_target, Err(MemberError::BadTag));
    for cut in [0, 1, value.len() / 2, value.len() - 1] {
        let r = verify(
            &key,
            &value.as_bytes()[..cut],
            port,
            method,
            target,
            time,
            skew,
        );
        assert!(matches!(r, Err(MemberError::Malformed(_))), "{cut}: {r:?}");
    }
}

/// Seed inputs: signing fields with a request, and a well-formed value.
pub fn seeds() -> Vec<Vec<u8>> {
    let mut fields = vec![3u8, 0x90, 0x1f];
    fields.extend_from_slice(&1_780_000_000_000u64.to_le_bytes());
    fields.extend_from_slice(&5000u64.to_le_bytes());
    fields.extend_from_slice(&1_780_000_001_000u64.to_le_bytes());
    fields.extend_from_slice(b"GET\nhttp://www.example.com/a?b");
    let key = MemberKey::derive(b"fuzz cluster key");
    // Signed for another target than the one the whole input is checked
    // against, so it reaches the tag comparison and is refused there.
    let value = sign(&key, 3, 8080, 7, b"GET", b"http://b.example/").into_bytes();
    vec![fields, value]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_and_junk_pass_the_check() {
        for seed in seeds() {
            check(&seed);
        }
        check(b"");
        check(b"v1.3.0.");
        check(&[0xff; HEADER]);
        check(&[0; HEADER + 3]);
    }
}
