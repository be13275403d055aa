//! Scaled dot-product attention: the one builder every graph uses (the transformer's joint
//! attention and token refiner, Llama, CLIP, the VAE's mid-block).
//!
//! Mirrors `F.scaled_dot_product_attention` as diffusers' `AttnProcessor2_0` calls it (and
//! transformers' `eager_attention_forward` with `repeat_kv` for Llama's grouped-query heads),
//! in the standard form bundles carry ([`AttentionKernel::Standard`]: standard ONNX operators,
//! which TensorRT's parser reads), as TensorRT's multi-head-attention fusion documents it: q
//! scaled before the first `MatMul`, `MatMul → [mask] → Softmax(axis = -1) → MatMul`, and no
//! mask node at all where none is needed. Under the fp16 / bf16 profiles the softmax stays in
//! the MatMuls' dtype (`configs/precision/*.yaml`), so the pattern is uninterrupted by casts;
//! TensorRT's fused kernels and ONNX Runtime's both accumulate the softmax in fp32 inside.
//!
//! The builder leaves an [`AttentionSite`] record in the doc string of each site's last node;
//! `hyvideo_onnx::fuse` reads those records when a graph is loaded on ONNX Runtime's CPU or CUDA
//! provider and replaces mask-free sites by `com.microsoft.MultiHeadAttention`.

pub use hyvideo_bundle::AttentionKernel;
pub use hyvideo_onnx::fuse::AttentionSite;

use crate::error::{ExportError, Result};
use crate::graph::Net;
use crate::onnx::{Attr, Value};

/// What a query may not attend to.
#[derive(Debug, Clone, Copy)]
pub enum AttentionMask<'a> {
    /// Every key is visible.
    None,
    /// Added to the scores `[B, heads, S, L]` (broadcast): 0 or -inf.
    Additive(&'a Value),
    /// Boolean, broadcast to the scores: true where the query may attend to the key.
    Allowed(&'a Value),
}

/// Head layout of one attention.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heads {
    /// Query heads.
    pub heads: usize,
    /// Key / value heads (grouped-query attention when fewer than `heads`).
    pub kv_heads: usize,
    pub head_dim: usize,
}

/// `softmax(q kᵀ / √head_dim + mask) v` of q `[B, S, heads, head_dim]`, k, v
/// `[B, L, kv_heads, head_dim]`, as [`AttentionKernel::Standard`]; result `[B, S, heads,
/// head_dim]`. Nodes are named `<prefix>/<Op>` (what precision rules match).
pub fn attention(
    net: &mut Net<'_>,
    prefix: &str,
    q: &Value,
    k: &Value,
    v: &Value,
    heads: Heads,
    mask: AttentionMask<'_>,
) -> Result<Value> {
    let Heads {
        heads: n,
        kv_heads,
        head_dim,
    } = heads;
    if n == 0 || kv_heads == 0 || n % kv_heads != 0 || head_dim == 0 {
        return Err(ExportError::Model {
            component: "attention",
            reason: format!("{prefix}: {n} heads cannot share {kv_heads} k/v heads of {head_dim}"),
        });
    }
    let transpose = |net: &mut Net<'_>, x: &Value, perm: [i64; 4]| {
        net.op(
            "Transpose",
            prefix,
            &[x],
            &[Attr::ints("perm", perm.to_vec())],
        )
    };
    let scale = net.f32_scalar(prefix, 1.0 / (head_dim as f32).sqrt())?;
    let qs = net.op("Mul", prefix, &[q, &scale], &[])?;
    let qt = transpose(net, &qs, [0, 2, 1, 3])?;
    let kt = transpose(net, k, [0, 2, 3, 1])?;
    let vt = transpose(net, v, [0, 2, 1, 3])?;
    let d = head_dim as i64;
    let kt = repeat_kv(net, prefix, &kt, heads, [d, -1])?;
    let vt = repeat_kv(net, prefix, &vt, heads, [-1, d])?;
    let scores = net.op("MatMul", prefix, &[&qt, &kt], &[])?;
    let scores = match mask {
        AttentionMask::None => scores,
        AttentionMask::Additive(bias) => net.op("Add", prefix, &[&scores, bias], &[])?,
        AttentionMask::Allowed(allowed) => {
            let ninf = net.f32_scalar(prefix, f32::NEG_INFINITY)?;
            net.op("Where", prefix, &[allowed, &scores, &ninf], &[])?
        }
    };
    let probs = net.op("Softmax", prefix, &[&scores], &[Attr::int("axis", -1)])?;
    let ctx = net.op("MatMul", prefix, &[&probs, &vt], &[])?;
    let out = transpose(net, &ctx, [0, 2, 1, 3])?;
    let site = AttentionSite {
        q: q.name().to_owned(),
        k: k.name().to_owned(),
        v: v.name().to_owned(),
        heads: n,
        kv_heads,
        head_dim,
        masked: !matches!(mask, AttentionMask::None),
    };
    net.b.annotate(&out, site.doc())?;
    Ok(out)
}

