//! Counters for `GET /metrics` (Prometheus text format 0.0.4) that the queue's row counts do
//! not give: seconds per finished job and per denoising step, and failures by error code, as
//! this process's worker measured them.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

#[derive(Debug, Default, Clone, PartialEq)]
struct Sum {
    seconds: f64,
    count: u64,
}

#[derive(Debug, Default)]
struct Inner {
    job: Sum,
    step: Sum,
    failures: BTreeMap<String, u64>,
}

/// This process's job and step timings and failure counts.
#[derive(Debug, Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

impl Metrics {
    fn with(&self, f: impl FnOnce(&mut Inner)) {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut g);
    }

    pub fn job_done(&self, seconds: f64) {
        self.with(|m| {
            m.job.seconds += seconds;
            m.job.count += 1;
        });
    }

    pub fn step_done(&self, seconds: f64) {
        self.with(|m| {
            m.step.seconds += seconds;
            m.step.count += 1;
        });
    }

    pub fn failed(&self, code: &str) {
        self.with(|m| *m.failures.entry(code.to_owned()).or_default() += 1);
    }

    /// The counters as Prometheus text (appended to the queue's gauges by the route).
    pub fn render(&self) -> String {
        let m = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = String::new();
        for (name, help, s) in [
            ("hyvideo_job_seconds", "Wall time of finished jobs.", &m.job),
            (
                "hyvideo_step_seconds",
                "Wall time of denoising steps.",
                &m.step,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} summary");
            let _ = writeln!(out, "{name}_sum {}\n{name}_count {}", s.seconds, s.count);
        }
        let _ = writeln!(
            out,
            "# HELP hyvideo_failures_total Failed jobs by error code.\n# TYPE hyvideo_failures_total counter"
        );
        for (code, n) in &m.failures {
            let _ = writeln!(out, "hyvideo_failures_total{{code=\"{code}\"}} {n}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_render_as_prometheus_text() {
        let m = Metrics::default();
        m.job_done(2.5);
        m.job_done(1.5);
        m.step_done(0.25);
        m.failed("generation_failed");
        m.failed("generation_failed");
        let t = m.render();
        for line in [
            "hyvideo_job_seconds_sum 4",
            "hyvideo_job_seconds_count 2",
            "hyvideo_step_seconds_count 1",
            "hyvideo_failures_total{code=\"generation_failed\"} 2",
            "# TYPE hyvideo_failures_total counter",
        ] {
            assert!(t.lines().any(|l| l == line), "{line} in\n{t}");
        }
    }
}
