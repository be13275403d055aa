//! Command-line arguments shared by both binaries' subcommands: the session (backend, device,
//! threads, library), the runtime (engines, per-component backends), sampling and VAE tiling
//! flags (names follow Tencent's `sample_video.py` where it has one), the flag of each library
//! [`Setting`], and the one-line error chain both binaries print.

use std::path::PathBuf;

use clap::Args;
use hyvideo_bundle::ImageCondition;
use hyvideo_engines::{Backend, BackendKind, SessionConfig};

use hyvideo::denoiser::TransformerForm;
use hyvideo::generation::{InvalidSetting, Sampling, Setting, StageConfigs, TextEncoderResidency};
use hyvideo::scheduler::FlowDirection;
use hyvideo::step_cache::{StepCache, StepCacheMethod, parse_step_cache};
use hyvideo::vae_tiling::{self, SpatialTiling, TemporalTiling, TilingConfig};

/// Where and how ONNX Runtime runs: what every command that loads graphs takes
/// (`hyvideo-export build` and `calibrate` take only these).
#[derive(Debug, Clone, Args)]
pub struct SessionArgs {
    /// Execution provider: cpu, cuda or tensorrt (GPU ones need the matching cargo feature and
    /// the onnxruntime-gpu library). A provider that cannot run is an error, never a fallback.
    #[arg(long, default_value = "cpu", value_parser = parse_backend)]
    pub backend: BackendKind,
    /// CUDA device for the cuda / tensorrt backends.
    #[arg(long, default_value_t = 0)]
    pub device_id: i32,
    /// Intra-op threads for ONNX Runtime (default: one per physical core).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Path of libonnxruntime.so (default: ORT_DYLIB_PATH, then the copy scripts/setup.sh puts
    /// in .ort/lib/).
    #[arg(long)]
    pub ort_lib: Option<PathBuf>,
}

impl SessionArgs {
    pub fn session_config(&self) -> SessionConfig {
        self.session_config_on(self.backend)
    }

    fn session_config_on(&self, kind: BackendKind) -> SessionConfig {
        let backend = match kind {
            BackendKind::Cpu => Backend::Cpu,
            BackendKind::Cuda => Backend::Cuda {
                device_id: self.device_id,
            },
            BackendKind::TensorRt => Backend::TensorRt {
                device_id: self.device_id,
                options: Default::default(),
            },
        };
        SessionConfig::default()
            .with_backend(backend)
            .with_intra_threads(self.threads)
            .with_ort_lib(self.ort_lib.clone())
    }
}

/// The session flags plus what running a bundle takes: built engines and per-component
/// providers (`hyvideo generate`, `denoise`, `decode`, `bench`).
#[derive(Debug, Clone, Args)]
pub struct RuntimeArgs {
    #[command(flatten)]
    pub session: SessionArgs,
    /// Engines built by `hyvideo-export build` to run instead of the bundle's graphs; refused
    /// when built for another device, runtime version or bundle.
    #[arg(long)]
    pub engines: Option<PathBuf>,
    /// With --engines: rebuild engines built for another machine or bundle (from the shape
    /// preset they record) instead of refusing them.
    #[arg(long, requires = "engines")]
    pub rebuild: bool,
    /// Execution provider for the transformer only (default: --backend).
    #[arg(long, value_parser = parse_backend)]
    pub transformer_backend: Option<BackendKind>,
    /// Execution provider for the VAE decoder only (default: --backend).
    #[arg(long, value_parser = parse_backend)]
    pub vae_backend: Option<BackendKind>,
    /// Execution provider for the two text encoders (default: --backend).
    #[arg(long, value_parser = parse_backend)]
    pub text_backend: Option<BackendKind>,
    /// Load the text encoders for each prompt and release them before the denoising loop (for a
    /// GPU that cannot hold the Llama encoder beside the transformer; costs a load per video).
    #[arg(long)]
    pub release_text_encoders: bool,
}

fn parse_flow_direction(s: &str) -> Result<FlowDirection, String> {
    s.parse()
}

fn parse_backend(s: &str) -> Result<BackendKind, String> {
    s.parse::<BackendKind>().map_err(|e| e.to_string())
}

impl RuntimeArgs {
    /// The `--engines` directory opened and checked against this machine and `bundle`.
    pub fn engine_set(
        &self,
        bundle: &std::path::Path,
    ) -> Result<Option<hyvideo::engine_set::EngineSet>, crate::engine_build::BuildError> {
        self.engines
            .as_deref()
            .map(|dir| {
                crate::engine_build::open_or_rebuild(
                    dir,
                    bundle,
                    &self.session.session_config(),
                    self.session.device_id,
                    self.rebuild,
                )
            })
            .transpose()
    }

