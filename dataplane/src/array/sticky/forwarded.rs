//! Who the client is: the forwarding fields a request arrives with
//! (`Forwarded`, RFC 7239, and `X-Forwarded-For`), trusted only as far as
//! the operator's `trusted_proxies` reach, and the fields the application
//! is given instead.
//!
//! Owns: [`TrustedNet`], [`client_chain`], [`forwarded_for`] (the RFC 7239
//! parser), [`xff_addresses`] and the renderers [`render_xff`] and
//! [`render_forwarded`].
//!
//! Guarantees: the chain's first address is the client: the peer when the
//! peer is not trusted (every client-supplied field is then ignored, so a
//! client cannot spoof its address), else the rightmost address that is not
//! a trusted proxy, read right to left from the fields. An element that is
//! not an address (`unknown`, an obfuscated name, garbage) ends the walk at
//! the trusted hop before it. Parsers take any bytes and never panic; work
//! is linear in the fields' length, and at most [`MAX_CHAIN`] addresses are
//! kept.

use std::net::IpAddr;

/// Most addresses a chain keeps (the client and the proxies after it).
pub const MAX_CHAIN: usize = 16;

/// A trusted proxy network: an address and a prefix length (`10.0.0.0/8`,
/// `2001:db8::/32`, or one address).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TrustedNet {
    addr: IpAddr,
    prefix: u8,
}

impl TrustedNet {
    /// Parses `ADDRESS` or `ADDRESS/PREFIX`.
    pub fn parse(text: &str) -> Result<TrustedNet, String> {
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("{text:?} is not an address or ADDRESS/PREFIX"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => match p.parse::<u8>() {
                Ok(n) if n <= max => n,
                _ => return Err(format!("{text:?}: the prefix must be 0 to {max}")),
            },
        };
        Ok(TrustedNet { addr, prefix })
    }

    /// Whether `ip` lies in the network (an IPv4-mapped IPv6 address counts
    /// as its IPv4 address).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

impl std::fmt::Display for TrustedNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// One element of a forwarding field, as far as the walk cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Node {
    /// An address (a port, if any, dropped).
    Addr(IpAddr),
    /// Anything else: `unknown`, an obfuscated identifier, garbage, or an
    /// element without `for=`.
    Opaque,
}

/// The `for=` node of every element of the `Forwarded` field values, in
/// order (RFC 7239 §4: elements separated by `,`, pairs by `;`, values
/// tokens or quoted strings; parameter names ignore case).
pub fn forwarded_for<'a>(values: impl IntoIterator<Item = &'a [u8]>) -> Vec<Node> {
    let mut out = Vec::new();
    for value in values {
        for element in split_outside_quotes(value, b',') {
            let mut node = Node::Opaque;
            for pair in split_outside_quotes(element, b';') {
                let pair = trim(pair);
                let Some(eq) = pair.iter().position(|&b| b == b'=') else {
                    continue;
                };
                if trim(&pair[..eq]).eq_ignore_ascii_case(b"for") {
                    node = parse_node(unquote(trim(&pair[eq + 1..])));
                }
            }
            out.push(node);
        }
    }
    out
}

/// The nodes of every `X-Forwarded-For` field value, in order.
pub fn xff_addresses<'a>(values: impl IntoIterator<Item = &'a [u8]>) -> Vec<Node> {
    let mut out = Vec::new();
    for value in values {
        for element in value.split(|&b| b == b',') {
            out.push(parse_node(trim(element)));
        }
    }
    out
}

/// The client and the trusted proxies after it, client first, peer last
/// (see the module docs). `nodes` are the fields' elements in order, the
/// `Forwarded` field's when the request has one, else `X-Forwarded-For`'s.
pub fn client_chain(peer: IpAddr, trusted: &[TrustedNet], nodes: &[Node]) -> Vec<IpAddr> {
    let trusts = |ip: IpAddr| trusted.iter().any(|n| n.contains(ip));
    let mut chain = vec![peer];
    let mut current = peer;
    for node in nodes.iter().rev() {
        if !trusts(current) || chain.len() >= MAX_CHAIN {
            break;
        }
        match node {
            Node::Addr(ip) => {
                chain.push(*ip);
                current = *ip;
            }
            Node::Opaque => break,
        }
    }
    chain.reverse();
    chain
}

/// `X-Forwarded-For` for the application: the chain, comma-separated.
pub fn render_xff(chain: &[IpAddr]) -> String {
    let mut out = String::with_capacity(chain.len() * 41);
    for (i, ip) in chain.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        push_ip(&mut out, *ip, false);
    }
    out
}

