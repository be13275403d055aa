//! The HunyuanVideo diffusion transformer (DiT) as an ONNX graph.
//!
//! Mirrors diffusers `models/transformers/transformer_hunyuan_video.py`
//! (`HunyuanVideoTransformer3DModel.forward` and its blocks): patch embedding, sinusoidal
//! timestep / guidance embeddings and the pooled-text projection, the token refiner, the
//! dual-stream `HunyuanVideoTransformerBlock`s, the single-stream
//! `HunyuanVideoSingleTransformerBlock`s, `norm_out`, `proj_out` and the unpatchify.
//!
//! Graph choices (same numbers as diffusers, written for inference engines):
//! - every `nn.Linear` is a 2-D `Gemm` with `transB = 1` on the checkpoint's `[out, in]` weight,
//!   and the projections diffusers runs one after another on the same input are fused
//!   (`to_q|to_k|to_v`, and `to_q|to_k|to_v|proj_mlp` in single blocks — Tencent's `linear1`);
//! - the video and text tokens live in one `[img; txt]` sequence; RoPE (computed here from the
//!   latent shape) is applied to the whole sequence with cos = 1, sin = 0 on text tokens;
//! - attention is [`crate::attention`]'s builder with no mask: every text token the graph is
//!   given is a real one. The runtime crops each prompt to its valid tokens before the call
//!   (exact: diffusers masks padded text as keys everywhere and discards its outputs), so the
//!   attention is the plain pattern TensorRT fuses and ONNX Runtime's flash kernels accept,
//!   and the token refiner's masked mean is a plain mean.
//!
//! Inputs (names as diffusers' forward arguments): `hidden_states` f32[B,C,T,H,W], `timestep`
//! f32[B] (σ·1000), `encoder_hidden_states` f32[B,L,D_text] (valid tokens only),
//! `pooled_projections` f32[B,P], `guidance` f32[B] (scale·1000, only with `guidance_embeds`).
//! Output `sample` f32[B,C_out,T,H,W]. diffusers' `encoder_attention_mask` is not an input.
//!
//! Image-to-video (`image_condition_type`): `latent_concat` (HunyuanVideo-I2V-33ch) is the same
//! graph on `2·C + 1` input channels; `token_replace` (HunyuanVideo-I2V) mirrors the
//! `HunyuanVideoTokenReplace*` blocks: a second conditioning, the timestep embedding of 0 plus
//! the pooled text (no guidance term), modulates the first latent frame's tokens (`(H/p)·(W/p)`
//! of them) in every dual and single block — those tokens are sliced off, modulated / gated with
//! their chunks and concatenated back, as diffusers does; both conditionings go through each
//! modulation `Gemm` as one `[2B, D]` input.
//!
//! The stage boundaries of step caching are `Identity` nodes `stage/<name>`
//! (`hyvideo_bundle::components::transformer_stages`); each stage derives its shape values from
//! its own image tokens, so [`crate::transformer_stages`] can cut the written graph there.

use crate::attention::{AttentionMask, Heads, attention};
use crate::checkpoint::TransformerConfig;
use crate::error::Result;
use crate::graph::{Affine, Net};
use crate::onnx::{Attr, DataType, Dim, GraphBuilder, Value, auto};
use hyvideo_bundle::ImageCondition;

pub use hyvideo_bundle::components::transformer::{
    ENCODER_HIDDEN_STATES, GUIDANCE, HIDDEN_STATES, OUTPUT, POOLED_PROJECTIONS, TIMESTEP,
};
use hyvideo_bundle::components::transformer_stages::{
    CONDITIONING, CUT_PREFIX, FIRST_BLOCK_NORM1, FIRST_FRAME_TOKENS, IMG_ALL_BLOCKS,
    IMG_FIRST_BLOCK, IMG_TOKENS, ROPE_COS, ROPE_SIN, TOKEN_REPLACE_CONDITIONING, TXT_FIRST_BLOCK,
    TXT_TOKENS,
};

/// Channels of the sinusoidal timestep projection (`Timesteps(num_channels=256)`).
const TIME_PROJ_DIM: usize = 256;
const NORM_EPS: f32 = 1e-6;

/// Frequencies of `get_timestep_embedding(.., 256, flip_sin_to_cos=True,
/// downscale_freq_shift=0)`: `exp(-ln(10000) · i / 128)`, computed in f32 as torch does.
pub fn timestep_frequencies() -> Vec<f32> {
    let half = TIME_PROJ_DIM / 2;
    let ln = -(10000f64.ln() as f32);
    (0..half)
        .map(|i| {
            let exponent = (ln * i as f32) / half as f32;
            (exponent as f64).exp() as f32
        })
        .collect()
}

/// RoPE inverse frequencies of one axis, each repeated twice (`repeat_interleave_real`):
/// `1 / theta^(2k / dim)` as `get_1d_rotary_pos_embed` computes them in f32.
pub fn rope_frequencies(dim: usize, theta: f64) -> Vec<f32> {
    (0..dim / 2)
        .flat_map(|k| {
            let e = (2 * k) as f32 / dim as f32;
            let f = 1.0 / (theta as f32).powf(e);
            [f, f]
        })
        .collect()
}

/// Sizes the graph is built for.
#[derive(Clone, Copy, Debug)]
struct Dims {
    /// Hidden size (heads × head dim).
    d: usize,
    heads: usize,
    head_dim: usize,
    mlp: usize,
}

/// Values computed once and shared by every block.
#[derive(Clone)]
struct Shared {
    /// `[B]` as a 1-D shape tensor.
    batch: Value,
    /// `[B, -1, D]`: back from 2-D token rows to a batch of sequences.
    seq_shape: Value,
    /// `[B, -1, 3·heads, head_dim]` for the fused q|k|v projection.
    qkv_shape: Value,
    /// RoPE cos / sin over the joint `[img; txt]` sequence, `[S, 1, head_dim]`.
    cos: Value,
    sin: Value,
    /// The pair rotation as a `[head_dim, head_dim]` signed permutation:
    /// `(x R)[2k] = -x[2k+1]`, `(x R)[2k+1] = x[2k]`.
    rotate: Value,
    /// Conditioning after SiLU, `[B, D]`, the input of every block's modulation.
    temb_act: Value,
    /// Number of video tokens, `[1]`.
    n_img: Value,
    /// A token-replace transformer's first-frame conditioning (HunyuanVideo-I2V).
    token_replace: Option<TokenReplace>,
}