/// `repeat_kv`: [B, kv_heads, a, b] → [B, heads, a, b], each k/v head serving
/// `heads / kv_heads` consecutive query heads; `tail` is `[a, b]` for Reshape (one may be -1).
fn repeat_kv(
    net: &mut Net<'_>,
    prefix: &str,
    x: &Value,
    heads: Heads,
    tail: [i64; 2],
) -> Result<Value> {
    let n_rep = heads.heads / heads.kv_heads;
    if n_rep == 1 {
        return Ok(x.clone());
    }
    let ax = net.i64s(prefix, &[2])?;
    let x = net.op("Unsqueeze", prefix, &[x, &ax], &[])?;
    let reps = net.i64s(prefix, &[1, 1, n_rep as i64, 1, 1])?;
    let x = net.op("Expand", prefix, &[&x, &reps], &[])?;
    let shape = net.i64s(prefix, &[0, heads.heads as i64, tail[0], tail[1]])?;
    net.op("Reshape", prefix, &[&x, &shape], &[])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::WeightProvider;
    use crate::onnx::proto::ModelProto;
    use crate::onnx::{DataType, Dim, GraphBuilder, TensorSource, write_model};
    use hyvideo_onnx::fuse::{MS_DOMAIN, MhaPrecision, fuse};
    use prost::Message;

    struct NoWeights;

    impl WeightProvider for NoWeights {
        fn tensor(&self, name: &str, _: &[usize]) -> Result<Box<dyn TensorSource>> {
            Err(ExportError::Model {
                component: "test",
                reason: format!("no weight {name}"),
            })
        }
    }

    /// A graph of one attention over q, k, v [B, S, 2, 8] (masked or not), plus q itself as a
    /// second output (as the calibration variant adds outputs).
    fn one_site(masked: bool) -> ModelProto {
        let mut net = Net::new(GraphBuilder::new("t"), &NoWeights);
        let dims = [Dim::from("b"), Dim::from("s"), Dim::Fixed(2), Dim::Fixed(8)];
        let [q, k, v] = ["q", "k", "v"].map(|n| net.b.input(n, DataType::Float, &dims).unwrap());
        let bias = net
            .b
            .input("bias", DataType::Float, &[1, 1, 1, 1].map(Dim::Fixed))
            .unwrap();
        let mask = if masked {
            AttentionMask::Additive(&bias)
        } else {
            AttentionMask::None
        };
        let heads = Heads {
            heads: 2,
            kv_heads: 2,
            head_dim: 8,
        };
        let out = attention(&mut net, "a", &q, &k, &v, heads, mask).unwrap();
        net.b
            .output_as(&out, "out", DataType::Float, &dims)
            .unwrap();
        net.b.output(&q, DataType::Float, &dims).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let w = write_model(net.finish(), dir.path(), "m").unwrap();
        ModelProto::decode(std::fs::read(w.onnx_path).unwrap().as_slice()).unwrap()
    }

    fn ops(m: &ModelProto) -> Vec<&str> {
        let g = m.graph.as_ref().unwrap();
        g.node.iter().map(|n| n.op_type.as_str()).collect()
    }

    #[test]
    fn fusing_replaces_the_site_prunes_it_and_is_idempotent() {
        let mut m = one_site(false);
        let r = fuse(&mut m, MhaPrecision::Fp32).unwrap();
        assert_eq!((r.fused, r.kept, r.present), (1, 0, 0));
        assert_eq!(r.kernel(), AttentionKernel::MultiHeadAttention);
        let o = ops(&m);
        assert_eq!(
            o.iter().filter(|&&op| op == "MultiHeadAttention").count(),
            1
        );
        for gone in ["Softmax", "MatMul", "Transpose", "Mul"] {
            assert!(!o.contains(&gone), "{gone} left: {o:?}");
        }
        let g = m.graph.as_ref().unwrap();
        assert!(g.initializer.is_empty(), "the scale constant is pruned");
        assert_eq!(g.output.len(), 2, "both outputs kept");
        let ms = m
            .opset_import
            .iter()
            .filter(|o| o.domain == MS_DOMAIN)
            .count();
        assert_eq!(ms, 1);
        // An already fused graph is left as it is, and still reports the fused kernel.
        let before = m.clone();
        let r = fuse(&mut m, MhaPrecision::Fp32).unwrap();
        assert_eq!((r.fused, r.present), (0, 1));
        assert_eq!(r.kernel(), AttentionKernel::MultiHeadAttention);
        assert_eq!(m, before);
    }

    #[test]
    fn masked_or_unresolvable_sites_keep_the_standard_form() {
        let mut m = one_site(true);
        let r = fuse(&mut m, MhaPrecision::Fp32).unwrap();
        assert_eq!((r.fused, r.kept), (0, 1));
        assert_eq!(r.kernel(), AttentionKernel::Standard);
        assert!(ops(&m).contains(&"Softmax"));
        // A record naming a value the graph no longer has.
        let mut m = one_site(false);
        for n in &mut m.graph.as_mut().unwrap().node {
            n.doc_string = n.doc_string.replace("\"q\":\"q\"", "\"q\":\"renamed\"");
        }
        let r = fuse(&mut m, MhaPrecision::Fp32).unwrap();
        assert_eq!((r.fused, r.kept), (0, 1));
        assert!(ops(&m).contains(&"Softmax"));
    }
}
