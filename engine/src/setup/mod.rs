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
//! 6. with frontend instances ([`HostSetupConfig::frontend_nat`]), the
//!    record of the NAT table `inet shoal_fe_<nic>` that [`crate::frontend`]
//!    makes later (after the privilege drop, with the rule maps it keeps
//!    current) and deletes when it stops. Setup only records it, before it
//!    exists, so that a run killed at any point after leaves a record
//!    naming it: the table DNATs the VIP's port to local instances, and a
//!    stale one would keep doing so after shoal is gone;
//! 7. link-layer memberships ([`HostSetupConfig::memberships`]) held by a
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
//! tables and the TAP) before doing anything else, and also removes the
//! tables named `netdev shoal_<nic>` and `inet shoal_fe_<nic>` and a TAP
//! with the configured name if any is still there. An existing interface with that name that is not a TAP is never
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
//! one transaction), found in the system directories and never through
//! `PATH` ([`crate::sys::programs`]); sysctls through `/proc/sys`. These are rare,
//! start-and-stop operations where a clear command in the log is worth more
//! than a netlink codec. All of it sits behind the seam's
//! [`crate::sys::host::HostOps`] so failure paths are tested without root.
//! Commands run in the calling thread's network namespace.
//!
//! [`HostSetup::clean`] (`shoal cleanup`) does the first step alone, for an
//! operator or `ExecStopPost=` after a crash: it replays the record, removes
//! the TAP and both nftables tables by name and detaches an XDP program named
//! `shoal_xdp` still attached through netlink, and starts nothing. (shoal
//! attaches XDP through a BPF link, which the kernel removes with the
//! process; the netlink check is for attachments made any other way.)
//!
//! Rooms: this module applies and undoes the steps; `journal.rs` owns the
//! undo journal and the record's format; `nft.rs` renders the ingress table
//! (the frontend table's text is [`crate::frontend::nft`]'s).

use std::fmt;
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use crate::afpacket::{AfPacketError, Membership};
use crate::sys::host::{self, CommandOutput, HostOps};
use crate::tap::{Tap, TapConfig, TapError};

mod journal;
mod nft;

