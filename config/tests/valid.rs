//! Valid configurations: the shipped examples, defaults, round trips and the
//! cluster spec handed to the dataplane.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use shoal_config::*;
use shoal_dataplane::{
    Affinity, ClusterMode, FilterMode, HostId, HostSet, Protocol, DEFAULT_WEIGHT, MAX_HOSTS,
};

const EXAMPLES: &[&str] = &[
    "lab-3host.toml",
    "lab-3host-weighted.toml",
    "multicast.toml",
    "igmp.toml",
    "ipv6.toml",
    "rules.toml",
    "carp.toml",
    "instances.toml",
    "sticky.toml",
    "clb.toml",
];

fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(name)
}

fn load_example(name: &str) -> Config {
    match load(&example(name)) {
        Ok(c) => c,
        Err(e) => panic!("{name} does not load:\n{e}"),
    }
}

fn id(n: u8) -> HostId {
    HostId::new(n).expect("test host IDs are in range")
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test addresses parse")
}

/// parse → to_normalized_toml → parse yields an equal Config, and the
/// normalized text is a fixed point.
fn assert_round_trip(c: &Config) {
    let text = c.to_normalized_toml();
    let again = match parse(&text, &c.source) {
        Ok(again) => again,
        Err(e) => panic!("normalized form does not parse:\n{e}\n---\n{text}"),
    };
    assert_eq!(&again, c, "normalized form:\n{text}");
    assert_eq!(again.to_normalized_toml(), text);
}

#[test]
fn every_example_loads_round_trips_and_has_its_key_file() {
    for name in EXAMPLES {
        let c = load_example(name);
        assert_round_trip(&c);
        assert_eq!(c.key_path(), example("cluster.key"), "{name}");
        c.check_key_file().unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(c.primary_vip(), Ipv4Addr::new(10, 0, 0, 100), "{name}");
        let spec = c.spec(0);
        assert_eq!(spec.rules.len(), c.rules.len());
        for (i, a) in spec.rules.iter().enumerate() {
            for b in &spec.rules[i + 1..] {
                assert!(!a.overlaps(b), "{name}: rules overlap");
            }
        }
    }
}

#[test]
fn the_sample_key_parses() {
    let text = std::fs::read_to_string(example("cluster.key")).expect("sample key exists");
    let key = parse_cluster_key(&text).expect("sample key is well-formed");
    assert_eq!(key.as_bytes().len(), CLUSTER_KEY_LEN);
    assert!(text.contains("LAB ONLY"));
}

#[test]
fn lab_3host_is_what_the_lab_expects() {
    let c = load_example("lab-3host.toml");
    assert_eq!(c.cluster.vips, vec![ip("10.0.0.100")]);
    assert_eq!(c.cluster.mode, ClusterMode::Unicast);
    assert_eq!(c.cluster.key_file, PathBuf::from("cluster.key"));
    assert_eq!(
        c.host_ids(),
        [id(1), id(2), id(3)].into_iter().collect::<HostSet>()
    );
    for (host, addr) in c.hosts.iter().zip(["10.0.0.11", "10.0.0.12", "10.0.0.13"]) {
        assert_eq!(host.interface, "eth0");
        assert_eq!(
            host.dedicated,
            vec![Cidr::new(ip(addr), 16).expect("valid")]
        );
        assert_eq!(host.weight, DEFAULT_WEIGHT);
        assert_eq!(host.cores, CoreMap::default());
    }
    assert_eq!(c.rules.len(), 1);
    let r = &c.rules[0];
    assert_eq!((r.vip, r.port_start, r.port_end), (None, 0, 65535));
    assert_eq!(r.protocol, Protocol::Both);
    assert_eq!(
        r.mode,
        FilterMode::Multiple {
            affinity: Affinity::Single
        }
    );
    // The rule as written is NLB's default rule.
    assert_eq!(r, &RuleSection::nlb_default(&c.hosts));
    assert_eq!(c.heartbeat, HeartbeatSection::default());
    assert_eq!(c.descriptors, DescriptorSection::default());
    assert_eq!(c.io, IoSection::default());
}

