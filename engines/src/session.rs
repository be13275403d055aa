//! An ONNX Runtime session on a chosen execution provider, with plain `f32`/`i64` tensors in
//! and `f32` tensors out. Mirrors ort's `Session` + `inputs!` usage, adding input/output name
//! checks that name the model file, the session config entries each backend needs
//! ([`session_entries`]), and the node placement ONNX Runtime actually chose
//! ([`Engine::placement`], [`Engine::ran_on`]).

use std::path::{Path, PathBuf};

use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::TensorRef;

use crate::error::{EngineError, Result};
use crate::ortlib;
use crate::placement::{self, Placement};
use crate::provider::{Backend, BackendKind};

/// The session config entries (`SessionOptions` config keys) a session on `backend` is created
/// with, besides those of [`SessionConfig`]'s own settings:
/// - `session.record_ep_graph_assignment_info = 1` always, so [`Engine::placement`] can read
///   which provider got each node.
/// - CPU: `session.disable_quant_qdq = 1` keeps Q/DQ pairs where the exporter put them (ONNX
///   Runtime's QDQ propagation would move FP8 quantisation across Reshape/Transpose, for which
///   its CPU kernels (opset < 21) have no float8 types). It also lets constant folding fold
///   `DequantizeLinear` of FP8 weights into float initialisers, which is why it is never set
///   for CUDA or TensorRT: they must see the FP8 weights.
/// - CUDA and TensorRT: `session.use_device_allocator_for_initializers = 1`: weights go
///   straight to device memory rather than through the growing arena.
/// - TensorRT: `session.disable_cpu_ep_fallback = 1`: session creation fails if a node would
///   run on the CPU (TensorRT and the CUDA provider registered after it must take everything).
pub fn session_entries(backend: &Backend) -> Vec<(&'static str, String)> {
    let on = || "1".to_string();
    let mut entries = vec![("session.record_ep_graph_assignment_info", on())];
    match backend {
        Backend::Cpu => entries.push(("session.disable_quant_qdq", on())),
        Backend::Cuda { .. } => {
            entries.push(("session.use_device_allocator_for_initializers", on()));
        }
        Backend::TensorRt { .. } => {
            entries.push(("session.use_device_allocator_for_initializers", on()));
            entries.push(("session.disable_cpu_ep_fallback", on()));
        }
    }
    entries
}

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
    /// Whether idle intra-op threads spin waiting for work.
    pub spinning: ThreadSpinning,
}

