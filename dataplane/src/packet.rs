//! One parse of a whole Ethernet frame into a small, `Copy` summary.
//!
//! # Contract
//!
//! [`parse_frame`] reads a received frame (no FCS) once, front to back, and
//! returns a [`FrameInfo`] that borrows nothing, or the [`Malformed`] reason
//! the frame cannot be trusted. It is the frame path's general parser: the
//! pipeline reads the common frame (untagged, option-less IPv4 carrying
//! TCP, UDP, GRE or ESP) at fixed offsets with the same checks and parses
//! every frame that reader declines here, so each frame is parsed once, by
//! one of the two (see [`crate::pipeline`]). As a frame-path parser it:
//!
//! - never allocates, never verifies checksums (see [`crate::wire`] for
//!   why), and does bounded work: at most [`MAX_VLAN_TAGS`] tags and
//!   [`ipv6::MAX_EXTENSION_HEADERS`] IPv6 extension headers are followed;
//! - never panics, whatever the bytes (a property test holds it to that);
//! - trusts the IP length fields: bytes after the IP datagram (Ethernet
//!   padding up to 60 bytes) are ignored, and a frame shorter than its IP
//!   length field says is malformed (truncated);
//! - parses the transport header of whole datagrams and of first fragments
//!   (where it must be complete, RFC 1858 / RFC 7112), never of later
//!   fragments ([`L4::Unparsed`]);
//! - treats a quoted datagram inside an ICMP error as best effort: a quote
//!   it cannot read leaves [`L4::Icmp::inner`] empty instead of failing the
//!   frame, because the error itself is well formed.
//!
//! Offsets in the summary ([`FrameInfo::l3_offset`], [`IpInfo::l4_offset`])
//! index the frame that was parsed, so the engine can rewrite or forward it
//! without parsing again.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::wire::ethernet::{self, EthernetFrame, VlanTag, MAX_VLAN_TAGS};
use crate::wire::ip_proto;
use crate::wire::ipv6::{self, walk_extension_headers};
use crate::wire::{
    ethertype, ArpPacket, EspPacket, GrePacket, Icmpv4Packet, Icmpv6Packet, IgmpPacket, Ipv4Packet,
    Ipv6ExtensionHeader, Ipv6Packet, TcpSegment, UdpDatagram,
};

pub use crate::wire::Malformed;

/// What one frame is, in as much detail as the filter needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameInfo {
    /// Destination MAC address.
    pub dst_mac: [u8; 6],
    /// Source MAC address.
    pub src_mac: [u8; 6],
    /// VLAN ID of the outermost tag, if the frame is tagged (0 for a
    /// priority-only tag).
    pub vlan: Option<u16>,
    /// EtherType after all VLAN tags (an 802.3 length when below 0x0600).
    pub ethertype: u16,
    /// Where the ARP, IP or heartbeat payload starts in the frame.
    pub l3_offset: usize,
    /// The network layer and what it carries.
    pub kind: FrameKind,
}

/// The network layer of a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameKind {
    /// Ethernet/IPv4 ARP.
    Arp(ArpInfo),
    /// IPv4.
    Ipv4(IpInfo),
    /// IPv6.
    Ipv6(IpInfo),
    /// A cluster heartbeat (EtherType 0x886F); its payload starts at
    /// [`FrameInfo::l3_offset`] and is the control plane's to decode.
    Heartbeat,
    /// Any other EtherType: not the cluster's business.
    Other,
}

/// The fields of an ARP packet the engine answers or learns from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArpInfo {
    /// Operation (1 request, 2 reply).
    pub op: u16,
    /// Sender hardware address.
    pub sender_mac: [u8; 6],
    /// Sender protocol address.
    pub sender_ip: Ipv4Addr,
    /// Target hardware address.
    pub target_mac: [u8; 6],
    /// Target protocol address.
    pub target_ip: Ipv4Addr,
}

/// An IP datagram's addresses, fragment position and transport summary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpInfo {
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// Upper-layer protocol: the IPv4 protocol field (or the header after
    /// an AH header), or for IPv6 the header after the extension chain (59
    /// for no next header). For a later fragment, the first header of the
    /// fragment's data (never stepped over).
    pub proto: u8,
    /// Where this datagram sits among its fragments.
    pub fragment: Fragment,
    /// Where the transport header (or, for a later fragment, the fragment
    /// data) starts in the frame.
    pub l4_offset: usize,
    /// Transport summary.
    pub l4: L4,
}

