//! [`Pipeline`]: a bundle's stages loaded once (text encoders, transformer, VAE decoder, from
//! the bundle's graphs or built engines; all three, or only those a front end needs), then any
//! number of prompt-to-video [`generate`](Pipeline::generate) calls — what `hyvideo generate`
//! and a server drive — or of single stages ([`encode`](Pipeline::encode),
//! [`denoise`](Pipeline::denoise), [`decode`](Pipeline::decode)), which `hyvideo denoise`,
//! `decode` and `bench` drive.
//!
//! Mirrors diffusers `HunyuanVideoPipeline.__call__` (encode prompts, prepare latents, the
//! denoising loop, decode), with what a long-running front end needs on top: typed
//! [`Progress`] events (stage, step i of N, tile i of N) delivered to a callback,
//! cooperative cancellation ([`CancelFlag`], checked between denoising steps and between decode
//! tiles) and request validation whose errors name the *setting* ([`Setting`]), which a front
//! end maps to its own flags or fields.
//!
//! An image-to-video bundle (HunyuanVideo-I2V, `image_condition_type` token_replace or
//! latent_concat) runs `HunyuanVideoImageToVideoPipeline.__call__` instead: the prompt encoded
//! with the image (LLaVA), the image through the VAE encoder ([`Stage::ImageEncode`]), the loop
//! with the condition type's latents ([`crate::i2v`]), and the condition type's output.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use hyvideo_bundle::{Component, ImageCondition, Manifest, ManifestError, VaeSettings};
use hyvideo_engines::{BackendKind, SessionConfig};

use crate::denoise::{DenoiseError, DenoiseSettings, TrueCfg, denoise_from_image};
use crate::denoiser::{Denoiser, TransformerForm};
use crate::engine_set::{EngineSet, EngineSetError, ModelFiles};
use crate::i2v::{I2vError, ImageConditioning};
use crate::image::{RgbImage, vae_pixels};
use crate::image_prompt::ImageEmbedInterleave;
use crate::pipeline::{PipelineError, TextEncoders, VideoSize, initial_latents};
use crate::scheduler::FlowDirection;
pub use crate::setting::{InvalidSetting, Setting};
use crate::staged_transformer::StagedTransformer;
use crate::step_cache::{StepCache, StepCacheRecord};
use crate::tensor::Tensor5;
use crate::transformer::{
    StepInput, TextConditioning, Transformer, TransformerError, VelocityModel,
};
use crate::vae::{VaeDecoder, VaeError};
use crate::vae_encode::{VaeEncodeError, VaeEncoder};
use crate::vae_tiling::{TilingConfig, TilingError};

/// A stage of one generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stage {
    TextEncoders,
    /// Image-to-video only: the input image through the VAE encoder.
    ImageEncode,
    Denoise,
    Decode,
}

impl Stage {
    /// Every stage, in the order they run (a text-to-video bundle has no
    /// [`ImageEncode`](Stage::ImageEncode): loading it is a no-op there).
    pub const ALL: [Stage; 4] = [
        Stage::TextEncoders,
        Stage::ImageEncode,
        Stage::Denoise,
        Stage::Decode,
    ];
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Stage::TextEncoders => "text encoders",
            Stage::ImageEncode => "image encode",
            Stage::Denoise => "denoise",
            Stage::Decode => "decode",
        })
    }
}

/// What [`Pipeline::generate`] reports while it runs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Progress {
    /// A stage starts.
    Stage(Stage),
    /// Denoising step `step` of `steps` (1-based) is done, in `elapsed`.
    Step {
        step: usize,
        steps: usize,
        elapsed: Duration,
    },
    /// Decoder call `tile` of `tiles` (1-based) is done.
    Tile { tile: usize, tiles: usize },
}

/// Cooperative cancellation: clone it to the thread that cancels; a generation checks it
/// between denoising steps and between decode tiles.
#[derive(Debug, Clone, Default)]
pub struct CancelFlag(Arc<AtomicBool>);

impl CancelFlag {
    pub fn new() -> CancelFlag {
        CancelFlag::default()
    }

    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// How the denoising loop samples: diffusers' `num_inference_steps`, embedded `guidance_scale`,
/// the scheduler's `shift` and direction, and `true_cfg_scale`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampling {
    pub steps: usize,
    pub embedded_guidance: f32,
    pub flow_shift: f32,
    pub direction: FlowDirection,
    /// True classifier-free guidance scale; above 1 runs the negative prompt too.
    pub cfg_scale: f32,
    /// Step caching (TeaCache or First-Block Cache); `None`: every step computed, exactly. Needs
    /// the transformer loaded in stages ([`TransformerForm::Staged`]).
    pub step_cache: Option<StepCache>,
}

