//! Execution providers: which backend a session runs on, which ONNX Runtime providers that
//! registers (in which order, with which options), and the checks that make a requested
//! provider an error rather than a silent CPU fallback.
//!
//! The options are listed as key/values ([`Backend::registrations`], a pure function) and passed
//! with ort's `with_arbitrary_config`, under the names ort's typed EP builders (`ep::CUDA`,
//! `ep::TensorRT`) write; the TensorRT options are the ones NVIDIA's demoDiffusion and ONNX
//! Runtime's TensorRT EP docs use for cached engines.
//! Registration order follows ONNX Runtime's TensorRT EP docs: TensorRT first, then CUDA on
//! the same device, so nodes TensorRT rejects run on CUDA rather than the CPU.
//!
//! Options set on every CUDA provider (under TensorRT too):
//! - `cudnn_conv_algo_search = HEURISTIC`: cuDNN's heuristic pick instead of the default
//!   exhaustive benchmark of every convolution algorithm (slow first run, large workspace).
//! - `arena_extend_strategy = kSameAsRequested`: the memory arena grows by what is asked, not
//!   to the next power of two, so large VAE activations do not double the reservation.
//! - `use_tf32 = 0`: fp32 MatMul/Conv stay fp32 (ONNX Runtime enables TF32 by default on
//!   Ampere and later, which rounds fp32 inputs to a 10-bit mantissa), so fp32 graphs give the
//!   same numbers as on the CPU within fp32 tolerance.
//!
//! TensorRT also gets `trt_load_user_initializer = 1`: the provider hands the weights to
//! TensorRT's parser directly instead of serialising them into each subgraph's ModelProto,
//! which is what lets graphs over 2 GB build (ONNX Runtime ≥ 1.23, TensorRT ≥ 10.13; see
//! [`crate::identity::MIN_TENSORRT`]).

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use ort::ep::ExecutionProvider;

use crate::error::{EngineError, Result};

/// Which family of execution provider a session uses (serialised as its `--backend` name).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum BackendKind {
    #[serde(rename = "cpu")]
    Cpu,
    #[serde(rename = "cuda")]
    Cuda,
    #[serde(rename = "tensorrt")]
    TensorRt,
}

impl BackendKind {
    /// ONNX Runtime's identifier for the provider.
    pub fn ort_name(self) -> &'static str {
        match self {
            BackendKind::Cpu => "CPUExecutionProvider",
            BackendKind::Cuda => "CUDAExecutionProvider",
            BackendKind::TensorRt => "TensorrtExecutionProvider",
        }
    }

    /// The cargo feature of this crate that enables the provider's code path.
    pub fn cargo_feature(self) -> Option<&'static str> {
        match self {
            BackendKind::Cpu => None,
            BackendKind::Cuda => Some("cuda"),
            BackendKind::TensorRt => Some("tensorrt"),
        }
    }

    /// Whether this binary was compiled with the provider's code path.
    pub fn compiled_in(self) -> bool {
        match self {
            BackendKind::Cpu => true,
            BackendKind::Cuda => cfg!(feature = "cuda"),
            BackendKind::TensorRt => cfg!(feature = "tensorrt"),
        }
    }

    /// ONNX Runtime's provider name back to the backend, for the providers hyvideo registers.
    pub fn from_ort_name(name: &str) -> Option<BackendKind> {
        [BackendKind::Cpu, BackendKind::Cuda, BackendKind::TensorRt]
            .into_iter()
            .find(|k| k.ort_name() == name)
    }

    /// What to install when the provider is missing from the loaded ONNX Runtime library.
    pub fn hint(self) -> &'static str {
        match self {
            BackendKind::Cpu => "",
            BackendKind::Cuda => {
                "Use the library from the `onnxruntime-gpu` wheel (pass --ort-lib or set \
                 ORT_DYLIB_PATH) on a machine with an NVIDIA driver, with CUDA 13 and cuDNN 9 \
                 (libcudnn*.so.9) on LD_LIBRARY_PATH; from pip (`nvidia-cuda-runtime`, \
                 `nvidia-cublas`, `nvidia-curand`, `nvidia-cudnn-cu13`) these are \
                 site-packages/nvidia/cu13/lib and site-packages/nvidia/cudnn/lib"
            }
            BackendKind::TensorRt => {
                "Use the library from the `onnxruntime-gpu` wheel (pass --ort-lib or set \
                 ORT_DYLIB_PATH) on a machine with an NVIDIA driver, with CUDA 13, cuDNN 9 \
                 (libcudnn*.so.9) and TensorRT >= 10.13 (libnvinfer.so.10) on LD_LIBRARY_PATH; \
                 from pip (`nvidia-cuda-runtime`, `nvidia-cublas`, `nvidia-curand`, \
                 `nvidia-cudnn-cu13`, `tensorrt-cu13-libs>=10.13,<11`) these are \
                 site-packages/nvidia/cu13/lib, site-packages/nvidia/cudnn/lib and \
                 site-packages/tensorrt_libs"
            }
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BackendKind::Cpu => "cpu",
            BackendKind::Cuda => "cuda",
            BackendKind::TensorRt => "tensorrt",
        })
    }
}

