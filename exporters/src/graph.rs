//! Neural-network layers written as standard ONNX operators, shared by every component graph.
//!
//! Each helper mirrors one PyTorch module the diffusers models use (`nn.Conv3d`, `nn.GroupNorm`,
//! `nn.Linear`, `nn.SiLU`, RMS / layer norms) and reads its weights under the module's
//! checkpoint name, like candle's `VarBuilder` prefixes; attention has its own module,
//! [`crate::attention`]. Only operators TensorRT's ONNX parser reads are used.

use crate::error::Result;
use crate::onnx::{Attr, DataType, GraphBuilder, TensorSource, Value, auto};

/// Whether a normalisation layer has learned scale and bias.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Affine {
    Learned,
    None,
}

/// Supplies checkpoint tensors by full dotted name, checked against the shape the model config
/// implies, converted to the graph's weight type.
pub trait WeightProvider {
    fn tensor(&self, name: &str, shape: &[usize]) -> Result<Box<dyn TensorSource>>;
}

/// A tensor source presented under another shape (same bytes, same element count).
struct Reshaped {
    inner: Box<dyn TensorSource>,
    dims: Vec<i64>,
}

impl TensorSource for Reshaped {
    fn data_type(&self) -> DataType {
        self.inner.data_type()
    }
    fn dims(&self) -> Vec<i64> {
        self.dims.clone()
    }
    fn byte_len(&self) -> u64 {
        self.inner.byte_len()
    }
    fn write_to(&self, w: &mut dyn std::io::Write) -> std::io::Result<()> {
        self.inner.write_to(w)
    }
}

/// Tensors stacked along their first axis, written one after another (a fused projection
/// such as `[to_q; to_k; to_v]` from three checkpoint tensors).
struct ConcatRows {
    parts: Vec<Box<dyn TensorSource>>,
    dims: Vec<i64>,
}

impl TensorSource for ConcatRows {
    fn data_type(&self) -> DataType {
        self.parts[0].data_type()
    }
    fn dims(&self) -> Vec<i64> {
        self.dims.clone()
    }
    fn byte_len(&self) -> u64 {
        self.parts.iter().map(|p| p.byte_len()).sum()
    }
    fn write_to(&self, w: &mut dyn std::io::Write) -> std::io::Result<()> {
        for p in &self.parts {
            p.write_to(w)?;
        }
        Ok(())
    }

    /// fp8 parts sharing one scale (rows of one checkpoint tensor) stay fp8 together.
    fn fp8_origin(&self) -> Option<(f32, Box<dyn TensorSource>)> {
        let mut scale = None;
        let mut raws = Vec::with_capacity(self.parts.len());
        for p in &self.parts {
            let (s, raw) = p.fp8_origin()?;
            if scale.is_some_and(|x: f32| x != s) {
                return None;
            }
            scale = Some(s);
            raws.push(raw);
        }
        Some((
            scale?,
            Box::new(ConcatRows {
                parts: raws,
                dims: self.dims.clone(),
            }),
        ))
    }
}

/// Stack `parts` (each `[rows_k, rest..]`, same dtype and trailing dims) along the first axis.
pub fn concat_rows(mut parts: Vec<Box<dyn TensorSource>>) -> Result<Box<dyn TensorSource>> {
    let first = parts
        .first()
        .ok_or_else(|| crate::error::ExportError::Model {
            component: "graph",
            reason: "concat_rows of no tensors".into(),
        })?;
    let mut dims = first.dims();
    let dtype = first.data_type();
    for p in &parts[1..] {
        let d = p.dims();
        if p.data_type() != dtype || d.len() != dims.len() || d[1..] != dims[1..] {
            return Err(crate::error::ExportError::Model {
                component: "graph",
                reason: format!(
                    "cannot stack tensors of dims {:?} and {d:?} (or dtypes differ)",
                    dims
                ),
            });
        }
        dims[0] += d[0];
    }
    if parts.len() == 1
        && let Some(only) = parts.pop()
    {
        return Ok(only);
    }
    Ok(Box::new(ConcatRows { parts, dims }))
}

/// A graph under construction plus the weights it reads.
pub struct Net<'w> {
    pub b: GraphBuilder,
    weights: &'w dyn WeightProvider,
}

fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

