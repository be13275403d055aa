//! An ONNX Runtime session on a chosen execution provider, with plain `f32`/`i64` tensors in
//! and `f32` tensors out. Mirrors ort's `Session` + `inputs!` usage, adding input/output name
//! checks that name the model file, and reporting the provider that actually runs.

use std::path::{Path, PathBuf};

use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::TensorRef;

use crate::error::{EngineError, Result};
use crate::ortlib;
use crate::provider::{Backend, BackendKind};

/// How ONNX Runtime should optimise the graph at session creation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Optimization {
    Disabled,
    Basic,
    Extended,
    #[default]
    All,
}

impl Optimization {
    fn level(self) -> GraphOptimizationLevel {
        match self {
            Optimization::Disabled => GraphOptimizationLevel::Disable,
            Optimization::Basic => GraphOptimizationLevel::Level1,
            Optimization::Extended => GraphOptimizationLevel::Level2,
            Optimization::All => GraphOptimizationLevel::All,
        }
    }
}

/// Which attention a bundle graph runs as when loaded (the rewrite itself is the runtime's,
/// `hyvideo::graph_load`; these sessions only carry the choice).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AttentionPolicy {
    /// The backend's fused kernel where it has one: ONNX Runtime's `MultiHeadAttention` on the
    /// CPU and CUDA providers; TensorRT fuses the standard form itself.
    #[default]
    BackendFused,
    /// The graph's standard `MatMul → Softmax → MatMul` form, as the bundle stores it.
    Standard,
}

/// Everything needed to create a session besides the model path.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionConfig {
    pub backend: Backend,
    /// Intra-op threads; `None` lets ONNX Runtime choose (one per physical core).
    pub intra_threads: Option<usize>,
    pub optimization: Optimization,
    /// Explicit path of libonnxruntime; `None` searches the default places.
    pub ort_lib: Option<PathBuf>,
    /// Write the graph as optimised for this machine here (weights in `<file>.data`): the CPU
    /// "engine" of `hyvideo-export build`.
    pub save_optimized: Option<PathBuf>,
    pub attention: AttentionPolicy,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            backend: Backend::Cpu,
            intra_threads: None,
            optimization: Optimization::All,
            ort_lib: None,
            save_optimized: None,
            attention: AttentionPolicy::BackendFused,
        }
    }
}

impl SessionConfig {
    #[must_use]
    pub fn with_backend(mut self, backend: Backend) -> Self {
        self.backend = backend;
        self
    }
    #[must_use]
    pub fn with_intra_threads(mut self, threads: Option<usize>) -> Self {
        self.intra_threads = threads;
        self
    }
    #[must_use]
    pub fn with_optimization(mut self, optimization: Optimization) -> Self {
        self.optimization = optimization;
        self
    }
    #[must_use]
    pub fn with_ort_lib(mut self, lib: Option<PathBuf>) -> Self {
        self.ort_lib = lib;
        self
    }
    #[must_use]
    pub fn with_attention(mut self, attention: AttentionPolicy) -> Self {
        self.attention = attention;
        self
    }
    #[must_use]
    pub fn with_save_optimized(mut self, path: Option<PathBuf>) -> Self {
        self.save_optimized = path;
        self
    }
}

/// A borrowed input tensor.
#[derive(Debug, Clone, Copy)]
pub enum Input<'a> {
    F32 { shape: &'a [usize], data: &'a [f32] },
    I64 { shape: &'a [usize], data: &'a [i64] },
}

impl Input<'_> {
    fn shape(&self) -> &[usize] {
        match self {
            Input::F32 { shape, .. } | Input::I64 { shape, .. } => shape,
        }
    }
    fn len(&self) -> usize {
        match self {
            Input::F32 { data, .. } => data.len(),
            Input::I64 { data, .. } => data.len(),
        }
    }
}

/// An owned `f32` output tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// A loaded model ready to run.
pub struct Engine {
    session: Session,
    model: PathBuf,
    provider: BackendKind,
    inputs: Vec<String>,
    outputs: Vec<String>,
    /// Float graph inputs stored as 16-bit (fp16 / bf16 precision profiles): f32 data given to
    /// `run` is converted at the boundary.
    half_inputs: Vec<(String, HalfType)>,
}

/// A 16-bit float element type of a graph input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HalfType {
    F16,
    BF16,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("model", &self.model)
            .field("provider", &self.provider)
            .field("inputs", &self.inputs)
            .field("outputs", &self.outputs)
            .finish()
    }
}