#[test]
fn weighted_lab_spreads_50_50_100() {
    let c = load_example("lab-3host-weighted.toml");
    let spec = c.spec(0);
    let w = &spec.rules[0].weights;
    assert_eq!(&w[..3], &[50, 50, 100]);
    assert!(w[3..].iter().all(|&x| x == 0), "unconfigured hosts weigh 0");
}

#[test]
fn defaults_are_nlbs() {
    let text = "[cluster]\nvips = [\"10.0.0.100\"]\nkey_file = \"/etc/shoal/cluster.key\"\n[[host]]\nid = 4\ninterface = \"eth0\"\n";
    let c = parse(text, Path::new("/etc/shoal/shoal.toml")).expect("minimal config is valid");
    // NLB: AliveMsgPeriod 1000 ms, AliveMsgTolerance 5.
    assert_eq!(c.heartbeat.period_ms, 1000);
    assert_eq!(c.heartbeat.tolerance, 5);
    assert_eq!(c.heartbeat.converge_periods, 3);
    // The admin socket is root's alone unless a group is named.
    assert_eq!(c.admin.group, None);
    // No metrics endpoint unless asked for.
    assert_eq!(c.metrics.listen, None);
    // NLB: 512 descriptors per allocation x 512 allocations.
    assert_eq!(c.descriptors.capacity, 262_144);
    assert_eq!(c.descriptors.tcp_idle_timeout_s, 3600);
    assert_eq!(c.descriptors.tcp_half_open_timeout_s, 30);
    assert_eq!(c.descriptors.tcp_closing_timeout_s, 60);
    assert_eq!(c.descriptors.gre_timeout_s, 300);
    assert_eq!(c.descriptors.udp_timeout_s, 120);
    assert_eq!(c.cluster.mode, ClusterMode::Unicast);
    assert_eq!(c.cluster.ipv6_network_prefix, 64);
    assert_eq!(
        c.io,
        IoSection {
            backend: Backend::Auto,
            ring_size: 16384,
            frame_size: 2048,
            batch_size: 64,
            idle: IdlePolicy::Backoff,
            xdp_mode: XdpMode::Auto,
            delivery: Delivery::Tap,
            xdp_fast_path: true,
            xdp_pass: true,
            xdp_zero_copy: false,
        }
    );
    let host = c.host(id(4)).expect("host 4 is configured");
    assert_eq!(host.weight, 50);
    assert!(host.dedicated.is_empty());
    assert_eq!(host.cores.control, 0);
    assert_eq!(
        host.cores.poll,
        vec![PollLoop {
            core: 0,
            queues: vec![0]
        }]
    );
    // NLB's default port rule: all VIPs, 0-65535, both, multiple, Single
    // affinity, equal weights, no extended affinity.
    let spec = c.spec(0);
    assert_eq!(spec.rules.len(), 1);
    let r = &spec.rules[0];
    assert_eq!(r.vip, None);
    assert_eq!((r.port_start, r.port_end), (0, 65535));
    assert_eq!(r.protocol, Protocol::Both);
    assert_eq!(
        r.mode,
        FilterMode::Multiple {
            affinity: Affinity::Single
        }
    );
    assert_eq!(r.extended_affinity_timeout_s, 0);
    assert_eq!(r.weights[id(4).index()], DEFAULT_WEIGHT);
    assert_eq!(r.weights.iter().filter(|&&w| w != 0).count(), 1);
    assert_eq!(c.key_path(), PathBuf::from("/etc/shoal/cluster.key"));
    assert_round_trip(&c);
}

