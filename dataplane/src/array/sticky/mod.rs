//! Sticky sessions with the request forwarder (Application Center's, seed
//! 002, "Maintaining Session State with Network Load Balancing"): a cookie
//! names the member that owns a session; any member that receives a request
//! whose cookie names another live member forwards it there.
//!
//! Owns: the cookie codec ([`cookie`]), the forwarding fields and who the
//! client is ([`forwarded`]), the patterns a service is configured with
//! ([`Glob`], [`StaticRule`], [`Controller`]), the policy ([`Policy`]), and
//! the decision ([`decide`], [`Route`]) with its companions [`pin`] (does a
//! response get a cookie?) and [`unreachable_owner`] (what the seed's
//! "target unavailable" turns into).
//!
//! Guarantees: every function here is pure: a request's method, path,
//! cookie check and hop count, the live view and the policy in; a decision
//! out. [`decide`] does not allocate. A request that arrived over a hop is
//! never forwarded again beyond `hop_limit` (default 1: never twice).
//!
//! # The decision, in order
//!
//! 1. Static (`static` extensions or path patterns): served here, no
//!    cookie, never forwarded.
//! 2. Controller requests (`controller` methods or paths): to the default
//!    host, the live host with the lowest ID; served here when that is
//!    this host; else forwarded, or refused once the hop limit is reached.
//! 3. A valid cookie naming this host: served here (a coherent request).
//! 4. A request that came over a hop: served here, whatever else holds (the
//!    sender decided; the hop limit keeps it from going on).
//! 5. A valid cookie naming another live host, or a named `ocf` member:
//!    forwarded there.
//! 6. A valid cookie naming a host not in the live view: the owner is
//!    unavailable: `on_owner_failure = "repin"` serves it here and re-pins
//!    the cookie, `"strict"` refuses it (503).
//! 7. No cookie, or one that failed its check: served here; the response
//!    may pin ([`pin`]).

pub mod cookie;
pub mod forwarded;

use crate::{HostId, HostSet};

pub use cookie::{Cookie, CookieError, CookieKey, Owner};
pub use forwarded::TrustedNet;

/// The default cookie name (Application Center's).
pub const DEFAULT_COOKIE: &str = "RQFW";
/// The default cookie lifetime: one day.
pub const DEFAULT_MAX_AGE_S: u64 = 86_400;

/// A pattern with `*` (any run of bytes, none included), matched whole.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Glob(String);

impl Glob {
    /// A pattern; any text is one (an empty pattern matches the empty
    /// text only).
    pub fn new(text: &str) -> Glob {
        Glob(text.to_string())
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `text` matches, exactly (`fold`: ignoring ASCII case).
    /// Linear in the lengths' product at worst, no recursion.
    pub fn matches(&self, text: &[u8], fold: bool) -> bool {
        let p = self.0.as_bytes();
        let eq = |a: u8, b: u8| {
            if fold {
                a.eq_ignore_ascii_case(&b)
            } else {
                a == b
            }
        };
        let (mut pi, mut ti) = (0, 0);
        let mut star: Option<(usize, usize)> = None;
        while ti < text.len() {
            if pi < p.len() && p[pi] == b'*' {
                star = Some((pi, ti));
                pi += 1;
            } else if pi < p.len() && eq(p[pi], text[ti]) {
                pi += 1;
                ti += 1;
            } else if let Some((sp, st)) = star {
                pi = sp + 1;
                ti = st + 1;
                star = Some((sp, st + 1));
            } else {
                return false;
            }
        }
        p[pi..].iter().all(|&b| b == b'*')
    }
}

/// One `static` entry: an extension (`.gif`, `*.gif`; ASCII case ignored)
/// or a path pattern (`/images/*`; exact case).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum StaticRule {
    /// The path's last segment ends with `.<ext>` (stored without the dot).
    Extension(String),
    /// The path matches the pattern.
    Path(Glob),
}