impl Default for Sampling {
    /// Tencent's `sample_video.py` defaults: 50 steps, embedded guidance 6, shift 7, t = 1 → 0.
    fn default() -> Sampling {
        Sampling {
            steps: 50,
            embedded_guidance: 6.0,
            flow_shift: 7.0,
            direction: FlowDirection::Reverse,
            cfg_scale: 1.0,
            step_cache: None,
        }
    }
}

impl Sampling {
    /// The embedded guidance scale a transformer taking images as `kind` is run with by
    /// default: 6.0 (Tencent's and diffusers' examples for HunyuanVideo and HunyuanVideo-I2V),
    /// 1.0 for latent_concat (HunyuanVideo-I2V-33ch, with `true_cfg_scale` 1.0).
    pub fn default_embedded_guidance(kind: ImageCondition) -> f32 {
        match kind {
            ImageCondition::LatentConcat => 1.0,
            ImageCondition::None | ImageCondition::TokenReplace => 6.0,
        }
    }

    /// Every sampling setting checked; the first bad one is named.
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        if self.steps == 0 {
            return Err(InvalidSetting::new(Setting::Steps, "must be at least 1"));
        }
        if !self.embedded_guidance.is_finite() {
            return Err(InvalidSetting::new(
                Setting::EmbeddedGuidance,
                format!("{} is not a number", self.embedded_guidance),
            ));
        }
        if !(self.flow_shift.is_finite() && self.flow_shift > 0.0) {
            return Err(InvalidSetting::new(
                Setting::FlowShift,
                format!("must be a positive number, got {}", self.flow_shift),
            ));
        }
        if !self.cfg_scale.is_finite() {
            return Err(InvalidSetting::new(
                Setting::CfgScale,
                format!("{} is not a number", self.cfg_scale),
            ));
        }
        if let Some(c) = &self.step_cache {
            c.validate(self.steps)?;
        }
        Ok(())
    }

    /// With a cfg scale above 1 the negative prompt runs too.
    pub fn true_cfg(&self) -> bool {
        self.cfg_scale > 1.0
    }

    fn loop_settings(&self, takes_guidance: bool) -> DenoiseSettings {
        DenoiseSettings {
            steps: self.steps,
            shift: self.flow_shift,
            direction: self.direction,
            embedded_guidance: takes_guidance.then_some(self.embedded_guidance),
            true_cfg: self.true_cfg().then_some(TrueCfg {
                scale: self.cfg_scale,
            }),
        }
    }
}

/// One video to make. [`GenerateRequest::new`] gives Tencent's `sample_video.py` defaults
/// (720 × 1280, 129 frames, [`Sampling::default`]).
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateRequest {
    pub prompt: String,
    /// Used with a cfg scale above 1 (true classifier-free guidance).
    pub negative_prompt: Option<String>,
    pub height: usize,
    pub width: usize,
    pub frames: usize,
    pub sampling: Sampling,
    /// Seed of the initial noise (torch's CPU generator stream), unless `initial_latents`.
    pub seed: u64,
    pub initial_latents: Option<Tensor5>,
    pub tiling: TilingConfig,
    /// The input image of an image-to-video bundle (required there, refused elsewhere).
    pub image: Option<RgbImage>,
}

impl GenerateRequest {
    pub fn new(prompt: impl Into<String>) -> GenerateRequest {
        GenerateRequest {
            prompt: prompt.into(),
            negative_prompt: None,
            height: 720,
            width: 1280,
            frames: 129,
            sampling: Sampling::default(),
            seed: 0,
            initial_latents: None,
            tiling: TilingConfig::default(),
            image: None,
        }
    }

    /// [`validate`](Self::validate) for a bundle whose transformer takes images as `kind`:
    /// an image-to-video bundle needs the image (and latent_concat, which drops the first four
    /// decoded frames, at least 5 frames); a text-to-video bundle takes none.
    pub fn validate_for(&self, kind: ImageCondition) -> Result<VideoSize, InvalidSetting> {
        let size = self.validate()?;
        match (kind.is_image_to_video(), &self.image) {
            (true, None) => Err(InvalidSetting::new(
                Setting::Image,
                format!(
                    "this bundle is image-to-video (image_condition_type {kind}): give the \
                     input image"
                ),
            )),
            (false, Some(_)) => Err(InvalidSetting::new(
                Setting::Image,
                "this bundle is text-to-video: it takes no input image (export an \
                 image-to-video checkpoint such as HunyuanVideo-I2V)",
            )),
            _ if kind == ImageCondition::LatentConcat && size.frames < 5 => {
                Err(InvalidSetting::new(
                    Setting::Frames,
                    format!(
                        "{} frames: an image_condition_type latent_concat video drops its first \
                         four frames; give at least 5",
                        size.frames
                    ),
                ))
            }
            _ => Ok(size),
        }
    }

