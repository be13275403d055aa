//! The HunyuanVideo VAE decoder (`post_quant_conv` + causal 3D decoder) as an ONNX graph.
//!
//! Mirrors diffusers `models/autoencoders/autoencoder_kl_hunyuan_video.py`:
//! `HunyuanVideoCausalConv3d` (replicate padding, 2 frames before, none after),
//! `HunyuanVideoResnetBlockCausal3D`, `HunyuanVideoMidBlock3D` (frame-causal single-head
//! attention) — shared with the encoder in [`crate::vae_blocks`] —,
//! `HunyuanVideoUpsampleCausal3D` (first frame upsampled only spatially) and
//! `HunyuanVideoDecoder3D`. Input `latent_sample` [B, Cz, t, h, w] (already divided by the
//! scaling factor), output `sample` [B, 3, 1 + 4(t-1), 8h, 8w]; B, t, h, w dynamic.

use crate::checkpoint::VaeConfig;
use crate::error::{ExportError, Result};
use crate::graph::Net;
use crate::onnx::{Attr, DataType, GraphBuilder, Value};
use crate::vae_blocks::{BlockPlan, VaeBlocks, grid_dims, resample_layers};
use hyvideo_bundle::Component;

pub use hyvideo_bundle::components::vae_decoder::{INPUT, OUTPUT};

/// The component this graph builder writes (what its errors name).
const COMPONENT: Component = Component::VaeDecoder;

/// Up blocks of `HunyuanVideoDecoder3D.__init__` (`resample`: the upsampler's factors).
pub fn up_blocks(cfg: &VaeConfig) -> Result<Vec<BlockPlan>> {
    let (n_spatial, n_time) = resample_layers(cfg, COMPONENT)?;
    let n = cfg.block_out_channels.len();
    let rev: Vec<usize> = cfg.block_out_channels.iter().rev().copied().collect();
    let mut out = Vec::with_capacity(n);
    let mut prev = rev[0];
    for (i, &ch) in rev.iter().enumerate() {
        let is_final = i == n - 1;
        let spatial = i < n_spatial;
        let time = i + 1 + n_time >= n && !is_final;
        out.push(BlockPlan {
            in_channels: prev,
            out_channels: ch,
            resnets: cfg.layers_per_block + 1,
            resample: (spatial || time).then_some((time, spatial)),
        });
        prev = ch;
    }
    Ok(out)
}

