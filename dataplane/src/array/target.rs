//! The routing key: a borrowed view of a request's URL parts, and the exact
//! bytes each hash mode feeds from it.
//!
//! Owns: [`RequestTarget`] (scheme, host, port, path, query borrowed from a
//! request head or a URL), [`KeyParts`] (which of them are hashed) and the
//! key layouts of [`KeyStyle`]. Guarantees: parsing never allocates and
//! never panics; a target that parses has a non-empty host; the key bytes
//! are a pure function of the target, the parts and the style, fed to a
//! closure without allocation.
//!
//! # Key layouts
//!
//! `Canonical` (`spec`, `hrw`): the parts in URL order, each only when
//! selected: `scheme "://"` (lower-cased), `host` (lower-cased), `":" port`
//! (only when explicit and not the scheme's default), `path` (`/` when
//! empty), `"?" query` (when the URL has a `?`). With every part this is the
//! URL as a browser normalises it, so `http://www.squid-cache.org/` hashes to
//! the published 0x16073a01. A CONNECT target (`host:port`) is keyed as
//! `https://host[:port]/`, which is what browsers hand a PAC script for an
//! `https` URL.
//!
//! `Squid` (`squid`): with every part, Squid's effective request URI, the
//! canonical layout above (CONNECT: `host:port`); with a subset, Squid's
//! `carp-key` layout: `scheme "://"`, `host`, `":" port` (always, the
//! scheme's default included), path without query, `"?" query`.
//!
//! Case: scheme and host are lower-cased (draft §3.1; Squid lower-cases the
//! host when it parses a URL); path and query are hashed as received, no
//! percent-decoding.

use std::fmt;

/// One URL part a routing key may include.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KeyPart {
    /// `http`, `https`, ...
    Scheme,
    /// The host name or address literal.
    Host,
    /// The port.
    Port,
    /// The path, without the query.
    Path,
    /// The query, without the `?`.
    Query,
}

impl KeyPart {
    /// Every part with its configuration name, in URL order.
    pub const NAMES: &'static [(&'static str, KeyPart)] = &[
        ("scheme", KeyPart::Scheme),
        ("host", KeyPart::Host),
        ("port", KeyPart::Port),
        ("path", KeyPart::Path),
        ("query", KeyPart::Query),
    ];

    fn bit(self) -> u8 {
        1 << self as u8
    }
}

/// The set of URL parts hashed.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyParts(u8);

impl KeyParts {
    /// Every part: the whole URL (the default).
    pub const ALL: KeyParts = KeyParts(0b1_1111);
    /// The host only (how ISA/TMG route).
    pub const HOST: KeyParts = KeyParts(1 << KeyPart::Host as u8);
    /// No part.
    pub const NONE: KeyParts = KeyParts(0);

    /// Whether `part` is hashed.
    pub fn contains(self, part: KeyPart) -> bool {
        self.0 & part.bit() != 0
    }

    /// This set with `part` added.
    pub fn with(self, part: KeyPart) -> KeyParts {
        KeyParts(self.0 | part.bit())
    }

    /// Whether no part is selected.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Parses a comma-separated list of part names (`host,path`) or `all`.
    pub fn parse_list(list: &str) -> Result<KeyParts, String> {
        if list.trim() == "all" {
            return Ok(KeyParts::ALL);
        }
        let mut parts = KeyParts::NONE;
        for name in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let part = KeyPart::NAMES
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, p)| *p)
                .ok_or_else(|| {
                    format!("unknown URL part {name:?}; expected scheme, host, port, path, query")
                })?;
            parts = parts.with(part);
        }
        if parts.is_empty() {
            return Err("no URL part named".into());
        }
        Ok(parts)
    }

    /// The part names, in URL order.
    pub fn names(self) -> impl Iterator<Item = &'static str> {
        KeyPart::NAMES
            .iter()
            .filter(move |(_, p)| self.contains(*p))
            .map(|(n, _)| *n)
    }
}

impl Default for KeyParts {
    fn default() -> Self {
        KeyParts::ALL
    }
}

impl fmt::Debug for KeyParts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.names()).finish()
    }
}

/// How key bytes are laid out (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KeyStyle {
    /// The normalised URL (`spec`, `hrw`).
    Canonical,
    /// Squid's effective request URI or `carp-key` layout (`squid`).
    Squid,
}

