//! TAP device syscalls behind [`TapSys`]: `/dev/net/tun` + `TUNSETIFF`,
//! interface ioctls (MAC address, up flag), and the frame reads and writes.
//!
//! Owns every `unsafe` call the exception path needs. Interface ioctls act
//! in the network namespace of the calling thread.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;

/// Longest interface name the kernel accepts (`IFNAMSIZ - 1`).
pub const MAX_NAME_LEN: usize = libc::IFNAMSIZ - 1;

/// The syscall seam for TAP devices. [`Kernel`] is the real one.
pub trait TapSys: Send + Sync {
    /// Opens one queue of TAP `name` (`IFF_TAP | IFF_NO_PI`, plus
    /// `IFF_MULTI_QUEUE` when asked), non-blocking; creates the device if
    /// needed. Returns the descriptor and the name the kernel used.
    fn open_queue(&self, name: &str, multi_queue: bool) -> io::Result<(OwnedFd, String)>;
    /// Sets interface `name`'s MAC address (`SIOCSIFHWADDR`).
    fn set_mac(&self, name: &str, mac: [u8; 6]) -> io::Result<()>;
    /// Interface `name`'s MAC address (`SIOCGIFHWADDR`).
    fn mac(&self, name: &str) -> io::Result<[u8; 6]>;
    /// Sets `IFF_UP` on interface `name`.
    fn set_up(&self, name: &str) -> io::Result<()>;
    /// Writes one frame made of `head` followed by `rest` (one `writev`).
    fn write_frame(&self, fd: BorrowedFd<'_>, head: &[u8], rest: &[u8]) -> io::Result<usize>;
    /// Reads one frame the kernel sent into the TAP.
    fn read_frame(&self, fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize>;
}

/// The real kernel.
#[derive(Clone, Copy, Debug, Default)]
pub struct Kernel;

fn ifreq_for(name: &str) -> io::Result<libc::ifreq> {
    if name.is_empty()
        || name.len() > MAX_NAME_LEN
        || name
            .bytes()
            .any(|b| b == 0 || b == b'/' || b.is_ascii_whitespace())
    {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "bad interface name",
        ));
    }
    // SAFETY: `ifreq` is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    Ok(req)
}

fn name_of(req: &libc::ifreq) -> String {
    let bytes: Vec<u8> = req
        .ifr_name
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Runs an interface ioctl on a throwaway `AF_INET` datagram socket.
fn interface_ioctl(request: libc::c_ulong, req: &mut libc::ifreq) -> io::Result<()> {
    // SAFETY: plain syscall with constant arguments.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` was just returned by `socket` and nothing else owns it.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: every caller passes an interface request (`SIOC[GS]IF*`) whose
    // argument is a `struct ifreq`; `req` is valid and writable for the call.
    let ret = unsafe { libc::ioctl(sock.as_raw_fd(), request as _, req as *mut libc::ifreq) };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

impl TapSys for Kernel {
    fn open_queue(&self, name: &str, multi_queue: bool) -> io::Result<(OwnedFd, String)> {
        let mut req = ifreq_for(name)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")?;
        let mut flags = libc::IFF_TAP | libc::IFF_NO_PI;
        if multi_queue {
            flags |= libc::IFF_MULTI_QUEUE;
        }
        req.ifr_ifru.ifru_flags = flags as libc::c_short;
        // SAFETY: TUNSETIFF takes a `struct ifreq` that the kernel reads and
        // writes back (the final name); `req` is valid for the call and the
        // descriptor is an open `/dev/net/tun`.
        let ret = unsafe {
            libc::ioctl(
                file.as_raw_fd(),
                libc::TUNSETIFF as _,
                &mut req as *mut libc::ifreq,
            )
        };
        if ret < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok((OwnedFd::from(file), name_of(&req)))
    }

    fn set_mac(&self, name: &str, mac: [u8; 6]) -> io::Result<()> {
        let mut req = ifreq_for(name)?;
        // SAFETY: writing the `ifru_hwaddr` member of the union, which is the
        // one SIOCSIFHWADDR reads; `sockaddr` is plain old data.
        unsafe {
            req.ifr_ifru.ifru_hwaddr.sa_family = libc::ARPHRD_ETHER;
            for (dst, src) in req.ifr_ifru.ifru_hwaddr.sa_data.iter_mut().zip(mac) {
                *dst = src as libc::c_char;
            }
        }
        interface_ioctl(libc::SIOCSIFHWADDR, &mut req)
    }

    fn mac(&self, name: &str) -> io::Result<[u8; 6]> {
        let mut req = ifreq_for(name)?;
        interface_ioctl(libc::SIOCGIFHWADDR, &mut req)?;
        let mut mac = [0u8; 6];
        // SAFETY: SIOCGIFHWADDR filled `ifru_hwaddr`; reading plain old data.
        let data = unsafe { req.ifr_ifru.ifru_hwaddr.sa_data };
        for (dst, src) in mac.iter_mut().zip(data) {
            *dst = src as u8;
        }
        Ok(mac)
    }

    fn set_up(&self, name: &str) -> io::Result<()> {
        let mut req = ifreq_for(name)?;
        interface_ioctl(libc::SIOCGIFFLAGS, &mut req)?;
        // SAFETY: SIOCGIFFLAGS filled `ifru_flags`; we set one bit in it.
        unsafe { req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
        interface_ioctl(libc::SIOCSIFFLAGS, &mut req)
    }

    fn write_frame(&self, fd: BorrowedFd<'_>, head: &[u8], rest: &[u8]) -> io::Result<usize> {
        let iov = [
            libc::iovec {
                iov_base: head.as_ptr() as *mut libc::c_void,
                iov_len: head.len(),
            },
            libc::iovec {
                iov_base: rest.as_ptr() as *mut libc::c_void,
                iov_len: rest.len(),
            },
        ];
        // SAFETY: both iovecs describe live, readable slices for the duration
        // of the call; `writev` only reads through them.
        let n = unsafe { libc::writev(fd.as_raw_fd(), iov.as_ptr(), 2) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }

    fn read_frame(&self, fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: `buf` is valid and writable for `buf.len()` bytes.
        let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_before_any_syscall() {
        for bad in ["", "a-name-that-is-too-long", "has space", "sl/ash"] {
            let err = Kernel.open_queue(bad, false).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{bad:?}");
        }
        let req = ifreq_for("shoal0").unwrap();
        assert_eq!(name_of(&req), "shoal0");
    }
}
