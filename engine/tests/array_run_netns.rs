//! `shoal run` with a `[[service]]`, end to end in the namespace lab: the
//! proxy worker threads are named and hold no capability beyond the
//! engine's, a client's request to the VIP through the packet engine is
//! routed to the `local` backend, the table is served, the `services`
//! counters reach the stats file, and SIGTERM stops everything.
//!
//! Needs root; fails loudly without it unless `SHOAL_SKIP_PRIVILEGED=1`.

mod netns_run;

use std::process::Command;
use std::time::{Duration, Instant};

use netns_run::{privileged, sh, stop, Lab};
use shoal_controlplane::admin::Body;
use shoal_controlplane::{Request, ReturnCode};
use shoal_engine::sys::caps::Privileges;

/// The `local` backend: one fixed answer per connection.
const LOCAL: &str = "import socket\n\
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
s.bind(('127.0.0.1', 3128)); s.listen(64)\n\
while True:\n    c, _ = s.accept(); c.recv(65536)\n    c.sendall(b'HTTP/1.1 200 OK\\r\\nContent-Length: 5\\r\\nConnection: close\\r\\n\\r\\nlocal'); c.close()\n";

/// Prints the proxy's answer to `TARGET` on the VIP's service port.
const CLIENT: &str = "import socket, sys\n\
s = socket.create_connection(('10.0.0.100', 8080), timeout=5)\n\
s.sendall(('GET %s HTTP/1.1\\r\\nHost: a.test\\r\\nConnection: close\\r\\n\\r\\n' % sys.argv[1]).encode())\n\
out = b''\n\
while True:\n    d = s.recv(65536)\n    if not d: break\n    out += d\n\
print(out.decode(errors='replace'))\n";

fn ask(lab: &Lab, target: &str) -> String {
    sh(&format!(
        "ip netns exec {} python3 -c \"{}\" '{target}'",
        lab.client,
        CLIENT.replace('"', "\\\"")
    ))
}

/// The lab with a one-host cluster config (member `m1`, heartbeats every
/// 50 ms) serving `web` on port 8080 with `local` on 127.0.0.1:3128.
fn lab_with_service(name: &str) -> (Lab, std::path::PathBuf) {
    let lab = Lab::new(&format!("shoal-t-{name}-{}", std::process::id()));
    // Complete checksums on the wire, as a real NIC would deliver.
    sh(&format!(
        "ip netns exec {} ethtool -K eth0 tx off",
        lab.client
    ));
    let config = lab.config("10.0.0.100", &[1]);
    let mut text = std::fs::read_to_string(&config).unwrap();
    text = text.replace("[[host]]\nid = 1\n", "[[host]]\nid = 1\nname = \"m1\"\n");
    text += "\n[heartbeat]\nperiod_ms = 50\n\n[[service]]\nname = \"web\"\nport = 8080\n\
             route = \"carp\"\n[service.carp]\nlocal = \"127.0.0.1:3128\"\nprobe_interval_ms = 100\n";
    std::fs::write(&config, text).unwrap();
    (lab, config)
}

