//! Per-machine engines built from a bundle (`hyvideo-export build`), and choosing them at run
//! time (`--engines DIR`).
//!
//! Like NVIDIA demoDiffusion: a shape preset (`configs/shapes/*.yaml`) becomes min/opt/max
//! shapes for every graph input; the engines go to a directory named by what they are bound to
//! (device, ONNX Runtime / TensorRT versions, precision, profile hash), with `engine.yaml`
//! recording that plus the source graphs' hashes; a run refuses engines whose record does not
//! match the machine or the bundle. Backends:
//! - `cpu`: ONNX Runtime's offline-optimised graph for this CPU (`optimized_model_filepath`),
//!   with attention fused into `com.microsoft.MultiHeadAttention` ([`crate::graph_load`]);
//! - `tensorrt`: ONNX Runtime's TensorRT provider with the explicit profile, engine and timing
//!   caches and an EP-context model, so loading never rebuilds;
//! - `cuda`: the graphs rewritten to the CUDA provider's fused attention, weights linked in
//!   (the CUDA provider compiles nothing ahead).
//!
//! `engine.yaml` records each component's attention implementation.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use hyvideo_engines::identity::{DeviceIdentity, detect};
use hyvideo_engines::profile::profile_hash;
use hyvideo_engines::{
    Backend, BackendKind, Engine, EngineError, InputProfile, SessionConfig, TensorRtOptions,
};
use hyvideo_exporters::attention::AttentionKernel;
use hyvideo_exporters::bundle::{Component, Manifest, ManifestError, Precision, TensorSpec};
use serde::{Deserialize, Serialize};

use crate::graph_load;
use crate::text::{LlamaPrompts, TextError};
use crate::vae_tiling;

pub const ENGINE_MANIFEST: &str = "engine.yaml";
pub const FORMAT: &str = "hyvideo-engines";
pub const FORMAT_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum EngineSetError {
    #[error("{}: {reason}", .path.display())]
    Preset { path: PathBuf, reason: String },
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Text(#[from] TextError),
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

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> EngineSetError + '_ {
    move |source| EngineSetError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A min / opt / max triple as written in presets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Range3(pub [usize; 3]);

impl Range3 {
    fn check(&self, what: &str, path: &Path) -> Result<(), EngineSetError> {
        let [a, b, c] = self.0;
        if a == 0 || a > b || b > c {
            return Err(EngineSetError::Preset {
                path: path.to_path_buf(),
                reason: format!("{what}: need 1 <= min <= opt <= max, got [{a}, {b}, {c}]"),
            });
        }
        Ok(())
    }
}

/// A shape preset (`configs/shapes/*.yaml`): pixel resolutions (height, width; the first is
/// the optimum), frames and batch as min / opt / max.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShapePreset {
    pub name: String,
    pub resolutions: Vec<[usize; 2]>,
    pub frames: Range3,
    pub batch: Range3,
}

impl ShapePreset {
    /// Read and validate: resolutions multiples of 16, frames of the form 4k + 1.
    pub fn load(path: &Path) -> Result<ShapePreset, EngineSetError> {
        let text = std::fs::read_to_string(path).map_err(io(path))?;
        let p: ShapePreset = serde_saphyr::from_str(&text).map_err(|e| EngineSetError::Preset {
            path: path.to_path_buf(),
            reason: format!("not a shape preset (name, resolutions, frames, batch): {e}"),
        })?;
        p.validate(path)?;
        Ok(p)
    }

    fn validate(&self, path: &Path) -> Result<(), EngineSetError> {
        let bad = |reason: String| EngineSetError::Preset {
            path: path.to_path_buf(),
            reason,
        };
        if self.resolutions.is_empty() {
            return Err(bad("resolutions: give at least one [height, width]".into()));
        }
        for r in &self.resolutions {
            if r.iter().any(|v| *v == 0 || !v.is_multiple_of(16)) {
                return Err(bad(format!(
                    "resolution {r:?}: height and width must be positive multiples of 16"
                )));
            }
        }
        self.frames.check("frames", path)?;
        self.batch.check("batch", path)?;
        if let Some(f) = self.frames.0.iter().find(|f| !(**f - 1).is_multiple_of(4)) {
            return Err(bad(format!("frames: {f} is not of the form 4k + 1")));
        }
        Ok(())
    }
}

/// The number in a manifest dimension (`"16"`), or `None` for a named, dynamic one.
fn fixed(dims: &[String], i: usize) -> Option<usize> {
    dims.get(i).and_then(|d| d.parse().ok())
}

fn spec<'a>(inputs: &'a [TensorSpec], name: &str) -> Option<&'a TensorSpec> {
    inputs.iter().find(|s| s.name == name)
}