impl FromStr for BackendKind {
    type Err = EngineError;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "cpu" => Ok(BackendKind::Cpu),
            "cuda" => Ok(BackendKind::Cuda),
            "tensorrt" | "trt" => Ok(BackendKind::TensorRt),
            _ => Err(EngineError::UnknownBackend(s.to_string())),
        }
    }
}

/// Options of the TensorRT provider that decide where engines and caches live and which shapes
/// they are built for.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TensorRtOptions {
    pub engine_cache_dir: Option<PathBuf>,
    pub timing_cache_dir: Option<PathBuf>,
    pub builder_optimization_level: Option<u8>,
    /// Explicit min/opt/max shapes of every dynamic input (one optimisation profile).
    pub profiles: Vec<crate::profile::InputProfile>,
    /// Write an EP-context model here (the built engine referenced from an ONNX file), so that
    /// loading it never rebuilds.
    pub ep_context_file: Option<PathBuf>,
}

/// A fully specified execution provider request.
#[derive(Debug, Clone, PartialEq)]
pub enum Backend {
    Cpu,
    Cuda {
        device_id: i32,
    },
    TensorRt {
        device_id: i32,
        options: TensorRtOptions,
    },
}

impl Backend {
    pub fn from_kind(kind: BackendKind) -> Backend {
        match kind {
            BackendKind::Cpu => Backend::Cpu,
            BackendKind::Cuda => Backend::Cuda { device_id: 0 },
            BackendKind::TensorRt => Backend::TensorRt {
                device_id: 0,
                options: Default::default(),
            },
        }
    }

    pub fn kind(&self) -> BackendKind {
        match self {
            Backend::Cpu => BackendKind::Cpu,
            Backend::Cuda { .. } => BackendKind::Cuda,
            Backend::TensorRt { .. } => BackendKind::TensorRt,
        }
    }

    /// The providers a session on this backend registers, in priority order, with their
    /// options: CPU alone; CUDA; TensorRT then CUDA on the same device (nodes TensorRT rejects go
    /// to CUDA). ONNX Runtime adds its CPU provider last on its own for nodes no GPU provider
    /// takes (refused for TensorRT by [`crate::session::session_entries`]).
    pub fn registrations(&self) -> Vec<Registration> {
        match self {
            Backend::Cpu => vec![Registration {
                kind: BackendKind::Cpu,
                options: vec![],
            }],
            Backend::Cuda { device_id } => vec![cuda_registration(*device_id)],
            Backend::TensorRt { device_id, options } => vec![
                tensorrt_registration(*device_id, options),
                cuda_registration(*device_id),
            ],
        }
    }

    /// Check, before building a session, that the provider can be used at all: compiled into
    /// this binary and present (with every provider it registers) in the loaded ONNX Runtime
    /// library.
    pub fn check_available(&self) -> Result<()> {
        let kind = self.kind();
        if !kind.compiled_in() {
            return Err(EngineError::ProviderNotCompiled {
                provider: kind.to_string(),
                feature: kind.cargo_feature().unwrap_or("cpu"),
            });
        }
        for registration in self.registrations() {
            if !provider_present(registration.kind).unwrap_or(false) {
                return Err(EngineError::ProviderUnavailable {
                    provider: registration.kind.to_string(),
                    available: available_providers(),
                    hint: kind.hint(),
                });
            }
        }
        Ok(())
    }

    /// The ort dispatches for [`Backend::registrations`], in order, each set to fail loudly:
    /// a provider that cannot be registered is an error, never a silent CPU fallback.
    pub fn dispatches(&self) -> Result<Vec<ort::ep::ExecutionProviderDispatch>> {
        self.check_available()?;
        self.registrations()
            .iter()
            .map(|r| r.dispatch().map(|d| d.error_on_failure()))
            .collect()
    }
}

