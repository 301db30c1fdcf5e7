//! What a request head asks of an array member: route a URL, tunnel, serve
//! an array page, or be refused.
//!
//! Owns: [`HeadLimits`] (the bounds a head must keep), [`HeadView`] (the few
//! parts of a parsed head the decision needs, borrowed), [`Form`] (what the
//! request is), [`ArrayPage`] (the pages an array member serves itself),
//! [`Refusal`] (why a request is answered with an error, with its status
//! code and counter name) and [`classify`].
//!
//! Guarantees: [`classify`] is a pure function of the view, the limits and
//! the allowed CONNECT ports; it never allocates and never panics; a
//! [`Form`] it returns borrows only from the view's bytes.
//!
//! # The rules, in the order they are applied
//!
//! 1. A target longer than `max_uri_bytes`: [`Refusal::UriTooLong`] (414).
//! 2. A head longer than `max_head_bytes`, or more than `max_headers`
//!    header lines: [`Refusal::HeadTooLarge`] (431).
//! 3. A method that is not an RFC 9110 token, an empty target, a target
//!    with a control byte, space or DEL, more than one `Host` header, or a
//!    `Host` value with such a byte or a `userinfo@`:
//!    [`Refusal::BadRequest`] (400).
//! 4. `CONNECT` with an authority-form target (`host:port`, port required):
//!    [`Form::Connect`] when the port is in `connect_ports`, else
//!    [`Refusal::ForbiddenPort`] (403). `CONNECT` with any other form, or an
//!    authority-form target with another method: 400.
//! 5. Absolute-form (`scheme://…`): [`Form::Forward`], the authority taken
//!    from the target (a `Host` header, if any, is ignored as RFC 9112 §3.2.2
//!    says).
//! 6. Origin-form whose path and query are exactly one of the array pages
//!    (see [`ArrayPage::from_target`]): [`Form::Array`], whatever the `Host`
//!    (or none).
//! 7. Other origin-form with exactly one valid `Host`: [`Form::Reverse`]
//!    with scheme `http`. Without a `Host`: 400.
//! 8. Anything else (`*`, a relative path): 400.
//!
//! The limits are checked before anything is parsed, so an oversized head
//! is refused by size whatever else is wrong with it.

use std::fmt;

use super::target::RequestTarget;

/// The bounds a request head must keep.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct HeadLimits {
    /// Longest request target, in bytes (414 beyond).
    pub max_uri_bytes: usize,
    /// Longest head (request line and header lines), in bytes (431 beyond).
    pub max_head_bytes: usize,
    /// Most header lines (431 beyond).
    pub max_headers: usize,
}

impl HeadLimits {
    /// The defaults: 8 KiB target, 16 KiB head, 100 headers.
    pub const DEFAULT: HeadLimits = HeadLimits {
        max_uri_bytes: 8192,
        max_head_bytes: 16384,
        max_headers: 100,
    };
}

impl Default for HeadLimits {
    fn default() -> Self {
        HeadLimits::DEFAULT
    }
}

/// The parts of a parsed request head that [`classify`] reads, borrowed
/// from the caller's parser (the proxy fills it from hyper's request parts
/// without allocating).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeadView<'a> {
    /// The method, as received (case-sensitive).
    pub method: &'a [u8],
    /// The request target, as received.
    pub target: &'a [u8],
    /// The first `Host` header's value, if any.
    pub host: Option<&'a [u8]>,
    /// How many `Host` header lines the head has.
    pub host_count: usize,
    /// The head's size in bytes (request line and header lines), as the
    /// parser counted it.
    pub head_bytes: usize,
    /// How many header lines the head has.
    pub header_count: usize,
}

