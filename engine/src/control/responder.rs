//! The control thread's neighbour duties, the same with or without a
//! control plane: the default host of the map in force answers ARP and ND
//! for the VIPs and announces them with gratuitous ARP; in igmp mode every
//! host reports its membership of the cluster group and answers queries.
//!
//! Answers are rate-limited per requester and in all
//! ([`shoal_dataplane::answer_limit`], [`AnswerLimits::NEIGHBOUR`] for ARP
//! and ND, [`AnswerLimits::IGMP`] for reports sent in answer to queries):
//! a flood of requests costs the segment at most the global rate of
//! answers, and a flooding requester does not use up a quiet one's. Refused
//! answers are counted ([`Responder::limited`]). Everything leaves through
//! [`Outbound`]'s answer lane, never ahead of a heartbeat.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use shoal_dataplane::answer_limit::{
    AnswerLimiter, AnswerLimits, Decision, LimitCounters, Requester,
};
use shoal_dataplane::mac::Mac;
use shoal_dataplane::map::ClusterMap;
use shoal_dataplane::packet::{parse_frame, FrameKind, L4};
use shoal_dataplane::reply;
use shoal_dataplane::HostId;

use crate::handoff::{Lane, MapCell, Outbound};

/// How often a host repeats its IGMP membership report (the default query
/// interval of RFC 2236 is 125 s; reporting more often keeps a snooping
/// switch's membership fresh across querier restarts).
pub const IGMP_REPORT_INTERVAL: Duration = Duration::from_secs(10);

/// The control thread's neighbour duties, the same with or without a control
/// plane: the default host of the map in force answers ARP and ND for the
/// VIPs and announces them with gratuitous ARP; in igmp mode every host
/// reports its membership of the cluster group, and answers queries.
#[derive(Debug)]
pub struct Responder {
    local: HostId,
    cluster_mac: Mac,
    source_mac: Mac,
    pub(crate) cell: Arc<MapCell>,
    outbound: Arc<Outbound>,
    /// ARP and ND requests answered.
    pub answered: u64,
    /// In igmp mode: the cluster group and the address reports come from.
    igmp: Option<(Ipv4Addr, Ipv4Addr)>,
    /// IGMP membership reports sent.
    pub igmp_reports: u64,
    /// Decides which ARP/ND requests get an answer.
    neighbour_limit: AnswerLimiter,
    /// Decides which IGMP queries get a report.
    igmp_limit: AnswerLimiter,
}

/// What a [`Responder`] refused to answer, and sends it could not queue.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Limited {
    /// ARP and ND requests, by the rate limits.
    pub neighbour: LimitCounters,
    /// IGMP queries, by the rate limits.
    pub igmp: LimitCounters,
}

