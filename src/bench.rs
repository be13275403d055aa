//! `hyvideo bench`: per-stage latency statistics, the side-by-side table against the native
//! (PyTorch / diffusers) path, and the stage-output comparison. Pure functions; the binary runs
//! the stages and the native script (`benches/native/pipeline_native.py`).
//!
//! The report follows NVIDIA demoDiffusion's per-stage latency table, with the native numbers,
//! the speedup and the largest output difference beside each stage.
//!
//! An image-to-video bundle adds the `image_encode` stage ([`I2V_STAGES`]) and takes the input
//! image from the settings ([`BenchSettings::image`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use hyvideo::i2v::ImageConditioning;
use hyvideo::tensor::Tensor5;
use hyvideo_bundle::ImageCondition;

/// The stages of a text-to-video bench, in pipeline order, under the names the native script's
/// JSON uses.
pub const STAGES: [&str; 5] = [
    "text_encoders",
    "transformer_step",
    "denoise_loop",
    "vae_decode",
    "end_to_end",
];

/// The stages of an image-to-video bench: [`STAGES`] with the VAE encode of the input image.
pub const I2V_STAGES: [&str; 6] = [
    "text_encoders",
    "image_encode",
    "transformer_step",
    "denoise_loop",
    "vae_decode",
    "end_to_end",
];

/// What one bench run makes: the keys of `bench_settings.json` (benches/native/
/// make_bench_model.py and make_bench_i2v_model.py), which the native script reads too. The
/// schedule always runs σ 1 → 0, as diffusers' pipeline does (`flow_reverse: false` there means
/// "not Tencent's 0 → 1").
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct BenchSettings {
    pub prompt: String,
    pub height: usize,
    pub width: usize,
    pub frames: usize,
    pub steps: usize,
    /// `None`: the default of the bundle's image condition type
    /// ([`hyvideo::generation::Sampling::default_embedded_guidance`]); see [`Self::guidance`].
    #[serde(
        default,
        alias = "embedded_cfg_scale",
        skip_serializing_if = "Option::is_none"
    )]
    pub embedded_guidance_scale: Option<f32>,
    #[serde(default = "default_shift")]
    pub flow_shift: f32,
    #[serde(default)]
    pub flow_reverse: bool,
    pub seed: u64,
    #[serde(default = "default_max_sequence_length")]
    pub max_sequence_length: usize,
    /// The input image of an image-to-video bundle (PNG or JPEG). In a settings file a relative
    /// path is relative to the file's folder; [`BenchSettings::from_json`] makes it absolute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<PathBuf>,
}

fn default_shift() -> f32 {
    7.0
}

fn default_max_sequence_length() -> usize {
    hyvideo::text::MAX_SEQUENCE_LENGTH
}

impl BenchSettings {
    /// Settings from the JSON of a settings file in `dir` (its `notes` and other unknown keys
    /// ignored); a relative `image` is taken relative to `dir` and made absolute, so the settings
    /// can be handed to the native script from anywhere.
    pub fn from_json(text: &str, dir: &Path) -> Result<BenchSettings, serde_json::Error> {
        let mut s: BenchSettings = serde_json::from_str(text)?;
        if let Some(p) = s.image.take() {
            s.image = Some(absolute(&dir.join(p)));
        }
        Ok(s)
    }

    /// `image` (`--image`, relative to the working directory) in place of the settings' own.
    pub fn with_image(mut self, image: Option<&Path>) -> BenchSettings {
        if let Some(p) = image {
            self.image = Some(absolute(p));
        }
        self
    }

    /// The embedded guidance scale a bundle whose transformer takes images as `kind` runs with:
    /// the settings', else the kind's default (6.0; 1.0 for latent_concat).
    pub fn guidance(&self, kind: ImageCondition) -> f32 {
        self.embedded_guidance_scale
            .unwrap_or_else(|| hyvideo::generation::Sampling::default_embedded_guidance(kind))
    }

    /// What the bench cannot run: Tencent's reversed schedule (diffusers' pipeline has none) and
    /// another Llama prompt length than the pipeline's.
    pub fn check(&self) -> Result<(), String> {
        if self.flow_reverse {
            return Err(
                "flow_reverse = true (Tencent's t = 0 -> 1) is not what the native \
                        pipeline runs"
                    .into(),
            );
        }
        if self.max_sequence_length != hyvideo::text::MAX_SEQUENCE_LENGTH {
            return Err(format!(
                "max_sequence_length {} (only {} is supported)",
                self.max_sequence_length,
                hyvideo::text::MAX_SEQUENCE_LENGTH
            ));
        }
        Ok(())
    }
}

/// `p` made absolute against the working directory (unchanged if that cannot be read).
fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

/// The denoising loop's initial latents from the seeded `noise`: image-to-video mixes the image
/// latent in (`cond`), text-to-video starts from the noise.
pub fn loop_start(cond: Option<&ImageConditioning>, noise: &Tensor5) -> Tensor5 {
    match cond {
        Some(c) => c.initial_latents(noise.clone()),
        None => noise.clone(),
    }
}

