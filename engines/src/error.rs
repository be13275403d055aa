//! Errors of the engines crate: every message names the library, model file, provider or tensor.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(
        "ONNX Runtime library not found (looked in: {}). Run `scripts/setup.sh` to fetch it, \
         or pass --ort-lib PATH / set ORT_DYLIB_PATH to a libonnxruntime.so (>= 1.31)",
        searched.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
    )]
    LibraryNotFound { searched: Vec<PathBuf> },
    #[error("failed to load ONNX Runtime from {path}: {reason}")]
    LibraryLoad { path: PathBuf, reason: String },
    #[error(
        "execution provider `{provider}` was requested but this build of hyvideo was compiled \
         without it: rebuild with `--features {feature}`"
    )]
    ProviderNotCompiled {
        provider: String,
        feature: &'static str,
    },
    #[error(
        "execution provider `{provider}` is not available in the loaded ONNX Runtime library \
         (available: {}). {hint}",
        available.join(", ")
    )]
    ProviderUnavailable {
        provider: String,
        available: Vec<String>,
        hint: &'static str,
    },
    #[error("execution provider `{provider}` failed to initialise for {model}: {reason}")]
    ProviderInit {
        provider: String,
        model: PathBuf,
        reason: String,
    },
    #[error("option `{key}` of execution provider `{provider}`: {reason}")]
    ProviderOption {
        provider: String,
        key: &'static str,
        reason: String,
    },
    #[error(
        "cannot read which execution provider runs each node of {model} \
         (Session_GetEpGraphAssignmentInfo): {reason}"
    )]
    Placement { model: PathBuf, reason: String },
    #[error("unknown backend `{0}` (expected one of: cpu, cuda, tensorrt)")]
    UnknownBackend(String),
    #[error("model file {0} does not exist")]
    ModelMissing(PathBuf),
    #[error("failed to load model {model}: {reason}")]
    ModelLoad { model: PathBuf, reason: String },
    #[error("model {model} has no input named `{name}` (inputs: {})", inputs.join(", "))]
    UnknownInput {
        model: PathBuf,
        name: String,
        inputs: Vec<String>,
    },
    #[error("model {model}: missing input `{name}`")]
    MissingInput { model: PathBuf, name: String },
    #[error("model {model} has no output named `{name}`")]
    UnknownOutput { model: PathBuf, name: String },
    #[error(
        "model {model}: tensor `{name}` has {len} elements but shape {shape:?} needs {expected}"
    )]
    BadTensor {
        model: PathBuf,
        name: String,
        shape: Vec<usize>,
        len: usize,
        expected: usize,
    },
    #[error("running {model} failed: {reason}")]
    Run { model: PathBuf, reason: String },
    #[error("shape profile of input `{input}`: {reason}")]
    Profile { input: String, reason: String },
    #[error("cannot identify the device: {0}")]
    Device(String),
}

pub type Result<T, E = EngineError> = std::result::Result<T, E>;