/// The token-replace image condition (`HunyuanVideoTokenReplace*` blocks): the first latent
/// frame's tokens (the clean image latent) are modulated with the conditioning of timestep 0.
#[derive(Clone)]
struct TokenReplace {
    /// `[conditioning; token-replace conditioning]` after SiLU, `[2B, D]`: one `Gemm` per
    /// modulation gives both (the same weights on both rows).
    both_act: Value,
    /// Tokens of the first latent frame, `[1]`.
    first_frame_tokens: Value,
}

/// A block's modulation chunks (`[B, 1, D]` each), and with token replace those of the first
/// frame's tokens.
struct Modulation {
    chunks: Vec<Value>,
    first_frame: Option<(Vec<Value>, Value)>,
}

struct Dit<'a, 'w> {
    net: &'a mut Net<'w>,
    dims: Dims,
}

impl Dit<'_, '_> {
    /// Name `x` as the stage boundary `name`: an `Identity` node `stage/<name>`, which the
    /// precision pass keeps in `x`'s dtype, and where the stage graphs are cut.
    fn cut(&mut self, x: &Value, name: &str) -> Result<Value> {
        Ok(self
            .net
            .b
            .node1("Identity", format!("{CUT_PREFIX}{name}"), &[x], &[])?)
    }

    /// The shape values of a stage, computed from its image tokens `img` [B, N, D] so that a
    /// stage graph needs nothing of the stages before it but their outputs.
    fn stage_shared(&mut self, prefix: &str, img: &Value, base: &Shared) -> Result<Shared> {
        let Dims {
            d, heads, head_dim, ..
        } = self.dims;
        let batch = self.shape_slice(prefix, img, 0, 1)?;
        let n_img = self.shape_slice(prefix, img, 1, 2)?;
        let tail = self.net.i64s(prefix, &[-1, d as i64])?;
        let seq_shape = self
            .net
            .op("Concat", prefix, &[&batch, &tail], &[Attr::int("axis", 0)])?;
        let tail = self
            .net
            .i64s(prefix, &[-1, (3 * heads) as i64, head_dim as i64])?;
        let qkv_shape = self
            .net
            .op("Concat", prefix, &[&batch, &tail], &[Attr::int("axis", 0)])?;
        Ok(Shared {
            batch,
            seq_shape,
            qkv_shape,
            n_img,
            ..base.clone()
        })
    }

    fn shape_slice(&mut self, prefix: &str, x: &Value, start: i64, end: i64) -> Result<Value> {
        self.net.op(
            "Shape",
            prefix,
            &[x],
            &[Attr::int("start", start), Attr::int("end", end)],
        )
    }

    fn rows(&mut self, prefix: &str, x: &Value, width: usize) -> Result<Value> {
        let shape = self.net.i64s(prefix, &[-1, width as i64])?;
        self.net.op("Reshape", prefix, &[x, &shape], &[])
    }

    /// `Linear`s fused into one `Gemm` on `x` [B, S, i] (or [B, i]), result 2-D [B·S, Σo].
    fn linear_rows(
        &mut self,
        fused: &str,
        x: &Value,
        i: usize,
        modules: &[(&str, usize)],
    ) -> Result<Value> {
        let rows = self.rows(fused, x, i)?;
        self.net.gemm(fused, &rows, i, modules)
    }

    /// One `Linear` on a sequence `x` [B, S, i] → [B, S, o].
    fn linear_seq(
        &mut self,
        sh: &Shared,
        module: &str,
        x: &Value,
        i: usize,
        o: usize,
    ) -> Result<Value> {
        let y = self.linear_rows(module, x, i, &[(module, o)])?;
        if o == self.dims.d {
            self.net.reshape(module, &y, &sh.seq_shape)
        } else {
            let tail = self.net.i64s(module, &[-1, o as i64])?;
            let shape = self.net.op(
                "Concat",
                module,
                &[&sh.batch, &tail],
                &[Attr::int("axis", 0)],
            )?;
            self.net.reshape(module, &y, &shape)
        }
    }

    /// `Timesteps(256, flip_sin_to_cos=True)` of `t` [B] → [B, 256] = [cos, sin].
    fn time_proj(&mut self, prefix: &str, t: &Value) -> Result<Value> {
        let freqs = self.net.b.const_f32(
            auto(format!("{prefix}/freqs")),
            &timestep_frequencies(),
            &[1, (TIME_PROJ_DIM / 2) as i64],
        )?;
        let ax = self.net.i64s(prefix, &[1])?;
        let t = self.net.op("Unsqueeze", prefix, &[t, &ax], &[])?;
        let arg = self.net.op("Mul", prefix, &[&t, &freqs], &[])?;
        let cos = self.net.op("Cos", prefix, &[&arg], &[])?;
        let sin = self.net.op("Sin", prefix, &[&arg], &[])?;
        self.net
            .op("Concat", prefix, &[&cos, &sin], &[Attr::int("axis", 1)])
    }

    /// `linear_2(act(linear_1(x)))` on [B, i] (`TimestepEmbedding`, `PixArtAlphaTextProjection`
    /// with SiLU).
    fn mlp2(&mut self, prefix: &str, x: &Value, i: usize) -> Result<Value> {
        let d = self.dims.d;
        let l1 = format!("{prefix}.linear_1");
        let l2 = format!("{prefix}.linear_2");
        let h = self.net.gemm(&l1, x, i, &[(&l1, d)])?;
        let h = self.net.silu(prefix, &h)?;
        self.net.gemm(&l2, &h, d, &[(&l2, d)])
    }

