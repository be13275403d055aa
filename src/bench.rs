//! `hyvideo bench`: per-stage latency statistics, the side-by-side table against the native
//! (PyTorch / diffusers) path, and the stage-output comparison. Pure functions; the binary runs
//! the stages and the native script (`benches/native/pipeline_native.py`).
//!
//! The report follows NVIDIA demoDiffusion's per-stage latency table, with the native numbers,
//! the speedup and the largest output difference beside each stage.

use std::collections::BTreeMap;

/// The stages, in pipeline order, under the names the native script's JSON uses.
pub const STAGES: [&str; 5] = [
    "text_encoders",
    "transformer_step",
    "denoise_loop",
    "vae_decode",
    "end_to_end",
];

/// min / median / max of a stage's timed runs, in seconds.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Stats {
    pub min: f64,
    pub median: f64,
    pub max: f64,
    pub runs: usize,
}

impl Stats {
    /// `None` for no samples.
    pub fn from_samples(samples: &[f64]) -> Option<Stats> {
        if samples.is_empty() {
            return None;
        }
        let mut v = samples.to_vec();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Some(Stats {
            min: v[0],
            median,
            max: v[n - 1],
            runs: n,
        })
    }
}

/// One row of the comparison.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Row {
    pub stage: String,
    pub hyvideo: Option<Stats>,
    pub native: Option<Stats>,
    /// native median / hyvideo median.
    pub speedup: Option<f64>,
    /// max |hyvideo − native| of the stage's output.
    pub max_abs_diff: Option<f64>,
}

/// Rows for every stage in [`STAGES`] order (then any other stage names, sorted).
pub fn rows(
    ours: &BTreeMap<String, Vec<f64>>,
    native: &BTreeMap<String, Vec<f64>>,
    diffs: &BTreeMap<String, f64>,
) -> Vec<Row> {
    let mut names: Vec<String> = STAGES.iter().map(|s| s.to_string()).collect();
    for k in ours.keys().chain(native.keys()) {
        if !names.contains(k) {
            names.push(k.clone());
        }
    }
    names
        .into_iter()
        .filter(|n| ours.contains_key(n) || native.contains_key(n))
        .map(|stage| {
            let h = ours.get(&stage).and_then(|v| Stats::from_samples(v));
            let n = native.get(&stage).and_then(|v| Stats::from_samples(v));
            let speedup = match (h, n) {
                (Some(h), Some(n)) if h.median > 0.0 => Some(n.median / h.median),
                _ => None,
            };
            Row {
                max_abs_diff: diffs.get(&stage).copied(),
                stage,
                hyvideo: h,
                native: n,
                speedup,
            }
        })
        .collect()
}

fn secs(s: Option<Stats>) -> String {
    match s {
        Some(s) => format!("{:.3} [{:.3}-{:.3}]", s.median, s.min, s.max),
        None => "-".into(),
    }
}

/// The table: stage | native | hyvideo | speedup | max abs diff (seconds as
/// `median [min-max]`).
pub fn table(rows: &[Row]) -> String {
    let mut out = String::new();
    out.push_str(
        "| stage | native s (median [min-max]) | hyvideo s (median [min-max]) | speedup | max abs diff |\n",
    );
    out.push_str("|---|---:|---:|---:|---:|\n");
    for r in rows {
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} |\n",
            r.stage,
            secs(r.native),
            secs(r.hyvideo),
            r.speedup
                .map(|s| format!("{s:.2}x"))
                .unwrap_or_else(|| "-".into()),
            r.max_abs_diff
                .map(|d| format!("{d:.2e}"))
                .unwrap_or_else(|| "-".into()),
        ));
    }
    out
}

/// max |a − b| (`None` when the lengths differ).
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> Option<f64> {
    (a.len() == b.len()).then(|| {
        a.iter()
            .zip(b)
            .fold(0f64, |m, (x, y)| m.max((*x as f64 - *y as f64).abs()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_of_odd_and_even_samples() {
        let s = Stats::from_samples(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.min, s.median, s.max, s.runs), (1.0, 2.0, 3.0, 3));
        let s = Stats::from_samples(&[4.0, 1.0, 2.0, 3.0]).unwrap();
        assert_eq!(s.median, 2.5);
        assert!(Stats::from_samples(&[]).is_none());
    }

    #[test]
    fn rows_compute_speedups_in_stage_order() {
        let ours = BTreeMap::from([
            ("vae_decode".to_string(), vec![1.0, 1.0]),
            ("text_encoders".to_string(), vec![0.5]),
        ]);
        let native = BTreeMap::from([
            ("vae_decode".to_string(), vec![2.0, 3.0, 4.0]),
            ("extra".to_string(), vec![1.0]),
        ]);
        let diffs = BTreeMap::from([("vae_decode".to_string(), 1e-4)]);
        let r = rows(&ours, &native, &diffs);
        let names: Vec<&str> = r.iter().map(|r| r.stage.as_str()).collect();
        assert_eq!(names, ["text_encoders", "vae_decode", "extra"]);
        assert_eq!(r[1].speedup, Some(3.0));
        assert_eq!(r[1].max_abs_diff, Some(1e-4));
        assert_eq!(r[0].speedup, None);
        let t = table(&r);
        assert!(
            t.contains(
                "| vae_decode | 3.000 [2.000-4.000] | 1.000 [1.000-1.000] | 3.00x | 1.00e-4 |"
            ),
            "{t}"
        );
        assert_eq!(max_abs_diff(&[1.0, 2.0], &[1.5, 1.0]), Some(1.0));
        assert_eq!(max_abs_diff(&[1.0], &[1.0, 2.0]), None);
    }
}
