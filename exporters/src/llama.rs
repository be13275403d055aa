//! The HunyuanVideo text encoder (`text_encoder`, a Llama-3 `LlamaModel`) as an ONNX graph, up to
//! the hidden state the pipeline uses.
//!
//! Mirrors transformers 5.x `models/llama/modeling_llama.py` (`LlamaModel.forward`,
//! `LlamaDecoderLayer`, `LlamaAttention` with grouped-query attention, `LlamaMLP`,
//! `LlamaRMSNorm`, `LlamaRotaryEmbedding` with default RoPE and `rotate_half`),
//! `masking_utils.create_causal_mask`, and diffusers
//! `HunyuanVideoPipeline._get_llama_prompt_embeds`, which takes
//! `hidden_states[-(num_hidden_layers_to_skip + 1)]` with skip 2. transformers' `hidden_states`
//! are the embeddings followed by each layer's output (the last one replaced by the final-normed
//! state), so that entry is the output of layer `num_hidden_layers - 2` (1-based): only those
//! layers are exported, and neither the later layers nor the final `norm`.
//!
//! Graph choices (same numbers as transformers, written for inference engines):
//! - every `nn.Linear` is a 2-D `Gemm` with `transB = 1` on the checkpoint's `[out, in]` weight;
//!   `q_proj|k_proj|v_proj` and `gate_proj|up_proj` are fused;
//! - RoPE cos/sin are computed in the graph from the sequence length (positions `0..L`, as
//!   `LlamaModel` uses without a cache), `rotate_half` as Split → Neg → Concat;
//! - key/value heads are repeated to the query heads (`repeat_kv`) by Expand → Reshape, and
//!   attention is [`crate::attention`]'s builder with the bias as an additive mask;
//! - the mask is transformers' causal mask combined with the padding mask: query `i` attends key
//!   `j` iff `j <= i` and `attention_mask[j] != 0` (an `[B, 1, L, L]` bias; L ≤ a few hundred
//!   for text). Masked scores get `f32::MIN` (as transformers' eager mask) rather than `-inf`,
//!   so a query with no visible key (only possible with left padding) stays finite; every
//!   other row is identical either way.
//!
//! Inputs `input_ids` i64[B, L], `attention_mask` i64[B, L] (1 = token); output
//! `hidden_states` f32[B, L, hidden_size]. B and L dynamic.
//!
//! The language model of a LLaVA text encoder (HunyuanVideo-I2V) also takes `image_embeds`
//! f32[B, N, hidden_size] (the vision graph's, [`crate::clip_vision`]) and puts them in place of
//! the `<image>` tokens' embeddings, in order (transformers `LlavaModel.forward`'s
//! `masked_scatter`): the k-th `<image>` position of a row gets its k-th image embedding. The
//! pipeline's position ids (`cumsum(mask) − 1`, pads 1) equal `0..L` on every real token of a
//! right-padded prompt, and pad rows are never read, so positions stay `0..L`.

use crate::attention::{AttentionMask, Heads, attention};
use crate::checkpoint::{Checkpoint, LlamaConfig};
use crate::error::{ExportError, Result};
use crate::graph::Net;
use crate::onnx::{Attr, DataType, Dim, GraphBuilder, Value, auto};
use hyvideo_bundle::Component;

pub use hyvideo_bundle::components::llama::{ATTENTION_MASK, IMAGE_EMBEDS, INPUT_IDS, OUTPUT};

/// A LLaVA language model's image input: the token its image embeddings replace, and how many
/// embeddings an image gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageTokens {
    pub token_id: i64,
    pub count: usize,
}

/// diffusers `HunyuanVideoPipeline.encode_prompt(num_hidden_layers_to_skip=2)`.
pub const NUM_HIDDEN_LAYERS_TO_SKIP: usize = 2;

/// Key prefixes a Llama text encoder checkpoint may use: a saved `LlamaModel` (diffusers'
/// HunyuanVideo `text_encoder/`), a `LlamaForCausalLM`, and the language model inside a Llava
/// checkpoint (transformers 4 and 5 layouts).
pub const CHECKPOINT_PREFIXES: [&str; 4] =
    ["", "model", "language_model.model", "model.language_model"];