impl<'w> Net<'w> {
    pub fn new(b: GraphBuilder, weights: &'w dyn WeightProvider) -> Self {
        Net { b, weights }
    }

    pub fn finish(self) -> GraphBuilder {
        self.b
    }

    /// The checkpoint tensor `name` (shape checked), as an initializer of the same name.
    pub fn weight(&mut self, name: &str, shape: &[usize]) -> Result<Value> {
        let src = self.weights.tensor(name, shape)?;
        Ok(self.b.weight(name, src)?)
    }

    /// The checkpoint tensor `name` (shape checked against `shape`), stored with `dims`.
    pub fn weight_as(&mut self, name: &str, shape: &[usize], dims: &[i64]) -> Result<Value> {
        let inner = self.weights.tensor(name, shape)?;
        Ok(self.b.weight(
            name,
            Box::new(Reshaped {
                inner,
                dims: dims.to_vec(),
            }),
        )?)
    }

    /// Checkpoint tensors `names` (each `[rows_k, rest..]`) stacked along the first axis as one
    /// initializer `fused_name`.
    pub fn weight_fused(
        &mut self,
        fused_name: &str,
        names: &[String],
        shapes: &[Vec<usize>],
    ) -> Result<Value> {
        let mut parts = Vec::with_capacity(names.len());
        for (n, shape) in names.iter().zip(shapes) {
            parts.push(self.weights.tensor(n, shape)?);
        }
        let src = concat_rows(parts)?;
        Ok(self.b.weight(fused_name, src)?)
    }

    /// A node with one output, named automatically from `prefix`.
    pub fn op(
        &mut self,
        op: &str,
        prefix: &str,
        inputs: &[&Value],
        attrs: &[Attr],
    ) -> Result<Value> {
        Ok(self
            .b
            .node1(op, auto(format!("{prefix}/{op}")), inputs, attrs)?)
    }

    /// `Split` of `x` along `axis` into pieces of the given sizes.
    pub fn split(
        &mut self,
        prefix: &str,
        x: &Value,
        axis: i64,
        sizes: &[i64],
    ) -> Result<Vec<Value>> {
        let split = self.i64s(prefix, sizes)?;
        Ok(self.b.node(
            "Split",
            auto(format!("{prefix}/Split")),
            &[x, &split],
            sizes.len(),
            &[Attr::int("axis", axis)],
        )?)
    }

    /// A fused q|k|v projection reshaped to `qkv_shape` ([B, S, q + 2·kv heads, head_dim]) and
    /// split on the heads axis into q (`heads` of them) and k, v (`kv_heads` each).
    pub fn split_qkv(
        &mut self,
        prefix: &str,
        qkv: &Value,
        qkv_shape: &Value,
        [heads, kv_heads]: [usize; 2],
    ) -> Result<[Value; 3]> {
        let qkv = self.reshape(prefix, qkv, qkv_shape)?;
        let (h, kv) = (heads as i64, kv_heads as i64);
        let parts = self.split(prefix, &qkv, 2, &[h, kv, kv])?;
        <[Value; 3]>::try_from(parts).map_err(|p| {
            crate::error::ExportError::model(
                "graph",
                format!("{prefix}: Split gave {} outputs, not 3", p.len()),
            )
        })
    }

    /// `Reshape` of `x` to the shape tensor `shape`.
    pub fn reshape(&mut self, prefix: &str, x: &Value, shape: &Value) -> Result<Value> {
        self.op("Reshape", prefix, &[x, shape], &[])
    }

    pub fn i64s(&mut self, prefix: &str, v: &[i64]) -> Result<Value> {
        Ok(self
            .b
            .const_i64(auto(format!("{prefix}/const")), v, &[v.len() as i64])?)
    }

    pub fn f32_scalar(&mut self, prefix: &str, v: f32) -> Result<Value> {
        Ok(self
            .b
            .const_f32(auto(format!("{prefix}/const")), &[v], &[])?)
    }

    /// `x * sigmoid(x)` (`nn.SiLU`).
    pub fn silu(&mut self, prefix: &str, x: &Value) -> Result<Value> {
        let s = self.op("Sigmoid", prefix, &[x], &[])?;
        self.op("Mul", prefix, &[x, &s], &[])
    }

