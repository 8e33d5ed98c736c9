//! Figures: printed as JSON lines as they are measured, and as a table at the end.

use std::time::Duration;

/// One measured figure, with its target when the issue sets one.
pub struct Figure {
    pub bench: String,
    pub value: f64,
    pub unit: &'static str,
    pub target: Option<(&'static str, f64)>,
}

#[derive(Default)]
pub struct Report {
    figures: Vec<Figure>,
}

impl Report {
    /// Records and prints a figure. `target` is `("<", 5.0)` for "below 5" (also `"<="` and
    /// `"=="`).
    pub fn add(
        &mut self,
        bench: &str,
        value: f64,
        unit: &'static str,
        target: Option<(&'static str, f64)>,
    ) {
        let line = serde_json::json!({ "bench": bench, "value": round(value), "unit": unit });
        println!("{line}");
        self.figures.push(Figure {
            bench: bench.to_owned(),
            value,
            unit,
            target,
        });
    }

    /// Prints the table; returns how many targets were missed.
    pub fn table(&self, title: &str) -> usize {
        println!("\n{title}");
        println!(
            "{:<34} {:>14} {:<6} {:>12}",
            "figure", "value", "unit", "target"
        );
        let mut missed = 0;
        for f in &self.figures {
            let (target, verdict) = match f.target {
                Some(("<", t)) => (format!("< {t}"), if f.value < t { "ok" } else { "MISSED" }),
                Some(("<=", t)) => (
                    format!("<= {t}"),
                    if f.value <= t { "ok" } else { "MISSED" },
                ),
                Some(("==", t)) => (
                    format!("== {t}"),
                    if f.value == t { "ok" } else { "MISSED" },
                ),
                Some((op, t)) => (format!("{op} {t}"), "?"),
                None => (String::new(), ""),
            };
            if verdict == "MISSED" {
                missed += 1;
            }
            println!(
                "{:<34} {:>14} {:<6} {:>12}  {}",
                f.bench,
                round(f.value),
                f.unit,
                target,
                verdict
            );
        }
        missed
    }
}

fn round(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The `p`-th percentile (0-100) of sorted-in-place samples.
pub fn percentile(samples: &mut [f64], p: f64) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    samples.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * (samples.len() - 1) as f64).round() as usize;
    samples[rank.min(samples.len() - 1)]
}

/// Peak resident set size of this process so far, in MB (Linux `VmHWM`).
pub fn peak_rss_mb() -> f64 {
    peak_rss_mb_of(None)
}

/// `/proc/<pid>/<file>`, or `/proc/self/<file>` for `None`.
fn proc_file(pid: Option<u32>, file: &str) -> String {
    match pid {
        Some(pid) => format!("/proc/{pid}/{file}"),
        None => format!("/proc/self/{file}"),
    }
}

/// Peak resident set size of process `pid` (`None`: this one) since it started or since the
/// last [`reset_peak_rss`], in MB (Linux `VmHWM`).
pub fn peak_rss_mb_of(pid: Option<u32>) -> f64 {
    std::fs::read_to_string(proc_file(pid, "status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

/// Resident set size of process `pid` (`None`: this one) now, in MB (Linux `VmRSS`).
pub fn rss_mb_of(pid: Option<u32>) -> f64 {
    status_kb(pid, "VmRSS:").map_or(f64::NAN, |kb| kb / 1024.0)
}

fn status_kb(pid: Option<u32>, field: &str) -> Option<f64> {
    std::fs::read_to_string(proc_file(pid, "status"))
        .ok()?
        .lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Resets the peak resident set size of process `pid` (`None`: this one) to its current RSS
/// (Linux 4.0+: `5` written to `/proc/<pid>/clear_refs`). Returns whether the kernel took it.
pub fn reset_peak_rss(pid: Option<u32>) -> bool {
    std::fs::write(proc_file(pid, "clear_refs"), "5").is_ok()
}
