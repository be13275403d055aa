//! Step caching: the decisions of TeaCache and First-Block Cache, without any graph.
//!
//! On a transformer run in stages (embed → first block → rest of the blocks → head), the
//! denoising loop asks, per step and per stream, whether the blocks must run. This module holds
//! the settings ([`StepCache`]), the two methods' state machines ([`TeaCacheState`],
//! [`FbCacheState`]) and the record of what ran ([`StepCacheRecord`]); applying a cached residual
//! is the caller's business.
//!
//! - **TeaCache** mirrors `teacache_forward` of `TeaCache4HunyuanVideo/teacache_sample_video.py`
//!   (ali-vilab/TeaCache): the relative L1 distance of the first block's modulated input to the
//!   previous step's, rescaled by the HunyuanVideo polynomial and accumulated; the step is skipped
//!   while the sum stays below the threshold, else computed with the sum reset to 0; the first
//!   and last steps are always computed; the previous input is kept on every step.
//! - **First-Block Cache** mirrors diffusers' `hooks/first_block_cache.py`
//!   (`apply_first_block_cache`, `FBCHeadBlockHook._should_compute_remaining_blocks`): the first
//!   block always runs; its image-stream residual is compared with the one of the last *computed*
//!   step, and the remaining blocks run when the relative distance is greater than the threshold.
//!
//! Our additions, none of which the references have: a window of steps (outside it every step is
//! computed), one state per stream of a true-CFG batch (diffusers' `cache_context("cond")` /
//! `("uncond")`; the TeaCache script decides once for the whole batch), and these rules:
//! - **Threshold 0 never skips**, for both methods. For TeaCache it changes nothing: the
//!   polynomial is positive on [0, ∞) (its minimum there is 0.0521497 at 0.0314164), so the
//!   accumulated value after any decided step is at least 0.0521 and never below a threshold
//!   ≤ 0.0521. For First-Block Cache it is our decision: diffusers skips when `diff > threshold`
//!   fails, which at threshold 0 happens for a residual identical to the stored one.
//! - **A distance that cannot be measured computes the step**: an empty input, a length
//!   different from the previous one (the shape changed), a previous mean of |x| equal to 0, or
//!   a non-finite result. The state then starts over from this step (see [`relative_l1`]).
//!
//! Numerics: torch takes the means in float32 and `.item()`s the quotient; here the element
//! differences are float32 as in torch, and the sums, means and quotient are f64, so a distance
//! differs from torch's by float32 rounding of the means (relative ~1e-7), and a decision can
//! differ only when the value compared is that close to the threshold. The polynomial is
//! evaluated as `numpy.poly1d` does (Horner in f64, no fused multiply-add), bit for bit.

use std::ops::Range;

use crate::setting::{InvalidSetting, Setting};

/// The HunyuanVideo rescaling polynomial of `TeaCache4HunyuanVideo`, highest degree first.
pub const TEACACHE_HUNYUAN_COEFFICIENTS: [f64; 5] = [
    7.33226126e+02,
    -4.01131952e+02,
    6.75869174e+01,
    -3.14987800e+00,
    9.61237896e-02,
];

/// A step-caching method.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StepCacheMethod {
    /// TeaCache: decides from the first block's modulated input, before any block runs; a
    /// skipped step runs no block.
    TeaCache,
    /// First-Block Cache: decides from the first block's residual; a skipped step runs the first
    /// block only.
    FbCache,
}

impl StepCacheMethod {
    /// 0.15 for TeaCache (the script's and kijai's wrapper's), 0.05 for First-Block Cache
    /// (diffusers' `FirstBlockCacheConfig`).
    pub fn default_threshold(self) -> f64 {
        match self {
            StepCacheMethod::TeaCache => 0.15,
            StepCacheMethod::FbCache => 0.05,
        }
    }

    /// The name in the API, the command line and the run record.
    pub fn name(self) -> &'static str {
        match self {
            StepCacheMethod::TeaCache => "teacache",
            StepCacheMethod::FbCache => "fbcache",
        }
    }
}

impl std::fmt::Display for StepCacheMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for StepCacheMethod {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "teacache" => Ok(StepCacheMethod::TeaCache),
            "fbcache" => Ok(StepCacheMethod::FbCache),
            _ => Err(format!("`{s}`: expected teacache or fbcache")),
        }
    }
}

/// A method name or `none` (no step cache), as the command line and the API take it.
pub fn parse_step_cache(s: &str) -> Result<Option<StepCacheMethod>, String> {
    match s {
        "none" => Ok(None),
        _ => s
            .parse()
            .map(Some)
            .map_err(|_| format!("`{s}`: expected none, teacache or fbcache")),
    }
}

/// Step caching for one run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepCache {
    pub method: StepCacheMethod,
    /// TeaCache: skip while the accumulated rescaled distance is below it. First-Block Cache:
    /// skip when the distance is not above it. 0 never skips.
    pub threshold: f64,
    /// The first step (0-based) the method may skip.
    pub start: usize,
    /// The step (0-based, exclusive) from which every step is computed again; `None`: the step
    /// count.
    pub end: Option<usize>,
}

