//! The exporter's top-level error: checkpoint and ONNX-writer errors plus model-structure ones.

use crate::checkpoint::CheckpointError;
use crate::onnx::OnnxError;

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(transparent)]
    Onnx(#[from] OnnxError),
    /// A graph whose I/O differs from its component's spec: an exporter bug, caught before the
    /// graph is written.
    #[error("the exported graph does not match its contract: {0}")]
    Contract(#[from] hyvideo_bundle::spec::SpecMismatch),
    #[error("{component}: {reason}")]
    Model {
        component: &'static str,
        reason: String,
    },
    #[error("{path}: {source}")]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

impl ExportError {
    /// A model-structure error of the graph builder of `component`.
    pub fn of(component: hyvideo_bundle::Component, reason: impl Into<String>) -> ExportError {
        Self::model(component.name(), reason)
    }

    /// A model-structure error of `component` (config or checkpoint contents the graph builder
    /// cannot use).
    pub fn model(component: &'static str, reason: impl Into<String>) -> ExportError {
        ExportError::Model {
            component,
            reason: reason.into(),
        }
    }
}

pub type Result<T, E = ExportError> = std::result::Result<T, E>;
