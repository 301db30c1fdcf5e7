//! `shoal top` in a real terminal: the real binary runs in a detached tmux
//! session (160×50, a tmux server of its own through `-L`), the pane is
//! captured and read, and `q` is typed.
//!
//! A real engine needs namespaces (the lab lock), so the admin socket here
//! is served by a small responder in this test: it answers every request
//! line with a `display` answer whose counters grow by the same amounts on
//! each reading (1000 cluster frames, 250 of them kept, 40 requests,
//! 2 errors), so what the screen shows does not depend on the time between
//! readings: the share is 25.0 %. The same view against a live lab host is
//! the lab case `top_tmux` (group `ops`).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use shoal_controlplane::admin::{Body, ParamsReport, PeerReport, QueryReport};
use shoal_controlplane::{HostState, Phase, Response, ReturnCode};

fn display(n: u64) -> Response {
    let query = QueryReport {
        host: 1,
        state: HostState::Converged,
        phase: Phase::Stable,
        members: vec![1, 2, 3],
        epoch: 42,
        default_host: Some(1),
        excluded_rule_mismatch: vec![],
        excluded_duplicate_id: vec![],
        outvoted: false,
        duplicate_id: false,
        stepped_back_duplicate_id: false,
        last_convergence_ns: Some(1_250_000_000),
        blocked_reason: None,
        counters: Default::default(),
        services: Some(json!({"squidfarm": {
            "requests": 40 * n,
            "errors": {"timeout": 2 * n},
            "members": [{"name": "cache1", "up": true}, {"name": "cache2", "up": true}],
            "latency": {"bounds_s": [0.005, 0.05], "counts": [30 * n, 10 * n, 0], "sum_s": 0.2 * n as f64},
        }})),
        rules_left: vec![],
        rule_health: None,
        frames: Some(json!({
            "received": 1000 * n, "for_cluster": 1000 * n, "kept": 250 * n, "passed": 0,
            "dropped": {"not_owner": 750 * n}, "malformed": {}, "xdp_dropped": 0,
        })),
    };
    let peer = |host| PeerReport {
        host,
        state: HostState::Converged,
        phase: Phase::Stable,
        last_heard_ns_ago: 100_000_000,
        rules_match: true,
        duplicate_id: false,
    };
    Response::new(
        ReturnCode::Converged,
        "",
        Body::Display {
            query,
            rules: vec![],
            peers: vec![peer(2), peer(3)],
            params: ParamsReport {
                host: 1,
                boot_id: 1,
                period_ms: 1000,
                tolerance: 5,
                converge_periods: 3,
                drain_timeout_s: 0,
                fingerprint: "0".into(),
                rules: 0,
            },
        },
    )
}

/// Serves `display` answers on `path`; returns how many were asked for.
fn fake_engine(path: &Path) -> Arc<AtomicU64> {
    let listener = UnixListener::bind(path).unwrap();
    let served = Arc::new(AtomicU64::new(0));
    let count = served.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut line = String::new();
            if BufReader::new(&stream).read_line(&mut line).is_err() {
                continue;
            }
            assert!(line.contains("display"), "top asked {line:?}");
            let n = count.fetch_add(1, Ordering::SeqCst) + 1;
            let answer = shoal_controlplane::admin::encode_response(&display(n));
            let _ = stream.write_all(answer.as_bytes());
        }
    });
    served
}

struct Tmux {
    server: String,
}

impl Tmux {
    fn run(&self, args: &[&str]) -> Output {
        Command::new("tmux")
            .args(["-L", &self.server])
            .args(args)
            .output()
            .expect("tmux (scripts/test.sh installs it)")
    }

    fn pane(&self) -> String {
        let out = self.run(&["capture-pane", "-p", "-t", "top"]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The pane once it shows `needle` (at most 15 s).
    fn wait_for(&self, needle: &str) -> String {
        let start = Instant::now();
        loop {
            let pane = self.pane();
            if pane.contains(needle) {
                return pane;
            }
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "no {needle:?} on the screen:\n{pane}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.run(&["kill-server"]);
    }
}

/// The words of the line whose first word is `first`.
fn row<'a>(pane: &'a str, first: &str) -> Vec<&'a str> {
    pane.lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|w| w.first() == Some(&first))
        .unwrap_or_else(|| panic!("no row {first:?}:\n{pane}"))
}

