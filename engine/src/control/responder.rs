//! The control thread's neighbour duties, the same with or without a
//! control plane: the default host of the map in force answers ARP and ND
//! for the VIPs and announces them with gratuitous ARP; in igmp mode every
//! host reports its membership of the cluster group and answers queries.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use shoal_dataplane::mac::Mac;
use shoal_dataplane::map::ClusterMap;
use shoal_dataplane::packet::{parse_frame, FrameKind, L4};
use shoal_dataplane::reply;
use shoal_dataplane::HostId;

use crate::handoff::{MapCell, Outbound};

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
        Self {
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
        self.outbound.push(frame);
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

    /// A control frame that is not a heartbeat: an IGMP query (igmp mode),
    /// or an ARP request or neighbour solicitation for a VIP.
    pub fn handle(&mut self, frame: &[u8]) {
        let Ok(info) = parse_frame(frame) else { return };
        if let FrameKind::Ipv4(ip) = info.kind {
            if matches!(
                ip.l4,
                L4::Igmp {
                    igmp_type: 0x11,
                    ..
                }
            ) {
                if self.igmp.is_some() {
                    self.report_membership();
                }
                return;
            }
        }
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
            self.send(&buf[..n]);
            self.answered += 1;
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
