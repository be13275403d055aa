//! Cutting a sub-graph out of a model: given the tensors that become the new graph's inputs and
//! outputs, keep exactly the nodes on paths between them (in their original, topological
//! order) and the initializers those nodes read — external ones keep their `location`, so the
//! sub-graph shares the model's weight file (`onnx.utils.extract_model` does the same in Python).
//!
//! Tensors are renamed to the sub-graph's I/O names. A path that reaches one of the model's own
//! inputs that is not a declared input of the sub-graph is an error naming it: the cut is
//! incomplete.

use std::collections::{HashMap, HashSet};

use crate::proto::{
    ModelProto, TensorShapeProto, TypeProto, ValueInfoProto, tensor_shape_proto, type_proto,
};

/// One input or output of the sub-graph: which tensor of the model it is, what it is called in
/// the sub-graph, and its element type (ONNX `DataType` number) and dims (a symbol name or a
/// fixed size each).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Boundary {
    pub tensor: String,
    pub name: String,
    pub elem_type: i32,
    pub dims: Vec<BoundaryDim>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BoundaryDim {
    Sym(String),
    Fixed(i64),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExtractError {
    #[error("the model has no graph")]
    NoGraph,
    #[error("no node, input or initializer of the model makes tensor `{0}`")]
    Unknown(String),
    #[error("`{output}` depends on the model input `{input}`, which is not an input of the cut")]
    Incomplete { output: String, input: String },
}

fn value_info(b: &Boundary) -> ValueInfoProto {
    let dim = b
        .dims
        .iter()
        .map(|d| tensor_shape_proto::Dimension {
            value: Some(match d {
                BoundaryDim::Sym(s) => tensor_shape_proto::dimension::Value::DimParam(s.clone()),
                BoundaryDim::Fixed(n) => tensor_shape_proto::dimension::Value::DimValue(*n),
            }),
            ..Default::default()
        })
        .collect();
    ValueInfoProto {
        name: b.name.clone(),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: b.elem_type,
                shape: Some(TensorShapeProto { dim }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The sub-graph of `model` from `inputs` to `outputs`.
pub fn extract(
    model: &ModelProto,
    inputs: &[Boundary],
    outputs: &[Boundary],
) -> Result<ModelProto, ExtractError> {
    let g = model.graph.as_ref().ok_or(ExtractError::NoGraph)?;
    let producer: HashMap<&str, usize> = g
        .node
        .iter()
        .enumerate()
        .flat_map(|(i, n)| n.output.iter().map(move |o| (o.as_str(), i)))
        .collect();
    let initializers: HashSet<&str> = g.initializer.iter().map(|t| t.name.as_str()).collect();
    let model_inputs: HashSet<&str> = g.input.iter().map(|v| v.name.as_str()).collect();
    let cut_inputs: HashSet<&str> = inputs.iter().map(|b| b.tensor.as_str()).collect();

    for b in inputs {
        let known = producer.contains_key(b.tensor.as_str())
            || model_inputs.contains(b.tensor.as_str())
            || initializers.contains(b.tensor.as_str());
        if !known {
            return Err(ExtractError::Unknown(b.tensor.clone()));
        }
    }
    let mut keep_nodes = vec![false; g.node.len()];
    let mut keep_inits: HashSet<&str> = HashSet::new();
    for out in outputs {
        let mut stack = vec![out.tensor.as_str()];
        let mut seen: HashSet<&str> = HashSet::new();
        while let Some(t) = stack.pop() {
            if t.is_empty() || !seen.insert(t) || cut_inputs.contains(t) {
                continue;
            }
            if initializers.contains(t) {
                keep_inits.insert(t);
            } else if let Some(&i) = producer.get(t) {
                keep_nodes[i] = true;
                stack.extend(g.node[i].input.iter().map(String::as_str));
            } else if model_inputs.contains(t) {
                return Err(ExtractError::Incomplete {
                    output: out.name.clone(),
                    input: t.to_owned(),
                });
            } else {
                return Err(ExtractError::Unknown(t.to_owned()));
            }
        }
    }

    let rename: HashMap<&str, &str> = inputs
        .iter()
        .chain(outputs)
        .map(|b| (b.tensor.as_str(), b.name.as_str()))
        .collect();
    let renamed = |t: &String| {
        rename
            .get(t.as_str())
            .map_or(t.clone(), |n| (*n).to_owned())
    };
    let mut graph = g.clone();
    graph.node = g
        .node
        .iter()
        .zip(&keep_nodes)
        .filter(|(_, k)| **k)
        .map(|(n, _)| {
            let mut n = n.clone();
            n.input = n.input.iter().map(renamed).collect();
            n.output = n.output.iter().map(renamed).collect();
            n
        })
        .collect();
    graph.initializer = g
        .initializer
        .iter()
        .filter(|t| keep_inits.contains(t.name.as_str()))
        .cloned()
        .collect();
    graph.input = inputs.iter().map(value_info).collect();
    graph.output = outputs.iter().map(value_info).collect();
    let produced: HashSet<String> = graph.node.iter().flat_map(|n| n.output.clone()).collect();
    graph.value_info = g
        .value_info
        .iter()
        .filter(|v| produced.contains(&v.name))
        .cloned()
        .collect();
    Ok(ModelProto {
        graph: Some(graph),
        ..model.clone()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{GraphProto, NodeProto, TensorProto};

    fn node(op: &str, name: &str, inputs: &[&str], outputs: &[&str]) -> NodeProto {
        NodeProto {
            op_type: op.into(),
            name: name.into(),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: outputs.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    fn boundary(tensor: &str, name: &str) -> Boundary {
        Boundary {
            tensor: tensor.into(),
            name: name.into(),
            elem_type: 1,
            dims: vec![BoundaryDim::Sym("batch".into()), BoundaryDim::Fixed(4)],
        }
    }

    /// x → a = Mul(x, w1) → cut = Identity(a) → b = Add(cut, w2) → y = Relu(b); plus a
    /// branch s = Shape(x) feeding r = Reshape(b, s).
    fn model() -> ModelProto {
        let init = |n: &str| TensorProto {
            name: n.into(),
            data_type: 1,
            ..Default::default()
        };
        ModelProto {
            graph: Some(GraphProto {
                input: vec![value_info(&boundary("x", "x"))],
                initializer: vec![init("w1"), init("w2"), init("unused")],
                node: vec![
                    node("Mul", "mul", &["x", "w1"], &["a"]),
                    node("Identity", "stage/cut", &["a"], &["stage/cut"]),
                    node("Add", "add", &["stage/cut", "w2"], &["b"]),
                    node("Relu", "relu", &["b"], &["y"]),
                    node("Shape", "shape", &["x"], &["s"]),
                    node("Reshape", "reshape", &["b", "s"], &["r"]),
                ],
                output: vec![value_info(&boundary("y", "y"))],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn keeps_the_nodes_and_weights_between_the_cuts_renamed() {
        let m = extract(
            &model(),
            &[boundary("stage/cut", "tokens")],
            &[boundary("y", "out")],
        )
        .unwrap();
        let g = m.graph.unwrap();
        let ops: Vec<&str> = g.node.iter().map(|n| n.op_type.as_str()).collect();
        assert_eq!(ops, ["Add", "Relu"]);
        assert_eq!(g.node[0].input, ["tokens", "w2"]);
        assert_eq!(g.node[1].output, ["out"]);
        let inits: Vec<&str> = g.initializer.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(inits, ["w2"]);
        assert_eq!(g.input[0].name, "tokens");
        assert_eq!(g.output[0].name, "out");
    }

    #[test]
    fn the_first_part_ends_at_the_cut() {
        let m = extract(
            &model(),
            &[boundary("x", "x")],
            &[boundary("stage/cut", "a")],
        )
        .unwrap();
        let g = m.graph.unwrap();
        let names: Vec<&str> = g.node.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["mul", "stage/cut"]);
        assert_eq!(g.node[1].output, ["a"]);
    }

    #[test]
    fn a_path_to_an_undeclared_model_input_is_refused() {
        let err = extract(
            &model(),
            &[boundary("stage/cut", "tokens")],
            &[boundary("r", "r")],
        )
        .unwrap_err();
        assert_eq!(
            err,
            ExtractError::Incomplete {
                output: "r".into(),
                input: "x".into()
            }
        );
        let err = extract(&model(), &[boundary("nope", "n")], &[boundary("y", "y")]).unwrap_err();
        assert_eq!(err, ExtractError::Unknown("nope".into()));
    }
}
