//! The VAE decoder stage of the runtime: an engine for the bundle's `vae_decoder` graph driven
//! tile by tile ([`crate::vae_tiling`]). Mirrors the decode step of diffusers
//! `HunyuanVideoPipeline.__call__`: `vae.decode(latents / scaling_factor)`.

use hyvideo_bundle::{Component, ManifestError, VaeSettings};
use hyvideo_engines::{BackendKind, Engine, EngineError, Input, SessionConfig};

use crate::engine_set::{ModelFileError, ModelFiles};
use crate::tensor::Tensor5;
use crate::vae_tiling::{TilePlan, TilingConfig, TilingError, decode_tiled};

#[derive(Debug, thiserror::Error)]
pub enum VaeError {
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error(transparent)]
    ModelFile(#[from] ModelFileError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Tiling(#[from] TilingError),
    #[error("{}: manifest has a vae_decoder but no `vae` settings", .0.display())]
    NoSettings(std::path::PathBuf),
    #[error(
        "vae_decoder returned shape {found:?} for a tile of latents {latents:?}; expected {expected:?}"
    )]
    OutputShape {
        latents: [usize; 5],
        found: Vec<usize>,
        expected: [usize; 5],
    },
    #[error("latents must have {expected} channels, got shape {shape:?}")]
    Channels { expected: usize, shape: [usize; 5] },
    #[error("decoding was cancelled after {tiles} tile(s)")]
    Cancelled { tiles: usize },
}

pub struct VaeDecoder {
    engine: Engine,
    settings: VaeSettings,
}

impl VaeDecoder {
    /// Load the `vae_decoder` model `files` resolves (a built engine or the bundle's graph).
    pub fn load_with(
        files: &ModelFiles<'_>,
        config: &SessionConfig,
    ) -> Result<VaeDecoder, VaeError> {
        let path = files.path(Component::VaeDecoder, config.backend.kind())?;
        let settings = files
            .manifest
            .vae
            .clone()
            .ok_or_else(|| VaeError::NoSettings(files.bundle.into()))?;
        let engine = crate::graph_load::load_engine(&path, config)?;
        Ok(VaeDecoder { engine, settings })
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

    /// The tile plan for latents of `shape` under `tiling` (with this VAE's ratios).
    pub fn plan(&self, shape: [usize; 5], tiling: &TilingConfig) -> Result<TilePlan, VaeError> {
        let cfg = TilingConfig {
            spatial_ratio: self.settings.spatial_compression_ratio,
            temporal_ratio: self.settings.temporal_compression_ratio,
            ..*tiling
        };
        Ok(TilePlan::new(shape, self.settings.out_channels, &cfg)?)
    }

    /// Run the graph once on latents already divided by the scaling factor.
    pub fn decode_tile(&mut self, z: &Tensor5) -> Result<Tensor5, VaeError> {
        let shape = z.shape();
        let out = self.engine.run_one(
            &[(
                hyvideo_bundle::components::vae_decoder::INPUT,
                Input::F32 {
                    shape: &shape,
                    data: z.data(),
                },
            )],
            hyvideo_bundle::components::vae_decoder::OUTPUT,
        )?;
        let (sr, tr) = (
            self.settings.spatial_compression_ratio,
            self.settings.temporal_compression_ratio,
        );
        let expected = [
            shape[0],
            self.settings.out_channels,
            (shape[2] - 1) * tr + 1,
            shape[3] * sr,
            shape[4] * sr,
        ];
        let found: [usize; 5] =
            out.shape
                .clone()
                .try_into()
                .map_err(|_| VaeError::OutputShape {
                    latents: shape,
                    found: out.shape.clone(),
                    expected,
                })?;
        if found != expected {
            return Err(VaeError::OutputShape {
                latents: shape,
                found: out.shape,
                expected,
            });
        }
        Ok(Tensor5::from_vec(found, out.data).expect("engine output length matches its shape"))
    }

    /// Decode latents (before division by the scaling factor) to video in [-1, 1], following
    /// `plan`; `on_tile` is called after every decoder call.
    pub fn decode(
        &mut self,
        latents: &Tensor5,
        plan: &TilePlan,
        mut on_tile: impl FnMut(),
    ) -> Result<Tensor5, VaeError> {
        self.decode_while(latents, plan, || {
            on_tile();
            true
        })
    }

    /// [`decode`](Self::decode) where `on_tile`, called after every decoder call, says whether
    /// to go on: `false` stops before the next tile with [`VaeError::Cancelled`].
    pub fn decode_while(
        &mut self,
        latents: &Tensor5,
        plan: &TilePlan,
        mut on_tile: impl FnMut() -> bool,
    ) -> Result<Tensor5, VaeError> {
        if latents.shape()[1] != self.settings.latent_channels {
            return Err(VaeError::Channels {
                expected: self.settings.latent_channels,
                shape: latents.shape(),
            });
        }
        let mut z = latents.clone();
        z.scale_div(self.settings.scaling_factor as f32);
        let done = std::cell::Cell::new(0usize);
        let go_on = std::cell::Cell::new(true);
        decode_tiled(
            &z,
            plan,
            |tile| {
                if !go_on.get() {
                    return Err(VaeError::Cancelled { tiles: done.get() });
                }
                self.decode_tile(tile)
            },
            || {
                done.set(done.get() + 1);
                go_on.set(on_tile());
            },
        )
    }
}
