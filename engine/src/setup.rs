//! Host setup with undo: everything shoal changes on the host, recorded so
//! it can be put back.
//!
//! [`HostSetup::apply`] makes, in this order:
//! 1. cleanup of a stale previous run on the same interface (see below);
//! 2. the TAP device (exception path), its MAC, up — [`crate::tap::Tap`];
//! 3. the VIPs on the TAP: IPv4 `/32 noprefixroute`, IPv6
//!    `/128 nodad noprefixroute` (no connected route, no DAD probe);
//! 4. sysctls (written through `/proc/sys`, previous value recorded):
//!    - NIC `arp_ignore` raised to 1 and `arp_announce` to 2: the kernel never
//!      answers ARP for the VIP (it lives on the TAP, not the NIC) and never
//!      uses the VIP as sender address in its own ARP requests on the NIC;
//!      the engine answers ARP for the VIP;
//!    - TAP `rp_filter` = 0, and `all.rp_filter` moved from 1 (strict) to 2
//!      (loose) when it was 1. Measured on this kernel (Linux 6.18): frames
//!      written into the TAP come from clients routed via the NIC, and the
//!      effective mode is `max(all, tap)`; with it at 1 the SYN is dropped,
//!      with 0 or 2 the kernel answers. `accept_local` is not needed
//!      (client addresses are never local);
//!    - IPv6: nothing to write. The NIC answers a neighbour solicitation only
//!      for addresses on the NIC itself (or with proxy NDP entries, which
//!      shoal does not add); the VIP is only on the TAP, with `nodad`;
//! 5. in AF_PACKET mode ([`HostSetupConfig::ingress_filter`]), the nftables
//!    table `netdev shoal_<nic>` with a chain on the NIC's ingress hook
//!    dropping cluster frames before the kernel stack sees them: destination
//!    MAC in the cluster MACs (except IGMP, so group-specific queries are
//!    still answered by the kernel's IGMP), ether type 0x886F (heartbeats),
//!    ARP whose target is a VIP, IPv6 neighbour solicitations whose target
//!    is a VIP. AF_PACKET taps run before the ingress hook, so the engine
//!    still receives all of them (verified by `tests/setup_netns.rs`);
//! 6. link-layer memberships ([`HostSetupConfig::memberships`]) held by a
//!    receive-nothing packet socket, for backends that do not hold their own
//!    (AF_XDP); the kernel drops them when the socket closes.
//!
//! [`HostSetup::teardown`] (also run by `Drop`) undoes the steps in reverse
//! order, restoring previous sysctl values. It is idempotent, keeps going
//! past failures and reports the first one.
//!
//! Crash safety: before each change the undo record is written to
//! `<state_dir>/<nic>-netns<inode>.state` (default `/run/shoal`). The next `apply` on the
//! same NIC replays a leftover record (restores sysctls, deletes the nft
//! table and the TAP) before doing anything else, and also removes a table
//! named `shoal_<nic>` and a TAP with the configured name if either is still
//! there. An existing interface with that name that is not a TAP is never
//! touched: it is reported as an error.
//!
//! The record's first line is the namespace's cookie
//! ([`crate::sys::netns::cookie`]). Inode numbers are reused once a
//! namespace is deleted, so a record whose cookie is not the current
//! namespace's belongs to a dead namespace that happened to have the same
//! inode: it is discarded, never replayed (replaying it would "restore"
//! sysctls to another namespace's values). Each `apply` also deletes the
//! records of namespaces that no longer exist (no process in them and no
//! bind mount under `/run/netns`): everything such a record describes died
//! with its namespace. A namespace kept alive only by an open descriptor
//! elsewhere loses its record; its leftovers are then found by name.
//!
//! Design decision: addresses, links and nftables go through the `ip` and
//! `nft` programs (`nft -f -` with the table as text, replaced atomically in
//! one transaction); sysctls through `/proc/sys`. These are rare,
//! start-and-stop operations where a clear command in the log is worth more
//! than a netlink codec. All of it sits behind [`HostOps`] so failure paths
//! are tested without root. Commands run in the calling thread's network
//! namespace.
#![forbid(unsafe_code)]

use std::collections::BTreeSet;
use std::fmt::{self, Write as _};
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::afpacket::{AfPacketError, Membership, MembershipHold};
use crate::tap::{format_mac, Tap, TapConfig, TapError};

/// Ether type of shoal heartbeats.
pub const HEARTBEAT_ETHER_TYPE: u16 = 0x886F;

/// Everything [`HostSetup::apply`] needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostSetupConfig {
    /// The cluster-facing NIC.
    pub interface: String,
    /// The exception-path TAP to create.
    pub tap: TapConfig,
    /// The cluster's virtual IPs (put on the TAP).
    pub vips: Vec<IpAddr>,
    /// Cluster MACs whose frames the kernel must not see (AF_PACKET mode).
    pub cluster_macs: Vec<[u8; 6]>,
    /// Install the nftables ingress drop table (needed with AF_PACKET; the
    /// AF_XDP program keeps cluster frames from the kernel by itself).
    pub ingress_filter: bool,
    /// Memberships to hold for the setup's lifetime (empty with AF_PACKET,
    /// whose sockets hold their own).
    pub memberships: Vec<Membership>,
    /// Where the crash-recovery record lives.
    pub state_dir: PathBuf,
}

