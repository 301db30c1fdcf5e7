//! The heartbeat codec: one authenticated Ethernet frame per host per period.
//!
//! # What this module owns
//!
//! The wire format of shoal's heartbeat, its owned representation
//! [`Heartbeat`], encoding into a caller's buffer, decoding with
//! authentication, and the per-host replay guard [`ReplayGuard`]. It holds no
//! protocol logic: what the fields mean to membership and convergence is
//! documented in [`crate::membership`] and [`crate::convergence`].
//!
//! # Frame
//!
//! ```text
//! Ethernet: dst ff:ff:ff:ff:ff:ff, src = masked source MAC 02-<host>-w-x-y-z,
//!           EtherType 0x886F (one or two 802.1Q/802.1ad tags accepted on decode)
//! payload (all integers big-endian):
//!   off len field
//!     0   2 magic 0x5348 ("SH")
//!     2   1 version (2)
//!     3   1 flags (0; reserved)
//!     4   2 payload length, tag included
//!     6   2 reserved (0)
//!     8   8 cluster id (hash of the VIP set, see [`cluster_id`])
//!    16   1 host ID (1..=64)
//!    17   1 state (converging 1, converged 2, draining 3, stopped 4, suspended 5)
//!    18   1 phase (idle 0, stable 1, agreeing 2, releasing 3)
//!    19   1 rule count (0..=32)
//!    20   8 boot counter (grows with every start of the host, kept across
//!           restarts; see [`crate::membership`])
//!    28   8 sequence number (per boot)
//!    36   8 send time: the sender's heartbeat clock, wall-clock ns
//!    44   4 base period, µs
//!    48   4 period in use, µs (halved while converging)
//!    52   8 hears: hosts the sender hears (64-bit bitmap, bit id-1)
//!    60   8 proposed: members of the view it proposes
//!    68   8 proposal digest
//!    76   8 adopted: members of the view it has adopted
//!    84   8 adopted epoch
//!    92   8 adopted digest
//!   100   8 bound: digest of the view that bounds the buckets it takes new
//!           connections in (0: it takes none)
//!   108   8 rule fingerprint (rules without weights, see [`rule_fingerprint`])
//!   116  32 load weight per rule (0 while draining or disabled)
//!   148   4 disabled rules (bit per rule)
//!   152   4 draining rules (bit per rule)
//!   156   2 dirty generation
//!   158   1 dirty page index
//!   159   1 dirty page total (1..)
//!   160   4 dirty rules: rules with any dirty group in this generation
//!   164   1 dirty flags (bit 0: this generation is a subset of the previous)
//!   165   1 dirty section count on this page
//!   166   .. sections: rule u8, format u8 (0 list, 1 bitmap), count u16,
//!           then count × u16 group numbers (list) or 512 bytes (bitmap)
//!   end-16 16 HMAC-SHA256(cluster key, payload[..end-16]) truncated to 16
//! ```
//!
//! # Byte budget
//!
//! The fixed part is [`FIXED_PAYLOAD`] = 182 bytes (166 of fields, 16 of tag),
//! so a frame without dirty groups is 196 bytes and fits any link, whatever
//! the host count (members travel as 64-bit bitmaps) and rule count (weights
//! and flags have a slot for each of the 32 rules). A standard 1500-byte
//! payload leaves [`DIRTY_BUDGET`] = 1318 bytes for dirty groups: a rule's
//! dirty groups travel as a sparse list (4 + 2n bytes) or, when denser than
//! 254 groups, as a 4096-bit bitmap (516 bytes), whichever is smaller. That
//! is up to 657 sparse groups, or two dense rules, per frame. When a
//! host's dirty set does not fit, [`DirtyPager`] splits it into pages sent
//! on successive heartbeats with a generation, a page index and a total; a
//! receiver ([`crate::membership`]) treats every rule named in the
//! generation's rule mask as dirty everywhere until it holds every page of
//! that generation. The worst case (32 dense rules) takes 16 pages.
//!
//! # Checks, cheapest first
//!
//! [`Heartbeat::decode`] refuses a frame at the first check it fails, and
//! every check that needs no key comes before the HMAC: EtherType, magic,
//! version, cluster id, declared length against the frame, then the host
//! ID (1..=64), state, phase and rule count. Only a frame that passes them
//! all costs an HMAC, and only a frame that fails nothing but the HMAC is
//! [`HeartbeatError::BadMac`] (what the lone-host guard, [`crate::lone`],
//! listens for). Each check has its own error, so receivers count which
//! one refused the frame.
//!
//! # Authentication and replay
//!
//! The tag is HMAC-SHA256 over the whole payload before it, keyed with the
//! 32-byte cluster key, truncated to 16 bytes and compared in constant time.
//! No field past the cheap header checks is interpreted before it verifies.
//! Replays are refused by [`ReplayGuard`]: receivers keep the highest boot
//! counter and its last sequence number per host and accept only strictly
//! newer pairs; the send time bounds how long any frame stays usable at
//! all (see [`crate::membership`]).
//!
//! Decoding never panics and never allocates more than the frame's own
//! dirty sections; every failure is a typed [`HeartbeatError`].

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

