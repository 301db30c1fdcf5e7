//! The `shoal-bench` command: shoal's benchmarks as a binary of their own,
//! so that the `shoal` binary a cluster host runs links none of them.
//! `shoal bench ARGS` runs `shoal-bench ARGS` from the same directory.

#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // `shoal-bench … --json | head` ends quietly, as `shoal` does.
    shoal_engine::sys::signal::default_sigpipe();
    match shoal_perf::run(shoal_perf::BenchArgs::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shoal-bench: {e:#}");
            ExitCode::from(1)
        }
    }
}
