//! Errors of checkpoint and config reading.
//!
//! Every variant names the file it is about and, where there is one, the tensor or config key,
//! so a bad input gets a message a user can act on (candle's `Error::CannotFindTensor` /
//! `UnexpectedShape`, with the file added).

use std::io;
use std::path::{Path, PathBuf};

use super::dtype::DType;

/// Result alias for this module.
pub type Result<T, E = CheckpointError> = std::result::Result<T, E>;

/// What can go wrong reading a checkpoint or its `config.json`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CheckpointError {
    /// Opening, mapping or reading a file failed.
    #[error("{}: {source}", .file.display())]
    Io {
        file: PathBuf,
        #[source]
        source: io::Error,
    },

    /// The file is not a valid safetensors file / index (truncated, bad header, bad offsets).
    #[error("{}: corrupt checkpoint: {reason}", .file.display())]
    CorruptFile { file: PathBuf, reason: String },

    /// No checkpoint file could be chosen at a path.
    #[error("{}: no safetensors checkpoint: {reason}", .path.display())]
    NotFound { path: PathBuf, reason: String },

    /// The tensor is stored in a dtype we do not read.
    #[error(
        "{}: tensor `{tensor}` has dtype {dtype}; supported are F32, F16, BF16 and F8_E4M3",
        .file.display()
    )]
    UnsupportedDtype {
        file: PathBuf,
        tensor: String,
        dtype: String,
    },

    /// A tensor the model needs is not in the checkpoint (`file` is the index, directory
    /// checkpoint file or single file that was searched).
    #[error("{}: tensor `{name}` not found", .file.display())]
    MissingTensor { name: String, file: PathBuf },

    /// A tensor has another shape than the model config implies.
    #[error(
        "{}: tensor `{name}` has shape {found:?}, expected {expected:?}",
        .file.display()
    )]
    ShapeMismatch {
        name: String,
        file: PathBuf,
        expected: Vec<usize>,
        found: Vec<usize>,
    },

    /// A tensor has another dtype than an operation requires (e.g. dequantising a non-fp8
    /// tensor).
    #[error(
        "{}: tensor `{name}` has dtype {found}, expected {expected}",
        .file.display()
    )]
    DtypeMismatch {
        name: String,
        file: PathBuf,
        expected: DType,
        found: DType,
    },

    /// A dequantisation scale is not a finite number.
    #[error("{}: tensor `{name}`: scale {scale} is not finite", .file.display())]
    InvalidScale {
        name: String,
        file: PathBuf,
        scale: f32,
    },

    /// A config file is not valid JSON.
    #[error("{}: invalid JSON: {reason}", .file.display())]
    ConfigSyntax { file: PathBuf, reason: String },

    /// A required config key is absent.
    #[error("{}: missing required key `{key}`", .file.display())]
    MissingConfigKey { file: PathBuf, key: String },

    /// A config value has the wrong type or form (`key` is a dotted path, `<root>` when the
    /// key could not be located).
    #[error("{}: key `{key}`: {reason}", .file.display())]
    InvalidConfigValue {
        file: PathBuf,
        key: String,
        reason: String,
    },

    /// A config value is well-formed but describes a model we cannot export.
    #[error("{}: unsupported {key} = {value}: {reason}", .file.display())]
    UnsupportedConfig {
        file: PathBuf,
        key: String,
        value: String,
        reason: String,
    },
}

impl CheckpointError {
    pub(crate) fn io(file: &Path, source: io::Error) -> Self {
        CheckpointError::Io {
            file: file.to_path_buf(),
            source,
        }
    }

    pub(crate) fn corrupt(file: &Path, reason: impl Into<String>) -> Self {
        CheckpointError::CorruptFile {
            file: file.to_path_buf(),
            reason: reason.into(),
        }
    }

    /// The file this error is about.
    pub fn file(&self) -> &Path {
        match self {
            CheckpointError::Io { file, .. }
            | CheckpointError::CorruptFile { file, .. }
            | CheckpointError::UnsupportedDtype { file, .. }
            | CheckpointError::MissingTensor { file, .. }
            | CheckpointError::ShapeMismatch { file, .. }
            | CheckpointError::DtypeMismatch { file, .. }
            | CheckpointError::InvalidScale { file, .. }
            | CheckpointError::ConfigSyntax { file, .. }
            | CheckpointError::MissingConfigKey { file, .. }
            | CheckpointError::InvalidConfigValue { file, .. }
            | CheckpointError::UnsupportedConfig { file, .. } => file,
            CheckpointError::NotFound { path, .. } => path,
        }
    }
}

impl From<CheckpointError> for io::Error {
    fn from(e: CheckpointError) -> Self {
        let kind = match &e {
            CheckpointError::Io { source, .. } => source.kind(),
            _ => io::ErrorKind::InvalidData,
        };
        io::Error::new(kind, e)
    }
}
