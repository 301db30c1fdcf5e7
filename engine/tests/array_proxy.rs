//! The array tier's proxy end to end, in a private network namespace: two
//! members (two tiers in this process, hosts 1 and 2) each with its own
//! `local` backend, a parents service with two parents, and an origin, all
//! small hyper servers in the test. Checks routing to the owner
//! `Carp::order` names (forward and reverse), the signed hop between
//! members, a forged member header, CONNECT (forbidden port, tunnel),
//! head limits, loops, failover past a dead parent and its return, the
//! served pages and the counters.
//!
//! Needs root; fails loudly without it unless `SHOAL_SKIP_PRIVILEGED=1`.

mod http_answer;
use http_answer::{parse, Answer};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use shoal_config::Config;
use shoal_dataplane::array::RequestTarget;
use shoal_dataplane::map::{ClusterMap, View};
use shoal_dataplane::HostId;
use shoal_engine::array::{ArrayTier, Bound};
use shoal_engine::handoff::MapCell;
use shoal_testkit::gate::{require, Need};

const CONFIG: &str = r#"
[cluster]
vips = ["10.0.0.100"]
key_file = "unused.key"

[[host]]
id = 1
name = "m1"
interface = "d0"
dedicated = ["10.0.0.11/24"]

[[host]]
id = 2
name = "m2"
interface = "d0"
dedicated = ["10.0.0.12/24"]

[[rule]]
ports = [8080, 8082]
protocol = "tcp"
affinity = "none"

[[service]]
name = "web"
port = 8080
route = "carp"
connect_ports = [443]
max_head_bytes = 4096
max_uri_bytes = 1024
[service.carp]
members = "cluster"
local = "LOCAL"
probe_interval_ms = 100
down_ttl_ms = 300

[[service]]
name = "up"
port = 8081
route = "carp"
connect_timeout_ms = 300
idle_timeout_s = 1
[service.carp]
members = "parents"
direct = ["10.0.0.31"]
probe_interval_ms = 100
down_ttl_ms = 1000
[[service.carp.parent]]
name = "p1"
address = "10.0.0.41:3128"
[[service.carp.parent]]
name = "p2"
address = "10.0.0.42:3128"

[[service]]
name = "stall"
port = 8082
route = "carp"
first_byte_timeout_ms = 300
max_connections = 1
[service.carp]
members = "parents"
[[service.carp.parent]]
name = "s1"
address = "10.0.0.43:3128"
"#;

fn sh(cmd: &str) -> String {
    let out = Command::new("sh").arg("-c").arg(cmd).output().expect("sh");
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

/// Deletes the namespace on drop.
struct Netns(String);

impl Drop for Netns {
    fn drop(&mut self) {
        sh(&format!("ip netns del {}", self.0));
    }
}

/// Connections on which a backend served at least one request (probes
/// that only connect are not counted).
static ACCEPTED: AtomicU64 = AtomicU64::new(0);

/// A backend that answers every request with its name and what it saw,
/// and tunnels `CONNECT` by echoing bytes back. Runs on its own thread (in
/// the caller's namespace). While the returned flag is set it closes
/// every connection, new or kept alive, without answering (a TCP probe
/// still finds it listening).
fn backend(name: &'static str, addr: SocketAddr) -> Arc<AtomicBool> {
    let listener = std::net::TcpListener::bind(addr).expect("backend bind");
    listener.set_nonblocking(true).unwrap();
    let broken = Arc::new(AtomicBool::new(false));
    let flag = broken.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                if flag.load(Ordering::Relaxed) {
                    drop(stream);
                    continue;
                }
                let flag = flag.clone();
                let first = Arc::new(AtomicBool::new(true));
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(
                        move |mut req: Request<hyper::body::Incoming>| {
                            let broken = flag.load(Ordering::Relaxed);
                            if first.swap(false, Ordering::Relaxed) {
                                ACCEPTED.fetch_add(1, Ordering::Relaxed);
                            }
                            async move {
                                if broken {
                                    // Closes the connection without a response.
                                    return Err("broken");
                                }
                                let seen = |h: &str| {
                                    req.headers()
                                        .get_all(h)
                                        .iter()
                                        .map(|v| v.to_str().unwrap_or("?").to_string())
                                        .collect::<Vec<_>>()
                                        .join(", ")
                                };
                                let via = seen("via");
                                let member = seen("shoal-member");
                                let target = req.uri().to_string();
                                if req.method() == hyper::Method::CONNECT {
                                    let upgrade = hyper::upgrade::on(&mut req);
                                    tokio::spawn(async move {
                                        if let Ok(up) = upgrade.await {
                                            let (mut r, mut w) = tokio::io::split(TokioIo::new(up));
                                            let _ = tokio::io::copy(&mut r, &mut w).await;
                                        }
                                    });
                                }
                                Ok(Response::builder()
                                    .header("x-backend", name)
                                    .header("x-via", via)
                                    .header("x-member", member)
                                    .header("x-target", target)
                                    .body(Full::new(Bytes::from(name)))
                                    .unwrap())
                            }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .with_upgrades()
                        .await;
                });
            }
        });
    });
    broken
}

