//! The shortcut: [`Dataplane`]'s judgement of a common frame (see
//! `common.rs`) on integers, against the compiled map (see `compiled.rs`).
//!
//! # Contract
//!
//! * Each frame is read once: the common-frame reader accepts it and hands
//!   on a checked [`CommonV4`] view, from which every later step reads its
//!   fields at fixed offsets, or declines it and the general parser
//!   ([`Dataplane::judge_general`]) reads it. A frame the reader accepts is
//!   never handed to the general parser: one to no VIP is judged from its
//!   destination MAC, as the general path judges it.
//! * Each frame is counted once, at its verdict: the entry of each exit
//!   (the hot path's constant verdicts, each `cold_*` step,
//!   [`Dataplane::judge_general`]) counts; the steps under them return
//!   verdicts and count none.
//! * Verdicts, descriptor state and counters are those of the general path
//!   (the property tests in `tests.rs`).

use super::common::{common_ipv4, CommonHeader, CommonV4};
#[cfg(test)]
use super::compiled::NO_RULE;
use super::compiled::{hashed_owner, Path};
use super::general::owner_verdict;
use super::{Dataplane, DropReason, Verdict, IKE_PORTS, PPTP_PORT};
use crate::descriptor::{FlowKey, Kind};
use crate::model::HostId;
use crate::wire::ip_proto;

/// An IPv4 address as the descriptor table stores it (IPv4-mapped IPv6).
#[inline(always)]
pub(super) fn mapped_v4(a: u32) -> [u8; 16] {
    ((0xffff_u128 << 32) | u128::from(a)).to_be_bytes()
}

/// [`flow_key`](super::general::flow_key) of IPv4 addresses given as
/// integers.
#[inline(always)]
pub(super) fn flow_key_v4(
    kind: Kind,
    client: u32,
    vip: u32,
    client_port: u16,
    server_port: u16,
) -> FlowKey {
    FlowKey {
        client: mapped_v4(client),
        server: mapped_v4(vip),
        client_port,
        server_port,
        kind: kind as u8,
        v4: true,
    }
}

impl Dataplane {
    /// Judges one frame into `out` and counts its verdict, once (see the
    /// module contract).
    ///
    /// The hot path, on no state but the map, the foreign counts and the
    /// counters: a common UDP or TCP frame to the first IPv4 VIP, under the
    /// multiple-host rule of the first port segment, whose verdict needs no
    /// descriptor: UDP (but IKE kept here, which notes a link), and TCP of
    /// a bucket another host owns in a group where this host tracks nothing
    /// foreign. It is inlined into the batch loop without a call; every
    /// other frame leaves through one out-of-line call (`cold_*` or
    /// [`Self::judge_general`]). The verdict is written to `out` where it is
    /// known, so that each constant verdict is one store and its count one
    /// increment.
    #[inline(always)]
    pub(super) fn judge_into(&mut self, frame: &[u8], now: u64, out: &mut Verdict) {
        let Some(header) = common_ipv4(frame) else {
            *out = self.judge_general(frame, now);
            return;
        };
        // One dispatch on the protocol; one copy of the verdict code per
        // protocol.
        match header.0[23] {
            ip_proto::UDP => match CommonV4::udp(header) {
                Some(c) => self.judge_hot(c, true, now, out),
                None => *out = self.judge_general(frame, now),
            },
            ip_proto::TCP => match CommonV4::tcp(header) {
                Some(c) => self.judge_hot(c, false, now, out),
                None => *out = self.judge_general(frame, now),
            },
            _ => *out = self.cold_link(frame, header, now),
        }
    }

