//! [`XdpAttachment`]: shoal's XDP program, its XSKMAP and its BPF link on
//! one interface, shared by every queue's socket.
//!
//! Dropping the attachment (or the process dying, even by `SIGKILL`) closes
//! the link and so detaches the program: nothing is left on the interface.
//! With a pass MAC, a tcx ingress companion ([`crate::xdp::reclassify`]) is
//! attached beside it and detached with it. The program's guard counters
//! ([`crate::xdp::guard`]) live in a map the attachment owns and shares
//! ([`XdpAttachment::guard`]) with whoever reports counters.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::Arc;

use crate::fastpath::{FastPathError, FastPathMaps};
use crate::sys::bpf::{self, AttachMode, Bpf, BpfMap, MapSpec};
use crate::xdp::fast::FastPathPlan;
use crate::xdp::guard::{GuardCounters, GuardMap};
use crate::xdp::program::{ProgramError, ProgramMaps};
use crate::xdp::{XdpAction, XdpParams, XdpProgram};

use super::{is_unsupported_errno, AfXdpError, XdpMode};

/// shoal's XDP program attached to one interface, with the XSKMAP its
/// per-queue sockets register in. Dropping it detaches the program.
#[derive(Debug)]
pub struct XdpAttachment {
    // Declared first so it is closed first: the program leaves the interface
    // before the map and program fds go.
    link: OwnedFd,
    program: OwnedFd,
    /// The tcx companion of the XDP pass (link, then program), when the
    /// program passes datagrams (see [`crate::xdp::reclassify`]).
    reclassify: Option<(OwnedFd, OwnedFd)>,
    xskmap: BpfMap,
    /// The guard counters.
    guard: Arc<GuardMap>,
    /// The XDP fast path's maps, when the program judges cluster frames in
    /// the kernel (see [`crate::fastpath`]).
    fast_path: Option<Arc<FastPathMaps>>,
    bpf: Arc<dyn Bpf>,
    ifname: String,
    ifindex: u32,
    queues: u32,
    mode: XdpMode,
}

/// Loads and links [`crate::xdp::reclassify`] on `ifindex`'s tcx ingress;
/// returns (link, program).
fn attach_reclassify(
    bpf: &dyn Bpf,
    ifindex: u32,
    mac: [u8; 6],
) -> Result<(OwnedFd, OwnedFd), AfXdpError> {
    let insns = crate::xdp::reclassify::program(mac).map_err(ProgramError::from)?;
    let encoded: Vec<[u8; 8]> = insns.iter().map(|i| i.encode()).collect();
    let program = bpf
        .prog_load_tcx("shoal_reclass", &encoded)
        .map_err(AfXdpError::Load)?;
    let link = bpf.link_create_tcx_ingress(program.as_fd(), ifindex)?;
    Ok((link, program))
}

impl XdpAttachment {
    /// Builds, loads and attaches shoal's program to `ifname` (in the calling
    /// thread's network namespace).
    pub fn attach(ifname: &str, params: &XdpParams, mode: XdpMode) -> Result<Self, AfXdpError> {
        Self::attach_with(Arc::new(bpf::Kernel), ifname, params, mode)
    }

    /// As [`XdpAttachment::attach`], through the given kernel seam.
    pub fn attach_with(
        bpf: Arc<dyn Bpf>,
        ifname: &str,
        params: &XdpParams,
        mode: XdpMode,
    ) -> Result<Self, AfXdpError> {
        Self::attach_with_fast_path(bpf, ifname, params, None, mode)
    }

