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
//! A heartbeat with this cluster's ID (its VIPs) and a tag that does not
//! verify comes from a host with another key (a misconfigured host on the
//! segment) or from a forger; the machine cannot tell which. A host whose
//! effective view has itself as its only member would keep every frame of
//! the VIPs, and a cluster under another key on the same segment may keep
//! them too. So while such a heartbeat was heard less than the suspicion
//! window ago ([`crate::Config::suspicion_ns`]), a lone view is *withheld*:
//! the engine is handed the same view with no member (it takes nothing new),
//! under the same epoch. Once the window has passed without another such
//! heartbeat, the lone view is handed over, again under its epoch.
//!
//! A view with other members is never withheld: the members authenticated
//! each other's heartbeats and agreed on it.
//!
//! # What a forger can do
//!
//! Keep a lone host from serving, by sending one frame with the cluster's ID
//! and a bad tag per suspicion window. It cannot make any host keep a frame
//! another host keeps: the guard only ever takes away.

use shoal_dataplane::map::View;
use shoal_dataplane::{HostId, HostSet};

/// The shortest suspicion window, ns: heartbeats that fail authentication
/// keep a lone host from serving for at least this long after the last one.
pub const MIN_SUSPICION_NS: u64 = 1_000_000_000;

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

/// The lone-host guard of one host. See the module docs.
#[derive(Clone, Debug)]
pub struct LoneGuard {
    host: HostId,
    window_ns: u64,
    /// When a heartbeat for this cluster last failed authentication.
    last_bad_mac: Option<u64>,
    /// The lone view held back and its epoch.
    withheld: Option<(View, u64)>,
}

impl LoneGuard {
    /// A guard for `host` with a suspicion window of `window_ns`.
    pub fn new(host: HostId, window_ns: u64) -> Self {
        Self {
            host,
            window_ns,
            last_bad_mac: None,
            withheld: None,
        }
    }

    /// A heartbeat for this cluster failed authentication at `now`.
    pub fn handle_bad_mac(&mut self, now: u64) {
        self.last_bad_mac = Some(self.last_bad_mac.map_or(now, |t| t.max(now)));
    }

    /// Whether a heartbeat that failed authentication was heard less than
    /// the suspicion window before `now`.
    pub fn suspects(&self, now: u64) -> bool {
        self.last_bad_mac
            .is_some_and(|t| now.saturating_sub(t) < self.window_ns)
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

    /// When a withheld view is due for release (the machine's timer).
    pub fn deadline(&self) -> Option<u64> {
        self.withheld.as_ref()?;
        Some(self.last_bad_mac? + self.window_ns)
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
        };
        View::converged(&spec, members.iter().map(|&h| host(h)).collect())
    }

    #[test]
    fn a_lone_view_waits_out_the_window() {
        let mut g = LoneGuard::new(host(1), 3 * SEC);
        assert_eq!(g.screen(&view(&[1]), 2, 10 * SEC), Screened::Install);
        g.handle_bad_mac(10 * SEC);
        let Screened::Withhold { instead, first } = g.screen(&view(&[1]), 3, 11 * SEC) else {
            panic!("a lone view while heartbeats fail authentication")
        };
        assert!(first);
        assert_eq!(instead.members, HostSet::EMPTY);
        assert_eq!(instead.weights, view(&[1]).weights);
        assert!(matches!(
            g.screen(&view(&[1]), 4, 11 * SEC),
            Screened::Withhold { first: false, .. }
        ));
        assert_eq!(g.deadline(), Some(13 * SEC));
        assert_eq!(g.release(13 * SEC - 1), None);
        assert_eq!(g.release(13 * SEC), Some((view(&[1]), 4)));
        assert!(!g.withholds());
        assert_eq!(g.release(14 * SEC), None);
    }

    #[test]
    fn views_with_other_members_pass_and_end_a_withholding() {
        let mut g = LoneGuard::new(host(1), SEC);
        g.handle_bad_mac(0);
        assert_eq!(g.screen(&view(&[1, 2]), 2, 0), Screened::Install);
        assert_eq!(g.screen(&view(&[]), 3, 0), Screened::Install);
        assert!(matches!(
            g.screen(&view(&[1]), 4, 0),
            Screened::Withhold { .. }
        ));
        assert_eq!(g.screen(&view(&[1, 3]), 5, 0), Screened::Install);
        assert!(!g.withholds());
        assert_eq!(g.deadline(), None);
    }
}
