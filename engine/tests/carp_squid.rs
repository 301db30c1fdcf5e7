//! `shoal carp route --hash squid` against the real Squid: Squid (Debian's)
//! with four `carp` parents on loopback ports inside a private network
//! namespace (`unshare --net`, so nothing outside is touched), `never_direct`
//! and no caching; the parents are tiny Python HTTP listeners that log which
//! request each one received. 1,200 URLs (mixed-case hosts, explicit ports,
//! queries, percent-encoded and long paths) go through Squid, and for every
//! one the parent Squid picked must be the owner shoal computes.
//!
//! Needs root (a network namespace: through `shoal_testkit::gate`),
//! `squid` and `python3`; scripts/test.sh installs them. Without squid the
//! test says so on stderr and passes, unless `SHOAL_REQUIRE_SQUID=1`
//! (scripts/test.sh) or `CI` is set: then that is a failure.

use std::io::Write as _;
use std::process::{Command, Stdio};

/// Parent names (hashed by Squid as written) and weights. Equal weights
/// pin Squid's stable peer order; mixed case pins "as written".
const PARENTS: [(&str, u32); 4] = [
    ("alpha.example.net", 1),
    ("Bravo.Example.NET", 2),
    ("charlie.example.net", 1),
    ("delta", 3),
];

const PARENT_PY: &str = r#"
import sys, http.server, socketserver
name, port, log = sys.argv[1], int(sys.argv[2]), sys.argv[3]
out = open(log, "a", buffering=1)
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        out.write("%s\t%s\n" % (self.headers.get("X-Idx"), name))
        body = b"ok\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
class S(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256
S(("127.0.0.1", port), H).serve_forever()
"#;

const CLIENT_PY: &str = r#"
import sys, socket, threading
urls = open(sys.argv[1]).read().split("\n")[:-1]
failed = []
def one(i):
    url = urls[i]
    host = url.split("://", 1)[1].split("/", 1)[0].split("?", 1)[0]
    req = "GET %s HTTP/1.1\r\nHost: %s\r\nX-Idx: %d\r\nConnection: close\r\n\r\n" % (url, host, i)
    s = socket.create_connection(("127.0.0.1", 13128), timeout=10)
    s.sendall(req.encode())
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    s.close()
    if not data.startswith(b"HTTP/1.1 200"):
        failed.append((i, data[:80]))
def worker(k):
    for i in range(k, len(urls), 4):
        one(i)
ts = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
[t.start() for t in ts]
[t.join() for t in ts]
# Squid answers 502 ("path selection found no paths", nothing forwarded)
# to some requests while it settles; those reached no parent, so asking
# again cannot change which parent CARP picks.
retried = len(failed)
for attempt in range(5):
    again = [i for i, _ in failed]
    failed = []
    for i in again:
        one(i)
    if not failed:
        break
print("RETRIED", retried, file=sys.stderr)
for f in failed:
    print("FAILED", f, file=sys.stderr)
"#;

fn urls() -> Vec<String> {
    let hosts = [
        "www.Example.COM",
        "cdn.site.net",
        "API.Test.org",
        "images.SHOP.example",
        "10.20.30.40",
    ];
    let mut state = 0x853c_49e6_748f_ea9bu64;
    (0..1200)
        .map(|i| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let r = state;
            let mut url = format!("http://{}", hosts[(r % 5) as usize]);
            match r >> 8 & 7 {
                0 => url.push_str(":80"),
                1 => url += &format!(":{}", 1024 + (r >> 16 & 0x3fff)),
                _ => {}
            }
            match r >> 24 & 3 {
                0 => url += &format!("/a%20b/%7Euser/%E2%82%AC{i}"),
                1 => url += &format!("/{}{i}", "segment/".repeat(20 + (r >> 30 & 63) as usize)),
                2 => url.push('/'),
                _ => url += &format!("/Dir/Item{}.HTML", r >> 36 & 0xfff),
            }
            if r >> 48 & 1 == 0 {
                url += &format!("?q={}&x=%41", r >> 50);
            }
            url
        })
        .collect()
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .is_ok_and(|o| o.status.success())
}

fn skip(why: &str) {
    let required = std::env::var("SHOAL_REQUIRE_SQUID").as_deref() == Ok("1")
        || std::env::var("CI").is_ok_and(|v| !v.is_empty());
    assert!(!required, "carp_squid: {why}");
    eprintln!("SKIPPED carp_squid: {why}");
}