impl StaticRule {
    /// Parses one entry: `.ext` or `*.ext` (letters, digits, `-`, `_`) is an
    /// extension; anything starting with `/` a path pattern.
    pub fn parse(text: &str) -> Result<StaticRule, String> {
        let ext = text.strip_prefix("*.").or_else(|| text.strip_prefix('.'));
        if let Some(ext) = ext {
            if !ext.is_empty()
                && ext
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Ok(StaticRule::Extension(ext.to_ascii_lowercase()));
            }
            return Err(format!(
                "{text:?}: an extension is letters, digits, `-` and `_` after `.` or `*.`"
            ));
        }
        if text.starts_with('/') {
            return Ok(StaticRule::Path(Glob::new(text)));
        }
        Err(format!("{text:?}: expected an extension (\".gif\", \"*.gif\") or a path pattern starting with \"/\""))
    }

    /// Whether `path` (no query) matches.
    pub fn matches(&self, path: &[u8]) -> bool {
        match self {
            StaticRule::Extension(ext) => {
                let last = path.rsplit(|&b| b == b'/').next().unwrap_or(path);
                let ext = ext.as_bytes();
                last.len() > ext.len()
                    && last[last.len() - ext.len() - 1] == b'.'
                    && last[last.len() - ext.len()..].eq_ignore_ascii_case(ext)
            }
            StaticRule::Path(g) => g.matches(path, false),
        }
    }
}

/// Requests that go to the cluster's default host whatever their cookie
/// (the seed's publishing and administration requests).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Controller {
    /// Path patterns (exact case).
    pub paths: Vec<Glob>,
    /// Methods (exact case, as RFC 9110 says).
    pub methods: Vec<String>,
}

impl Controller {
    /// Whether the request is one.
    pub fn matches(&self, method: &[u8], path: &[u8]) -> bool {
        self.methods.iter().any(|m| m.as_bytes() == method)
            || self.paths.iter().any(|g| g.matches(path, false))
    }
}

/// When responses get a cookie.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Coherence {
    /// Every dynamic response without a valid cookie naming the serving
    /// host (App Center's "Always Add Cookies").
    Always,
    /// Only a response that sets one of the `session_cookies`.
    Session,
}

impl Coherence {
    /// Config names.
    pub const NAMES: &'static [(&'static str, Coherence)] = &[
        ("always", Coherence::Always),
        ("session", Coherence::Session),
    ];
}

/// What the forwarder does when a session's owner cannot take a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OwnerFailure {
    /// Serve here, re-pin the cookie to this host (one session restart).
    Repin,
    /// Answer 503.
    Strict,
}

impl OwnerFailure {
    /// Config names.
    pub const NAMES: &'static [(&'static str, OwnerFailure)] = &[
        ("repin", OwnerFailure::Repin),
        ("strict", OwnerFailure::Strict),
    ];
}

/// A sticky service's policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// When to pin.
    pub coherence: Coherence,
    /// Application session cookie names (`Session` coherence).
    pub session_cookies: Vec<Glob>,
    /// Requests served here, never forwarded, never pinned.
    pub statics: Vec<StaticRule>,
    /// Requests for the default host.
    pub controller: Controller,
    /// Owner unavailable: re-pin or refuse.
    pub on_owner_failure: OwnerFailure,
    /// Most member-to-member hops a request may take (at least 1).
    pub hop_limit: u8,
    /// Out-of-cluster members a cookie may name, by name.
    pub ocf: Vec<String>,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            coherence: Coherence::Always,
            session_cookies: Vec::new(),
            statics: Vec::new(),
            controller: Controller::default(),
            on_owner_failure: OwnerFailure::Repin,
            hop_limit: 1,
            ocf: Vec::new(),
        }
    }
}

/// What the request's sticky cookie came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CookieState<'a> {
    /// None sent.
    Absent,
    /// Sent and refused: treated as absent, counted.
    Refused(CookieError),
    /// Sent and valid.
    Valid(Cookie<'a>),
}

/// The request, as the decision needs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request<'a> {
    /// The method.
    pub method: &'a [u8],
    /// The path (no query).
    pub path: &'a [u8],
    /// The cookie check.
    pub cookie: CookieState<'a>,
    /// Member-to-member hops the request has taken (0 from a client).
    pub hops: u8,
}

/// The live view: which cluster hosts may take requests, and which this is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct View {
    /// This host.
    pub own: HostId,
    /// Hosts in the cluster's view whose service is up.
    pub live: HostSet,
}