#[test]
fn spec_fills_weights_and_priorities_per_host_index() {
    let c = load_example("rules.toml");
    let spec = c.spec(0);
    assert_eq!(spec.vips, vec![ip("10.0.0.100")]);
    assert_eq!(spec.mode, ClusterMode::Unicast);
    assert_eq!(spec.ipv6_network_prefix, 64);
    assert_eq!(spec.rules.len(), 6);
    let web = &spec.rules[0];
    assert_eq!(
        (web.port_start, web.port_end, web.protocol),
        (80, 80, Protocol::Tcp)
    );
    assert_eq!(
        web.mode,
        FilterMode::Multiple {
            affinity: Affinity::None
        }
    );
    // Host weights 50, 50, 100; unconfigured hosts 0.
    assert_eq!(&web.weights[..4], &[50, 50, 100, 0]);
    // Rule 2 overrides host 3 down to 50.
    assert_eq!(&spec.rules[1].weights[..4], &[50, 50, 50, 0]);
    assert_eq!(spec.rules[3].extended_affinity_timeout_s, 60);
    assert_eq!(spec.rules[3].protocol, Protocol::Udp);
    let db = &spec.rules[4];
    assert_eq!(db.mode, FilterMode::Single);
    assert_eq!(db.priority(id(1)), 2);
    assert_eq!(db.priority(id(2)), 1);
    assert_eq!(db.priority(id(3)), 3);
    assert!(db.weights.iter().all(|&w| w == 0));
    assert_eq!(spec.rules[5].mode, FilterMode::Disabled);
    assert!(spec.rules[5].weights.iter().all(|&w| w == 0));
    assert!(spec.rules.iter().all(|r| r.weights.len() == MAX_HOSTS));

    let h2 = c.host(id(2)).expect("host 2");
    assert_eq!(h2.cores.poll.len(), 2);
    assert_eq!(
        h2.cores.poll[1],
        PollLoop {
            core: 2,
            queues: vec![1]
        }
    );
    assert_eq!(c.io.backend, Backend::AfXdp);
    assert_eq!(c.io.xdp_mode, XdpMode::Native);
}

