//! The health thread: probes, request-path failures and the cluster view
//! in, one [`Snapshot`] per service out (see the parent module).
//!
//! A member is up when the cluster's converged view holds its host
//! (`members = "cluster"`) and its [`Health`] machine says so. Probes:
//! this host's own member is its `local` backend (a TCP connect); another
//! member is `GET /array.dll?Get.Health` at its dedicated address (200
//! only while that member's `local` answers); a parent is a TCP connect.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{Either, Empty};
use hyper::{Request, StatusCode};
use shoal_controlplane::Health;
use shoal_dataplane::array::ArrayPage;
use shoal_dataplane::HostSet;
use tokio::sync::mpsc;

use super::view::{Snapshot, ViewCell};
use super::{stopping, upstream, ServicePlan, Upstreams};
use crate::handoff::MapCell;

/// Room for request-path failure reports; a report that finds it full is
/// dropped (the member is already being reported down).
pub(super) const REPORTS: usize = 1024;
/// The longest the thread sleeps between looks at the view and the clock.
const TICK: Duration = Duration::from_millis(50);

/// A request-path failure: member `member` of service `service` could not
/// be reached before any response byte.
#[derive(Clone, Copy, Debug)]
pub(super) struct Report {
    pub service: usize,
    pub member: usize,
}

/// Everything the health thread starts with.
pub(super) struct Setup {
    pub plans: Vec<Arc<ServicePlan>>,
    pub views: Vec<Arc<ViewCell>>,
    pub cell: Arc<MapCell>,
    pub reports: mpsc::Receiver<Report>,
    pub stop: Arc<AtomicBool>,
}

/// One service's health state.
struct Tracked {
    plan: Arc<ServicePlan>,
    view: Arc<ViewCell>,
    health: Health,
    up: Vec<bool>,
    since: Vec<u64>,
}

impl Tracked {
    /// Publishes a snapshot when a member's state or the epoch changed.
    fn publish(&mut self, members: HostSet, epoch: u64, epoch_moved: bool, now: u64) {
        let mut array = self.plan.array.clone();
        let mut changed = epoch_moved;
        for (i, (was, since)) in self.up.iter_mut().zip(self.since.iter_mut()).enumerate() {
            let up = in_view(&self.plan, i, members) && self.health.is_up(i);
            if up != *was {
                *was = up;
                *since = now;
                changed = true;
                let name = array.router.carp.members().get(i).map(|m| m.name.clone());
                tracing::info!(service = %self.plan.name, member = ?name, up, "array member state");
            }
            array.router.carp.set_up(i, up);
        }
        if !changed {
            return;
        }
        let local_up = match self.plan.upstreams {
            Upstreams::Cluster { own, .. } => self.health.is_up(own),
            Upstreams::Parents => true,
        };
        self.view.publish(Snapshot {
            epoch,
            array,
            since_ms: self.since.clone(),
            local_up,
        });
    }
}

/// Whether member `i` is in the cluster's view (parents always are).
fn in_view(plan: &ServicePlan, i: usize, members: HostSet) -> bool {
    plan.hosts
        .get(i)
        .is_some_and(|h| h.is_none_or(|h| members.contains(h)))
}

/// The health thread's body.
pub(super) fn run(setup: Setup) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "array health thread: no runtime");
            return;
        }
    };
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, watch(setup));
}

async fn watch(setup: Setup) {
    let Setup {
        plans,
        views,
        cell,
        mut reports,
        stop,
    } = setup;
    let start_now = plans.first().map_or(0, |p| p.now_ms());
    let mut tracked: Vec<Tracked> = plans
        .iter()
        .zip(&views)
        .map(|(plan, view)| {
            let n = plan.addresses.len();
            let first = view.current();
            Tracked {
                plan: plan.clone(),
                view: view.clone(),
                health: Health::new(n, plan.health, start_now),
                up: (0..n).map(|i| first.is_up(i)).collect(),
                since: vec![start_now; n],
            }
        })
        .collect();
    let (probe_tx, mut probe_rx) = mpsc::unbounded_channel::<(usize, usize, bool)>();
    let mut seen = 0u64;
    let mut members = HostSet::EMPTY;
    let mut epoch = 0u64;
    while !stopping(&stop) {
        let now = plans.first().map_or(0, |p| p.now_ms());
        let mut epoch_moved = false;
        if let Some((seq, map)) = cell.newer_than(seen) {
            seen = seq;
            epoch_moved = map.epoch != epoch || map.view.members != members;
            members = map.view.members;
            epoch = map.epoch;
        }
        while let Ok(r) = reports.try_recv() {
            if let Some(t) = tracked.get_mut(r.service) {
                t.health.failed(r.member, now);
            }
        }
        while let Ok((s, m, ok)) = probe_rx.try_recv() {
            if let Some(t) = tracked.get_mut(s) {
                t.health.probed(m, ok, now);
            }
        }
        for (s, t) in tracked.iter_mut().enumerate() {
            let due: Vec<usize> = t.health.due(now).collect();
            for m in due {
                t.health.mark_sent(m, now);
                if !in_view(&t.plan, m, members) {
                    // Not in the cluster's view: down whatever a probe says.
                    continue;
                }
                let plan = t.plan.clone();
                let tx = probe_tx.clone();
                tokio::task::spawn_local(async move {
                    let ok = probe(&plan, m).await;
                    let _ = tx.send((s, m, ok));
                });
            }
            t.publish(members, epoch, epoch_moved, now);
        }
        let wake = tracked
            .iter()
            .filter_map(|t| t.health.next_deadline())
            .min()
            .map_or(TICK, |d| {
                Duration::from_millis(d.saturating_sub(now)).min(TICK)
            });
        tokio::select! {
            r = reports.recv() => {
                if let Some(r) = r {
                    let now = plans.first().map_or(0, |p| p.now_ms());
                    if let Some(t) = tracked.get_mut(r.service) {
                        t.health.failed(r.member, now);
                    }
                }
            }
            p = probe_rx.recv() => {
                if let Some((s, m, ok)) = p {
                    let now = plans.first().map_or(0, |p| p.now_ms());
                    if let Some(t) = tracked.get_mut(s) {
                        t.health.probed(m, ok, now);
                    }
                }
            }
            _ = tokio::time::sleep(wake) => {}
        }
    }
}

/// One probe of member `m` (see the module docs); true when it answered.
async fn probe(plan: &ServicePlan, m: usize) -> bool {
    let timeout = plan.connect_timeout();
    let target = match plan.upstreams {
        Upstreams::Cluster { local, own } if own == m => {
            return upstream::tcp(local, timeout).await.is_ok();
        }
        Upstreams::Cluster { .. } => plan.addresses.get(m).copied().flatten(),
        Upstreams::Parents => {
            return match plan.addresses.get(m).copied().flatten() {
                Some(a) => upstream::tcp(a, timeout).await.is_ok(),
                None => false,
            };
        }
    };
    let Some(addr) = target else {
        return false;
    };
    let Ok(mut sender) = upstream::connect_tls(addr, timeout, plan.hop_tls(addr)).await else {
        return false;
    };
    let mut req = Request::new(Either::Right(Empty::<Bytes>::new()));
    *req.uri_mut() = hyper::Uri::from_static(ArrayPage::Health.target());
    if let Ok(v) = hyper::header::HeaderValue::from_str(&addr.to_string()) {
        req.headers_mut().insert(hyper::header::HOST, v);
    }
    matches!(
        tokio::time::timeout(timeout, sender.send_request(req)).await,
        Ok(Ok(r)) if r.status() == StatusCode::OK
    )
}
