//! The XDP fast path run by the kernel itself (`BPF_PROG_TEST_RUN`) against
//! the dataplane: for thousands of random IPv4 TCP/UDP frames under several
//! rules (None/Single/Network affinity, single-host, disabled, no rule), the
//! program drops a frame only when userspace would drop it, computes the
//! same bucket as `affinity_hash`, and never drops what it does not handle;
//! it passes to the stack (with the NIC's MAC as destination) exactly the
//! well-formed, untagged, untracked UDP datagrams of this host's buckets.
//! Needs root; no namespaces.
//!
//! The program is built with `XDP_ABORTED` (0) as the redirect fallback: with
//! an empty XSKMAP a redirected frame returns 0, a dropped one `XDP_DROP`
//! (1), a passed one `XDP_PASS` (2).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

mod afxdp_common;

use afxdp_common::privileged;
use shoal_dataplane::bucket::{bucket_of, group_of};
use shoal_dataplane::descriptor::DescriptorConfig;
use shoal_dataplane::hash::affinity_hash;
use shoal_dataplane::mac::unicast_mac;
use shoal_dataplane::map::{ClusterMap, View};
use shoal_dataplane::pipeline::{Dataplane, Verdict};
use shoal_dataplane::wire::ethertype::{self, HEARTBEAT, IPV4, IPV6};
use shoal_dataplane::wire::tcp::flags::{ACK, SYN};
use shoal_dataplane::{
    Affinity, ClusterMode, ClusterSpec, FilterMode, HostId, HostSet, PortRule, Protocol,
};
use shoal_engine::fastpath::{FastPath, FastPathMaps};
use shoal_engine::sys::bpf::{Bpf, Kernel, MapSpec};
use shoal_engine::xdp::fast::FastPathLayout;
use shoal_engine::xdp::guard::GuardMap;
use shoal_engine::xdp::program::ProgramMaps;
use shoal_engine::xdp::{XdpAction, XdpParams, XdpProgram};
use shoal_testkit::frame::{self, tcp, vlan_tagged as vlan, Ipv4};

const REDIRECTED: u32 = XdpAction::Aborted as u32;
const DROPPED: u32 = XdpAction::Drop as u32;
const PASSED: u32 = XdpAction::Pass as u32;
/// The NIC's own MAC, written into passed datagrams.
const NIC_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x11, 0x01];

const VIP1: Ipv4Addr = Ipv4Addr::new(10, 66, 0, 1);
const VIP2: Ipv4Addr = Ipv4Addr::new(10, 66, 0, 2);
const NOT_VIP: Ipv4Addr = Ipv4Addr::new(10, 66, 0, 3);
const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x42];

/// SplitMix64: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn spec() -> ClusterSpec {
    let v1 = Some(IpAddr::V4(VIP1));
    let v2 = Some(IpAddr::V4(VIP2));
    let multiple = |affinity| FilterMode::Multiple { affinity };
    // Host 2 is the single host of port 22 (host 1's priority is worse), so
    // host 1 drops that rule's frames.
    let mut single = PortRule::new(v2, (22, 22), Protocol::Tcp, FilterMode::Single);
    single.priorities[0] = 5;
    ClusterSpec {
        vips: vec![
            IpAddr::V4(VIP1),
            IpAddr::V4(VIP2),
            IpAddr::V6(Ipv6Addr::new(0xfd00, 0x66, 0, 0, 0, 0, 0, 1)),
        ],
        mode: ClusterMode::Unicast,
        ipv6_network_prefix: 64,
        rules: vec![
            PortRule::new(
                None,
                (2000, 65535),
                Protocol::Both,
                multiple(Affinity::Single),
            ),
            PortRule::new(v1, (80, 89), Protocol::Tcp, multiple(Affinity::None)),
            PortRule::new(v1, (53, 53), Protocol::Udp, multiple(Affinity::Network)),
            single,
            PortRule::new(v2, (23, 23), Protocol::Both, FilterMode::Disabled),
            PortRule::new(None, (1000, 1999), Protocol::Udp, multiple(Affinity::None)),
            PortRule::new(
                Some(IpAddr::V6(Ipv6Addr::new(0xfd00, 0x66, 0, 0, 0, 0, 0, 1))),
                (80, 80),
                Protocol::Tcp,
                multiple(Affinity::Single),
            ),
        ],
        bucket_seed: 0x5eed,
    }
}