#[test]
fn squid_mode_picks_the_parent_real_squid_picks() {
    if !shoal_testkit::gate::privileged("carp_squid") {
        return;
    }
    for tool in ["squid", "python3", "unshare"] {
        if !have(tool) {
            return skip(&format!("{tool} is not installed"));
        }
    }
    let dir = std::env::temp_dir().join(format!("shoal-carp-squid-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let urls = urls();
    std::fs::write(dir.join("urls"), urls.join("\n") + "\n").unwrap();
    std::fs::write(dir.join("parent.py"), PARENT_PY).unwrap();
    std::fs::write(dir.join("client.py"), CLIENT_PY).unwrap();
    let mut conf = format!(
        "http_port 127.0.0.1:13128\n\
         http_access allow all\n\
         never_direct allow all\n\
         cache deny all\n\
         cache_mem 8 MB\n\
         pid_filename {d}/squid.pid\n\
         cache_log {d}/cache.log\n\
         access_log none\n\
         coredump_dir {d}\n\
         shutdown_lifetime 0 seconds\n\
         dns_nameservers 127.0.0.1\n\
         forwarded_for delete\n\
         via off\n",
        d = dir.display()
    );
    let mut parents_up = String::new();
    for (i, (name, weight)) in PARENTS.iter().enumerate() {
        let port = 18001 + i;
        conf += &format!(
            "cache_peer 127.0.0.1 parent {port} 0 carp name={name} weight={weight} no-query no-digest\n"
        );
        parents_up += &format!(
            "python3 {d}/parent.py {name} {port} {d}/parents.log & \n",
            d = dir.display()
        );
    }
    std::fs::write(dir.join("squid.conf"), conf).unwrap();
    let script = format!(
        "set -e\nip link set lo up\nchmod 777 {d}\n{parents_up}\
         squid -N -f {d}/squid.conf & sq=$!\n\
         for i in $(seq 100); do python3 -c 'import socket; socket.create_connection((\"127.0.0.1\", 13128), 1)' 2>/dev/null && break; sleep 0.1; done\n\
         for p in 18001 18002 18003 18004; do for i in $(seq 50); do python3 -c \"import socket; socket.create_connection(('127.0.0.1', $p), 1)\" 2>/dev/null && break; sleep 0.1; done; done\n\
         python3 {d}/client.py {d}/urls\n\
         kill $sq; wait $sq 2>/dev/null || true\nkill $(jobs -p) 2>/dev/null || true\n",
        d = dir.display()
    );
    let started = std::time::Instant::now();
    let out = Command::new("unshare")
        .args(["--net", "bash", "-c", &script])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && !stderr.contains("FAILED"),
        "the Squid run failed: {stderr}\ncache.log:\n{}",
        std::fs::read_to_string(dir.join("cache.log")).unwrap_or_default()
    );
    let log = std::fs::read_to_string(dir.join("parents.log")).unwrap();
    let mut picked = vec![String::new(); urls.len()];
    let mut unmarked = 0;
    for line in log.lines() {
        let (idx, name) = line.split_once('\t').unwrap();
        // Squid sends the odd request of its own (no X-Idx): not ours.
        let Ok(idx) = idx.parse::<usize>() else {
            unmarked += 1;
            continue;
        };
        assert!(picked[idx].is_empty(), "URL {idx} reached two parents");
        picked[idx] = name.to_string();
    }
    if let Some(i) = picked.iter().position(String::is_empty) {
        panic!("URL {i} ({}) reached no parent", urls[i]);
    }

    let mut route = Command::new(env!("CARGO_BIN_EXE_shoal"));
    route.args(["carp", "route", "--hash", "squid"]);
    for (name, weight) in PARENTS {
        route.arg("--member").arg(format!("{name}={weight}"));
    }
    let mut child = route
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all((urls.join("\n") + "\n").as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let ours = String::from_utf8(out.stdout).unwrap();
    let mut per_parent = std::collections::BTreeMap::new();
    let mut mismatches = Vec::new();
    for ((line, url), squid) in ours.lines().zip(&urls).zip(&picked) {
        let (u, owner) = line.split_once('\t').unwrap();
        assert_eq!(u, url);
        *per_parent.entry(squid.clone()).or_insert(0) += 1;
        if owner != squid {
            mismatches.push(format!("{url}: squid {squid:?}, shoal {owner:?}"));
        }
    }
    eprintln!(
        "carp_squid: {} URLs through Squid in {:.1?} ({}, {unmarked} requests of Squid's own); per parent {per_parent:?}; {} mismatches",
        urls.len(),
        started.elapsed(),
        stderr.lines().find(|l| l.starts_with("RETRIED")).unwrap_or("RETRIED ?"),
        mismatches.len()
    );
    assert!(
        mismatches.is_empty(),
        "{} of {} differ, first: {:#?}",
        mismatches.len(),
        urls.len(),
        &mismatches[..mismatches.len().min(10)]
    );
    let _ = std::fs::remove_dir_all(&dir);
}
