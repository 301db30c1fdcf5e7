//! [`Fake`], a scripted [`Bpf`] for unit tests of error and fallback paths.

use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};

use super::{AttachMode, Bpf, BpfError, BpfMap, MapSpec};
use parking_lot::Mutex;

/// Which operations fail, and with which errno.
#[derive(Debug, Default, Clone)]
pub(crate) struct Script {
    pub map_create: Option<i32>,
    pub map_update: Option<i32>,
    pub prog_load: Option<(i32, &'static str)>,
    pub link_driver: Option<i32>,
    pub link_skb: Option<i32>,
    pub link_tcx: Option<i32>,
    pub ifindex: Option<i32>,
    pub rx_queues: u32,
}

/// A fake kernel: fds are `/dev/null` handles, calls are recorded.
#[derive(Debug, Default)]
pub(crate) struct Fake {
    pub script: Script,
    pub calls: Mutex<Vec<String>>,
}

impl Fake {
    pub(crate) fn new(script: Script) -> Self {
        Self {
            script,
            calls: Mutex::new(Vec::new()),
        }
    }

    fn record(&self, call: impl Into<String>) {
        self.calls.lock().push(call.into());
    }

    pub(crate) fn calls(&self) -> Vec<String> {
        self.calls.lock().clone()
    }
}

fn null_fd() -> OwnedFd {
    OwnedFd::from(std::fs::File::open("/dev/null").expect("/dev/null opens"))
}

fn fail(call: &'static str, errno: i32) -> BpfError {
    BpfError::Syscall {
        call,
        source: io::Error::from_raw_os_error(errno),
    }
}

impl Bpf for Fake {
    fn map_create(&self, spec: &MapSpec) -> Result<BpfMap, BpfError> {
        self.record(format!("map_create {:?} {}", spec.kind, spec.max_entries));
        if let Some(e) = self.script.map_create {
            return Err(fail("BPF_MAP_CREATE", e));
        }
        Ok(BpfMap::created(null_fd(), spec))
    }

    fn map_update(&self, map: &BpfMap, key: &[u8], value: &[u8]) -> Result<(), BpfError> {
        map.check_key(key)?;
        map.check_value(value)?;
        self.record("map_update");
        match self.script.map_update {
            Some(e) => Err(fail("BPF_MAP_UPDATE_ELEM", e)),
            None => Ok(()),
        }
    }

    fn map_delete(&self, map: &BpfMap, key: &[u8]) -> Result<bool, BpfError> {
        map.check_key(key)?;
        self.record("map_delete");
        Ok(true)
    }

    fn map_lookup(&self, map: &BpfMap, key: &[u8], value: &mut [u8]) -> Result<bool, BpfError> {
        map.check_key(key)?;
        map.check_value(value)?;
        self.record("map_lookup");
        Ok(false)
    }

    fn prog_load_xdp(&self, name: &str, insns: &[[u8; 8]]) -> Result<OwnedFd, BpfError> {
        self.record(format!("prog_load {name} {}", insns.len()));
        if let Some((e, log)) = self.script.prog_load {
            return Err(BpfError::ProgramRejected {
                name: name.to_owned(),
                source: io::Error::from_raw_os_error(e),
                log: log.to_owned(),
            });
        }
        Ok(null_fd())
    }

    fn prog_load_tcx(&self, name: &str, insns: &[[u8; 8]]) -> Result<OwnedFd, BpfError> {
        self.record(format!("prog_load_tcx {name} {}", insns.len()));
        Ok(null_fd())
    }

    fn link_create_tcx_ingress(
        &self,
        _prog: BorrowedFd<'_>,
        ifindex: u32,
    ) -> Result<OwnedFd, BpfError> {
        self.record(format!("link_create_tcx {ifindex}"));
        match self.script.link_tcx {
            Some(e) => Err(fail("BPF_LINK_CREATE", e)),
            None => Ok(null_fd()),
        }
    }

    fn prog_test_run_frame(
        &self,
        _prog: BorrowedFd<'_>,
        _frame: &[u8],
    ) -> Result<(u32, Vec<u8>), BpfError> {
        self.record("prog_test_run");
        Err(fail("BPF_PROG_TEST_RUN", libc::ENOTSUP))
    }

    fn link_create_xdp(
        &self,
        _prog: BorrowedFd<'_>,
        ifindex: u32,
        mode: AttachMode,
    ) -> Result<OwnedFd, BpfError> {
        self.record(format!("link_create {ifindex} {mode:?}"));
        let script = match mode {
            AttachMode::Driver => self.script.link_driver,
            AttachMode::Skb => self.script.link_skb,
        };
        match script {
            Some(e) => Err(fail("BPF_LINK_CREATE", e)),
            None => Ok(null_fd()),
        }
    }

    fn ifindex(&self, ifname: &str) -> Result<u32, BpfError> {
        self.record(format!("ifindex {ifname}"));
        match self.script.ifindex {
            Some(e) => Err(fail("if_nametoindex", e)),
            None => Ok(7),
        }
    }

    fn rx_queue_count(&self, _ifname: &str) -> Result<u32, BpfError> {
        Ok(self.script.rx_queues.max(1))
    }
}
