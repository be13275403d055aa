//! The HunyuanVideo second text encoder (`text_encoder_2`, a CLIP `CLIPTextModel`) as an ONNX
//! graph producing `pooler_output`.
//!
//! Mirrors transformers 5.x `models/clip/modeling_clip.py` (`CLIPTextModel.forward`,
//! `CLIPTextEmbeddings`, `CLIPEncoderLayer`, `CLIPAttention`, `CLIPMLP`) as diffusers'
//! `HunyuanVideoPipeline._get_clip_prompt_embeds` calls it: with `input_ids` only, so the only
//! mask is the causal one (transformers builds no padding mask without `attention_mask`).
//!
//! `pooler_output` is the final-layer-normed state at one token per row, chosen exactly as
//! transformers does: with the legacy `eos_token_id == 2` (openai/clip-vit-large-patch14's
//! config) the first position of the largest id (`argmax(input_ids)`, the real end-of-text
//! 49407); otherwise the first position holding `eos_token_id` (position 0 when there is none,
//! as `argmax` of all zeros). Both are `ArgMax` (first maximum) on an int32 tensor, as
//! transformers casts.
//!
//! Its encoder layers ([`Clip`]) also build LLaVA's CLIP vision tower ([`crate::clip_vision`]),
//! there without a mask.
//!
//! Graph choices: every `nn.Linear` a 2-D `Gemm` (`transB = 1`) with `q|k|v` fused, attention
//! [`crate::attention`]'s builder with the causal bias as an additive mask, quick-GELU as `x · sigmoid(1.702 x)`.
//!
//! Input `input_ids` i64[B, max_position_embeddings] (77); output `pooler_output`
//! f32[B, hidden_size]. B dynamic.

use crate::attention::{AttentionMask, Heads, attention};
use crate::checkpoint::{Checkpoint, ClipTextConfig};
use crate::error::{ExportError, Result};
use crate::graph::{Affine, Net};
use crate::onnx::{Attr, DataType, Dim, GraphBuilder, Value, auto};
use hyvideo_bundle::Component;
use std::path::Path;

pub use hyvideo_bundle::components::clip::{INPUT_IDS, OUTPUT};

/// Key prefixes a CLIP text checkpoint may use: transformers 5's `CLIPTextModel` (none),
/// transformers 4's (`text_model`, as in diffusers' HunyuanVideo `text_encoder_2/`).
pub const CHECKPOINT_PREFIXES: [&str; 2] = ["", "text_model"];

/// The component this graph builder writes (what its errors name).
const COMPONENT: Component = Component::TextEncoder2;

/// The key prefix (see [`CHECKPOINT_PREFIXES`]) under which `ckpt` holds the CLIP weights.
pub fn checkpoint_prefix(ckpt: &Checkpoint) -> Result<&'static str> {
    ckpt.probe_prefix(&CHECKPOINT_PREFIXES, "embeddings.token_embedding.weight")
        .map_err(|e| ExportError::of(COMPONENT, format!("no CLIP token embedding: {e}")))
}

#[derive(Clone, Copy, Debug)]
pub(crate) enum Activation {
    QuickGelu,
    Gelu,
}

impl Activation {
    /// `hidden_act` of a CLIP config (text or vision).
    pub(crate) fn parse(hidden_act: &str, component: Component, file: &Path) -> Result<Self> {
        match hidden_act {
            "quick_gelu" => Ok(Activation::QuickGelu),
            "gelu" => Ok(Activation::Gelu),
            other => Err(ExportError::of(
                component,
                format!(
                    "{}: hidden_act `{other}` is not supported (only quick_gelu and gelu)",
                    file.display()
                ),
            )),
        }
    }
}

/// Sizes the graph is built for.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Dims {
    pub hidden: usize,
    pub heads: usize,
    pub head_dim: usize,
    pub intermediate: usize,
    pub eps: f32,
    pub act: Activation,
}

/// CLIP encoder layers (`CLIPEncoderLayer`), shared by the text encoder and LLaVA's vision
/// tower ([`crate::clip_vision`]).
pub(crate) struct Clip<'a, 'w> {
    pub net: &'a mut Net<'w>,
    pub dims: Dims,
    /// `[B, -1, hidden]`.
    pub seq_shape: Value,
    /// `[B, -1, 3·heads, head_dim]`.
    pub qkv_shape: Value,
    /// The text encoder's causal bias `[L, L]` (0 or `f32::MIN`); the vision tower has none.
    pub bias: Option<Value>,
}

