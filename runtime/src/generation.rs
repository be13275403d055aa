//! [`Pipeline`]: a bundle's three stages loaded once (text encoders, transformer, VAE decoder,
//! from the bundle's graphs or built engines), then any number of prompt-to-video
//! [`generate`](Pipeline::generate) calls — what `hyvideo generate` and a server drive.
//!
//! Mirrors diffusers `HunyuanVideoPipeline.__call__` (encode prompts, prepare latents, the
//! denoising loop, decode), with what a long-running front end needs on top: typed
//! [`Progress`] events (stage, step i of N, tile i of N) delivered to a callback,
//! cooperative cancellation ([`CancelFlag`], checked between denoising steps and between decode
//! tiles) and request validation whose errors name the *setting* ([`Setting`]), which a front
//! end maps to its own flags or fields.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use hyvideo_bundle::{Component, Manifest, ManifestError};
use hyvideo_engines::{BackendKind, SessionConfig};

use crate::denoise::{DenoiseError, DenoiseSettings, TrueCfg, denoise};
use crate::engine_set::{EngineSet, EngineSetError, ModelFiles};
use crate::pipeline::{PipelineError, SizeDimension, TextEncoders, VideoSize, initial_latents};
use crate::scheduler::FlowDirection;
use crate::tensor::Tensor5;
use crate::transformer::{StepInput, Transformer, TransformerError, VelocityModel};
use crate::vae::{VaeDecoder, VaeError};
use crate::vae_tiling::TilingConfig;

/// A setting of a [`GenerateRequest`], as errors name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setting {
    Prompt,
    NegativePrompt,
    Height,
    Width,
    Frames,
    Steps,
    EmbeddedGuidance,
    FlowShift,
    CfgScale,
    InitialLatents,
}

impl std::fmt::Display for Setting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Setting::Prompt => "prompt",
            Setting::NegativePrompt => "negative prompt",
            Setting::Height => "height",
            Setting::Width => "width",
            Setting::Frames => "frames",
            Setting::Steps => "steps",
            Setting::EmbeddedGuidance => "embedded guidance scale",
            Setting::FlowShift => "flow shift",
            Setting::CfgScale => "cfg scale",
            Setting::InitialLatents => "initial latents",
        })
    }
}

/// A stage of one generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    TextEncoders,
    Denoise,
    Decode,
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Stage::TextEncoders => "text encoders",
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

/// One video to make. [`GenerateRequest::new`] gives Tencent's `sample_video.py` defaults
/// (720 × 1280, 129 frames, 50 steps, embedded guidance 6, shift 7, t = 1 → 0).
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateRequest {
    pub prompt: String,
    /// Used with `cfg_scale` > 1 (true classifier-free guidance).
    pub negative_prompt: Option<String>,
    pub height: usize,
    pub width: usize,
    pub frames: usize,
    pub steps: usize,
    pub embedded_guidance: f32,
    pub flow_shift: f32,
    pub direction: FlowDirection,
    pub cfg_scale: f32,
    /// Seed of the initial noise (torch's CPU generator stream), unless `initial_latents`.
    pub seed: u64,
    pub initial_latents: Option<Tensor5>,
    pub tiling: TilingConfig,
}

impl GenerateRequest {
    pub fn new(prompt: impl Into<String>) -> GenerateRequest {
        GenerateRequest {
            prompt: prompt.into(),
            negative_prompt: None,
            height: 720,
            width: 1280,
            frames: 129,
            steps: 50,
            embedded_guidance: 6.0,
            flow_shift: 7.0,
            direction: FlowDirection::Reverse,
            cfg_scale: 1.0,
            seed: 0,
            initial_latents: None,
            tiling: TilingConfig::default(),
        }
    }

    fn invalid(setting: Setting, reason: impl Into<String>) -> GenerationError {
        GenerationError::Invalid {
            setting,
            reason: reason.into(),
        }
    }

