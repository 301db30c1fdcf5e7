//! A whole cluster of dataplanes in one process: every member judges every
//! frame, as on a real segment. Used by `shoal classify`, the tests and the
//! benchmarks; the control plane's simulator builds on it.
//!
//! [`SimCluster::apply_view`] does what a converged control plane does: it
//! builds each member's map for the view, re-marks their descriptors, and
//! hands every member the union of the *other* members' dirty groups.

use std::sync::Arc;

use crate::descriptor::DescriptorConfig;
use crate::map::{ClusterMap, GroupBits, View};
use crate::model::{ClusterSpec, HostId, HostSet};
use crate::pipeline::{Dataplane, Verdict};

/// Simulated members sharing one segment.
#[derive(Debug)]
pub struct SimCluster {
    spec: ClusterSpec,
    view: View,
    epoch: u64,
    members: Vec<(HostId, Dataplane)>,
}

impl SimCluster {
    /// A cluster where `members` are live with their configured weights.
    pub fn new(spec: ClusterSpec, members: HostSet, cfg: DescriptorConfig) -> Self {
        let view = View::converged(&spec, members);
        let base = ClusterMap::build(
            &spec,
            &view,
            members
                .first()
                .unwrap_or(HostId::new(1).expect("1 is valid")),
            1,
        );
        let members = members
            .iter()
            .map(|h| {
                (
                    h,
                    Dataplane::new(Arc::new(base.for_host(h)), cfg, 0x5eed ^ h.get() as u64),
                )
            })
            .collect();
        Self {
            spec,
            view,
            epoch: 1,
            members,
        }
    }

    /// The spec.
    pub fn spec(&self) -> &ClusterSpec {
        &self.spec
    }

    /// The view in force.
    pub fn view(&self) -> &View {
        &self.view
    }

    /// Members and their dataplanes.
    pub fn members(&self) -> &[(HostId, Dataplane)] {
        &self.members
    }

    /// One member's dataplane.
    pub fn member(&self, host: HostId) -> Option<&Dataplane> {
        self.members
            .iter()
            .find(|(h, _)| *h == host)
            .map(|(_, d)| d)
    }

    /// Adds a member with an empty descriptor table (it is not yet in the
    /// view: call [`SimCluster::apply_view`]).
    pub fn add_member(&mut self, host: HostId, cfg: DescriptorConfig) {
        if self.members.iter().any(|(h, _)| *h == host) {
            return;
        }
        let map = ClusterMap::build(&self.spec, &self.view, host, self.epoch);
        self.members.push((
            host,
            Dataplane::new(Arc::new(map), cfg, 0x5eed ^ host.get() as u64),
        ));
        self.members.sort_by_key(|(h, _)| *h);
    }

    /// Removes a member and its state (a host that died).
    pub fn remove_member(&mut self, host: HostId) {
        self.members.retain(|(h, _)| *h != host);
    }

    /// Adopts `view` on every member, then exchanges dirty groups.
    pub fn apply_view(&mut self, view: View) {
        self.epoch += 1;
        let local = view
            .members
            .first()
            .or(self.members.first().map(|(h, _)| *h));
        let Some(local) = local else { return };
        let base = ClusterMap::build(&self.spec, &view, local, self.epoch);
        for (h, dp) in &mut self.members {
            dp.set_map(Arc::new(base.for_host(*h)));
        }
        self.view = view;
        self.exchange_dirty();
    }

    /// Gives every member the union of the other members' dirty groups, as
    /// heartbeats would.
    pub fn exchange_dirty(&mut self) {
        let rules = self.spec.rules.len();
        let dirty: Vec<Vec<GroupBits>> = self
            .members
            .iter()
            .map(|(_, dp)| (0..rules).map(|r| dp.table().dirty_groups(r)).collect())
            .collect();
        for (i, (_, dp)) in self.members.iter_mut().enumerate() {
            let mut map = (**dp.map()).clone();
            for r in 0..rules {
                let mut union = GroupBits::default();
                for (j, d) in dirty.iter().enumerate() {
                    if j != i {
                        for g in d[r].iter() {
                            union.insert(g);
                        }
                    }
                }
                map.set_dirty_elsewhere(r, union);
            }
            // Same epoch and view: re-marking is idempotent.
            dp.set_map(Arc::new(map));
        }
    }

    /// Every member judges `frame`; returns the verdicts in member order.
    pub fn judge(&mut self, frame: &[u8], now: u64) -> Vec<(HostId, Verdict)> {
        self.members
            .iter_mut()
            .map(|(h, dp)| (*h, dp.judge(frame, now)))
            .collect()
    }

    /// The members that keep `frame`.
    pub fn keepers(&mut self, frame: &[u8], now: u64) -> Vec<HostId> {
        self.judge(frame, now)
            .into_iter()
            .filter(|(_, v)| *v == Verdict::Keep)
            .map(|(h, _)| h)
            .collect()
    }
}