impl HostSetupConfig {
    /// A config for `interface` and `vips` with defaults for the rest: TAP
    /// `shoal0` with one queue, no cluster MACs, no ingress filter, state in
    /// `/run/shoal`.
    pub fn new(interface: &str, vips: Vec<IpAddr>) -> Self {
        Self {
            interface: interface.to_owned(),
            tap: TapConfig::default(),
            vips,
            cluster_macs: Vec::new(),
            ingress_filter: false,
            memberships: Vec::new(),
            state_dir: PathBuf::from("/run/shoal"),
        }
    }

    /// The nftables table name for this NIC (`shoal_<nic>`, with characters
    /// nft does not allow in names replaced by `_`).
    pub fn nft_table(&self) -> String {
        let clean: String = self
            .interface
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        format!("shoal_{clean}")
    }

    /// The crash-recovery record for this interface in this network
    /// namespace: several namespaces on one machine (the lab) may each have
    /// an `eth0`, and `/run` is shared between them.
    pub fn state_file(&self) -> PathBuf {
        self.state_dir.join(format!(
            "{}-netns{}.state",
            self.interface,
            own_netns_inode()
        ))
    }
}

/// Why host setup or teardown failed.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The configuration is unusable.
    #[error("invalid host setup config: {0}")]
    Config(String),
    /// A program shoal needs is not installed.
    #[error("`{tool}` is not installed (needed for {purpose}); install it, e.g. `apt-get install -y {package}`")]
    MissingTool {
        /// Program name.
        tool: &'static str,
        /// What it is needed for.
        purpose: &'static str,
        /// Debian package that provides it.
        package: &'static str,
    },
    /// The NIC does not exist.
    #[error("interface {0:?} not found")]
    NoInterface(String),
    /// The TAP name belongs to an interface that is not a TAP.
    #[error("interface {0:?} exists and is not a TAP device; refusing to remove it")]
    NameTaken(String),
    /// A command failed.
    #[error("`{command}` failed: {stderr}")]
    Command {
        /// The command line.
        command: String,
        /// What it printed on stderr.
        stderr: String,
    },
    /// Reading or writing a sysctl or the state file failed.
    #[error("{path}: {source}")]
    File {
        /// Path.
        path: PathBuf,
        /// What went wrong.
        source: io::Error,
    },
    /// A sysctl held something that is not a number.
    #[error("{path}: unexpected value {value:?}")]
    BadValue {
        /// Path.
        path: PathBuf,
        /// What it held.
        value: String,
    },
    /// Creating the TAP failed.
    #[error(transparent)]
    Tap(#[from] TapError),
    /// Holding memberships failed.
    #[error(transparent)]
    Membership(#[from] AfPacketError),
}

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

/// The host operations setup performs; [`System`] is the real host.
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
pub struct System;

impl HostOps for System {
    fn run(
        &mut self,
        program: &str,
        args: &[&str],
        stdin: Option<&str>,
    ) -> io::Result<CommandOutput> {
        let mut cmd = Command::new(program);
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

/// One recorded change and how to undo it.
#[derive(Debug)]
enum Step {
    /// A sysctl was changed from `previous`.
    Sysctl { path: PathBuf, previous: String },
    /// The TAP device was created.
    Tap { name: String },
    /// An address was added to the TAP (gone with the TAP; undone first so a
    /// TAP still held open elsewhere loses it too).
    Address { tap: String, cidr: String },
    /// The nftables table was installed.
    NftTable { name: String },
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
            Step::Address { .. } | Step::Memberships(_) => None,
        }
    }
}

/// The host changes shoal made, undone on [`HostSetup::teardown`] or drop.
pub struct HostSetup {
    ops: Box<dyn HostOps>,
    config: HostSetupConfig,
    steps: Vec<Step>,
    taps: Vec<Tap>,
    tap_mac: Option<[u8; 6]>,
}

impl fmt::Debug for HostSetup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HostSetup")
            .field("config", &self.config)
            .field("steps", &self.steps)
            .field("taps", &self.taps.len())
            .finish_non_exhaustive()
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 15
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'@'))
        && name != "."
        && name != ".."
}

/// The inode of the calling thread's network namespace (0 if unreadable).
fn own_netns_inode() -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self/ns/net")
        .map(|m| m.ino())
        .unwrap_or(0)
}

/// The namespace inode in a state file's name `<nic>-netns<inode>.state`.
fn record_netns(path: &Path) -> Option<u64> {
    let name = path.file_name()?.to_str()?;
    let stem = name.strip_suffix(".state")?;
    let (_, inode) = stem.rsplit_once("-netns")?;
    inode.parse().ok()
}