    /// As [`XdpAttachment::attach_with`]; with `fast_path`, the attachment
    /// also creates and owns the fast path's maps and the program drops, in
    /// the kernel, what they say this host does not keep, and (with a pass
    /// MAC) hands the kernel stack what they say it surely keeps (nothing
    /// until a [`crate::fastpath::FastPath`] writes them).
    pub fn attach_with_fast_path(
        bpf: Arc<dyn Bpf>,
        ifname: &str,
        params: &XdpParams,
        fast_path: Option<FastPathPlan>,
        mode: XdpMode,
    ) -> Result<Self, AfXdpError> {
        let ifindex = bpf.ifindex(ifname)?;
        let queues = bpf.rx_queue_count(ifname)?.max(1);
        let xskmap = bpf
            .map_create(&MapSpec::xsk_map("shoal_xsks", queues))
            .map_err(|e| {
                if is_unsupported_errno(e.errno()) {
                    AfXdpError::Unsupported(e.to_string())
                } else {
                    AfXdpError::Bpf(e)
                }
            })?;
        let guard = Arc::new(GuardMap::create(&*bpf)?);
        // The pass needs its tcx companion on veth: without it, nothing is
        // passed (every kept frame takes userspace and the TAP).
        let mut reclassify = None;
        let fast_path = fast_path.map(|mut plan| {
            if let Some(mac) = plan.pass_to {
                match attach_reclassify(&*bpf, ifindex, mac) {
                    Ok(fds) => reclassify = Some(fds),
                    Err(e) => {
                        tracing::warn!(ifname, error = %e,
                            "no tcx ingress link: the XDP program passes nothing to the stack");
                        plan.pass_to = None;
                    }
                }
            }
            plan
        });
        let fast_path = match fast_path {
            Some(plan) => Some(Arc::new(
                FastPathMaps::create(&*bpf, plan.layout, plan.pass_to).map_err(|e| match e {
                    FastPathError::Bpf(b) => AfXdpError::Bpf(b),
                })?,
            )),
            None => None,
        };
        let program = XdpProgram::build_with_maps(
            params,
            ProgramMaps {
                xskmap: xskmap.fd(),
                guard: guard.fd(),
            },
            fast_path.as_deref().map(|m| (m.layout(), m.fds())),
            XdpAction::Drop,
        )?;
        let program = bpf
            .prog_load_xdp("shoal_xdp", &program.encode())
            .map_err(AfXdpError::Load)?;

        let order: &[(XdpMode, AttachMode)] = match mode {
            XdpMode::Native => &[(XdpMode::Native, AttachMode::Driver)],
            XdpMode::Generic => &[(XdpMode::Generic, AttachMode::Skb)],
            XdpMode::Auto => &[
                (XdpMode::Native, AttachMode::Driver),
                (XdpMode::Generic, AttachMode::Skb),
            ],
        };
        let mut attempts = Vec::new();
        for &(actual, how) in order {
            match bpf.link_create_xdp(program.as_fd(), ifindex, how) {
                Ok(link) => {
                    tracing::info!(
                        ifname,
                        ifindex,
                        queues,
                        mode = %actual,
                        "shoal XDP program attached"
                    );
                    return Ok(Self {
                        link,
                        program,
                        reclassify,
                        xskmap,
                        guard,
                        fast_path,
                        bpf,
                        ifname: ifname.to_owned(),
                        ifindex,
                        queues,
                        mode: actual,
                    });
                }
                Err(e) => {
                    tracing::warn!(ifname, mode = %actual, error = %e, "XDP attach failed");
                    attempts.push((actual, e));
                }
            }
        }
        Err(AfXdpError::Attach {
            ifname: ifname.to_owned(),
            attempts,
        })
    }

    /// Whether the program hands datagrams to the stack itself (its tcx
    /// companion is attached).
    pub fn passes(&self) -> bool {
        self.reclassify.is_some()
    }

    /// The mode actually in use (never [`XdpMode::Auto`]).
    pub fn mode(&self) -> XdpMode {
        self.mode
    }

    /// The interface.
    pub fn ifname(&self) -> &str {
        &self.ifname
    }

    /// The interface index.
    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    /// How many rx queues the XSKMAP covers.
    pub fn queue_count(&self) -> u32 {
        self.queues
    }

    /// The BPF link holding the program on the interface.
    pub fn link(&self) -> BorrowedFd<'_> {
        self.link.as_fd()
    }

    /// The loaded program (for `BPF_PROG_TEST_RUN` and introspection).
    pub fn program(&self) -> BorrowedFd<'_> {
        self.program.as_fd()
    }

    /// The XSKMAP.
    pub fn xskmap(&self) -> &BpfMap {
        &self.xskmap
    }

    /// A reader of the program's guard counters that outlives nothing but
    /// itself (it holds the map and the seam).
    pub fn guard(&self) -> GuardReader {
        GuardReader {
            map: self.guard.clone(),
            bpf: self.bpf.clone(),
        }
    }

    /// The fast path's maps, when the program has the fast path.
    pub fn fast_path(&self) -> Option<&Arc<FastPathMaps>> {
        self.fast_path.as_ref()
    }

    /// The kernel seam this attachment uses.
    pub fn bpf(&self) -> &Arc<dyn Bpf> {
        &self.bpf
    }

    pub(super) fn check_queue(&self, queue: u32) -> Result<(), AfXdpError> {
        if queue >= self.queues {
            return Err(AfXdpError::QueueOutOfRange {
                ifname: self.ifname.clone(),
                queue,
                count: self.queues,
            });
        }
        Ok(())
    }

    /// Directs `queue`'s cluster frames to the AF_XDP socket `socket`.
    pub fn register(&self, queue: u32, socket: RawFd) -> Result<(), AfXdpError> {
        self.check_queue(queue)?;
        let fd = u32::try_from(socket)
            .map_err(|_| AfXdpError::Config(format!("socket fd {socket} is negative")))?;
        self.bpf
            .map_update(&self.xskmap, &queue.to_ne_bytes(), &fd.to_ne_bytes())?;
        Ok(())
    }

    /// Stops directing `queue`'s frames to a socket (the program drops and
    /// counts them instead). Closing the socket does this too. (An XSKMAP does not
    /// report whether the slot was occupied.)
    pub fn unregister(&self, queue: u32) -> Result<(), AfXdpError> {
        self.check_queue(queue)?;
        self.bpf.map_delete(&self.xskmap, &queue.to_ne_bytes())?;
        Ok(())
    }
}