impl StepCache {
    /// `method` with its default threshold, over every step.
    pub fn new(method: StepCacheMethod) -> StepCache {
        StepCache {
            method,
            threshold: method.default_threshold(),
            start: 0,
            end: None,
        }
    }

    /// The threshold is a finite number ≥ 0 and start ≤ end ≤ `steps`.
    pub fn validate(&self, steps: usize) -> Result<(), InvalidSetting> {
        if !(self.threshold.is_finite() && self.threshold >= 0.0) {
            return Err(InvalidSetting::new(
                Setting::StepCacheThreshold,
                format!("must be a number at least 0, got {}", self.threshold),
            ));
        }
        let end = match self.end {
            Some(end) if end > steps => {
                return Err(InvalidSetting::new(
                    Setting::StepCacheEnd,
                    format!("must be at most the step count ({steps}), got {end}"),
                ));
            }
            Some(end) => end,
            None => steps,
        };
        if self.start > end {
            let bound = match self.end {
                Some(end) => format!("the end ({end})"),
                None => format!("the step count ({steps})"),
            };
            return Err(InvalidSetting::new(
                Setting::StepCacheStart,
                format!("must be at most {bound}, got {}", self.start),
            ));
        }
        Ok(())
    }

    /// The steps the method decides; every other step is computed.
    pub fn window(&self, steps: usize) -> Range<usize> {
        self.start..self.end.unwrap_or(steps)
    }

    /// Whether a decided step may be skipped at all: threshold 0 never skips (see the module
    /// documentation).
    fn may_skip(&self) -> bool {
        self.threshold > 0.0
    }
}

/// Which stream of a true-CFG batch a row is: each keeps its own cache state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stream {
    /// The prompt (the only stream without true CFG).
    Cond,
    /// The negative prompt.
    Uncond,
}

impl Stream {
    /// The key in the run record.
    pub fn name(self) -> &'static str {
        match self {
            Stream::Cond => "cond",
            Stream::Uncond => "uncond",
        }
    }
}

/// Whether a step runs the transformer's blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[must_use]
pub enum Decision {
    /// Run the blocks (and keep their residual for later skips).
    Compute,
    /// Add the cached residual instead: TeaCache skips every block, First-Block Cache all but the
    /// first.
    Skip,
}

/// TeaCache's state for one stream. Give it every step of the run, in order; its first step
/// is always computed, so a [`Decision::Skip`] always has a computed step before it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TeaCacheState {
    accumulated: f64,
    previous: Option<Vec<f32>>,
}

impl TeaCacheState {
    pub fn new() -> TeaCacheState {
        TeaCacheState::default()
    }

    /// Step `step` of `steps` (0-based), from this stream's TeaCache indicator: the first
    /// block's modulated image input, LayerNorm(x)·(1 + scale) + shift, as f32.
    ///
    /// As the reference: steps 0 and `steps − 1` are computed with the accumulator reset to 0;
    /// on the others the rescaled distance to the previous indicator is added, and the step is
    /// skipped while the sum is below the threshold, else computed with the sum reset to 0. The
    /// previous indicator becomes this one on every step, computed or skipped.
    ///
    /// Ours: the reference has no window; a step outside it is computed and, as every computed
    /// step, resets the accumulator (and keeps the indicator). A distance that cannot be measured
    /// (see [`relative_l1`]) computes the step and resets the accumulator.
    pub fn decide(
        &mut self,
        cfg: &StepCache,
        step: usize,
        steps: usize,
        indicator: &[f32],
    ) -> Decision {
        let forced = !cfg.window(steps).contains(&step) || step == 0 || step + 1 == steps;
        let distance = if forced {
            None
        } else {
            self.previous
                .as_deref()
                .and_then(|previous| relative_l1(indicator, previous))
        };
        let decision = match distance {
            Some(distance) => {
                self.accumulated += teacache_rescale(distance);
                if cfg.may_skip() && self.accumulated < cfg.threshold {
                    Decision::Skip
                } else {
                    Decision::Compute
                }
            }
            None => Decision::Compute,
        };
        if decision == Decision::Compute {
            self.accumulated = 0.0;
        }
        keep(&mut self.previous, indicator);
        decision
    }
}

/// First-Block Cache's state for one stream. Give it every step of the run, in order; its
/// first step is always computed, so a [`Decision::Skip`] always has a computed step before it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FbCacheState {
    previous: Option<Vec<f32>>,
}

impl FbCacheState {
    pub fn new() -> FbCacheState {
        FbCacheState::default()
    }

