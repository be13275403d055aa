//! `manifest.yaml`, the bundle's record: format and exporter version, precision, and per
//! component its graph files, hashes, the graph's actual I/O (checked against its spec when it
//! was written) and the source checkpoint files' identities. Mirrors NVIDIA demoDiffusion's
//! per-model export records, as one typed YAML file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::components::Component;
use crate::precision::Precision;
use crate::spec::TensorSpec;

/// The manifest's file name in a bundle.
pub const MANIFEST: &str = "manifest.yaml";
pub const FORMAT: &str = "hyvideo-bundle";
/// Bumped when the contract changes in a way older readers or writers get wrong (2: graph I/O
/// read from the graphs and checked against the component specs; the transformer has no
/// `encoder_attention_mask` input).
pub const FORMAT_VERSION: u32 = 2;
/// The exporter version written into bundles; the runtime refuses bundles of other versions.
pub const EXPORTER_VERSION: &str = env!("CARGO_PKG_VERSION");

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

impl ComponentEntry {
    /// The recorded input `name`.
    pub fn input(&self, name: &str) -> Option<&TensorSpec> {
        self.inputs.iter().find(|s| s.name == name)
    }
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
    #[error("writing the manifest: {0}")]
    Serialize(String),
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
        // The version first: an older manifest may not parse as this one.
        #[derive(Deserialize)]
        struct Header {
            format: String,
            format_version: u32,
            exporter_version: String,
        }
        let invalid = |e: serde_saphyr::Error| ManifestError::Invalid {
            path: path.clone(),
            reason: e.to_string(),
        };
        let h: Header = serde_saphyr::from_str(&text).map_err(invalid)?;
        if h.format != FORMAT {
            return Err(ManifestError::Invalid {
                path,
                reason: format!("format is `{}`, expected `{FORMAT}`", h.format),
            });
        }
        if h.exporter_version != EXPORTER_VERSION || h.format_version != FORMAT_VERSION {
            return Err(ManifestError::VersionMismatch {
                path,
                found: h.exporter_version,
                expected: EXPORTER_VERSION.into(),
                found_format: h.format_version,
                expected_format: FORMAT_VERSION,
            });
        }
        serde_saphyr::from_str(&text).map_err(invalid)
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

    pub fn to_yaml(&self) -> Result<String, ManifestError> {
        serde_saphyr::to_string(self).map_err(|e| ManifestError::Serialize(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::precision::TensorType;

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
                    dtype: TensorType::Float32,
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
        assert!(y.contains("dtype: float32"), "{y}");
        let back: Manifest = serde_saphyr::from_str(&y).unwrap();
        assert_eq!(back, m);
    }

    #[test]
    fn other_versions_are_refused_before_their_body_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = Manifest::new(Precision::Fp32);
        m.exporter_version = "0.0.0-old".into();
        std::fs::write(dir.path().join(MANIFEST), m.to_yaml().unwrap()).unwrap();
        let e = Manifest::load(dir.path()).unwrap_err().to_string();
        assert!(
            e.contains("0.0.0-old") && e.contains(EXPORTER_VERSION),
            "{e}"
        );
        // A format-1 manifest (dtype strings the new contract does not read) says "re-export".
        let old = m
            .to_yaml()
            .unwrap()
            .replace("0.0.0-old", EXPORTER_VERSION)
            .replace(
                &format!("format_version: {FORMAT_VERSION}"),
                "format_version: 1",
            );
        std::fs::write(dir.path().join(MANIFEST), old + "extra_field_of_v1: 1\n").unwrap();
        let e = Manifest::load(dir.path()).unwrap_err();
        assert!(
            matches!(
                e,
                ManifestError::VersionMismatch {
                    found_format: 1,
                    ..
                }
            ),
            "{e}"
        );
        assert!(matches!(
            Manifest::load(&dir.path().join("nothing")),
            Err(ManifestError::Missing(_))
        ));
    }
}
