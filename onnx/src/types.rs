//! Element types of a graph's values: read from value infos and initializers, inferred for
//! node outputs from their op and input types (enough for the ops our graphs use), and the
//! graph's I/O as the bundle contract records it.

use std::collections::HashMap;

use hyvideo_bundle::{TensorSpec, TensorType};

use crate::proto::{
    DataType, ModelProto, NodeProto, ValueInfoProto, tensor_shape_proto, type_proto,
};

const FLOAT: i32 = DataType::Float as i32;

/// An integer attribute of `node`.
pub fn attr_int(node: &NodeProto, name: &str) -> Option<i64> {
    node.attribute.iter().find(|a| a.name == name)?.i
}

/// The element type of a tensor value info.
pub fn elem_type(v: &ValueInfoProto) -> Option<i32> {
    match v.r#type.as_ref()?.value.as_ref()? {
        type_proto::Value::TensorType(t) => Some(t.elem_type),
    }
}

/// Set the element type of a tensor value info.
pub fn set_elem_type(v: &mut ValueInfoProto, dt: DataType) {
    if let Some(type_proto::Value::TensorType(t)) = v.r#type.as_mut().and_then(|t| t.value.as_mut())
    {
        t.elem_type = dt as i32;
    }
}

/// Element type of a node's outputs, from its op and input types.
pub fn output_type(node: &NodeProto, types: &HashMap<String, i32>) -> i32 {
    let input = |i: usize| {
        node.input
            .get(i)
            .filter(|n| !n.is_empty())
            .and_then(|n| types.get(n))
            .copied()
    };
    match node.op_type.as_str() {
        "Shape" | "ArgMax" => DataType::Int64 as i32,
        "Cast" => attr_int(node, "to").unwrap_or(FLOAT as i64) as i32,
        "Equal" | "Less" | "LessOrEqual" | "Greater" | "GreaterOrEqual" | "Not" | "And" | "Or" => {
            DataType::Bool as i32
        }
        "Where" => input(1).unwrap_or(FLOAT),
        "DequantizeLinear" => input(1).unwrap_or(FLOAT),
        "QuantizeLinear" => input(2).unwrap_or(DataType::Float8e4m3fn as i32),
        _ => input(0).unwrap_or(FLOAT),
    }
}

/// Element types of every value of `model`'s graph (inputs, initializers, node outputs).
pub fn value_types(model: &ModelProto) -> HashMap<String, i32> {
    let mut types = HashMap::new();
    let Some(g) = model.graph.as_ref() else {
        return types;
    };
    for v in &g.input {
        types.insert(v.name.clone(), elem_type(v).unwrap_or(FLOAT));
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

/// A value info as the manifest records it; `None` for an element type the contract has no
/// name for.
pub fn tensor_spec(v: &ValueInfoProto) -> Option<TensorSpec> {
    let dtype = match DataType::try_from(elem_type(v)?).ok()? {
        DataType::Float => TensorType::Float32,
        DataType::Float16 => TensorType::Float16,
        DataType::Bfloat16 => TensorType::Bfloat16,
        DataType::Int64 => TensorType::Int64,
        _ => return None,
    };
    let type_proto::Value::TensorType(t) = v.r#type.as_ref()?.value.as_ref()?;
    let dims = t
        .shape
        .as_ref()?
        .dim
        .iter()
        .map(|d| match &d.value {
            Some(tensor_shape_proto::dimension::Value::DimValue(n)) => n.to_string(),
            Some(tensor_shape_proto::dimension::Value::DimParam(p)) => p.clone(),
            None => "?".to_owned(),
        })
        .collect();
    Some(TensorSpec {
        name: v.name.clone(),
        dtype,
        dims,
    })
}
