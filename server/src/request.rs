//! `POST /v1/videos` bodies → validated job settings. The same fields arrive as JSON (numbers
//! as numbers) or as multipart/form-data (what the `openai` SDK sends; every value is text), so
//! both become a map of field → JSON value first and one parser reads it, naming the field of
//! every error (`param`).
//!
//! Fields: OpenAI's `prompt`, `model`, `size` ("WIDTHxHEIGHT"), `seconds` (string or number),
//! and HunyuanVideo's, named as diffusers' `HunyuanVideoPipeline.__call__` arguments:
//! `num_frames` (4k + 1, wins over `seconds`), `num_inference_steps`, `guidance_scale` (the
//! embedded guidance), `true_cfg_scale` with `negative_prompt`, `flow_shift`, `seed`, `fps`.
//! Defaults are `hyvideo generate`'s (720 × 1280, 129 frames, 50 steps, guidance 6 — 1 for an
//! image_condition_type latent_concat bundle, as the runtime's default — shift 7, 24 fps,
//! sampling 1 → 0).
//!
//! Image-to-video: `input_reference` (see [`crate::input_reference`]) is required by a server
//! whose bundle is image-to-video and refused by a text-to-video one; it is decoded here, at
//! request time, and the whole request is then checked as the runtime will check it
//! (`GenerateRequest::validate_for` the bundle's condition type), so bad input fails the create,
//! never the job. [`parse_create`] does all of it; [`parse`] is the same for bodies whose image,
//! if any, is a field value (JSON).
//!
//! Step caching, as `hyvideo generate --step-cache …`: `step_cache` ("none", the default, or
//! "teacache" / "fbcache"), and with a method `step_cache_threshold` (≥ 0; default 0.15 for
//! TeaCache, 0.05 for First-Block Cache), `step_cache_start` and `step_cache_end` (0-based,
//! start ≤ end ≤ `num_inference_steps`; defaults 0 and the step count). The three are refused
//! without a method, and a method is refused by a server whose transformer has no stage graphs.

use std::collections::BTreeMap;

use hyvideo::generation::{GenerateRequest, Sampling};
use hyvideo::image::RgbImage;
use hyvideo::setting::{InvalidSetting, Setting};
use hyvideo::step_cache::{StepCache, StepCacheMethod, parse_step_cache};
use hyvideo_bundle::ImageCondition;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::ApiError;
use crate::input_reference::{self, ImageInfo, InputReference};

/// What a server accepts at most (its `--max-*` flags and what its engines admit).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    pub max_steps: usize,
    pub max_frames: usize,
    /// Longest side, pixels.
    pub max_size: usize,
    /// Characters of a prompt (and of a negative prompt).
    pub max_prompt_chars: usize,
    /// Width and height the loaded engines' shape profile admits at most (TensorRT engines are
    /// built for a range; `None` for providers that take any shape).
    pub engine_max: Option<[usize; 2]>,
    /// Whether requests may ask for a step cache: the loaded transformer is in stages
    /// (`Prepared::start` sets it from the pipeline; a single-graph transformer cannot skip).
    pub step_cache: bool,
    /// Bytes of an `input_reference` image at most (the file, not its base64).
    pub max_image_bytes: usize,
    /// How the loaded bundle's transformer takes an image (`Prepared::start` sets it from the
    /// pipeline): image-to-video requires `input_reference`, text-to-video refuses it.
    pub image_condition: ImageCondition,
}

/// The default [`Limits::max_image_bytes`]: 20 MiB.
pub const MAX_IMAGE_BYTES: usize = 20 << 20;

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_steps: 1000,
            max_frames: 129,
            max_size: 1280,
            max_prompt_chars: 4000,
            engine_max: None,
            step_cache: true,
            max_image_bytes: MAX_IMAGE_BYTES,
            image_condition: ImageCondition::None,
        }
    }
}

/// Model names accepted besides the bundle's: OpenAI's, which the SDK sends by default; they
/// are ignored (the bundle is what runs).
pub const OPENAI_MODELS: [&str; 2] = ["sora-2", "sora-2-pro"];
/// The name this server answers to.
pub const MODEL: &str = "hunyuanvideo";

/// One validated job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobSettings {
    pub prompt: String,
    pub negative_prompt: Option<String>,
    pub model: String,
    pub width: usize,
    pub height: usize,
    pub num_frames: usize,
    pub num_inference_steps: usize,
    pub guidance_scale: f32,
    pub true_cfg_scale: f32,
    pub flow_shift: f32,
    pub seed: u64,
    pub fps: u32,
    /// `None`: every step computed (also what jobs stored before step caching parse to).
    #[serde(default)]
    pub step_cache: Option<StepCacheSettings>,
    /// Image-to-video: what the input image is (the queue stores its bytes with the job).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_reference: Option<ImageInfo>,
    /// Frames of the delivered video: `num_frames` less what the bundle's condition type drops
    /// (latent_concat: 4, as the reference pipeline returns). `None` in jobs stored before this
    /// was recorded: then `num_frames`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_frames: Option<usize>,
}

