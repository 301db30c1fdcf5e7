//! `shoal bench array`: the array tier's CARP routing, in memory and on
//! the wire.
//!
//! Owns: [`ArrayReport`] (`array.json`), [`run`], its text and markdown;
//! [`clb`] is `shoal bench clb` (`clb.json`, its own report).
//! * [`routing`]: routing decisions per second per core through
//!   `Router::decide`, 4/16/64 members, every hash mode.
//! * [`wire`]: `wrk` against shoal's CARP service, HAProxy, nginx and
//!   Squid, each pinned to one core in front of the same origin servers,
//!   in network namespaces of its own.
//!
//! A bench, not a test: it fails only when something is broken (a
//! namespace cannot be made, HAProxy, nginx or Squid will not serve),
//! never on a figure.

#![forbid(unsafe_code)]

pub mod clb;
pub mod routing;
pub mod wire;

use anyhow::Result;
use serde::{Deserialize, Serialize};

/// The whole report (`array.json`): the wire half's keys (`cases[]` and
/// the rest) at the top, the in-memory half under `routing`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ArrayReport {
    /// The machine this report was measured on (results.md's stamp names
    /// the latest run of any bench; this one stays with the figures).
    pub machine: Option<crate::machine::Machine>,
    /// In memory.
    pub routing: routing::RoutingReport,
    /// On the wire.
    #[serde(flatten)]
    pub wire: wire::WireArrayReport,
}

/// Options.
#[derive(Clone, Debug)]
pub struct ArrayOptions {
    /// `routing` or `wire`: that half only (the other keeps what the
    /// results directory held, or is empty).
    pub only: Option<String>,
    /// In-memory seconds per case and round.
    pub routing_seconds: f64,
    /// On-the-wire seconds per frontend and round.
    pub wire_seconds: f64,
    /// Rounds.
    pub rounds: usize,
    /// A short run for CI.
    pub smoke: bool,
}

/// Runs both halves.
///
/// # Errors
/// When a half is broken (never on a figure).
pub fn run(opts: &ArrayOptions, previous: Option<&ArrayReport>) -> Result<ArrayReport> {
    let machine = Some(crate::machine::Machine::describe());
    let only = opts.only.as_deref();
    let routing = if only == Some("wire") {
        previous.map(|p| p.routing.clone()).unwrap_or_default()
    } else {
        routing::run(&routing::RoutingOptions {
            seconds: opts.routing_seconds,
            rounds: opts.rounds,
        })?
    };
    let wire = if only == Some("routing") {
        previous.map(|p| p.wire.clone()).unwrap_or_default()
    } else {
        wire::run(&wire::WireOptions {
            seconds: opts.wire_seconds,
            rounds: opts.rounds,
            connections: 50,
            warmup: if opts.smoke { 1.0 } else { 2.0 },
        })?
    };
    Ok(ArrayReport {
        machine,
        routing,
        wire,
    })
}

/// The text summary.
pub fn text(r: &ArrayReport) -> String {
    let mut s = String::new();
    if !r.routing.cases.is_empty() {
        s += &routing::text(&r.routing);
    }
    if !r.wire.cases.is_empty() {
        s += &wire::text(&r.wire);
    }
    s
}

/// The markdown section of results.md.
pub fn markdown(r: &ArrayReport) -> String {
    let mut s = String::from("## Array (CARP)\n\n");
    if let Some(m) = &r.machine {
        s += &format!("Measured on: {}.\n\n", m.line());
    }
    if !r.routing.cases.is_empty() {
        s += &routing::markdown(&r.routing);
    }
    if !r.wire.cases.is_empty() {
        s += &wire::markdown(&r.wire);
    }
    s
}
