//! Process privileges: the calling thread's capability sets and its
//! `no_new_privs` flag.
//!
//! Linux keeps capabilities and `no_new_privs` per thread, and a new thread
//! starts with its creator's. [`restrict_to`] therefore acts on the calling
//! thread only: call it on the main thread before it spawns the threads
//! that should run with less, and they inherit the reduced sets.
//!
//! Guarantees of a successful [`restrict_to`]`(keep)` for the calling
//! thread and everything it later spawns or executes:
//! - `no_new_privs` is set: no `execve` grants privileges (set-user-ID
//!   bits and file capabilities are ignored; a program run as root gets at
//!   most the permitted set below);
//! - the bounding set holds only `keep` (nothing dropped can come back);
//! - the ambient set is empty, the inheritable set is empty;
//! - the permitted and effective sets are `keep` (less whatever the thread
//!   did not hold to begin with).

use std::io;

/// A capability, by its number in `linux/capability.h`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cap(pub u8);

impl Cap {
    /// `CAP_CHOWN`: changing a file's owner or group.
    pub const CHOWN: Cap = Cap(0);
    /// `CAP_NET_ADMIN`: interfaces, addresses, nftables, XDP, net sysctls.
    pub const NET_ADMIN: Cap = Cap(12);
    /// `CAP_NET_RAW`: packet and AF_XDP sockets.
    pub const NET_RAW: Cap = Cap(13);
    /// `CAP_SYS_ADMIN`.
    pub const SYS_ADMIN: Cap = Cap(21);
    /// `CAP_SYS_NICE`: raising a thread's priority back.
    pub const SYS_NICE: Cap = Cap(23);
    /// `CAP_SETPCAP`: changing the bounding set.
    pub const SETPCAP: Cap = Cap(8);
    /// `CAP_BPF`: BPF programs and maps.
    pub const BPF: Cap = Cap(39);

    /// The kernel's name of the capability, for logs and docs.
    pub fn name(self) -> String {
        match self {
            Cap::CHOWN => "CAP_CHOWN".into(),
            Cap::NET_ADMIN => "CAP_NET_ADMIN".into(),
            Cap::NET_RAW => "CAP_NET_RAW".into(),
            Cap::SYS_ADMIN => "CAP_SYS_ADMIN".into(),
            Cap::SYS_NICE => "CAP_SYS_NICE".into(),
            Cap::SETPCAP => "CAP_SETPCAP".into(),
            Cap::BPF => "CAP_BPF".into(),
            Cap(n) => format!("capability {n}"),
        }
    }
}

/// `_LINUX_CAPABILITY_VERSION_3`: 64-bit sets as two 32-bit words.
const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// `struct __user_cap_header_struct`.
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

/// `struct __user_cap_data_struct`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// The highest capability number this kernel knows.
fn last_cap() -> u8 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40)
}