fn map(members: &[u8], local: u8, epoch: u64) -> Arc<ClusterMap> {
    let spec = spec();
    let set: HostSet = members.iter().map(|&i| HostId::new(i).unwrap()).collect();
    Arc::new(ClusterMap::build(
        &spec,
        &View::converged(&spec, set),
        HostId::new(local).unwrap(),
        epoch,
    ))
}

// ---- frames ----

fn ethernet(dst: [u8; 6], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    frame::ethernet(dst, CLIENT_MAC, ethertype, payload)
}

struct Ip {
    src: Ipv4Addr,
    dst: Ipv4Addr,
    proto: u8,
    options: usize,
    frag: u16,
}

fn ipv4(ip: &Ip, l4: &[u8]) -> Vec<u8> {
    let header = Ipv4 {
        ident: 0x1234,
        fragment: ip.frag,
        options: ip.options,
        ..Ipv4::new(ip.src, ip.dst, ip.proto)
    };
    header.packet(l4)
}

fn udp(sport: u16, dport: u16) -> Vec<u8> {
    frame::udp(sport, dport, b"ping")
}

struct Setup {
    bpf: Arc<Kernel>,
    fast: FastPath,
    program: std::os::fd::OwnedFd,
    _xskmap: shoal_engine::sys::bpf::BpfMap,
    cluster_mac: [u8; 6],
}

fn setup(first: &Arc<ClusterMap>) -> Setup {
    let bpf = Arc::new(Kernel);
    let xskmap = bpf
        .map_create(&MapSpec::xsk_map("shoal_fp_t", 1))
        .expect("XSKMAP");
    let layout = FastPathLayout::of(first);
    let maps =
        Arc::new(FastPathMaps::create(&*bpf, layout, Some(NIC_MAC)).expect("fast path maps"));
    let cluster_mac = unicast_mac(VIP1).0;
    let params = XdpParams {
        cluster_macs: vec![cluster_mac],
        vips_v4: vec![VIP1, VIP2],
        vips_v6: vec![Ipv6Addr::new(0xfd00, 0x66, 0, 0, 0, 0, 0, 1)],
        ..XdpParams::default()
    };
    let guard = GuardMap::create(&*bpf).expect("guard map");
    let prog = XdpProgram::build_with_maps(
        &params,
        ProgramMaps {
            xskmap: xskmap.fd(),
            guard: guard.fd(),
        },
        Some((maps.layout(), maps.fds())),
        XdpAction::Aborted,
    )
    .expect("build");
    let program = bpf
        .prog_load_xdp("shoal_fp_test", &prog.encode())
        .unwrap_or_else(|e| panic!("the verifier refused the fast path: {e}"));
    let fast = FastPath::new(bpf.clone(), maps);
    Setup {
        bpf,
        fast,
        program,
        _xskmap: xskmap,
        cluster_mac,
    }
}

impl Setup {
    fn run(&self, frame: &[u8]) -> u32 {
        use std::os::fd::AsFd;
        self.bpf
            .prog_test_run(self.program.as_fd(), frame)
            .expect("BPF_PROG_TEST_RUN")
    }

    /// Runs `frame` and returns the verdict and, if the fast path judged
    /// it, the (bucket, slot) it recorded.
    fn judge(&self, frame: &[u8]) -> (u32, Option<(u32, u32)>) {
        let before = self.fast.maps().last_judged(&*self.bpf).unwrap();
        let (v, out) = self
            .bpf
            .prog_test_run_frame(
                {
                    use std::os::fd::AsFd;
                    self.program.as_fd()
                },
                frame,
            )
            .expect("BPF_PROG_TEST_RUN");
        // A passed frame carries the NIC's MAC, and nothing else changes.
        let mut want = frame.to_vec();
        if v == PASSED {
            want[..6].copy_from_slice(&NIC_MAC);
        }
        assert_eq!(out, want, "the program changed the frame (action {v})");
        let after = self.fast.maps().last_judged(&*self.bpf).unwrap();
        let judged = before
            .iter()
            .zip(&after)
            .find(|(b, a)| a.judged != b.judged)
            .map(|(_, a)| (a.bucket, a.slot));
        (v, judged)
    }
}

