//! Shared lab helpers for the AF_PACKET, TAP and host-setup tests: network
//! namespaces created (and deleted on drop) by the test itself, veth pairs,
//! and frames in the argument order these tests use, built by
//! `shoal_testkit::frame`. Included with `#[path]` by each test file.
#![allow(dead_code)]

use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use shoal_dataplane::wire::{ethertype, ip_proto, tcp::flags};
use shoal_engine::io::FrameIo;
use shoal_engine::sys::netns;
use shoal_testkit::frame::{self, Ipv4};
use shoal_testkit::Need;

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// Whether this machine can run privileged lab tests: root, TAP and
/// network namespaces (see `shoal_testkit::gate`).
pub fn privileged(test: &str) -> bool {
    shoal_testkit::require(test, &[Need::Root, Need::Tun, Need::Netns])
}

/// A network namespace this test created; deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Netns {
        let name = format!(
            "shoalt-{tag}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let st = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .expect("ip netns add");
        assert!(st.success(), "ip netns add {name}");
        let ns = Netns { name };
        ns.sh("ip link set lo up");
        ns
    }

    /// Runs `f` on a fresh thread that has entered this namespace. Sockets
    /// created there stay in the namespace; processes spawned there too.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        netns::run_in_named(&self.name, f).expect("enter the test namespace")
    }

    /// Runs a shell command inside the namespace; panics if it fails.
    pub fn sh(&self, cmd: &str) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.name, "sh", "-c", cmd])
            .output()
            .expect("ip netns exec");
        assert!(
            out.status.success(),
            "`{cmd}` in {}: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs a shell command inside the namespace; returns whether it succeeded.
    pub fn try_sh(&self, cmd: &str) -> bool {
        Command::new("ip")
            .args(["netns", "exec", &self.name, "sh", "-c", cmd])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    }

    pub fn mac(&self, ifname: &str) -> [u8; 6] {
        parse_mac(
            self.sh(&format!("cat /sys/class/net/{ifname}/address"))
                .trim(),
        )
    }

    pub fn read(&self, path: &str) -> String {
        self.sh(&format!("cat {path}")).trim().to_owned()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// A veth pair: `a_if` in `a`, `b_if` in `b`, both up with the given
/// IPv4 addresses (`/24`).
pub fn veth(a: &Netns, a_if: &str, a_ip: &str, b: &Netns, b_if: &str, b_ip: &str) {
    let st = Command::new("ip")
        .args([
            "link", "add", a_if, "netns", &a.name, "type", "veth", "peer", "name", b_if, "netns",
            &b.name,
        ])
        .status()
        .expect("ip link add veth");
    assert!(st.success());
    a.sh(&format!(
        "ip addr add {a_ip}/24 dev {a_if} && ip link set {a_if} up"
    ));
    b.sh(&format!(
        "ip addr add {b_ip}/24 dev {b_if} && ip link set {b_if} up"
    ));
}

pub fn parse_mac(s: &str) -> [u8; 6] {
    let mut mac = [0u8; 6];
    for (m, part) in mac.iter_mut().zip(s.split(':')) {
        *m = u8::from_str_radix(part, 16).expect("mac");
    }
    mac
}

pub use shoal_testkit::frame::ethernet as ether;

pub fn udp_frame(
    dst: [u8; 6],
    src: [u8; 6],
    sip: [u8; 4],
    dip: [u8; 4],
    sport: u16,
    dport: u16,
    data: &[u8],
) -> Vec<u8> {
    let ip = Ipv4::new(sip.into(), dip.into(), ip_proto::UDP);
    let packet = ip.packet_checksummed(&frame::udp(sport, dport, data));
    ether(dst, src, ethertype::IPV4, &packet)
}

pub fn tcp_syn_frame(
    dst: [u8; 6],
    src: [u8; 6],
    sip: [u8; 4],
    dip: [u8; 4],
    sport: u16,
    dport: u16,
) -> Vec<u8> {
    let ip = Ipv4::new(sip.into(), dip.into(), ip_proto::TCP);
    let packet = ip.packet_checksummed(&frame::tcp(sport, dport, flags::SYN));
    ether(dst, src, ethertype::IPV4, &packet)
}

pub fn icmp_echo_frame(dst: [u8; 6], src: [u8; 6], sip: [u8; 4], dip: [u8; 4], id: u16) -> Vec<u8> {
    let ip = Ipv4::new(sip.into(), dip.into(), ip_proto::ICMP);
    let packet = ip.packet(&frame::icmp_echo_request(id, 1, b"shoal-ping"));
    ether(dst, src, ethertype::IPV4, &packet)
}

pub fn arp_request(src: [u8; 6], sip: [u8; 4], tip: [u8; 4]) -> Vec<u8> {
    let body = frame::arp_request(src, sip.into(), tip.into());
    ether(frame::BROADCAST, src, ethertype::ARP, &body)
}

/// Receives from `io` until `done` says so or `timeout` passes; returns
/// every frame seen.
pub fn collect(
    io: &mut dyn FrameIo,
    timeout: Duration,
    mut done: impl FnMut(&[Vec<u8>]) -> bool,
) -> Vec<Vec<u8>> {
    let start = Instant::now();
    let mut seen = Vec::new();
    while start.elapsed() < timeout && !done(&seen) {
        io.receive(256, &mut |frames| {
            seen.extend(frames.iter().map(|f| f.to_vec()))
        })
        .expect("receive");
        io.wait(10).expect("wait");
    }
    seen
}

/// IPv4 frame fields: (ip proto, src ip, dst ip, l4 bytes).
pub type Ipv4Fields<'a> = (u8, [u8; 4], [u8; 4], &'a [u8]);

/// The IPv4 fields of an Ethernet frame, if it carries IPv4.
pub fn ipv4_of(frame: &[u8]) -> Option<Ipv4Fields<'_>> {
    if frame.len() < 34 || frame[12..14] != [8, 0] {
        return None;
    }
    let ihl = usize::from(frame[14] & 0xf) * 4;
    let src = frame[26..30].try_into().ok()?;
    let dst = frame[30..34].try_into().ok()?;
    Some((frame[23], src, dst, frame.get(14 + ihl..)?))
}

/// An IPv6 neighbour solicitation from `src`/`sip` for `target`, sent to the
/// target's solicited-node multicast group, with a source link-layer option.
pub fn neighbour_solicitation(
    src: [u8; 6],
    sip: std::net::Ipv6Addr,
    target: std::net::Ipv6Addr,
) -> Vec<u8> {
    let option = frame::source_link_layer_option(src);
    let packet = frame::neighbour_solicitation(sip, target, &option);
    let group = frame::solicited_node(target);
    ether(
        frame::ipv6_multicast_mac(group),
        src,
        ethertype::IPV6,
        &packet,
    )
}

/// Whether `frame` is a neighbour advertisement for `target`.
pub fn is_neighbour_advert(frame: &[u8], target: std::net::Ipv6Addr) -> bool {
    frame.len() >= 14 + 40 + 24
        && frame[12..14] == [0x86, 0xdd]
        && frame[20] == 58
        && frame[54] == 136
        && frame[62..78] == target.octets()
}
