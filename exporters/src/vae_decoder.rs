//! The HunyuanVideo VAE decoder (`post_quant_conv` + causal 3D decoder) as an ONNX graph.
//!
//! Mirrors diffusers `models/autoencoders/autoencoder_kl_hunyuan_video.py`:
//! `HunyuanVideoCausalConv3d` (replicate padding, 2 frames before, none after),
//! `HunyuanVideoResnetBlockCausal3D`, `HunyuanVideoMidBlock3D` (frame-causal single-head
//! attention), `HunyuanVideoUpsampleCausal3D` (first frame upsampled only spatially) and
//! `HunyuanVideoDecoder3D`. Input `latent_sample` [B, Cz, t, h, w] (already divided by the
//! scaling factor), output `sample` [B, 3, 1 + 4(t-1), 8h, 8w]; B, t, h, w dynamic.

use crate::attention::{AttentionMask, Heads, attention};
use crate::checkpoint::VaeConfig;
use crate::error::{ExportError, Result};
use crate::graph::Net;
use crate::onnx::{Attr, DataType, Dim, GraphBuilder, Value};
use hyvideo_bundle::Component;

pub use hyvideo_bundle::components::vae_decoder::{INPUT, OUTPUT};

/// The component this graph builder writes (what its errors name).
const COMPONENT: Component = Component::VaeDecoder;

/// Per-up-block settings derived from the config exactly as diffusers' decoder does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpBlockPlan {
    pub in_channels: usize,
    pub out_channels: usize,
    pub resnets: usize,
    /// (temporal, spatial) upsampling factors; `None` for no upsampler.
    pub upsample: Option<(bool, bool)>,
}

/// Up blocks of `HunyuanVideoDecoder3D.__init__`.
pub fn up_blocks(cfg: &VaeConfig) -> Result<Vec<UpBlockPlan>> {
    if cfg.temporal_compression_ratio != 4 {
        return Err(ExportError::of(
            COMPONENT,
            format!(
                "temporal_compression_ratio {} is not supported (only 4)",
                cfg.temporal_compression_ratio
            ),
        ));
    }
    let n = cfg.block_out_channels.len();
    let rev: Vec<usize> = cfg.block_out_channels.iter().rev().copied().collect();
    let n_spatial = cfg.spatial_compression_ratio.trailing_zeros() as usize;
    let n_time = cfg.temporal_compression_ratio.trailing_zeros() as usize;
    let mut out = Vec::with_capacity(n);
    let mut prev = rev[0];
    for (i, &ch) in rev.iter().enumerate() {
        let is_final = i == n - 1;
        let spatial = i < n_spatial;
        let time = i + 1 + n_time >= n && !is_final;
        out.push(UpBlockPlan {
            in_channels: prev,
            out_channels: ch,
            resnets: cfg.layers_per_block + 1,
            upsample: (spatial || time).then_some((time, spatial)),
        });
        prev = ch;
    }
    Ok(out)
}

struct Decoder<'a, 'w> {
    net: &'a mut Net<'w>,
    groups: usize,
}

impl Decoder<'_, '_> {
    /// `HunyuanVideoCausalConv3d`: replicate-pad (k/2 in H and W, k-1 frames before), then conv.
    fn causal_conv(
        &mut self,
        prefix: &str,
        x: &Value,
        ci: usize,
        co: usize,
        k: usize,
    ) -> Result<Value> {
        let x = if k > 1 {
            let (t, s) = ((k - 1) as i64, (k / 2) as i64);
            let pads = self.net.i64s(prefix, &[0, 0, t, s, s, 0, 0, 0, s, s])?;
            self.net
                .op("Pad", prefix, &[x, &pads], &[Attr::string("mode", "edge")])?
        } else {
            x.clone()
        };
        self.net.conv3d(&format!("{prefix}.conv"), &x, ci, co, k)
    }