/// The component this graph builder writes (what its errors name).
const COMPONENT: Component = Component::TextEncoder;

/// The number of decoder layers whose output is `hidden_states[-(skip + 1)]`.
pub fn layers_used(cfg: &LlamaConfig, skip: usize) -> Result<usize> {
    if cfg.num_hidden_layers <= skip {
        return Err(ExportError::of(
            COMPONENT,
            format!(
                "{}: num_hidden_layers = {} but the pipeline takes hidden_states[-{}], the output of \
             layer num_hidden_layers - {skip}: the model needs more than {skip} layers",
                cfg.source.display(),
                cfg.num_hidden_layers,
                skip + 1
            ),
        ));
    }
    Ok(cfg.num_hidden_layers - skip)
}

/// RoPE inverse frequencies `1 / theta^(2k / head_dim)`, k < head_dim / 2, as transformers'
/// `compute_default_rope_parameters` computes them in f32 (the power evaluated exactly, then
/// rounded once).
pub fn inv_freq(head_dim: usize, theta: f64) -> Vec<f32> {
    let base = theta as f32 as f64;
    (0..head_dim / 2)
        .map(|k| {
            let e = ((2 * k) as f32 / head_dim as f32) as f64;
            let p = base.powf(e) as f32;
            1.0 / p
        })
        .collect()
}

/// The key prefix (see [`CHECKPOINT_PREFIXES`]) under which `ckpt` holds the Llama weights.
pub fn checkpoint_prefix(ckpt: &Checkpoint) -> Result<&'static str> {
    ckpt.probe_prefix(&CHECKPOINT_PREFIXES, "embed_tokens.weight")
        .map_err(|e| ExportError::of(COMPONENT, format!("no Llama token embedding: {e}")))
}

/// Sizes the graph is built for.
#[derive(Clone, Copy, Debug)]
struct Dims {
    hidden: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    intermediate: usize,
    eps: f32,
    attention_bias: bool,
    mlp_bias: bool,
}

/// Values computed once and shared by every layer.
struct Shared {
    /// `[B, -1, hidden]`: token rows back to sequences.
    seq_shape: Value,
    /// `[B, -1, heads + 2·kv_heads, head_dim]` for the fused q|k|v projection.
    qkv_shape: Value,
    /// RoPE cos / sin, `[L, 1, head_dim]`.
    cos: Value,
    sin: Value,
    /// Causal + padding bias, `[B, 1, L, L]` (0 or `f32::MIN`).
    bias: Value,
}

struct Llama<'a, 'w> {
    net: &'a mut Net<'w>,
    dims: Dims,
}

impl Llama<'_, '_> {
    /// `Linear`s (all with or all without bias) fused into one `Gemm` on token rows.
    fn linear(
        &mut self,
        fused: &str,
        rows: &Value,
        i: usize,
        modules: &[(&str, usize)],
        bias: bool,
    ) -> Result<Value> {
        if bias {
            self.net.gemm(fused, rows, i, modules)
        } else {
            self.net.gemm_no_bias(fused, rows, i, modules)
        }
    }

    /// `LlamaRMSNorm` of `x` [B, L, hidden] as token rows [B·L, hidden].
    fn norm_rows(&mut self, prefix: &str, x: &Value) -> Result<Value> {
        let Dims { hidden, eps, .. } = self.dims;
        let h = self.net.rms_norm(prefix, x, hidden, eps)?;
        let shape = self.net.i64s(prefix, &[-1, hidden as i64])?;
        self.net.reshape(prefix, &h, &shape)
    }

    /// `rotate_half`: `cat(-x[.., d/2:], x[.., :d/2])` on the last axis.
    fn rotate_half(&mut self, prefix: &str, x: &Value) -> Result<Value> {
        let half = (self.dims.head_dim / 2) as i64;
        let parts = self.net.split(prefix, x, -1, &[half, half])?;
        let neg = self.net.op("Neg", prefix, &[&parts[1]], &[])?;
        self.net.op(
            "Concat",
            prefix,
            &[&neg, &parts[0]],
            &[Attr::int("axis", -1)],
        )
    }