/// Reads an attachment's guard counters (see [`crate::xdp::guard`]); the
/// map stays alive as long as a reader does.
#[derive(Debug, Clone)]
pub struct GuardReader {
    map: Arc<GuardMap>,
    bpf: Arc<dyn Bpf>,
}

impl GuardReader {
    /// The counters now; zero when the map cannot be read.
    pub fn counters(&self) -> GuardCounters {
        self.map.counters(&*self.bpf).unwrap_or_default()
    }
}

/// Checks that `configured` (the rx queues the poll loops own) covers every
/// rx queue `ifname` has (`count`): a queue without a socket would have its
/// cluster frames dropped by the program.
pub fn check_queue_coverage(
    ifname: &str,
    count: u32,
    configured: &[u32],
) -> Result<(), AfXdpError> {
    let missing: Vec<u32> = (0..count).filter(|q| !configured.contains(q)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(AfXdpError::QueuesUncovered {
        ifname: ifname.to_owned(),
        count,
        missing,
        configured: configured.len() as u32,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::bpf::fake::{Fake, Script};
    use std::net::Ipv4Addr;

    fn params() -> XdpParams {
        XdpParams {
            cluster_macs: vec![[0x02, 0xbf, 10, 0, 0, 1]],
            vips_v4: vec![Ipv4Addr::new(10, 0, 0, 1)],
            ..XdpParams::default()
        }
    }

    fn attach(script: Script, mode: XdpMode) -> (Arc<Fake>, Result<XdpAttachment, AfXdpError>) {
        let fake = Arc::new(Fake::new(script));
        let result = XdpAttachment::attach_with(fake.clone(), "veth0", &params(), mode);
        (fake, result)
    }

    fn links(fake: &Fake) -> Vec<String> {
        fake.calls()
            .into_iter()
            .filter(|c| c.starts_with("link_create"))
            .collect()
    }

    #[test]
    fn auto_falls_back_to_generic_when_native_fails() {
        let (fake, r) = attach(
            Script {
                link_driver: Some(libc::EOPNOTSUPP),
                ..Script::default()
            },
            XdpMode::Auto,
        );
        let a = r.unwrap();
        assert_eq!(a.mode(), XdpMode::Generic);
        assert_eq!(
            links(&fake),
            vec!["link_create 7 Driver", "link_create 7 Skb"]
        );
    }

    #[test]
    fn the_fast_path_maps_are_created_with_the_program() {
        let fake = Arc::new(Fake::new(Script::default()));
        let layout = crate::xdp::fast::FastPathLayout {
            seed: 7,
            rules: vec![crate::xdp::fast::FastRule {
                rule: 0,
                vip: None,
                port_start: 0,
                port_end: 65535,
                tcp: true,
                udp: true,
                affinity: Some(shoal_dataplane::Affinity::Single),
                udp_untracked: true,
            }],
        };
        let a = XdpAttachment::attach_with_fast_path(
            fake.clone(),
            "veth0",
            &params(),
            Some(FastPathPlan {
                layout: layout.clone(),
                pass_to: Some([2, 0, 0, 0, 0, 1]),
            }),
            XdpMode::Auto,
        )
        .unwrap();
        assert_eq!(a.fast_path().unwrap().layout(), &layout);
        let creates: Vec<String> = fake
            .calls()
            .into_iter()
            .filter(|c| c.starts_with("map_create"))
            .collect();
        assert_eq!(creates.len(), 6, "{creates:?}");
        assert!(attach(Script::default(), XdpMode::Auto)
            .1
            .unwrap()
            .fast_path()
            .is_none());
    }

    #[test]
    fn queue_coverage_names_the_missing_queues_and_the_fix() {
        assert!(check_queue_coverage("eth0", 2, &[0, 1]).is_ok());
        assert!(check_queue_coverage("eth0", 1, &[0]).is_ok());
        // Extra configured queues are the socket's problem (out of range).
        assert!(check_queue_coverage("eth0", 1, &[0, 1]).is_ok());
        let e = check_queue_coverage("eth0", 4, &[0, 2]).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("rx queues 1, 3 of eth0"), "{msg}");
        assert!(msg.contains("ethtool -L eth0 combined 2"), "{msg}");
        assert!(msg.contains("[host.cores].poll"), "{msg}");
    }

    #[test]
    fn auto_prefers_native() {
        let (fake, r) = attach(Script::default(), XdpMode::Auto);
        assert_eq!(r.unwrap().mode(), XdpMode::Native);
        assert_eq!(links(&fake), vec!["link_create 7 Driver"]);
    }

    #[test]
    fn explicit_modes_do_not_fall_back() {
        let (fake, r) = attach(
            Script {
                link_driver: Some(libc::EOPNOTSUPP),
                ..Script::default()
            },
            XdpMode::Native,
        );
        match r {
            Err(AfXdpError::Attach { attempts, .. }) => {
                assert_eq!(attempts.len(), 1);
                assert_eq!(attempts[0].0, XdpMode::Native);
                assert_eq!(attempts[0].1.errno(), Some(libc::EOPNOTSUPP));
            }
            other => panic!("expected an attach error, got {other:?}"),
        }
        assert_eq!(links(&fake), vec!["link_create 7 Driver"]);

        let (fake, r) = attach(Script::default(), XdpMode::Generic);
        assert_eq!(r.unwrap().mode(), XdpMode::Generic);
        assert_eq!(links(&fake), vec!["link_create 7 Skb"]);
    }

    #[test]
    fn both_modes_failing_reports_both() {
        let (_, r) = attach(
            Script {
                link_driver: Some(libc::EOPNOTSUPP),
                link_skb: Some(libc::EBUSY),
                ..Script::default()
            },
            XdpMode::Auto,
        );
        let e = r.unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("native mode: BPF_LINK_CREATE failed"), "{msg}");
        assert!(
            msg.contains("generic mode: BPF_LINK_CREATE failed"),
            "{msg}"
        );
        assert!(msg.contains("veth0"), "{msg}");
    }

    #[test]
    fn a_rejected_program_carries_the_verifier_log() {
        let (fake, r) = attach(
            Script {
                prog_load: Some((libc::EACCES, "R2 invalid mem access 'scalar'")),
                ..Script::default()
            },
            XdpMode::Auto,
        );
        let e = r.unwrap_err();
        assert!(matches!(e, AfXdpError::Load(_)), "{e:?}");
        let full = format!("{e}: {}", std::error::Error::source(&e).unwrap());
        assert!(full.contains("invalid mem access"), "{full}");
        assert!(
            links(&fake).is_empty(),
            "nothing attached after a failed load"
        );
    }

    #[test]
    fn a_kernel_without_xskmap_is_unsupported() {
        let (_, r) = attach(
            Script {
                map_create: Some(libc::EINVAL),
                ..Script::default()
            },
            XdpMode::Auto,
        );
        assert!(matches!(r, Err(AfXdpError::Unsupported(_))), "{r:?}");

        // Permission problems are not "unsupported".
        let (_, r) = attach(
            Script {
                map_create: Some(libc::EPERM),
                ..Script::default()
            },
            XdpMode::Auto,
        );
        let e = r.unwrap_err();
        assert!(matches!(e, AfXdpError::Bpf(_)), "{e:?}");
        assert!(e.to_string().contains("BPF_MAP_CREATE"), "{e}");
    }

    #[test]
    fn a_missing_interface_is_named() {
        let (_, r) = attach(
            Script {
                ifindex: Some(libc::ENODEV),
                ..Script::default()
            },
            XdpMode::Auto,
        );
        let e = r.unwrap_err();
        assert!(e.to_string().contains("if_nametoindex"), "{e}");
    }

    #[test]
    fn xskmap_covers_every_queue_and_registration_checks_range() {
        let (fake, r) = attach(
            Script {
                rx_queues: 4,
                ..Script::default()
            },
            XdpMode::Auto,
        );
        let a = r.unwrap();
        assert_eq!(a.queue_count(), 4);
        assert!(fake.calls().contains(&"map_create XskMap 4".to_owned()));
        a.register(3, 9).unwrap();
        assert!(matches!(
            a.register(4, 9),
            Err(AfXdpError::QueueOutOfRange {
                queue: 4,
                count: 4,
                ..
            })
        ));
        assert!(a.register(0, -1).is_err());
        a.unregister(3).unwrap();
        assert!(a.unregister(4).is_err());
    }
}
