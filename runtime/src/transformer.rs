//! The transformer stage of the runtime: text conditioning, the [`VelocityModel`] the denoising
//! loop drives, and its implementation on the bundle's `transformer` graph (any backend).
//!
//! Mirrors the transformer call inside diffusers `HunyuanVideoPipeline.__call__`:
//! `transformer(hidden_states=latents, timestep=t.expand(B), encoder_hidden_states=prompt_embeds,
//! encoder_attention_mask=prompt_attention_mask, pooled_projections=pooled_prompt_embeds,
//! guidance=guidance)`, except that the mask is applied by cropping: each row's text is cut to
//! its valid tokens before the graph sees it (the graph has no mask input; see
//! [`Transformer::predict_observed`]).

use std::path::Path;

use hyvideo_bundle::AttentionKernel;
use hyvideo_bundle::{Component, ManifestError};
use hyvideo_engines::{BackendKind, Engine, EngineError, Input, SessionConfig};

use crate::engine_set::{ModelFileError, ModelFiles};
use crate::tensor::Tensor5;

/// Graph I/O names, as the bundle contract declares them.
pub use hyvideo_bundle::components::transformer::{
    ENCODER_HIDDEN_STATES, GUIDANCE, HIDDEN_STATES, OUTPUT, POOLED_PROJECTIONS, TIMESTEP,
};

