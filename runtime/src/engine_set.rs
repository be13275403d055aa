//! Engines at run time (`--engines DIR`): the record `engine.yaml` that an engine build
//! (`hyvideo-export build`) writes beside the engines — the device, ONNX Runtime / TensorRT
//! versions, precision, shape preset and profiles, the bundle manifest's hash and, per
//! component, its model file, source graph hash, input profiles and attention kernel — and
//! opening a directory of them: refused, naming every difference, when the record does not
//! match this machine or the bundle; each input shape checked against its profile before a run.
//! Mirrors NVIDIA demoDiffusion's engine directories, as one typed record.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use hyvideo_bundle::profile::ShapePreset;
use hyvideo_bundle::{AttentionKernel, Component, MANIFEST, Manifest, ManifestError, Precision};
use hyvideo_engines::identity::{DeviceIdentity, detect};
use hyvideo_engines::{BackendKind, EngineError, InputProfile, SessionConfig};
use hyvideo_onnx::proto::ModelProto;
use prost::Message;
use serde::{Deserialize, Serialize};

pub const ENGINE_MANIFEST: &str = "engine.yaml";
pub const FORMAT: &str = "hyvideo-engines";
pub const FORMAT_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum EngineSetError {
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("{}: {source}", .path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {reason}", .path.display())]
    Record { path: PathBuf, reason: String },
    #[error(
        "{}: these engines were built for another machine or bundle:\n  {}\nrebuild them with \
         `hyvideo-export build --bundle <bundle> --backend {backend} --shapes <preset> --rebuild`, \
         or pass --rebuild to this command",
        .path.display(), .differences.join("\n  ")
    )]
    Mismatch {
        path: PathBuf,
        backend: String,
        differences: Vec<String>,
    },
    #[error(
        "{component} input `{input}` of shape {shape:?} is outside the engine's profile \
         (min {min:?}, max {max:?}): build engines with a shape preset that covers it"
    )]
    OutOfProfile {
        component: Component,
        input: String,
        shape: Vec<usize>,
        min: Vec<usize>,
        max: Vec<usize>,
    },
}

/// An I/O error on `path`.
pub fn io(path: &Path) -> impl FnOnce(std::io::Error) -> EngineSetError + '_ {
    move |source| EngineSetError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// One built component.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EngineEntry {
    /// The model file to load, relative to the engine directory.
    pub file: String,
    /// sha256 of the bundle graph it was built from.
    pub source_sha256: String,
    pub profiles: Vec<InputProfile>,
    /// The attention the engine runs: `multi_head_attention` (ONNX Runtime's fused operator,
    /// CPU / CUDA builds) or `standard` (TensorRT fuses the bundle's pattern itself; records
    /// written before this field was kept are standard too).
    #[serde(default)]
    pub attention: AttentionKernel,
}

/// `engine.yaml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EngineManifest {
    pub format: String,
    pub format_version: u32,
    pub backend: BackendKind,
    pub device: String,
    pub compute_capability: Option<String>,
    pub onnxruntime: String,
    pub tensorrt: Option<String>,
    pub precision: Precision,
    pub bundle_manifest_sha256: String,
    pub shape_preset: String,
    /// The preset itself, so the engines can be rebuilt for another machine (`--rebuild`).
    pub preset: ShapePreset,
    pub profile_sha256: String,
    pub components: BTreeMap<Component, EngineEntry>,
}

impl EngineManifest {
    /// The machine these engines were built on.
    pub fn identity(&self) -> Result<DeviceIdentity, EngineError> {
        Ok(DeviceIdentity {
            backend: self.backend,
            device: self.device.clone(),
            compute_capability: self.compute_capability.clone(),
            onnxruntime: self.onnxruntime.clone(),
            tensorrt: self.tensorrt.clone(),
        })
    }