/// Why a request target or head does not give a routing key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    /// No `scheme://` in an absolute URL.
    #[error("not an absolute URL (no scheme://)")]
    NoScheme,
    /// The scheme has characters RFC 3986 does not allow.
    #[error("invalid scheme")]
    BadScheme,
    /// The authority has no host.
    #[error("no host")]
    NoHost,
    /// The port is not a number in 0..=65535.
    #[error("invalid port")]
    BadPort,
    /// The host has bytes a host name cannot hold.
    #[error("invalid host")]
    BadHost,
    /// The request line is not `METHOD SP target SP HTTP/x.y`.
    #[error("malformed request line")]
    BadRequestLine,
    /// An origin-form request without a `Host` header.
    #[error("origin-form request without a Host header")]
    NoHostHeader,
    /// The head does not end in CRLF CRLF within the bytes given.
    #[error("incomplete request head")]
    Incomplete,
}

/// A request's URL parts, borrowed from its head or URL.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestTarget<'a> {
    scheme: &'a [u8],
    host: &'a [u8],
    port: Option<u16>,
    path: &'a [u8],
    query: Option<&'a [u8]>,
    authority_form: bool,
}

/// The default port of a scheme (case-insensitive); 0 when unknown.
pub fn default_port(scheme: &[u8]) -> u16 {
    const PORTS: [(&[u8], u16); 5] = [
        (b"http", 80),
        (b"https", 443),
        (b"ftp", 21),
        (b"ws", 80),
        (b"wss", 443),
    ];
    PORTS
        .iter()
        .find(|(s, _)| s.eq_ignore_ascii_case(scheme))
        .map_or(0, |(_, p)| *p)
}

impl<'a> RequestTarget<'a> {
    /// A target from parts already split by an HTTP parser. `host` must be
    /// non-empty and hold no `/`, `?`, `#`, `@` or whitespace.
    pub fn from_parts(
        scheme: &'a [u8],
        host: &'a [u8],
        port: Option<u16>,
        path: &'a [u8],
        query: Option<&'a [u8]>,
    ) -> Result<Self, TargetError> {
        check_scheme(scheme)?;
        check_host(host)?;
        Ok(Self {
            scheme,
            host,
            port,
            path,
            query,
            authority_form: false,
        })
    }

    /// Parses an absolute URL, `scheme://[userinfo@]host[:port][/path][?query][#fragment]`.
    /// The fragment is dropped; userinfo is dropped.
    pub fn parse_absolute(url: &'a [u8]) -> Result<Self, TargetError> {
        let sep = find(url, b"://").ok_or(TargetError::NoScheme)?;
        let scheme = &url[..sep];
        check_scheme(scheme)?;
        let rest = &url[sep + 3..];
        let auth_end = rest
            .iter()
            .position(|&b| b == b'/' || b == b'?' || b == b'#')
            .unwrap_or(rest.len());
        let (host, port) = split_authority(&rest[..auth_end])?;
        let tail = &rest[auth_end..];
        let tail = match tail.iter().position(|&b| b == b'#') {
            Some(i) => &tail[..i],
            None => tail,
        };
        let (path, query) = split_query(tail);
        Ok(Self {
            scheme,
            host,
            port,
            path,
            query,
            authority_form: false,
        })
    }

    /// Parses an authority-form target (`CONNECT host:port`).
    pub fn parse_authority(authority: &'a [u8]) -> Result<Self, TargetError> {
        let (host, port) = split_authority(authority)?;
        Ok(Self {
            scheme: b"https",
            host,
            port: Some(port.ok_or(TargetError::BadPort)?),
            path: b"",
            query: None,
            authority_form: true,
        })
    }