/// Prompt tokens the transformer's engine profile is tuned for (its optimum shape).
pub const TEXT_OPT_TOKENS: usize = 128;

/// min / opt / max shapes of every input of every component of `manifest` for `preset`.
/// Text encoders and the VAE run one prompt / one tile at a time (batch 1); the transformer
/// takes the preset's batch (2 with true CFG) and 1 ..= 256 prompt tokens, tuned for
/// [`TEXT_OPT_TOKENS`] (it gets only a prompt's valid tokens); the VAE decoder sees tiles of at most diffusers' default tile (32 × 32 latents,
/// 5 latent frames).
pub fn component_profiles(
    bundle: &Path,
    manifest: &Manifest,
    preset: &ShapePreset,
) -> Result<BTreeMap<Component, Vec<InputProfile>>, EngineSetError> {
    let (sr, tr) = manifest
        .vae
        .as_ref()
        .map(|v| (v.spatial_compression_ratio, v.temporal_compression_ratio))
        .unwrap_or((8, 4));
    let hs: Vec<usize> = preset.resolutions.iter().map(|r| r[0] / sr).collect();
    let ws: Vec<usize> = preset.resolutions.iter().map(|r| r[1] / sr).collect();
    let range = |v: &[usize]| {
        (
            *v.iter().min().unwrap_or(&1),
            v[0],
            *v.iter().max().unwrap_or(&1),
        )
    };
    let (h0, h1, h2) = range(&hs);
    let (w0, w1, w2) = range(&ws);
    let t = |f: usize| (f - 1) / tr + 1;
    let [f0, f1, f2] = preset.frames.0;
    let [b0, b1, b2] = preset.batch.0;
    let text_max = crate::text::MAX_SEQUENCE_LENGTH;
    // The transformer sees a prompt's valid tokens only: typical prompts are tens to ~100.
    let text_opt = TEXT_OPT_TOKENS.min(text_max);
    let mut out = BTreeMap::new();
    for (&component, entry) in &manifest.components {
        let dims = |name: &str, i: usize| -> Result<usize, EngineSetError> {
            spec(&entry.inputs, name)
                .and_then(|s| fixed(&s.dims, i))
                .ok_or_else(|| EngineSetError::Record {
                    path: bundle.join("manifest.yaml"),
                    reason: format!("{component}: input `{name}` has no fixed dimension {i}"),
                })
        };
        let p = |name: &str, min: Vec<usize>, opt: Vec<usize>, max: Vec<usize>| {
            InputProfile::new(name, min, opt, max)
        };
        let profiles = match component {
            Component::Transformer => {
                let c = dims("hidden_states", 1)?;
                let d = dims("encoder_hidden_states", 2)?;
                let pd = dims("pooled_projections", 1)?;
                let mut v = vec![
                    p(
                        "hidden_states",
                        vec![b0, c, t(f0), h0, w0],
                        vec![b1, c, t(f1), h1, w1],
                        vec![b2, c, t(f2), h2, w2],
                    )?,
                    p("timestep", vec![b0], vec![b1], vec![b2])?,
                    p(
                        "encoder_hidden_states",
                        vec![b0, 1, d],
                        vec![b1, text_opt, d],
                        vec![b2, text_max, d],
                    )?,
                    p(
                        "pooled_projections",
                        vec![b0, pd],
                        vec![b1, pd],
                        vec![b2, pd],
                    )?,
                ];
                // Bundles exported before the graph dropped its mask input.
                if spec(&entry.inputs, "encoder_attention_mask").is_some() {
                    v.push(p(
                        "encoder_attention_mask",
                        vec![b0, 1],
                        vec![b1, text_opt],
                        vec![b2, text_max],
                    )?);
                }
                if spec(&entry.inputs, "guidance").is_some() {
                    v.push(p("guidance", vec![b0], vec![b1], vec![b2])?);
                }
                v
            }
            Component::VaeDecoder => {
                let c = dims("latent_sample", 1)?;
                let tile = vae_tiling::DEFAULT_TILE_SIZE / sr;
                let frames = vae_tiling::DEFAULT_TILE_FRAMES / tr + 1;
                vec![p(
                    "latent_sample",
                    vec![1, c, 1, 1, 1],
                    vec![1, c, frames, tile, tile],
                    vec![1, c, frames, tile, tile],
                )?]
            }
            Component::TextEncoder => {
                let len = LlamaPrompts::load(&bundle.join("tokenizer"))?.encoder_len();
                vec![
                    InputProfile::fixed("input_ids", vec![1, len])?,
                    InputProfile::fixed("attention_mask", vec![1, len])?,
                ]
            }
            Component::TextEncoder2 => {
                vec![InputProfile::fixed(
                    "input_ids",
                    vec![1, crate::text::CLIP_MAX_LENGTH],
                )?]
            }
        };
        out.insert(component, profiles);
    }
    Ok(out)
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
    fn identity(&self) -> Result<DeviceIdentity, EngineError> {
        Ok(DeviceIdentity {
            backend: self.backend,
            device: self.device.clone(),
            compute_capability: self.compute_capability.clone(),
            onnxruntime: self.onnxruntime.clone(),
            tensorrt: self.tensorrt.clone(),
        })
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

fn short(s: &str) -> &str {
    &s[..s.len().min(12)]
}

/// sha256 of `<bundle>/manifest.yaml`: what engines record and are checked against.
fn bundle_manifest_sha(bundle: &Path) -> Result<String, EngineSetError> {
    let path = bundle.join("manifest.yaml");
    hyvideo_exporters::checkpoint::sha256_file(&path).map_err(|e| EngineSetError::Record {
        path: path.clone(),
        reason: e.to_string(),
    })
}

/// The directory name engines for `identity`, `precision` and profiles hash `profiles` go to.
pub fn engine_dir_name(identity: &DeviceIdentity, precision: &str, profiles: &str) -> String {
    format!("{}-{precision}-{}", identity.slug(), short(profiles))
}

fn backend_for(kind: BackendKind, device_id: i32, options: TensorRtOptions) -> Backend {
    match kind {
        BackendKind::Cpu => Backend::Cpu,
        BackendKind::Cuda => Backend::Cuda { device_id },
        BackendKind::TensorRt => Backend::TensorRt { device_id, options },
    }
}

/// What `build` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BuildOutcome {
    Built(PathBuf),
    UpToDate(PathBuf),
}

/// Build engines for every component of `bundle` under `out_root`, into a directory named by
/// [`engine_dir_name`]; written under a temporary name and renamed into place. An existing
/// matching directory is kept unless `rebuild`.
pub fn build(
    bundle: &Path,
    preset: &ShapePreset,
    base: &SessionConfig,
    device_id: i32,
    out_root: &Path,
    rebuild: bool,
    mut on_component: impl FnMut(Component),
) -> Result<BuildOutcome, EngineSetError> {
    let manifest = Manifest::load(bundle)?;
    let bundle_sha = bundle_manifest_sha(bundle)?;
    hyvideo_engines::ortlib::environment(base.ort_lib.as_deref())?;
    let kind = base.backend.kind();
    let identity = detect(kind, device_id.max(0) as usize)?;
    let profiles = component_profiles(bundle, &manifest, preset)?;
    let all: Vec<InputProfile> = profiles
        .iter()
        .flat_map(|(c, v)| {
            v.iter().map(move |p| InputProfile {
                name: format!("{c}/{}", p.name),
                ..p.clone()
            })
        })
        .collect();
    let hash = profile_hash(&all);
    let precision = manifest.precision;
    let dir = out_root.join(engine_dir_name(&identity, &precision.to_string(), &hash));
    if dir.join(ENGINE_MANIFEST).is_file()
        && !rebuild
        && let Ok(m) = EngineManifest::load(&dir)
        && m.mismatches(&identity, &bundle_sha).is_empty()
    {
        return Ok(BuildOutcome::UpToDate(dir));
    }
    std::fs::create_dir_all(out_root).map_err(io(out_root))?;
    let staging = tempfile::Builder::new()
        .prefix(".engines-")
        .tempdir_in(out_root)
        .map_err(io(out_root))?;
    let mut components = BTreeMap::new();
    for (&component, entry) in &manifest.components {
        on_component(component);
        let src = bundle.join(&entry.file);
        let name = component.name();
        let input_profiles = &profiles[&component];
        let mut attention = AttentionKernel::Standard;
        let file = match kind {
            BackendKind::Cpu => {
                // The optimised graph keeps the fused attention the load put in.
                let out = staging.path().join(format!("{name}.onnx"));
                let cfg = base.clone().with_save_optimized(Some(out));
                attention = graph_load::load(&src, &cfg)?.kernel();
                format!("{name}.onnx")
            }
            BackendKind::Cuda => {
                // The bundle's weights linked in; the graph rewritten to the CUDA attention.
                let (rewritten, report) = graph_load::rewrite(&src, base)?;
                attention = report.kernel();
                let files = std::iter::once(&entry.file).chain(entry.data_file.iter());
                for f in files.skip(usize::from(rewritten.is_some())) {
                    let (from, to) = (bundle.join(f), staging.path().join(f));
                    if std::fs::hard_link(&from, &to).is_err() {
                        std::fs::copy(&from, &to).map_err(io(&from))?;
                    }
                }
                if let Some(bytes) = rewritten {
                    let to = staging.path().join(&entry.file);
                    std::fs::write(&to, bytes).map_err(io(&to))?;
                }
                entry.file.clone()
            }
            BackendKind::TensorRt => {
                let ctx = format!("{name}_ctx.onnx");
                let options = TensorRtOptions {
                    engine_cache_dir: Some(staging.path().join("trt")),
                    timing_cache_dir: Some(out_root.join("timing_cache")),
                    builder_optimization_level: Some(3),
                    profiles: input_profiles.clone(),
                    ep_context_file: Some(staging.path().join(&ctx)),
                };
                let cfg = base
                    .clone()
                    .with_backend(backend_for(kind, device_id, options));
                Engine::load(&src, &cfg)?;
                ctx
            }
        };
        components.insert(
            component,
            EngineEntry {
                file,
                source_sha256: entry.sha256.clone(),
                profiles: input_profiles.clone(),
                attention,
            },
        );
    }
    let record = EngineManifest {
        format: FORMAT.into(),
        format_version: FORMAT_VERSION,
        backend: kind,
        device: identity.device.clone(),
        compute_capability: identity.compute_capability.clone(),
        onnxruntime: identity.onnxruntime.clone(),
        tensorrt: identity.tensorrt.clone(),
        precision,
        bundle_manifest_sha256: bundle_sha,
        shape_preset: preset.name.clone(),
        preset: preset.clone(),
        profile_sha256: hash,
        components,
    };
    let yaml = serde_saphyr::to_string(&record).map_err(|e| EngineSetError::Record {
        path: dir.join(ENGINE_MANIFEST),
        reason: e.to_string(),
    })?;
    let mpath = staging.path().join(ENGINE_MANIFEST);
    std::fs::write(&mpath, yaml).map_err(io(&mpath))?;
    let staged = staging.keep();
    if dir.exists() {
        let old = out_root.join(format!(
            ".old-{}",
            dir.file_name().unwrap_or_default().to_string_lossy()
        ));
        let _ = std::fs::remove_dir_all(&old);
        std::fs::rename(&dir, &old).map_err(io(&dir))?;
        std::fs::rename(&staged, &dir).map_err(io(&dir))?;
        let _ = std::fs::remove_dir_all(&old);
    } else {
        std::fs::rename(&staged, &dir).map_err(io(&dir))?;
    }
    Ok(BuildOutcome::Built(dir))
}

/// Where each component's model file is: the bundle's graph, or an engine built from it.
#[derive(Debug, Clone, Copy)]
pub struct ModelFiles<'a> {
    pub bundle: &'a Path,
    pub manifest: &'a Manifest,
    pub engines: Option<&'a EngineSet>,
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

    /// The model file of `component` (the engine's when one was built, else the bundle's).
    pub fn path(&self, component: Component) -> Result<PathBuf, ManifestError> {
        let entry = self.manifest.component(self.bundle, component)?;
        Ok(self
            .engines
            .and_then(|e| e.path(component))
            .unwrap_or_else(|| self.bundle.join(&entry.file)))
    }
}