    /// `timestep_embedder(time_proj(t))`.
    fn timestep_embedding(&mut self, prefix: &str, t: &Value) -> Result<Value> {
        let p = self.time_proj(prefix, t)?;
        self.mlp2(prefix, &p, TIME_PROJ_DIM)
    }

    /// The `[B, 1, D]` chunks of a block's modulation `linear(silu(temb))` [B, n·D].
    fn modulation(&mut self, sh: &Shared, module: &str, n: usize) -> Result<Vec<Value>> {
        let d = self.dims.d;
        let m = self.net.gemm(module, &sh.temb_act, d, &[(module, n * d)])?;
        let shape = self.net.i64s(module, &[-1, 1, (n * d) as i64])?;
        let m = self.net.reshape(module, &m, &shape)?;
        self.net.split(module, &m, 2, &vec![d as i64; n])
    }

    /// A block's modulation `linear(silu(temb))` in `n` chunks; with token replace also the
    /// chunks of `linear(silu(token_replace_emb))` for the first frame's tokens.
    fn block_modulation(&mut self, sh: &Shared, module: &str, n: usize) -> Result<Modulation> {
        let Some(tr) = &sh.token_replace else {
            return Ok(Modulation {
                chunks: self.modulation(sh, module, n)?,
                first_frame: None,
            });
        };
        let d = self.dims.d;
        let m = self.net.gemm(module, &tr.both_act, d, &[(module, n * d)])?;
        let [m, m_first] = self.batch_halves(module, &m, &[1, (n * d) as i64])?;
        let sizes = vec![d as i64; n];
        Ok(Modulation {
            chunks: self.net.split(module, &m, 2, &sizes)?,
            first_frame: Some((
                self.net.split(module, &m_first, 2, &sizes)?,
                tr.first_frame_tokens.clone(),
            )),
        })
    }

    /// The two halves of `x` [2B, ..] along the batch, each reshaped to [B, inner..].
    fn batch_halves(&mut self, prefix: &str, x: &Value, inner: &[i64]) -> Result<[Value; 2]> {
        let shape: Vec<i64> = [2, -1].iter().chain(inner).copied().collect();
        let shape = self.net.i64s(prefix, &shape)?;
        let x = self.net.reshape(prefix, x, &shape)?;
        let halves = self.net.split(prefix, &x, 0, &[1, 1])?;
        let ax0 = self.net.i64s(prefix, &[0])?;
        let a = self.net.op("Squeeze", prefix, &[&halves[0], &ax0], &[])?;
        let b = self.net.op("Squeeze", prefix, &[&halves[1], &ax0], &[])?;
        Ok([a, b])
    }

    /// `f` on the tokens of `xs` (sequences [B, S, D] of the same length) with the modulation
    /// chunks that apply to them: with token replace, the first frame's tokens and the rest
    /// separately (as diffusers slices and concatenates), else all at once.
    fn per_token(
        &mut self,
        prefix: &str,
        xs: &[&Value],
        m: &Modulation,
        f: impl Fn(&mut Self, &[Value], &[Value]) -> Result<Value>,
    ) -> Result<Value> {
        let whole: Vec<Value> = xs.iter().map(|&x| x.clone()).collect();
        let Some((first, n)) = &m.first_frame else {
            return f(self, &whole, &m.chunks);
        };
        let zero = self.net.i64s(prefix, &[0])?;
        let end = self.net.i64s(prefix, &[i64::MAX])?;
        let mut heads = Vec::with_capacity(xs.len());
        let mut tails = Vec::with_capacity(xs.len());
        for x in &whole {
            heads.push(self.seq_slice(prefix, x, &zero, n)?);
            tails.push(self.seq_slice(prefix, x, n, &end)?);
        }
        let a = f(self, &heads, first)?;
        let b = f(self, &tails, &m.chunks)?;
        self.net
            .op("Concat", prefix, &[&a, &b], &[Attr::int("axis", 1)])
    }

    /// `x * (1 + scale) + shift` with the chunks `shift`, `scale` of `m`, per token.
    fn modulate_tokens(
        &mut self,
        prefix: &str,
        x: &Value,
        m: &Modulation,
        shift: usize,
        scale: usize,
    ) -> Result<Value> {
        self.per_token(prefix, &[x], m, |g, x, c| {
            g.modulate(prefix, &x[0], &c[shift], &c[scale])
        })
    }

    /// `x + gate * y` with the chunk `gate` of `m`, per token.
    fn gated_residual_tokens(
        &mut self,
        prefix: &str,
        x: &Value,
        m: &Modulation,
        gate: usize,
        y: &Value,
    ) -> Result<Value> {
        self.per_token(prefix, &[x, y], m, |g, v, c| {
            g.gated_residual(prefix, &v[0], &c[gate], &v[1])
        })
    }

    /// `x * (1 + scale) + shift`.
    fn modulate(&mut self, prefix: &str, x: &Value, shift: &Value, scale: &Value) -> Result<Value> {
        let one = self.net.f32_scalar(prefix, 1.0)?;
        let s1 = self.net.op("Add", prefix, &[scale, &one], &[])?;
        let y = self.net.op("Mul", prefix, &[x, &s1], &[])?;
        self.net.op("Add", prefix, &[&y, shift], &[])
    }

    /// `x + gate * y`.
    fn gated_residual(
        &mut self,
        prefix: &str,
        x: &Value,
        gate: &Value,
        y: &Value,
    ) -> Result<Value> {
        let g = self.net.op("Mul", prefix, &[y, gate], &[])?;
        self.net.op("Add", prefix, &[x, &g], &[])
    }

    /// Split a fused q|k|v projection [B·S, 3D] into three [B, S, heads, head_dim] tensors.
    fn split_qkv(&mut self, prefix: &str, sh: &Shared, qkv: &Value) -> Result<[Value; 3]> {
        let h = self.dims.heads;
        self.net.split_qkv(prefix, qkv, &sh.qkv_shape, [h, h])
    }

