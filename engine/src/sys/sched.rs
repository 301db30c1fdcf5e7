//! Thread scheduling: the nice value of the calling thread.

use std::io;

/// Sets the calling thread's nice value (`setpriority(PRIO_PROCESS, tid)`:
/// on Linux it applies to the one thread). Lowering it back needs
/// `CAP_SYS_NICE`, which a process running AF_XDP or AF_PACKET holds.
pub fn set_thread_nice(nice: i32) -> io::Result<()> {
    // SAFETY: `gettid` takes no arguments and cannot fail.
    let tid = unsafe { libc::gettid() };
    // SAFETY: `setpriority` reads no memory; it takes a scope, an id and a
    // value, and returns 0 or -1 with errno.
    let ret = unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, nice) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_can_lower_its_own_priority() {
        std::thread::spawn(|| {
            set_thread_nice(19).unwrap();
            // SAFETY: `gettid` takes no arguments and cannot fail.
            let tid = unsafe { libc::gettid() };
            // SAFETY: reads no memory; -1 with errno set to 0 beforehand is
            // not expected for nice 19, so the value is checked directly.
            let nice = unsafe { libc::getpriority(libc::PRIO_PROCESS, tid as libc::id_t) };
            assert_eq!(nice, 19);
        })
        .join()
        .unwrap();
    }
}
