//! The exception path: kept frames enter the local kernel stack through a
//! TAP device, where the real service listens on the VIP.
//!
//! Owns the TAP device's queues (one descriptor per poll loop) and its MAC.
//! Addresses, sysctls and cleanup belong to [`crate::setup::HostSetup`],
//! which creates the queues through [`Tap::create`].
//!
//! Guarantees:
//! - [`Delivery::deliver`] never blocks (descriptors are non-blocking). Each
//!   frame enters the kernel with the TAP's own MAC as destination — the
//!   frames the dataplane keeps carry the cluster MAC (or the multicast MAC),
//!   which the kernel would otherwise classify as "for another host" and
//!   drop. Frames shorter than an Ethernet header, `EAGAIN`/`ENOBUFS` and
//!   per-frame rejections are counted drops, never errors.
//! - Only a vanished or detached device (`EIO`, `EBADFD`, `ENODEV`, `EBADF`)
//!   makes `deliver` return an error, so the poll loop can notice.
//! - The descriptors are not persistent: the device disappears when the last
//!   queue closes, including after a crash.
//!
//! Design decision: the destination MAC is replaced without copying the
//! frame: each write is one `writev` of two pieces, the TAP's MAC and the
//! frame from byte 6 on (the frame stays in the receive ring). The kernel
//! copies the bytes into an skb either way; this saves the second copy a
//! scratch buffer would cost.
//! Replies do not come back through the TAP: the VIP is a local address, so
//! the kernel routes replies out of the real interface with that
//! interface's MAC. Whatever the kernel does send into the TAP (IPv6 router
//! solicitations, MLD reports) is read and discarded by [`Tap::drain`].

use std::fmt;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use crate::io::Delivery;
use crate::sys::tap::{Kernel, TapSys, MAX_NAME_LEN};

/// Length of an Ethernet header's destination address.
const MAC_LEN: usize = 6;
/// Shortest frame worth handing to the kernel: an Ethernet header.
const MIN_FRAME: usize = 14;

/// What TAP device to create.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TapConfig {
    /// Interface name, at most 15 bytes (for example `shoal0`).
    pub name: String,
    /// Queues to open: one per poll loop. More than one uses `IFF_MULTI_QUEUE`.
    pub queues: usize,
    /// MAC to give the device; `None` keeps the random one the kernel chose.
    pub mac: Option<[u8; 6]>,
}

impl Default for TapConfig {
    fn default() -> Self {
        Self {
            name: "shoal0".to_owned(),
            queues: 1,
            mac: None,
        }
    }
}

/// Why a TAP device could not be created.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// The configuration is unusable.
    #[error("invalid TAP config: {0}")]
    Config(&'static str),
    /// A syscall failed.
    #[error("TAP {step} on {name:?} failed: {source}")]
    Syscall {
        /// Which step (`TUNSETIFF`, `SIOCSIFHWADDR`, ...).
        step: &'static str,
        /// Interface name.
        name: String,
        /// What the kernel said.
        source: io::Error,
    },
}

/// Counters of one TAP queue.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TapStats {
    /// Frames written into the kernel.
    pub delivered: u64,
    /// Frames dropped because the kernel had no room (`EAGAIN`/`ENOBUFS`).
    pub dropped_full: u64,
    /// Frames too short to carry an Ethernet header.
    pub dropped_short: u64,
    /// Frames the kernel rejected (other errors, or a short write).
    pub write_errors: u64,
    /// Frames the kernel sent into the TAP that [`Tap::drain`] discarded.
    pub drained: u64,
}

/// One queue of the TAP device: the exception path of one poll loop.
pub struct Tap {
    fd: OwnedFd,
    sys: Arc<dyn TapSys>,
    name: String,
    mac: [u8; 6],
    queue: usize,
    stats: TapStats,
    drain_buf: Box<[u8]>,
}

impl fmt::Debug for Tap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tap")
            .field("name", &self.name)
            .field("mac", &format_mac(self.mac))
            .field("queue", &self.queue)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: [u8; 6]) -> String {
    let [a, b, c, d, e, f] = mac;
    format!("{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{f:02x}")
}

fn device_gone(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::EIO) | Some(libc::EBADFD) | Some(libc::ENODEV) | Some(libc::EBADF)
    )
}

impl Tap {
    /// Creates (or attaches to) the TAP device with the real kernel, sets its
    /// MAC and brings it up. Returns one [`Tap`] per queue.
    pub fn create(config: &TapConfig) -> Result<Vec<Tap>, TapError> {
        Self::create_with(Arc::new(Kernel), config)
    }

