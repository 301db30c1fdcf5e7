//! Who is on the other end of a local socket, and which group a name
//! means: `SO_PEERCRED` / `SO_PEERGROUPS` on a connected Unix stream, and
//! `getgrnam_r` for the admin group.
//!
//! The kernel records a Unix stream peer's credentials when it calls
//! `connect`; they cannot be forged by what the peer later sends.

use std::ffi::CString;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;

/// A connected peer's credentials, as the kernel recorded them at
/// `connect` time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerCred {
    /// Process ID.
    pub pid: i32,
    /// Effective user ID.
    pub uid: u32,
    /// Effective group ID.
    pub gid: u32,
    /// Supplementary group IDs (empty when the kernel cannot say).
    pub groups: Vec<u32>,
}

impl PeerCred {
    /// Whether `gid` is the peer's group or one of its supplementary groups.
    pub fn in_group(&self, gid: u32) -> bool {
        self.gid == gid || self.groups.contains(&gid)
    }
}

/// The credentials of `stream`'s peer.
///
/// # Errors
/// `getsockopt(SO_PEERCRED)` failed. A failing `SO_PEERGROUPS` (kernels
/// before 4.13) leaves [`PeerCred::groups`] empty instead.
pub fn peer_credentials(stream: &UnixStream) -> io::Result<PeerCred> {
    let fd = stream.as_raw_fd();
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `fd` is open for the borrow of `stream`; `cred` is a valid,
    // writable `ucred` and `len` holds its exact size, so the kernel writes
    // at most that many bytes into it.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(PeerCred {
        pid: cred.pid,
        uid: cred.uid,
        gid: cred.gid,
        groups: peer_groups(fd).unwrap_or_default(),
    })
}

/// `SO_PEERGROUPS`: the peer's supplementary groups (at most 65536, the
/// kernel's `NGROUPS_MAX`).
fn peer_groups(fd: libc::c_int) -> io::Result<Vec<u32>> {
    let mut groups = vec![0u32; 64];
    loop {
        let mut len = (groups.len() * std::mem::size_of::<libc::gid_t>()) as libc::socklen_t;
        // SAFETY: `fd` is an open socket owned by the caller's borrow;
        // `groups` is a writable buffer of exactly `len` bytes, and the
        // kernel writes at most `len` bytes (it answers ERANGE with the
        // size it needs when they do not fit).
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        };
        if rc == 0 {
            groups.truncate(len as usize / std::mem::size_of::<libc::gid_t>());
            return Ok(groups);
        }
        let err = io::Error::last_os_error();
        let needed = len as usize / std::mem::size_of::<libc::gid_t>();
        if err.raw_os_error() == Some(libc::ERANGE) && needed > groups.len() && needed <= 65_536 {
            groups.resize(needed, 0);
            continue;
        }
        return Err(err);
    }
}

/// The ID of the group named `name` in the system's group database, or
/// `None` when there is no such group.
///
/// # Errors
/// The lookup itself failed (the database could not be read), or `name`
/// holds a NUL byte.
pub fn group_id(name: &str) -> io::Result<Option<u32>> {
    let cname = CString::new(name).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let mut buf = vec![0u8; 1024];
    loop {
        // SAFETY: `group` is plain data that getgrnam_r fills in; an
        // all-zero value (null pointers, zero gid) is a valid placeholder.
        let mut group: libc::group = unsafe { std::mem::zeroed() };
        let mut found: *mut libc::group = std::ptr::null_mut();
        // SAFETY: `cname` is NUL-terminated; `group`, `buf` (with its true
        // length) and `found` are valid and writable for the call, and
        // getgrnam_r keeps its strings inside `buf`, which outlives every
        // read of `group` below (only `gr_gid`, a plain integer, is read).
        let rc = unsafe {
            libc::getgrnam_r(
                cname.as_ptr(),
                &mut group,
                buf.as_mut_ptr().cast(),
                buf.len(),
                &mut found,
            )
        };
        if rc == libc::ERANGE && buf.len() < 1 << 20 {
            buf.resize(buf.len() * 4, 0);
            continue;
        }
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        return Ok((!found.is_null()).then_some(group.gr_gid));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_socketpair_peer_is_this_process() {
        let (a, _b) = UnixStream::pair().unwrap();
        let cred = peer_credentials(&a).unwrap();
        assert_eq!(cred.pid, std::process::id() as i32);
        // SAFETY: getuid/getgid have no preconditions and cannot fail.
        let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
        assert_eq!((cred.uid, cred.gid), (uid, gid));
        assert!(cred.in_group(gid));
    }

    #[test]
    fn group_names_resolve() {
        assert_eq!(group_id("root").unwrap(), Some(0));
        assert_eq!(group_id("no-such-group-shoal").unwrap(), None);
    }
}