use hmac::{Hmac, Mac as _};
use sha2::{Digest, Sha256};
use shoal_dataplane::bucket::GROUPS;
use shoal_dataplane::mac::{masked_source_mac, Mac};
use shoal_dataplane::map::GroupBits;
use shoal_dataplane::wire::ethertype;
use shoal_dataplane::{ClusterSpec, FilterMode, HostId, HostSet, PortRule, Protocol, MAX_RULES};

/// First two payload bytes.
pub const MAGIC: u16 = 0x5348;
/// The payload version this module writes and reads.
pub const VERSION: u8 = 2;
/// Ethernet header length (untagged).
pub const ETH_HEADER: usize = 14;
/// Largest payload: a standard 1500-byte MTU.
pub const MAX_PAYLOAD: usize = 1500;
/// Largest frame this module writes or accepts (without tags).
pub const MAX_FRAME: usize = ETH_HEADER + MAX_PAYLOAD;
/// Length of the truncated HMAC tag.
pub const TAG_LEN: usize = 16;
/// Offset of the first dirty section in the payload.
const SECTIONS: usize = 166;
/// Payload bytes without any dirty section, tag included.
pub const FIXED_PAYLOAD: usize = SECTIONS + TAG_LEN;
/// Payload bytes left for dirty sections in one frame.
pub const DIRTY_BUDGET: usize = MAX_PAYLOAD - FIXED_PAYLOAD;
/// Bytes of a dirty-groups bitmap (one bit per group).
pub const BITMAP_BYTES: usize = GROUPS / 8;
/// Header bytes of one dirty section.
const SECTION_HEADER: usize = 4;

type HmacSha256 = Hmac<Sha256>;

/// Why a frame was not accepted as a heartbeat.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HeartbeatError {
    /// Shorter than its headers or than its declared length.
    #[error("heartbeat truncated")]
    Truncated,
    /// Longer than a standard 1500-byte payload.
    #[error("heartbeat larger than a 1500-byte payload")]
    Oversized,
    /// Not EtherType 0x886F.
    #[error("not a heartbeat EtherType")]
    NotHeartbeat,
    /// Magic bytes differ.
    #[error("bad heartbeat magic")]
    BadMagic,
    /// A payload version this build does not speak.
    #[error("unsupported heartbeat version {0}")]
    BadVersion(u8),
    /// Another cluster's heartbeat (different VIP set).
    #[error("heartbeat of another cluster")]
    WrongCluster,
    /// A header field checked before the tag holds an impossible value
    /// (host ID outside 1..=64, unknown state or phase, more than 32 rules).
    #[error("bad heartbeat header: {0}")]
    BadHeader(&'static str),
    /// The tag does not verify under the cluster key: forged, corrupted or
    /// sent with another key.
    #[error("heartbeat authentication failed")]
    BadMac,
    /// Authenticated but structurally invalid.
    #[error("malformed heartbeat: {0}")]
    Malformed(&'static str),
    /// Not newer than the last `(boot, seq)` accepted from that host, or
    /// from a lower boot counter than the highest accepted from it.
    #[error("replayed heartbeat")]
    Replayed,
    /// Its send time lies further in the past than the clock skew allows.
    #[error("stale heartbeat (send time too far in the past)")]
    Stale,
    /// Its send time lies further in the future than the clock skew allows.
    #[error("heartbeat from the future (send time too far ahead)")]
    Future,
    /// The buffer given to the encoder is too small.
    #[error("buffer too small for the heartbeat")]
    BufferTooSmall,
}

impl HeartbeatError {
    /// A stable snake_case name for counters.
    pub fn name(self) -> &'static str {
        match self {
            HeartbeatError::Truncated => "truncated",
            HeartbeatError::Oversized => "oversized",
            HeartbeatError::NotHeartbeat => "not_heartbeat",
            HeartbeatError::BadMagic => "bad_magic",
            HeartbeatError::BadVersion(_) => "bad_version",
            HeartbeatError::WrongCluster => "wrong_cluster",
            HeartbeatError::BadHeader(_) => "bad_header",
            HeartbeatError::BadMac => "bad_mac",
            HeartbeatError::Malformed(_) => "malformed",
            HeartbeatError::Replayed => "replayed",
            HeartbeatError::Stale => "stale",
            HeartbeatError::Future => "future",
            HeartbeatError::BufferTooSmall => "buffer_too_small",
        }
    }
}

/// A host's administrative and convergence state, as NLB reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HostState {
    /// Taking part, and the cluster has not agreed on its view yet.
    Converging = 1,
    /// Taking part in an agreed, adopted view.
    Converged = 2,
    /// Taking part with weight 0 everywhere until its connections end.
    Draining = 3,
    /// Not taking part (`stop`, or a finished drain).
    Stopped = 4,
    /// Stopped and ignoring every verb but `resume` and `query`.
    Suspended = 5,
}

impl HostState {
    fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => HostState::Converging,
            2 => HostState::Converged,
            3 => HostState::Draining,
            4 => HostState::Stopped,
            5 => HostState::Suspended,
            _ => return None,
        })
    }

    /// Whether a host in this state is a member candidate (takes part in views).
    pub fn participates(self) -> bool {
        matches!(
            self,
            HostState::Converging | HostState::Converged | HostState::Draining
        )
    }
}

