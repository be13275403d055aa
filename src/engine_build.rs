//! `hyvideo-export build`: per-machine engines from a bundle, written beside the record the
//! runtime opens them by (`hyvideo::engine_set`).
//!
//! Like NVIDIA demoDiffusion: a shape preset (`configs/shapes/*.yaml`) becomes min/opt/max
//! shapes for every graph input — derived from the component specs of the bundle contract
//! (`hyvideo_bundle::profile::input_ranges`) — and the engines go to a directory named by what
//! they are bound to (device, ONNX Runtime / TensorRT versions, precision, profile hash), with
//! `engine.yaml` recording that plus the source graphs' hashes. Every component of the bundle
//! gets an engine, the transformer's four stage graphs (step caching) as well. Backends:
//! - `cpu`: ONNX Runtime's offline-optimised graph for this CPU (`optimized_model_filepath`),
//!   with attention fused into `com.microsoft.MultiHeadAttention` (`hyvideo::graph_load`).
//!   ONNX Runtime writes each optimised graph's weights into a data file of its own, so graphs
//!   whose bundle graphs share a weight file (the transformer and its stages) are made to share
//!   one in the engines too (`SharedWeights`): one copy of the weights, not two;
//! - `tensorrt`: ONNX Runtime's TensorRT provider with the explicit profile, engine and timing
//!   caches and an EP-context model per component (`<component>_ctx.onnx`), so loading never
//!   rebuilds;
//! - `cuda`: the graphs rewritten to the CUDA provider's fused attention, the bundle's weight
//!   files hard-linked in (copied across file systems), each once however many graphs read it
//!   (the CUDA provider compiles nothing ahead).
//!
//! `engine.yaml` records each component's attention implementation.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use hyvideo::engine_set::{
    ENGINE_MANIFEST, EngineEntry, EngineManifest, EngineSet, EngineSetError, FORMAT,
    FORMAT_VERSION, bundle_manifest_sha, check_context_model, engine_dir_name, io,
};
use hyvideo::graph_load;
use hyvideo::image_prompt::{self, ImageEmbedInterleave};
use hyvideo::text::{LlamaPrompts, MAX_SEQUENCE_LENGTH, TextError};
use hyvideo::vae_tiling;
use hyvideo_bundle::profile::{ProfileContext, ProfileError, Range3, ShapePreset, input_ranges};
use hyvideo_bundle::{AttentionKernel, Component, Manifest};
use hyvideo_engines::identity::{DeviceIdentity, detect, timing_cache_name};
use hyvideo_engines::profile::profile_hash;
use hyvideo_engines::{
    Backend, BackendKind, Engine, EngineError, InputProfile, SessionConfig, TensorRtOptions,
};
use hyvideo_onnx::proto::{DataLocation, ModelProto, StringStringEntryProto, TensorProto};
use prost::Message;

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
    #[error("{}: {reason}", .path.display())]
    Graph { path: PathBuf, reason: String },
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
    // An image-to-video bundle (LLaVA): the I2V template, expanded around its image, and the
    // transformer's prompt rows include the image rows (the negative prompt's at interleave 2).
    let image_to_video = manifest.components.contains_key(&Component::VisionEncoder);
    if manifest.components.contains_key(&Component::TextEncoder) {
        let dir = bundle.join(
            Component::TextEncoder
                .spec()
                .tokenizer
                .unwrap_or("tokenizer"),
        );
        let len = match image_to_video {
            true => image_prompt::expanded_len(
                LlamaPrompts::with_crop_start(
                    &dir,
                    image_prompt::I2V_PROMPT_TEMPLATE,
                    image_prompt::I2V_CROP_START,
                    MAX_SEQUENCE_LENGTH,
                )?
                .encoder_len(),
            ),
            false => LlamaPrompts::load(&dir)?.encoder_len(),
        };
        encoder_tokens.push((Component::TextEncoder, len));
    }
    let prompt_tokens = match image_to_video {
        true => {
            let kind = hyvideo::generation::bundle_image_condition(bundle).unwrap_or_default();
            let rows = |i| image_prompt::max_rows(i, TEXT_OPT_TOKENS.min(MAX_SEQUENCE_LENGTH) + 4);
            Range3([
                1,
                rows(ImageEmbedInterleave::default_for(kind)),
                image_prompt::max_rows(ImageEmbedInterleave::NEGATIVE, MAX_SEQUENCE_LENGTH),
            ])
        }
        false => Range3([
            1,
            TEXT_OPT_TOKENS.min(MAX_SEQUENCE_LENGTH),
            MAX_SEQUENCE_LENGTH,
        ]),
    };
    Ok(ProfileContext {
        spatial_ratio: sr,
        temporal_ratio: tr,
        prompt_tokens,
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

/// The EP-context model of `component` in a TensorRT build: one per component (the
/// transformer's stages included), beside the engine cache folder they all share.
pub fn context_model_name(component: Component) -> String {
    format!("{}_ctx.onnx", component.name())
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
    let mut shared = SharedWeights::default();
    let mut files = StagedFiles::new(staging.path());
    for (&component, entry) in &manifest.components {
        on_component(component);
        let src = bundle.join(&entry.file);
        let name = component.name();
        let input_profiles = &profiles[&component];
        let mut attention = AttentionKernel::Standard;
        let file = match kind {
            BackendKind::Cpu => {
                // The optimised graph keeps the fused attention the load put in.
                let file = format!("{name}.onnx");
                let cfg = base
                    .clone()
                    .with_save_optimized(Some(staging.path().join(&file)));
                attention = graph_load::load(&src, &cfg)?.kernel();
                if let Some(data) = &entry.data_file {
                    shared.add(staging.path(), &file, data)?;
                }
                file
            }
            BackendKind::Cuda => {
                // The bundle's weights linked in; the graph rewritten to the CUDA attention.
                let (rewritten, report) = graph_load::rewrite(&src, base)?;
                attention = report.kernel();
                match rewritten {
                    Some(bytes) => files.write(&entry.file, &bytes)?,
                    None => files.link(bundle, &entry.file)?,
                }
                if let Some(data) = &entry.data_file {
                    files.link(bundle, data)?;
                }
                entry.file.clone()
            }
            BackendKind::TensorRt => {
                let ctx = context_model_name(component);
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

/// The files a CUDA build puts into its staging directory: bundle files hard-linked (copied
/// across file systems) and rewritten graphs written, each name once. The transformer and its
/// four stage graphs all read `transformer.onnx.data`; it is linked for the first and found
/// there by the others. Nothing is ever written or copied over a name already there: it can
/// be a hard link to the bundle's own file, and copying a file onto a link to itself
/// truncates it.
#[derive(Debug)]
struct StagedFiles {
    dir: PathBuf,
    /// Each name put in, and whether it is the bundle's file (linked) or a rewritten graph.
    files: BTreeMap<String, bool>,
}

impl StagedFiles {
    fn new(dir: &Path) -> StagedFiles {
        StagedFiles {
            dir: dir.to_path_buf(),
            files: BTreeMap::new(),
        }
    }

    /// Link the bundle's `name` in, unless it is in already.
    fn link(&mut self, bundle: &Path, name: &str) -> Result<(), BuildError> {
        match self.files.get(name) {
            Some(true) => return Ok(()),
            Some(false) => return Err(self.clash(name, "a rewritten graph is there")),
            None => {}
        }
        let (from, to) = (bundle.join(name), self.dir.join(name));
        match std::fs::hard_link(&from, &to) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(io(&to)(e).into());
            }
            Err(_) => {
                std::fs::copy(&from, &to).map_err(io(&from))?;
            }
        }
        self.files.insert(name.to_owned(), true);
        Ok(())
    }

    /// Write a rewritten graph as `name` (never over a file put in before).
    fn write(&mut self, name: &str, bytes: &[u8]) -> Result<(), BuildError> {
        if self.files.contains_key(name) {
            return Err(self.clash(name, "the name is taken"));
        }
        let to = self.dir.join(name);
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&to)
            .and_then(|mut f| f.write_all(bytes))
            .map_err(io(&to))?;
        self.files.insert(name.to_owned(), false);
        Ok(())
    }

    fn clash(&self, name: &str, why: &str) -> BuildError {
        BuildError::Graph {
            path: self.dir.join(name),
            reason: format!("two components put different files here ({why})"),
        }
    }
}

/// An initializer's bytes in an external data file (ONNX `external_data`).
#[derive(Debug, Clone, PartialEq, Eq)]
struct External {
    location: String,
    offset: u64,
    length: u64,
}

impl External {
    /// Where `t`'s data is, when it is external (`Err`: external but not readable as such).
    fn of(t: &TensorProto) -> Result<Option<External>, String> {
        if t.data_location != DataLocation::External as i32 {
            return Ok(None);
        }
        let get = |key: &str| t.external_data.iter().find(|e| e.key == key);
        let number = |key: &str| -> Result<Option<u64>, String> {
            get(key)
                .map(|e| e.value.parse::<u64>())
                .transpose()
                .map_err(|e| format!("initializer `{}`: {key}: {e}", t.name))
        };
        let location = get("location")
            .map(|e| e.value.clone())
            .ok_or_else(|| format!("initializer `{}`: external without a location", t.name))?;
        let length = number("length")?
            .ok_or_else(|| format!("initializer `{}`: external without a length", t.name))?;
        Ok(Some(External {
            location,
            offset: number("offset")?.unwrap_or(0),
            length,
        }))
    }

    /// Point `t` at this place (keeping any other `external_data` entries it has).
    fn set(&self, t: &mut TensorProto) {
        t.external_data
            .retain(|e| !matches!(e.key.as_str(), "location" | "offset" | "length"));
        for (key, value) in [
            ("location", self.location.clone()),
            ("offset", self.offset.to_string()),
            ("length", self.length.to_string()),
        ] {
            t.external_data.push(StringStringEntryProto {
                key: key.into(),
                value,
            });
        }
        t.data_location = DataLocation::External as i32;
    }

    fn read(&self, file: &mut File, path: &Path) -> Result<Vec<u8>, BuildError> {
        let mut bytes = vec![0; self.length as usize];
        file.seek(SeekFrom::Start(self.offset))
            .and_then(|_| file.read_exact(&mut bytes))
            .map_err(io(path))?;
        Ok(bytes)
    }
}

/// One field of an encoded protobuf message: its number, its bytes (key included) and, when
/// length-delimited, its payload.
struct WireField<'a> {
    number: u64,
    raw: &'a [u8],
    payload: Option<&'a [u8]>,
}

/// The fields of the encoded message `buf`, in order.
fn wire_fields(buf: &[u8]) -> Result<Vec<WireField<'_>>, String> {
    use prost::encoding::decode_varint;
    let mut rest = buf;
    let mut out = Vec::new();
    let bad = |e: prost::DecodeError| format!("not protobuf: {e}");
    while !rest.is_empty() {
        let start = buf.len() - rest.len();
        let key = decode_varint(&mut rest).map_err(bad)?;
        let skip = |rest: &mut &[u8], n: usize| -> Result<(), String> {
            if rest.len() < n {
                return Err("not protobuf: a field runs past the end".into());
            }
            *rest = &rest[n..];
            Ok(())
        };
        let mut payload = None;
        match key & 7 {
            0 => {
                decode_varint(&mut rest).map_err(bad)?;
            }
            1 => skip(&mut rest, 8)?,
            2 => {
                let n = decode_varint(&mut rest).map_err(bad)? as usize;
                let body = rest
                    .get(..n)
                    .ok_or("not protobuf: a field runs past the end")?;
                payload = Some(body);
                skip(&mut rest, n)?;
            }
            5 => skip(&mut rest, 4)?,
            w => return Err(format!("not protobuf: wire type {w}")),
        }
        out.push(WireField {
            number: key >> 3,
            raw: &buf[start..buf.len() - rest.len()],
            payload,
        });
    }
    Ok(out)
}

/// `model` (an encoded `ModelProto`) with every initializer of its graph that `edit` changes
/// encoded again, and every other byte as it was: `hyvideo_onnx::proto` leaves out fields ONNX
/// Runtime may write, so an optimised graph is not decoded and encoded whole.
fn edit_initializers(
    model: &[u8],
    mut edit: impl FnMut(&mut TensorProto) -> Result<bool, BuildError>,
    path: &Path,
) -> Result<Vec<u8>, BuildError> {
    use prost::encoding::{WireType, encode_key, encode_varint};
    const MODEL_GRAPH: u64 = 7;
    const GRAPH_INITIALIZER: u64 = 5;
    let bad = |reason: String| BuildError::Graph {
        path: path.to_path_buf(),
        reason,
    };
    let put = |number: u64, payload: &[u8], out: &mut Vec<u8>| {
        encode_key(number as u32, WireType::LengthDelimited, out);
        encode_varint(payload.len() as u64, out);
        out.extend_from_slice(payload);
    };
    let mut out = Vec::with_capacity(model.len());
    for field in wire_fields(model).map_err(bad)? {
        let (MODEL_GRAPH, Some(graph)) = (field.number, field.payload) else {
            out.extend_from_slice(field.raw);
            continue;
        };
        let mut g = Vec::with_capacity(graph.len());
        for f in wire_fields(graph).map_err(bad)? {
            match (f.number, f.payload) {
                (GRAPH_INITIALIZER, Some(bytes)) => {
                    let mut t = TensorProto::decode(bytes)
                        .map_err(|e| bad(format!("an initializer is not a tensor: {e}")))?;
                    if edit(&mut t)? {
                        put(GRAPH_INITIALIZER, &t.encode_to_vec(), &mut g);
                    } else {
                        g.extend_from_slice(f.raw);
                    }
                }
                _ => g.extend_from_slice(f.raw),
            }
        }
        put(MODEL_GRAPH, &g, &mut out);
    }
    Ok(out)
}

/// How often `needle` occurs in `haystack`.
fn occurrences(haystack: &[u8], needle: &[u8]) -> usize {
    if needle.is_empty() {
        return 0;
    }
    haystack
        .windows(needle.len())
        .filter(|w| *w == needle)
        .count()
}

/// What [`SharedWeights::add`] did with one optimised graph's weights, in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Sharing {
    /// Initializers pointed at the identical bytes already in the shared file.
    reused: u64,
    /// Initializers not found there, appended to it.
    appended: u64,
}

