//! The XDP fast path in a real `shoal run`: in a private pair of namespaces,
//! host 1 of a two-host static view drops host 2's share in the kernel
//! (`xdp_dropped`) and hands its own datagrams to the kernel stack from the
//! XDP program (`xdp_passed`: the host's UDP layer counts them), and after a
//! restart as the only host drops nothing of what is now its own. With
//! `SHOAL_XDP_PASS=0` its own go through userspace and the TAP (`kept`);
//! with `SHOAL_XDP_FAST_PATH=0` userspace drops host 2's too.
//!
//! Needs root; fails loudly without it unless `SHOAL_SKIP_PRIVILEGED=1`.

mod netns_run;

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::time::{Duration, Instant};

use netns_run::{privileged, sh, stop, Lab};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 100);
/// Clients 10.0.7.1 ..= 10.0.7.CLIENTS send UDP datagrams to the VIP.
const CLIENTS: u8 = 120;
const PER_CLIENT: usize = 10;
const PORT: u16 = 8080;

/// What this test adds to the shared lab: a raw UDP flood and settling.
trait Flood {
    fn send(&self);
    fn settled_stats(&self, key: &str, want: u64) -> serde_json::Value;
    fn udp_no_ports(&self) -> u64;
}

impl Flood for Lab {
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

    /// The host namespace's `Udp: NoPorts`: datagrams its UDP layer took
    /// for a local address where nothing listens (the VIP, here).
    fn udp_no_ports(&self) -> u64 {
        let snmp = sh(&format!("ip netns exec {} cat /proc/net/snmp", self.host));
        shoal_engine::snmp::counter(&snmp, "Udp", "NoPorts")
            .unwrap_or_else(|| panic!("no Udp NoPorts in {snmp}"))
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

const SENDER: &str = "import socket, struct\n\
def csum(b):\n    s = sum(struct.unpack('!10H', b))\n    s = (s >> 16) + (s & 0xffff); s += s >> 16\n    return ~s & 0xffff\n\
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW); s.bind(('eth0', 0))\n\
src = open('/sys/class/net/eth0/address').read().strip().replace(':', '')\n\
eth = bytes.fromhex('02bf0a000064') + bytes.fromhex(src) + b'\\x08\\x00'\n\
for rep in range(PER):\n    for i in range(1, CLIENTS + 1):\n        udp = struct.pack('!HHHH', 40000 + i, PORT, 12, 0) + b'ping'\n        ip = struct.pack('!BBHHHBBH4s4s', 0x45, 0, 20 + len(udp), i, 0, 64, 17, 0, bytes([10, 0, 7, i]), bytes([10, 0, 0, 100]))\n        ip = ip[:10] + struct.pack('!H', csum(ip)) + ip[12:]\n        s.send(eth + ip + udp)\n\
print('sent')\n";

/// What host 1 keeps and what it drops, as the offline `shoal owner`
/// computes it (with the cluster key's bucket seed, as the engine does).
fn expected_own(config: &Path) -> (u64, u64) {
    let cfg = shoal_config::load(config).expect("config");
    let key = shoal_engine::keyfile::for_tools(&cfg).expect("the cluster key");
    let mut own = 0;
    let mut other = 0;
    for i in 1..=CLIENTS {
        let client = IpAddr::V4(Ipv4Addr::new(10, 0, 7, i));
        let answer = shoal_engine::tools::owner(
            &cfg,
            &key,
            cfg.host_ids(),
            17,
            (client, 40000 + u16::from(i)),
            (VIP.into(), PORT),
        )
        .expect("shoal owner");
        if answer.starts_with("host 1 ") {
            own += PER_CLIENT as u64;
        } else {
            other += PER_CLIENT as u64;
        }
    }
    (own, other)
}

#[test]
fn other_hosts_share_is_dropped_in_the_kernel_and_ours_is_kept() {
    if !privileged("xdp_fastpath_netns") {
        return;
    }
    let lab = Lab::new(&format!("shoal-t-fp-{}", std::process::id()));

    // Two hosts, host 1 runs: host 2's datagrams die in XDP.
    let two = lab.config(&VIP.to_string(), &[1, 2]);
    let (own, other) = expected_own(&two);
    assert!(own > 0 && other > 0, "own {own} other {other}");
    let mut shoal = lab.start(&two, "af_xdp", &[]);
    assert!(
        lab.stats()["backend"]
            .as_str()
            .unwrap_or("")
            .contains("xdp fast path +pass"),
        "{}",
        lab.stats()
    );
    let stack_before = lab.udp_no_ports();
    lab.send();
    let s = lab.settled_stats("xdp_dropped", other);
    let stack = lab.udp_no_ports() - stack_before;
    eprintln!(
        "two hosts: own {own}, other {other}; stats: xdp_dropped {} xdp_passed {} kept {} \
         not_owner {}; the stack's UDP took {stack}",
        s["xdp_dropped"], s["xdp_passed"], s["kept"], s["dropped"]["not_owner"]
    );
    assert_eq!(s["xdp_dropped"].as_u64(), Some(other), "{s}\n{}", lab.log());
    assert_eq!(s["xdp_passed"].as_u64(), Some(own), "{s}");
    assert_eq!(s["kept"].as_u64(), Some(0), "{s}");
    assert_eq!(
        stack, own,
        "the passed datagrams reached the VIP's UDP layer"
    );
    assert_eq!(
        s["dropped"]["not_owner"].as_u64(),
        Some(0),
        "userspace saw frames the kernel should have dropped: {s}"
    );
    stop(&mut shoal);

    // Host 1 alone: everything is its own, the kernel drops nothing.
    let one = lab.config(&VIP.to_string(), &[1]);
    let (own, other) = expected_own(&one);
    assert_eq!(other, 0);
    let mut shoal = lab.start(&one, "af_xdp", &[]);
    lab.send();
    let s = lab.settled_stats("xdp_passed", own);
    eprintln!(
        "one host: own {own}; stats: xdp_dropped {} xdp_passed {} kept {}",
        s["xdp_dropped"], s["xdp_passed"], s["kept"]
    );
    assert_eq!(s["xdp_dropped"].as_u64(), Some(0), "{s}");
    assert_eq!(s["xdp_passed"].as_u64(), Some(own), "{s}\n{}", lab.log());
    stop(&mut shoal);

    // Two hosts with passing off: our own go through userspace and the
    // TAP, and reach the same UDP layer.
    let mut shoal = lab.start(&two, "af_xdp", &["SHOAL_XDP_PASS=0"]);
    let (own, other) = expected_own(&two);
    let stack_before = lab.udp_no_ports();
    lab.send();
    let s = lab.settled_stats("kept", own);
    let stack = lab.udp_no_ports() - stack_before;
    assert_eq!(s["xdp_dropped"].as_u64(), Some(other), "{s}");
    assert_eq!(s["xdp_passed"].as_u64(), Some(0), "{s}");
    assert_eq!(s["kept"].as_u64(), Some(own), "{s}");
    assert_eq!(
        stack, own,
        "the TAP's datagrams reached the VIP's UDP layer"
    );
    stop(&mut shoal);

    // The same, with the fast path turned off: userspace drops host 2's.
    let mut shoal = lab.start(&two, "af_xdp", &["SHOAL_XDP_FAST_PATH=0"]);
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