    /// Every setting checked before any work; the first bad one is named.
    pub fn validate(&self) -> Result<VideoSize, GenerationError> {
        if self.prompt.trim().is_empty() {
            return Err(Self::invalid(Setting::Prompt, "is empty"));
        }
        let size = VideoSize::checked(self.height, self.width, self.frames).map_err(|e| {
            let setting = match e.dimension {
                SizeDimension::Height => Setting::Height,
                SizeDimension::Width => Setting::Width,
                SizeDimension::Frames => Setting::Frames,
            };
            Self::invalid(setting, e.reason)
        })?;
        if self.steps == 0 {
            return Err(Self::invalid(Setting::Steps, "must be at least 1"));
        }
        if !self.embedded_guidance.is_finite() {
            return Err(Self::invalid(
                Setting::EmbeddedGuidance,
                format!("{} is not a number", self.embedded_guidance),
            ));
        }
        if !(self.flow_shift.is_finite() && self.flow_shift > 0.0) {
            return Err(Self::invalid(
                Setting::FlowShift,
                format!("must be a positive number, got {}", self.flow_shift),
            ));
        }
        if !self.cfg_scale.is_finite() {
            return Err(Self::invalid(
                Setting::CfgScale,
                format!("{} is not a number", self.cfg_scale),
            ));
        }
        if self.cfg_scale > 1.0
            && self
                .negative_prompt
                .as_deref()
                .is_none_or(|n| n.trim().is_empty())
        {
            return Err(Self::invalid(
                Setting::NegativePrompt,
                "a cfg scale above 1 (true classifier-free guidance) needs a negative prompt",
            ));
        }
        Ok(size)
    }
}

/// What one generation made.
#[derive(Debug, Clone)]
pub struct Generated {
    /// Final latents `[1, C, t, h, w]`, before the VAE scaling.
    pub latents: Tensor5,
    /// Decoded video `[1, 3, F, H, W]` in [-1, 1].
    pub video: Tensor5,
    /// The seed the noise came from (`None` with initial latents).
    pub seed: Option<u64>,
    /// The prompt (and negative prompt) was cut to fit the tokenizers.
    pub truncated: bool,
    /// VAE decoder calls (tiles) of the decode.
    pub decoder_calls: usize,
    /// Wall time of each stage.
    pub timings: Vec<(Stage, Duration)>,
}

#[derive(Debug, thiserror::Error)]
pub enum GenerationError {
    #[error("{setting}: {reason}")]
    Invalid { setting: Setting, reason: String },
    #[error("cancelled during {stage}")]
    Cancelled { stage: Stage },
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
}

/// Session settings of each stage (their providers may differ).
#[derive(Debug, Clone)]
pub struct StageConfigs {
    pub text: SessionConfig,
    pub transformer: SessionConfig,
    pub vae: SessionConfig,
}

impl StageConfigs {
    /// The same settings for every stage.
    pub fn all(config: SessionConfig) -> StageConfigs {
        StageConfigs {
            text: config.clone(),
            transformer: config.clone(),
            vae: config,
        }
    }
}

/// The loaded stages of one bundle.
pub struct Pipeline {
    manifest: Manifest,
    engines: Option<EngineSet>,
    text: TextEncoders,
    transformer: Transformer,
    vae: VaeDecoder,
}

/// The transformer with a cancellation check before every call.
struct Cancellable<'a> {
    model: &'a mut Transformer,
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