    /// Mean over the last axis of `x` reshaped as [B, G, -1, W], then over the rest: the sum is
    /// split in two stages so ONNX Runtime's single-pass float sums stay accurate over millions
    /// of elements (docs/architecture.md, numerics).
    fn group_mean(&mut self, prefix: &str, x4: &Value) -> Result<Value> {
        let axes3 = self.axes(prefix, 3)?;
        let m = self.op(
            "ReduceMean",
            prefix,
            &[x4, &axes3],
            &[Attr::int("keepdims", 1)],
        )?;
        let axes = self.axes(prefix, 2)?;
        self.op(
            "ReduceMean",
            prefix,
            &[&m, &axes],
            &[Attr::int("keepdims", 1)],
        )
    }

    fn axes(&mut self, prefix: &str, axis: i64) -> Result<Value> {
        self.i64s(prefix, &[axis])
    }

    /// `nn.GroupNorm(groups, channels, eps, affine=True)` on a channels-first tensor of rank
    /// ≥ 3 whose last axis is spatial. Weights `<prefix>.weight` / `<prefix>.bias`.
    pub fn group_norm(
        &mut self,
        prefix: &str,
        x: &Value,
        channels: usize,
        groups: usize,
        eps: f32,
        rank: usize,
    ) -> Result<Value> {
        let shape = self.op("Shape", prefix, &[x], &[])?;
        let last = self.op(
            "Shape",
            prefix,
            &[x],
            &[
                Attr::int("start", rank as i64 - 1),
                Attr::int("end", rank as i64),
            ],
        )?;
        let head = self.i64s(prefix, &[0, groups as i64, -1])?;
        let target = self.op("Concat", prefix, &[&head, &last], &[Attr::int("axis", 0)])?;
        let x4 = self.op("Reshape", prefix, &[x, &target], &[])?;
        let mean = self.group_mean(prefix, &x4)?;
        let d = self.op("Sub", prefix, &[&x4, &mean], &[])?;
        let d2 = self.op("Mul", prefix, &[&d, &d], &[])?;
        let var = self.group_mean(prefix, &d2)?;
        let eps = self.f32_scalar(prefix, eps)?;
        let ve = self.op("Add", prefix, &[&var, &eps], &[])?;
        let sd = self.op("Sqrt", prefix, &[&ve], &[])?;
        let n = self.op("Div", prefix, &[&d, &sd], &[])?;
        let n = self.op("Reshape", prefix, &[&n, &shape], &[])?;
        let mut dims = vec![channels as i64];
        dims.extend(std::iter::repeat_n(1, rank - 2));
        let g = self.weight_as(&join(prefix, "weight"), &[channels], &dims)?;
        let b = self.weight_as(&join(prefix, "bias"), &[channels], &dims)?;
        let y = self.op("Mul", prefix, &[&n, &g], &[])?;
        self.op("Add", prefix, &[&y, &b], &[])
    }

    /// `nn.Conv3d` (no padding) with weights `<prefix>.weight` [co, ci, k, k, k] and bias.
    pub fn conv3d(
        &mut self,
        prefix: &str,
        x: &Value,
        ci: usize,
        co: usize,
        k: usize,
    ) -> Result<Value> {
        let w = self.weight(&join(prefix, "weight"), &[co, ci, k, k, k])?;
        let b = self.weight(&join(prefix, "bias"), &[co])?;
        let k = k as i64;
        self.op(
            "Conv",
            prefix,
            &[x, &w, &b],
            &[
                Attr::ints("kernel_shape", vec![k, k, k]),
                Attr::ints("strides", vec![1, 1, 1]),
            ],
        )
    }

    /// `nn.Linear`s `modules` (each `[o_k, i]` with bias) fused into one `Gemm` on a 2-D
    /// `x` [tokens, i]: `x @ [W_0; W_1; ..]^T + [b_0; b_1; ..]` → [tokens, Σ o_k]. The weight is
    /// stored as in the checkpoint (`transB = 1`), so it streams without a transpose.
    pub fn gemm(
        &mut self,
        fused_name: &str,
        x: &Value,
        i: usize,
        modules: &[(&str, usize)],
    ) -> Result<Value> {
        let names = |suffix: &str| -> Vec<String> {
            modules.iter().map(|(m, _)| join(m, suffix)).collect()
        };
        let w_shapes: Vec<Vec<usize>> = modules.iter().map(|&(_, o)| vec![o, i]).collect();
        let b_shapes: Vec<Vec<usize>> = modules.iter().map(|&(_, o)| vec![o]).collect();
        let w = self.weight_fused(&join(fused_name, "weight"), &names("weight"), &w_shapes)?;
        let b = self.weight_fused(&join(fused_name, "bias"), &names("bias"), &b_shapes)?;
        self.op("Gemm", fused_name, &[x, &w, &b], &[Attr::int("transB", 1)])
    }