/// A validated create: the job's settings and, for image-to-video, the image file to store.
#[derive(Debug, Clone, PartialEq)]
pub struct Create {
    pub settings: JobSettings,
    pub image: Option<Vec<u8>>,
}

/// A job's step cache as requested: the method, its threshold (the method's default filled
/// in) and the window of steps it decides (`end` `None`: the step count).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct StepCacheSettings {
    pub method: StepCacheMethod,
    pub threshold: f64,
    #[serde(default)]
    pub start: usize,
    #[serde(default)]
    pub end: Option<usize>,
}

impl StepCacheSettings {
    /// The runtime's step cache.
    pub fn step_cache(&self) -> StepCache {
        StepCache {
            method: self.method,
            threshold: self.threshold,
            start: self.start,
            end: self.end,
        }
    }

    /// The video object's `step_cache` before the job completes: the run record's fields
    /// without `computed_steps`, `end` resolved to the step count when unset.
    pub fn to_json(&self, steps: usize) -> Value {
        serde_json::json!({
            "method": self.method.name(),
            "threshold": self.threshold,
            "start": self.start,
            "end": self.end.unwrap_or(steps),
        })
    }
}

/// The request field of a library setting (how the runtime's setting errors are shown).
pub fn setting_field(setting: Setting) -> &'static str {
    match setting {
        Setting::Prompt => "prompt",
        Setting::NegativePrompt => "negative_prompt",
        Setting::Height | Setting::Width => "size",
        Setting::Frames => "num_frames",
        Setting::Steps => "num_inference_steps",
        Setting::EmbeddedGuidance => "guidance_scale",
        Setting::FlowShift => "flow_shift",
        Setting::CfgScale => "true_cfg_scale",
        Setting::Seed => "seed",
        // Not request fields: the server sets them.
        Setting::InitialLatents => "initial_latents",
        Setting::TileSize => "vae_tile_size",
        Setting::TileStride => "vae_tile_stride",
        Setting::TileFrames => "vae_tile_frames",
        Setting::TileStrideFrames => "vae_tile_stride_frames",
        Setting::StepCache => "step_cache",
        Setting::StepCacheThreshold => "step_cache_threshold",
        Setting::StepCacheStart => "step_cache_start",
        Setting::StepCacheEnd => "step_cache_end",
        Setting::Image => "input_reference",
    }
}

/// A setting error as a 400 naming its request field.
pub fn setting_error(e: &InvalidSetting) -> ApiError {
    ApiError::invalid(setting_field(e.setting), e.reason.clone())
}

impl JobSettings {
    /// Frames in the delivered video (see [`JobSettings::output_frames`]).
    pub fn delivered_frames(&self) -> usize {
        self.output_frames.unwrap_or(self.num_frames)
    }

    /// The delivered video's length as the API reports it (`seconds`, a string).
    pub fn seconds(&self) -> String {
        let s = self.delivered_frames() as f64 / self.fps.max(1) as f64;
        let r = (s * 100.0).round() / 100.0;
        if r.fract() == 0.0 {
            format!("{r:.0}")
        } else {
            format!("{r}")
        }
    }

    pub fn size(&self) -> String {
        format!("{}x{}", self.width, self.height)
    }

    /// The runtime's request for these settings (what the worker runs and what a create is
    /// validated as).
    pub fn generate_request(&self, image: Option<RgbImage>) -> GenerateRequest {
        GenerateRequest {
            negative_prompt: self.negative_prompt.clone(),
            height: self.height,
            width: self.width,
            frames: self.num_frames,
            sampling: Sampling {
                steps: self.num_inference_steps,
                embedded_guidance: self.guidance_scale,
                flow_shift: self.flow_shift,
                cfg_scale: self.true_cfg_scale,
                step_cache: self.step_cache.map(|c| c.step_cache()),
                ..Sampling::default()
            },
            seed: self.seed,
            image,
            ..GenerateRequest::new(self.prompt.clone())
        }
    }
}

/// Every field a create body may have.
pub const FIELDS: [&str; 17] = [
    "prompt",
    "model",
    "size",
    "seconds",
    "num_frames",
    "num_inference_steps",
    "guidance_scale",
    "true_cfg_scale",
    "negative_prompt",
    "flow_shift",
    "seed",
    "fps",
    "step_cache",
    "step_cache_threshold",
    "step_cache_start",
    "step_cache_end",
    "input_reference",
];