impl Pipeline {
    /// Load `bundle`'s stages (from `engines` where given) with `configs`.
    pub fn load(
        bundle: &Path,
        engines: Option<EngineSet>,
        configs: &StageConfigs,
    ) -> Result<Pipeline, GenerationError> {
        let manifest = Manifest::load(bundle)?;
        let files = ModelFiles {
            bundle,
            manifest: &manifest,
            engines: engines.as_ref(),
        };
        let text = TextEncoders::load_with(&files, &configs.text)?;
        let transformer = Transformer::load_with(&files, &configs.transformer)?;
        let vae = VaeDecoder::load_with(&files, &configs.vae)?;
        Ok(Pipeline {
            manifest,
            engines,
            text,
            transformer,
            vae,
        })
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The transformer stage (its provider and attention, for run records).
    pub fn transformer(&self) -> &Transformer {
        &self.transformer
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
        let size = request.validate()?;
        let settings = self.vae.settings().clone();
        let shape = size.latent_shape(
            settings.latent_channels,
            settings.spatial_compression_ratio,
            settings.temporal_compression_ratio,
        );
        let true_cfg = request.cfg_scale > 1.0;
        if let Some(e) = self
            .engines
            .as_ref()
            .filter(|e| e.manifest().backend == BackendKind::TensorRt)
        {
            // TensorRT engines are built for a shape range: refuse a size outside it up front
            // (CPU and CUDA sessions take any shape).
            let mut s = shape;
            s[0] = if true_cfg { 2 } else { 1 };
            e.check_shape(
                Component::Transformer,
                crate::transformer::HIDDEN_STATES,
                &s,
            )?;
        }
        let init =
            initial_latents(shape, request.seed, request.initial_latents.clone()).map_err(|e| {
                match e {
                    PipelineError::Setting { reason, .. } => {
                        GenerateRequest::invalid(Setting::InitialLatents, reason)
                    }
                    other => GenerationError::Pipeline(other),
                }
            })?;
        let mut timings = vec![];

        on_progress(Progress::Stage(Stage::TextEncoders));
        let t = Instant::now();
        let prompt = self.text.encode(&[request.prompt.as_str()], || {})?;
        let negative = match (&request.negative_prompt, true_cfg) {
            (Some(n), true) => Some(self.text.encode(&[n.as_str()], || {})?),
            _ => None,
        };
        let truncated = [Some(&prompt), negative.as_ref()]
            .into_iter()
            .flatten()
            .any(|e| !e.llama_truncated.is_empty() || !e.clip_truncated.is_empty());
        timings.push((Stage::TextEncoders, t.elapsed()));

        on_progress(Progress::Stage(Stage::Denoise));
        let t = Instant::now();
        let sampling = DenoiseSettings {
            steps: request.steps,
            shift: request.flow_shift,
            direction: request.direction,
            embedded_guidance: self
                .transformer
                .takes_guidance()
                .then_some(request.embedded_guidance),
            true_cfg: true_cfg.then_some(TrueCfg {
                scale: request.cfg_scale,
            }),
        };
        let mut model = Cancellable {
            model: &mut self.transformer,
            cancel,
        };
        let latents = denoise(
            &mut model,
            init,
            &prompt.text,
            negative.as_ref().map(|n| &n.text),
            &sampling,
            |r, _| {
                on_progress(Progress::Step {
                    step: r.step,
                    steps: r.steps,
                    elapsed: r.elapsed,
                })
            },
        );
        let latents = match latents {
            Err(_) if cancel.is_cancelled() => {
                return Err(GenerationError::Cancelled {
                    stage: Stage::Denoise,
                });
            }
            other => other?,
        };
        timings.push((Stage::Denoise, t.elapsed()));

        on_progress(Progress::Stage(Stage::Decode));
        let t = Instant::now();
        let plan = self.vae.plan(latents.shape(), &request.tiling)?;
        let tiles = plan.decoder_calls();
        let mut tile = 0;
        let video = self.vae.decode_while(&latents, &plan, || {
            tile += 1;
            on_progress(Progress::Tile { tile, tiles });
            !cancel.is_cancelled()
        });
        let video = match video {
            Err(VaeError::Cancelled { .. }) => {
                return Err(GenerationError::Cancelled {
                    stage: Stage::Decode,
                });
            }
            other => other?,
        };
        timings.push((Stage::Decode, t.elapsed()));
        Ok(Generated {
            latents,
            video,
            seed: request.initial_latents.is_none().then_some(request.seed),
            truncated,
            decoder_calls: tiles,
            timings,
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
        let cases: [(GenerateRequest, Setting); 8] = [
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
                    steps: 0,
                    ..ok.clone()
                },
                Setting::Steps,
            ),
            (
                GenerateRequest {
                    flow_shift: -1.0,
                    ..ok.clone()
                },
                Setting::FlowShift,
            ),
            (
                GenerateRequest {
                    cfg_scale: f32::NAN,
                    ..ok.clone()
                },
                Setting::CfgScale,
            ),
            (
                GenerateRequest {
                    cfg_scale: 4.0,
                    ..ok.clone()
                },
                Setting::NegativePrompt,
            ),
        ];
        for (req, want) in cases {
            match req.validate() {
                Err(GenerationError::Invalid { setting, .. }) => assert_eq!(setting, want),
                other => panic!("{want}: {other:?}"),
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
