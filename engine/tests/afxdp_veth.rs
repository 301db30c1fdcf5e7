//! AF_XDP on a real veth pair between two network namespaces this test
//! creates (and deletes, even on failure). Needs root and AF_XDP.
//!
//! Namespace `a` runs shoal's XDP program and an AF_XDP socket on queue 0 of
//! its veth; namespace `b` sends crafted frames through its own AF_XDP socket.
//! Cluster frames must arrive through AF_XDP; everything else must reach the
//! kernel of `a`, which proves it by answering: a UDP socket receives the
//! plain IP frame, and an ARP request for `a`'s own address creates a
//! neighbour entry. When the owner goes (drop, or `SIGKILL`), no XDP program
//! is left on the interface.

mod afxdp_common;

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, Ipv6Addr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use afxdp_common::*;
use shoal_dataplane::wire::ethertype::HEARTBEAT as HEARTBEAT_ETHERTYPE;
use shoal_engine::afxdp::{AfXdp, AfXdpConfig, AfXdpStats, XdpAttachment, XdpMode};
use shoal_engine::io::FrameIo;
use shoal_engine::xdp::XdpParams;

const VIP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 100);
const VIP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x77, 0, 0, 0, 0, 0, 0x100);
const CLUSTER_MAC: [u8; 6] = [0x02, 0xbf, 10, 77, 0, 100];
const MULTICAST_MAC: [u8; 6] = [0x03, 0xbf, 10, 77, 0, 100];
const UDP_PORT: u16 = 9999;
/// Smaller than the production default: the test moves a dozen frames.
const RING: u32 = 2048;

fn params() -> XdpParams {
    XdpParams {
        cluster_macs: vec![CLUSTER_MAC, MULTICAST_MAC],
        vips_v4: vec![VIP],
        vips_v6: vec![VIP6],
        heartbeat_ethertype: HEARTBEAT_ETHERTYPE,
        ..XdpParams::default()
    }
}

fn config(ifname: &str) -> AfXdpConfig {
    AfXdpConfig {
        ring_size: RING,
        ..AfXdpConfig::new(ifname, 0)
    }
}

struct Probe {
    what: &'static str,
    marker: Vec<u8>,
    frame: Vec<u8>,
    to_engine: bool,
}

fn probes() -> Vec<Probe> {
    let mut out = Vec::new();
    let mut add = |what: &'static str, to_engine: bool, build: &dyn Fn(&[u8]) -> Vec<u8>| {
        let marker = format!("SHOAL-T-{:02}", out.len()).into_bytes();
        out.push(Probe {
            what,
            frame: build(&marker),
            marker,
            to_engine,
        });
    };
    let with = |body: Vec<u8>, m: &[u8]| [body, m.to_vec()].concat();
    add("IPv4 to the unicast cluster MAC", true, &|m| {
        ethernet(CLUSTER_MAC, B_MAC, 0x0800, &ipv4_udp(B_IP, VIP, 80, m))
    });
    add("IPv4 to the multicast cluster MAC", true, &|m| {
        ethernet(MULTICAST_MAC, B_MAC, 0x0800, &ipv4_udp(B_IP, VIP, 80, m))
    });
    add("IPv4 to the VIP at broadcast", true, &|m| {
        ethernet(BROADCAST, B_MAC, 0x0800, &ipv4_udp(B_IP, VIP, 80, m))
    });
    add("IPv4 to the VIP at a's own MAC", true, &|m| {
        ethernet(A_MAC, B_MAC, 0x0800, &ipv4_udp(B_IP, VIP, 80, m))
    });
    add("heartbeat", true, &|m| {
        ethernet(BROADCAST, B_MAC, HEARTBEAT_ETHERTYPE, &with(vec![0; 40], m))
    });
    add("VLAN-tagged heartbeat", true, &|m| {
        vlan_tagged(
            &ethernet(BROADCAST, B_MAC, HEARTBEAT_ETHERTYPE, &with(vec![0; 40], m)),
            0x8100,
            5,
        )
    });
    add("ARP for the VIP", true, &|m| {
        let arp = arp_request(B_MAC, Ipv4Addr::new(10, 77, 0, 8), VIP);
        ethernet(BROADCAST, B_MAC, 0x0806, &with(arp, m))
    });
    add("NS for the IPv6 VIP", true, &|m| {
        ethernet(
            [0x33, 0x33, 0xff, 0, 1, 0],
            B_MAC,
            0x86dd,
            &ipv6_ns("fd00:77::2".parse().unwrap(), VIP6, m),
        )
    });
    add("ARP for another address", false, &|m| {
        let arp = arp_request(
            B_MAC,
            Ipv4Addr::new(10, 77, 0, 9),
            Ipv4Addr::new(10, 77, 0, 55),
        );
        ethernet(BROADCAST, B_MAC, 0x0806, &with(arp, m))
    });
    add("ARP for a's own address", false, &|m| {
        let arp = arp_request(B_MAC, Ipv4Addr::new(10, 77, 0, 7), A_IP);
        ethernet(BROADCAST, B_MAC, 0x0806, &with(arp, m))
    });
    add("UDP to a's own MAC and address", false, &|m| {
        ethernet(A_MAC, B_MAC, 0x0800, &ipv4_udp(B_IP, A_IP, UDP_PORT, m))
    });
    add("NS for another IPv6 address", false, &|m| {
        ethernet(
            [0x33, 0x33, 0xff, 0, 0, 0x55],
            B_MAC,
            0x86dd,
            &ipv6_ns(
                "fd00:77::2".parse().unwrap(),
                "fd00:77::55".parse().unwrap(),
                m,
            ),
        )
    });
    out
}