#[test]
fn single_rule_priorities_default_to_host_ids() {
    let text = "[cluster]
vips = [\"10.0.0.100\"]
key_file = \"k\"
[[host]]
id = 3
interface = \"eth0\"
[[host]]
id = 1
interface = \"eth0\"
[[host]]
id = 2
interface = \"eth0\"
[[rule]]
mode = \"single\"
priorities = { 3 = 7 }
";
    let c = parse(text, Path::new("t.toml")).expect("valid");
    // Hosts are sorted by ID.
    let ids: Vec<u8> = c.hosts.iter().map(|h| h.id.get()).collect();
    assert_eq!(ids, vec![1, 2, 3]);
    let want: BTreeMap<HostId, u8> = [(id(1), 1), (id(2), 2), (id(3), 7)].into_iter().collect();
    assert_eq!(c.rules[0].priorities, want);
    assert!(c.rules[0].weights.is_empty());
    let spec = c.spec(0);
    assert_eq!(spec.rules[0].priority(id(3)), 7);
    assert_eq!(spec.rules[0].priority(id(1)), 1);
    assert_round_trip(&c);
}

#[test]
fn vip_rule_and_all_rule_may_share_ports() {
    // A specific-VIP rule takes precedence over an "all" rule (NLB), so they
    // do not overlap.
    let text = "[cluster]
vips = [\"10.0.0.100\", \"fd00::100\"]
key_file = \"k\"
[[host]]
id = 1
interface = \"eth0\"
[[rule]]
vip = \"fd00:0::100\"
ports = 80
protocol = \"tcp\"
affinity = \"network\"
[[rule]]
ports = [0, 65535]
";
    let c = parse(text, Path::new("t.toml")).expect("valid");
    assert_eq!(c.rules[0].vip, Some(ip("fd00::100")));
    assert_round_trip(&c);
}

#[test]
fn every_setting_survives_the_round_trip() {
    let text = r#"
[cluster]
vips = ["fd00::1", "192.0.2.10", "192.0.2.11"]
mode = "igmp"
key_file = 'keys\cluster "a".key'
ipv6_network_prefix = 56
[heartbeat]
period_ms = 50
tolerance = 3
converge_periods = 20
[descriptors]
capacity = 16777216
tcp_idle_timeout_s = 604800
tcp_half_open_timeout_s = 1
tcp_closing_timeout_s = 3600
gre_timeout_s = 86400
udp_timeout_s = 1
[io]
backend = "af_packet"
ring_size = 512
batch_size = 256
idle = "busy"
xdp_mode = "generic"
delivery = "veth"
xdp_fast_path = false
xdp_pass = false
xdp_zero_copy = true
[admin]
group = "shoal-admins"
[metrics]
listen = "[::1]:9810"
[[host]]
id = 64
interface = "enp1s0f1"
dedicated = ["192.0.2.64/24", "fd00::64/64"]
weight = 0
[host.cores]
control = 3
poll = [{ core = 1, queues = [0, 2] }, { core = 2, queues = [1, 3] }]
[[host]]
id = 1
interface = "eth0"
weight = 100
[[rule]]
vip = "192.0.2.11"
ports = [1000, 2000]
protocol = "udp"
affinity = "none"
weights = { 64 = 10 }
extended_affinity_s = 86400
[[rule]]
ports = 7
mode = "disabled"
"#;
    let c = parse(text, Path::new("dir/t.toml")).expect("valid");
    assert_eq!(c.primary_vip(), Ipv4Addr::new(192, 0, 2, 10));
    assert_eq!(c.key_path(), PathBuf::from("dir/keys\\cluster \"a\".key"));
    assert_eq!(c.rules[0].weights.get(&id(64)), Some(&10));
    assert_eq!(c.rules[0].weights.get(&id(1)), Some(&100));
    assert!(!c.io.xdp_fast_path);
    assert!(!c.io.xdp_pass);
    assert!(c.io.xdp_zero_copy);
    assert_eq!(c.admin.group.as_deref(), Some("shoal-admins"));
    assert_eq!(c.metrics.listen, Some("[::1]:9810".parse().unwrap()));
    assert_round_trip(&c);
}

#[test]
fn host_selection() {
    let c = load_example("lab-3host.toml");
    assert_eq!(c.select_host(Some(2)).map(|h| h.id), Ok(id(2)));
    assert!(matches!(
        c.select_host(Some(9)),
        Err(HostSelectError::UnknownHost { requested: 9, .. })
    ));
    assert!(matches!(
        c.select_host(Some(0)),
        Err(HostSelectError::UnknownHost { .. })
    ));
    let err = c.select_host(None).expect_err("three hosts need --host");
    assert!(err.to_string().contains("one of 1, 2, 3"), "{err}");

    let one = "[cluster]\nvips = [\"10.0.0.100\"]\nkey_file = \"k\"\n[[host]]\nid = 5\ninterface = \"eth0\"\n";
    let c = parse(one, Path::new("t.toml")).expect("valid");
    assert_eq!(c.select_host(None).map(|h| h.id), Ok(id(5)));
}

#[test]
fn a_missing_key_file_is_reported() {
    let text = "[cluster]\nvips = [\"10.0.0.100\"]\nkey_file = \"no-such.key\"\n[[host]]\nid = 1\ninterface = \"eth0\"\n";
    let c = parse(text, &example("virtual.toml")).expect("valid");
    let err = c.check_key_file().expect_err("the key file does not exist");
    assert_eq!(err.key, "cluster.key_file");
    assert!(err.reason.contains("does not exist"), "{err}");
    // A directory is not a key file.
    let text = text.replace("no-such.key", ".");
    let c = parse(&text, &example("virtual.toml")).expect("valid");
    assert!(c.check_key_file().is_err());
}

#[test]
fn carp_services_parse_with_defaults_and_build_routers() {
    use shoal_dataplane::array::{HashMode, KeyParts, RequestTarget};
    let c = load_example("carp.toml");
    assert_eq!(c.services.len(), 2);
    let web = c.service("web-cache").unwrap();
    assert_eq!(web.port, 8080);
    let carp = web.carp().unwrap();
    assert_eq!(carp.hash, HashMode::Spec);
    assert_eq!(carp.key, KeyParts::ALL);
    assert_eq!(
        carp.array_name, "web-cache",
        "array_name defaults to the service name"
    );
    assert_eq!(carp.list_ttl_s, 600);
    assert_eq!(carp.exceptions.len(), 2);
    let members = web.carp_members(&c, None);
    let names: Vec<&str> = members.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(
        names,
        ["cache1.lab.example", "cache2.lab.example", "10.0.0.13"]
    );
    let loads: Vec<u32> = members.iter().map(|m| m.load_factor).collect();
    assert_eq!(loads, [1, 1, 2]);
    assert_eq!(members[0].address, Some("10.0.0.11:8080".parse().unwrap()));
    let two = web.carp_members(&c, Some([id(1), id(3)].into_iter().collect()));
    assert_eq!(two.len(), 2);
    let router = web.router(&members).unwrap();
    let t = RequestTarget::parse_absolute(b"http://www.example.org/").unwrap();
    assert!(router.carp.owner(&t).is_some());

    assert_eq!(carp.probe_interval_ms, 500);
    assert_eq!(carp.down_ttl_ms, DEFAULT_DOWN_TTL_MS);
    assert_eq!(web.limits.connect_ports, [443, 563]);
    assert_eq!(web.limits.max_connections, 20_000);
    assert_eq!(web.limits.first_byte_timeout_ms, 15_000);
    assert_eq!(c.host(id(1)).unwrap().cores.proxy, [1, 2]);
    assert_eq!(c.host(id(1)).unwrap().cores.proxy_sched, ProxySched::Normal);
    assert_eq!(
        c.host(id(2)).unwrap().cores.proxy_sched,
        ProxySched::Batch,
        "proxy workers are SCHED_BATCH unless told otherwise"
    );
    assert_eq!(
        c.host(id(2)).unwrap().cores.proxy,
        [0],
        "proxy cores default to the poll cores"
    );

    let up = c.service("upstream").unwrap();
    assert_eq!(up.limits, ServiceLimits::default());
    assert_eq!(
        up.carp().unwrap().probe_interval_ms,
        DEFAULT_PROBE_INTERVAL_MS
    );
    assert_eq!(up.carp().unwrap().hash, HashMode::Hrw);
    assert_eq!(up.carp().unwrap().key, KeyParts::HOST);
    assert_eq!(up.carp().unwrap().list_ttl_s, DEFAULT_LIST_TTL_S);
    let parents = up.carp_members(&c, None);
    assert_eq!(parents[1].name, "parent2.example.net");
    assert_eq!(parents[1].load_factor, 3);
    assert_eq!(parents[1].address, Some("10.0.9.2:3128".parse().unwrap()));
    assert_eq!(c.member_name(id(3)).as_deref(), Some("10.0.0.13"));
}

#[test]
fn instances_example_reads_its_instances_probe_and_health() {
    use shoal_config::{InstanceSection, ProbeKind};
    let c = load_example("instances.toml");
    let r = &c.rules[0];
    assert_eq!(
        r.instances,
        (3128..=3131)
            .map(|port| InstanceSection { port, weight: 1 })
            .collect::<Vec<_>>()
    );
    assert_eq!(r.instance_probe.kind, ProbeKind::Tcp);
    assert_eq!(r.instance_probe.timing.interval_ms, 250);
    assert_eq!(r.instance_probe.timing.fall, 2);
    let h = r.health.as_ref().unwrap();
    assert_eq!(h.address, "10.0.0.100:80".parse().unwrap());
    assert_eq!(h.kind, ProbeKind::Http { path: "/".into() });
    assert_eq!(r.hold_ms, 5000);
    assert!(c.rules[1].instances.is_empty() && c.rules[1].health.is_none());
    assert_eq!(c.rules[1].hold_ms, shoal_config::DEFAULT_HOLD_MS);
}

#[test]
fn sticky_services_parse_with_defaults() {
    use shoal_dataplane::array::sticky::{Coherence, OwnerFailure, DEFAULT_MAX_AGE_S};
    let c = load_example("sticky.toml");
    let shop = c.service("shop").unwrap();
    let s = shop.sticky().expect("a sticky service");
    assert_eq!(s.local, "127.0.0.1:8080".parse().unwrap());
    assert_eq!(s.cookie, "RQFW");
    assert_eq!(s.cookie_max_age_s, 28_800);
    assert_eq!(s.policy.coherence, Coherence::Session);
    assert_eq!(s.policy.session_cookies.len(), 3);
    assert_eq!(s.policy.statics.len(), 5);
    assert_eq!(s.policy.controller.methods.len(), 7);
    assert_eq!(s.policy.on_owner_failure, OwnerFailure::Repin);
    assert_eq!(s.policy.hop_limit, 1);
    assert_eq!(s.trusted_proxies.len(), 1);
    assert!(s.tls.is_none());
    // Its member set is the cluster's hosts at their dedicated addresses.
    let members = shop.carp_members(&c, None);
    assert_eq!(members.len(), 3);
    assert_eq!(members[1].address, Some("10.0.0.12:80".parse().unwrap()));

    let text = std::fs::read_to_string(example("sticky.toml"))
        .unwrap()
        .split("[service.sticky]")
        .next()
        .unwrap()
        .to_string()
        + "[service.sticky]\nlocal = \"127.0.0.1:8080\"\ntls = { cert = \"a.crt\", key = \"a.key\" }\n[[service.sticky.ocf]]\nname = \"other-1\"\naddress = \"10.9.0.1:80\"\n";
    let d = parse(&text, &example("sticky.toml")).unwrap();
    assert_round_trip(&d);
    let s = d.services[0].sticky().unwrap();
    assert_eq!(s.cookie, "RQFW");
    assert_eq!(u64::from(s.cookie_max_age_s), DEFAULT_MAX_AGE_S);
    assert_eq!(s.policy.coherence, Coherence::Always);
    assert_eq!(s.policy.ocf, ["other-1"]);
    assert_eq!(s.tls.as_ref().unwrap().cert, PathBuf::from("a.crt"));
}

#[test]
fn the_clb_example_has_its_policies_defaults_and_backends() {
    use shoal_dataplane::array::Policy;
    let c = load_example("clb.toml");
    let app = c.service("app").and_then(|s| s.clb()).unwrap();
    assert_eq!(app.policy, Policy::PeakEwma);
    assert_eq!(app.backends.len(), 4);
    assert_eq!(app.backends[0].address, "10.0.0.31:8000".parse().unwrap());
    assert_eq!(app.backends[0].weight, 1);
    assert_eq!(app.probe.to_string(), "GET /health");
    assert_eq!(app.eject_ms, 2000);
    let rr = c.service("app-rr").and_then(|s| s.clb()).unwrap();
    assert_eq!(rr.policy, Policy::RoundRobin);
    assert_eq!(rr.poll_ms, DEFAULT_POLL_MS);
    assert_eq!(rr.probe_timeout_ms, DEFAULT_PROBE_TIMEOUT_MS);
    assert_eq!(rr.retries, DEFAULT_RETRIES);
    assert_eq!((rr.fall, rr.rise), (DEFAULT_FALL, DEFAULT_RISE));
    assert_eq!(rr.decay_ms, DEFAULT_DECAY_MS);
    assert!(c.service("app").unwrap().carp().is_none());
    assert_eq!(
        c.service("app-clb").and_then(|s| s.clb()).unwrap().policy,
        Policy::Clb
    );
}