    /// Step `step` of `steps` (0-based), from the first block's image-stream residual (its
    /// output image tokens − its input image tokens) of this step and stream, as f32.
    ///
    /// As diffusers: computed when there is no stored residual or the distance to it is greater
    /// than the threshold, else skipped; the residual is stored on computed steps only, so the
    /// comparison is always with the last computed step. The last step is not forced.
    ///
    /// Ours: a step outside the window is computed (and stores its residual); threshold 0 never
    /// skips; a distance that cannot be measured (see [`relative_l1`]) computes the step.
    pub fn decide(
        &mut self,
        cfg: &StepCache,
        step: usize,
        steps: usize,
        first_residual: &[f32],
    ) -> Decision {
        let decision = if !cfg.window(steps).contains(&step) || !cfg.may_skip() {
            Decision::Compute
        } else {
            match self
                .previous
                .as_deref()
                .and_then(|previous| relative_l1(first_residual, previous))
            {
                Some(distance) if distance <= cfg.threshold => Decision::Skip,
                _ => Decision::Compute,
            }
        };
        if decision == Decision::Compute {
            keep(&mut self.previous, first_residual);
        }
        decision
    }
}

/// `slot` becomes a copy of `values`, reusing its allocation.
fn keep(slot: &mut Option<Vec<f32>>, values: &[f32]) {
    let kept = slot.get_or_insert_with(Vec::new);
    kept.clear();
    kept.extend_from_slice(values);
}

/// TeaCache's HunyuanVideo rescaling of a relative L1 distance:
/// `numpy.poly1d(TEACACHE_HUNYUAN_COEFFICIENTS)(rel_l1)`, evaluated as numpy does (from 0,
/// `y = y·x + c` per coefficient, in f64). Positive for every `rel_l1 ≥ 0`: its minimum there is
/// 0.0521497 at 0.0314164.
pub fn teacache_rescale(rel_l1: f64) -> f64 {
    TEACACHE_HUNYUAN_COEFFICIENTS
        .iter()
        .fold(0.0, |y, &c| y * rel_l1 + c)
}

/// The relative L1 distance `mean|current − previous| / mean|previous|` both methods use, or
/// `None` when it cannot be measured: the lengths differ, the slices are empty, mean|previous|
/// is 0, or the quotient is not finite (a NaN or infinite value). Where torch would give a NaN
/// or an infinity, TeaCache computes the step and First-Block Cache computes it too, except for
/// 0/0 (NaN), which diffusers would skip; `None` computes the step for both.
///
/// The element differences are f32 (as torch's); the sums, means and quotient are f64.
pub fn relative_l1(current: &[f32], previous: &[f32]) -> Option<f64> {
    if current.len() != previous.len() || previous.is_empty() {
        return None;
    }
    // Eight independent partial sums: the same result on every machine, and vectorisable.
    const LANES: usize = 8;
    let mut diff = [0.0f64; LANES];
    let mut base = [0.0f64; LANES];
    let mut add = |current: &[f32], previous: &[f32]| {
        let lanes = diff.iter_mut().zip(base.iter_mut());
        for ((d, b), (&c, &p)) in lanes.zip(current.iter().zip(previous)) {
            *d += f64::from((c - p).abs());
            *b += f64::from(p.abs());
        }
    };
    let current_chunks = current.chunks_exact(LANES);
    let previous_chunks = previous.chunks_exact(LANES);
    let (current_tail, previous_tail) = (current_chunks.remainder(), previous_chunks.remainder());
    for (c, p) in current_chunks.zip(previous_chunks) {
        add(c, p);
    }
    add(current_tail, previous_tail);
    let n = previous.len() as f64;
    let mean_diff = diff.iter().sum::<f64>() / n;
    let mean_base = base.iter().sum::<f64>() / n;
    if mean_base == 0.0 {
        return None;
    }
    let distance = mean_diff / mean_base;
    distance.is_finite().then_some(distance)
}

/// What ran, for the run record and `hyvideo bench`: the computed steps of each stream.
#[derive(Debug, Clone, PartialEq)]
pub struct StepCacheRecord {
    cache: StepCache,
    steps: usize,
    cfg_streams: bool,
    cond: Vec<usize>,
    uncond: Vec<usize>,
}

impl StepCacheRecord {
    /// An empty record of a run of `steps` steps with `cache`; `cfg_streams`: true CFG, two
    /// streams (prompt and negative prompt).
    pub fn new(cache: &StepCache, steps: usize, cfg_streams: bool) -> StepCacheRecord {
        StepCacheRecord {
            cache: StepCache {
                end: Some(cache.window(steps).end),
                ..*cache
            },
            steps,
            cfg_streams,
            cond: Vec::new(),
            uncond: Vec::new(),
        }
    }

    /// Notes the decision of `stream` at `step`.
    pub fn record(&mut self, stream: Stream, step: usize, decision: Decision) {
        if decision == Decision::Compute {
            match stream {
                Stream::Cond => self.cond.push(step),
                Stream::Uncond => self.uncond.push(step),
            }
        }
    }