/// One execution provider as a session registers it: which provider, and the option key/values
/// passed to it (ONNX Runtime refuses option names it does not know).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    pub kind: BackendKind,
    pub options: Vec<(&'static str, String)>,
}

impl Registration {
    /// The value of option `key`, if set.
    pub fn option(&self, key: &str) -> Option<&str> {
        self.options
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.as_str())
    }

    fn dispatch(&self) -> Result<ort::ep::ExecutionProviderDispatch> {
        if let Some((key, _)) = self.options.iter().find(|(_, v)| v.contains('\0')) {
            return Err(EngineError::ProviderOption {
                provider: self.kind.to_string(),
                key,
                reason: "the value contains a NUL byte".into(),
            });
        }
        match self.kind {
            BackendKind::Cpu => Ok(ort::ep::CPU::default().with_arena_allocator(true).build()),
            BackendKind::Cuda => cuda_dispatch(&self.options),
            BackendKind::TensorRt => tensorrt_dispatch(&self.options),
        }
    }
}

/// The CUDA provider on `device_id` with the options this module's header explains.
fn cuda_registration(device_id: i32) -> Registration {
    Registration {
        kind: BackendKind::Cuda,
        options: vec![
            ("device_id", device_id.to_string()),
            ("cudnn_conv_algo_search", "HEURISTIC".into()),
            (
                "arena_extend_strategy",
                ort::ep::ArenaExtendStrategy::SameAsRequested.to_string(),
            ),
            ("use_tf32", "0".into()),
        ],
    }
}

/// The TensorRT provider on `device_id`: user initialisers (weights owned by the provider),
/// then the caches, build level, shape profile and EP-context file of `options`.
fn tensorrt_registration(device_id: i32, options: &TensorRtOptions) -> Registration {
    let on = || "1".to_string();
    let mut o: Vec<(&'static str, String)> = vec![
        ("device_id", device_id.to_string()),
        ("trt_load_user_initializer", on()),
    ];
    if let Some(dir) = &options.engine_cache_dir {
        o.push(("trt_engine_cache_enable", on()));
        o.push(("trt_engine_cache_path", dir.display().to_string()));
    }
    if let Some(dir) = &options.timing_cache_dir {
        o.push(("trt_timing_cache_enable", on()));
        o.push(("trt_timing_cache_path", dir.display().to_string()));
    }
    if let Some(level) = options.builder_optimization_level {
        o.push(("trt_builder_optimization_level", level.to_string()));
    }
    if !options.profiles.is_empty() {
        use crate::profile::{ProfilePoint, trt_shapes};
        let p = &options.profiles;
        o.push(("trt_profile_min_shapes", trt_shapes(p, ProfilePoint::Min)));
        o.push(("trt_profile_opt_shapes", trt_shapes(p, ProfilePoint::Opt)));
        o.push(("trt_profile_max_shapes", trt_shapes(p, ProfilePoint::Max)));
    }
    if let Some(ctx) = &options.ep_context_file {
        o.push(("trt_dump_ep_context_model", on()));
        o.push(("trt_ep_context_file_path", ctx.display().to_string()));
        o.push(("trt_ep_context_embed_mode", "0".into()));
    }
    Registration {
        kind: BackendKind::TensorRt,
        options: o,
    }
}

fn provider_present(kind: BackendKind) -> ort::Result<bool> {
    match kind {
        BackendKind::Cpu => ort::ep::CPU::is_available(),
        #[cfg(any(feature = "cuda", feature = "tensorrt"))]
        BackendKind::Cuda => ort::ep::CUDA::is_available(),
        #[cfg(feature = "tensorrt")]
        BackendKind::TensorRt => ort::ep::TensorRT::is_available(),
        #[allow(unreachable_patterns)]
        _ => Ok(false),
    }
}

/// The providers (among those hyvideo knows) that the loaded ONNX Runtime library offers.
pub fn available_providers() -> Vec<String> {
    [BackendKind::Cpu, BackendKind::Cuda, BackendKind::TensorRt]
        .into_iter()
        .filter(|k| provider_present(*k).unwrap_or(false))
        .map(|k| k.to_string())
        .collect()
}

