//! shoal's engine: I/O backends, pinned poll loops, the exception path into
//! the local kernel stack, and the `shoal` binary that wires them together.
//! It holds no protocol logic: the dataplane and control plane decide
//! (what the XDP fast path may drop or pass is
//! [`shoal_dataplane::fastpath`]'s plan, which view to serve and when not
//! to serve alone is [`shoal_controlplane::Machine`]'s); the engine carries
//! frames, time and maps to them and writes their answers.
//!
//! Calls the compiler cannot check live only in [`sys`], the syscall seam;
//! the lint below refuses them anywhere else.

#![deny(unsafe_code)]

pub mod afpacket;
pub mod afxdp;
pub mod array;
pub mod bootcount;
pub mod control;
pub mod fastpath;
pub mod frontend;
pub mod handoff;
pub mod io;
pub mod keyfile;
pub mod logging;
pub mod metrics;
pub mod privileges;
pub mod replay;
pub mod runtime;
pub mod setup;
pub mod snmp;
pub mod sys;
pub mod tap;
pub mod tools;
pub mod top;
pub mod wiring;
pub mod xdp;
