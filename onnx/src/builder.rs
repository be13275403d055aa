//! A small ONNX graph builder in the style of tract's `wire_node`: every node is wired from
//! [`Value`]s the builder handed out earlier, names are checked as they are added (duplicate
//! node or value names and undefined inputs are typed errors naming them), attributes are typed
//! ([`Attr`]), and initializers are either small inline constants or large [`TensorSource`]s
//! that the writer streams to an external data file.
//!
//! It produces the messages of [`super::proto`] (which mirror `onnx.proto3`); see
//! [`super::write_model`] for writing a finished graph to disk.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;

use super::error::{OnnxError, Result};
use super::proto::{
    AttributeProto, AttributeType, DataType, GraphProto, ModelProto, NodeProto, OperatorSetIdProto,
    StringStringEntryProto, TensorProto, TensorShapeProto, TypeProto, ValueInfoProto,
    tensor_shape_proto, type_proto,
};

/// IR version written into every model (ONNX 1.16+).
pub const IR_VERSION: i64 = 10;
/// Default opset of the default (`ai.onnx`) domain.
pub const DEFAULT_OPSET: i64 = 20;
/// Oldest default-domain opset the builder accepts (FLOAT8E4M3FN Q/DQ need 19).
pub const MIN_OPSET: i64 = 19;

/// A tensor whose bytes are produced on demand, e.g. streamed from an mmapped checkpoint with
/// a dtype conversion applied in chunks. `write_to` must write exactly `byte_len()` bytes of
/// little-endian `data_type()` elements in row-major order of `dims()`.
pub trait TensorSource: Send {
    /// Element type of the bytes written.
    fn data_type(&self) -> DataType;
    /// Shape of the tensor.
    fn dims(&self) -> Vec<i64>;
    /// Exact number of bytes `write_to` writes.
    fn byte_len(&self) -> u64;
    /// Write the tensor's bytes.
    fn write_to(&self, w: &mut dyn std::io::Write) -> std::io::Result<()>;
    /// For a tensor dequantised from FLOAT8E4M3FN with one per-tensor scale (the official fp8
    /// checkpoint): that scale and the stored fp8 bytes, so an FP8 graph can use them as they
    /// are. `None` for everything else.
    fn fp8_origin(&self) -> Option<(f32, Box<dyn TensorSource>)> {
        None
    }
}

/// One dimension of a graph input or output shape.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Dim {
    /// A fixed size.
    Fixed(i64),
    /// A named dynamic size (`dim_param`); equal names mean equal sizes.
    Symbol(String),
}

impl From<i64> for Dim {
    fn from(v: i64) -> Self {
        Self::Fixed(v)
    }
}

impl From<&str> for Dim {
    fn from(s: &str) -> Self {
        Self::Symbol(s.to_owned())
    }
}

/// A value of the graph (graph input, initializer or node output), handed out by the builder
/// and wired into later nodes. [`Value::none`] stands for an omitted optional input.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Value(String);

impl Value {
    /// The empty name ONNX uses for an omitted optional input.
    pub fn none() -> Self {
        Self(String::new())
    }

    /// The value's name in the graph.
    pub fn name(&self) -> &str {
        &self.0
    }