// The CUDA provider's code path is compiled for the TensorRT backend too, which registers CUDA
// after TensorRT (the `tensorrt` feature enables `ort/cuda`).
#[cfg(any(feature = "cuda", feature = "tensorrt"))]
fn cuda_dispatch(options: &[(&'static str, String)]) -> Result<ort::ep::ExecutionProviderDispatch> {
    use ort::ep::ArbitrarilyConfigurableExecutionProvider;
    let ep = options.iter().fold(ort::ep::CUDA::default(), |ep, (k, v)| {
        ep.with_arbitrary_config(k, v)
    });
    Ok(ep.build())
}

#[cfg(not(any(feature = "cuda", feature = "tensorrt")))]
fn cuda_dispatch(
    _options: &[(&'static str, String)],
) -> Result<ort::ep::ExecutionProviderDispatch> {
    Err(EngineError::ProviderNotCompiled {
        provider: "cuda".into(),
        feature: "cuda",
    })
}

#[cfg(feature = "tensorrt")]
fn tensorrt_dispatch(
    options: &[(&'static str, String)],
) -> Result<ort::ep::ExecutionProviderDispatch> {
    use ort::ep::ArbitrarilyConfigurableExecutionProvider;
    let ep = options
        .iter()
        .fold(ort::ep::TensorRT::default(), |ep, (k, v)| {
            ep.with_arbitrary_config(k, v)
        });
    Ok(ep.build())
}

#[cfg(not(feature = "tensorrt"))]
fn tensorrt_dispatch(
    _options: &[(&'static str, String)],
) -> Result<ort::ep::ExecutionProviderDispatch> {
    Err(EngineError::ProviderNotCompiled {
        provider: "tensorrt".into(),
        feature: "tensorrt",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_backend_names() {
        assert_eq!("cpu".parse::<BackendKind>().unwrap(), BackendKind::Cpu);
        assert_eq!("CUDA".parse::<BackendKind>().unwrap(), BackendKind::Cuda);
        assert_eq!("trt".parse::<BackendKind>().unwrap(), BackendKind::TensorRt);
        let err = "metal".parse::<BackendKind>().unwrap_err().to_string();
        assert!(err.contains("metal") && err.contains("tensorrt"), "{err}");
    }

    #[test]
    fn display_round_trips() {
        for k in [BackendKind::Cpu, BackendKind::Cuda, BackendKind::TensorRt] {
            assert_eq!(k.to_string().parse::<BackendKind>().unwrap(), k);
        }
    }

    #[test]
    fn gpu_backends_without_feature_are_errors() {
        for kind in [BackendKind::Cuda, BackendKind::TensorRt] {
            if kind.compiled_in() {
                continue;
            }
            let err = Backend::from_kind(kind).check_available().unwrap_err();
            let msg = err.to_string();
            assert!(
                matches!(err, EngineError::ProviderNotCompiled { .. }),
                "{msg}"
            );
            assert!(msg.contains(kind.cargo_feature().unwrap()), "{msg}");
        }
    }

    #[test]
    fn registrations_per_backend() {
        let kinds = |b: &Backend| b.registrations().iter().map(|r| r.kind).collect::<Vec<_>>();
        assert_eq!(kinds(&Backend::Cpu), [BackendKind::Cpu]);
        assert!(Backend::Cpu.registrations()[0].options.is_empty());

        let cuda = Backend::Cuda { device_id: 3 }.registrations();
        assert_eq!(cuda.len(), 1);
        assert_eq!(
            cuda[0].options,
            [
                ("device_id", "3".to_string()),
                ("cudnn_conv_algo_search", "HEURISTIC".into()),
                ("arena_extend_strategy", "kSameAsRequested".into()),
                ("use_tf32", "0".into()),
            ]
        );

        let trt = Backend::TensorRt {
            device_id: 1,
            options: TensorRtOptions::default(),
        };
        assert_eq!(kinds(&trt), [BackendKind::TensorRt, BackendKind::Cuda]);
        let regs = trt.registrations();
        assert_eq!(
            regs[0].options,
            [
                ("device_id", "1".to_string()),
                ("trt_load_user_initializer", "1".into()),
            ]
        );
        // CUDA after TensorRT: same device, same CUDA options as the CUDA backend.
        assert_eq!(regs[1], Backend::Cuda { device_id: 1 }.registrations()[0]);
    }

    #[test]
    fn tensorrt_options_follow_the_request() {
        let profiles = vec![
            crate::profile::InputProfile::new("x", vec![1, 4], vec![2, 4], vec![3, 4]).unwrap(),
        ];
        let trt = Backend::TensorRt {
            device_id: 0,
            options: TensorRtOptions {
                engine_cache_dir: Some("/e".into()),
                timing_cache_dir: Some("/t".into()),
                builder_optimization_level: Some(3),
                profiles,
                ep_context_file: Some("/c/m_ctx.onnx".into()),
            },
        };
        let r = &trt.registrations()[0];
        let keys: Vec<&str> = r.options.iter().map(|(k, _)| *k).collect();
        assert_eq!(
            keys,
            [
                "device_id",
                "trt_load_user_initializer",
                "trt_engine_cache_enable",
                "trt_engine_cache_path",
                "trt_timing_cache_enable",
                "trt_timing_cache_path",
                "trt_builder_optimization_level",
                "trt_profile_min_shapes",
                "trt_profile_opt_shapes",
                "trt_profile_max_shapes",
                "trt_dump_ep_context_model",
                "trt_ep_context_file_path",
                "trt_ep_context_embed_mode",
            ]
        );
        assert_eq!(r.option("trt_engine_cache_path"), Some("/e"));
        assert_eq!(r.option("trt_timing_cache_path"), Some("/t"));
        assert_eq!(r.option("trt_builder_optimization_level"), Some("3"));
        assert_eq!(r.option("trt_profile_min_shapes"), Some("x:1x4"));
        assert_eq!(r.option("trt_profile_opt_shapes"), Some("x:2x4"));
        assert_eq!(r.option("trt_profile_max_shapes"), Some("x:3x4"));
        assert_eq!(r.option("trt_ep_context_file_path"), Some("/c/m_ctx.onnx"));
        assert_eq!(r.option("trt_ep_context_embed_mode"), Some("0"));
        assert_eq!(r.option("trt_fp16_enable"), None);
    }

    #[test]
    fn option_values_with_nul_are_refused_not_panicked_on() {
        let r = Registration {
            kind: BackendKind::Cuda,
            options: vec![("device_id", "0\0".into())],
        };
        let Err(err) = r.dispatch() else {
            panic!("a NUL in an option value must be refused");
        };
        let err = err.to_string();
        assert!(err.contains("device_id") && err.contains("NUL"), "{err}");
    }

    /// The option strings are the ones ort's typed setters would write.
    #[cfg(any(feature = "cuda", feature = "tensorrt"))]
    #[test]
    fn cuda_option_values_match_orts_types() {
        let r = &Backend::Cuda { device_id: 0 }.registrations()[0];
        assert_eq!(
            r.option("cudnn_conv_algo_search"),
            Some(
                ort::ep::cuda::ConvAlgorithmSearch::Heuristic
                    .to_string()
                    .as_str()
            )
        );
    }

    #[test]
    fn ort_names_map_back_and_hints_name_the_libraries() {
        for k in [BackendKind::Cpu, BackendKind::Cuda, BackendKind::TensorRt] {
            assert_eq!(BackendKind::from_ort_name(k.ort_name()), Some(k));
        }
        assert_eq!(
            BackendKind::from_ort_name("OpenVINOExecutionProvider"),
            None
        );
        for k in [BackendKind::Cuda, BackendKind::TensorRt] {
            let h = k.hint();
            for needle in [
                "CUDA 13",
                "cuDNN 9",
                "libcudnn*.so.9",
                "site-packages/nvidia/cu13/lib",
                "site-packages/nvidia/cudnn/lib",
                "LD_LIBRARY_PATH",
            ] {
                assert!(h.contains(needle), "{k}: {needle} missing from {h}");
            }
        }
        let h = BackendKind::TensorRt.hint();
        assert!(
            h.contains("TensorRT >= 10.13") && h.contains("site-packages/tensorrt_libs"),
            "{h}"
        );
    }

    #[test]
    fn unavailable_gpu_backends_are_errors_that_say_what_to_install() {
        crate::ortlib::environment(None).unwrap();
        for kind in [BackendKind::Cuda, BackendKind::TensorRt] {
            if !kind.compiled_in() {
                continue;
            }
            // The CPU build of ONNX Runtime that setup.sh fetches has no GPU provider.
            if provider_present(kind).unwrap_or(false) {
                continue;
            }
            let Err(err) = Backend::from_kind(kind).dispatches() else {
                panic!("{kind} is absent from the library yet registered");
            };
            assert!(
                matches!(err, EngineError::ProviderUnavailable { .. }),
                "{err}"
            );
            assert!(err.to_string().contains("cuDNN 9"), "{err}");
        }
    }
}