/// What a request is, once its head passes [`classify`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Form<'a> {
    /// Absolute-form: a forward-proxy request for this URL, its scheme as
    /// received (which schemes to serve is the proxy's choice; an array page
    /// asked for by absolute URL is a URL like any other here).
    Forward(RequestTarget<'a>),
    /// Origin-form with a `Host`: a reverse-proxy request (scheme `http`).
    Reverse(RequestTarget<'a>),
    /// `CONNECT host:port` to an allowed port: a tunnel keyed by its
    /// authority.
    Connect(RequestTarget<'a>),
    /// A page the receiving member serves itself.
    Array(ArrayPage),
}

impl<'a> Form<'a> {
    /// The target to route, for every form but [`Form::Array`].
    pub fn target(&self) -> Option<&RequestTarget<'a>> {
        match self {
            Form::Forward(t) | Form::Reverse(t) | Form::Connect(t) => Some(t),
            Form::Array(_) => None,
        }
    }
}

/// A page an array member serves itself, never routed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ArrayPage {
    /// The membership table (draft §2), `/array.dll?Get.Info.v1`.
    Table,
    /// The PAC routing script, `/array.dll?Get.Routing.Script`,
    /// `/proxy.pac` or `/wpad.dat`.
    Script,
    /// The member's own health, `/array.dll?Get.Health`: what other
    /// members probe (200 only while this member's local cache answers).
    Health,
}

impl ArrayPage {
    /// Every page's origin-form target, and the page it names.
    pub const TARGETS: &'static [(&'static str, ArrayPage)] = &[
        ("/array.dll?Get.Info.v1", ArrayPage::Table),
        ("/array.dll?Get.Routing.Script", ArrayPage::Script),
        ("/proxy.pac", ArrayPage::Script),
        ("/wpad.dat", ArrayPage::Script),
        ("/array.dll?Get.Health", ArrayPage::Health),
    ];

    /// The page an origin-form target names: its path and query compared
    /// byte for byte (a fragment ignored) with [`ArrayPage::TARGETS`].
    pub fn from_target(target: &[u8]) -> Option<ArrayPage> {
        let target = match target.iter().position(|&b| b == b'#') {
            Some(i) => &target[..i],
            None => target,
        };
        ArrayPage::TARGETS
            .iter()
            .find(|(t, _)| t.as_bytes() == target)
            .map(|(_, p)| *p)
    }

    /// The `Content-Type` the page is served with.
    pub fn content_type(self) -> &'static str {
        match self {
            ArrayPage::Table | ArrayPage::Health => "text/plain",
            ArrayPage::Script => "application/x-ns-proxy-autoconfig",
        }
    }

    /// The page's canonical target (the first that names it in
    /// [`ArrayPage::TARGETS`]).
    pub fn target(self) -> &'static str {
        match self {
            ArrayPage::Table => "/array.dll?Get.Info.v1",
            ArrayPage::Script => "/array.dll?Get.Routing.Script",
            ArrayPage::Health => "/array.dll?Get.Health",
        }
    }
}

/// Why a request is answered with an error instead of being served.
///
/// [`classify`] returns the first four; the proxy answers
/// [`Refusal::Loop`] when [`crate::array::hop::seen`] finds its own name and
/// [`Refusal::ForgedMember`] when a `shoal-member` header does not pass
/// [`crate::array::member::verify`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
pub enum Refusal {
    /// The head is malformed; the text says how (400).
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    /// The request target is longer than the limit (414).
    #[error("request target too long")]
    UriTooLong,
    /// The head is larger, or has more header lines, than the limits (431).
    #[error("request head too large")]
    HeadTooLarge,
    /// `CONNECT` to a port not allowed (403).
    #[error("CONNECT to port {0} is not allowed")]
    ForbiddenPort(u16),
    /// The request has already passed this member (`Via`, `CDN-Loop`) (508).
    #[error("request loop: this member already handled the request")]
    Loop,
    /// A member header that does not verify (403).
    #[error("member header does not verify")]
    ForgedMember,
}

