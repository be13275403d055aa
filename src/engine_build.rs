//! `hyvideo-export build`: per-machine engines from a bundle, written beside the record the
//! runtime opens them by (`hyvideo::engine_set`).
//!
//! Like NVIDIA demoDiffusion: a shape preset (`configs/shapes/*.yaml`) becomes min/opt/max
//! shapes for every graph input — derived from the component specs of the bundle contract
//! (`hyvideo_bundle::profile::input_ranges`) — and the engines go to a directory named by what
//! they are bound to (device, ONNX Runtime / TensorRT versions, precision, profile hash), with
//! `engine.yaml` recording that plus the source graphs' hashes. Backends:
//! - `cpu`: ONNX Runtime's offline-optimised graph for this CPU (`optimized_model_filepath`),
//!   with attention fused into `com.microsoft.MultiHeadAttention` (`hyvideo::graph_load`);
//! - `tensorrt`: ONNX Runtime's TensorRT provider with the explicit profile, engine and timing
//!   caches and an EP-context model, so loading never rebuilds;
//! - `cuda`: the graphs rewritten to the CUDA provider's fused attention, weights linked in
//!   (the CUDA provider compiles nothing ahead).
//!
//! `engine.yaml` records each component's attention implementation.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use hyvideo::engine_set::{
    ENGINE_MANIFEST, EngineEntry, EngineManifest, EngineSet, EngineSetError, FORMAT,
    FORMAT_VERSION, bundle_manifest_sha, check_context_model, engine_dir_name, io,
};
use hyvideo::graph_load;
use hyvideo::text::{LlamaPrompts, MAX_SEQUENCE_LENGTH, TextError};
use hyvideo::vae_tiling;
use hyvideo_bundle::profile::{ProfileContext, ProfileError, Range3, ShapePreset, input_ranges};
use hyvideo_bundle::{AttentionKernel, Component, Manifest};
use hyvideo_engines::identity::{DeviceIdentity, detect, timing_cache_name};
use hyvideo_engines::profile::profile_hash;
use hyvideo_engines::{
    Backend, BackendKind, Engine, EngineError, InputProfile, SessionConfig, TensorRtOptions,
};

/// What can go wrong building engines.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    EngineSet(#[from] EngineSetError),
    #[error(transparent)]
    Profile(#[from] ProfileError),
    #[error(transparent)]
    Text(#[from] TextError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Manifest(#[from] hyvideo_bundle::ManifestError),
}

/// The engine cache folder of a TensorRT build, relative to its EP-context models.
pub const TRT_ENGINE_DIR: &str = "trt";

/// Prompt tokens the transformer's engine profile is tuned for (its optimum shape): it gets a
/// prompt's valid tokens only, and typical prompts are tens to ~100.
pub const TEXT_OPT_TOKENS: usize = 128;

/// The runtime's fixed sizes the profile rules need: prompt tokens 1 ..= 256 tuned for
/// [`TEXT_OPT_TOKENS`], decode tiles of at most diffusers' default tile (32 × 32 latents, 5
/// latent frames), and the Llama template's padded length from the bundle's tokenizer.
pub fn profile_context(bundle: &Path, manifest: &Manifest) -> Result<ProfileContext, BuildError> {
    let (sr, tr) = ProfileContext::ratios(manifest);
    let mut encoder_tokens = Vec::new();
    if manifest.components.contains_key(&Component::TextEncoder) {
        let dir = Component::TextEncoder
            .spec()
            .tokenizer
            .unwrap_or("tokenizer");
        let len = LlamaPrompts::load(&bundle.join(dir))?.encoder_len();
        encoder_tokens.push((Component::TextEncoder, len));
    }
    Ok(ProfileContext {
        spatial_ratio: sr,
        temporal_ratio: tr,
        prompt_tokens: Range3([
            1,
            TEXT_OPT_TOKENS.min(MAX_SEQUENCE_LENGTH),
            MAX_SEQUENCE_LENGTH,
        ]),
        tile_frames: vae_tiling::DEFAULT_TILE_FRAMES / tr + 1,
        tile_size: vae_tiling::DEFAULT_TILE_SIZE / sr,
        encoder_tokens,
        patch_size: transformer_patch_size(bundle),
    })
}

/// The transformer's `patch_size` from the bundle's copy of its config (HunyuanVideo's 2 when
/// the bundle has none: then no transformer stage is profiled either).
fn transformer_patch_size(bundle: &Path) -> usize {
    let path = bundle.join(Component::Transformer.spec().config_file());
    std::fs::read(&path)
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v.get("patch_size")?.as_u64())
        .map_or(2, |p| p as usize)
}

