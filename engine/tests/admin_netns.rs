//! The admin verbs against a real `shoal run` with the control plane, in a
//! private pair of namespaces: no verb holds the control thread long enough
//! to gap its heartbeats at 50 ms periods.
//!
//! Needs root; fails loudly without it unless `SHOAL_SKIP_PRIVILEGED=1`.

mod netns_run;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use netns_run::{privileged, stop, Lab};
use shoal_controlplane::{Request, ReturnCode};
use shoal_dataplane::wire::ethertype;

const PERIOD_MS: u64 = 50;

fn config_text(affinity: &str) -> String {
    format!(
        "[cluster]\nvips = [\"10.0.0.100\"]\nkey_file = \"cluster.key\"\n\n\
         [heartbeat]\nperiod_ms = {PERIOD_MS}\ntolerance = 3\n\n\
         [[host]]\nid = 1\ninterface = \"eth0\"\ndedicated = [\"10.0.0.11/16\"]\n\n\
         [[rule]]\nports = [0, 65535]\nprotocol = \"both\"\naffinity = \"{affinity}\"\n"
    )
}

fn wall() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// The largest gap between consecutive heartbeats in `stamps` that ends
/// inside `[from, to]` (seconds, the capture's clock).
fn max_gap(stamps: &[f64], from: f64, to: f64) -> f64 {
    stamps
        .windows(2)
        .filter(|w| w[1] >= from && w[0] <= to)
        .map(|w| w[1] - w[0])
        .fold(0.0, f64::max)
}

fn heartbeats_keep_their_cadence(backend: &str) {
    if !privileged("admin_netns") {
        return;
    }
    let lab = Lab::new(&format!("shoal-t-adm-{}-{backend}", std::process::id()));
    let config = lab.config("10.0.0.100", &[1]);
    std::fs::write(&config, config_text("single")).unwrap();
    let mut shoal = lab.start_clustered(&config, backend);
    let socket = lab.admin_socket();
    let call = |req: &Request| shoal_engine::control::call(&socket, req);

    // Converged alone: a few periods.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = call(&Request::Query).expect("query");
        if matches!(r.code, ReturnCode::Converged | ReturnCode::Default) {
            break;
        }
        assert!(Instant::now() < deadline, "never converged: {r:?}");
        std::thread::sleep(Duration::from_millis(50));
    }

    // Heartbeats as the peer sees them, with kernel timestamps.
    let mut capture = Command::new("ip")
        .args(["netns", "exec", &lab.client])
        .args(["tcpdump", "-i", "eth0", "-nn", "-tt", "-l", "-Q", "in"])
        .args(["ether", "proto", &format!("0x{:04x}", ethertype::HEARTBEAT)])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("tcpdump");
    let stamps = Arc::new(Mutex::new(Vec::<f64>::new()));
    let reader = {
        let stamps = stamps.clone();
        let out = capture.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if let Some(t) = line.split(' ').next().and_then(|t| t.parse().ok()) {
                    stamps.lock().unwrap().push(t);
                }
            }
        })
    };
    let started = Instant::now();
    while stamps.lock().unwrap().len() < 5 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no heartbeats captured: {}",
            lab.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    // Each verb, with the capture clock's time around it.
    let mut spans = Vec::new();
    let affinities = ["none", "single", "network"];
    let verbs = [
        Request::Reload,
        Request::Suspend,
        Request::Resume,
        Request::Start,
        Request::Reload,
        Request::Stop,
        Request::Start,
        Request::Reload,
        Request::Drainstop,
        Request::Start,
    ];
    for (i, verb) in verbs.iter().enumerate() {
        if *verb == Request::Reload {
            std::fs::write(&config, config_text(affinities[i % 3])).unwrap();
        }
        let from = wall();
        let r = call(verb).expect("verb");
        assert!(
            shoal_controlplane::admin::succeeded(r.code),
            "{verb:?}: {r:?}"
        );
        // What the verb set in motion (installs, resets) completes within
        // a few periods.
        std::thread::sleep(Duration::from_millis(8 * PERIOD_MS));
        spans.push((format!("{verb:?}"), from, wall()));
    }
    std::thread::sleep(Duration::from_millis(200));
    let _ = shoal_engine::sys::signal::terminate(capture.id());
    let _ = capture.wait();
    let _ = reader.join();
    let status = stop(&mut shoal);
    assert!(
        status.success(),
        "shoal exited with {status}: {}",
        lab.log()
    );

    let stamps = stamps.lock().unwrap().clone();
    let mut worst = 0.0f64;
    let mut report = String::new();
    for (verb, from, to) in &spans {
        let gap = max_gap(&stamps, *from, *to);
        report += &format!("{verb}: {:.1} ms; ", gap * 1000.0);
        worst = worst.max(gap);
    }
    eprintln!("{backend}: largest heartbeat gap per verb: {report}");
    assert!(
        worst < 2.0 * PERIOD_MS as f64 / 1000.0,
        "{backend}: heartbeats gapped {:.1} ms (period {PERIOD_MS} ms): {report}",
        worst * 1000.0
    );
}

#[test]
fn verbs_do_not_gap_heartbeats_af_packet() {
    heartbeats_keep_their_cadence("af_packet");
}

#[test]
fn verbs_do_not_gap_heartbeats_af_xdp() {
    heartbeats_keep_their_cadence("af_xdp");
}
