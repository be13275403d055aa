//! The transformer run in its four stage graphs (`transformer_embed` → `transformer_first_block`
//! → `transformer_rest_blocks` → `transformer_head`, cut from the single graph at export), so
//! that step caching can skip blocks between them: TeaCache (ali-vilab's
//! `TeaCache4HunyuanVideo`, `teacache_forward`) and First-Block Cache (diffusers'
//! `hooks/first_block_cache.py`). The decisions are [`crate::step_cache`]'s; this module runs the
//! stages and applies the cached residuals:
//!
//! - TeaCache decides from the embed stage's `first_block_norm1` (the indicator) before any
//!   block runs. Computed: both block stages run and the residual (image tokens after every
//!   block − before them) is kept; skipped: the image tokens get the kept residual and no block
//!   (and no text stream) runs.
//! - First-Block Cache runs the first block, decides from its image residual; computed: the rest
//!   runs and its residual (after all blocks − after the first) is kept; skipped: the first
//!   block's image tokens get the kept residual. (diffusers also adds a text-stream residual; no
//!   later stage reads the text tokens, so it cannot change the output and is not kept.)
//!
//! A token-replace transformer's (HunyuanVideo-I2V) embed stage also gives the first frame's
//! conditioning, which the block stages take with that frame's token count (image tokens /
//! latent frames, computed here).
//!
//! Rows of a batch run one at a time, each its own stream (true CFG: the prompt's row is
//! [`Stream::Cond`], the negative prompt's [`Stream::Uncond`]), with its text cropped to its
//! valid tokens as the single graph's caller does. Each call of [`VelocityModel::predict`] is
//! one denoising step of the run begun with [`StagedTransformer::begin`]. Tensors pass between
//! stages as float32 on the host (exact for any stage dtype; on a GPU that is a copy each way per
//! stage: unmeasured here).

use hyvideo_bundle::Component;
use hyvideo_bundle::components::transformer::{GUIDANCE, HIDDEN_STATES, OUTPUT};
use hyvideo_bundle::components::transformer_stages::{
    CONDITIONING, FIRST_BLOCK_NORM1, FIRST_FRAME_TOKENS, IMG_ALL_BLOCKS, IMG_FIRST_BLOCK,
    IMG_TOKENS, ROPE_COS, ROPE_SIN, TOKEN_REPLACE_CONDITIONING, TXT_FIRST_BLOCK, TXT_TOKENS,
};
use hyvideo_engines::{Engine, Input, SessionConfig, Tensor};

use crate::engine_set::ModelFiles;
use crate::step_cache::{
    Decision, FbCacheState, StepCache, StepCacheMethod, StepCacheRecord, Stream, TeaCacheState,
};
use crate::tensor::Tensor5;
use crate::transformer::{
    InputShapes, StepInput, TransformerError, VelocityModel, for_each_row, velocity,
};

fn input_err(what: &'static str, reason: String) -> TransformerError {
    TransformerError::Input { what, reason }
}

/// One stream's cache: the method's state and the residual it adds on skipped steps.
#[derive(Debug, Default)]
struct StreamCache {
    tea: TeaCacheState,
    fb: FbCacheState,
    residual: Option<Vec<f32>>,
}

impl StreamCache {
    /// The image tokens after the blocks the cache decides about, from `base` (their input):
    /// on a skip `base` + the kept residual (a first step is always computed, so a residual is
    /// kept before any skip), else `compute()`, whose residual over `base` is kept. The
    /// decision as taken goes into `record`.
    fn blocks_output(
        &mut self,
        record: &mut Option<StepCacheRecord>,
        stream: Stream,
        step: usize,
        decision: Decision,
        base: &[f32],
        compute: impl FnOnce() -> Result<Tensor, TransformerError>,
    ) -> Result<Vec<f32>, TransformerError> {
        let decision = match (decision, &self.residual) {
            (Decision::Skip, Some(_)) => Decision::Skip,
            _ => Decision::Compute,
        };
        if let Some(r) = record.as_mut() {
            r.record(stream, step, decision);
        }
        match (decision, &self.residual) {
            (Decision::Skip, Some(res)) => Ok(plus(base, res)),
            _ => {
                let all = compute()?;
                self.residual = Some(minus(&all.data, base));
                Ok(all.data)
            }
        }
    }
}