    fn resnet(&mut self, prefix: &str, x: &Value, ci: usize, co: usize) -> Result<Value> {
        let g = self.groups;
        let h = self
            .net
            .group_norm(&format!("{prefix}.norm1"), x, ci, g, 1e-6, 5)?;
        let h = self.net.silu(prefix, &h)?;
        let h = self.causal_conv(&format!("{prefix}.conv1"), &h, ci, co, 3)?;
        let h = self
            .net
            .group_norm(&format!("{prefix}.norm2"), &h, co, g, 1e-6, 5)?;
        let h = self.net.silu(prefix, &h)?;
        let h = self.causal_conv(&format!("{prefix}.conv2"), &h, co, co, 3)?;
        let res = if ci != co {
            self.causal_conv(&format!("{prefix}.conv_shortcut"), x, ci, co, 1)?
        } else {
            x.clone()
        };
        self.net.op("Add", prefix, &[&h, &res], &[])
    }

    /// diffusers `Attention(_from_deprecated_attn_block=True)` with one head of width `c`,
    /// group norm, residual, and the frame-causal mask of `prepare_causal_attention_mask`.
    fn attention(&mut self, prefix: &str, x: &Value, c: usize) -> Result<Value> {
        let n = &mut *self.net;
        let shape = n.op("Shape", prefix, &[x], &[])?;
        let normed = n.group_norm(&format!("{prefix}.group_norm"), x, c, self.groups, 1e-6, 5)?;
        // [B, C, T, H, W] -> [B, T*H*W, C]
        let perm = Attr::ints("perm", vec![0, 2, 3, 4, 1]);
        let to_seq = n.i64s(prefix, &[0, -1, c as i64])?;
        let seq = |n: &mut Net, v: &Value| -> Result<Value> {
            let t = n.op("Transpose", prefix, &[v], std::slice::from_ref(&perm))?;
            n.op("Reshape", prefix, &[&t, &to_seq], &[])
        };
        let residual = seq(n, x)?;
        let h = seq(n, &normed)?;
        let q = n.linear(&format!("{prefix}.to_q"), &h, c, c, true)?;
        let k = n.linear(&format!("{prefix}.to_k"), &h, c, c, true)?;
        let v = n.linear(&format!("{prefix}.to_v"), &h, c, c, true)?;
        // Frame index of every token: token j may attend to token i when frame(i) <= frame(j).
        let t_dim = n.op(
            "Shape",
            prefix,
            &[x],
            &[Attr::int("start", 2), Attr::int("end", 3)],
        )?;
        let hw = n.op(
            "Shape",
            prefix,
            &[x],
            &[Attr::int("start", 3), Attr::int("end", 5)],
        )?;
        let zero =
            n.b.const_i64(crate::onnx::auto(format!("{prefix}/zero")), &[0], &[])?;
        let one =
            n.b.const_i64(crate::onnx::auto(format!("{prefix}/one")), &[1], &[])?;
        let t_scalar = n.op("Squeeze", prefix, &[&t_dim], &[])?;
        let frames = n.op("Range", prefix, &[&zero, &t_scalar, &one], &[])?;
        let hw_n = n.op("ReduceProd", prefix, &[&hw], &[Attr::int("keepdims", 1)])?;
        let ax0 = n.i64s(prefix, &[0])?;
        let ax1 = n.i64s(prefix, &[1])?;
        let flat_shape = n.i64s(prefix, &[-1])?;
        let fcol = n.op("Unsqueeze", prefix, &[&frames, &ax1], &[])?;
        let grid_shape = n.op("Concat", prefix, &[&t_dim, &hw_n], &[Attr::int("axis", 0)])?;
        let grid = n.op("Expand", prefix, &[&fcol, &grid_shape], &[])?;
        let flat = n.op("Reshape", prefix, &[&grid, &flat_shape], &[])?;
        let qi = n.op("Unsqueeze", prefix, &[&flat, &ax1], &[])?;
        let kj = n.op("Unsqueeze", prefix, &[&flat, &ax0], &[])?;
        let allowed = n.op("LessOrEqual", prefix, &[&kj, &qi], &[])?;
        // One head of width c: q, k, v as [B, S, 1, C].
        let ax2 = n.i64s(prefix, &[2])?;
        let q = n.op("Unsqueeze", prefix, &[&q, &ax2], &[])?;
        let k = n.op("Unsqueeze", prefix, &[&k, &ax2], &[])?;
        let v = n.op("Unsqueeze", prefix, &[&v, &ax2], &[])?;
        let one_head = Heads {
            heads: 1,
            kv_heads: 1,
            head_dim: c,
        };
        let ctx = attention(
            n,
            prefix,
            &q,
            &k,
            &v,
            one_head,
            AttentionMask::Allowed(&allowed),
        )?;
        let ctx = n.op("Reshape", prefix, &[&ctx, &to_seq], &[])?;
        let out = n.linear(&format!("{prefix}.to_out.0"), &ctx, c, c, true)?;
        let out = n.op("Add", prefix, &[&out, &residual], &[])?;
        // [B, S, C] -> [B, T, H, W, C] -> [B, C, T, H, W]
        let idx = n.i64s(prefix, &[0, 2, 3, 4, 1])?;
        let bthwc = n.op("Gather", prefix, &[&shape, &idx], &[Attr::int("axis", 0)])?;
        let out = n.op("Reshape", prefix, &[&out, &bthwc], &[])?;
        n.op(
            "Transpose",
            prefix,
            &[&out],
            &[Attr::ints("perm", vec![0, 4, 1, 2, 3])],
        )
    }

