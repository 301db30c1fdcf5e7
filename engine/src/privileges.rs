//! What the running engine keeps of root's privileges once the host is set
//! up, and the drop itself.
//!
//! Setup (TAP, addresses, sysctls, nftables, XDP, sockets) needs root's
//! capabilities; the running engine works on descriptors it already holds,
//! and keeps only:
//! - `CAP_NET_ADMIN`: to undo setup at exit (delete the TAP and the
//!   nftables table through `ip` and `nft`, write the saved sysctls back,
//!   detach XDP);
//! - `CAP_SYS_NICE`: the map compiler lowers its own priority while it
//!   precomputes likely views and raises it back when a real view arrives;
//! - `CAP_BPF`, only with AF_XDP on kernels before 6.5: those check
//!   `CAP_BPF` on every `bpf()` call (map updates on a held descriptor
//!   included) while unprivileged BPF is disabled.
//!
//! Everything else is dropped from the effective, permitted, inheritable,
//! ambient and bounding sets, and `no_new_privs` is set, so neither the
//! engine nor a program it runs can gain privileges back
//! ([`crate::sys::caps::restrict_to`]).
#![forbid(unsafe_code)]

use anyhow::{Context, Result};

use crate::sys::caps::{self, Cap};

/// The capabilities the running engine keeps (see the module docs): with
/// `af_xdp` when AF_XDP and its BPF maps are in use, on a kernel of
/// version `kernel` (major, minor; `None` when unknown, taken as old).
pub fn kept(af_xdp: bool, kernel: Option<(u32, u32)>) -> Vec<Cap> {
    let mut keep = vec![Cap::NET_ADMIN, Cap::SYS_NICE];
    if af_xdp && kernel.is_none_or(|v| v < (6, 5)) {
        keep.push(Cap::BPF);
    }
    keep
}

/// The running kernel's (major, minor) version.
pub fn kernel_version() -> Option<(u32, u32)> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").ok()?;
    let mut parts = release.trim().split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// Drops every capability but [`kept`]'s and sets `no_new_privs`, for the
/// calling thread and the threads and programs it starts afterwards: call
/// it on the main thread once setup is done and before the poll loops and
/// helper threads start. Returns what was kept.
pub fn drop_after_setup(af_xdp: bool) -> Result<Vec<Cap>> {
    let keep = kept(af_xdp, kernel_version());
    caps::restrict_to(&keep)
        .context("dropping the capabilities the running engine does not need")?;
    Ok(keep)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bpf_is_kept_only_for_af_xdp_on_old_kernels() {
        assert_eq!(
            kept(false, Some((5, 10))),
            vec![Cap::NET_ADMIN, Cap::SYS_NICE]
        );
        assert_eq!(
            kept(true, Some((6, 5))),
            vec![Cap::NET_ADMIN, Cap::SYS_NICE]
        );
        assert_eq!(
            kept(true, Some((6, 18))),
            vec![Cap::NET_ADMIN, Cap::SYS_NICE]
        );
        assert!(kept(true, Some((6, 4))).contains(&Cap::BPF));
        assert!(kept(true, Some((5, 15))).contains(&Cap::BPF));
        assert!(kept(true, None).contains(&Cap::BPF));
        assert!(kernel_version().is_some());
    }
}