    /// Write the record into `dir` (a temporary name renamed into place).
    pub fn save(&self, dir: &Path) -> Result<(), EngineSetError> {
        let path = dir.join(ENGINE_MANIFEST);
        let yaml = serde_saphyr::to_string(self).map_err(|e| EngineSetError::Record {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        crate::atomic::write_file(&path, yaml.as_bytes()).map_err(io(&path))
    }

    pub fn load(dir: &Path) -> Result<EngineManifest, EngineSetError> {
        let path = dir.join(ENGINE_MANIFEST);
        let text = std::fs::read_to_string(&path).map_err(io(&path))?;
        let m: EngineManifest =
            serde_saphyr::from_str(&text).map_err(|e| EngineSetError::Record {
                path: path.clone(),
                reason: format!("not an engine record: {e}"),
            })?;
        if m.format != FORMAT || m.format_version != FORMAT_VERSION {
            return Err(EngineSetError::Record {
                path,
                reason: format!(
                    "format {} v{} (this hyvideo reads {FORMAT} v{FORMAT_VERSION})",
                    m.format, m.format_version
                ),
            });
        }
        Ok(m)
    }

    /// Why these engines cannot run here with `bundle_sha` (empty: they can).
    pub fn mismatches(&self, now: &DeviceIdentity, bundle_sha: &str) -> Vec<String> {
        let mut out = match self.identity() {
            Ok(id) => id.differences(now),
            Err(e) => vec![e.to_string()],
        };
        if self.bundle_manifest_sha256 != bundle_sha {
            out.push(format!(
                "bundle: built from manifest sha256 {}, the bundle given has {}",
                short(&self.bundle_manifest_sha256),
                short(bundle_sha)
            ));
        }
        out
    }
}

/// The first 12 characters of a hash, for names and messages.
pub fn short(s: &str) -> &str {
    &s[..s.len().min(12)]
}

/// The directory name engines for `identity`, `precision` and profiles hash `profiles` go to.
pub fn engine_dir_name(identity: &DeviceIdentity, precision: Precision, profiles: &str) -> String {
    format!("{}-{precision}-{}", identity.slug(), short(profiles))
}

/// sha256 of `<bundle>/manifest.yaml`: what engines record and are checked against.
pub fn bundle_manifest_sha(bundle: &Path) -> Result<String, EngineSetError> {
    let path = bundle.join(MANIFEST);
    hyvideo_bundle::hash::sha256_file(&path).map_err(|source| EngineSetError::Io { path, source })
}

/// Where each component's model file is: the bundle's graph, or an engine built from it.
#[derive(Debug, Clone, Copy)]
pub struct ModelFiles<'a> {
    pub bundle: &'a Path,
    pub manifest: &'a Manifest,
    pub engines: Option<&'a EngineSet>,
}

/// Why a component's model file cannot be chosen.
#[derive(Debug, thiserror::Error)]
pub enum ModelFileError {
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error(
        "{component}: the TensorRT backend runs engines built ahead for this bundle's shapes \
         (`hyvideo-export build --bundle {} --backend tensorrt --shapes <preset>`, then pass \
         their directory as the engines); from the bundle's graph alone it would build an engine \
         at the first call and again for every new input shape"
        , .bundle.display()
    )]
    TensorRtWithoutEngines {
        component: Component,
        bundle: PathBuf,
    },
}

impl<'a> ModelFiles<'a> {
    /// The bundle's own graphs.
    pub fn bundle(bundle: &'a Path, manifest: &'a Manifest) -> ModelFiles<'a> {
        ModelFiles {
            bundle,
            manifest,
            engines: None,
        }
    }

    /// The model file of `component` on `backend`: the engine built for it when the engines
    /// were built for that backend, else the bundle's graph (e.g. `--vae-backend cuda` beside
    /// TensorRT engines runs the VAE from the bundle, never a TensorRT EP-context model on the
    /// CUDA provider). TensorRT without a TensorRT engine is refused.
    pub fn path(
        &self,
        component: Component,
        backend: BackendKind,
    ) -> Result<PathBuf, ModelFileError> {
        let entry = self.manifest.component(self.bundle, component)?;
        let engine = self
            .engines
            .filter(|e| e.manifest.backend == backend)
            .and_then(|e| e.path(component));
        match engine {
            Some(p) => Ok(p),
            None if backend == BackendKind::TensorRt => {
                Err(ModelFileError::TensorRtWithoutEngines {
                    component,
                    bundle: self.bundle.to_path_buf(),
                })
            }
            None => Ok(self.bundle.join(&entry.file)),
        }
    }
}