#[test]
fn the_kernel_drops_only_what_userspace_drops_and_hashes_alike() {
    if !privileged("the_kernel_drops_only_what_userspace_drops_and_hashes_alike") {
        return;
    }
    let alone = map(&[1], 1, 1);
    let three = map(&[1, 2, 3], 1, 2);
    let s = setup(&alone);
    let layout = s.fast.maps().layout().clone();
    let report = s.fast.loop_report();

    // Host 1 alone: it tracks 300 TCP connections to port 80 and 8080 from
    // random clients, then hosts 2 and 3 join; most of those connections are
    // in buckets host 1 no longer owns.
    let mut dp = Dataplane::new(alone.clone(), DescriptorConfig::default(), 7);
    s.fast.prepare(&alone);
    report.record(&dp);
    let mut rng = Rng(0x5eed);
    let mut tracked = Vec::new();
    for _ in 0..300 {
        let client = Ipv4Addr::from(0x0a00_0000 | rng.below(1 << 24) as u32);
        let cport = 1024 + rng.below(60000) as u16;
        let port = if rng.below(2) == 0 { 80 } else { 8080 };
        let syn = ethernet(
            s.cluster_mac,
            IPV4,
            &ipv4(
                &Ip {
                    src: client,
                    dst: VIP1,
                    proto: 6,
                    options: 0,
                    frag: 0,
                },
                &tcp(cport, port, SYN),
            ),
        );
        assert_eq!(dp.judge(&syn, 0), Verdict::Keep);
        tracked.push((client, cport, port));
    }
    assert_eq!(
        s.judge(&ethernet(s.cluster_mac, IPV4, &[0; 40])).0,
        REDIRECTED
    );

    // The new map is prepared before the loop adopts it: nothing host 1
    // keeps under the old map may be dropped yet.
    s.fast.prepare(&three);
    for &(client, cport, port) in tracked.iter().take(50) {
        let f = ethernet(
            s.cluster_mac,
            IPV4,
            &ipv4(
                &Ip {
                    src: client,
                    dst: VIP1,
                    proto: 6,
                    options: 0,
                    frag: 0,
                },
                &tcp(cport, port, ACK),
            ),
        );
        assert_eq!(s.judge(&f).0, REDIRECTED, "dropped before the loop moved");
    }
    dp.set_map(three.clone());
    report.record(&dp);
    s.fast.settle();

    let local = HostId::new(1).unwrap();
    let mut dropped = 0usize;
    let mut passed = 0usize;
    let mut judged = 0usize;
    let mut total = 0usize;
    let mut tracked_kept = 0usize;
    for i in 0..4000 {
        // A tracked connection's next segment, or a random frame.
        let (client, cport, vip, proto, port, flags) = if i % 8 == 0 {
            let (c, cp, p) = tracked[i / 8 % tracked.len()];
            (c, cp, VIP1, 6u8, p, ACK)
        } else {
            let vip = match rng.below(10) {
                0 => NOT_VIP,
                1..=4 => VIP1,
                _ => VIP2,
            };
            let proto = if rng.below(2) == 0 { 6 } else { 17 };
            let port = match rng.below(8) {
                0 => 80 + rng.below(12) as u16,
                1 => 53,
                2 => 22,
                3 => 23,
                4 => 1000 + rng.below(1200) as u16,
                5 => rng.below(2000) as u16,
                _ => 2000 + rng.below(63536) as u16,
            };
            let flags = if rng.below(4) == 0 { SYN } else { ACK };
            let client = Ipv4Addr::from(rng.next() as u32);
            (client, rng.next() as u16, vip, proto, port, flags)
        };
        let l4 = if proto == 6 {
            tcp(cport, port, flags)
        } else {
            udp(cport, port)
        };
        let options = if rng.below(5) == 0 {
            4 * (1 + rng.below(10) as usize)
        } else {
            0
        };
        let mut frame = ethernet(
            s.cluster_mac,
            IPV4,
            &ipv4(
                &Ip {
                    src: client,
                    dst: vip,
                    proto,
                    options,
                    frag: if rng.below(2) == 0 { 0x4000 } else { 0 }, // DF or nothing
                },
                &l4,
            ),
        );
        let tagged = rng.below(4) == 0;
        if tagged {
            frame = vlan(
                &frame,
                if rng.below(2) == 0 {
                    ethertype::VLAN
                } else {
                    ethertype::QINQ
                },
                5,
            );
        }
        let (verdict, recorded) = s.judge(&frame);
        let owner = Dataplane::owner_of(&three, proto, client.into(), cport, vip.into(), port);
        let userspace = dp.judge(&frame, 1);
        total += 1;

        assert!(
            verdict == REDIRECTED || verdict == DROPPED || verdict == PASSED,
            "frame {i}: unexpected action {verdict}"
        );
        // Passed: exactly the untagged, option-less UDP datagrams of a
        // rule's bucket this host owns (every rule here is untracked).
        let expect_pass = proto == 17
            && !tagged
            && options == 0
            && vip != NOT_VIP
            && owner.rule.is_some()
            && owner.host == Some(local)
            && !three.rules[owner.rule.unwrap()].disabled_here;
        assert_eq!(
            verdict == PASSED,
            expect_pass,
            "frame {i}: pass ({client}:{cport} → {vip}:{port}/{proto}, tagged {tagged}, \
             options {options}, owner {:?})",
            owner.host
        );
        if verdict == PASSED {
            passed += 1;
            assert_eq!(
                userspace,
                Verdict::Keep,
                "frame {i}: passed what userspace drops"
            );
        }
        if verdict == DROPPED {
            dropped += 1;
            assert!(
                matches!(userspace, Verdict::Drop(_)),
                "frame {i}: the kernel dropped what userspace judges {userspace:?} \
                 ({client}:{cport} → {vip}:{port}/{proto})"
            );
            assert_ne!(owner.host, Some(local), "frame {i}: dropped our own");
        }
        if i % 8 == 0 {
            assert_eq!(
                verdict, REDIRECTED,
                "frame {i}: a tracked connection was dropped"
            );
            tracked_kept += 1;
        }
        // Which frames the fast path judges, and with which bucket.
        match (owner.rule, vip != NOT_VIP) {
            (Some(rule), true) => {
                judged += 1;
                let (bucket, slot) = recorded.unwrap_or_else(|| panic!("frame {i} not judged"));
                let want_slot = layout.rules.iter().position(|r| r.rule == rule).unwrap();
                assert_eq!(slot as usize, want_slot, "frame {i}: rule slot");
                assert_eq!(bucket, owner.bucket.unwrap_or(0), "frame {i}: bucket");
                if let Some(b) = owner.bucket {
                    let FilterMode::Multiple { affinity } = three.rules[rule].rule.mode else {
                        panic!()
                    };
                    let h = affinity_hash(three.seed, affinity, client.into(), cport, 64);
                    assert_eq!(b, bucket_of(h));
                }
                // Exactly when it drops: the rule is disabled, or another host
                // owns the flow and no tracked connection sits in its group.
                let dirty = dp.table().dirty_groups(rule);
                let expect_drop = match three.rules[rule].rule.mode {
                    FilterMode::Disabled => true,
                    FilterMode::Single => owner.host != Some(local) && dirty.is_empty(),
                    FilterMode::Multiple { .. } => {
                        owner.host != Some(local)
                            && owner.host.is_some()
                            && !dirty.contains(group_of(owner.bucket.unwrap()))
                    }
                };
                assert_eq!(verdict == DROPPED, expect_drop, "frame {i}: rule {rule}");
            }
            _ => {
                assert_eq!(verdict, REDIRECTED, "frame {i}: no rule or not a VIP");
                assert!(recorded.is_none(), "frame {i}: judged without a rule");
            }
        }
    }
    eprintln!(
        "{total} frames: {judged} judged in the kernel, {dropped} dropped, {passed} passed, \
         {tracked_kept} of tracked connections all redirected"
    );
    assert!(passed > 50, "only {passed} passed");
    // Host 1 owns about a third: the kernel must drop a real share of what
    // it judges.
    assert!(dropped > judged / 2, "only {dropped} of {judged} dropped");
    let c = s.fast.counters();
    assert_eq!(c.dropped() as usize, dropped);
    assert_eq!(c.passed as usize, passed);
    assert!(c.dropped_rule > 0 && c.dropped_bucket > 0, "{c:?}");
}