    /// Whether this is the omitted-input placeholder.
    pub fn is_none(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// How a node or constant is named: exactly as given, or automatically from a prefix
/// (see [`GraphBuilder::unique_name`]). `&str` and `String` convert to [`Name::Exact`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Name {
    /// Use this name; a clash is an error.
    Exact(String),
    /// Use this prefix, made unique by a `_<n>` suffix where needed.
    Auto(String),
}

/// Shorthand for [`Name::Auto`]: `b.node1("Add", auto("blocks.0/add"), ...)`.
pub fn auto(prefix: impl Into<String>) -> Name {
    Name::Auto(prefix.into())
}

impl From<&str> for Name {
    fn from(s: &str) -> Self {
        Self::Exact(s.to_owned())
    }
}

impl From<String> for Name {
    fn from(s: String) -> Self {
        Self::Exact(s)
    }
}

impl From<&String> for Name {
    fn from(s: &String) -> Self {
        Self::Exact(s.clone())
    }
}

/// A small tensor held in memory: inline constants, `Constant`/attribute tensors, tests.
/// Also a [`TensorSource`], so it can be written as external data.
#[derive(Clone, Debug, PartialEq)]
pub struct OwnedTensor {
    data_type: DataType,
    dims: Vec<i64>,
    bytes: Vec<u8>,
}

/// Number of bytes a `data_type` tensor of `dims` occupies, checked for overflow.
pub(crate) fn expected_bytes(tensor: &str, data_type: DataType, dims: &[i64]) -> Result<u64> {
    let elem = data_type
        .elem_size()
        .ok_or_else(|| OnnxError::UnsupportedDataType {
            tensor: tensor.to_owned(),
            data_type,
        })?;
    let mut n = elem;
    for &d in dims {
        let d = u64::try_from(d).map_err(|_| OnnxError::InvalidShape {
            name: tensor.to_owned(),
            reason: format!("negative dimension in {dims:?}"),
        })?;
        n = n.checked_mul(d).ok_or_else(|| OnnxError::InvalidShape {
            name: tensor.to_owned(),
            reason: format!("{dims:?} overflows u64 bytes"),
        })?;
    }
    Ok(n)
}

impl OwnedTensor {
    /// A tensor from little-endian bytes; fails if their length does not match `dims`.
    pub fn from_bytes(data_type: DataType, dims: &[i64], bytes: Vec<u8>) -> Result<Self> {
        let expected = expected_bytes("<owned tensor>", data_type, dims)?;
        if expected != bytes.len() as u64 {
            return Err(OnnxError::SizeMismatch {
                tensor: "<owned tensor>".into(),
                data_type,
                dims: dims.to_vec(),
                expected,
                actual: bytes.len() as u64,
            });
        }
        Ok(Self {
            data_type,
            dims: dims.to_vec(),
            bytes,
        })
    }

    /// A FLOAT tensor.
    pub fn from_f32(dims: &[i64], data: &[f32]) -> Result<Self> {
        let bytes = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        Self::from_bytes(DataType::Float, dims, bytes)
    }

    /// An INT64 tensor.
    pub fn from_i64(dims: &[i64], data: &[i64]) -> Result<Self> {
        let bytes = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        Self::from_bytes(DataType::Int64, dims, bytes)
    }

    /// The raw little-endian bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    pub(crate) fn to_proto(&self, name: &str) -> TensorProto {
        TensorProto {
            dims: self.dims.clone(),
            data_type: self.data_type as i32,
            name: name.to_owned(),
            raw_data: self.bytes.clone(),
            ..Default::default()
        }
    }
}

impl TensorSource for OwnedTensor {
    fn data_type(&self) -> DataType {
        self.data_type
    }
    fn dims(&self) -> Vec<i64> {
        self.dims.clone()
    }
    fn byte_len(&self) -> u64 {
        self.bytes.len() as u64
    }
    fn write_to(&self, w: &mut dyn std::io::Write) -> std::io::Result<()> {
        w.write_all(&self.bytes)
    }
}

/// A typed node attribute.
#[derive(Clone, Debug, PartialEq)]
pub struct Attr {
    name: String,
    value: AttrValue,
}

/// The value of an [`Attr`].
#[derive(Clone, Debug, PartialEq)]
pub enum AttrValue {
    Int(i64),
    Ints(Vec<i64>),
    Float(f32),
    Floats(Vec<f32>),
    String(String),
    Strings(Vec<String>),
    Tensor(OwnedTensor),
}

impl Attr {
    /// An attribute from its parts.
    pub fn new(name: impl Into<String>, value: AttrValue) -> Self {
        Self {
            name: name.into(),
            value,
        }
    }
    /// `INT` attribute.
    pub fn int(name: &str, v: i64) -> Self {
        Self::new(name, AttrValue::Int(v))
    }
    /// `INTS` attribute.
    pub fn ints(name: &str, v: impl Into<Vec<i64>>) -> Self {
        Self::new(name, AttrValue::Ints(v.into()))
    }
    /// `FLOAT` attribute.
    pub fn float(name: &str, v: f32) -> Self {
        Self::new(name, AttrValue::Float(v))
    }
    /// `FLOATS` attribute.
    pub fn floats(name: &str, v: impl Into<Vec<f32>>) -> Self {
        Self::new(name, AttrValue::Floats(v.into()))
    }
    /// `STRING` attribute.
    pub fn string(name: &str, v: impl Into<String>) -> Self {
        Self::new(name, AttrValue::String(v.into()))
    }
    /// `STRINGS` attribute.
    pub fn strings(name: &str, v: impl IntoIterator<Item = impl Into<String>>) -> Self {
        Self::new(
            name,
            AttrValue::Strings(v.into_iter().map(Into::into).collect()),
        )
    }
    /// `TENSOR` attribute (e.g. `Constant.value`, `ConstantOfShape.value`).
    pub fn tensor(name: &str, t: OwnedTensor) -> Self {
        Self::new(name, AttrValue::Tensor(t))
    }