/// The run in progress: its cache settings, step counter and per-stream state.
#[derive(Debug)]
struct Run {
    cache: Option<StepCache>,
    steps: usize,
    step: usize,
    streams: [StreamCache; 2],
    record: Option<StepCacheRecord>,
}

/// The four stage graphs, loaded.
struct Stages {
    embed: Engine,
    first: Engine,
    rest: Engine,
    head: Engine,
}

/// What every block stage of one row reads besides the tokens: the conditioning, the RoPE
/// tables and, for a token-replace transformer, the first frame's conditioning and token count.
struct BlockInputs {
    cond: Tensor,
    cos: Tensor,
    sin: Tensor,
    token_replace: Option<(Tensor, [i64; 1])>,
}

impl BlockInputs {
    fn inputs(&self) -> Vec<(&'static str, Input<'_>)> {
        let mut v = vec![
            (CONDITIONING, f32_in(&self.cond)),
            (ROPE_COS, f32_in(&self.cos)),
            (ROPE_SIN, f32_in(&self.sin)),
        ];
        if let Some((tr, n)) = &self.token_replace {
            v.push((TOKEN_REPLACE_CONDITIONING, f32_in(tr)));
            v.push((
                FIRST_FRAME_TOKENS,
                Input::I64 {
                    shape: &[1],
                    data: n,
                },
            ));
        }
        v
    }
}

/// The four stage graphs of a bundle's transformer, loaded, and the run in progress.
pub struct StagedTransformer {
    stages: Stages,
    guidance: bool,
    /// A token-replace (image-to-video) transformer: its embed stage gives the first frame's
    /// conditioning, which the block stages take.
    token_replace: bool,
    /// The blocks' attention implementation (the first block stage's).
    attention: hyvideo_bundle::AttentionKernel,
    run: Option<Run>,
}

/// `a − b`, element-wise.
fn minus(a: &[f32], b: &[f32]) -> Vec<f32> {
    a.iter().zip(b).map(|(x, y)| x - y).collect()
}

/// `a + b`, element-wise.
fn plus(a: &[f32], b: &[f32]) -> Vec<f32> {
    a.iter().zip(b).map(|(x, y)| x + y).collect()
}

fn f32_in<'a>(t: &'a Tensor) -> Input<'a> {
    Input::F32 {
        shape: &t.shape,
        data: &t.data,
    }
}

