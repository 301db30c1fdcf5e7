//! The offline operator tools, through the real `shoal` binary and through
//! the library: `ip2mac`, `config check`, `owner`, `map`, and `classify`
//! replaying every capture of the shared tcpdump corpus through three
//! simulated members.

use std::path::{Path, PathBuf};
use std::process::Command;

use shoal_engine::tools;

fn shoal() -> Command {
    Command::new(env!("CARGO_BIN_EXE_shoal"))
}

fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../config/examples")
        .join(name)
}

fn corpus() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/corpus/tcpdump");
    assert!(
        dir.is_dir(),
        "the frame corpus is missing at {} (shared/ must sit beside the checkout)",
        dir.display()
    );
    dir
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn ip2mac_prints_the_three_nlb_macs() {
    let out = shoal().args(["ip2mac", "10.0.0.100"]).output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        stdout(&out),
        "unicast 02-bf-0a-00-00-64\nmulticast 03-bf-0a-00-00-64\nigmp 01-00-5e-7f-00-64 group 239.255.0.100\n"
    );
}

#[test]
fn config_check_normalizes_or_exits_2_naming_file_line_key() {
    let out = shoal()
        .args(["config", "check"])
        .arg(example("lab-3host.toml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout(&out).contains("period_ms = 1000"));
    // The example's key is the published sample: a warning, not a failure.
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("warning: cluster key") && err.contains("sample key"),
        "{err}"
    );
    assert!(err.contains("shoal keygen"), "{err}");
    let dir = std::env::temp_dir().join(format!("shoal-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.toml");
    std::fs::write(
        &bad,
        "[cluster]\nvips = [\"10.0.0.100\"]\nkey_file = \"k\"\n\n[heartbeat]\nperiod_ms = 5\n\n[[host]]\nid = 65\ninterface = \"eth0\"\n",
    )
    .unwrap();
    let out = shoal()
        .args(["config", "check"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("{}:6: heartbeat.period_ms", bad.display())),
        "{err}"
    );
    assert!(err.contains(":9: host[1].id"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn owner_and_map_agree() {
    let cfg = example("lab-3host.toml");
    let out = shoal()
        .args(["owner", "--config"])
        .arg(&cfg)
        .args([
            "--members",
            "1,2,3",
            "tcp",
            "10.0.1.5:40000",
            "10.0.0.100:80",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout(&out);
    assert!(line.starts_with("host "), "{line}");
    // Single affinity: the client's port does not matter.
    let again = shoal()
        .args(["owner", "--config"])
        .arg(&cfg)
        .args(["tcp", "10.0.1.5:1", "10.0.0.100:80"])
        .output()
        .unwrap();
    assert_eq!(stdout(&again).split(' ').nth(1), line.split(' ').nth(1));
    // Several clients in one call: one line each, prefixed by the client,
    // each the line the single-client call prints.
    let many = shoal()
        .args(["owner", "--config"])
        .arg(&cfg)
        .args(["tcp", "10.0.1.5:40000", "10.0.1.6", "10.0.0.100:80"])
        .output()
        .unwrap();
    let single = |client: &str| {
        let out = shoal()
            .args(["owner", "--config"])
            .arg(&cfg)
            .args(["tcp", client, "10.0.0.100:80"])
            .output()
            .unwrap();
        stdout(&out)
    };
    assert_eq!(
        stdout(&many),
        format!(
            "10.0.1.5:40000 {}10.0.1.6 {}",
            single("10.0.1.5:40000"),
            single("10.0.1.6")
        )
    );
    let bad = shoal()
        .args(["owner", "--config"])
        .arg(&cfg)
        .args(["tcp", "10.0.1.5", "not-an-address", "10.0.0.100:80"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("not-an-address"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    let out = shoal()
        .args(["owner", "--config"])
        .arg(&cfg)
        .args(["udp", "10.0.1.5", "192.0.2.1:53"])
        .output()
        .unwrap();
    assert!(stdout(&out).starts_with("none"), "{}", stdout(&out));

    let out = shoal()
        .args(["map", "--config"])
        .arg(example("lab-3host-weighted.toml"))
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = stdout(&out);
    // Host 3 has weight 100 against 50/50: half of the buckets.
    let row = text
        .lines()
        .find(|l| l.trim_start().starts_with("3 "))
        .expect("host 3 row");
    let share: f64 = row
        .split_whitespace()
        .last()
        .unwrap()
        .trim_end_matches('%')
        .parse()
        .unwrap();
    assert!((share - 50.0).abs() < 1.0, "{text}");
}

#[test]
fn classify_replays_the_whole_corpus_without_duplicates() {
    // A cluster with an IPv4 and an IPv6 VIP, so that rewriting makes both
    // families cluster traffic.
    let text = r#"
[cluster]
vips = ["10.0.0.100", "fd00:100::100"]
key_file = "cluster.key"

[[host]]
id = 1
interface = "eth0"
[[host]]
id = 2
interface = "eth0"
[[host]]
id = 3
interface = "eth0"

[[rule]]
protocol = "tcp"
affinity = "none"
[[rule]]
protocol = "udp"
affinity = "single"
"#;
    let config = shoal_config::parse(text, &example("corpus.toml")).unwrap();
    let members = tools::members(&config, None).unwrap();
    let key = shoal_config::parse_cluster_key(shoal_config::EXAMPLE_KEY_FILE).unwrap();
    let mut classifier = tools::Classifier::new(&config, &key, members).unwrap();
    let mut files = 0;
    let mut totals = tools::ClassifyReport::default();
    let mut entries: Vec<_> = std::fs::read_dir(corpus())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        let bytes = std::fs::read(&path).unwrap();
        for rewrite in [false, true] {
            let r = match classifier.replay(&bytes, rewrite) {
                Ok(r) => r,
                // A file that is not a capture at all is an error, not a panic.
                Err(_) => continue,
            };
            assert_eq!(r.duplicates, 0, "{}: a frame kept twice", path.display());
            let kept: u64 = r.kept_by_host.values().sum();
            assert_eq!(kept, r.covered, "{}", path.display());
            let dropped: u64 = r.dropped_by_reason.values().sum();
            assert_eq!(
                kept + dropped,
                r.for_cluster,
                "{}: cluster frames unaccounted",
                path.display()
            );
            let malformed: u64 = r.malformed.values().sum();
            let control: u64 = r.control.values().sum();
            assert_eq!(
                r.frames,
                kept + dropped + malformed + control + r.pass,
                "{}: every frame is judged exactly once",
                path.display()
            );
            if rewrite {
                totals.frames += r.frames;
                totals.for_cluster += r.for_cluster;
                totals.covered += kept;
                for (h, n) in r.kept_by_host {
                    *totals.kept_by_host.entry(h).or_default() += n;
                }
                for (k, n) in r.malformed {
                    *totals.malformed.entry(k).or_default() += n;
                }
            }
        }
        files += 1;
    }
    assert!(files > 300, "only {files} captures read");
    eprintln!("corpus: {totals:?}");
    // The corpus holds about 2,700 IPv4 and 460 IPv6 frames.
    assert!(
        totals.for_cluster > 2_500,
        "rewriting to the VIP should make the IP frames cluster traffic"
    );
    assert!(
        totals.malformed.values().sum::<u64>() > 50,
        "the corpus holds many malformed frames"
    );
    for h in members.iter() {
        let kept = totals
            .kept_by_host
            .get(&h.to_string())
            .copied()
            .unwrap_or(0);
        assert!(
            kept > 200,
            "host {h} kept too little: {:?}",
            totals.kept_by_host
        );
    }
}

#[test]
fn classify_json_has_the_documented_keys() {
    let pcap = corpus().join("IGMP_V2.pcap");
    let out = shoal()
        .args(["classify", "--config"])
        .arg(example("lab-3host.toml"))
        .args(["--members", "1,2,3", "--json", "--rewrite-vip", "--pcap"])
        .arg(&pcap)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for key in [
        "frames",
        "for_cluster",
        "kept_by_host",
        "dropped_by_reason",
        "control",
        "pass",
        "malformed",
    ] {
        assert!(v.get(key).is_some(), "missing key {key}: {v}");
    }
    assert!(v["frames"].as_u64().unwrap() > 0);
}

#[test]
fn carp_route_with_members_alone_prints_owner_order_and_json() {
    let members = [
        "--member",
        "test1.ircache.net=1",
        "--member",
        "test2.web-cache.com=1",
        "--member",
        "test3.squid-cache.org=2",
        "--member",
        "test4.packet-pushers.com=3",
    ];
    let url = "http://www.squid-cache.org/";
    let out = shoal()
        .args(["carp", "route"])
        .args(members)
        .arg(url)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout(&out);
    let (got_url, owner) = line.trim_end().split_once('\t').unwrap();
    assert_eq!(got_url, url);

    let out = shoal()
        .args(["carp", "route", "--order"])
        .args(members)
        .arg(url)
        .output()
        .unwrap();
    let order_line = stdout(&out);
    let order: Vec<&str> = order_line
        .trim_end()
        .split('\t')
        .nth(1)
        .unwrap()
        .split(' ')
        .collect();
    assert_eq!(order.len(), 4);
    assert_eq!(order[0], owner);

    // URLs from stdin, JSON out; the library gives the same answer.
    let mut child = shoal()
        .args(["carp", "route", "--json", "--hash", "hrw"])
        .args(members)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write as _;
        let mut stdin = child.stdin.take().unwrap();
        writeln!(stdin, "{url}\n\nhttp://Other.example:8080/x?y").unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[1]["url"], "http://Other.example:8080/x?y");
    assert_eq!(rows[1]["order"].as_array().unwrap().len(), 4);
    assert_eq!(rows[1]["owner"], rows[1]["order"][0]);
    let args = tools::carp::ArrayArgs {
        member: members
            .iter()
            .skip(1)
            .step_by(2)
            .map(|s| s.to_string())
            .collect(),
        hash: Some("hrw".into()),
        ..Default::default()
    };
    let array = tools::carp::array(&args, None, None).unwrap();
    let lib = tools::carp::route(&array, &[url.to_string()], false, false).unwrap();
    assert_eq!(
        lib,
        format!("{url}\t{}\n", rows[0]["owner"].as_str().unwrap())
    );
}

#[test]
fn carp_table_and_pac_from_a_config_service_are_as_served() {
    let config = example("carp.toml");
    let out = shoal()
        .args(["carp", "table", "--config"])
        .arg(&config)
        .args(["--service", "web-cache", "--members", "1,3"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = stdout(&out);
    assert!(table.starts_with("Proxy Array Information/1.0\r\nArrayEnabled:  1\r\nConfigID:  "));
    assert!(table.contains("\r\nArrayName:  web-cache\r\nListTTL:  600\r\n\r\n"));
    assert!(table.contains(&format!(
        "cache1.lab.example 10.0.0.11 8080 http://10.0.0.11:8080/array.dll?Get.Info.v1 shoal/{} 0 UP 1 0\r\n",
        env!("CARGO_PKG_VERSION")
    )));
    assert!(table.contains("\r\n10.0.0.13 10.0.0.13 8080 "));
    // A host outside --members stays in the array, DOWN, as the proxy
    // shows a host outside the view.
    assert!(table.contains(&format!(
        "cache2.lab.example 10.0.0.12 8080 http://10.0.0.12:8080/array.dll?Get.Info.v1 shoal/{} 0 DOWN 1 0\r\n",
        env!("CARGO_PKG_VERSION")
    )));

    // Routing with a member down is the full order without it: the
    // multipliers stay those of the configured array, so only the down
    // member's URLs move.
    let route = |members: Option<&str>| {
        let mut cmd = shoal();
        cmd.args(["carp", "route", "--order", "--config"])
            .arg(&config)
            .args(["--service", "web-cache"]);
        if let Some(m) = members {
            cmd.args(["--members", m]);
        }
        let urls: Vec<String> = (0..200)
            .map(|i| format!("http://h{}.example/p/{i}?q={}", i % 7, i * 31))
            .collect();
        stdout(&cmd.args(&urls).output().unwrap())
    };
    let full = route(None);
    let without2 = route(Some("1,3"));
    let mut moved = 0;
    for (a, b) in full.lines().zip(without2.lines()) {
        let (url, order) = a.split_once('\t').unwrap();
        let kept: Vec<&str> = order
            .split(' ')
            .filter(|m| *m != "cache2.lab.example")
            .collect();
        assert_eq!(b, format!("{url}\t{}", kept.join(" ")));
        moved += usize::from(order.starts_with("cache2."));
    }
    assert!(moved > 0, "no URL was cache2's");

    let out = shoal()
        .args(["carp", "pac", "--config"])
        .arg(&config)
        .args(["--service", "web-cache"])
        .output()
        .unwrap();
    let pac = stdout(&out);
    assert!(pac.contains("\"PROXY 10.0.0.12:8080\""));
    assert!(pac.contains("var EXCEPTION_PROXY = \"PROXY 10.0.0.100:8080\";"));
    assert!(pac.contains("var DIRECT_HOSTS = [[0, \"intranet.example\"]];"));
    assert!(pac.contains("function FindProxyForURL(url, host)"));

    // --member alone: PROXY NAME:PORT, 3128 unless --port.
    let out = shoal()
        .args([
            "carp",
            "pac",
            "--member",
            "a.example=1",
            "--member",
            "b.example=2",
        ])
        .output()
        .unwrap();
    assert!(stdout(&out).contains("\"PROXY a.example:3128\""));
    let out = shoal()
        .args(["carp", "pac", "--port", "8080", "--member", "a.example"])
        .output()
        .unwrap();
    assert!(stdout(&out).contains("\"PROXY a.example:8080\""));

    // Errors: an unknown service, no members, a bad URL.
    let out = shoal()
        .args(["carp", "route", "--config"])
        .arg(&config)
        .args(["--service", "nope", "http://a/"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no such [[service]]"));
    let out = shoal()
        .args(["carp", "route", "http://a/"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let out = shoal()
        .args(["carp", "route", "--member", "a", "not a url"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
}

/// A config in `dir` for one host on an interface that does not exist,
/// naming `dir/cluster.key`.
fn run_config(dir: &Path) -> PathBuf {
    let path = dir.join("cluster.toml");
    std::fs::write(
        &path,
        "[cluster]\nvips = [\"10.0.0.100\"]\nkey_file = \"cluster.key\"\n\n[[host]]\nid = 1\ninterface = \"shoal-nokey0\"\n",
    )
    .unwrap();
    path
}

/// `shoal run` in a network namespace of its own (so that nothing it
/// might set up touches this machine); its exit status and stderr.
fn run_isolated(config: &Path) -> (std::process::ExitStatus, String) {
    let out = Command::new("unshare")
        .arg("--net")
        .arg(env!("CARGO_BIN_EXE_shoal"))
        .args(["run", "--static-view", "--config"])
        .arg(config)
        .output()
        .expect("unshare");
    (
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn run_refuses_a_shared_foreign_or_sample_key_and_keygen_makes_a_good_one() {
    use std::os::unix::fs::PermissionsExt;
    if !shoal_testkit::gate::privileged("run_refuses_a_shared_foreign_or_sample_key") {
        return;
    }
    let dir = std::env::temp_dir().join(format!("shoal-cli-key-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let config = run_config(&dir);
    let key = dir.join("cluster.key");
    let out = shoal().arg("keygen").arg(&key).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&key), 0o600);

    // Readable by group or others: refused, naming the remedy.
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).unwrap();
    let (status, err) = run_isolated(&config);
    assert!(!status.success(), "{err}");
    assert!(
        err.contains("refusing the cluster key") && err.contains("mode 0640"),
        "{err}"
    );
    assert!(err.contains("shoal keygen"), "{err}");
    let check = shoal()
        .args(["config", "check"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(check.status.success());
    assert!(
        String::from_utf8_lossy(&check.stderr).contains("warning: cluster key"),
        "{check:?}"
    );

    // Not owned by root: refused.
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::chown(&key, Some(65534), None).unwrap();
    let (status, err) = run_isolated(&config);
    assert!(!status.success(), "{err}");
    assert!(err.contains("uid 65534, not root"), "{err}");
    std::os::unix::fs::chown(&key, Some(0), None).unwrap();

    // The published sample, even private and root's: refused.
    std::fs::remove_file(&key).unwrap();
    std::fs::write(&key, shoal_config::EXAMPLE_KEY_FILE).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (status, err) = run_isolated(&config);
    assert!(!status.success(), "{err}");
    assert!(err.contains("sample key"), "{err}");

    // A fresh key passes the check (the run then fails on the missing
    // interface, not on the key).
    let out = shoal()
        .args(["keygen", "--force"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let (status, err) = run_isolated(&config);
    assert!(!status.success(), "{err}");
    assert!(!err.contains("cluster key"), "{err}");
    let check = shoal()
        .args(["config", "check"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&check.stderr).contains("warning"),
        "{check:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `owner` and `classify` hash with the cluster key's seed: the same VIPs
/// under another key give other owners.
#[test]
fn owner_follows_the_cluster_key() {
    let dir = std::env::temp_dir().join(format!("shoal-cli-owner-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let text = std::fs::read_to_string(example("lab-3host.toml")).unwrap();
    let owners = |key_text: &str| -> Vec<String> {
        std::fs::write(dir.join("cluster.key"), key_text).unwrap();
        let path = dir.join("cluster.toml");
        std::fs::write(&path, &text).unwrap();
        let config = shoal_config::load(&path).unwrap();
        let key = shoal_engine::keyfile::for_tools(&config).unwrap();
        (1..=64u8)
            .map(|i| {
                tools::owner(
                    &config,
                    &key,
                    config.host_ids(),
                    6,
                    (std::net::Ipv4Addr::new(10, 0, 1, i).into(), 40000),
                    ("10.0.0.100".parse().unwrap(), 80),
                )
                .unwrap()
            })
            .collect()
    };
    let sample = owners(shoal_config::EXAMPLE_KEY_FILE);
    assert_eq!(sample, owners(shoal_config::EXAMPLE_KEY_FILE));
    let other = owners(&format!("{}\n", "ab".repeat(32)));
    let moved = sample.iter().zip(&other).filter(|(a, b)| a != b).count();
    assert!(moved > 16, "only {moved} of 64 clients changed owner");
    let _ = std::fs::remove_dir_all(&dir);
}