/// `Forwarded` for the application: one element per chain address, the
/// first with the original `host` (when it is a token or can be quoted)
/// and `proto`.
pub fn render_forwarded(chain: &[IpAddr], host: Option<&[u8]>, proto: &str) -> String {
    // One allocation: a node is at most `for="[` + 39 + `]"` and a
    // separator, the first one also `;host="…";proto=…`.
    let host = host.filter(|h| {
        h.iter()
            .all(|&b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
    });
    let mut out =
        String::with_capacity(chain.len() * 50 + host.map_or(0, |h| h.len() + 8) + proto.len() + 7);
    for (i, ip) in chain.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        out.push_str("for=");
        push_ip(&mut out, *ip, true);
        if i == 0 {
            if let Some(h) = host {
                out.push_str(";host=\"");
                // Checked above: printable ASCII.
                out.extend(h.iter().map(|&b| char::from(b)));
                out.push('"');
            }
            out.push_str(";proto=");
            out.push_str(proto);
        }
    }
    out
}

fn parse_node(text: &[u8]) -> Node {
    let Ok(text) = std::str::from_utf8(text) else {
        return Node::Opaque;
    };
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Node::Addr(ip);
    }
    // `[v6]`, `[v6]:port`, `v4:port`.
    if let Some(rest) = text.strip_prefix('[') {
        if let Some((inner, after)) = rest.split_once(']') {
            if after.is_empty() || after.starts_with(':') {
                if let Ok(ip) = inner.parse::<std::net::Ipv6Addr>() {
                    return Node::Addr(IpAddr::V6(ip));
                }
            }
        }
        return Node::Opaque;
    }
    if let Some((a, _port)) = text.split_once(':') {
        if let Ok(ip) = a.parse::<std::net::Ipv4Addr>() {
            return Node::Addr(IpAddr::V4(ip));
        }
    }
    Node::Opaque
}

fn unquote(s: &[u8]) -> &[u8] {
    match s {
        [b'"', inner @ .., b'"'] => inner,
        s => s,
    }
}

fn trim(s: &[u8]) -> &[u8] {
    let Some(start) = s.iter().position(|b| !matches!(b, b' ' | b'\t')) else {
        return &[];
    };
    let end = s
        .iter()
        .rposition(|b| !matches!(b, b' ' | b'\t'))
        .unwrap_or(start);
    &s[start..=end]
}

/// Splits at `sep` bytes outside double-quoted strings (a backslash
/// escapes the next byte inside quotes).
fn split_outside_quotes(s: &[u8], sep: u8) -> impl Iterator<Item = &[u8]> {
    let mut start = 0;
    let mut quoted = false;
    let mut escaped = false;
    let mut i = 0;
    let mut done = false;
    std::iter::from_fn(move || {
        if done {
            return None;
        }
        while i < s.len() {
            let b = s[i];
            i += 1;
            if escaped {
                escaped = false;
            } else if quoted && b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                quoted = !quoted;
            } else if b == sep && !quoted {
                let part = &s[start..i - 1];
                start = i;
                return Some(part);
            }
        }
        done = true;
        Some(&s[start..])
    })
}

/// Appends `ip` as text: IPv4 dotted (digit by digit, without the
/// formatting machinery, which cost more than the rest of a field's
/// rendering), IPv6 as `Display` prints it, in `"[…]"` when `quoted_v6`
/// (a `Forwarded` node).
fn push_ip(out: &mut String, ip: IpAddr, quoted_v6: bool) {
    match ip {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                if octet >= 100 {
                    out.push(char::from(b'0' + octet / 100));
                }
                if octet >= 10 {
                    out.push(char::from(b'0' + octet / 10 % 10));
                }
                out.push(char::from(b'0' + octet % 10));
            }
        }
        IpAddr::V6(v6) => {
            use std::fmt::Write as _;
            // Writing to a String cannot fail.
            let _ = if quoted_v6 {
                write!(out, "\"[{v6}]\"")
            } else {
                write!(out, "{v6}")
            };
        }
    }
}