/// Where a datagram sits among its fragments. IPv4 identifications are
/// 16 bits, widened; IPv6 fragment header identifications are 32 bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fragment {
    /// Not fragmented. This includes IPv6 atomic fragments (a fragment
    /// header with offset 0 and M clear, RFC 6946 §4): the whole packet is
    /// here, and it must be owned exactly like the same flow's unfragmented
    /// packets.
    Whole,
    /// Offset zero with more fragments to follow: the transport header is
    /// here and parsed.
    First {
        /// Identification shared by all fragments of the datagram.
        id: u32,
    },
    /// Offset above zero: no transport header ([`L4::Unparsed`]).
    Later {
        /// Identification shared by all fragments of the datagram.
        id: u32,
        /// Offset of this fragment's data in bytes.
        offset: u16,
        /// More fragments follow (false on the last fragment).
        more: bool,
    },
}

/// Transport summary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum L4 {
    /// TCP; `flags` has FIN=1 SYN=2 RST=4 PSH=8 ACK=16 (see `wire::tcp::flags`).
    Tcp {
        /// Source port.
        src_port: u16,
        /// Destination port.
        dst_port: u16,
        /// The eight flag bits.
        flags: u8,
    },
    /// UDP.
    Udp {
        /// Source port.
        src_port: u16,
        /// Destination port.
        dst_port: u16,
    },
    /// GRE; `call_id` is the enhanced GRE (version 1, PPTP) key's call ID.
    Gre {
        /// 0 for GRE, 1 for PPTP's enhanced GRE.
        version: u8,
        /// Payload protocol (0x880B for PPP).
        protocol: u16,
        /// PPTP call ID of the receiving peer (version 1 only).
        call_id: Option<u16>,
    },
    /// IPsec ESP.
    Esp {
        /// Security parameters index.
        spi: u32,
    },
    /// ICMP (over IPv4) or ICMPv6 (over IPv6) other than neighbour
    /// solicitation and advertisement; errors carry the quoted flow.
    Icmp {
        /// Message type.
        icmp_type: u8,
        /// Message code.
        code: u8,
        /// The flow quoted by an error message, if it could be read.
        inner: Option<InnerFlow>,
    },
    /// ICMPv6 neighbour solicitation (135) or advertisement (136).
    Icmpv6Nd {
        /// 135 or 136.
        icmp_type: u8,
        /// The address being resolved or advertised.
        target: Ipv6Addr,
    },
    /// IGMP (over IPv4).
    Igmp {
        /// Message type (see `wire::igmp::types`).
        igmp_type: u8,
        /// The group (the first record's for a v3 report; unspecified if none).
        group: Ipv4Addr,
    },
    /// A later fragment, or a protocol not summarized here.
    Unparsed,
}

/// The datagram quoted in an ICMP error, as it was sent: `src` is the host
/// that sent the original (usually ours, the VIP), `dst` its peer. Ports
/// are 0 when the quoted protocol has none, the quote is a later fragment,
/// or the quote stops before them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InnerFlow {
    /// Source of the original datagram.
    pub src: IpAddr,
    /// Destination of the original datagram.
    pub dst: IpAddr,
    /// Upper-layer protocol of the original datagram.
    pub proto: u8,
    /// Source port of the original datagram.
    pub src_port: u16,
    /// Destination port of the original datagram.
    pub dst_port: u16,
}

/// Parses one received Ethernet frame (without FCS). See the module
/// contract for what is checked and what is trusted.
///
/// # Errors
/// The first [`Malformed`] reason met, front to back.
pub fn parse_frame(frame: &[u8]) -> Result<FrameInfo, Malformed> {
    let eth = EthernetFrame::new_checked(frame)?;
    let mut ether_type = eth.ethertype();
    let mut l3_offset = ethernet::HEADER_LEN;
    let mut vlan = None;
    let mut tags = 0;
    while ethertype::is_vlan_tag(ether_type) {
        if tags == MAX_VLAN_TAGS {
            return Err(Malformed::TooManyVlanTags);
        }
        let tag = VlanTag::new_checked(&frame[l3_offset..])?;
        vlan.get_or_insert(tag.vlan_id());
        ether_type = tag.ethertype();
        l3_offset += ethernet::VLAN_TAG_LEN;
        tags += 1;
    }
    let l3 = &frame[l3_offset..];
    let kind = match ether_type {
        ethertype::ARP => FrameKind::Arp(parse_arp(l3)?),
        ethertype::IPV4 => FrameKind::Ipv4(parse_ipv4(l3, l3_offset)?),
        ethertype::IPV6 => FrameKind::Ipv6(parse_ipv6(l3, l3_offset)?),
        ethertype::HEARTBEAT => FrameKind::Heartbeat,
        _ => FrameKind::Other,
    };
    Ok(FrameInfo {
        dst_mac: eth.dst(),
        src_mac: eth.src(),
        vlan,
        ethertype: ether_type,
        l3_offset,
        kind,
    })
}