    /// Every setting checked before any work; the first bad one is named.
    pub fn validate(&self) -> Result<VideoSize, InvalidSetting> {
        if self.prompt.trim().is_empty() {
            return Err(InvalidSetting::new(Setting::Prompt, "is empty"));
        }
        let size = VideoSize::checked(self.height, self.width, self.frames)?;
        self.sampling.validate()?;
        if self.sampling.true_cfg()
            && self
                .negative_prompt
                .as_deref()
                .is_none_or(|n| n.trim().is_empty())
        {
            return Err(InvalidSetting::new(
                Setting::NegativePrompt,
                "a cfg scale above 1 (true classifier-free guidance) needs a negative prompt",
            ));
        }
        self.tiling.validate().map_err(|e| match e {
            TilingError::Invalid(i) => i,
            other => InvalidSetting::new(Setting::TileSize, other.to_string()),
        })?;
        Ok(size)
    }
}

/// What one generation made.
#[derive(Debug, Clone)]
pub struct Generated {
    /// Final latents `[1, C, t, h, w]`, before the VAE scaling (image-to-video: what the
    /// reference returns, latent_concat without its first frame).
    pub latents: Tensor5,
    /// Decoded video `[1, 3, F, H, W]` in [-1, 1] (latent_concat: from the fifth frame).
    pub video: Tensor5,
    /// The seed the noise came from (`None` with initial latents).
    pub seed: Option<u64>,
    /// The prompt (and negative prompt) was cut to fit the tokenizers.
    pub truncated: bool,
    /// VAE decoder calls (tiles) of the decode.
    pub decoder_calls: usize,
    /// Wall time of each stage.
    pub timings: Vec<(Stage, Duration)>,
    /// What the step cache computed (`None` without one).
    pub step_cache: Option<StepCacheRecord>,
}

/// The conditioning of one generation: the prompt's, and the negative prompt's with true CFG.
#[derive(Debug, Clone)]
pub struct Prompts {
    pub prompt: TextConditioning,
    pub negative: Option<TextConditioning>,
    /// A prompt was cut to fit the tokenizers.
    pub truncated: bool,
}