    /// The attribute's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn to_proto(&self) -> AttributeProto {
        let mut a = AttributeProto {
            name: self.name.clone(),
            ..Default::default()
        };
        let ty = match &self.value {
            AttrValue::Int(v) => {
                a.i = Some(*v);
                AttributeType::Int
            }
            AttrValue::Ints(v) => {
                a.ints = v.clone();
                AttributeType::Ints
            }
            AttrValue::Float(v) => {
                a.f = Some(*v);
                AttributeType::Float
            }
            AttrValue::Floats(v) => {
                a.floats = v.clone();
                AttributeType::Floats
            }
            AttrValue::String(v) => {
                a.s = Some(v.as_bytes().to_vec());
                AttributeType::String
            }
            AttrValue::Strings(v) => {
                a.strings = v.iter().map(|s| s.as_bytes().to_vec()).collect();
                AttributeType::Strings
            }
            AttrValue::Tensor(t) => {
                a.t = Some(t.to_proto(""));
                AttributeType::Tensor
            }
        };
        a.r#type = ty as i32;
        a
    }
}

/// An initializer as the builder keeps it until writing.
pub enum Initializer {
    /// Stored in the model (`raw_data`).
    Inline { name: String, tensor: OwnedTensor },
    /// Streamed to the external data file by the writer.
    External {
        name: String,
        source: Box<dyn TensorSource>,
    },
}

/// A finished graph split into the model proto (initializers not yet filled in) and its
/// initializers in insertion order.
pub(crate) struct Parts {
    pub model: ModelProto,
    pub initializers: Vec<Initializer>,
}

/// Builds one ONNX model: graph inputs, nodes, initializers, outputs and model metadata.
pub struct GraphBuilder {
    name: String,
    doc_string: String,
    opset: i64,
    producer_name: String,
    producer_version: String,
    metadata: Vec<(String, String)>,
    inputs: Vec<ValueInfoProto>,
    outputs: Vec<ValueInfoProto>,
    output_names: HashSet<String>,
    nodes: Vec<NodeProto>,
    initializers: Vec<Initializer>,
    node_names: HashSet<String>,
    /// Defined values and what defined them (for error messages).
    values: HashMap<String, String>,
    name_counters: HashMap<String, u64>,
}

impl fmt::Debug for GraphBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GraphBuilder")
            .field("name", &self.name)
            .field("opset", &self.opset)
            .field("inputs", &self.inputs.len())
            .field("outputs", &self.outputs.len())
            .field("nodes", &self.nodes.len())
            .field("initializers", &self.initializers.len())
            .finish_non_exhaustive()
    }
}

fn value_info(name: &str, data_type: DataType, dims: &[Dim]) -> Result<ValueInfoProto> {
    use tensor_shape_proto::dimension::Value as D;
    let dim = dims
        .iter()
        .map(|d| {
            let v = match d {
                Dim::Fixed(v) if *v < 0 => {
                    return Err(OnnxError::InvalidShape {
                        name: name.to_owned(),
                        reason: format!("negative dimension {v}"),
                    });
                }
                Dim::Fixed(v) => D::DimValue(*v),
                Dim::Symbol(s) if s.is_empty() => {
                    return Err(OnnxError::InvalidShape {
                        name: name.to_owned(),
                        reason: "empty dimension symbol".into(),
                    });
                }
                Dim::Symbol(s) => D::DimParam(s.clone()),
            };
            Ok(tensor_shape_proto::Dimension {
                value: Some(v),
                denotation: String::new(),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(ValueInfoProto {
        name: name.to_owned(),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: data_type as i32,
                shape: Some(TensorShapeProto { dim }),
            })),
            denotation: String::new(),
        }),
        doc_string: String::new(),
    })
}

/// Name of output `i` of a node named `node` with `n` outputs.
fn output_name(node: &str, i: usize, n: usize) -> String {
    if n == 1 {
        node.to_owned()
    } else {
        format!("{node}:{i}")
    }
}

