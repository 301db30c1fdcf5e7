//! Loop detection between proxies: the `Via` entry a member adds to what it
//! forwards, and whether a request has already passed this member.
//!
//! Owns: [`via_value`] and [`seen`]. Guarantees: [`seen`] reads any bytes
//! without panicking or allocating; it finds the member's own name as the
//! received-by of any `Via` entry (RFC 9110 §7.6.3) or as the cdn-id of any
//! `CDN-Loop` entry (RFC 8586), comparing names ASCII case-insensitively,
//! with or without a `:port` after the name; commas inside `Via` comments
//! and inside quoted `CDN-Loop` parameters do not split entries.

/// The `Via` entry this member adds: `1.1 NAME (shoal)`. `own_name` is the
/// member name, which configuration keeps free of blanks, commas and
/// parentheses.
pub fn via_value(own_name: &str) -> String {
    format!("1.1 {own_name} (shoal)")
}

/// Whether a request already passed the member named `own_name`: its name
/// is the received-by of an entry of one of the `Via` header values, or the
/// cdn-id of an entry of one of the `CDN-Loop` header values.
pub fn seen<'v, 'c>(
    own_name: &str,
    via_values: impl Iterator<Item = &'v [u8]>,
    cdn_loop_values: impl Iterator<Item = &'c [u8]>,
) -> bool {
    let name = own_name.as_bytes();
    if name.is_empty() {
        return false;
    }
    for value in via_values {
        if Entries::new(value, Quoting::Comments)
            .any(|e| via_received_by(e).is_some_and(|r| is_name(r, name)))
        {
            return true;
        }
    }
    for value in cdn_loop_values {
        if Entries::new(value, Quoting::Strings).any(|e| is_name(cdn_id(e), name)) {
            return true;
        }
    }
    false
}

/// Whether `token` is `name` or `name:port` (ASCII case-insensitive).
fn is_name(token: &[u8], name: &[u8]) -> bool {
    if token.len() < name.len() || !token[..name.len()].eq_ignore_ascii_case(name) {
        return false;
    }
    match &token[name.len()..] {
        [] => true,
        [b':', port @ ..] => !port.is_empty() && port.iter().all(u8::is_ascii_digit),
        _ => false,
    }
}

/// A `Via` entry's received-by: the second blank-separated word, ending at
/// a blank or the start of a comment.
fn via_received_by(entry: &[u8]) -> Option<&[u8]> {
    let entry = trim(entry);
    let protocol_end = entry.iter().position(|&b| is_blank(b))?;
    let rest = trim(&entry[protocol_end..]);
    let end = rest
        .iter()
        .position(|&b| is_blank(b) || b == b'(')
        .unwrap_or(rest.len());
    let by = &rest[..end];
    (!by.is_empty()).then_some(by)
}

/// A `CDN-Loop` entry's cdn-id: up to the first `;` or blank.
fn cdn_id(entry: &[u8]) -> &[u8] {
    let entry = trim(entry);
    let end = entry
        .iter()
        .position(|&b| b == b';' || is_blank(b))
        .unwrap_or(entry.len());
    &entry[..end]
}

/// What may hide a comma inside an entry.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Quoting {
    /// `Via`: comments `( … )`, nested, with `\` escapes inside.
    Comments,
    /// `CDN-Loop`: quoted strings `" … "` with `\` escapes inside.
    Strings,
}

/// The comma-separated entries of one header value, commas inside a
/// comment or a quoted string not splitting. Empty entries are yielded too
/// (and match nothing).
struct Entries<'a> {
    rest: Option<&'a [u8]>,
    quoting: Quoting,
}

impl<'a> Entries<'a> {
    fn new(value: &'a [u8], quoting: Quoting) -> Self {
        Self {
            rest: Some(value),
            quoting,
        }
    }
}

impl<'a> Iterator for Entries<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let rest = self.rest?;
        let mut depth = 0usize;
        let mut quoted = false;
        let mut escaped = false;
        for (i, &b) in rest.iter().enumerate() {
            if escaped {
                escaped = false;
                continue;
            }
            match (self.quoting, b) {
                (_, b'\\') if depth > 0 || quoted => escaped = true,
                (Quoting::Comments, b'(') => depth = depth.saturating_add(1),
                (Quoting::Comments, b')') => depth = depth.saturating_sub(1),
                (Quoting::Strings, b'"') => quoted = !quoted,
                (_, b',') if depth == 0 && !quoted => {
                    self.rest = Some(&rest[i + 1..]);
                    return Some(&rest[..i]);
                }
                _ => {}
            }
        }
        self.rest = None;
        Some(rest)
    }
}

