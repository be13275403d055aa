//! `hyvideo-export onnx`: read a diffusers-format HunyuanVideo folder and write the requested
//! components into a bundle. One function per component, sharing the checkpoint-to-graph glue;
//! every graph is checked against its component's spec (`hyvideo_bundle::Component::spec`)
//! before it is written, and the manifest records the graph's own I/O. An image-to-video folder
//! (HunyuanVideo-I2V) also exports the VAE encoder and LLaVA's vision graph by default
//! ([`scan_components`]), and its `text_encoder` is LLaVA's language model.

use std::path::{Path, PathBuf};

use std::sync::Arc;

use hyvideo_bundle::spec::Size;
use hyvideo_bundle::{
    Component, ComponentEntry, ComponentSpec, Manifest, Precision, SourceFile, TensorSpec,
    VaeSettings,
};
use hyvideo_onnx::types::tensor_spec;

use crate::bundle_writer::BundleWriter;
use crate::checkpoint::{
    Checkpoint, ClipTextConfig, DType, LlamaConfig, LlavaConfig, TransformerConfig, VaeConfig,
    Weights,
};
use crate::error::{ExportError, Result};
use crate::graph::{Net, WeightProvider, concat_rows};
use crate::onnx::{GraphBuilder, TensorSource, write_model};
use crate::transformer_layout::{KeyLayout, Rows, fp8_module_name, tencent_parts};
use crate::{clip, clip_vision, llama, transformer, vae_decoder, vae_encoder};

/// What to export.
#[derive(Debug, Clone)]
pub struct ExportRequest {
    /// The diffusers-format model folder.
    pub model: PathBuf,
    pub out: PathBuf,
    pub precision: Precision,
    pub components: Vec<Component>,
    pub transformer: TransformerSource,
    /// A precision profile YAML replacing `configs/precision/<precision>.yaml`.
    pub precision_profile: Option<PathBuf>,
    /// Activation scales for FP8 layers (`hyvideo-export calibrate`).
    pub fp8_scales: Option<PathBuf>,
}

/// Where the transformer's weights and config come from when not from `--model`.
#[derive(Debug, Clone, Default)]
pub struct TransformerSource {
    /// A single-file checkpoint (diffusers or Tencent key layout) replacing
    /// `<model>/transformer/*.safetensors` (`--transformer`).
    pub file: Option<PathBuf>,
    /// The fp8 per-tensor scale map of an fp8_e4m3fn checkpoint (`--fp8-scale-map`); default
    /// `<file stem>_map.safetensors` beside `file`.
    pub fp8_scale_map: Option<PathBuf>,
    /// A model preset (`configs/models/*.yaml`, `--config`) used instead of
    /// `<model>/transformer/config.json`.
    pub config: Option<PathBuf>,
}

/// Weights read from a checkpoint, streamed to the graph's weight type.
struct CheckpointWeights {
    weights: Weights,
    target: DType,
}

impl WeightProvider for CheckpointWeights {
    fn tensor(&self, name: &str, shape: &[usize]) -> Result<Box<dyn TensorSource>> {
        Ok(Box::new(self.weights.stream(name, shape, self.target)?))
    }
}

/// Transformer weights in either key layout, fp8 tensors dequantised with their scale map as the
/// reference does (bf16 arithmetic, Tencent's `fp8_linear_forward`).
struct TransformerWeights {
    ckpt: Arc<Checkpoint>,
    layout: KeyLayout,
    scales: Option<Checkpoint>,
    target: DType,
    hidden: usize,
    mlp: usize,
}