struct Received {
    frames: Vec<Vec<u8>>,
    udp: Option<Vec<u8>>,
    stats: AfXdpStats,
    describe: String,
    mode: XdpMode,
    had_xdp: bool,
}

fn cluster_frames_reach_af_xdp_and_the_rest_the_kernel(mode: XdpMode, tag: &str) {
    let pair = VethPair::new(tag);
    let probes = probes();
    let (ready_tx, ready_rx) = mpsc::channel::<()>();
    let (sent_tx, sent_rx) = mpsc::channel::<()>();

    let (received, sender_stats) = std::thread::scope(|s| {
        let pair = &pair;
        let probes = &probes;
        let receiver = s.spawn(move || {
            pair.a.enter();
            let udp = UdpSocket::bind((A_IP, UDP_PORT)).unwrap();
            udp.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let attachment = XdpAttachment::attach(A_IF, &params(), mode).unwrap();
            let mut io = AfXdp::open(&config(A_IF), &attachment).unwrap();
            let had_xdp = pair.a_has_xdp();
            ready_tx.send(()).unwrap();

            let want = probes.iter().filter(|p| p.to_engine).count();
            let mut frames: Vec<Vec<u8>> = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(10);
            let mut sent_at = None;
            while Instant::now() < deadline {
                io.receive(64, &mut |batch| {
                    frames.extend(batch.iter().map(|f| f.to_vec()))
                })
                .unwrap();
                if sent_at.is_none() && sent_rx.try_recv().is_ok() {
                    sent_at = Some(Instant::now());
                }
                // After the sender is done, linger so strays would show up.
                if let Some(t) = sent_at {
                    if t.elapsed() > Duration::from_millis(500) && frames.len() >= want {
                        break;
                    }
                }
                io.wait(10).unwrap();
            }
            let mut buf = [0u8; 256];
            let udp = udp.recv_from(&mut buf).ok().map(|(n, _)| buf[..n].to_vec());
            Received {
                frames,
                udp,
                stats: io.stats().unwrap(),
                describe: io.describe(),
                mode: attachment.mode(),
                had_xdp,
            }
            // `io` and `attachment` drop here: the program leaves the interface.
        });
        let sender = s.spawn(move || {
            pair.b.enter();
            ready_rx
                .recv_timeout(Duration::from_secs(20))
                .expect("receiver never became ready");
            let attachment =
                XdpAttachment::attach(B_IF, &XdpParams::default(), XdpMode::Generic).unwrap();
            let mut io = AfXdp::open(&config(B_IF), &attachment).unwrap();
            let frames: Vec<&[u8]> = probes.iter().map(|p| p.frame.as_slice()).collect();
            let n = io.transmit(&frames).unwrap();
            assert_eq!(n, frames.len(), "all probes queued");
            // Give the kernel time to send; receive() kicks what is pending.
            for _ in 0..20 {
                io.receive(64, &mut |_| {}).unwrap();
                std::thread::sleep(Duration::from_millis(10));
            }
            sent_tx.send(()).unwrap();
            io.stats().unwrap()
        });
        (receiver.join().unwrap(), sender.join().unwrap())
    });

    eprintln!("receiver: {} {:?}", received.describe, received.stats);
    eprintln!("sender: {sender_stats:?}");
    assert!(received.had_xdp, "ip link shows the program while attached");
    match mode {
        XdpMode::Auto => assert_eq!(received.mode, XdpMode::Native, "veth supports native XDP"),
        m => assert_eq!(received.mode, m),
    }
    assert!(
        received
            .describe
            .starts_with(&format!("af_xdp {} copy queue 0", received.mode)),
        "{}",
        received.describe
    );
    assert_eq!(sender_stats.tx_frames, probes.len() as u64);

    for p in &probes {
        let hits = received
            .frames
            .iter()
            .filter(|f| carries(f, &p.marker))
            .count();
        if p.to_engine {
            assert_eq!(
                hits, 1,
                "{} must arrive through AF_XDP exactly once",
                p.what
            );
        } else {
            assert_eq!(hits, 0, "{} must not arrive through AF_XDP", p.what);
        }
    }
    // The redirected frames are byte-exact.
    for p in probes.iter().filter(|p| p.to_engine) {
        assert!(
            received.frames.contains(&p.frame),
            "{} arrived altered",
            p.what
        );
    }
    assert_eq!(received.stats.rx_frames, received.frames.len() as u64);
    assert_eq!(received.stats.rx_bad_descs, 0);

    // The kernel of `a` got what was not ours.
    let udp_marker = &probes
        .iter()
        .find(|p| p.what.starts_with("UDP"))
        .unwrap()
        .marker;
    assert_eq!(
        received.udp.as_deref(),
        Some(udp_marker.as_slice()),
        "the UDP frame reaches a's socket"
    );
    let neigh = pair.a.ip(&["neigh", "show", "10.77.0.7"]);
    assert!(
        neigh.contains(&mac_text(B_MAC)),
        "a's kernel answered the ARP for its own address: {neigh:?}"
    );
    let vip_neigh = pair.a.ip(&["neigh", "show", "10.77.0.8"]);
    assert!(
        vip_neigh.trim().is_empty(),
        "the ARP for the VIP never reached a's kernel: {vip_neigh:?}"
    );

    assert!(
        !pair.a_has_xdp(),
        "dropping the attachment detaches the program"
    );
}

