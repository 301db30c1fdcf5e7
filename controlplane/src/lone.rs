//! The lone-host guard: a host never serves alone while it hears heartbeats
//! for its cluster that fail authentication.
//!
//! # What it owns
//!
//! [`LoneGuard`], one per [`crate::Machine`]: when a heartbeat carrying this
//! cluster's ID last failed its MAC check, and the lone view it holds back
//! meanwhile. The machine passes every effective view through
//! [`LoneGuard::screen`] before it hands it to the engine, and asks
//! [`LoneGuard::release`] on every update.
//!
//! # The rule
//!
//! A heartbeat with this cluster's ID (its VIPs), a header that passes the
//! cheap checks and a tag that does not verify comes from a host with
//! another key (a misconfigured host on the segment) or from a forger; the
//! machine cannot tell which. A host whose effective view has itself as its
//! only member would keep every frame of the VIPs, and a cluster under
//! another key on the same segment may keep them too. So while such
//! heartbeats come as a *sustained stream* from one claimed sender, a lone
//! view is *withheld*: the engine is handed the same view with no member
//! (it takes nothing new), under the same epoch.
//!
//! A claimed sender is the frame's host ID byte and Ethernet source
//! address, both unauthenticated. Its stream is sustained at a frame when,
//! counting only frames at least a quarter of the base period apart (a
//! burst counts once), at least [`LONE_MIN_FRAMES`] of them arrived within
//! the suspicion window ([`crate::Config::suspicion_ns`], at least
//! [`MIN_SUSPICION_NS`]) and they span at least one base period. That is
//! what a live host of another cluster sends while its peers hold it alive
//! (one heartbeat per period, `tolerance` periods in the window; twice
//! that while it converges), and a lone host finds it before it may adopt
//! a view (it listens `tolerance` periods first). A lone view stays
//! withheld until the suspicion window has passed since the last frame at
//! which a stream was sustained; then it is handed over, under its epoch.
//!
//! A view with other members is never withheld: the members authenticated
//! each other's heartbeats and agreed on it. A lone view installed before
//! a stream became sustained is not withdrawn either: the host that comes
//! second is the one that holds back, so one of two one-host clusters
//! under different keys serves, never both.
//!
//! # What a forger can still do
//!
//! A forger on the segment who knows the VIPs (they are public) but not
//! the key can keep a host that is alone in its view, and only such a
//! host, from starting to serve, for as long as it sends
//! [`LONE_MIN_FRAMES`] frames per suspicion window with one claimed sender,
//! spread over at least a base period, and for one window after. It cannot
//! make any host keep a frame another host keeps (the guard only ever takes
//! away), cannot take a serving lone host out of service, and cannot touch
//! a cluster of two or more hosts. A sparse stream, a burst, or frames
//! that each claim another sender block nothing. A cluster under another
//! key that sends fewer than [`LONE_MIN_FRAMES`] heartbeats per window
//! (a much longer period) is not recognised.

use shoal_dataplane::map::View;
use shoal_dataplane::{HostId, HostSet};

use crate::heartbeat::ClaimedSender;

/// The shortest suspicion window, ns: heartbeats that fail authentication
/// keep a lone host from serving for at least this long after the last one.
pub const MIN_SUSPICION_NS: u64 = 1_000_000_000;

/// Frames a claimed sender must send, spread over at least a base period,
/// within one suspicion window before the guard withholds a lone view.
pub const LONE_MIN_FRAMES: usize = 3;

/// Claimed senders the guard tracks at once.
const SENDERS: usize = 16;

/// What the guard makes of an effective view (see [`LoneGuard::screen`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Screened {
    /// Hand the view over as it is.
    Install,
    /// Hand over this view instead (the lone view with no member). `first`:
    /// no lone view was withheld before (say so in the logs once).
    Withhold {
        /// The view to install meanwhile.
        instead: View,
        /// Whether this starts a withholding.
        first: bool,
    },
}