impl TransformerWeights {
    /// `name` as stored (fp8 dequantised), shape-checked against `shape`.
    fn stored(&self, name: &str, shape: &[usize]) -> Result<crate::checkpoint::TensorStream> {
        let view = self.ckpt.get(name)?.expect_shape(shape)?;
        if view.dtype != DType::F8E4M3 {
            return Ok(view.stream(self.target));
        }
        let Some(scales) = &self.scales else {
            return Err(ExportError::Model {
                component: "transformer",
                reason: format!(
                    "{} holds float8_e4m3fn weights ({name}) but no fp8 scale map was found: pass --fp8-scale-map or put <stem>_map.safetensors beside it",
                    self.ckpt.path().display()
                ),
            });
        };
        let module = fp8_module_name(name);
        let module = match &self.layout {
            KeyLayout::Tencent { prefix } => module.strip_prefix(prefix.as_str()).unwrap_or(module),
            KeyLayout::Diffusers => module,
        };
        let scale = scales.get(module)?.to_scalar_f32()?;
        Ok(view.stream(self.target).dequantized(scale, DType::BF16)?)
    }
}

impl WeightProvider for TransformerWeights {
    fn tensor(&self, name: &str, shape: &[usize]) -> Result<Box<dyn TensorSource>> {
        let prefix = match &self.layout {
            KeyLayout::Diffusers => return Ok(Box::new(self.stored(name, shape)?)),
            KeyLayout::Tencent { prefix } => prefix,
        };
        let parts =
            tencent_parts(name, self.hidden, self.mlp).ok_or_else(|| ExportError::Model {
                component: "transformer",
                reason: format!("no Tencent-layout tensor is known for `{name}`"),
            })?;
        let mut sources: Vec<Box<dyn TensorSource>> = Vec::with_capacity(parts.len());
        for part in parts {
            let full = format!("{prefix}{}", part.name);
            let stream = match part.rows {
                Rows::All => self.stored(&full, shape)?,
                Rows::Slice { rows, of } => {
                    let mut whole = shape.to_vec();
                    if let Some(first) = whole.first_mut() {
                        *first = of;
                    }
                    self.stored(&full, &whole)?.rows(rows)?
                }
            };
            sources.push(Box::new(stream));
        }
        concat_rows(sources)
    }
}

/// Weights are read as f32 whatever the profile: the precision pass (`crate::precision`)
/// converts them to each node's dtype as they stream out.
const READ_DTYPE: DType = DType::F32;

/// Which components a model folder has, for `hyvideo-export onnx` without `--components`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComponentScan {
    /// Those whose sub-folder exists (the transformer also when `--transformer FILE` is given),
    /// in [`Component::ALL`] order; for an image-to-video folder then the VAE encoder and
    /// LLaVA's vision graph.
    pub present: Vec<Component>,
    /// The others, with the sub-folder each lacks.
    pub missing: Vec<(Component, PathBuf)>,
}

/// Scan `model` for the sub-folders of [`Component::ALL`].
pub fn scan_components(model: &Path, transformer: &TransformerSource) -> Result<ComponentScan> {
    if !model.is_dir() {
        return Err(ExportError::Model {
            component: "export",
            reason: format!("--model {} is not a directory", model.display()),
        });
    }
    let mut scan = ComponentScan {
        present: vec![],
        missing: vec![],
    };
    for c in Component::ALL {
        let dir = model.join(c.spec().source_folder);
        if dir.is_dir() || (c == Component::Transformer && transformer.file.is_some()) {
            scan.present.push(c);
        } else {
            scan.missing.push((c, dir));
        }
    }
    // An image-to-video folder (HunyuanVideo-I2V) also needs the image side: the VAE encoder,
    // and LLaVA's vision graph when its text encoder is LLaVA.
    if image_to_video_folder(model) {
        scan.present.push(Component::VaeEncoder);
        let te = model.join(Component::TextEncoder.spec().config_file());
        if std::fs::read_to_string(te).is_ok_and(|t| LlavaConfig::is_llava_json(&t)) {
            scan.present.push(Component::VisionEncoder);
        }
    }
    Ok(scan)
}