    /// `x * cos + rotate_half(x) * sin` on [B, L, heads, head_dim].
    fn rope(&mut self, prefix: &str, sh: &Shared, x: &Value) -> Result<Value> {
        let xc = self.net.op("Mul", prefix, &[x, &sh.cos], &[])?;
        let r = self.rotate_half(prefix, x)?;
        let xs = self.net.op("Mul", prefix, &[&r, &sh.sin], &[])?;
        self.net.op("Add", prefix, &[&xc, &xs], &[])
    }

    /// Grouped-query scaled dot-product attention of q [B, L, heads, d], k, v
    /// [B, L, kv_heads, d] with `bias` [B, 1, L, L]; result as token rows [B·L, heads·d].
    fn attention(
        &mut self,
        prefix: &str,
        q: &Value,
        k: &Value,
        v: &Value,
        bias: &Value,
    ) -> Result<Value> {
        let Dims {
            heads,
            kv_heads,
            head_dim,
            ..
        } = self.dims;
        let layout = Heads {
            heads,
            kv_heads,
            head_dim,
        };
        let ctx = attention(
            self.net,
            prefix,
            q,
            k,
            v,
            layout,
            AttentionMask::Additive(bias),
        )?;
        let rows = self.net.i64s(prefix, &[-1, (heads * head_dim) as i64])?;
        self.net.reshape(prefix, &ctx, &rows)
    }

    /// `LlamaDecoderLayer` on `x` [B, L, hidden].
    fn layer(&mut self, prefix: &str, sh: &Shared, x: &Value) -> Result<Value> {
        let Dims {
            hidden,
            heads,
            kv_heads,
            head_dim,
            intermediate,
            attention_bias,
            mlp_bias,
            ..
        } = self.dims;
        let p = |s: &str| format!("{prefix}.{s}");
        let h = self.norm_rows(&p("input_layernorm"), x)?;
        let qkv = self.linear(
            &p("self_attn.qkv_proj"),
            &h,
            hidden,
            &[
                (&p("self_attn.q_proj"), heads * head_dim),
                (&p("self_attn.k_proj"), kv_heads * head_dim),
                (&p("self_attn.v_proj"), kv_heads * head_dim),
            ],
            attention_bias,
        )?;
        let [q, k, v] =
            self.net
                .split_qkv(&p("self_attn"), &qkv, &sh.qkv_shape, [heads, kv_heads])?;
        let q = self.rope(&p("self_attn"), sh, &q)?;
        let k = self.rope(&p("self_attn"), sh, &k)?;
        let ctx = self.attention(&p("self_attn"), &q, &k, &v, &sh.bias)?;
        let o = self.linear(
            &p("self_attn.o_proj"),
            &ctx,
            heads * head_dim,
            &[(&p("self_attn.o_proj"), hidden)],
            attention_bias,
        )?;
        let o = self.net.reshape(prefix, &o, &sh.seq_shape)?;
        let x = self.net.op("Add", prefix, &[x, &o], &[])?;

        let h = self.norm_rows(&p("post_attention_layernorm"), &x)?;
        let gate_up = self.linear(
            &p("mlp.gate_up_proj"),
            &h,
            hidden,
            &[
                (&p("mlp.gate_proj"), intermediate),
                (&p("mlp.up_proj"), intermediate),
            ],
            mlp_bias,
        )?;
        let i = intermediate as i64;
        let gu = self.net.split(&p("mlp"), &gate_up, 1, &[i, i])?;
        let act = self.net.silu(&p("mlp"), &gu[0])?;
        let m = self.net.op("Mul", &p("mlp"), &[&act, &gu[1]], &[])?;
        let down = self.linear(
            &p("mlp.down_proj"),
            &m,
            intermediate,
            &[(&p("mlp.down_proj"), hidden)],
            mlp_bias,
        )?;
        let down = self.net.reshape(prefix, &down, &sh.seq_shape)?;
        self.net.op("Add", prefix, &[&x, &down], &[])
    }
}

