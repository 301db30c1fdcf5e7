//! Ctrl-C and SIGTERM during `wire` and `scaling`: the bench notices at
//! its next pause, returns an error, and the rig's drops clean up (kill
//! trafgen and shoal by process group, delete the namespaces). Without
//! this, the default action would end the bench and leave trafgen
//! flooding in its own process group, which the terminal's SIGINT never
//! reaches.

#![allow(unsafe_code)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Routes SIGINT and SIGTERM to a flag [`pause`] checks.
pub fn catch_interrupts() {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: `on_signal` is an `extern "C"` function that only stores
        // to an atomic, which is async-signal-safe; `signal` has no other
        // preconditions.
        unsafe {
            libc::signal(sig, on_signal as *const () as libc::sighandler_t);
        }
    }
}

/// Sleeps `secs`, failing early if SIGINT or SIGTERM arrived.
///
/// # Errors
/// When the bench was interrupted.
pub fn pause(secs: f64) -> Result<()> {
    let until = Instant::now() + Duration::from_secs_f64(secs.max(0.0));
    loop {
        if INTERRUPTED.load(Ordering::SeqCst) {
            bail!("interrupted");
        }
        let now = Instant::now();
        if now >= until {
            return Ok(());
        }
        std::thread::sleep((until - now).min(Duration::from_millis(50)));
    }
}