fn prctl(option: libc::c_int, arg2: libc::c_ulong) -> io::Result<()> {
    // SAFETY: the options used here (PR_SET_NO_NEW_PRIVS, PR_CAPBSET_DROP,
    // PR_CAP_AMBIENT) take integer arguments only and read or write no
    // memory of the caller; unused arguments must be 0.
    let ret = unsafe { libc::prctl(option, arg2, 0 as libc::c_ulong, 0 as libc::c_ulong, 0) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Restricts the calling thread to the capabilities in `keep` and sets
/// `no_new_privs` (see the module docs). On error the thread may hold
/// fewer privileges than before, never more.
pub fn restrict_to(keep: &[Cap]) -> io::Result<()> {
    prctl(libc::PR_SET_NO_NEW_PRIVS, 1)?;
    // The bounding set first: dropping from it needs CAP_SETPCAP, which the
    // capset below takes away unless kept.
    for n in 0..=last_cap() {
        if keep.contains(&Cap(n)) {
            continue;
        }
        match prctl(libc::PR_CAPBSET_DROP, n.into()) {
            Ok(()) => {}
            // A capability this kernel does not know.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
            Err(e) => return Err(e),
        }
    }
    prctl(
        libc::PR_CAP_AMBIENT,
        libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
    )?;
    let mut mask = 0u64;
    for c in keep {
        mask |= 1u64.checked_shl(u32::from(c.0)).unwrap_or(0);
    }
    let header = CapHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut held = [CapData::default(); 2];
    // SAFETY: capget reads `header` and writes two CapData words, as
    // version 3 of the interface specifies; both point to live values of
    // exactly those layouts.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_capget,
            &header as *const CapHeader,
            held.as_mut_ptr(),
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut data = [CapData::default(); 2];
    for (i, d) in data.iter_mut().enumerate() {
        let word = (mask >> (32 * i)) as u32;
        // Never ask for what the thread does not hold (capset would fail).
        d.permitted = word & held[i].permitted;
        d.effective = d.permitted;
        d.inheritable = 0;
    }
    // SAFETY: capset reads `header` and two CapData words (version 3); both
    // point to live values of exactly those layouts. pid 0 is this thread.
    let ret =
        unsafe { libc::syscall(libc::SYS_capset, &header as *const CapHeader, data.as_ptr()) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The capability sets and `no_new_privs` of a task, from the lines of
/// `/proc/<pid>/task/<tid>/status` (or `/proc/<pid>/status`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Privileges {
    /// `CapEff`.
    pub effective: u64,
    /// `CapPrm`.
    pub permitted: u64,
    /// `CapBnd`.
    pub bounding: u64,
    /// `CapAmb`.
    pub ambient: u64,
    /// `NoNewPrivs`.
    pub no_new_privs: bool,
}

impl Privileges {
    /// Parses a `status` file's text; missing fields read as 0.
    pub fn from_status(text: &str) -> Self {
        let mut p = Self::default();
        for line in text.lines() {
            let Some((k, v)) = line.split_once(':') else {
                continue;
            };
            let hex = || u64::from_str_radix(v.trim(), 16).unwrap_or(0);
            match k {
                "CapEff" => p.effective = hex(),
                "CapPrm" => p.permitted = hex(),
                "CapBnd" => p.bounding = hex(),
                "CapAmb" => p.ambient = hex(),
                "NoNewPrivs" => p.no_new_privs = v.trim() == "1",
                _ => {}
            }
        }
        p
    }

    /// The mask of `caps`.
    pub fn mask(caps: &[Cap]) -> u64 {
        caps.iter()
            .fold(0, |m, c| m | 1u64.checked_shl(u32::from(c.0)).unwrap_or(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_restricted_thread_and_its_children_keep_only_what_it_kept() {
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("SKIP: needs root to hold capabilities to drop");
            return;
        }
        let keep = [Cap::NET_ADMIN, Cap::SYS_NICE];
        std::thread::spawn(move || {
            restrict_to(&keep).unwrap();
            let own = |tid: i32| {
                Privileges::from_status(
                    &std::fs::read_to_string(format!("/proc/self/task/{tid}/status")).unwrap(),
                )
            };
            // SAFETY: gettid takes no arguments and cannot fail.
            let p = own(unsafe { libc::gettid() });
            let mask = Privileges::mask(&keep);
            assert_eq!(p.effective, mask, "{p:?}");
            assert_eq!(p.permitted, mask, "{p:?}");
            assert_eq!(p.bounding, mask, "{p:?}");
            assert_eq!(p.ambient, 0);
            assert!(p.no_new_privs);
            // A thread spawned now inherits the reduced sets.
            std::thread::spawn(move || {
                // SAFETY: as above.
                let c = own(unsafe { libc::gettid() });
                assert_eq!(c.effective, mask, "{c:?}");
                assert!(c.no_new_privs);
            })
            .join()
            .unwrap();
            // A program run as root gets no more than was kept.
            let out = std::process::Command::new("/bin/cat")
                .arg("/proc/self/status")
                .output()
                .unwrap();
            let c = Privileges::from_status(&String::from_utf8_lossy(&out.stdout));
            assert_eq!(c.effective & !mask, 0, "{c:?}");
            assert_eq!(c.bounding, mask, "{c:?}");
        })
        .join()
        .unwrap();
    }

    #[test]
    fn status_lines_parse() {
        let p = Privileges::from_status(
            "Name:\tshoal\nCapInh:\t0000000000000000\nCapPrm:\t0000000000801000\n\
             CapEff:\t0000000000801000\nCapBnd:\t0000000000801000\nCapAmb:\t0000000000000000\n\
             NoNewPrivs:\t1\n",
        );
        assert_eq!(
            p.effective,
            Privileges::mask(&[Cap::NET_ADMIN, Cap::SYS_NICE])
        );
        assert_eq!(p.bounding, p.effective);
        assert!(p.no_new_privs);
    }
}