use journal::{Journal, Leftover, Step};

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
    /// The run has frontend instances: record the NAT table
    /// `inet shoal_fe_<nic>` the frontend thread will make (step 6).
    pub frontend_nat: bool,
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
            frontend_nat: false,
            state_dir: PathBuf::from("/run/shoal"),
        }
    }

    /// The nftables table name for this NIC (`shoal_<nic>`, with characters
    /// nft does not allow in names replaced by `_`).
    pub fn nft_table(&self) -> String {
        nft::table_name(&self.interface)
    }

    /// The frontend instances' NAT table for this NIC (`inet
    /// shoal_fe_<nic>`, see [`crate::frontend::nft::table_name`]).
    pub fn frontend_table(&self) -> String {
        crate::frontend::nft::table_name(&self.interface)
    }

    /// The crash-recovery record for this interface in this network
    /// namespace: several namespaces on one machine (the lab) may each have
    /// an `eth0`, and `/run` is shared between them.
    pub fn state_file(&self) -> PathBuf {
        self.state_dir.join(journal::file_name(
            &self.interface,
            journal::own_netns_inode(),
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
    #[error("`{tool}` is not installed in /usr/sbin, /usr/bin, /sbin or /bin (needed for {purpose}); install it, e.g. `apt-get install -y {package}`")]
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

/// What [`HostSetup::clean`] found and undid.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cleaned {
    /// A crash-recovery record was replayed (its steps undone).
    pub record: bool,
    /// A record of a deleted namespace that had this one's inode was
    /// discarded unreplayed.
    pub foreign_record: bool,
    /// The TAP was still there and is gone.
    pub tap: bool,
    /// The nftables table was still there and is gone.
    pub table: bool,
    /// The frontend NAT table was still there and is gone.
    pub frontend_table: bool,
    /// An XDP program named `shoal_xdp` was attached and is detached.
    pub xdp: bool,
}

impl Cleaned {
    /// Whether anything was left.
    pub fn anything(&self) -> bool {
        self.record || self.tap || self.table || self.frontend_table || self.xdp
    }
}

impl fmt::Display for Cleaned {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if self.record {
            parts.push("replayed the crash-recovery record (sysctls restored)");
        }
        if self.foreign_record {
            parts.push("discarded a deleted namespace's record");
        }
        if self.tap {
            parts.push("removed the TAP");
        }
        if self.table {
            parts.push("removed the nftables table");
        }
        if self.frontend_table {
            parts.push("removed the frontend NAT table");
        }
        if self.xdp {
            parts.push("detached the XDP program");
        }
        if parts.is_empty() {
            write!(f, "nothing was left")
        } else {
            write!(f, "{}", parts.join("; "))
        }
    }
}

/// The host changes shoal made, undone on [`HostSetup::teardown`] or drop.
pub struct HostSetup {
    ops: Box<dyn HostOps>,
    config: HostSetupConfig,
    journal: Journal,
    taps: Vec<Tap>,
    tap_mac: Option<[u8; 6]>,
}

impl fmt::Debug for HostSetup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HostSetup")
            .field("config", &self.config)
            .field("journal", &self.journal)
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

fn sysctl_v4(interface: &str, key: &str) -> PathBuf {
    PathBuf::from(format!("/proc/sys/net/ipv4/conf/{interface}/{key}"))
}

impl HostSetup {
    /// Applies the setup on the real host.
    pub fn apply(config: HostSetupConfig) -> Result<Self, SetupError> {
        Self::apply_with(Box::new(host::Kernel), config)
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
            journal: Journal::default(),
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

    /// Undoes what a run that died left on the host (see the module docs),
    /// without changing anything else.
    pub fn clean(config: HostSetupConfig) -> Result<Cleaned, SetupError> {
        Self::clean_with(Box::new(host::Kernel), config)
    }

    /// [`HostSetup::clean`] through the given host operations.
    pub fn clean_with(
        ops: Box<dyn HostOps>,
        mut config: HostSetupConfig,
    ) -> Result<Cleaned, SetupError> {
        if !valid_name(&config.interface) || !valid_name(&config.tap.name) {
            return Err(SetupError::Config(format!(
                "bad interface or TAP name {:?} / {:?}",
                config.interface, config.tap.name
            )));
        }
        // Whichever backend the dead run used, its table goes.
        config.ingress_filter = true;
        let mut ops = ops;
        let probe = ops.run("ip", &["link", "show", "dev", &config.interface], None);
        match probe {
            Ok(out) if out.success => {}
            Ok(_) => return Err(SetupError::NoInterface(config.interface)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(SetupError::MissingTool {
                    tool: "ip",
                    purpose: "addresses and links",
                    package: "iproute2",
                })
            }
            Err(e) => {
                return Err(SetupError::Command {
                    command: "ip link show".into(),
                    stderr: e.to_string(),
                })
            }
        }
        let mut setup = HostSetup {
            ops,
            config,
            journal: Journal::default(),
            taps: Vec::new(),
            tap_mac: None,
        };
        let mut cleaned = setup.clean_stale(true)?;
        cleaned.xdp = setup.detach_stray_xdp()?;
        Ok(cleaned)
    }

    /// Detaches a netlink-attached XDP program named `shoal_xdp` from the
    /// NIC; true when there was one.
    fn detach_stray_xdp(&mut self) -> Result<bool, SetupError> {
        let nic = self.config.interface.clone();
        let out = self.ip(&["-d", "link", "show", "dev", &nic])?;
        if !out.success || !out.stdout.contains("name shoal_xdp") {
            return Ok(false);
        }
        let mut detached = false;
        for mode in ["xdp", "xdpgeneric", "xdpdrv"] {
            // Only the mode it was attached in succeeds; a BPF link's
            // program refuses every one (the kernel owns its lifetime).
            detached |= self.ip(&["link", "set", "dev", &nic, mode, "off"])?.success;
        }
        let out = self.ip(&["-d", "link", "show", "dev", &nic])?;
        Ok(detached && !out.stdout.contains("name shoal_xdp"))
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
        nft::ruleset(config)
    }

    fn apply_steps(&mut self) -> Result<(), SetupError> {
        self.clean_stale(false)?;
        self.require_tool("ip", &["-V"], "addresses and links", "iproute2")?;
        if self.config.ingress_filter {
            self.require_tool(
                "nft",
                &["--version"],
                "the AF_PACKET ingress drop table",
                "nftables",
            )?;
        }
        if self.config.frontend_nat {
            self.require_tool(
                "nft",
                &["--version"],
                "the frontend instances' NAT table",
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

        // 6. The frontend NAT table: recorded only (see the module docs).
        if self.config.frontend_nat {
            let name = self.config.frontend_table();
            self.push(Step::FrontendTable { name })?;
        }

        // 7. Memberships.
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
        while let Some(step) = self.journal.pop() {
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
                self.delete_tap(&name).map(drop)
            }
            Step::NftTable { name } => self.delete_table("netdev", &name),
            Step::FrontendTable { name } => self.delete_table("inet", &name),
            Step::Memberships(hold) => {
                drop(hold);
                Ok(())
            }
        }
    }

    /// Replays a leftover record of this namespace, forgets the records of
    /// dead ones, and removes leftovers by name.
    /// With `report`, asks first whether the table exists, so that
    /// [`Cleaned::table`] says whether it was there.
    fn clean_stale(&mut self, report: bool) -> Result<Cleaned, SetupError> {
        let mut cleaned = Cleaned::default();
        let path = self.config.state_file();
        if let Ok(text) = self.ops.read(&path) {
            let cookie = self.ops.netns_cookie();
            match (journal::record_cookie(&text), cookie) {
                (Some(recorded), Some(cookie)) if recorded != cookie => {
                    tracing::warn!(
                        state = %path.display(),
                        "discarding the record of a deleted namespace that had this one's inode"
                    );
                    cleaned.foreign_record = true;
                }
                _ => {
                    tracing::warn!(state = %path.display(), "undoing the leftovers of a previous run");
                    self.replay(&text, report, &mut cleaned)?;
                    cleaned.record = true;
                }
            }
            self.ops
                .remove(&path)
                .map_err(|source| SetupError::File { path, source })?;
        }
        self.forget_dead_namespaces();
        let tap = self.config.tap.name.clone();
        cleaned.tap |= self.delete_tap(&tap)?;
        if self.config.ingress_filter {
            let table = self.config.nft_table();
            cleaned.table |= report && self.table_exists("netdev", &table)?;
            self.delete_table("netdev", &table)?;
        }
        // The frontend table goes whatever this run's config says: a dead
        // run may have had instances. Without nft there is none to find.
        let frontend = self.config.frontend_table();
        if self.table_exists("inet", &frontend)? {
            self.delete_table("inet", &frontend)?;
            cleaned.frontend_table = true;
        }
        Ok(cleaned)
    }

    /// Whether nftables table `family name` exists (false when nft is
    /// missing).
    fn table_exists(&mut self, family: &str, name: &str) -> Result<bool, SetupError> {
        match self.ops.run("nft", &["list", "table", family, name], None) {
            Ok(out) => Ok(out.success),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(SetupError::Command {
                command: format!("nft list table {family} {name}"),
                stderr: e.to_string(),
            }),
        }
    }

    /// Undoes the steps of a leftover record, last first.
    fn replay(
        &mut self,
        text: &str,
        report: bool,
        cleaned: &mut Cleaned,
    ) -> Result<(), SetupError> {
        let (own, frontend) = (self.config.nft_table(), self.config.frontend_table());
        for leftover in journal::leftovers(text, &own, &frontend) {
            match leftover {
                Leftover::Sysctl { path, previous } => self.restore_sysctl(&path, &previous)?,
                Leftover::Tap(name) => cleaned.tap |= self.delete_tap(&name)?,
                Leftover::NftTable(name) => {
                    cleaned.table |= report && self.table_exists("netdev", &name)?;
                    self.delete_table("netdev", &name)?;
                }
                Leftover::FrontendTable(name) => {
                    if self.table_exists("inet", &name)? {
                        self.delete_table("inet", &name)?;
                        cleaned.frontend_table = true;
                    }
                }
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
            .filter_map(|path| journal::record_netns(&path).map(|inode| (path, inode)))
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
        self.journal.push(step);
        self.save_state()
    }

    fn save_state(&mut self) -> Result<(), SetupError> {
        let path = self.config.state_file();
        let ops = &mut self.ops;
        let result = match self.journal.record(|| ops.netns_cookie()) {
            None => self.ops.remove(&path),
            Some(text) => self.ops.write(&path, &text),
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

    /// Deletes TAP `name` if it exists (true then); refuses if it is not a
    /// TAP.
    fn delete_tap(&mut self, name: &str) -> Result<bool, SetupError> {
        let out = self.ip(&["-d", "link", "show", "dev", name])?;
        if !out.success {
            return Ok(false);
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
        Ok(true)
    }

    /// Deletes nftables table `family name` if it exists.
    fn delete_table(&mut self, family: &str, name: &str) -> Result<(), SetupError> {
        let script = nft::delete_script(family, name);
        let out = self.run("nft", &["-f", "-"], Some(&script))?;
        if out.success {
            Ok(())
        } else {
            Err(SetupError::Command {
                command: format!("nft delete table {family} {name}"),
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
mod tests;
