//! LLaVA's image side (HunyuanVideo-I2V's `text_encoder` is a `LlavaForConditionalGeneration`)
//! as an ONNX graph: the CLIP vision tower up to the layer LLaVA reads, the CLS token dropped,
//! and the multi-modal projector, giving the image embeddings the language model takes in place
//! of its `<image>` tokens.
//!
//! Mirrors transformers 5.x `models/llava/modeling_llava.py` (`LlavaModel.get_image_features`
//! with `vision_feature_layer` −2 and strategy `default`: `hidden_states[layer][:, 1:]`, then
//! `LlavaMultiModalProjector`: `linear_2(gelu(linear_1(x)))`) and `models/clip/modeling_clip.py`
//! (`CLIPVisionEmbeddings`: patch `Conv2d` without bias, class embedding in front, learned
//! positions; `pre_layrnorm`; `CLIPEncoderLayer`s without a mask — the layers are
//! [`crate::clip`]'s). `hidden_states[0]` is the embedding after `pre_layrnorm`, so layer
//! `vision_feature_layer` is the output of the first `L + 1 + vision_feature_layer` layers: only
//! those are exported, and `post_layernorm` (the pooled output's) is not.
//!
//! Input `pixel_values` f32[B, 3, image_size, image_size] (the pipeline's `CLIPImageProcessor`
//! output); output `image_embeds` f32[B, (image_size / patch_size)², text hidden_size]. B dynamic.

use crate::checkpoint::{Checkpoint, LlavaConfig};
use crate::clip::{Activation, Clip, Dims};
use crate::error::{ExportError, Result};
use crate::graph::{Affine, Net};
use crate::onnx::{Attr, DataType, Dim, GraphBuilder};
use hyvideo_bundle::Component;

pub use hyvideo_bundle::components::vision_encoder::{INPUT, OUTPUT};

/// The component this graph builder writes (what its errors name).
const COMPONENT: Component = Component::VisionEncoder;

/// Key prefixes of the vision tower in a LLaVA checkpoint: transformers 4 (`CLIPVisionModel`
/// with its `vision_model`), transformers 5 saved (flat `vision_tower`), transformers 5's own
/// module names.
pub const TOWER_PREFIXES: [&str; 4] = [
    "vision_tower.vision_model",
    "vision_tower",
    "model.vision_tower.vision_model",
    "model.vision_tower",
];

/// Key prefixes of the projector.
pub const PROJECTOR_PREFIXES: [&str; 2] = ["multi_modal_projector", "model.multi_modal_projector"];

/// Graph-local name root of the projector's weights (the rest are the tower's).
pub const PROJECTOR: &str = "multi_modal_projector";

/// The key prefixes (tower, projector) under which `ckpt` holds LLaVA's image side.
pub fn checkpoint_prefixes(ckpt: &Checkpoint) -> Result<(&'static str, &'static str)> {
    let tower = ckpt
        .probe_prefix(&TOWER_PREFIXES, "embeddings.patch_embedding.weight")
        .map_err(|e| ExportError::of(COMPONENT, format!("no CLIP vision tower: {e}")))?;
    let projector = ckpt
        .probe_prefix(&PROJECTOR_PREFIXES, "linear_1.weight")
        .map_err(|e| ExportError::of(COMPONENT, format!("no LLaVA projector: {e}")))?;
    Ok((tower, projector))
}

