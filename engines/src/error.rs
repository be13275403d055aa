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
    #[error(
        "execution provider `{provider}` failed to initialise for {model}: {reason}{}",
        if hint.is_empty() { String::new() } else { format!(". {hint}") }
    )]
    ProviderInit {
        provider: String,
        model: PathBuf,
        reason: String,
        hint: &'static str,
    },
    #[error(
        "{model}: the TensorRT and CUDA providers cannot take every node, and a TensorRT \
         session refuses to run any on the CPU (session.disable_cpu_ep_fallback): {reason}"
    )]
    CpuFallbackRefused { model: PathBuf, reason: String },
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
    #[error(
        "the CUDA driver library libcuda.so.1 could not be loaded ({reason}): install the \
         NVIDIA driver, which provides it (in a container, run with the NVIDIA Container \
         Toolkit, e.g. `docker run --gpus all`)"
    )]
    CudaDriverMissing { reason: String },
    #[error("CUDA driver call {call} failed: {name} ({code})")]
    CudaCall {
        call: &'static str,
        code: i32,
        name: String,
    },
    #[error(
        "GPU {ordinal} does not exist: the CUDA driver sees {count} GPU(s){}",
        match visible {
            Some(v) => format!(" with CUDA_VISIBLE_DEVICES={v} (ordinals count the visible GPUs)"),
            None => String::new(),
        }
    )]
    NoSuchGpu {
        ordinal: usize,
        count: u32,
        visible: Option<String>,
    },
    #[error(
        "TensorRT not found: no libnvinfer.so.10 or libnvinfer.so could be loaded ({tried}). \
         The dynamic loader looks in LD_LIBRARY_PATH, then ld.so.cache (`ldconfig -p`; distro \
         and NGC packages install to /usr/lib/x86_64-linux-gnu). Install TensorRT 10 (>= 10.13), \
         e.g. `pip install \"tensorrt-cu13-libs>=10.13,<11\"` (TensorRT 11 ships \
         libnvinfer.so.11, which ONNX Runtime's TensorRT provider does not load) and add its \
         site-packages/tensorrt_libs/ to LD_LIBRARY_PATH"
    )]
    TensorRtMissing { tried: String },
    #[error(
        "TensorRT {found} found; hyvideo needs TensorRT ≥ {min} (trt_load_user_initializer, \
         for graphs over 2 GB)"
    )]
    TensorRtTooOld { found: String, min: String },
    #[error(
        "TensorRT {found} found; ONNX Runtime's TensorRT provider links TensorRT {major} \
         (libnvinfer.so.{major}): install TensorRT {major} (>= 10.13) where the dynamic loader \
         finds libnvinfer.so.{major}"
    )]
    TensorRtMajor { found: String, major: u32 },
}

pub type Result<T, E = EngineError> = std::result::Result<T, E>;
