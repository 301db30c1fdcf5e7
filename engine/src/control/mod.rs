//! The control thread: what a host does besides judging frames.
//!
//! # Rooms
//!
//! - [`admin`]: the admin socket (listener, peer admission, one request
//!   per connection on its own thread, and the client side the `shoal`
//!   verbs use).
//! - [`responder`]: the neighbour duties (ARP, ND, gratuitous ARP, IGMP),
//!   with or without a control plane.
//! - [`control_loop`]: [`ControlLoop`], the loop that drives the control
//!   plane's machine and installs the maps it asks for.
//! - `compiler`: the worker thread that compiles maps for it.
//!
//! Every decision (membership, convergence, which view to serve, whether
//! to serve alone) is the control plane's
//! ([`shoal_controlplane::Machine`]); these rooms carry frames, requests,
//! time and maps to and from it.

pub mod admin;
mod compiler;
pub mod control_loop;
pub mod responder;

pub use admin::{
    call, default_socket, AdminCall, AdminCounters, AdminOptions, AdminServer, Admission, Limits,
};
pub use control_loop::{ControlLoop, HEARTBEATS_PER_ROUND, INSTALL_TIMEOUT, NEIGHBOUR_PER_ROUND};
pub use responder::{Responder, IGMP_REPORT_INTERVAL};