/// Where a host is in the convergence protocol (see [`crate::convergence`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Takes no new connections anywhere (starting, excluded, stopped).
    Idle = 0,
    /// Its adopted view is the one it proposes.
    Stable = 1,
    /// Proposes a view other than its adopted one and waits for agreement.
    Agreeing = 2,
    /// Agreed on a new view and takes new connections only where the old and
    /// new views both give it the bucket; waits for every host to do so.
    Releasing = 3,
}

impl Phase {
    fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            0 => Phase::Idle,
            1 => Phase::Stable,
            2 => Phase::Agreeing,
            3 => Phase::Releasing,
            _ => return None,
        })
    }
}

/// How one rule's dirty groups travel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DirtySection {
    /// A sparse list of group numbers.
    List(Vec<u16>),
    /// A bitmap of [`GROUPS`] bits, group `g` at bit `g % 8` of byte `g / 8`.
    Bitmap(Box<[u8; BITMAP_BYTES]>),
}

impl DirtySection {
    /// Encoded bytes, header included.
    pub fn encoded_len(&self) -> usize {
        SECTION_HEADER
            + match self {
                DirtySection::List(l) => 2 * l.len(),
                DirtySection::Bitmap(_) => BITMAP_BYTES,
            }
    }

    /// The smaller encoding of `groups`.
    pub fn from_groups(groups: &GroupBits) -> Self {
        let n = groups.count();
        if 2 * n <= BITMAP_BYTES {
            DirtySection::List(groups.iter().map(|g| g as u16).collect())
        } else {
            let mut b = Box::new([0u8; BITMAP_BYTES]);
            for g in groups.iter() {
                b[g as usize / 8] |= 1 << (g % 8);
            }
            DirtySection::Bitmap(b)
        }
    }

    /// Adds the section's groups to `into`.
    pub fn add_to(&self, into: &mut GroupBits) {
        match self {
            DirtySection::List(l) => l.iter().for_each(|&g| into.insert(g as u32)),
            DirtySection::Bitmap(b) => {
                for (i, &byte) in b.iter().enumerate() {
                    for bit in 0..8 {
                        if byte & (1 << bit) != 0 {
                            into.insert((i * 8 + bit) as u32);
                        }
                    }
                }
            }
        }
    }
}

/// One page of a host's dirty groups.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct DirtyPage {
    /// Generation: changes whenever the sender's dirty set is re-snapshotted.
    pub generation: u16,
    /// This page's index, `< pages`.
    pub page: u8,
    /// Pages in the generation (at least 1).
    pub pages: u8,
    /// Rules with any dirty group in the generation (bit per rule).
    pub rules: u32,
    /// Whether the generation's set is a subset of the previous generation's.
    pub subset_of_previous: bool,
    /// This page's sections: `(rule, groups)`.
    pub sections: Vec<(u8, DirtySection)>,
}

/// One heartbeat, as sent by one host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Heartbeat {
    /// The sender.
    pub host: HostId,
    /// Its state.
    pub state: HostState,
    /// Its convergence phase.
    pub phase: Phase,
    /// Rules in its spec.
    pub rule_count: u8,
    /// Boot counter: grows with every start of the sender, kept across
    /// its restarts.
    pub boot: u64,
    /// Sequence number within the boot, increasing by one per heartbeat.
    pub seq: u64,
    /// When it was sent: the sender's heartbeat clock, wall-clock ns.
    pub sent: u64,
    /// The sender's configured period, µs.
    pub base_period_us: u32,
    /// The period it uses now, µs.
    pub period_us: u32,
    /// Hosts it hears.
    pub hears: HostSet,
    /// Members of the view it proposes.
    pub proposed: HostSet,
    /// Digest of the view it proposes.
    pub proposal_digest: u64,
    /// Members of the view it has adopted.
    pub adopted: HostSet,
    /// Epoch of that view.
    pub adopted_epoch: u64,
    /// Digest of that view (0: none).
    pub adopted_digest: u64,
    /// Digest of the view bounding its new connections (0: takes none).
    pub bound: u64,
    /// Fingerprint of its port rules.
    pub fingerprint: u64,
    /// Its load weight per rule.
    pub weights: [u8; MAX_RULES],
    /// Rules disabled on it.
    pub disabled: u32,
    /// Rules draining on it.
    pub draining: u32,
    /// A page of its dirty groups.
    pub dirty: DirtyPage,
}

/// The cluster's shared secrets and identity, for encoding and decoding.
#[derive(Clone)]
pub struct ClusterAuth {
    key: [u8; 32],
    cluster_id: u64,
    primary_vip: Ipv4Addr,
}

impl fmt::Debug for ClusterAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterAuth")
            .field("cluster_id", &format_args!("{:016x}", self.cluster_id))
            .field("key", &"<redacted>")
            .finish()
    }
}

impl ClusterAuth {
    /// Auth for the cluster named by `spec`'s VIPs, keyed with `key`.
    pub fn new(key: [u8; 32], spec: &ClusterSpec) -> Self {
        let primary_vip = spec
            .vips
            .iter()
            .find_map(|v| match v {
                IpAddr::V4(a) => Some(*a),
                IpAddr::V6(_) => None,
            })
            .unwrap_or(Ipv4Addr::UNSPECIFIED);
        Self {
            key,
            cluster_id: cluster_id(&spec.vips),
            primary_vip,
        }
    }

