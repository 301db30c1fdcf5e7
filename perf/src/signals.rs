//! Ctrl-C and SIGTERM during `wire`, `scaling` and `failover`: the bench
//! notices at its next pause, returns an error, and the rig's drops clean
//! up (kill trafgen and shoal by process group, delete the namespaces).
//! Without this, the default action would end the bench and leave trafgen
//! flooding in its own process group, which the terminal's SIGINT never
//! reaches. The dispositions themselves are the engine's seam
//! (`shoal_engine::sys::signal`).

#![forbid(unsafe_code)]

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use shoal_engine::sys::signal;

/// Routes SIGINT and SIGTERM to a flag [`pause`] checks.
pub fn catch_interrupts() {
    signal::catch_stop();
}

/// Sleeps `secs`, failing early if SIGINT or SIGTERM arrived.
///
/// # Errors
/// When the bench was interrupted.
pub fn pause(secs: f64) -> Result<()> {
    let until = Instant::now() + Duration::from_secs_f64(secs.max(0.0));
    loop {
        if signal::STOP.load(Ordering::SeqCst) {
            bail!("interrupted");
        }
        let now = Instant::now();
        if now >= until {
            return Ok(());
        }
        std::thread::sleep((until - now).min(Duration::from_millis(50)));
    }
}
