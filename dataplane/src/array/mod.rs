//! The array tier's sans-IO core: how an array of members routes each HTTP
//! request, starting with the Cache Array Routing Protocol
//! (draft-vinod-carp-v1-03).
//!
//! Owns: the routing key taken from a request head ([`target`]), what a
//! request head asks for and why it is refused ([`head`]), CARP's hashes,
//! multipliers and failover order in three modes ([`carp`]), the route
//! decision with exception and direct host patterns ([`router`]), the
//! membership table and PAC script an array publishes ([`render`]), the
//! authenticated member-to-member hop header ([`member`]) and loop
//! detection through `Via` and `CDN-Loop` ([`hop`]); sticky sessions with
//! the request forwarder ([`sticky`]), the back-end pickers of
//! `route = "clb"` services ([`clb`]), and the HTTP/1.1 message framing a
//! byte relay follows: head parsing, body framing and where a body ends
//! ([`h1`]).
//!
//! Guarantees: no I/O, no clock, no HTTP library; a decision is a pure
//! function of the member set and the request target and does not
//! allocate; every host that builds the same member set makes the same
//! decision for every URL, and so does the PAC script in a browser.
#![forbid(unsafe_code)]

pub mod carp;
pub mod clb;
pub mod h1;
pub mod head;
pub mod hop;
pub mod member;
pub mod mux;
pub mod render;
pub mod router;
pub mod sticky;
pub mod target;

pub use carp::{Carp, CarpError, HashMode, Member, MemberSpec, Order, MAX_MEMBERS};
pub use clb::{Balancer, BalancerConfig, PeakEwma, Policy, Rng, MAX_BACKENDS};
pub use head::{classify, ArrayPage, Form, HeadLimits, HeadView, Refusal};
pub use hop::{seen, via_value};
pub use member::{MemberError, MemberKey, MEMBER_HEADER};
pub use render::{membership_table, pac_script, ArrayInfo, PacTargets, TableMember};
pub use router::{Decision, DomainPattern, PatternError, Router};
pub use target::{KeyPart, KeyParts, KeyStyle, RequestTarget, TargetError};
