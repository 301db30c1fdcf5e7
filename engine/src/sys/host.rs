//! The host-operations seam of host setup: running programs (`ip`, `nft`),
//! reading and writing whole files (sysctls under `/proc/sys`, the
//! crash-recovery record), creating the TAP, holding link-layer
//! memberships, and listing the network namespaces that still exist.
//!
//! [`Kernel`] is the real host. Programs and files act in the calling
//! thread's network namespace. Nothing here needs `unsafe`; the seam exists
//! so that every failure path of [`crate::setup`] is tested without root.

use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use crate::afpacket::{AfPacketError, Membership, MembershipHold};
use crate::tap::{Tap, TapConfig, TapError};

/// What a finished command reported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommandOutput {
    /// Whether it exited with status 0.
    pub success: bool,
    /// Its standard output.
    pub stdout: String,
    /// Its standard error.
    pub stderr: String,
}

/// The host operations setup performs; [`Kernel`] is the real host.
pub trait HostOps: Send {
    /// Runs `program` with `args`, feeding `stdin` if given. `Err` with
    /// `NotFound` when the program is not installed.
    fn run(
        &mut self,
        program: &str,
        args: &[&str],
        stdin: Option<&str>,
    ) -> io::Result<CommandOutput>;
    /// Reads a whole file (sysctl or state file).
    fn read(&mut self, path: &Path) -> io::Result<String>;
    /// Writes a whole file, creating parent directories for the state file.
    fn write(&mut self, path: &Path, contents: &str) -> io::Result<()>;
    /// Removes a file; a missing file is not an error.
    fn remove(&mut self, path: &Path) -> io::Result<()>;
    /// Creates the TAP queues.
    fn create_taps(&mut self, config: &TapConfig) -> Result<Vec<Tap>, TapError>;
    /// Holds memberships on `interface`.
    fn hold_memberships(
        &mut self,
        interface: &str,
        memberships: &[Membership],
    ) -> Result<MembershipHold, AfPacketError>;
    /// The calling thread's network-namespace cookie, if the kernel has one.
    fn netns_cookie(&mut self) -> Option<u64>;
    /// The files in `dir`.
    fn list(&mut self, dir: &Path) -> io::Result<Vec<PathBuf>>;
    /// The inodes of every network namespace that still exists: those of
    /// running processes and those bind-mounted under `/run/netns`.
    fn live_netns(&mut self) -> io::Result<BTreeSet<u64>>;
}

/// The real host.
#[derive(Clone, Copy, Debug, Default)]
pub struct Kernel;

impl HostOps for Kernel {
    fn run(
        &mut self,
        program: &str,
        args: &[&str],
        stdin: Option<&str>,
    ) -> io::Result<CommandOutput> {
        // Found in the system directories, never through PATH.
        let mut cmd = super::programs::command(program)?;
        cmd.args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn()?;
        if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
            use std::io::Write;
            pipe.write_all(text.as_bytes())?;
        }
        let out = child.wait_with_output()?;
        Ok(CommandOutput {
            success: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }

    fn read(&mut self, path: &Path) -> io::Result<String> {
        std::fs::read_to_string(path)
    }

    fn write(&mut self, path: &Path, contents: &str) -> io::Result<()> {
        if !path.starts_with("/proc") {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
        }
        std::fs::write(path, contents)
    }

    fn remove(&mut self, path: &Path) -> io::Result<()> {
        match std::fs::remove_file(path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }

    fn create_taps(&mut self, config: &TapConfig) -> Result<Vec<Tap>, TapError> {
        Tap::create(config)
    }

    fn hold_memberships(
        &mut self,
        interface: &str,
        memberships: &[Membership],
    ) -> Result<MembershipHold, AfPacketError> {
        MembershipHold::join(interface, memberships)
    }

    fn netns_cookie(&mut self) -> Option<u64> {
        crate::sys::netns::cookie().ok()
    }

    fn list(&mut self, dir: &Path) -> io::Result<Vec<PathBuf>> {
        std::fs::read_dir(dir)?
            .map(|entry| entry.map(|e| e.path()))
            .collect()
    }

    fn live_netns(&mut self) -> io::Result<BTreeSet<u64>> {
        use std::os::unix::fs::MetadataExt;
        let mut live = BTreeSet::new();
        for entry in std::fs::read_dir("/proc")? {
            let path = entry?.path();
            let is_pid = path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()));
            if is_pid {
                // A process may exit between the listing and the stat.
                if let Ok(meta) = std::fs::metadata(path.join("ns/net")) {
                    live.insert(meta.ino());
                }
            }
        }
        if let Ok(mounts) = std::fs::read_dir("/run/netns") {
            for entry in mounts.flatten() {
                if let Ok(meta) = std::fs::metadata(entry.path()) {
                    live.insert(meta.ino());
                }
            }
        }
        Ok(live)
    }
}