    /// The cluster id heartbeats carry.
    pub fn cluster_id(&self) -> u64 {
        self.cluster_id
    }

    fn tag(&self, data: &[u8]) -> [u8; 32] {
        // HMAC-SHA256 takes keys of every length (RFC 2104 hashes long
        // keys), so `new_from_slice` never fails; were it to, an all-zero
        // tag would simply be refused by every receiver.
        let Ok(mut mac) = <HmacSha256 as hmac::Mac>::new_from_slice(&self.key) else {
            return [0; 32];
        };
        mac.update(data);
        mac.finalize().into_bytes().into()
    }

    fn verify(&self, data: &[u8], tag: &[u8]) -> bool {
        let Ok(mut mac) = <HmacSha256 as hmac::Mac>::new_from_slice(&self.key) else {
            return false;
        };
        mac.update(data);
        // Constant-time comparison of the truncated tag.
        mac.verify_truncated_left(tag).is_ok()
    }
}

fn sha_u64(h: Sha256) -> u64 {
    let d = h.finalize();
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[..8]);
    u64::from_be_bytes(b)
}

/// The bucket hash's seed for a cluster keyed with `key`:
/// HMAC-SHA256(key, "shoal bucket seed v1"), its first 8 bytes big-endian.
///
/// Every host of a cluster holds the key, so every host (and an offline
/// tool given the key) computes the same seed and the same owner for every
/// flow; without the key, which host owns which client cannot be computed
/// from anything on the wire or in the configuration.
pub fn bucket_seed(key: &[u8; 32]) -> u64 {
    // HMAC-SHA256 takes keys of every length, so this never fails.
    let Ok(mut mac) = <HmacSha256 as hmac::Mac>::new_from_slice(key) else {
        return 0;
    };
    mac.update(b"shoal bucket seed v1");
    let tag = mac.finalize().into_bytes();
    let mut b = [0u8; 8];
    b.copy_from_slice(&tag[..8]);
    u64::from_be_bytes(b)
}

/// The cluster id: a hash of the VIP set (order does not matter).
pub fn cluster_id(vips: &[IpAddr]) -> u64 {
    let mut v: Vec<[u8; 17]> = vips
        .iter()
        .map(|ip| {
            let mut b = [0u8; 17];
            match ip {
                IpAddr::V4(a) => {
                    b[0] = 4;
                    b[1..5].copy_from_slice(&a.octets());
                }
                IpAddr::V6(a) => {
                    b[0] = 6;
                    b[1..].copy_from_slice(&a.octets());
                }
            }
            b
        })
        .collect();
    v.sort_unstable();
    v.dedup();
    let mut h = Sha256::new();
    h.update(b"shoal cluster id v1");
    for b in v {
        h.update(b);
    }
    sha_u64(h)
}

fn hash_rule(h: &mut Sha256, r: &PortRule) {
    match r.vip {
        None => h.update([0u8]),
        Some(IpAddr::V4(a)) => {
            h.update([4u8]);
            h.update(a.octets());
        }
        Some(IpAddr::V6(a)) => {
            h.update([6u8]);
            h.update(a.octets());
        }
    }
    h.update(r.port_start.to_be_bytes());
    h.update(r.port_end.to_be_bytes());
    h.update([match r.protocol {
        Protocol::Tcp => 1u8,
        Protocol::Udp => 2,
        Protocol::Both => 3,
    }]);
    let mode = match r.mode {
        FilterMode::Multiple { affinity } => 0x10 | affinity as u8,
        FilterMode::Single => 0x20,
        FilterMode::Disabled => 0x30,
    };
    h.update([mode]);
    h.update(r.priorities);
    h.update(r.extended_affinity_timeout_s.to_be_bytes());
}

/// Fingerprint of everything the hosts must share to compute the same maps:
/// VIPs, mode, IPv6 affinity prefix and the port rules *without* their
/// weights (weights differ per host and change at run time; they travel in
/// every heartbeat instead).
pub fn rule_fingerprint(spec: &ClusterSpec) -> u64 {
    let mut h = Sha256::new();
    h.update(b"shoal rules v1");
    h.update(cluster_id(&spec.vips).to_be_bytes());
    h.update([spec.mode as u8, spec.ipv6_network_prefix]);
    h.update((spec.rules.len() as u32).to_be_bytes());
    for r in &spec.rules {
        hash_rule(&mut h, r);
    }
    sha_u64(h)
}

/// A 64-bit digest of a byte string under a domain label (views, proposals).
pub(crate) fn digest64(label: &[u8], parts: &[&[u8]]) -> u64 {
    let mut h = Sha256::new();
    h.update(label);
    for p in parts {
        h.update((p.len() as u32).to_be_bytes());
        h.update(p);
    }
    // 0 means "none" on the wire.
    sha_u64(h).max(1)
}

struct Writer<'a> {
    buf: &'a mut [u8],
    at: usize,
}