/// A decoded video and the decoder calls it took.
#[derive(Debug, Clone)]
pub struct Decoded {
    /// `[1, 3, F, H, W]` in [-1, 1].
    pub video: Tensor5,
    pub decoder_calls: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum GenerationError {
    #[error(transparent)]
    Invalid(#[from] InvalidSetting),
    #[error("cancelled during {stage}")]
    Cancelled { stage: Stage },
    #[error("the {stage} stage is not loaded in this pipeline")]
    NotLoaded { stage: Stage },
    #[error("the bundle has no VAE settings (export its vae_decoder)")]
    NoVae,
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error(transparent)]
    Engines(#[from] EngineSetError),
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    #[error(transparent)]
    Transformer(#[from] TransformerError),
    #[error(transparent)]
    Denoise(#[from] DenoiseError),
    #[error(transparent)]
    Vae(#[from] VaeError),
    #[error(transparent)]
    VaeEncode(#[from] VaeEncodeError),
    #[error(transparent)]
    ImageToVideo(#[from] I2vError),
}

impl GenerationError {
    /// The setting at fault, wherever in the pipeline it was found out of range.
    pub fn invalid_setting(&self) -> Option<&InvalidSetting> {
        match self {
            GenerationError::Invalid(i)
            | GenerationError::Pipeline(PipelineError::Invalid(i))
            | GenerationError::Denoise(DenoiseError::Invalid(i))
            | GenerationError::Vae(VaeError::Tiling(TilingError::Invalid(i))) => Some(i),
            _ => None,
        }
    }
}

/// Session settings of each stage (their providers may differ), and whether the text
/// encoders stay loaded.
#[derive(Debug, Clone)]
pub struct StageConfigs {
    pub text: SessionConfig,
    pub transformer: SessionConfig,
    pub vae: SessionConfig,
    pub text_residency: TextEncoderResidency,
    /// The transformer's single graph, or its stages (for step caching).
    pub transformer_form: TransformerForm,
}

impl StageConfigs {
    /// The same settings for every stage; text encoders resident; the single transformer graph.
    pub fn all(config: SessionConfig) -> StageConfigs {
        StageConfigs {
            text: config.clone(),
            transformer: config.clone(),
            vae: config,
            text_residency: TextEncoderResidency::Resident,
            transformer_form: TransformerForm::Single,
        }
    }
}

/// Whether the text encoders stay in memory between the prompts they encode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TextEncoderResidency {
    /// Loaded once with the pipeline (a server's default: no reload per request).
    #[default]
    Resident,
    /// Loaded for each encoding and released before the denoising loop: the Llama encoder's
    /// weights (16 GB in fp16) are not held while the transformer runs, at the cost of a load
    /// per generation. For GPUs whose memory holds the transformer but not both.
    ReleasedAfterUse,
}

/// The loaded stages of one bundle.
pub struct Pipeline {
    bundle: std::path::PathBuf,
    manifest: Manifest,
    engines: Option<EngineSet>,
    stages: Vec<Stage>,
    text_config: SessionConfig,
    residency: TextEncoderResidency,
    text: Option<TextEncoders>,
    transformer: Option<Denoiser>,
    vae: Option<VaeDecoder>,
    /// Image-to-video: the VAE encoder of [`Stage::ImageEncode`].
    vae_encoder: Option<VaeEncoder>,
    /// How the bundle's transformer takes an image (text-to-video: none).
    image_condition: ImageCondition,
    /// What the step cache of the last denoising loop computed.
    last_step_cache: Option<StepCacheRecord>,
}

/// The image condition type of `bundle`'s transformer (`transformer/config.json`); a bundle
/// without a readable config is text-to-video.
pub fn bundle_image_condition(bundle: &Path) -> Result<ImageCondition, GenerationError> {
    let path = bundle.join(Component::Transformer.spec().config_file());
    let Ok(bytes) = std::fs::read(&path) else {
        return Ok(ImageCondition::None);
    };
    let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
    let value = v.get("image_condition_type").and_then(|x| x.as_str());
    ImageCondition::from_config(value).map_err(|reason| {
        GenerationError::Pipeline(PipelineError::Image(format!(
            "{}: {reason}",
            path.display()
        )))
    })
}

/// The transformer with a cancellation check before every call.
struct Cancellable<'a> {
    model: &'a mut Denoiser,
    cancel: &'a CancelFlag,
}

impl VelocityModel for Cancellable<'_> {
    fn predict(&mut self, input: &StepInput<'_>) -> Result<Tensor5, TransformerError> {
        if self.cancel.is_cancelled() {
            return Err(TransformerError::Input {
                what: "generation",
                reason: "cancelled".into(),
            });
        }
        self.model.predict(input)
    }
}

fn loaded<T>(stage: Stage, s: Option<&mut T>) -> Result<&mut T, GenerationError> {
    s.ok_or(GenerationError::NotLoaded { stage })
}

impl Pipeline {
    /// Load all of `bundle`'s stages (from `engines` where given) with `configs`.
    pub fn load(
        bundle: &Path,
        engines: Option<EngineSet>,
        configs: &StageConfigs,
    ) -> Result<Pipeline, GenerationError> {
        Self::load_stages(bundle, engines, configs, &Stage::ALL)
    }

    /// Load only `stages` of `bundle` (e.g. the decoder alone to decode saved latents).
    pub fn load_stages(
        bundle: &Path,
        engines: Option<EngineSet>,
        configs: &StageConfigs,
        stages: &[Stage],
    ) -> Result<Pipeline, GenerationError> {
        let manifest = Manifest::load(bundle)?;
        let files = ModelFiles {
            bundle,
            manifest: &manifest,
            engines: engines.as_ref(),
        };
        let wants = |s: Stage| stages.contains(&s);
        let resident = configs.text_residency == TextEncoderResidency::Resident;
        let text = match wants(Stage::TextEncoders) && resident {
            true => Some(TextEncoders::load_with(&files, &configs.text)?),
            false => None,
        };
        let transformer = match (wants(Stage::Denoise), configs.transformer_form) {
            (true, TransformerForm::Single) => Some(Denoiser::Single(Transformer::load_with(
                &files,
                &configs.transformer,
            )?)),
            (true, TransformerForm::Staged) => Some(Denoiser::Staged(Box::new(
                StagedTransformer::load_with(&files, &configs.transformer)?,
            ))),
            (false, _) => None,
        };
        let vae = match wants(Stage::Decode) {
            true => Some(VaeDecoder::load_with(&files, &configs.vae)?),
            false => None,
        };
        let image_condition = bundle_image_condition(bundle)?;
        let vae_encoder = match wants(Stage::ImageEncode) && image_condition.is_image_to_video() {
            true => Some(VaeEncoder::load_with(&files, &configs.vae)?),
            false => None,
        };
        Ok(Pipeline {
            bundle: bundle.to_path_buf(),
            manifest,
            engines,
            stages: stages.to_vec(),
            text_config: configs.text.clone(),
            residency: configs.text_residency,
            text,
            transformer,
            vae,
            vae_encoder,
            image_condition,
            last_step_cache: None,
        })
    }

    /// How the bundle's transformer takes an image ([`ImageCondition::None`]: text-to-video).
    pub fn image_condition(&self) -> ImageCondition {
        self.image_condition
    }

    /// The stages a generation of this bundle runs (no [`Stage::ImageEncode`] for
    /// text-to-video).
    pub fn generation_stages(&self) -> Vec<Stage> {
        Stage::ALL
            .into_iter()
            .filter(|s| *s != Stage::ImageEncode || self.image_condition.is_image_to_video())
            .collect()
    }

    /// Where ONNX Runtime placed each resident component's nodes: the providers that actually
    /// run them (a requested GPU provider may leave nodes to another one).
    pub fn placements(&self) -> Vec<(Component, hyvideo_engines::Placement)> {
        let mut out = vec![];
        if let Some(t) = &self.text {
            out.extend(t.placements().into_iter().map(|(c, p)| (c, p.clone())));
        }
        if let Some(t) = &self.transformer {
            out.push((Component::Transformer, t.placement().clone()));
        }
        if let Some(v) = &self.vae {
            out.push((Component::VaeDecoder, v.placement().clone()));
        }
        if let Some(v) = &self.vae_encoder {
            out.push((Component::VaeEncoder, v.placement().clone()));
        }
        out
    }

    /// The stages whose models are in memory now.
    pub fn resident_stages(&self) -> Vec<Stage> {
        [
            (Stage::TextEncoders, self.text.is_some()),
            (Stage::ImageEncode, self.vae_encoder.is_some()),
            (Stage::Denoise, self.transformer.is_some()),
            (Stage::Decode, self.vae.is_some()),
        ]
        .into_iter()
        .filter_map(|(s, loaded)| loaded.then_some(s))
        .collect()
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The engines the stages were loaded from, if any.
    pub fn engines(&self) -> Option<&EngineSet> {
        self.engines.as_ref()
    }

    /// The transformer's blocks, dual- and single-stream (`num_layers + num_single_layers` of
    /// the bundle's transformer config); `None` when the bundle has no readable config.
    pub fn transformer_blocks(&self) -> Option<usize> {
        let path = self
            .bundle
            .join(Component::Transformer.spec().config_file());
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
        let n = |k: &str| v.get(k).and_then(|x| x.as_u64()).map(|x| x as usize);
        Some(n("num_layers")? + n("num_single_layers")?)
    }

    /// What the step cache of the last denoising loop computed (`None` without a cache).
    pub fn last_step_cache(&self) -> Option<&StepCacheRecord> {
        self.last_step_cache.as_ref()
    }

    /// The transformer stage (its provider and attention, for run records).
    pub fn transformer(&self) -> Result<&Denoiser, GenerationError> {
        self.transformer.as_ref().ok_or(GenerationError::NotLoaded {
            stage: Stage::Denoise,
        })
    }

    /// The transformer, for callers that run single model calls (benchmarks).
    pub fn transformer_mut(&mut self) -> Result<&mut Denoiser, GenerationError> {
        loaded(Stage::Denoise, self.transformer.as_mut())
    }

    /// The VAE decoder stage (its provider, for reports).
    pub fn vae(&self) -> Result<&VaeDecoder, GenerationError> {
        self.vae.as_ref().ok_or(GenerationError::NotLoaded {
            stage: Stage::Decode,
        })
    }

    /// The bundle's VAE settings (latent channels, compression).
    pub fn vae_settings(&self) -> Result<&VaeSettings, GenerationError> {
        self.manifest.vae.as_ref().ok_or(GenerationError::NoVae)
    }

    /// The shape of a `size` video's latents (the VAE's channels and compression).
    pub fn latent_shape(&self, size: VideoSize) -> Result<[usize; 5], GenerationError> {
        let v = self.vae_settings()?;
        Ok(size.latent_shape(
            v.latent_channels,
            v.spatial_compression_ratio,
            v.temporal_compression_ratio,
        ))
    }

    /// The initial latents of a `size` video: `given` (checked against the shape), else the
    /// seeded noise.
    pub fn initial_latents(
        &self,
        size: VideoSize,
        seed: u64,
        given: Option<Tensor5>,
    ) -> Result<Tensor5, GenerationError> {
        Ok(initial_latents(self.latent_shape(size)?, seed, given)?)
    }

    /// Encode `prompt` (and, when given, the negative prompt).
    pub fn encode(
        &mut self,
        prompt: &str,
        negative: Option<&str>,
    ) -> Result<Prompts, GenerationError> {
        self.encode_prompts(prompt, negative, None)
    }

    /// Encode an image-to-video prompt with `image` (and the negative prompt, as diffusers does,
    /// with a black image of the video's size and interleave 2). The image rows are taken
    /// every 4th (token_replace) or 2nd (latent_concat), diffusers' defaults.
    pub fn encode_with_image(
        &mut self,
        prompt: &str,
        negative: Option<&str>,
        image: &RgbImage,
        size: VideoSize,
    ) -> Result<Prompts, GenerationError> {
        self.encode_prompts(prompt, negative, Some((image, size)))
    }

    fn encode_prompts(
        &mut self,
        prompt: &str,
        negative: Option<&str>,
        image: Option<(&RgbImage, VideoSize)>,
    ) -> Result<Prompts, GenerationError> {
        let interleave = ImageEmbedInterleave::default_for(self.image_condition);
        if self.text.is_none() && self.stages.contains(&Stage::TextEncoders) {
            let files = ModelFiles {
                bundle: &self.bundle,
                manifest: &self.manifest,
                engines: self.engines.as_ref(),
            };
            self.text = Some(TextEncoders::load_with(&files, &self.text_config)?);
        }
        let text = loaded(Stage::TextEncoders, self.text.as_mut())?;
        let (p, n) = match image {
            None => (
                text.encode(&[prompt], || {})?,
                negative.map(|n| text.encode(&[n], || {})).transpose()?,
            ),
            Some((img, size)) => {
                let p = text.encode_with_image(&[prompt], img, interleave, || {})?;
                let black = RgbImage::black(size.width, size.height);
                let n = negative
                    .map(|n| text.encode_with_image(&[n], &black, ImageEmbedInterleave(2), || {}))
                    .transpose()?;
                (p, n)
            }
        };
        if self.residency == TextEncoderResidency::ReleasedAfterUse {
            self.text = None;
        }
        let truncated = [Some(&p), n.as_ref()]
            .into_iter()
            .flatten()
            .any(|e| !e.llama_truncated.is_empty() || !e.clip_truncated.is_empty());
        Ok(Prompts {
            prompt: p.text,
            negative: n.map(|n| n.text),
            truncated,
        })
    }

    /// The image latent of `image` for a `size` video: resized and normalised as diffusers'
    /// `VideoProcessor.preprocess`, through the VAE encoder, the mode times the scaling factor;
    /// with the noise `latent_shape`, the loop's [`ImageConditioning`].
    pub fn encode_image(
        &mut self,
        image: &RgbImage,
        size: VideoSize,
        latent_shape: [usize; 5],
    ) -> Result<ImageConditioning, GenerationError> {
        let scale = self.vae_settings()?.scaling_factor as f32;
        let kind = self.image_condition;
        let encoder = loaded(Stage::ImageEncode, self.vae_encoder.as_mut())?;
        let pixels = vae_pixels(image, size.height, size.width);
        let sample = Tensor5::from_vec([1, 3, 1, size.height, size.width], pixels)
            .map_err(|e| PipelineError::Image(e.to_string()))?;
        let mut latent = encoder.encode(&sample)?;
        for x in latent.data_mut() {
            *x *= scale;
        }
        Ok(ImageConditioning::new(kind, latent, latent_shape)?)
    }

    /// The denoising loop from `init` with `sampling`, one [`Progress::Step`] per step;
    /// `cancel` stops it between steps.
    pub fn denoise(
        &mut self,
        sampling: &Sampling,
        init: Tensor5,
        prompt: &TextConditioning,
        negative: Option<&TextConditioning>,
        on_progress: &mut dyn FnMut(Progress),
        cancel: &CancelFlag,
    ) -> Result<Tensor5, GenerationError> {
        self.denoise_from_image(sampling, init, prompt, negative, None, on_progress, cancel)
    }

    /// [`denoise`](Self::denoise) of an image-to-video bundle: `image` feeds and fixes the
    /// latents as its condition type says; `init` are the mixed initial latents
    /// ([`ImageConditioning::initial_latents`]). Returns all latent frames (see
    /// [`ImageConditioning::output_latents`] for what the reference returns).
    #[allow(clippy::too_many_arguments)]
    pub fn denoise_from_image(
        &mut self,
        sampling: &Sampling,
        init: Tensor5,
        prompt: &TextConditioning,
        negative: Option<&TextConditioning>,
        image: Option<&ImageConditioning>,
        on_progress: &mut dyn FnMut(Progress),
        cancel: &CancelFlag,
    ) -> Result<Tensor5, GenerationError> {
        sampling.validate()?;
        self.last_step_cache = None;
        let model = loaded(Stage::Denoise, self.transformer.as_mut())?;
        let settings = sampling.loop_settings(model.takes_guidance());
        match model {
            Denoiser::Staged(staged) => {
                staged.begin(sampling.step_cache, sampling.steps, sampling.true_cfg())
            }
            Denoiser::Single(_) if sampling.step_cache.is_some() => {
                return Err(InvalidSetting::new(
                    Setting::StepCache,
                    "the transformer was loaded as one graph; step caching needs its stage \
                     graphs (load the pipeline with the staged transformer)",
                )
                .into());
            }
            Denoiser::Single(_) => {}
        }
        if let Some(e) = self
            .engines
            .as_ref()
            .filter(|e| e.manifest().backend == BackendKind::TensorRt)
        {
            // TensorRT engines are built for a shape range: refuse a size outside it up front
            // (CPU and CUDA sessions take any shape).
            let mut s = init.shape();
            if let Some(c) = image {
                s[1] = c.model_input(&init).shape()[1];
            }
            let component = match model.form() {
                TransformerForm::Single => {
                    s[0] *= if sampling.true_cfg() { 2 } else { 1 };
                    Component::Transformer
                }
                // The stages run one row at a time.
                TransformerForm::Staged => Component::TransformerEmbed,
            };
            e.check_shape(component, crate::transformer::HIDDEN_STATES, &s)?;
        }
        let mut cancellable = Cancellable { model, cancel };
        let latents = denoise_from_image(
            &mut cancellable,
            init,
            prompt,
            negative,
            &settings,
            image,
            |r, _| {
                on_progress(Progress::Step {
                    step: r.step,
                    steps: r.steps,
                    elapsed: r.elapsed,
                })
            },
        );
        if let Denoiser::Staged(staged) = cancellable.model {
            self.last_step_cache = staged.finish();
        }
        match latents {
            Err(_) if cancel.is_cancelled() => Err(GenerationError::Cancelled {
                stage: Stage::Denoise,
            }),
            other => Ok(other?),
        }
    }

    /// Decode `latents` tile by tile with `tiling`, one [`Progress::Tile`] per decoder call;
    /// `cancel` stops it between tiles.
    pub fn decode(
        &mut self,
        latents: &Tensor5,
        tiling: &TilingConfig,
        on_progress: &mut dyn FnMut(Progress),
        cancel: &CancelFlag,
    ) -> Result<Decoded, GenerationError> {
        let vae = loaded(Stage::Decode, self.vae.as_mut())?;
        let plan = vae.plan(latents.shape(), tiling)?;
        let tiles = plan.decoder_calls();
        let mut tile = 0;
        let video = vae.decode_while(latents, &plan, || {
            tile += 1;
            on_progress(Progress::Tile { tile, tiles });
            !cancel.is_cancelled()
        });
        match video {
            Err(VaeError::Cancelled { .. }) => Err(GenerationError::Cancelled {
                stage: Stage::Decode,
            }),
            other => Ok(Decoded {
                video: other?,
                decoder_calls: tiles,
            }),
        }
    }

    /// One generation: validate `request`, encode the prompts, denoise from the seeded noise
    /// (or the given latents), decode. `on_progress` sees every stage, step and tile; `cancel`
    /// stops the run between steps or tiles with [`GenerationError::Cancelled`].
    pub fn generate(
        &mut self,
        request: &GenerateRequest,
        on_progress: &mut dyn FnMut(Progress),
        cancel: &CancelFlag,
    ) -> Result<Generated, GenerationError> {
        let size = request.validate_for(self.image_condition)?;
        if let Some(stage) = self
            .generation_stages()
            .into_iter()
            .find(|s| !self.stages.contains(s))
        {
            return Err(GenerationError::NotLoaded { stage });
        }
        let init = self.initial_latents(size, request.seed, request.initial_latents.clone())?;
        let mut timings = vec![];

        on_progress(Progress::Stage(Stage::TextEncoders));
        let t = Instant::now();
        let negative = request
            .negative_prompt
            .as_deref()
            .filter(|_| request.sampling.true_cfg());
        let prompts = match &request.image {
            Some(image) => self.encode_with_image(&request.prompt, negative, image, size)?,
            None => self.encode(&request.prompt, negative)?,
        };
        timings.push((Stage::TextEncoders, t.elapsed()));

        let (init, image) = match &request.image {
            Some(image) => {
                on_progress(Progress::Stage(Stage::ImageEncode));
                let t = Instant::now();
                let c = self.encode_image(image, size, init.shape())?;
                timings.push((Stage::ImageEncode, t.elapsed()));
                (c.initial_latents(init), Some(c))
            }
            None => (init, None),
        };

        on_progress(Progress::Stage(Stage::Denoise));
        let t = Instant::now();
        let latents = self.denoise_from_image(
            &request.sampling,
            init,
            &prompts.prompt,
            prompts.negative.as_ref(),
            image.as_ref(),
            on_progress,
            cancel,
        )?;
        timings.push((Stage::Denoise, t.elapsed()));

        on_progress(Progress::Stage(Stage::Decode));
        let t = Instant::now();
        let decoded = self.decode(&latents, &request.tiling, on_progress, cancel)?;
        timings.push((Stage::Decode, t.elapsed()));
        // What the reference returns: latent_concat drops the conditioning frame (its latent
        // and the first four decoded frames).
        let (latents, video) = match &image {
            Some(c) => {
                let [_, _, f, h, w] = decoded.video.shape();
                let drop = c.dropped_video_frames().min(f);
                let video = decoded.video.slice(drop..f, 0..h, 0..w);
                (c.output_latents(latents), video)
            }
            None => (latents, decoded.video),
        };
        Ok(Generated {
            latents,
            video,
            seed: request.initial_latents.is_none().then_some(request.seed),
            truncated: prompts.truncated,
            decoder_calls: decoded.decoder_calls,
            timings,
            step_cache: self.last_step_cache.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_validated_naming_the_setting() {
        let ok = GenerateRequest {
            height: 32,
            width: 48,
            frames: 9,
            ..GenerateRequest::new("a cat")
        };
        assert!(ok.validate().is_ok());
        let cases: [(GenerateRequest, Setting); 9] = [
            (GenerateRequest::new("  "), Setting::Prompt),
            (
                GenerateRequest {
                    height: 30,
                    ..ok.clone()
                },
                Setting::Height,
            ),
            (
                GenerateRequest {
                    width: 0,
                    ..ok.clone()
                },
                Setting::Width,
            ),
            (
                GenerateRequest {
                    frames: 8,
                    ..ok.clone()
                },
                Setting::Frames,
            ),
            (
                GenerateRequest {
                    sampling: Sampling {
                        steps: 0,
                        ..ok.sampling
                    },
                    ..ok.clone()
                },
                Setting::Steps,
            ),
            (
                GenerateRequest {
                    sampling: Sampling {
                        flow_shift: -1.0,
                        ..ok.sampling
                    },
                    ..ok.clone()
                },
                Setting::FlowShift,
            ),
            (
                GenerateRequest {
                    sampling: Sampling {
                        cfg_scale: f32::NAN,
                        ..ok.sampling
                    },
                    ..ok.clone()
                },
                Setting::CfgScale,
            ),
            (
                GenerateRequest {
                    sampling: Sampling {
                        cfg_scale: 4.0,
                        ..ok.sampling
                    },
                    ..ok.clone()
                },
                Setting::NegativePrompt,
            ),
            (
                GenerateRequest {
                    tiling: TilingConfig {
                        spatial: Some(crate::vae_tiling::SpatialTiling {
                            tile: 256,
                            stride: 300,
                        }),
                        ..TilingConfig::default()
                    },
                    ..ok.clone()
                },
                Setting::TileStride,
            ),
        ];
        for (req, want) in cases {
            match req.validate() {
                Ok(_) => panic!("{want}: accepted"),
                Err(e) => assert_eq!(e.setting, want),
            }
        }
    }

    #[test]
    fn a_cancel_flag_is_shared_by_its_clones() {
        let a = CancelFlag::new();
        let b = a.clone();
        assert!(!b.is_cancelled());
        a.cancel();
        assert!(b.is_cancelled());
    }
}
