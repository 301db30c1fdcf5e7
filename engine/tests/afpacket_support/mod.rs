//! Shared lab helpers for the AF_PACKET, TAP and host-setup tests: network
//! namespaces created (and deleted on drop) by the test itself, veth pairs,
//! and hand-built frames. Included with `#[path]` by each test file.
#![allow(dead_code)]

use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use shoal_engine::io::FrameIo;

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// Whether this machine can run privileged lab tests. Without root or
/// namespaces the test fails loudly, unless `SHOAL_SKIP_PRIVILEGED=1`, in
/// which case it prints a SKIP line and the caller returns.
pub fn privileged(test: &str) -> bool {
    let problem = if !Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
    {
        Some("not running as root".to_owned())
    } else if !std::path::Path::new("/dev/net/tun").exists() {
        Some("/dev/net/tun is missing".to_owned())
    } else {
        let probe = format!(
            "shoalprobe{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let ok = Command::new("ip")
            .args(["netns", "add", &probe])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        let _ = Command::new("ip").args(["netns", "del", &probe]).status();
        (!ok).then(|| "cannot create network namespaces (`ip netns add` failed)".to_owned())
    };
    match problem {
        None => true,
        Some(why) if std::env::var("SHOAL_SKIP_PRIVILEGED").as_deref() == Ok("1") => {
            eprintln!("SKIP {test}: {why} (SHOAL_SKIP_PRIVILEGED=1)");
            false
        }
        Some(why) => panic!(
            "{test} needs root and network namespaces: {why}. Set SHOAL_SKIP_PRIVILEGED=1 to skip."
        ),
    }
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
        let path = format!("/var/run/netns/{}", self.name);
        std::thread::scope(|s| {
            s.spawn(move || {
                let file = std::fs::File::open(&path).expect("open netns");
                // SAFETY: `file` is an open network-namespace descriptor;
                // setns only changes this (scoped, short-lived) thread.
                let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
                f()
            })
            .join()
            .expect("namespace thread panicked")
        })
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

fn checksum(data: &[u8], initial: u32) -> u16 {
    let mut sum = initial;
    for chunk in data.chunks(2) {
        let word = u16::from_be_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]);
        sum += u32::from(word);
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn ipv4(src: [u8; 4], dst: [u8; 4], proto: u8, payload: &[u8]) -> Vec<u8> {
    let total = 20 + payload.len();
    let mut h = vec![
        0x45,
        0,
        (total >> 8) as u8,
        total as u8,
        0,
        1,
        0x40,
        0,
        64,
        proto,
        0,
        0,
    ];
    h.extend_from_slice(&src);
    h.extend_from_slice(&dst);
    let c = checksum(&h, 0);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    h.extend_from_slice(payload);
    h
}

fn pseudo_sum(src: [u8; 4], dst: [u8; 4], proto: u8, len: usize) -> u32 {
    let mut p = Vec::new();
    p.extend_from_slice(&src);
    p.extend_from_slice(&dst);
    p.extend_from_slice(&[0, proto, (len >> 8) as u8, len as u8]);
    let mut sum = 0u32;
    for c in p.chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    sum
}

pub fn ether(dst: [u8; 6], src: [u8; 6], ether_type: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = dst.to_vec();
    f.extend_from_slice(&src);
    f.extend_from_slice(&ether_type.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

pub fn udp_frame(
    dst: [u8; 6],
    src: [u8; 6],
    sip: [u8; 4],
    dip: [u8; 4],
    sport: u16,
    dport: u16,
    data: &[u8],
) -> Vec<u8> {
    let len = 8 + data.len();
    let mut u = Vec::new();
    u.extend_from_slice(&sport.to_be_bytes());
    u.extend_from_slice(&dport.to_be_bytes());
    u.extend_from_slice(&(len as u16).to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(data);
    let c = checksum(&u, pseudo_sum(sip, dip, 17, len));
    u[6..8].copy_from_slice(&c.to_be_bytes());
    ether(dst, src, 0x0800, &ipv4(sip, dip, 17, &u))
}

pub fn tcp_syn_frame(
    dst: [u8; 6],
    src: [u8; 6],
    sip: [u8; 4],
    dip: [u8; 4],
    sport: u16,
    dport: u16,
) -> Vec<u8> {
    let mut t = Vec::new();
    t.extend_from_slice(&sport.to_be_bytes());
    t.extend_from_slice(&dport.to_be_bytes());
    t.extend_from_slice(&1000u32.to_be_bytes());
    t.extend_from_slice(&0u32.to_be_bytes());
    t.extend_from_slice(&[5 << 4, 0x02, 0xff, 0xff, 0, 0, 0, 0]);
    let c = checksum(&t, pseudo_sum(sip, dip, 6, t.len()));
    t[16..18].copy_from_slice(&c.to_be_bytes());
    ether(dst, src, 0x0800, &ipv4(sip, dip, 6, &t))
}

pub fn icmp_echo_frame(dst: [u8; 6], src: [u8; 6], sip: [u8; 4], dip: [u8; 4], id: u16) -> Vec<u8> {
    let mut i = vec![8, 0, 0, 0];
    i.extend_from_slice(&id.to_be_bytes());
    i.extend_from_slice(&1u16.to_be_bytes());
    i.extend_from_slice(b"shoal-ping");
    let c = checksum(&i, 0);
    i[2..4].copy_from_slice(&c.to_be_bytes());
    ether(dst, src, 0x0800, &ipv4(sip, dip, 1, &i))
}

pub fn arp_request(src: [u8; 6], sip: [u8; 4], tip: [u8; 4]) -> Vec<u8> {
    let mut a = vec![0, 1, 8, 0, 6, 4, 0, 1];
    a.extend_from_slice(&src);
    a.extend_from_slice(&sip);
    a.extend_from_slice(&[0; 6]);
    a.extend_from_slice(&tip);
    ether([0xff; 6], src, 0x0806, &a)
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
    let t = target.octets();
    let group = std::net::Ipv6Addr::new(
        0xff02,
        0,
        0,
        0,
        0,
        1,
        0xff00 | u16::from(t[13]),
        u16::from_be_bytes([t[14], t[15]]),
    );
    let mut icmp = vec![135, 0, 0, 0, 0, 0, 0, 0];
    icmp.extend_from_slice(&t);
    icmp.extend_from_slice(&[1, 1]);
    icmp.extend_from_slice(&src);
    let mut pseudo = 0u32;
    let mut add = |bytes: &[u8]| {
        for c in bytes.chunks(2) {
            pseudo += u32::from(u16::from_be_bytes([c[0], c[1]]));
        }
    };
    add(&sip.octets());
    add(&group.octets());
    add(&(icmp.len() as u32).to_be_bytes());
    add(&[0, 0, 0, 58]);
    let c = checksum(&icmp, pseudo);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    let mut ip = vec![0x60, 0, 0, 0];
    ip.extend_from_slice(&(icmp.len() as u16).to_be_bytes());
    ip.extend_from_slice(&[58, 255]);
    ip.extend_from_slice(&sip.octets());
    ip.extend_from_slice(&group.octets());
    ip.extend_from_slice(&icmp);
    let g = group.octets();
    ether([0x33, 0x33, g[12], g[13], g[14], g[15]], src, 0x86dd, &ip)
}

/// Whether `frame` is a neighbour advertisement for `target`.
pub fn is_neighbour_advert(frame: &[u8], target: std::net::Ipv6Addr) -> bool {
    frame.len() >= 14 + 40 + 24
        && frame[12..14] == [0x86, 0xdd]
        && frame[20] == 58
        && frame[54] == 136
        && frame[62..78] == target.octets()
}