    /// `x * cos + rotate_pairs(x) * sin` on [B, S, heads, head_dim] (diffusers
    /// `apply_rotary_emb(use_real=True, use_real_unbind_dim=-1)`).
    fn rope(&mut self, prefix: &str, sh: &Shared, x: &Value) -> Result<Value> {
        // A MatMul with the constant signed permutation is exact (one ±1 term per output) and
        // several times faster than a Gather on the last axis in ONNX Runtime.
        let xc = self.net.op("Mul", prefix, &[x, &sh.cos], &[])?;
        let rotated = self.net.op("MatMul", prefix, &[x, &sh.rotate], &[])?;
        let xs = self.net.op("Mul", prefix, &[&rotated, &sh.sin], &[])?;
        self.net.op("Add", prefix, &[&xc, &xs], &[])
    }

    /// Scaled dot-product attention of q, k, v [B, S, heads, head_dim] (no mask); result as
    /// token rows [B·S, D].
    fn attention(&mut self, prefix: &str, q: &Value, k: &Value, v: &Value) -> Result<Value> {
        let heads = Heads {
            heads: self.dims.heads,
            kv_heads: self.dims.heads,
            head_dim: self.dims.head_dim,
        };
        let ctx = attention(self.net, prefix, q, k, v, heads, AttentionMask::None)?;
        self.rows(prefix, &ctx, self.dims.d)
    }

    /// RMS-normalised, rotated q, k of one stream (`norm_q`, `norm_k` modules).
    fn qk_norm(&mut self, q: &Value, k: &Value, norm_q: &str, norm_k: &str) -> Result<[Value; 2]> {
        let hd = self.dims.head_dim;
        let q = self.net.rms_norm(norm_q, q, hd, NORM_EPS)?;
        let k = self.net.rms_norm(norm_k, k, hd, NORM_EPS)?;
        Ok([q, k])
    }

    /// Slice `x` [B, S, ..] along the sequence axis.
    fn seq_slice(&mut self, prefix: &str, x: &Value, start: &Value, end: &Value) -> Result<Value> {
        let axes = self.net.i64s(prefix, &[1])?;
        self.net.op("Slice", prefix, &[x, start, end, &axes], &[])
    }

    /// `HunyuanVideoTransformerBlock`: returns the new (img, txt) streams.
    fn dual_block(
        &mut self,
        prefix: &str,
        sh: &Shared,
        img: &Value,
        txt: &Value,
        norm1: Option<Norm1>,
    ) -> Result<(Value, Value)> {
        let Dims { d, mlp, .. } = self.dims;
        let p = |s: &str| format!("{prefix}.{s}");
        let Norm1 {
            modulation: im,
            output: img_n,
        } = match norm1 {
            Some(n) => n,
            None => self.norm1(prefix, sh, img)?,
        };
        let tm = self.modulation(sh, &p("norm1_context.linear"), 6)?;
        let txt_n = self
            .net
            .layer_norm(&p("norm1_context"), txt, d, NORM_EPS, Affine::None)?;
        let txt_n = self.modulate(&p("norm1_context"), &txt_n, &tm[0], &tm[1])?;

        let img_qkv = self.linear_rows(
            &p("attn.to_qkv"),
            &img_n,
            d,
            &[
                (&p("attn.to_q"), d),
                (&p("attn.to_k"), d),
                (&p("attn.to_v"), d),
            ],
        )?;
        let txt_qkv = self.linear_rows(
            &p("attn.add_qkv_proj"),
            &txt_n,
            d,
            &[
                (&p("attn.add_q_proj"), d),
                (&p("attn.add_k_proj"), d),
                (&p("attn.add_v_proj"), d),
            ],
        )?;
        let [iq, ik, iv] = self.split_qkv(&p("attn"), sh, &img_qkv)?;
        let [tq, tk, tv] = self.split_qkv(&p("attn"), sh, &txt_qkv)?;
        let [iq, ik] = self.qk_norm(&iq, &ik, &p("attn.norm_q"), &p("attn.norm_k"))?;
        let [tq, tk] = self.qk_norm(&tq, &tk, &p("attn.norm_added_q"), &p("attn.norm_added_k"))?;
        let cat = |s: &mut Self, a: &Value, b: &Value| {
            s.net.op("Concat", prefix, &[a, b], &[Attr::int("axis", 1)])
        };
        let q = cat(self, &iq, &tq)?;
        let k = cat(self, &ik, &tk)?;
        let v = cat(self, &iv, &tv)?;
        let q = self.rope(prefix, sh, &q)?;
        let k = self.rope(prefix, sh, &k)?;
        let ctx = self.attention(&p("attn"), &q, &k, &v)?;
        let ctx = self.net.reshape(prefix, &ctx, &sh.seq_shape)?;
        let zero = self.net.i64s(prefix, &[0])?;
        let end = self.net.i64s(prefix, &[i64::MAX])?;
        let img_ctx = self.seq_slice(prefix, &ctx, &zero, &sh.n_img)?;
        let txt_ctx = self.seq_slice(prefix, &ctx, &sh.n_img, &end)?;
        let img_attn = self.linear_seq(sh, &p("attn.to_out.0"), &img_ctx, d, d)?;
        let txt_attn = self.linear_seq(sh, &p("attn.to_add_out"), &txt_ctx, d, d)?;

        let img = self.gated_residual_tokens(prefix, img, &im, 2, &img_attn)?;
        let txt = self.gated_residual(prefix, txt, &tm[2], &txt_attn)?;
        let img_n = self
            .net
            .layer_norm(&p("norm2"), &img, d, NORM_EPS, Affine::None)?;
        let img_n = self.modulate_tokens(&p("norm2"), &img_n, &im, 3, 4)?;
        let txt_n = self
            .net
            .layer_norm(&p("norm2_context"), &txt, d, NORM_EPS, Affine::None)?;
        let txt_n = self.modulate(&p("norm2_context"), &txt_n, &tm[3], &tm[4])?;
        let img_ff = self.feed_forward(sh, &p("ff"), &img_n, d, mlp, Activation::GeluTanh)?;
        let txt_ff =
            self.feed_forward(sh, &p("ff_context"), &txt_n, d, mlp, Activation::GeluTanh)?;
        let img = self.gated_residual_tokens(prefix, &img, &im, 5, &img_ff)?;
        let txt = self.gated_residual(prefix, &txt, &tm[5], &txt_ff)?;
        Ok((img, txt))
    }

