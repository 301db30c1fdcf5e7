//! The sticky cookie: which member owns a session, when that was decided,
//! and a tag that only the cluster's members can make.
//!
//! Owns: [`CookieKey`] (derived from the cluster key), [`Owner`],
//! [`Cookie`], [`issue`], [`check`] (and [`check_remembering`] with a
//! connection's [`Verified`]), [`CookieError`], and the two header
//! scanners a proxy needs: [`cookie_values`] (a request's `Cookie` field)
//! and [`set_cookie_name`] (a response's `Set-Cookie` field).
//!
//! Guarantees:
//! - A value checks only under the key it was issued with and for the same
//!   service port; the owner and issue time it carries are then authentic,
//!   so a client can neither forge a cookie nor point one at an address of
//!   its choosing (the owner is a member name, never an address).
//! - The tag is compared in constant time; [`check`] and the scanners take
//!   any bytes, never panic and never allocate.
//! - The key never appears in `Debug` output.
//! - [`check_remembering`] answers exactly as [`check`] does: it skips the
//!   MAC only for the very bytes whose tag it verified last (a tag does not
//!   depend on the time), and checks their age every time.
//!
//! # The value
//!
//! `v1.<owner>.<issued>.<tag>`: `owner` is `h<id>` for a cluster host
//! (decimal host ID) or an out-of-cluster member's name (letters, digits,
//! `-` and `_`; see [`Owner`]), `issued` the issue time in seconds since
//! the Unix epoch (decimal), `tag` 32 lower-case hex digits: the first 16
//! bytes of HMAC-SHA256 under the [`CookieKey`] over `"sticky v1"`, the
//! service port (2 bytes, big-endian), the owner preceded by its length (1
//! byte) and `issued` (8 bytes, big-endian). Every byte is a cookie-octet
//! (RFC 6265 §4.1.1), so the value needs no quoting.
//!
//! A cookie is not a nonce: a client may replay its own cookie until it
//! expires, which gains it nothing but the session it already had.

use std::fmt;

use hmac::Mac as _;

use crate::array::member::{decimal, hmac, keyed, nibble, HmacSha256, HEX};
use crate::HostId;

/// The label the cookie key is derived with.
const LABEL: &[u8] = b"shoal sticky cookie v1";
/// What the tag is computed over first.
const DOMAIN: &[u8] = b"sticky v1";
/// Tag bytes kept (128 bits).
const TAG_BYTES: usize = 16;
/// Longest owner field.
pub const MAX_OWNER_LEN: usize = 64;
/// How far in the future an issue time may lie (members' clocks differ).
pub const MAX_FUTURE_S: u64 = 300;

/// The key cookies are tagged with: HMAC-SHA256(cluster key, `"shoal
/// sticky cookie v1"`), unrelated to every other key derived from the
/// cluster key (the member header's among them). Like the member key it
/// holds the HMAC state already keyed, cloned per [`issue`] and [`check`].
#[derive(Clone)]
pub struct CookieKey(HmacSha256);

impl CookieKey {
    /// Derives the cookie key from the cluster key (any length).
    pub fn derive(cluster_key: &[u8]) -> CookieKey {
        CookieKey(keyed(&hmac(cluster_key, |m| m.update(LABEL))))
    }
}

impl fmt::Debug for CookieKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CookieKey(redacted)")
    }
}

/// The member a cookie names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Owner<'a> {
    /// A host of this cluster.
    Host(HostId),
    /// An out-of-cluster member (`ocf`), by name: 1 to [`MAX_OWNER_LEN`]
    /// letters, digits, `-` and `_`, and not of the form `h<digits>`.
    Named(&'a [u8]),
}

impl Owner<'_> {
    /// Whether `name` can name an out-of-cluster member.
    pub fn valid_name(name: &[u8]) -> bool {
        !name.is_empty()
            && name.len() <= MAX_OWNER_LEN
            && name
                .iter()
                .all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            && !(name[0] == b'h' && name.len() > 1 && name[1..].iter().all(u8::is_ascii_digit))
    }

    fn parse(field: &[u8]) -> Option<Owner<'_>> {
        if let Some(digits) = field.strip_prefix(b"h") {
            if !digits.is_empty() && digits.iter().all(u8::is_ascii_digit) {
                if digits.len() > 2 || digits[0] == b'0' {
                    return None;
                }
                let id = digits.iter().fold(0u8, |n, d| n * 10 + (d - b'0'));
                return HostId::new(id).map(Owner::Host);
            }
        }
        Owner::valid_name(field).then_some(Owner::Named(field))
    }

    fn write(&self, out: &mut String) {
        match self {
            Owner::Host(h) => {
                out.push('h');
                out.push_str(&h.get().to_string());
            }
            Owner::Named(n) => out.push_str(&String::from_utf8_lossy(n)),
        }
    }
}