    /// The streams of the run: the prompt, and with true CFG the negative prompt.
    pub fn streams(&self) -> &'static [Stream] {
        if self.cfg_streams {
            &[Stream::Cond, Stream::Uncond]
        } else {
            &[Stream::Cond]
        }
    }

    /// The computed steps of `stream`, in the order recorded (0-based).
    pub fn computed(&self, stream: Stream) -> &[usize] {
        match stream {
            Stream::Cond => &self.cond,
            Stream::Uncond => &self.uncond,
        }
    }

    /// The steps of `stream` that were skipped: the step count less the computed steps.
    pub fn skipped(&self, stream: Stream) -> usize {
        self.steps.saturating_sub(self.computed(stream).len())
    }

    /// Transformer blocks run, over the streams of the run, for a transformer of `blocks`
    /// blocks (dual- and single-stream together): every block on a computed step, none on a
    /// step TeaCache skipped, the first block on a step First-Block Cache skipped. A block run
    /// on a batch of both streams counts twice.
    pub fn block_calls(&self, blocks: usize) -> usize {
        let on_skip = match self.cache.method {
            StepCacheMethod::TeaCache => 0,
            StepCacheMethod::FbCache => blocks.min(1),
        };
        self.streams()
            .iter()
            .map(|&s| self.computed(s).len() * blocks + self.skipped(s) * on_skip)
            .sum()
    }

    /// The run record's `step_cache`: `{"method", "threshold", "start", "end",
    /// "computed_steps"}`, `end` resolved to the step count when unset; `computed_steps` is a
    /// list, or with true CFG `{"cond": [...], "uncond": [...]}`.
    pub fn to_json(&self) -> serde_json::Value {
        let computed_steps = if self.cfg_streams {
            serde_json::json!({ "cond": self.cond, "uncond": self.uncond })
        } else {
            serde_json::json!(self.cond)
        };
        serde_json::json!({
            "method": self.cache.method.name(),
            "threshold": self.cache.threshold,
            "start": self.cache.start,
            "end": self.cache.end,
            "computed_steps": computed_steps,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Decision::{Compute, Skip};

    /// A two-value input [x, 2 − x]: its mean |·| is 1 for x in [0, 2], so the relative L1
    /// distance of [y, 2 − y] to it is exactly |y − x| (for dyadic x, y).
    fn pair(x: f32) -> [f32; 2] {
        [x, 2.0 - x]
    }

    fn tea_run(cfg: &StepCache, xs: &[f32]) -> Vec<Decision> {
        let mut state = TeaCacheState::new();
        let steps = xs.len();
        xs.iter()
            .enumerate()
            .map(|(i, &x)| state.decide(cfg, i, steps, &pair(x)))
            .collect()
    }

    fn fb_run(cfg: &StepCache, xs: &[f32]) -> Vec<Decision> {
        let mut state = FbCacheState::new();
        let steps = xs.len();
        xs.iter()
            .enumerate()
            .map(|(i, &x)| state.decide(cfg, i, steps, &pair(x)))
            .collect()
    }

    fn computed(decisions: &[Decision]) -> Vec<usize> {
        decisions
            .iter()
            .enumerate()
            .filter(|(_, d)| **d == Compute)
            .map(|(i, _)| i)
            .collect()
    }

    fn cache(method: StepCacheMethod, threshold: f64) -> StepCache {
        StepCache {
            threshold,
            ..StepCache::new(method)
        }
    }

    // numpy 2.4.6, `.venv-fixtures/bin/python -c "import numpy as np; c = [7.33226126e+02,
    // -4.01131952e+02, 6.75869174e+01, -3.14987800e+00, 9.61237896e-02];
    // print(float(np.poly1d(c)(x)).hex())"`.
    const NUMPY_RESCALE: [(f64, &str); 16] = [
        (0.0, "0x1.89b9194b317ffp-4"),         // 0.0961237896
        (0.01, "0x1.22c64e9ee0937p-4"),        // 0.07098990164925999
        (0.03125, "0x1.ab37cea1ef252p-5"),     // 0.052150634364328
        (0.05, "0x1.fc37dad343e11p-5"),        // 0.0620383523875
        (0.0625, "0x1.39708bd1cc395p-4"),      // 0.07652334801674805
        (0.07, "0x1.63a2528ae5495p-4"),        // 0.08682472460926001
        (0.09375, "0x1.ef79d51372ccfp-4"),     // 0.12096579773713077
        (0.1, "0x1.0897d1fdc0081p-3"),         // 0.1291958242
        (0.123456789, "0x1.392aa90368b92p-3"), // 0.15291339913991614
        (0.125, "0x1.3b5bff5690444p-3"),       // 0.15398406489296879
        (0.15, "0x1.4b357da63619cp-3"),        // 0.16172311938750006
        (0.1875, "0x1.264381ee4fe8ap-3"),      // 0.14368344791909166
        (0.2, "0x1.11e1988a1ab8cp-3"),         // 0.13373107120000005
        (0.25, "0x1.08d6013b6cd28p-3"),        // 0.12931443178750013
        (0.3, "0x1.5ec5eb01215b3p-2"),         // 0.34255187220000066
        (0.5, "0x1.634c35d5eec24p+3"),         // 11.1030530146
    ];

    fn from_hex(s: &str) -> f64 {
        // "0x1.<13 hex digits>p<exp>"
        let (mantissa, exp) = s.trim_start_matches("0x1.").split_once('p').unwrap();
        let bits = u64::from_str_radix(mantissa, 16).unwrap();
        (1.0 + bits as f64 / (1u64 << 52) as f64) * 2f64.powi(exp.parse().unwrap())
    }

    #[test]
    fn rescale_is_numpy_poly1d_bit_for_bit() {
        for (x, hex) in NUMPY_RESCALE {
            assert_eq!(
                teacache_rescale(x).to_bits(),
                from_hex(hex).to_bits(),
                "x = {x}"
            );
        }
        assert_eq!(teacache_rescale(0.0), 9.61237896e-02);
    }

    #[test]
    fn rescale_is_positive_on_the_half_line_minimum_0_05215() {
        // numpy: the real root of the derivative near 0.0314164 gives 0.052149688105521896.
        let at_minimum = teacache_rescale(0.031_416_401_165_686_8);
        assert!((at_minimum - 0.052_149_688_105_521_896).abs() < 1e-15);
        let mut lowest = f64::INFINITY;
        for i in 0..=2_000_000 {
            let x = i as f64 * 5e-6; // [0, 10]
            lowest = lowest.min(teacache_rescale(x));
        }
        assert!(lowest >= at_minimum - 1e-12, "{lowest}");
        assert!(lowest > 0.0521);
    }

    #[test]
    fn relative_l1_is_mean_abs_difference_over_mean_abs_previous() {
        // mean|c − p| = (1 + 2 + 0 + 1) / 4 = 1; mean|p| = (1 + 2 + 3 + 2) / 4 = 2.
        let p = [1.0, -2.0, 3.0, -2.0];
        let c = [2.0, -4.0, 3.0, -1.0];
        assert_eq!(relative_l1(&c, &p), Some(0.5));
        assert_eq!(relative_l1(&p, &p), Some(0.0));
        // More than one chunk of lanes, and a tail: 19 values.
        let p: Vec<f32> = (0..19).map(|i| i as f32 - 9.0).collect();
        let c: Vec<f32> = p.iter().map(|v| v + 0.5).collect();
        let mean_p = p.iter().map(|v| v.abs() as f64).sum::<f64>() / 19.0;
        assert_eq!(relative_l1(&c, &p), Some(0.5 / mean_p));
        assert_eq!(relative_l1(&pair(1.125), &pair(1.0)), Some(0.125));
    }

    #[test]
    fn relative_l1_is_none_when_it_cannot_be_measured() {
        assert_eq!(relative_l1(&[], &[]), None);
        assert_eq!(relative_l1(&[1.0, 2.0, 3.0], &[1.0, 2.0]), None);
        assert_eq!(relative_l1(&[1.0, 2.0], &[0.0, 0.0]), None);
        assert_eq!(relative_l1(&[0.0, 0.0], &[0.0, -0.0]), None);
        assert_eq!(relative_l1(&[f32::NAN, 1.0], &[1.0, 1.0]), None);
        assert_eq!(relative_l1(&[1.0, 1.0], &[f32::INFINITY, 1.0]), None);
    }

    #[test]
    fn teacache_hand_computed_sequence() {
        // Distances 0.0625, 0.0625, 0.03125 × 5; rescaled 0.0765, 0.0765 | 0.0522 × 3 | 0.0522, 0.0522.
        //   step 0: forced.
        //   1: 0.0765 < 0.15 skip; 2: 0.1531 ≥ 0.15 compute, reset.
        //   3: 0.0522 skip; 4: 0.1043 skip; 5: 0.1565 compute, reset.
        //   6: 0.0522 skip; 7: the last step, forced (0.1043 would skip).
        let xs = [1.0, 1.0625, 1.125, 1.15625, 1.1875, 1.21875, 1.25, 1.28125];
        let cfg = StepCache::new(StepCacheMethod::TeaCache);
        assert_eq!(cfg.threshold, 0.15);
        let d = tea_run(&cfg, &xs);
        assert_eq!(
            d,
            [Compute, Skip, Compute, Skip, Skip, Compute, Skip, Compute]
        );

        // The accumulator after step 4 is the sum of two rescaled distances, and is reset by
        // the forced last step.
        let mut state = TeaCacheState::new();
        for (i, &x) in xs.iter().enumerate().take(5) {
            let _ = state.decide(&cfg, i, xs.len(), &pair(x));
        }
        assert_eq!(state.accumulated, 2.0 * teacache_rescale(0.03125));
        let _ = state.decide(&cfg, 5, xs.len(), &pair(xs[5]));
        assert_eq!(state.accumulated, 0.0);
        let _ = state.decide(&cfg, 6, xs.len(), &pair(xs[6]));
        assert_eq!(state.accumulated, teacache_rescale(0.03125));
        assert_eq!(state.decide(&cfg, 7, xs.len(), &pair(xs[7])), Compute);
        assert_eq!(state.accumulated, 0.0);
    }

    #[test]
    fn teacache_first_and_last_steps_are_computed() {
        // Identical indicators: rescale(0) = 0.0961 per step; threshold 10 would skip forever.
        let xs = [1.0; 6];
        let d = tea_run(&cache(StepCacheMethod::TeaCache, 10.0), &xs);
        assert_eq!(d, [Compute, Skip, Skip, Skip, Skip, Compute]);
        // One step: it is both first and last.
        let d = tea_run(&cache(StepCacheMethod::TeaCache, 10.0), &[1.0]);
        assert_eq!(d, [Compute]);
    }

    #[test]
    fn teacache_previous_indicator_is_updated_on_skipped_steps() {
        // 1.0 → 1.0625 → 1.0, threshold 0.16. Step 1: 0.0765, skip. Step 2 against step 1's
        // indicator: distance 0.0625, 0.1530 < 0.16, skip. Had the previous indicator stayed
        // step 0's, step 2 would be at distance 0: 0.0765 + 0.0961 = 0.1727 ≥ 0.16, compute.
        let xs = [1.0, 1.0625, 1.0, 1.0];
        let cfg = cache(StepCacheMethod::TeaCache, 0.16);
        assert!(teacache_rescale(0.0625) * 2.0 < 0.16);
        assert!(teacache_rescale(0.0625) + teacache_rescale(0.0) >= 0.16);
        assert_eq!(tea_run(&cfg, &xs), [Compute, Skip, Skip, Compute]);
    }

    #[test]
    fn teacache_window() {
        // The sequence of the hand-computed test, deciding in [2, 5) only.
        //   0, 1: outside, computed; step 1 resets the accumulator and keeps its indicator.
        //   2: 0.0765 (distance to step 1's 1.0625: 0.0625) skip — with step 0's indicator it
        //      would be 0.1540 and compute; had step 1 accumulated its 0.0765 instead of
        //      resetting, 0.1531 and compute.
        //   3: 0.1287 skip; 4: 0.1808 compute; 5, 6: outside; 7: outside (and last).
        let xs = [1.0, 1.0625, 1.125, 1.15625, 1.1875, 1.21875, 1.25, 1.28125];
        let cfg = StepCache {
            start: 2,
            end: Some(5),
            ..StepCache::new(StepCacheMethod::TeaCache)
        };
        let d = tea_run(&cfg, &xs);
        assert_eq!(computed(&d), [0, 1, 4, 5, 6, 7]);
        // The first step past the window resets an accumulator left by skips.
        let cfg = StepCache {
            end: Some(3),
            ..cache(StepCacheMethod::TeaCache, 10.0)
        };
        let mut state = TeaCacheState::new();
        for step in 0..3 {
            let _ = state.decide(&cfg, step, 6, &[1.0]);
        }
        assert_eq!(state.accumulated, 2.0 * teacache_rescale(0.0));
        assert_eq!(state.decide(&cfg, 3, 6, &[1.0]), Compute);
        assert_eq!(state.accumulated, 0.0);

        // A window that starts at 0 still has the first step forced; an empty window computes
        // everything.
        let everything = tea_run(&cache(StepCacheMethod::TeaCache, 10.0), &[1.0; 5]);
        assert_eq!(computed(&everything), [0, 4]);
        let empty = StepCache {
            start: 3,
            end: Some(3),
            ..cache(StepCacheMethod::TeaCache, 10.0)
        };
        assert_eq!(computed(&tea_run(&empty, &[1.0; 5])), [0, 1, 2, 3, 4]);
    }

    #[test]
    fn teacache_shape_change_and_unmeasurable_inputs_compute_and_reset() {
        let cfg = cache(StepCacheMethod::TeaCache, 10.0);
        let mut state = TeaCacheState::new();
        assert_eq!(state.decide(&cfg, 0, 20, &[1.0, 1.0]), Compute);
        assert_eq!(state.decide(&cfg, 1, 20, &[1.0, 1.0]), Skip);
        assert!(state.accumulated > 0.0);
        // A new length: computed, the accumulator reset, the new indicator kept.
        assert_eq!(state.decide(&cfg, 2, 20, &[1.0, 1.0, 1.0]), Compute);
        assert_eq!(state.accumulated, 0.0);
        assert_eq!(state.decide(&cfg, 3, 20, &[1.0, 1.0, 1.0]), Skip);
        // Empty (twice: after a longer one, after an empty one), zero previous, NaN: computed.
        assert_eq!(state.decide(&cfg, 4, 20, &[]), Compute);
        assert_eq!(state.decide(&cfg, 5, 20, &[]), Compute);
        assert_eq!(state.decide(&cfg, 6, 20, &[0.0, 0.0]), Compute);
        assert_eq!(state.decide(&cfg, 7, 20, &[0.0, 0.0]), Compute);
        assert_eq!(state.decide(&cfg, 8, 20, &[1.0, 1.0]), Compute);
        assert_eq!(state.decide(&cfg, 9, 20, &[f32::NAN, 1.0]), Compute);
        assert_eq!(state.accumulated, 0.0);
    }

    #[test]
    fn teacache_threshold_zero_or_below_the_polynomial_minimum_never_skips() {
        let identical = [1.0; 12];
        let drifting: Vec<f32> = (0..12).map(|i| 1.0 + i as f32 * 0.03125).collect();
        for threshold in [0.0, 0.05, 0.0521] {
            let cfg = cache(StepCacheMethod::TeaCache, threshold);
            assert!(tea_run(&cfg, &identical).iter().all(|d| *d == Compute));
            assert!(tea_run(&cfg, &drifting).iter().all(|d| *d == Compute));
        }
        // Just above the rescaled 0.03125 (0.052150634), the drifting run skips.
        let cfg = cache(StepCacheMethod::TeaCache, 0.05216);
        assert!(tea_run(&cfg, &drifting).contains(&Skip));
    }

    #[test]
    fn fbcache_compares_with_the_last_computed_residual() {
        // Threshold 0.1. Step 0: no previous, compute. 1: 0.0625 skip. 2: against step 0's
        // 1.0 (the last computed), 0.125 > 0.1 compute — against step 1's (the last seen) it
        // would be 0.0625 and skip. 3: against step 2's, 0.0625 skip. 4: 0.125 compute.
        let xs = [1.0, 1.0625, 1.125, 1.1875, 1.25];
        let cfg = cache(StepCacheMethod::FbCache, 0.1);
        assert_eq!(fb_run(&cfg, &xs), [Compute, Skip, Compute, Skip, Compute]);
    }

    #[test]
    fn fbcache_skips_when_the_distance_equals_the_threshold_and_does_not_force_the_last_step() {
        // diffusers computes on `diff > threshold`: a distance of exactly 0.0625 skips at 0.0625.
        let xs = [1.0, 1.0625, 1.125];
        let d = fb_run(&cache(StepCacheMethod::FbCache, 0.0625), &xs);
        assert_eq!(d, [Compute, Skip, Compute]);
        let d = fb_run(&cache(StepCacheMethod::FbCache, 0.05), &[1.0; 4]);
        assert_eq!(d, [Compute, Skip, Skip, Skip]);
        assert_eq!(StepCacheMethod::FbCache.default_threshold(), 0.05);
    }

    #[test]
    fn fbcache_window() {
        // Deciding from step 2: steps 0 and 1 are computed and store their residuals. 2: against
        // step 1's 1.125, 0.0625 ≤ 0.1 skip (against step 0's it would be 0.1875, compute).
        // 3: against 1.125, 0.125 compute.
        let xs = [1.0, 1.125, 1.1875, 1.25];
        let cfg = StepCache {
            start: 2,
            ..cache(StepCacheMethod::FbCache, 0.1)
        };
        assert_eq!(computed(&fb_run(&cfg, &xs)), [0, 1, 3]);
        // Deciding in [1, 3) only: steps 3 and 4 are computed whatever their residual.
        let cfg = StepCache {
            start: 1,
            end: Some(3),
            ..cache(StepCacheMethod::FbCache, 0.1)
        };
        assert_eq!(computed(&fb_run(&cfg, &[1.0; 5])), [0, 3, 4]);
    }

    #[test]
    fn fbcache_threshold_zero_never_skips() {
        // An identical residual is at distance 0: diffusers would skip it at threshold 0 (0 > 0
        // is false); we compute.
        let d = fb_run(&cache(StepCacheMethod::FbCache, 0.0), &[1.0; 6]);
        assert!(d.iter().all(|d| *d == Compute));
        let d = fb_run(&cache(StepCacheMethod::FbCache, 1e-12), &[1.0; 6]);
        assert_eq!(computed(&d), [0]);
    }

    #[test]
    fn fbcache_shape_change_and_unmeasurable_inputs_compute() {
        let cfg = cache(StepCacheMethod::FbCache, 10.0);
        let mut state = FbCacheState::new();
        assert_eq!(state.decide(&cfg, 0, 10, &[1.0, 1.0]), Compute);
        assert_eq!(state.decide(&cfg, 1, 10, &[1.0, 1.0]), Skip);
        assert_eq!(state.decide(&cfg, 2, 10, &[1.0, 1.0, 1.0]), Compute);
        assert_eq!(state.decide(&cfg, 3, 10, &[5.0, 5.0, 5.0]), Skip);
        assert_eq!(state.decide(&cfg, 4, 10, &[]), Compute);
        assert_eq!(state.decide(&cfg, 5, 10, &[0.0, 0.0]), Compute);
        // 0/0: diffusers' NaN would skip; we compute.
        assert_eq!(state.decide(&cfg, 6, 10, &[0.0, 0.0]), Compute);
        assert_eq!(state.decide(&cfg, 7, 10, &[1.0, 1.0]), Compute);
        assert_eq!(state.decide(&cfg, 8, 10, &[1.0, f32::NAN]), Compute);
        // And the NaN residual was stored (computed): the next one is measured against it.
        assert_eq!(state.decide(&cfg, 9, 10, &[1.0, 1.0]), Compute);
    }

    #[test]
    fn streams_keep_their_own_state() {
        let cfg = StepCache::new(StepCacheMethod::FbCache);
        let mut cond = FbCacheState::new();
        let mut uncond = FbCacheState::new();
        let mut record = StepCacheRecord::new(&cfg, 3, true);
        for (step, (c, u)) in [(1.0, 1.0), (1.0, 1.5), (1.0, 1.5)].into_iter().enumerate() {
            record.record(Stream::Cond, step, cond.decide(&cfg, step, 3, &pair(c)));
            record.record(Stream::Uncond, step, uncond.decide(&cfg, step, 3, &pair(u)));
        }
        assert_eq!(record.computed(Stream::Cond), [0]);
        assert_eq!(record.computed(Stream::Uncond), [0, 1]);
        assert_eq!(record.skipped(Stream::Cond), 2);
        assert_eq!(record.skipped(Stream::Uncond), 1);
    }

    #[test]
    fn record_json_one_stream() {
        let cfg = StepCache::new(StepCacheMethod::TeaCache);
        let mut record = StepCacheRecord::new(&cfg, 5, false);
        for (step, d) in [Compute, Compute, Skip, Compute, Compute]
            .into_iter()
            .enumerate()
        {
            record.record(Stream::Cond, step, d);
        }
        assert_eq!(
            record.to_json(),
            serde_json::json!({
                "method": "teacache",
                "threshold": 0.15,
                "start": 0,
                "end": 5,
                "computed_steps": [0, 1, 3, 4],
            })
        );
        assert_eq!(record.streams(), [Stream::Cond]);
        // 20 blocks: 4 computed steps; TeaCache runs no block on a skip.
        assert_eq!(record.block_calls(20), 80);
    }

    #[test]
    fn record_json_two_streams() {
        let cfg = StepCache {
            threshold: 0.1,
            start: 1,
            end: Some(3),
            ..StepCache::new(StepCacheMethod::FbCache)
        };
        let mut record = StepCacheRecord::new(&cfg, 4, true);
        for step in 0..4 {
            let cond = if step == 2 { Skip } else { Compute };
            let uncond = if step == 1 { Skip } else { Compute };
            record.record(Stream::Cond, step, cond);
            record.record(Stream::Uncond, step, uncond);
        }
        let json = record.to_json();
        assert_eq!(
            json,
            serde_json::json!({
                "method": "fbcache",
                "threshold": 0.1,
                "start": 1,
                "end": 3,
                "computed_steps": {"cond": [0, 1, 3], "uncond": [0, 2, 3]},
            })
        );
        // 20 blocks: 6 computed stream-steps × 20 + 2 skipped × the first block.
        assert_eq!(record.block_calls(20), 122);
        assert_eq!(record.streams(), [Stream::Cond, Stream::Uncond]);
    }

    #[test]
    fn validation_names_the_setting() {
        let ok = StepCache::new(StepCacheMethod::TeaCache);
        assert_eq!(ok.validate(50), Ok(()));
        assert_eq!(ok.window(50), 0..50);
        for threshold in [-0.01, f64::NAN, f64::INFINITY] {
            let e = StepCache { threshold, ..ok }.validate(50).unwrap_err();
            assert_eq!(e.setting, Setting::StepCacheThreshold);
        }
        let e = StepCache {
            threshold: -1.0,
            ..ok
        }
        .validate(50)
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "step cache threshold: must be a number at least 0, got -1"
        );
        assert_eq!(
            StepCache {
                threshold: 0.0,
                ..ok
            }
            .validate(50),
            Ok(())
        );

        let e = StepCache {
            end: Some(51),
            ..ok
        }
        .validate(50)
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "step cache end: must be at most the step count (50), got 51"
        );
        assert_eq!(
            StepCache {
                end: Some(50),
                ..ok
            }
            .validate(50),
            Ok(())
        );

        let e = StepCache {
            start: 11,
            end: Some(10),
            ..ok
        }
        .validate(50)
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "step cache start: must be at most the end (10), got 11"
        );
        let e = StepCache { start: 51, ..ok }.validate(50).unwrap_err();
        assert_eq!(
            e.to_string(),
            "step cache start: must be at most the step count (50), got 51"
        );
        let empty = StepCache {
            start: 10,
            end: Some(10),
            ..ok
        };
        assert_eq!(empty.validate(50), Ok(()));
        assert_eq!(empty.window(50), 10..10);
    }

    #[test]
    fn method_names() {
        for method in [StepCacheMethod::TeaCache, StepCacheMethod::FbCache] {
            assert_eq!(method.to_string().parse::<StepCacheMethod>(), Ok(method));
            let json = serde_json::to_string(&method).unwrap();
            assert_eq!(json, format!("\"{method}\""));
            assert_eq!(
                serde_json::from_str::<StepCacheMethod>(&json).unwrap(),
                method
            );
        }
        assert_eq!(StepCacheMethod::TeaCache.to_string(), "teacache");
        assert_eq!(StepCacheMethod::FbCache.to_string(), "fbcache");
        assert_eq!(
            "none".parse::<StepCacheMethod>(),
            Err("`none`: expected teacache or fbcache".to_string())
        );
        assert_eq!(parse_step_cache("none"), Ok(None));
        assert_eq!(
            parse_step_cache("fbcache"),
            Ok(Some(StepCacheMethod::FbCache))
        );
        assert_eq!(
            parse_step_cache("TeaCache"),
            Err("`TeaCache`: expected none, teacache or fbcache".to_string())
        );
        assert_eq!(StepCacheMethod::TeaCache.default_threshold(), 0.15);
    }
}