fn sysctl_v4(interface: &str, key: &str) -> PathBuf {
    PathBuf::from(format!("/proc/sys/net/ipv4/conf/{interface}/{key}"))
}

impl HostSetup {
    /// Applies the setup on the real host.
    pub fn apply(config: HostSetupConfig) -> Result<Self, SetupError> {
        Self::apply_with(Box::new(System), config)
    }

    /// Applies the setup through the given host operations. On failure,
    /// whatever was already changed is undone before the error returns.
    pub fn apply_with(ops: Box<dyn HostOps>, config: HostSetupConfig) -> Result<Self, SetupError> {
        if !valid_name(&config.interface) {
            return Err(SetupError::Config(format!(
                "bad interface name {:?}",
                config.interface
            )));
        }
        if !valid_name(&config.tap.name) {
            return Err(SetupError::Config(format!(
                "bad TAP name {:?}",
                config.tap.name
            )));
        }
        if config.tap.name == config.interface {
            return Err(SetupError::Config(
                "TAP and NIC must have different names".into(),
            ));
        }
        if config.vips.is_empty() {
            return Err(SetupError::Config("at least one VIP is needed".into()));
        }
        if config.ingress_filter && config.cluster_macs.is_empty() {
            return Err(SetupError::Config(
                "the ingress filter needs the cluster MACs".into(),
            ));
        }
        let mut setup = HostSetup {
            ops,
            config,
            steps: Vec::new(),
            taps: Vec::new(),
            tap_mac: None,
        };
        match setup.apply_steps() {
            Ok(()) => Ok(setup),
            Err(err) => {
                if let Err(undo) = setup.teardown() {
                    tracing::warn!(error = %undo, "undo after failed host setup was incomplete");
                }
                Err(err)
            }
        }
    }

    /// The TAP queues, one per poll loop; empty once taken.
    pub fn take_taps(&mut self) -> Vec<Tap> {
        std::mem::take(&mut self.taps)
    }

    /// The TAP's MAC (the destination of delivered frames).
    pub fn tap_mac(&self) -> Option<[u8; 6]> {
        self.tap_mac
    }

    /// The configuration applied.
    pub fn config(&self) -> &HostSetupConfig {
        &self.config
    }

    /// The nftables ruleset text installed in AF_PACKET mode.
    pub fn nft_ruleset(config: &HostSetupConfig) -> String {
        let table = config.nft_table();
        let mut s = String::new();
        // Declaring then deleting makes the load replace any stale table in
        // the same transaction, and not fail when there is none.
        let _ = writeln!(s, "table netdev {table} {{}}");
        let _ = writeln!(s, "delete table netdev {table}");
        let _ = writeln!(s, "table netdev {table} {{");
        let _ = writeln!(s, "  chain ingress {{");
        let _ = writeln!(
            s,
            "    type filter hook ingress device \"{}\" priority -500; policy accept;",
            config.interface
        );
        let macs: Vec<String> = config.cluster_macs.iter().map(|m| format_mac(*m)).collect();
        let macs = macs.join(", ");
        let _ = writeln!(s, "    ether daddr {{ {macs} }} ip protocol igmp accept");
        let _ = writeln!(s, "    ether daddr {{ {macs} }} drop");
        let _ = writeln!(s, "    ether type 0x{HEARTBEAT_ETHER_TYPE:04x} drop");
        let v4: Vec<String> = config
            .vips
            .iter()
            .filter(|v| v.is_ipv4())
            .map(ToString::to_string)
            .collect();
        if !v4.is_empty() {
            let _ = writeln!(s, "    arp daddr ip {{ {} }} drop", v4.join(", "));
        }
        for vip in &config.vips {
            if let IpAddr::V6(v6) = vip {
                // nft 1.0.6 has no `icmpv6 taddr`: the NS target address is
                // the 128 bits after the 8-byte ICMPv6 header.
                let _ = writeln!(
                    s,
                    "    icmpv6 type nd-neighbor-solicit @th,64,128 0x{:032x} drop",
                    u128::from(*v6)
                );
            }
        }
        let _ = writeln!(s, "  }}");
        let _ = writeln!(s, "}}");
        s
    }