#[test]
fn native_mode_on_veth() {
    if !privileged("native_mode_on_veth") {
        return;
    }
    cluster_frames_reach_af_xdp_and_the_rest_the_kernel(XdpMode::Native, "nat");
}

#[test]
fn generic_mode_on_veth() {
    if !privileged("generic_mode_on_veth") {
        return;
    }
    cluster_frames_reach_af_xdp_and_the_rest_the_kernel(XdpMode::Generic, "gen");
}

#[test]
fn auto_mode_on_veth_picks_native() {
    if !privileged("auto_mode_on_veth_picks_native") {
        return;
    }
    cluster_frames_reach_af_xdp_and_the_rest_the_kernel(XdpMode::Auto, "auto");
}

#[test]
fn zero_copy_request_falls_back_to_copy_on_veth() {
    if !privileged("zero_copy_request_falls_back_to_copy_on_veth") {
        return;
    }
    let pair = VethPair::new("zc");
    std::thread::scope(|s| {
        s.spawn(|| {
            pair.a.enter();
            let attachment = XdpAttachment::attach(A_IF, &params(), XdpMode::Auto).unwrap();
            let io = AfXdp::open(
                &AfXdpConfig {
                    zero_copy: true,
                    ..config(A_IF)
                },
                &attachment,
            )
            .unwrap();
            assert!(!io.zero_copy(), "veth has no zero-copy AF_XDP");
            assert!(io.describe().contains(" copy "), "{}", io.describe());
            // A second socket on the same queue is refused with a clear error.
            let second = AfXdp::open(&config(A_IF), &attachment).unwrap_err();
            assert!(second.to_string().contains("bind"), "{second}");
        })
        .join()
        .unwrap();
    });
}