fn text<'a>(v: &'a Value, param: &str) -> Result<&'a str, ApiError> {
    v.as_str()
        .ok_or_else(|| ApiError::invalid(param, "must be a string"))
}

/// A number given as a JSON number or as text (multipart).
fn number(v: &Value, param: &str) -> Result<f64, ApiError> {
    let n = match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    };
    match n {
        Some(x) if x.is_finite() => Ok(x),
        _ => Err(ApiError::invalid(
            param,
            format!("must be a number, got {v}"),
        )),
    }
}

/// A non-negative integer, exact over the whole `u64` range (a seed of 2⁶⁴ − 1 stays that seed).
fn integer(v: &Value, param: &str) -> Result<u64, ApiError> {
    let exact = match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse::<u64>().ok(),
        _ => None,
    };
    if let Some(n) = exact {
        return Ok(n);
    }
    // Integral floats such as `8.0` are integers too; anything else is refused.
    let x = number(v, param)?;
    if x < 0.0 || x.fract() != 0.0 || x >= u64::MAX as f64 {
        return Err(ApiError::invalid(
            param,
            format!(
                "must be a non-negative integer at most {}, got {v}",
                u64::MAX
            ),
        ));
    }
    Ok(x as u64)
}

fn in_range(param: &str, v: u64, min: u64, max: u64) -> Result<usize, ApiError> {
    if v < min || v > max {
        return Err(ApiError::invalid(
            param,
            format!("{v} is outside {min}..={max}"),
        ));
    }
    Ok(v as usize)
}

/// Parse "WIDTHxHEIGHT": both positive multiples of 16, the longest side at most `max`.
fn size(v: &Value, max: usize) -> Result<(usize, usize), ApiError> {
    let s = text(v, "size")?;
    let parts: Vec<&str> = s.split(['x', 'X']).collect();
    let [w, h] = parts.as_slice() else {
        return Err(ApiError::invalid(
            "size",
            format!("`{s}` is not WIDTHxHEIGHT"),
        ));
    };
    let (Ok(w), Ok(h)) = (w.trim().parse::<usize>(), h.trim().parse::<usize>()) else {
        return Err(ApiError::invalid(
            "size",
            format!("`{s}` is not WIDTHxHEIGHT"),
        ));
    };
    if w == 0 || h == 0 || !w.is_multiple_of(16) || !h.is_multiple_of(16) {
        return Err(ApiError::invalid(
            "size",
            format!("{w}x{h}: width and height must be positive multiples of 16"),
        ));
    }
    if w.max(h) > max {
        return Err(ApiError::invalid(
            "size",
            format!("{w}x{h}: the longest side may be at most {max} pixels here"),
        ));
    }
    Ok((w, h))
}

/// The largest [width, height] and frame count a transformer engine built for latent shapes
/// up to `max` (`[B, C, t, h, w]`) admits, through the VAE's spatial and temporal ratios.
pub fn engine_bounds(
    max: &[usize],
    spatial: usize,
    temporal: usize,
) -> Option<([usize; 2], usize)> {
    let [.., t, h, w] = max else {
        return None;
    };
    let frames = (t.max(&1) - 1) * temporal + 1;
    Some(([w * spatial, h * spatial], frames))
}

/// The nearest 4k + 1 frame count to `seconds` at `fps` (at least 1; saturating, so an absurd
/// duration is a large count that the frame limit refuses, never an overflow).
pub fn frames_for_seconds(seconds: f64, fps: u32) -> usize {
    let f = (seconds * fps as f64).max(1.0);
    let k = ((f - 1.0) / 4.0).round().max(0.0) as usize;
    k.saturating_mul(4).saturating_add(1)
}

/// Validate a create body given as field → value (an image only as the `input_reference`
/// value: a data URL or `{"image_url": …}`).
pub fn parse(fields: &BTreeMap<String, Value>, limits: &Limits) -> Result<JobSettings, ApiError> {
    parse_create(fields, None, limits).map(|c| c.settings)
}