    /// The target of an HTTP/1.x request head: absolute-form,
    /// authority-form (`CONNECT`), or origin-form with the `Host` header
    /// (scheme `default_scheme`). Reads the request line and header lines up
    /// to the blank line; never allocates.
    pub fn from_head(head: &'a [u8], default_scheme: &'a [u8]) -> Result<Self, TargetError> {
        let mut lines = Lines { rest: head };
        let line = lines.next().ok_or(TargetError::Incomplete)?;
        let mut fields = line.split(|&b| b == b' ');
        let method = fields.next().ok_or(TargetError::BadRequestLine)?;
        let target = fields.next().ok_or(TargetError::BadRequestLine)?;
        let version = fields.next().ok_or(TargetError::BadRequestLine)?;
        if method.is_empty()
            || target.is_empty()
            || fields.next().is_some()
            || !version.starts_with(b"HTTP/")
        {
            return Err(TargetError::BadRequestLine);
        }
        if method == b"CONNECT" {
            return Self::parse_authority(target);
        }
        if target[0] != b'/' {
            return Self::parse_absolute(target);
        }
        let mut host_header = None;
        let mut ended = false;
        for line in lines.by_ref() {
            if line.is_empty() {
                ended = true;
                break;
            }
            if let Some(colon) = line.iter().position(|&b| b == b':') {
                if line[..colon].eq_ignore_ascii_case(b"host") && host_header.is_none() {
                    host_header = Some(trim(&line[colon + 1..]));
                }
            }
        }
        if !ended {
            return Err(TargetError::Incomplete);
        }
        Self::parse_origin(
            target,
            host_header.ok_or(TargetError::NoHostHeader)?,
            default_scheme,
        )
    }

    /// An origin-form target (`/path?query`, a fragment dropped) with the
    /// authority from a `Host` header value (`host[:port]`, surrounding
    /// blanks ignored; an empty port is no port; a `userinfo@` prefix is
    /// dropped as in an absolute URL) and `scheme`.
    pub fn parse_origin(
        target: &'a [u8],
        host_header: &'a [u8],
        scheme: &'a [u8],
    ) -> Result<Self, TargetError> {
        check_scheme(scheme)?;
        let (host, port) = split_authority(trim(host_header))?;
        let target = match target.iter().position(|&b| b == b'#') {
            Some(i) => &target[..i],
            None => target,
        };
        let (path, query) = split_query(target);
        Ok(Self {
            scheme,
            host,
            port,
            path,
            query,
            authority_form: false,
        })
    }

    /// The scheme as received.
    pub fn scheme(&self) -> &'a [u8] {
        self.scheme
    }

    /// The host as received (brackets kept for an IPv6 literal).
    pub fn host(&self) -> &'a [u8] {
        self.host
    }

    /// The explicit port, if any.
    pub fn port(&self) -> Option<u16> {
        self.port
    }

    /// The path as received (may be empty).
    pub fn path(&self) -> &'a [u8] {
        self.path
    }

    /// The query without its `?`, when the URL has a `?`.
    pub fn query(&self) -> Option<&'a [u8]> {
        self.query
    }

    /// Whether this is a CONNECT (authority-form) target.
    pub fn is_authority_form(&self) -> bool {
        self.authority_form
    }

    /// Feeds the key bytes of `parts` in `style` to `sink` (see the module
    /// docs). `KeyParts::NONE` feeds the whole URL as `ALL` does.
    pub fn feed_key(&self, parts: KeyParts, style: KeyStyle, sink: &mut impl FnMut(u8)) {
        let parts = if parts.is_empty() {
            KeyParts::ALL
        } else {
            parts
        };
        let port = self.port.filter(|&p| p != default_port(self.scheme));
        if style == KeyStyle::Squid && self.authority_form && parts == KeyParts::ALL {
            lower(self.host, sink);
            sink(b':');
            decimal(self.port.unwrap_or(0), sink);
            return;
        }
        if style == KeyStyle::Canonical || parts == KeyParts::ALL {
            if parts.contains(KeyPart::Scheme) {
                lower(self.scheme, sink);
                bytes(b"://", sink);
            }
            if parts.contains(KeyPart::Host) {
                lower(self.host, sink);
            }
            if let (true, Some(p)) = (parts.contains(KeyPart::Port), port) {
                sink(b':');
                decimal(p, sink);
            }
            if parts.contains(KeyPart::Path) {
                if self.path.is_empty() {
                    sink(b'/');
                } else {
                    bytes(self.path, sink);
                }
            }
            if let (true, Some(q)) = (parts.contains(KeyPart::Query), self.query) {
                sink(b'?');
                bytes(q, sink);
            }
            return;
        }
        // Squid's carp-key layout.
        if parts.contains(KeyPart::Scheme) {
            lower(self.scheme, sink);
            bytes(b"://", sink);
        }
        if parts.contains(KeyPart::Host) {
            lower(self.host, sink);
        }
        if parts.contains(KeyPart::Port) {
            sink(b':');
            decimal(self.port.unwrap_or_else(|| default_port(self.scheme)), sink);
        }
        if parts.contains(KeyPart::Path) {
            if self.path.is_empty() {
                sink(b'/');
            } else {
                bytes(self.path, sink);
            }
        }
        if let (true, Some(q)) = (parts.contains(KeyPart::Query), self.query) {
            sink(b'?');
            bytes(q, sink);
        }
    }

    /// The key bytes as a `Vec` (tests and tools; the router never calls it).
    pub fn key_bytes(&self, parts: KeyParts, style: KeyStyle) -> Vec<u8> {
        let mut out = Vec::new();
        self.feed_key(parts, style, &mut |b| out.push(b));
        out
    }
}