impl Refusal {
    /// Every counter name [`Refusal::counter`] returns, in a fixed order.
    pub const COUNTERS: &'static [&'static str] = &[
        "bad_request",
        "uri_too_long",
        "head_too_large",
        "forbidden_port",
        "loop",
        "forged_member",
    ];

    /// The HTTP status code to answer with.
    pub fn status(&self) -> u16 {
        match self {
            Refusal::BadRequest(_) => 400,
            Refusal::UriTooLong => 414,
            Refusal::HeadTooLarge => 431,
            Refusal::ForbiddenPort(_) | Refusal::ForgedMember => 403,
            Refusal::Loop => 508,
        }
    }

    /// The error counter this refusal is counted under (one of
    /// [`Refusal::COUNTERS`]).
    pub fn counter(&self) -> &'static str {
        match self {
            Refusal::BadRequest(_) => "bad_request",
            Refusal::UriTooLong => "uri_too_long",
            Refusal::HeadTooLarge => "head_too_large",
            Refusal::ForbiddenPort(_) => "forbidden_port",
            Refusal::Loop => "loop",
            Refusal::ForgedMember => "forged_member",
        }
    }
}

/// Classifies a request head (see the module docs for the rules).
/// `connect_ports` lists the ports `CONNECT` may reach; empty refuses every
/// `CONNECT`.
pub fn classify<'a>(
    head: &HeadView<'a>,
    limits: &HeadLimits,
    connect_ports: &[u16],
) -> Result<Form<'a>, Refusal> {
    if head.target.len() > limits.max_uri_bytes {
        return Err(Refusal::UriTooLong);
    }
    if head.head_bytes > limits.max_head_bytes || head.header_count > limits.max_headers {
        return Err(Refusal::HeadTooLarge);
    }
    if head.method.is_empty() || !head.method.iter().all(|&b| is_tchar(b)) {
        return Err(Refusal::BadRequest("invalid method"));
    }
    let target = head.target;
    if target.is_empty() {
        return Err(Refusal::BadRequest("empty request target"));
    }
    if target.iter().any(|&b| is_control_or_space(b)) {
        return Err(Refusal::BadRequest(
            "control byte or space in request target",
        ));
    }
    if head.host_count > 1 {
        return Err(Refusal::BadRequest("more than one Host header"));
    }
    let host = head.host.map(trim);
    if let Some(h) = host {
        if h.iter().any(|&b| is_control_or_space(b) || b == b'@') {
            return Err(Refusal::BadRequest("malformed Host header"));
        }
    }
    let connect = head.method == b"CONNECT";
    let origin = target[0] == b'/';
    let absolute = !origin && contains(target, b"://");
    if connect {
        if origin || absolute {
            return Err(Refusal::BadRequest(
                "CONNECT needs an authority-form target",
            ));
        }
        let t = RequestTarget::parse_authority(target)
            .map_err(|_| Refusal::BadRequest("malformed CONNECT authority"))?;
        let port = t.port().unwrap_or(0);
        return if connect_ports.contains(&port) {
            Ok(Form::Connect(t))
        } else {
            Err(Refusal::ForbiddenPort(port))
        };
    }
    if absolute {
        return RequestTarget::parse_absolute(target)
            .map(Form::Forward)
            .map_err(|_| Refusal::BadRequest("malformed absolute URL"));
    }
    if !origin {
        return Err(Refusal::BadRequest("request target form not served"));
    }
    if let Some(page) = ArrayPage::from_target(target) {
        return Ok(Form::Array(page));
    }
    let host = host.ok_or(Refusal::BadRequest("origin-form request without Host"))?;
    RequestTarget::parse_origin(target, host, b"http")
        .map(Form::Reverse)
        .map_err(|_| Refusal::BadRequest("malformed Host header"))
}

/// RFC 9110 §5.6.2 `tchar`.
pub(super) const fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'!' | b'#'
                | b'$'
                | b'%'
                | b'&'
                | b'\''
                | b'*'
                | b'+'
                | b'-'
                | b'.'
                | b'^'
                | b'_'
                | b'`'
                | b'|'
                | b'~'
        )
}