/// Validate a create: the fields, and the image uploaded as a file part (`upload`) or given as
/// the `input_reference` field; decodes the image (CPU work: call it off the async threads).
pub fn parse_create(
    fields: &BTreeMap<String, Value>,
    upload: Option<InputReference>,
    limits: &Limits,
) -> Result<Create, ApiError> {
    if let Some(k) = fields.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        return Err(ApiError::invalid(k, "unknown field"));
    }
    let mut settings = parse_settings(fields, limits)?;
    let field = fields.get(input_reference::FIELD).filter(|v| !v.is_null());
    let kind = limits.image_condition;
    let given = match (upload, field) {
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid(
                input_reference::FIELD,
                "given twice (a file part and a field)",
            ));
        }
        (Some(u), None) => Some(u),
        (None, Some(v)) if kind.is_image_to_video() => {
            Some(input_reference::from_json(v, limits.max_image_bytes)?)
        }
        (None, Some(_)) => None,
        (None, None) => None,
    };
    let has_image = given.is_some() || field.is_some();
    match (kind.is_image_to_video(), has_image) {
        (false, true) => {
            return Err(ApiError::invalid(
                input_reference::FIELD,
                "this server's bundle is text-to-video: it takes no input image (serve an \
                 image-to-video bundle, exported from a checkpoint such as HunyuanVideo-I2V)",
            ));
        }
        (true, false) => {
            return Err(ApiError::invalid(
                input_reference::FIELD,
                format!(
                    "is required: this server's bundle is image-to-video (image_condition_type \
                     {kind}); upload a PNG or JPEG file, or give a data:image/png;base64,… URL"
                ),
            ));
        }
        _ => {}
    }
    let (image, bytes) = match given {
        Some(r) => {
            let (image, info) = input_reference::decode(&r, limits.max_image_bytes)?;
            settings.input_reference = Some(info);
            (Some(image), Some(r.bytes))
        }
        None => (None, None),
    };
    // Everything the runtime will check, checked now (latent_concat's frame count, …).
    settings
        .generate_request(image)
        .validate_for(kind)
        .map_err(|e| setting_error(&e))?;
    Ok(Create {
        settings,
        image: bytes,
    })
}

/// The fields other than `input_reference`.
fn parse_settings(
    fields: &BTreeMap<String, Value>,
    limits: &Limits,
) -> Result<JobSettings, ApiError> {
    let get = |k: &str| fields.get(k).filter(|v| !v.is_null());
    let prompt = get("prompt")
        .ok_or_else(|| ApiError::invalid("prompt", "is required"))
        .and_then(|v| text(v, "prompt"))?;
    let prompt_check = |param: &str, p: &str| -> Result<String, ApiError> {
        if p.trim().is_empty() {
            return Err(ApiError::invalid(param, "is empty"));
        }
        if p.chars().count() > limits.max_prompt_chars {
            return Err(ApiError::invalid(
                param,
                format!("is longer than {} characters", limits.max_prompt_chars),
            ));
        }
        Ok(p.to_owned())
    };
    let prompt = prompt_check("prompt", prompt)?;
    let model = match get("model") {
        None => MODEL.to_owned(),
        Some(v) => {
            let m = text(v, "model")?;
            if m != MODEL && !OPENAI_MODELS.contains(&m) {
                return Err(ApiError::invalid(
                    "model",
                    format!("this server runs `{MODEL}`, not `{m}`"),
                ));
            }
            m.to_owned()
        }
    };
    let (width, height) = match get("size") {
        Some(v) => {
            let (w, h) = size(v, limits.max_size)?;
            if let Some([mw, mh]) = limits.engine_max
                && (w > mw || h > mh)
            {
                return Err(ApiError::invalid(
                    "size",
                    format!("{w}x{h}: the loaded engines' shape profile admits at most {mw}x{mh}"),
                ));
            }
            (w, h)
        }
        None => {
            let [mw, mh] = limits.engine_max.unwrap_or([usize::MAX; 2]);
            let cap = |v: usize, m: usize| v.min(limits.max_size).min(m) / 16 * 16;
            (cap(1280, mw), cap(720, mh))
        }
    };
    let fps = match get("fps") {
        Some(v) => in_range("fps", integer(v, "fps")?, 1, 120)? as u32,
        None => 24,
    };
    let max_frames = limits.max_frames as u64;
    let num_frames = match (get("num_frames"), get("seconds")) {
        (Some(v), _) => {
            let f = in_range("num_frames", integer(v, "num_frames")?, 1, max_frames)?;
            if !(f - 1).is_multiple_of(4) {
                return Err(ApiError::invalid(
                    "num_frames",
                    format!("{f} is not of the form 4k + 1 (1, 5, 9, ..., 129)"),
                ));
            }
            f
        }
        (None, Some(v)) => {
            let s = number(v, "seconds")?;
            if s <= 0.0 {
                return Err(ApiError::invalid("seconds", format!("{s} is not positive")));
            }
            let f = frames_for_seconds(s, fps);
            if f > limits.max_frames {
                return Err(ApiError::invalid(
                    "seconds",
                    format!("{s} s at {fps} fps is {f} frames; at most {max_frames} here"),
                ));
            }
            f
        }
        (None, None) => 129.min(limits.max_frames.saturating_sub(1) / 4 * 4 + 1),
    };
    let steps = match get("num_inference_steps") {
        Some(v) => in_range(
            "num_inference_steps",
            integer(v, "num_inference_steps")?,
            1,
            limits.max_steps as u64,
        )?,
        None => 50.min(limits.max_steps),
    };
    let float = |k: &str, default: f32, min: f64, max: f64| -> Result<f32, ApiError> {
        match get(k) {
            None => Ok(default),
            Some(v) => {
                let x = number(v, k)?;
                if x < min || x > max {
                    return Err(ApiError::invalid(
                        k,
                        format!("{x} is outside {min}..={max}"),
                    ));
                }
                Ok(x as f32)
            }
        }
    };
    let guidance_scale = float(
        "guidance_scale",
        Sampling::default_embedded_guidance(limits.image_condition),
        0.0,
        100.0,
    )?;
    let true_cfg_scale = float("true_cfg_scale", 1.0, 1.0, 100.0)?;
    let flow_shift = float("flow_shift", 7.0, 1e-3, 100.0)?;
    let negative_prompt = match get("negative_prompt") {
        Some(v) => Some(prompt_check(
            "negative_prompt",
            text(v, "negative_prompt")?,
        )?),
        None => None,
    };
    if true_cfg_scale > 1.0 && negative_prompt.is_none() {
        return Err(ApiError::invalid(
            "negative_prompt",
            "true_cfg_scale above 1 (true classifier-free guidance) needs a negative_prompt",
        ));
    }
    let seed = match get("seed") {
        Some(v) => integer(v, "seed")?,
        None => random_seed(),
    };
    let step_cache = step_cache(&get, steps, limits)?;
    Ok(JobSettings {
        prompt,
        negative_prompt,
        model,
        width,
        height,
        num_frames,
        num_inference_steps: steps,
        guidance_scale,
        true_cfg_scale,
        flow_shift,
        seed,
        fps,
        step_cache,
        input_reference: None,
        output_frames: Some(
            num_frames.saturating_sub(limits.image_condition.dropped_video_frames()),
        ),
    })
}

