//! The gate every privileged test (network namespaces, AF_XDP, BPF, TAP)
//! passes before it touches the kernel.
//!
//! # Contract
//!
//! [`require`] returns `true` when the machine has everything the test
//! needs. When something is missing it either fails the test (panics) or
//! skips it (returns `false`, and the caller returns at once):
//!
//! - It skips only when `SHOAL_SKIP_PRIVILEGED=1` asks for it and the `CI`
//!   variable is unset or empty: a lab test may skip, loudly, only on a
//!   machine that lacks a kernel feature; under CI every layer runs and a
//!   missing feature is a failure.
//! - A skip is loud: a `SHOAL-SKIP <test>: <reason>` line goes to stderr
//!   (`<test>` is the test binary and the harness's name of the running
//!   test when it has one),
//!   and, when `SHOAL_SKIP_LOG` names a file, the line `<test>: <reason>`
//!   is appended to it. The test harness hides a passing test's output, so
//!   the file is what `scripts/test.sh` counts and lists after `cargo test`.
//!
//! The checks read `/proc` and run `ip`; none needs `unsafe`.

use std::fs::OpenOptions;
use std::io::Write as _;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Something a privileged test needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// Effective user ID 0 (CAP_NET_ADMIN, CAP_BPF, CAP_SYS_ADMIN).
    Root,
    /// `/dev/net/tun`, for TAP devices.
    Tun,
    /// `ip netns add` works.
    Netns,
}

/// The variable that asks for a skip instead of a failure.
pub const SKIP_VAR: &str = "SHOAL_SKIP_PRIVILEGED";
/// The variable naming the file skips are appended to.
pub const SKIP_LOG_VAR: &str = "SHOAL_SKIP_LOG";

/// [`require`] with [`Need::Root`] only.
pub fn privileged(test: &str) -> bool {
    require(test, &[Need::Root])
}

/// Whether `test` may run: see the module contract.
///
/// # Panics
/// When a need is missing and a skip is not allowed.
pub fn require(test: &str, needs: &[Need]) -> bool {
    let Some(why) = needs.iter().find_map(|need| missing(*need)) else {
        return true;
    };
    let asked = std::env::var(SKIP_VAR).as_deref() == Ok("1");
    let ci = std::env::var("CI").is_ok_and(|v| !v.is_empty());
    if !asked {
        panic!("{test} needs privileges: {why}. Set {SKIP_VAR}=1 to skip it (not under CI).");
    }
    if ci {
        panic!("{test}: {why}; under CI a privileged test may not skip ({SKIP_VAR}=1 ignored)");
    }
    // The harness names each test's thread after the test's path: more
    // precise than the label callers pass. The test binary's name (without
    // cargo's hash) tells the file.
    let current = std::thread::current();
    let name = match current.name() {
        Some(name) if name != "main" => name,
        _ => test,
    };
    let binary = std::env::current_exe().ok().and_then(|exe| {
        let stem = exe.file_stem()?.to_str()?.to_owned();
        Some(
            stem.rsplit_once('-')
                .map_or(stem.clone(), |(b, _)| b.to_owned()),
        )
    });
    let test = match binary {
        Some(binary) => format!("{binary}::{name}"),
        None => name.to_owned(),
    };
    eprintln!("SHOAL-SKIP {test}: {why}");
    if let Some(log) = std::env::var_os(SKIP_LOG_VAR).filter(|v| !v.is_empty()) {
        let line = format!("{test}: {why}\n");
        let written = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .and_then(|mut f| f.write_all(line.as_bytes()));
        if let Err(e) = written {
            panic!(
                "{test}: cannot record the skip in {}: {e}",
                Path::new(&log).display()
            );
        }
    }
    false
}

/// Why `need` is not met, or `None` when it is.
fn missing(need: Need) -> Option<String> {
    match need {
        Need::Root => match effective_uid() {
            Some(0) => None,
            Some(uid) => Some(format!("not running as root (euid {uid})")),
            None => Some("cannot read the effective user ID from /proc/self/status".into()),
        },
        Need::Tun => {
            (!Path::new("/dev/net/tun").exists()).then(|| "/dev/net/tun is missing".into())
        }
        Need::Netns => (!netns_works()).then(|| "cannot create network namespaces".into()),
    }
}

/// The effective user ID, from the `Uid:` line of `/proc/self/status`
/// (real, effective, saved, filesystem).
pub fn effective_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn netns_works() -> bool {
    static PROBES: AtomicUsize = AtomicUsize::new(0);
    let probe = format!(
        "shoalprobe{}-{}",
        std::process::id(),
        PROBES.fetch_add(1, Ordering::Relaxed)
    );
    let ok = Command::new("ip")
        .args(["netns", "add", &probe])
        .status()
        .is_ok_and(|s| s.success());
    let _ = Command::new("ip").args(["netns", "del", &probe]).status();
    ok
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_effective_uid() {
        let uid = effective_uid().expect("/proc/self/status has a Uid line");
        let meta = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self").unwrap());
        assert_eq!(uid, meta);
    }
}
