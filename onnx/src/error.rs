//! Errors of the ONNX graph builder and writer: every variant names the node, value, tensor or
//! file it is about, so an export failure deep inside a 13B-parameter graph says where.

use std::path::PathBuf;

use super::proto::DataType;

/// Result alias of the `onnx` module.
pub type Result<T, E = OnnxError> = std::result::Result<T, E>;

/// What went wrong while building or writing an ONNX model.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OnnxError {
    /// A name that must not be empty was empty.
    #[error("empty {what} name")]
    EmptyName { what: &'static str },

    /// Two nodes with the same name.
    #[error("duplicate node name `{name}`")]
    DuplicateNode { name: String },

    /// A value (graph input, initializer or node output) defined twice.
    #[error("duplicate value name `{name}`: already defined as {existing}")]
    DuplicateValue { name: String, existing: String },

    /// A node input that no graph input, initializer or earlier node output defines.
    #[error("node `{node}` reads value `{value}`, which is not defined in this graph")]
    UnknownValue { node: String, value: String },

    /// The same attribute given twice to one node.
    #[error("node `{node}` has attribute `{attr}` twice")]
    DuplicateAttribute { node: String, attr: String },

    /// A node that cannot be valid (no op type, no outputs ...).
    #[error("node `{node}`: {reason}")]
    InvalidNode { node: String, reason: String },

    /// A value registered as graph output twice.
    #[error("value `{name}` is already a graph output")]
    DuplicateOutput { name: String },

    /// A shape that cannot describe a tensor (negative dimension, empty symbol ...).
    #[error("invalid shape for `{name}`: {reason}")]
    InvalidShape { name: String, reason: String },

    /// A tensor whose declared size does not match its dims and data type.
    #[error(
        "tensor `{tensor}`: {data_type} with dims {dims:?} needs {expected} bytes, but {actual} were given"
    )]
    SizeMismatch {
        tensor: String,
        data_type: DataType,
        dims: Vec<i64>,
        expected: u64,
        actual: u64,
    },

    /// A tensor of a data type that has no fixed byte width (STRING, UNDEFINED).
    #[error("tensor `{tensor}`: data type {data_type} cannot be stored as raw bytes")]
    UnsupportedDataType { tensor: String, data_type: DataType },

    /// A tensor source wrote fewer bytes than its `byte_len`.
    #[error("tensor `{tensor}`: source wrote {written} bytes, but its byte_len is {declared}")]
    TooFewBytes {
        tensor: String,
        declared: u64,
        written: u64,
    },

    /// A tensor source tried to write more bytes than its `byte_len`.
    #[error("tensor `{tensor}`: source wrote more than its byte_len of {declared} bytes")]
    TooManyBytes { tensor: String, declared: u64 },

    /// Reading a tensor from its source or writing it to a file failed.
    #[error("tensor `{tensor}`: writing to {} failed: {source}", path.display())]
    TensorWrite {
        tensor: String,
        path: PathBuf,
        source: std::io::Error,
    },

    /// The graph has no outputs.
    #[error("graph `{graph}` has no outputs")]
    NoOutputs { graph: String },

    /// An opset version this exporter does not write.
    #[error("default-domain opset {version} is not supported (need {min} or newer)")]
    Opset { version: i64, min: i64 },

    /// The protobuf would exceed the 2 GiB limit of the format.
    #[error("model `{graph}` would be {bytes} bytes, above protobuf's 2 GiB limit")]
    ModelTooLarge { graph: String, bytes: u64 },

    /// A file stem that is not a plain file name.
    #[error("invalid model file stem `{stem}`: must be a plain file name")]
    InvalidStem { stem: String },

    /// A graph pass (e.g. the attention rewrite) could not apply to a graph.
    #[error("{pass}: {reason}")]
    Pass { pass: &'static str, reason: String },

    /// A file system operation failed.
    #[error("{action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

impl OnnxError {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io {
            action,
            path,
            source,
        }
    }
}
