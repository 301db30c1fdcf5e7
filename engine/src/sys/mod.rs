//! The syscall seam: every `unsafe` call into the kernel lives below this
//! module, behind traits that tests can fake.

pub mod bpf;
pub mod netns;
pub mod packet;
pub mod sched;
pub mod tap;
pub mod wake;