impl Writer<'_> {
    fn put(&mut self, bytes: &[u8]) {
        self.buf[self.at..self.at + bytes.len()].copy_from_slice(bytes);
        self.at += bytes.len();
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], HeartbeatError> {
        let end = self.at.checked_add(n).ok_or(HeartbeatError::Truncated)?;
        let s = self
            .buf
            .get(self.at..end)
            .ok_or(HeartbeatError::Truncated)?;
        self.at = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, HeartbeatError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, HeartbeatError> {
        let s = self.take(2)?;
        Ok(u16::from_be_bytes([s[0], s[1]]))
    }
    fn u32(&mut self) -> Result<u32, HeartbeatError> {
        let s = self.take(4)?;
        Ok(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
    }
    fn u64(&mut self) -> Result<u64, HeartbeatError> {
        let s = self.take(8)?;
        let mut b = [0u8; 8];
        b.copy_from_slice(s);
        Ok(u64::from_be_bytes(b))
    }
}

impl Heartbeat {
    /// Payload bytes of this heartbeat, tag included.
    pub fn payload_len(&self) -> usize {
        FIXED_PAYLOAD
            + self
                .dirty
                .sections
                .iter()
                .map(|(_, s)| s.encoded_len())
                .sum::<usize>()
    }

    /// Frame bytes of this heartbeat.
    pub fn frame_len(&self) -> usize {
        ETH_HEADER + self.payload_len()
    }

    /// Writes the frame into `buf` and returns its length.
    ///
    /// # Errors
    /// [`HeartbeatError::Oversized`] when the dirty sections exceed
    /// [`DIRTY_BUDGET`] (use [`DirtyPager`]), [`HeartbeatError::BufferTooSmall`]
    /// when `buf` is shorter than [`Heartbeat::frame_len`].
    pub fn encode(&self, auth: &ClusterAuth, buf: &mut [u8]) -> Result<usize, HeartbeatError> {
        let payload = self.payload_len();
        if payload > MAX_PAYLOAD {
            return Err(HeartbeatError::Oversized);
        }
        let len = ETH_HEADER + payload;
        if buf.len() < len {
            return Err(HeartbeatError::BufferTooSmall);
        }
        let mut w = Writer {
            buf: &mut buf[..len],
            at: 0,
        };
        w.put(&Mac::BROADCAST.0);
        w.put(&masked_source_mac(self.host, auth.primary_vip).0);
        w.put(&ethertype::HEARTBEAT.to_be_bytes());
        w.put(&MAGIC.to_be_bytes());
        w.put(&[VERSION, 0]);
        w.put(&(payload as u16).to_be_bytes());
        w.put(&[0, 0]);
        w.put(&auth.cluster_id.to_be_bytes());
        w.put(&[
            self.host.get(),
            self.state as u8,
            self.phase as u8,
            self.rule_count,
        ]);
        for v in [self.boot, self.seq, self.sent] {
            w.put(&v.to_be_bytes());
        }
        w.put(&self.base_period_us.to_be_bytes());
        w.put(&self.period_us.to_be_bytes());
        for v in [
            self.hears.bits(),
            self.proposed.bits(),
            self.proposal_digest,
            self.adopted.bits(),
            self.adopted_epoch,
            self.adopted_digest,
            self.bound,
            self.fingerprint,
        ] {
            w.put(&v.to_be_bytes());
        }
        w.put(&self.weights);
        w.put(&self.disabled.to_be_bytes());
        w.put(&self.draining.to_be_bytes());
        let d = &self.dirty;
        w.put(&d.generation.to_be_bytes());
        w.put(&[d.page, d.pages]);
        w.put(&d.rules.to_be_bytes());
        w.put(&[d.subset_of_previous as u8, d.sections.len() as u8]);
        for (rule, s) in &d.sections {
            match s {
                DirtySection::List(l) => {
                    w.put(&[*rule, 0]);
                    w.put(&(l.len() as u16).to_be_bytes());
                    for g in l {
                        w.put(&g.to_be_bytes());
                    }
                }
                DirtySection::Bitmap(b) => {
                    w.put(&[*rule, 1]);
                    w.put(&(GROUPS as u16).to_be_bytes());
                    w.put(&b[..]);
                }
            }
        }
        let tag = auth.tag(&w.buf[ETH_HEADER..len - TAG_LEN]);
        w.put(&tag[..TAG_LEN]);
        Ok(len)
    }

    /// Decodes and authenticates a frame (Ethernet header included).
    ///
    /// Replay is not checked here (it needs per-host state): pass the result
    /// through a [`ReplayGuard`].
    ///
    /// # Errors
    /// A [`HeartbeatError`] naming the first check that failed.
    pub fn decode(frame: &[u8], auth: &ClusterAuth) -> Result<Heartbeat, HeartbeatError> {
        let payload = payload_of(frame)?;
        let mut r = Reader {
            buf: payload,
            at: 0,
        };
        if r.u16()? != MAGIC {
            return Err(HeartbeatError::BadMagic);
        }
        let version = r.u8()?;
        if version != VERSION {
            return Err(HeartbeatError::BadVersion(version));
        }
        let _flags = r.u8()?;
        let declared = r.u16()? as usize;
        let _reserved = r.u16()?;
        if r.u64()? != auth.cluster_id {
            return Err(HeartbeatError::WrongCluster);
        }
        if declared > MAX_PAYLOAD {
            return Err(HeartbeatError::Oversized);
        }
        if declared < FIXED_PAYLOAD || payload.len() < declared {
            return Err(HeartbeatError::Truncated);
        }
        if payload.len() > declared {
            // Only Ethernet minimum-size padding (zeros) may follow; shoal's
            // frames are never short enough to need it, so anything else
            // is somebody else's frame or tampering.
            if payload[declared..].iter().any(|&b| b != 0) {
                return Err(HeartbeatError::Malformed("trailing bytes"));
            }
        }
        let payload = &payload[..declared];
        let (body, tag) = payload.split_at(declared - TAG_LEN);
        // The fields a receiver can judge without the key, before the HMAC.
        let mut r = Reader { buf: body, at: 16 };
        let host = HostId::new(r.u8()?).ok_or(HeartbeatError::BadHeader("host id"))?;
        let state = HostState::from_u8(r.u8()?).ok_or(HeartbeatError::BadHeader("state"))?;
        let phase = Phase::from_u8(r.u8()?).ok_or(HeartbeatError::BadHeader("phase"))?;
        let rule_count = r.u8()?;
        if rule_count as usize > MAX_RULES {
            return Err(HeartbeatError::BadHeader("rule count"));
        }
        if !auth.verify(body, tag) {
            return Err(HeartbeatError::BadMac);
        }
        let boot = r.u64()?;
        let seq = r.u64()?;
        let sent = r.u64()?;
        let base_period_us = r.u32()?;
        let period_us = r.u32()?;
        if base_period_us == 0 || period_us == 0 {
            return Err(HeartbeatError::Malformed("zero period"));
        }
        let hears = HostSet::from_bits(r.u64()?);
        let proposed = HostSet::from_bits(r.u64()?);
        let proposal_digest = r.u64()?;
        let adopted = HostSet::from_bits(r.u64()?);
        let adopted_epoch = r.u64()?;
        let adopted_digest = r.u64()?;
        let bound = r.u64()?;
        let fingerprint = r.u64()?;
        let mut weights = [0u8; MAX_RULES];
        weights.copy_from_slice(r.take(MAX_RULES)?);
        let disabled = r.u32()?;
        let draining = r.u32()?;
        let generation = r.u16()?;
        let page = r.u8()?;
        let pages = r.u8()?;
        if pages == 0 || page >= pages {
            return Err(HeartbeatError::Malformed("dirty page index"));
        }
        let rules = r.u32()?;
        let dflags = r.u8()?;
        let nsections = r.u8()?;
        let mut sections = Vec::with_capacity((nsections as usize).min(MAX_RULES));
        for _ in 0..nsections {
            let rule = r.u8()?;
            if rule >= rule_count || rules & (1 << rule) == 0 {
                return Err(HeartbeatError::Malformed("dirty section rule"));
            }
            let format = r.u8()?;
            let count = r.u16()? as usize;
            let section = match format {
                0 => {
                    if count > GROUPS {
                        return Err(HeartbeatError::Malformed("dirty list length"));
                    }
                    let bytes = r.take(2 * count)?;
                    let mut l = Vec::with_capacity(count);
                    for c in bytes.chunks_exact(2) {
                        let g = u16::from_be_bytes([c[0], c[1]]);
                        if g as usize >= GROUPS {
                            return Err(HeartbeatError::Malformed("dirty group number"));
                        }
                        l.push(g);
                    }
                    DirtySection::List(l)
                }
                1 => {
                    if count != GROUPS {
                        return Err(HeartbeatError::Malformed("dirty bitmap length"));
                    }
                    let mut b = Box::new([0u8; BITMAP_BYTES]);
                    b.copy_from_slice(r.take(BITMAP_BYTES)?);
                    DirtySection::Bitmap(b)
                }
                _ => return Err(HeartbeatError::Malformed("dirty section format")),
            };
            sections.push((rule, section));
        }
        if r.at != body.len() {
            return Err(HeartbeatError::Malformed("length mismatch"));
        }
        Ok(Heartbeat {
            host,
            state,
            phase,
            rule_count,
            boot,
            seq,
            sent,
            base_period_us,
            period_us,
            hears,
            proposed,
            proposal_digest,
            adopted,
            adopted_epoch,
            adopted_digest,
            bound,
            fingerprint,
            weights,
            disabled,
            draining,
            dirty: DirtyPage {
                generation,
                page,
                pages,
                rules,
                subset_of_previous: dflags & 1 != 0,
                sections,
            },
        })
    }
}

/// What a heartbeat frame claims about its sender, read without the key
/// (see [`claim`]). Nothing in it is authenticated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Claim {
    /// The claimed host ID.
    pub host: HostId,
    /// The claimed boot counter.
    pub boot: u64,
    /// The claimed sequence number.
    pub seq: u64,
}

