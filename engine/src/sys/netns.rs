//! Network-namespace identity: the kernel's namespace cookie.
//!
//! An inode number names a namespace only while it lives: once a namespace
//! is gone, a new one may get the same inode. The cookie
//! (`SO_NETNS_COOKIE`, Linux 5.14) is a 64-bit number the kernel never
//! gives to two namespaces in one boot, so a crash-recovery record carrying
//! it can tell its own namespace from a newcomer that inherited the inode.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookie_is_stable_within_a_namespace() {
        let first = cookie().expect("SO_NETNS_COOKIE (Linux 5.14+)");
        assert_ne!(first, 0);
        assert_eq!(cookie().unwrap(), first);
    }
}