impl GraphBuilder {
    /// An empty graph named `name` (default opset [`DEFAULT_OPSET`], producer
    /// `hyvideo-exporters` at this crate's version).
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            doc_string: String::new(),
            opset: DEFAULT_OPSET,
            producer_name: "hyvideo-exporters".into(),
            producer_version: env!("CARGO_PKG_VERSION").into(),
            metadata: Vec::new(),
            inputs: Vec::new(),
            outputs: Vec::new(),
            output_names: HashSet::new(),
            nodes: Vec::new(),
            initializers: Vec::new(),
            node_names: HashSet::new(),
            values: HashMap::new(),
            name_counters: HashMap::new(),
        }
    }

    /// Use default-domain opset `version` (at least [`MIN_OPSET`]; checked when finishing).
    #[must_use]
    pub fn with_opset(mut self, version: i64) -> Self {
        self.opset = version;
        self
    }

    /// Set the producer name and version recorded in the model.
    #[must_use]
    pub fn with_producer(mut self, name: impl Into<String>, version: impl Into<String>) -> Self {
        self.producer_name = name.into();
        self.producer_version = version.into();
        self
    }

    /// Set the graph's doc string.
    #[must_use]
    pub fn with_doc_string(mut self, doc: impl Into<String>) -> Self {
        self.doc_string = doc.into();
        self
    }

    /// Add a model `metadata_props` entry (replacing an earlier one with the same key).
    #[must_use]
    pub fn with_metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.set_metadata(key, value);
        self
    }

    /// Add a model `metadata_props` entry (replacing an earlier one with the same key).
    pub fn set_metadata(&mut self, key: impl Into<String>, value: impl Into<String>) {
        let (key, value) = (key.into(), value.into());
        match self.metadata.iter_mut().find(|(k, _)| *k == key) {
            Some(entry) => entry.1 = value,
            None => self.metadata.push((key, value)),
        }
    }

    /// The graph's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Number of nodes so far.
    pub fn num_nodes(&self) -> usize {
        self.nodes.len()
    }

    /// The distinct op types used so far (to check a graph against an operator allow-list).
    pub fn op_types(&self) -> BTreeSet<&str> {
        self.nodes.iter().map(|n| n.op_type.as_str()).collect()
    }

    /// A name starting with `prefix` that no node or value uses yet: `prefix` itself the first
    /// time, then `prefix_1`, `prefix_2`, ... Successive calls never return the same name.
    pub fn unique_name(&mut self, prefix: &str) -> String {
        self.fresh_name(prefix, 1)
    }

    /// A fresh node name whose `n_outputs` output names are free too.
    fn fresh_name(&mut self, prefix: &str, n_outputs: usize) -> String {
        let counter = self.name_counters.entry(prefix.to_owned()).or_insert(0);
        loop {
            let candidate = if *counter == 0 {
                prefix.to_owned()
            } else {
                format!("{prefix}_{counter}")
            };
            *counter += 1;
            let free = !self.node_names.contains(&candidate)
                && (0..n_outputs.max(1)).all(|i| {
                    !self
                        .values
                        .contains_key(&output_name(&candidate, i, n_outputs))
                });
            if free {
                return candidate;
            }
        }
    }

    fn resolve(&mut self, name: Name, what: &'static str, n_outputs: usize) -> Result<String> {
        let name = match name {
            Name::Exact(s) => s,
            Name::Auto(prefix) => self.fresh_name(&prefix, n_outputs),
        };
        if name.is_empty() {
            return Err(OnnxError::EmptyName { what });
        }
        Ok(name)
    }

    fn check_new_value(&self, name: &str) -> Result<()> {
        if name.is_empty() {
            return Err(OnnxError::EmptyName { what: "value" });
        }
        match self.values.get(name) {
            Some(existing) => Err(OnnxError::DuplicateValue {
                name: name.to_owned(),
                existing: existing.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Declare a graph input of type `data_type` and shape `dims`.
    pub fn input(&mut self, name: &str, data_type: DataType, dims: &[Dim]) -> Result<Value> {
        self.check_new_value(name)?;
        let info = value_info(name, data_type, dims)?;
        self.inputs.push(info);
        self.values.insert(name.to_owned(), "a graph input".into());
        Ok(Value(name.to_owned()))
    }

    /// Add a node `op_type` (default domain) reading `inputs` ([`Value::none`] for omitted
    /// optional inputs) and producing `n_outputs` values. A single output is named like the
    /// node; several are named `<node>:0`, `<node>:1`, ...
    pub fn node(
        &mut self,
        op_type: &str,
        name: impl Into<Name>,
        inputs: &[&Value],
        n_outputs: usize,
        attrs: &[Attr],
    ) -> Result<Vec<Value>> {
        let name = self.resolve(name.into(), "node", n_outputs)?;
        if self.node_names.contains(&name) {
            return Err(OnnxError::DuplicateNode { name });
        }
        if op_type.is_empty() {
            return Err(OnnxError::InvalidNode {
                node: name,
                reason: "empty op type".into(),
            });
        }
        if n_outputs == 0 {
            return Err(OnnxError::InvalidNode {
                node: name,
                reason: format!("{op_type} node without outputs"),
            });
        }
        for v in inputs {
            if !v.is_none() && !self.values.contains_key(v.name()) {
                return Err(OnnxError::UnknownValue {
                    node: name,
                    value: v.name().to_owned(),
                });
            }
        }
        let mut seen = HashSet::new();
        for a in attrs {
            if !seen.insert(a.name()) {
                return Err(OnnxError::DuplicateAttribute {
                    node: name,
                    attr: a.name().to_owned(),
                });
            }
        }
        let outputs: Vec<String> = (0..n_outputs)
            .map(|i| output_name(&name, i, n_outputs))
            .collect();
        for (i, o) in outputs.iter().enumerate() {
            self.check_new_value(o)?;
            if outputs[..i].contains(o) {
                return Err(OnnxError::DuplicateValue {
                    name: o.clone(),
                    existing: format!("another output of node `{name}`"),
                });
            }
        }
        for (i, o) in outputs.iter().enumerate() {
            self.values
                .insert(o.clone(), format!("output {i} of node `{name}`"));
        }
        self.nodes.push(NodeProto {
            input: inputs.iter().map(|v| v.name().to_owned()).collect(),
            output: outputs.clone(),
            name: name.clone(),
            op_type: op_type.to_owned(),
            attribute: attrs.iter().map(Attr::to_proto).collect(),
            ..Default::default()
        });
        self.node_names.insert(name);
        Ok(outputs.into_iter().map(Value).collect())
    }

    /// [`GraphBuilder::node`] with one output.
    pub fn node1(
        &mut self,
        op_type: &str,
        name: impl Into<Name>,
        inputs: &[&Value],
        attrs: &[Attr],
    ) -> Result<Value> {
        let mut out = self.node(op_type, name, inputs, 1, attrs)?;
        Ok(out.remove(0))
    }

    /// A large initializer, streamed from `source` into the external data file when written.
    pub fn weight(
        &mut self,
        name: impl Into<Name>,
        source: Box<dyn TensorSource>,
    ) -> Result<Value> {
        let name = self.resolve(name.into(), "initializer", 1)?;
        self.check_new_value(&name)?;
        let (data_type, dims) = (source.data_type(), source.dims());
        let expected = expected_bytes(&name, data_type, &dims)?;
        if expected != source.byte_len() {
            return Err(OnnxError::SizeMismatch {
                tensor: name,
                data_type,
                dims,
                expected,
                actual: source.byte_len(),
            });
        }
        self.values
            .insert(name.clone(), "an external initializer".into());
        self.initializers.push(Initializer::External {
            name: name.clone(),
            source,
        });
        Ok(Value(name))
    }

    /// A small initializer stored inside the model.
    pub fn const_tensor(&mut self, name: impl Into<Name>, tensor: &OwnedTensor) -> Result<Value> {
        let name = self.resolve(name.into(), "initializer", 1)?;
        self.check_new_value(&name)?;
        self.values
            .insert(name.clone(), "an inline initializer".into());
        self.initializers.push(Initializer::Inline {
            name: name.clone(),
            tensor: tensor.clone(),
        });
        Ok(Value(name))
    }

    /// A small INT64 initializer (shapes, axes, indices) stored inside the model.
    pub fn const_i64(
        &mut self,
        name: impl Into<Name>,
        data: &[i64],
        dims: &[i64],
    ) -> Result<Value> {
        let name = name.into();
        let t = OwnedTensor::from_i64(dims, data).map_err(|e| rename_tensor(e, &name))?;
        self.const_tensor(name, &t)
    }

    /// A small FLOAT initializer stored inside the model.
    pub fn const_f32(
        &mut self,
        name: impl Into<Name>,
        data: &[f32],
        dims: &[i64],
    ) -> Result<Value> {
        let name = name.into();
        let t = OwnedTensor::from_f32(dims, data).map_err(|e| rename_tensor(e, &name))?;
        self.const_tensor(name, &t)
    }

    /// Make `value` a graph output under its own name, with type `data_type` and shape `dims`.
    pub fn output(&mut self, value: &Value, data_type: DataType, dims: &[Dim]) -> Result<()> {
        if value.is_none() {
            return Err(OnnxError::EmptyName { what: "output" });
        }
        if !self.values.contains_key(value.name()) {
            return Err(OnnxError::UnknownValue {
                node: "<graph output>".into(),
                value: value.name().to_owned(),
            });
        }
        if self.output_names.contains(value.name()) {
            return Err(OnnxError::DuplicateOutput {
                name: value.name().to_owned(),
            });
        }
        let info = value_info(value.name(), data_type, dims)?;
        self.outputs.push(info);
        self.output_names.insert(value.name().to_owned());
        Ok(())
    }

    /// Make `value` a graph output named `name`; adds an `Identity` node named `name` when the
    /// value's own name differs. Returns the output value.
    pub fn output_as(
        &mut self,
        value: &Value,
        name: &str,
        data_type: DataType,
        dims: &[Dim],
    ) -> Result<Value> {
        let out = if value.name() == name {
            value.clone()
        } else {
            self.node1("Identity", name, &[value], &[])?
        };
        self.output(&out, data_type, dims)?;
        Ok(out)
    }

    /// Set the doc string of the node that produced `value` (a record later passes read, such
    /// as an attention site's description). Unknown values are an error.
    /// The graph inputs declared so far.
    pub fn inputs(&self) -> &[ValueInfoProto] {
        &self.inputs
    }

    /// The graph outputs declared so far.
    pub fn outputs(&self) -> &[ValueInfoProto] {
        &self.outputs
    }

    pub fn annotate(&mut self, value: &Value, doc: impl Into<String>) -> Result<()> {
        let node = self
            .nodes
            .iter_mut()
            .find(|n| n.output.iter().any(|o| o == value.name()))
            .ok_or_else(|| OnnxError::UnknownValue {
                node: "<annotation>".into(),
                value: value.name().to_owned(),
            })?;
        node.doc_string = doc.into();
        Ok(())
    }

    /// Inputs, outputs, nodes and initializers, for whole-graph rewrites (the precision pass).
    pub fn precision_parts(
        &mut self,
    ) -> (
        &mut Vec<ValueInfoProto>,
        &mut Vec<ValueInfoProto>,
        &mut Vec<NodeProto>,
        &mut Vec<Initializer>,
    ) {
        (
            &mut self.inputs,
            &mut self.outputs,
            &mut self.nodes,
            &mut self.initializers,
        )
    }

    /// Check the graph and split it into its model proto and initializers.
    pub(crate) fn into_parts(self) -> Result<Parts> {
        if self.opset < MIN_OPSET {
            return Err(OnnxError::Opset {
                version: self.opset,
                min: MIN_OPSET,
            });
        }
        if self.outputs.is_empty() {
            return Err(OnnxError::NoOutputs { graph: self.name });
        }
        let graph = GraphProto {
            node: self.nodes,
            name: self.name,
            doc_string: self.doc_string,
            input: self.inputs,
            output: self.outputs,
            ..Default::default()
        };
        let model = ModelProto {
            ir_version: IR_VERSION,
            opset_import: vec![OperatorSetIdProto {
                domain: String::new(),
                version: self.opset,
            }],
            producer_name: self.producer_name,
            producer_version: self.producer_version,
            graph: Some(graph),
            metadata_props: self
                .metadata
                .into_iter()
                .map(|(key, value)| StringStringEntryProto { key, value })
                .collect(),
            ..Default::default()
        };
        Ok(Parts {
            model,
            initializers: self.initializers,
        })
    }
}

/// Put the constant's name into an error raised while building its tensor.
fn rename_tensor(e: OnnxError, name: &Name) -> OnnxError {
    let n = match name {
        Name::Exact(s) | Name::Auto(s) => s.clone(),
    };
    match e {
        OnnxError::SizeMismatch {
            data_type,
            dims,
            expected,
            actual,
            ..
        } => OnnxError::SizeMismatch {
            tensor: n,
            data_type,
            dims,
            expected,
            actual,
        },
        OnnxError::InvalidShape { reason, .. } => OnnxError::InvalidShape { name: n, reason },
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f32_input(b: &mut GraphBuilder) -> Value {
        b.input("x", DataType::Float, &[Dim::from("N"), Dim::Fixed(4)])
            .unwrap()
    }

    #[test]
    fn duplicate_node_names_are_rejected() {
        let mut b = GraphBuilder::new("g");
        let x = f32_input(&mut b);
        b.node1("Relu", "act", &[&x], &[]).unwrap();
        let err = b.node1("Relu", "act", &[&x], &[]).unwrap_err();
        assert!(
            matches!(&err, OnnxError::DuplicateNode { name } if name == "act"),
            "{err}"
        );
        assert!(err.to_string().contains("`act`"));
    }

    #[test]
    fn duplicate_value_names_are_rejected() {
        let mut b = GraphBuilder::new("g");
        let x = f32_input(&mut b);
        let err = b.input("x", DataType::Float, &[Dim::Fixed(1)]).unwrap_err();
        assert!(
            matches!(&err, OnnxError::DuplicateValue { name, existing } if name == "x" && existing == "a graph input"),
            "{err}"
        );
        b.const_i64("shape", &[1, 4], &[2]).unwrap();
        let err = b.const_f32("shape", &[1.0], &[1]).unwrap_err();
        assert!(
            matches!(&err, OnnxError::DuplicateValue { name, .. } if name == "shape"),
            "{err}"
        );
        // A node whose output would be named like an existing value.
        let err = b.node1("Relu", "shape", &[&x], &[]).unwrap_err();
        assert!(
            matches!(&err, OnnxError::DuplicateValue { name, existing } if name == "shape" && existing.contains("inline")),
            "{err}"
        );
        // The failed node left nothing behind: its name is still free.
        assert_eq!(b.num_nodes(), 0);
        let w = OwnedTensor::from_f32(&[1], &[0.0]).unwrap();
        let err = b.weight("x", Box::new(w)).unwrap_err();
        assert!(
            matches!(&err, OnnxError::DuplicateValue { name, .. } if name == "x"),
            "{err}"
        );
    }

    #[test]
    fn undefined_inputs_and_bad_attrs_are_rejected() {
        let mut b = GraphBuilder::new("g");
        let x = f32_input(&mut b);
        let mut other = GraphBuilder::new("h");
        let y = other.input("y", DataType::Float, &[]).unwrap();
        let err = b.node1("Add", "add", &[&x, &y], &[]).unwrap_err();
        assert!(
            matches!(&err, OnnxError::UnknownValue { node, value } if node == "add" && value == "y"),
            "{err}"
        );
        let err = b
            .node1(
                "Softmax",
                "sm",
                &[&x],
                &[Attr::int("axis", 1), Attr::int("axis", 0)],
            )
            .unwrap_err();
        assert!(
            matches!(&err, OnnxError::DuplicateAttribute { attr, .. } if attr == "axis"),
            "{err}"
        );
        assert!(matches!(
            b.node("Split", "s", &[&x], 0, &[]),
            Err(OnnxError::InvalidNode { .. })
        ));
        assert!(matches!(
            b.node1("Relu", "", &[&x], &[]),
            Err(OnnxError::EmptyName { .. })
        ));
    }

    #[test]
    fn optional_inputs_multiple_outputs_and_auto_names() {
        let mut b = GraphBuilder::new("g");
        let x = f32_input(&mut b);
        let scale = b.const_f32("scale", &[1.0; 4], &[4]).unwrap();
        let outs = b
            .node(
                "LayerNormalization",
                "ln",
                &[&x, &scale, &Value::none()],
                3,
                &[Attr::int("axis", -1), Attr::float("epsilon", 1e-6)],
            )
            .unwrap();
        let names: Vec<_> = outs.iter().map(Value::name).collect();
        assert_eq!(names, ["ln:0", "ln:1", "ln:2"]);

        let a = b.node1("Relu", auto("act"), &[&outs[0]], &[]).unwrap();
        let c = b.node1("Relu", auto("act"), &[&a], &[]).unwrap();
        // An explicit name taking the next candidate is skipped over by auto naming.
        b.node1("Relu", "act_2", &[&c], &[]).unwrap();
        let d = b.node1("Relu", auto("act"), &[&c], &[]).unwrap();
        assert_eq!([a.name(), c.name(), d.name()], ["act", "act_1", "act_3"]);
        assert_eq!(b.unique_name("act"), "act_4");
        assert_eq!(b.unique_name("fresh"), "fresh");
        assert_eq!(b.unique_name("fresh"), "fresh_1");
        let k = b.const_i64(auto("axes"), &[0], &[1]).unwrap();
        let k2 = b.const_i64(auto("axes"), &[1], &[1]).unwrap();
        assert_eq!([k.name(), k2.name()], ["axes", "axes_1"]);

        b.output_as(&d, "y", DataType::Float, &[Dim::from("N"), Dim::Fixed(4)])
            .unwrap();
        let err = b.output(&d, DataType::Float, &[]).err();
        assert!(err.is_none(), "d itself may also be an output");
        let err = b.output(&d, DataType::Float, &[]).unwrap_err();
        assert!(matches!(err, OnnxError::DuplicateOutput { .. }));

        let parts = b.into_parts().unwrap();
        let g = parts.model.graph.unwrap();
        let ln = g.node.iter().find(|n| n.name == "ln").unwrap();
        assert_eq!(ln.input, ["x", "scale", ""]);
        assert_eq!(ln.attribute[0].i, Some(-1));
        assert_eq!(ln.attribute[0].r#type(), AttributeType::Int);
        assert_eq!(ln.attribute[1].f, Some(1e-6));
        let id = g.node.last().unwrap();
        assert_eq!(
            (id.op_type.as_str(), id.output[0].as_str()),
            ("Identity", "y")
        );
        assert_eq!(g.output[0].name, "y");
        assert_eq!(parts.initializers.len(), 3);
    }

    #[test]
    fn sizes_and_shapes_are_checked() {
        let mut b = GraphBuilder::new("g");
        let err = b.const_f32("c", &[1.0, 2.0, 3.0], &[2, 2]).unwrap_err();
        assert!(
            matches!(&err, OnnxError::SizeMismatch { tensor, expected: 16, actual: 12, .. } if tensor == "c"),
            "{err}"
        );
        let err = b
            .input("x", DataType::Float, &[Dim::Fixed(-1)])
            .unwrap_err();
        assert!(matches!(err, OnnxError::InvalidShape { .. }));

        struct Lying;
        impl TensorSource for Lying {
            fn data_type(&self) -> DataType {
                DataType::Bfloat16
            }
            fn dims(&self) -> Vec<i64> {
                vec![3, 5]
            }
            fn byte_len(&self) -> u64 {
                15
            }
            fn write_to(&self, _: &mut dyn std::io::Write) -> std::io::Result<()> {
                Ok(())
            }
        }
        let err = b.weight("w", Box::new(Lying)).unwrap_err();
        assert!(
            matches!(&err, OnnxError::SizeMismatch { tensor, expected: 30, actual: 15, .. } if tensor == "w"),
            "{err}"
        );
    }

    #[test]
    fn finishing_checks_opset_and_outputs() {
        let mut b = GraphBuilder::new("g").with_opset(17);
        let x = f32_input(&mut b);
        b.output(&x, DataType::Float, &[]).unwrap();
        assert!(matches!(
            b.into_parts(),
            Err(OnnxError::Opset { version: 17, .. })
        ));
        let b = GraphBuilder::new("empty");
        assert!(matches!(b.into_parts(), Err(OnnxError::NoOutputs { graph }) if graph == "empty"));

        let mut b = GraphBuilder::new("g")
            .with_opset(19)
            .with_producer("p", "1.2")
            .with_metadata("k", "v1")
            .with_metadata("k2", "x");
        b.set_metadata("k", "v2");
        let x = f32_input(&mut b);
        b.output(&x, DataType::Float, &[]).unwrap();
        let m = b.into_parts().unwrap().model;
        assert_eq!(m.ir_version, IR_VERSION);
        assert_eq!(m.opset_import[0].version, 19);
        assert_eq!(m.opset_import[0].domain, "");
        assert_eq!(
            (m.producer_name.as_str(), m.producer_version.as_str()),
            ("p", "1.2")
        );
        let md: Vec<_> = m
            .metadata_props
            .iter()
            .map(|e| (e.key.as_str(), e.value.as_str()))
            .collect();
        assert_eq!(md, [("k", "v2"), ("k2", "x")]);
    }
}
