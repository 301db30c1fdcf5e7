//! shoal's dataplane: the deterministic filter every cluster host runs on
//! every frame it sees. Sans-IO: bytes and time in, verdicts out.
#![forbid(unsafe_code)]

pub mod model;

pub use model::*;
