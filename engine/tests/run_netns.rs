//! `shoal run` end to end in a private pair of namespaces, on both
//! backends: ARP for the VIP answered with the cluster MAC, a real kernel TCP
//! connection served through the TAP, another host's share dropped, every
//! engine thread down to the capabilities it still needs with
//! `no_new_privs`, and nothing left behind after SIGTERM.
//!
//! Needs root; fails loudly without it unless `SHOAL_SKIP_PRIVILEGED=1`.

mod netns_run;

use std::process::Command;

use netns_run::{privileged, sh, stop, Lab};
use shoal_engine::sys::caps::Privileges;

/// The pid of the `shoal` process `ip netns exec … env … shoal` became
/// (the same pid when both exec, else a descendant).
fn engine_pid(spawned: u32) -> u32 {
    let mut pid = spawned;
    for _ in 0..4 {
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if comm.trim() == "shoal" {
            return pid;
        }
        let children =
            std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        match children
            .split_whitespace()
            .next()
            .and_then(|c| c.parse().ok())
        {
            Some(child) => pid = child,
            None => break,
        }
    }
    panic!("no shoal process under pid {spawned}");
}

const SERVER: &str = "import socket\n\
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
s.bind(('0.0.0.0', 8080)); s.listen(64)\n\
while True:\n    c, _ = s.accept(); c.sendall(b'host 1\\n'); c.close()\n";

const CLIENT: &str = "import socket, sys\n\
ok = 0\n\
for i in range(1, 41):\n    s = socket.socket(); s.settimeout(0.5); s.bind(('10.0.5.%d' % i, 0))\n    try:\n        s.connect(('10.0.0.100', 8080)); ok += s.recv(16) == b'host 1\\n'\n    except OSError:\n        pass\n    s.close()\n\
print(ok)\n";

fn end_to_end(backend: &str) {
    if !privileged("run_netns") {
        return;
    }
    let lab = Lab::new(&format!("shoal-t-run-{}-{backend}", std::process::id()));
    // Complete checksums on the wire, as a real NIC would deliver, and 40
    // client addresses.
    sh(&format!(
        "ip netns exec {} ethtool -K eth0 tx off",
        lab.client
    ));
    for i in 1..=40 {
        sh(&format!(
            "ip -n {} addr add 10.0.5.{i}/16 dev eth0",
            lab.client
        ));
    }
    let mut server = Command::new("ip")
        .args(["netns", "exec", &lab.host, "python3", "-c", SERVER])
        .spawn()
        .expect("server");
    lab.wait_listening(8080);
    let before = sh(&format!(
        "ip netns exec {} sysctl -n net.ipv4.conf.eth0.arp_ignore",
        lab.host
    ));
    // Two hosts in a static view; only host 1 runs, so host 2's share must
    // be dropped, not served.
    let mut shoal = lab.start(&lab.config("10.0.0.100", &[1, 2]), backend, &[]);
    let log = || lab.log();

    let served: u32 = sh(&format!(
        "ip netns exec {} python3 -c \"{}\"",
        lab.client,
        CLIENT.replace('"', "\\\"")
    ))
    .trim()
    .parse()
    .unwrap_or(0);
    let neigh = sh(&format!("ip -n {} neigh show 10.0.0.100", lab.client));
    assert!(
        neigh.contains("02:bf:0a:00:00:64"),
        "ARP for the VIP not answered with the cluster MAC: {neigh}"
    );
    // Roughly half of 40 clients hash to the absent host 2: host 1 serves
    // the others and drops those.
    assert!(
        (8..=32).contains(&served),
        "served {served} of 40: {}",
        log()
    );
    let stats = lab.stats_when(|s| {
        s["descriptor_table"]["inserted"].as_u64().unwrap_or(0) >= served as u64
            && s["delivered"].as_u64().unwrap_or(0) > 0
    });
    // Host 2's share is dropped: in the kernel by the XDP fast path, or by
    // userspace (AF_PACKET, or frames the fast path leaves to userspace).
    let not_owner = stats["dropped"]["not_owner"].as_u64().unwrap_or(0);
    let xdp_dropped = stats["xdp_dropped"].as_u64().unwrap_or(0);
    assert!(not_owner + xdp_dropped > 0, "{stats}");
    assert!(stats["delivered"].as_u64().unwrap_or(0) > 0, "{stats}");
    // Every connection served was tracked: inserted into a bounded table.
    let table = &stats["descriptor_table"];
    assert!(table["capacity"].as_u64().unwrap_or(0) > 0, "{stats}");
    assert!(
        table["inserted"].as_u64().unwrap_or(0) >= served as u64,
        "{stats}"
    );
    assert_eq!(table["evicted"]["established"].as_u64(), Some(0), "{stats}");
    assert!(
        stats["backend"].as_str().unwrap_or("").starts_with(backend),
        "{stats}"
    );

    // Once set up, every thread of the engine holds only what it still
    // needs, and nothing it runs can gain more.
    let pid = engine_pid(shoal.id());
    let kept = shoal_engine::privileges::kept(shoal_engine::privileges::Needs {
        af_xdp: backend == "af_xdp",
        kernel: shoal_engine::privileges::kernel_version(),
        admin_group: false,
    });
    let mask = Privileges::mask(&kept);
    let tasks: Vec<_> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(tasks.len() > 1, "the engine runs its threads: {tasks:?}");
    for task in tasks {
        let p = Privileges::from_status(
            &std::fs::read_to_string(task.join("status")).unwrap_or_default(),
        );
        assert_eq!(p.bounding, mask, "{} {p:?} kept {kept:?}", task.display());
        assert_eq!(p.permitted & !mask, 0, "{} {p:?}", task.display());
        assert_eq!(p.effective & !mask, 0, "{} {p:?}", task.display());
        assert_eq!(p.ambient, 0, "{} {p:?}", task.display());
        assert!(p.no_new_privs, "{} {p:?}", task.display());
    }

    // SIGTERM: everything undone (with the capabilities kept).
    let status = stop(&mut shoal);
    assert!(status.success(), "exit {status}: {}", log());
    let links = sh(&format!("ip -n {} link show", lab.host));
    assert!(!links.contains("shoal0"), "TAP left behind: {links}");
    assert!(
        !links.contains("prog/xdp") && !links.contains(" xdp"),
        "XDP program left behind: {links}"
    );
    let tables = sh(&format!("ip netns exec {} nft list tables", lab.host));
    assert!(
        !tables.contains("shoal"),
        "nftables table left behind: {tables}"
    );
    let after = sh(&format!(
        "ip netns exec {} sysctl -n net.ipv4.conf.eth0.arp_ignore",
        lab.host
    ));
    assert_eq!(before, after, "arp_ignore not restored");
    let _ = server.kill();
    let _ = server.wait();
}

#[test]
fn af_xdp_serves_its_share_and_cleans_up() {
    end_to_end("af_xdp");
}

#[test]
fn af_packet_serves_its_share_and_cleans_up() {
    end_to_end("af_packet");
}