/// Opens a `CONNECT` tunnel to `authority` through the proxy at `addr`
/// and checks bytes come back through it.
fn tunnel(addr: &str, authority: &str) -> TcpStream {
    let mut tunnel = TcpStream::connect(addr).unwrap();
    tunnel
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    tunnel
        .write_all(format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n").as_bytes())
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && tunnel.read(&mut byte).unwrap_or(0) == 1 {
        head.push(byte[0]);
    }
    assert_eq!(
        parse(&head).status,
        200,
        "{}",
        String::from_utf8_lossy(&head)
    );
    tunnel.write_all(b"ping").unwrap();
    let mut echo = [0u8; 4];
    tunnel.read_exact(&mut echo).unwrap();
    assert_eq!(&echo, b"ping");
    tunnel
}

/// A raw TCP echo server on `addr` (a CONNECT target).
fn echo(addr: &str) {
    let listener = std::net::TcpListener::bind(addr).unwrap();
    std::thread::spawn(move || {
        for mut c in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n @ 1..) = c.read(&mut buf) {
                    if c.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
}

/// One request on a kept-alive connection; the answer's status and body.
fn keep_alive_get(s: &mut TcpStream, url: &str) -> (u16, String) {
    s.write_all(format!("GET {url} HTTP/1.1\r\nHost: k.test\r\n\r\n").as_bytes())
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && s.read(&mut byte).unwrap_or(0) == 1 {
        head.push(byte[0]);
    }
    let a = parse(&head);
    let mut body = vec![0u8; a.header("content-length").parse().unwrap_or(0)];
    s.read_exact(&mut body).unwrap();
    (a.status, String::from_utf8_lossy(&body).into_owned())
}

/// Sends `request` (which asks for `Connection: close`) to `addr`.
fn ask(addr: &str, request: &str) -> Answer {
    let mut s = TcpStream::connect(addr).expect("connect to the proxy");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    parse(&buf)
}

fn get(addr: &str, target: &str, host: &str, extra: &str) -> Answer {
    ask(
        addr,
        &format!("GET {target} HTTP/1.1\r\nHost: {host}\r\n{extra}Connection: close\r\n\r\n"),
    )
}

fn config_for(local: &str) -> Config {
    shoal_config::parse(&CONFIG.replace("LOCAL", local), Path::new("array.toml"))
        .unwrap_or_else(|e| panic!("{e:?}"))
}

fn start(config: &Config, host: u8) -> ArrayTier {
    let id = HostId::new(host).unwrap();
    let spec = config.spec(7);
    let view = View::converged(&spec, config.host_ids());
    let cell = Arc::new(MapCell::new(Arc::new(ClusterMap::build(
        &spec, &view, id, 1,
    ))));
    Bound::bind(config, id, &[9u8; 32], cell)
        .expect("bind")
        .expect("services")
        .start()
        .expect("start")
}

/// Polls `check` for up to 5 s.
fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until {
        if check() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{what}: not within 5 s");
}

#[test]
fn array_proxy_routes_hops_refuses_and_fails_over() {
    if !require("array_proxy", &[Need::Root, Need::Netns]) {
        return;
    }
    let ns = Netns(format!("shoal-t-array-{}", std::process::id()));
    for cmd in [
        format!("ip netns add {}", ns.0),
        format!("ip -n {} link set lo up", ns.0),
    ] {
        let out = sh(&cmd);
        assert!(!out.contains("rror"), "{cmd}: {out}");
    }
    for a in [
        "10.0.0.11/24",
        "10.0.0.12/24",
        "10.0.0.21/24",
        "10.0.0.22/24",
        "10.0.0.31/24",
        "10.0.0.41/24",
        "10.0.0.42/24",
        "10.0.0.43/24",
        "10.0.0.100/32",
    ] {
        // Every address on the namespace's loopback: all of them local.
        sh(&format!("ip -n {} addr add {a} dev lo", ns.0));
    }
    shoal_engine::sys::netns::run_in_named(&ns.0, scenario).expect("enter the namespace");
}

fn scenario() {
    backend("L1", "10.0.0.21:3128".parse().unwrap());
    let l2_broken = backend("L2", "10.0.0.22:3128".parse().unwrap());
    backend("P2", "10.0.0.42:3128".parse().unwrap());
    backend("O", "10.0.0.31:8000".parse().unwrap());
    // Accepts (the kernel completes the handshake) and never answers.
    let stall = std::net::TcpListener::bind("10.0.0.43:3128").unwrap();
    let c1 = config_for("10.0.0.21:3128");
    let c2 = config_for("10.0.0.22:3128");
    let t1 = start(&c1, 1);
    let t2 = start(&c2, 2);
    let (m1, m2) = ("10.0.0.11:8080", "10.0.0.12:8080");
    // Each probed the other before it listened: wait until both are up in
    // both views.
    for m in [m1, m2] {
        eventually("both members UP", || {
            get(m, "/array.dll?Get.Info.v1", "any", "")
                .body
                .matches(" UP ")
                .count()
                == 2
        });
    }

    // Routing: each URL reaches its owner's local, whichever member got it.
    let web = c1.service("web").unwrap();
    let router = web.router(&web.carp_members(&c1, None)).unwrap();
    let names = ["m1", "m2"];
    let locals = ["L1", "L2"];
    let mut owned = [0u32; 2];
    let mut hops = 0u64;
    for i in 0..40 {
        let url = format!("http://site{i}.test/page?q={i}");
        let owner = router
            .carp
            .owner(&RequestTarget::parse_absolute(url.as_bytes()).unwrap())
            .unwrap();
        owned[owner] += 1;
        let via = if i % 2 == 0 { m1 } else { m2 };
        let a = get(via, &url, &format!("site{i}.test"), "");
        assert_eq!(a.status, 200, "{url}: {}", a.body);
        assert_eq!(a.header("x-backend"), locals[owner], "{url}");
        assert_eq!(a.header("x-shoal-served-by"), names[owner], "{url}");
        assert_eq!(
            a.header("x-member"),
            "",
            "the owner strips the member header"
        );
        // Reverse (origin-form + Host) routes the same URL the same way.
        let r = get(via, &format!("/page?q={i}"), &format!("site{i}.test"), "");
        assert_eq!(r.header("x-backend"), locals[owner], "reverse {url}");
        assert!(
            r.header("x-target").starts_with("http://"),
            "sent as a proxy request"
        );
        let hopped = via != [m1, m2][owner];
        hops += 2 * u64::from(hopped && via == m1);
        assert_eq!(
            a.header("x-via").contains("m1") && a.header("x-via").contains("m2"),
            hopped,
            "{url}: Via {}",
            a.header("x-via")
        );
    }
    assert!(
        owned[0] > 0 && owned[1] > 0,
        "both members own URLs: {owned:?}"
    );

    // Keep-alive on both sides: 50 requests on one client connection, a
    // URL of each owner, take a handful of upstream connections.
    let before = ACCEPTED.load(Ordering::Relaxed);
    let mut client = TcpStream::connect(m1).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    for i in 0..50 {
        let (status, body) = keep_alive_get(
            &mut client,
            &format!("http://site{}.test/page?q={}", i % 2, i % 2),
        );
        assert_eq!(status, 200);
        assert!(body == "L1" || body == "L2", "{body}");
    }
    drop(client);
    let opened = ACCEPTED.load(Ordering::Relaxed) - before;
    assert!(opened <= 2, "{opened} upstream connections for 50 requests");

    // m2's local stops answering: a hop to m2 gets 503 shoal-unavailable
    // and m1 serves the URL from the next in order; m2 serves its own URLs
    // through m1 too. When L2 answers again, m2 takes its URLs back.
    let m2_url = (0..)
        .map(|i| format!("http://own{i}.test/"))
        .find(|u| {
            router
                .carp
                .owner(&RequestTarget::parse_absolute(u.as_bytes()).unwrap())
                == Some(1)
        })
        .unwrap();
    l2_broken.store(true, Ordering::Relaxed);
    for via in [m1, m2] {
        let a = get(via, &m2_url, "own.test", "");
        assert_eq!(a.status, 200, "{via}: {}", a.body);
        assert_eq!(a.header("x-backend"), "L1", "{via}: next in order");
    }
    l2_broken.store(false, Ordering::Relaxed);
    eventually("m2 takes its URL back", || {
        get(m1, &m2_url, "own.test", "").header("x-backend") == "L2"
    });

    // A forged member header, a loop, head limits, CONNECT.
    let forged = get(
        m1,
        "http://x.test/",
        "x.test",
        "shoal-member: v1.2.1.00\r\n",
    );
    assert_eq!(forged.status, 403);
    let looped = get(m1, "http://x.test/", "x.test", "Via: 1.1 m1 (shoal)\r\n");
    assert_eq!(looped.status, 508);
    let cdn_loop = get(m1, "http://x.test/", "x.test", "CDN-Loop: m1\r\n");
    assert_eq!(cdn_loop.status, 508);
    let big = get(
        m1,
        "http://x.test/",
        "x.test",
        &format!("X-Big: {}\r\n", "a".repeat(5000)),
    );
    assert_eq!(big.status, 431);
    // `max_headers` (100) counts header fields: 90 more are served, 101
    // more are refused (431) and counted.
    let fields = |n: usize| (0..n).map(|i| format!("X-F{i}: v\r\n")).collect::<String>();
    let within = get(m1, "http://x.test/", "x.test", &fields(90));
    assert_ne!(within.status, 431, "{}", within.body);
    let many = get(m1, "http://x.test/", "x.test", &fields(101));
    assert_eq!(many.status, 431);
    let long = get(
        m1,
        &format!("http://x.test/{}", "a".repeat(2000)),
        "x.test",
        "",
    );
    assert_eq!(long.status, 414);
    let hostless = ask(m1, "GET /x HTTP/1.1\r\nConnection: close\r\n\r\n");
    assert_eq!(hostless.status, 400, "origin-form without Host");
    let garbage = ask(m1, "\u{1}\u{0} junk\r\n\r\n");
    assert_eq!(garbage.status, 400, "a head that does not parse");
    let smtp = ask(m1, "CONNECT x.test:25 HTTP/1.1\r\nHost: x.test:25\r\n\r\n");
    assert_eq!(smtp.status, 403);
    drop(tunnel(m1, "secure.test:443"));

    // Pages from the live view.
    let table = get(m1, "/array.dll?Get.Info.v1", "any", "");
    assert_eq!(table.status, 200);
    assert!(
        table.body.starts_with("Proxy Array Information/1.0\r\n"),
        "{}",
        table.body
    );
    assert!(table.body.contains(" UP "));
    let pac = get(m2, "/proxy.pac", "any", "");
    assert_eq!(
        pac.header("content-type"),
        "application/x-ns-proxy-autoconfig"
    );
    assert!(pac.body.contains("FindProxyForURL"));

    // Parents: p1 is dead; its URLs fail over to p2 and p1 shows DOWN.
    let up = c1.service("up").unwrap();
    let parents = up.router(&up.carp_members(&c1, None)).unwrap();
    let url = (0..)
        .map(|i| format!("http://p{i}.test/"))
        .find(|u| {
            parents
                .carp
                .owner(&RequestTarget::parse_absolute(u.as_bytes()).unwrap())
                == Some(0)
        })
        .unwrap();
    let a = get("10.0.0.11:8081", &url, "p.test", "");
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.header("x-shoal-served-by"), "p2");
    eventually("p1 shown DOWN", || {
        get("10.0.0.11:8081", "/array.dll?Get.Info.v1", "any", "")
            .body
            .lines()
            .any(|l| l.starts_with("p1 ") && l.contains(" DOWN "))
    });
    let direct = get(
        "10.0.0.11:8081",
        "http://10.0.0.31:8000/d",
        "10.0.0.31:8000",
        "",
    );
    assert_eq!(
        direct.header("x-backend"),
        "O",
        "direct hosts go to the origin"
    );
    assert_eq!(direct.header("x-target"), "/d", "origin-form to an origin");
    echo("10.0.0.31:443");
    // A tunnel that goes quiet is closed after the service's idle time
    // (1 s here), not held for ever.
    let mut quiet = tunnel("10.0.0.11:8081", "10.0.0.31:443");
    let since = Instant::now();
    let mut rest = Vec::new();
    let read = quiet.read_to_end(&mut rest);
    assert!(
        matches!(read, Ok(0)),
        "a quiet tunnel is closed: {read:?} {rest:?}"
    );
    let quiet_for = since.elapsed();
    assert!(
        quiet_for >= Duration::from_millis(900),
        "closed before its idle time: {quiet_for:?}"
    );
    // A client that sends half a request head and stalls is cut after the
    // idle time too (the header-read bound, on the worker's coarse timer).
    let mut half = TcpStream::connect("10.0.0.11:8081").unwrap();
    half.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    half.write_all(b"GET /slow HTTP/1.1\r\nHost: p.test\r\n")
        .unwrap();
    let since = Instant::now();
    let mut rest = Vec::new();
    let read = half.read_to_end(&mut rest);
    let stalled_for = since.elapsed();
    assert!(
        read.is_ok(),
        "a stalled head is cut: {read:?} after {stalled_for:?}"
    );
    assert!(
        stalled_for >= Duration::from_millis(900) && stalled_for < Duration::from_secs(5),
        "cut after {stalled_for:?}"
    );
    // p1 comes: probed up, and takes its URL.
    let p1 = "10.0.0.41:3128".parse().unwrap();
    let broken = backend("P1", p1);
    let p1_serves = || get("10.0.0.11:8081", &url, "p.test", "").header("x-backend") == "P1";
    eventually("p1 UP and serving", p1_serves);
    // p1 accepts and closes without a byte (its probe still passes): the
    // request fails over to p2 at once, and p1 is down from then on.
    broken.store(true, Ordering::Relaxed);
    let a = get("10.0.0.11:8081", &url, "p.test", "");
    assert_eq!(a.header("x-shoal-served-by"), "p2", "failover: {}", a.body);
    eventually("p1 marked DOWN after the failure", || {
        get("10.0.0.11:8081", "/array.dll?Get.Info.v1", "any", "")
            .body
            .lines()
            .any(|l| l.starts_with("p1 ") && l.contains(" DOWN "))
    });
    // p1 answers again: probed back up after the hold, takes its URL back.
    broken.store(false, Ordering::Relaxed);
    eventually("p1 back UP and serving", p1_serves);

    // A parent that accepts and never answers: 504 after the first-byte
    // timeout, not sent anywhere else. Beyond max_connections: 503.
    let started = Instant::now();
    let slow = get("10.0.0.11:8082", "http://slow.test/", "slow.test", "");
    assert_eq!(slow.status, 504, "{}", slow.body);
    assert!(started.elapsed() >= Duration::from_millis(300));
    // A connection counts from its accept; until the proxy has accepted the
    // held one, a second is still within the limit and answered.
    let held = TcpStream::connect("10.0.0.11:8082").unwrap();
    eventually("503 beyond max_connections", || {
        let over = get("10.0.0.11:8082", "/array.dll?Get.Info.v1", "any", "");
        assert!(matches!(over.status, 200 | 503), "{}", over.body);
        over.status == 503
    });
    drop((held, stall));

    // Counters: host 1's view of every service.
    let json = t1.counters_json();
    let web = &json["web"];
    let errors = &web["errors"];
    for (kind, n) in [
        ("bad_request", 2),
        ("forged_member", 1),
        ("loop", 2),
        ("head_too_large", 2),
        ("uri_too_long", 1),
        ("forbidden_port", 1),
    ] {
        assert_eq!(errors[kind], n, "{kind}: {json}");
    }
    assert!(web["hops_out"].as_u64().unwrap() >= hops, "{json}");
    assert!(web["pages"].as_u64().unwrap() >= 1);
    assert!(
        web["failovers"].as_u64().unwrap() >= 1,
        "past m2's 503: {json}"
    );
    assert!(web["routed"]["m1"].as_u64().unwrap() > 0 && web["routed"]["m2"].as_u64().unwrap() > 0);
    let hops_in = t2.counters_json()["web"]["hops_in"].as_u64().unwrap();
    assert!(hops_in >= hops, "hops verified at m2: {hops_in} of {hops}");
    let up = &json["up"];
    assert!(up["failovers"].as_u64().unwrap() >= 1, "{json}");
    assert_eq!(up["members"][0]["name"], "p1");
    assert_eq!(up["members"][0]["up"], true);
    let stall = &json["stall"]["errors"];
    assert_eq!(stall["timeout"], 1, "{json}");
    assert_eq!(stall["overload"], 1, "{json}");
    assert_eq!(json["stall"]["failovers"], 0, "{json}");
    // Per member: the same events, each at the member it happened to.
    let by = &web["by_member"];
    let forwarded: u64 = ["m1", "m2"]
        .iter()
        .map(|m| by[*m]["forwarded"].as_u64().unwrap())
        .sum();
    assert_eq!(forwarded, web["hops_out"].as_u64().unwrap(), "{json}");
    assert!(
        by["m2"]["failovers"].as_u64().unwrap() >= 1,
        "m2's 503: {json}"
    );
    assert!(
        up["by_member"]["p1"]["failovers"].as_u64().unwrap() >= 1,
        "{json}"
    );
    assert!(
        up["by_member"]["p2"]["requests"].as_u64().unwrap() >= 1,
        "{json}"
    );
    let staller = json["stall"]["members"][0]["name"].as_str().unwrap();
    let at = &json["stall"]["by_member"][staller];
    assert_eq!(at["errors"]["timeout"], 1, "{json}");
    let timed: u64 = at["latency"]["counts"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|n| n.as_u64())
        .sum();
    assert_eq!(timed, 1, "the 504 is timed against the staller: {json}");
    t1.stop();
    t2.stop();
}