impl Clip<'_, '_> {
    /// `nn.LayerNorm` of `x` [B, L, hidden] as token rows [B·L, hidden].
    fn norm_rows(&mut self, prefix: &str, x: &Value) -> Result<Value> {
        let Dims { hidden, eps, .. } = self.dims;
        let h = self
            .net
            .layer_norm(prefix, x, hidden, eps, Affine::Learned)?;
        let shape = self.net.i64s(prefix, &[-1, hidden as i64])?;
        self.net.reshape(prefix, &h, &shape)
    }

    /// `CLIPAttention` on token rows [B·L, hidden] → [B, L, hidden].
    fn attention(&mut self, prefix: &str, rows: &Value) -> Result<Value> {
        let Dims {
            hidden,
            heads,
            head_dim,
            ..
        } = self.dims;
        let p = |s: &str| format!("{prefix}.{s}");
        let qkv = self.net.gemm(
            &p("qkv_proj"),
            rows,
            hidden,
            &[
                (&p("q_proj"), hidden),
                (&p("k_proj"), hidden),
                (&p("v_proj"), hidden),
            ],
        )?;
        let layout = Heads {
            heads,
            kv_heads: heads,
            head_dim,
        };
        let qkv_shape = self.qkv_shape.clone();
        let [q, k, v] = self
            .net
            .split_qkv(prefix, &qkv, &qkv_shape, [heads, heads])?;
        let bias = self.bias.clone();
        let mask = match &bias {
            Some(b) => AttentionMask::Additive(b),
            None => AttentionMask::None,
        };
        let ctx = attention(self.net, prefix, &q, &k, &v, layout, mask)?;
        let shape = self.net.i64s(prefix, &[-1, hidden as i64])?;
        let ctx = self.net.reshape(prefix, &ctx, &shape)?;
        let out = self
            .net
            .gemm(&p("out_proj"), &ctx, hidden, &[(&p("out_proj"), hidden)])?;
        self.net.reshape(prefix, &out, &self.seq_shape.clone())
    }

    /// `CLIPMLP` on token rows → [B, L, hidden].
    fn mlp(&mut self, prefix: &str, rows: &Value) -> Result<Value> {
        let Dims {
            hidden,
            intermediate,
            act,
            ..
        } = self.dims;
        let fc1 = format!("{prefix}.fc1");
        let fc2 = format!("{prefix}.fc2");
        let h = self.net.gemm(&fc1, rows, hidden, &[(&fc1, intermediate)])?;
        let h = match act {
            Activation::QuickGelu => {
                let k = self.net.f32_scalar(prefix, 1.702)?;
                let kx = self.net.op("Mul", prefix, &[&h, &k], &[])?;
                let s = self.net.op("Sigmoid", prefix, &[&kx], &[])?;
                self.net.op("Mul", prefix, &[&h, &s], &[])?
            }
            Activation::Gelu => self.net.op("Gelu", prefix, &[&h], &[])?,
        };
        let out = self.net.gemm(&fc2, &h, intermediate, &[(&fc2, hidden)])?;
        self.net.reshape(prefix, &out, &self.seq_shape.clone())
    }

    /// `CLIPEncoderLayer` on `x` [B, L, hidden].
    pub(crate) fn layer(&mut self, prefix: &str, x: &Value) -> Result<Value> {
        let p = |s: &str| format!("{prefix}.{s}");
        let h = self.norm_rows(&p("layer_norm1"), x)?;
        let a = self.attention(&p("self_attn"), &h)?;
        let x = self.net.op("Add", prefix, &[x, &a], &[])?;
        let h = self.norm_rows(&p("layer_norm2"), &x)?;
        let m = self.mlp(&p("mlp"), &h)?;
        self.net.op("Add", prefix, &[&x, &m], &[])
    }
}