impl Engine {
    /// Load `model` on the configured backend. A provider that cannot be used is an error.
    pub fn load(model: &Path, config: &SessionConfig) -> Result<Engine> {
        Self::load_source(model, None, config)
    }

    /// Load the model `bytes` (a rewritten copy of the file `model`), resolving its external
    /// data files in `model`'s folder, on the configured backend.
    pub fn load_from_memory(model: &Path, bytes: &[u8], config: &SessionConfig) -> Result<Engine> {
        Self::load_source(model, Some(bytes), config)
    }

    fn load_source(model: &Path, bytes: Option<&[u8]>, config: &SessionConfig) -> Result<Engine> {
        if !model.is_file() {
            return Err(EngineError::ModelMissing(model.to_path_buf()));
        }
        let env = ortlib::environment(config.ort_lib.as_deref())?;
        let provider = config.backend.kind();
        let dispatch = config.backend.dispatch()?;
        let load_err = |e: String| EngineError::ModelLoad {
            model: model.to_path_buf(),
            reason: e,
        };
        let mut builder = Session::builder(env).map_err(|e| load_err(e.to_string()))?;
        builder = builder
            .with_optimization_level(config.optimization.level())
            .map_err(|e| load_err(e.to_string()))?;
        // Keep Q/DQ pairs where the exporter put them: ONNX Runtime's QDQ propagation would move
        // FP8 quantisation across Reshape/Transpose, for which its CPU kernels (opset < 21) have
        // no float8 types.
        builder = builder
            .with_config_entry("session.disable_quant_qdq", "1")
            .map_err(|e| load_err(e.to_string()))?;
        if let Some(out) = &config.save_optimized {
            let data = out
                .file_name()
                .map(|f| format!("{}.data", f.to_string_lossy()))
                .unwrap_or_else(|| "model.onnx.data".into());
            builder = builder
                .with_optimized_model_path(out)
                .map_err(|e| load_err(e.to_string()))?;
            builder = builder
                .with_config_entry(
                    "session.optimized_model_external_initializers_file_name",
                    &data,
                )
                .map_err(|e| load_err(e.to_string()))?;
            builder = builder
                .with_config_entry(
                    "session.optimized_model_external_initializers_min_size_in_bytes",
                    "1024",
                )
                .map_err(|e| load_err(e.to_string()))?;
        }
        if let Some(n) = config.intra_threads {
            builder = builder
                .with_intra_threads(n)
                .map_err(|e| load_err(e.to_string()))?;
        }
        builder = builder.with_execution_providers([dispatch]).map_err(|e| {
            EngineError::ProviderInit {
                provider: provider.to_string(),
                model: model.to_path_buf(),
                reason: e.to_string(),
            }
        })?;
        let session = match bytes {
            None => builder.commit_from_file(model),
            Some(bytes) => {
                let dir = match model.parent() {
                    Some(d) if !d.as_os_str().is_empty() => d,
                    _ => Path::new("."),
                };
                builder = builder
                    .with_config_entry(
                        "session.model_external_initializers_file_folder_path",
                        dir.to_string_lossy(),
                    )
                    .map_err(|e| load_err(e.to_string()))?;
                builder.commit_from_memory(bytes)
            }
        }
        .map_err(|e| load_err(e.to_string()))?;
        let inputs = session
            .inputs()
            .iter()
            .map(|o| o.name().to_string())
            .collect();
        let outputs = session
            .outputs()
            .iter()
            .map(|o| o.name().to_string())
            .collect();
        let half_inputs = session
            .inputs()
            .iter()
            .filter_map(|i| {
                use ort::value::TensorElementType as T;
                match i.dtype().tensor_type() {
                    Some(T::Float16) => Some((i.name().to_string(), HalfType::F16)),
                    Some(T::Bfloat16) => Some((i.name().to_string(), HalfType::BF16)),
                    _ => None,
                }
            })
            .collect();
        Ok(Engine {
            session,
            model: model.to_path_buf(),
            provider,
            inputs,
            outputs,
            half_inputs,
        })
    }

    /// The execution provider this engine runs on.
    pub fn provider(&self) -> BackendKind {
        self.provider
    }

    pub fn model_path(&self) -> &Path {
        &self.model
    }

