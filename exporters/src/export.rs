//! `hyvideo-export onnx`: read a diffusers-format HunyuanVideo folder and write the requested
//! components into a bundle. One function per component, sharing the checkpoint-to-graph glue.

use std::path::{Path, PathBuf};

use crate::bundle::{
    BundleWriter, Component, ComponentEntry, Manifest, Precision, SourceFile, TensorSpec,
    VaeSettings,
};
use crate::checkpoint::{Checkpoint, DType, VaeConfig, Weights};
use crate::error::{ExportError, Result};
use crate::graph::{Net, WeightProvider};
use crate::onnx::{GraphBuilder, TensorSource, WrittenModel, write_model};
use crate::vae_decoder;

/// What to export.
#[derive(Debug, Clone)]
pub struct ExportRequest {
    /// The diffusers-format model folder.
    pub model: PathBuf,
    pub out: PathBuf,
    pub precision: Precision,
    pub components: Vec<Component>,
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

fn weight_dtype(precision: Precision) -> Result<DType> {
    match precision {
        Precision::Fp32 => Ok(DType::F32),
        other => Err(ExportError::Model {
            component: "export",
            reason: format!("precision {other} is not implemented yet; use --precision fp32"),
        }),
    }
}

/// The sub-folder of the model directory a component's weights live in.
fn subfolder(model: &Path, component: Component) -> Result<PathBuf> {
    let name = match component {
        Component::VaeDecoder => "vae",
        Component::Transformer => "transformer",
        Component::TextEncoder => "text_encoder",
        Component::TextEncoder2 => "text_encoder_2",
    };
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

fn tensor_specs(dims: &[(&str, &str, Vec<String>)]) -> Vec<TensorSpec> {
    dims.iter()
        .map(|(n, t, d)| TensorSpec {
            name: n.to_string(),
            dtype: t.to_string(),
            dims: d.clone(),
        })
        .collect()
}

fn entry(
    written: &WrittenModel,
    inputs: Vec<TensorSpec>,
    outputs: Vec<TensorSpec>,
    sources: Vec<SourceFile>,
) -> ComponentEntry {
    let file_name = |p: &Path| {
        p.file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    ComponentEntry {
        file: file_name(&written.onnx_path),
        data_file: Some(file_name(&written.data_path)),
        sha256: written.onnx_sha256.clone(),
        inputs,
        outputs,
        sources,
    }
}

fn with_metadata(b: GraphBuilder, component: Component, precision: Precision) -> GraphBuilder {
    b.with_producer("hyvideo-export", crate::bundle::EXPORTER_VERSION)
        .with_metadata("hyvideo.component", component.name())
        .with_metadata("hyvideo.precision", precision.to_string())
}

/// Export the VAE decoder of `model` into the staging area of `bundle`.
pub fn export_vae_decoder(
    model: &Path,
    bundle: &mut BundleWriter,
    precision: Precision,
) -> Result<()> {
    let dir = subfolder(model, Component::VaeDecoder)?;
    let cfg = VaeConfig::load(dir.join("config.json"))?;
    let ckpt = std::sync::Arc::new(Checkpoint::open(&dir)?);
    let provider = CheckpointWeights {
        weights: Weights::new(ckpt.clone()),
        target: weight_dtype(precision)?,
    };
    let mut net = Net::new(
        with_metadata(
            vae_decoder::graph_builder(),
            Component::VaeDecoder,
            precision,
        ),
        &provider,
    );
    vae_decoder::build(&mut net, &cfg)?;
    let written = write_model(
        net.finish(),
        bundle.staging_dir(),
        Component::VaeDecoder.name(),
    )?;
    bundle.stage(
        written
            .onnx_path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned(),
    );
    bundle.stage(
        written
            .data_path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned(),
    );
    let f = "float32";
    let inputs = tensor_specs(&[(
        vae_decoder::INPUT,
        f,
        vec![
            "batch".into(),
            cfg.latent_channels.to_string(),
            "latent_frames".into(),
            "latent_height".into(),
            "latent_width".into(),
        ],
    )]);
    let outputs = tensor_specs(&[(
        vae_decoder::OUTPUT,
        f,
        vec![
            "batch".into(),
            cfg.out_channels.to_string(),
            "frames".into(),
            "height".into(),
            "width".into(),
        ],
    )]);
    let e = entry(&written, inputs, outputs, sources(&ckpt, model)?);
    bundle.copy_file(&dir.join("config.json"), "vae/config.json")?;
    let m: &mut Manifest = bundle.manifest_mut();
    m.components.insert(Component::VaeDecoder, e);
    m.vae = Some(VaeSettings {
        latent_channels: cfg.latent_channels,
        out_channels: cfg.out_channels,
        scaling_factor: cfg.scaling_factor,
        spatial_compression_ratio: cfg.spatial_compression_ratio,
        temporal_compression_ratio: cfg.temporal_compression_ratio,
    });
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
    for &c in &req.components {
        on_component(c);
        match c {
            Component::VaeDecoder => export_vae_decoder(&req.model, &mut bundle, req.precision)?,
            other => {
                return Err(ExportError::Model {
                    component: other.name(),
                    reason: "exporting this component is not implemented yet (only vae_decoder)"
                        .into(),
                });
            }
        }
    }
    bundle.commit()
}