impl View {
    /// The default host: the live host with the lowest ID (this host when
    /// none is live, for it still answers).
    pub fn default_host(&self) -> HostId {
        self.live.first().unwrap_or(self.own)
    }
}

/// Where a request is forwarded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target<'a> {
    /// A cluster host, at its dedicated address.
    Host(HostId),
    /// An out-of-cluster member, by its index in [`Policy::ocf`].
    Ocf(usize, &'a [u8]),
}

/// What kind of request a local answer is (the seed's Table 5.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// Matched `static`.
    Static,
    /// A controller request for this host.
    Controller,
    /// Dynamic, with a valid cookie naming this host (coherent).
    Coherent,
    /// Dynamic without one (none, refused, or the owner unavailable).
    Dynamic,
}

/// Why a request is forwarded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Why {
    /// Its cookie names the target.
    Cookie,
    /// A controller request for the default host.
    Controller,
}

/// The decision for one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route<'a> {
    /// Served here.
    Local {
        /// What kind of request.
        class: Class,
        /// Whether the response may get a cookie naming this host
        /// ([`pin`] decides with the response).
        pinnable: bool,
        /// The cookie named a host that is not live (re-pinned).
        repinned: bool,
    },
    /// Forwarded.
    Forward {
        /// Where.
        to: Target<'a>,
        /// Why.
        why: Why,
    },
    /// The hop limit is reached (502).
    HopLimit,
    /// The owner is unavailable and `on_owner_failure = "strict"` (503).
    OwnerUnavailable,
}

/// Decides a request (see the module docs for the order).
pub fn decide<'a>(policy: &'a Policy, view: &View, req: &Request<'a>) -> Route<'a> {
    if policy.statics.iter().any(|s| s.matches(req.path)) {
        return local(Class::Static, false, false);
    }
    if policy.controller.matches(req.method, req.path) {
        let to = view.default_host();
        return if to == view.own {
            local(Class::Controller, false, false)
        } else if req.hops >= policy.hop_limit {
            Route::HopLimit
        } else {
            Route::Forward {
                to: Target::Host(to),
                why: Why::Controller,
            }
        };
    }
    let Request { cookie, hops, .. } = *req;
    match cookie {
        CookieState::Valid(Cookie {
            owner: Owner::Host(h),
            ..
        }) if h == view.own => local(Class::Coherent, true, false),
        _ if hops > 0 => local(Class::Dynamic, true, false),
        CookieState::Valid(Cookie {
            owner: Owner::Host(h),
            ..
        }) if view.live.contains(h) => Route::Forward {
            to: Target::Host(h),
            why: Why::Cookie,
        },
        CookieState::Valid(Cookie {
            owner: Owner::Named(n),
            ..
        }) => match policy.ocf.iter().position(|o| o.as_bytes() == n) {
            Some(i) => Route::Forward {
                to: Target::Ocf(i, policy.ocf[i].as_bytes()),
                why: Why::Cookie,
            },
            None => local(Class::Dynamic, true, false),
        },
        CookieState::Valid(_) => unreachable_owner(policy),
        CookieState::Absent | CookieState::Refused(_) => local(Class::Dynamic, true, false),
    }
}

/// What a request becomes when its owner cannot take it: not in the view,
/// or the connection failed before a request byte was sent.
pub fn unreachable_owner<'a>(policy: &Policy) -> Route<'a> {
    match policy.on_owner_failure {
        OwnerFailure::Repin => local(Class::Dynamic, true, true),
        OwnerFailure::Strict => Route::OwnerUnavailable,
    }
}

fn local<'a>(class: Class, pinnable: bool, repinned: bool) -> Route<'a> {
    Route::Local {
        class,
        pinnable,
        repinned,
    }
}