#[test]
fn run_serves_a_carp_service_on_the_vip() {
    if !privileged("array_run_netns") {
        return;
    }
    let (lab, config) = lab_with_service("arun");
    let mut local = Command::new("ip")
        .args(["netns", "exec", &lab.host, "python3", "-c", LOCAL])
        .spawn()
        .expect("local backend");
    lab.wait_listening(3128);
    let mut shoal = lab.start(&config, "af_packet", &[]);

    let pid = sh(&format!("pgrep -n -x shoal -P {}", shoal.id()));
    let pid = pid.trim().parse::<u32>().unwrap_or(shoal.id());
    let tasks: Vec<_> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|e| Some(e.ok()?.path()))
        .collect();
    let names: Vec<String> = tasks
        .iter()
        .filter_map(|t| std::fs::read_to_string(t.join("comm")).ok())
        .map(|c| c.trim().to_string())
        .collect();
    assert!(
        names.iter().any(|n| n == "shoal-proxy-0"),
        "proxy worker thread: {names:?}"
    );
    // The tier's threads start after the drop: none holds more than the
    // engine keeps.
    let kept = shoal_engine::privileges::kept(shoal_engine::privileges::Needs {
        af_xdp: false,
        kernel: shoal_engine::privileges::kernel_version(),
        admin_group: false,
    });
    let mask = Privileges::mask(&kept);
    for task in &tasks {
        let p = Privileges::from_status(
            &std::fs::read_to_string(task.join("status")).unwrap_or_default(),
        );
        assert_eq!(p.permitted & !mask, 0, "{} {p:?}", task.display());
        assert_eq!(p.effective & !mask, 0, "{} {p:?}", task.display());
        assert!(p.no_new_privs, "{} {p:?}", task.display());
    }

    let answer = ask(&lab, "http://a.test/x");
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "{answer}\n{}",
        lab.log()
    );
    assert!(answer.contains("x-shoal-served-by: m1"), "{answer}");
    let table = ask(&lab, "/array.dll?Get.Info.v1");
    assert!(table.contains("Proxy Array Information/1.0"), "{table}");
    assert!(table.contains("m1 10.0.0.11 8080 "), "{table}");

    let timed = |stats: &serde_json::Value| -> u64 {
        stats["services"]["web"]["by_member"]["m1"]["latency"]["counts"]
            .as_array()
            .map_or(0, |c| c.iter().filter_map(|n| n.as_u64()).sum())
    };
    let stats = lab.stats_when(|s| {
        s["services"]["web"]["requests"].as_u64().unwrap_or(0) >= 2 && timed(s) >= 1
    });
    let web = &stats["services"]["web"];
    assert!(web["requests"].as_u64().unwrap_or(0) >= 2, "{stats}");
    assert_eq!(web["routed"]["m1"].as_u64(), Some(1), "{stats}");
    assert_eq!(web["pages"].as_u64(), Some(1), "{stats}");
    // Per member: the routed request, and its latency, are m1's.
    let m1 = &web["by_member"]["m1"];
    assert_eq!(m1["requests"].as_u64(), Some(1), "{stats}");
    assert_eq!(m1["forwarded"].as_u64(), Some(0), "{stats}");
    assert_eq!(timed(&stats), 1, "{stats}");

    let status = stop(&mut shoal);
    assert!(status.success(), "exit {status}: {}", lab.log());
    let _ = local.kill();
    let _ = local.wait();
}

#[test]
fn query_reports_the_services_of_a_converged_member() {
    if !privileged("array_run_netns") {
        return;
    }
    let (lab, config) = lab_with_service("aqry");
    let mut local = Command::new("ip")
        .args(["netns", "exec", &lab.host, "python3", "-c", LOCAL])
        .spawn()
        .expect("local backend");
    lab.wait_listening(3128);
    let mut shoal = lab.start_clustered(&config, "af_packet");
    let socket = lab.admin_socket();
    let call = |req: &Request| shoal_engine::control::call(&socket, req);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !matches!(
        call(&Request::Query).map(|r| r.code),
        Ok(ReturnCode::Converged | ReturnCode::Default)
    ) {
        assert!(Instant::now() < deadline, "never converged: {}", lab.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    // The member joins the array with the converged view.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let answer = ask(&lab, "http://a.test/x");
        if answer.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(Instant::now() < deadline, "{answer}\n{}", lab.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    let r = call(&Request::Query).expect("query");
    let Body::Query(q) = r.body else {
        panic!("query answered {r:?}");
    };
    let web = &q.services.expect("services in query")["web"];
    assert!(web["routed"]["m1"].as_u64().unwrap_or(0) >= 1, "{web}");
    assert_eq!(web["members"][0]["up"], true, "{web}");
    let status = stop(&mut shoal);
    assert!(status.success(), "exit {status}: {}", lab.log());
    let _ = local.kill();
    let _ = local.wait();
}