    /// As [`Tap::create`], through the given syscall seam.
    pub fn create_with(sys: Arc<dyn TapSys>, config: &TapConfig) -> Result<Vec<Tap>, TapError> {
        if config.name.is_empty() || config.name.len() > MAX_NAME_LEN {
            return Err(TapError::Config("name must be 1 to 15 bytes"));
        }
        if config.queues == 0 || config.queues > 256 {
            return Err(TapError::Config("queues must be in 1..=256"));
        }
        if let Some(mac) = config.mac {
            if mac[0] & 1 != 0 || mac == [0; 6] {
                return Err(TapError::Config("mac must be a non-zero unicast address"));
            }
        }
        let fail = |step: &'static str| {
            let name = config.name.clone();
            move |source| TapError::Syscall { step, name, source }
        };
        let multi_queue = config.queues > 1;
        let mut fds = Vec::with_capacity(config.queues);
        let mut name = config.name.clone();
        for _ in 0..config.queues {
            let (fd, actual) = sys
                .open_queue(&config.name, multi_queue)
                .map_err(fail("TUNSETIFF"))?;
            name = actual;
            fds.push(fd);
        }
        if let Some(mac) = config.mac {
            sys.set_mac(&name, mac).map_err(fail("SIOCSIFHWADDR"))?;
        }
        let mac = sys.mac(&name).map_err(fail("SIOCGIFHWADDR"))?;
        sys.set_up(&name).map_err(fail("SIOCSIFFLAGS"))?;
        Ok(fds
            .into_iter()
            .enumerate()
            .map(|(queue, fd)| Tap {
                fd,
                sys: sys.clone(),
                name: name.clone(),
                mac,
                queue,
                stats: TapStats::default(),
                drain_buf: vec![0; 65536].into_boxed_slice(),
            })
            .collect())
    }

    /// The device's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The device's MAC: the destination every delivered frame carries.
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// Which queue of the device this is (`0..queues`).
    pub fn queue(&self) -> usize {
        self.queue
    }

    /// Counters so far.
    pub fn stats(&self) -> TapStats {
        self.stats
    }

    /// Reads and discards up to `max` frames the kernel sent into the TAP.
    /// Never blocks; returns how many were discarded.
    pub fn drain(&mut self, max: usize) -> usize {
        let mut n = 0;
        while n < max {
            match self.sys.read_frame(self.fd.as_fd(), &mut self.drain_buf) {
                Ok(_) => n += 1,
                Err(_) => break,
            }
        }
        self.stats.drained += n as u64;
        n
    }
}

