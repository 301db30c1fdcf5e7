//! The pcap-replay backend: a [`FrameIo`] that hands out the frames of a
//! capture instead of a NIC's, for tests and benchmarks. Same interface as
//! AF_XDP and AF_PACKET, so a poll loop cannot tell the difference.
//!
//! The capture is read once into one buffer; `receive` hands out zero-copy
//! slices of it, in order, `max` at a time, repeating the capture
//! `loops` times. Transmitted frames are kept (up to a bound) so tests can
//! inspect what the engine sent.

use std::io;
use std::path::Path;

use crate::io::{FrameIo, MAX_BATCH};

/// Most transmitted frames a replay keeps for inspection.
pub const MAX_KEPT_TX: usize = 65_536;

/// A capture replayed as if it arrived on a NIC.
#[derive(Debug)]
pub struct PcapReplay {
    data: Vec<u8>,
    /// (offset, length) of each Ethernet frame in `data`.
    frames: Vec<(usize, usize)>,
    next: usize,
    loops_left: u64,
    sent: Vec<Vec<u8>>,
    name: String,
}

/// Why a capture could not be replayed.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// Reading the file failed.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The error.
        source: io::Error,
    },
    /// The file is not a capture shoal can read.
    #[error("{path}: {source}")]
    Format {
        /// The file.
        path: String,
        /// The reader's complaint.
        source: shoal_dataplane::pcap::PcapError,
    },
}

impl PcapReplay {
    /// Replays the Ethernet frames of `capture` (pcap or pcapng bytes)
    /// `loops` times. Non-Ethernet records are skipped; a capture that ends
    /// early keeps the frames read before the damage.
    pub fn from_bytes(
        capture: Vec<u8>,
        loops: u64,
        name: &str,
    ) -> Result<Self, shoal_dataplane::pcap::PcapError> {
        let mut frames = Vec::new();
        {
            let base = capture.as_ptr() as usize;
            for record in shoal_dataplane::pcap::frames(&capture)? {
                let Ok(r) = record else { break };
                if r.link_type == 1 && !r.data.is_empty() {
                    frames.push((r.data.as_ptr() as usize - base, r.data.len()));
                }
            }
        }
        Ok(Self {
            data: capture,
            frames,
            next: 0,
            loops_left: loops,
            sent: Vec::new(),
            name: name.to_string(),
        })
    }

    /// Replays the capture file at `path` `loops` times.
    pub fn open(path: &Path, loops: u64) -> Result<Self, ReplayError> {
        let p = path.display().to_string();
        let data = std::fs::read(path).map_err(|source| ReplayError::Read {
            path: p.clone(),
            source,
        })?;
        Self::from_bytes(data, loops, &p).map_err(|source| ReplayError::Format { path: p, source })
    }

    /// Ethernet frames in one pass of the capture.
    pub fn len(&self) -> usize {
        self.frames.len()
    }

    /// Whether the capture holds no Ethernet frame.
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Whether every pass has been handed out.
    pub fn finished(&self) -> bool {
        self.loops_left == 0 || self.frames.is_empty()
    }

    /// Frames the engine transmitted so far (the first [`MAX_KEPT_TX`]).
    pub fn sent(&self) -> &[Vec<u8>] {
        &self.sent
    }
}

impl FrameIo for PcapReplay {
    fn receive(&mut self, max: usize, handle: &mut dyn FnMut(&[&[u8]])) -> io::Result<usize> {
        if self.finished() {
            handle(&[]);
            return Ok(0);
        }
        let want = max.clamp(1, MAX_BATCH);
        let mut batch: [&[u8]; MAX_BATCH] = [&[]; MAX_BATCH];
        let mut n = 0;
        while n < want && self.loops_left > 0 {
            let (off, len) = self.frames[self.next];
            batch[n] = &self.data[off..off + len];
            n += 1;
            self.next += 1;
            if self.next == self.frames.len() {
                self.next = 0;
                self.loops_left -= 1;
            }
        }
        handle(&batch[..n]);
        Ok(n)
    }

    fn transmit(&mut self, frames: &[&[u8]]) -> io::Result<usize> {
        for f in frames {
            if self.sent.len() < MAX_KEPT_TX {
                self.sent.push(f.to_vec());
            }
        }
        Ok(frames.len())
    }

    fn wait(&mut self, timeout_ms: i32) -> io::Result<()> {
        if self.finished() && timeout_ms > 0 {
            std::thread::sleep(std::time::Duration::from_millis(timeout_ms.min(10) as u64));
        }
        Ok(())
    }

    fn describe(&self) -> String {
        format!("pcap replay {} ({} frames)", self.name, self.frames.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A classic pcap (little-endian, microseconds) of `frames`.
    fn pcap(frames: &[&[u8]]) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
        f.extend_from_slice(&2u16.to_le_bytes());
        f.extend_from_slice(&4u16.to_le_bytes());
        f.extend_from_slice(&[0; 8]);
        f.extend_from_slice(&65535u32.to_le_bytes());
        f.extend_from_slice(&1u32.to_le_bytes());
        for (i, fr) in frames.iter().enumerate() {
            f.extend_from_slice(&(i as u32).to_le_bytes());
            f.extend_from_slice(&0u32.to_le_bytes());
            f.extend_from_slice(&(fr.len() as u32).to_le_bytes());
            f.extend_from_slice(&(fr.len() as u32).to_le_bytes());
            f.extend_from_slice(fr);
        }
        f
    }

    #[test]
    fn replays_in_order_in_batches_and_loops() {
        let a = [1u8; 60];
        let b = [2u8; 61];
        let c = [3u8; 62];
        let mut r = PcapReplay::from_bytes(pcap(&[&a, &b, &c]), 2, "t").unwrap();
        assert_eq!(r.len(), 3);
        let mut seen = Vec::new();
        while !r.finished() {
            r.receive(2, &mut |frames| {
                assert!(frames.len() <= 2);
                seen.extend(frames.iter().map(|f| f.len()));
            })
            .unwrap();
        }
        assert_eq!(seen, vec![60, 61, 62, 60, 61, 62]);
        assert_eq!(r.receive(8, &mut |f| assert!(f.is_empty())).unwrap(), 0);
        assert_eq!(r.transmit(&[&a]).unwrap(), 1);
        assert_eq!(r.sent().len(), 1);
        assert!(r.describe().contains("3 frames"));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(PcapReplay::from_bytes(vec![0xde, 0xad], 1, "x").is_err());
        assert!(PcapReplay::open(Path::new("/nonexistent/shoal.pcap"), 1).is_err());
    }
}