#[derive(Debug, thiserror::Error)]
pub enum TransformerError {
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error(transparent)]
    ModelFile(#[from] ModelFileError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("{what}: {reason}")]
    Input { what: &'static str, reason: String },
    #[error("transformer returned shape {found:?} for latents {expected:?}")]
    OutputShape {
        found: Vec<usize>,
        expected: [usize; 5],
    },
}

fn input_err(what: &'static str, reason: String) -> TransformerError {
    TransformerError::Input { what, reason }
}

/// Prompt embeddings as the transformer reads them: `embeds` [B, L, D], `mask` [B, L]
/// (1 = token, right-padded), `pooled` [B, P].
#[derive(Debug, Clone, PartialEq)]
pub struct TextConditioning {
    batch: usize,
    len: usize,
    dim: usize,
    pooled_dim: usize,
    embeds: Vec<f32>,
    mask: Vec<i64>,
    pooled: Vec<f32>,
}

impl TextConditioning {
    /// Check the shapes agree: `embeds` [B, L, D], `mask` [B, L], `pooled` [B, P].
    pub fn new(
        embeds: (&[usize], Vec<f32>),
        mask: (&[usize], Vec<i64>),
        pooled: (&[usize], Vec<f32>),
    ) -> Result<TextConditioning, TransformerError> {
        let [b, l, d] = <[usize; 3]>::try_from(embeds.0).map_err(|_| {
            input_err(
                "prompt embeddings",
                format!("shape {:?} is not [batch, tokens, dim]", embeds.0),
            )
        })?;
        if mask.0 != [b, l] {
            return Err(input_err(
                "prompt attention mask",
                format!("shape {:?}, expected [{b}, {l}]", mask.0),
            ));
        }
        let [pb, p] = <[usize; 2]>::try_from(pooled.0).map_err(|_| {
            input_err(
                "pooled prompt embeddings",
                format!("shape {:?} is not [batch, dim]", pooled.0),
            )
        })?;
        if pb != b {
            return Err(input_err(
                "pooled prompt embeddings",
                format!("batch {pb}, but the prompt embeddings have {b}"),
            ));
        }
        let sizes = [
            ("prompt embeddings", embeds.1.len(), b * l * d),
            ("prompt attention mask", mask.1.len(), b * l),
            ("pooled prompt embeddings", pooled.1.len(), b * p),
        ];
        for (what, got, want) in sizes {
            if got != want {
                return Err(input_err(what, format!("{got} values, shape needs {want}")));
            }
        }
        Ok(TextConditioning {
            batch: b,
            len: l,
            dim: d,
            pooled_dim: p,
            embeds: embeds.1,
            mask: mask.1,
            pooled: pooled.1,
        })
    }

    pub fn batch(&self) -> usize {
        self.batch
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// `[B, L, D]` prompt embeddings.
    pub fn embeds(&self) -> &[f32] {
        &self.embeds
    }

    /// `[B, L]` attention mask.
    pub fn mask(&self) -> &[i64] {
        &self.mask
    }

    /// `[B, P]` pooled embeddings.
    pub fn pooled(&self) -> &[f32] {
        &self.pooled
    }

    /// Tokens past the longest prompt of the batch dropped: `L` becomes the largest number of
    /// mask-1 tokens of any row (at least 1). With right padding those tokens are padding in
    /// every row, so no valid output depends on them: the transformer masks them as keys
    /// everywhere (joint attention and the token refiner) and returns only video tokens.
    /// Cropping skips that dead work (HunyuanVideo pads prompts to 256 tokens; most are
    /// padding) and changes results only by float summation order.
    pub fn cropped_to_prompts(&self) -> TextConditioning {
        let keep = (0..self.batch)
            .map(|b| {
                let row = &self.mask[b * self.len..(b + 1) * self.len];
                row.iter().rposition(|&m| m != 0).map_or(0, |i| i + 1)
            })
            .max()
            .unwrap_or(0)
            .max(1);
        if keep >= self.len {
            return self.clone();
        }
        let mut embeds = Vec::with_capacity(self.batch * keep * self.dim);
        let mut mask = Vec::with_capacity(self.batch * keep);
        for b in 0..self.batch {
            let e = b * self.len * self.dim;
            embeds.extend_from_slice(&self.embeds[e..e + keep * self.dim]);
            mask.extend_from_slice(&self.mask[b * self.len..b * self.len + keep]);
        }
        TextConditioning {
            len: keep,
            embeds,
            mask,
            ..self.clone()
        }
    }

    /// Valid tokens of every row, for a graph that takes no mask: each row's mask must be
    /// right-padded 0/1 (1 … 1 0 … 0, at least one 1), the only masks for which keeping the
    /// first Σ mask tokens is exactly diffusers' masking. Anything else is refused, naming
    /// the row.
    pub fn valid_lens(&self) -> Result<Vec<usize>, TransformerError> {
        (0..self.batch)
            .map(|b| {
                let row = &self.mask[b * self.len..(b + 1) * self.len];
                let n = row.iter().take_while(|&&m| m == 1).count();
                if row.iter().all(|&m| m == 0) {
                    return Err(input_err(
                        "prompt attention mask",
                        format!("row {b} has no valid token"),
                    ));
                }
                if let Some(j) = row[n..].iter().position(|&m| m != 0) {
                    return Err(input_err(
                        "prompt attention mask",
                        format!(
                            "row {b} is not right-padded 0/1 (value {} at token {} after {n} \
                             valid ones): text must be 1 … 1 then 0 … 0",
                            row[n + j],
                            n + j
                        ),
                    ));
                }
                Ok(n)
            })
            .collect()
    }

    /// Rows `rows` with their first `keep` tokens, all marked valid.
    pub(crate) fn rows_cropped(
        &self,
        rows: std::ops::Range<usize>,
        keep: usize,
    ) -> TextConditioning {
        let n = rows.len();
        let mut embeds = Vec::with_capacity(n * keep * self.dim);
        for b in rows.clone() {
            let e = b * self.len * self.dim;
            embeds.extend_from_slice(&self.embeds[e..e + keep * self.dim]);
        }
        TextConditioning {
            batch: n,
            len: keep,
            dim: self.dim,
            pooled_dim: self.pooled_dim,
            embeds,
            mask: vec![1; n * keep],
            pooled: self.pooled[rows.start * self.pooled_dim..rows.end * self.pooled_dim].to_vec(),
        }
    }

    /// Rows of `self` followed by rows of `other` (the B = 2 batch of true CFG). Of different
    /// lengths (image-to-video encodes the negative prompt with another image interleave), the
    /// shorter rows are padded (mask 0): exact, only valid tokens reach the transformer.
    pub fn stack(&self, other: &TextConditioning) -> Result<TextConditioning, TransformerError> {
        if (self.dim, self.pooled_dim) != (other.dim, other.pooled_dim) {
            return Err(input_err(
                "negative prompt embeddings",
                format!(
                    "[{}, {}] tokens × dim and pooled {} differ from the prompt's [{}, {}] and {}",
                    other.len, other.dim, other.pooled_dim, self.len, self.dim, self.pooled_dim
                ),
            ));
        }
        let len = self.len.max(other.len);
        let (a, b) = (self.padded_to(len), other.padded_to(len));
        let cat = |a: &[f32], b: &[f32]| [a, b].concat();
        Ok(TextConditioning {
            batch: self.batch + other.batch,
            len,
            embeds: cat(&a.embeds, &b.embeds),
            mask: [a.mask.as_slice(), b.mask.as_slice()].concat(),
            pooled: cat(&self.pooled, &other.pooled),
            ..*self
        })
    }

    /// Every row right-padded to `len` tokens (zeros, mask 0).
    fn padded_to(&self, len: usize) -> TextConditioning {
        if len <= self.len {
            return self.clone();
        }
        let mut embeds = Vec::with_capacity(self.batch * len * self.dim);
        let mut mask = Vec::with_capacity(self.batch * len);
        for b in 0..self.batch {
            let e = b * self.len * self.dim;
            embeds.extend_from_slice(&self.embeds[e..e + self.len * self.dim]);
            embeds.resize(embeds.len() + (len - self.len) * self.dim, 0.0);
            mask.extend_from_slice(&self.mask[b * self.len..(b + 1) * self.len]);
            mask.resize(mask.len() + len - self.len, 0);
        }
        TextConditioning {
            len,
            embeds,
            mask,
            ..self.clone()
        }
    }
}

/// One transformer evaluation: latents [B, C, T, H, W], per-row timestep (σ·1000) and
/// embedded guidance (scale·1000).
#[derive(Debug, Clone, Copy)]
pub struct StepInput<'a> {
    pub latents: &'a Tensor5,
    pub timestep: &'a [f32],
    pub text: &'a TextConditioning,
    pub guidance: Option<&'a [f32]>,
}

/// Predicts the flow-matching velocity; what the denoising loop drives.
pub trait VelocityModel {
    fn predict(&mut self, input: &StepInput<'_>) -> Result<Tensor5, TransformerError>;
}

/// How rows of a batch (true CFG's prompt and negative prompt) go to the graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowBatching {
    /// One batch-1 call per row. On ONNX Runtime CPU this is faster than a batch-2 call even
    /// when both rows have as many tokens (7.5 s vs 7.8 s for 6 CFG steps of the bench model,
    /// 2 threads; README "Measured").
    PerRow,
    /// Rows with equally many valid tokens share one call (GPUs run larger GEMMs at higher
    /// utilisation; not measured here); others still go one by one.
    SharedWhenEqual,
}

impl RowBatching {
    pub fn for_provider(provider: BackendKind) -> RowBatching {
        match provider {
            BackendKind::Cpu => RowBatching::PerRow,
            BackendKind::Cuda | BackendKind::TensorRt => RowBatching::SharedWhenEqual,
        }
    }
}

/// The bundle's transformer graph on one engine.
pub struct Transformer {
    engine: Engine,
    guidance: bool,
    batching: RowBatching,
    attention: AttentionKernel,
}

impl Transformer {
    /// Load the `transformer` model `files` resolves (a built engine or the bundle's graph).
    pub fn load_with(
        files: &ModelFiles<'_>,
        config: &SessionConfig,
    ) -> Result<Transformer, TransformerError> {
        let path = files.path(Component::Transformer, config.backend.kind())?;
        Self::load_file(&path, config)
    }

    /// Load a transformer graph file directly.
    pub fn load_file(path: &Path, config: &SessionConfig) -> Result<Transformer, TransformerError> {
        Ok(Self::from_loaded(crate::graph_load::load(path, config)?))
    }

    /// Load an edited copy of the transformer graph file `origin` (e.g. calibration's variant
    /// with layer inputs as extra outputs), weights from `origin`'s data file.
    pub fn load_edited(
        origin: &Path,
        proto: hyvideo_onnx::proto::ModelProto,
        config: &SessionConfig,
    ) -> Result<Transformer, TransformerError> {
        Ok(Self::from_loaded(crate::graph_load::load_edited(
            origin, proto, config,
        )?))
    }

    fn from_loaded(loaded: crate::graph_load::LoadedGraph) -> Transformer {
        let engine = loaded.engine;
        let guidance = engine.input_names().iter().any(|n| n == GUIDANCE);
        let batching = RowBatching::for_provider(engine.provider());
        Transformer {
            engine,
            guidance,
            batching,
            attention: loaded.attention.kernel(),
        }
    }

    pub fn provider(&self) -> BackendKind {
        self.engine.provider()
    }

    /// Where ONNX Runtime placed the graph's nodes (which providers actually run it).
    pub fn placement(&self) -> &hyvideo_engines::Placement {
        self.engine.placement()
    }

    /// The attention implementation this session runs.
    pub fn attention(&self) -> AttentionKernel {
        self.attention
    }

    /// Send rows as `batching` says instead of the provider's default.
    #[must_use]
    pub fn with_row_batching(mut self, batching: RowBatching) -> Self {
        self.batching = batching;
        self
    }

    /// Whether the model takes embedded guidance (`guidance_embeds`).
    pub fn takes_guidance(&self) -> bool {
        self.guidance
    }
}

impl VelocityModel for Transformer {
    fn predict(&mut self, input: &StepInput<'_>) -> Result<Tensor5, TransformerError> {
        self.predict_observed(input, &mut |_, _| {})
    }
}

impl Transformer {
    /// [`VelocityModel::predict`], also handing every other graph output (by name) to
    /// `observe` — how calibration reads layer inputs it added as outputs.
    ///
    /// The graph attends over every text token it is given (no mask: see the exporter's
    /// `transformer` module), so each row's text is cropped to its valid tokens first, and rows
    /// go to the graph one by one, or — on GPUs, when they have equally many valid tokens — in
    /// one call ([`RowBatching`]). Exact: diffusers masks padded text as keys everywhere and
    /// discards its outputs.
    pub fn predict_observed(
        &mut self,
        input: &StepInput<'_>,
        observe: &mut dyn FnMut(&str, &[f32]),
    ) -> Result<Tensor5, TransformerError> {
        let shape = input.latents.shape();
        let b = shape[0];
        let text = input.text;
        if text.batch != b || input.timestep.len() != b {
            return Err(input_err(
                "transformer inputs",
                format!(
                    "latents batch {b}, text batch {}, {} timesteps",
                    text.batch,
                    input.timestep.len()
                ),
            ));
        }
        if b == 0 {
            return Err(input_err("latents", "batch of 0".into()));
        }
        let lens = text.valid_lens()?;
        if b == 1
            || (self.batching == RowBatching::SharedWhenEqual && lens.iter().all(|&n| n == lens[0]))
        {
            if lens[0] == text.len {
                // No padding (the loop already cropped to the prompt): no copy per step.
                return self.call(input, observe);
            }
            let cropped = text.rows_cropped(0..b, lens[0]);
            return self.call(
                &StepInput {
                    text: &cropped,
                    ..*input
                },
                observe,
            );
        }
        for_each_row(input, &lens, |row, _| self.call(row, observe))
    }

    /// One graph call on `input` as it is.
    fn call(
        &mut self,
        input: &StepInput<'_>,
        observe: &mut dyn FnMut(&str, &[f32]),
    ) -> Result<Tensor5, TransformerError> {
        let shape = input.latents.shape();
        let shapes = InputShapes::of(input);
        let inputs = shapes.graph_inputs(input, self.guidance)?;
        let mut out = None;
        for (name, t) in self.engine.run(&inputs)? {
            if name == OUTPUT {
                out = Some(t);
            } else {
                observe(&name, &t.data);
            }
        }
        let out = out.ok_or_else(|| input_err("transformer output", format!("no `{OUTPUT}`")))?;
        velocity(out, shape)
    }
}

/// A graph's `sample` output as the velocity of `latents` (shape `[B, C, T, H, W]`): the
/// same batch and grid, or an error naming both shapes.
pub(crate) fn velocity(
    out: hyvideo_engines::Tensor,
    latents: [usize; 5],
) -> Result<Tensor5, TransformerError> {
    let dims: [usize; 5] = match <[usize; 5]>::try_from(out.shape.as_slice()) {
        Ok(d) if d[0] == latents[0] && d[2..] == latents[2..] => d,
        _ => {
            return Err(TransformerError::OutputShape {
                found: out.shape,
                expected: latents,
            });
        }
    };
    Tensor5::from_vec(dims, out.data).map_err(|e| input_err("transformer output", e.to_string()))
}

/// The shapes of a [`StepInput`]'s graph inputs (kept by the caller for as long as the
/// inputs that borrow them).
pub(crate) struct InputShapes {
    latents: [usize; 5],
    text: [usize; 3],
    pooled: [usize; 2],
    batch: [usize; 1],
}

impl InputShapes {
    pub(crate) fn of(input: &StepInput<'_>) -> InputShapes {
        let latents = input.latents.shape();
        let b = latents[0];
        let t = input.text;
        InputShapes {
            latents,
            text: [b, t.len, t.dim],
            pooled: [b, t.pooled_dim],
            batch: [b],
        }
    }

    /// The transformer graph's inputs (also the embed stage's): `hidden_states`, `timestep`,
    /// `encoder_hidden_states`, `pooled_projections`, and `guidance` for a guidance-distilled
    /// model (`guidance`), which then must be given, one value per row.
    pub(crate) fn graph_inputs<'a>(
        &'a self,
        input: &StepInput<'a>,
        guidance: bool,
    ) -> Result<Vec<(&'static str, Input<'a>)>, TransformerError> {
        let text = input.text;
        let mut inputs = vec![
            (
                HIDDEN_STATES,
                Input::F32 {
                    shape: &self.latents,
                    data: input.latents.data(),
                },
            ),
            (
                TIMESTEP,
                Input::F32 {
                    shape: &self.batch,
                    data: input.timestep,
                },
            ),
            (
                ENCODER_HIDDEN_STATES,
                Input::F32 {
                    shape: &self.text,
                    data: &text.embeds,
                },
            ),
            (
                POOLED_PROJECTIONS,
                Input::F32 {
                    shape: &self.pooled,
                    data: &text.pooled,
                },
            ),
        ];
        if guidance {
            let g = input.guidance.ok_or_else(|| {
                input_err(
                    "guidance",
                    "the transformer is guidance-distilled (`guidance_embeds`): give an embedded \
                     guidance scale"
                        .into(),
                )
            })?;
            if g.len() != self.batch[0] {
                return Err(input_err(
                    "guidance",
                    format!("{} values for batch {}", g.len(), self.batch[0]),
                ));
            }
            inputs.push((
                GUIDANCE,
                Input::F32 {
                    shape: &self.batch,
                    data: g,
                },
            ));
        }
        Ok(inputs)
    }
}