    /// [`Self::cold_common`] with the first VIP's first port segment and a
    /// hashed rule inline (see [`Self::judge_into`]).
    #[inline(always)]
    fn judge_hot(&mut self, c: CommonV4<'_>, udp: bool, now: u64, out: &mut Verdict) {
        // `FastV4::vip` and `VipV4::segment`, their first answers only; the
        // destination compared as the frame carries it, with no byte swap.
        let seg = &self.fast.first.first[usize::from(udp)];
        let hashed = match &seg.hashed {
            Some(hashed)
                if c.dst_wire() == self.fast.first_addr_wire && c.dst_port() <= seg.end =>
            {
                hashed
            }
            _ => {
                *out = self.cold_common(c, udp, now);
                return;
            }
        };
        let (b, owner) = hashed_owner(self.fast.seed, hashed, c.src(), c.src_port());
        if owner == self.fast.local {
            // `judge_udp_v4`'s keep, but IKE's (it notes a link).
            if udp && !IKE_PORTS.contains(&c.dst_port()) {
                *out = self.counted(Verdict::Keep);
                return;
            }
        } else if udp || (self.skips_probe() && !self.tracks_foreign(seg.rule as usize, b)) {
            // `owner_verdict` for another host, as `judge_udp_v4` and
            // `judge_tcp_v4` reach it.
            if HostId::new(owner).is_some() {
                *out = self.counted(Verdict::Drop(DropReason::NotOwner));
            } else {
                *out = self.counted(Verdict::Drop(DropReason::NoOwner));
            }
            return;
        }
        *out = if udp {
            self.cold_common(c, udp, now)
        } else {
            self.cold_tcp(seg.rule, b, owner, c, now)
        };
    }

    /// A common TCP (or, when `udp`, UDP) frame through
    /// [`Self::judge_common`]; counted. Out of line, as are the other
    /// `cold_*`: the descriptor steps do not crowd the hot path's
    /// registers.
    #[inline(never)]
    fn cold_common(&mut self, c: CommonV4<'_>, udp: bool, now: u64) -> Verdict {
        let v = match self.judge_common(c, udp, now) {
            Some(v) => v,
            None => self.foreign_verdict(c.dst_mac()),
        };
        self.counted(v)
    }

    /// A frame [`common_ipv4`] accepted, neither TCP nor UDP: the rest of
    /// the reader, then a common GRE or ESP frame through
    /// [`Self::judge_common_link`] (counted), any other frame through the
    /// general parser. (The reader's GRE step is out of the batch loop.)
    #[inline(never)]
    fn cold_link(&mut self, frame: &[u8], header: CommonHeader<'_>, now: u64) -> Verdict {
        let Some(c) = CommonV4::gre_or_esp(frame, header) else {
            return self.judge_general(frame, now);
        };
        let v = match self.judge_common_link(c, now) {
            Some(v) => v,
            None => self.foreign_verdict(c.dst_mac()),
        };
        self.counted(v)
    }

    /// A common TCP segment `c` to the first VIP under hashed rule `rule`,
    /// in bucket `b` owned by `owner`: [`Self::judge_tcp_v4`]; counted.
    #[inline(never)]
    fn cold_tcp(&mut self, rule: u32, b: u32, owner: u8, c: CommonV4<'_>, now: u64) -> Verdict {
        let v = self.judge_tcp_v4(rule as usize, b, owner, c, now);
        self.counted(v)
    }

    /// [`Self::judge_ip`] for a common GRE or ESP frame, if it is to a VIP.
    #[inline(always)]
    fn judge_common_link(&mut self, c: CommonV4<'_>, now: u64) -> Option<Verdict> {
        self.fast.vip(c.dst())?;
        let kind = if c.proto() == ip_proto::GRE {
            Kind::GreLink
        } else {
            Kind::EspLink
        };
        let key = flow_key_v4(kind, c.src(), c.dst(), 0, 0);
        Some(self.link_verdict(kind, &key, now))
    }

