//! Scaled dot-product attention: the one builder every graph uses (the transformer's joint
//! attention and token refiner, Llama, CLIP, the VAE's mid-block), and the rewrite that turns it
//! into ONNX Runtime's fused `com.microsoft.MultiHeadAttention` when a graph is loaded on the
//! CPU or CUDA provider.
//!
//! Mirrors `F.scaled_dot_product_attention` as diffusers' `AttnProcessor2_0` calls it (and
//! transformers' `eager_attention_forward` with `repeat_kv` for Llama's grouped-query heads).
//!
//! Two implementations ([`AttentionKernel`]):
//! - [`AttentionKernel::Standard`], what bundles carry (standard ONNX operators, TensorRT's
//!   parser reads them), in the form TensorRT's multi-head-attention fusion documents: q scaled
//!   before the first `MatMul`, `MatMul → [mask] → Softmax(axis = -1) → MatMul`, and no mask
//!   node at all where none is needed. Under the fp16 / bf16 profiles the softmax stays in the
//!   MatMuls' dtype (`configs/precision/*.yaml`), so the pattern is uninterrupted by casts;
//!   TensorRT's fused kernels and ONNX Runtime's both accumulate the softmax in fp32 inside.
//! - [`AttentionKernel::MultiHeadAttention`]: q, k, v as `[B, S, heads·head_dim]` into one
//!   `com.microsoft.MultiHeadAttention` node (ONNX Runtime CPU: MLAS flash attention, fp32;
//!   CUDA: flash / memory-efficient kernels in fp16 / bf16), which never materialises the
//!   `[B, heads, S, S]` scores. Only mask-free sites with as many k/v heads as q heads take it:
//!   any mask disables both kernels.
//!
//! The builder leaves an [`AttentionSite`] record in the doc string of each site's last node;
//! [`fuse`] reads those records, replaces mask-free sites by the fused node (casting to the
//! kernel's dtype where the graph's differs) and drops the nodes nothing reads any more.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::error::{ExportError, Result};
use crate::graph::Net;
use crate::onnx::proto::{ModelProto, NodeProto, OperatorSetIdProto};
use crate::onnx::{Attr, DataType, OwnedTensor, Value};
use crate::precision::{elem_type, output_type};

/// Which attention implementation a graph runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum AttentionKernel {
    /// `MatMul → Softmax → MatMul` in standard operators (bundles, TensorRT).
    #[default]
    Standard,
    /// ONNX Runtime's `com.microsoft.MultiHeadAttention` (CPU and CUDA providers).
    MultiHeadAttention,
}

impl std::fmt::Display for AttentionKernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AttentionKernel::Standard => "standard",
            AttentionKernel::MultiHeadAttention => "multi_head_attention",
        })
    }
}

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

/// The record the builder leaves on each site's last node for [`fuse`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttentionSite {
    /// Unscaled q `[B, S, heads, head_dim]`, k and v `[B, L, kv_heads, head_dim]`.
    pub q: String,
    pub k: String,
    pub v: String,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub masked: bool,
}

const SITE_TAG: &str = "hyvideo.attention ";

impl AttentionSite {
    fn doc(&self) -> String {
        // A struct of strings and integers always serialises.
        format!(
            "{SITE_TAG}{}",
            serde_json::to_string(self).unwrap_or_default()
        )
    }

    fn parse(doc: &str) -> Option<AttentionSite> {
        serde_json::from_str(doc.strip_prefix(SITE_TAG)?).ok()
    }

    /// Whether ONNX Runtime's fused kernels take this site.
    fn fusable(&self) -> bool {
        !self.masked && self.heads == self.kv_heads
    }
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

/// What [`fuse`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FuseReport {
    /// Sites now running `com.microsoft.MultiHeadAttention`.
    pub fused: usize,
    /// Sites kept in the standard form (masked, grouped-query, or not resolvable).
    pub kept: usize,
    /// `MultiHeadAttention` nodes the graph already had (an engine built fused).
    pub present: usize,
}

impl FuseReport {
    /// The kernel the graph's attention runs as: fused when any site is.
    pub fn kernel(&self) -> AttentionKernel {
        if self.fused + self.present > 0 {
            AttentionKernel::MultiHeadAttention
        } else {
            AttentionKernel::Standard
        }
    }
}