/// The engine paths an EP-context model (`<component>_ctx.onnx`, TensorRT) refers to: each
/// `EPContext` node's `ep_cache_context` when it is a path (`embed_mode` 0).
pub fn context_engine_paths(model: &ModelProto) -> Vec<String> {
    let Some(g) = model.graph.as_ref() else {
        return vec![];
    };
    g.node
        .iter()
        .filter(|n| n.op_type == "EPContext")
        .filter(|n| {
            let embed = n.attribute.iter().find(|a| a.name == "embed_mode");
            embed.and_then(|a| a.i).unwrap_or(0) == 0
        })
        .filter_map(|n| n.attribute.iter().find(|a| a.name == "ep_cache_context"))
        .filter_map(|a| a.s.as_ref())
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .collect()
}

/// Check that the EP-context model at `path` refers to its engines as ONNX Runtime will accept
/// them when it loads it: relative to the model's own folder, without `..` (ONNX Runtime refuses
/// absolute paths and any `..` for security), and present there.
pub fn check_context_model(path: &Path) -> Result<(), EngineSetError> {
    let bytes = std::fs::read(path).map_err(io(path))?;
    let bad = |reason: String| EngineSetError::Record {
        path: path.to_path_buf(),
        reason,
    };
    let model =
        ModelProto::decode(bytes.as_slice()).map_err(|e| bad(format!("not an ONNX model: {e}")))?;
    let engines = context_engine_paths(&model);
    if engines.is_empty() {
        return Err(bad("no EPContext node refers to an engine file".into()));
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    for e in engines {
        if Path::new(&e).is_absolute() || e.contains("..") {
            return Err(bad(format!(
                "ep_cache_context `{e}` is absolute or contains `..`, which ONNX Runtime refuses: \
                 rebuild the engines with this hyvideo (engine caches relative to the model)"
            )));
        }
        if !dir.join(&e).is_file() {
            return Err(bad(format!(
                "ep_cache_context `{e}`: no such engine beside the model ({})",
                dir.join(&e).display()
            )));
        }
    }
    Ok(())
}

/// Built engines checked against this machine and a bundle, ready to load.
#[derive(Debug, Clone)]
pub struct EngineSet {
    dir: PathBuf,
    manifest: EngineManifest,
}

impl EngineSet {
    /// Open `dir` for `bundle` on `base`'s backend; refuse engines built for another device,
    /// runtime version or bundle, naming every difference.
    pub fn open(
        dir: &Path,
        bundle: &Path,
        base: &SessionConfig,
        device_id: i32,
    ) -> Result<EngineSet, EngineSetError> {
        let manifest = EngineManifest::load(dir)?;
        hyvideo_engines::ortlib::environment(base.ort_lib.as_deref())?;
        let now = detect(base.backend.kind(), device_id.max(0) as usize)?;
        let differences = manifest.mismatches(&now, &bundle_manifest_sha(bundle)?);
        if !differences.is_empty() {
            return Err(EngineSetError::Mismatch {
                path: dir.to_path_buf(),
                backend: manifest.backend.to_string(),
                differences,
            });
        }
        if manifest.backend == BackendKind::TensorRt {
            for e in manifest.components.values() {
                check_context_model(&dir.join(&e.file))?;
            }
        }
        Ok(EngineSet {
            dir: dir.to_path_buf(),
            manifest,
        })
    }

    pub fn manifest(&self) -> &EngineManifest {
        &self.manifest
    }

    /// The model file of `component`.
    pub fn path(&self, component: Component) -> Option<PathBuf> {
        self.manifest
            .components
            .get(&component)
            .map(|e| self.dir.join(&e.file))
    }

    /// Refuse an input shape outside the profile the engine was built for.
    pub fn check_shape(
        &self,
        component: Component,
        input: &str,
        shape: &[usize],
    ) -> Result<(), EngineSetError> {
        let Some(p) = self
            .manifest
            .components
            .get(&component)
            .and_then(|e| e.profiles.iter().find(|p| p.name == input))
        else {
            return Ok(());
        };
        if p.admits(shape) {
            Ok(())
        } else {
            Err(EngineSetError::OutOfProfile {
                component,
                input: input.into(),
                shape: shape.to_vec(),
                min: p.min.clone(),
                max: p.max.clone(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyvideo_bundle::profile::Range3;

    #[test]
    fn engine_records_detect_mismatches() {
        let id = DeviceIdentity {
            backend: BackendKind::TensorRt,
            device: "NVIDIA H100".into(),
            compute_capability: Some("9.0".into()),
            onnxruntime: "1.31.1".into(),
            tensorrt: Some("10.13.2".into()),
        };
        let m = EngineManifest {
            format: FORMAT.into(),
            format_version: FORMAT_VERSION,
            backend: BackendKind::TensorRt,
            device: id.device.clone(),
            compute_capability: id.compute_capability.clone(),
            onnxruntime: id.onnxruntime.clone(),
            tensorrt: id.tensorrt.clone(),
            precision: Precision::Fp16,
            bundle_manifest_sha256: "a".repeat(64),
            shape_preset: "720p".into(),
            preset: ShapePreset {
                name: "720p".into(),
                resolutions: vec![[720, 1280]],
                frames: Range3([1, 129, 129]),
                batch: Range3([1, 1, 2]),
            },
            profile_sha256: "b".repeat(64),
            components: BTreeMap::new(),
        };
        assert!(m.mismatches(&id, &"a".repeat(64)).is_empty());
        let mut other = id.clone();
        other.tensorrt = Some("10.9.0".into());
        let d = m.mismatches(&other, &"c".repeat(64));
        assert_eq!(d.len(), 2, "{d:?}");
        assert!(d.iter().any(|x| x.contains("TensorRT: built for 10.13.2")));
        assert!(d.iter().any(|x| x.contains("bundle")));
        assert_eq!(
            engine_dir_name(&id, Precision::Fp16, &"b".repeat(64)),
            "tensorrt-nvidia-h100-sm90-trt10.13.2-ort1.31.1-fp16-bbbbbbbbbbbb"
        );
    }

    /// An EP-context model whose one node refers to `engine` (as TensorRT's EP writes it).
    fn context_model(dir: &Path, engine: &str) -> PathBuf {
        use hyvideo_onnx::proto::{AttributeProto, GraphProto, NodeProto};
        let attr = |name: &str, i: Option<i64>, s: Option<&str>| AttributeProto {
            name: name.into(),
            i,
            s: s.map(|s| s.as_bytes().to_vec()),
            ..Default::default()
        };
        let node = NodeProto {
            op_type: "EPContext".into(),
            domain: "com.microsoft".into(),
            attribute: vec![
                attr("embed_mode", Some(0), None),
                attr("ep_cache_context", None, Some(engine)),
            ],
            ..Default::default()
        };
        let model = ModelProto {
            graph: Some(GraphProto {
                node: vec![node],
                ..Default::default()
            }),
            ..Default::default()
        };
        let path = dir.join("transformer_ctx.onnx");
        std::fs::write(&path, model.encode_to_vec()).unwrap();
        path
    }

    #[test]
    fn context_models_must_refer_to_engines_as_onnx_runtime_accepts_them() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("trt")).unwrap();
        std::fs::write(dir.path().join("trt/engine_sm90.engine"), b"x").unwrap();
        let ok = context_model(dir.path(), "trt/engine_sm90.engine");
        assert_eq!(
            context_engine_paths(
                &ModelProto::decode(std::fs::read(&ok).unwrap().as_slice()).unwrap()
            ),
            ["trt/engine_sm90.engine"]
        );
        check_context_model(&ok).unwrap();
        let abs = dir.path().join("trt/engine_sm90.engine");
        for (engine, needle) in [
            (abs.to_str().unwrap(), "absolute"),
            (
                "../elsewhere/trt/engine_sm90.engine",
                "absolute or contains `..`",
            ),
            ("trt/missing.engine", "no such engine"),
        ] {
            let p = context_model(dir.path(), engine);
            let e = check_context_model(&p).unwrap_err().to_string();
            assert!(
                e.contains(needle) && e.contains("transformer_ctx.onnx"),
                "{e}"
            );
        }
    }

    fn manifest_with_transformer() -> Manifest {
        let mut m = Manifest::new(Precision::Fp16);
        m.components.insert(
            Component::Transformer,
            hyvideo_bundle::ComponentEntry {
                file: "transformer.onnx".into(),
                data_file: None,
                sha256: String::new(),
                inputs: vec![],
                outputs: vec![],
                sources: vec![],
            },
        );
        m
    }

    fn engines_for(backend: BackendKind) -> EngineSet {
        let mut components = BTreeMap::new();
        components.insert(
            Component::Transformer,
            EngineEntry {
                file: "transformer_ctx.onnx".into(),
                source_sha256: String::new(),
                profiles: vec![],
                attention: AttentionKernel::Standard,
            },
        );
        EngineSet {
            dir: PathBuf::from("/engines"),
            manifest: EngineManifest {
                format: FORMAT.into(),
                format_version: FORMAT_VERSION,
                backend,
                device: "d".into(),
                compute_capability: None,
                onnxruntime: "1.31.1".into(),
                tensorrt: None,
                precision: Precision::Fp16,
                bundle_manifest_sha256: String::new(),
                shape_preset: "p".into(),
                preset: ShapePreset {
                    name: "p".into(),
                    resolutions: vec![[720, 1280]],
                    frames: Range3([1, 129, 129]),
                    batch: Range3([1, 1, 2]),
                },
                profile_sha256: String::new(),
                components,
            },
        }
    }

    #[test]
    fn a_component_on_another_backend_than_the_engines_runs_the_bundle_graph() {
        let m = manifest_with_transformer();
        let bundle = Path::new("/bundle");
        let trt = engines_for(BackendKind::TensorRt);
        let files = ModelFiles {
            bundle,
            manifest: &m,
            engines: Some(&trt),
        };
        let t = Component::Transformer;
        assert_eq!(
            files.path(t, BackendKind::TensorRt).unwrap(),
            Path::new("/engines/transformer_ctx.onnx")
        );
        assert_eq!(
            files.path(t, BackendKind::Cuda).unwrap(),
            Path::new("/bundle/transformer.onnx"),
            "never a TensorRT context model on the CUDA provider"
        );
        let cpu = engines_for(BackendKind::Cpu);
        let files = ModelFiles {
            engines: Some(&cpu),
            ..files
        };
        assert_eq!(
            files.path(t, BackendKind::Cpu).unwrap(),
            Path::new("/engines/transformer_ctx.onnx")
        );
        // TensorRT without TensorRT engines is refused, naming the build command.
        for engines in [None, Some(&cpu)] {
            let files = ModelFiles { engines, ..files };
            let e = files
                .path(t, BackendKind::TensorRt)
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("hyvideo-export build --bundle /bundle --backend tensorrt"),
                "{e}"
            );
        }
        assert!(matches!(
            files.path(Component::VaeDecoder, BackendKind::Cpu),
            Err(ModelFileError::Manifest(_))
        ));
    }
}