impl Delivery for Tap {
    fn deliver(&mut self, frames: &[&[u8]]) -> io::Result<usize> {
        let mut taken = 0;
        for frame in frames {
            if frame.len() < MIN_FRAME {
                self.stats.dropped_short += 1;
                continue;
            }
            match self
                .sys
                .write_frame(self.fd.as_fd(), &self.mac, &frame[MAC_LEN..])
            {
                Ok(n) if n == frame.len() => {
                    taken += 1;
                    self.stats.delivered += 1;
                }
                Ok(_) => self.stats.write_errors += 1,
                Err(err)
                    if matches!(err.raw_os_error(), Some(libc::EAGAIN) | Some(libc::ENOBUFS)) =>
                {
                    self.stats.dropped_full += 1;
                }
                Err(err) if device_gone(&err) => {
                    self.stats.write_errors += 1;
                    return Err(err);
                }
                Err(err) => {
                    self.stats.write_errors += 1;
                    tracing::debug!(tap = %self.name, error = %err, "TAP write rejected");
                }
            }
        }
        Ok(taken)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use parking_lot::Mutex;
    use std::os::fd::BorrowedFd;

    #[derive(Default)]
    struct Fake {
        fail: Option<&'static str>,
        written: Mutex<Vec<Vec<u8>>>,
        write_script: Mutex<Vec<Option<i32>>>,
        opened: Mutex<Vec<bool>>,
        mac: Mutex<Option<[u8; 6]>>,
    }

    impl Fake {
        fn check(&self, step: &'static str) -> io::Result<()> {
            if self.fail == Some(step) {
                Err(io::Error::from_raw_os_error(libc::EPERM))
            } else {
                Ok(())
            }
        }
    }

    impl TapSys for Fake {
        fn open_queue(&self, name: &str, multi_queue: bool) -> io::Result<(OwnedFd, String)> {
            self.check("open")?;
            self.opened.lock().push(multi_queue);
            Ok((
                OwnedFd::from(std::fs::File::open("/dev/null")?),
                name.to_owned(),
            ))
        }
        fn set_mac(&self, _name: &str, mac: [u8; 6]) -> io::Result<()> {
            self.check("set_mac")?;
            *self.mac.lock() = Some(mac);
            Ok(())
        }
        fn mac(&self, _name: &str) -> io::Result<[u8; 6]> {
            self.check("mac")?;
            Ok(self.mac.lock().unwrap_or([2, 0, 0, 0, 0, 0x99]))
        }
        fn set_up(&self, _name: &str) -> io::Result<()> {
            self.check("up")
        }
        fn write_frame(&self, _fd: BorrowedFd<'_>, head: &[u8], rest: &[u8]) -> io::Result<usize> {
            if let Some(Some(errno)) = self.write_script.lock().pop() {
                return Err(io::Error::from_raw_os_error(errno));
            }
            let mut frame = head.to_vec();
            frame.extend_from_slice(rest);
            self.written.lock().push(frame);
            Ok(head.len() + rest.len())
        }
        fn read_frame(&self, _fd: BorrowedFd<'_>, _buf: &mut [u8]) -> io::Result<usize> {
            Err(io::Error::from_raw_os_error(libc::EAGAIN))
        }
    }

    fn frame(dst: [u8; 6], tag: u8) -> Vec<u8> {
        let mut f = dst.to_vec();
        f.extend_from_slice(&[0x02, 0, 0, 0, 0, 1, 0x08, 0x00, tag, tag]);
        f
    }

    #[test]
    fn deliver_rewrites_destination_to_tap_mac() {
        let sys = Arc::new(Fake::default());
        let config = TapConfig {
            mac: Some([2, 0x5e, 0, 0, 0, 1]),
            ..TapConfig::default()
        };
        let mut taps = Tap::create_with(sys.clone(), &config).unwrap();
        assert_eq!(taps.len(), 1);
        let tap = &mut taps[0];
        let cluster = frame([2, 0xbf, 10, 0, 0, 100], 1);
        let multicast = frame([3, 0xbf, 10, 0, 0, 100], 2);
        assert_eq!(tap.deliver(&[&cluster, &multicast]).unwrap(), 2);
        let written = sys.written.lock().clone();
        assert_eq!(written.len(), 2);
        for (w, orig) in written.iter().zip([&cluster, &multicast]) {
            assert_eq!(&w[..6], &[2, 0x5e, 0, 0, 0, 1]);
            assert_eq!(&w[6..], &orig[6..]);
        }
        assert_eq!(tap.stats().delivered, 2);
    }

    #[test]
    fn drops_are_counted_never_errors() {
        let sys = Arc::new(Fake::default());
        let mut tap = Tap::create_with(sys.clone(), &TapConfig::default())
            .unwrap()
            .remove(0);
        // Popped from the back: EAGAIN, EINVAL, then success.
        *sys.write_script.lock() = vec![None, Some(libc::EINVAL), Some(libc::EAGAIN)];
        let f = frame([2, 0xbf, 1, 2, 3, 4], 0);
        let short = [0u8; 10];
        assert_eq!(tap.deliver(&[&f, &short, &f, &f]).unwrap(), 1);
        let stats = tap.stats();
        assert_eq!(stats.dropped_full, 1);
        assert_eq!(stats.dropped_short, 1);
        assert_eq!(stats.write_errors, 1);
        assert_eq!(stats.delivered, 1);
    }

    #[test]
    fn vanished_device_is_an_error() {
        let sys = Arc::new(Fake::default());
        let mut tap = Tap::create_with(sys.clone(), &TapConfig::default())
            .unwrap()
            .remove(0);
        *sys.write_script.lock() = vec![Some(libc::EBADFD)];
        let f = frame([2, 0xbf, 1, 2, 3, 4], 0);
        assert_eq!(
            tap.deliver(&[&f]).unwrap_err().raw_os_error(),
            Some(libc::EBADFD)
        );
    }

    #[test]
    fn queues_and_config_errors() {
        let sys = Arc::new(Fake::default());
        let taps = Tap::create_with(
            sys.clone(),
            &TapConfig {
                queues: 3,
                ..TapConfig::default()
            },
        )
        .unwrap();
        assert_eq!(
            taps.iter().map(Tap::queue).collect::<Vec<_>>(),
            vec![0, 1, 2]
        );
        assert_eq!(
            sys.opened.lock().as_slice(),
            &[true, true, true],
            "multi-queue flag"
        );
        assert_eq!(taps[0].mac(), [2, 0, 0, 0, 0, 0x99], "kernel's MAC kept");

        for bad in [
            TapConfig {
                queues: 0,
                ..TapConfig::default()
            },
            TapConfig {
                name: "x".repeat(16),
                ..TapConfig::default()
            },
            TapConfig {
                mac: Some([1, 0, 0x5e, 0, 0, 1]),
                ..TapConfig::default()
            },
        ] {
            assert!(matches!(
                Tap::create_with(sys.clone(), &bad),
                Err(TapError::Config(_))
            ));
        }
        for step in ["open", "set_mac", "mac", "up"] {
            let sys = Arc::new(Fake {
                fail: Some(step),
                ..Fake::default()
            });
            let config = TapConfig {
                mac: Some([2, 0, 0, 0, 0, 1]),
                ..TapConfig::default()
            };
            let err = Tap::create_with(sys, &config).unwrap_err();
            assert!(err.to_string().contains("shoal0"), "{step}: {err}");
        }
    }
}