fn is_blank(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

fn trim(s: &[u8]) -> &[u8] {
    let start = s.iter().position(|&b| !is_blank(b)).unwrap_or(s.len());
    let end = s
        .iter()
        .rposition(|&b| !is_blank(b))
        .map_or(start, |i| i + 1);
    &s[start..end.max(start)]
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn via(own: &str, values: &[&str]) -> bool {
        seen(own, values.iter().map(|v| v.as_bytes()), std::iter::empty())
    }

    fn cdn(own: &str, values: &[&str]) -> bool {
        seen(own, std::iter::empty(), values.iter().map(|v| v.as_bytes()))
    }

    #[test]
    fn our_own_via_entry_is_seen() {
        let v = via_value("cache1.lab.example");
        assert_eq!(v, "1.1 cache1.lab.example (shoal)");
        assert!(via("cache1.lab.example", &[&v]));
        assert!(via("CACHE1.lab.Example", &[&v]));
        assert!(!via("cache2.lab.example", &[&v]));
        assert!(!via("cache1.lab", &[&v]));
        assert!(!via("", &[&v]));
    }

    #[test]
    fn via_lists_with_tricky_spacing_comments_and_ports() {
        let me = "me.example";
        assert!(via(me, &["1.0 fred, 1.1 me.example"]));
        assert!(via(me, &["1.0 fred,1.1 me.example"]));
        assert!(via(me, &["HTTP/1.1 me.example:3128 (squid/5.7)"]));
        assert!(via(me, &["  1.1\t\tme.example\t"]));
        assert!(via(me, &["1.1 me.example(no space before comment)"]));
        assert!(via(me, &["1.1 a", "1.1 b (x), 2 me.example"]));
        assert!(via(me, &[",, ,1.1 me.example,"]));
        assert!(via(me, &["1.1 a (c, d), 1.1 me.example"]));
        assert!(via(me, &["1.1 a (nested (x, y) \\) ,), 1.1 me.example"]));
        // Only the received-by counts, never the protocol or a comment.
        assert!(!via(me, &["me.example other"]));
        assert!(!via(me, &["1.1 other (me.example)"]));
        assert!(!via(me, &["1.1 other (a, 1.1 me.example)"]));
        assert!(!via(me, &["1.1 other (unclosed, 1.1 me.example"]));
        assert!(!via(me, &["me.example"]));
        assert!(!via(me, &["1.1 me.example:"]));
        assert!(!via(me, &["1.1 me.example:31x"]));
        assert!(!via(me, &["1.1 me.examples"]));
        assert!(!via(me, &["1.1 xme.example"]));
        assert!(!via(me, &[""]));
        assert!(!via(me, &[]));
    }

    #[test]
    fn cdn_loop_entries_are_seen() {
        let me = "Me.Example";
        assert!(cdn(me, &["me.example"]));
        assert!(cdn(
            me,
            &["foo123.foocdn.example, me.example; abc=123; def=\"456\""]
        ));
        assert!(cdn(me, &["a;x=\"1, 2\" , me.example:8080"]));
        assert!(cdn(me, &["a", "me.example;p"]));
        assert!(cdn(me, &["\tme.example ; p=1"]));
        assert!(!cdn(me, &["a; x=\"me.example\""]));
        assert!(!cdn(me, &["a; x=\"1, me.example\""]));
        assert!(!cdn(me, &["a; x=\"\\\", me.example\""]));
        assert!(!cdn(me, &["a.me.example"]));
        assert!(!cdn(me, &["x=me.example"]));
        // CDN-Loop entries are not Via entries and the other way round.
        assert!(!via(me, &["me.example; p"]));
        assert!(!cdn(me, &["1.1 me.example"]));
    }

    proptest! {
        #[test]
        fn seen_never_panics_and_finds_an_appended_entry(
            via_bytes in proptest::collection::vec(any::<u8>(), 0..60),
            cdn_bytes in proptest::collection::vec(any::<u8>(), 0..60),
        ) {
            let me = "m.example";
            let _ = seen(me, [&via_bytes[..]].into_iter(), [&cdn_bytes[..]].into_iter());
            // Whatever came before, a later header line with our entry is seen.
            let ours = via_value(me);
            prop_assert!(seen(me, [&via_bytes[..], ours.as_bytes()].into_iter(), std::iter::empty()));
            prop_assert!(seen(me, std::iter::empty(), [&cdn_bytes[..], me.as_bytes()].into_iter()));
        }
    }
}
