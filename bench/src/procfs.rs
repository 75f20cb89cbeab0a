//! The few `/proc/PID` figures the benchmarks need.

use std::time::Duration;

use anyhow::Context;

/// Resident set size in bytes (`VmRSS`).
pub fn rss_bytes(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .context("no VmRSS line")?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse::<u64>()
        .context("VmRSS value")?;
    Ok(kb * 1024)
}

/// User plus system CPU time consumed so far.
pub fn cpu_time(pid: u32) -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')').context("malformed stat")? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 here.
    let utime: u64 = fields.get(11).context("utime")?.parse()?;
    let stime: u64 = fields.get(12).context("stime")?.parse()?;
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Ok(Duration::from_nanos(
        (utime + stime) * 1_000_000_000 / ticks,
    ))
}

/// The machine's CPU time so far, in clock ticks: all of it, and what the
/// hypervisor gave to others while this machine wanted it (`steal`, the
/// eighth figure of `/proc/stat`'s `cpu` line). In a VM, time stolen
/// during a latency run shows as late frames no server could avoid.
#[derive(Debug, Clone, Copy)]
pub struct MachineTicks {
    total: u64,
    steal: u64,
}

impl MachineTicks {
    pub fn now() -> anyhow::Result<MachineTicks> {
        let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
        let line = stat
            .lines()
            .find(|l| l.starts_with("cpu "))
            .context("no cpu line in /proc/stat")?;
        let fields: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .map(str::parse)
            .collect::<Result<_, _>>()
            .context("/proc/stat cpu line")?;
        // user nice system idle iowait irq softirq steal (guest time is
        // already in user).
        anyhow::ensure!(fields.len() >= 8, "/proc/stat cpu line too short");
        Ok(MachineTicks {
            total: fields[..8].iter().sum(),
            steal: fields[7],
        })
    }

    /// The share of the machine's time stolen since `earlier`, in percent.
    pub fn steal_pct_since(&self, earlier: &MachineTicks) -> f64 {
        let total = self.total.saturating_sub(earlier.total).max(1);
        self.steal.saturating_sub(earlier.steal) as f64 * 100.0 / total as f64
    }
}