    fn apply_steps(&mut self) -> Result<(), SetupError> {
        self.clean_stale()?;
        self.require_tool("ip", &["-V"], "addresses and links", "iproute2")?;
        if self.config.ingress_filter {
            self.require_tool(
                "nft",
                &["--version"],
                "the AF_PACKET ingress drop table",
                "nftables",
            )?;
        }
        let nic = self.config.interface.clone();
        if !self.ip(&["link", "show", "dev", &nic])?.success {
            return Err(SetupError::NoInterface(nic));
        }

        // 2. TAP.
        let tap_name = self.config.tap.name.clone();
        let taps = self.ops.create_taps(&self.config.tap)?;
        self.push(Step::Tap {
            name: tap_name.clone(),
        })?;
        self.tap_mac = taps.first().map(Tap::mac);
        self.taps = taps;

        // 3. VIPs.
        for vip in self.config.vips.clone() {
            let (cidr, extra): (String, &[&str]) = match vip {
                IpAddr::V4(a) => (format!("{a}/32"), &["noprefixroute"]),
                IpAddr::V6(a) => (format!("{a}/128"), &["nodad", "noprefixroute"]),
            };
            let mut args = vec!["addr", "add", cidr.as_str(), "dev", tap_name.as_str()];
            args.extend_from_slice(extra);
            self.ip_ok(&args)?;
            self.push(Step::Address {
                tap: tap_name.clone(),
                cidr,
            })?;
        }

        // 4. Sysctls.
        self.raise_sysctl(sysctl_v4(&nic, "arp_ignore"), 1)?;
        self.raise_sysctl(sysctl_v4(&nic, "arp_announce"), 2)?;
        self.set_sysctl(sysctl_v4(&tap_name, "rp_filter"), 0)?;
        let all = sysctl_v4("all", "rp_filter");
        if self.read_sysctl(&all)? == 1 {
            self.set_sysctl(all, 2)?;
        }

        // 5. nftables.
        if self.config.ingress_filter {
            let table = self.config.nft_table();
            let ruleset = Self::nft_ruleset(&self.config);
            // Record first: a crash between load and record must not leak it.
            self.push(Step::NftTable { name: table })?;
            let out = self.run("nft", &["-f", "-"], Some(&ruleset))?;
            if !out.success {
                return Err(SetupError::Command {
                    command: "nft -f -".into(),
                    stderr: out.stderr,
                });
            }
        }

        // 6. Memberships.
        if !self.config.memberships.is_empty() {
            let hold = self.ops.hold_memberships(&nic, &self.config.memberships)?;
            self.push(Step::Memberships(hold))?;
        }
        Ok(())
    }

    /// Undoes every change in reverse order. Idempotent; keeps going past
    /// failures and returns the first.
    pub fn teardown(&mut self) -> Result<(), SetupError> {
        let mut first = None;
        while let Some(step) = self.steps.pop() {
            if let Err(err) = self.undo(step) {
                tracing::warn!(error = %err, "host setup undo step failed");
                first.get_or_insert(err);
            }
            // Keep the record in step with what is left to undo.
            if let Err(err) = self.save_state() {
                first.get_or_insert(err);
            }
        }
        self.taps.clear();
        let path = self.config.state_file();
        if let Err(source) = self.ops.remove(&path) {
            first.get_or_insert(SetupError::File { path, source });
        }
        first.map_or(Ok(()), Err)
    }

    fn undo(&mut self, step: Step) -> Result<(), SetupError> {
        match step {
            Step::Sysctl { path, previous } => self.restore_sysctl(&path, &previous),
            Step::Address { tap, cidr } => {
                // The TAP may already be gone (its queues closed): fine.
                if self.link_exists(&tap)? {
                    let out = self.ip(&["addr", "del", &cidr, "dev", &tap])?;
                    if !out.success && self.link_exists(&tap)? {
                        return Err(SetupError::Command {
                            command: format!("ip addr del {cidr} dev {tap}"),
                            stderr: out.stderr,
                        });
                    }
                }
                Ok(())
            }
            Step::Tap { name } => {
                self.taps.clear();
                self.delete_tap(&name)
            }
            Step::NftTable { name } => self.delete_table(&name),
            Step::Memberships(hold) => {
                drop(hold);
                Ok(())
            }
        }
    }

    /// Replays a leftover record of this namespace, forgets the records of
    /// dead ones, and removes leftovers by name.
    fn clean_stale(&mut self) -> Result<(), SetupError> {
        let path = self.config.state_file();
        if let Ok(text) = self.ops.read(&path) {
            let cookie = self.ops.netns_cookie();
            let recorded = text
                .lines()
                .find_map(|line| line.strip_prefix("netns "))
                .and_then(|c| c.trim().parse::<u64>().ok());
            match (recorded, cookie) {
                (Some(recorded), Some(cookie)) if recorded != cookie => tracing::warn!(
                    state = %path.display(),
                    "discarding the record of a deleted namespace that had this one's inode"
                ),
                _ => {
                    tracing::warn!(state = %path.display(), "undoing the leftovers of a previous run");
                    self.replay(&text)?;
                }
            }
            self.ops
                .remove(&path)
                .map_err(|source| SetupError::File { path, source })?;
        }
        self.forget_dead_namespaces();
        let tap = self.config.tap.name.clone();
        self.delete_tap(&tap)?;
        if self.config.ingress_filter {
            let table = self.config.nft_table();
            self.delete_table(&table)?;
        }
        Ok(())
    }