/// min / opt / max shapes of every input of every component of `manifest` for `preset`.
pub fn component_profiles(
    bundle: &Path,
    manifest: &Manifest,
    preset: &ShapePreset,
) -> Result<BTreeMap<Component, Vec<InputProfile>>, BuildError> {
    let ctx = profile_context(bundle, manifest)?;
    let mut out = BTreeMap::new();
    for (&component, entry) in &manifest.components {
        let profiles = input_ranges(component, entry, preset, &ctx)?
            .into_iter()
            .map(|r| InputProfile::new(r.name, r.min, r.opt, r.max))
            .collect::<Result<Vec<_>, _>>()?;
        out.insert(component, profiles);
    }
    Ok(out)
}

fn backend_for(kind: BackendKind, device_id: i32, options: TensorRtOptions) -> Backend {
    match kind {
        BackendKind::Cpu => Backend::Cpu,
        BackendKind::Cuda => Backend::Cuda { device_id },
        BackendKind::TensorRt => Backend::TensorRt { device_id, options },
    }
}

/// The TensorRT provider options of one component's build: its EP-context model at `context`,
/// the engine cache relative to it ([`TRT_ENGINE_DIR`]: ONNX Runtime then writes that relative
/// path into the context model and refuses absolute ones or `..` at load, and the build folder
/// can be renamed into place), a timing cache shared under `out_root` per compute capability
/// and TensorRT version, builder optimisation level 3 (demoDiffusion's), the explicit profile.
pub fn tensorrt_options(
    context: &Path,
    out_root: &Path,
    identity: &DeviceIdentity,
    profiles: &[InputProfile],
) -> TensorRtOptions {
    TensorRtOptions {
        engine_cache_dir: Some(PathBuf::from(TRT_ENGINE_DIR)),
        timing_cache_dir: Some(out_root.join(timing_cache_name(identity))),
        builder_optimization_level: Some(3),
        profiles: profiles.to_vec(),
        ep_context_file: Some(context.to_path_buf()),
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
) -> Result<BuildOutcome, BuildError> {
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
    let dir = out_root.join(engine_dir_name(&identity, precision, &hash));
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
                let options = tensorrt_options(
                    &staging.path().join(&ctx),
                    out_root,
                    &identity,
                    input_profiles,
                );
                let cfg = base
                    .clone()
                    .with_backend(backend_for(kind, device_id, options));
                Engine::load(&src, &cfg)?;
                check_context_model(&staging.path().join(&ctx))?;
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
    record.save(staging.path())?;
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

/// [`EngineSet::open`], or — when the engines were built for another machine or bundle and
/// `rebuild` is set — build them again here from the recorded shape preset (into a sibling
/// directory named for this machine) and open those.
pub fn open_or_rebuild(
    dir: &Path,
    bundle: &Path,
    base: &SessionConfig,
    device_id: i32,
    rebuild: bool,
) -> Result<EngineSet, BuildError> {
    match EngineSet::open(dir, bundle, base, device_id) {
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
            Ok(EngineSet::open(&new_dir, bundle, base, device_id)?)
        }
        other => Ok(other?),
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
    fn tensorrt_builds_keep_engine_caches_relative_to_their_context_models() {
        let id = DeviceIdentity {
            backend: BackendKind::TensorRt,
            device: "NVIDIA H100".into(),
            compute_capability: Some("9.0".into()),
            onnxruntime: "1.31.1".into(),
            tensorrt: Some("10.13.2".into()),
        };
        let staging = Path::new("/models/engines/.engines-x");
        let p = InputProfile::fixed("input_ids", vec![1, 77]).unwrap();
        let o = tensorrt_options(
            &staging.join("text_encoder_2_ctx.onnx"),
            Path::new("/models/engines"),
            &id,
            std::slice::from_ref(&p),
        );
        let cache = o.engine_cache_dir.unwrap();
        assert!(cache.is_relative() && !cache.to_string_lossy().contains(".."));
        assert_eq!(cache, Path::new(TRT_ENGINE_DIR));
        assert_eq!(
            o.ep_context_file.as_deref(),
            Some(staging.join("text_encoder_2_ctx.onnx").as_path())
        );
        let timing = o.timing_cache_dir.unwrap();
        assert!(
            timing.starts_with("/models/engines"),
            "shared across builds"
        );
        let name = timing.file_name().unwrap().to_string_lossy().into_owned();
        assert!(name.contains("sm90") && name.contains("10.13.2"), "{name}");
        assert_eq!(o.profiles, [p]);
    }
}