    /// Bias-free `nn.Linear`s `modules` (each `[o_k, i]`) fused into one `Gemm` on a 2-D `x`
    /// [tokens, i]: `x @ [W_0; W_1; ..]^T` → [tokens, Σ o_k], the weight stored as in the
    /// checkpoint (`transB = 1`).
    pub fn gemm_no_bias(
        &mut self,
        fused_name: &str,
        x: &Value,
        i: usize,
        modules: &[(&str, usize)],
    ) -> Result<Value> {
        let names: Vec<String> = modules.iter().map(|(m, _)| join(m, "weight")).collect();
        let shapes: Vec<Vec<usize>> = modules.iter().map(|&(_, o)| vec![o, i]).collect();
        let w = self.weight_fused(&join(fused_name, "weight"), &names, &shapes)?;
        self.op("Gemm", fused_name, &[x, &w], &[Attr::int("transB", 1)])
    }

    /// `nn.LayerNorm(dim, eps)` over the last axis (`LayerNormalization`); `affine` reads
    /// `<prefix>.weight` / `<prefix>.bias`, otherwise scale 1 and no bias.
    pub fn layer_norm(
        &mut self,
        prefix: &str,
        x: &Value,
        dim: usize,
        eps: f32,
        affine: Affine,
    ) -> Result<Value> {
        let (scale, bias) = match affine {
            Affine::Learned => (
                self.weight(&join(prefix, "weight"), &[dim])?,
                self.weight(&join(prefix, "bias"), &[dim])?,
            ),
            Affine::None => (
                self.b.const_f32(
                    auto(format!("{prefix}/ones")),
                    &vec![1.0; dim],
                    &[dim as i64],
                )?,
                Value::none(),
            ),
        };
        let inputs: Vec<&Value> = if bias.is_none() {
            vec![x, &scale]
        } else {
            vec![x, &scale, &bias]
        };
        self.op(
            "LayerNormalization",
            prefix,
            &inputs,
            &[Attr::int("axis", -1), Attr::float("epsilon", eps)],
        )
    }

    /// diffusers `RMSNorm(dim, eps)` over the last axis: `x / sqrt(mean(x²) + eps) * weight`.
    pub fn rms_norm(&mut self, prefix: &str, x: &Value, dim: usize, eps: f32) -> Result<Value> {
        let sq = self.op("Mul", prefix, &[x, x], &[])?;
        let axes = self.i64s(prefix, &[-1])?;
        let ms = self.op(
            "ReduceMean",
            prefix,
            &[&sq, &axes],
            &[Attr::int("keepdims", 1)],
        )?;
        let eps = self.f32_scalar(prefix, eps)?;
        let ms = self.op("Add", prefix, &[&ms, &eps], &[])?;
        let rms = self.op("Sqrt", prefix, &[&ms], &[])?;
        let y = self.op("Div", prefix, &[x, &rms], &[])?;
        let w = self.weight(&join(prefix, "weight"), &[dim])?;
        self.op("Mul", prefix, &[&y, &w], &[])
    }

    /// `nn.Linear(i, o)` on the last axis: `x @ W^T + b` (weights `<prefix>.weight` [o, i]).
    pub fn linear(
        &mut self,
        prefix: &str,
        x: &Value,
        i: usize,
        o: usize,
        bias: bool,
    ) -> Result<Value> {
        let w = self.weight(&join(prefix, "weight"), &[o, i])?;
        let wt = self.op(
            "Transpose",
            prefix,
            &[&w],
            &[Attr::ints("perm", vec![1, 0])],
        )?;
        let y = self.op("MatMul", prefix, &[x, &wt], &[])?;
        if bias {
            let b = self.weight(&join(prefix, "bias"), &[o])?;
            self.op("Add", prefix, &[&y, &b], &[])
        } else {
            Ok(y)
        }
    }
}