#[test]
fn frames_the_fast_path_does_not_handle_are_never_dropped() {
    if !privileged("frames_the_fast_path_does_not_handle_are_never_dropped") {
        return;
    }
    // Host 1 of three; every frame below is for a flow of host 2's (or a
    // disabled rule), so a careless program would drop it.
    let three = map(&[1, 2, 3], 1, 1);
    let s = setup(&three);
    s.fast.prepare(&three);
    let mut rng = Rng(99);
    let foreign = loop {
        let c = Ipv4Addr::from(rng.next() as u32);
        let o = Dataplane::owner_of(&three, 6, c.into(), 40000, VIP1.into(), 8080);
        if o.host == HostId::new(2) {
            break c;
        }
    };
    let ip = |proto: u8, options: usize, frag: u16| Ip {
        src: foreign,
        dst: VIP1,
        proto,
        options,
        frag,
    };
    let to_us = |payload: &[u8]| ethernet(s.cluster_mac, IPV4, payload);
    // Sanity: the plain frame is dropped.
    let plain = to_us(&ipv4(&ip(6, 0, 0), &tcp(40000, 8080, ACK)));
    assert_eq!(s.run(&plain), DROPPED);
    assert_eq!(
        s.run(&to_us(&ipv4(&ip(6, 8, 0), &tcp(40000, 8080, ACK)))),
        DROPPED,
        "IPv4 options are stepped over"
    );
    assert_eq!(
        s.run(&to_us(&ipv4(
            &Ip {
                dst: VIP2,
                ..ip(17, 0, 0)
            },
            &udp(1, 23)
        ))),
        DROPPED,
        "the disabled rule drops"
    );

    let mut cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "first fragment",
            to_us(&ipv4(&ip(6, 0, 0x2000), &tcp(40000, 8080, ACK))),
        ),
        (
            "later fragment",
            to_us(&ipv4(&ip(6, 0, 0x0010), &tcp(40000, 8080, ACK))),
        ),
        ("GRE", to_us(&ipv4(&ip(47, 0, 0), &[0; 8]))),
        ("ESP", to_us(&ipv4(&ip(50, 0, 0), &[0; 16]))),
        (
            "AH",
            to_us(&ipv4(
                &ip(51, 0, 0),
                &[6, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            )),
        ),
        (
            "ICMP",
            to_us(&ipv4(&ip(1, 0, 0), &[3, 3, 0, 0, 0, 0, 0, 0])),
        ),
        ("truncated TCP", {
            let mut f = plain.clone();
            f.truncate(14 + 20 + 2);
            f
        }),
        ("IHL below 5", {
            let mut f = plain.clone();
            f[14] = 0x44;
            f
        }),
        ("IP version 6 in an IPv4 frame", {
            let mut f = plain.clone();
            f[14] = 0x65;
            f
        }),
        (
            "two VLAN tags",
            vlan(&vlan(&plain, ethertype::VLAN, 3), ethertype::QINQ, 4),
        ),
        ("legacy QinQ tag", vlan(&plain, ethertype::QINQ_LEGACY, 3)),
        (
            "not a VIP",
            to_us(&ipv4(
                &Ip {
                    dst: NOT_VIP,
                    ..ip(6, 0, 0)
                },
                &tcp(40000, 8080, ACK),
            )),
        ),
        (
            "no rule (TCP below 2000)",
            to_us(&ipv4(&ip(6, 0, 0), &tcp(40000, 1500, ACK))),
        ),
        ("IPv6 TCP to the IPv6 VIP", {
            let mut p = vec![0x60, 0, 0, 0, 0, 20, 6, 64];
            p.extend_from_slice(&Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 9).octets());
            p.extend_from_slice(&Ipv6Addr::new(0xfd00, 0x66, 0, 0, 0, 0, 0, 1).octets());
            p.extend_from_slice(&tcp(40000, 80, ACK));
            ethernet(s.cluster_mac, IPV6, &p)
        }),
        ("ARP", ethernet(s.cluster_mac, ethertype::ARP, &[0; 28])),
        ("heartbeat", ethernet(s.cluster_mac, HEARTBEAT, &[0; 46])),
        (
            "runt",
            s.cluster_mac
                .iter()
                .chain(&CLIENT_MAC)
                .chain(&[8, 0])
                .copied()
                .collect(),
        ),
    ];
    cases.push(("IPv4 header cut short", plain[..14 + 12].to_vec()));
    for (what, frame) in &cases {
        assert_eq!(s.run(frame), REDIRECTED, "{what} was not redirected");
    }
    // Not to the cluster MAC but to the VIP: redirected without the fast
    // path's judgement (userspace judges it as cluster traffic).
    let mut other = plain.clone();
    other[0..6].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x77]);
    assert_eq!(s.run(&other), REDIRECTED);
    // Not to the cluster MAC and not to a VIP: the kernel's.
    let mut elsewhere = other.clone();
    elsewhere[14 + 16..14 + 20].copy_from_slice(&NOT_VIP.octets());
    assert_eq!(s.run(&elsewhere), XdpAction::Pass as u32);
}