/// One weight file the optimised graphs of a CPU build share.
#[derive(Debug)]
struct SharedFile {
    /// Its name in the engine directory.
    name: String,
    /// The graph ONNX Runtime wrote it for (its tensors are indexed when a second graph
    /// comes).
    first: PathBuf,
    /// (length, sha256) of each tensor in it → its offset.
    index: Option<HashMap<(u64, String), u64>>,
}

/// The weight files of a CPU build's optimised graphs, one per bundle data file.
///
/// ONNX Runtime saves an optimised graph with every initializer of at least
/// `session.optimized_model_external_initializers_min_size_in_bytes` (1 KiB here) written
/// afresh into the one file `session.optimized_model_external_initializers_file_name` names,
/// opened truncated: none keeps pointing into the bundle's data file, and none is written
/// into another graph's file. The transformer's four stage graphs, cut from its graph and
/// reading its `transformer.onnx.data`, would so write the transformer's weights a second time
/// between them (26 GB on HunyuanVideo). Instead, the first graph built from a bundle data file
/// keeps the file ONNX Runtime wrote for it; every later one has each external initializer
/// pointed at the byte-identical tensor in that file (same length and sha256) or, when there is
/// none (an optimisation the single graph did not make), appended to it; its own data file is
/// removed. The appended bytes go after everything the first graph reads, which stays valid.
#[derive(Debug, Default)]
struct SharedWeights {
    files: BTreeMap<String, SharedFile>,
}

