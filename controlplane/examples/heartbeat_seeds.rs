//! Writes seed inputs for the `heartbeat` fuzz target (`fuzz/fuzz_targets/
//! heartbeat.rs`, which documents the record format): valid heartbeats of
//! hosts 2 and 3 of a live three-host cluster with the time steps they were
//! sent in, and compact peer records that agree with the fuzzed machine
//! (host 1), so that it joins, agrees and adopts before the fuzzer starts
//! mutating; admin verbs on top. Same key, spec, period and boot ids as
//! the target: both take them from `shoal_testkit::heartbeat`. Inputs stay
//! under 1 KiB (the target reads at most 48 records): its cost grows with
//! them.
//!
//! ```text
//! cargo run -p shoal-controlplane --example heartbeat_seeds -- OUT_DIR
//! ```
//! Writes `OUT_DIR/seed-N` (N = 0..); an existing file is overwritten.

use std::process::ExitCode;

use shoal_controlplane::admin::Scope;
use shoal_controlplane::heartbeat::MAX_FRAME;
use shoal_controlplane::Request;
use shoal_testkit::heartbeat::{machine, PERIOD, START};

/// A time step of the target: one sixteenth of a period.
const STEP: u64 = PERIOD / 16;

/// Runs hosts 1..=3 without loss for `steps` time steps; returns the
/// records of hosts 2 and 3's heartbeats, with `verb` applied to host 2 at
/// step `at`.
fn cluster(steps: u32, verb: Option<(u32, Request)>) -> Option<Vec<u8>> {
    let mut hosts = [machine(1)?, machine(2)?, machine(3)?];
    let mut out = Vec::new();
    let mut buf = vec![0u8; MAX_FRAME];
    let mut now = START;
    for step in 0..steps {
        if let Some((at, req)) = &verb {
            if *at == step {
                let _ = hosts[1].handle_admin(req, now);
            }
        }
        for i in 0..hosts.len() {
            hosts[i].handle_timeout(now);
            while hosts[i].poll_event().is_some() {}
            while let Some(n) = hosts[i].poll_transmit(now, &mut buf) {
                for (j, h) in hosts.iter_mut().enumerate() {
                    if j != i {
                        let _ = h.handle_heartbeat(&buf[..n], now);
                    }
                }
                if i > 0 {
                    out.extend_from_slice(&[0, 0, u8::try_from(n).ok()?]);
                    out.extend_from_slice(&buf[..n]);
                }
            }
        }
        // Time step (op 2, arg 0: one sixteenth of a period).
        out.extend_from_slice(&[2, 0, 0]);
        now += STEP;
    }
    Some(out)
}

/// A peer heartbeat record (op 1) for peer `2 + peer`: state, phase and
/// the digest selectors as the target reads them (selector 2: the fuzzed
/// machine's own proposal digest), sequence numbers counting up.
fn peer(peer: u8, state: u8, phase: u8, digests: [u8; 3], weight: u8) -> Vec<u8> {
    let mut p = vec![0u8; 56];
    p[0] = state;
    p[1] = phase;
    p[16..19].copy_from_slice(&digests);
    p[52] = weight;
    p[53] = weight;
    let mut r = vec![1, peer, 56];
    r.extend_from_slice(&p);
    r
}

/// Two peers that follow the fuzzed machine's proposal for `rounds`
/// quarter periods (after three periods of listening), with `verb` (op 3 argument) applied at round `at`.
fn echo(rounds: u32, verb: Option<(u32, u8)>, digests: [u8; 3]) -> Vec<u8> {
    // Three periods at once (op 2, arg 47): the machine's listening time.
    let mut out = vec![2, 47, 0];
    for k in 0..rounds {
        if let Some((at, v)) = verb {
            if at == k {
                out.extend_from_slice(&[3, v, 0]);
            }
        }
        out.extend_from_slice(&peer(0, 1, 1, digests, 50));
        out.extend_from_slice(&peer(1, 1, 1, digests, 20));
        // A quarter period (op 2, arg 3).
        out.extend_from_slice(&[2, 3, 0]);
    }
    out
}

fn main() -> ExitCode {
    let Some(dir) = std::env::args_os().nth(1) else {
        eprintln!("usage: heartbeat_seeds OUT_DIR");
        return ExitCode::from(2);
    };
    let dir = std::path::PathBuf::from(dir);
    let port80 = Scope::Rule {
        vip: None,
        port: Some(80),
    };
    // Raw frames of a real cluster (decoder coverage), then peers that
    // agree with whatever the fuzzed machine proposes (convergence
    // coverage), with verbs on top.
    let frames = cluster(24, None).map(|f| f.into_iter().take(400).collect::<Vec<u8>>());
    let both = |a: Option<Vec<u8>>, b: Vec<u8>| {
        a.map(|mut a| {
            a.extend_from_slice(&b);
            a
        })
    };
    let seeds = [
        frames.clone(),
        Some(echo(7, None, [2, 2, 2])),
        Some(echo(7, None, [2, 0, 0])),
        Some(echo(8, Some((6, 2)), [2, 2, 2])),
        Some(echo(8, Some((6, 6)), [2, 2, 2])),
        Some(echo(8, Some((6, 5)), [2, 2, 2])),
        both(frames, echo(3, Some((2, 3)), [2, 2, 0])),
        cluster(64, Some((40, Request::Drain { scope: port80 })))
            .map(|f| f.into_iter().take(1_000).collect()),
    ];
    if let Err(e) = std::fs::create_dir_all(&dir) {
        eprintln!("heartbeat_seeds: {}: {e}", dir.display());
        return ExitCode::FAILURE;
    }
    for (i, seed) in seeds.iter().enumerate() {
        let Some(seed) = seed else {
            eprintln!("heartbeat_seeds: seed {i} could not be built");
            return ExitCode::FAILURE;
        };
        let path = dir.join(format!("seed-{i}"));
        if let Err(e) = std::fs::write(&path, seed) {
            eprintln!("heartbeat_seeds: {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    }
    println!(
        "heartbeat_seeds: {} seeds in {}",
        seeds.len(),
        dir.display()
    );
    ExitCode::SUCCESS
}