    /// [`Self::judge_ip`] for a common TCP (or, when `udp`, UDP) frame, if
    /// it is to a VIP: the same steps on integers, without building a
    /// [`FrameInfo`](crate::packet::FrameInfo), an `IpAddr` or a
    /// [`Flow`](super::general::Flow) (but for the rules the compiled map
    /// leaves to the general functions).
    #[inline(always)]
    fn judge_common(&mut self, c: CommonV4<'_>, udp: bool, now: u64) -> Option<Verdict> {
        let seg = self.fast.vip(c.dst())?.segment(c.dst_port(), udp);
        let r = seg.rule as usize;
        // The bucket and its owner, or a verdict without one.
        let (b, owner) = if let Some(hashed) = &seg.hashed {
            hashed_owner(self.fast.seed, hashed, c.src(), c.src_port())
        } else {
            match seg.path {
                Path::Fixed(h) => (0, h),
                Path::Disabled => return Some(Verdict::Drop(DropReason::RuleDisabled)),
                Path::General if udp => return Some(self.judge_udp_rule(r, c.flow(), now)),
                Path::General => return Some(self.judge_tcp_rule(r, c.flow(), c.flags(), now)),
                // (`Hashed` has `hashed`, so is not here.)
                Path::NoRule | Path::Hashed => return Some(self.default_host_verdict()),
            }
        };
        Some(if udp {
            self.judge_udp_v4(owner, c, now)
        } else {
            self.judge_tcp_v4(r, b, owner, c, now)
        })
    }

    /// Counts `v`, the verdict of one frame, and returns it. (With `v`
    /// known, counting folds to one increment.)
    #[inline(always)]
    fn counted(&mut self, v: Verdict) -> Verdict {
        self.counters.count(v);
        v
    }

    /// [`Self::judge_udp_rule`] for a common frame under an enabled rule
    /// without extended affinity, whose bucket's owner is `owner`.
    #[inline(always)]
    fn judge_udp_v4(&mut self, owner: u8, c: CommonV4<'_>, now: u64) -> Verdict {
        if owner != self.fast.local {
            return owner_verdict(owner, self.fast.local);
        }
        // `note_link` notes IKE only.
        if IKE_PORTS.contains(&c.dst_port()) {
            self.note_link(c.flow(), now);
        }
        Verdict::Keep
    }

    /// [`Self::judge_tcp_rule`] for a common frame under enabled rule `r`,
    /// in bucket `b` whose owner is `owner`.
    #[inline(always)]
    fn judge_tcp_v4(&mut self, r: usize, b: u32, owner: u8, c: CommonV4<'_>, now: u64) -> Verdict {
        if owner != self.fast.local && self.skips_probe() && !self.tracks_foreign(r, b) {
            return owner_verdict(owner, self.fast.local);
        }
        let key = flow_key_v4(Kind::Tcp, c.src(), c.dst(), c.src_port(), c.dst_port());
        let verdict = self.judge_tcp_keyed(r, b, owner, key, c.flags(), now);
        // `note_link` notes PPTP only.
        if verdict == Verdict::Keep && c.dst_port() == PPTP_PORT {
            self.note_link(c.flow(), now);
        }
        verdict
    }

    /// Whether a TCP segment of a bucket this host does not own, in a
    /// group where it tracks nothing foreign, may skip the table probe:
    /// while every entry's bucket was computed under this map's seed and
    /// prefix (see `buckets_under`).
    #[inline(always)]
    pub(super) fn skips_probe(&self) -> bool {
        self.skip_probe
    }

    /// [`DescriptorTable::tracks_foreign`](crate::descriptor::DescriptorTable::tracks_foreign),
    /// with the usual answer (no foreign entry at all) first.
    #[inline(always)]
    pub(super) fn tracks_foreign(&self, r: usize, b: u32) -> bool {
        self.table.foreign_len() != 0 && self.table.tracks_foreign(r, b)
    }

    /// [`ClusterMap::rule_for`] for an IPv4 VIP of the map and TCP (6) or
    /// UDP (17), through the segments the common frame uses.
    #[cfg(test)]
    pub(super) fn rule_v4(&self, vip: u32, port: u16, proto: u8) -> Option<usize> {
        let r = self.fast.vip(vip)?.rule(port, proto == 17);
        (r != NO_RULE).then_some(r as usize)
    }
}