/// An IPv4-mapped IPv6 address (a dual-stack listener's IPv4 peer) as the
/// IPv4 address; any other address as it is.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn nets(list: &[&str]) -> Vec<TrustedNet> {
        list.iter().map(|s| TrustedNet::parse(s).unwrap()).collect()
    }

    proptest! {
        #[test]
        fn addresses_render_as_display_prints_them(v4 in any::<u32>(), v6 in any::<u128>()) {
            let (a, b) = (IpAddr::V4(v4.into()), IpAddr::V6(v6.into()));
            prop_assert_eq!(render_xff(&[a, b]), format!("{a}, {b}"));
            prop_assert_eq!(
                render_forwarded(&[b, a], None, "http"),
                format!("for=\"[{b}]\";proto=http, for={a}")
            );
        }
    }

    #[test]
    fn networks_parse_and_contain() {
        let n = TrustedNet::parse("10.1.0.0/16").unwrap();
        assert!(n.contains(ip("10.1.2.3")));
        assert!(!n.contains(ip("10.2.0.1")));
        assert!(n.contains(ip("::ffff:10.1.0.9")));
        assert!(TrustedNet::parse("0.0.0.0/0")
            .unwrap()
            .contains(ip("1.2.3.4")));
        assert!(TrustedNet::parse("192.0.2.7")
            .unwrap()
            .contains(ip("192.0.2.7")));
        assert!(!TrustedNet::parse("192.0.2.7")
            .unwrap()
            .contains(ip("192.0.2.8")));
        assert!(TrustedNet::parse("2001:db8::/32")
            .unwrap()
            .contains(ip("2001:db8:1::1")));
        assert!(!TrustedNet::parse("2001:db8::/32")
            .unwrap()
            .contains(ip("10.0.0.1")));
        for bad in ["", "10.0.0.0/33", "::/129", "x/8", "10.0.0.0/"] {
            assert!(TrustedNet::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_claims() {
        let nodes = xff_addresses([&b"1.1.1.1, 2.2.2.2"[..]]);
        assert_eq!(
            client_chain(ip("198.51.100.9"), &[], &nodes),
            [ip("198.51.100.9")]
        );
        let trusted = nets(&["10.0.0.0/8"]);
        assert_eq!(
            client_chain(ip("198.51.100.9"), &trusted, &nodes),
            [ip("198.51.100.9")]
        );
    }

    #[test]
    fn trusted_hops_are_skipped_right_to_left() {
        let trusted = nets(&["10.0.0.0/8"]);
        // A client that spoofs a first entry behind two trusted proxies.
        let nodes = xff_addresses([&b"6.6.6.6, 203.0.113.5"[..], b"10.0.0.2"]);
        assert_eq!(
            client_chain(ip("10.0.0.1"), &trusted, &nodes),
            [ip("203.0.113.5"), ip("10.0.0.2"), ip("10.0.0.1")]
        );
        // Only trusted hops: the leftmost is the client.
        let nodes = xff_addresses([&b"10.0.0.3"[..]]);
        assert_eq!(
            client_chain(ip("10.0.0.1"), &trusted, &nodes),
            [ip("10.0.0.3"), ip("10.0.0.1")]
        );
        // An opaque element stops the walk at the hop before it.
        let nodes = xff_addresses([&b"1.2.3.4, unknown"[..]]);
        assert_eq!(
            client_chain(ip("10.0.0.1"), &trusted, &nodes),
            [ip("10.0.0.1")]
        );
    }

    #[test]
    fn forwarded_elements_and_quoting() {
        let nodes = forwarded_for([
            &b"for=192.0.2.60;proto=http;by=203.0.113.43, For=\"[2001:db8:cafe::17]:4711\""[..],
            b"for=unknown, by=1.2.3.4, for=\"_hidden\", for=\"198.51.100.17:80\"",
            b"for=\"a,b\";host=x, for=10.0.0.9",
        ]);
        assert_eq!(
            nodes,
            [
                Node::Addr(ip("192.0.2.60")),
                Node::Addr(ip("2001:db8:cafe::17")),
                Node::Opaque,
                Node::Opaque,
                Node::Opaque,
                Node::Addr(ip("198.51.100.17")),
                Node::Opaque,
                Node::Addr(ip("10.0.0.9")),
            ]
        );
    }

    #[test]
    fn rendered_fields() {
        let chain = [ip("203.0.113.5"), ip("2001:db8::1")];
        assert_eq!(render_xff(&chain), "203.0.113.5, 2001:db8::1");
        assert_eq!(
            render_forwarded(&chain, Some(b"www.example.com:8080"), "https"),
            "for=203.0.113.5;host=\"www.example.com:8080\";proto=https, for=\"[2001:db8::1]\""
        );
        assert_eq!(
            render_forwarded(&chain[..1], Some(b"a\"b"), "http"),
            "for=203.0.113.5;proto=http"
        );
        // What is rendered parses back.
        let back = forwarded_for([render_forwarded(&chain, None, "http").as_bytes()]);
        assert_eq!(back, [Node::Addr(chain[0]), Node::Addr(chain[1])]);
    }

    proptest! {
        #[test]
        fn parsers_never_panic_and_chains_are_bounded(
            value in proptest::collection::vec(any::<u8>(), 0..200),
            trusted_all in any::<bool>(),
        ) {
            let a = forwarded_for([&value[..]]);
            let b = xff_addresses([&value[..]]);
            let trusted = if trusted_all { nets(&["0.0.0.0/0", "::/0"]) } else { Vec::new() };
            for nodes in [a, b] {
                let chain = client_chain(ip("10.0.0.1"), &trusted, &nodes);
                prop_assert!(!chain.is_empty() && chain.len() <= MAX_CHAIN);
                prop_assert_eq!(*chain.last().unwrap(), ip("10.0.0.1"));
                if !trusted_all {
                    prop_assert_eq!(chain.len(), 1);
                }
            }
        }
    }
}