fn is_control_or_space(b: u8) -> bool {
    b <= b' ' || b == 0x7f
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
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

impl fmt::Display for ArrayPage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.target())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const PORTS: &[u16] = &[443, 8443];

    fn view<'a>(method: &'a str, target: &'a str, hosts: &[&'a str]) -> HeadView<'a> {
        HeadView {
            method: method.as_bytes(),
            target: target.as_bytes(),
            host: hosts.first().map(|h| h.as_bytes()),
            host_count: hosts.len(),
            head_bytes: method.len() + target.len() + 12,
            header_count: hosts.len(),
        }
    }

    fn run(method: &str, target: &str, hosts: &[&str]) -> Result<String, Refusal> {
        classify(&view(method, target, hosts), &HeadLimits::DEFAULT, PORTS).map(|f| match f {
            Form::Array(p) => format!("array {p:?}"),
            Form::Forward(t) | Form::Reverse(t) | Form::Connect(t) => {
                let kind = match f {
                    Form::Forward(_) => "forward",
                    Form::Reverse(_) => "reverse",
                    _ => "connect",
                };
                format!(
                    "{kind} {}",
                    String::from_utf8_lossy(&t.key_bytes(
                        crate::array::KeyParts::ALL,
                        crate::array::KeyStyle::Canonical
                    ))
                )
            }
        })
    }

    #[test]
    fn forms_are_told_apart() {
        assert_eq!(
            run("GET", "http://Example.com:8080/a?b", &["other"]).unwrap(),
            "forward http://example.com:8080/a?b"
        );
        assert_eq!(
            run("GET", "http://a.b/", &[]).unwrap(),
            "forward http://a.b/"
        );
        assert_eq!(
            run("POST", "/x/y?z#frag", &["Www.A.B:81"]).unwrap(),
            "reverse http://www.a.b:81/x/y?z"
        );
        assert_eq!(
            run("GET", "/", &[" a.b \t"]).unwrap(),
            "reverse http://a.b/"
        );
        assert_eq!(
            run("CONNECT", "a.b:443", &["a.b:443"]).unwrap(),
            "connect https://a.b/"
        );
        assert_eq!(
            run("CONNECT", "[::1]:8443", &[]).unwrap(),
            "connect https://[::1]:8443/"
        );
    }

    #[test]
    fn array_pages_are_served_whatever_the_host() {
        for (t, page) in ArrayPage::TARGETS {
            for hosts in [&[][..], &["vip"][..]] {
                assert_eq!(
                    classify(&view("GET", t, hosts), &HeadLimits::DEFAULT, PORTS),
                    Ok(Form::Array(*page)),
                    "{t} {hosts:?}"
                );
            }
        }
        assert_eq!(run("GET", "/proxy.pac#x", &[]).unwrap(), "array Script");
        assert_eq!(
            run("GET", "/wpad.dat?", &["a"]).unwrap(),
            "reverse http://a/wpad.dat?"
        );
        assert_eq!(
            run("GET", "/ARRAY.DLL?Get.Info.v1", &["a"]).unwrap(),
            "reverse http://a/ARRAY.DLL?Get.Info.v1"
        );
        assert_eq!(ArrayPage::Health.target(), "/array.dll?Get.Health");
        assert_eq!(
            ArrayPage::Script.content_type(),
            "application/x-ns-proxy-autoconfig"
        );
        assert_eq!(ArrayPage::Table.content_type(), "text/plain");
        for page in [ArrayPage::Table, ArrayPage::Script, ArrayPage::Health] {
            assert_eq!(ArrayPage::from_target(page.target().as_bytes()), Some(page));
        }
        assert_eq!(
            ArrayPage::from_target(b"/array.dll?Get.Health"),
            Some(ArrayPage::Health)
        );
    }

    #[test]
    fn connect_is_limited_to_allowed_ports_and_authority_form() {
        assert_eq!(
            run("CONNECT", "a.b:22", &[]),
            Err(Refusal::ForbiddenPort(22))
        );
        assert_eq!(run("CONNECT", "a.b:0", &[]), Err(Refusal::ForbiddenPort(0)));
        for bad in ["a.b", "a.b:", "/x", "http://a.b:443/", "a.b:99999", ":443"] {
            assert!(
                matches!(run("CONNECT", bad, &[]), Err(Refusal::BadRequest(_))),
                "{bad}"
            );
        }
        assert!(matches!(
            run("GET", "a.b:443", &["a"]),
            Err(Refusal::BadRequest(_))
        ));
        assert!(matches!(
            run("OPTIONS", "*", &["a"]),
            Err(Refusal::BadRequest(_))
        ));
        assert_eq!(
            classify(&view("CONNECT", "a.b:443", &[]), &HeadLimits::DEFAULT, &[]),
            Err(Refusal::ForbiddenPort(443))
        );
    }

    #[test]
    fn malformed_heads_are_bad_requests() {
        let bad = |m: &str, t: &str, h: &[&str]| {
            assert!(
                matches!(run(m, t, h), Err(Refusal::BadRequest(_))),
                "{m} {t} {h:?}: {:?}",
                run(m, t, h)
            )
        };
        bad("GET", "/x", &[]);
        bad("GET", "/x", &["a", "a"]);
        bad("GET", "http://a/", &["a", "b"]);
        bad("GET", "/x", &[""]);
        bad("GET", "/x", &["a b"]);
        bad("GET", "/x", &["a\x00b"]);
        bad("GET", "/x", &["u@a"]);
        bad("GET", "/x", &["a:port"]);
        bad("GET", "/x", &["a/b"]);
        bad("GET", "/x", &["[::1"]);
        bad("", "/x", &["a"]);
        bad("G ET", "/x", &["a"]);
        bad("GET\r", "/x", &["a"]);
        bad("GÉT", "/x", &["a"]);
        bad("GET", "", &["a"]);
        bad("GET", "/x y", &["a"]);
        bad("GET", "/x\x7f", &["a"]);
        bad("GET", "/x\n", &["a"]);
        bad("GET", "http:///x", &["a"]);
        bad("GET", "http://a:99999/", &["a"]);
        bad("GET", "1http://a/", &["a"]);
        bad("GET", "x", &["a"]);
        // A Host with a valid port and an array page with a bad second Host.
        assert!(run("GET", "/x", &["a:8080"]).is_ok());
        bad("GET", "/proxy.pac", &["a", "b"]);
    }

    #[test]
    fn limits_give_414_then_431() {
        let limits = HeadLimits {
            max_uri_bytes: 10,
            max_head_bytes: 100,
            max_headers: 3,
        };
        let mut v = view("GET", "/0123456789", &["a"]);
        assert_eq!(classify(&v, &limits, PORTS), Err(Refusal::UriTooLong));
        v.target = b"/012345678";
        assert!(classify(&v, &limits, PORTS).is_ok());
        v.head_bytes = 101;
        assert_eq!(classify(&v, &limits, PORTS), Err(Refusal::HeadTooLarge));
        v.head_bytes = 100;
        v.header_count = 4;
        assert_eq!(classify(&v, &limits, PORTS), Err(Refusal::HeadTooLarge));
        // Size is judged before anything is parsed.
        v.method = b"";
        v.target = b"/0123456789 \x00";
        assert_eq!(classify(&v, &limits, PORTS), Err(Refusal::UriTooLong));
    }

    #[test]
    fn refusals_map_to_statuses_and_counters() {
        let all = [
            (Refusal::BadRequest("x"), 400, "bad_request"),
            (Refusal::UriTooLong, 414, "uri_too_long"),
            (Refusal::HeadTooLarge, 431, "head_too_large"),
            (Refusal::ForbiddenPort(22), 403, "forbidden_port"),
            (Refusal::Loop, 508, "loop"),
            (Refusal::ForgedMember, 403, "forged_member"),
        ];
        for (r, status, counter) in all {
            assert_eq!(r.status(), status);
            assert_eq!(r.counter(), counter);
            assert!(Refusal::COUNTERS.contains(&counter));
        }
        assert_eq!(Refusal::COUNTERS.len(), all.len());
        assert_eq!(
            Refusal::ForbiddenPort(25).to_string(),
            "CONNECT to port 25 is not allowed"
        );
    }

    /// A routable target's key, as `classify` gives it from a view and as
    /// `RequestTarget::from_head` gives it from the raw head.
    fn both_keys(
        method: &str,
        target: &str,
        host: Option<&str>,
    ) -> (Option<Vec<u8>>, Option<Vec<u8>>) {
        use crate::array::{KeyParts, KeyStyle};
        let hosts: Vec<&str> = host.into_iter().collect();
        let v = view(method, target, &hosts);
        let from_view = classify(&v, &HeadLimits::DEFAULT, &[443])
            .ok()
            .and_then(|f| {
                f.target()
                    .map(|t| t.key_bytes(KeyParts::ALL, KeyStyle::Canonical))
            });
        let raw = match host {
            Some(h) => format!("{method} {target} HTTP/1.1\r\nHost: {h}\r\n\r\n"),
            None => format!("{method} {target} HTTP/1.1\r\n\r\n"),
        };
        let from_raw = RequestTarget::from_head(raw.as_bytes(), b"http")
            .ok()
            .map(|t| t.key_bytes(KeyParts::ALL, KeyStyle::Canonical));
        (from_view, from_raw)
    }

    #[test]
    fn the_proxy_and_the_tools_key_a_head_alike() {
        for (m, t, h) in [
            ("GET", "http://A.example:8080/p?q#f", Some("x")),
            ("GET", "/p?q", Some("A.Example:81")),
            ("GET", "/", Some("a")),
            ("CONNECT", "a.example:443", None),
        ] {
            let (view, raw) = both_keys(m, t, h);
            assert!(view.is_some(), "{m} {t}");
            assert_eq!(view, raw, "{m} {t} {h:?}");
        }
    }

    proptest! {
        #[test]
        fn routable_heads_key_alike_from_a_view_and_from_raw_bytes(
            connect in any::<bool>(),
            scheme in prop_oneof![Just(""), Just("http://"), Just("HTTPS://")],
            host in "[a-zA-Z0-9.-]{1,12}",
            port in proptest::option::of(prop_oneof![Just(80u16), Just(443), any::<u16>()]),
            path in "(/[a-zA-Z0-9%._~-]{0,8}){0,3}",
            query in proptest::option::of("[a-zA-Z0-9=&%]{0,8}"),
            host_header in proptest::option::of("[a-zA-Z0-9.-]{1,12}(:[0-9]{1,5})?"),
        ) {
            let authority = match port {
                Some(p) => format!("{host}:{p}"),
                None => host.clone(),
            };
            let (method, target) = if connect {
                ("CONNECT", authority)
            } else {
                let q = query.map(|q| format!("?{q}")).unwrap_or_default();
                let p = if path.is_empty() && scheme.is_empty() { "/".to_owned() } else { path };
                let t = if scheme.is_empty() { format!("{p}{q}") } else { format!("{scheme}{authority}{p}{q}") };
                ("GET", t)
            };
            let (view, raw) = both_keys(method, &target, host_header.as_deref());
            // Where classify routes, the tools route the same key; (classify
            // refuses more: forbidden ports, pages, a missing Host.)
            if view.is_some() {
                prop_assert_eq!(&view, &raw, "{} {} {:?}", method, target, host_header);
            }
        }

        #[test]
        fn classify_never_panics_and_is_deterministic(
            method in proptest::collection::vec(any::<u8>(), 0..10),
            target in proptest::collection::vec(any::<u8>(), 0..40),
            host in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..20)),
            host_count in 0usize..3,
            head_bytes in 0usize..200,
            header_count in 0usize..5,
            connect in any::<bool>(),
        ) {
            let method = if connect { b"CONNECT".to_vec() } else { method };
            let v = HeadView {
                method: &method,
                target: &target,
                host: host.as_deref(),
                host_count,
                head_bytes,
                header_count,
            };
            let limits = HeadLimits { max_uri_bytes: 30, max_head_bytes: 150, max_headers: 3 };
            let a = classify(&v, &limits, PORTS);
            prop_assert_eq!(a, classify(&v, &limits, PORTS));
            if let Ok(form) = a {
                if let Some(t) = form.target() {
                    prop_assert!(!t.host().is_empty());
                }
            }
        }
    }
}
