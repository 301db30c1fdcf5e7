//! Host setup against an in-memory host ([`Fake`]): apply and teardown,
//! crash recovery, and failure paths, without root.

use super::journal::own_netns_inode;
use super::*;
use crate::afpacket::MembershipHold;
use parking_lot::Mutex;
use std::collections::{BTreeMap, BTreeSet};
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
            ("ip", ["link", "show", "dev", name]) | ("ip", ["-d", "link", "show", "dev", name]) => {
                match w.links.get(*name) {
                    Some(kind) => ok(format!("1: {name}: <UP>\n    {kind}\n")),
                    None => fail("Device does not exist."),
                }
            }
            ("ip", ["link", "del", "dev", name]) => {
                w.links.remove(*name);
                ok(String::new())
            }
            ("nft", ["list", "table", family, name]) => {
                if w.tables.iter().any(|t| t == name) {
                    ok(format!("table {family} {name} {{}}"))
                } else {
                    fail("No such file or directory")
                }
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
fn clean_undoes_a_killed_run_and_starts_nothing() {
    let fake = world();
    let before = fake.0.lock().files.clone();
    let setup = HostSetup::apply_with(Box::new(fake.clone()), config()).unwrap();
    std::mem::forget(setup);
    fake.0.lock().log.clear();
    let mut plain = config();
    // Cleanup reads the config, not the dead run's backend: the table goes
    // even when the config would not ask for it.
    plain.ingress_filter = false;
    let cleaned = HostSetup::clean_with(Box::new(fake.clone()), plain.clone()).unwrap();
    assert!(
        cleaned.record && cleaned.tap && cleaned.table,
        "{cleaned:?}"
    );
    assert!(!cleaned.xdp);
    {
        let w = fake.0.lock();
        assert!(w.tables.is_empty());
        assert!(!w.links.contains_key("shoal0"));
        assert!(
            !w.log
                .iter()
                .any(|l| l.starts_with("ip addr add") || l.contains("tuntap")),
            "{:?}",
            w.log
        );
        let mut after = w.files.clone();
        after.retain(|p, _| !p.to_string_lossy().contains("shoal0"));
        assert_eq!(after, before, "sysctls restored, record gone");
    }
    // A second run finds nothing.
    let again = HostSetup::clean_with(Box::new(fake.clone()), plain).unwrap();
    assert!(!again.anything(), "{again:?}");
    assert_eq!(again.to_string(), "nothing was left");
}

#[test]
fn clean_detaches_a_stray_xdp_program_only_by_name() {
    let fake = world();
    fake.0.lock().links.insert(
        "eth0".into(),
        "veth\n    prog/xdp id 7 name shoal_xdp tag 00",
    );
    let cleaned = HostSetup::clean_with(Box::new(fake.clone()), config()).unwrap();
    // The fake keeps the program listed after `xdp off`: not reported as
    // detached, but every mode was tried.
    assert!(!cleaned.xdp);
    let log = fake.0.lock().log.join("\n");
    assert!(log.contains("ip link set dev eth0 xdpgeneric off"), "{log}");

    let fake = world();
    fake.0
        .lock()
        .links
        .insert("eth0".into(), "veth\n    prog/xdp id 7 name other tag 00");
    HostSetup::clean_with(Box::new(fake.clone()), config()).unwrap();
    let log = fake.0.lock().log.join("\n");
    assert!(!log.contains("xdp off"), "someone else's program: {log}");
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
fn a_forged_record_touches_nothing_outside_shoals_own() {
    let fake = world();
    let outside = [
        ("/proc/sys/kernel/core_pattern", "core"),
        ("/proc/sys/kernel/modprobe", "/sbin/modprobe"),
        ("/etc/passwd", "root:x:0:0::/root:/bin/sh"),
    ];
    for (path, v) in outside {
        fake.0.lock().files.insert(PathBuf::from(path), v.into());
    }
    fake.0.lock().tables.push("filter".into());
    fake.0.lock().links.insert("eth1".into(), "veth");
    fake.0.lock().files.insert(
        config().state_file(),
        format!(
            "netns 4096\n\
             sysctl /proc/sys/kernel/core_pattern |/tmp/evil\n\
             sysctl /etc/passwd evil\n\
             sysctl /proc/sys/net/../kernel/modprobe /tmp/evil\n\
             sysctl /proc/sys/net/ipv4/conf/./eth0/arp_ignore 5\n\
             sysctl /proc/sys/net//ipv4/conf/eth0/arp_ignore 5\n\
             sysctl {} 0 bad\n\
             nft filter\n\
             nft shoal_eth1\n\
             tap ../eth1\n\
             sysctl {} 3\n",
            sysctl_v4("eth0", "arp_announce").display(),
            sysctl_v4("eth0", "arp_ignore").display(),
        ),
    );
    let mut setup = HostSetup::apply_with(Box::new(fake.clone()), config()).unwrap();
    setup.teardown().unwrap();
    let w = fake.0.lock();
    for (path, v) in outside {
        assert_eq!(
            w.files.get(Path::new(path)).map(String::as_str),
            Some(v),
            "{path}"
        );
    }
    assert_eq!(w.tables, vec!["filter".to_owned()], "a foreign table stays");
    assert!(w.links.contains_key("eth1"));
    assert!(
        !w.log
            .iter()
            .any(|l| l.contains("eth1") || l.contains("filter")),
        "{:?}",
        w.log
    );
    drop(w);
    // The one well-formed line was replayed (and teardown then put back
    // what this run found: the replayed 3).
    assert_eq!(value(&fake, sysctl_v4("eth0", "arp_ignore")), "3");
    assert_eq!(value(&fake, sysctl_v4("eth0", "arp_announce")), "0");
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

/// The frontend's NAT table as the frontend thread would make it (the fake
/// keeps a table whose script has more than two lines).
fn make_frontend_table(fake: &Fake) {
    let mut ops = fake.clone();
    ops.run(
        "nft",
        &["-f", "-"],
        Some("table inet shoal_fe_eth0 {}\ndelete table inet shoal_fe_eth0\ntable inet shoal_fe_eth0 {\n}\n"),
    )
    .unwrap();
}

#[test]
fn the_frontend_table_is_recorded_and_removed_after_a_kill() {
    let fake = world();
    let mut c = config();
    c.frontend_nat = true;
    let setup = HostSetup::apply_with(Box::new(fake.clone()), c.clone()).unwrap();
    let state = value(&fake, c.state_file());
    assert!(state.contains("nft inet shoal_fe_eth0"), "{state}");
    make_frontend_table(&fake);
    // SIGKILL: nothing undone.
    std::mem::forget(setup);
    let cleaned = HostSetup::clean_with(Box::new(fake.clone()), config()).unwrap();
    assert!(cleaned.frontend_table && cleaned.record, "{cleaned:?}");
    assert!(
        cleaned
            .to_string()
            .contains("removed the frontend NAT table"),
        "{cleaned}"
    );
    assert!(fake.0.lock().tables.is_empty());

    // The next start removes it too, even when its config has no instances.
    let setup = HostSetup::apply_with(Box::new(fake.clone()), c.clone()).unwrap();
    make_frontend_table(&fake);
    std::mem::forget(setup);
    let mut plain = config();
    plain.ingress_filter = false;
    let mut next = HostSetup::apply_with(Box::new(fake.clone()), plain.clone()).unwrap();
    assert!(
        fake.0.lock().tables.is_empty(),
        "{:?}",
        fake.0.lock().tables
    );
    assert!(!value(&fake, plain.state_file()).contains("shoal_fe"));
    next.teardown().unwrap();

    // No record at all (lost): found by name.
    make_frontend_table(&fake);
    let cleaned = HostSetup::clean_with(Box::new(fake.clone()), plain).unwrap();
    assert!(cleaned.frontend_table && !cleaned.record, "{cleaned:?}");
    assert!(fake.0.lock().tables.is_empty());
}

#[test]
fn teardown_removes_the_frontend_table_and_nft_is_needed_for_it() {
    let fake = world();
    let mut c = config();
    c.ingress_filter = false;
    c.frontend_nat = true;
    let mut setup = HostSetup::apply_with(Box::new(fake.clone()), c.clone()).unwrap();
    make_frontend_table(&fake);
    setup.teardown().unwrap();
    assert!(fake.0.lock().tables.is_empty());
    assert!(!fake.0.lock().files.contains_key(&c.state_file()));

    fake.0.lock().missing.push("nft");
    let err = HostSetup::apply_with(Box::new(fake.clone()), c).unwrap_err();
    assert!(
        matches!(err, SetupError::MissingTool { tool: "nft", .. }),
        "{err}"
    );
}