    /// Undoes the steps of a leftover record, last first.
    fn replay(&mut self, text: &str) -> Result<(), SetupError> {
        for line in text.lines().rev() {
            let mut parts = line.splitn(3, ' ');
            match (parts.next(), parts.next(), parts.next()) {
                (Some("sysctl"), Some(p), Some(v)) => self.restore_sysctl(Path::new(p), v)?,
                (Some("tap"), Some(name), None) => self.delete_tap(name)?,
                (Some("nft"), Some(name), None) => self.delete_table(name)?,
                (Some("netns"), Some(_), None) => {}
                _ => tracing::warn!(line, "ignoring unknown state record"),
            }
        }
        Ok(())
    }

    /// Deletes the records of namespaces that no longer exist. Best effort:
    /// a failure here is logged and never stops setup.
    fn forget_dead_namespaces(&mut self) {
        let dir = self.config.state_dir.clone();
        let Ok(files) = self.ops.list(&dir) else {
            return;
        };
        let records: Vec<(PathBuf, u64)> = files
            .into_iter()
            .filter_map(|path| record_netns(&path).map(|inode| (path, inode)))
            .collect();
        if records.is_empty() {
            return;
        }
        let live = match self.ops.live_netns() {
            Ok(live) if !live.is_empty() => live,
            Ok(_) => return,
            Err(err) => {
                tracing::debug!(error = %err, "cannot list live namespaces; records kept");
                return;
            }
        };
        for (path, inode) in records {
            if live.contains(&inode) {
                continue;
            }
            match self.ops.remove(&path) {
                Ok(()) => {
                    tracing::info!(state = %path.display(), "forgot the record of a deleted namespace")
                }
                Err(err) => {
                    tracing::warn!(state = %path.display(), error = %err, "cannot remove a dead namespace's record")
                }
            }
        }
    }

    fn push(&mut self, step: Step) -> Result<(), SetupError> {
        self.steps.push(step);
        self.save_state()
    }

    fn save_state(&mut self) -> Result<(), SetupError> {
        let lines: Vec<String> = self.steps.iter().filter_map(Step::record).collect();
        let path = self.config.state_file();
        let result = if lines.is_empty() {
            self.ops.remove(&path)
        } else {
            let mut text = String::new();
            if let Some(cookie) = self.ops.netns_cookie() {
                let _ = writeln!(text, "netns {cookie}");
            }
            for line in &lines {
                let _ = writeln!(text, "{line}");
            }
            self.ops.write(&path, &text)
        };
        result.map_err(|source| SetupError::File { path, source })
    }

    fn require_tool(
        &mut self,
        tool: &'static str,
        args: &[&str],
        purpose: &'static str,
        package: &'static str,
    ) -> Result<(), SetupError> {
        match self.ops.run(tool, args, None) {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(SetupError::MissingTool {
                tool,
                purpose,
                package,
            }),
            Err(source) => Err(SetupError::Command {
                command: tool.to_owned(),
                stderr: source.to_string(),
            }),
        }
    }

    fn run(
        &mut self,
        program: &'static str,
        args: &[&str],
        stdin: Option<&str>,
    ) -> Result<CommandOutput, SetupError> {
        let line = || format!("{program} {}", args.join(" "));
        match self.ops.run(program, args, stdin) {
            Ok(out) => Ok(out),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(SetupError::MissingTool {
                tool: program,
                purpose: if program == "nft" {
                    "the AF_PACKET ingress drop table"
                } else {
                    "addresses and links"
                },
                package: if program == "nft" {
                    "nftables"
                } else {
                    "iproute2"
                },
            }),
            Err(e) => Err(SetupError::Command {
                command: line(),
                stderr: e.to_string(),
            }),
        }
    }

    fn ip(&mut self, args: &[&str]) -> Result<CommandOutput, SetupError> {
        self.run("ip", args, None)
    }

    fn ip_ok(&mut self, args: &[&str]) -> Result<(), SetupError> {
        let out = self.ip(args)?;
        if out.success {
            Ok(())
        } else {
            Err(SetupError::Command {
                command: format!("ip {}", args.join(" ")),
                stderr: out.stderr,
            })
        }
    }

    fn link_exists(&mut self, name: &str) -> Result<bool, SetupError> {
        Ok(self.ip(&["link", "show", "dev", name])?.success)
    }

    /// Deletes TAP `name` if it exists; refuses if it is not a TAP.
    fn delete_tap(&mut self, name: &str) -> Result<(), SetupError> {
        let out = self.ip(&["-d", "link", "show", "dev", name])?;
        if !out.success {
            return Ok(());
        }
        if !out.stdout.contains("tun type tap") {
            return Err(SetupError::NameTaken(name.to_owned()));
        }
        let out = self.ip(&["link", "del", "dev", name])?;
        if !out.success && self.link_exists(name)? {
            return Err(SetupError::Command {
                command: format!("ip link del dev {name}"),
                stderr: out.stderr,
            });
        }
        Ok(())
    }

