//! Sleeping poll loops and the doorbells that wake them.
//!
//! A poll loop with nothing to do blocks in `poll(2)` on its backends'
//! descriptors and its own [`Bell`] (an `eventfd`). The control thread
//! rings every loop's bell ([`Bells::ring`]) when it publishes a map,
//! requests a reset, queues a frame for the wire or stops the engine, so a
//! sleeping loop reacts at once and otherwise sleeps until a frame arrives
//! or its housekeeping timeout.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// One loop's doorbell: a non-blocking `eventfd`.
#[derive(Debug)]
pub struct Bell {
    fd: OwnedFd,
}

impl Bell {
    /// A new, silent bell.
    pub fn new() -> io::Result<Self> {
        // SAFETY: `eventfd` takes an initial value and flags, reads no
        // memory, and returns a new descriptor or -1.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by the kernel as a new descriptor
        // that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Self { fd })
    }

    /// Makes the bell readable until [`Bell::silence`]. Never blocks: a
    /// counter at its maximum is as rung as it gets.
    pub fn ring(&self) {
        let one: u64 = 1;
        // SAFETY: writes the 8 bytes of `one`, which lives for the call, to
        // a descriptor this bell owns.
        let _ = unsafe {
            libc::write(
                self.fd.as_raw_fd(),
                (&one as *const u64).cast(),
                std::mem::size_of::<u64>(),
            )
        };
    }

    /// Reads the counter back to zero (nothing happens when it is zero).
    pub fn silence(&self) {
        let mut count: u64 = 0;
        // SAFETY: reads at most 8 bytes into `count`, which lives for the
        // call, from a descriptor this bell owns.
        let _ = unsafe {
            libc::read(
                self.fd.as_raw_fd(),
                (&mut count as *mut u64).cast(),
                std::mem::size_of::<u64>(),
            )
        };
    }

    /// The descriptor, to poll on.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Every poll loop's bell.
#[derive(Debug, Default)]
pub struct Bells {
    bells: Vec<Bell>,
}

impl Bells {
    /// `n` bells.
    pub fn new(n: usize) -> io::Result<Self> {
        Ok(Self {
            bells: (0..n).map(|_| Bell::new()).collect::<io::Result<_>>()?,
        })
    }

    /// Loop `i`'s bell.
    pub fn get(&self, i: usize) -> Option<&Bell> {
        self.bells.get(i)
    }

    /// Wakes every loop.
    pub fn ring(&self) {
        for b in &self.bells {
            b.ring();
        }
    }
}

/// The descriptors one loop sleeps on, ready for `poll(2)`.
#[derive(Debug)]
pub struct Sleeper {
    fds: Vec<libc::pollfd>,
}

impl Sleeper {
    /// Sleeps on `fds` (readable).
    pub fn new(fds: &[RawFd]) -> Self {
        Self {
            fds: fds
                .iter()
                .map(|&fd| libc::pollfd {
                    fd,
                    events: libc::POLLIN,
                    revents: 0,
                })
                .collect(),
        }
    }

    /// Blocks until one of the descriptors is readable (or in error), or
    /// `timeout_ms` passes, or a signal arrives.
    pub fn sleep(&mut self, timeout_ms: i32) -> io::Result<()> {
        for p in &mut self.fds {
            p.revents = 0;
        }
        // SAFETY: `self.fds` is a valid, exclusively borrowed array of
        // `self.fds.len()` pollfds for the duration of the call; the
        // descriptors in it belong to backends and a bell that outlive the
        // sleeper (the poll loop owns all three).
        let ret = unsafe {
            libc::poll(
                self.fds.as_mut_ptr(),
                self.fds.len() as libc::nfds_t,
                timeout_ms,
            )
        };
        if ret < 0 {
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn a_rung_bell_wakes_a_sleeper_and_a_silenced_one_does_not() {
        let bells = Bells::new(2).unwrap();
        let raw = |i: usize| bells.get(i).unwrap().fd().as_raw_fd();
        let mut s = Sleeper::new(&[raw(1)]);
        let t = Instant::now();
        s.sleep(50).unwrap();
        assert!(t.elapsed() >= Duration::from_millis(40), "slept through");
        bells.ring();
        let t = Instant::now();
        s.sleep(5_000).unwrap();
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "the bell did not wake it"
        );
        bells.get(1).unwrap().silence();
        let t = Instant::now();
        s.sleep(50).unwrap();
        assert!(
            t.elapsed() >= Duration::from_millis(40),
            "still rung after silence"
        );
        // Ringing many times saturates nothing: one silence clears it.
        for _ in 0..1000 {
            bells.ring();
        }
        bells.get(1).unwrap().silence();
        let t = Instant::now();
        s.sleep(50).unwrap();
        assert!(t.elapsed() >= Duration::from_millis(40));
    }
}