/// The dtype a fused site computes in, as the provider's kernels allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MhaPrecision {
    /// ONNX Runtime CPU: MLAS flash attention is fp32 only; other dtypes are cast around it.
    Fp32,
    /// ONNX Runtime CUDA: fp16 sites stay fp16 (flash attention); fp32 and bf16 sites run fp32
    /// (memory-efficient attention; the CUDA kernel has no bf16).
    Fp16OrFp32,
}

impl MhaPrecision {
    fn compute(self, site_type: i32) -> i32 {
        match self {
            MhaPrecision::Fp16OrFp32 if site_type == DataType::Float16 as i32 => site_type,
            _ => DataType::Float as i32,
        }
    }
}

/// The domain of ONNX Runtime's contrib operators.
pub const MS_DOMAIN: &str = "com.microsoft";

fn fuse_err(reason: String) -> ExportError {
    ExportError::Model {
        component: "attention",
        reason,
    }
}

/// Element types of every value of `model`'s graph (inputs, initializers, node outputs).
fn value_types(model: &ModelProto) -> HashMap<String, i32> {
    let mut types = HashMap::new();
    let Some(g) = model.graph.as_ref() else {
        return types;
    };
    for v in &g.input {
        types.insert(
            v.name.clone(),
            elem_type(v).unwrap_or(DataType::Float as i32),
        );
    }
    for t in &g.initializer {
        types.insert(t.name.clone(), t.data_type);
    }
    for n in &g.node {
        let t = output_type(n, &types);
        for o in &n.output {
            types.insert(o.clone(), t);
        }
    }
    types
}

fn node(op: &str, name: String, inputs: Vec<String>, output: String, attrs: &[Attr]) -> NodeProto {
    NodeProto {
        input: inputs,
        output: vec![output],
        name,
        op_type: op.to_owned(),
        attribute: attrs.iter().map(Attr::to_proto).collect(),
        ..Default::default()
    }
}

fn cast(name: String, input: String, to: i32) -> NodeProto {
    let out = name.clone();
    node(
        "Cast",
        name,
        vec![input],
        out,
        &[Attr::int("to", to as i64)],
    )
}

fn shape_const(name: String, dims: &[i64]) -> Result<NodeProto> {
    let t = OwnedTensor::from_i64(&[dims.len() as i64], dims)?;
    let out = name.clone();
    Ok(node(
        "Constant",
        name,
        vec![],
        out,
        &[Attr::tensor("value", t)],
    ))
}

/// The [`AttentionKernel::MultiHeadAttention`] form of one site, producing `out` in `out_type`,
/// with q, k, v cast to `compute` where they differ.
fn mha_nodes(
    base: &str,
    site: &AttentionSite,
    out: &str,
    out_type: i32,
    compute: i32,
    types: &HashMap<String, i32>,
) -> Result<Vec<NodeProto>> {
    let mut nodes = Vec::with_capacity(10);
    let flat = format!("{base}/mha/flat_shape");
    nodes.push(shape_const(flat.clone(), &[0, 0, -1])?);
    let mut inputs = Vec::with_capacity(3);
    for (tag, x) in [("q", &site.q), ("k", &site.k), ("v", &site.v)] {
        let have = types.get(x.as_str()).copied().ok_or_else(|| {
            fuse_err(format!(
                "{base}: attention input `{x}` is not defined in the graph"
            ))
        })?;
        let mut x = x.clone();
        if have != compute {
            let name = format!("{base}/mha/{tag}_cast");
            nodes.push(cast(name.clone(), x, compute));
            x = name;
        }
        let name = format!("{base}/mha/{tag}_flat");
        nodes.push(node(
            "Reshape",
            name.clone(),
            vec![x, flat.clone()],
            name.clone(),
            &[],
        ));
        inputs.push(name);
    }
    let mha = format!("{base}/MultiHeadAttention");
    let mut m = node(
        "MultiHeadAttention",
        mha.clone(),
        inputs,
        mha.clone(),
        &[
            Attr::int("num_heads", site.heads as i64),
            Attr::float("scale", 1.0 / (site.head_dim as f32).sqrt()),
        ],
    );
    m.domain = MS_DOMAIN.into();
    nodes.push(m);
    let split = format!("{base}/mha/heads_shape");
    nodes.push(shape_const(
        split.clone(),
        &[0, 0, site.heads as i64, site.head_dim as i64],
    )?);
    if out_type == compute {
        nodes.push(node(
            "Reshape",
            format!("{base}/mha/heads"),
            vec![mha, split],
            out.to_owned(),
            &[],
        ));
    } else {
        let heads = format!("{base}/mha/heads");
        nodes.push(node(
            "Reshape",
            heads.clone(),
            vec![mha, split],
            heads.clone(),
            &[],
        ));
        nodes.push(node(
            "Cast",
            format!("{base}/mha/out_cast"),
            vec![heads],
            out.to_owned(),
            &[Attr::int("to", out_type as i64)],
        ));
    }
    Ok(nodes)
}