/// Why the guard holds a lone view back: the stream that made it suspect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Suspicion {
    /// Who the frames claim to come from.
    pub sender: ClaimedSender,
    /// Frames from that sender that failed authentication in its current
    /// stream.
    pub frames: u64,
}

impl std::fmt::Display for Suspicion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "not serving alone: {} heartbeats for this cluster failing authentication, claiming {} \
             (a host with another key on the segment, or a forger)",
            self.frames, self.sender
        )
    }
}

/// One claimed sender's stream of frames that failed authentication.
#[derive(Clone, Copy, Debug)]
struct Stream {
    sender: ClaimedSender,
    /// Frames in the current stream.
    frames: u64,
    /// The last frame.
    last: u64,
    /// The last [`LONE_MIN_FRAMES`] counted frames (a quarter period apart).
    counted: [u64; LONE_MIN_FRAMES],
    /// How many entries of `counted` are filled.
    filled: usize,
}

/// The lone-host guard of one host. See the module docs.
#[derive(Clone, Debug)]
pub struct LoneGuard {
    host: HostId,
    window_ns: u64,
    period_ns: u64,
    streams: Vec<Stream>,
    /// Until when a lone view is withheld, and why.
    suspicion: Option<(u64, Suspicion)>,
    /// The lone view held back and its epoch.
    withheld: Option<(View, u64)>,
}

impl LoneGuard {
    /// A guard for `host` with a suspicion window of `window_ns` and a base
    /// heartbeat period of `period_ns`.
    pub fn new(host: HostId, window_ns: u64, period_ns: u64) -> Self {
        Self {
            host,
            window_ns,
            period_ns: period_ns.max(1),
            streams: Vec::with_capacity(SENDERS),
            suspicion: None,
            withheld: None,
        }
    }

    /// A heartbeat for this cluster claiming `sender` failed authentication
    /// at `now`. Returns whether this frame made the guard start suspecting.
    pub fn handle_bad_mac(&mut self, sender: ClaimedSender, now: u64) -> bool {
        let window = self.window_ns;
        let at = match self.streams.iter().position(|s| s.sender == sender) {
            Some(i) => i,
            None => {
                let fresh = Stream {
                    sender,
                    frames: 0,
                    last: now,
                    counted: [0; LONE_MIN_FRAMES],
                    filled: 0,
                };
                if self.streams.len() < SENDERS {
                    self.streams.push(fresh);
                    self.streams.len() - 1
                } else {
                    // Replace the stream heard longest ago.
                    let (i, _) = self
                        .streams
                        .iter()
                        .enumerate()
                        .min_by_key(|(_, s)| s.last)
                        .expect("SENDERS > 0");
                    self.streams[i] = fresh;
                    i
                }
            }
        };
        let spacing = self.period_ns / 4;
        let s = &mut self.streams[at];
        if s.filled > 0 && now.saturating_sub(s.last) > window {
            // Silent for a window: a new stream.
            s.filled = 0;
            s.frames = 0;
        }
        s.frames += 1;
        s.last = s.last.max(now);
        let newest = s.filled.checked_sub(1).map(|i| s.counted[i]);
        if newest.is_none_or(|t| now.saturating_sub(t) >= spacing) {
            if s.filled == LONE_MIN_FRAMES {
                s.counted.rotate_left(1);
                s.filled -= 1;
            }
            s.counted[s.filled] = now;
            s.filled += 1;
        }
        let oldest = s.counted[0];
        let sustained = s.filled == LONE_MIN_FRAMES
            && now.saturating_sub(oldest) < window
            && now.saturating_sub(oldest) >= self.period_ns;
        let why = Suspicion {
            sender,
            frames: s.frames,
        };
        if !sustained {
            return false;
        }
        let started = !self.suspects(now);
        let until = now.saturating_add(window);
        let until = self.suspicion.map_or(until, |(u, _)| u.max(until));
        self.suspicion = Some((until, why));
        started
    }