#[test]
fn every_layout_shape_passes_the_verifier() {
    if !privileged("every_layout_shape_passes_the_verifier") {
        return;
    }
    let v1 = Some(IpAddr::V4(VIP1));
    let multiple = FilterMode::Multiple {
        affinity: Affinity::Single,
    };
    let shapes: Vec<(&str, Vec<PortRule>)> = vec![
        ("no rules", vec![]),
        (
            "one catch-all multiple-host rule (the default)",
            vec![PortRule::new(None, (0, 65535), Protocol::Both, multiple)],
        ),
        (
            "one catch-all single-host rule",
            vec![PortRule::new(
                None,
                (0, 65535),
                Protocol::Both,
                FilterMode::Single,
            )],
        ),
        (
            "only single-host and disabled rules",
            vec![
                PortRule::new(v1, (22, 22), Protocol::Tcp, FilterMode::Single),
                PortRule::new(None, (23, 23), Protocol::Udp, FilterMode::Disabled),
            ],
        ),
        (
            "a catch-all after specific rules",
            vec![
                PortRule::new(None, (0, 65535), Protocol::Both, multiple),
                PortRule::new(v1, (80, 80), Protocol::Tcp, FilterMode::Single),
            ],
        ),
    ];
    for (what, rules) in shapes {
        let spec = ClusterSpec {
            vips: vec![IpAddr::V4(VIP1)],
            mode: ClusterMode::Unicast,
            ipv6_network_prefix: 64,
            rules,
            bucket_seed: 0x5eed,
        };
        let m = Arc::new(ClusterMap::build(
            &spec,
            &View::converged(&spec, HostSet::EMPTY),
            HostId::new(1).unwrap(),
            0,
        ));
        let bpf = Kernel;
        let xskmap = bpf
            .map_create(&MapSpec::xsk_map("shoal_fp_t", 1))
            .expect("XSKMAP");
        for pass_to in [None, Some(NIC_MAC)] {
            let maps = FastPathMaps::create(&bpf, FastPathLayout::of(&m), pass_to).expect("maps");
            let params = XdpParams {
                cluster_macs: vec![unicast_mac(VIP1).0],
                vips_v4: vec![VIP1],
                ..XdpParams::default()
            };
            let guard = GuardMap::create(&bpf).expect("guard map");
            let prog = XdpProgram::build_with_maps(
                &params,
                ProgramMaps {
                    xskmap: xskmap.fd(),
                    guard: guard.fd(),
                },
                Some((maps.layout(), maps.fds())),
                XdpAction::Drop,
            )
            .expect("build");
            if let Err(e) = bpf.prog_load_xdp("shoal_fp_shape", &prog.encode()) {
                panic!("{what} (pass to {pass_to:?}): the verifier refused the program: {e}");
            }
        }
    }
}