/// A cookie that checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cookie<'a> {
    /// The owning member.
    pub owner: Owner<'a>,
    /// When it was issued, seconds since the Unix epoch.
    pub issued_s: u64,
}

/// Why a cookie value does not check. Every kind is treated as no cookie,
/// and counted ([`CookieError::counter`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CookieError {
    /// Not `v1.<owner>.<issued>.<tag>`; the text says which part.
    #[error("malformed sticky cookie: {0}")]
    Malformed(&'static str),
    /// The tag does not match: another key, port, owner or time.
    #[error("sticky cookie does not authenticate")]
    BadTag,
    /// Older than the cookie's maximum age.
    #[error("sticky cookie expired {age_s} s after issue")]
    Expired {
        /// Its age.
        age_s: u64,
    },
    /// Issued more than [`MAX_FUTURE_S`] after now.
    #[error("sticky cookie issued in the future")]
    Future,
}

impl CookieError {
    /// The error counter: `bad_cookie` (malformed, forged, from the
    /// future) or `expired_cookie`.
    pub fn counter(&self) -> &'static str {
        match self {
            CookieError::Expired { .. } => "expired_cookie",
            _ => "bad_cookie",
        }
    }
}

/// The cookie value naming `owner`, issued at `now_s` for the service on
/// `port`.
pub fn issue(key: &CookieKey, owner: Owner<'_>, port: u16, now_s: u64) -> String {
    let mut out = String::with_capacity(3 + MAX_OWNER_LEN + 22 + 2 * TAG_BYTES);
    out.push_str("v1.");
    owner.write(&mut out);
    let owner_len = out.len() - 3;
    out.push('.');
    out.push_str(&now_s.to_string());
    out.push('.');
    let tag = tag(key, port, &out.as_bytes()[3..3 + owner_len], now_s);
    for b in &tag[..TAG_BYTES] {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0xf)]));
    }
    out
}

/// Checks a cookie `value` received by the service on `port` at `now_s`:
/// the tag first (so a forged value is [`CookieError::BadTag`] whatever its
/// time), then its age against `max_age_s`.
pub fn check<'v>(
    key: &CookieKey,
    value: &'v [u8],
    port: u16,
    now_s: u64,
    max_age_s: u64,
) -> Result<Cookie<'v>, CookieError> {
    check_remembering(key, value, port, now_s, max_age_s, &mut Verified::default())
}

/// The last cookie value whose tag verified on one client connection
/// (a browser sends the same value with every request of a session).
#[derive(Clone)]
pub struct Verified {
    len: u8,
    bytes: [u8; MAX_VALUE_LEN],
}

/// Longest value that can check: `v1.`, owner, `.`, up to 20 digits,
/// `.`, the tag's hex digits.
const MAX_VALUE_LEN: usize = 3 + MAX_OWNER_LEN + 1 + 20 + 1 + 2 * TAG_BYTES;

impl Default for Verified {
    fn default() -> Verified {
        Verified {
            len: 0,
            bytes: [0; MAX_VALUE_LEN],
        }
    }
}

impl fmt::Debug for Verified {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verified").field("len", &self.len).finish()
    }
}

impl Verified {
    fn holds(&self, value: &[u8]) -> bool {
        self.len > 0 && self.bytes.get(..usize::from(self.len)) == Some(value)
    }

    fn remember(&mut self, value: &[u8]) {
        if let (Some(slot), Ok(len)) =
            (self.bytes.get_mut(..value.len()), u8::try_from(value.len()))
        {
            slot.copy_from_slice(value);
            self.len = len;
        }
    }
}