/// Build the text-encoder graph into `net` (weights under `LlamaModel`'s names:
/// `embed_tokens.weight`, `layers.N.*`); with `image`, the LLaVA language model taking
/// `image_embeds`.
pub fn build(net: &mut Net<'_>, cfg: &LlamaConfig, image: Option<ImageTokens>) -> Result<()> {
    cfg.validate()?;
    let layers = layers_used(cfg, NUM_HIDDEN_LAYERS_TO_SKIP)?;
    let dims = Dims {
        hidden: cfg.hidden_size,
        heads: cfg.num_attention_heads,
        kv_heads: cfg.num_key_value_heads(),
        head_dim: cfg.head_dim(),
        intermediate: cfg.intermediate_size,
        eps: cfg.rms_norm_eps as f32,
        attention_bias: cfg.attention_bias,
        mlp_bias: cfg.mlp_bias,
    };
    let ids = net.b.input(
        INPUT_IDS,
        DataType::Int64,
        &["batch".into(), "text_len".into()],
    )?;
    let mask = net.b.input(
        ATTENTION_MASK,
        DataType::Int64,
        &["batch".into(), "text_len".into()],
    )?;
    let mut g = Llama { net, dims };
    let pre = "text_encoder";

    let embed = g
        .net
        .weight("embed_tokens.weight", &[cfg.vocab_size, dims.hidden])?;
    let mut x = g.net.op(
        "Gather",
        "embed_tokens",
        &[&embed, &ids],
        &[Attr::int("axis", 0)],
    )?;
    if let Some(image) = image {
        x = merge_image(&mut g, &ids, &x, image, cfg.hidden_size)?;
    }

    let batch = g.net.op(
        "Shape",
        pre,
        &[&ids],
        &[Attr::int("start", 0), Attr::int("end", 1)],
    )?;
    let len = g.net.op(
        "Shape",
        pre,
        &[&ids],
        &[Attr::int("start", 1), Attr::int("end", 2)],
    )?;
    let tail = g.net.i64s(pre, &[-1, dims.hidden as i64])?;
    let seq_shape = g
        .net
        .op("Concat", pre, &[&batch, &tail], &[Attr::int("axis", 0)])?;
    let tail = g.net.i64s(
        pre,
        &[
            -1,
            (dims.heads + 2 * dims.kv_heads) as i64,
            dims.head_dim as i64,
        ],
    )?;
    let qkv_shape = g
        .net
        .op("Concat", pre, &[&batch, &tail], &[Attr::int("axis", 0)])?;

    // Positions 0..L.
    let zero = g.net.b.const_i64(auto(format!("{pre}/zero")), &[0], &[])?;
    let one = g.net.b.const_i64(auto(format!("{pre}/one")), &[1], &[])?;
    let l0 = g.net.op("Squeeze", pre, &[&len], &[])?;
    let idx = g.net.op("Range", pre, &[&zero, &l0, &one], &[])?;

    // RoPE tables [L, 1, head_dim]: emb = cat(freqs, freqs), freqs = pos · inv_freq.
    let rope = "rotary_emb";
    let pos = g.net.op(
        "Cast",
        rope,
        &[&idx],
        &[Attr::int("to", DataType::Float as i64)],
    )?;
    let ax1 = g.net.i64s(rope, &[1])?;
    let pos = g.net.op("Unsqueeze", rope, &[&pos, &ax1], &[])?;
    let inv = inv_freq(dims.head_dim, cfg.rope_theta());
    let inv = g.net.b.const_f32(
        auto(format!("{rope}/inv_freq")),
        &inv,
        &[1, (dims.head_dim / 2) as i64],
    )?;
    let freqs = g.net.op("Mul", rope, &[&pos, &inv], &[])?;
    let emb = g
        .net
        .op("Concat", rope, &[&freqs, &freqs], &[Attr::int("axis", 1)])?;
    let emb = g.net.op("Unsqueeze", rope, &[&emb, &ax1], &[])?;
    let cos = g.net.op("Cos", rope, &[&emb], &[])?;
    let sin = g.net.op("Sin", rope, &[&emb], &[])?;

    // Causal + padding bias [B, 1, L, L]: key j visible to query i iff j <= i and mask[j] != 0.
    let m = "causal_mask";
    let ax0 = g.net.i64s(m, &[0])?;
    let qi = g.net.op("Unsqueeze", m, &[&idx, &ax1], &[])?;
    let kj = g.net.op("Unsqueeze", m, &[&idx, &ax0], &[])?;
    let causal = g.net.op("LessOrEqual", m, &[&kj, &qi], &[])?;
    let keys = g.net.op(
        "Cast",
        m,
        &[&mask],
        &[Attr::int("to", DataType::Bool as i64)],
    )?;
    let ax12 = g.net.i64s(m, &[1, 2])?;
    let keys = g.net.op("Unsqueeze", m, &[&keys, &ax12], &[])?;
    let allowed = g.net.op("And", m, &[&causal, &keys], &[])?;
    let zero_f = g.net.f32_scalar(m, 0.0)?;
    let min_f = g.net.f32_scalar(m, f32::MIN)?;
    let bias = g.net.op("Where", m, &[&allowed, &zero_f, &min_f], &[])?;

    let sh = Shared {
        seq_shape,
        qkv_shape,
        cos,
        sin,
        bias,
    };
    for i in 0..layers {
        x = g.layer(&format!("layers.{i}"), &sh, &x)?;
    }
    net.b.output_as(
        &x,
        OUTPUT,
        DataType::Float,
        &[
            "batch".into(),
            "text_len".into(),
            Dim::Fixed(cfg.hidden_size as i64),
        ],
    )?;
    Ok(())
}

