//! The denoising loop's model as a pipeline loads it: the transformer's single graph, or its
//! four stage graphs (needed for step caching; see [`crate::staged_transformer`]). Either one is
//! loaded, never both, so only one copy of the weights is in memory.

use hyvideo_bundle::AttentionKernel;
use hyvideo_engines::{BackendKind, Placement};

use crate::staged_transformer::StagedTransformer;
use crate::tensor::Tensor5;
use crate::transformer::{StepInput, Transformer, TransformerError, VelocityModel};

/// Which graphs of the transformer a pipeline loads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TransformerForm {
    /// The single `transformer` graph: the fastest without step caching.
    #[default]
    Single,
    /// The four stage graphs: step caching can skip blocks; without a cache every stage runs
    /// (the same numbers as the single graph).
    Staged,
}

/// The loaded transformer, in one form or the other.
pub enum Denoiser {
    Single(Transformer),
    Staged(Box<StagedTransformer>),
}

impl Denoiser {
    pub fn form(&self) -> TransformerForm {
        match self {
            Denoiser::Single(_) => TransformerForm::Single,
            Denoiser::Staged(_) => TransformerForm::Staged,
        }
    }

    pub fn provider(&self) -> BackendKind {
        match self {
            Denoiser::Single(t) => t.provider(),
            Denoiser::Staged(t) => t.provider(),
        }
    }

    pub fn placement(&self) -> &Placement {
        match self {
            Denoiser::Single(t) => t.placement(),
            Denoiser::Staged(t) => t.placement(),
        }
    }

    /// The attention implementation the blocks run.
    pub fn attention(&self) -> AttentionKernel {
        match self {
            Denoiser::Single(t) => t.attention(),
            Denoiser::Staged(t) => t.attention(),
        }
    }

    pub fn takes_guidance(&self) -> bool {
        match self {
            Denoiser::Single(t) => t.takes_guidance(),
            Denoiser::Staged(t) => t.takes_guidance(),
        }
    }
}

impl VelocityModel for Denoiser {
    fn predict(&mut self, input: &StepInput<'_>) -> Result<Tensor5, TransformerError> {
        match self {
            Denoiser::Single(t) => t.predict(input),
            Denoiser::Staged(t) => t.predict(input),
        }
    }
}
