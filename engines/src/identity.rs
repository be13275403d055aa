//! What an engine is bound to: the device (CPU model, or GPU name and compute capability), the
//! ONNX Runtime version and, for TensorRT, the TensorRT version. Built engines record it; a run
//! compares it with the machine's and refuses engines built for something else.
//!
//! As NVIDIA demoDiffusion names engine files by toolchain version and precision, and ONNX
//! Runtime's TensorRT provider keys its engine cache by GPU and TensorRT version. The parsers are
//! pure functions over the text of `/proc/cpuinfo`, `nvidia-smi --query-gpu=name,compute_cap
//! --format=csv,noheader` and the `libnvinfer.so.X.Y.Z` file names, so they are tested without
//! a GPU.

use std::path::Path;

use crate::error::{EngineError, Result};
use crate::provider::BackendKind;

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
    /// `tensorrt-nvidia-h100-sm90-trt10.9.0-ort1.31.1`.
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

/// `(name, compute capability)` of GPU `index` from `nvidia-smi --query-gpu=name,compute_cap
/// --format=csv,noheader` output (one line per GPU: `NVIDIA H100 80GB HBM3, 9.0`).
pub fn parse_nvidia_smi(output: &str, index: usize) -> Option<(String, String)> {
    let line = output.lines().filter(|l| !l.trim().is_empty()).nth(index)?;
    let (name, cc) = line.rsplit_once(',')?;
    let (name, cc) = (name.trim(), cc.trim());
    (!name.is_empty() && cc.chars().all(|c| c.is_ascii_digit() || c == '.') && !cc.is_empty())
        .then(|| (name.to_string(), cc.to_string()))
}

/// The TensorRT version from `libnvinfer.so.X.Y.Z` file names (the highest found).
pub fn tensorrt_version<'a>(file_names: impl IntoIterator<Item = &'a str>) -> Option<String> {
    file_names
        .into_iter()
        .filter_map(|f| f.strip_prefix("libnvinfer.so."))
        .filter(|v| v.split('.').count() >= 2 && v.split('.').all(|p| p.parse::<u32>().is_ok()))
        .max_by_key(|v| {
            v.split('.')
                .map(|p| p.parse::<u32>().unwrap_or(0))
                .collect::<Vec<_>>()
        })
        .map(str::to_string)
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
            let out = std::process::Command::new("nvidia-smi")
                .args(["--query-gpu=name,compute_cap", "--format=csv,noheader"])
                .output()
                .map_err(|e| EngineError::Device(format!("running nvidia-smi: {e}")))?;
            let text = String::from_utf8_lossy(&out.stdout);
            let (device, cc) = parse_nvidia_smi(&text, device_id).ok_or_else(|| {
                EngineError::Device(format!(
                    "nvidia-smi lists no GPU {device_id} (output: {:?})",
                    text.trim()
                ))
            })?;
            let tensorrt = if backend == BackendKind::TensorRt {
                let names = library_files();
                Some(
                    tensorrt_version(names.iter().map(String::as_str)).ok_or_else(|| {
                        EngineError::Device(
                            "no libnvinfer.so.X.Y.Z on LD_LIBRARY_PATH: install TensorRT 10".into(),
                        )
                    })?,
                )
            } else {
                None
            };
            Ok(DeviceIdentity {
                backend,
                device,
                compute_capability: Some(cc),
                onnxruntime,
                tensorrt,
            })
        }
    }
}

/// File names in the directories of `LD_LIBRARY_PATH`.
fn library_files() -> Vec<String> {
    std::env::var("LD_LIBRARY_PATH")
        .unwrap_or_default()
        .split(':')
        .filter(|d| !d.is_empty())
        .filter_map(|d| std::fs::read_dir(d).ok())
        .flatten()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
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
        let smi = "NVIDIA H100 80GB HBM3, 9.0\nNVIDIA L40S, 8.9\n";
        assert_eq!(
            parse_nvidia_smi(smi, 1),
            Some(("NVIDIA L40S".into(), "8.9".into()))
        );
        assert_eq!(parse_nvidia_smi(smi, 2), None);
        assert_eq!(parse_nvidia_smi("No devices were found", 0), None);
        assert_eq!(
            tensorrt_version([
                "libnvinfer.so.10",
                "libnvinfer.so.10.9.0",
                "libnvinfer.so.10.13.2",
                "libcudart.so.13"
            ])
            .as_deref(),
            Some("10.13.2")
        );
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
}