fn bytes(s: &[u8], sink: &mut impl FnMut(u8)) {
    for &b in s {
        sink(b);
    }
}

fn lower(s: &[u8], sink: &mut impl FnMut(u8)) {
    for &b in s {
        sink(b.to_ascii_lowercase());
    }
}

fn decimal(n: u16, sink: &mut impl FnMut(u8)) {
    let mut digits = [0u8; 5];
    let mut i = digits.len();
    let mut n = n;
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    bytes(&digits[i..], sink);
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn trim(s: &[u8]) -> &[u8] {
    let start = s
        .iter()
        .position(|&b| b != b' ' && b != b'\t')
        .unwrap_or(s.len());
    let end = s
        .iter()
        .rposition(|&b| b != b' ' && b != b'\t')
        .map_or(start, |i| i + 1);
    &s[start..end.max(start)]
}

fn check_scheme(scheme: &[u8]) -> Result<(), TargetError> {
    match scheme.first() {
        Some(b) if b.is_ascii_alphabetic() => {}
        _ => return Err(TargetError::BadScheme),
    }
    if scheme
        .iter()
        .all(|&b| b.is_ascii_alphanumeric() || b == b'+' || b == b'-' || b == b'.')
    {
        Ok(())
    } else {
        Err(TargetError::BadScheme)
    }
}

fn check_host(host: &[u8]) -> Result<(), TargetError> {
    if host.is_empty() {
        return Err(TargetError::NoHost);
    }
    if host
        .iter()
        .any(|&b| b <= b' ' || matches!(b, b'/' | b'?' | b'#' | b'@' | 0x7f))
    {
        return Err(TargetError::BadHost);
    }
    Ok(())
}

/// Splits `[userinfo@]host[:port]`; an empty port (`host:`) is no port.
fn split_authority(auth: &[u8]) -> Result<(&[u8], Option<u16>), TargetError> {
    let auth = match auth.iter().rposition(|&b| b == b'@') {
        Some(i) => &auth[i + 1..],
        None => auth,
    };
    let (host, port) = if auth.first() == Some(&b'[') {
        let close = auth
            .iter()
            .position(|&b| b == b']')
            .ok_or(TargetError::BadHost)?;
        let after = &auth[close + 1..];
        match after.split_first() {
            None => (&auth[..=close], None),
            Some((b':', p)) => (&auth[..=close], Some(p)),
            Some(_) => return Err(TargetError::BadHost),
        }
    } else {
        match auth.iter().position(|&b| b == b':') {
            Some(i) => (&auth[..i], Some(&auth[i + 1..])),
            None => (auth, None),
        }
    };
    check_host(host)?;
    let port = match port {
        None | Some(b"") => None,
        Some(p) => Some(parse_port(p)?),
    };
    Ok((host, port))
}

fn parse_port(p: &[u8]) -> Result<u16, TargetError> {
    if p.len() > 5 || !p.iter().all(u8::is_ascii_digit) {
        return Err(TargetError::BadPort);
    }
    let n = p.iter().fold(0u32, |n, &d| n * 10 + u32::from(d - b'0'));
    u16::try_from(n).map_err(|_| TargetError::BadPort)
}

fn split_query(tail: &[u8]) -> (&[u8], Option<&[u8]>) {
    match tail.iter().position(|&b| b == b'?') {
        Some(i) => (&tail[..i], Some(&tail[i + 1..])),
        None => (tail, None),
    }
}

/// Lines of a head ending in CRLF (a bare LF is accepted); stops at the
/// first line without a terminator.
struct Lines<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Lines<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let nl = self.rest.iter().position(|&b| b == b'\n')?;
        let line = &self.rest[..nl];
        self.rest = &self.rest[nl + 1..];
        Some(line.strip_suffix(b"\r").unwrap_or(line))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(url: &str, parts: KeyParts, style: KeyStyle) -> String {
        let t = RequestTarget::parse_absolute(url.as_bytes()).unwrap();
        String::from_utf8(t.key_bytes(parts, style)).unwrap()
    }

    #[test]
    fn canonical_keys_lower_case_scheme_and_host_and_drop_default_ports() {
        let all = KeyParts::ALL;
        let c = KeyStyle::Canonical;
        assert_eq!(
            key("HTTP://Www.Example.COM:80/A/B?Q=1#frag", all, c),
            "http://www.example.com/A/B?Q=1"
        );
        assert_eq!(key("http://a.b", all, c), "http://a.b/");
        assert_eq!(key("http://a.b:8080/x", all, c), "http://a.b:8080/x");
        assert_eq!(key("https://u:p@a.b:443/?", all, c), "https://a.b/?");
        assert_eq!(key("http://[::1]:81/p", all, c), "http://[::1]:81/p");
        assert_eq!(key("http://a.b:8080/x?y", KeyParts::HOST, c), "a.b");
        let hp = KeyParts::HOST.with(KeyPart::Port);
        assert_eq!(key("http://A.b:8080/x?y", hp, c), "a.b:8080");
        assert_eq!(key("http://A.b:80/x?y", hp, c), "a.b");
    }

    #[test]
    fn squid_keys_follow_the_effective_uri_and_carp_key_layouts() {
        let s = KeyStyle::Squid;
        assert_eq!(
            key("HTTP://Www.Example.COM:80/A?Q", KeyParts::ALL, s),
            "http://www.example.com/A?Q"
        );
        let hp = KeyParts::HOST.with(KeyPart::Port);
        assert_eq!(key("http://A.b/x?y", hp, s), "a.b:80");
        let sp = KeyParts::NONE.with(KeyPart::Scheme).with(KeyPart::Path);
        assert_eq!(key("http://A.b/x?y", sp, s), "http:///x");
        let q = KeyParts::NONE.with(KeyPart::Query);
        assert_eq!(key("http://A.b/x?y", q, s), "?y");
        let connect = RequestTarget::parse_authority(b"Example.com:443").unwrap();
        assert_eq!(connect.key_bytes(KeyParts::ALL, s), b"example.com:443");
        assert_eq!(
            connect.key_bytes(KeyParts::ALL, KeyStyle::Canonical),
            b"https://example.com/"
        );
    }

    #[test]
    fn heads_give_targets_in_every_form() {
        let abs = RequestTarget::from_head(
            b"GET http://Example.com:8080/p?q HTTP/1.1\r\nHost: other\r\n\r\n",
            b"http",
        )
        .unwrap();
        assert_eq!(abs.host(), b"Example.com");
        assert_eq!(abs.port(), Some(8080));
        assert_eq!(abs.query(), Some(&b"q"[..]));
        let origin = RequestTarget::from_head(
            b"GET /p/q?x=1 HTTP/1.1\r\nUser-Agent: t\r\nhOsT:  www.a.b:81 \r\n\r\n",
            b"http",
        )
        .unwrap();
        assert_eq!(
            origin.key_bytes(KeyParts::ALL, KeyStyle::Canonical),
            b"http://www.a.b:81/p/q?x=1"
        );
        let connect =
            RequestTarget::from_head(b"CONNECT a.b:443 HTTP/1.1\r\n\r\n", b"http").unwrap();
        assert!(connect.is_authority_form());
        for bad in [
            &b"GET /p HTTP/1.1\r\n\r\n"[..],
            b"GET /p HTTP/1.1\r\nHost: a\r\n",
            b"GET  /p HTTP/1.1\r\n\r\n",
            b"GET http:/// HTTP/1.1\r\n\r\n",
            b"GET http://a:99999/ HTTP/1.1\r\n\r\n",
            b"CONNECT a.b HTTP/1.1\r\n\r\n",
            b"",
        ] {
            assert!(RequestTarget::from_head(bad, b"http").is_err(), "{bad:?}");
        }
    }

    #[test]
    fn key_parts_parse_and_name() {
        assert_eq!(KeyParts::parse_list("all"), Ok(KeyParts::ALL));
        assert_eq!(KeyParts::parse_list("host"), Ok(KeyParts::HOST));
        let p = KeyParts::parse_list("path, host").unwrap();
        assert_eq!(p.names().collect::<Vec<_>>(), ["host", "path"]);
        assert!(KeyParts::parse_list("fragment").is_err());
        assert!(KeyParts::parse_list("").is_err());
    }
}