/// `step_cache` and its threshold and window, checked as `StepCache::validate` checks them.
fn step_cache<'a>(
    get: &dyn Fn(&str) -> Option<&'a Value>,
    steps: usize,
    limits: &Limits,
) -> Result<Option<StepCacheSettings>, ApiError> {
    let method = match get("step_cache") {
        None => None,
        Some(v) => parse_step_cache(text(v, "step_cache")?.trim())
            .map_err(|e| ApiError::invalid("step_cache", e))?,
    };
    let Some(method) = method else {
        for k in ["step_cache_threshold", "step_cache_start", "step_cache_end"] {
            if get(k).is_some() {
                return Err(ApiError::invalid(
                    k,
                    "needs a step_cache method (teacache or fbcache)",
                ));
            }
        }
        return Ok(None);
    };
    if !limits.step_cache {
        return Err(ApiError::invalid(
            "step_cache",
            "this server's transformer has no stage graphs; re-export the bundle",
        ));
    }
    let threshold = match get("step_cache_threshold") {
        Some(v) => number(v, "step_cache_threshold")?,
        None => method.default_threshold(),
    };
    let index = |k: &str| -> Result<Option<usize>, ApiError> {
        get(k)
            .map(|v| integer(v, k).map(|n| usize::try_from(n).unwrap_or(usize::MAX)))
            .transpose()
    };
    let settings = StepCacheSettings {
        method,
        threshold,
        start: index("step_cache_start")?.unwrap_or(0),
        end: index("step_cache_end")?,
    };
    settings
        .step_cache()
        .validate(steps)
        .map_err(|e| setting_error(&e))?;
    Ok(Some(settings))
}

fn random_seed() -> u64 {
    let mut b = [0u8; 8];
    // A failing OS random source leaves seed 0: still a valid, recorded seed.
    let _ = getrandom::fill(&mut b);
    u64::from_le_bytes(b) >> 1
}

/// A fresh job id: `video_` and 24 random hex digits (never built from user input).
pub fn new_id() -> String {
    let mut b = [0u8; 12];
    let _ = getrandom::fill(&mut b);
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("video_{hex}")
}