fn words<'a>(pane: &'a str, needle: &str) -> Vec<&'a str> {
    pane.lines()
        .find(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no line with {needle:?}:\n{pane}"))
        .split_whitespace()
        .collect()
}

#[test]
fn top_shows_the_engine_and_quits_on_q() {
    let dir: PathBuf = std::env::temp_dir().join(format!("shoal-top-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let socket = dir.join("host1.sock");
    let served = fake_engine(&socket);
    let tmux = Tmux {
        server: format!("shoal-top-test-{}", std::process::id()),
    };
    // The shell line after `top` shows its exit status once it quits.
    let command = format!(
        "{} top --socket {}; echo top-exit=$?; sleep 60",
        env!("CARGO_BIN_EXE_shoal"),
        socket.display()
    );
    let out = tmux.run(&[
        "new-session",
        "-d",
        "-x",
        "160",
        "-y",
        "50",
        "-s",
        "top",
        &command,
    ]);
    assert!(out.status.success(), "{out:?}");

    // The second reading gives rates: the share is measured from counters.
    let pane = tmux.wait_for("25.0%");
    let head = words(&pane, "epoch 42");
    assert_eq!(
        head[..12],
        [
            "host",
            "1",
            "converged",
            "/",
            "stable",
            "epoch",
            "42",
            "members",
            "[1,2,3]",
            "last",
            "convergence",
            "1250.0"
        ]
    );
    let me = row(&pane, "1*");
    assert_eq!(me[..5], ["1*", "yes", "converged", "stable", "-"]);
    assert_eq!(me[6], "25.0%");
    let kept: f64 = me[5].parse().unwrap();
    assert!(kept > 0.0, "{me:?}");
    assert_eq!(
        row(&pane, "2")[..5],
        ["2", "yes", "converged", "stable", "100"]
    );
    let drops = row(&pane, "not_owner");
    let total: u64 = drops[1].parse().unwrap();
    assert!(
        total >= 1500 && total.checked_rem(750) == Some(0),
        "{drops:?}"
    );
    assert!(drops[2].parse::<f64>().unwrap() > 0.0, "{drops:?}");
    let farm = row(&pane, "squidfarm");
    assert_eq!(farm[6..], ["<=50", "2/2"], "{farm:?}");
    assert_eq!(farm[5], "5.00", "mean latency: {farm:?}");
    assert!(!pane.contains("engine:"), "{pane}");
    let readings = served.load(Ordering::SeqCst);
    assert!(readings >= 2, "{readings}");

    let out = tmux.run(&["send-keys", "-t", "top", "q"]);
    assert!(out.status.success(), "{out:?}");
    let pane = tmux.wait_for("top-exit=");
    assert!(pane.contains("top-exit=0"), "{pane}");
    // Quitting left the alternate screen: the view is gone.
    assert!(!pane.contains("squidfarm"), "{pane}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn top_without_an_engine_says_so_and_keeps_asking() {
    let dir: PathBuf = std::env::temp_dir().join(format!("shoal-top-none-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let socket = dir.join("host9.sock");
    let tmux = Tmux {
        server: format!("shoal-top-none-{}", std::process::id()),
    };
    let command = format!(
        "{} top --socket {}; echo top-exit=$?; sleep 60",
        env!("CARGO_BIN_EXE_shoal"),
        socket.display()
    );
    let out = tmux.run(&[
        "new-session",
        "-d",
        "-x",
        "160",
        "-y",
        "50",
        "-s",
        "top",
        &command,
    ]);
    assert!(out.status.success(), "{out:?}");
    let pane = tmux.wait_for("waiting for the engine");
    assert!(pane.contains("talking to shoal at"), "{pane}");
    // The engine comes up: the next reading shows it.
    let _served = fake_engine(&socket);
    tmux.wait_for("epoch 42");
    tmux.run(&["send-keys", "-t", "top", "q"]);
    assert!(tmux.wait_for("top-exit=").contains("top-exit=0"));
    let _ = std::fs::remove_dir_all(&dir);
}