/// Whether a response served here gets a cookie naming this host: never
/// when not `pinnable`; on a re-pin always; else `Always` pins when the
/// request had no valid cookie naming this host (`coherent` false) or its
/// cookie is past half its lifetime (`stale`), and `Session` when the
/// response sets one of the session cookies (`set_cookies`: the names it
/// sets).
pub fn pin<'n>(
    policy: &Policy,
    pinnable: bool,
    repinned: bool,
    coherent: bool,
    stale: bool,
    set_cookies: impl IntoIterator<Item = &'n [u8]>,
) -> bool {
    if !pinnable {
        return false;
    }
    if repinned {
        return true;
    }
    match policy.coherence {
        Coherence::Always => !coherent || stale,
        Coherence::Session => set_cookies
            .into_iter()
            .any(|n| policy.session_cookies.iter().any(|g| g.matches(n, false))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn h(id: u8) -> HostId {
        HostId::new(id).unwrap()
    }

    fn view(own: u8, live: &[u8]) -> View {
        View {
            own: h(own),
            live: live.iter().map(|&i| h(i)).collect(),
        }
    }

    fn valid(owner: Owner<'_>) -> CookieState<'_> {
        CookieState::Valid(Cookie { owner, issued_s: 0 })
    }

    fn req<'a>(method: &'a [u8], path: &'a [u8], cookie: CookieState<'a>, hops: u8) -> Request<'a> {
        Request {
            method,
            path,
            cookie,
            hops,
        }
    }

    fn policy() -> Policy {
        Policy {
            statics: vec![
                StaticRule::parse("*.gif").unwrap(),
                StaticRule::parse(".CSS").unwrap(),
                StaticRule::parse("/static/*").unwrap(),
            ],
            controller: Controller {
                paths: vec![Glob::new("/admin/*")],
                methods: vec!["PROPFIND".into(), "MKCOL".into()],
            },
            ocf: vec!["other-a".into()],
            ..Policy::default()
        }
    }

    #[test]
    fn globs_match_whole_texts() {
        let g = Glob::new("ASPSESSIONID*");
        assert!(g.matches(b"ASPSESSIONIDQQ", false));
        assert!(g.matches(b"ASPSESSIONID", false));
        assert!(!g.matches(b"aspsessionidqq", false));
        assert!(g.matches(b"aspsessionidqq", true));
        assert!(!g.matches(b"XASPSESSIONID", false));
        assert!(Glob::new("*a*b*").matches(b"xxaxxbxx", false));
        assert!(!Glob::new("*a*b").matches(b"xxaxxbxx", false));
        assert!(Glob::new("").matches(b"", false));
        assert!(!Glob::new("").matches(b"a", false));
        assert!(Glob::new("**").matches(b"", false));
    }

    #[test]
    fn static_rules() {
        let p = policy();
        for path in [&b"/a/b.GIF"[..], b"/x.css", b"/static/", b"/static/a/b"] {
            assert!(p.statics.iter().any(|s| s.matches(path)), "{path:?}");
        }
        for path in [&b"/gif"[..], b"/a.gif/x", b"/staticx", b"/x.cssx"] {
            assert!(!p.statics.iter().any(|s| s.matches(path)), "{path:?}");
        }
        for bad in ["gif", "*.", ".a/b", "*.g*f", ""] {
            assert!(StaticRule::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_decision_follows_the_documented_order() {
        let p = policy();
        let v = view(2, &[1, 2, 3]);
        let get = |path, cookie, hops| decide(&p, &v, &req(b"GET", path, cookie, hops));
        // Static: here, no cookie, even when the cookie names another host.
        assert_eq!(
            get(b"/x.gif", valid(Owner::Host(h(3))), 0),
            local(Class::Static, false, false)
        );
        // Controller: the lowest live host.
        assert_eq!(
            get(b"/admin/x", valid(Owner::Host(h(2))), 0),
            Route::Forward {
                to: Target::Host(h(1)),
                why: Why::Controller
            }
        );
        assert_eq!(get(b"/admin/x", CookieState::Absent, 1), Route::HopLimit);
        assert_eq!(
            decide(
                &p,
                &view(1, &[1, 2]),
                &req(b"PROPFIND", b"/dav", CookieState::Absent, 1)
            ),
            local(Class::Controller, false, false)
        );
        assert_eq!(
            decide(
                &p,
                &view(2, &[2, 3]),
                &req(b"MKCOL", b"/dav", CookieState::Absent, 0)
            ),
            local(Class::Controller, false, false)
        );
        // Cookies.
        assert_eq!(
            get(b"/app", valid(Owner::Host(h(2))), 0),
            local(Class::Coherent, true, false)
        );
        assert_eq!(
            get(b"/app", valid(Owner::Host(h(3))), 0),
            Route::Forward {
                to: Target::Host(h(3)),
                why: Why::Cookie
            }
        );
        // Over a hop: never forwarded again.
        assert_eq!(
            get(b"/app", valid(Owner::Host(h(3))), 1),
            local(Class::Dynamic, true, false)
        );
        // Owner not live.
        assert_eq!(
            get(b"/app", valid(Owner::Host(h(9))), 0),
            local(Class::Dynamic, true, true)
        );
        let strict = Policy {
            on_owner_failure: OwnerFailure::Strict,
            ..policy()
        };
        assert_eq!(
            decide(
                &strict,
                &v,
                &req(b"GET", b"/app", valid(Owner::Host(h(9))), 0)
            ),
            Route::OwnerUnavailable
        );
        // Named members: only those in ocf.
        assert_eq!(
            get(b"/app", valid(Owner::Named(b"other-a")), 0),
            Route::Forward {
                to: Target::Ocf(0, b"other-a"),
                why: Why::Cookie
            }
        );
        assert_eq!(
            get(b"/app", valid(Owner::Named(b"evil")), 0),
            local(Class::Dynamic, true, false)
        );
        // No cookie or a refused one.
        assert_eq!(
            get(b"/app", CookieState::Absent, 0),
            local(Class::Dynamic, true, false)
        );
        assert_eq!(
            get(b"/app", CookieState::Refused(CookieError::BadTag), 0),
            local(Class::Dynamic, true, false)
        );
    }

    #[test]
    fn pinning() {
        let always = Policy::default();
        let session = Policy {
            coherence: Coherence::Session,
            session_cookies: vec![Glob::new("ASPSESSIONID*"), Glob::new("JSESSIONID")],
            ..Policy::default()
        };
        let none: [&[u8]; 0] = [];
        assert!(pin(&always, true, false, false, false, none));
        assert!(!pin(&always, true, false, true, false, none));
        assert!(pin(&always, true, false, true, true, none));
        assert!(!pin(&always, false, true, false, false, none));
        assert!(pin(&session, true, true, false, false, none));
        assert!(!pin(&session, true, false, false, false, [&b"other"[..]]));
        assert!(pin(
            &session,
            true,
            false,
            true,
            false,
            [&b"other"[..], b"ASPSESSIONIDAB"]
        ));
        assert!(pin(
            &session,
            true,
            false,
            false,
            false,
            [&b"JSESSIONID"[..]]
        ));
        assert!(!pin(
            &session,
            true,
            false,
            false,
            false,
            [&b"JSESSIONIDX"[..]]
        ));
    }

    proptest! {
        /// A request is forwarded only to a live host other than this one,
        /// or a configured ocf member, and never past the hop limit.
        #[test]
        fn forwards_only_to_live_others_within_the_hop_limit(
            own in 1u8..=8,
            live_bits in any::<u8>(),
            owner in 1u8..=8,
            hops in 0u8..3,
            method in prop::sample::select(vec![&b"GET"[..], b"PROPFIND", b"POST"]),
            path in prop::sample::select(vec![&b"/app"[..], b"/admin/x", b"/a.gif"]),
            has_cookie in any::<bool>(),
        ) {
            let p = policy();
            let mut live: HostSet = (1..=8).filter(|i| live_bits & (1 << (i - 1)) != 0).map(h).collect();
            live.insert(h(own));
            let v = View { own: h(own), live };
            let cookie = if has_cookie { valid(Owner::Host(h(owner))) } else { CookieState::Absent };
            match decide(&p, &v, &req(method, path, cookie, hops)) {
                Route::Forward { to: Target::Host(t), .. } => {
                    prop_assert!(t != h(own));
                    prop_assert!(live.contains(t));
                    prop_assert!(hops < p.hop_limit);
                }
                Route::Forward { to: Target::Ocf(..), .. } => prop_assert!(false),
                Route::HopLimit => prop_assert!(hops >= p.hop_limit),
                Route::OwnerUnavailable => prop_assert!(false),
                Route::Local { .. } => {}
            }
        }
    }
}