/// What a heartbeat frame claims about its sender (host ID, boot counter,
/// sequence number), read without the key.
///
/// The checks are the key-less ones a forgery must pass anyway, cheapest
/// first: the EtherType (one or two 802.1Q/802.1ad tags allowed), magic,
/// version, a declared payload length within [`FIXED_PAYLOAD`]..=
/// [`MAX_PAYLOAD`] that the frame holds, and a host ID of 1..=64. Nothing
/// here is authenticated: a receiver uses the answer to choose where the
/// frame waits for [`Heartbeat::decode`] (the engine's control inbox gives
/// each member a lane of its own), never to believe it. No HMAC, no
/// allocation, and any byte string is a valid input (`None` for anything
/// that is not a plausible heartbeat).
pub fn claim(frame: &[u8]) -> Option<Claim> {
    let payload = payload_of(frame).ok()?;
    if payload.get(0..2)? != &MAGIC.to_be_bytes()[..] || *payload.get(2)? != VERSION {
        return None;
    }
    let declared = usize::from(u16::from_be_bytes([*payload.get(4)?, *payload.get(5)?]));
    if !(FIXED_PAYLOAD..=MAX_PAYLOAD).contains(&declared) || payload.len() < declared {
        return None;
    }
    let host = HostId::new(*payload.get(16)?)?;
    let u64_at = |at: usize| -> Option<u64> {
        Some(u64::from_be_bytes(
            payload.get(at..at + 8)?.try_into().ok()?,
        ))
    };
    Some(Claim {
        host,
        boot: u64_at(20)?,
        seq: u64_at(28)?,
    })
}