impl Responder {
    /// A responder for `local`, reading the map in force from `cell` and
    /// sending through `outbound`; `igmp` is (group, source) in igmp mode.
    pub fn new(
        local: HostId,
        cluster_mac: Mac,
        source_mac: Mac,
        cell: Arc<MapCell>,
        outbound: Arc<Outbound>,
        igmp: Option<(Ipv4Addr, Ipv4Addr)>,
    ) -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
            ^ u64::from(std::process::id()).rotate_left(32);
        Self {
            neighbour_limit: AnswerLimiter::new(AnswerLimits::NEIGHBOUR, seed, 0),
            igmp_limit: AnswerLimiter::new(AnswerLimits::IGMP, seed.rotate_left(17), 0),
            local,
            cluster_mac,
            source_mac,
            cell,
            outbound,
            answered: 0,
            igmp,
            igmp_reports: 0,
        }
    }

    fn send(&self, frame: &[u8]) {
        let _ = self.outbound.push(Lane::Answer, frame);
    }

    /// Frames the outbound lanes had no room for: (heartbeats, answers).
    pub fn outbound_dropped(&self) -> (u64, u64) {
        self.outbound.dropped()
    }

    /// Requests refused by the rate limits so far.
    pub fn limited(&self) -> Limited {
        Limited {
            neighbour: self.neighbour_limit.counters(),
            igmp: self.igmp_limit.counters(),
        }
    }

    /// Sends an IGMPv2 membership report for the cluster group (igmp mode).
    pub fn report_membership(&mut self) {
        if let Some((group, source)) = self.igmp {
            let mut buf = [0u8; reply::MAX_REPLY];
            let n = reply::igmp_report(group, self.source_mac, source, &mut buf);
            self.send(&buf[..n]);
            self.igmp_reports += 1;
        }
    }

    /// A control frame that is not a heartbeat, received at `now` (ns on
    /// any clock that never goes backwards): an IGMP query (igmp mode), or
    /// an ARP request or neighbour solicitation for a VIP. Answered within
    /// the rate limits (see the module docs).
    pub fn handle(&mut self, frame: &[u8], now: u64) {
        let Ok(info) = parse_frame(frame) else { return };
        if let FrameKind::Ipv4(ip) = info.kind {
            if matches!(
                ip.l4,
                L4::Igmp {
                    igmp_type: 0x11,
                    ..
                }
            ) {
                let who = Requester {
                    mac: info.src_mac,
                    ip: ip.src,
                };
                if self.igmp.is_some()
                    && self.igmp_limit.handle_request(who, now) == Decision::Answer
                {
                    self.report_membership();
                }
                return;
            }
        }
        let who = match info.kind {
            FrameKind::Arp(arp) => Requester {
                mac: info.src_mac,
                ip: IpAddr::V4(arp.sender_ip),
            },
            FrameKind::Ipv4(ip) | FrameKind::Ipv6(ip) => Requester {
                mac: info.src_mac,
                ip: ip.src,
            },
            FrameKind::Heartbeat | FrameKind::Other => return,
        };
        let map = self.cell.current();
        if map.default_host != Some(self.local) {
            return;
        }
        let mut buf = [0u8; reply::MAX_REPLY];
        let n = reply::arp_reply(
            frame,
            &map.vips,
            self.cluster_mac,
            self.source_mac,
            &mut buf,
        )
        .or_else(|| {
            reply::neighbor_advert(
                frame,
                &map.vips,
                self.cluster_mac,
                self.source_mac,
                &mut buf,
            )
        });
        if let Some(n) = n {
            if self.neighbour_limit.handle_request(who, now) == Decision::Answer {
                self.send(&buf[..n]);
                self.answered += 1;
            }
        }
    }

    /// Gratuitous ARP for every IPv4 VIP, when `map` makes this host the
    /// default host.
    pub fn announce(&self, map: &ClusterMap) {
        if map.default_host != Some(self.local) {
            return;
        }
        for vip in &map.vips {
            if let IpAddr::V4(v) = vip {
                let mut buf = [0u8; reply::MAX_REPLY];
                let n = reply::gratuitous_arp(*v, self.cluster_mac, self.source_mac, &mut buf);
                self.send(&buf[..n]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_dataplane::mac::unicast_mac;
    use shoal_dataplane::map::View;
    use shoal_dataplane::{ClusterMode, ClusterSpec, HostSet};

    const VIP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 100);

    fn arp_request(sender: Ipv4Addr, mac: [u8; 6]) -> Vec<u8> {
        let mut f = Vec::with_capacity(60);
        f.extend_from_slice(&[0xff; 6]);
        f.extend_from_slice(&mac);
        f.extend_from_slice(&0x0806u16.to_be_bytes());
        f.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
        f.extend_from_slice(&mac);
        f.extend_from_slice(&sender.octets());
        f.extend_from_slice(&[0; 6]);
        f.extend_from_slice(&VIP.octets());
        f.resize(60, 0);
        f
    }

    /// The default host answers a flood of ARP requests for the VIP from
    /// one source within that source's budget, and still answers another.
    #[test]
    fn a_flood_of_arp_requests_gets_a_bounded_number_of_answers() {
        let spec = ClusterSpec {
            vips: vec![IpAddr::V4(VIP)],
            mode: ClusterMode::Unicast,
            ipv6_network_prefix: 64,
            rules: vec![],
            bucket_seed: 0x5eed,
        };
        let local = HostId::new(1).unwrap();
        let view = View::converged(&spec, HostSet::from_iter([local]));
        let cell = Arc::new(MapCell::new(Arc::new(ClusterMap::build(
            &spec, &view, local, 1,
        ))));
        let outbound = Arc::new(Outbound::default());
        let mut r = Responder::new(
            local,
            unicast_mac(VIP),
            Mac([2, 0, 0, 0, 0, 1]),
            cell,
            outbound.clone(),
            None,
        );
        let flooder = arp_request(Ipv4Addr::new(10, 0, 0, 60), [2, 0, 0, 0, 0, 0x60]);
        // 100,000 requests over one second.
        for i in 0..100_000u64 {
            r.handle(&flooder, i * 10_000);
        }
        let per = AnswerLimits::NEIGHBOUR.per_source;
        let most = u64::from(per.burst + per.rate);
        assert!(r.answered <= most, "{} answers", r.answered);
        assert!(r.answered >= u64::from(per.burst));
        let limited = r.limited().neighbour;
        assert_eq!(limited.source_limited, 100_000 - r.answered);
        let sent = outbound.take().map_or(0, |f| f.len()) as u64;
        assert_eq!(sent, r.answered);
        // Another requester is answered at once.
        let client = arp_request(Ipv4Addr::new(10, 0, 0, 200), [2, 0, 0, 0, 0, 0xc8]);
        r.handle(&client, 1_000_000_000);
        assert_eq!(outbound.take().map_or(0, |f| f.len()), 1);
    }
}
