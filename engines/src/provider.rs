//! Execution providers: which backend a session runs on, and the checks that make a requested
//! provider an error rather than a silent CPU fallback.
//!
//! Mirrors ort's typed EP option structs (`ep::CUDA`, `ep::TensorRT`); the TensorRT options are
//! the ones NVIDIA's demoDiffusion and ONNX Runtime's TensorRT EP docs use for cached engines.

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

    fn hint(self) -> &'static str {
        match self {
            BackendKind::Cpu => "",
            BackendKind::Cuda | BackendKind::TensorRt => {
                "Use the library from the `onnxruntime-gpu` wheel (pass --ort-lib or ORT_DYLIB_PATH) \
                 on a machine with an NVIDIA driver, CUDA 13 and (for TensorRT) TensorRT 10 libraries \
                 on LD_LIBRARY_PATH"
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

    /// Check, before building a session, that the provider can be used at all: compiled into
    /// this binary and present in the loaded ONNX Runtime library.
    pub fn check_available(&self) -> Result<()> {
        let kind = self.kind();
        if !kind.compiled_in() {
            return Err(EngineError::ProviderNotCompiled {
                provider: kind.to_string(),
                feature: kind.cargo_feature().unwrap_or("cpu"),
            });
        }
        let present = provider_present(kind).unwrap_or(false);
        if !present {
            return Err(EngineError::ProviderUnavailable {
                provider: kind.to_string(),
                available: available_providers(),
                hint: kind.hint(),
            });
        }
        Ok(())
    }

    /// The ort dispatch for this backend, set to fail loudly (never a silent CPU fallback).
    pub fn dispatch(&self) -> Result<ort::ep::ExecutionProviderDispatch> {
        self.check_available()?;
        Ok(match self {
            Backend::Cpu => ort::ep::CPU::default().with_arena_allocator(true).build(),
            Backend::Cuda { device_id } => cuda_dispatch(*device_id)?,
            Backend::TensorRt { device_id, options } => tensorrt_dispatch(*device_id, options)?,
        }
        .error_on_failure())
    }
}

fn provider_present(kind: BackendKind) -> ort::Result<bool> {
    match kind {
        BackendKind::Cpu => ort::ep::CPU::is_available(),
        #[cfg(feature = "cuda")]
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

#[cfg(feature = "cuda")]
fn cuda_dispatch(device_id: i32) -> Result<ort::ep::ExecutionProviderDispatch> {
    Ok(ort::ep::CUDA::default().with_device_id(device_id).build())
}

#[cfg(not(feature = "cuda"))]
fn cuda_dispatch(_device_id: i32) -> Result<ort::ep::ExecutionProviderDispatch> {
    Err(EngineError::ProviderNotCompiled {
        provider: "cuda".into(),
        feature: "cuda",
    })
}

#[cfg(feature = "tensorrt")]
fn tensorrt_dispatch(
    device_id: i32,
    options: &TensorRtOptions,
) -> Result<ort::ep::ExecutionProviderDispatch> {
    let mut ep = ort::ep::TensorRT::default().with_device_id(device_id);
    if let Some(dir) = &options.engine_cache_dir {
        ep = ep
            .with_engine_cache(true)
            .with_engine_cache_path(dir.display());
    }
    if let Some(dir) = &options.timing_cache_dir {
        ep = ep
            .with_timing_cache(true)
            .with_timing_cache_path(dir.display());
    }
    if let Some(level) = options.builder_optimization_level {
        ep = ep.with_builder_optimization_level(level);
    }
    if !options.profiles.is_empty() {
        use crate::profile::{ProfilePoint, trt_shapes};
        ep = ep
            .with_profile_min_shapes(trt_shapes(&options.profiles, ProfilePoint::Min))
            .with_profile_opt_shapes(trt_shapes(&options.profiles, ProfilePoint::Opt))
            .with_profile_max_shapes(trt_shapes(&options.profiles, ProfilePoint::Max));
    }
    if let Some(ctx) = &options.ep_context_file {
        ep = ep
            .with_dump_ep_context_model(true)
            .with_ep_context_file_path(ctx.display())
            .with_ep_context_embed_mode(0);
    }
    Ok(ep.build())
}

#[cfg(not(feature = "tensorrt"))]
fn tensorrt_dispatch(
    _device_id: i32,
    _options: &TensorRtOptions,
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
}