fn parse_arp(l3: &[u8]) -> Result<ArpInfo, Malformed> {
    let arp = ArpPacket::new_checked(l3)?;
    Ok(ArpInfo {
        op: arp.operation(),
        sender_mac: arp.sender_mac(),
        sender_ip: arp.sender_ip(),
        target_mac: arp.target_mac(),
        target_ip: arp.target_ip(),
    })
}

fn parse_ipv4(l3: &[u8], l3_offset: usize) -> Result<IpInfo, Malformed> {
    let ip = Ipv4Packet::new_checked(l3)?;
    let id = u32::from(ip.ident());
    let fragment = match (ip.frag_offset(), ip.more_frags()) {
        (0, false) => Fragment::Whole,
        (0, true) => Fragment::First { id },
        (offset, more) => Fragment::Later { id, offset, more },
    };
    let payload = ip.payload();
    // AH (RFC 4302) sits between IPv4 and the transport in clear; step over
    // it so AH-protected flows are owned by port like any other. A later
    // fragment's data is not headers.
    let (proto, l4_start) = match (ip.protocol(), fragment) {
        (_, Fragment::Later { .. }) => (ip.protocol(), 0),
        (ip_proto::AH, _) => {
            let ah = Ipv6ExtensionHeader::new_checked(payload, ip_proto::AH)?;
            (ah.next_header(), ah.header_len())
        }
        (proto, _) => (proto, 0),
    };
    let l4 = match fragment {
        Fragment::Later { .. } => L4::Unparsed,
        _ => parse_l4(
            proto,
            &payload[l4_start..],
            fragment == Fragment::Whole,
            false,
        )?,
    };
    Ok(IpInfo {
        src: IpAddr::V4(ip.src()),
        dst: IpAddr::V4(ip.dst()),
        proto,
        fragment,
        l4_offset: l3_offset + ip.header_len() + l4_start,
        l4,
    })
}

fn parse_ipv6(l3: &[u8], l3_offset: usize) -> Result<IpInfo, Malformed> {
    let ip = Ipv6Packet::new_checked(l3)?;
    let payload = ip.payload();
    let walk = walk_extension_headers(ip.next_header(), payload)?;
    let fragment = match walk.fragment {
        None => Fragment::Whole,
        Some(fragment) => {
            if !fragment.is_possible(payload.len().saturating_sub(fragment.data_offset)) {
                return Err(Malformed::BadFragment);
            }
            if fragment.is_atomic() {
                Fragment::Whole
            } else if fragment.offset == 0 {
                Fragment::First { id: fragment.ident }
            } else {
                Fragment::Later {
                    id: fragment.ident,
                    offset: fragment.offset,
                    more: fragment.more,
                }
            }
        }
    };
    let upper = payload.get(walk.upper_layer_offset..).unwrap_or(&[]);
    let l4 = match fragment {
        Fragment::Later { .. } => L4::Unparsed,
        Fragment::First { .. } => parse_l4(walk.upper_layer, upper, false, true)?,
        Fragment::Whole => parse_l4(walk.upper_layer, upper, true, true)?,
    };
    Ok(IpInfo {
        src: IpAddr::V6(ip.src()),
        dst: IpAddr::V6(ip.dst()),
        proto: walk.upper_layer,
        fragment,
        l4_offset: l3_offset + ipv6::HEADER_LEN + walk.upper_layer_offset,
        l4,
    })
}

