//! The boot counter: a number that is higher at every start of a host's
//! engine than at any start before, kept in a small state file.
//!
//! Heartbeats carry it, authenticated; peers refuse heartbeats of a lower
//! boot counter than the highest they accepted from that host, so frames of
//! a previous run are worthless the moment the new run is heard (see
//! [`shoal_controlplane::membership`]). The file is
//! `<state_dir>/host<ID>.boot`, one decimal number, replaced atomically
//! (written to a temporary file, synced, renamed) before the first
//! heartbeat leaves.
//!
//! A start takes the larger of the stored counter plus one and the wall
//! clock in ns: with the file (under `/run`, it lasts until the machine
//! reboots) the counter grows even when the clock steps back; without it
//! (a reboot, a new machine) the counter still exceeds any earlier one as
//! long as the clock has moved forward since, which a reboot takes care of
//! at human time scales.

#![forbid(unsafe_code)]

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// The state file of host `id`'s boot counter under `dir`.
pub fn path(dir: &Path, id: u8) -> PathBuf {
    dir.join(format!("host{id}.boot"))
}

/// Reads the counter stored at `file` (none when absent or unreadable as a
/// number), takes the next one given the wall clock `wall_ns`, stores it
/// atomically and returns it.
///
/// # Errors
/// When the directory cannot be created or the file cannot be written: the
/// engine must not start with a counter it could not keep.
pub fn next(file: &Path, wall_ns: u64) -> std::io::Result<u64> {
    let stored = std::fs::read_to_string(file)
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok());
    let boot = stored
        .map_or(0, |b| b.saturating_add(1))
        .max(wall_ns)
        .max(1);
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir)?;
    }
    // One temporary name per call: engines of the same host ID in several
    // network namespaces of one machine (a lab) may start at the same moment.
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let call = CALLS.fetch_add(1, Ordering::Relaxed);
    let tmp = file.with_extension(format!("boot.{}.{call}.tmp", std::process::id()));
    {
        let mut f = std::fs::File::create(&tmp)?;
        writeln!(f, "{boot}")?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, file)?;
    Ok(boot)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_across_starts_even_when_the_clock_steps_back() {
        let dir = std::env::temp_dir().join(format!("shoal-boot-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let f = path(&dir, 3);
        assert_eq!(next(&f, 1_000).unwrap(), 1_000);
        assert_eq!(next(&f, 500).unwrap(), 1_001, "clock stepped back");
        assert_eq!(next(&f, 5_000).unwrap(), 5_000, "clock moved on");
        assert_eq!(std::fs::read_to_string(&f).unwrap(), "5000\n");
        // A damaged file falls back to the clock.
        std::fs::write(&f, "garbage").unwrap();
        assert_eq!(next(&f, 4_000).unwrap(), 4_000);
        let left: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(left, [std::ffi::OsString::from("host3.boot")]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn simultaneous_starts_of_one_host_id_all_keep_a_counter() {
        let dir = std::env::temp_dir().join(format!("shoal-boot-race-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let f = path(&dir, 1);
        let starts: Vec<_> = (0..8)
            .map(|i| {
                let f = f.clone();
                std::thread::spawn(move || {
                    (0..50).map(|n| next(&f, i * 1_000 + n)).collect::<Vec<_>>()
                })
            })
            .collect();
        for t in starts {
            for r in t.join().unwrap() {
                assert!(r.is_ok(), "{r:?}");
            }
        }
        assert!(std::fs::read_to_string(&f)
            .unwrap()
            .trim()
            .parse::<u64>()
            .is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
