//! The member-to-member hop header: how the owner of a URL knows that a
//! request comes from another member of its array and not from a client.
//!
//! Owns: [`MEMBER_HEADER`], [`MemberKey`] (derived from the cluster key),
//! [`sign`], [`verify`], [`MemberError`], [`sender`] (who sent a request),
//! and the opening of a hop tunnel ([`TUNNEL_PROTOCOL`], [`tunnel_target`]).
//!
//! Guarantees:
//! - A value verifies only under the key it was signed with, for the same
//!   service port, method and request target, and within `max_skew_ms` of
//!   the time it was signed; the sender's host id it carries is then
//!   authentic.
//! - The tag is compared in constant time.
//! - [`verify`] takes any bytes: a malformed value is an error, never a
//!   panic, and verification does not allocate.
//! - The key never appears in `Debug` output.
//!
//! # The value
//!
//! `v1.<from>.<time>.<tag>`: `from` the sender's host id (decimal, 0 to
//! 255), `time` wall-clock milliseconds since the Unix epoch (decimal), `tag`
//! 64 lower-case hex digits of HMAC-SHA256 under the [`MemberKey`] over
//! `"v1"`, `from` (1 byte), the service port (2 bytes, big-endian), `time`
//! (8 bytes, big-endian), and the method and the target each preceded by its
//! length (4 bytes, big-endian). The target is the request target exactly
//! as the hop sends it (absolute-form for a proxy request), so the receiver
//! verifies against the target it received.
//!
//! What it does not do: it is not a nonce. A captured value can be replayed
//! within the skew window for the same request, which gains the replayer
//! nothing it could not get by sending the request to any member: the
//! header's only privilege is that the receiver does not route the request
//! again.
//!
//! # A hop tunnel
//!
//! A member may open a tunnel instead of signing each request: one
//! `GET` whose target is [`tunnel_target`] of the connection's own source
//! address and port, with `Upgrade: ` [`TUNNEL_PROTOCOL`] and a member
//! header signed over that target. The owner verifies it against the
//! source address it sees on the connection, so a captured value opens
//! nothing on any other connection (a connection from the same address and
//! port cannot exist while the first one lives), and then relays the
//! connection's bytes to its own application unparsed.

use std::fmt;

use hmac::{Hmac, Mac as _};
use sha2::Sha256;

pub(super) type HmacSha256 = Hmac<Sha256>;

/// The header a member adds to a request it forwards to the owner.
pub const MEMBER_HEADER: &str = "shoal-member";

/// The `Upgrade` protocol of a hop tunnel.
pub const TUNNEL_PROTOCOL: &str = "shoal-tunnel/1";

/// The `Upgrade` protocol that opens a multiplexed hop: many hop tunnels
/// over one connection (see [`super::mux`]).
pub const MUX_PROTOCOL: &str = "shoal-mux/1";

/// The request target that opens a hop tunnel from `source` (the
/// connection's source address and port as the owner sees it; an
/// IPv4-mapped IPv6 address is written as the IPv4 one, so either side may
/// hold either form).
pub fn tunnel_target(source: std::net::SocketAddr) -> String {
    let ip = super::sticky::forwarded::canonical(source.ip());
    format!(
        "/.shoal/tunnel/{}",
        std::net::SocketAddr::new(ip, source.port())
    )
}

/// The label the member key is derived with.
const LABEL: &[u8] = b"shoal array member header v1";

/// The value's version prefix.
const VERSION: &[u8] = b"v1";

/// The key member headers are signed with: HMAC-SHA256(cluster key,
/// `"shoal array member header v1"`), so it says nothing about the cluster
/// key and differs from every other key derived from it.
///
/// It holds the HMAC state already keyed (the inner and outer pads
/// hashed), so each [`sign`] and [`verify`] clones it instead of hashing
/// the key again: two of an HMAC's four SHA-256 blocks per request saved.
#[derive(Clone)]
pub struct MemberKey(HmacSha256);

impl MemberKey {
    /// Derives the member key from the cluster key (any length).
    pub fn derive(cluster_key: &[u8]) -> MemberKey {
        MemberKey(keyed(&hmac(cluster_key, |m| m.update(LABEL))))
    }
}