    pub fn input_names(&self) -> &[String] {
        &self.inputs
    }

    pub fn output_names(&self) -> &[String] {
        &self.outputs
    }

    /// Run with named inputs (every graph input must be given) and return every output in the
    /// graph's order, as `f32`.
    pub fn run(&mut self, inputs: &[(&str, Input<'_>)]) -> Result<Vec<(String, Tensor)>> {
        for (name, input) in inputs {
            if !self.inputs.iter().any(|n| n == name) {
                return Err(EngineError::UnknownInput {
                    model: self.model.clone(),
                    name: name.to_string(),
                    inputs: self.inputs.clone(),
                });
            }
            let expected: usize = input.shape().iter().product();
            if expected != input.len() {
                return Err(EngineError::BadTensor {
                    model: self.model.clone(),
                    name: name.to_string(),
                    shape: input.shape().to_vec(),
                    len: input.len(),
                    expected,
                });
            }
        }
        for name in &self.inputs {
            if !inputs.iter().any(|(n, _)| n == name) {
                return Err(EngineError::MissingInput {
                    model: self.model.clone(),
                    name: name.clone(),
                });
            }
        }
        let run_err = |e: ort::Error| EngineError::Run {
            model: self.model.clone(),
            reason: e.to_string(),
        };
        let mut values: Vec<(String, ort::session::SessionInputValue<'_>)> = Vec::new();
        for (name, input) in inputs {
            let half = self
                .half_inputs
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, t)| *t);
            let v: ort::session::SessionInputValue<'_> = match (input, half) {
                (Input::F32 { shape, data }, Some(HalfType::F16)) => {
                    let d: Vec<half::f16> = data.iter().map(|v| half::f16::from_f32(*v)).collect();
                    ort::value::Tensor::from_array((shape.to_vec(), d))
                        .map_err(run_err)?
                        .into()
                }
                (Input::F32 { shape, data }, Some(HalfType::BF16)) => {
                    let d: Vec<half::bf16> =
                        data.iter().map(|v| half::bf16::from_f32(*v)).collect();
                    ort::value::Tensor::from_array((shape.to_vec(), d))
                        .map_err(run_err)?
                        .into()
                }
                (Input::F32 { shape, data }, None) => {
                    TensorRef::from_array_view((shape.to_vec(), *data))
                        .map_err(run_err)?
                        .into()
                }
                (Input::I64 { shape, data }, _) => {
                    TensorRef::from_array_view((shape.to_vec(), *data))
                        .map_err(run_err)?
                        .into()
                }
            };
            values.push((name.to_string(), v));
        }
        let model = self.model.clone();
        let outputs = self.session.run(values).map_err(|e| EngineError::Run {
            model: model.clone(),
            reason: e.to_string(),
        })?;
        let mut out = Vec::with_capacity(outputs.len());
        for (name, value) in outputs.iter() {
            let err = |e: ort::Error| EngineError::Run {
                model: model.clone(),
                reason: e.to_string(),
            };
            use ort::value::TensorElementType as T;
            let (shape, data): (Vec<usize>, Vec<f32>) = match value.dtype().tensor_type() {
                Some(T::Float16) => {
                    let (s, d) = value.try_extract_tensor::<half::f16>().map_err(err)?;
                    (
                        s.iter().map(|&v| v as usize).collect(),
                        d.iter().map(|v| v.to_f32()).collect(),
                    )
                }
                Some(T::Bfloat16) => {
                    let (s, d) = value.try_extract_tensor::<half::bf16>().map_err(err)?;
                    (
                        s.iter().map(|&v| v as usize).collect(),
                        d.iter().map(|v| v.to_f32()).collect(),
                    )
                }
                _ => {
                    let (s, d) = value.try_extract_tensor::<f32>().map_err(err)?;
                    (s.iter().map(|&v| v as usize).collect(), d.to_vec())
                }
            };
            out.push((name.to_string(), Tensor { shape, data }));
        }
        Ok(out)
    }

    /// Run and return the single named output.
    pub fn run_one(&mut self, inputs: &[(&str, Input<'_>)], output: &str) -> Result<Tensor> {
        let model = self.model.clone();
        self.run(inputs)?
            .into_iter()
            .find(|(n, _)| n == output)
            .map(|(_, t)| t)
            .ok_or(EngineError::UnknownOutput {
                model,
                name: output.to_string(),
            })
    }
}
