//! ONNX protobuf types, graph builder and external-data writer.
//!
//! - [`proto`]: the ONNX IR messages we emit, as `prost` derives mirroring `onnx.proto3`.
//! - [`GraphBuilder`]: tract-style `wire_node` builder with typed attributes and checked names.
//! - [`write_model`]: `<stem>.onnx` + `<stem>.onnx.data` (4 KiB-aligned external weights,
//!   streamed from [`TensorSource`]s, written atomically).
//!
//! ```no_run
//! use hyvideo_exporters::onnx::{auto, Attr, DataType, Dim, GraphBuilder, OwnedTensor, write_model};
//! # fn main() -> Result<(), hyvideo_exporters::onnx::OnnxError> {
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
pub mod proto;
mod writer;

pub(crate) use builder::Initializer;
pub use builder::{
    Attr, AttrValue, DEFAULT_OPSET, Dim, GraphBuilder, IR_VERSION, MIN_OPSET, Name, OwnedTensor,
    TensorSource, Value, auto,
};
pub use error::{OnnxError, Result};
pub use proto::{DataType, ModelProto};
pub use writer::{EXTERNAL_DATA_ALIGNMENT, WrittenModel, write_model};
