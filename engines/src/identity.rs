//! What an engine is bound to: the device (CPU model, or GPU name and compute capability), the
//! ONNX Runtime version and, for TensorRT, the TensorRT version. Built engines record it; a run
//! compares it with the machine's and refuses engines built for something else.
//!
//! As NVIDIA demoDiffusion names engine files by toolchain version and precision, and ONNX
//! Runtime's TensorRT provider keys its engine cache by GPU and TensorRT version. The GPU's
//! name and compute capability come from the CUDA driver and the TensorRT version from
//! `getInferLibVersion()` (see [`crate::nvlib`]); the CPU model from `/proc/cpuinfo`. Parsing,
//! formatting and the TensorRT minimum ([`MIN_TENSORRT`]) are pure functions tested without a
//! GPU.

use std::path::Path;

use crate::error::{EngineError, Result};
use crate::nvlib;
use crate::provider::BackendKind;

/// The oldest TensorRT hyvideo runs on, `(major, minor)`: 10.13 added the parser APIs
/// (`loadModelProto` / `loadInitializer`) behind ONNX Runtime's `trt_load_user_initializer`,
/// without which graphs over 2 GB cannot be built.
pub const MIN_TENSORRT: (u32, u32) = (10, 13);

/// The TensorRT major version ONNX Runtime 1.31's TensorRT provider links (`libnvinfer.so.10`,
/// `libnvonnxparser.so.10`): a newer major (found as `libnvinfer.so`) is not the one it loads.
pub const TENSORRT_MAJOR: u32 = 10;

/// The machine facts an engine depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceIdentity {
    pub backend: BackendKind,
    /// CPU model name, or GPU name.
    pub device: String,
    /// GPU compute capability (`8.9`), none for the CPU.
    pub compute_capability: Option<String>,
    pub onnxruntime: String,
    pub tensorrt: Option<String>,
}

impl DeviceIdentity {
    /// A short, file-name-safe key: `cpu-intel-xeon-...-ort1.31.1` or
    /// `tensorrt-nvidia-h100-sm90-trt10.13.2-ort1.31.1`.
    pub fn slug(&self) -> String {
        let mut parts = vec![self.backend.to_string(), slugify(&self.device)];
        if let Some(cc) = &self.compute_capability {
            parts.push(format!("sm{}", cc.replace('.', "")));
        }
        if let Some(t) = &self.tensorrt {
            parts.push(format!("trt{t}"));
        }
        parts.push(format!("ort{}", self.onnxruntime));
        parts.join("-")
    }

    /// What differs between `self` (recorded) and `now` (this machine), in words.
    pub fn differences(&self, now: &DeviceIdentity) -> Vec<String> {
        let mut out = vec![];
        let mut diff = |what: &str, a: String, b: String| {
            if a != b {
                out.push(format!("{what}: built for {a}, this machine has {b}"));
            }
        };
        diff("backend", self.backend.to_string(), now.backend.to_string());
        diff("device", self.device.clone(), now.device.clone());
        let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "none".into());
        diff(
            "compute capability",
            opt(&self.compute_capability),
            opt(&now.compute_capability),
        );
        diff(
            "ONNX Runtime",
            self.onnxruntime.clone(),
            now.onnxruntime.clone(),
        );
        diff("TensorRT", opt(&self.tensorrt), opt(&now.tensorrt));
        out
    }
}

fn slugify(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.ends_with('-') && !out.is_empty() {
            out.push('-');
        }
    }
    out.trim_end_matches('-').chars().take(48).collect()
}

/// The `model name` of the first processor in `/proc/cpuinfo` text.
pub fn cpu_model(cpuinfo: &str) -> Option<String> {
    cpuinfo
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == "model name").then(|| v.trim().to_string())
        })
        .filter(|s| !s.is_empty())
}

/// TensorRT's `getInferLibVersion()` value as `major.minor.patch`: `major·10000 + minor·100 +
/// patch` since TensorRT 9 (101302 → `10.13.2`), `major·1000 + minor·100 + patch` before
/// (8601 → `8.6.1`). A value that is not positive is returned as the bare number.
pub fn tensorrt_version_from_int(v: i32) -> String {
    if v <= 0 {
        return v.to_string();
    }
    if v >= 10_000 {
        format!("{}.{}.{}", v / 10_000, (v / 100) % 100, v % 100)
    } else {
        format!("{}.{}.{}", v / 1000, (v / 100) % 10, v % 100)
    }
}

