//! The HunyuanVideo VAE encoder (causal 3D encoder + `quant_conv`, then the latent
//! distribution's mode) as an ONNX graph.
//!
//! Mirrors diffusers `models/autoencoders/autoencoder_kl_hunyuan_video.py`,
//! `AutoencoderKLHunyuanVideo._encode` without tiling (`encoder`, then `quant_conv`) and
//! `DiagonalGaussianDistribution.mode()` (the mean: the first `latent_channels` channels):
//! `HunyuanVideoEncoder3D` = `conv_in`, `HunyuanVideoDownBlock3D`s (resnets, then
//! `HunyuanVideoDownsampleCausal3D`: a causal conv — replicate padding 1 in H and W, 2 frames
//! before — of stride (2 or 1, 2, 2) and no padding of its own), `HunyuanVideoMidBlock3D`,
//! `conv_norm_out`, `conv_act`, `conv_out` (2·latent_channels, `double_z`); the shared
//! layers are in [`crate::vae_blocks`]. Input `sample` [B, 3, T, H, W] in [-1, 1], output
//! `latent` [B, Cz, (T-1)/4 + 1, ⌈H/8⌉, ⌈W/8⌉] (not multiplied by the scaling factor); B, T, H,
//! W dynamic. diffusers encodes more than 16 frames in overlapping chunks
//! (`use_framewise_encoding`) and, with `enable_tiling()`, large images in blended tiles: this
//! graph is one untiled pass (what image-to-video's single frame takes).

use crate::checkpoint::VaeConfig;
use crate::error::{ExportError, Result};
use crate::graph::Net;
use crate::onnx::{DataType, GraphBuilder};
use crate::vae_blocks::{BlockPlan, VaeBlocks, grid_dims, resample_layers};
use hyvideo_bundle::Component;

pub use hyvideo_bundle::components::vae_encoder::{INPUT, OUTPUT};

/// The component this graph builder writes (what its errors name).
const COMPONENT: Component = Component::VaeEncoder;

/// Down blocks of `HunyuanVideoEncoder3D.__init__` (`resample`: the downsampler's strides of
/// 2, in time and in space).
pub fn down_blocks(cfg: &VaeConfig) -> Result<Vec<BlockPlan>> {
    let (n_spatial, n_time) = resample_layers(cfg, COMPONENT)?;
    let n = cfg.block_out_channels.len();
    let mut out = Vec::with_capacity(n);
    let mut prev = *cfg
        .block_out_channels
        .first()
        .ok_or_else(|| ExportError::of(COMPONENT, "block_out_channels is empty"))?;
    for (i, &ch) in cfg.block_out_channels.iter().enumerate() {
        let is_final = i == n - 1;
        let spatial = i < n_spatial;
        let time = i + 1 + n_time >= n && !is_final;
        out.push(BlockPlan {
            in_channels: prev,
            out_channels: ch,
            resnets: cfg.layers_per_block,
            resample: (spatial || time).then_some((time, spatial)),
        });
        prev = ch;
    }
    Ok(out)
}

/// Build the encoder graph into `net` (weights under diffusers' names: `encoder.*`,
/// `quant_conv.*`). Returns nothing; the graph's input and output are declared.
pub fn build(net: &mut Net<'_>, cfg: &VaeConfig) -> Result<()> {
    let plan = down_blocks(cfg)?;
    let (c_in, cz) = (cfg.in_channels, cfg.latent_channels);
    let (first, top) = (plan[0].in_channels, plan[plan.len() - 1].out_channels);
    let x = net
        .b
        .input(INPUT, DataType::Float, &grid_dims(c_in, false))?;
    let mut e = VaeBlocks {
        net,
        groups: cfg.norm_num_groups,
    };
    let mut h = e.causal_conv("encoder.conv_in", &x, c_in, first, 3)?;
    for (i, blk) in plan.iter().enumerate() {
        let prefix = format!("encoder.down_blocks.{i}");
        let c = blk.out_channels;
        h = e.resnets(&prefix, h, blk.in_channels, c, blk.resnets)?;
        if let Some((time, spatial)) = blk.resample {
            let prefix = format!("{prefix}.downsamplers.0.conv");
            let s = |on: bool| if on { 2 } else { 1 };
            let strides = [s(time), s(spatial), s(spatial)];
            h = e.causal_conv_strided(&prefix, &h, c, c, 3, strides)?;
        }
    }
    h = e.mid_block("encoder.mid_block", &h, top, cfg.mid_block_add_attention)?;
    h = e.out_head("encoder", &h, top, 2 * cz)?;
    let moments = net.conv3d("quant_conv", &h, 2 * cz, 2 * cz, 1)?;
    // `DiagonalGaussianDistribution.mode()`: the mean, channels [0, Cz) of the moments.
    let prefix = "latent_dist.mode";
    let (starts, ends, axes) = (
        net.i64s(prefix, &[0])?,
        net.i64s(prefix, &[cz as i64])?,
        net.i64s(prefix, &[1])?,
    );
    let mean = net.op("Slice", prefix, &[&moments, &starts, &ends, &axes], &[])?;
    net.b
        .output_as(&mean, OUTPUT, DataType::Float, &grid_dims(cz, true))?;
    Ok(())
}

/// A fresh graph builder for the encoder (the export adds the producer metadata).
pub fn graph_builder() -> GraphBuilder {
    GraphBuilder::new("vae_encoder")
}
