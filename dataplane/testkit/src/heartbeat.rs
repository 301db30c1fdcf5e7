//! The heartbeat fuzz cluster: the key, spec, boot IDs, start time and
//! timing shared by the `heartbeat` fuzz target (host 1, the fuzzed
//! machine) and its seed builder (hosts 2 and 3 of a live three-host
//! cluster), which must agree on all of them for the seeds' heartbeats to
//! authenticate and converge.

use shoal_controlplane::{Config, Machine};
use shoal_dataplane::{ClusterSpec, HostId};

/// Nanoseconds per millisecond.
pub const MS: u64 = 1_000_000;
/// Heartbeat period.
pub const PERIOD: u64 = 100 * MS;
/// The cluster key.
pub const KEY: [u8; 32] = [0x5a; 32];
/// Host 1's boot ID; host `n`'s is `BOOT + (n - 1) × 1000`.
pub const BOOT: u64 = 1_700_000_000_000_000_000;
/// The time every machine starts at.
pub const START: u64 = 1_000 * MS;

/// The cluster: [`crate::spec::web`].
pub fn spec() -> ClusterSpec {
    crate::spec::web()
}

/// Host `id`'s boot ID.
pub fn boot(id: HostId) -> u64 {
    BOOT + u64::from(id.get() - 1) * 1_000
}

/// Host `id`'s control-plane configuration: [`KEY`], its boot ID,
/// [`PERIOD`], tolerance 3, drain timeout 20 periods. `None` when `id` is
/// not a host ID.
pub fn config(id: u8) -> Option<Config> {
    let host = HostId::new(id)?;
    let mut c = Config::new(host, KEY, boot(host));
    c.period_ns = PERIOD;
    c.tolerance = 3;
    c.drain_timeout_ns = 20 * PERIOD;
    Some(c)
}

/// Host `id`'s machine, started at [`START`].
pub fn machine(id: u8) -> Option<Machine> {
    Some(Machine::new(config(id)?, spec(), START))
}