/// [`check`], skipping the MAC when `value` is the value `verified` last
/// verified, and remembering a value whose tag verifies.
pub fn check_remembering<'v>(
    key: &CookieKey,
    value: &'v [u8],
    port: u16,
    now_s: u64,
    max_age_s: u64,
    verified: &mut Verified,
) -> Result<Cookie<'v>, CookieError> {
    let mut fields = value.split(|&b| b == b'.');
    let (Some(version), Some(owner), Some(issued), Some(hex), None) = (
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
    ) else {
        return Err(CookieError::Malformed("not four dot-separated fields"));
    };
    if version != b"v1" {
        return Err(CookieError::Malformed("unknown version"));
    }
    let parsed = Owner::parse(owner).ok_or(CookieError::Malformed("owner"))?;
    let issued_s = decimal(issued, 20).ok_or(CookieError::Malformed("issue time"))?;
    if hex.len() != 2 * TAG_BYTES {
        return Err(CookieError::Malformed("tag length"));
    }
    let mut got = [0u8; TAG_BYTES];
    for (out, pair) in got.iter_mut().zip(hex.chunks_exact(2)) {
        let (Some(hi), Some(lo)) = (nibble(pair[0]), nibble(pair[1])) else {
            return Err(CookieError::Malformed("tag digits"));
        };
        *out = hi << 4 | lo;
    }
    if !verified.holds(value) {
        let mut mac = key.0.clone();
        feed(&mut mac, port, owner, issued_s);
        mac.verify_truncated_left(&got)
            .map_err(|_| CookieError::BadTag)?;
        verified.remember(value);
    }
    if issued_s > now_s && issued_s - now_s > MAX_FUTURE_S {
        return Err(CookieError::Future);
    }
    let age_s = now_s.saturating_sub(issued_s);
    if age_s > max_age_s {
        return Err(CookieError::Expired { age_s });
    }
    Ok(Cookie {
        owner: parsed,
        issued_s,
    })
}

/// The values of every cookie named `name` in one `Cookie` field value
/// (`a=1; b=2`, RFC 6265 §4.2.1), in order; names compare exactly, a value
/// in double quotes is returned without them. Bounded by the field's
/// length; malformed pairs are skipped.
pub fn cookie_values<'a>(field: &'a [u8], name: &'a [u8]) -> impl Iterator<Item = &'a [u8]> + 'a {
    field.split(|&b| b == b';').filter_map(move |pair| {
        let pair = trim(pair);
        let eq = pair.iter().position(|&b| b == b'=')?;
        if trim(&pair[..eq]) != name {
            return None;
        }
        let v = trim(&pair[eq + 1..]);
        Some(match v {
            [b'"', inner @ .., b'"'] => inner,
            v => v,
        })
    })
}

/// The cookie name a `Set-Cookie` field value sets (RFC 6265 §5.2), or
/// `None` when it has no `=` in its first pair or an empty name.
pub fn set_cookie_name(field: &[u8]) -> Option<&[u8]> {
    let pair = field.split(|&b| b == b';').next()?;
    let eq = pair.iter().position(|&b| b == b'=')?;
    let name = trim(&pair[..eq]);
    (!name.is_empty()).then_some(name)
}

fn trim(s: &[u8]) -> &[u8] {
    let start = s.iter().position(|b| !matches!(b, b' ' | b'\t'));
    let Some(start) = start else {
        return &[];
    };
    let end = s
        .iter()
        .rposition(|b| !matches!(b, b' ' | b'\t'))
        .unwrap_or(start);
    &s[start..=end]
}

fn feed(mac: &mut HmacSha256, port: u16, owner: &[u8], issued_s: u64) {
    mac.update(DOMAIN);
    mac.update(&port.to_be_bytes());
    mac.update(&[u8::try_from(owner.len()).unwrap_or(u8::MAX)]);
    mac.update(owner);
    mac.update(&issued_s.to_be_bytes());
}

