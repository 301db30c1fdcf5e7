//! Network namespaces: the kernel's identity for one ([`cookie`]), and work
//! run inside a named one ([`run_in_named`]).
//!
//! An inode number names a namespace only while it lives: once a namespace
//! is gone, a new one may get the same inode. The cookie
//! (`SO_NETNS_COOKIE`, Linux 5.14) is a 64-bit number the kernel never
//! gives to two namespaces in one boot, so a crash-recovery record carrying
//! it can tell its own namespace from a newcomer that inherited the inode.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;

/// Why work could not be run inside a named network namespace.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// The namespace's bind mount could not be opened (no such namespace).
    #[error("opening network namespace {path}: {source}")]
    Open {
        /// `/run/netns/NAME`.
        path: PathBuf,
        /// Why it could not be opened.
        #[source]
        source: io::Error,
    },
    /// `setns(2)` refused to enter it (for example, without `CAP_SYS_ADMIN`).
    #[error("entering network namespace {path}: {source}")]
    Enter {
        /// `/run/netns/NAME`.
        path: PathBuf,
        /// The `errno` of `setns`.
        #[source]
        source: io::Error,
    },
}

/// The cookie of the calling thread's network namespace.
pub fn cookie() -> io::Result<u64> {
    // SAFETY: socket(2) takes plain integers and returns a new descriptor or -1.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a descriptor socket(2) just returned and nothing else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(raw) };
    let mut value: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: `value` is a writable u64 and `len` holds its exact size, which
    // is what the kernel writes for SO_NETNS_COOKIE; the descriptor is open.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_NETNS_COOKIE,
            (&mut value as *mut u64).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(value)
}

/// Moves the calling thread into the network namespace bind-mounted at
/// `/run/netns/NAME` for the rest of its life. Other threads, the
/// process's and new threads', stay where they are; call it on a thread
/// that does nothing else afterwards outside the namespace (a scoped
/// thread, as [`run_in_named`] makes).
///
/// # Errors
/// When the namespace does not exist or cannot be entered; the thread then
/// stays where it was.
pub fn enter_named(name: &str) -> Result<(), NetnsError> {
    let path = PathBuf::from("/run/netns").join(name);
    let ns = File::open(&path).map_err(|source| NetnsError::Open {
        path: path.clone(),
        source,
    })?;
    // SAFETY: `ns` is an open network-namespace descriptor that outlives
    // the call; `setns` changes only the calling thread's namespace.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(NetnsError::Enter {
            path,
            source: io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// Runs `work` on a new thread that has entered the network namespace
/// bind-mounted at `/run/netns/NAME` (what `ip netns add NAME` makes), and
/// returns what it returned.
///
/// Only that short-lived thread changes namespace; the caller's never does.
/// Descriptors `work` opens (sockets, BPF links) stay bound to the
/// namespace they were made in after the thread ends.
///
/// # Errors
/// When the namespace does not exist or cannot be entered; `work` then
/// does not run.
///
/// # Panics
/// Re-raises a panic of `work` on the calling thread.
pub fn run_in_named<T, F>(name: &str, work: F) -> Result<T, NetnsError>
where
    T: Send,
    F: FnOnce() -> T + Send,
{
    std::thread::scope(|scope| {
        let thread = scope.spawn(move || {
            enter_named(name)?;
            Ok(work())
        });
        thread
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookie_is_stable_within_a_namespace() {
        let first = cookie().expect("SO_NETNS_COOKIE (Linux 5.14+)");
        assert_ne!(first, 0);
        assert_eq!(cookie().unwrap(), first);
    }

    #[test]
    fn a_missing_namespace_is_an_error_and_work_never_runs() {
        let ran = std::sync::atomic::AtomicBool::new(false);
        let err = run_in_named("shoal-no-such-namespace", || {
            ran.store(true, std::sync::atomic::Ordering::SeqCst)
        })
        .unwrap_err();
        assert!(matches!(err, NetnsError::Open { .. }), "{err}");
        assert!(!ran.load(std::sync::atomic::Ordering::SeqCst));
    }
}
