//! The pieces of the HunyuanVideo VAE that its encoder and decoder graphs share.
//!
//! Mirrors diffusers `models/autoencoders/autoencoder_kl_hunyuan_video.py`:
//! `HunyuanVideoCausalConv3d` (replicate padding: k/2 in H and W, k - 1 frames before, none
//! after; any stride), `HunyuanVideoResnetBlockCausal3D`, `HunyuanVideoMidBlock3D` (resnet,
//! frame-causal single-head attention, resnet), the `conv_norm_out` → `conv_act` → `conv_out`
//! head both end with, and the per-block plan both derive from the config. The encoder
//! ([`crate::vae_encoder`]) adds the strided downsampling, the decoder ([`crate::vae_decoder`])
//! the upsampling.

use crate::attention::{AttentionMask, Heads, attention};
use crate::checkpoint::VaeConfig;
use crate::error::{ExportError, Result};
use crate::graph::Net;
use crate::onnx::{Attr, Dim, Value};
use hyvideo_bundle::Component;
use hyvideo_bundle::spec::Sym;

/// One down block (encoder) or up block (decoder), as diffusers derives it from the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockPlan {
    pub in_channels: usize,
    pub out_channels: usize,
    pub resnets: usize,
    /// (temporal, spatial) down- or upsampling by 2; `None` for none.
    pub resample: Option<(bool, bool)>,
}

/// The (spatial, temporal) resampling layers of `cfg`: log2 of its compression ratios. Only
/// a temporal ratio of 4 is supported (HunyuanVideo's; diffusers' decoder knows no other).
pub fn resample_layers(cfg: &VaeConfig, component: Component) -> Result<(usize, usize)> {
    if cfg.temporal_compression_ratio != 4 {
        return Err(ExportError::of(
            component,
            format!(
                "temporal_compression_ratio {} is not supported (only 4)",
                cfg.temporal_compression_ratio
            ),
        ));
    }
    Ok((
        cfg.spatial_compression_ratio.trailing_zeros() as usize,
        cfg.temporal_compression_ratio.trailing_zeros() as usize,
    ))
}

/// `[batch, channels, frames, height, width]` of the graphs' video, or with `latent` of their
/// latents (`latent_frames`, ...), named as the contract names them.
pub fn grid_dims(channels: usize, latent: bool) -> Vec<Dim> {
    let grid = match latent {
        false => [Sym::Frames, Sym::Height, Sym::Width],
        true => [Sym::LatentFrames, Sym::LatentHeight, Sym::LatentWidth],
    };
    let mut dims = vec![Dim::from(Sym::Batch.name()), Dim::Fixed(channels as i64)];
    dims.extend(grid.map(|s| Dim::from(s.name())));
    dims
}

/// The shared layers over a graph under construction, with the config's group-norm groups.
pub struct VaeBlocks<'a, 'w> {
    pub net: &'a mut Net<'w>,
    pub groups: usize,
}

impl VaeBlocks<'_, '_> {
    /// `HunyuanVideoCausalConv3d` of stride 1.
    pub fn causal_conv(
        &mut self,
        prefix: &str,
        x: &Value,
        ci: usize,
        co: usize,
        k: usize,
    ) -> Result<Value> {
        self.causal_conv_strided(prefix, x, ci, co, k, [1, 1, 1])
    }

    /// `HunyuanVideoCausalConv3d`: replicate-pad (k/2 in H and W, k-1 frames before), then the
    /// convolution (no padding of its own) with `strides` (T, H, W).
    pub fn causal_conv_strided(
        &mut self,
        prefix: &str,
        x: &Value,
        ci: usize,
        co: usize,
        k: usize,
        strides: [i64; 3],
    ) -> Result<Value> {
        let x = if k > 1 {
            let (t, s) = ((k - 1) as i64, (k / 2) as i64);
            let pads = self.net.i64s(prefix, &[0, 0, t, s, s, 0, 0, 0, s, s])?;
            self.net
                .op("Pad", prefix, &[x, &pads], &[Attr::string("mode", "edge")])?
        } else {
            x.clone()
        };
        let conv = format!("{prefix}.conv");
        if strides == [1, 1, 1] {
            return self.net.conv3d(&conv, &x, ci, co, k);
        }
        // `Net::conv3d` with other strides.
        let w = self
            .net
            .weight(&format!("{conv}.weight"), &[co, ci, k, k, k])?;
        let b = self.net.weight(&format!("{conv}.bias"), &[co])?;
        let kernel = Attr::ints("kernel_shape", vec![k as i64; 3]);
        let strides = Attr::ints("strides", strides.to_vec());
        self.net
            .op("Conv", &conv, &[&x, &w, &b], &[kernel, strides])
    }

    /// `HunyuanVideoResnetBlockCausal3D`.
    pub fn resnet(&mut self, prefix: &str, x: &Value, ci: usize, co: usize) -> Result<Value> {
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

    /// The resnets of a down or up block: `<prefix>.resnets.{r}`, the first `ci` → `co`.
    pub fn resnets(
        &mut self,
        prefix: &str,
        mut h: Value,
        ci: usize,
        co: usize,
        n: usize,
    ) -> Result<Value> {
        for r in 0..n {
            let ci = if r == 0 { ci } else { co };
            h = self.resnet(&format!("{prefix}.resnets.{r}"), &h, ci, co)?;
        }
        Ok(h)
    }

    /// `HunyuanVideoMidBlock3D` of width `c`: resnet, attention (when the config adds it),
    /// resnet.
    pub fn mid_block(
        &mut self,
        prefix: &str,
        x: &Value,
        c: usize,
        add_attention: bool,
    ) -> Result<Value> {
        let mut h = self.resnet(&format!("{prefix}.resnets.0"), x, c, c)?;
        if add_attention {
            h = self.attention(&format!("{prefix}.attentions.0"), &h, c)?;
        }
        self.resnet(&format!("{prefix}.resnets.1"), &h, c, c)
    }

    /// The end of the encoder and the decoder: `<prefix>.conv_norm_out` (group norm of `ci`),
    /// `<prefix>.conv_act` (SiLU), `<prefix>.conv_out` (causal conv to `co`).
    pub fn out_head(&mut self, prefix: &str, x: &Value, ci: usize, co: usize) -> Result<Value> {
        let norm = format!("{prefix}.conv_norm_out");
        let h = self.net.group_norm(&norm, x, ci, self.groups, 1e-6, 5)?;
        let h = self.net.silu(&format!("{prefix}.conv_act"), &h)?;
        self.causal_conv(&format!("{prefix}.conv_out"), &h, ci, co, 3)
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
}