/// Replace every fusable attention site of `model` by [`AttentionKernel::MultiHeadAttention`]
/// computing as `precision` says, then drop the nodes and initializers nothing reads any more.
pub fn fuse(model: &mut ModelProto, precision: MhaPrecision) -> Result<FuseReport> {
    let types = value_types(model);
    let graph = model
        .graph
        .as_mut()
        .ok_or_else(|| fuse_err("the model has no graph".into()))?;
    let mut report = FuseReport {
        present: graph
            .node
            .iter()
            .filter(|n| n.op_type == "MultiHeadAttention" && n.domain == MS_DOMAIN)
            .count(),
        ..FuseReport::default()
    };
    let taken: HashSet<String> = graph
        .node
        .iter()
        .flat_map(|n| n.output.iter().chain(std::iter::once(&n.name)).cloned())
        .chain(graph.initializer.iter().map(|t| t.name.clone()))
        .chain(graph.input.iter().map(|v| v.name.clone()))
        .collect();
    let mut nodes = Vec::with_capacity(graph.node.len());
    for n in std::mem::take(&mut graph.node) {
        let Some(site) = AttentionSite::parse(&n.doc_string) else {
            nodes.push(n);
            continue;
        };
        // Sites the kernels refuse, or whose record no longer matches the graph (inputs
        // renamed, names taken), keep the standard form: correct, just unfused.
        let (scratch, mha) = (
            format!("{}/mha/", n.name),
            format!("{}/MultiHeadAttention", n.name),
        );
        let resolvable = [&site.q, &site.k, &site.v]
            .iter()
            .all(|x| types.contains_key(x.as_str()))
            && !taken.contains(&mha)
            && !taken.iter().any(|t| t.starts_with(&scratch));
        if !site.fusable() || !resolvable {
            report.kept += 1;
            nodes.push(n);
            continue;
        }
        let out = n
            .output
            .first()
            .ok_or_else(|| fuse_err(format!("{}: attention site without output", n.name)))?;
        let out_type = types.get(out).copied().unwrap_or(DataType::Float as i32);
        let compute = precision.compute(out_type);
        nodes.extend(mha_nodes(&n.name, &site, out, out_type, compute, &types)?);
        report.fused += 1;
    }
    // Keep what the graph outputs depend on, in order.
    let mut needed: HashSet<String> = graph.output.iter().map(|o| o.name.clone()).collect();
    let mut live = vec![false; nodes.len()];
    for (i, n) in nodes.iter().enumerate().rev() {
        if n.output.iter().any(|o| needed.contains(o)) {
            live[i] = true;
            needed.extend(n.input.iter().filter(|s| !s.is_empty()).cloned());
        }
    }
    graph.node = nodes
        .into_iter()
        .zip(live)
        .filter_map(|(n, keep)| keep.then_some(n))
        .collect();
    graph.initializer.retain(|t| needed.contains(&t.name));
    if report.fused > 0 && !model.opset_import.iter().any(|o| o.domain == MS_DOMAIN) {
        model.opset_import.push(OperatorSetIdProto {
            domain: MS_DOMAIN.into(),
            version: 1,
        });
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::WeightProvider;
    use crate::onnx::{Dim, GraphBuilder, TensorSource, write_model};
    use prost::Message;

    struct NoWeights;

    impl WeightProvider for NoWeights {
        fn tensor(&self, name: &str, _: &[usize]) -> Result<Box<dyn TensorSource>> {
            Err(fuse_err(format!("no weight {name}")))
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

    #[test]
    fn site_records_round_trip_and_other_docs_are_ignored() {
        let site = AttentionSite {
            q: "a/q".into(),
            k: "a/k".into(),
            v: "a/v".into(),
            heads: 4,
            kv_heads: 2,
            head_dim: 16,
            masked: false,
        };
        assert_eq!(AttentionSite::parse(&site.doc()), Some(site.clone()));
        assert!(!site.fusable(), "grouped-query sites stay standard");
        assert_eq!(AttentionSite::parse("some other doc"), None);
        let masked = AttentionSite {
            kv_heads: 4,
            masked: true,
            ..site
        };
        assert!(!masked.fusable());
    }
}