impl SharedWeights {
    /// Share the weights of the optimised graph `graph` in `dir`, built from a bundle graph
    /// whose weights are in the bundle's `bundle_data`. A graph whose data is not in exactly
    /// one file of its own, referred to from its initializers only, keeps it.
    fn add(&mut self, dir: &Path, graph: &str, bundle_data: &str) -> Result<Sharing, BuildError> {
        let path = dir.join(graph);
        let bytes = std::fs::read(&path).map_err(io(&path))?;
        let bad = |reason: String| BuildError::Graph {
            path: path.clone(),
            reason,
        };
        let model = ModelProto::decode(bytes.as_slice())
            .map_err(|e| bad(format!("not an ONNX model: {e}")))?;
        let initializers = model.graph.map(|g| g.initializer).unwrap_or_default();
        let mut own: Vec<External> = Vec::new();
        for t in &initializers {
            if let Some(x) = External::of(t).map_err(bad)? {
                own.push(x);
            }
        }
        let Some(location) = own.first().map(|x| x.location.clone()) else {
            return Ok(Sharing::default());
        };
        let only_initializers = own.iter().all(|x| x.location == location)
            && occurrences(&bytes, location.as_bytes()) == own.len()
            && !Path::new(&location).is_absolute()
            && Path::new(&location).components().count() == 1;
        if !only_initializers {
            return Ok(Sharing::default());
        }
        let Some(shared) = self.files.get_mut(bundle_data) else {
            self.files.insert(
                bundle_data.to_owned(),
                SharedFile {
                    name: location,
                    first: path,
                    index: None,
                },
            );
            return Ok(Sharing::default());
        };
        if shared.name == location {
            return Ok(Sharing::default());
        }
        let shared_path = dir.join(&shared.name);
        let mut out = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&shared_path)
            .map_err(io(&shared_path))?;
        let index = match &mut shared.index {
            Some(index) => index,
            None => shared.index.insert(index_tensors(
                &shared.first,
                &shared.name,
                &mut out,
                &shared_path,
            )?),
        };
        let own_path = dir.join(&location);
        let mut input = File::open(&own_path).map_err(io(&own_path))?;
        let mut end = out.seek(SeekFrom::End(0)).map_err(io(&shared_path))?;
        let mut sharing = Sharing::default();
        let name = shared.name.clone();
        let edited = edit_initializers(
            &bytes,
            |t| {
                let Some(x) = External::of(t).map_err(|r| bad(r.clone()))? else {
                    return Ok(false);
                };
                let data = x.read(&mut input, &own_path)?;
                let key = (x.length, hyvideo_bundle::hash::sha256_hex(&data));
                let offset = match index.get(&key) {
                    Some(&offset) => {
                        sharing.reused += x.length;
                        offset
                    }
                    None => {
                        let offset = end.next_multiple_of(hyvideo_onnx::EXTERNAL_DATA_ALIGNMENT);
                        out.seek(SeekFrom::Start(end))
                            .and_then(|_| out.write_all(&vec![0; (offset - end) as usize]))
                            .and_then(|()| out.write_all(&data))
                            .map_err(io(&shared_path))?;
                        end = offset + x.length;
                        index.insert(key, offset);
                        sharing.appended += x.length;
                        offset
                    }
                };
                External {
                    location: name.clone(),
                    offset,
                    length: x.length,
                }
                .set(t);
                Ok(true)
            },
            &path,
        )?;
        out.sync_all().map_err(io(&shared_path))?;
        std::fs::write(&path, edited).map_err(io(&path))?;
        std::fs::remove_file(&own_path).map_err(io(&own_path))?;
        Ok(sharing)
    }
}

