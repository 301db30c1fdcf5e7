//! shoal's control plane: authenticated heartbeats, membership,
//! convergence, drain and the admin protocol, as a sans-IO state machine.
//!
//! # Modules
//!
//! * [`heartbeat`]: the authenticated, replay-protected heartbeat frame
//!   (fits 1500 bytes for 64 hosts and 32 rules; dirty groups paged).
//! * [`membership`]: liveness, duplicate IDs, rule-fingerprint vote,
//!   refusals with counters.
//! * [`convergence`]: [`Machine`], the agreement / release / adopt protocol
//!   that keeps every frame on at most one host while views change.
//! * [`lone`]: a host never serves alone while heartbeats for its cluster
//!   fail authentication.
//! * [`admin`]: NLB's verbs and return codes, JSON-per-line wire format.
//! * [`rule_health`]: whether this host serves a port rule, from probes of
//!   its local service and frontend instances, with a minimum hold time.
//! * [`health`]: an array service's members up or down from request-path
//!   failures and probes, and when to probe them (times in milliseconds).
//!
//! # Sans-IO
//!
//! No sockets, clocks or threads: time is `now`, nanoseconds of a monotonic
//! clock, passed in; frames go in as byte slices and come out in a caller's
//! buffer. Inputs are `handle_*`, outputs `poll_*`.
//!
//! # How the engine drives this
//!
//! One [`Machine`] per host, on the control thread:
//!
//! ```text
//! let mut m = Machine::new(Config::new(host, key, wall_clock_ns), spec, now);
//! loop {
//!     // 1. inputs, in any order
//!     for frame in heartbeats_received { let _ = m.handle_heartbeat(frame, now); }
//!     for (req, reply) in admin_requests {            // JSON lines, see admin
//!         reply(match req { Request::Reload => m.handle_reload(read_config()?, now) /* then answer Ok */,
//!                           r => m.handle_admin(&r, now) });
//!     }
//!     m.handle_load(rule, descriptors_under(rule), now);   // for drains
//!     m.handle_timeout(now);
//!     // 2. events: compile and install maps BEFORE transmitting
//!     while let Some(ev) = m.poll_event() {
//!         match ev {
//!             Event::EffectiveViewChanged { view, epoch, .. } => {
//!                 let mut map = ClusterMap::build(m.spec(), &view, host, epoch);
//!                 for r in 0..rules { map.set_dirty_elsewhere(r, m.dirty_elsewhere(r)); }
//!                 publish_and_wait_until_every_poll_loop_runs(map);
//!                 m.handle_dirty(epoch, &dataplane_dirty_groups(), now);
//!             }
//!             Event::DirtyElsewhereChanged => refresh dirty_elsewhere on the map,
//!             other => log / count it,
//!         }
//!     }
//!     // 3. outputs
//!     while let Some(n) = m.poll_transmit(now, &mut buf) { send(&buf[..n]); }
//!     // also report dirty groups once per period: m.handle_dirty(epoch, …)
//!     sleep_until(m.poll_timeout()); // or until a frame / admin request arrives
//! }
//! ```
//!
//! The ordering that matters: a new effective map must be running in every
//! poll loop, and its dirty groups reported with `handle_dirty`, before the
//! next heartbeat leaves. The machine advertises a narrower promise only
//! after `handle_dirty` for the epoch that realises it, so a slow engine
//! delays convergence, never safety.
#![forbid(unsafe_code)]

pub mod admin;
pub mod convergence;
pub mod health;
pub mod heartbeat;
pub mod lone;
pub mod membership;
pub mod response_time;
pub mod rule_health;

pub use admin::{Request, Response, ReturnCode};
pub use convergence::{Config, Event, Machine};
pub use health::{Health, HealthConfig};
pub use heartbeat::{bucket_seed, Heartbeat, HeartbeatError, HostState, Phase};
pub use response_time::{PollConfig, ResponseTimes};