fn tag(key: &CookieKey, port: u16, owner: &[u8], issued_s: u64) -> [u8; 32] {
    let mut mac = key.0.clone();
    feed(&mut mac, port, owner, issued_s);
    mac.finalize().into_bytes().into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const NOW: u64 = 1_780_000_000;
    const AGE: u64 = 3_600;

    fn key() -> CookieKey {
        CookieKey::derive(&[7; 32])
    }

    fn h(id: u8) -> Owner<'static> {
        Owner::Host(HostId::new(id).unwrap())
    }

    #[test]
    fn a_remembered_value_answers_as_check_does() {
        let (k, mut memo) = (key(), Verified::default());
        let good = issue(&k, h(3), 80, NOW);
        let mut forged = good.clone().into_bytes();
        let last = forged.len() - 1;
        forged[last] = if forged[last] == b'0' { b'1' } else { b'0' };
        for round in 0..2 {
            // Remembered after the first round: same answers, ages still
            // checked.
            let c = check_remembering(&k, good.as_bytes(), 80, NOW, AGE, &mut memo).unwrap();
            assert_eq!(c.owner, h(3), "round {round}");
            assert!(matches!(
                check_remembering(&k, good.as_bytes(), 80, NOW + AGE + 1, AGE, &mut memo),
                Err(CookieError::Expired { .. })
            ));
            assert_eq!(
                check_remembering(&k, &forged, 80, NOW, AGE, &mut memo).unwrap_err(),
                CookieError::BadTag
            );
            // Another port's key input: the remembered bytes do not carry
            // over to a value that differs.
            let other = issue(&k, h(3), 81, NOW);
            assert_eq!(
                check_remembering(&k, other.as_bytes(), 80, NOW, AGE, &mut memo).unwrap_err(),
                CookieError::BadTag
            );
        }
        // A failed value is never remembered.
        let mut fresh = Verified::default();
        let _ = check_remembering(&k, &forged, 80, NOW, AGE, &mut fresh);
        assert!(!fresh.holds(&forged));
        assert!(!fresh.holds(&[]));
    }

    #[test]
    fn an_issued_cookie_checks_and_names_its_owner() {
        let v = issue(&key(), h(3), 80, NOW);
        assert!(v.starts_with("v1.h3.1780000000."), "{v}");
        assert_eq!(v.len(), "v1.h3.1780000000.".len() + 32);
        let c = check(&key(), v.as_bytes(), 80, NOW + AGE, AGE).unwrap();
        assert_eq!(c.owner, h(3));
        assert_eq!(c.issued_s, NOW);
        let named = issue(&key(), Owner::Named(b"web-b_2"), 80, NOW);
        assert_eq!(
            check(&key(), named.as_bytes(), 80, NOW, AGE).unwrap().owner,
            Owner::Named(b"web-b_2")
        );
        for id in [1, 64] {
            let v = issue(&key(), h(id), 1, 0);
            assert_eq!(check(&key(), v.as_bytes(), 1, 0, 0).unwrap().owner, h(id));
        }
    }

    #[test]
    fn forged_moved_and_foreign_cookies_do_not_check() {
        let v = issue(&key(), h(3), 80, NOW);
        let bad = Err(CookieError::BadTag);
        assert_eq!(
            check(&CookieKey::derive(&[8; 32]), v.as_bytes(), 80, NOW, AGE),
            bad
        );
        assert_eq!(check(&key(), v.as_bytes(), 81, NOW, AGE), bad);
        let moved = v.replacen("v1.h3.", "v1.h4.", 1);
        assert_eq!(check(&key(), moved.as_bytes(), 80, NOW, AGE), bad);
        let renamed = v.replacen("v1.h3.", "v1.evil.", 1);
        assert_eq!(check(&key(), renamed.as_bytes(), 80, NOW, AGE), bad);
        let retimed = v.replacen(".1780000000.", ".1780000001.", 1);
        assert_eq!(check(&key(), retimed.as_bytes(), 80, NOW, AGE), bad);
        // The member header key and the cookie key differ.
        let zeros = format!("v1.h3.{NOW}.{}", "0".repeat(32));
        assert_eq!(check(&key(), zeros.as_bytes(), 80, NOW, AGE), bad);
    }

    #[test]
    fn expired_and_future_cookies_are_refused() {
        let v = issue(&key(), h(1), 80, NOW);
        assert_eq!(
            check(&key(), v.as_bytes(), 80, NOW + AGE + 1, AGE),
            Err(CookieError::Expired { age_s: AGE + 1 })
        );
        assert_eq!(
            check(&key(), v.as_bytes(), 80, NOW - MAX_FUTURE_S - 1, AGE),
            Err(CookieError::Future)
        );
        assert!(check(&key(), v.as_bytes(), 80, NOW - MAX_FUTURE_S, AGE).is_ok());
        assert_eq!(
            CookieError::Expired { age_s: 1 }.counter(),
            "expired_cookie"
        );
        assert_eq!(CookieError::BadTag.counter(), "bad_cookie");
    }

    #[test]
    fn truncated_and_garbage_values_are_malformed() {
        let v = issue(&key(), h(3), 80, NOW);
        for n in 0..v.len() {
            let r = check(&key(), &v.as_bytes()[..n], 80, NOW, AGE);
            assert!(matches!(r, Err(CookieError::Malformed(_))), "{n}: {r:?}");
        }
        for bad in [
            "",
            "v1",
            "v1...",
            "v2.h3.1.",
            "v1.h0.1.",
            "v1.h65.1.",
            "v1.h03.1.",
            "v1.h.1.",
            "v1.a b.1.",
            "v1.h3.x.",
            "v1.h3.1.2.3",
        ] {
            let r = check(&key(), bad.as_bytes(), 80, NOW, AGE);
            assert!(
                matches!(r, Err(CookieError::Malformed(_))),
                "{bad:?}: {r:?}"
            );
        }
        assert!(!Owner::valid_name(b"h12"));
        assert!(Owner::valid_name(b"h12x"));
        assert!(Owner::valid_name(b"h"));
        assert!(!Owner::valid_name(b"a.b"));
    }

    #[test]
    fn cookie_fields_are_scanned_by_name() {
        let field = b"a=1; RQFW=v1.x ;RQFWX=2; RQFW=\"q\"; junk; =3; RQFW=";
        let got: Vec<&[u8]> = cookie_values(field, b"RQFW").collect();
        assert_eq!(got, [&b"v1.x"[..], b"q", b""]);
        assert_eq!(cookie_values(b"", b"RQFW").count(), 0);
        assert_eq!(cookie_values(b"rqfw=1", b"RQFW").count(), 0);
        assert_eq!(
            set_cookie_name(b"JSESSIONID=abc; Path=/"),
            Some(&b"JSESSIONID"[..])
        );
        assert_eq!(set_cookie_name(b" PHPSESSID = x"), Some(&b"PHPSESSID"[..]));
        assert_eq!(set_cookie_name(b"novalue; a=b"), None);
        assert_eq!(set_cookie_name(b"=x"), None);
    }

    #[test]
    fn debug_never_shows_the_key() {
        assert_eq!(format!("{:?}", key()), "CookieKey(redacted)");
    }

    proptest! {
        #[test]
        fn check_never_panics(value in proptest::collection::vec(any::<u8>(), 0..120), now in any::<u64>(), age in any::<u64>()) {
            let _ = check(&key(), &value, 80, now, age);
            let _ = cookie_values(&value, b"RQFW").count();
            let _ = set_cookie_name(&value);
        }

        #[test]
        fn issued_cookies_check_only_as_issued(id in 1u8..=64, issued in 0u64..u64::MAX / 2, later in 0u64..10_000, tweak in any::<u8>()) {
            let v = issue(&key(), h(id), 443, issued);
            let c = check(&key(), v.as_bytes(), 443, issued + later, 10_000).unwrap();
            prop_assert_eq!(c.owner, h(id));
            // A connection that verified `v` answers as `check` for it and
            // for anything else.
            let mut memo = Verified::default();
            check_remembering(&key(), v.as_bytes(), 443, issued, 10_000, &mut memo).unwrap();
            prop_assert_eq!(
                check_remembering(&key(), v.as_bytes(), 443, issued + later, 10_000, &mut memo),
                check(&key(), v.as_bytes(), 443, issued + later, 10_000)
            );
            let mut bytes = v.into_bytes();
            let last = bytes.len() - 1;
            let digit = HEX[usize::from(tweak % 16)];
            if bytes[last] != digit {
                bytes[last] = digit;
                prop_assert_eq!(check(&key(), &bytes, 443, issued, 10_000), Err(CookieError::BadTag));
                prop_assert_eq!(
                    check_remembering(&key(), &bytes, 443, issued, 10_000, &mut memo),
                    Err(CookieError::BadTag)
                );
            }
        }
    }
}
