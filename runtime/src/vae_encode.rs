//! The VAE encoder stage of the runtime: an engine for the bundle's `vae_encoder` graph (or
//! the engine built from it), run on video in [-1, 1] — image-to-video's one conditioning
//! frame, `[1, 3, 1, H, W]`, or any `[B, 3, T, H, W]` — to the latent distribution's mode.
//! Mirrors the image step of diffusers `HunyuanVideoImageToVideoPipeline.prepare_latents`,
//! `vae.encode(image).latent_dist.mode()`, before its multiplication by the scaling factor
//! (the caller's). One untiled pass: what diffusers does for one frame (it encodes more than 16
//! frames in overlapping chunks, and large images in tiles with `enable_tiling()`).

use hyvideo_bundle::components::vae_encoder::{INPUT, OUTPUT};
use hyvideo_bundle::{Component, ManifestError, VaeSettings};
use hyvideo_engines::{BackendKind, Engine, EngineError, Input, SessionConfig};

use crate::engine_set::{EngineSet, EngineSetError, ModelFileError, ModelFiles};
use crate::tensor::Tensor5;

const COMPONENT: Component = Component::VaeEncoder;

#[derive(Debug, thiserror::Error)]
pub enum VaeEncodeError {
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error(transparent)]
    ModelFile(#[from] ModelFileError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    EngineSet(#[from] EngineSetError),
    #[error("{}: {reason}; re-export it with `hyvideo-export onnx --components vae_encoder`", .bundle.display())]
    Record {
        bundle: std::path::PathBuf,
        reason: String,
    },
    #[error("vae_encoder input `{INPUT}` of shape {shape:?}: {reason}")]
    Sample { shape: [usize; 5], reason: String },
    #[error(
        "vae_encoder returned `{OUTPUT}` of shape {found:?} for `{INPUT}` {sample:?}; expected {expected:?}"
    )]
    OutputShape {
        sample: [usize; 5],
        found: Vec<usize>,
        expected: [usize; 5],
    },
}

/// The loaded `vae_encoder` graph.
pub struct VaeEncoder {
    engine: Engine,
    settings: VaeSettings,
    /// The colour channels its input takes (as the manifest records the graph's input).
    channels: usize,
    /// The engines it was loaded from, whose profile its inputs must fit.
    engines: Option<EngineSet>,
}

impl VaeEncoder {
    /// Load the `vae_encoder` model `files` resolves (a built engine or the bundle's graph).
    pub fn load_with(
        files: &ModelFiles<'_>,
        config: &SessionConfig,
    ) -> Result<VaeEncoder, VaeEncodeError> {
        let kind = config.backend.kind();
        let path = files.path(COMPONENT, kind)?;
        let record = |reason: &str| VaeEncodeError::Record {
            bundle: files.bundle.into(),
            reason: reason.into(),
        };
        let settings = files
            .manifest
            .vae
            .clone()
            .ok_or_else(|| record("the manifest has a vae_encoder but no `vae` settings"))?;
        let channels = files
            .manifest
            .component(files.bundle, COMPONENT)?
            .input(INPUT)
            .and_then(|t| t.fixed(1))
            .ok_or_else(|| record("the manifest records no channel count of `sample`"))?;
        let engines = files
            .engines
            .filter(|e| e.manifest().backend == kind && e.path(COMPONENT).is_some())
            .cloned();
        let engine = crate::graph_load::load_engine(&path, config)?;
        Ok(VaeEncoder {
            engine,
            settings,
            channels,
            engines,
        })
    }

    pub fn settings(&self) -> &VaeSettings {
        &self.settings
    }

    pub fn provider(&self) -> BackendKind {
        self.engine.provider()
    }

    /// Where ONNX Runtime placed the graph's nodes (which providers actually run it).
    pub fn placement(&self) -> &hyvideo_engines::Placement {
        self.engine.placement()
    }

    /// The latents of a sample of `shape`: `[B, Cz, (T - 1) / 4 + 1, ⌈H / 8⌉, ⌈W / 8⌉]` (this
    /// VAE's ratios; its strided convolutions round sizes up).
    pub fn latent_shape(&self, shape: [usize; 5]) -> [usize; 5] {
        let (sr, tr) = (
            self.settings.spatial_compression_ratio,
            self.settings.temporal_compression_ratio,
        );
        let [b, _, t, h, w] = shape;
        [
            b,
            self.settings.latent_channels,
            t.saturating_sub(1) / tr + 1,
            h.div_ceil(sr),
            w.div_ceil(sr),
        ]
    }

    /// Encode `sample` (`[B, 3, T, H, W]`, values in [-1, 1]) to the latent distribution's mode,
    /// not multiplied by the scaling factor.
    pub fn encode(&mut self, sample: &Tensor5) -> Result<Tensor5, VaeEncodeError> {
        let shape = sample.shape();
        let bad = |reason: String| VaeEncodeError::Sample { shape, reason };
        if shape[1] != self.channels {
            return Err(bad(format!("must have {} channels", self.channels)));
        }
        if shape.contains(&0) {
            return Err(bad("has an empty dimension".into()));
        }
        if let Some(e) = &self.engines {
            e.check_shape(COMPONENT, INPUT, &shape)?;
        }
        let out = self.engine.run_one(
            &[(
                INPUT,
                Input::F32 {
                    shape: &shape,
                    data: sample.data(),
                },
            )],
            OUTPUT,
        )?;
        let expected = self.latent_shape(shape);
        if out.shape != expected {
            return Err(VaeEncodeError::OutputShape {
                sample: shape,
                found: out.shape,
                expected,
            });
        }
        Ok(Tensor5::from_vec(expected, out.data).expect("engine output length matches its shape"))
    }
}