/// The HMAC-SHA256 state keyed with `key`.
pub(super) fn keyed(key: &[u8; 32]) -> HmacSha256 {
    // HMAC-SHA256 takes keys of every length (RFC 2104 hashes long keys),
    // so `new_from_slice` never fails for 32 bytes; the fallback keys with
    // zeros rather than panic.
    <HmacSha256 as hmac::Mac>::new_from_slice(key)
        .unwrap_or_else(|_| <HmacSha256 as hmac::digest::KeyInit>::new(&Default::default()))
}

impl fmt::Debug for MemberKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MemberKey(redacted)")
    }
}

/// Why a member header value does not verify.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MemberError {
    /// The value is not `v1.<from>.<time>.<tag>`; the text says which part
    /// is wrong.
    #[error("malformed member header: {0}")]
    Malformed(&'static str),
    /// The tag does not match: another key, port, method, target, sender or
    /// time.
    #[error("member header does not authenticate")]
    BadTag,
    /// Signed more than the allowed skew before now.
    #[error("member header is {age_ms} ms old")]
    Stale {
        /// How old it is.
        age_ms: u64,
    },
    /// Signed more than the allowed skew after now.
    #[error("member header is {ahead_ms} ms in the future")]
    Future {
        /// How far ahead it is.
        ahead_ms: u64,
    },
}

/// The header value for a request member `from` forwards at `now_ms`
/// (wall-clock milliseconds since the Unix epoch) to the owner's `port`,
/// with `method` and `target` exactly as sent.
pub fn sign(
    key: &MemberKey,
    from: u8,
    port: u16,
    now_ms: u64,
    method: &[u8],
    target: &[u8],
) -> String {
    let tag = tag(key, from, port, now_ms, method, target);
    let mut out = format!("v1.{from}.{now_ms}.");
    for b in tag {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0xf)]));
    }
    out
}

/// Verifies a header `value` received on `port` with `method` and `target`
/// at `now_ms`, allowing clocks `max_skew_ms` apart; returns the sender's
/// host id. The tag is checked before the time, so a forged value is
/// [`MemberError::BadTag`] whatever its time.
pub fn verify(
    key: &MemberKey,
    value: &[u8],
    port: u16,
    method: &[u8],
    target: &[u8],
    now_ms: u64,
    max_skew_ms: u64,
) -> Result<u8, MemberError> {
    let mut fields = value.split(|&b| b == b'.');
    let (Some(version), Some(from), Some(time), Some(hex), None) = (
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
    ) else {
        return Err(MemberError::Malformed("not four dot-separated fields"));
    };
    if version != VERSION {
        return Err(MemberError::Malformed("unknown version"));
    }
    let from = decimal(from, 3)
        .and_then(|n| u8::try_from(n).ok())
        .ok_or(MemberError::Malformed("sender id"))?;
    let time = decimal(time, 20).ok_or(MemberError::Malformed("time"))?;
    let mut expected = [0u8; 32];
    if hex.len() != 64 {
        return Err(MemberError::Malformed("tag length"));
    }
    for (out, pair) in expected.iter_mut().zip(hex.chunks_exact(2)) {
        let (Some(hi), Some(lo)) = (nibble(pair[0]), nibble(pair[1])) else {
            return Err(MemberError::Malformed("tag digits"));
        };
        *out = hi << 4 | lo;
    }
    let mut mac = key.0.clone();
    feed(&mut mac, from, port, time, method, target);
    mac.verify_slice(&expected)
        .map_err(|_| MemberError::BadTag)?;
    if time < now_ms && now_ms - time > max_skew_ms {
        return Err(MemberError::Stale {
            age_ms: now_ms - time,
        });
    }
    if time > now_ms && time - now_ms > max_skew_ms {
        return Err(MemberError::Future {
            ahead_ms: time - now_ms,
        });
    }
    Ok(from)
}

/// Who sent a request, by its member header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sender {
    /// No member header at all.
    Absent,
    /// Exactly one value, and it verifies: the member with this host id
    /// (as [`verify`] returns it) sent the request.
    Member(u8),
    /// More than one value, or one that does not verify.
    Forged,
}

