//! Shared pieces of the AF_XDP tests: the privilege gate, network namespaces
//! that clean up after themselves, and frame builders.

#![allow(dead_code)]

use std::fs::File;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;
use std::process::{Command, Output};

/// Whether a privileged test should run. Fails loudly when it cannot run,
/// unless `SHOAL_SKIP_PRIVILEGED=1`, which prints a loud SKIP line instead.
pub fn privileged(test: &str) -> bool {
    if std::env::var("SHOAL_SKIP_PRIVILEGED").as_deref() == Ok("1") {
        eprintln!("SKIP {test}: SHOAL_SKIP_PRIVILEGED=1 (needs root, bpf() and AF_XDP)");
        return false;
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "{test} needs root (CAP_BPF, CAP_NET_ADMIN); set SHOAL_SKIP_PRIVILEGED=1 to skip it"
    );
    true
}

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

    /// Moves the calling thread into this namespace.
    pub fn enter(&self) {
        let f = File::open(format!("/var/run/netns/{}", self.name))
            .unwrap_or_else(|e| panic!("open netns {}: {e}", self.name));
        // SAFETY: setns only changes the calling thread's network namespace;
        // `f` is an open namespace fd for the duration of the call.
        let ret = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(
            ret,
            0,
            "setns {}: {}",
            self.name,
            std::io::Error::last_os_error()
        );
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

// --- frame builders --------------------------------------------------------

pub const BROADCAST: [u8; 6] = [0xff; 6];

pub fn ethernet(dst: [u8; 6], src: [u8; 6], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + payload.len());
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// Inserts an 802.1Q tag (TPID `tpid`, VLAN `vid`) after the MACs.
pub fn vlan_tagged(frame: &[u8], tpid: u16, vid: u16) -> Vec<u8> {
    let mut f = frame[..12].to_vec();
    f.extend_from_slice(&tpid.to_be_bytes());
    f.extend_from_slice(&(vid & 0x0fff).to_be_bytes());
    f.extend_from_slice(&frame[12..]);
    f
}

/// An ARP request body: who has `target`? tell `sender`.
pub fn arp_request(sender_mac: [u8; 6], sender: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
    let mut a = vec![0, 1, 0x08, 0x00, 6, 4, 0, 1];
    a.extend_from_slice(&sender_mac);
    a.extend_from_slice(&sender.octets());
    a.extend_from_slice(&[0; 6]);
    a.extend_from_slice(&target.octets());
    a
}

fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An IPv4/UDP packet (UDP checksum 0, header checksum computed).
pub fn ipv4_udp(src: Ipv4Addr, dst: Ipv4Addr, dport: u16, payload: &[u8]) -> Vec<u8> {
    let total = 20 + 8 + payload.len();
    let mut p = vec![
        0x45,
        0,
        (total >> 8) as u8,
        total as u8,
        0,
        1,
        0x40,
        0,
        64,
        17,
        0,
        0,
    ];
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    let c = checksum(&p);
    p[10..12].copy_from_slice(&c.to_be_bytes());
    let ulen = 8 + payload.len();
    p.extend_from_slice(&40000u16.to_be_bytes());
    p.extend_from_slice(&dport.to_be_bytes());
    p.extend_from_slice(&(ulen as u16).to_be_bytes());
    p.extend_from_slice(&[0, 0]);
    p.extend_from_slice(payload);
    p
}

/// An IPv6 packet carrying an ICMPv6 neighbour solicitation for `target`
/// (checksum left zero: only the XDP program looks at it).
pub fn ipv6_ns(src: Ipv6Addr, target: Ipv6Addr, trailer: &[u8]) -> Vec<u8> {
    let mut icmp = vec![135, 0, 0, 0, 0, 0, 0, 0];
    icmp.extend_from_slice(&target.octets());
    icmp.extend_from_slice(trailer);
    let mut p = vec![0x60, 0, 0, 0];
    p.extend_from_slice(&(icmp.len() as u16).to_be_bytes());
    p.extend_from_slice(&[58, 255]);
    p.extend_from_slice(&src.octets());
    let seg = target.segments();
    let solicited = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 1, 0xff00 | (seg[6] & 0xff), seg[7]);
    p.extend_from_slice(&solicited.octets());
    p.extend_from_slice(&icmp);
    p
}

/// Whether `frame` carries `marker` anywhere.
pub fn carries(frame: &[u8], marker: &[u8]) -> bool {
    frame.windows(marker.len()).any(|w| w == marker)
}
