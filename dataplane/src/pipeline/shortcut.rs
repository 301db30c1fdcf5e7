//! The shortcut: [`Dataplane`]'s judgement of a common frame.

use super::common::{common_fields, common_ipv4, CommonV4};
#[cfg(test)]
use super::compiled::NO_RULE;
use super::compiled::{hashed_owner, Path};
use super::{Dataplane, DropReason, Verdict, IKE_PORTS, PPTP_PORT};
use crate::descriptor::{FlowKey, Kind};
use crate::model::HostId;
use crate::wire::ip_proto;

/// An IPv4 address as the descriptor table stores it (IPv4-mapped IPv6).
#[inline(always)]
pub(super) fn mapped_v4(a: u32) -> [u8; 16] {
    ((0xffff_u128 << 32) | u128::from(a)).to_be_bytes()
}

/// [`flow_key`] of IPv4 addresses given as integers.
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
    /// [`Self::judge`] of a frame already counted in `frames` and
    /// `for_cluster` (the common case is cluster traffic, so the batch
    /// counts both once, and the rarer paths take them back).
    ///
    /// The hot path, on no state but the map, the foreign counts and the
    /// counters: a common UDP or TCP frame (see [`common_ipv4`]) to the
    /// first IPv4 VIP, under the multiple-host rule of the first port
    /// segment, whose verdict needs no descriptor: UDP (but IKE kept here,
    /// which notes a link), and TCP of a bucket another host owns in a
    /// group where this host tracks nothing foreign. It is inlined into
    /// the batch loop without a call; every other frame leaves through one
    /// out-of-line `cold_*` call, which judges it as before. The verdict
    /// is written to `out` where it is known, so that each constant
    /// verdict is one store.
    #[inline(always)]
    pub(super) fn judge_precounted(&mut self, frame: &[u8], now: u64, out: &mut Verdict) {
        // The common frame to a VIP skips the general parser; everything
        // else, and every malformed frame, takes it.
        let Some(header) = common_ipv4(frame) else {
            *out = self.cold_general(frame, now);
            return;
        };
        // One dispatch on the protocol; one copy of the verdict code per
        // protocol.
        // The destination as the frame carries it: the VIP compare needs no
        // byte swap.
        let h = header.0;
        let dst_wire = u32::from_ne_bytes([h[30], h[31], h[32], h[33]]);
        match header.0[23] {
            ip_proto::UDP => match CommonV4::udp(header) {
                Some(c) => self.judge_hot(c, dst_wire, true, frame, now, out),
                None => *out = self.cold_general(frame, now),
            },
            ip_proto::TCP => match CommonV4::tcp(header) {
                Some(c) => self.judge_hot(c, dst_wire, false, frame, now, out),
                None => *out = self.cold_general(frame, now),
            },
            _ => {
                *out = match CommonV4::gre_or_esp(frame, header) {
                    Some(c) => self.cold_link(c, frame, now),
                    None => self.cold_general(frame, now),
                }
            }
        }
    }

    /// [`Self::judge_common`] for a precounted frame, with the first VIP's
    /// first port segment and a hashed rule inline (see
    /// [`Self::judge_precounted`]).
    #[inline(always)]
    fn judge_hot(
        &mut self,
        c: CommonV4,
        dst_wire: u32,
        udp: bool,
        frame: &[u8],
        now: u64,
        out: &mut Verdict,
    ) {
        // `FastV4::vip` and `VipV4::segment`, their first answers only.
        let seg = &self.fast.first.first[usize::from(udp)];
        let hashed = match &seg.hashed {
            Some(h) if dst_wire == self.fast.first_addr_wire && c.dst_port <= seg.end => h,
            _ => {
                *out = self.cold_common(udp, frame, now);
                return;
            }
        };
        let (b, owner) = hashed_owner(self.fast.seed, hashed, c.src, c.src_port);
        if owner == self.fast.local {
            // `judge_udp_v4`'s keep, but IKE's (it notes a link).
            if udp && !IKE_PORTS.contains(&c.dst_port) {
                self.counters.kept += 1;
                *out = Verdict::Keep;
                return;
            }
        } else if udp || (self.skips_probe() && !self.tracks_foreign(seg.rule as usize, b)) {
            // `counted_elsewhere`, as `judge_udp_v4` and `judge_tcp_v4`
            // reach it.
            if HostId::new(owner).is_some() {
                self.counters.dropped[0] += 1;
                *out = Verdict::Drop(DropReason::NotOwner);
            } else {
                self.counters.dropped[3] += 1;
                *out = Verdict::Drop(DropReason::NoOwner);
            }
            return;
        }
        *out = if udp {
            self.cold_common(udp, frame, now)
        } else {
            self.cold_tcp(seg.rule, b, owner, frame, now)
        };
    }

    /// Takes back the precount of [`Self::judge_precounted`].
    #[inline(always)]
    fn uncount(&mut self) {
        self.counters.frames -= 1;
        self.counters.for_cluster -= 1;
    }

    /// A precounted frame for the general parser.
    #[inline(always)]
    fn cold_general(&mut self, frame: &[u8], now: u64) -> Verdict {
        self.uncount();
        self.judge_general(frame, now)
    }

    /// A precounted common TCP (or, when `udp`, UDP) frame through
    /// [`Self::judge_common`]. Out of line, as are the other `cold_*`: the
    /// descriptor steps do not crowd the hot path's registers. Takes the
    /// frame, not what was read of it, so that the hot path keeps nothing
    /// for it.
    #[inline(never)]
    fn cold_common(&mut self, udp: bool, frame: &[u8], now: u64) -> Verdict {
        self.uncount();
        let Some(c) = common_fields(frame, udp) else {
            return self.judge_general(frame, now);
        };
        match self.judge_common(c, udp, now) {
            Some(v) => v,
            None => self.judge_general(frame, now),
        }
    }

    /// A precounted common GRE or ESP frame through
    /// [`Self::judge_common_link`].
    #[inline(never)]
    fn cold_link(&mut self, c: CommonV4, frame: &[u8], now: u64) -> Verdict {
        self.uncount();
        match self.judge_common_link(c, now) {
            Some(v) => v,
            None => self.judge_general(frame, now),
        }
    }

    /// A precounted common TCP segment to a VIP under hashed rule `rule`,
    /// in bucket `b` owned by `owner`: [`Self::judge_tcp_v4`] (which
    /// counts `frames`; `for_cluster` stays counted, as
    /// [`Self::judge_common`] counts it).
    #[inline(never)]
    fn cold_tcp(&mut self, rule: u32, b: u32, owner: u8, frame: &[u8], now: u64) -> Verdict {
        let Some(c) = common_fields(frame, false) else {
            // (Not reached: the hot path read this frame as common TCP.)
            return self.cold_general(frame, now);
        };
        self.counters.frames -= 1;
        self.judge_tcp_v4(rule as usize, b, owner, c, now)
    }

    /// [`Self::judge_ip`] for a common GRE or ESP frame, if it is to a VIP;
    /// counted.
    #[inline(always)]
    fn judge_common_link(&mut self, c: CommonV4, now: u64) -> Option<Verdict> {
        self.fast.vip(c.dst)?;
        self.counters.for_cluster += 1;
        let kind = if c.proto == ip_proto::GRE {
            Kind::GreLink
        } else {
            Kind::EspLink
        };
        Some(self.judge_link_v4(kind, c, now))
    }

    /// [`Self::judge_ip`] for a common TCP (or, when `udp`, UDP) frame (see
    /// [`common_v4`]), if it is to a VIP: the same steps on integers,
    /// without building a [`FrameInfo`], an `IpAddr` or a [`Flow`]. The
    /// verdict comes back counted (where it is known, counting folds to
    /// one increment).
    #[inline(always)]
    fn judge_common(&mut self, c: CommonV4, udp: bool, now: u64) -> Option<Verdict> {
        let seg = self.fast.vip(c.dst)?.segment(c.dst_port, udp);
        let r = seg.rule as usize;
        self.counters.for_cluster += 1;
        // The bucket and its owner, or a verdict without one.
        let (b, owner) = if let Some(hashed) = &seg.hashed {
            hashed_owner(self.fast.seed, hashed, c.src, c.src_port)
        } else {
            match seg.path {
                Path::Fixed(h) => (0, h),
                Path::Disabled => {
                    return Some(self.counted(Verdict::Drop(DropReason::RuleDisabled)));
                }
                Path::General if udp => {
                    let v = self.judge_udp_rule(r, c.flow(), now);
                    return Some(self.counted(v));
                }
                Path::General => {
                    let v = self.judge_tcp_rule(r, c.flow(), c.flags, now);
                    return Some(self.counted(v));
                }
                // (`Hashed` has `hashed`, so is not here.)
                Path::NoRule | Path::Hashed => {
                    let v = self.default_host_verdict();
                    return Some(self.counted(v));
                }
            }
        };
        Some(if udp {
            self.judge_udp_v4(owner, c, now)
        } else {
            self.judge_tcp_v4(r, b, owner, c, now)
        })
    }

    /// Counts `v` and returns it.
    #[inline(always)]
    fn counted(&mut self, v: Verdict) -> Verdict {
        self.counters.count(v);
        v
    }

    /// [`owner_verdict`] for an owner other than the local host, counted.
    #[inline(always)]
    fn counted_elsewhere(&mut self, owner: u8) -> Verdict {
        if HostId::new(owner).is_some() {
            self.counted(Verdict::Drop(DropReason::NotOwner))
        } else {
            self.counted(Verdict::Drop(DropReason::NoOwner))
        }
    }

    /// [`Self::judge_udp_rule`] for a common frame under an enabled rule
    /// without extended affinity, whose bucket's owner is `owner`; counted.
    #[inline(always)]
    fn judge_udp_v4(&mut self, owner: u8, c: CommonV4, now: u64) -> Verdict {
        if owner != self.fast.local {
            return self.counted_elsewhere(owner);
        }
        // `note_link` notes IKE only.
        if IKE_PORTS.contains(&c.dst_port) {
            self.note_link(c.flow(), now);
        }
        self.counted(Verdict::Keep)
    }

    /// [`Self::judge_tcp_rule`] for a common frame under enabled rule `r`,
    /// in bucket `b` whose owner is `owner`; counted.
    #[inline(always)]
    fn judge_tcp_v4(&mut self, r: usize, b: u32, owner: u8, c: CommonV4, now: u64) -> Verdict {
        if owner != self.fast.local && self.skips_probe() && !self.tracks_foreign(r, b) {
            return self.counted_elsewhere(owner);
        }
        let key = flow_key_v4(Kind::Tcp, c.src, c.dst, c.src_port, c.dst_port);
        let verdict = self.judge_tcp_keyed(r, b, owner, key, c.flags, now);
        // `note_link` notes PPTP only.
        if verdict == Verdict::Keep && c.dst_port == PPTP_PORT {
            self.note_link(c.flow(), now);
        }
        self.counted(verdict)
    }

    /// [`Self::judge_link`] for a common frame; counted.
    #[inline(always)]
    fn judge_link_v4(&mut self, kind: Kind, c: CommonV4, now: u64) -> Verdict {
        let key = flow_key_v4(kind, c.src, c.dst, 0, 0);
        let v = self.link_verdict(kind, &key, now);
        self.counted(v)
    }

    /// Whether a TCP segment of a bucket this host does not own, in a
    /// group where it tracks nothing foreign, may skip the table probe:
    /// while every entry's bucket was computed under this map's seed and
    /// prefix (see `buckets_under`).
    #[inline(always)]
    pub(super) fn skips_probe(&self) -> bool {
        self.skip_probe
    }

    /// [`DescriptorTable::tracks_foreign`], with the usual answer (no
    /// foreign entry at all) first.
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
