//! Thread scheduling: the nice value and the policy of the calling thread.

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

/// Sets the calling thread's scheduling policy: `SCHED_BATCH` with
/// `batch`, else `SCHED_OTHER` (its nice value is kept). Moving between
/// these two needs no privilege.
pub fn set_thread_batch(batch: bool) -> io::Result<()> {
    let policy = if batch {
        libc::SCHED_BATCH
    } else {
        libc::SCHED_OTHER
    };
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is an initialised `sched_param` on this stack frame
    // that outlives the call, which only reads it; pid 0 is the calling
    // thread; the call returns 0 or -1 with errno.
    let ret = unsafe { libc::sched_setscheduler(0, policy, &param) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_sets_its_own_policy_and_back() {
        std::thread::spawn(|| {
            // SAFETY: reads no memory; pid 0 is the calling thread.
            let policy = || unsafe { libc::sched_getscheduler(0) };
            set_thread_batch(true).unwrap();
            assert_eq!(policy(), libc::SCHED_BATCH);
            set_thread_batch(false).unwrap();
            assert_eq!(policy(), libc::SCHED_OTHER);
        })
        .join()
        .unwrap();
    }

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