/// Whether `id` has the form [`new_id`] makes (checked before any lookup or path).
pub fn is_job_id(id: &str) -> bool {
    id.strip_prefix("video_")
        .is_some_and(|h| h.len() == 24 && h.bytes().all(|c| c.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn body(v: Value) -> BTreeMap<String, Value> {
        v.as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    fn err(v: Value) -> ApiError {
        parse(&body(v), &Limits::default()).unwrap_err()
    }

    #[test]
    fn defaults_are_generates_and_text_numbers_parse() {
        let s = parse(
            &body(json!({"prompt": "a cat", "seed": 3})),
            &Limits::default(),
        )
        .unwrap();
        assert_eq!(
            (s.width, s.height, s.num_frames, s.num_inference_steps),
            (1280, 720, 129, 50)
        );
        assert_eq!(
            (s.guidance_scale, s.flow_shift, s.fps, s.seed),
            (6.0, 7.0, 24, 3)
        );
        assert_eq!(s.model, MODEL);
        // Multipart sends every value as text.
        let m = parse(
            &body(json!({"prompt": "a cat", "size": "480x320", "seconds": "4",
                         "num_inference_steps": "8", "guidance_scale": "5.5", "seed": "9"})),
            &Limits::default(),
        )
        .unwrap();
        assert_eq!((m.width, m.height, m.num_frames), (480, 320, 97));
        assert_eq!(
            (m.num_inference_steps, m.guidance_scale, m.seed),
            (8, 5.5, 9)
        );
        assert_eq!(m.seconds(), "4.04");
        // num_frames wins over seconds.
        let n = parse(
            &body(json!({"prompt": "x", "seconds": 4, "num_frames": 33})),
            &Limits::default(),
        )
        .unwrap();
        assert_eq!(n.num_frames, 33);
        assert_eq!(frames_for_seconds(0.01, 24), 1);
        assert_eq!(frames_for_seconds(5.375, 24), 129);
        assert_eq!(frames_for_seconds(1e300, 24), usize::MAX);
        let e = err(json!({"prompt": "a", "seconds": 1e300}));
        assert_eq!(e.param.as_deref(), Some("seconds"));
        // Seeds are exact over the whole u64 range; 2^64 is refused, not clamped.
        let s = parse(
            &body(json!({"prompt": "a", "seed": 9007199254740993u64})),
            &Limits::default(),
        )
        .unwrap();
        assert_eq!(s.seed, 9007199254740993);
        let s = parse(
            &body(json!({"prompt": "a", "seed": "18446744073709551615"})),
            &Limits::default(),
        )
        .unwrap();
        assert_eq!(s.seed, u64::MAX);
        assert_eq!(
            err(json!({"prompt": "a", "seed": "18446744073709551616"}))
                .param
                .as_deref(),
            Some("seed")
        );
    }

    #[test]
    fn each_bad_field_is_named() {
        for (b, param) in [
            (json!({}), "prompt"),
            (json!({"prompt": "  "}), "prompt"),
            (json!({"prompt": 3}), "prompt"),
            (json!({"prompt": "a", "colour": "red"}), "colour"),
            (json!({"prompt": "a", "model": "other"}), "model"),
            (json!({"prompt": "a", "size": "1280"}), "size"),
            (json!({"prompt": "a", "size": "1270x720"}), "size"),
            (json!({"prompt": "a", "size": "2048x1152"}), "size"),
            (json!({"prompt": "a", "num_frames": 8}), "num_frames"),
            (json!({"prompt": "a", "num_frames": 133}), "num_frames"),
            (json!({"prompt": "a", "seconds": "ten"}), "seconds"),
            (json!({"prompt": "a", "seconds": 60}), "seconds"),
            (
                json!({"prompt": "a", "num_inference_steps": 0}),
                "num_inference_steps",
            ),
            (
                json!({"prompt": "a", "num_inference_steps": 2.5}),
                "num_inference_steps",
            ),
            (
                json!({"prompt": "a", "num_inference_steps": 5000}),
                "num_inference_steps",
            ),
            (
                json!({"prompt": "a", "guidance_scale": "NaN"}),
                "guidance_scale",
            ),
            (
                json!({"prompt": "a", "true_cfg_scale": 4}),
                "negative_prompt",
            ),
            (json!({"prompt": "a", "flow_shift": 0}), "flow_shift"),
            (json!({"prompt": "a", "seed": -1}), "seed"),
            (json!({"prompt": "a", "fps": 0}), "fps"),
            (
                json!({"prompt": "a", "input_reference": "x"}),
                "input_reference",
            ),
            (json!({"prompt": "a".repeat(4001)}), "prompt"),
            (json!({"prompt": "a", "step_cache": "magic"}), "step_cache"),
            (json!({"prompt": "a", "step_cache": 1}), "step_cache"),
            (
                json!({"prompt": "a", "step_cache": "teacache", "step_cache_threshold": -1}),
                "step_cache_threshold",
            ),
            (
                json!({"prompt": "a", "step_cache": "fbcache", "step_cache_threshold": "abc"}),
                "step_cache_threshold",
            ),
            (
                json!({"prompt": "a", "step_cache": "none", "step_cache_threshold": 0.1}),
                "step_cache_threshold",
            ),
            (
                json!({"prompt": "a", "step_cache_start": 1}),
                "step_cache_start",
            ),
            (
                json!({"prompt": "a", "step_cache": "teacache", "num_inference_steps": 12,
                       "step_cache_start": 6, "step_cache_end": 4}),
                "step_cache_start",
            ),
            (
                json!({"prompt": "a", "step_cache": "teacache", "num_inference_steps": 12,
                       "step_cache_start": 13}),
                "step_cache_start",
            ),
            (
                json!({"prompt": "a", "step_cache": "teacache", "num_inference_steps": 12,
                       "step_cache_end": 13}),
                "step_cache_end",
            ),
            (
                json!({"prompt": "a", "step_cache": "teacache", "step_cache_end": -2}),
                "step_cache_end",
            ),
        ] {
            let e = err(b.clone());
            assert_eq!(e.param.as_deref(), Some(param), "{b}: {e:?}");
            assert!(e.message.starts_with(param), "{b}: {}", e.message);
            assert_eq!(e.status, axum::http::StatusCode::BAD_REQUEST);
        }
    }

    #[test]
    fn step_cache_fields_parse_with_the_methods_defaults() {
        let p = |v: Value| parse(&body(v), &Limits::default()).unwrap().step_cache;
        assert_eq!(p(json!({"prompt": "a"})), None);
        assert_eq!(p(json!({"prompt": "a", "step_cache": "none"})), None);
        assert_eq!(p(json!({"prompt": "a", "step_cache": null})), None);
        let tea = p(json!({"prompt": "a", "step_cache": "teacache"})).unwrap();
        assert_eq!(
            tea,
            StepCacheSettings {
                method: StepCacheMethod::TeaCache,
                threshold: 0.15,
                start: 0,
                end: None
            }
        );
        assert_eq!(
            tea.to_json(50),
            json!({"method": "teacache", "threshold": 0.15, "start": 0, "end": 50})
        );
        // Multipart: every value text.
        let fb = p(
            json!({"prompt": "a", "num_inference_steps": "12", "step_cache": "fbcache",
                          "step_cache_threshold": "0", "step_cache_start": "2",
                          "step_cache_end": "12"}),
        )
        .unwrap();
        assert_eq!(
            fb,
            StepCacheSettings {
                method: StepCacheMethod::FbCache,
                threshold: 0.0,
                start: 2,
                end: Some(12)
            }
        );
        assert_eq!(
            p(json!({"prompt": "a", "step_cache": "fbcache"}))
                .unwrap()
                .threshold,
            0.05
        );
        // start = end (an empty window) is every step computed, as the runtime allows.
        assert!(
            p(
                json!({"prompt": "a", "num_inference_steps": 4, "step_cache": "teacache",
                     "step_cache_start": 4, "step_cache_end": 4})
            )
            .is_some()
        );
        // A server without the transformer's stage graphs refuses a method (not `none`).
        let single = Limits {
            step_cache: false,
            ..Limits::default()
        };
        let e = parse(
            &body(json!({"prompt": "a", "step_cache": "teacache"})),
            &single,
        )
        .unwrap_err();
        assert_eq!(e.param.as_deref(), Some("step_cache"));
        assert!(e.message.contains("no stage graphs"), "{}", e.message);
        assert!(parse(&body(json!({"prompt": "a", "step_cache": "none"})), &single).is_ok());
        // Jobs stored before step caching still parse.
        let mut old = serde_json::to_value(
            parse(&body(json!({"prompt": "a", "seed": 1})), &Limits::default()).unwrap(),
        )
        .unwrap();
        old.as_object_mut().unwrap().remove("step_cache");
        let old: JobSettings = serde_json::from_value(old).unwrap();
        assert_eq!(old.step_cache, None);
        // Every runtime setting error names a field.
        let e = setting_error(&InvalidSetting::new(Setting::StepCacheEnd, "too far"));
        assert_eq!(e.param.as_deref(), Some("step_cache_end"));
        assert_eq!(e.message, "step_cache_end: too far");
    }

    #[test]
    fn image_to_video_needs_the_image_and_text_to_video_refuses_it() {
        let png = std::fs::read(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../tests/fixtures/goldens/i2v_images/resized.png"),
        )
        .unwrap();
        let upload = || InputReference {
            bytes: png.clone(),
            content_type: Some("image/png".into()),
            name: "resized.png".into(),
        };
        let i2v = |kind| Limits {
            image_condition: kind,
            ..Limits::default()
        };
        let tr = i2v(ImageCondition::TokenReplace);
        let lc = i2v(ImageCondition::LatentConcat);
        let small = body(json!({"prompt": "a cat", "size": "48x32", "num_frames": 9}));
        let c = parse_create(&small, Some(upload()), &tr).unwrap();
        assert_eq!(c.image.as_deref(), Some(png.as_slice()));
        assert_eq!(
            c.settings.input_reference,
            Some(ImageInfo {
                format: "png".into(),
                width: 75,
                height: 44,
                bytes: png.len()
            })
        );
        // The guidance default follows the bundle (the runtime's default for its kind).
        assert_eq!(c.settings.guidance_scale, 6.0);
        let c = parse_create(&small, Some(upload()), &lc).unwrap();
        assert_eq!(c.settings.guidance_scale, 1.0);
        // latent_concat delivers 4 frames fewer than asked (the reference drops them): the
        // video object's `seconds` is that video's length, `output_frames` its frame count.
        assert_eq!(
            (c.settings.num_frames, c.settings.delivered_frames()),
            (9, 5)
        );
        assert_eq!(
            c.settings.seconds(),
            format!("{}", (5.0f64 / 24.0 * 100.0).round() / 100.0)
        );
        let tr_settings = parse_create(&small, Some(upload()), &tr).unwrap().settings;
        assert_eq!(tr_settings.delivered_frames(), 9);
        // A stored job's settings keep the image's description; a text-to-video job's JSON
        // has no such key (as before image-to-video).
        let json = serde_json::to_value(&c.settings).unwrap();
        assert_eq!(json["input_reference"]["width"], 75);
        let t2v = parse(&small, &Limits::default()).unwrap();
        assert!(
            serde_json::to_value(&t2v)
                .unwrap()
                .get("input_reference")
                .is_none()
        );

        let refused = |fields: Value, up: Option<InputReference>, limits: &Limits, param: &str| {
            let e = parse_create(&body(fields.clone()), up, limits).unwrap_err();
            assert_eq!(e.param.as_deref(), Some(param), "{fields}: {e:?}");
            assert!(e.message.starts_with(param), "{}", e.message);
            e.message
        };
        let m = refused(small_json(), None, &tr, "input_reference");
        assert!(
            m.contains("is required") && m.contains("token_replace"),
            "{m}"
        );
        let m = refused(
            small_json(),
            Some(upload()),
            &Limits::default(),
            "input_reference",
        );
        assert!(m.contains("text-to-video"), "{m}");
        let mut with_url = small_json();
        with_url["input_reference"] = json!("data:image/png;base64,AAAA");
        let m = refused(with_url, None, &Limits::default(), "input_reference");
        assert!(m.contains("text-to-video"), "{m}");
        let m = refused(
            json!({"prompt": "a", "size": "48x32", "num_frames": 1}),
            Some(upload()),
            &lc,
            "num_frames",
        );
        assert!(m.contains("latent_concat"), "{m}");
        let mut both = small_json();
        both["input_reference"] = json!("data:image/png;base64,AAAA");
        let m = refused(both, Some(upload()), &tr, "input_reference");
        assert!(m.contains("twice"), "{m}");
        let truncated = InputReference {
            bytes: png[..png.len() / 2].to_vec(),
            ..upload()
        };
        let m = refused(small_json(), Some(truncated), &tr, "input_reference");
        assert!(m.contains("resized.png: truncated PNG"), "{m}");
    }

    fn small_json() -> Value {
        json!({"prompt": "a cat", "size": "48x32", "num_frames": 9})
    }

    #[test]
    fn engine_profiles_bound_sizes_and_frames() {
        // 720p preset: latents up to [2, 16, 33, 90, 160].
        assert_eq!(
            engine_bounds(&[2, 16, 33, 90, 160], 8, 4),
            Some(([1280, 720], 129))
        );
        assert_eq!(engine_bounds(&[1, 16, 1, 4, 6], 8, 4), Some(([48, 32], 1)));
        assert_eq!(engine_bounds(&[1, 2], 8, 4), None);
    }

    #[test]
    fn sizes_beyond_the_engines_profile_are_refused() {
        let limits = Limits {
            engine_max: Some([960, 544]),
            ..Limits::default()
        };
        let d = parse(&body(json!({"prompt": "a"})), &limits).unwrap();
        assert_eq!(
            (d.width, d.height),
            (960, 544),
            "the default fits the engines"
        );
        let ok = parse(&body(json!({"prompt": "a", "size": "960x544"})), &limits).unwrap();
        assert_eq!((ok.width, ok.height), (960, 544));
        let e = parse(&body(json!({"prompt": "a", "size": "1280x720"})), &limits).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("size"));
        assert!(
            e.message.contains("shape profile admits at most 960x544"),
            "{}",
            e.message
        );
    }

    #[test]
    fn ids_are_server_made_and_checked() {
        let a = new_id();
        assert!(is_job_id(&a), "{a}");
        assert_ne!(a, new_id());
        for bad in [
            "video_../../etc",
            "video_",
            "x",
            "video_0123456789abcdef0123456g",
        ] {
            assert!(!is_job_id(bad), "{bad}");
        }
    }
}
