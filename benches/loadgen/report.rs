//! The table and the figures read from the server process.

use std::time::Duration;

use crate::paths::Path;

pub(crate) struct Row {
    pub(crate) path: Path,
    pub(crate) rps: f64,
    pub(crate) base_rps: f64,
    pub(crate) ratio: f64,
    pub(crate) p50: f64,
    pub(crate) p99: f64,
    pub(crate) p999: f64,
    pub(crate) unloaded_p50: f64,
    pub(crate) unloaded_p99: f64,
    pub(crate) base_unloaded_p99: f64,
    /// Median server CPU time per request (user + system), µs.
    pub(crate) cpu_us: f64,
    pub(crate) base_cpu_us: f64,
}

impl Row {
    pub(crate) fn verdict(&self) -> &'static str {
        match self.path.target() {
            Some((ratio, extra))
                if self.ratio >= ratio && self.unloaded_p99 <= self.base_unloaded_p99 + extra =>
            {
                "met"
            }
            Some(_) => "MISSED",
            None => "",
        }
    }

    pub(crate) fn json(&self) -> serde_json::Value {
        let target = self.path.target();
        serde_json::json!({
            "path": self.path.key(),
            "name": self.path.name(),
            "rps": self.rps.round(),
            "baseline_rps": self.base_rps.round(),
            "ratio_to_baseline": (self.ratio * 1000.0).round() / 1000.0,
            "p50_us": self.p50, "p99_us": self.p99, "p999_us": self.p999,
            "unloaded_p50_us": self.unloaded_p50, "unloaded_p99_us": self.unloaded_p99,
            "baseline_unloaded_p99_us": self.base_unloaded_p99,
            "server_cpu_us_per_request": (self.cpu_us * 10.0).round() / 10.0,
            "baseline_server_cpu_us_per_request": (self.base_cpu_us * 10.0).round() / 10.0,
            "target_ratio": target.map(|t| t.0),
            "target_p99_over_baseline_us": target.map(|t| t.1),
            "target": self.verdict(),
        })
    }
}

pub(crate) fn print_table(
    rows: &[Row],
    listening: Duration,
    serving: Duration,
    rss_kb: Option<u64>,
) {
    println!();
    println!(
        "| path | req/s | baseline req/s | ratio (median) | target | p50 µs | p99 µs | p99.9 µs | unloaded p99 µs (baseline) | server CPU µs/req (baseline) | |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|");
    for r in rows {
        let t = r
            .path
            .target()
            .map(|(ratio, extra)| format!("≥ {ratio}×, +{extra} µs"))
            .unwrap_or_default();
        println!(
            "| {} | {:.0} | {:.0} | {:.2}× | {} | {} | {} | {} | {:.0} ({:.0}) | {:.1} ({:.1}) | {} |",
            r.path.name(),
            r.rps,
            r.base_rps,
            r.ratio,
            t,
            us(r.p50),
            us(r.p99),
            us(r.p999),
            r.unloaded_p99,
            r.base_unloaded_p99,
            r.cpu_us,
            r.base_cpu_us,
            r.verdict()
        );
    }
    println!();
    println!(
        "start to listening: {:.1} ms; start to first SERVING answer: {:.1} ms; server RSS after the run: {}",
        listening.as_secs_f64() * 1000.0,
        serving.as_secs_f64() * 1000.0,
        rss_kb
            .map(|k| format!("{:.1} MiB", k as f64 / 1024.0))
            .unwrap_or_else(|| "n/a".into())
    );
    println!();
}

/// A latency for the table: `–` where none was measured (h2load's rounds).
fn us(v: f64) -> String {
    if v.is_nan() {
        "–".into()
    } else {
        format!("{v:.0}")
    }
}

/// CPU time (user + system) the process has used, in µs (clock ticks of 10 ms: read it
/// around rounds of seconds, not single calls).
pub(crate) fn cpu_us(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the `(comm)`, which may contain spaces: utime and stime are the 12th and
    // 13th of those.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|v| v.parse().ok())
        .collect();
    f.iter().sum::<u64>() * 10_000
}

pub(crate) fn rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}
