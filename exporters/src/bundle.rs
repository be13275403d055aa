//! The export bundle: `<component>.onnx` (+ `.onnx.data`), copied settings, and `manifest.yaml`
//! recording the exporter version, precision, source checkpoint identities and graph I/O.
//!
//! Written through a staging directory inside the bundle and renamed into place, the manifest
//! last, so a reader never sees a half-written bundle. Mirrors NVIDIA demoDiffusion's per-model
//! export records, as one typed YAML file.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{ExportError, Result};

pub const MANIFEST: &str = "manifest.yaml";
pub const FORMAT: &str = "hyvideo-bundle";
pub const FORMAT_VERSION: u32 = 1;
/// The exporter version written into bundles; the runtime refuses bundles of other versions.
pub const EXPORTER_VERSION: &str = env!("CARGO_PKG_VERSION");

/// A subnetwork of the pipeline, named as diffusers names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Component {
    Transformer,
    VaeDecoder,
    TextEncoder,
    /// diffusers' `text_encoder_2` (snake_case alone would give `text_encoder2`).
    #[serde(rename = "text_encoder_2")]
    TextEncoder2,
}

impl Component {
    pub const ALL: [Component; 4] = [
        Component::Transformer,
        Component::VaeDecoder,
        Component::TextEncoder,
        Component::TextEncoder2,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Component::Transformer => "transformer",
            Component::VaeDecoder => "vae_decoder",
            Component::TextEncoder => "text_encoder",
            Component::TextEncoder2 => "text_encoder_2",
        }
    }
}

impl fmt::Display for Component {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Component {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Component::ALL.into_iter().find(|c| c.name() == s).ok_or_else(|| {
            format!("unknown component `{s}` (expected one of: transformer, vae_decoder, text_encoder, text_encoder_2)")
        })
    }
}

/// The precision profile a bundle was exported with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    Fp32,
    Fp16,
    Bf16,
    Fp8,
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Precision::Fp32 => "fp32",
            Precision::Fp16 => "fp16",
            Precision::Bf16 => "bf16",
            Precision::Fp8 => "fp8",
        })
    }
}

impl FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "fp32" => Ok(Precision::Fp32),
            "fp16" => Ok(Precision::Fp16),
            "bf16" => Ok(Precision::Bf16),
            "fp8" => Ok(Precision::Fp8),
            _ => Err(format!(
                "unknown precision `{s}` (expected fp32, fp16, bf16 or fp8)"
            )),
        }
    }
}

/// One graph input or output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TensorSpec {
    pub name: String,
    pub dtype: String,
    /// Fixed sizes as numbers, dynamic ones by name.
    pub dims: Vec<String>,
}

/// A source checkpoint file and its identity.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceFile {
    pub path: String,
    pub bytes: u64,
    /// sha256 over the safetensors header and the file size (cheap, changes with any re-save).
    pub identity: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ComponentEntry {
    pub file: String,
    pub data_file: Option<String>,
    pub sha256: String,
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
    pub sources: Vec<SourceFile>,
}

/// VAE settings the runtime needs to decode.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VaeSettings {
    pub latent_channels: usize,
    pub out_channels: usize,
    pub scaling_factor: f64,
    pub spatial_compression_ratio: usize,
    pub temporal_compression_ratio: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub format_version: u32,
    pub exporter_version: String,
    pub precision: Precision,
    pub components: BTreeMap<Component, ComponentEntry>,
    pub vae: Option<VaeSettings>,
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("{}: not a hyvideo bundle (no manifest.yaml); export one with `hyvideo-export onnx`", .0.display())]
    Missing(PathBuf),
    #[error("{}: {reason}", .path.display())]
    Invalid { path: PathBuf, reason: String },
    #[error(
        "{}: bundle written by exporter {found} (format {found_format}), this is {expected} (format {expected_format}); re-export it with this version",
        .path.display()
    )]
    VersionMismatch {
        path: PathBuf,
        found: String,
        expected: String,
        found_format: u32,
        expected_format: u32,
    },
    #[error("{}: the bundle has no `{component}` component (has: {available}); export it with `hyvideo-export onnx --components {component}`", .path.display())]
    MissingComponent {
        path: PathBuf,
        component: Component,
        available: String,
    },
}

impl Manifest {
    pub fn new(precision: Precision) -> Manifest {
        Manifest {
            format: FORMAT.into(),
            format_version: FORMAT_VERSION,
            exporter_version: EXPORTER_VERSION.into(),
            precision,
            components: BTreeMap::new(),
            vae: None,
        }
    }