/// Build the vision graph into `net`: tower weights under `CLIPVisionModel`'s names
/// (`embeddings.*`, `pre_layrnorm.*`, `encoder.layers.N.*`), the projector's under
/// `multi_modal_projector.*`.
pub fn build(net: &mut Net<'_>, cfg: &LlavaConfig) -> Result<()> {
    cfg.validate()?;
    let v = &cfg.vision_config;
    let dims = Dims {
        hidden: v.hidden_size,
        heads: v.num_attention_heads,
        head_dim: v.head_dim(),
        intermediate: v.intermediate_size,
        eps: v.layer_norm_eps as f32,
        act: Activation::parse(&v.hidden_act, COMPONENT, &cfg.source)?,
    };
    let (d, p, s) = (v.hidden_size, v.patch_size, v.image_size);
    let n = cfg.image_tokens();
    let text_hidden = cfg.text_config.hidden_size;
    let pixels = net.b.input(
        INPUT,
        DataType::Float,
        &[
            "batch".into(),
            Dim::Fixed(v.num_channels as i64),
            Dim::Fixed(s as i64),
            Dim::Fixed(s as i64),
        ],
    )?;
    let pre = "vision_encoder";

    // Patch embedding: Conv2d(kernel = stride = patch, no bias) → [B, D, g, g] → [B, N, D].
    let w = net.weight(
        "embeddings.patch_embedding.weight",
        &[d, v.num_channels, p, p],
    )?;
    let pi = p as i64;
    let patches = net.op(
        "Conv",
        "embeddings.patch_embedding",
        &[&pixels, &w],
        &[
            Attr::ints("kernel_shape", vec![pi, pi]),
            Attr::ints("strides", vec![pi, pi]),
        ],
    )?;
    let flat = net.i64s(pre, &[0, d as i64, -1])?;
    let patches = net.reshape(pre, &patches, &flat)?;
    let patches = net.op(
        "Transpose",
        pre,
        &[&patches],
        &[Attr::ints("perm", vec![0, 2, 1])],
    )?;
    // The class embedding in front of every row, then learned positions 0..N.
    let batch = net.op(
        "Shape",
        pre,
        &[&pixels],
        &[Attr::int("start", 0), Attr::int("end", 1)],
    )?;
    let cls = net.weight_as("embeddings.class_embedding", &[d], &[1, 1, d as i64])?;
    let tail = net.i64s(pre, &[1, d as i64])?;
    let cls_shape = net.op("Concat", pre, &[&batch, &tail], &[Attr::int("axis", 0)])?;
    let cls = net.op("Expand", pre, &[&cls, &cls_shape], &[])?;
    let x = net.op(
        "Concat",
        "embeddings",
        &[&cls, &patches],
        &[Attr::int("axis", 1)],
    )?;
    let pos = net.weight("embeddings.position_embedding.weight", &[n + 1, d])?;
    let x = net.op("Add", "embeddings", &[&x, &pos], &[])?;
    let mut x = net.layer_norm("pre_layrnorm", &x, d, dims.eps, Affine::Learned)?;

    let tail = net.i64s(pre, &[-1, d as i64])?;
    let seq_shape = net.op("Concat", pre, &[&batch, &tail], &[Attr::int("axis", 0)])?;
    let tail = net.i64s(pre, &[-1, (3 * dims.heads) as i64, dims.head_dim as i64])?;
    let qkv_shape = net.op("Concat", pre, &[&batch, &tail], &[Attr::int("axis", 0)])?;
    let mut g = Clip {
        net,
        dims,
        seq_shape,
        qkv_shape,
        bias: None,
    };
    for i in 0..cfg.vision_layers_used() {
        x = g.layer(&format!("encoder.layers.{i}"), &x)?;
    }

    // Drop the CLS token, then the projector on the patch rows.
    let net = g.net;
    let one = net.i64s(pre, &[1])?;
    let end = net.i64s(pre, &[i64::MAX])?;
    let x = net.op("Slice", pre, &[&x, &one, &end, &one], &[])?;
    let rows = net.i64s(pre, &[-1, d as i64])?;
    let x = net.reshape(pre, &x, &rows)?;
    let l1 = format!("{PROJECTOR}.linear_1");
    let l2 = format!("{PROJECTOR}.linear_2");
    let linear = |net: &mut Net<'_>, m: &str, x, i, o| {
        if cfg.multimodal_projector_bias {
            net.gemm(m, x, i, &[(m, o)])
        } else {
            net.gemm_no_bias(m, x, i, &[(m, o)])
        }
    };
    let h = linear(net, &l1, &x, d, text_hidden)?;
    let h = net.op("Gelu", PROJECTOR, &[&h], &[])?;
    let out = linear(net, &l2, &h, text_hidden, text_hidden)?;
    let tail = net.i64s(PROJECTOR, &[n as i64, text_hidden as i64])?;
    let out_shape = net.op("Concat", pre, &[&batch, &tail], &[Attr::int("axis", 0)])?;
    let out = net.reshape(PROJECTOR, &out, &out_shape)?;
    net.b.output_as(
        &out,
        OUTPUT,
        DataType::Float,
        &[
            "batch".into(),
            Dim::Fixed(n as i64),
            Dim::Fixed(text_hidden as i64),
        ],
    )?;
    Ok(())
}

/// A fresh graph builder for the vision encoder.
pub fn graph_builder() -> GraphBuilder {
    GraphBuilder::new("vision_encoder")
}
