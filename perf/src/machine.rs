//! The machine a result was measured on: CPU model, cores, kernel, load.
//!
//! Every report is stamped with it, because the figures only mean
//! something next to the machine (a 2-vCPU VM shared with other work is
//! not a server with a real NIC).

#![forbid(unsafe_code)]

use serde::{Deserialize, Serialize};

/// A description of this machine at the time of a run.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Machine {
    /// `model name` of the first CPU in /proc/cpuinfo.
    pub cpu: String,
    /// CPUs this process may run on.
    pub cores: usize,
    /// The running kernel's release.
    pub kernel: String,
    /// 1-minute load average when the run started (others' work shows here).
    pub load_1m: f64,
    /// UTC date and time of the run, `YYYY-MM-DD HH:MM`.
    pub date: String,
}

impl Machine {
    /// Reads the description from /proc; unknown fields read "unknown".
    pub fn describe() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|rest| rest.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_else(|| "unknown".into());
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "unknown".into());
        let load_1m = std::fs::read_to_string("/proc/loadavg")
            .ok()
            .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
            .unwrap_or(0.0);
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        Self {
            cpu,
            cores: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            kernel,
            load_1m,
            date: utc_date(secs),
        }
    }

    /// One line for reports.
    pub fn line(&self) -> String {
        format!(
            "{}, {} cores, Linux {}, load {:.2} at start, {} UTC",
            self.cpu, self.cores, self.kernel, self.load_1m, self.date
        )
    }
}

/// `YYYY-MM-DD HH:MM` of a Unix time (proleptic Gregorian, UTC).
pub fn utc_date(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}",
        rem / 3_600,
        (rem % 3_600) / 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(utc_date(0), "1970-01-01 00:00");
        assert_eq!(utc_date(951_782_400), "2000-02-29 00:00");
        assert_eq!(utc_date(1_790_000_000 + 3_660), "2026-09-21 15:14");
    }

    #[test]
    fn describes_this_machine() {
        let m = Machine::describe();
        assert!(m.cores >= 1);
        assert!(!m.kernel.is_empty());
    }
}