/// The host a heartbeat frame claims to come from: [`claim`]'s host.
pub fn claimed_sender(frame: &[u8]) -> Option<HostId> {
    claim(frame).map(|c| c.host)
}

/// The heartbeat payload of an Ethernet frame, after up to two VLAN tags.
fn payload_of(frame: &[u8]) -> Result<&[u8], HeartbeatError> {
    let mut at = 12;
    for _ in 0..3 {
        let t = frame.get(at..at + 2).ok_or(HeartbeatError::Truncated)?;
        let ethertype = u16::from_be_bytes([t[0], t[1]]);
        match ethertype {
            ethertype::VLAN | ethertype::QINQ if at < 20 => at += 4,
            ethertype::HEARTBEAT => {
                let payload = &frame[at + 2..];
                if payload.len() > MAX_PAYLOAD {
                    return Err(HeartbeatError::Oversized);
                }
                return Ok(payload);
            }
            _ => return Err(HeartbeatError::NotHeartbeat),
        }
    }
    Err(HeartbeatError::NotHeartbeat)
}

/// Per-host replay protection: the highest boot counter accepted from each
/// host and the last sequence number of that boot.
///
/// Each host ID has a *current* boot and at most one *rival* boot (a second
/// boot heard while the current one was alive, or the previous boot after
/// a restart). A heartbeat is fresh when its sequence number is higher than
/// the last one seen from its boot. A boot never seen before is fresh when
/// its counter is higher than the current one (a restart, or a second host
/// that came later). A lower boot counter is refused as
/// [`HeartbeatError::Replayed`] unless the frame was not sent before the current
/// boot's first accepted frame: a host's previous run stopped before its
/// current run started, so only a second live host (a duplicate ID) can
/// send such a frame. Whether a rival replaces the current boot (a restart)
/// or is a second host with the same ID is [`crate::membership`]'s call:
/// see [`ReplayGuard::promote`].
#[derive(Clone, Debug, Default)]
pub struct ReplayGuard {
    last: Vec<Option<Boots>>,
}

/// One boot as the guard remembers it.
#[derive(Clone, Copy, Debug)]
struct Boot {
    boot: u64,
    seq: u64,
    /// Send time of its first accepted frame.
    first_sent: u64,
}

#[derive(Clone, Copy, Debug)]
struct Boots {
    current: Boot,
    rival: Option<Boot>,
}

/// How a heartbeat relates to what was heard from its host ID before.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Freshness {
    /// The first heartbeat ever heard from this ID.
    First,
    /// The current boot, newer sequence.
    Newer,
    /// Fresh from a boot other than the current one; `newer` when its boot
    /// counter is higher than the current boot's.
    Rival {
        /// Whether the rival boot counter is higher than the current one.
        newer: bool,
    },
}

impl ReplayGuard {
    /// A guard that has heard nothing.
    pub fn new() -> Self {
        Self {
            last: vec![None; shoal_dataplane::MAX_HOSTS],
        }
    }

    /// Checks `(boot, seq)` sent at `sent` from `host` and records it when
    /// fresh (see the type's docs).
    ///
    /// # Errors
    /// [`HeartbeatError::Replayed`] when it is not newer than what that boot
    /// sent before, or comes from a lower boot counter than the current one
    /// and was sent before the current boot's first accepted frame.
    pub fn check(
        &mut self,
        host: HostId,
        boot: u64,
        seq: u64,
        sent: u64,
    ) -> Result<Freshness, HeartbeatError> {
        if self.last.len() < shoal_dataplane::MAX_HOSTS {
            self.last.resize(shoal_dataplane::MAX_HOSTS, None);
        }
        let heard = Boot {
            boot,
            seq,
            first_sent: sent,
        };
        let slot = &mut self.last[host.index()];
        let Some(b) = slot else {
            *slot = Some(Boots {
                current: heard,
                rival: None,
            });
            return Ok(Freshness::First);
        };
        if boot == b.current.boot {
            if seq > b.current.seq {
                b.current.seq = seq;
                return Ok(Freshness::Newer);
            }
            return Err(HeartbeatError::Replayed);
        }
        let newer = boot > b.current.boot;
        if !newer && sent < b.current.first_sent {
            return Err(HeartbeatError::Replayed);
        }
        match &mut b.rival {
            Some(r) if r.boot == boot => {
                if seq > r.seq {
                    r.seq = seq;
                    Ok(Freshness::Rival { newer })
                } else {
                    Err(HeartbeatError::Replayed)
                }
            }
            Some(r) if !newer || boot > r.boot => {
                *r = heard;
                Ok(Freshness::Rival { newer })
            }
            None => {
                b.rival = Some(heard);
                Ok(Freshness::Rival { newer })
            }
            _ => Err(HeartbeatError::Replayed),
        }
    }

