//! Precision profiles written into the graph: per-node compute dtypes from name rules, casts at
//! dtype boundaries, weights and graph I/O converted.
//!
//! TensorRT builds strongly typed networks: precision is the element types the ONNX graph
//! carries, not builder flags. A profile (`configs/precision/*.yaml`, in the habit of
//! mistral.rs' per-layer rules: read raw, then validated into types) gives a default compute
//! dtype, the graph I/O dtype and regex rules over node names (module path + `/OpType`) for
//! float32 islands, as NVIDIA's demoDiffusion keeps norms and RoPE in fp32 (attention softmax
//! stays in the MatMuls' dtype: see [`crate::attention`]). The pass runs
//! on a finished fp32 graph: it infers every value's element type, assigns each float node its
//! dtype, inserts `Cast`s where a value crosses dtypes, and converts float initializers (external
//! weights stream through a converting writer, so memory stays bounded).

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

use regex::Regex;
use serde::Deserialize;

use crate::checkpoint::{f32_to_bf16, f32_to_f16};
use crate::error::{ExportError, Result};
use crate::onnx::proto::{AttributeProto, AttributeType, NodeProto};
use crate::onnx::{DataType, GraphBuilder, Initializer, OwnedTensor, TensorSource};
use hyvideo_bundle::Precision;
use hyvideo_bundle::components::transformer_stages::CUT_PREFIX;
use hyvideo_onnx::types::{attr_int, elem_type, output_type, set_elem_type};

/// A float element type a node computes in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FloatType {
    F32,
    F16,
    BF16,
}

impl FloatType {
    /// The element type the bundle contract records for graph I/O of this type.
    pub fn tensor_type(self) -> hyvideo_bundle::TensorType {
        match self {
            FloatType::F32 => hyvideo_bundle::TensorType::Float32,
            FloatType::F16 => hyvideo_bundle::TensorType::Float16,
            FloatType::BF16 => hyvideo_bundle::TensorType::Bfloat16,
        }
    }

    pub fn data_type(self) -> DataType {
        match self {
            FloatType::F32 => DataType::Float,
            FloatType::F16 => DataType::Float16,
            FloatType::BF16 => DataType::Bfloat16,
        }
    }

    fn parse(s: &str, what: &str, file: &str) -> Result<FloatType> {
        match s {
            "fp32" | "float32" => Ok(FloatType::F32),
            "fp16" | "float16" => Ok(FloatType::F16),
            "bf16" | "bfloat16" => Ok(FloatType::BF16),
            other => Err(profile_err(
                file,
                format!("{what}: unknown dtype `{other}` (fp32, fp16 or bf16)"),
            )),
        }
    }

    fn short(self) -> &'static str {
        match self {
            FloatType::F32 => "fp32",
            FloatType::F16 => "fp16",
            FloatType::BF16 => "bf16",
        }
    }
}