/// `HunyuanVideoUpsampleCausal3D`: nearest upsampling (the first frame only spatially),
/// then a causal conv. Repeating every frame in time and dropping the first output frame
/// gives exactly `cat(first, interpolate(rest))`, also when T = 1.
fn upsample(
    d: &mut VaeBlocks<'_, '_>,
    prefix: &str,
    x: &Value,
    c: usize,
    time: bool,
    spatial: bool,
) -> Result<Value> {
    let n = &mut *d.net;
    // Nearest 2x as copies (Unsqueeze → Expand → Reshape) rather than `Resize`, which ONNX
    // Runtime runs through its generic N-D path at a fraction of the memory bandwidth.
    let mut up = x.clone();
    let shape = n.op("Shape", prefix, &[x], &[])?;
    let two = n.i64s(prefix, &[2])?;
    let dims = |n: &mut Net, shape: &Value, a: i64, b: i64| -> Result<Value> {
        let idx: Vec<i64> = (a..b).collect();
        let idx = n.i64s(prefix, &idx)?;
        n.op("Gather", prefix, &[shape, &idx], &[Attr::int("axis", 0)])
    };
    if time {
        // [B,C,T,H,W] → [B,C,T,2,H,W] → [B,C,2T,H,W], then drop frame 0: the first frame
        // is not repeated in time (`cat(first, interpolate(rest))`, also when T = 1).
        let ax = n.i64s(prefix, &[3])?;
        let u = n.op("Unsqueeze", prefix, &[&up, &ax], &[])?;
        let head = dims(n, &shape, 0, 3)?;
        let tail = dims(n, &shape, 3, 5)?;
        let target = n.op(
            "Concat",
            prefix,
            &[&head, &two, &tail],
            &[Attr::int("axis", 0)],
        )?;
        let e = n.op("Expand", prefix, &[&u, &target], &[])?;
        let t = dims(n, &shape, 2, 3)?;
        let t2 = n.op("Mul", prefix, &[&t, &two], &[])?;
        let bc = dims(n, &shape, 0, 2)?;
        let out = n.op(
            "Concat",
            prefix,
            &[&bc, &t2, &tail],
            &[Attr::int("axis", 0)],
        )?;
        let r = n.op("Reshape", prefix, &[&e, &out], &[])?;
        let starts = n.i64s(prefix, &[1])?;
        let ends = n.i64s(prefix, &[i64::MAX])?;
        let axes = n.i64s(prefix, &[2])?;
        up = n.op("Slice", prefix, &[&r, &starts, &ends, &axes], &[])?;
    }
    if spatial {
        // [B,C,T,H,W] → [B,C,T,H,1,W,1] → [B,C,T,H,2,W,2] → [B,C,T,2H,2W]
        let cur = n.op("Shape", prefix, &[&up], &[])?;
        let ax = n.i64s(prefix, &[4, 6])?;
        let u = n.op("Unsqueeze", prefix, &[&up, &ax], &[])?;
        let bcth = dims(n, &cur, 0, 4)?;
        let w = dims(n, &cur, 4, 5)?;
        let target = n.op(
            "Concat",
            prefix,
            &[&bcth, &two, &w, &two],
            &[Attr::int("axis", 0)],
        )?;
        let e = n.op("Expand", prefix, &[&u, &target], &[])?;
        let bct = dims(n, &cur, 0, 3)?;
        let hw = dims(n, &cur, 3, 5)?;
        let hw2 = n.op("Mul", prefix, &[&hw, &two], &[])?;
        let out = n.op("Concat", prefix, &[&bct, &hw2], &[Attr::int("axis", 0)])?;
        up = n.op("Reshape", prefix, &[&e, &out], &[])?;
    }
    d.causal_conv(&format!("{prefix}.conv"), &up, c, c, 3)
}

/// Build the decoder graph into `net` (weights under diffusers' names: `post_quant_conv.*`,
/// `decoder.*`). Returns nothing; the graph's input and output are declared.
pub fn build(net: &mut Net<'_>, cfg: &VaeConfig) -> Result<()> {
    let plan = up_blocks(cfg)?;
    let cz = cfg.latent_channels;
    let top = *cfg
        .block_out_channels
        .last()
        .ok_or_else(|| ExportError::of(COMPONENT, "block_out_channels is empty"))?;
    let x = net.b.input(INPUT, DataType::Float, &grid_dims(cz, true))?;
    let x = net.conv3d("post_quant_conv", &x, cz, cz, 1)?;
    let mut d = VaeBlocks {
        net,
        groups: cfg.norm_num_groups,
    };
    let mut h = d.causal_conv("decoder.conv_in", &x, cz, top, 3)?;
    h = d.mid_block("decoder.mid_block", &h, top, cfg.mid_block_add_attention)?;
    for (i, blk) in plan.iter().enumerate() {
        let prefix = format!("decoder.up_blocks.{i}");
        h = d.resnets(&prefix, h, blk.in_channels, blk.out_channels, blk.resnets)?;
        if let Some((time, spatial)) = blk.resample {
            let prefix = format!("{prefix}.upsamplers.0");
            h = upsample(&mut d, &prefix, &h, blk.out_channels, time, spatial)?;
        }
    }
    let c0 = cfg.block_out_channels[0];
    h = d.out_head("decoder", &h, c0, cfg.out_channels)?;
    let dims = grid_dims(cfg.out_channels, false);
    net.b.output_as(&h, OUTPUT, DataType::Float, &dims)?;
    Ok(())
}

/// A fresh graph builder for the decoder with the project's producer metadata.
pub fn graph_builder() -> GraphBuilder {
    GraphBuilder::new("vae_decoder")
}