    /// A dual block's `norm1` on the image tokens: its six modulation chunks and
    /// `LayerNorm(img)·(1 + scale_msa) + shift_msa`.
    fn norm1(&mut self, prefix: &str, sh: &Shared, img: &Value) -> Result<Norm1> {
        let d = self.dims.d;
        let p = |s: &str| format!("{prefix}.{s}");
        let modulation = self.block_modulation(sh, &p("norm1.linear"), 6)?;
        let n = self
            .net
            .layer_norm(&p("norm1"), img, d, NORM_EPS, Affine::None)?;
        let output = self.modulate_tokens(&p("norm1"), &n, &modulation, 0, 1)?;
        Ok(Norm1 { modulation, output })
    }

    /// diffusers `FeedForward`: `net.2(act(net.0.proj(x)))` on [B, S, d].
    fn feed_forward(
        &mut self,
        sh: &Shared,
        prefix: &str,
        x: &Value,
        d: usize,
        hidden: usize,
        act: Activation,
    ) -> Result<Value> {
        let fc1 = format!("{prefix}.net.0.proj");
        let fc2 = format!("{prefix}.net.2");
        let h = self.linear_rows(&fc1, x, d, &[(&fc1, hidden)])?;
        let h = self.activation(prefix, &h, act)?;
        let y = self.net.gemm(&fc2, &h, hidden, &[(&fc2, d)])?;
        self.net.reshape(prefix, &y, &sh.seq_shape)
    }

    fn activation(&mut self, prefix: &str, x: &Value, act: Activation) -> Result<Value> {
        match act {
            Activation::GeluTanh => {
                self.net
                    .op("Gelu", prefix, &[x], &[Attr::string("approximate", "tanh")])
            }
            Activation::Silu => self.net.silu(prefix, x),
        }
    }

    /// `HunyuanVideoSingleTransformerBlock` on the joint sequence `x` [B, S, D].
    fn single_block(&mut self, prefix: &str, sh: &Shared, x: &Value) -> Result<Value> {
        let Dims { d, mlp, .. } = self.dims;
        let p = |s: &str| format!("{prefix}.{s}");
        let m = self.block_modulation(sh, &p("norm.linear"), 3)?;
        let xn = self
            .net
            .layer_norm(&p("norm"), x, d, NORM_EPS, Affine::None)?;
        let xn = self.modulate_tokens(&p("norm"), &xn, &m, 0, 1)?;
        let h = self.linear_rows(
            &p("linear1"),
            &xn,
            d,
            &[
                (&p("attn.to_q"), d),
                (&p("attn.to_k"), d),
                (&p("attn.to_v"), d),
                (&p("proj_mlp"), mlp),
            ],
        )?;
        let outs = self
            .net
            .split(prefix, &h, 1, &[(3 * d) as i64, mlp as i64])?;
        let [q, k, v] = self.split_qkv(&p("attn"), sh, &outs[0])?;
        let [q, k] = self.qk_norm(&q, &k, &p("attn.norm_q"), &p("attn.norm_k"))?;
        let q = self.rope(prefix, sh, &q)?;
        let k = self.rope(prefix, sh, &k)?;
        let ctx = self.attention(&p("attn"), &q, &k, &v)?;
        let mlp_act = self.activation(prefix, &outs[1], Activation::GeluTanh)?;
        let cat = self
            .net
            .op("Concat", prefix, &[&ctx, &mlp_act], &[Attr::int("axis", 1)])?;
        let out = self
            .net
            .gemm(&p("proj_out"), &cat, d + mlp, &[(&p("proj_out"), d)])?;
        let out = self.net.reshape(prefix, &out, &sh.seq_shape)?;
        self.gated_residual_tokens(prefix, x, &m, 2, &out)
    }

    /// `HunyuanVideoTokenRefiner` (`context_embedder`): text [B, L, D_text] → [B, L, D].
    fn token_refiner(
        &mut self,
        sh: &Shared,
        cfg: &TransformerConfig,
        text: &Value,
        timestep: &Value,
    ) -> Result<Value> {
        let d = self.dims.d;
        let dt = cfg.text_embed_dim;
        let pre = "context_embedder";
        // Mean of the (unrefined) text as the pooled projection (diffusers' masked mean over
        // valid tokens, which are all the graph gets).
        let ax1 = self.net.i64s(pre, &[1])?;
        let pooled = self.net.op(
            "ReduceMean",
            pre,
            &[text, &ax1],
            &[Attr::int("keepdims", 0)],
        )?;
        let t_emb = self.timestep_embedding(
            &format!("{pre}.time_text_embed.timestep_embedder"),
            timestep,
        )?;
        let c_emb = self.mlp2(&format!("{pre}.time_text_embed.text_embedder"), &pooled, dt)?;
        let temb = self.net.op("Add", pre, &[&t_emb, &c_emb], &[])?;
        let temb_act = self.net.silu(pre, &temb)?;
        let mut h = self.linear_seq(sh, &format!("{pre}.proj_in"), text, dt, d)?;

        let rsh = Shared {
            temb_act,
            token_replace: None,
            ..sh.clone()
        };
        let blocks = cfg.num_refiner_layers;
        // diffusers builds the refiner with its default `mlp_ratio` 4.0, whatever the config says.
        let refiner_mlp = (d as f64 * 4.0) as usize;
        for i in 0..blocks {
            let prefix = format!("{pre}.token_refiner.refiner_blocks.{i}");
            let p = |s: &str| format!("{prefix}.{s}");
            let n1 = self
                .net
                .layer_norm(&p("norm1"), &h, d, NORM_EPS, Affine::Learned)?;
            let qkv = self.linear_rows(
                &p("attn.to_qkv"),
                &n1,
                d,
                &[
                    (&p("attn.to_q"), d),
                    (&p("attn.to_k"), d),
                    (&p("attn.to_v"), d),
                ],
            )?;
            let [q, k, v] = self.split_qkv(&p("attn"), &rsh, &qkv)?;
            let ctx = self.attention(&p("attn"), &q, &k, &v)?;
            let out = self
                .net
                .gemm(&p("attn.to_out.0"), &ctx, d, &[(&p("attn.to_out.0"), d)])?;
            let out = self.net.reshape(&prefix, &out, &rsh.seq_shape)?;
            let gates = self.modulation(&rsh, &p("norm_out.linear"), 2)?;
            h = self.gated_residual(&prefix, &h, &gates[0], &out)?;
            let n2 = self
                .net
                .layer_norm(&p("norm2"), &h, d, NORM_EPS, Affine::Learned)?;
            let ff = self.feed_forward(&rsh, &p("ff"), &n2, d, refiner_mlp, Activation::Silu)?;
            h = self.gated_residual(&prefix, &h, &gates[1], &ff)?;
        }
        Ok(h)
    }
}