    /// Read and check `<bundle>/manifest.yaml` (format and exporter version).
    pub fn load(bundle: &Path) -> Result<Manifest, ManifestError> {
        let path = bundle.join(MANIFEST);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ManifestError::Missing(bundle.into()));
            }
            Err(e) => {
                return Err(ManifestError::Invalid {
                    path,
                    reason: e.to_string(),
                });
            }
        };
        let m: Manifest = serde_saphyr::from_str(&text).map_err(|e| ManifestError::Invalid {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        if m.format != FORMAT {
            return Err(ManifestError::Invalid {
                path,
                reason: format!("format is `{}`, expected `{FORMAT}`", m.format),
            });
        }
        if m.exporter_version != EXPORTER_VERSION || m.format_version != FORMAT_VERSION {
            return Err(ManifestError::VersionMismatch {
                path,
                found: m.exporter_version,
                expected: EXPORTER_VERSION.into(),
                found_format: m.format_version,
                expected_format: FORMAT_VERSION,
            });
        }
        Ok(m)
    }

    /// The entry of `component`, or an error saying how to add it.
    pub fn component(
        &self,
        bundle: &Path,
        component: Component,
    ) -> Result<&ComponentEntry, ManifestError> {
        self.components
            .get(&component)
            .ok_or_else(|| ManifestError::MissingComponent {
                path: bundle.to_path_buf(),
                component,
                available: self
                    .components
                    .keys()
                    .map(|c| c.name())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }

    pub fn to_yaml(&self) -> Result<String> {
        serde_saphyr::to_string(self).map_err(|e| ExportError::Model {
            component: "manifest",
            reason: e.to_string(),
        })
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ExportError + '_ {
    move |source| ExportError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes a bundle through a staging directory; dropped without `commit`, it removes
/// everything it wrote (and the bundle directory itself if it created it).
pub struct BundleWriter {
    out: PathBuf,
    staging: PathBuf,
    created_out: bool,
    manifest: Manifest,
    staged: Vec<String>,
    committed: bool,
    /// A precision profile replacing the built-in one of the bundle's precision.
    precision_profile: Option<crate::precision::PrecisionProfile>,
    /// Activation scales for fp8 profiles.
    fp8_scales: Option<crate::precision::Fp8Scales>,
}

impl BundleWriter {
    /// Use `profile` (e.g. from `--precision-profile FILE`) instead of the built-in profile of the
    /// bundle's precision.
    pub fn set_precision_profile(&mut self, profile: crate::precision::PrecisionProfile) {
        self.precision_profile = Some(profile);
    }

    /// Activation scales (`hyvideo-export calibrate`) for profiles with FP8 layers.
    pub fn set_fp8_scales(&mut self, scales: crate::precision::Fp8Scales) {
        self.fp8_scales = Some(scales);
    }

    pub fn fp8_scales(&self) -> Option<&crate::precision::Fp8Scales> {
        self.fp8_scales.as_ref()
    }

    /// The profile graphs of this bundle are written with.
    pub fn precision_profile(&self) -> Result<crate::precision::PrecisionProfile> {
        match &self.precision_profile {
            Some(p) => Ok(p.clone()),
            None => crate::precision::PrecisionProfile::builtin(self.manifest.precision),
        }
    }

    /// Start writing into `out` (created if missing). An existing bundle is extended: its
    /// manifest must be of this exporter version and the same precision.
    pub fn create(out: &Path, precision: Precision) -> Result<BundleWriter> {
        let created_out = !out.exists();
        if created_out {
            std::fs::create_dir_all(out).map_err(io_err(out))?;
        } else if !out.is_dir() {
            return Err(ExportError::Io {
                path: out.to_path_buf(),
                source: std::io::Error::other("--out exists and is not a directory"),
            });
        }
        let manifest = if out.join(MANIFEST).exists() {
            let m = Manifest::load(out).map_err(|e| ExportError::Model {
                component: "bundle",
                reason: e.to_string(),
            })?;
            if m.precision != precision {
                return Err(ExportError::Model {
                    component: "bundle",
                    reason: format!(
                        "{} holds a {} bundle; export {precision} into another --out directory",
                        out.display(),
                        m.precision
                    ),
                });
            }
            m
        } else {
            Manifest::new(precision)
        };
        let staging = out.join(format!(".staging-{}", std::process::id()));
        let cleanup = |e| {
            if created_out {
                let _ = std::fs::remove_dir_all(out);
            }
            e
        };
        std::fs::create_dir_all(&staging)
            .map_err(io_err(&staging))
            .map_err(cleanup)?;
        Ok(BundleWriter {
            out: out.to_path_buf(),
            staging,
            created_out,
            manifest,
            staged: Vec::new(),
            committed: false,
            precision_profile: None,
            fp8_scales: None,
        })
    }

    /// Where component files are written before the commit.
    pub fn staging_dir(&self) -> &Path {
        &self.staging
    }

    pub fn manifest_mut(&mut self) -> &mut Manifest {
        &mut self.manifest
    }

    /// Record a file written into the staging directory (relative name) to move at commit.
    pub fn stage(&mut self, name: impl Into<String>) {
        self.staged.push(name.into());
    }

    /// Copy `src` into the bundle as `name` (staged).
    pub fn copy_file(&mut self, src: &Path, name: &str) -> Result<()> {
        let dst = self.staging.join(name);
        if let Some(parent) = dst.parent() {
            std::fs::create_dir_all(parent).map_err(io_err(parent))?;
        }
        std::fs::copy(src, &dst).map_err(io_err(src))?;
        self.stage(name);
        Ok(())
    }

    /// Write `bytes` into the bundle as `name` (staged).
    pub fn write_file(&mut self, name: &str, bytes: &[u8]) -> Result<()> {
        let dst = self.staging.join(name);
        if let Some(parent) = dst.parent() {
            std::fs::create_dir_all(parent).map_err(io_err(parent))?;
        }
        std::fs::write(&dst, bytes).map_err(io_err(&dst))?;
        self.stage(name);
        Ok(())
    }

    /// Move every staged file into place, then write the manifest (atomically, last).
    pub fn commit(mut self) -> Result<Manifest> {
        for name in &self.staged {
            let (src, dst) = (self.staging.join(name), self.out.join(name));
            if let Some(parent) = dst.parent() {
                std::fs::create_dir_all(parent).map_err(io_err(parent))?;
            }
            std::fs::rename(&src, &dst).map_err(io_err(&dst))?;
        }
        let yaml = self.manifest.to_yaml()?;
        let tmp = self.staging.join(MANIFEST);
        std::fs::write(&tmp, yaml).map_err(io_err(&tmp))?;
        std::fs::rename(&tmp, self.out.join(MANIFEST)).map_err(io_err(&self.out))?;
        let _ = std::fs::remove_dir_all(&self.staging);
        self.committed = true;
        Ok(self.manifest.clone())
    }
}

impl Drop for BundleWriter {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_dir_all(&self.staging);
            if self.created_out {
                let _ = std::fs::remove_dir_all(&self.out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_round_trips_through_yaml() {
        let mut m = Manifest::new(Precision::Fp32);
        m.components.insert(
            Component::VaeDecoder,
            ComponentEntry {
                file: "vae_decoder.onnx".into(),
                data_file: Some("vae_decoder.onnx.data".into()),
                sha256: "ab".into(),
                inputs: vec![TensorSpec {
                    name: "latent_sample".into(),
                    dtype: "float32".into(),
                    dims: vec!["batch".into(), "4".into()],
                }],
                outputs: vec![],
                sources: vec![SourceFile {
                    path: "vae/x.safetensors".into(),
                    bytes: 3,
                    identity: "cd".into(),
                }],
            },
        );
        m.vae = Some(VaeSettings {
            latent_channels: 4,
            out_channels: 3,
            scaling_factor: 0.476986,
            spatial_compression_ratio: 8,
            temporal_compression_ratio: 4,
        });
        let y = m.to_yaml().unwrap();
        let back: Manifest = serde_saphyr::from_str(&y).unwrap();
        assert_eq!(back, m);
    }

    #[test]
    fn uncommitted_writer_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("bundle");
        {
            let w = BundleWriter::create(&out, Precision::Fp32).unwrap();
            std::fs::write(w.staging_dir().join("x.onnx"), b"partial").unwrap();
        }
        assert!(!out.exists());
    }

    #[test]
    fn other_exporter_version_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = Manifest::new(Precision::Fp32);
        m.exporter_version = "0.0.0-old".into();
        std::fs::write(dir.path().join(MANIFEST), m.to_yaml().unwrap()).unwrap();
        let e = Manifest::load(dir.path()).unwrap_err().to_string();
        assert!(
            e.contains("0.0.0-old") && e.contains(EXPORTER_VERSION),
            "{e}"
        );
    }
}