    /// Whether a sustained stream of heartbeats that fail authentication
    /// was heard less than the suspicion window before `now`.
    pub fn suspects(&self, now: u64) -> bool {
        self.suspicion.is_some_and(|(until, _)| now < until)
    }

    /// Why the guard suspects at `now`, if it does.
    pub fn suspicion(&self, now: u64) -> Option<Suspicion> {
        self.suspicion
            .filter(|(until, _)| now < *until)
            .map(|(_, why)| why)
    }

    /// Whether `view` has this host as its only member.
    pub fn is_lone(&self, view: &View) -> bool {
        view.members == HostSet::from_iter([self.host])
    }

    /// Screens the effective view `view` of map epoch `epoch` at `now`: a
    /// lone view while the guard suspects is withheld (and replaces any view
    /// withheld before); any other view ends a withholding.
    pub fn screen(&mut self, view: &View, epoch: u64, now: u64) -> Screened {
        if self.is_lone(view) && self.suspects(now) {
            let first = self.withheld.is_none();
            self.withheld = Some((view.clone(), epoch));
            let mut instead = view.clone();
            instead.members = HostSet::EMPTY;
            Screened::Withhold { instead, first }
        } else {
            self.withheld = None;
            Screened::Install
        }
    }

    /// The withheld lone view and its epoch, once the guard no longer
    /// suspects at `now`; the withholding ends.
    pub fn release(&mut self, now: u64) -> Option<(View, u64)> {
        if self.withheld.is_some() && !self.suspects(now) {
            self.withheld.take()
        } else {
            None
        }
    }

    /// Whether a lone view is withheld.
    pub fn withholds(&self) -> bool {
        self.withheld.is_some()
    }

    /// Why a lone view is withheld (the last stream that made the guard
    /// suspect), while one is.
    pub fn withheld_because(&self) -> Option<Suspicion> {
        self.withheld.as_ref()?;
        self.suspicion.map(|(_, why)| why)
    }