    /// Deletes nftables table `name` if it exists.
    fn delete_table(&mut self, name: &str) -> Result<(), SetupError> {
        let script = format!("table netdev {name} {{}}\ndelete table netdev {name}\n");
        let out = self.run("nft", &["-f", "-"], Some(&script))?;
        if out.success {
            Ok(())
        } else {
            Err(SetupError::Command {
                command: format!("nft delete table netdev {name}"),
                stderr: out.stderr,
            })
        }
    }

    fn read_sysctl(&mut self, path: &Path) -> Result<i64, SetupError> {
        let text = self.ops.read(path).map_err(|source| SetupError::File {
            path: path.to_owned(),
            source,
        })?;
        text.trim().parse().map_err(|_| SetupError::BadValue {
            path: path.to_owned(),
            value: text.trim().to_owned(),
        })
    }

    /// Sets `path` to `value`, recording the previous value first.
    fn set_sysctl(&mut self, path: PathBuf, value: i64) -> Result<(), SetupError> {
        let previous = self.read_sysctl(&path)?;
        if previous == value {
            return Ok(());
        }
        self.push(Step::Sysctl {
            path: path.clone(),
            previous: previous.to_string(),
        })?;
        self.ops
            .write(&path, &value.to_string())
            .map_err(|source| SetupError::File { path, source })
    }

    /// Sets `path` to `value` unless it already holds at least `value`.
    fn raise_sysctl(&mut self, path: PathBuf, value: i64) -> Result<(), SetupError> {
        if self.read_sysctl(&path)? >= value {
            return Ok(());
        }
        self.set_sysctl(path, value)
    }

    fn restore_sysctl(&mut self, path: &Path, previous: &str) -> Result<(), SetupError> {
        match self.ops.write(path, previous) {
            Ok(()) => Ok(()),
            // Per-device sysctls vanish with their device (the TAP).
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(SetupError::File {
                path: path.to_owned(),
                source,
            }),
        }
    }
}

impl Drop for HostSetup {
    fn drop(&mut self) {
        if let Err(err) = self.teardown() {
            tracing::warn!(error = %err, "host setup teardown on drop was incomplete");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use parking_lot::Mutex;
    use std::collections::BTreeMap;
    use std::sync::Arc;

    /// A host in memory: files, links, tables, and a log of commands.
    #[derive(Default)]
    struct World {
        files: BTreeMap<PathBuf, String>,
        links: BTreeMap<String, &'static str>,
        tables: Vec<String>,
        log: Vec<String>,
        missing: Vec<&'static str>,
        fail_command: Option<&'static str>,
        cookie: Option<u64>,
        live: BTreeSet<u64>,
    }

    #[derive(Clone, Default)]
    struct Fake(Arc<Mutex<World>>);

    impl HostOps for Fake {
        fn run(
            &mut self,
            program: &str,
            args: &[&str],
            stdin: Option<&str>,
        ) -> io::Result<CommandOutput> {
            let mut w = self.0.lock();
            if w.missing.contains(&program) {
                return Err(io::Error::from(io::ErrorKind::NotFound));
            }
            let line = format!("{program} {}", args.join(" "));
            w.log.push(line.clone());
            let fail = |stderr: &str| CommandOutput {
                success: false,
                stdout: String::new(),
                stderr: stderr.into(),
            };
            let ok = |stdout: String| CommandOutput {
                success: true,
                stdout,
                stderr: String::new(),
            };
            if let Some(f) = w.fail_command {
                if line.contains(f) {
                    return Ok(fail("scripted failure"));
                }
            }
            Ok(match (program, args) {
                ("ip", ["link", "show", "dev", name])
                | ("ip", ["-d", "link", "show", "dev", name]) => match w.links.get(*name) {
                    Some(kind) => ok(format!("1: {name}: <UP>\n    {kind}\n")),
                    None => fail("Device does not exist."),
                },
                ("ip", ["link", "del", "dev", name]) => {
                    w.links.remove(*name);
                    ok(String::new())
                }
                ("nft", ["-f", "-"]) => {
                    let text = stdin.unwrap_or_default();
                    let name = text
                        .split_whitespace()
                        .nth(2)
                        .unwrap_or_default()
                        .to_owned();
                    w.tables.retain(|t| *t != name);
                    if text.lines().count() > 2 {
                        w.tables.push(name);
                    }
                    ok(String::new())
                }
                _ => ok(String::new()),
            })
        }
        fn read(&mut self, path: &Path) -> io::Result<String> {
            self.0
                .lock()
                .files
                .get(path)
                .cloned()
                .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))
        }
        fn write(&mut self, path: &Path, contents: &str) -> io::Result<()> {
            let mut w = self.0.lock();
            if path.starts_with("/proc") && !w.files.contains_key(path) {
                return Err(io::Error::from(io::ErrorKind::NotFound));
            }
            w.files.insert(path.to_owned(), contents.to_owned());
            Ok(())
        }
        fn remove(&mut self, path: &Path) -> io::Result<()> {
            self.0.lock().files.remove(path);
            Ok(())
        }
        fn create_taps(&mut self, config: &TapConfig) -> Result<Vec<Tap>, TapError> {
            let mut w = self.0.lock();
            w.links.insert(config.name.clone(), "tun type tap pi off");
            for key in ["rp_filter", "arp_ignore", "arp_announce"] {
                w.files.insert(sysctl_v4(&config.name, key), "1".into());
            }
            Ok(Vec::new())
        }
        fn hold_memberships(
            &mut self,
            _interface: &str,
            _m: &[Membership],
        ) -> Result<MembershipHold, AfPacketError> {
            Err(AfPacketError::Config("no sockets in the fake"))
        }
        fn netns_cookie(&mut self) -> Option<u64> {
            self.0.lock().cookie
        }
        fn list(&mut self, dir: &Path) -> io::Result<Vec<PathBuf>> {
            let w = self.0.lock();
            Ok(w.files
                .keys()
                .filter(|p| p.parent() == Some(dir))
                .cloned()
                .collect())
        }
        fn live_netns(&mut self) -> io::Result<BTreeSet<u64>> {
            Ok(self.0.lock().live.clone())
        }
    }