/// Built engines checked against this machine and a bundle, ready to load.
#[derive(Debug, Clone)]
pub struct EngineSet {
    dir: PathBuf,
    manifest: EngineManifest,
}

impl EngineSet {
    /// [`open`](Self::open), or — when the engines were built for another machine or bundle
    /// and `rebuild` is set — build them again here from the recorded shape preset (into a
    /// sibling directory named for this machine) and open those.
    pub fn open_or_rebuild(
        dir: &Path,
        bundle: &Path,
        base: &SessionConfig,
        device_id: i32,
        rebuild: bool,
    ) -> Result<EngineSet, EngineSetError> {
        match Self::open(dir, bundle, base, device_id) {
            Err(EngineSetError::Mismatch { .. }) if rebuild => {
                let recorded = EngineManifest::load(dir)?;
                let root = dir.parent().unwrap_or(Path::new("."));
                let outcome = build(
                    bundle,
                    &recorded.preset,
                    base,
                    device_id,
                    root,
                    true,
                    |_| {},
                )?;
                let new_dir = match outcome {
                    BuildOutcome::Built(d) | BuildOutcome::UpToDate(d) => d,
                };
                Self::open(&new_dir, bundle, base, device_id)
            }
            other => other,
        }
    }

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

    fn repo() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
    }

    #[test]
    fn presets_parse_and_validate() {
        let p = ShapePreset::load(&repo().join("configs/shapes/720p.yaml")).unwrap();
        assert_eq!(p.resolutions[0], [720, 1280]);
        assert_eq!(p.frames, Range3([1, 129, 129]));
        ShapePreset::load(&repo().join("configs/shapes/540p.yaml")).unwrap();
        let dir = tempfile::tempdir().unwrap();
        for (text, needle) in [
            (
                "name: x\nresolutions: [[720, 1270]]\nframes: [1, 9, 9]\nbatch: [1, 1, 1]\n",
                "multiples of 16",
            ),
            (
                "name: x\nresolutions: [[720, 1280]]\nframes: [1, 8, 9]\nbatch: [1, 1, 1]\n",
                "4k + 1",
            ),
            (
                "name: x\nresolutions: [[720, 1280]]\nframes: [1, 9, 9]\nbatch: [2, 1, 1]\n",
                "batch",
            ),
            (
                "name: x\nresolutions: []\nframes: [1, 9, 9]\nbatch: [1, 1, 1]\n",
                "at least one",
            ),
            ("nonsense", "not a shape preset"),
        ] {
            let f = dir.path().join("p.yaml");
            std::fs::write(&f, text).unwrap();
            let e = ShapePreset::load(&f).unwrap_err().to_string();
            assert!(e.contains(needle) && e.contains("p.yaml"), "{e}");
        }
    }

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
            engine_dir_name(&id, "fp16", &"b".repeat(64)),
            "tensorrt-nvidia-h100-sm90-trt10.13.2-ort1.31.1-fp16-bbbbbbbbbbbb"
        );
    }
}