#[test]
fn owned_udp_passes_with_the_nic_mac_and_nothing_else_does() {
    if !privileged("owned_udp_passes_with_the_nic_mac_and_nothing_else_does") {
        return;
    }
    // Host 1 of three, settled on that map.
    let three = map(&[1, 2, 3], 1, 1);
    let s = setup(&three);
    let report = s.fast.loop_report();
    s.fast.prepare(&three);
    let dp = Dataplane::new(three.clone(), DescriptorConfig::default(), 7);
    report.record(&dp);
    s.fast.settle();
    let mut rng = Rng(7);
    let ours = loop {
        let c = Ipv4Addr::from(rng.next() as u32);
        let o = Dataplane::owner_of(&three, 17, c.into(), 40000, VIP1.into(), 8080);
        if o.host == HostId::new(1) {
            break c;
        }
    };
    let ip = |proto: u8, options: usize, frag: u16| Ip {
        src: ours,
        dst: VIP1,
        proto,
        options,
        frag,
    };
    let to_us = |payload: &[u8]| ethernet(s.cluster_mac, IPV4, payload);
    let plain = to_us(&ipv4(&ip(17, 0, 0), &udp(40000, 8080)));
    let (v, judged) = s.judge(&plain);
    assert_eq!(v, PASSED, "our own datagram");
    assert!(judged.is_some());
    assert_eq!(s.fast.counters().passed, 1);

    let with_udp_len = |len: u16| {
        let mut u = udp(40000, 8080);
        u[4..6].copy_from_slice(&len.to_be_bytes());
        to_us(&ipv4(&ip(17, 0, 0), &u))
    };
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "TCP of the same flow",
            to_us(&ipv4(&ip(6, 0, 0), &tcp(40000, 8080, ACK))),
        ),
        ("IP options", to_us(&ipv4(&ip(17, 8, 0), &udp(40000, 8080)))),
        (
            "a first fragment",
            to_us(&ipv4(&ip(17, 0, 0x2000), &udp(40000, 8080))),
        ),
        ("VLAN tagged", vlan(&plain, ethertype::VLAN, 5)),
        ("UDP length below 8", with_udp_len(7)),
        ("UDP length beyond the datagram", with_udp_len(13)),
        ("IP total length beyond the frame", {
            let mut f = plain.clone();
            f[16..18].copy_from_slice(&200u16.to_be_bytes());
            f
        }),
        ("IP total length below the headers", {
            let mut f = plain.clone();
            f[16..18].copy_from_slice(&27u16.to_be_bytes());
            f
        }),
    ];
    for (what, frame) in &cases {
        assert_eq!(s.judge(frame).0, REDIRECTED, "{what} was not redirected");
    }
    // IKE (4500 is under rule 0 here) goes to userspace, which notes it
    // so ESP can follow.
    let ike_client = loop {
        let c = Ipv4Addr::from(rng.next() as u32);
        let o = Dataplane::owner_of(&three, 17, c.into(), 4500, VIP1.into(), 4500);
        if o.host == HostId::new(1) {
            break c;
        }
    };
    let ike = to_us(&ipv4(
        &Ip {
            src: ike_client,
            ..ip(17, 0, 0)
        },
        &udp(4500, 4500),
    ));
    assert_eq!(s.judge(&ike).0, REDIRECTED, "IKE was not redirected");
    assert_eq!(
        s.fast.counters().passed,
        1,
        "only the plain datagram passed"
    );
}