    /// When a withheld view is due for release (the machine's timer).
    pub fn deadline(&self) -> Option<u64> {
        self.withheld.as_ref()?;
        Some(self.suspicion?.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_dataplane::{ClusterMode, ClusterSpec, FilterMode, PortRule, Protocol};

    const SEC: u64 = 1_000_000_000;

    fn host(n: u8) -> HostId {
        HostId::new(n).unwrap()
    }

    fn view(members: &[u8]) -> View {
        let spec = ClusterSpec {
            vips: vec!["10.0.0.1".parse().unwrap()],
            mode: ClusterMode::Unicast,
            ipv6_network_prefix: 64,
            rules: vec![PortRule::new(
                None,
                (80, 80),
                Protocol::Tcp,
                FilterMode::Single,
            )],
            bucket_seed: 0x5eed,
        };
        View::converged(&spec, members.iter().map(|&h| host(h)).collect())
    }

    fn forger(host: u8) -> ClaimedSender {
        ClaimedSender {
            host,
            source: shoal_dataplane::mac::Mac([2, host, 10, 0, 0, 1]),
        }
    }

    /// Frames from `sender` every `every` ns in `[from, to)`.
    fn stream(g: &mut LoneGuard, sender: ClaimedSender, from: u64, to: u64, every: u64) {
        let mut t = from;
        while t < to {
            g.handle_bad_mac(sender, t);
            t += every;
        }
    }

    #[test]
    fn a_lone_view_waits_out_the_window() {
        let mut g = LoneGuard::new(host(1), 3 * SEC, SEC);
        assert_eq!(g.screen(&view(&[1]), 2, 10 * SEC), Screened::Install);
        // Two frames a period apart are not yet a sustained stream.
        stream(&mut g, forger(2), 10 * SEC, 11 * SEC, SEC / 2);
        assert!(!g.suspects(11 * SEC - 1));
        assert!(g.handle_bad_mac(forger(2), 11 * SEC), "the third frame");
        stream(&mut g, forger(2), 11 * SEC + SEC / 2, 12 * SEC, SEC / 2);
        let Screened::Withhold { instead, first } = g.screen(&view(&[1]), 3, 12 * SEC) else {
            panic!("a lone view while a stream of heartbeats fails authentication")
        };
        assert!(first);
        assert_eq!(instead.members, HostSet::EMPTY);
        assert_eq!(instead.weights, view(&[1]).weights);
        assert!(matches!(
            g.screen(&view(&[1]), 4, 12 * SEC),
            Screened::Withhold { first: false, .. }
        ));
        let why = g.withheld_because().unwrap();
        assert_eq!((why.sender, why.frames), (forger(2), 4));
        assert!(why
            .to_string()
            .contains("claiming host 2 from 02-02-0a-00-00-01"));
        assert_eq!(g.deadline(), Some(14 * SEC + SEC / 2));
        assert_eq!(g.release(14 * SEC + SEC / 2 - 1), None);
        assert_eq!(g.release(14 * SEC + SEC / 2), Some((view(&[1]), 4)));
        assert!(!g.withholds());
        assert_eq!(g.release(15 * SEC), None);
    }

    /// One frame now and then, a burst, or frames that each claim another
    /// sender: none of them is a sustained stream.
    #[test]
    fn sparse_bursty_or_scattered_frames_block_nothing() {
        let mut g = LoneGuard::new(host(1), 3 * SEC, SEC);
        // Two frames per window, for a minute.
        stream(&mut g, forger(2), 0, 60 * SEC, 3 * SEC / 2);
        assert!(!g.suspects(60 * SEC));
        // A burst of a thousand frames within a quarter period.
        stream(&mut g, forger(3), 61 * SEC, 61 * SEC + SEC / 5, SEC / 5000);
        assert!(!g.suspects(61 * SEC + SEC / 5));
        // Every frame claims another host.
        for i in 0..64u64 {
            g.handle_bad_mac(forger(i as u8 + 1), 70 * SEC + i * SEC / 8);
        }
        assert!(!g.suspects(78 * SEC));
        assert_eq!(g.screen(&view(&[1]), 2, 78 * SEC), Screened::Install);
    }

    /// A stream that thins below the rate stops being sustained: the window
    /// runs from the last frame at which it still was.
    #[test]
    fn a_thinning_stream_releases_a_window_after_it_thinned() {
        let mut g = LoneGuard::new(host(1), 3 * SEC, SEC);
        stream(&mut g, forger(2), 0, 4 * SEC, SEC / 2);
        assert!(matches!(
            g.screen(&view(&[1]), 2, 4 * SEC),
            Screened::Withhold { .. }
        ));
        let until = g.deadline().unwrap();
        assert_eq!(until, 3 * SEC + SEC / 2 + 3 * SEC);
        // From now on one frame every 2.5 s: never three in a window.
        stream(&mut g, forger(2), 6 * SEC, 30 * SEC, 5 * SEC / 2);
        assert_eq!(g.deadline(), Some(until));
        assert!(g.release(until).is_some());
    }

    #[test]
    fn views_with_other_members_pass_and_end_a_withholding() {
        let mut g = LoneGuard::new(host(1), SEC, SEC / 10);
        stream(&mut g, forger(2), 0, SEC / 5, SEC / 20);
        assert_eq!(g.screen(&view(&[1, 2]), 2, SEC / 5), Screened::Install);
        assert_eq!(g.screen(&view(&[]), 3, SEC / 5), Screened::Install);
        assert!(matches!(
            g.screen(&view(&[1]), 4, SEC / 5),
            Screened::Withhold { .. }
        ));
        assert_eq!(g.screen(&view(&[1, 3]), 5, SEC / 5), Screened::Install);
        assert!(!g.withholds());
        assert_eq!(g.deadline(), None);
    }
}
