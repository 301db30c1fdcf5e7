//! shoal's own XDP program: a minimal eBPF encoder ([`asm`]) and the
//! pre-classifier built from cluster parameters ([`program`]), with its
//! optional in-kernel drop of other hosts' buckets and pass of its own
//! datagrams ([`fast`], with [`reclassify`] on tcx for veth), and the
//! counters of what it selected but could not hand to a socket ([`guard`]).
//! Loading and attaching live in [`crate::afxdp`] through the
//! [`crate::sys::bpf`] seam.

pub mod asm;
pub mod fast;
pub mod guard;
pub mod program;
pub mod reclassify;

pub use program::{XdpAction, XdpParams, XdpProgram};