/// Run `engine` and take its outputs `names`, in that order.
fn run_stage<const N: usize>(
    engine: &mut Engine,
    inputs: &[(&str, Input<'_>)],
    names: [&str; N],
) -> Result<[Tensor; N], TransformerError> {
    let mut outs = engine.run(inputs)?;
    take_outputs(&mut outs, names)
}

/// Take the outputs `names` out of a stage's `outs`, in that order.
fn take_outputs<const N: usize>(
    outs: &mut Vec<(String, Tensor)>,
    names: [&str; N],
) -> Result<[Tensor; N], TransformerError> {
    let mut take = |name: &str| {
        outs.iter()
            .position(|(n, _)| n == name)
            .map(|i| outs.swap_remove(i).1)
            .ok_or_else(|| input_err("transformer stage", format!("no output `{name}`")))
    };
    let mut got = Vec::with_capacity(N);
    for n in names {
        got.push(take(n)?);
    }
    got.try_into()
        .map_err(|_| input_err("transformer stage", "output count".into()))
}

impl StagedTransformer {
    /// Load the four stage graphs `files` resolves (built engines or the bundle's graphs).
    /// A bundle exported before the stages existed is refused with "re-export".
    pub fn load_with(
        files: &ModelFiles<'_>,
        config: &SessionConfig,
    ) -> Result<StagedTransformer, TransformerError> {
        let mut engines = Vec::with_capacity(4);
        let mut attention = hyvideo_bundle::AttentionKernel::Standard;
        // Four sessions run one after another: idle threads must not spin against the running
        // one (measured on the bench model: README "Step caching").
        let config = &config
            .clone()
            .with_spinning(hyvideo_engines::ThreadSpinning::Off);
        for c in Component::TRANSFORMER_STAGES {
            let path = files.path(c, config.backend.kind())?;
            let loaded = crate::graph_load::load(&path, config)?;
            if c == Component::TransformerFirstBlock {
                attention = loaded.attention.kernel();
            }
            engines.push(loaded.engine);
        }
        let [embed, first, rest, head]: [Engine; 4] = engines
            .try_into()
            .map_err(|_| input_err("transformer stages", "four graphs".into()))?;
        let guidance = embed.input_names().iter().any(|n| n == GUIDANCE);
        let token_replace = embed
            .output_names()
            .iter()
            .any(|n| n == TOKEN_REPLACE_CONDITIONING);
        Ok(StagedTransformer {
            stages: Stages {
                embed,
                first,
                rest,
                head,
            },
            guidance,
            token_replace,
            attention,
            run: None,
        })
    }

    /// Whether the model takes an embedded guidance scale.
    pub fn takes_guidance(&self) -> bool {
        self.guidance
    }

    /// The attention implementation the blocks run.
    pub fn attention(&self) -> hyvideo_bundle::AttentionKernel {
        self.attention
    }

    /// The provider the stages run on (the embed stage's).
    pub fn provider(&self) -> hyvideo_engines::BackendKind {
        self.stages.embed.provider()
    }

    pub fn placement(&self) -> &hyvideo_engines::Placement {
        self.stages.embed.placement()
    }

    /// Start a run of `steps` steps with `cache` (none: every stage every step); `cfg`: true CFG
    /// (two streams). Every following [`VelocityModel::predict`] is the next step.
    pub fn begin(&mut self, cache: Option<StepCache>, steps: usize, cfg: bool) {
        self.run = Some(Run {
            cache,
            steps,
            step: 0,
            streams: Default::default(),
            record: cache.map(|c| StepCacheRecord::new(&c, steps, cfg)),
        });
    }

    /// End the run: what the cache computed (`None` without a cache).
    pub fn finish(&mut self) -> Option<StepCacheRecord> {
        self.run.take().and_then(|r| r.record)
    }

    /// One row: embed → (blocks, as the cache decides) → head.
    fn row(
        &mut self,
        input: &StepInput<'_>,
        stream: Stream,
        step: usize,
    ) -> Result<Tensor5, TransformerError> {
        let shape = input.latents.shape();
        let shapes = InputShapes::of(input);
        let inputs = shapes.graph_inputs(input, self.guidance)?;
        let mut outs = self.stages.embed.run(&inputs)?;
        let [img, txt, cond, cos, sin, norm1] = take_outputs(
            &mut outs,
            [
                IMG_TOKENS,
                TXT_TOKENS,
                CONDITIONING,
                ROPE_COS,
                ROPE_SIN,
                FIRST_BLOCK_NORM1,
            ],
        )?;
        let token_replace = if self.token_replace {
            let [tr] = take_outputs(&mut outs, [TOKEN_REPLACE_CONDITIONING])?;
            // Image tokens / latent frames: the tokens of one latent frame.
            let n = img.shape.get(1).copied().unwrap_or(0) / shape[2].max(1);
            Some((tr, [n as i64]))
        } else {
            None
        };
        let bi = BlockInputs {
            cond,
            cos,
            sin,
            token_replace,
        };
        let run = self.run.as_mut();
        let (cache, steps) = match &run {
            Some(r) => (r.cache, r.steps),
            None => (None, 0),
        };
        let slot = run.map(|r| (&mut r.streams[stream as usize], &mut r.record));
        let out_shape = img.shape.clone();
        let blocks_out = match (cache, slot) {
            (Some(c), Some((sc, record))) if c.method == StepCacheMethod::TeaCache => {
                let d = sc.tea.decide(&c, step, steps, &norm1.data);
                sc.blocks_output(record, stream, step, d, &img.data, || {
                    self.stages.blocks(&img, &txt, &bi, &norm1)
                })?
            }
            (Some(c), Some((sc, record))) => {
                let [img1, txt1] = self.stages.first_block(&img, &txt, &bi, &norm1)?;
                let r1 = minus(&img1.data, &img.data);
                let d = sc.fb.decide(&c, step, steps, &r1);
                sc.blocks_output(record, stream, step, d, &img1.data, || {
                    self.stages.rest_blocks(&img1, &txt1, &bi)
                })?
            }
            _ => self.stages.blocks(&img, &txt, &bi, &norm1)?.data,
        };
        let blocks = Tensor {
            shape: out_shape,
            data: blocks_out,
        };
        let [out] = run_stage(
            &mut self.stages.head,
            &[
                (IMG_ALL_BLOCKS, f32_in(&blocks)),
                (CONDITIONING, f32_in(&bi.cond)),
                (
                    HIDDEN_STATES,
                    Input::F32 {
                        shape: &shape,
                        data: input.latents.data(),
                    },
                ),
            ],
            [OUTPUT],
        )?;
        velocity(out, shape)
    }
}

impl Stages {
    fn first_block(
        &mut self,
        img: &Tensor,
        txt: &Tensor,
        bi: &BlockInputs,
        norm1: &Tensor,
    ) -> Result<[Tensor; 2], TransformerError> {
        let mut inputs = vec![
            (IMG_TOKENS, f32_in(img)),
            (TXT_TOKENS, f32_in(txt)),
            (FIRST_BLOCK_NORM1, f32_in(norm1)),
        ];
        inputs.extend(bi.inputs());
        run_stage(&mut self.first, &inputs, [IMG_FIRST_BLOCK, TXT_FIRST_BLOCK])
    }

    fn rest_blocks(
        &mut self,
        img1: &Tensor,
        txt1: &Tensor,
        bi: &BlockInputs,
    ) -> Result<Tensor, TransformerError> {
        let mut inputs = vec![
            (IMG_FIRST_BLOCK, f32_in(img1)),
            (TXT_FIRST_BLOCK, f32_in(txt1)),
        ];
        inputs.extend(bi.inputs());
        let [all] = run_stage(&mut self.rest, &inputs, [IMG_ALL_BLOCKS])?;
        Ok(all)
    }

    /// Every block: the first, then the rest.
    fn blocks(
        &mut self,
        img: &Tensor,
        txt: &Tensor,
        bi: &BlockInputs,
        norm1: &Tensor,
    ) -> Result<Tensor, TransformerError> {
        let [img1, txt1] = self.first_block(img, txt, bi, norm1)?;
        self.rest_blocks(&img1, &txt1, bi)
    }
}

impl VelocityModel for StagedTransformer {
    fn predict(&mut self, input: &StepInput<'_>) -> Result<Tensor5, TransformerError> {
        let shape = input.latents.shape();
        let b = shape[0];
        let text = input.text;
        if text.batch() != b || input.timestep.len() != b || b == 0 || b > 2 {
            return Err(input_err(
                "transformer inputs",
                format!(
                    "latents batch {b}, text batch {}, {} timesteps (one or two rows)",
                    text.batch(),
                    input.timestep.len()
                ),
            ));
        }
        let step = match self.run.as_mut() {
            Some(r) => {
                let s = r.step;
                r.step += 1;
                s
            }
            None => 0,
        };
        let lens = text.valid_lens()?;
        for_each_row(input, &lens, |row, r| {
            let stream = if r == 0 { Stream::Cond } else { Stream::Uncond };
            self.row(row, stream, step)
        })
    }
}