    /// Makes `host`'s rival boot the current one (a restart); the old
    /// current boot becomes the rival, so its old frames stay refused.
    pub fn promote(&mut self, host: HostId) {
        if let Some(Some(b)) = self.last.get_mut(host.index()) {
            if let Some(r) = b.rival {
                b.rival = Some(b.current);
                b.current = r;
            }
        }
    }
}

/// The claimed sender of a heartbeat frame: its host ID byte and source
/// MAC, read without authentication (for reporting frames that fail it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ClaimedSender {
    /// The host ID the frame claims (1..=64 once the header checks pass).
    pub host: u8,
    /// The frame's Ethernet source address.
    pub source: Mac,
}

impl fmt::Display for ClaimedSender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "host {} from {}", self.host, self.source)
    }
}

impl ClaimedSender {
    /// The claimed sender of `frame`, when it is long enough to name one.
    /// Nothing here is authenticated.
    pub fn of(frame: &[u8]) -> Option<Self> {
        let payload = payload_of(frame).ok()?;
        let host = *payload.get(16)?;
        let mut source = [0u8; 6];
        source.copy_from_slice(frame.get(6..12)?);
        Some(Self {
            host,
            source: Mac(source),
        })
    }
}

/// Splits a host's dirty set into pages that each fit one heartbeat, and
/// hands out one page per heartbeat.
///
/// A snapshot of the set is paged out in full before the next snapshot is
/// taken, unless the set grows beyond the snapshot (a new dirty group must
/// reach peers at once): then a new generation starts immediately. A new
/// generation whose set is contained in the previous one says so, and
/// receivers keep using the previous, larger set until it is complete.
#[derive(Debug, Default)]
pub struct DirtyPager {
    generation: u16,
    snapshot: Vec<GroupBits>,
    pages: Vec<Vec<(u8, DirtySection)>>,
    rules: u32,
    subset: bool,
    next_page: usize,
    sent_all: bool,
}

impl DirtyPager {
    /// A pager with nothing dirty.
    pub fn new() -> Self {
        Self {
            pages: vec![Vec::new()],
            sent_all: true,
            ..Self::default()
        }
    }

    /// The next page to send, given the current dirty set (one entry per rule).
    pub fn next(&mut self, current: &[GroupBits]) -> DirtyPage {
        let grew = current.iter().enumerate().any(|(r, now)| {
            let before = self.snapshot.get(r);
            now.iter().any(|g| !before.is_some_and(|b| b.contains(g)))
        });
        let changed = grew
            || self.snapshot.len() != current.len()
            || self.snapshot.iter().zip(current).any(|(a, b)| a != b);
        if grew || (changed && self.sent_all) {
            self.resnapshot(current, !grew);
        }
        let page = self.next_page;
        self.next_page += 1;
        if self.next_page >= self.pages.len() {
            self.next_page = 0;
            self.sent_all = true;
        }
        DirtyPage {
            generation: self.generation,
            page: page as u8,
            pages: self.pages.len() as u8,
            rules: self.rules,
            subset_of_previous: self.subset,
            sections: self.pages[page].clone(),
        }
    }

    fn resnapshot(&mut self, current: &[GroupBits], subset: bool) {
        self.generation = self.generation.wrapping_add(1);
        self.snapshot = current.to_vec();
        self.subset = subset;
        self.rules = 0;
        let mut pages: Vec<Vec<(u8, DirtySection)>> = vec![Vec::new()];
        let mut used = 0usize;
        for (r, groups) in current.iter().enumerate().take(MAX_RULES) {
            if groups.is_empty() {
                continue;
            }
            self.rules |= 1 << r;
            let mut section = DirtySection::from_groups(groups);
            // Split long lists across pages; bitmaps always fit one page.
            loop {
                let room = DIRTY_BUDGET - used;
                if section.encoded_len() <= room {
                    used += section.encoded_len();
                    if let Some(p) = pages.last_mut() {
                        p.push((r as u8, section));
                    }
                    break;
                }
                match section {
                    DirtySection::List(mut l) if room >= SECTION_HEADER + 2 => {
                        let fit = (room - SECTION_HEADER) / 2;
                        let rest = l.split_off(fit);
                        if let Some(p) = pages.last_mut() {
                            p.push((r as u8, DirtySection::List(l)));
                        }
                        pages.push(Vec::new());
                        used = 0;
                        section = DirtySection::List(rest);
                    }
                    other => {
                        pages.push(Vec::new());
                        used = 0;
                        section = other;
                    }
                }
            }
        }
        if pages.len() > 1 && pages.last().is_some_and(|p| p.is_empty()) {
            pages.pop();
        }
        self.pages = pages;
        self.next_page = 0;
        self.sent_all = false;
    }
}