    /// `HunyuanVideoUpsampleCausal3D`: nearest upsampling (the first frame only spatially),
    /// then a causal conv. Repeating every frame in time and dropping the first output frame
    /// gives exactly `cat(first, interpolate(rest))`, also when T = 1.
    fn upsample(
        &mut self,
        prefix: &str,
        x: &Value,
        c: usize,
        time: bool,
        spatial: bool,
    ) -> Result<Value> {
        let n = &mut *self.net;
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
        self.causal_conv(&format!("{prefix}.conv"), &up, c, c, 3)
    }
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
    let x = net.b.input(
        INPUT,
        DataType::Float,
        &[
            Dim::from("batch"),
            Dim::Fixed(cz as i64),
            "latent_frames".into(),
            "latent_height".into(),
            "latent_width".into(),
        ],
    )?;
    let x = net.conv3d("post_quant_conv", &x, cz, cz, 1)?;
    let mut d = Decoder {
        net,
        groups: cfg.norm_num_groups,
    };
    let mut h = d.causal_conv("decoder.conv_in", &x, cz, top, 3)?;
    h = d.resnet("decoder.mid_block.resnets.0", &h, top, top)?;
    if cfg.mid_block_add_attention {
        h = d.attention("decoder.mid_block.attentions.0", &h, top)?;
    }
    h = d.resnet("decoder.mid_block.resnets.1", &h, top, top)?;
    for (i, blk) in plan.iter().enumerate() {
        for r in 0..blk.resnets {
            let ci = if r == 0 {
                blk.in_channels
            } else {
                blk.out_channels
            };
            h = d.resnet(
                &format!("decoder.up_blocks.{i}.resnets.{r}"),
                &h,
                ci,
                blk.out_channels,
            )?;
        }
        if let Some((time, spatial)) = blk.upsample {
            h = d.upsample(
                &format!("decoder.up_blocks.{i}.upsamplers.0"),
                &h,
                blk.out_channels,
                time,
                spatial,
            )?;
        }
    }
    let c0 = cfg.block_out_channels[0];
    h = d.net.group_norm(
        "decoder.conv_norm_out",
        &h,
        c0,
        cfg.norm_num_groups,
        1e-6,
        5,
    )?;
    h = d.net.silu("decoder.conv_act", &h)?;
    h = d.causal_conv("decoder.conv_out", &h, c0, cfg.out_channels, 3)?;
    net.b.output_as(
        &h,
        OUTPUT,
        DataType::Float,
        &[
            Dim::from("batch"),
            Dim::Fixed(cfg.out_channels as i64),
            "frames".into(),
            "height".into(),
            "width".into(),
        ],
    )?;
    Ok(())
}

/// A fresh graph builder for the decoder with the project's producer metadata.
pub fn graph_builder() -> GraphBuilder {
    GraphBuilder::new("vae_decoder")
}
