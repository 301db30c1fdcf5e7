//! The checks behind shoal's fuzz targets, and what seeds them.
//!
//! Owns: one `check` function per fuzz target (each module below), which
//! feeds one input to the code under test and panics, with a message that
//! says what broke, when an invariant does not hold; and the builders of the
//! seed corpora ([`seeds`]). Two binaries: `seeds` writes the corpora
//! `scripts/fuzz` starts from; `replay TARGET PATH...` runs inputs through a
//! check without libFuzzer (a crash reproduced on plain stable, or a tally
//! of the verdicts a `classify` corpus reaches).
//!
//! Why a library beside the targets: the targets in `fuzz/fuzz_targets/`
//! only build with libFuzzer's instrumentation (`cargo fuzz`), while this
//! crate builds and tests on plain stable, so the checks and the seed
//! builder are compiled, linted and unit tested like every other crate.
//!
//! Adding a target: a module here with a
//! `check(input)`, a three-line file in `fuzz/fuzz_targets/` calling it, a
//! `[[bin]]` entry in `fuzz/Cargo.toml`, and, if it has seeds, a case in
//! `src/bin/seeds.rs`.
//!
//! Panics are the point here: a panic in a `check` is a fuzzing crash. The
//! code under test must never panic; these checks do, on purpose, when it
//! breaks a contract.
#![forbid(unsafe_code)]

pub mod classify;
pub mod config;
pub mod h1;
pub mod head;
pub mod member;
pub mod mux;
pub mod pcap;
pub mod route;
pub mod seeds;
pub mod sticky;