/// Who sent a request whose member header fields are `values` (every one
/// the request carries): exactly one value that [`verify`]s under the same
/// arguments names its sender; more than one is forged even when each
/// would verify alone.
#[allow(clippy::too_many_arguments)] // verify's, plus the values
pub fn sender<'a>(
    values: impl IntoIterator<Item = &'a [u8]>,
    key: &MemberKey,
    port: u16,
    method: &[u8],
    target: &[u8],
    now_ms: u64,
    max_skew_ms: u64,
) -> Sender {
    let mut values = values.into_iter();
    match (values.next(), values.next()) {
        (None, _) => Sender::Absent,
        (Some(value), None) => {
            match verify(key, value, port, method, target, now_ms, max_skew_ms) {
                Ok(from) => Sender::Member(from),
                Err(_) => Sender::Forged,
            }
        }
        (Some(_), Some(_)) => Sender::Forged,
    }
}

/// Lower-case hex digits, shared with the sticky cookie codec.
pub(super) const HEX: &[u8; 16] = b"0123456789abcdef";

/// The value of one lower-case hex digit.
pub(super) fn nibble(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    }
}

/// A decimal of 1 to `max_digits` ASCII digits, without overflow.
pub(super) fn decimal(s: &[u8], max_digits: usize) -> Option<u64> {
    if s.is_empty() || s.len() > max_digits {
        return None;
    }
    s.iter().try_fold(0u64, |n, &d| {
        if d.is_ascii_digit() {
            n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
        } else {
            None
        }
    })
}

fn len32(s: &[u8]) -> [u8; 4] {
    u32::try_from(s.len()).unwrap_or(u32::MAX).to_be_bytes()
}

fn feed(mac: &mut HmacSha256, from: u8, port: u16, time: u64, method: &[u8], target: &[u8]) {
    mac.update(VERSION);
    mac.update(&[from]);
    mac.update(&port.to_be_bytes());
    mac.update(&time.to_be_bytes());
    mac.update(&len32(method));
    mac.update(method);
    mac.update(&len32(target));
    mac.update(target);
}

fn tag(key: &MemberKey, from: u8, port: u16, time: u64, method: &[u8], target: &[u8]) -> [u8; 32] {
    let mut mac = key.0.clone();
    feed(&mut mac, from, port, time, method, target);
    mac.finalize().into_bytes().into()
}