    fn world() -> Fake {
        let fake = Fake::default();
        {
            let mut w = fake.0.lock();
            w.cookie = Some(4096);
            w.live.insert(own_netns_inode());
            w.links.insert("eth0".into(), "veth");
            for (k, v) in [
                ("arp_ignore", "0"),
                ("arp_announce", "0"),
                ("rp_filter", "1"),
            ] {
                w.files.insert(sysctl_v4("eth0", k), v.into());
            }
            w.files.insert(sysctl_v4("all", "rp_filter"), "1".into());
        }
        fake
    }

    fn config() -> HostSetupConfig {
        let mut c = HostSetupConfig::new(
            "eth0",
            vec!["10.0.0.100".parse().unwrap(), "fd00::100".parse().unwrap()],
        );
        c.cluster_macs = vec![[2, 0xbf, 10, 0, 0, 100]];
        c.ingress_filter = true;
        c.state_dir = PathBuf::from("/state");
        c
    }

    fn value(fake: &Fake, path: PathBuf) -> String {
        fake.0.lock().files.get(&path).cloned().unwrap_or_default()
    }

    #[test]
    fn apply_then_teardown_restores_everything() {
        let fake = world();
        let before = fake.0.lock().files.clone();
        let mut setup = HostSetup::apply_with(Box::new(fake.clone()), config()).unwrap();
        assert_eq!(value(&fake, sysctl_v4("eth0", "arp_ignore")), "1");
        assert_eq!(value(&fake, sysctl_v4("eth0", "arp_announce")), "2");
        assert_eq!(value(&fake, sysctl_v4("shoal0", "rp_filter")), "0");
        assert_eq!(value(&fake, sysctl_v4("all", "rp_filter")), "2");
        assert_eq!(fake.0.lock().tables, vec!["shoal_eth0".to_owned()]);
        let log = fake.0.lock().log.join("\n");
        assert!(
            log.contains("ip addr add 10.0.0.100/32 dev shoal0 noprefixroute"),
            "{log}"
        );
        assert!(
            log.contains("ip addr add fd00::100/128 dev shoal0 nodad noprefixroute"),
            "{log}"
        );
        let state = value(&fake, config().state_file());
        assert!(
            state.contains("sysctl /proc/sys/net/ipv4/conf/eth0/arp_ignore 0"),
            "{state}"
        );
        assert!(state.contains("nft shoal_eth0"), "{state}");

        setup.teardown().unwrap();
        setup.teardown().unwrap();
        drop(setup);
        let w = fake.0.lock();
        assert!(w.tables.is_empty());
        assert!(!w.links.contains_key("shoal0"));
        let mut after = w.files.clone();
        // The TAP's own sysctls vanish with it in reality; the fake keeps them.
        after.retain(|p, _| !p.to_string_lossy().contains("shoal0"));
        assert_eq!(after, before);
    }

    #[test]
    fn leftovers_of_a_killed_run_are_undone_first() {
        let fake = world();
        let setup = HostSetup::apply_with(Box::new(fake.clone()), config()).unwrap();
        // SIGKILL: nothing undone, the record stays.
        std::mem::forget(setup);
        assert_eq!(value(&fake, sysctl_v4("eth0", "arp_ignore")), "1");
        let mut setup = HostSetup::apply_with(Box::new(fake.clone()), config()).unwrap();
        setup.teardown().unwrap();
        assert_eq!(
            value(&fake, sysctl_v4("eth0", "arp_ignore")),
            "0",
            "original, not the stale 1"
        );
        assert_eq!(value(&fake, sysctl_v4("all", "rp_filter")), "1");
        assert!(fake.0.lock().tables.is_empty());
    }