/// ONNX Runtime's `session.intra_op.allow_spinning`: spinning threads pick up the next run a
/// little sooner, but several sessions run one after another (the transformer's stages) each
/// keep their threads spinning against the one that runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ThreadSpinning {
    /// ONNX Runtime's default (spin).
    #[default]
    Default,
    /// Idle threads sleep.
    Off,
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
            spinning: ThreadSpinning::Default,
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
    pub fn with_spinning(mut self, spinning: ThreadSpinning) -> Self {
        self.spinning = spinning;
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
    placement: Placement,
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
            .field("placement", &self.placement.to_string())
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
        let dispatches = config.backend.dispatches()?;
        let load_err = |e: String| EngineError::ModelLoad {
            model: model.to_path_buf(),
            reason: e,
        };
        let mut builder = Session::builder(env).map_err(|e| load_err(e.to_string()))?;
        builder = builder
            .with_optimization_level(config.optimization.level())
            .map_err(|e| load_err(e.to_string()))?;
        for (key, value) in session_entries(&config.backend) {
            builder = builder
                .with_config_entry(key, &value)
                .map_err(|e| load_err(format!("session config `{key}`: {e}")))?;
        }
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
        if config.spinning == ThreadSpinning::Off {
            builder = builder
                .with_config_entry("session.intra_op.allow_spinning", "0")
                .map_err(|e| load_err(e.to_string()))?;
        }
        builder = builder.with_execution_providers(dispatches).map_err(|e| {
            EngineError::ProviderInit {
                provider: provider.to_string(),
                model: model.to_path_buf(),
                reason: e.to_string(),
                hint: provider.hint(),
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
        .map_err(|e| {
            let reason = e.to_string();
            if reason.contains("fallback to CPU EP has been explicitly disabled") {
                EngineError::CpuFallbackRefused {
                    model: model.to_path_buf(),
                    reason,
                }
            } else {
                load_err(reason)
            }
        })?;
        let placement = placement::read(&session).map_err(|reason| EngineError::Placement {
            model: model.to_path_buf(),
            reason,
        })?;
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
            placement,
            inputs,
            outputs,
            half_inputs,
        })
    }

    /// The backend this engine was loaded for: its primary provider, registered successfully
    /// (a provider that cannot be registered fails the load). Where the nodes actually went is
    /// [`Engine::placement`]; see also [`Engine::ran_on`].
    pub fn provider(&self) -> BackendKind {
        self.provider
    }

    /// Which execution provider ONNX Runtime assigned each node to, as it partitioned the graph
    /// at load.
    pub fn placement(&self) -> &Placement {
        &self.placement
    }

    /// The provider that runs most of the graph's nodes, from [`Engine::placement`]: `Cpu` here
    /// for a CUDA engine means the CUDA provider took fewer nodes than the CPU. `None` for a
    /// graph without nodes. Node counts are not compute: a TensorRT engine whose big fused
    /// subgraphs hold fewer nodes than the CUDA provider's leftovers reports `Cuda`.
    pub fn ran_on(&self) -> Option<BackendKind> {
        self.placement
            .dominant()
            .and_then(|p| BackendKind::from_ort_name(&p.provider))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::TensorRtOptions;

    /// A hand-encoded ONNX ModelProto (opset 17): `out = Relu(x + y)` over float `[2]`.
    fn add_relu_model() -> Vec<u8> {
        fn varint(mut v: u64, out: &mut Vec<u8>) {
            while v >= 0x80 {
                out.push((v as u8) | 0x80);
                v >>= 7;
            }
            out.push(v as u8);
        }
        fn int(field: u64, v: u64) -> Vec<u8> {
            let mut out = vec![];
            varint(field << 3, &mut out);
            varint(v, &mut out);
            out
        }
        fn bytes(field: u64, b: &[u8]) -> Vec<u8> {
            let mut out = vec![];
            varint((field << 3) | 2, &mut out);
            varint(b.len() as u64, &mut out);
            out.extend_from_slice(b);
            out
        }
        let value_info = |name: &str| {
            let dim = bytes(1, &int(1, 2)); // Dimension.dim_value = 2
            let shape = bytes(2, &dim); // TypeProto.Tensor.shape
            let tensor = [int(1, 1), shape].concat(); // elem_type FLOAT
            let ty = bytes(1, &tensor); // TypeProto.tensor_type
            [bytes(1, name.as_bytes()), bytes(2, &ty)].concat()
        };
        let node = |ins: &[&str], out: &str, name: &str, op: &str| {
            let mut n: Vec<u8> = ins.iter().flat_map(|i| bytes(1, i.as_bytes())).collect();
            n.extend(bytes(2, out.as_bytes()));
            n.extend(bytes(3, name.as_bytes()));
            n.extend(bytes(4, op.as_bytes()));
            n
        };
        let graph = [
            bytes(1, &node(&["x", "y"], "s", "add", "Add")),
            bytes(1, &node(&["s"], "out", "relu", "Relu")),
            bytes(2, b"add_relu"),
            bytes(11, &value_info("x")),
            bytes(11, &value_info("y")),
            bytes(12, &value_info("out")),
        ]
        .concat();
        let opset = [bytes(1, b""), int(2, 17)].concat();
        [int(1, 8), bytes(7, &graph), bytes(8, &opset)].concat()
    }

    fn entries(backend: &Backend) -> Vec<(&'static str, &str)> {
        let mut e: Vec<_> = session_entries(backend);
        e.sort();
        e.iter()
            .map(|(k, v)| (*k, if v == "1" { "1" } else { "other" }))
            .collect()
    }

    #[test]
    fn session_entries_per_backend() {
        let record = ("session.record_ep_graph_assignment_info", "1");
        let qdq = ("session.disable_quant_qdq", "1");
        let device_init = ("session.use_device_allocator_for_initializers", "1");
        let no_cpu = ("session.disable_cpu_ep_fallback", "1");
        assert_eq!(entries(&Backend::Cpu), [qdq, record]);
        assert_eq!(
            entries(&Backend::Cuda { device_id: 1 }),
            [record, device_init]
        );
        let trt = Backend::TensorRt {
            device_id: 0,
            options: TensorRtOptions::default(),
        };
        assert_eq!(entries(&trt), [no_cpu, record, device_init]);
    }

    #[test]
    fn cpu_placement_is_read_from_the_session() {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("add_relu.onnx");
        std::fs::write(&model, add_relu_model()).unwrap();
        let config = SessionConfig::default()
            .with_intra_threads(Some(1))
            .with_optimization(Optimization::Disabled);
        let mut engine = Engine::load(&model, &config).unwrap();
        let placement = engine.placement().clone();
        assert_eq!(placement.total_nodes(), 2, "{placement}");
        assert_eq!(placement.nodes_on("CPUExecutionProvider"), 2, "{placement}");
        assert_eq!(placement.cpu_op_types(), ["Add", "Relu"]);
        assert_eq!(placement.to_string(), "CPUExecutionProvider: 2 nodes");
        assert_eq!(engine.provider(), BackendKind::Cpu);
        assert_eq!(engine.ran_on(), Some(BackendKind::Cpu));
        let shape = [2];
        let out = engine
            .run_one(
                &[
                    (
                        "x",
                        Input::F32 {
                            shape: &shape,
                            data: &[1.0, -3.0],
                        },
                    ),
                    (
                        "y",
                        Input::F32 {
                            shape: &shape,
                            data: &[0.5, 1.0],
                        },
                    ),
                ],
                "out",
            )
            .unwrap();
        assert_eq!(out.data, [1.5, 0.0]);
        // The same bytes from memory place the same way.
        let bytes = std::fs::read(&model).unwrap();
        let engine = Engine::load_from_memory(&model, &bytes, &config).unwrap();
        assert_eq!(engine.placement(), &placement);
    }
}