    /// The session settings of `component`: its own backend flag, else `--backend`.
    pub fn config_for(&self, component: hyvideo_bundle::Component) -> SessionConfig {
        use hyvideo_bundle::Component as C;
        let kind = match component {
            C::Transformer
            | C::TransformerEmbed
            | C::TransformerFirstBlock
            | C::TransformerRestBlocks
            | C::TransformerHead => self.transformer_backend,
            C::VaeDecoder | C::VaeEncoder => self.vae_backend,
            C::TextEncoder | C::TextEncoder2 | C::VisionEncoder => self.text_backend,
        }
        .unwrap_or(self.session.backend);
        self.session.session_config_on(kind)
    }

    pub fn session_config(&self) -> SessionConfig {
        self.session.session_config()
    }

    /// The session settings of every stage, the transformer loaded in `form`.
    pub fn stage_configs(&self, form: TransformerForm) -> StageConfigs {
        use hyvideo_bundle::Component as C;
        StageConfigs {
            transformer_form: form,
            text: self.config_for(C::TextEncoder),
            transformer: self.config_for(C::Transformer),
            vae: self.config_for(C::VaeDecoder),
            text_residency: match self.release_text_encoders {
                true => TextEncoderResidency::ReleasedAfterUse,
                false => TextEncoderResidency::Resident,
            },
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct TilingArgs {
    /// Spatial tile size of the VAE decode, in output pixels (diffusers `enable_tiling()` default).
    #[arg(long, default_value_t = vae_tiling::DEFAULT_TILE_SIZE)]
    pub vae_tile_size: usize,
    /// Spatial tile stride, in output pixels; tiles overlap by size − stride and are blended.
    #[arg(long, default_value_t = vae_tiling::DEFAULT_TILE_STRIDE)]
    pub vae_tile_stride: usize,
    /// Frames per temporal tile (frame-wise decoding).
    #[arg(long, default_value_t = vae_tiling::DEFAULT_TILE_FRAMES)]
    pub vae_tile_frames: usize,
    /// Temporal tile stride, in frames.
    #[arg(long, default_value_t = vae_tiling::DEFAULT_TILE_STRIDE_FRAMES)]
    pub vae_tile_stride_frames: usize,
    /// Decode each frame chunk whole instead of in spatial tiles (more memory).
    #[arg(long)]
    pub no_vae_tiling: bool,
    /// Decode all frames at once instead of frame-wise temporal tiles (much more memory).
    #[arg(long)]
    pub no_vae_framewise: bool,
}

impl TilingArgs {
    pub fn config(&self) -> TilingConfig {
        TilingConfig {
            spatial: (!self.no_vae_tiling).then_some(SpatialTiling {
                tile: self.vae_tile_size,
                stride: self.vae_tile_stride,
            }),
            temporal: (!self.no_vae_framewise).then_some(TemporalTiling {
                tile: self.vae_tile_frames,
                stride: self.vae_tile_stride_frames,
            }),
            ..TilingConfig::default()
        }
    }
}

/// Sampling flags, named as in Tencent's `sample_video.py`.
#[derive(Debug, Clone, Args)]
pub struct SamplingArgs {
    /// Number of denoising steps.
    #[arg(long, default_value_t = 50)]
    pub infer_steps: usize,
    /// Embedded (distilled) guidance scale, given to the transformer as scale·1000 (default
    /// 6.0; 1.0 for an image_condition_type latent_concat bundle, HunyuanVideo-I2V-33ch).
    #[arg(long)]
    pub embedded_cfg_scale: Option<f32>,
    /// Flow-matching time shift s in σ' = s·σ / (1 + (s−1)·σ).
    #[arg(long, default_value_t = 7.0)]
    pub flow_shift: f32,
    /// Direction of the flow-matching schedule: `reverse` samples t = 1 (noise) → 0 (data), as
    /// diffusers and every published HunyuanVideo command do; `forward` runs t = 0 → 1, what
    /// Tencent's `sample_video.py` does without --flow-reverse.
    #[arg(long, default_value = "reverse", value_parser = parse_flow_direction)]
    pub flow_direction: FlowDirection,
    /// Accepted so commands copied from Tencent's `sample_video.py` run; changes nothing, since
    /// t = 1 → 0 is already the default (the other direction is --flow-direction forward).
    #[arg(long, conflicts_with = "flow_direction")]
    pub flow_reverse: bool,
    /// True classifier-free guidance scale; > 1 runs the negative prompt too (one B = 2 call).
    #[arg(long, default_value_t = 1.0)]
    pub cfg_scale: f32,
    #[command(flatten)]
    pub step_cache: StepCacheArgs,
}

/// Step-cache flags (generate, denoise, bench).
#[derive(Debug, Clone, Args)]
pub struct StepCacheArgs {
    /// Step caching: `teacache` (TeaCache4HunyuanVideo: skips every block on steps whose first
    /// block input barely changed) or `fbcache` (First-Block Cache: runs the first block, skips
    /// the rest when its output barely changed); `none` computes every step exactly. Loads the
    /// transformer's stage graphs.
    #[arg(long, default_value = "none", value_parser = parse_step_cache_flag)]
    pub step_cache: StepCacheFlag,
    /// The step cache's threshold (default 0.15 for teacache, 0.05 for fbcache; 0 never skips).
    #[arg(long, requires = "step_cache", allow_negative_numbers = true)]
    pub step_cache_threshold: Option<f64>,
    /// First step (0-based) the cache may skip; earlier steps are always computed.
    #[arg(long, default_value_t = 0, requires = "step_cache")]
    pub step_cache_start: usize,
    /// Step (0-based, exclusive) from which every step is computed again (default: the step
    /// count).
    #[arg(long, requires = "step_cache")]
    pub step_cache_end: Option<usize>,
}

impl SamplingArgs {
    /// The sampling of these flags for a bundle whose transformer takes images as `kind` (the
    /// embedded guidance default depends on it).
    pub fn sampling(&self, kind: ImageCondition) -> Sampling {
        Sampling {
            steps: self.infer_steps,
            embedded_guidance: self.embedded_guidance(kind),
            flow_shift: self.flow_shift,
            direction: self.flow_direction,
            cfg_scale: self.cfg_scale,
            step_cache: self.step_cache.step_cache(),
        }
    }

    /// `--embedded-cfg-scale`, else the default for `kind`.
    pub fn embedded_guidance(&self, kind: ImageCondition) -> f32 {
        self.embedded_cfg_scale
            .unwrap_or_else(|| Sampling::default_embedded_guidance(kind))
    }

    /// The transformer form these settings need: its stages with a step cache.
    pub fn transformer_form(&self) -> TransformerForm {
        self.step_cache.transformer_form()
    }
}

impl StepCacheArgs {
    /// The step cache the flags ask for (`None` with `--step-cache none`).
    pub fn step_cache(&self) -> Option<StepCache> {
        self.step_cache.0.map(|method| StepCache {
            threshold: self
                .step_cache_threshold
                .unwrap_or(method.default_threshold()),
            start: self.step_cache_start,
            end: self.step_cache_end,
            ..StepCache::new(method)
        })
    }

    /// The transformer form they need: its stages with a step cache.
    pub fn transformer_form(&self) -> TransformerForm {
        match self.step_cache.0 {
            Some(_) => TransformerForm::Staged,
            None => TransformerForm::Single,
        }
    }
}

/// `--step-cache`: a method, or `none`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepCacheFlag(pub Option<StepCacheMethod>);

fn parse_step_cache_flag(s: &str) -> Result<StepCacheFlag, String> {
    parse_step_cache(s).map(StepCacheFlag)
}

/// The `hyvideo` flag of a request setting (how the library's setting errors are shown).
pub fn setting_flag(setting: Setting) -> &'static str {
    match setting {
        Setting::Prompt => "--prompt",
        Setting::NegativePrompt => "--neg-prompt",
        Setting::Height => "--video-size height",
        Setting::Width => "--video-size width",
        Setting::Frames => "--video-length",
        Setting::Steps => "--infer-steps",
        Setting::EmbeddedGuidance => "--embedded-cfg-scale",
        Setting::FlowShift => "--flow-shift",
        Setting::CfgScale => "--cfg-scale",
        Setting::Seed => "--seed",
        Setting::InitialLatents => "--latents",
        Setting::TileSize => "--vae-tile-size",
        Setting::TileStride => "--vae-tile-stride",
        Setting::TileFrames => "--vae-tile-frames",
        Setting::TileStrideFrames => "--vae-tile-stride-frames",
        Setting::StepCache => "--step-cache",
        Setting::StepCacheThreshold => "--step-cache-threshold",
        Setting::StepCacheStart => "--step-cache-start",
        Setting::StepCacheEnd => "--step-cache-end",
        Setting::Image => "--image",
    }
}

/// A setting error with the setting named by its flag.
pub fn flagged_message(e: &InvalidSetting) -> String {
    format!("{}: {}", setting_flag(e.setting), e.reason)
}

/// An error and its causes on one line, as the binaries print it: each cause appended after
/// `": "` unless the message so far already says it (many errors here format their source
/// into their own message, which anyhow's `{:#}` would repeat).
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
}

#[cfg(test)]
mod error_chain_tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("{path}: {source}")]
    struct Said {
        path: String,
        source: std::io::Error,
    }

    #[derive(Debug, thiserror::Error)]
    #[error("loading")]
    struct Outer(#[source] Said);

    #[test]
    fn causes_are_named_once() {
        let e = Outer(Said {
            path: "a/manifest.yaml".into(),
            source: std::io::Error::other("no such file"),
        });
        assert_eq!(error_chain(&e), "loading: a/manifest.yaml: no such file");
    }
}