/// `<image>` positions of `x` [B, L, hidden] replaced by the `image_embeds` input in order: at
/// position j, embedding `cumsum(is_image)[j] − 1` (clamped into range; only `<image>`
/// positions read it).
fn merge_image(
    g: &mut Llama<'_, '_>,
    ids: &Value,
    x: &Value,
    image: ImageTokens,
    hidden: usize,
) -> Result<Value> {
    let pre = "image_embeds";
    let embeds = g.net.b.input(
        IMAGE_EMBEDS,
        DataType::Float,
        &[
            "batch".into(),
            Dim::Fixed(image.count as i64),
            Dim::Fixed(hidden as i64),
        ],
    )?;
    let token = g
        .net
        .b
        .const_i64(auto(format!("{pre}/token")), &[image.token_id], &[])?;
    let is_image = g.net.op("Equal", pre, &[ids, &token], &[])?;
    let count = g.net.op(
        "Cast",
        pre,
        &[&is_image],
        &[Attr::int("to", DataType::Int64 as i64)],
    )?;
    let ax1 = g.net.b.const_i64(auto(format!("{pre}/axis")), &[1], &[])?;
    let k = g.net.op("CumSum", pre, &[&count, &ax1], &[])?;
    let one = g.net.i64s(pre, &[1])?;
    let k = g.net.op("Sub", pre, &[&k, &one], &[])?;
    let zero = g.net.i64s(pre, &[0])?;
    let last = g.net.i64s(pre, &[image.count as i64 - 1])?;
    let k = g.net.op("Max", pre, &[&k, &zero], &[])?;
    let k = g.net.op("Min", pre, &[&k, &last], &[])?;
    let ax2 = g.net.i64s(pre, &[2])?;
    let k = g.net.op("Unsqueeze", pre, &[&k, &ax2], &[])?;
    let shape = g.net.op("Shape", pre, &[x], &[])?;
    let k = g.net.op("Expand", pre, &[&k, &shape], &[])?;
    let picked = g.net.op(
        "GatherElements",
        pre,
        &[&embeds, &k],
        &[Attr::int("axis", 1)],
    )?;
    let is_image = g.net.op("Unsqueeze", pre, &[&is_image, &ax2], &[])?;
    g.net.op("Where", pre, &[&is_image, &picked, x], &[])
}

/// A fresh graph builder for the Llama text encoder.
pub fn graph_builder() -> GraphBuilder {
    GraphBuilder::new("text_encoder")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inv_freq_is_one_over_theta_powers() {
        let f = inv_freq(8, 10000.0);
        assert_eq!(f.len(), 4);
        assert_eq!(f[0], 1.0);
        assert!((f[1] - 0.1).abs() < 1e-8);
        assert!((f[2] - 0.01).abs() < 1e-9);
        assert!((f[3] - 0.001).abs() < 1e-10);
    }
}
