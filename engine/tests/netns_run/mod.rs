//! A private pair of namespaces (a host and a client joined by a veth pair)
//! and a real `shoal run` in the host one, for the tests that drive the
//! binary end to end (`run_netns`, `xdp_fastpath_netns`). Everything is
//! removed on drop, processes included.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub use shoal_testkit::privileged;

/// Runs a shell command; returns its stdout and stderr.
pub fn sh(cmd: &str) -> String {
    let out = Command::new("sh").arg("-c").arg(cmd).output().expect("sh");
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

/// Namespaces `<prefix>-h` (10.0.0.11/16 on `eth0`) and `<prefix>-c`
/// (10.0.0.200/16), and a scratch directory.
pub struct Lab {
    pub host: String,
    pub client: String,
    pub dir: PathBuf,
}

impl Lab {
    /// Creates the pair; `prefix` must be unique to the test (include the pid).
    pub fn new(prefix: &str) -> Self {
        let lab = Lab {
            host: format!("{prefix}-h"),
            client: format!("{prefix}-c"),
            dir: std::env::temp_dir().join(prefix),
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

    /// Writes a cluster config for VIP `vip` naming hosts `hosts` (host `i`
    /// has dedicated address 10.0.0.(10+i)/16) and, unless it has one, a
    /// fresh key made by `shoal keygen`; returns its path.
    pub fn config(&self, vip: &str, hosts: &[u8]) -> PathBuf {
        let key = self.dir.join("cluster.key");
        if !key.exists() {
            let out = Command::new(env!("CARGO_BIN_EXE_shoal"))
                .arg("keygen")
                .arg(&key)
                .output()
                .expect("shoal keygen");
            assert!(out.status.success(), "shoal keygen: {out:?}");
        }
        let mut text = format!("[cluster]\nvips = [\"{vip}\"]\nkey_file = \"cluster.key\"\n");
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

    /// Waits (at most 10 s) until a TCP socket in the host namespace listens
    /// on `port`: a backend started just before shoal may still be loading.
    pub fn wait_listening(&self, port: u16) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let listening = || {
            !sh(&format!(
                "ip netns exec {} ss -Hltn sport = :{port}",
                self.host
            ))
            .trim()
            .is_empty()
        };
        while !listening() {
            assert!(
                Instant::now() < deadline,
                "nothing listens on port {port} in {}",
                self.host
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Where shoal writes its counters.
    pub fn stats_path(&self) -> PathBuf {
        self.dir.join("stats.json")
    }

    /// shoal's counters, or `Null` before the first write.
    pub fn stats(&self) -> serde_json::Value {
        let text = std::fs::read_to_string(self.stats_path()).unwrap_or_default();
        serde_json::from_str(&text).unwrap_or(serde_json::Value::Null)
    }

    /// shoal's counters once `settled` holds of them (they are written about
    /// once a second), or the last ones read after 10 s for the asserts to
    /// report.
    pub fn stats_when(&self, settled: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let stats = self.stats();
            if settled(&stats) || Instant::now() >= deadline {
                return stats;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// shoal's log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("shoal.log")).unwrap_or_default()
    }

    /// Starts `shoal run --static-view --host 1 --backend BACKEND` on
    /// `config` in the host namespace, with `env` set, and waits for its
    /// first counters.
    pub fn start(&self, config: &Path, backend: &str, env: &[&str]) -> Child {
        self.launch(config, backend, env, &["--static-view"])
    }

    /// Starts `shoal run --host 1 --backend BACKEND` with the control plane
    /// on `config`, its admin socket at [`Lab::admin_socket`], and waits for
    /// its first counters.
    pub fn start_clustered(&self, config: &Path, backend: &str) -> Child {
        let socket = self.admin_socket();
        let socket = socket.to_str().unwrap();
        self.launch(config, backend, &[], &["--admin-socket", socket])
    }

    /// The admin socket of a shoal started by [`Lab::start_clustered`].
    pub fn admin_socket(&self) -> PathBuf {
        self.dir.join("admin").join("host1.sock")
    }

    fn launch(&self, config: &Path, backend: &str, env: &[&str], extra: &[&str]) -> Child {
        let _ = std::fs::remove_file(self.stats_path());
        let mut shoal = Command::new("ip")
            .args(["netns", "exec", &self.host, "env"])
            .args(env)
            .arg(env!("CARGO_BIN_EXE_shoal"))
            .args(["run", "--host", "1", "--backend", backend])
            .args(extra)
            .arg("--config")
            .arg(config)
            .arg("--stats")
            .arg(self.stats_path())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.dir.join("shoal.log")).unwrap())
            .spawn()
            .expect("spawn shoal");
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.stats().is_null() && Instant::now() < deadline {
            if let Some(status) = shoal.try_wait().unwrap() {
                panic!("shoal exited at start ({status}): {}", self.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(
            !self.stats().is_null(),
            "shoal did not start: {}",
            self.log()
        );
        shoal
    }
}

/// Sends SIGTERM to `child` and waits (at most 10 s) for it to exit.
pub fn stop(child: &mut Child) -> ExitStatus {
    // An already-ended child is fine: the wait below reaps it.
    let _ = shoal_engine::sys::signal::terminate(child.id());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "shoal ignored SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
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