fn profile_err(file: &str, reason: String) -> ExportError {
    ExportError::Model {
        component: "precision profile",
        reason: format!("{file}: {reason}"),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    #[serde(rename = "match")]
    pattern: String,
    dtype: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFp8 {
    quantize: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProfile {
    name: String,
    compute: String,
    io: String,
    #[serde(default)]
    rules: Vec<RawRule>,
    #[serde(default)]
    fp8: Option<RawFp8>,
}

/// One rule: nodes whose name matches compute in `dtype`.
#[derive(Debug, Clone)]
pub struct Rule {
    pub pattern: Regex,
    pub dtype: FloatType,
}

/// A validated precision profile.
#[derive(Debug, Clone)]
pub struct PrecisionProfile {
    pub name: String,
    pub compute: FloatType,
    pub io: FloatType,
    pub rules: Vec<Rule>,
    /// Gemm nodes (by name) whose input and weight get FP8 Q/DQ.
    pub fp8_quantize: Option<Regex>,
}

const BUILTIN_FP32: &str = include_str!("../../configs/precision/fp32.yaml");
const BUILTIN_FP16: &str = include_str!("../../configs/precision/fp16.yaml");
const BUILTIN_BF16: &str = include_str!("../../configs/precision/bf16.yaml");
const BUILTIN_FP8: &str = include_str!("../../configs/precision/fp8.yaml");

impl PrecisionProfile {
    /// Parse and validate profile YAML; `file` names it in errors (a bad rule is named by its
    /// position and pattern).
    pub fn from_yaml(text: &str, file: &str) -> Result<PrecisionProfile> {
        let raw: RawProfile = serde_saphyr::from_str(text)
            .map_err(|e| profile_err(file, format!("not a precision profile: {e}")))?;
        let compute = FloatType::parse(&raw.compute, "compute", file)?;
        let io = FloatType::parse(&raw.io, "io", file)?;
        let mut rules = Vec::with_capacity(raw.rules.len());
        for (i, r) in raw.rules.iter().enumerate() {
            let what = format!("rules[{i}] (match {:?})", r.pattern);
            let pattern = Regex::new(&r.pattern)
                .map_err(|e| profile_err(file, format!("{what}: bad regex: {e}")))?;
            let dtype = FloatType::parse(&r.dtype, &what, file)?;
            rules.push(Rule { pattern, dtype });
        }
        let fp8_quantize = raw
            .fp8
            .map(|f| {
                Regex::new(&f.quantize)
                    .map_err(|e| profile_err(file, format!("fp8.quantize: bad regex: {e}")))
            })
            .transpose()?;
        Ok(PrecisionProfile {
            name: raw.name,
            compute,
            io,
            rules,
            fp8_quantize,
        })
    }

    pub fn load(path: &Path) -> Result<PrecisionProfile> {
        let text = std::fs::read_to_string(path).map_err(|source| ExportError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_yaml(&text, &path.display().to_string())
    }

    /// The profile shipped in `configs/precision/` for `precision`.
    pub fn builtin(precision: Precision) -> Result<PrecisionProfile> {
        let (text, file) = match precision {
            Precision::Fp32 => (BUILTIN_FP32, "configs/precision/fp32.yaml"),
            Precision::Fp16 => (BUILTIN_FP16, "configs/precision/fp16.yaml"),
            Precision::Bf16 => (BUILTIN_BF16, "configs/precision/bf16.yaml"),
            Precision::Fp8 => (BUILTIN_FP8, "configs/precision/fp8.yaml"),
        };
        Self::from_yaml(text, file)
    }

    /// The dtype of the float node named `node`.
    pub fn dtype_for(&self, node: &str) -> FloatType {
        self.rules
            .iter()
            .find(|r| r.pattern.is_match(node))
            .map_or(self.compute, |r| r.dtype)
    }
}

const FLOAT: i32 = DataType::Float as i32;

/// A float32 tensor source re-encoded as `to` while it streams.
struct Converted {
    inner: Box<dyn TensorSource>,
    to: FloatType,
}

/// A `Write` that hands the complete little-endian f32 values it receives to `f`, chunk by
/// chunk (a value split across writes is completed first): the one adapter behind streaming
/// conversion, amax and quantisation of f32 tensor sources.
struct F32Sink<F: FnMut(&[f32]) -> std::io::Result<()>> {
    f: F,
    pending: Vec<u8>,
    values: Vec<f32>,
}

impl<F: FnMut(&[f32]) -> std::io::Result<()>> F32Sink<F> {
    fn new(f: F) -> Self {
        F32Sink {
            f,
            pending: Vec::new(),
            values: Vec::new(),
        }
    }

    /// Stream `src` through `f`; a trailing partial value is an error.
    fn run(src: &dyn TensorSource, f: F) -> std::io::Result<()> {
        let mut sink = Self::new(f);
        src.write_to(&mut sink)?;
        if sink.pending.is_empty() {
            Ok(())
        } else {
            Err(std::io::Error::other("float32 tensor of a partial element"))
        }
    }
}

impl<F: FnMut(&[f32]) -> std::io::Result<()>> Write for F32Sink<F> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.pending.extend_from_slice(data);
        let whole = self.pending.len() / 4 * 4;
        self.values.clear();
        self.values.extend(
            self.pending[..whole]
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
        );
        (self.f)(&self.values)?;
        self.pending.drain(..whole);
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl TensorSource for Converted {
    fn data_type(&self) -> DataType {
        self.to.data_type()
    }
    fn dims(&self) -> Vec<i64> {
        self.inner.dims()
    }
    fn byte_len(&self) -> u64 {
        match self.to {
            FloatType::F32 => self.inner.byte_len(),
            FloatType::F16 | FloatType::BF16 => self.inner.byte_len() / 2,
        }
    }
    fn write_to(&self, w: &mut dyn Write) -> std::io::Result<()> {
        if self.to == FloatType::F32 {
            return self.inner.write_to(w);
        }
        let to = self.to;
        let mut buf = Vec::new();
        F32Sink::run(self.inner.as_ref(), |vals| {
            buf.clear();
            for &v in vals {
                let bits = if to == FloatType::F16 {
                    f32_to_f16(v)
                } else {
                    f32_to_bf16(v)
                };
                buf.extend_from_slice(&bits.to_le_bytes());
            }
            w.write_all(&buf)
        })
    }
}

fn convert_inline(t: &OwnedTensor, to: FloatType) -> Result<OwnedTensor> {
    let mut bytes = Vec::with_capacity(t.bytes().len() / 2);
    for c in t.bytes().chunks_exact(4) {
        let v = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        let bits = match to {
            FloatType::F16 => f32_to_f16(v),
            FloatType::BF16 => f32_to_bf16(v),
            FloatType::F32 => return Ok(t.clone()),
        };
        bytes.extend_from_slice(&bits.to_le_bytes());
    }
    Ok(OwnedTensor::from_bytes(to.data_type(), &t.dims(), bytes)?)
}

/// Counts of what the pass did, for tests and logs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PassReport {
    /// Float nodes per compute dtype.
    pub nodes: HashMap<&'static str, usize>,
    pub casts: usize,
    pub converted_initializers: usize,
}

/// Rewrite the fp32 graph in `b` to `profile`.
pub fn apply(b: &mut GraphBuilder, profile: &PrecisionProfile) -> Result<PassReport> {
    let mut report = PassReport::default();
    if profile.compute == FloatType::F32
        && profile.io == FloatType::F32
        && profile.rules.iter().all(|r| r.dtype == FloatType::F32)
    {
        return Ok(report);
    }
    let (inputs, outputs, nodes, initializers) = b.precision_parts();
    // 1. Element types of the fp32 graph.
    let mut types: HashMap<String, i32> = HashMap::new();
    for v in inputs.iter() {
        types.insert(v.name.clone(), elem_type(v).unwrap_or(FLOAT));
    }
    let mut init_index: HashMap<String, usize> = HashMap::new();
    for (i, init) in initializers.iter().enumerate() {
        let (name, dt) = match init {
            Initializer::Inline { name, tensor } => (name, tensor.data_type()),
            Initializer::External { name, source } => (name, source.data_type()),
        };
        types.insert(name.clone(), dt as i32);
        init_index.insert(name.clone(), i);
    }
    for n in nodes.iter() {
        let t = output_type(n, &types);
        for o in &n.output {
            types.insert(o.clone(), t);
        }
    }
    let is_float = |v: &str| types.get(v) == Some(&FLOAT);
    // 2. Each float initializer takes its first float consumer's dtype.
    let mut init_dtype: HashMap<String, FloatType> = HashMap::new();
    for n in nodes.iter() {
        let d = profile.dtype_for(&n.name);
        for i in &n.input {
            if init_index.contains_key(i) && is_float(i) {
                init_dtype.entry(i.clone()).or_insert(d);
            }
        }
    }
    // 3. Walk the nodes, casting inputs that arrive in another dtype.
    let mut cur: HashMap<String, FloatType> = HashMap::new();
    for v in inputs.iter_mut() {
        if elem_type(v) == Some(FLOAT) {
            set_elem_type(v, profile.io.data_type());
            cur.insert(v.name.clone(), profile.io);
        }
    }
    for (name, d) in &init_dtype {
        cur.insert(name.clone(), *d);
    }
    let mut casts: HashMap<(String, FloatType), String> = HashMap::new();
    let mut out_nodes: Vec<NodeProto> = Vec::with_capacity(nodes.len());
    let cast_node = |value: &str, to: FloatType, name: &str| NodeProto {
        input: vec![value.to_owned()],
        output: vec![name.to_owned()],
        name: name.to_owned(),
        op_type: "Cast".into(),
        attribute: vec![AttributeProto {
            name: "to".into(),
            r#type: AttributeType::Int as i32,
            i: Some(to.data_type() as i64),
            ..Default::default()
        }],
        ..Default::default()
    };
    for mut n in std::mem::take(nodes) {
        let float_node =
            n.input.iter().any(|i| is_float(i)) || n.output.iter().any(|o| is_float(o));
        if !float_node {
            out_nodes.push(n);
            continue;
        }
        // A stage boundary (`stage/<name>` Identity) keeps its input's dtype: cutting the
        // graph there changes nothing in the single graph.
        let d = match n.input.first() {
            Some(i) if n.op_type == "Identity" && n.name.starts_with(CUT_PREFIX) => {
                cur.get(i.as_str()).copied().unwrap_or(FloatType::F32)
            }
            _ => profile.dtype_for(&n.name),
        };
        *report.nodes.entry(d.short()).or_default() += 1;
        if n.op_type == "Cast" && attr_int(&n, "to") == Some(FLOAT as i64) {
            for a in n.attribute.iter_mut().filter(|a| a.name == "to") {
                a.i = Some(d.data_type() as i64);
            }
        } else {
            for inp in n.input.iter_mut() {
                if inp.is_empty() || !is_float(inp) {
                    continue;
                }
                let have = cur.get(inp.as_str()).copied().unwrap_or(FloatType::F32);
                if have == d {
                    continue;
                }
                let key = (inp.clone(), d);
                let name = match casts.get(&key) {
                    Some(name) => name.clone(),
                    None => {
                        let name = format!("{inp}/to_{}", d.short());
                        out_nodes.push(cast_node(inp, d, &name));
                        report.casts += 1;
                        casts.insert(key, name.clone());
                        name
                    }
                };
                *inp = name;
            }
        }
        for o in &n.output {
            if is_float(o) {
                cur.insert(o.clone(), d);
            }
        }
        out_nodes.push(n);
    }
    // 4. Graph outputs in the I/O dtype.
    for v in outputs.iter_mut() {
        if elem_type(v) != Some(FLOAT) {
            continue;
        }
        let have = cur.get(&v.name).copied().unwrap_or(FloatType::F32);
        if have != profile.io {
            let pre = format!("{}/pre_{}", v.name, profile.io.short());
            for n in out_nodes.iter_mut() {
                for o in n.output.iter_mut().filter(|o| **o == v.name) {
                    *o = pre.clone();
                }
            }
            out_nodes.push(cast_node(&pre, profile.io, &v.name));
            report.casts += 1;
        }
        set_elem_type(v, profile.io.data_type());
    }
    *nodes = out_nodes;
    // 5. Initializers in their dtype.
    for init in initializers.iter_mut() {
        let name = match init {
            Initializer::Inline { name, .. } | Initializer::External { name, .. } => name.clone(),
        };
        let Some(&to) = init_dtype.get(&name) else {
            continue;
        };
        if to == FloatType::F32 {
            continue;
        }
        report.converted_initializers += 1;
        match init {
            Initializer::Inline { tensor, .. } => *tensor = convert_inline(tensor, to)?,
            Initializer::External { source, .. } => {
                let inner = std::mem::replace(
                    source,
                    Box::new(OwnedTensor::from_f32(&[0], &[])?) as Box<dyn TensorSource>,
                );
                *source = Box::new(Converted { inner, to });
            }
        }
    }
    Ok(report)
}

/// Largest finite FLOAT8E4M3FN value.
pub const FP8_MAX: f32 = 448.0;

/// Per-layer input amax recorded by `hyvideo-export calibrate` (`--scales FILE`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, Deserialize)]
pub struct Fp8Scales {
    pub format: String,
    pub version: u32,
    /// Gemm node name → max |input| over the calibration runs.
    pub amax: std::collections::BTreeMap<String, f32>,
}

impl Fp8Scales {
    pub const FORMAT: &'static str = "hyvideo-fp8-scales";

    pub fn new(amax: std::collections::BTreeMap<String, f32>) -> Fp8Scales {
        Fp8Scales {
            format: Self::FORMAT.into(),
            version: 1,
            amax,
        }
    }

    pub fn load(path: &Path) -> Result<Fp8Scales> {
        let bad = |reason: String| ExportError::Model {
            component: "fp8 scales",
            reason: format!("{}: {reason}", path.display()),
        };
        let text = std::fs::read_to_string(path).map_err(|source| ExportError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let s: Fp8Scales = serde_json::from_str(&text)
            .map_err(|e| bad(format!("not a scales file (hyvideo-export calibrate): {e}")))?;
        if s.format != Self::FORMAT || s.version != 1 {
            return Err(bad(format!("format {} v{}", s.format, s.version)));
        }
        if let Some((k, v)) = s.amax.iter().find(|(_, v)| !v.is_finite() || **v < 0.0) {
            return Err(bad(format!("amax of `{k}` is {v}")));
        }
        Ok(s)
    }
}

/// The per-tensor scale `amax / 448` (1 for an all-zero tensor), rounded to `dtype` — the type
/// the `DequantizeLinear` reads it in — so quantisation and dequantisation use the same number.
pub fn fp8_scale(amax: f32, dtype: FloatType) -> f32 {
    let s = if amax > 0.0 { amax / FP8_MAX } else { 1.0 };
    match dtype {
        FloatType::F32 => s,
        FloatType::F16 => crate::checkpoint::round_through(s, crate::checkpoint::DType::F16),
        FloatType::BF16 => crate::checkpoint::round_through(s, crate::checkpoint::DType::BF16),
    }
}

/// Max |x| of an f32 tensor source, streamed.
fn source_amax(src: &dyn TensorSource) -> std::io::Result<f32> {
    let mut max = 0f32;
    F32Sink::run(src, |vals| {
        max = vals.iter().fold(max, |m, v| m.max(v.abs()));
        Ok(())
    })?;
    Ok(max)
}

/// An f32 weight written as FLOAT8E4M3FN: `fp8(clamp(w / scale, ±448))`, streamed.
struct Fp8Weight {
    inner: Box<dyn TensorSource>,
    scale: f32,
}

impl TensorSource for Fp8Weight {
    fn data_type(&self) -> DataType {
        DataType::Float8e4m3fn
    }
    fn dims(&self) -> Vec<i64> {
        self.inner.dims()
    }
    fn byte_len(&self) -> u64 {
        self.inner.byte_len() / 4
    }
    fn write_to(&self, w: &mut dyn Write) -> std::io::Result<()> {
        let inv = 1.0 / self.scale;
        let mut buf = Vec::new();
        F32Sink::run(self.inner.as_ref(), |vals| {
            buf.clear();
            buf.extend(
                vals.iter()
                    .map(|v| crate::checkpoint::f32_to_f8e4m3((v * inv).clamp(-FP8_MAX, FP8_MAX))),
            );
            w.write_all(&buf)
        })
    }
}

/// What the FP8 pass quantised.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fp8Report {
    /// Names of the Gemm nodes given input and weight Q/DQ.
    pub quantized: Vec<String>,
}

/// Insert FP8 Q/DQ on the input and the weight of every Gemm whose name matches `quantize`,
/// on the fp32 graph (before [`apply`]): activation scales from `scales` (an error names every
/// layer without one), weight scales amax/448 of the weight; scales are rounded to `scale_dtype`.
pub fn apply_fp8(
    b: &mut GraphBuilder,
    quantize: &Regex,
    scales: Option<&Fp8Scales>,
    scale_dtype: FloatType,
) -> Result<Fp8Report> {
    let (_, _, nodes, initializers) = b.precision_parts();
    let targets: Vec<usize> = nodes
        .iter()
        .enumerate()
        .filter(|(_, n)| n.op_type == "Gemm" && quantize.is_match(&n.name))
        .map(|(i, _)| i)
        .collect();
    let mut report = Fp8Report::default();
    if targets.is_empty() {
        return Ok(report);
    }
    let missing: Vec<&str> = targets
        .iter()
        .map(|&i| nodes[i].name.as_str())
        .filter(|n| scales.is_none_or(|s| !s.amax.contains_key(*n)))
        .collect();
    if !missing.is_empty() {
        return Err(ExportError::Model {
            component: "fp8",
            reason: format!(
                "{} layer(s) have no activation scale (first: {}); pass --scales FILE made by \
                 `hyvideo-export calibrate` on the fp32 bundle",
                missing.len(),
                missing[..missing.len().min(3)].join(", ")
            ),
        });
    }
    let mut new_nodes = Vec::with_capacity(nodes.len() + 3 * targets.len());
    let mut new_inits: Vec<Initializer> = vec![];
    let zero = OwnedTensor::from_bytes(DataType::Float8e4m3fn, &[], vec![0])?;
    let index: HashMap<String, usize> = initializers
        .iter()
        .enumerate()
        .map(|(i, init)| match init {
            Initializer::Inline { name, .. } | Initializer::External { name, .. } => {
                (name.clone(), i)
            }
        })
        .collect();
    let mk = |op: &str, name: String, inputs: Vec<String>, out: String| NodeProto {
        input: inputs,
        output: vec![out],
        name,
        op_type: op.into(),
        ..Default::default()
    };
    for (i, mut n) in std::mem::take(nodes).into_iter().enumerate() {
        if !targets.contains(&i) {
            new_nodes.push(n);
            continue;
        }
        let g = n.name.clone();
        // activation
        let amax = scales.and_then(|s| s.amax.get(&g)).copied().unwrap_or(0.0);
        let xs = format!("{g}/x_scale");
        let xz = format!("{g}/x_zero");
        new_inits.push(Initializer::Inline {
            name: xs.clone(),
            tensor: OwnedTensor::from_f32(&[], &[fp8_scale(amax, scale_dtype)])?,
        });
        new_inits.push(Initializer::Inline {
            name: xz.clone(),
            tensor: zero.clone(),
        });
        let (q, dq) = (format!("{g}/x_quant"), format!("{g}/x_dequant"));
        new_nodes.push(mk(
            "QuantizeLinear",
            q.clone(),
            vec![n.input[0].clone(), xs.clone(), xz],
            q.clone(),
        ));
        new_nodes.push(mk("DequantizeLinear", dq.clone(), vec![q, xs], dq.clone()));
        n.input[0] = dq;
        // weight
        let w = n.input[1].clone();
        let Some(&wi) = index.get(&w) else {
            return Err(ExportError::Model {
                component: "fp8",
                reason: format!("{g}: weight `{w}` is not an initializer"),
            });
        };
        let inner = match &mut initializers[wi] {
            Initializer::External { source, .. } => std::mem::replace(
                source,
                Box::new(OwnedTensor::from_f32(&[0], &[])?) as Box<dyn TensorSource>,
            ),
            Initializer::Inline { tensor, .. } => Box::new(tensor.clone()) as Box<dyn TensorSource>,
        };
        if inner.data_type() != DataType::Float {
            return Err(ExportError::Model {
                component: "fp8",
                reason: format!(
                    "{g}: weight `{w}` is {:?}, expected float32",
                    inner.data_type()
                ),
            });
        }
        let scale = if let Some((official, raw)) = inner.fp8_origin() {
            // The official fp8 checkpoint: its bytes and per-tensor scale as they are.
            initializers[wi] = Initializer::External {
                name: w.clone(),
                source: raw,
            };
            official
        } else {
            let wamax = source_amax(inner.as_ref()).map_err(|e| ExportError::Model {
                component: "fp8",
                reason: format!("{g}: reading `{w}`: {e}"),
            })?;
            let scale = fp8_scale(wamax, scale_dtype);
            initializers[wi] = Initializer::External {
                name: w.clone(),
                source: Box::new(Fp8Weight { inner, scale }),
            };
            scale
        };
        let ws = format!("{w}/scale");
        new_inits.push(Initializer::Inline {
            name: ws.clone(),
            tensor: OwnedTensor::from_f32(&[], &[scale])?,
        });
        let wdq = format!("{g}/w_dequant");
        new_nodes.push(mk(
            "DequantizeLinear",
            wdq.clone(),
            vec![w, ws],
            wdq.clone(),
        ));
        n.input[1] = wdq;
        report.quantized.push(g);
        new_nodes.push(n);
    }
    *nodes = new_nodes;
    initializers.extend(new_inits);
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_profiles_parse_and_match_names() {
        let p = PrecisionProfile::builtin(Precision::Fp16).unwrap();
        assert_eq!((p.compute, p.io), (FloatType::F16, FloatType::F16));
        // Attention softmax in the MatMuls' dtype (TensorRT's fusion pattern) except the VAE's.
        assert_eq!(
            p.dtype_for("transformer_blocks.0.attn/Softmax"),
            FloatType::F16
        );
        assert_eq!(
            p.dtype_for("decoder.mid_block.attentions.0/Softmax"),
            FloatType::F32
        );
        assert_eq!(
            p.dtype_for("transformer_blocks.0.attn.norm_q/Mul"),
            FloatType::F32
        );
        assert_eq!(
            p.dtype_for("transformer_blocks.0.norm1/LayerNormalization"),
            FloatType::F32
        );
        assert_eq!(
            p.dtype_for("transformer_blocks.0.norm1.linear/Gemm"),
            FloatType::F16
        );
        assert_eq!(
            p.dtype_for("transformer_blocks.0.attn.to_qkv/Gemm"),
            FloatType::F16
        );
        assert_eq!(p.dtype_for("rope/Cos"), FloatType::F32);
        assert_eq!(
            p.dtype_for("time_text_embed.timestep_embedder.linear_1/Gemm"),
            FloatType::F32
        );
        let b = PrecisionProfile::builtin(Precision::Bf16).unwrap();
        assert_eq!(b.compute, FloatType::BF16);
        let f = PrecisionProfile::builtin(Precision::Fp8).unwrap();
        let q = f.fp8_quantize.unwrap();
        assert!(q.is_match("transformer_blocks.3.attn.to_qkv/Gemm"));
        assert!(q.is_match("single_transformer_blocks.0.linear1/Gemm"));
        assert!(!q.is_match("proj_out/Gemm"));
        assert!(!q.is_match("time_text_embed.timestep_embedder.linear_1/Gemm"));
        assert!(!q.is_match("context_embedder.token_refiner.refiner_blocks.0.attn.to_qkv/Gemm"));
        assert_eq!(fp8_scale(448.0, FloatType::F32), 1.0);
        assert_eq!(fp8_scale(0.0, FloatType::F16), 1.0);
    }

    #[test]
    fn bad_rules_are_named() {
        let e = PrecisionProfile::from_yaml(
            "name: x\ncompute: fp16\nio: fp16\nrules:\n  - match: 'a('\n    dtype: fp32\n",
            "x.yaml",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("x.yaml") && e.contains("rules[0]") && e.contains("bad regex"),
            "{e}"
        );
        let e = PrecisionProfile::from_yaml(
            "name: x\ncompute: fp16\nio: fp16\nrules:\n  - match: 'a'\n    dtype: int8\n",
            "x.yaml",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("unknown dtype `int8`"), "{e}");
        let e = PrecisionProfile::from_yaml("name: x\ncompute: fp16\n", "x.yaml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("io"), "{e}");
    }

    #[test]
    fn converting_writer_streams_half_precision() {
        let src = OwnedTensor::from_f32(&[3], &[1.0, -2.5, 65504.0]).unwrap();
        let c = Converted {
            inner: Box::new(src),
            to: FloatType::F16,
        };
        assert_eq!(c.byte_len(), 6);
        let mut out = Vec::new();
        c.write_to(&mut out).unwrap();
        let vals: Vec<u16> = out
            .chunks_exact(2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
            .collect();
        assert_eq!(vals, [0x3c00, 0xc100, 0x7bff]);
    }
}