/// A dual block's `norm1`, computed ahead of the block (the first block's is TeaCache's
/// indicator, an output of the embed stage).
struct Norm1 {
    /// The six chunks of `norm1.linear`.
    modulation: Modulation,
    /// The modulated LayerNorm of the image tokens.
    output: Value,
}

#[derive(Clone, Copy, Debug)]
enum Activation {
    GeluTanh,
    Silu,
}

/// Build the transformer graph into `net` (weights under diffusers' names).
pub fn build(net: &mut Net<'_>, cfg: &TransformerConfig) -> Result<()> {
    cfg.validate()?;
    let d = cfg.inner_dim();
    let dims = Dims {
        d,
        heads: cfg.num_attention_heads,
        head_dim: cfg.attention_head_dim,
        mlp: cfg.mlp_hidden_dim(),
    };
    let p = cfg.patch_size;
    let c_in = cfg.in_channels;
    let c_out = cfg.out_channels();
    let b = &mut net.b;
    let hs = b.input(
        HIDDEN_STATES,
        DataType::Float,
        &[
            "batch".into(),
            Dim::Fixed(c_in as i64),
            "frames".into(),
            "height".into(),
            "width".into(),
        ],
    )?;
    let timestep = b.input(TIMESTEP, DataType::Float, &["batch".into()])?;
    let text = b.input(
        ENCODER_HIDDEN_STATES,
        DataType::Float,
        &[
            "batch".into(),
            "text_len".into(),
            Dim::Fixed(cfg.text_embed_dim as i64),
        ],
    )?;
    let pooled = b.input(
        POOLED_PROJECTIONS,
        DataType::Float,
        &["batch".into(), Dim::Fixed(cfg.pooled_projection_dim as i64)],
    )?;
    let guidance = if cfg.guidance_embeds {
        Some(b.input(GUIDANCE, DataType::Float, &["batch".into()])?)
    } else {
        None
    };

    let mut g = Dit { net, dims };
    let pre = "transformer";

    // Patch embedding: Conv3d with kernel = stride = (1, p, p) → [B, D, T, h, w] → [B, N, D].
    let w = g
        .net
        .weight("x_embedder.proj.weight", &[d, c_in, cfg.patch_size_t, p, p])?;
    let bias = g.net.weight("x_embedder.proj.bias", &[d])?;
    let pi = p as i64;
    let patches = g.net.op(
        "Conv",
        "x_embedder.proj",
        &[&hs, &w, &bias],
        &[
            Attr::ints("kernel_shape", vec![1, pi, pi]),
            Attr::ints("strides", vec![1, pi, pi]),
        ],
    )?;
    let grid = g.shape_slice(pre, &patches, 2, 5)?; // [T, h, w]
    let flat = g.net.i64s(pre, &[0, d as i64, -1])?;
    let img = g.net.reshape(pre, &patches, &flat)?;
    let img = g.net.op(
        "Transpose",
        pre,
        &[&img],
        &[Attr::ints("perm", vec![0, 2, 1])],
    )?;

    // RoPE over the latent grid, then identity rows for the text tokens.
    let (cos, sin) = rope_tables(&mut g, cfg, &grid, &text)?;
    let rotate = g.net.b.const_f32(
        auto(format!("{pre}/rope_rotate")),
        &rotation_matrix(dims.head_dim),
        &[dims.head_dim as i64, dims.head_dim as i64],
    )?;

    // Conditioning: timestep + guidance + pooled text. Token replace also embeds timestep 0
    // (no guidance term) for the first frame: one embedder call on [timestep; 0].
    let (t_emb, tr_t_emb) = match cfg.image_condition() {
        ImageCondition::TokenReplace => {
            let zero_t = g.net.op("Sub", pre, &[&timestep, &timestep], &[])?;
            let both = g.net.op(
                "Concat",
                pre,
                &[&timestep, &zero_t],
                &[Attr::int("axis", 0)],
            )?;
            let e = g.timestep_embedding("time_text_embed.timestep_embedder", &both)?;
            let [t, tr] = g.batch_halves(pre, &e, &[d as i64])?;
            (t, Some(tr))
        }
        ImageCondition::None | ImageCondition::LatentConcat => (
            g.timestep_embedding("time_text_embed.timestep_embedder", &timestep)?,
            None,
        ),
    };
    let p_emb = g.mlp2(
        "time_text_embed.text_embedder",
        &pooled,
        cfg.pooled_projection_dim,
    )?;
    let mut temb = g.net.op("Add", pre, &[&t_emb, &p_emb], &[])?;
    if let Some(guidance) = &guidance {
        let g_emb = g.timestep_embedding("time_text_embed.guidance_embedder", guidance)?;
        temb = g.net.op("Add", pre, &[&temb, &g_emb], &[])?;
    }
    let temb_act = g.net.silu(pre, &temb)?;
    // Token replace: the conditioning of timestep 0 (no guidance term) for the first frame.
    let token_replace = match tr_t_emb {
        Some(tr) => {
            let tr = g.net.op("Add", pre, &[&tr, &p_emb], &[])?;
            let tr_act = g.net.silu(pre, &tr)?;
            let hw = g.shape_slice(pre, &patches, 3, 5)?;
            let n = g
                .net
                .op("ReduceProd", pre, &[&hw], &[Attr::int("keepdims", 1)])?;
            Some((tr_act, n))
        }
        None => None,
    };

    // The stage boundaries (see `hyvideo_bundle::components::transformer_stages`): every value
    // a later stage reads passes through a cut, and each stage derives its shape values from
    // its own image tokens.
    let img = g.cut(&img, IMG_TOKENS)?;
    let temb_act = g.cut(&temb_act, CONDITIONING)?;
    let cos = g.cut(&cos, ROPE_COS)?;
    let sin = g.cut(&sin, ROPE_SIN)?;
    let token_replace = match token_replace {
        Some((tr_act, n)) => {
            let tr_act = g.cut(&tr_act, TOKEN_REPLACE_CONDITIONING)?;
            let first_frame_tokens = g.cut(&n, FIRST_FRAME_TOKENS)?;
            let both_act = g.net.op(
                "Concat",
                pre,
                &[&temb_act, &tr_act],
                &[Attr::int("axis", 0)],
            )?;
            Some(TokenReplace {
                both_act,
                first_frame_tokens,
            })
        }
        None => None,
    };
    let base = Shared {
        batch: Value::none(),
        seq_shape: Value::none(),
        qkv_shape: Value::none(),
        cos,
        sin,
        rotate,
        temb_act,
        n_img: Value::none(),
        token_replace,
    };
    let sh = g.stage_shared("stage.embed", &img, &base)?;
    let txt = g.token_refiner(&sh, cfg, &text, &timestep)?;
    let mut txt = g.cut(&txt, TXT_TOKENS)?;
    let mut img = img;
    if cfg.num_layers > 0 {
        // Embed stage: the first block's norm1 (TeaCache's indicator). First-block stage.
        let first = "transformer_blocks.0";
        let Norm1 { modulation, output } = g.norm1(first, &sh, &img)?;
        let output = g.cut(&output, FIRST_BLOCK_NORM1)?;
        let (ni, nt) = g.dual_block(first, &sh, &img, &txt, Some(Norm1 { modulation, output }))?;
        img = g.cut(&ni, IMG_FIRST_BLOCK)?;
        txt = g.cut(&nt, TXT_FIRST_BLOCK)?;
    }
    // The rest of the blocks.
    let sh = g.stage_shared("stage.rest_blocks", &img, &sh)?;
    for i in 1..cfg.num_layers {
        let (ni, nt) = g.dual_block(&format!("transformer_blocks.{i}"), &sh, &img, &txt, None)?;
        img = ni;
        txt = nt;
    }
    let mut x = g
        .net
        .op("Concat", pre, &[&img, &txt], &[Attr::int("axis", 1)])?;
    for i in 0..cfg.num_single_layers {
        x = g.single_block(&format!("single_transformer_blocks.{i}"), &sh, &x)?;
    }
    let zero1 = g.net.i64s(pre, &[0])?;
    let img = g.seq_slice(pre, &x, &zero1, &sh.n_img)?;
    let img = g.cut(&img, IMG_ALL_BLOCKS)?;

    // Head: norm_out (AdaLayerNormContinuous: [scale; shift]), proj_out, unpatchify to the
    // latent grid of `hidden_states` (read for its shape).
    let sh = g.stage_shared("stage.head", &img, &sh)?;
    let m = g.modulation(&sh, "norm_out.linear", 2)?;
    let xn = g
        .net
        .layer_norm("norm_out.norm", &img, d, NORM_EPS, Affine::None)?;
    let xn = g.modulate("norm_out", &xn, &m[1], &m[0])?;
    let patch_out = p * p * c_out;
    let out = g.linear_rows("proj_out", &xn, d, &[("proj_out", patch_out)])?;
    let latent_grid = g.shape_slice("stage.head", &hs, 2, 5)?;
    let patch = g.net.i64s("stage.head", &[1, pi, pi])?;
    let grid = g
        .net
        .op("Div", "stage.head", &[&latent_grid, &patch], &[])?;

    // Unpatchify: [B·N, p·p·C] → [B, T, h, w, C, p, p] → [B, C, T, h, p, w, p] → [B, C, T, H, W].
    let inner = g.net.i64s(pre, &[c_out as i64, pi, pi])?;
    let shape7 = g.net.op(
        "Concat",
        pre,
        &[&sh.batch, &grid, &inner],
        &[Attr::int("axis", 0)],
    )?;
    let out = g.net.reshape(pre, &out, &shape7)?;
    let out = g.net.op(
        "Transpose",
        pre,
        &[&out],
        &[Attr::ints("perm", vec![0, 4, 1, 2, 5, 3, 6])],
    )?;
    let mult = g.net.i64s(pre, &[1, pi, pi])?;
    let thw = g.net.op("Mul", pre, &[&grid, &mult], &[])?;
    let c = g.net.i64s(pre, &[c_out as i64])?;
    let shape5 = g.net.op(
        "Concat",
        pre,
        &[&sh.batch, &c, &thw],
        &[Attr::int("axis", 0)],
    )?;
    let out = g.net.reshape(pre, &out, &shape5)?;
    net.b.output_as(
        &out,
        OUTPUT,
        DataType::Float,
        &[
            "batch".into(),
            Dim::Fixed(c_out as i64),
            "frames".into(),
            "height".into(),
            "width".into(),
        ],
    )?;
    Ok(())
}

