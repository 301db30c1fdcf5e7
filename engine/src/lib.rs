//! shoal's engine: I/O backends, pinned poll loops, the exception path into
//! the local kernel stack, and the `shoal` binary that wires them together.
//! It holds no protocol logic: the dataplane and control plane decide.
//!
//! Calls the compiler cannot check live only in [`sys`], the syscall seam;
//! the lint below refuses them anywhere else.

#![deny(unsafe_code)]

pub mod afpacket;
pub mod afxdp;
pub mod control;
pub mod fastpath;
pub mod io;
pub mod replay;
pub mod runtime;
pub mod setup;
pub mod snmp;
pub mod sys;
pub mod tap;
pub mod tools;
pub mod wiring;
pub mod xdp;