pub(super) fn hmac(key: &[u8], data: impl FnOnce(&mut HmacSha256)) -> [u8; 32] {
    // HMAC-SHA256 takes keys of every length (RFC 2104 hashes long keys),
    // so `new_from_slice` never fails; were it to, the all-zero tag would be
    // refused by every receiver, whose own tag is a real HMAC.
    let Ok(mut mac) = <HmacSha256 as hmac::Mac>::new_from_slice(key) else {
        return [0; 32];
    };
    data(&mut mac);
    mac.finalize().into_bytes().into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const NOW: u64 = 1_780_000_000_000;
    const SKEW: u64 = 5_000;
    const URL: &[u8] = b"http://www.example.com/a?b";

    fn key() -> MemberKey {
        MemberKey::derive(&[7; 32])
    }

    #[test]
    fn a_tunnel_opening_verifies_only_for_the_connection_it_was_signed_for() {
        let src: std::net::SocketAddr = "10.0.2.1:40000".parse().unwrap();
        let mapped: std::net::SocketAddr = "[::ffff:10.0.2.1]:40000".parse().unwrap();
        let target = tunnel_target(src);
        assert_eq!(target, "/.shoal/tunnel/10.0.2.1:40000");
        assert_eq!(tunnel_target(mapped), target);
        let v = sign(&key(), 2, 8080, NOW, b"GET", target.as_bytes());
        assert_eq!(
            verify(
                &key(),
                v.as_bytes(),
                8080,
                b"GET",
                target.as_bytes(),
                NOW,
                SKEW
            ),
            Ok(2)
        );
        for other in ["10.0.2.1:40001", "10.0.2.9:40000", "[2001:db8::1]:40000"] {
            let t = tunnel_target(other.parse().unwrap());
            assert_eq!(
                verify(&key(), v.as_bytes(), 8080, b"GET", t.as_bytes(), NOW, SKEW),
                Err(MemberError::BadTag),
                "{other}"
            );
        }
    }

    #[test]
    fn only_one_value_that_verifies_names_a_sender() {
        let good = sign(&key(), 3, 8080, NOW, b"GET", URL);
        let check =
            |values: &[&[u8]]| sender(values.iter().copied(), &key(), 8080, b"GET", URL, NOW, SKEW);
        assert_eq!(check(&[]), Sender::Absent);
        assert_eq!(check(&[good.as_bytes()]), Sender::Member(3));
        // Twice the same good value, or a good one beside a bad one.
        assert_eq!(check(&[good.as_bytes(), good.as_bytes()]), Sender::Forged);
        assert_eq!(check(&[good.as_bytes(), b"v1"]), Sender::Forged);
        assert_eq!(check(&[b"v1"]), Sender::Forged);
        let other_key = sign(&MemberKey::derive(&[8; 32]), 3, 8080, NOW, b"GET", URL);
        assert_eq!(check(&[other_key.as_bytes()]), Sender::Forged);
        let stale = sign(&key(), 3, 8080, NOW - SKEW - 1, b"GET", URL);
        assert_eq!(check(&[stale.as_bytes()]), Sender::Forged);
        // The sender id is verify's, whether or not it is a valid host id.
        let zero = sign(&key(), 0, 8080, NOW, b"GET", URL);
        assert_eq!(check(&[zero.as_bytes()]), Sender::Member(0));
    }

    #[test]
    fn a_signed_value_verifies_and_names_its_sender() {
        let v = sign(&key(), 3, 8080, NOW, b"GET", URL);
        assert!(v.starts_with("v1.3.1780000000000."), "{v}");
        assert_eq!(v.len(), "v1.3.1780000000000.".len() + 64);
        assert_eq!(
            verify(&key(), v.as_bytes(), 8080, b"GET", URL, NOW, SKEW),
            Ok(3)
        );
        // Within the skew either way.
        assert_eq!(
            verify(&key(), v.as_bytes(), 8080, b"GET", URL, NOW + SKEW, SKEW),
            Ok(3)
        );
        assert_eq!(
            verify(&key(), v.as_bytes(), 8080, b"GET", URL, NOW - SKEW, SKEW),
            Ok(3)
        );
        for from in [0, 255] {
            let v = sign(&key(), from, 1, 0, b"", b"");
            assert_eq!(verify(&key(), v.as_bytes(), 1, b"", b"", 0, 0), Ok(from));
        }
    }

    #[test]
    fn anything_else_signed_does_not_verify() {
        let v = sign(&key(), 3, 8080, NOW, b"GET", URL);
        let v = v.as_bytes();
        let other_key = MemberKey::derive(&[8; 32]);
        let bad = MemberError::BadTag;
        assert_eq!(
            verify(&other_key, v, 8080, b"GET", URL, NOW, SKEW),
            Err(bad)
        );
        assert_eq!(verify(&key(), v, 8081, b"GET", URL, NOW, SKEW), Err(bad));
        assert_eq!(verify(&key(), v, 8080, b"POST", URL, NOW, SKEW), Err(bad));
        assert_eq!(verify(&key(), v, 8080, b"get", URL, NOW, SKEW), Err(bad));
        assert_eq!(
            verify(
                &key(),
                v,
                8080,
                b"GET",
                b"http://www.example.com/a?c",
                NOW,
                SKEW
            ),
            Err(bad)
        );
        // Moving a byte between method and target changes the tag.
        let a = sign(&key(), 3, 8080, NOW, b"GE", b"Tx");
        assert_eq!(
            verify(&key(), a.as_bytes(), 8080, b"GET", b"x", NOW, SKEW),
            Err(bad)
        );
        // Another sender id or time in the value.
        let forged_from = String::from_utf8(v.to_vec())
            .unwrap()
            .replacen("v1.3.", "v1.4.", 1);
        assert_eq!(
            verify(&key(), forged_from.as_bytes(), 8080, b"GET", URL, NOW, SKEW),
            Err(bad)
        );
        let forged_time = String::from_utf8(v.to_vec()).unwrap().replacen(
            ".1780000000000.",
            ".1780000000001.",
            1,
        );
        assert_eq!(
            verify(&key(), forged_time.as_bytes(), 8080, b"GET", URL, NOW, SKEW),
            Err(bad)
        );
    }

    #[test]
    fn stale_and_future_values_are_refused() {
        let v = sign(&key(), 1, 80, NOW, b"GET", URL);
        assert_eq!(
            verify(&key(), v.as_bytes(), 80, b"GET", URL, NOW + SKEW + 1, SKEW),
            Err(MemberError::Stale { age_ms: SKEW + 1 })
        );
        assert_eq!(
            verify(&key(), v.as_bytes(), 80, b"GET", URL, NOW - SKEW - 1, SKEW),
            Err(MemberError::Future { ahead_ms: SKEW + 1 })
        );
        let zero = sign(&key(), 1, 80, 0, b"GET", URL);
        assert_eq!(
            verify(&key(), zero.as_bytes(), 80, b"GET", URL, u64::MAX, SKEW),
            Err(MemberError::Stale { age_ms: u64::MAX })
        );
        let max = sign(&key(), 1, 80, u64::MAX, b"GET", URL);
        assert_eq!(
            verify(&key(), max.as_bytes(), 80, b"GET", URL, u64::MAX, 0),
            Ok(1)
        );
    }

    #[test]
    fn truncated_and_garbage_values_are_malformed() {
        let v = sign(&key(), 3, 8080, NOW, b"GET", URL);
        for n in 0..v.len() {
            let r = verify(&key(), &v.as_bytes()[..n], 8080, b"GET", URL, NOW, SKEW);
            assert!(matches!(r, Err(MemberError::Malformed(_))), "{n}: {r:?}");
        }
        let upper = v.to_ascii_uppercase().replacen("V1", "v1", 1);
        for bad in [
            "",
            "v1",
            "v1...",
            "v2.3.1.00",
            "v1.256.1.",
            "v1.-1.1.",
            "v1.3.99999999999999999999.",
            "v1.3.1.2.3",
            upper.as_str(),
            &format!("{v}0"),
            &format!("{v}.0"),
            &format!(" {v}"),
        ] {
            let r = verify(&key(), bad.as_bytes(), 8080, b"GET", URL, NOW, SKEW);
            assert!(
                matches!(r, Err(MemberError::Malformed(_))),
                "{bad:?}: {r:?}"
            );
        }
    }

    #[test]
    fn debug_never_shows_the_key() {
        let text = format!("{:?}", key());
        assert_eq!(text, "MemberKey(redacted)");
        assert_eq!(MEMBER_HEADER, "shoal-member");
    }

    proptest! {
        #[test]
        fn verify_never_panics(
            value in proptest::collection::vec(any::<u8>(), 0..120),
            method in proptest::collection::vec(any::<u8>(), 0..8),
            now in any::<u64>(),
            skew in any::<u64>(),
        ) {
            let _ = verify(&key(), &value, 80, &method, URL, now, skew);
        }

        #[test]
        fn well_formed_values_verify_only_as_signed(
            from in any::<u8>(),
            time in any::<u64>(),
            now in any::<u64>(),
            skew in any::<u64>(),
            tweak in any::<u8>(),
        ) {
            let v = sign(&key(), from, 80, time, b"GET", URL);
            let r = verify(&key(), v.as_bytes(), 80, b"GET", URL, now, skew);
            if time.abs_diff(now) <= skew {
                prop_assert_eq!(r, Ok(from));
            } else {
                let skewed = matches!(r, Err(MemberError::Stale { .. } | MemberError::Future { .. }));
                prop_assert!(skewed, "{:?}", r);
            }
            let mut bytes = v.into_bytes();
            let last = bytes.len() - 1;
            let digit = HEX[usize::from(tweak % 16)];
            if bytes[last] != digit {
                bytes[last] = digit;
                prop_assert_eq!(
                    verify(&key(), &bytes, 80, b"GET", URL, now, skew),
                    Err(MemberError::BadTag)
                );
            }
        }
    }
}