/// Build the CLIP text-encoder graph into `net` (weights under transformers 5's
/// `CLIPTextModel` names: `embeddings.*`, `encoder.layers.N.*`, `final_layer_norm.*`).
pub fn build(net: &mut Net<'_>, cfg: &ClipTextConfig) -> Result<()> {
    cfg.validate()?;
    let act = Activation::parse(&cfg.hidden_act, COMPONENT, &cfg.source)?;
    let dims = Dims {
        hidden: cfg.hidden_size,
        heads: cfg.num_attention_heads,
        head_dim: cfg.head_dim(),
        intermediate: cfg.intermediate_size,
        eps: cfg.layer_norm_eps as f32,
        act,
    };
    let len = cfg.max_position_embeddings;
    let ids = net.b.input(
        INPUT_IDS,
        DataType::Int64,
        &["batch".into(), Dim::Fixed(len as i64)],
    )?;
    let pre = "text_encoder_2";

    // Embeddings: token + position (positions 0..L, L = max_position_embeddings).
    let tok_w = net.weight(
        "embeddings.token_embedding.weight",
        &[cfg.vocab_size, dims.hidden],
    )?;
    let pos_w = net.weight("embeddings.position_embedding.weight", &[len, dims.hidden])?;
    let tok = net.op(
        "Gather",
        "embeddings.token_embedding",
        &[&tok_w, &ids],
        &[Attr::int("axis", 0)],
    )?;
    let mut x = net.op("Add", "embeddings", &[&tok, &pos_w], &[])?;

    let batch = net.op(
        "Shape",
        pre,
        &[&ids],
        &[Attr::int("start", 0), Attr::int("end", 1)],
    )?;
    let tail = net.i64s(pre, &[-1, dims.hidden as i64])?;
    let seq_shape = net.op("Concat", pre, &[&batch, &tail], &[Attr::int("axis", 0)])?;
    let tail = net.i64s(pre, &[-1, (3 * dims.heads) as i64, dims.head_dim as i64])?;
    let qkv_shape = net.op("Concat", pre, &[&batch, &tail], &[Attr::int("axis", 0)])?;

    // Causal bias [L, L]: key j visible to query i iff j <= i.
    let m = "causal_mask";
    let zero = net.b.const_i64(auto(format!("{m}/zero")), &[0], &[])?;
    let one = net.b.const_i64(auto(format!("{m}/one")), &[1], &[])?;
    let l = net.op(
        "Shape",
        m,
        &[&ids],
        &[Attr::int("start", 1), Attr::int("end", 2)],
    )?;
    let l0 = net.op("Squeeze", m, &[&l], &[])?;
    let idx = net.op("Range", m, &[&zero, &l0, &one], &[])?;
    let ax0 = net.i64s(m, &[0])?;
    let ax1 = net.i64s(m, &[1])?;
    let qi = net.op("Unsqueeze", m, &[&idx, &ax1], &[])?;
    let kj = net.op("Unsqueeze", m, &[&idx, &ax0], &[])?;
    let causal = net.op("LessOrEqual", m, &[&kj, &qi], &[])?;
    let zero_f = net.f32_scalar(m, 0.0)?;
    let min_f = net.f32_scalar(m, f32::MIN)?;
    let bias = net.op("Where", m, &[&causal, &zero_f, &min_f], &[])?;

    let mut g = Clip {
        net,
        dims,
        seq_shape,
        qkv_shape,
        bias: Some(bias),
    };
    for i in 0..cfg.num_hidden_layers {
        x = g.layer(&format!("encoder.layers.{i}"), &x)?;
    }
    let x = g.net.layer_norm(
        "final_layer_norm",
        &x,
        dims.hidden,
        dims.eps,
        Affine::Learned,
    )?;

    // Pooling: the row index of each sequence's end-of-text token.
    let p = "pooler";
    let scores = if cfg.pooler_uses_argmax() {
        ids.clone()
    } else {
        let eos = g
            .net
            .b
            .const_i64(auto(format!("{p}/eos")), &[cfg.eos_token_id], &[])?;
        g.net.op("Equal", p, &[&ids, &eos], &[])?
    };
    let scores = g.net.op(
        "Cast",
        p,
        &[&scores],
        &[Attr::int("to", DataType::Int32 as i64)],
    )?;
    let pick = g.net.op(
        "ArgMax",
        p,
        &[&scores],
        &[Attr::int("axis", 1), Attr::int("keepdims", 0)],
    )?;
    // Gather row b·L + pick[b] of the [B·L, hidden] states.
    let b0 = g.net.op("Squeeze", p, &[&batch], &[])?;
    let rows_idx = g.net.op("Range", p, &[&zero, &b0, &one], &[])?;
    let lc = g
        .net
        .b
        .const_i64(auto(format!("{p}/len")), &[len as i64], &[])?;
    let base = g.net.op("Mul", p, &[&rows_idx, &lc], &[])?;
    let flat_idx = g.net.op("Add", p, &[&base, &pick], &[])?;
    let shape = g.net.i64s(p, &[-1, dims.hidden as i64])?;
    let rows = g.net.reshape(p, &x, &shape)?;
    let pooled = g
        .net
        .op("Gather", p, &[&rows, &flat_idx], &[Attr::int("axis", 0)])?;
    net.b.output_as(
        &pooled,
        OUTPUT,
        DataType::Float,
        &["batch".into(), Dim::Fixed(cfg.hidden_size as i64)],
    )?;
    Ok(())
}

/// A fresh graph builder for the CLIP text encoder.
pub fn graph_builder() -> GraphBuilder {
    GraphBuilder::new("text_encoder_2")
}
