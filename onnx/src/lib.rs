//! hyvideo-onnx: ONNX protobuf types, a graph builder, an external-data writer, and the graph
//! passes shared by the exporter and the runtime.
//!
//! - [`proto`]: the ONNX IR messages we emit, as `prost` derives mirroring `onnx.proto3`.
//! - [`GraphBuilder`]: tract-style `wire_node` builder with typed attributes and checked names.
//! - [`write_model`]: `<stem>.onnx` + `<stem>.onnx.data` (4 KiB-aligned external weights,
//!   streamed from [`TensorSource`]s, written atomically).
//! - [`types`]: element types of a graph's values, and its I/O as the bundle contract records it.
//! - [`extract`]: a sub-graph cut between given tensors, sharing the weight file (the
//!   transformer's stage graphs).
//! - [`fuse`]: the attention rewrite to ONNX Runtime's `MultiHeadAttention` applied at load.
//!
//! ```no_run
//! use hyvideo_onnx::{auto, Attr, DataType, Dim, GraphBuilder, OwnedTensor, write_model};
//! # fn main() -> Result<(), hyvideo_onnx::OnnxError> {
//! let mut b = GraphBuilder::new("tiny").with_metadata("component", "demo");
//! let x = b.input("x", DataType::Float, &[Dim::from("N"), Dim::Fixed(4)])?;
//! let w = b.weight("proj.weight", Box::new(OwnedTensor::from_f32(&[4, 3], &[0.5; 12])?))?;
//! let h = b.node1("MatMul", auto("proj/MatMul"), &[&x, &w], &[])?;
//! let y = b.node1("Softmax", "y", &[&h], &[Attr::int("axis", -1)])?;
//! b.output(&y, DataType::Float, &[Dim::from("N"), Dim::Fixed(3)])?;
//! let written = write_model(b, std::path::Path::new("out"), "tiny")?;
//! println!("{} ({})", written.onnx_path.display(), written.onnx_sha256);
//! # Ok(()) }
//! ```

mod builder;
mod error;
pub mod extract;
pub mod fuse;
pub mod proto;
pub mod types;
mod writer;

pub use builder::{
    Attr, AttrValue, DEFAULT_OPSET, Dim, GraphBuilder, IR_VERSION, Initializer, MIN_OPSET, Name,
    OwnedTensor, TensorSource, Value, auto,
};
pub use error::{OnnxError, Result};
pub use proto::{DataType, ModelProto};
pub use writer::{EXTERNAL_DATA_ALIGNMENT, WrittenModel, write_model};
