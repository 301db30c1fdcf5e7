//! Benchmarks (issue 5).
#![forbid(unsafe_code)]