/// Whether `model` is an image-to-video folder: its transformer config sets
/// `image_condition_type`, or `model_index.json` names diffusers' image-to-video pipeline.
pub fn image_to_video_folder(model: &Path) -> bool {
    let json = |p: PathBuf| -> Option<serde_json::Value> {
        serde_json::from_str(&std::fs::read_to_string(p).ok()?).ok()
    };
    let condition = json(model.join(Component::Transformer.spec().config_file()))
        .and_then(|v| v.get("image_condition_type").cloned())
        .is_some_and(|v| !v.is_null());
    let pipeline = json(model.join("model_index.json"))
        .and_then(|v| {
            v.get("_class_name")
                .and_then(|c| c.as_str())
                .map(str::to_owned)
        })
        .is_some_and(|c| c == "HunyuanVideoImageToVideoPipeline");
    condition || pipeline
}

/// The sub-folder of the model directory a component's weights live in.
fn subfolder(model: &Path, component: Component) -> Result<PathBuf> {
    let name = component.spec().source_folder;
    let dir = model.join(name);
    if !dir.is_dir() {
        return Err(ExportError::Model {
            component: component.name(),
            reason: format!(
                "{} does not exist: --model must be a diffusers-format HunyuanVideo folder with a `{name}/` sub-folder",
                dir.display()
            ),
        });
    }
    Ok(dir)
}

fn sources(ckpt: &Checkpoint, model: &Path) -> Result<Vec<SourceFile>> {
    Ok(ckpt
        .identities()?
        .into_iter()
        .map(|id| SourceFile {
            path: id
                .path
                .strip_prefix(model)
                .unwrap_or(&id.path)
                .display()
                .to_string(),
            bytes: id.size,
            identity: id.header_sha256,
        })
        .collect())
}

/// The I/O of a graph as the manifest records it; every value must have a contract type.
pub(crate) fn graph_io(
    values: &[crate::onnx::proto::ValueInfoProto],
    component: Component,
) -> Result<Vec<TensorSpec>> {
    values
        .iter()
        .map(|v| {
            tensor_spec(v).ok_or_else(|| ExportError::Model {
                component: component.name(),
                reason: format!(
                    "graph value `{}` has no element type the bundle contract names",
                    v.name
                ),
            })
        })
        .collect()
}

fn with_metadata(b: GraphBuilder, component: Component, precision: Precision) -> GraphBuilder {
    b.with_producer("hyvideo-export", hyvideo_bundle::EXPORTER_VERSION)
        .with_metadata("hyvideo.component", component.name())
        .with_metadata("hyvideo.precision", precision.to_string())
}

