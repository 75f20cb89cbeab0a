//! The benchmarks' output: rows of a Markdown table, percentiles and the
//! formatting of durations, and a line that says what machine ran them.

use std::time::Duration;

/// One row of a benchmark table.
pub struct Row {
    pub figure: String,
    pub measured: String,
    pub raw: String,
    pub target: String,
    pub met: String,
    pub comparison: String,
}

impl Row {
    pub fn new(figure: impl Into<String>, measured: impl Into<String>) -> Row {
        Row {
            figure: figure.into(),
            measured: measured.into(),
            raw: "–".into(),
            target: "–".into(),
            met: "–".into(),
            comparison: "–".into(),
        }
    }

    /// The raw-path figure beside it.
    pub fn raw(mut self, raw: impl Into<String>) -> Row {
        self.raw = raw.into();
        self
    }

    /// The target and whether it is met.
    pub fn target(mut self, target: impl Into<String>, ok: bool) -> Row {
        self.target = target.into();
        self.met = met(ok).into();
        self
    }

    /// Like [`target`](Self::target) with a verdict in words.
    pub fn verdict(mut self, target: impl Into<String>, met: impl Into<String>) -> Row {
        self.target = target.into();
        self.met = met.into();
        self
    }

    pub fn comparison(mut self, c: impl Into<String>) -> Row {
        self.comparison = c.into();
        self
    }
}

/// Prints the rows as a Markdown table with the given header for the
/// measured column.
pub fn print(measured: &str, rows: &[Row]) {
    println!("| figure | {measured} | raw loopback | target | met? | comparison |");
    println!("| --- | --- | --- | --- | --- | --- |");
    for r in rows {
        println!(
            "| {} | {} | {} | {} | {} | {} |",
            r.figure, r.measured, r.raw, r.target, r.met, r.comparison
        );
    }
}

/// Nearest-rank percentile of sorted samples.
pub fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// Min, median and max of a few samples, e.g. `68 / 186 / 248`.
pub fn spread(samples: &[f64], fmt: impl Fn(f64) -> String) -> String {
    let mut v = samples.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => "–".into(),
        n => format!("{} / {} / {}", fmt(v[0]), fmt(v[n / 2]), fmt(v[n - 1])),
    }
}

pub fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

pub fn us(d: Duration) -> String {
    format!("{:.0} µs", d.as_secs_f64() * 1e6)
}

pub fn met(ok: bool) -> &'static str {
    if ok { "yes" } else { "**no**" }
}

/// Cores, CPU model, kernel and the UDP buffer ceiling, for BENCHMARKS.md.
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find_map(|l| {
                l.strip_prefix("model name")?
                    .split_once(':')
                    .map(|x| x.1.trim().to_string())
            })
        })
        .unwrap_or_default();
    let read = |p: &str| {
        std::fs::read_to_string(p)
            .unwrap_or_default()
            .trim()
            .to_string()
    };
    format!(
        "nproc {}, CPU {cpu}, kernel {}, net.core.rmem_max {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        read("/proc/sys/kernel/osrelease"),
        read("/proc/sys/net/core/rmem_max"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_and_spread() {
        let v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(pct(&v, 0.5), Duration::from_millis(50));
        assert_eq!(pct(&v, 0.99), Duration::from_millis(99));
        assert_eq!(pct(&v, 0.0), Duration::from_millis(1));
        assert_eq!(spread(&[3.0, 1.0, 2.0], |x| format!("{x:.0}")), "1 / 2 / 3");
    }
}
