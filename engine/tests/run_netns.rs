//! `shoal run` end to end in a private pair of namespaces, on both
//! backends: ARP for the VIP answered with the cluster MAC, a real kernel TCP
//! connection served through the TAP, another host's share dropped, and
//! nothing left behind after SIGTERM.
//!
//! Needs root; fails loudly without it unless `SHOAL_SKIP_PRIVILEGED=1`.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn privileged() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    if !root && std::env::var_os("SHOAL_SKIP_PRIVILEGED").is_some() {
        eprintln!("SKIP (loud): run_netns needs root");
        return false;
    }
    assert!(
        root,
        "run_netns needs root (set SHOAL_SKIP_PRIVILEGED=1 to skip)"
    );
    true
}

fn sh(cmd: &str) -> String {
    let out = Command::new("sh").arg("-c").arg(cmd).output().expect("sh");
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

struct Lab {
    host: String,
    client: String,
    dir: PathBuf,
}

impl Lab {
    fn new(tag: &str) -> Self {
        let p = std::process::id();
        let lab = Lab {
            host: format!("shoal-t-run-{p}-{tag}-h"),
            client: format!("shoal-t-run-{p}-{tag}-c"),
            dir: std::env::temp_dir().join(format!("shoal-t-run-{p}-{tag}")),
        };
        std::fs::create_dir_all(&lab.dir).unwrap();
        let (h, c) = (&lab.host, &lab.client);
        for cmd in [
            format!("ip netns add {h}"),
            format!("ip netns add {c}"),
            format!("ip -n {h} link add eth0 type veth peer name eth0 netns {c}"),
            format!("ip -n {h} link set lo up"),
            format!("ip -n {h} link set eth0 up"),
            format!("ip -n {c} link set eth0 up"),
            format!("ip -n {h} addr add 10.0.0.11/16 dev eth0"),
            format!("ip -n {c} addr add 10.0.0.200/16 dev eth0"),
            // Complete checksums on the wire, as a real NIC would deliver.
            format!("ip netns exec {c} ethtool -K eth0 tx off"),
        ] {
            let out = sh(&cmd);
            assert!(!out.contains("rror"), "{cmd}: {out}");
        }
        for i in 1..=40 {
            sh(&format!("ip -n {c} addr add 10.0.5.{i}/16 dev eth0"));
        }
        lab
    }

    fn config(&self) -> PathBuf {
        let key = self.dir.join("cluster.key");
        std::fs::write(
            &key,
            "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\n",
        )
        .unwrap();
        let cfg = self.dir.join("cluster.toml");
        // Two hosts in a static view; only host 1 runs, so host 2's share
        // must be dropped, not served.
        std::fs::write(
            &cfg,
            "[cluster]\nvips = [\"10.0.0.100\"]\nkey_file = \"cluster.key\"\n\n\
             [[host]]\nid = 1\ninterface = \"eth0\"\ndedicated = [\"10.0.0.11/16\"]\n\n\
             [[host]]\nid = 2\ninterface = \"eth0\"\ndedicated = [\"10.0.0.12/16\"]\n",
        )
        .unwrap();
        cfg
    }

    fn run(&self, backend: &str) -> Child {
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.host,
                env!("CARGO_BIN_EXE_shoal"),
                "run",
                "--static-view",
                "--host",
                "1",
            ])
            .arg("--config")
            .arg(self.config())
            .arg("--stats")
            .arg(self.dir.join("stats.json"))
            .args(["--backend", backend])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.dir.join("shoal.log")).unwrap())
            .spawn()
            .expect("spawn shoal")
    }

    fn stats(&self) -> serde_json::Value {
        let text = std::fs::read_to_string(self.dir.join("stats.json")).unwrap_or_default();
        serde_json::from_str(&text).unwrap_or(serde_json::Value::Null)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        sh(&format!("ip netns pids {} | xargs -r kill -9", self.host));
        sh(&format!(
            "ip netns del {}; ip netns del {}",
            self.host, self.client
        ));
        let _ = std::fs::remove_dir_all(&self.dir);
    }
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
    if !privileged() {
        return;
    }
    let lab = Lab::new(backend);
    let mut server = Command::new("ip")
        .args(["netns", "exec", &lab.host, "python3", "-c", SERVER])
        .spawn()
        .expect("server");
    let before = sh(&format!(
        "ip netns exec {} sysctl -n net.ipv4.conf.eth0.arp_ignore",
        lab.host
    ));
    let mut shoal = lab.run(backend);
    let deadline = Instant::now() + Duration::from_secs(10);
    while lab.stats().is_null() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = || std::fs::read_to_string(lab.dir.join("shoal.log")).unwrap_or_default();
    assert!(!lab.stats().is_null(), "shoal did not start: {}", log());

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
    std::thread::sleep(Duration::from_millis(1200));
    let stats = lab.stats();
    // Host 2's share is dropped: in the kernel by the XDP fast path, or by
    // userspace (AF_PACKET, or frames the fast path leaves to userspace).
    let not_owner = stats["dropped"]["not_owner"].as_u64().unwrap_or(0);
    let xdp_dropped = stats["xdp_dropped"].as_u64().unwrap_or(0);
    assert!(not_owner + xdp_dropped > 0, "{stats}");
    assert!(stats["delivered"].as_u64().unwrap_or(0) > 0, "{stats}");
    assert!(
        stats["backend"].as_str().unwrap_or("").starts_with(backend),
        "{stats}"
    );

    // SIGTERM: everything undone.
    // SAFETY: kill has no memory-safety preconditions; the pid is our child's.
    unsafe { libc::kill(shoal.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = shoal.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "shoal ignored SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
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