/// The `[dim, dim]` matrix `R` of `rotate_pairs(x) = x R`: `(x R)[2k] = -x[2k+1]`,
/// `(x R)[2k+1] = x[2k]` (diffusers' `stack([-x_imag, x_real])` on interleaved pairs).
pub fn rotation_matrix(dim: usize) -> Vec<f32> {
    let mut r = vec![0.0f32; dim * dim];
    for k in 0..dim / 2 {
        r[(2 * k + 1) * dim + 2 * k] = -1.0;
        r[2 * k * dim + 2 * k + 1] = 1.0;
    }
    r
}

/// cos and sin `[S, 1, head_dim]` for the joint sequence: the 3-D RoPE of diffusers'
/// `HunyuanVideoRotaryPosEmbed` over the (T, h, w) patch grid, then cos = 1, sin = 0 for the
/// text tokens.
fn rope_tables(
    g: &mut Dit<'_, '_>,
    cfg: &TransformerConfig,
    grid: &Value,
    text: &Value,
) -> Result<(Value, Value)> {
    let pre = "rope";
    let hd = cfg.attention_head_dim as i64;
    let zero = g.net.b.const_i64(auto(format!("{pre}/zero")), &[0], &[])?;
    let one = g.net.b.const_i64(auto(format!("{pre}/one")), &[1], &[])?;
    let mut angles = Vec::with_capacity(3);
    for (axis, &dim) in cfg.rope_axes_dim.iter().enumerate() {
        let idx = g.net.i64s(pre, &[axis as i64])?;
        let size = g
            .net
            .op("Gather", pre, &[grid, &idx], &[Attr::int("axis", 0)])?;
        let size0 = g.net.op("Squeeze", pre, &[&size], &[])?;
        let pos = g.net.op("Range", pre, &[&zero, &size0, &one], &[])?;
        let pos = g.net.op(
            "Cast",
            pre,
            &[&pos],
            &[Attr::int("to", DataType::Float as i64)],
        )?;
        // [size] → [T, 1, 1, 1] / [1, h, 1, 1] / [1, 1, w, 1]
        let mut shape = vec![1i64; 4];
        shape[axis] = -1;
        let shape = g.net.i64s(pre, &shape)?;
        let pos = g.net.reshape(pre, &pos, &shape)?;
        let freqs = g.net.b.const_f32(
            auto(format!("{pre}/freqs")),
            &rope_frequencies(dim, cfg.rope_theta),
            &[1, 1, 1, dim as i64],
        )?;
        let a = g.net.op("Mul", pre, &[&pos, &freqs], &[])?;
        // broadcast to [T, h, w, dim]
        let dim_t = g.net.i64s(pre, &[dim as i64])?;
        let full = g
            .net
            .op("Concat", pre, &[grid, &dim_t], &[Attr::int("axis", 0)])?;
        angles.push(g.net.op("Expand", pre, &[&a, &full], &[])?);
    }
    let refs: Vec<&Value> = angles.iter().collect();
    let ang = g.net.op("Concat", pre, &refs, &[Attr::int("axis", 3)])?;
    let flat = g.net.i64s(pre, &[-1, 1, hd])?;
    let ang = g.net.reshape(pre, &ang, &flat)?;
    let cos = g.net.op("Cos", pre, &[&ang], &[])?;
    let sin = g.net.op("Sin", pre, &[&ang], &[])?;
    // Text rows: cos 1, sin 0.
    let l = g.shape_slice(pre, text, 1, 2)?;
    let tail = g.net.i64s(pre, &[1, hd])?;
    let txt_shape = g
        .net
        .op("Concat", pre, &[&l, &tail], &[Attr::int("axis", 0)])?;
    let ones = g
        .net
        .b
        .const_f32(auto(format!("{pre}/one_f")), &[1.0], &[1, 1, 1])?;
    let zeros = g
        .net
        .b
        .const_f32(auto(format!("{pre}/zero_f")), &[0.0], &[1, 1, 1])?;
    let txt_cos = g.net.op("Expand", pre, &[&ones, &txt_shape], &[])?;
    let txt_sin = g.net.op("Expand", pre, &[&zeros, &txt_shape], &[])?;
    let cos = g
        .net
        .op("Concat", pre, &[&cos, &txt_cos], &[Attr::int("axis", 0)])?;
    let sin = g
        .net
        .op("Concat", pre, &[&sin, &txt_sin], &[Attr::int("axis", 0)])?;
    Ok((cos, sin))
}