/// What the transformer sees at step 0: [`loop_start`] as the condition type feeds it (token_replace
/// with the image latent on frame 0, latent_concat as `[latents; image; mask]`).
pub fn step_zero_input(cond: Option<&ImageConditioning>, noise: &Tensor5) -> Tensor5 {
    let x = loop_start(cond, noise);
    match cond {
        Some(c) => c.model_input(&x),
        None => x,
    }
}

/// The scaled image latent `[1, C, 1, h, w]` that `cond` conditions latents of `shape` `[1, C, T,
/// h, w]` with, read back through the model input of zero latents, where both condition types
/// put it on frame 0 (token_replace in the latents' channels, latent_concat in channels C..2C).
pub fn image_latent(cond: &ImageConditioning, shape: [usize; 5]) -> Tensor5 {
    let [_, c, t, h, w] = shape;
    let x = cond.model_input(&Tensor5::zeros([1, c, t, h, w]));
    let first = match cond.kind() {
        ImageCondition::LatentConcat => c,
        _ => 0,
    };
    let hw = h * w;
    let data = (first..first + c)
        .flat_map(|ch| x.data()[ch * t * hw..ch * t * hw + hw].iter().copied())
        .collect();
    Tensor5::from_vec([1, c, 1, h, w], data).unwrap_or_else(|_| Tensor5::zeros([1, c, 1, h, w]))
}

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

