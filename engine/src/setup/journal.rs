//! The undo journal: every change host setup makes, recorded before it is
//! made, in memory (undone in reverse on teardown) and in the
//! crash-recovery record on disk (replayed by the next run after a crash).
//!
//! # The record
//!
//! `<state_dir>/<nic>-netns<inode>.state`, one line per change that outlives
//! the process, oldest first: `sysctl <path> <previous value>`, `tap <name>`,
//! `nft <table>` (the `netdev` ingress table), `nft inet <table>` (the
//! frontend instances' NAT table, see [`crate::frontend`]). Addresses (gone with the TAP) and memberships (gone with
//! the process) are not recorded. When the namespace's cookie is known the
//! record opens with `netns <cookie>`, which tells this namespace from a
//! later one that reused its inode. A journal with nothing to record has no
//! record file. Reading a record back ([`leftovers`]) takes only lines of
//! the shapes shoal writes: integer sysctls under `/proc/sys/net/`, a TAP,
//! the NIC's own two tables.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::afpacket::MembershipHold;

/// One recorded change and how to undo it.
#[derive(Debug)]
pub(super) enum Step {
    /// A sysctl was changed from `previous`.
    Sysctl { path: PathBuf, previous: String },
    /// The TAP device was created.
    Tap { name: String },
    /// An address was added to the TAP (gone with the TAP; undone first so a
    /// TAP still held open elsewhere loses it too).
    Address { tap: String, cidr: String },
    /// The nftables table was installed.
    NftTable { name: String },
    /// The frontend NAT table (`inet`) may be installed: the frontend
    /// thread makes it after setup and deletes it when it stops; recorded
    /// here first so that a process killed in between leaves nothing.
    FrontendTable { name: String },
    /// Memberships are held.
    Memberships(MembershipHold),
}

impl Step {
    /// The crash-recovery line, for steps a dead process leaves behind.
    fn record(&self) -> Option<String> {
        match self {
            Step::Sysctl { path, previous } => {
                Some(format!("sysctl {} {}", path.display(), previous))
            }
            Step::Tap { name } => Some(format!("tap {name}")),
            Step::NftTable { name } => Some(format!("nft {name}")),
            Step::FrontendTable { name } => Some(format!("nft inet {name}")),
            Step::Address { .. } | Step::Memberships(_) => None,
        }
    }
}

/// The changes made so far, oldest first.
#[derive(Debug, Default)]
pub(super) struct Journal {
    steps: Vec<Step>,
}

impl Journal {
    /// Records a change (the caller then saves the record).
    pub(super) fn push(&mut self, step: Step) {
        self.steps.push(step);
    }

    /// Takes the newest change, to undo it.
    pub(super) fn pop(&mut self) -> Option<Step> {
        self.steps.pop()
    }

    /// The record text for the changes left, or `None` when none of them
    /// outlives the process (the record file is then removed).
    /// `netns_cookie` is asked only when there is something to record.
    pub(super) fn record(&self, netns_cookie: impl FnOnce() -> Option<u64>) -> Option<String> {
        let lines: Vec<String> = self.steps.iter().filter_map(Step::record).collect();
        if lines.is_empty() {
            return None;
        }
        let mut text = String::new();
        if let Some(cookie) = netns_cookie() {
            let _ = writeln!(text, "netns {cookie}");
        }
        for line in &lines {
            let _ = writeln!(text, "{line}");
        }
        Some(text)
    }
}

/// A change a dead process left behind, read back from its record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Leftover {
    /// Restore the sysctl at `path` to `previous`.
    Sysctl { path: PathBuf, previous: String },
    /// Delete this TAP.
    Tap(String),
    /// Delete this nftables table.
    NftTable(String),
    /// Delete this `inet` table (the frontend NAT).
    FrontendTable(String),
}

/// The namespace cookie a record was written in, if it names one.
pub(super) fn record_cookie(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|line| line.strip_prefix("netns "))
        .and_then(|c| c.trim().parse::<u64>().ok())
}

/// The changes of a record, newest first (the order to undo them in).
///
/// A record is a file anyone with write access to the state directory
/// could forge, so only what shoal itself writes is taken: an integer
/// sysctl value for a path [`restorable_sysctl`] accepts, a TAP with a
/// valid interface name, the NIC's own table `own_table` and its own
/// frontend table `own_frontend` (`nft inet <name>`). Any other
/// `sysctl`, `tap` or `nft` line is refused with a logged error; lines of
/// unknown kinds are logged and skipped.
pub(super) fn leftovers(text: &str, own_table: &str, own_frontend: &str) -> Vec<Leftover> {
    let mut out = Vec::new();
    for line in text.lines().rev() {
        let mut parts = line.splitn(3, ' ');
        match (parts.next(), parts.next(), parts.next()) {
            (Some("sysctl"), Some(p), Some(v))
                if restorable_sysctl(p) && v.trim().parse::<i64>().is_ok() =>
            {
                out.push(Leftover::Sysctl {
                    path: PathBuf::from(p),
                    previous: v.to_owned(),
                })
            }
            (Some("tap"), Some(name), None) if super::valid_name(name) => {
                out.push(Leftover::Tap(name.to_owned()))
            }
            (Some("nft"), Some(name), None) if name == own_table => {
                out.push(Leftover::NftTable(name.to_owned()))
            }
            (Some("nft"), Some("inet"), Some(name)) if name == own_frontend => {
                out.push(Leftover::FrontendTable(name.to_owned()))
            }
            (Some("sysctl" | "tap" | "nft"), _, _) => {
                tracing::error!(line, "refusing a state record line shoal never writes")
            }
            (Some("netns"), Some(_), None) => {}
            _ => tracing::warn!(line, "ignoring unknown state record"),
        }
    }
    out
}

