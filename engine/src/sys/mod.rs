//! The syscall seam: every call into the kernel that the compiler cannot
//! check lives below this module, behind safe functions and traits that
//! tests can fake.
//!
//! This is the one room of the engine where `unsafe` is allowed (the crate
//! root denies it everywhere else). Every `unsafe` block here carries a
//! `// SAFETY:` comment naming the invariant it relies on, and every
//! `unsafe fn` a `# Safety` section; no function leaves this module
//! `unsafe`, so callers cannot break those invariants.
//!
//! # Names
//!
//! A seam is a module with a trait of the operations callers need:
//! [`bpf::Bpf`], [`packet::PacketSys`], [`tap::TapSys`], [`host::HostOps`].
//! Its real implementation is named `Kernel` in that module
//! ([`bpf::Kernel`], [`packet::Kernel`], [`tap::Kernel`], [`host::Kernel`]),
//! and a test double is named `Fake`: `bpf::fake::Fake`, shared by the unit
//! tests of several callers, lives here; the others live beside the one test
//! module that scripts them. The remaining modules ([`xsk`], [`netns`],
//! [`peer`], [`sched`], [`signal`], [`umask`], [`wake`], [`caps`],
//! [`programs`]) are plain safe wrappers with no fake.
#![allow(unsafe_code)]

pub mod bpf;
pub mod caps;
pub mod host;
pub mod netns;
pub mod packet;
pub mod peer;
pub mod programs;
pub mod sched;
pub mod signal;
pub mod tap;
pub mod umask;
pub mod wake;
pub mod xsk;
