//! Test support for shoal, and nothing else: frame builders written on the
//! dataplane's wire views ([`frame`]), cluster fixtures ([`spec`],
//! [`heartbeat`]) and the gate privileged tests pass through ([`gate`]).
//!
//! It is a dev-dependency of the workspace crates' tests, a dependency of
//! the fuzz harness (its seeds) and of the benches (`shoal-perf`); no
//! shipped binary links it, and it is never published.
//!
//! # Who may use it
//!
//! It depends on `shoal-dataplane` and `shoal-controlplane`. Integration
//! tests (`tests/*.rs`) of those crates, and every other crate, see one copy
//! of their types. The crates' own unit tests (`#[cfg(test)]` inside
//! `src/`) do not: there the crate under test is a second copy, and a
//! `ClusterSpec` from this crate is not theirs. Functions returning plain
//! bytes (`Vec<u8>` frames) work from anywhere; the dataplane's and the
//! control plane's unit tests that need their own types from a fixture keep
//! a local builder, or the test moves to `tests/`.
//!
//! Builders panic on impossible requests (a payload longer than a length
//! field holds): they build test inputs, and a bad one is a test bug.
#![forbid(unsafe_code)]

pub mod frame;
pub mod gate;
pub mod heartbeat;
pub mod spec;

pub use gate::{privileged, require, Need};