    #[test]
    fn a_record_left_by_a_deleted_namespace_with_our_inode_is_not_replayed() {
        let fake = world();
        // A dead namespace with this inode once changed arp_ignore from 7.
        fake.0.lock().files.insert(
            config().state_file(),
            format!(
                "netns 1\nsysctl {} 7\n",
                sysctl_v4("eth0", "arp_ignore").display()
            ),
        );
        let mut setup = HostSetup::apply_with(Box::new(fake.clone()), config()).unwrap();
        let record = value(&fake, config().state_file());
        assert!(record.starts_with("netns 4096\n"), "{record}");
        setup.teardown().unwrap();
        assert_eq!(
            value(&fake, sysctl_v4("eth0", "arp_ignore")),
            "0",
            "this namespace's own value, not the dead one's 7"
        );
    }

    #[test]
    fn records_of_deleted_namespaces_are_forgotten() {
        let fake = world();
        let live_other = own_netns_inode() + 1;
        let dead = own_netns_inode() + 2;
        fake.0.lock().live.insert(live_other);
        let keep = PathBuf::from(format!("/state/eth0-netns{live_other}.state"));
        let gone = PathBuf::from(format!("/state/eth0-netns{dead}.state"));
        let unrelated = PathBuf::from("/state/notes.txt");
        for path in [&keep, &gone, &unrelated] {
            fake.0
                .lock()
                .files
                .insert(path.clone(), "tap shoal9\n".into());
        }
        let mut setup = HostSetup::apply_with(Box::new(fake.clone()), config()).unwrap();
        setup.teardown().unwrap();
        let w = fake.0.lock();
        assert!(
            w.files.contains_key(&keep),
            "a live namespace's record stays"
        );
        assert!(
            w.files.contains_key(&unrelated),
            "other files are not touched"
        );
        assert!(
            !w.files.contains_key(&gone),
            "a dead namespace's record goes"
        );
        assert!(
            !w.log.iter().any(|l| l.contains("shoal9")),
            "a dead namespace's record is deleted, never replayed: {:?}",
            w.log
        );
    }

    #[test]
    fn missing_nft_is_a_clear_error() {
        let fake = world();
        fake.0.lock().missing.push("nft");
        let err = HostSetup::apply_with(Box::new(fake.clone()), config()).unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(err, SetupError::MissingTool { tool: "nft", .. }),
            "{msg}"
        );
        assert!(msg.contains("apt-get install -y nftables"), "{msg}");
        // Without the ingress filter nft is not needed.
        let mut c = config();
        c.ingress_filter = false;
        HostSetup::apply_with(Box::new(fake), c).unwrap();
    }

    #[test]
    fn failure_midway_undoes_what_was_done() {
        let fake = world();
        fake.0.lock().fail_command = Some("addr add fd00::100");
        let err = HostSetup::apply_with(Box::new(fake.clone()), config()).unwrap_err();
        assert!(err.to_string().contains("scripted failure"), "{err}");
        let w = fake.0.lock();
        assert!(!w.links.contains_key("shoal0"), "TAP removed");
        assert!(!w.files.contains_key(&config().state_file()));
        assert_eq!(w.files[&sysctl_v4("eth0", "arp_ignore")], "0");
    }

    #[test]
    fn refuses_to_remove_a_non_tap_interface() {
        let fake = world();
        fake.0.lock().links.insert("shoal0".into(), "dummy");
        let err = HostSetup::apply_with(Box::new(fake.clone()), config()).unwrap_err();
        assert!(matches!(err, SetupError::NameTaken(_)), "{err}");
        assert!(fake.0.lock().links.contains_key("shoal0"));
    }

    #[test]
    fn bad_config_and_missing_nic() {
        let fake = world();
        for c in [
            HostSetupConfig {
                vips: vec![],
                ..config()
            },
            HostSetupConfig {
                interface: "bad name".into(),
                ..config()
            },
            HostSetupConfig {
                cluster_macs: vec![],
                ..config()
            },
        ] {
            assert!(matches!(
                HostSetup::apply_with(Box::new(fake.clone()), c),
                Err(SetupError::Config(_))
            ));
        }
        let c = HostSetupConfig {
            interface: "eth7".into(),
            ..config()
        };
        assert!(matches!(
            HostSetup::apply_with(Box::new(fake), c),
            Err(SetupError::NoInterface(_))
        ));
    }

    #[test]
    fn ruleset_covers_every_cluster_frame_kind() {
        let text = HostSetup::nft_ruleset(&config());
        assert!(text.contains("device \"eth0\""));
        assert!(text.contains("ether daddr { 02:bf:0a:00:00:64 } drop"));
        assert!(text.contains("ether type 0x886f drop"));
        assert!(text.contains("arp daddr ip { 10.0.0.100 } drop"));
        assert!(text.contains("@th,64,128 0xfd000000000000000000000000000100 drop"));
        let c = HostSetupConfig {
            interface: "eth0.100".into(),
            ..config()
        };
        assert_eq!(c.nft_table(), "shoal_eth0_100");
    }
}
