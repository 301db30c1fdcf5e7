//! Invalid configurations and the exact errors they must produce.
//!
//! Each case is a whole file, the line the error must point at, the key path
//! it must name, a substring of the reason, and how many errors the file
//! yields in total (so a case cannot pass by accident on a different error).

use std::path::Path;

use shoal_config::{parse, ConfigError};

/// Lines 1-7; cases append from line 8.
const BASE: &str = "[cluster]
vips = [\"10.0.0.100\"]
key_file = \"k\"

[[host]]
id = 1
interface = \"eth0\"
";

struct Case {
    name: &'static str,
    text: String,
    line: Option<usize>,
    key: &'static str,
    reason: &'static str,
    count: usize,
}

fn case(
    name: &'static str,
    text: impl Into<String>,
    line: Option<usize>,
    key: &'static str,
    reason: &'static str,
) -> Case {
    Case {
        name,
        text: text.into(),
        line,
        key,
        reason,
        count: 1,
    }
}

fn with(extra: &str) -> String {
    format!("{BASE}{extra}")
}

fn cluster(body: &str) -> String {
    format!("[cluster]\n{body}\n[[host]]\nid = 1\ninterface = \"eth0\"\n")
}

fn two_hosts(extra: &str) -> String {
    // Lines 8-10 hold host 2; `extra` starts at line 11.
    format!("{BASE}[[host]]\nid = 2\ninterface = \"eth0\"\n{extra}")
}

/// A `[[service]]` on port 80 (lines 8-12, the last `[service.carp]`);
/// `carp` starts at line 13.
fn service(carp: &str) -> String {
    with(&format!(
        "[[service]]\nname = \"c\"\nport = 80\nroute = \"carp\"\n[service.carp]\n{carp}"
    ))
}

/// A `[[service]]` on port 80 whose service-level `keys` start at line 12,
/// followed by a parents `[service.carp]`.
fn service_keys(keys: &str) -> String {
    with(&format!(
        "[[service]]\nname = \"c\"\nport = 80\nroute = \"carp\"\n{keys}[service.carp]\n{PARENT}"
    ))
}

const PARENT: &str =
    "members = \"parents\"\n[[service.carp.parent]]\nname = \"p\"\naddress = \"10.0.9.1:3128\"\n";

/// A sticky `[[service]]` on port 80 whose `[service.sticky]` keys start
/// at line 15 (after `local`; the table at line 13).
fn sticky(keys: &str) -> String {
    let local = if keys.is_empty() {
        ""
    } else {
        "local = \"127.0.0.1:8080\"\n"
    };
    format!(
        "{BASE}name = \"h1\"\n[[service]]\nname = \"c\"\nport = 80\nroute = \"sticky\"\n[service.sticky]\n{local}{keys}"
    )
}

/// A `route = "clb"` `[[service]]` on port 80 (lines 8-11); `rest`
/// starts at line 12.
fn clb_service(rest: &str) -> String {
    with(&format!(
        "[[service]]\nname = \"c\"\nport = 80\nroute = \"clb\"\n{rest}"
    ))
}

const BACKEND: &str = "[[service.backend]]\naddress = \"10.0.0.31:8000\"\n";

fn cases() -> Vec<Case> {
    let mut many_hosts = String::from(BASE);
    for id in 2..=65 {
        many_hosts.push_str(&format!("[[host]]\nid = {id}\ninterface = \"eth0\"\n"));
    }
    let many_backends: String = (1..=65)
        .map(|i| format!("[[service.backend]]\naddress = \"10.0.1.{i}:8000\"\n"))
        .collect();
    let mut many_rules = String::from(BASE);
    for port in 0..33 {
        many_rules.push_str(&format!("[[rule]]\nports = {port}\n"));
    }
    vec![
        case("syntax error", "[cluster\n", Some(1), "syntax", "invalid table header: expected `.`, `]`"),
        case("unknown section", with("[clusterr]\n"), Some(8), "clusterr", "unknown key `clusterr`; expected one of: cluster,"),
        case("unknown cluster key", cluster("vips = [\"10.0.0.100\"]\nkey_file = \"k\"\nvip = \"10.0.0.1\""), Some(4), "cluster.vip", "unknown key `vip`"),
        case("unknown host key", with("colour = 1\n"), Some(8), "host[1].colour", "unknown key `colour`; expected one of: id, interface"),
        case("unknown rule key", with("[[rule]]\nport = 80\n"), Some(9), "rule[1].port", "unknown key `port`"),
        case("unknown heartbeat key", with("[heartbeat]\nperiod = 100\n"), Some(9), "heartbeat.period", "expected one of: period_ms, tolerance"),
        Case { count: 2, ..case("unknown poll key", with("[host.cores]\npoll = [{ core = 1, queue = [0] }]\n"), Some(9), "host[1].cores.poll[1].queue", "unknown key `queue`; expected one of: core, queues") },
        case("unknown admin key", with("[admin]\nusers = [\"ops\"]\n"), Some(9), "admin.users", "unknown key `users`; expected one of: group"),
        case("admin group not a name", with("[admin]\ngroup = \"ops team\"\n"), Some(9), "admin.group", "\"ops team\" is not a group name"),
        case("admin group empty", with("[admin]\ngroup = \"\"\n"), Some(9), "admin.group", "is not a group name"),
        case("admin group not a string", with("[admin]\ngroup = 27\n"), Some(9), "admin.group", "string"),
        case("metrics listen not an address", with("[metrics]\nlisten = \"localhost\"\n"), Some(9), "metrics.listen", "expected ADDRESS:PORT"),
        case("metrics listen without port", with("[metrics]\nlisten = \"127.0.0.1\"\n"), Some(9), "metrics.listen", "expected ADDRESS:PORT"),
        case("unknown metrics key", with("[metrics]\npath = \"/m\"\n"), Some(9), "metrics.path", "unknown key `path`; expected one of: listen"),
        case("missing vips", cluster("key_file = \"k\""), Some(1), "cluster.vips", "required key is missing"),
        case("missing key_file", cluster("vips = [\"10.0.0.100\"]"), Some(1), "cluster.key_file", "required key is missing"),
        case("missing cluster", "[[host]]\nid = 1\ninterface = \"eth0\"\n", None, "cluster", "required section [cluster] is missing"),
        case("missing hosts", "[cluster]\nvips = [\"10.0.0.100\"]\nkey_file = \"k\"\n", None, "host", "at least one [[host]]"),
        case("host is not an array", "[cluster]\nvips = [\"10.0.0.100\"]\nkey_file = \"k\"\n[host]\nid = 1\n", Some(4), "host", "expected an array of tables ([[host]] sections), found a table"),
        case("missing host id", with("[[host]]\ninterface = \"eth1\"\n"), Some(8), "host[2].id", "required key is missing"),
        case("missing interface", with("[[host]]\nid = 2\n"), Some(8), "host[2].interface", "required key is missing"),
        case("interface name too long", with("[[host]]\nid = 2\ninterface = \"a-very-long-interface\"\n"), Some(10), "host[2].interface", "longer than 15 bytes"),
        case("heartbeat period below range", with("[heartbeat]\nperiod_ms = 20\n"), Some(9), "heartbeat.period_ms", "20 is out of range; expected 50..=10000"),
        case("tolerance below range", with("[heartbeat]\ntolerance = 2\n"), Some(9), "heartbeat.tolerance", "expected 3..=100"),
        case("converge periods above range", with("[heartbeat]\nconverge_periods = 21\n"), Some(9), "heartbeat.converge_periods", "expected 1..=20"),
        case("period as a datetime", with("[heartbeat]\nperiod_ms = 1979-05-27\n"), Some(9), "heartbeat.period_ms", "expected an integer in 50..=10000, found a datetime"),
        case("period as a string", with("[heartbeat]\nperiod_ms = \"100\"\n"), Some(9), "heartbeat.period_ms", "found a string"),
        case("descriptor capacity zero", with("[descriptors]\ncapacity = 0\n"), Some(9), "descriptors.capacity", "expected 1..=16777216"),
        case("tcp idle timeout zero", with("[descriptors]\ntcp_idle_timeout_s = 0\n"), Some(9), "descriptors.tcp_idle_timeout_s", "expected 1..=604800"),
        case("ring not a power of two", with("[io]\nring_size = 1000\n"), Some(9), "io.ring_size", "1000 is not a power of two"),
        case("ring too small", with("[io]\nring_size = 256\n"), Some(9), "io.ring_size", "expected 512..=65536"),
        case("frame size not a UMEM size", with("[io]\nframe_size = 3072\n"), Some(9), "io.frame_size", "3072 is not a UMEM frame size; expected 2048 or 4096"),
        case("frame size too large", with("[io]\nframe_size = 9000\n"), Some(9), "io.frame_size", "expected 2048..=4096"),
        case("fast path not a boolean", with("[io]\nxdp_fast_path = \"yes\"\n"), Some(9), "io.xdp_fast_path", "expected true or false, found a string"),
        case("pass not a boolean", with("[io]\nxdp_pass = 1\n"), Some(9), "io.xdp_pass", "expected true or false, found an integer"),
        case("batch size zero", with("[io]\nbatch_size = 0\n"), Some(9), "io.batch_size", "expected 1..=256"),
        case("unknown backend", with("[io]\nbackend = \"dpdk\"\n"), Some(9), "io.backend", "\"dpdk\" is not one of \"af_xdp\", \"af_packet\", \"auto\""),
        case("cluster mode not a string", cluster("vips = [\"10.0.0.100\"]\nkey_file = \"k\"\nmode = 1"), Some(4), "cluster.mode", "expected one of \"unicast\", \"multicast\", \"igmp\", found an integer"),
        case("ipv6 prefix zero", cluster("vips = [\"10.0.0.100\"]\nkey_file = \"k\"\nipv6_network_prefix = 0"), Some(4), "cluster.ipv6_network_prefix", "expected 1..=128"),
        case("host id zero", "[cluster]\nvips = [\"10.0.0.100\"]\nkey_file = \"k\"\n[[host]]\nid = 0\ninterface = \"eth0\"\n", Some(5), "host[1].id", "0 is out of range; expected 1..=64"),
        case("host id 65", with("[[host]]\nid = 65\ninterface = \"eth0\"\n"), Some(9), "host[2].id", "expected 1..=64"),
        case("duplicate host id", with("[[host]]\nid = 1\ninterface = \"eth1\"\n"), Some(9), "host[2].id", "duplicate host ID 1: host[1] (line 6) has it too"),
        Case { count: 2, ..case("more than 64 hosts", many_hosts, Some(8 + 3 * 63), "host", "65 hosts; a cluster holds at most 64") },
        case("weight above 100", with("weight = 101\n"), Some(8), "host[1].weight", "expected 0..=100"),
        case("more than 32 rules", many_rules, Some(8 + 2 * 32), "rule", "33 rules; at most 32"),
        case("weights name a missing host", with("[[rule]]\nweights = { 7 = 10 }\n"), Some(9), "rule[1].weights.7", "no [[host]] has id = 7"),
        case("weights key not a host id", with("[[rule]]\nweights = { x = 10 }\n"), Some(9), "rule[1].weights.x", "`x` is not a host ID; expected 1..=64"),
        case("priorities name a missing host", with("[[rule]]\nmode = \"single\"\npriorities = { 9 = 1 }\n"), Some(10), "rule[1].priorities.9", "no [[host]] has id = 9"),
        case("duplicate priorities", two_hosts("[[rule]]\nmode = \"single\"\npriorities = { 1 = 5, 2 = 5 }\n"), Some(13), "rule[1].priorities.2", "priority 5 is also host 1's priority; priorities in a rule must be distinct"),
        case("priority collides with a default", two_hosts("[[rule]]\nmode = \"single\"\npriorities = { 1 = 2 }\n"), Some(13), "rule[1].priorities.1", "priority 2 is also host 2's priority (host 2 has no override"),
        case("priority above 64", with("[[rule]]\nmode = \"single\"\npriorities = { 1 = 65 }\n"), Some(10), "rule[1].priorities.1", "expected 1..=64"),
        case("overlapping all-VIP rules", with("[[rule]]\n[[rule]]\nports = [80, 90]\nprotocol = \"udp\"\n"), Some(9), "rule[2]", "overlaps rule[1] (line 8) on all VIPs, ports 80-90, udp"),
        case("overlapping VIP rules", with("[[rule]]\nvip = \"10.0.0.100\"\nports = 80\nprotocol = \"tcp\"\n[[rule]]\nvip = \"10.0.0.100\"\nports = [70, 90]\n"), Some(12), "rule[2]", "overlaps rule[1] (line 8) on VIP 10.0.0.100, port 80, tcp"),
        case("rule vip not a cluster vip", with("[[rule]]\nvip = \"10.0.0.101\"\n"), Some(9), "rule[1].vip", "10.0.0.101 is not one of cluster.vips"),
        // Frontend instances and rule health (rule at line 8, its keys from line 9).
        case("instances on a port range", with("[[rule]]\nvip = \"10.0.0.100\"\nports = [80, 90]\nprotocol = \"tcp\"\ninstances = [81, 82]\n"), Some(12), "rule[1].instances", "instances need a rule with a single port"),
        case("instances on every VIP", with("[[rule]]\nports = 80\nprotocol = \"tcp\"\ninstances = [81]\n"), Some(11), "rule[1].instances", "one VIP (not \"all\")"),
        case("instances on udp", with("[[rule]]\nvip = \"10.0.0.100\"\nports = 80\ninstances = [81]\n"), Some(11), "rule[1].instances", "protocol = \"tcp\""),
        case("duplicate instance port", with("[[rule]]\nvip = \"10.0.0.100\"\nports = 80\nprotocol = \"tcp\"\ninstances = [81, { port = 81, weight = 2 }]\n"), Some(12), "rule[1].instances[2]", "port 81 is also instance 1"),
        case("instance weight zero", with("[[rule]]\nvip = \"10.0.0.100\"\nports = 80\nprotocol = \"tcp\"\ninstances = [{ port = 81, weight = 0 }]\n"), Some(12), "rule[1].instances[1].weight", "expected 1..=100"),
        case("empty instance list", with("[[rule]]\nvip = \"10.0.0.100\"\nports = 80\nprotocol = \"tcp\"\ninstances = []\n"), Some(12), "rule[1].instances", "an empty instance list"),
        case("instance probe without instances", with("[[rule]]\nports = 80\n[rule.instance_probe]\nfall = 2\n"), Some(10), "rule[1].instance_probe", "only applies to a rule with `instances`"),
        case("probe timeout above interval", with("[[rule]]\nports = 80\n[rule.health]\ntcp = \"10.0.0.100:80\"\ninterval_ms = 200\ntimeout_ms = 300\n"), Some(13), "rule[1].health.timeout_ms", "300 ms is longer than interval_ms (200 ms)"),
        case("health without a target", with("[[rule]]\nports = 80\n[rule.health]\nfall = 2\n"), Some(10), "rule[1].health", "needs `tcp"),
        case("health url not http", with("[[rule]]\nports = 80\n[rule.health]\nurl = \"https://10.0.0.100/\"\n"), Some(11), "rule[1].health.url", "only http:// URLs are probed"),
        case("health fall zero", with("[[rule]]\nports = 80\n[rule.health]\ntcp = \"10.0.0.100:80\"\nfall = 0\n"), Some(12), "rule[1].health.fall", "expected 1..=100"),
        case("hold above an hour", with("[[rule]]\nports = 80\nhold_ms = 3600001\n"), Some(10), "rule[1].hold_ms", "expected 0..=3600000"),
        case("rule vip not an address", with("[[rule]]\nvip = \"any\"\n"), Some(9), "rule[1].vip", "\"any\" is neither \"all\" nor an IP address"),
        case("no IPv4 VIP", cluster("vips = [\"fd00::100\"]\nkey_file = \"k\""), Some(2), "cluster.vips", "no IPv4 VIP"),
        case("no VIP at all", cluster("vips = []\nkey_file = \"k\""), Some(2), "cluster.vips", "at least one VIP is required"),
        case("duplicate VIP", cluster("vips = [\"10.0.0.100\", \"fd00::1\", \"10.0.0.100\"]\nkey_file = \"k\""), Some(2), "cluster.vips", "duplicate VIP 10.0.0.100"),
        case("multicast VIP", cluster("vips = [\"10.0.0.100\", \"224.0.0.5\"]\nkey_file = \"k\""), Some(2), "cluster.vips", "224.0.0.5 cannot be a VIP: it is multicast"),
        case("unspecified VIP", cluster("vips = [\"10.0.0.100\", \"::\"]\nkey_file = \"k\""), Some(2), "cluster.vips", ":: cannot be a VIP: it is unspecified"),
        case("broadcast VIP", cluster("vips = [\"255.255.255.255\", \"10.0.0.100\"]\nkey_file = \"k\""), Some(2), "cluster.vips", "it is broadcast"),
        case("VIP not an address", cluster("vips = [\"10.0.0\"]\nkey_file = \"k\""), Some(2), "cluster.vips", "\"10.0.0\" is not an IPv4 or IPv6 address"),
        case("CIDR without prefix", with("dedicated = [\"10.0.0.11\"]\n"), Some(8), "host[1].dedicated", "\"10.0.0.11\" is not a valid CIDR: expected ADDRESS/PREFIX"),
        case("CIDR prefix too long", with("dedicated = [\"10.0.0.11/33\"]\n"), Some(8), "host[1].dedicated", "prefix length `33` must be 1..=32"),
        case("dedicated address is a VIP", with("dedicated = [\"10.0.0.100/24\"]\n"), Some(8), "host[1].dedicated", "10.0.0.100 is a cluster VIP"),
        case("dedicated address on two hosts", with("dedicated = [\"10.0.0.11/24\"]\n[[host]]\nid = 2\ninterface = \"eth0\"\ndedicated = [\"10.0.0.11/24\"]\n"), Some(12), "host[2].dedicated", "10.0.0.11 is also a dedicated address of host 1"),
        case("ports reversed", with("[[rule]]\nports = [90, 80]\n"), Some(9), "rule[1].ports", "start port 90 is after end port 80"),
        case("port out of range", with("[[rule]]\nports = 70000\n"), Some(9), "rule[1].ports", "70000 is out of range; expected 0..=65535"),
        case("ports with three elements", with("[[rule]]\nports = [1, 2, 3]\n"), Some(9), "rule[1].ports", "expected a port or [START, END] (0..=65535), found an array of 3 elements"),
        case("affinity on a single rule", with("[[rule]]\nmode = \"single\"\naffinity = \"none\"\n"), Some(10), "rule[1].affinity", "only applies to mode = \"multiple\" rules; this rule is \"single\""),
        case("weights on a disabled rule", with("[[rule]]\nmode = \"disabled\"\nweights = { 1 = 10 }\n"), Some(10), "rule[1].weights", "only applies to mode = \"multiple\" rules; this rule is \"disabled\""),
        case("priorities on a multiple rule", with("[[rule]]\npriorities = { 1 = 1 }\n"), Some(9), "rule[1].priorities", "only applies to mode = \"single\" rules"),
        case("extended affinity on a single rule", with("[[rule]]\nmode = \"single\"\nextended_affinity_s = 10\n"), Some(10), "rule[1].extended_affinity_s", "only applies to mode = \"multiple\""),
        case("every weight zero", with("weight = 0\n[[rule]]\n"), Some(9), "rule[1]", "every host has weight 0"),
        case("unknown rule mode", with("[[rule]]\nmode = \"round-robin\"\npriorities = { 1 = 1 }\n"), Some(9), "rule[1].mode", "\"round-robin\" is not one of \"multiple\", \"single\", \"disabled\""),
        case("duplicate poll cores", with("[host.cores]\npoll = [{ core = 1, queues = [0] },\n  { core = 1, queues = [1] }]\n"), Some(10), "host[1].cores.poll[2].core", "core 1 already runs host[1].cores.poll[1]"),
        case("duplicate queues", with("[host.cores]\npoll = [{ core = 1, queues = [0] },\n  { core = 2, queues = [3, 0] }]\n"), Some(10), "host[1].cores.poll[2].queues", "queue 0 is already polled by host[1].cores.poll[1]"),
        case("service port not covered by a rule", with(&format!("[[rule]]\nports = 81\nprotocol = \"tcp\"\n[[service]]\nname = \"c\"\nport = 80\nroute = \"carp\"\n[service.carp]\n{PARENT}")), Some(13), "service[1].port", "no [[rule]] covers TCP port 80"),
        case("service port covered only for UDP", with(&format!("[[rule]]\nprotocol = \"udp\"\n[[service]]\nname = \"c\"\nport = 80\nroute = \"carp\"\n[service.carp]\n{PARENT}")), Some(12), "service[1].port", "no [[rule]] covers TCP port 80"),
        case("unknown route", with("[[service]]\nname = \"c\"\nport = 80\nroute = \"cdn\"\n"), Some(11), "service[1].route", "\"cdn\" is not one of \"carp\", \"sticky\""),
        case("sticky without its table", with("[[service]]\nname = \"c\"\nport = 80\nroute = \"sticky\"\n"), Some(8), "service[1].sticky", "required key is missing"),
        case("sticky ocf not tables", sticky("ocf = \"h2\"\n"), Some(15), "service[1].sticky.ocf", "expected an array of tables ([[service.sticky.ocf]] sections), found a string"),
        case("sticky without local", sticky(""), Some(13), "service[1].sticky.local", "required key is missing"),
        case("sticky bad coherence", sticky("coherence = \"often\"\n"), Some(15), "service[1].sticky.coherence", "\"often\" is not one of \"always\", \"session\""),
        case("sticky session without cookies", sticky("coherence = \"session\"\n"), Some(15), "service[1].sticky.session_cookies", "needs at least one session cookie name"),
        case("sticky bad static", sticky("static = [\"gif\"]\n"), Some(15), "service[1].sticky.static", "expected an extension"),
        case("sticky bad trusted proxy", sticky("trusted_proxies = [\"10.0.0.0/40\"]\n"), Some(15), "service[1].sticky.trusted_proxies", "the prefix must be 0 to 32"),
        case("sticky hop limit zero", sticky("hop_limit = 0\n"), Some(15), "service[1].sticky.hop_limit", "expected 1..=8"),
        case("sticky bad owner failure", sticky("on_owner_failure = \"retry\"\n"), Some(15), "service[1].sticky.on_owner_failure", "\"retry\" is not one of \"repin\", \"strict\""),
        case("sticky bad cookie name", sticky("cookie = \"a;b\"\n"), Some(15), "service[1].sticky.cookie", "is not a cookie name"),
        case("sticky controller path", sticky("controller = { paths = [\"admin\"] }\n"), Some(15), "service[1].sticky.controller.paths", "must start with"),
        case("sticky tls without key", sticky("tls = { cert = \"a.crt\" }\n"), Some(15), "service[1].sticky.tls.key", "required key is missing"),
        case("sticky ocf names a host", sticky("[[service.sticky.ocf]]\nname = \"h2\"\naddress = \"10.9.0.1:80\"\n"), Some(16), "service[1].sticky.ocf[1].name", "not h<digits>"),
        case("sticky with a carp table", with("name = \"h1\"\n[[service]]\nname = \"c\"\nport = 80\nroute = \"sticky\"\n[service.carp]\nlocal = \"127.0.0.1:1\"\n[service.sticky]\nlocal = \"127.0.0.1:1\"\n"), Some(13), "service[1].carp", "needs route = \"carp\""),
        case("service without a port", with("[[service]]\nname = \"c\"\nroute = \"carp\"\n[service.carp]\nmembers = \"parents\"\n[[service.carp.parent]]\nname = \"p\"\naddress = \"10.0.9.1:3128\"\n"), Some(8), "service[1].port", "required key is missing"),
        case("unknown hash", service(&format!("hash = \"md5\"\n{PARENT}")), Some(13), "service[1].carp.hash", "\"md5\" is not one of \"spec\", \"squid\", \"hrw\""),
        case("unknown key part", service(&format!("key = [\"host\", \"fragment\"]\n{PARENT}")), Some(13), "service[1].carp.key", "\"fragment\" is not one of \"scheme\", \"host\", \"port\", \"path\", \"query\""),
        case("empty key", service(&format!("key = []\n{PARENT}")), Some(13), "service[1].carp.key", "name at least one of"),
        case("parent without a port", service("members = \"parents\"\n[[service.carp.parent]]\nname = \"p\"\naddress = \"10.0.9.1\"\n"), Some(16), "service[1].carp.parent[1].address", "\"10.0.9.1\" is not ADDRESS:PORT"),
        case("parents without a parent", service("members = \"parents\"\n"), Some(12), "service[1].carp.parent", "needs at least one [[service.carp.parent]]"),
        case("duplicate parent names", service(&format!("{PARENT}[[service.carp.parent]]\nname = \"P\"\naddress = \"10.0.9.2:3128\"\n")), Some(18), "service[1].carp.parent[2].name", "another parent is named \"P\""),
        case("squid share too small", service("hash = \"squid\"\nmembers = \"parents\"\n[[service.carp.parent]]\nname = \"p\"\naddress = \"10.0.9.1:3128\"\n[[service.carp.parent]]\nname = \"q\"\naddress = \"10.0.9.2:3128\"\nload_factor = 1000\n"), Some(14), "service[1].carp.parent", "\"p\" has under 0.1% of the total load"),
        case("load factor above range", service("members = \"parents\"\n[[service.carp.parent]]\nname = \"p\"\naddress = \"10.0.9.1:3128\"\nload_factor = 1001\n"), Some(17), "service[1].carp.parent[1].load_factor", "expected 0..=1000"),
        case("bad exception pattern", service(&format!("exceptions = [\"a.*.b\"]\n{PARENT}")), Some(13), "service[1].carp.exceptions", "`*` is allowed only as a leading `*.` or alone"),
        case("cluster members without local", service("name = \"x\"\n").replace("name = \"x\"\n", ""), Some(12), "service[1].carp.local", "required key is missing"),
        case("local on parents", service(&format!("local = \"127.0.0.1:3128\"\n{PARENT}")), Some(13), "service[1].carp.local", "only for members = \"cluster\""),
        case("load factors name a missing host", format!("{BASE}name = \"h1\"\n[[service]]\nname = \"c\"\nport = 80\nroute = \"carp\"\n[service.carp]\nlocal = \"127.0.0.1:3128\"\nload_factors = {{ 7 = 2 }}\n"), Some(15), "service[1].carp.load_factors.7", "no [[host]] has id = 7"),
        case("host without a member name", service("local = \"127.0.0.1:3128\"\n"), Some(6), "host[1].name", "needs each host's member name"),
        case("duplicate member names", format!("{BASE}name = \"H\"\n[[host]]\nid = 2\nname = \"h\"\ninterface = \"eth0\"\n[[service]]\nname = \"c\"\nport = 80\nroute = \"carp\"\n[service.carp]\nlocal = \"127.0.0.1:3128\"\n"), Some(10), "host[2].name", "member name \"h\" is another host's too"),
        case("member name with a space", with("name = \"a b\"\n"), Some(8), "host[1].name", "only printable ASCII without spaces"),
        case("duplicate service port", with(&format!("[[service]]\nname = \"a\"\nport = 80\nroute = \"carp\"\n[service.carp]\n{PARENT}[[service]]\nname = \"b\"\nport = 80\nroute = \"carp\"\n[service.carp]\n{PARENT}")), Some(19), "service[2].port", "port 80 is already service \"a\"'s"),
        case("no poll loop", with("[host.cores]\npoll = []\n"), Some(9), "host[1].cores.poll", "at least one poll loop"),
        case("core above range", with("[host.cores]\ncontrol = 5000\n"), Some(9), "host[1].cores.control", "expected 0..=1023"),
        case("no proxy core", with("[host.cores]\nproxy = []\n"), Some(9), "host[1].cores.proxy", "at least one proxy core"),
        case("proxy core twice", with("[host.cores]\nproxy = [1, 2, 1]\n"), Some(9), "host[1].cores.proxy", "core 1 is named twice"),
        case("proxy core above range", with("[host.cores]\nproxy = [1024]\n"), Some(9), "host[1].cores.proxy", "expected 0..=1023"),
        case("proxy scheduling policy unknown", with("[host.cores]\nproxy_sched = \"fifo\"\n"), Some(9), "host[1].cores.proxy_sched", "\"fifo\" is not one of \"batch\", \"normal\""),
        case("connect timeout zero", service_keys("connect_timeout_ms = 0\n"), Some(12), "service[1].connect_timeout_ms", "expected 1..=60000"),
        case("first byte timeout too long", service_keys("first_byte_timeout_ms = 600001\n"), Some(12), "service[1].first_byte_timeout_ms", "expected 1..=600000"),
        case("idle timeout zero", service_keys("idle_timeout_s = 0\n"), Some(12), "service[1].idle_timeout_s", "expected 1..=3600"),
        case("no connections", service_keys("max_connections = 0\n"), Some(12), "service[1].max_connections", "expected 1..=1000000"),
        case("connect port zero", service_keys("connect_ports = [443, 0]\n"), Some(12), "service[1].connect_ports", "expected 1..=65535"),
        case("connect port twice", service_keys("connect_ports = [443, 443]\n"), Some(12), "service[1].connect_ports", "port 443 is named twice"),
        case("connect ports not a list", service_keys("connect_ports = 443\n"), Some(12), "service[1].connect_ports", "expected an array of port numbers"),
        case("head limit too small", service_keys("max_head_bytes = 100\n"), Some(12), "service[1].max_head_bytes", "expected 1024..=1048576"),
        case("uri limit above head limit", service_keys("max_head_bytes = 2048\nmax_uri_bytes = 4096\n"), Some(13), "service[1].max_uri_bytes", "above max_head_bytes (2048)"),
        case("no headers", service_keys("max_headers = 0\n"), Some(12), "service[1].max_headers", "expected 1..=1000"),
        case("probe interval too short", service(&format!("probe_interval_ms = 10\n{PARENT}")), Some(13), "service[1].carp.probe_interval_ms", "expected 100..=60000"),
        case("down ttl negative", service(&format!("down_ttl_ms = -1\n{PARENT}")), Some(13), "service[1].carp.down_ttl_ms", "expected 0..=3600000"),
        case("unknown clb policy", clb_service(&format!("policy = \"fastest\"\n{BACKEND}")), Some(12), "service[1].policy", "\"fastest\" is not one of \"clb\", \"round_robin\", \"least_request\", \"peak_ewma\""),
        case("clb without a backend", clb_service(""), Some(8), "service[1].backend", "needs at least one [[service.backend]]"),
        case("backend not tables", clb_service("backend = 5\n"), Some(12), "service[1].backend", "expected an array of tables ([[service.backend]] sections), found an integer"),
        case("too many backends", clb_service(&many_backends), Some(140), "service[1].backend", "65 back ends; at most 64"),
        case("probe without a path", clb_service(&format!("probe = \"GET health\"\n{BACKEND}")), Some(12), "service[1].probe", "\"health\" is not a path"),
        case("probe with two spaces", clb_service(&format!("probe = \"GET  /\"\n{BACKEND}")), Some(12), "service[1].probe", "is not \"METHOD /path\""),
        case("poll too often", clb_service(&format!("poll_ms = 5\n{BACKEND}")), Some(12), "service[1].poll_ms", "expected 10..=60000"),
        case("too many retries", clb_service(&format!("retries = 9\n{BACKEND}")), Some(12), "service[1].retries", "expected 0..=8"),
        case("fall zero", clb_service(&format!("fall = 0\n{BACKEND}")), Some(12), "service[1].fall", "expected 1..=100"),
        case("backend without a port", clb_service("[[service.backend]]\naddress = \"10.0.0.31\"\n"), Some(13), "service[1].backend[1].address", "\"10.0.0.31\" is not ADDRESS:PORT"),
        case("backend twice", clb_service(&format!("{BACKEND}{BACKEND}")), Some(15), "service[1].backend[2].address", "10.0.0.31:8000 is another back end's too"),
        case("backend weight zero", clb_service(&format!("{BACKEND}weight = 0\n")), Some(14), "service[1].backend[1].weight", "expected 1..=1000"),
        case("clb key on a carp service", service_keys("policy = \"clb\"\n"), Some(12), "service[1].policy", "only for route = \"clb\""),
        case("carp table on a clb service", clb_service(&format!("{BACKEND}[service.carp]\n{PARENT}")), Some(14), "service[1].carp", "needs route = \"carp\""),
        case("empty rule list", format!("rule = []\n{BASE}"), Some(1), "rule", "an empty rule list covers nothing"),
    ]
}

fn describe(errors: &[ConfigError]) -> String {
    errors
        .iter()
        .map(|e| format!("  {e}"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn every_invalid_config_produces_its_error() {
    let cases = cases();
    assert!(cases.len() >= 25);
    let path = Path::new("/etc/shoal/test.toml");
    let mut failures = Vec::new();
    for c in &cases {
        let errors = match parse(&c.text, path) {
            Ok(_) => {
                failures.push(format!("{}: parsed without error", c.name));
                continue;
            }
            Err(e) => e.0,
        };
        let found = errors
            .iter()
            .any(|e| e.line == c.line && e.key == c.key && e.reason.contains(c.reason));
        if !found {
            failures.push(format!(
                "{}: no error at line {:?} key {} reason ~ {:?}; got:\n{}",
                c.name,
                c.line,
                c.key,
                c.reason,
                describe(&errors)
            ));
        } else if errors.len() != c.count {
            failures.push(format!(
                "{}: expected {} error(s), got {}:\n{}",
                c.name,
                c.count,
                errors.len(),
                describe(&errors)
            ));
        }
        assert!(errors.iter().all(|e| e.file == path), "{}", c.name);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn all_problems_are_reported_at_once() {
    let text = "[cluster]
vips = [\"10.0.0.100\", \"10.0.0.100\"]
key_file = \"k\"
mode = \"broadcast\"

[heartbeat]
period_ms = 1
tolerance = 1000

[io]
ring_size = 3000
speed = \"fast\"

[[host]]
id = 1
interface = \"eth0\"

[[host]]
id = 1
interface = \"eth1\"

[[rule]]
ports = [2, 1]

[[rule]]
weights = { 9 = 1 }
";
    let errors = parse(text, Path::new("c.toml")).unwrap_err();
    let got: Vec<(Option<usize>, &str)> = errors.iter().map(|e| (e.line, e.key.as_str())).collect();
    let want = vec![
        (Some(2), "cluster.vips"),
        (Some(4), "cluster.mode"),
        (Some(7), "heartbeat.period_ms"),
        (Some(8), "heartbeat.tolerance"),
        (Some(12), "io.speed"),
        (Some(11), "io.ring_size"),
        (Some(23), "rule[1].ports"),
        (Some(19), "host[2].id"),
        (Some(26), "rule[2].weights.9"),
    ];
    assert_eq!(got, want, "\n{errors}");
    // One line per error, each `FILE:LINE: KEY: REASON`.
    let shown = errors.to_string();
    assert_eq!(shown.lines().count(), want.len());
    assert!(shown
        .lines()
        .next()
        .is_some_and(|l| l.starts_with("c.toml:2: cluster.vips: duplicate VIP 10.0.0.100")));
}

#[test]
fn a_missing_file_is_an_error_not_a_panic() {
    let err = shoal_config::load(Path::new("/nonexistent/shoal.toml")).unwrap_err();
    assert_eq!(err.len(), 1);
    assert_eq!(err.errors()[0].key, "file");
    assert!(err
        .to_string()
        .starts_with("/nonexistent/shoal.toml: file: cannot read"));
}