/// Run `row` on each row of `input` on its own (batch 1, its text cropped to its `lens[r]`
/// valid tokens) and stack the results: how rows of different lengths, and the staged
/// transformer's rows (each its own cache stream), reach the graphs.
pub(crate) fn for_each_row(
    input: &StepInput<'_>,
    lens: &[usize],
    mut row: impl FnMut(&StepInput<'_>, usize) -> Result<Tensor5, TransformerError>,
) -> Result<Tensor5, TransformerError> {
    let shape = input.latents.shape();
    let b = shape[0];
    if let Some(g) = input.guidance.filter(|g| g.len() != b) {
        return Err(input_err(
            "guidance",
            format!("{} values for batch {b}", g.len()),
        ));
    }
    let per = input.latents.data().len() / b.max(1);
    let mut data = Vec::with_capacity(input.latents.data().len());
    let mut out_shape = shape;
    let mut row_shape = shape;
    row_shape[0] = 1;
    for (r, &len) in lens.iter().enumerate() {
        let latents = Tensor5::from_vec(
            row_shape,
            input.latents.data()[r * per..(r + 1) * per].to_vec(),
        )
        .map_err(|e| input_err("latents", e.to_string()))?;
        let cropped = input.text.rows_cropped(r..r + 1, len);
        let out = row(
            &StepInput {
                latents: &latents,
                timestep: &input.timestep[r..r + 1],
                text: &cropped,
                guidance: input.guidance.and_then(|g| g.get(r..r + 1)),
            },
            r,
        )?;
        out_shape = out.shape();
        data.extend_from_slice(out.data());
    }
    out_shape[0] = b;
    Tensor5::from_vec(out_shape, data).map_err(|e| input_err("transformer output", e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(mask: Vec<i64>, batch: usize) -> TextConditioning {
        let len = mask.len() / batch;
        TextConditioning::new(
            (&[batch, len, 2], vec![0.5; batch * len * 2]),
            (&[batch, len], mask),
            (&[batch, 3], vec![0.0; batch * 3]),
        )
        .unwrap()
    }

    #[test]
    fn prompts_of_different_lengths_stack_with_padding() {
        let a = text(vec![1, 1, 0], 1);
        let b = text(vec![1, 1, 1, 1, 0], 1);
        let s = a.stack(&b).unwrap();
        assert_eq!((s.batch, s.len), (2, 5));
        assert_eq!(s.mask, [1, 1, 0, 0, 0, 1, 1, 1, 1, 0]);
        assert_eq!(s.valid_lens().unwrap(), [2, 4]);
        assert_eq!(&s.embeds[..6], &[0.5; 6]);
        assert_eq!(&s.embeds[6..10], &[0.0; 4]);
        assert_eq!(b.stack(&a).unwrap().mask, [1, 1, 1, 1, 0, 1, 1, 0, 0, 0]);
    }

    #[test]
    fn right_padded_masks_give_each_rows_length() {
        let t = text(vec![1, 1, 1, 0, 0, 1, 0, 0, 0, 0], 2);
        assert_eq!(t.valid_lens().unwrap(), [3, 1]);
        assert_eq!(text(vec![1, 1, 1], 1).valid_lens().unwrap(), [3]);
    }

    #[test]
    fn masks_cropping_cannot_reproduce_are_refused_naming_the_row() {
        for (mask, needle) in [
            (vec![1, 1, 0, 0, 0, 0, 0, 0], "row 1 has no valid token"),
            (vec![1, 1, 0, 0, 0, 1, 1, 0], "row 1 is not right-padded"),
            (vec![1, 1, 0, 0, 1, 0, 1, 0], "row 1 is not right-padded"),
            (vec![1, 2, 0, 0, 1, 0, 0, 0], "row 0 is not right-padded"),
            (vec![1, 1, 1, 1, 1, 1, -1, 0], "row 1 is not right-padded"),
        ] {
            let e = text(mask.clone(), 2).valid_lens().unwrap_err().to_string();
            assert!(e.contains(needle), "{mask:?}: {e}");
        }
    }

    #[test]
    fn cropped_rows_keep_their_tokens_and_pooled_values() {
        let t = TextConditioning::new(
            (&[2, 3, 1], vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]),
            (&[2, 3], vec![1, 1, 0, 1, 1, 1]),
            (&[2, 1], vec![7.0, 8.0]),
        )
        .unwrap();
        let r = t.rows_cropped(1..2, 3);
        assert_eq!((r.batch(), r.len()), (1, 3));
        assert_eq!(r.embeds(), [4.0, 5.0, 6.0]);
        assert_eq!(r.pooled(), [8.0]);
        let r = t.rows_cropped(0..2, 2);
        assert_eq!(r.embeds(), [1.0, 2.0, 4.0, 5.0]);
        assert_eq!(r.mask(), [1, 1, 1, 1]);
    }
}