/// Summarizes the transport header at the start of `data`. `whole` says
/// `data` is the entire datagram (not a first fragment), so length fields
/// that cover the datagram can be checked against it.
fn parse_l4(proto: u8, data: &[u8], whole: bool, v6: bool) -> Result<L4, Malformed> {
    Ok(match proto {
        ip_proto::TCP => {
            let tcp = TcpSegment::new_checked(data)?;
            L4::Tcp {
                src_port: tcp.src_port(),
                dst_port: tcp.dst_port(),
                flags: tcp.flags(),
            }
        }
        ip_proto::UDP => {
            let udp = if whole {
                UdpDatagram::new_checked(data)?
            } else {
                UdpDatagram::new_checked_header(data)?
            };
            L4::Udp {
                src_port: udp.src_port(),
                dst_port: udp.dst_port(),
            }
        }
        ip_proto::GRE => {
            let gre = GrePacket::new_checked(data)?;
            L4::Gre {
                version: gre.version(),
                protocol: gre.protocol(),
                call_id: gre.call_id(),
            }
        }
        ip_proto::ESP => L4::Esp {
            spi: EspPacket::new_checked(data)?.spi(),
        },
        ip_proto::ICMP if !v6 => {
            let icmp = Icmpv4Packet::new_checked(data)?;
            let inner = icmp.original_datagram().and_then(quoted_ipv4_flow);
            L4::Icmp {
                icmp_type: icmp.msg_type(),
                code: icmp.code(),
                inner,
            }
        }
        ip_proto::ICMPV6 if v6 => {
            let icmp = Icmpv6Packet::new_checked(data)?;
            match icmp.target() {
                Some(target) => L4::Icmpv6Nd {
                    icmp_type: icmp.msg_type(),
                    target,
                },
                None => {
                    let inner = icmp.original_packet().and_then(quoted_ipv6_flow);
                    L4::Icmp {
                        icmp_type: icmp.msg_type(),
                        code: icmp.code(),
                        inner,
                    }
                }
            }
        }
        ip_proto::IGMP if !v6 => {
            let igmp = IgmpPacket::new_checked(data)?;
            L4::Igmp {
                igmp_type: igmp.msg_type(),
                group: igmp.group(),
            }
        }
        _ => L4::Unparsed,
    })
}

/// Reads the ports at the start of a quoted transport header, if the
/// protocol has ports and the quote reaches them.
fn quoted_ports(proto: u8, transport: &[u8]) -> (u16, u16) {
    match transport {
        [a, b, c, d, ..] if ip_proto::has_ports(proto) => {
            (u16::from_be_bytes([*a, *b]), u16::from_be_bytes([*c, *d]))
        }
        _ => (0, 0),
    }
}

fn quoted_ipv4_flow(quote: &[u8]) -> Option<InnerFlow> {
    let ip = Ipv4Packet::new_checked_header(quote).ok()?;
    let proto = ip.protocol();
    let (src_port, dst_port) = if ip.frag_offset() == 0 {
        quoted_ports(proto, ip.payload())
    } else {
        (0, 0)
    };
    Some(InnerFlow {
        src: IpAddr::V4(ip.src()),
        dst: IpAddr::V4(ip.dst()),
        proto,
        src_port,
        dst_port,
    })
}

fn quoted_ipv6_flow(quote: &[u8]) -> Option<InnerFlow> {
    let ip = Ipv6Packet::new_checked_header(quote).ok()?;
    let flow = InnerFlow {
        src: IpAddr::V6(ip.src()),
        dst: IpAddr::V6(ip.dst()),
        proto: ip.next_header(),
        src_port: 0,
        dst_port: 0,
    };
    let payload = ip.payload();
    let Ok(walk) = walk_extension_headers(ip.next_header(), payload) else {
        return Some(flow);
    };
    let later = walk.fragment.is_some_and(|fragment| fragment.offset != 0);
    let (src_port, dst_port) = if later {
        (0, 0)
    } else {
        quoted_ports(
            walk.upper_layer,
            payload.get(walk.upper_layer_offset..).unwrap_or(&[]),
        )
    };
    Some(InnerFlow {
        proto: walk.upper_layer,
        src_port,
        dst_port,
        ..flow
    })
}

// The summary must stay cheap to copy through a batch: about two cache
// lines (136 bytes on 64-bit targets today, most of it the two IP address
// pairs of an ICMP error).
const _: () = assert!(std::mem::size_of::<FrameInfo>() <= 144);

#[cfg(test)]
mod tests;