/// Kills the child on drop, so a failing test leaves no process behind.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_killed_owner_leaves_nothing_attached_and_the_queue_can_be_bound_again() {
    if !privileged("a_killed_owner_leaves_nothing_attached_and_the_queue_can_be_bound_again") {
        return;
    }
    let pair = VethPair::new("kill");
    let exe = std::env::current_exe().unwrap();
    let exe = exe.to_str().unwrap();
    let mut child = KillOnDrop(
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &pair.a.name,
                exe,
                "--ignored",
                "--exact",
                "child_holds_an_attachment",
                "--nocapture",
            ])
            .env("SHOAL_XDP_CHILD_IF", A_IF)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let stdout = child.0.stdout.take().unwrap();
    let (line_tx, line_rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line_tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = line_rx
            .recv_timeout(left)
            .expect("the child never reported its attachment");
        if line.starts_with("SHOAL-CHILD-ATTACHED") {
            break;
        }
    }
    assert!(pair.a_has_xdp(), "the child's program is attached");

    child.0.kill().unwrap(); // SIGKILL: no destructor runs in the child
    child.0.wait().unwrap();
    let gone_by = Instant::now() + Duration::from_secs(2);
    while pair.a_has_xdp() && Instant::now() < gone_by {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!pair.a_has_xdp(), "SIGKILL left an XDP program attached");

    // The queue is free again (the bind may meet EBUSY briefly and retry).
    let started = Instant::now();
    std::thread::scope(|s| {
        s.spawn(|| {
            pair.a.enter();
            let attachment = XdpAttachment::attach(A_IF, &params(), XdpMode::Auto).unwrap();
            AfXdp::open(&config(A_IF), &attachment).unwrap();
        })
        .join()
        .unwrap();
    });
    eprintln!(
        "re-attach and bind after SIGKILL took {:?}",
        started.elapsed()
    );
}

#[test]
#[ignore = "helper: run in a child process by a_killed_owner_leaves_nothing_attached_…"]
fn child_holds_an_attachment() {
    let Ok(ifname) = std::env::var("SHOAL_XDP_CHILD_IF") else {
        eprintln!("child_holds_an_attachment: a helper, does nothing outside the SIGKILL test");
        return;
    };
    let attachment = XdpAttachment::attach(&ifname, &params(), XdpMode::Auto).unwrap();
    let io = AfXdp::open(&config(&ifname), &attachment).unwrap();
    println!("SHOAL-CHILD-ATTACHED {}", io.describe());
    std::io::stdout().flush().unwrap();
    std::thread::sleep(Duration::from_secs(120));
    panic!("the parent should have killed this child");
}

#[test]
fn many_frames_cycle_through_every_ring_exactly_once() {
    if !privileged("many_frames_cycle_through_every_ring_exactly_once") {
        return;
    }
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    // Many times the ring size: the fill, rx, tx and completion rings all wrap.
    const TOTAL: u64 = 40_000;
    // The sender keeps at most this many frames in flight, so a slow receiver
    // (2 shared vCPUs) never overflows the rx ring: any loss is a bug.
    const WINDOW: u64 = RING as u64 / 2;
    let pair = VethPair::new("vol");
    let received = AtomicU64::new(0);
    let ready = AtomicBool::new(false);
    let sender_done = AtomicBool::new(false);

    let (seen, rx_stats, tx_stats, elapsed) = std::thread::scope(|s| {
        let receiver = s.spawn(|| {
            pair.a.enter();
            let attachment = XdpAttachment::attach(A_IF, &params(), XdpMode::Auto).unwrap();
            let mut io = AfXdp::open(&config(A_IF), &attachment).unwrap();
            ready.store(true, Ordering::Release);
            let mut seen = vec![0u8; TOTAL as usize];
            let mut last_progress = Instant::now();
            while received.load(Ordering::Relaxed) < TOTAL {
                let n = io
                    .receive(256, &mut |batch| {
                        for f in batch {
                            if f.len() >= 18 && f[12..14] == HEARTBEAT_ETHERTYPE.to_be_bytes() {
                                let seq = u32::from_be_bytes([f[14], f[15], f[16], f[17]]);
                                if let Some(slot) = seen.get_mut(seq as usize) {
                                    *slot = slot.saturating_add(1);
                                }
                            }
                        }
                    })
                    .unwrap();
                if n > 0 {
                    received.fetch_add(n as u64, Ordering::Release);
                    last_progress = Instant::now();
                } else if sender_done.load(Ordering::Acquire)
                    && last_progress.elapsed() > Duration::from_secs(2)
                {
                    break;
                }
            }
            (seen, io.stats().unwrap())
        });
        let sender = s.spawn(|| {
            pair.b.enter();
            while !ready.load(Ordering::Acquire) {
                std::thread::sleep(Duration::from_millis(5));
            }
            let attachment =
                XdpAttachment::attach(B_IF, &XdpParams::default(), XdpMode::Generic).unwrap();
            let mut io = AfXdp::open(&config(B_IF), &attachment).unwrap();
            // Oversized and empty frames are refused and counted, not sent.
            assert_eq!(io.transmit(&[&[0u8; 4096][..], &[][..]]).unwrap(), 0);
            let started = Instant::now();
            let mut next: u64 = 0;
            let mut batch: Vec<Vec<u8>> = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(60);
            while next < TOTAL && Instant::now() < deadline {
                let in_flight = next - received.load(Ordering::Acquire);
                let room = WINDOW.saturating_sub(in_flight).min(256).min(TOTAL - next);
                if room == 0 {
                    io.receive(1, &mut |_| {}).unwrap(); // kicks pending tx
                    std::thread::yield_now();
                    continue;
                }
                batch.clear();
                for seq in next..next + room {
                    let mut payload = (seq as u32).to_be_bytes().to_vec();
                    payload.resize(46, 0);
                    batch.push(ethernet(BROADCAST, B_MAC, HEARTBEAT_ETHERTYPE, &payload));
                }
                let frames: Vec<&[u8]> = batch.iter().map(Vec::as_slice).collect();
                let sent = io.transmit(&frames).unwrap();
                next += sent as u64;
                if sent == 0 {
                    std::thread::yield_now();
                }
            }
            let elapsed = started.elapsed();
            for _ in 0..20 {
                io.receive(1, &mut |_| {}).unwrap();
                std::thread::sleep(Duration::from_millis(5));
            }
            sender_done.store(true, Ordering::Release);
            (io.stats().unwrap(), elapsed)
        });
        let (tx_stats, elapsed) = sender.join().unwrap();
        let (seen, rx_stats) = receiver.join().unwrap();
        (seen, rx_stats, tx_stats, elapsed)
    });

    eprintln!(
        "{TOTAL} frames in {elapsed:?} ({:.0} frames/s, windowed); rx {rx_stats:?}; tx {tx_stats:?}",
        TOTAL as f64 / elapsed.as_secs_f64()
    );
    assert_eq!(tx_stats.tx_frames, TOTAL);
    assert_eq!(tx_stats.tx_oversize, 2);
    let missing = seen.iter().filter(|&&c| c == 0).count();
    let duplicated = seen.iter().filter(|&&c| c > 1).count();
    assert_eq!(
        (missing, duplicated),
        (0, 0),
        "every frame arrives exactly once"
    );
    assert_eq!(rx_stats.rx_frames, TOTAL);
    assert_eq!(rx_stats.rx_bad_descs, 0);
    assert_eq!(rx_stats.kernel_rx_dropped, 0);
}