/// Apply the bundle's precision profile to a finished graph, check its I/O against `spec`
/// (fixed dims as `sizes` gives them from the model config), write it into the bundle's
/// staging area and return its manifest entry. A graph that differs from its spec is an
/// exporter bug: it is refused before anything is written.
fn write_staged(
    net: Net<'_>,
    bundle: &mut BundleWriter,
    spec: &ComponentSpec,
    sizes: &dyn Fn(Size) -> Option<usize>,
    sources: Vec<SourceFile>,
) -> Result<ComponentEntry> {
    let profile = bundle.precision_profile()?;
    let mut b = net.finish();
    if let Some(q) = &profile.fp8_quantize {
        crate::precision::apply_fp8(&mut b, q, bundle.fp8_scales(), profile.compute)?;
    }
    crate::precision::apply(&mut b, &profile)?;
    let component: Component = spec.name.parse().map_err(|reason| ExportError::Model {
        component: "export",
        reason,
    })?;
    let (inputs, outputs) = (
        graph_io(b.inputs(), component)?,
        graph_io(b.outputs(), component)?,
    );
    spec.check(&inputs, &outputs, profile.io.tensor_type(), sizes)?;
    let written = write_model(b, bundle.staging_dir(), spec.name)?;
    let file_name = |p: &Path| {
        p.file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    for path in [&written.onnx_path, &written.data_path] {
        bundle.stage(file_name(path));
    }
    Ok(ComponentEntry {
        file: file_name(&written.onnx_path),
        data_file: Some(file_name(&written.data_path)),
        sha256: written.onnx_sha256.clone(),
        inputs,
        outputs,
        sources,
    })
}

/// The transformer config: the preset if one is given, else `<model>/transformer/config.json`.
pub fn transformer_config(model: &Path, source: &TransformerSource) -> Result<TransformerConfig> {
    if let Some(preset) = &source.config {
        return Ok(TransformerConfig::load_preset(preset)?);
    }
    let file = model.join("transformer").join(TransformerConfig::FILE_NAME);
    if !file.is_file() {
        return Err(ExportError::Model {
            component: "transformer",
            reason: format!(
                "{} does not exist: pass a model preset with --config (e.g. \
                 configs/models/hunyuan-video-t2v-720p.yaml)",
                file.display()
            ),
        });
    }
    Ok(TransformerConfig::load(&file)?)
}

/// The fp8 scale map for `file`: the explicit one, else `<stem>_map.safetensors` beside it.
fn fp8_scale_map(file: &Path, explicit: Option<&Path>) -> Result<Option<Checkpoint>> {
    if let Some(p) = explicit {
        return Ok(Some(Checkpoint::open(p)?));
    }
    let stem = file.file_stem().unwrap_or_default().to_string_lossy();
    let sibling = file.with_file_name(format!("{stem}_map.safetensors"));
    if sibling.is_file() {
        Ok(Some(Checkpoint::open(&sibling)?))
    } else {
        Ok(None)
    }
}

/// Export the transformer (diffusers folder or single file, either key layout).
pub fn export_transformer(
    model: &Path,
    source: &TransformerSource,
    bundle: &mut BundleWriter,
    precision: Precision,
) -> Result<()> {
    let cfg = transformer_config(model, source)?;
    let weights_path = match &source.file {
        Some(f) => f.clone(),
        None => subfolder(model, Component::Transformer)?,
    };
    let ckpt = Arc::new(Checkpoint::open(&weights_path)?);
    let layout = KeyLayout::detect(&ckpt)?;
    let scales = match &source.file {
        Some(f) => fp8_scale_map(f, source.fp8_scale_map.as_deref())?,
        None => None,
    };
    let mut srcs = match &source.file {
        Some(f) => sources(&ckpt, f.parent().unwrap_or(model))?,
        None => sources(&ckpt, model)?,
    };
    if let (Some(map), Some(f)) = (&scales, &source.file) {
        srcs.extend(sources(map, f.parent().unwrap_or(model))?);
    }
    let provider = TransformerWeights {
        ckpt: ckpt.clone(),
        layout: layout.clone(),
        scales,
        target: READ_DTYPE,
        hidden: cfg.inner_dim(),
        mlp: cfg.mlp_hidden_dim(),
    };
    let builder = with_metadata(
        transformer::graph_builder(),
        Component::Transformer,
        precision,
    )
    .with_metadata(
        "hyvideo.checkpoint_layout",
        match layout {
            KeyLayout::Diffusers => "diffusers",
            KeyLayout::Tencent { .. } => "tencent",
        },
    );
    let mut net = Net::new(builder, &provider);
    transformer::build(&mut net, &cfg)?;
    let sizes = |s: Size| match s {
        Size::InChannels => Some(cfg.in_channels),
        Size::OutChannels => Some(cfg.out_channels()),
        Size::TextEmbedDim => Some(cfg.text_embed_dim),
        Size::PooledProjectionDim => Some(cfg.pooled_projection_dim),
        Size::InnerDim => Some(cfg.inner_dim()),
        Size::HeadDim => Some(cfg.attention_head_dim),
        Size::One => Some(1),
        _ => None,
    };
    let e = write_staged(net, bundle, &Component::Transformer.spec(), &sizes, srcs)?;
    // The stage graphs for step caching (they need a first dual block to cut at).
    if cfg.num_layers > 0 {
        let io = bundle.precision_profile()?.io.tensor_type();
        for (c, entry) in crate::transformer_stages::write_stages(bundle, &e, io, &sizes)? {
            bundle.manifest_mut().components.insert(c, entry);
        }
    }
    let cfg_json = serde_json::to_vec_pretty(&cfg).map_err(|e| ExportError::Model {
        component: "transformer",
        reason: format!("serialising the config: {e}"),
    })?;
    bundle.write_file(&Component::Transformer.spec().config_file(), &cfg_json)?;
    bundle
        .manifest_mut()
        .components
        .insert(Component::Transformer, e);
    Ok(())
}

/// Export the VAE decoder of `model` into the staging area of `bundle`.
pub fn export_vae_decoder(
    model: &Path,
    bundle: &mut BundleWriter,
    precision: Precision,
) -> Result<()> {
    export_vae(model, bundle, precision, Component::VaeDecoder)
}

/// Export the VAE encoder of `model` into the staging area of `bundle`.
pub fn export_vae_encoder(
    model: &Path,
    bundle: &mut BundleWriter,
    precision: Precision,
) -> Result<()> {
    export_vae(model, bundle, precision, Component::VaeEncoder)
}

/// One graph of the VAE (`component`: its decoder or encoder), the VAE's config (copied once
/// when a request exports both) and the manifest's VAE settings.
fn export_vae(
    model: &Path,
    bundle: &mut BundleWriter,
    precision: Precision,
    component: Component,
) -> Result<()> {
    let dir = subfolder(model, component)?;
    let cfg = VaeConfig::load(dir.join("config.json"))?;
    let ckpt = std::sync::Arc::new(Checkpoint::open(&dir)?);
    let provider = CheckpointWeights {
        weights: Weights::new(ckpt.clone()),
        target: READ_DTYPE,
    };
    type Build = fn(&mut Net<'_>, &VaeConfig) -> Result<()>;
    let (builder, build, channels): (GraphBuilder, Build, usize) = match component {
        Component::VaeEncoder => (
            vae_encoder::graph_builder(),
            vae_encoder::build,
            cfg.in_channels,
        ),
        _ => (
            vae_decoder::graph_builder(),
            vae_decoder::build,
            cfg.out_channels,
        ),
    };
    let mut net = Net::new(with_metadata(builder, component, precision), &provider);
    build(&mut net, &cfg)?;
    let sizes = |s: Size| match s {
        Size::LatentChannels => Some(cfg.latent_channels),
        Size::VideoChannels => Some(channels),
        _ => None,
    };
    let spec = component.spec();
    let e = write_staged(net, bundle, &spec, &sizes, sources(&ckpt, model)?)?;
    let config = spec.config_file();
    if !bundle.staging_dir().join(&config).is_file() {
        bundle.copy_file(&dir.join("config.json"), &config)?;
    }
    let m: &mut Manifest = bundle.manifest_mut();
    m.components.insert(component, e);
    m.vae = Some(VaeSettings {
        latent_channels: cfg.latent_channels,
        out_channels: cfg.out_channels,
        scaling_factor: cfg.scaling_factor,
        spatial_compression_ratio: cfg.spatial_compression_ratio,
        temporal_compression_ratio: cfg.temporal_compression_ratio,
    });
    Ok(())
}

/// Copy every file directly inside the component's tokenizer folder `<model>/<folder>/` into
/// the bundle under `<folder>/` (staged): the tokenizer files the runtime reads.
fn copy_folder(model: &Path, component: Component, bundle: &mut BundleWriter) -> Result<()> {
    let Some(folder) = component.spec().tokenizer else {
        return Ok(());
    };
    copy_files(model, folder, "the tokenizer", component, bundle)
}

/// Copy every file directly inside `<model>/<folder>/` (`what` it holds, for errors) into the
/// bundle under `<folder>/` (staged).
fn copy_files(
    model: &Path,
    folder: &str,
    what: &str,
    component: Component,
    bundle: &mut BundleWriter,
) -> Result<()> {
    let dir = model.join(folder);
    let missing = || ExportError::Model {
        component: component.name(),
        reason: format!(
            "{} does not exist: --model must be a diffusers-format HunyuanVideo folder with a \
             `{folder}/` sub-folder ({what} goes into the bundle)",
            dir.display()
        ),
    };
    if !dir.is_dir() {
        return Err(missing());
    }
    let io = |source| ExportError::Io {
        path: dir.clone(),
        source,
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map_err(io)?
        .map(|e| e.map(|e| e.path()).map_err(io))
        .collect::<Result<Vec<_>>>()?
        .into_iter()
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(ExportError::Model {
            component: component.name(),
            reason: format!("{} holds no files (expected {what})", dir.display()),
        });
    }
    for f in files {
        let name = f.file_name().unwrap_or_default().to_string_lossy();
        bundle.copy_file(&f, &format!("{folder}/{name}"))?;
    }
    Ok(())
}

/// Export the Llama text encoder (`text_encoder`) and copy `tokenizer/` into the bundle.
pub fn export_text_encoder(
    model: &Path,
    bundle: &mut BundleWriter,
    precision: Precision,
) -> Result<()> {
    let component = Component::TextEncoder;
    let dir = subfolder(model, component)?;
    let cfg = LlamaConfig::load(dir.join(LlamaConfig::FILE_NAME))?;
    let ckpt = Arc::new(Checkpoint::open(&dir)?);
    let prefix = llama::checkpoint_prefix(&ckpt)?;
    let provider = CheckpointWeights {
        weights: Weights::new(ckpt.clone()).pp(prefix),
        target: READ_DTYPE,
    };
    let builder = with_metadata(llama::graph_builder(), component, precision).with_metadata(
        "hyvideo.num_hidden_layers_to_skip",
        llama::NUM_HIDDEN_LAYERS_TO_SKIP.to_string(),
    );
    // HunyuanVideo-I2V's text encoder is LLaVA: its language model takes the image embeddings.
    let config_text =
        std::fs::read_to_string(dir.join(LlamaConfig::FILE_NAME)).map_err(|e| ExportError::Io {
            path: dir.join(LlamaConfig::FILE_NAME),
            source: e,
        })?;
    let image = match LlavaConfig::is_llava_json(&config_text) {
        true => {
            let llava = LlavaConfig::load(dir.join(LlavaConfig::FILE_NAME))?;
            Some(llama::ImageTokens {
                token_id: llava.image_token_index,
                count: llava.image_tokens(),
            })
        }
        false => None,
    };
    let mut net = Net::new(builder, &provider);
    llama::build(&mut net, &cfg, image)?;
    let sizes = |s: Size| match s {
        Size::HiddenSize => Some(cfg.hidden_size),
        Size::ImageEmbeds => image.map(|i| i.count),
        _ => None,
    };
    let srcs = sources(&ckpt, model)?;
    let config = dir.join(LlamaConfig::FILE_NAME);
    finish_text_encoder(net, bundle, model, component, &sizes, srcs, &config)
}

/// Export the CLIP text encoder (`text_encoder_2`) and copy `tokenizer_2/` into the bundle.
pub fn export_text_encoder_2(
    model: &Path,
    bundle: &mut BundleWriter,
    precision: Precision,
) -> Result<()> {
    let component = Component::TextEncoder2;
    let dir = subfolder(model, component)?;
    let cfg = ClipTextConfig::load(dir.join(ClipTextConfig::FILE_NAME))?;
    let ckpt = Arc::new(Checkpoint::open(&dir)?);
    let prefix = clip::checkpoint_prefix(&ckpt)?;
    let provider = CheckpointWeights {
        weights: Weights::new(ckpt.clone()).pp(prefix),
        target: READ_DTYPE,
    };
    let mut net = Net::new(
        with_metadata(clip::graph_builder(), component, precision),
        &provider,
    );
    clip::build(&mut net, &cfg)?;
    let sizes = |s: Size| match s {
        Size::MaxPositions => Some(cfg.max_position_embeddings),
        Size::HiddenSize => Some(cfg.hidden_size),
        _ => None,
    };
    let srcs = sources(&ckpt, model)?;
    let config = dir.join(ClipTextConfig::FILE_NAME);
    finish_text_encoder(net, bundle, model, component, &sizes, srcs, &config)
}

/// Tensors of LLaVA's image side: the vision tower's under its prefix, the projector's
/// (`multi_modal_projector.*` in the graph) under its own.
struct LlavaVisionWeights {
    tower: Weights,
    projector: Weights,
    target: DType,
}

impl WeightProvider for LlavaVisionWeights {
    fn tensor(&self, name: &str, shape: &[usize]) -> Result<Box<dyn TensorSource>> {
        let (weights, name) = match name.strip_prefix(&format!("{}.", clip_vision::PROJECTOR)) {
            Some(rest) => (&self.projector, rest),
            None => (&self.tower, name),
        };
        Ok(Box::new(weights.stream(name, shape, self.target)?))
    }
}

/// Export LLaVA's image side (`vision_encoder`, from `text_encoder/`) and copy
/// `image_processor/` into the bundle.
pub fn export_vision_encoder(
    model: &Path,
    bundle: &mut BundleWriter,
    precision: Precision,
) -> Result<()> {
    let component = Component::VisionEncoder;
    let dir = subfolder(model, component)?;
    let cfg = LlavaConfig::load(dir.join(LlavaConfig::FILE_NAME))?;
    let ckpt = Arc::new(Checkpoint::open(&dir)?);
    let (tower, projector) = clip_vision::checkpoint_prefixes(&ckpt)?;
    let provider = LlavaVisionWeights {
        tower: Weights::new(ckpt.clone()).pp(tower),
        projector: Weights::new(ckpt.clone()).pp(projector),
        target: READ_DTYPE,
    };
    let builder = with_metadata(clip_vision::graph_builder(), component, precision);
    let mut net = Net::new(builder, &provider);
    clip_vision::build(&mut net, &cfg)?;
    let v = &cfg.vision_config;
    let sizes = |s: Size| match s {
        Size::PixelChannels => Some(v.num_channels),
        Size::ImageSize => Some(v.image_size),
        Size::ImageEmbeds => Some(cfg.image_tokens()),
        Size::HiddenSize => Some(cfg.text_config.hidden_size),
        _ => None,
    };
    let srcs = sources(&ckpt, model)?;
    let config = dir.join(LlavaConfig::FILE_NAME);
    copy_files(
        model,
        IMAGE_PROCESSOR_FOLDER,
        "the image processor's preprocessor_config.json",
        component,
        bundle,
    )?;
    finish_text_encoder(net, bundle, model, component, &sizes, srcs, &config)
}

/// diffusers' folder of an image-to-video pipeline's `CLIPImageProcessor`.
pub const IMAGE_PROCESSOR_FOLDER: &str = "image_processor";

/// The end of a text encoder's export: its graph (checked and staged), its config and its
/// tokenizer folder into the bundle, its manifest entry.
fn finish_text_encoder(
    net: Net<'_>,
    bundle: &mut BundleWriter,
    model: &Path,
    component: Component,
    sizes: &dyn Fn(Size) -> Option<usize>,
    sources: Vec<SourceFile>,
    config: &Path,
) -> Result<()> {
    let spec = component.spec();
    let e = write_staged(net, bundle, &spec, sizes, sources)?;
    // LLaVA's two graphs share `text_encoder/config.json`.
    if !bundle.staging_dir().join(spec.config_file()).is_file() {
        bundle.copy_file(config, &spec.config_file())?;
    }
    copy_folder(model, component, bundle)?;
    bundle.manifest_mut().components.insert(component, e);
    Ok(())
}

/// Run a whole export request; nothing is left in `out` when it fails.
pub fn export(req: &ExportRequest, mut on_component: impl FnMut(Component)) -> Result<Manifest> {
    if !req.model.is_dir() {
        return Err(ExportError::Model {
            component: "export",
            reason: format!("--model {} is not a directory", req.model.display()),
        });
    }
    let mut bundle = BundleWriter::create(&req.out, req.precision)?;
    if let Some(p) = &req.precision_profile {
        bundle.set_precision_profile(crate::precision::PrecisionProfile::load(p)?);
    }
    if let Some(p) = &req.fp8_scales {
        bundle.set_fp8_scales(crate::precision::Fp8Scales::load(p)?);
    }
    for &c in &req.components {
        on_component(c);
        match c {
            Component::VaeDecoder => export_vae_decoder(&req.model, &mut bundle, req.precision)?,
            Component::VaeEncoder => export_vae_encoder(&req.model, &mut bundle, req.precision)?,
            Component::VisionEncoder => {
                export_vision_encoder(&req.model, &mut bundle, req.precision)?
            }
            Component::Transformer => {
                export_transformer(&req.model, &req.transformer, &mut bundle, req.precision)?
            }
            Component::TextEncoder => export_text_encoder(&req.model, &mut bundle, req.precision)?,
            Component::TextEncoder2 => {
                export_text_encoder_2(&req.model, &mut bundle, req.precision)?
            }
            // Written with the transformer.
            Component::TransformerEmbed
            | Component::TransformerFirstBlock
            | Component::TransformerRestBlocks
            | Component::TransformerHead => {}
        }
    }
    bundle.commit()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx::{DataType, Dim};

    struct NoWeights;

    impl WeightProvider for NoWeights {
        fn tensor(&self, name: &str, _: &[usize]) -> Result<Box<dyn TensorSource>> {
            Err(ExportError::model("test", format!("no weight {name}")))
        }
    }

    /// A CLIP-shaped graph: `input_ids` int64 [batch, 77] → `pooler_output` [batch, 77].
    fn clip_like(b: &mut GraphBuilder) {
        let ids = b
            .input(
                clip::INPUT_IDS,
                DataType::Int64,
                &["batch".into(), Dim::Fixed(77)],
            )
            .unwrap();
        let f = b
            .node1("Cast", "cast", &[&ids], &[crate::onnx::Attr::int("to", 1)])
            .unwrap();
        b.output_as(
            &f,
            clip::OUTPUT,
            DataType::Float,
            &["batch".into(), Dim::Fixed(77)],
        )
        .unwrap();
    }

    #[test]
    fn graphs_are_checked_against_their_spec_before_they_are_written() {
        let dir = tempfile::tempdir().unwrap();
        let mut bundle = BundleWriter::create(&dir.path().join("b"), Precision::Fp32).unwrap();
        let sizes = |s: Size| match s {
            Size::MaxPositions | Size::HiddenSize => Some(77),
            _ => None,
        };
        let spec = Component::TextEncoder2.spec();
        // As declared: written, and the entry records the graph's own I/O.
        let mut g = GraphBuilder::new("ok");
        clip_like(&mut g);
        let e = write_staged(Net::new(g, &NoWeights), &mut bundle, &spec, &sizes, vec![]).unwrap();
        assert_eq!(e.inputs[0].dims, ["batch", "77"]);
        assert!(bundle.staging_dir().join(&e.file).is_file());
        // An altered spec (another hidden size, a renamed input) is caught, nothing written.
        let staged = |b: &BundleWriter| std::fs::read_dir(b.staging_dir()).unwrap().count();
        let before = staged(&bundle);
        let other = |s: Size| (s == Size::HiddenSize).then_some(64).or(sizes(s));
        let mut g = GraphBuilder::new("wrong");
        clip_like(&mut g);
        let err = write_staged(Net::new(g, &NoWeights), &mut bundle, &spec, &other, vec![]);
        assert!(matches!(err, Err(ExportError::Contract(_))), "{err:?}");
        let mut renamed = spec.clone();
        renamed.inputs[0].name = "token_ids";
        let mut g = GraphBuilder::new("renamed");
        clip_like(&mut g);
        let err = write_staged(
            Net::new(g, &NoWeights),
            &mut bundle,
            &renamed,
            &sizes,
            vec![],
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("`input_ids`") && err.contains("contract"),
            "{err}"
        );
        assert_eq!(staged(&bundle), before);
    }
}