/// Rows for every stage present, in [`I2V_STAGES`] order (then any other stage names, sorted).
pub fn rows(
    ours: &BTreeMap<String, Vec<f64>>,
    native: &BTreeMap<String, Vec<f64>>,
    diffs: &BTreeMap<String, f64>,
) -> Vec<Row> {
    let mut names: Vec<String> = I2V_STAGES.iter().map(|s| s.to_string()).collect();
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

/// max |a − b| over the rows both masks mark valid (`a` and `b` are `[B, L, D]` row-major with
/// `[B, L]` masks); `None` when the shapes or the masks differ (then the rows do not pair up).
pub fn max_abs_diff_valid_rows(
    a: &[f32],
    b: &[f32],
    mask_a: &[i64],
    mask_b: &[i64],
) -> Option<f64> {
    if a.len() != b.len()
        || mask_a != mask_b
        || mask_a.is_empty()
        || !a.len().is_multiple_of(mask_a.len())
    {
        return None;
    }
    let d = a.len() / mask_a.len();
    let rows = mask_a.iter().enumerate().filter(|&(_, &m)| m != 0);
    Some(rows.fold(0f64, |acc, (i, _)| {
        acc.max(max_abs_diff(&a[i * d..(i + 1) * d], &b[i * d..(i + 1) * d]).unwrap_or(0.0))
    }))
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

    #[test]
    fn valid_rows_are_compared_only_when_the_masks_agree() {
        let a = [1.0, 2.0, 3.0, 4.0, 9.0, 9.0];
        let b = [1.5, 2.0, 3.0, 3.0, 0.0, 0.0];
        assert_eq!(
            max_abs_diff_valid_rows(&a, &b, &[1, 1, 0], &[1, 1, 0]),
            Some(1.0)
        );
        assert_eq!(
            max_abs_diff_valid_rows(&a, &b, &[1, 0, 0], &[1, 0, 0]),
            Some(0.5)
        );
        assert_eq!(
            max_abs_diff_valid_rows(&a, &b, &[1, 1, 0], &[1, 0, 0]),
            None
        );
        assert_eq!(max_abs_diff_valid_rows(&a, &b[..4], &[1, 1], &[1, 1]), None);
        assert_eq!(max_abs_diff(&a, &b), Some(9.0));
    }

    #[test]
    fn rows_put_image_encode_after_the_text_encoders() {
        let ours = BTreeMap::from([
            ("end_to_end".to_string(), vec![2.0]),
            ("image_encode".to_string(), vec![0.5]),
            ("text_encoders".to_string(), vec![0.1]),
        ]);
        let r = rows(&ours, &BTreeMap::new(), &BTreeMap::new());
        let names: Vec<&str> = r.iter().map(|r| r.stage.as_str()).collect();
        assert_eq!(names, ["text_encoders", "image_encode", "end_to_end"]);
    }

    const SETTINGS: &str = r#"{
        "prompt": "A cat walks on the grass, realistic style.",
        "height": 256, "width": 256, "frames": 9, "steps": 50,
        "flow_shift": 7.0, "flow_reverse": false, "seed": 42, "max_sequence_length": 256,
        "true_cfg_scale": 1.0, "vae_tiling": {"spatial": true},
        "notes": {"image": "relative to this file's folder"}
    }"#;

    fn with_keys(extra: &str) -> String {
        SETTINGS.replacen('{', &format!("{{{extra},"), 1)
    }

    #[test]
    fn settings_resolve_the_image_against_their_folder() {
        let dir = Path::new("/models/bench_i2v");
        let s = BenchSettings::from_json(&with_keys(r#""image": "bench_image.png""#), dir).unwrap();
        assert_eq!(
            s.image.as_deref(),
            Some(dir.join("bench_image.png").as_path())
        );
        assert_eq!((s.height, s.frames, s.seed), (256, 9, 42));
        let s = BenchSettings::from_json(&with_keys(r#""image": "/data/cat.jpg""#), dir).unwrap();
        assert_eq!(s.image.as_deref(), Some(Path::new("/data/cat.jpg")));
        // A settings file given by a relative path: the image ends up absolute all the same.
        let s =
            BenchSettings::from_json(&with_keys(r#""image": "in.png""#), Path::new("")).unwrap();
        let image = s.image.clone().unwrap();
        assert!(image.is_absolute(), "{}", image.display());
        assert!(image.ends_with("in.png"));
        // Text-to-video settings have none, and serialise without the key.
        let t2v = BenchSettings::from_json(SETTINGS, dir).unwrap();
        assert_eq!(t2v.image, None);
        let json = serde_json::to_value(&t2v).unwrap();
        assert!(json.get("image").is_none(), "{json}");
        // --image replaces the settings' image; without it they keep theirs.
        let replaced = s.clone().with_image(Some(Path::new("/tmp/other.png")));
        assert_eq!(replaced.image.as_deref(), Some(Path::new("/tmp/other.png")));
        assert_eq!(s.clone().with_image(None), s);
        let rel = t2v.with_image(Some(Path::new("x.png"))).image.unwrap();
        assert!(rel.is_absolute() && rel.ends_with("x.png"));
        // What the native script reads back: the image as an absolute path string.
        let json = serde_json::to_value(&replaced).unwrap();
        assert_eq!(json["image"], "/tmp/other.png");
    }

    #[test]
    fn settings_guidance_defaults_to_the_condition_types() {
        let dir = Path::new("/m");
        let s = BenchSettings::from_json(SETTINGS, dir).unwrap();
        assert_eq!(s.embedded_guidance_scale, None);
        assert_eq!(s.guidance(ImageCondition::None), 6.0);
        assert_eq!(s.guidance(ImageCondition::TokenReplace), 6.0);
        assert_eq!(s.guidance(ImageCondition::LatentConcat), 1.0);
        for key in ["embedded_guidance_scale", "embedded_cfg_scale"] {
            let s = BenchSettings::from_json(&with_keys(&format!(r#""{key}": 3.5"#)), dir).unwrap();
            assert_eq!(s.guidance(ImageCondition::LatentConcat), 3.5, "{key}");
        }
        assert!(s.check().is_ok());
        let bad = BenchSettings {
            flow_reverse: true,
            ..s.clone()
        };
        assert!(bad.check().unwrap_err().contains("flow_reverse"));
        let bad = BenchSettings {
            max_sequence_length: 128,
            ..s
        };
        assert!(bad.check().unwrap_err().contains("max_sequence_length 128"));
        assert!(BenchSettings::from_json(r#"{"prompt": "x"}"#, dir).is_err());
    }

    fn seq(shape: [usize; 5], k: f32) -> Tensor5 {
        let n = shape.iter().product();
        Tensor5::from_vec(shape, (0..n).map(|i| 1.0 + i as f32 * k).collect()).unwrap()
    }

    #[test]
    fn the_image_latent_reads_back_for_both_condition_types() {
        let shape = [1, 3, 4, 2, 5];
        let image = seq([1, 3, 1, 2, 5], 0.5);
        for kind in [ImageCondition::TokenReplace, ImageCondition::LatentConcat] {
            let c = ImageConditioning::new(kind, image.clone(), shape).unwrap();
            let back = image_latent(&c, shape);
            assert_eq!(back.shape(), image.shape(), "{kind}");
            assert_eq!(back.data(), image.data(), "{kind}");
        }
    }

    #[test]
    fn step_zero_input_is_the_mixed_noise_as_the_condition_type_feeds_it() {
        let shape = [1, 2, 3, 2, 2];
        let noise = seq(shape, -0.25);
        assert_eq!(loop_start(None, &noise).data(), noise.data());
        assert_eq!(step_zero_input(None, &noise).data(), noise.data());
        let image = seq([1, 2, 1, 2, 2], 1.0);
        let c = ImageConditioning::new(ImageCondition::TokenReplace, image.clone(), shape).unwrap();
        let start = loop_start(Some(&c), &noise);
        let want = noise.at(0, 1, 2, 1, 0) * hyvideo::i2v::NOISE_WEIGHT
            + image.at(0, 1, 0, 1, 0) * (1.0 - hyvideo::i2v::NOISE_WEIGHT);
        assert_eq!(start.at(0, 1, 2, 1, 0), want);
        let x = step_zero_input(Some(&c), &noise);
        assert_eq!(x.shape(), shape);
        assert_eq!(x.at(0, 1, 0, 1, 0), image.at(0, 1, 0, 1, 0));
        assert_eq!(x.at(0, 1, 2, 1, 0), want);
        let c = ImageConditioning::new(ImageCondition::LatentConcat, image, shape).unwrap();
        assert_eq!(step_zero_input(Some(&c), &noise).shape(), [1, 5, 3, 2, 2]);
    }
}
