//! Shared pieces of the AF_XDP tests: the privilege gate, network namespaces
//! that clean up after themselves, and frames (built by
//! `shoal_testkit::frame`).

#![allow(dead_code)]

use std::net::{Ipv4Addr, Ipv6Addr};
use std::process::{Command, Output};

use shoal_dataplane::wire::ip_proto;
use shoal_testkit::frame::{self, Ipv4};

pub use shoal_testkit::privileged;

/// Runs `ip` with `args`, panicking with its stderr on failure.
pub fn ip(args: &[&str]) -> String {
    let out = run("ip", args);
    assert!(
        out.status.success(),
        "ip {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"))
}

/// A network namespace deleted on drop (even when the test panics).
#[derive(Debug)]
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Self {
        let name = format!("shoal-t-xdp-{}-{tag}", std::process::id());
        // A leftover from a crashed run with the same pid would make `add` fail.
        let _ = run("ip", &["netns", "del", &name]);
        ip(&["netns", "add", &name]);
        let ns = Self { name };
        ip(&["-n", &ns.name, "link", "set", "lo", "up"]);
        ns
    }

    /// Moves the calling thread into this namespace for the rest of its
    /// life (call it first thing on a scoped thread).
    pub fn enter(&self) {
        shoal_engine::sys::netns::enter_named(&self.name)
            .unwrap_or_else(|e| panic!("enter netns {}: {e}", self.name));
    }

    pub fn ip(&self, args: &[&str]) -> String {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        ip(&all)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let out = run("ip", &["netns", "del", &self.name]);
        if !out.status.success() {
            eprintln!(
                "warning: ip netns del {}: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

/// Two namespaces joined by a veth pair, addressed 10.77.0.1/24 (`a`) and
/// 10.77.0.2/24 (`b`), with fixed MACs.
#[derive(Debug)]
pub struct VethPair {
    pub a: Netns,
    pub b: Netns,
}

pub const A_IF: &str = "xa";
pub const B_IF: &str = "xb";
pub const A_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x77, 0x00, 0x01];
pub const B_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x77, 0x00, 0x02];
pub const A_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
pub const B_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);

pub fn mac_text(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

impl VethPair {
    pub fn new(tag: &str) -> Self {
        let a = Netns::new(&format!("{tag}-a"));
        let b = Netns::new(&format!("{tag}-b"));
        ip(&[
            "link", "add", A_IF, "netns", &a.name, "type", "veth", "peer", "name", B_IF, "netns",
            &b.name,
        ]);
        for (ns, ifname, mac, addr) in [(&a, A_IF, A_MAC, A_IP), (&b, B_IF, B_MAC, B_IP)] {
            ns.ip(&["link", "set", ifname, "address", &mac_text(mac)]);
            ns.ip(&["addr", "add", &format!("{addr}/24"), "dev", ifname]);
            ns.ip(&["link", "set", ifname, "up"]);
        }
        Self { a, b }
    }

    /// Whether `ip link show` reports an XDP program on `a`'s veth (as a
    /// `xdp`/`xdpgeneric` flag word or a `prog/xdp` line; the namespace names
    /// contain "xdp" too, so no substring match).
    pub fn a_has_xdp(&self) -> bool {
        let out = self.a.ip(&["link", "show", A_IF]);
        out.split_whitespace()
            .any(|w| w.starts_with("prog/xdp") || w.starts_with("xdp"))
    }
}

// --- frames, in the argument order these tests use ---------------------

#[allow(unused_imports)]
pub use shoal_testkit::frame::{arp_request, ethernet, vlan_tagged, BROADCAST};

/// An IPv4/UDP packet from port 40000 (UDP checksum 0, header checksum
/// computed).
pub fn ipv4_udp(src: Ipv4Addr, dst: Ipv4Addr, dport: u16, payload: &[u8]) -> Vec<u8> {
    Ipv4::new(src, dst, ip_proto::UDP).packet(&frame::udp(40000, dport, payload))
}

/// An IPv6 packet carrying an ICMPv6 neighbour solicitation for `target`
/// followed by `trailer` (option bytes).
pub fn ipv6_ns(src: Ipv6Addr, target: Ipv6Addr, trailer: &[u8]) -> Vec<u8> {
    frame::neighbour_solicitation(src, target, trailer)
}

/// Whether `frame` carries `marker` anywhere.
pub fn carries(frame: &[u8], marker: &[u8]) -> bool {
    frame.windows(marker.len()).any(|w| w == marker)
}