/// (length, sha256) → offset of every tensor the graph `first` has in its data file `name`.
fn index_tensors(
    first: &Path,
    name: &str,
    file: &mut File,
    path: &Path,
) -> Result<HashMap<(u64, String), u64>, BuildError> {
    let bytes = std::fs::read(first).map_err(io(first))?;
    let model = ModelProto::decode(bytes.as_slice()).map_err(|e| BuildError::Graph {
        path: first.to_path_buf(),
        reason: format!("not an ONNX model: {e}"),
    })?;
    let mut index = HashMap::new();
    for t in model.graph.map(|g| g.initializer).unwrap_or_default() {
        let x = External::of(&t).map_err(|reason| BuildError::Graph {
            path: first.to_path_buf(),
            reason,
        })?;
        if let Some(x) = x.filter(|x| x.location == name) {
            let data = x.read(file, path)?;
            index
                .entry((x.length, hyvideo_bundle::hash::sha256_hex(&data)))
                .or_insert(x.offset);
        }
    }
    Ok(index)
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

    /// The 720p preset's profiles of every transformer stage input, for HunyuanVideo's sizes
    /// (inner dim 3072, head dim 128, 16 latent channels, patch size 2): image tokens at 1280×720
    /// and 129 frames are 33 latent frames × 45 × 80 patches = 118 800 (the optimum: the first
    /// resolution); the fewest are 3588 a frame (1104×832 and 832×1104: 69 × 52), one frame;
    /// the most 3600 a frame (1280×720, 720×1280, 960×960), 33 frames. Joint tokens (the RoPE
    /// tables over image and prompt tokens) are image + prompt tokens (1 / 128 / 256).
    #[test]
    fn tensorrt_profiles_of_the_transformer_stages_at_720p() {
        use hyvideo_bundle::spec::Dim;
        use hyvideo_bundle::{ComponentEntry, Precision, TensorSpec, TensorType};
        use hyvideo_engines::ProfilePoint;
        let preset = ShapePreset::load(&repo().join("configs/shapes/720p.yaml")).unwrap();
        let bundle = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(bundle.path().join("transformer")).unwrap();
        std::fs::write(
            bundle.path().join("transformer/config.json"),
            br#"{"patch_size": 2, "patch_size_t": 1}"#,
        )
        .unwrap();
        let size = |name: &str| match name {
            "inner_dim" => 3072,
            "attention_head_dim" => 128,
            "in_channels" | "out_channels" => 16,
            "text_embed_dim" => 4096,
            "pooled_projection_dim" => 768,
            "1" => 1,
            other => panic!("{other}"),
        };
        let mut manifest = Manifest::new(Precision::Fp16);
        for c in Component::TRANSFORMER_STAGES {
            let spec = c.spec();
            let tensors = |v: &[hyvideo_bundle::spec::IoSpec]| -> Vec<TensorSpec> {
                v.iter()
                    .map(|s| TensorSpec {
                        name: s.name.into(),
                        dtype: TensorType::Float16,
                        dims: s
                            .dims
                            .iter()
                            .map(|d| match d {
                                Dim::Sym(s) => s.name().to_string(),
                                Dim::Size(z) => size(z.name()).to_string(),
                            })
                            .collect(),
                    })
                    .collect()
            };
            manifest.components.insert(
                c,
                ComponentEntry {
                    file: c.graph_file(),
                    data_file: Some("transformer.onnx.data".into()),
                    sha256: String::new(),
                    inputs: tensors(&spec.inputs),
                    outputs: tensors(&spec.outputs),
                    sources: vec![],
                },
            );
        }
        let profiles = component_profiles(bundle.path(), &manifest, &preset).unwrap();
        let get = |c: Component, name: &str| -> InputProfile {
            profiles[&c]
                .iter()
                .find(|p| p.name == name)
                .unwrap_or_else(|| panic!("{c}: no profile for {name}"))
                .clone()
        };
        let (img, joint) = (
            get(Component::TransformerFirstBlock, "img_tokens"),
            get(Component::TransformerFirstBlock, "rope_cos"),
        );
        assert_eq!(img.min, [1, 3588, 3072]);
        assert_eq!(img.opt, [1, 118_800, 3072]);
        assert_eq!(img.max, [2, 118_800, 3072]);
        assert_eq!(joint.min, [3589, 1, 128]);
        assert_eq!(joint.opt, [118_928, 1, 128]);
        assert_eq!(joint.max, [119_056, 1, 128]);
        // Every image-token input of every stage has the same range, every text-token input
        // the prompt's, every RoPE table the joint one.
        for c in Component::TRANSFORMER_STAGES {
            for p in &profiles[&c] {
                let want = match p.name.as_str() {
                    "img_tokens"
                    | "first_block_norm1"
                    | "img_after_first_block"
                    | "img_after_blocks" => &img,
                    "rope_cos" | "rope_sin" => &joint,
                    "txt_tokens" | "txt_after_first_block" => {
                        assert_eq!(
                            (p.min[1], p.opt[1], p.max[1]),
                            (1, TEXT_OPT_TOKENS, MAX_SEQUENCE_LENGTH)
                        );
                        continue;
                    }
                    _ => continue,
                };
                assert_eq!((&p.min, &p.opt, &p.max), (&want.min, &want.opt, &want.max));
            }
        }
        // TensorRT builds its kernels at the optimum, which must be a shape the graphs accept
        // together: joint = image + prompt tokens, and the head's latent grid (read for its
        // shape to unpatchify to) holds the image tokens' patches. (The min and max points are
        // corners of independent ranges; TensorRT takes those as bounds.)
        let txt = get(Component::TransformerFirstBlock, "txt_tokens");
        for point in [ProfilePoint::Min, ProfilePoint::Opt, ProfilePoint::Max] {
            assert_eq!(
                joint.at(point)[0],
                img.at(point)[1] + txt.at(point)[1],
                "{point:?}"
            );
        }
        let grid = get(Component::TransformerHead, "hidden_states");
        assert_eq!(grid.opt, [1, 16, 33, 90, 160]);
        assert_eq!(
            grid.opt[2] * (grid.opt[3] / 2) * (grid.opt[4] / 2),
            img.opt[1]
        );
        assert_eq!(
            get(Component::TransformerEmbed, "hidden_states").opt,
            grid.opt
        );
        // ...as the TensorRT provider gets them for one stage.
        let id = DeviceIdentity {
            backend: BackendKind::TensorRt,
            device: "NVIDIA H100".into(),
            compute_capability: Some("9.0".into()),
            onnxruntime: "1.31.1".into(),
            tensorrt: Some("10.13.2".into()),
        };
        let c = Component::TransformerRestBlocks;
        let o = tensorrt_options(
            &Path::new("/e/.engines-x").join(context_model_name(c)),
            Path::new("/e"),
            &id,
            &profiles[&c],
        );
        let trt = backend_for(BackendKind::TensorRt, 0, o).registrations();
        let opt = trt[0].option("trt_profile_opt_shapes").unwrap();
        assert!(
            opt.contains("img_after_first_block:1x118800x3072")
                && opt.contains("rope_sin:118928x1x128")
                && opt.contains("txt_after_first_block:1x128x3072"),
            "{opt}"
        );
        assert_eq!(
            trt[0].option("trt_ep_context_file_path"),
            Some("/e/.engines-x/transformer_rest_blocks_ctx.onnx")
        );
    }

    /// The VAE encoder of an image-to-video bundle takes one frame at batch 1 at any of the
    /// preset's resolutions (pixels): at 720p 720 … 1280 high and wide, tuned for the first
    /// resolution (720×1280).
    #[test]
    fn vae_encoder_profile_at_720p() {
        use hyvideo_bundle::{ComponentEntry, Precision, TensorSpec, TensorType};
        let preset = ShapePreset::load(&repo().join("configs/shapes/720p.yaml")).unwrap();
        let bundle = tempfile::tempdir().unwrap();
        let mut manifest = Manifest::new(Precision::Fp16);
        let sample = TensorSpec {
            name: "sample".into(),
            dtype: TensorType::Float16,
            dims: ["batch", "3", "frames", "height", "width"]
                .map(String::from)
                .to_vec(),
        };
        manifest.components.insert(
            Component::VaeEncoder,
            ComponentEntry {
                file: Component::VaeEncoder.graph_file(),
                data_file: Some("vae_encoder.onnx.data".into()),
                sha256: String::new(),
                inputs: vec![sample],
                outputs: vec![],
                sources: vec![],
            },
        );
        let profiles = component_profiles(bundle.path(), &manifest, &preset).unwrap();
        let p = &profiles[&Component::VaeEncoder];
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].name, "sample");
        assert_eq!(p[0].min, [1, 3, 1, 720, 720]);
        assert_eq!(p[0].opt, [1, 3, 1, 720, 1280]);
        assert_eq!(p[0].max, [1, 3, 1, 1280, 1280]);
    }

    #[test]
    fn every_component_has_its_own_context_model() {
        let all: Vec<Component> = Component::exportable()
            .chain(Component::TRANSFORMER_STAGES)
            .collect();
        let names: std::collections::BTreeSet<String> =
            all.iter().map(|&c| context_model_name(c)).collect();
        assert_eq!(names.len(), all.len());
        assert!(names.contains("transformer_ctx.onnx"));
        assert!(names.contains("transformer_first_block_ctx.onnx"));
    }

    /// A CUDA build links the bundle's weight file once however many graphs read it, and never
    /// copies onto a file already there (a hard link to the bundle's own: copying a file onto
    /// itself truncates it — what the build did for the second graph reading
    /// `transformer.onnx.data`).
    #[test]
    fn cuda_builds_link_a_shared_weight_file_once() {
        let bundle = tempfile::tempdir().unwrap();
        let staging = tempfile::tempdir().unwrap();
        let weights = vec![7u8; 100_000];
        std::fs::write(bundle.path().join("transformer.onnx.data"), &weights).unwrap();
        for c in std::iter::once(Component::Transformer).chain(Component::TRANSFORMER_STAGES) {
            std::fs::write(bundle.path().join(c.graph_file()), c.name()).unwrap();
        }
        let mut files = StagedFiles::new(staging.path());
        files.write("transformer.onnx", b"rewritten").unwrap();
        files.link(bundle.path(), "transformer.onnx.data").unwrap();
        for c in Component::TRANSFORMER_STAGES {
            files.link(bundle.path(), &c.graph_file()).unwrap();
            files.link(bundle.path(), "transformer.onnx.data").unwrap();
        }
        assert_eq!(
            std::fs::read(bundle.path().join("transformer.onnx.data")).unwrap(),
            weights
        );
        assert_eq!(
            std::fs::read(staging.path().join("transformer.onnx.data")).unwrap(),
            weights
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            let ino = |p: &Path| std::fs::metadata(p).unwrap().ino();
            assert_eq!(
                ino(&bundle.path().join("transformer.onnx.data")),
                ino(&staging.path().join("transformer.onnx.data")),
                "linked, not copied"
            );
        }
        assert_eq!(
            std::fs::read(staging.path().join("transformer.onnx")).unwrap(),
            b"rewritten"
        );
        assert_eq!(
            std::fs::read(bundle.path().join("transformer.onnx")).unwrap(),
            b"transformer"
        );
        // Writing a rewritten graph where a linked file is, or linking over a written one, is
        // refused, and the bundle's file is left as it was.
        let e = files
            .write("transformer.onnx.data", b"x")
            .unwrap_err()
            .to_string();
        assert!(e.contains("transformer.onnx.data"), "{e}");
        let e = files
            .link(bundle.path(), "transformer.onnx")
            .unwrap_err()
            .to_string();
        assert!(e.contains("rewritten graph"), "{e}");
        assert_eq!(
            std::fs::read(bundle.path().join("transformer.onnx.data")).unwrap(),
            weights
        );
        // A name already on disk (not put in by this build) is an error, never a copy onto it.
        std::fs::write(staging.path().join("other.data"), b"there").unwrap();
        std::fs::write(bundle.path().join("other.data"), b"bundle").unwrap();
        assert!(files.link(bundle.path(), "other.data").is_err());
        assert_eq!(
            std::fs::read(bundle.path().join("other.data")).unwrap(),
            b"bundle"
        );
    }

    /// A graph whose initializers `(name, bytes)` are external in `data` (at 4096-aligned
    /// offsets after `lead` bytes of padding), written to `dir/graph`; `extra` is appended to
    /// the encoded model as is (fields `hyvideo_onnx::proto` does not know).
    fn external_graph(
        dir: &Path,
        graph: &str,
        data: &str,
        tensors: &[(&str, &[u8])],
        doc: &str,
        extra: &[u8],
    ) {
        use hyvideo_onnx::proto::GraphProto;
        let mut bytes = Vec::new();
        let mut initializer = Vec::new();
        for (name, t) in tensors {
            let offset = (bytes.len() as u64).next_multiple_of(4096);
            bytes.resize(offset as usize, 0);
            bytes.extend_from_slice(t);
            let mut proto = TensorProto {
                name: name.to_string(),
                dims: vec![t.len() as i64],
                data_type: hyvideo_onnx::proto::DataType::Uint8 as i32,
                ..Default::default()
            };
            External {
                location: data.into(),
                offset,
                length: t.len() as u64,
            }
            .set(&mut proto);
            initializer.push(proto);
        }
        std::fs::write(dir.join(data), bytes).unwrap();
        let model = ModelProto {
            ir_version: 10,
            graph: Some(GraphProto {
                name: "g".into(),
                doc_string: doc.into(),
                initializer,
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut encoded = model.encode_to_vec();
        encoded.extend_from_slice(extra);
        std::fs::write(dir.join(graph), encoded).unwrap();
    }

    /// Each external initializer of the graph `dir/graph`: name, location, and its bytes.
    fn read_external(dir: &Path, graph: &str) -> Vec<(String, String, Vec<u8>)> {
        let m = ModelProto::decode(std::fs::read(dir.join(graph)).unwrap().as_slice()).unwrap();
        m.graph
            .unwrap()
            .initializer
            .iter()
            .map(|t| {
                let x = External::of(t).unwrap().unwrap();
                let path = dir.join(&x.location);
                let data = x.read(&mut File::open(&path).unwrap(), &path).unwrap();
                (t.name.clone(), x.location, data)
            })
            .collect()
    }

    #[test]
    fn optimised_graphs_from_one_weight_file_share_one() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let (x, y, z) = (vec![1u8; 5000], vec![2u8; 3000], vec![3u8; 2000]);
        // ModelProto field 25 (`functions`, unknown to our messages) must survive the edit.
        let unknown = [0xca, 0x01, 0x03, b'f', b'u', b'n'];
        external_graph(d, "t.onnx", "t.onnx.data", &[("x", &x), ("y", &y)], "", &[]);
        external_graph(
            d,
            "s.onnx",
            "s.onnx.data",
            &[("y2", &y), ("z", &z), ("y3", &y)],
            "",
            &unknown,
        );
        let mut shared = SharedWeights::default();
        // The first graph keeps the file ONNX Runtime wrote for it.
        assert_eq!(
            shared.add(d, "t.onnx", "bundle.onnx.data").unwrap(),
            Sharing::default()
        );
        let first = std::fs::read(d.join("t.onnx")).unwrap();
        let before = std::fs::metadata(d.join("t.onnx.data")).unwrap().len();
        let sharing = shared.add(d, "s.onnx", "bundle.onnx.data").unwrap();
        assert_eq!(
            sharing,
            Sharing {
                reused: 6000,
                appended: 2000
            }
        );
        assert!(!d.join("s.onnx.data").exists());
        let s = read_external(d, "s.onnx");
        assert_eq!(
            s,
            [
                ("y2".into(), "t.onnx.data".into(), y.clone()),
                ("z".into(), "t.onnx.data".into(), z.clone()),
                ("y3".into(), "t.onnx.data".into(), y.clone()),
            ]
        );
        let s_bytes = std::fs::read(d.join("s.onnx")).unwrap();
        assert!(s_bytes.ends_with(&unknown), "unknown fields kept");
        // The first graph still reads what it read; the file grew by the appended tensor only.
        assert_eq!(std::fs::read(d.join("t.onnx")).unwrap(), first);
        assert_eq!(
            read_external(d, "t.onnx"),
            [
                ("x".into(), "t.onnx.data".into(), x.clone()),
                ("y".into(), "t.onnx.data".into(), y.clone()),
            ]
        );
        let after = std::fs::metadata(d.join("t.onnx.data")).unwrap().len();
        assert_eq!(after, before.next_multiple_of(4096) + 2000);
        // A third graph finds the appended tensor too.
        external_graph(d, "u.onnx", "u.onnx.data", &[("z", &z)], "", &[]);
        let sharing = shared.add(d, "u.onnx", "bundle.onnx.data").unwrap();
        assert_eq!(sharing.reused, 2000);
        assert_eq!(sharing.appended, 0);
        // Another bundle data file starts a file of its own.
        external_graph(d, "v.onnx", "v.onnx.data", &[("x", &x)], "", &[]);
        assert_eq!(
            shared.add(d, "v.onnx", "vae.onnx.data").unwrap(),
            Sharing::default()
        );
        assert!(d.join("v.onnx.data").exists());
        // A graph naming its data file anywhere but in its initializers keeps it.
        external_graph(
            d,
            "w.onnx",
            "w.onnx.data",
            &[("x", &x)],
            "see w.onnx.data",
            &[],
        );
        let w = std::fs::read(d.join("w.onnx")).unwrap();
        assert_eq!(
            shared.add(d, "w.onnx", "bundle.onnx.data").unwrap(),
            Sharing::default()
        );
        assert_eq!(std::fs::read(d.join("w.onnx")).unwrap(), w);
        assert!(d.join("w.onnx.data").exists());
    }
}
