//! Process-wide signal dispositions: the stop flag that SIGINT and SIGTERM
//! raise, the default SIGPIPE disposition for command-line tools and the
//! ignored one for the engine; and asking another process to stop
//! ([`terminate`]).
//!
//! SIGPIPE: the `shoal` binary restores its default at start, so that a
//! command writing to a closed pipe ends quietly; `shoal run` then ignores
//! it before any thread starts ([`ignore_sigpipe`]). The engine writes to
//! sockets whose peers may vanish at any moment, and not every write
//! carries `MSG_NOSIGNAL` (a vectored write, `writev`, cannot: TLS records
//! go out that way): with the default disposition, one client that resets
//! its connection while an answer is written would end the engine. An
//! ignored SIGPIPE turns that into an `EPIPE` error on the one connection.
//!
//! Handlers installed here only store to an atomic, which is
//! async-signal-safe; nothing else runs in signal context.

use std::io;
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

/// Sends SIGTERM to process `pid` (a child's `Child::id`).
///
/// # Errors
/// When there is no such process, it is not ours to signal, or `pid` does
/// not fit a `pid_t`.
pub fn terminate(pid: u32) -> io::Result<()> {
    let pid = libc::pid_t::try_from(pid)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "pid out of range"))?;
    // SAFETY: kill(2) takes plain integers and touches no memory of ours.
    if unsafe { libc::kill(pid, libc::SIGTERM) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Ignores SIGPIPE (the engine: a write to a socket its peer closed fails
/// with `EPIPE` instead of ending the process). Call it before any other
/// thread exists.
pub fn ignore_sigpipe() {
    // SAFETY: setting SIGPIPE's disposition to "ignore" has no
    // preconditions.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
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