#[test]
fn one_attachment_serves_every_queue_of_a_multi_queue_veth() {
    if !privileged("one_attachment_serves_every_queue_of_a_multi_queue_veth") {
        return;
    }
    use shoal_engine::sys::bpf::{Bpf, Kernel};
    let a = Netns::new("mq-a");
    let b = Netns::new("mq-b");
    ip(&[
        "link",
        "add",
        "mqa",
        "numrxqueues",
        "4",
        "numtxqueues",
        "4",
        "netns",
        &a.name,
        "type",
        "veth",
        "peer",
        "name",
        "mqb",
        "numrxqueues",
        "4",
        "numtxqueues",
        "4",
        "netns",
        &b.name,
    ]);
    a.ip(&["link", "set", "mqa", "up"]);
    b.ip(&["link", "set", "mqb", "up"]);
    std::thread::scope(|s| {
        s.spawn(|| {
            a.enter();
            // Counted in this thread's namespace (ethtool), not from /sys.
            assert_eq!(Kernel.rx_queue_count("mqa").unwrap(), 4);
            let attachment = XdpAttachment::attach("mqa", &params(), XdpMode::Auto).unwrap();
            assert_eq!(attachment.queue_count(), 4);
            let sockets: Vec<AfXdp> = (0..4)
                .map(|q| {
                    let io = AfXdp::open(
                        &AfXdpConfig {
                            ring_size: RING,
                            ..AfXdpConfig::new("mqa", q)
                        },
                        &attachment,
                    )
                    .unwrap();
                    assert_eq!(io.queue(), q);
                    io
                })
                .collect();
            let e = AfXdp::open(&AfXdpConfig::new("mqa", 4), &attachment).unwrap_err();
            assert!(e.to_string().contains("out of range"), "{e}");
            // A queue cannot take a second socket while the first lives...
            assert!(AfXdp::open(&AfXdpConfig::new("mqa", 2), &attachment).is_err());
            drop(sockets);
            // ...and is free again once it is closed.
            let again = AfXdp::open(
                &AfXdpConfig {
                    ring_size: RING,
                    ..AfXdpConfig::new("mqa", 2)
                },
                &attachment,
            )
            .unwrap();
            assert_eq!(again.queue(), 2);
            attachment.unregister(2).unwrap();
        })
        .join()
        .unwrap();
    });
}
