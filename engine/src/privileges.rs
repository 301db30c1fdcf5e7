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
//!   included) while unprivileged BPF is disabled;
//! - `CAP_CHOWN`, only with an `[admin] group`: the admin socket, made
//!   after the drop, is handed to that group.
//!
//! Everything else is dropped from the effective, permitted, inheritable,
//! ambient and bounding sets, and `no_new_privs` is set, so neither the
//! engine nor a program it runs can gain privileges back
//! ([`crate::sys::caps::restrict_to`]).
#![forbid(unsafe_code)]

use anyhow::{Context, Result};

use crate::sys::caps::{self, Cap};

/// What decides which capabilities the running engine keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Needs {
    /// AF_XDP and its BPF maps are in use.
    pub af_xdp: bool,
    /// The kernel's (major, minor) version; `None` when unknown (taken as
    /// old).
    pub kernel: Option<(u32, u32)>,
    /// An `[admin] group` is configured.
    pub admin_group: bool,
}

/// The capabilities the running engine keeps (see the module docs).
pub fn kept(needs: Needs) -> Vec<Cap> {
    let mut keep = vec![Cap::NET_ADMIN, Cap::SYS_NICE];
    if needs.af_xdp && needs.kernel.is_none_or(|v| v < (6, 5)) {
        keep.push(Cap::BPF);
    }
    if needs.admin_group {
        keep.push(Cap::CHOWN);
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
pub fn drop_after_setup(af_xdp: bool, admin_group: bool) -> Result<Vec<Cap>> {
    let keep = kept(Needs {
        af_xdp,
        kernel: kernel_version(),
        admin_group,
    });
    caps::restrict_to(&keep)
        .context("dropping the capabilities the running engine does not need")?;
    Ok(keep)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bpf_and_chown_are_kept_only_when_needed() {
        let needs = |af_xdp, kernel, admin_group| {
            kept(Needs {
                af_xdp,
                kernel,
                admin_group,
            })
        };
        let base = vec![Cap::NET_ADMIN, Cap::SYS_NICE];
        assert_eq!(needs(false, Some((5, 10)), false), base);
        assert_eq!(needs(true, Some((6, 5)), false), base);
        assert_eq!(needs(true, Some((6, 18)), false), base);
        assert!(needs(true, Some((6, 4)), false).contains(&Cap::BPF));
        assert!(needs(true, Some((5, 15)), false).contains(&Cap::BPF));
        assert!(needs(true, None, false).contains(&Cap::BPF));
        assert!(needs(false, Some((6, 18)), true).contains(&Cap::CHOWN));
        assert!(!needs(true, Some((6, 18)), false).contains(&Cap::CHOWN));
        assert!(kernel_version().is_some());
    }
}
