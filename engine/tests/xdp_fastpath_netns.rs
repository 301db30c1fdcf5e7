//! The XDP fast path in a real `shoal run`: in a private pair of namespaces,
//! host 1 of a two-host static view drops host 2's share in the kernel
//! (`xdp_dropped`), still judges and serves its own in userspace, and after a
//! restart as the only host drops nothing of what is now its own.
//!
//! Needs root; fails loudly without it unless `SHOAL_SKIP_PRIVILEGED=1`.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use shoal_dataplane::map::{ClusterMap, View};
use shoal_dataplane::pipeline::Dataplane;
use shoal_dataplane::HostId;

const VIP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 100);
/// Clients 10.0.7.1 ..= 10.0.7.CLIENTS send UDP datagrams to the VIP.
const CLIENTS: u8 = 120;
const PER_CLIENT: usize = 10;
const PORT: u16 = 8080;

fn privileged() -> bool {
    if std::env::var("SHOAL_SKIP_PRIVILEGED").as_deref() == Ok("1") {
        eprintln!("SKIP xdp_fastpath_netns: SHOAL_SKIP_PRIVILEGED=1 (needs root)");
        return false;
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    assert!(
        root,
        "xdp_fastpath_netns needs root (set SHOAL_SKIP_PRIVILEGED=1 to skip)"
    );
    true
}

fn sh(cmd: &str) -> String {
    let out = Command::new("sh").arg("-c").arg(cmd).output().expect("sh");
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

/// Two namespaces joined by a veth pair; removed (with anything still
/// running in them) on drop.
struct Lab {
    host: String,
    client: String,
    dir: PathBuf,
}

impl Lab {
    fn new() -> Self {
        let p = std::process::id();
        let lab = Lab {
            host: format!("shoal-t-fp-{p}-h"),
            client: format!("shoal-t-fp-{p}-c"),
            dir: std::env::temp_dir().join(format!("shoal-t-fp-{p}")),
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
        ] {
            let out = sh(&cmd);
            assert!(!out.contains("rror"), "{cmd}: {out}");
        }
        lab
    }

    /// Writes a config naming hosts `hosts` and returns its path.
    fn config(&self, hosts: &[u8]) -> PathBuf {
        std::fs::write(
            self.dir.join("cluster.key"),
            "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\n",
        )
        .unwrap();
        let mut text = format!("[cluster]\nvips = [\"{VIP}\"]\nkey_file = \"cluster.key\"\n");
        for id in hosts {
            text += &format!(
                "\n[[host]]\nid = {id}\ninterface = \"eth0\"\ndedicated = [\"10.0.0.{}/16\"]\n",
                10 + id
            );
        }
        let path = self.dir.join(format!("cluster-{}.toml", hosts.len()));
        std::fs::write(&path, text).unwrap();
        path
    }

    fn stats_path(&self) -> PathBuf {
        self.dir.join("stats.json")
    }

    fn run(&self, config: &Path) -> Child {
        let _ = std::fs::remove_file(self.stats_path());
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
                "--backend",
                "af_xdp",
            ])
            .arg("--config")
            .arg(config)
            .arg("--stats")
            .arg(self.stats_path())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.dir.join("shoal.log")).unwrap())
            .spawn()
            .expect("spawn shoal")
    }

    fn stats(&self) -> serde_json::Value {
        let text = std::fs::read_to_string(self.stats_path()).unwrap_or_default();
        serde_json::from_str(&text).unwrap_or(serde_json::Value::Null)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("shoal.log")).unwrap_or_default()
    }

    /// Sends `PER_CLIENT` UDP datagrams from each client to the VIP's
    /// cluster MAC, from a raw socket in the client namespace.
    fn send(&self) {
        let script = format!("PER = {PER_CLIENT}\nCLIENTS = {CLIENTS}\nPORT = {PORT}\n{SENDER}");
        let out = sh(&format!(
            "ip netns exec {} python3 -c \"{}\"",
            self.client,
            script.replace('"', "\\\"")
        ));
        assert!(out.trim() == "sent", "sender: {out}");
    }

    /// Waits for shoal's counters, then for them to stop moving.
    fn settled_stats(&self, key: &str, want: u64) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let s = self.stats();
            let done = s[key].as_u64().unwrap_or(0) >= want;
            if done || Instant::now() > deadline {
                // One more period so every counter caught up.
                std::thread::sleep(Duration::from_millis(1300));
                return self.stats();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
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

const SENDER: &str = "import socket, struct\n\
def csum(b):\n    s = sum(struct.unpack('!10H', b))\n    s = (s >> 16) + (s & 0xffff); s += s >> 16\n    return ~s & 0xffff\n\
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW); s.bind(('eth0', 0))\n\
src = open('/sys/class/net/eth0/address').read().strip().replace(':', '')\n\
eth = bytes.fromhex('02bf0a000064') + bytes.fromhex(src) + b'\\x08\\x00'\n\
for rep in range(PER):\n    for i in range(1, CLIENTS + 1):\n        udp = struct.pack('!HHHH', 40000 + i, PORT, 12, 0) + b'ping'\n        ip = struct.pack('!BBHHHBBH4s4s', 0x45, 0, 20 + len(udp), i, 0, 64, 17, 0, bytes([10, 0, 7, i]), bytes([10, 0, 0, 100]))\n        ip = ip[:10] + struct.pack('!H', csum(ip)) + ip[12:]\n        s.send(eth + ip + udp)\n\
print('sent')\n";

fn expected_own(config: &Path) -> (u64, u64) {
    let cfg = shoal_config::load(config).expect("config");
    let spec = cfg.spec();
    let map = Arc::new(ClusterMap::build(
        &spec,
        &View::converged(&spec, cfg.host_ids()),
        HostId::new(1).unwrap(),
        1,
    ));
    let mut own = 0;
    let mut other = 0;
    for i in 1..=CLIENTS {
        let client = IpAddr::V4(Ipv4Addr::new(10, 0, 7, i));
        let o = Dataplane::owner_of(&map, 17, client, 40000 + u16::from(i), VIP.into(), PORT);
        if o.host == HostId::new(1) {
            own += PER_CLIENT as u64;
        } else {
            other += PER_CLIENT as u64;
        }
    }
    (own, other)
}

fn stop(child: &mut Child) {
    // SAFETY: kill has no memory-safety preconditions; the pid is our child's.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "shoal ignored SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn start(lab: &Lab, config: &Path) -> Child {
    let mut shoal = lab.run(config);
    let deadline = Instant::now() + Duration::from_secs(10);
    while lab.stats().is_null() && Instant::now() < deadline {
        if let Some(status) = shoal.try_wait().unwrap() {
            panic!("shoal exited at start ({status}): {}", lab.log());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!lab.stats().is_null(), "shoal did not start: {}", lab.log());
    shoal
}

#[test]
fn other_hosts_share_is_dropped_in_the_kernel_and_ours_is_kept() {
    if !privileged() {
        return;
    }
    let lab = Lab::new();

    // Two hosts, host 1 runs: host 2's datagrams die in XDP.
    let two = lab.config(&[1, 2]);
    let (own, other) = expected_own(&two);
    assert!(own > 0 && other > 0, "own {own} other {other}");
    let mut shoal = start(&lab, &two);
    assert!(
        lab.stats()["backend"]
            .as_str()
            .unwrap_or("")
            .contains("xdp fast path"),
        "{}",
        lab.stats()
    );
    lab.send();
    let s = lab.settled_stats("xdp_dropped", other);
    eprintln!(
        "two hosts: own {own}, other {other}; stats: xdp_dropped {} kept {} not_owner {}",
        s["xdp_dropped"], s["kept"], s["dropped"]["not_owner"]
    );
    assert_eq!(s["xdp_dropped"].as_u64(), Some(other), "{s}\n{}", lab.log());
    assert_eq!(s["kept"].as_u64(), Some(own), "{s}");
    assert_eq!(
        s["dropped"]["not_owner"].as_u64(),
        Some(0),
        "userspace saw frames the kernel should have dropped: {s}"
    );
    stop(&mut shoal);

    // Host 1 alone: everything is its own, the kernel drops nothing.
    let one = lab.config(&[1]);
    let (own, other) = expected_own(&one);
    assert_eq!(other, 0);
    let mut shoal = start(&lab, &one);
    lab.send();
    let s = lab.settled_stats("kept", own);
    eprintln!(
        "one host: own {own}; stats: xdp_dropped {} kept {}",
        s["xdp_dropped"], s["kept"]
    );
    assert_eq!(s["xdp_dropped"].as_u64(), Some(0), "{s}");
    assert_eq!(s["kept"].as_u64(), Some(own), "{s}\n{}", lab.log());
    stop(&mut shoal);

    // The same, with the fast path turned off: userspace drops host 2's.
    let mut shoal = {
        let _ = std::fs::remove_file(lab.stats_path());
        let child = Command::new("ip")
            .args(["netns", "exec", &lab.host, "env", "SHOAL_XDP_FAST_PATH=0"])
            .arg(env!("CARGO_BIN_EXE_shoal"))
            .args(["run", "--static-view", "--host", "1", "--backend", "af_xdp"])
            .arg("--config")
            .arg(&two)
            .arg("--stats")
            .arg(lab.stats_path())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(lab.dir.join("shoal.log")).unwrap())
            .spawn()
            .expect("spawn shoal");
        let deadline = Instant::now() + Duration::from_secs(10);
        while lab.stats().is_null() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        child
    };
    let (own, other) = expected_own(&two);
    lab.send();
    let s = lab.settled_stats("kept", own);
    assert_eq!(s["xdp_dropped"].as_u64(), Some(0), "{s}");
    assert_eq!(s["dropped"]["not_owner"].as_u64(), Some(other), "{s}");
    assert!(
        !s["backend"].as_str().unwrap_or("").contains("fast path"),
        "{s}"
    );
    stop(&mut shoal);
}
