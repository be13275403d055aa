//! The attention rewrite applied when a bundle graph is loaded on ONNX Runtime's CPU or CUDA
//! provider: every attention site the exporter's builder recorded ([`AttentionSite`], in the
//! doc string of the site's last node) that has no mask and as many k/v heads as q heads is
//! replaced by one `com.microsoft.MultiHeadAttention` node (q, k, v as `[B, S, heads·head_dim]`,
//! cast to the kernel's dtype where the graph's differs), then the nodes and initializers
//! nothing reads any more are dropped. ONNX Runtime's CPU kernel is MLAS flash attention (fp32);
//! CUDA's are flash / memory-efficient attention (fp16, or fp32). Neither materialises the
//! `[B, heads, S, S]` scores.
//!
//! Mirrors ONNX Runtime's own transformer optimizer (`onnxruntime.transformers`
//! `FusionAttention`), driven by the builder's records instead of pattern matching.

use std::collections::{HashMap, HashSet};

use hyvideo_bundle::AttentionKernel;
use serde::{Deserialize, Serialize};

use crate::builder::{Attr, OwnedTensor};
use crate::error::{OnnxError, Result};
use crate::proto::{DataType, ModelProto, NodeProto, OperatorSetIdProto};
use crate::types::value_types;

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
    /// The doc string that carries this record.
    pub fn doc(&self) -> String {
        // A struct of strings and integers always serialises.
        format!(
            "{SITE_TAG}{}",
            serde_json::to_string(self).unwrap_or_default()
        )
    }

    /// The record in a node's doc string, if it carries one.
    pub fn parse(doc: &str) -> Option<AttentionSite> {
        serde_json::from_str(doc.strip_prefix(SITE_TAG)?).ok()
    }

    /// Whether ONNX Runtime's fused kernels take this site.
    pub fn fusable(&self) -> bool {
        !self.masked && self.heads == self.kv_heads
    }
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

fn fuse_err(reason: String) -> OnnxError {
    OnnxError::Pass {
        pass: "attention rewrite",
        reason,
    }
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