/// `(major, minor)` of a `major.minor[.patch...]` version string.
fn major_minor(version: &str) -> Option<(u32, u32)> {
    let mut parts = version.trim().split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// Refuse a TensorRT older than [`MIN_TENSORRT`] (or a version that does not parse), naming
/// what was found and why the minimum exists, and one of another major than
/// [`TENSORRT_MAJOR`].
pub fn check_tensorrt(version: &str) -> Result<()> {
    let (min_major, min_minor) = MIN_TENSORRT;
    match major_minor(version) {
        Some((major, _)) if major > TENSORRT_MAJOR => Err(EngineError::TensorRtMajor {
            found: version.to_string(),
            major: TENSORRT_MAJOR,
        }),
        Some(found) if found >= MIN_TENSORRT => Ok(()),
        _ => Err(EngineError::TensorRtTooOld {
            found: version.to_string(),
            min: format!("{min_major}.{min_minor}"),
        }),
    }
}

/// A folder name for TensorRT's timing cache that changes with the compute capability and the
/// TensorRT version (a timing cache is only valid for both): `timing-sm90-trt10.13.2`. Parts
/// the identity lacks are left out (a CPU identity gives `timing`).
pub fn timing_cache_name(identity: &DeviceIdentity) -> String {
    let mut name = String::from("timing");
    if let Some(cc) = &identity.compute_capability {
        name.push_str(&format!("-sm{}", cc.replace('.', "")));
    }
    if let Some(t) = &identity.tensorrt {
        name.push_str(&format!("-trt{t}"));
    }
    name
}

/// The ONNX Runtime version from its build-info string (`git-branch=rel-1.31.1, ...`), else
/// from the library's file name (`libonnxruntime.so.1.31.1`).
pub fn onnxruntime_version(build_info: &str, lib: Option<&Path>) -> Option<String> {
    let from_info = build_info
        .split([',', ' '])
        .find_map(|p| p.trim().strip_prefix("git-branch=rel-"))
        .map(str::to_string);
    from_info.or_else(|| {
        lib.and_then(|l| l.file_name())
            .and_then(|f| f.to_str())
            .and_then(|f| f.strip_prefix("libonnxruntime.so."))
            .map(str::to_string)
    })
}

/// This machine's identity for `backend` (GPU `device_id` for cuda / tensorrt). Needs the ONNX
/// Runtime library loaded (see [`crate::ortlib::environment`]).
pub fn detect(backend: BackendKind, device_id: usize) -> Result<DeviceIdentity> {
    let lib = crate::ortlib::loaded_library();
    let onnxruntime = onnxruntime_version(ort::info(), lib)
        .unwrap_or_else(|| crate::ortlib::ORT_VERSION.to_string());
    match backend {
        BackendKind::Cpu => {
            let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
            Ok(DeviceIdentity {
                backend,
                device: cpu_model(&info).unwrap_or_else(|| std::env::consts::ARCH.to_string()),
                compute_capability: None,
                onnxruntime,
                tensorrt: None,
            })
        }
        BackendKind::Cuda | BackendKind::TensorRt => {
            let gpu = nvlib::cuda_device(device_id)?;
            let tensorrt = if backend == BackendKind::TensorRt {
                let (_, raw) = nvlib::tensorrt_library_version()?;
                let version = tensorrt_version_from_int(raw);
                check_tensorrt(&version)?;
                Some(version)
            } else {
                None
            };
            Ok(DeviceIdentity {
                backend,
                compute_capability: Some(gpu.compute_capability_string()),
                device: gpu.name,
                onnxruntime,
                tensorrt,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_machine_facts() {
        let info = "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) Platinum 8480+\n";
        assert_eq!(
            cpu_model(info).as_deref(),
            Some("Intel(R) Xeon(R) Platinum 8480+")
        );
        assert_eq!(cpu_model("processor : 0\n"), None);
        assert_eq!(
            onnxruntime_version(
                "ORT Build Info: git-branch=rel-1.31.1, git-commit-id=abc",
                None
            )
            .as_deref(),
            Some("1.31.1")
        );
        assert_eq!(
            onnxruntime_version("", Some(Path::new("/x/libonnxruntime.so.1.31.1"))).as_deref(),
            Some("1.31.1")
        );
    }

    #[test]
    fn slugs_and_differences() {
        let a = DeviceIdentity {
            backend: BackendKind::TensorRt,
            device: "NVIDIA H100 80GB HBM3".into(),
            compute_capability: Some("9.0".into()),
            onnxruntime: "1.31.1".into(),
            tensorrt: Some("10.13.2".into()),
        };
        assert_eq!(
            a.slug(),
            "tensorrt-nvidia-h100-80gb-hbm3-sm90-trt10.13.2-ort1.31.1"
        );
        let mut b = a.clone();
        b.device = "NVIDIA L40S".into();
        b.compute_capability = Some("8.9".into());
        let d = a.differences(&b);
        assert_eq!(d.len(), 2, "{d:?}");
        assert!(d[0].contains("built for NVIDIA H100"), "{d:?}");
        assert!(a.differences(&a).is_empty());
    }

    #[test]
    fn detects_this_cpu() {
        crate::ortlib::environment(None).unwrap();
        let id = detect(BackendKind::Cpu, 0).unwrap();
        assert_eq!(id.onnxruntime, crate::ortlib::ORT_VERSION);
        assert!(!id.device.is_empty());
        assert!(id.slug().starts_with("cpu-"));
    }

    #[test]
    fn tensorrt_versions_and_the_minimum() {
        assert_eq!(tensorrt_version_from_int(101302), "10.13.2");
        assert_eq!(tensorrt_version_from_int(100900), "10.9.0");
        assert_eq!(tensorrt_version_from_int(110001), "11.0.1");
        assert_eq!(tensorrt_version_from_int(8601), "8.6.1");
        assert_eq!(tensorrt_version_from_int(0), "0");
        assert_eq!(tensorrt_version_from_int(-5), "-5");
        assert!(check_tensorrt("10.13.2").is_ok());
        assert!(check_tensorrt("10.13").is_ok());
        assert!(check_tensorrt("10.14.1").is_ok());
        let e = check_tensorrt("11.4.0").unwrap_err().to_string();
        assert!(
            e.contains("11.4.0") && e.contains("libnvinfer.so.10"),
            "{e}"
        );
        let e = check_tensorrt("10.9.0").unwrap_err();
        assert_eq!(
            e.to_string(),
            "TensorRT 10.9.0 found; hyvideo needs TensorRT ≥ 10.13 (trt_load_user_initializer, \
             for graphs over 2 GB)"
        );
        assert!(matches!(e, EngineError::TensorRtTooOld { .. }));
        for bad in ["8.6.1", "10", "", "ten.13", "-5"] {
            assert!(check_tensorrt(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn timing_cache_names() {
        let mut id = DeviceIdentity {
            backend: BackendKind::TensorRt,
            device: "NVIDIA H100 80GB HBM3".into(),
            compute_capability: Some("9.0".into()),
            onnxruntime: "1.31.1".into(),
            tensorrt: Some("10.13.2".into()),
        };
        assert_eq!(timing_cache_name(&id), "timing-sm90-trt10.13.2");
        id.compute_capability = Some("12.0".into());
        assert_eq!(timing_cache_name(&id), "timing-sm120-trt10.13.2");
        id.tensorrt = None;
        assert_eq!(timing_cache_name(&id), "timing-sm120");
        id.compute_capability = None;
        assert_eq!(timing_cache_name(&id), "timing");
    }

    /// No NVIDIA driver here: detecting a GPU backend is an error naming the driver library.
    #[test]
    fn gpu_detection_names_the_driver_when_it_is_absent() {
        crate::ortlib::environment(None).unwrap();
        for backend in [BackendKind::Cuda, BackendKind::TensorRt] {
            match detect(backend, 0) {
                Err(e @ EngineError::CudaDriverMissing { .. }) => {
                    let msg = e.to_string();
                    assert!(
                        msg.contains("libcuda.so.1") && msg.contains("NVIDIA driver"),
                        "{msg}"
                    );
                }
                // A machine with a driver: whatever is found or refused must name it.
                Ok(id) => assert!(id.compute_capability.is_some(), "{id:?}"),
                Err(e) => assert!(!e.to_string().is_empty()),
            }
        }
    }
}
