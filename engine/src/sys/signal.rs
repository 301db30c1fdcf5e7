//! Process-wide signal dispositions: the stop flag that SIGINT and SIGTERM
//! raise, and the default SIGPIPE disposition for command-line tools.
//!
//! Handlers installed here only store to an atomic, which is
//! async-signal-safe; nothing else runs in signal context.

use std::sync::atomic::{AtomicBool, Ordering};

/// Raised by SIGINT and SIGTERM once [`catch_stop`] has run. Anyone may
/// also raise it to stop the engine; nothing lowers it.
pub static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// Routes SIGINT and SIGTERM to [`STOP`] instead of ending the process.
pub fn catch_stop() {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: `on_stop` is an `extern "C"` function that only stores to
        // an atomic, which is async-signal-safe; `signal` has no other
        // preconditions.
        unsafe {
            libc::signal(sig, on_stop as *const () as libc::sighandler_t);
        }
    }
}

/// Restores SIGPIPE's default action, so that a command writing to a closed
/// pipe (`shoal query | head`) ends quietly like other Unix tools instead of
/// failing its next write. Call it before any other thread exists.
pub fn default_sigpipe() {
    // SAFETY: setting SIGPIPE's disposition to the default has no
    // preconditions.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}
