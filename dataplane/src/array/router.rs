//! The CARP route decision: a request target in, a decision out.
//!
//! Owns: [`DomainPattern`] (the `exceptions` and `direct` host patterns),
//! [`Router`] and [`Decision`]. Guarantees: [`Router::decide`] is a pure
//! function of the router and the target; it never allocates; `direct`
//! patterns are checked before `exceptions`, and both before hashing, in
//! the same order the PAC script checks them.

use std::fmt;

use super::carp::{Carp, Order};
use super::target::RequestTarget;

/// A host-name pattern: `example.com` (that host only), `*.example.com`
/// (any host under it, not the name itself), or `*` (every host). Matching
/// ignores ASCII case.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct DomainPattern {
    /// Lower-cased; for `*.x` the stored suffix is `.x`; `*` is stored as
    /// the empty suffix.
    text: String,
    suffix: bool,
}

/// Why a pattern is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    /// Empty pattern.
    #[error("an empty domain pattern")]
    Empty,
    /// A `*` anywhere but a leading `*.` (or alone).
    #[error("{0:?}: `*` is allowed only as a leading `*.` or alone")]
    Wildcard(String),
    /// A character a host name cannot hold.
    #[error("{0:?}: only letters, digits, `-`, `_`, `.`, `:`, `[` and `]` are allowed")]
    Character(String),
}

impl DomainPattern {
    /// Parses a pattern.
    pub fn parse(text: &str) -> Result<Self, PatternError> {
        if text.is_empty() {
            return Err(PatternError::Empty);
        }
        if text == "*" {
            return Ok(Self {
                text: String::new(),
                suffix: true,
            });
        }
        let (rest, suffix) = match text.strip_prefix("*.") {
            Some(rest) => (rest, true),
            None => (text, false),
        };
        if rest.contains('*') || rest.is_empty() {
            return Err(PatternError::Wildcard(text.into()));
        }
        if !rest.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':' | b'[' | b']')
        }) {
            return Err(PatternError::Character(text.into()));
        }
        let lower = rest.to_ascii_lowercase();
        Ok(Self {
            text: if suffix { format!(".{lower}") } else { lower },
            suffix,
        })
    }

    /// Whether `host` matches (ASCII case-insensitive).
    pub fn matches(&self, host: &[u8]) -> bool {
        let t = self.text.as_bytes();
        if self.suffix {
            host.len() > t.len() && host[host.len() - t.len()..].eq_ignore_ascii_case(t)
                || t.is_empty()
        } else {
            host.eq_ignore_ascii_case(t)
        }
    }

    /// `true` for `*.x` and `*`; the text is then the suffix (`.x`, or
    /// empty for `*`).
    pub fn is_suffix(&self) -> bool {
        self.suffix
    }

    /// The lower-cased host, or suffix for a wildcard pattern.
    pub fn text(&self) -> &str {
        &self.text
    }
}

impl fmt::Display for DomainPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.suffix, self.text.as_str()) {
            (true, "") => f.write_str("*"),
            (true, t) => write!(f, "*{t}"),
            (false, t) => f.write_str(t),
        }
    }
}

impl fmt::Debug for DomainPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DomainPattern({self})")
    }
}

/// What to do with one request.
#[derive(Debug)]
#[allow(
    clippy::large_enum_variant,
    reason = "the order lives on the caller's stack: boxing it would allocate per decision"
)]
pub enum Decision<'r> {
    /// The host matches a `direct` pattern: the PAC sends it DIRECT; a
    /// member that receives it anyway serves it itself.
    Direct,
    /// The host matches an `exceptions` pattern: the receiving member
    /// serves it, never routed (TMG's CARPExceptions).
    Exception,
    /// The owner, then its fallbacks, members marked down skipped.
    Route(Order<'r>),
}

/// A CARP service's routing: the member set and the host patterns.
#[derive(Clone, Debug, PartialEq)]
pub struct Router {
    /// The member set.
    pub carp: Carp,
    /// Hosts served by the receiving member.
    pub exceptions: Vec<DomainPattern>,
    /// Hosts the PAC sends DIRECT.
    pub direct: Vec<DomainPattern>,
}

impl Router {
    /// A router over `carp` with no patterns.
    pub fn new(carp: Carp) -> Self {
        Self {
            carp,
            exceptions: Vec::new(),
            direct: Vec::new(),
        }
    }

    /// Decides `target`.
    #[inline]
    pub fn decide(&self, target: &RequestTarget<'_>) -> Decision<'_> {
        let host = target.host();
        if self.direct.iter().any(|p| p.matches(host)) {
            Decision::Direct
        } else if self.exceptions.iter().any(|p| p.matches(host)) {
            Decision::Exception
        } else {
            Decision::Route(self.carp.order(target))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::array::carp::{HashMode, MemberSpec};
    use crate::array::target::KeyParts;

    #[test]
    fn patterns_match_exact_hosts_and_suffixes_ignoring_case() {
        let exact = DomainPattern::parse("Example.COM").unwrap();
        assert!(exact.matches(b"example.com"));
        assert!(!exact.matches(b"www.example.com"));
        let sub = DomainPattern::parse("*.example.com").unwrap();
        assert!(sub.matches(b"WWW.Example.com"));
        assert!(!sub.matches(b"example.com"));
        assert!(!sub.matches(b"badexample.com"));
        assert!(DomainPattern::parse("*").unwrap().matches(b"any"));
        assert_eq!(sub.to_string(), "*.example.com");
        for bad in ["", "a.*.b", "*.", "a b", "**"] {
            assert!(DomainPattern::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn direct_beats_exceptions_beats_routing() {
        let carp = Carp::new(
            HashMode::Spec,
            KeyParts::ALL,
            &[MemberSpec::new("a", 1), MemberSpec::new("b", 1)],
        )
        .unwrap();
        let mut r = Router::new(carp);
        r.exceptions.push(DomainPattern::parse("*.corp").unwrap());
        r.direct.push(DomainPattern::parse("intra.corp").unwrap());
        let t = |u: &'static str| RequestTarget::parse_absolute(u.as_bytes()).unwrap();
        assert!(matches!(
            r.decide(&t("http://intra.corp/")),
            Decision::Direct
        ));
        assert!(matches!(
            r.decide(&t("http://x.corp/")),
            Decision::Exception
        ));
        match r.decide(&t("http://x.org/")) {
            Decision::Route(order) => assert_eq!(order.count(), 2),
            other => panic!("{other:?}"),
        }
    }
}