/// Whether a recorded sysctl path is one shoal may write back: absolute,
/// under `/proc/sys/net/`, and canonical (every component a plain name, no
/// `.` or `..`, no empty component).
pub(super) fn restorable_sysctl(path: &str) -> bool {
    let Some(rest) = path.strip_prefix("/proc/sys/net/") else {
        return false;
    };
    rest.split('/').all(|c| {
        !c.is_empty()
            && c != "."
            && c != ".."
            && c.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'@'))
    })
}

/// The record's file name for `interface` in the namespace with `inode`.
pub(super) fn file_name(interface: &str, inode: u64) -> String {
    format!("{interface}-netns{inode}.state")
}

/// The namespace inode in a record's file name `<nic>-netns<inode>.state`.
pub(super) fn record_netns(path: &Path) -> Option<u64> {
    let name = path.file_name()?.to_str()?;
    let stem = name.strip_suffix(".state")?;
    let (_, inode) = stem.rsplit_once("-netns")?;
    inode.parse().ok()
}

/// The inode of the calling thread's network namespace (0 if unreadable).
pub(super) fn own_netns_inode() -> u64 {
    use std::os::unix::fs::MetadataExt;
    // The calling thread's: a thread may have entered another namespace
    // than the process's (`/proc/self` is the main thread's).
    std::fs::metadata("/proc/thread-self/ns/net")
        .map(|m| m.ino())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_reads_back_newest_first() {
        let mut journal = Journal::default();
        assert_eq!(journal.record(|| Some(7)), None);
        journal.push(Step::Tap {
            name: "shoal0".into(),
        });
        journal.push(Step::Address {
            tap: "shoal0".into(),
            cidr: "10.0.0.1/32".into(),
        });
        journal.push(Step::Sysctl {
            path: "/proc/sys/net/x".into(),
            previous: "1".into(),
        });
        journal.push(Step::NftTable {
            name: "shoal_eth0".into(),
        });
        journal.push(Step::FrontendTable {
            name: "shoal_fe_eth0".into(),
        });
        let text = journal.record(|| Some(7)).unwrap();
        assert_eq!(
            text,
            "netns 7\ntap shoal0\nsysctl /proc/sys/net/x 1\nnft shoal_eth0\nnft inet shoal_fe_eth0\n"
        );
        assert_eq!(record_cookie(&text), Some(7));
        assert_eq!(
            leftovers(
                &format!("{text}bogus line\nnft inet filter\nnft inet shoal_fe_eth1\n"),
                "shoal_eth0",
                "shoal_fe_eth0"
            ),
            vec![
                Leftover::FrontendTable("shoal_fe_eth0".into()),
                Leftover::NftTable("shoal_eth0".into()),
                Leftover::Sysctl {
                    path: "/proc/sys/net/x".into(),
                    previous: "1".into()
                },
                Leftover::Tap("shoal0".into()),
            ]
        );
        assert_eq!(record_cookie("tap shoal0\n"), None);
    }

    #[test]
    fn only_canonical_net_sysctls_are_restorable() {
        assert!(restorable_sysctl(
            "/proc/sys/net/ipv4/conf/eth0.100/arp_ignore"
        ));
        assert!(restorable_sysctl("/proc/sys/net/ipv4/conf/all/rp_filter"));
        for bad in [
            "/proc/sys/kernel/core_pattern",
            "/proc/sys/net/",
            "/proc/sys/net/../kernel/x",
            "/proc/sys/net/ipv4/./x",
            "/proc/sys/net/ipv4//x",
            "proc/sys/net/ipv4/x",
            "/proc/sys/netfilter/x",
            "/etc/passwd",
            "/proc/sys/net/ipv4/x y",
        ] {
            assert!(!restorable_sysctl(bad), "{bad}");
        }
    }

    #[test]
    fn record_file_names_carry_the_namespace_inode() {
        let name = file_name("eth0.100", 4026531840);
        assert_eq!(name, "eth0.100-netns4026531840.state");
        assert_eq!(
            record_netns(&Path::new("/run/shoal").join(name)),
            Some(4026531840)
        );
        assert_eq!(record_netns(Path::new("/run/shoal/notes.txt")), None);
    }
}