/// A fresh graph builder for the transformer.
pub fn graph_builder() -> GraphBuilder {
    GraphBuilder::new("transformer")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestep_frequencies_match_torch() {
        let f = timestep_frequencies();
        assert_eq!(f.len(), 128);
        assert_eq!(f[0], 1.0);
        // exp(-ln(1e4) * 64 / 128) = 1e-2
        assert!((f[64] - 0.01).abs() < 1e-8);
        assert!(f.windows(2).all(|w| w[1] < w[0]));
    }

    #[test]
    fn rotation_matrix_rotates_pairs() {
        let r = rotation_matrix(4);
        let x = [1.0f32, 2.0, 3.0, 4.0];
        let y: Vec<f32> = (0..4)
            .map(|j| (0..4).map(|i| x[i] * r[i * 4 + j]).sum())
            .collect();
        assert_eq!(y, [-2.0, 1.0, -4.0, 3.0]);
    }

    #[test]
    fn rope_frequencies_repeat_interleaved() {
        let f = rope_frequencies(6, 256.0);
        assert_eq!(f.len(), 6);
        assert_eq!((f[0], f[1]), (1.0, 1.0));
        assert_eq!(f[2], f[3]);
        assert!((f[2] - 1.0 / 256f32.powf(2.0 / 6.0)).abs() < 1e-7);
        assert!((f[4] - 1.0 / 256f32.powf(4.0 / 6.0)).abs() < 1e-7);
    }
}
