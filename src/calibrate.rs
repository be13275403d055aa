//! `hyvideo-export calibrate`: per-layer activation ranges for FP8 from an fp32 bundle.
//!
//! As NVIDIA's diffusion demos calibrate FP8 (ModelOpt's amax calibration): run the fp32
//! transformer over a few denoising steps on calibration prompts and record, for every Linear
//! layer the FP8 profile quantises, the largest |input| seen. The layer inputs are read by
//! adding them as outputs of an in-memory copy of the graph (loaded with the bundle's weight
//! file; nothing is written into the bundle). The prompts, the initial latents and, for an
//! image-to-video bundle, the input image's conditioning come from the runtime's `Pipeline`
//! stages, so the loop sees what a generation feeds the transformer;
//! `hyvideo-export onnx --precision fp8 --scales FILE` turns amax into scales (amax / 448).

use std::collections::BTreeMap;
use std::path::Path;

use hyvideo::denoise::{DenoiseSettings, denoise_from_image};
use hyvideo::generation::{
    GenerationError, Pipeline, Sampling, Stage, StageConfigs, bundle_image_condition,
};
use hyvideo::image::RgbImage;
use hyvideo::pipeline::VideoSize;
use hyvideo::scheduler::FlowDirection;
use hyvideo::tensor::Tensor5;
use hyvideo::transformer::{StepInput, Transformer, TransformerError, VelocityModel};
use hyvideo_bundle::{Component, Manifest, Precision};
use hyvideo_engines::SessionConfig;
use hyvideo_exporters::precision::{Fp8Scales, PrecisionProfile};
use hyvideo_onnx::proto::{ModelProto, TypeProto, ValueInfoProto, type_proto};
use prost::Message;

#[derive(Debug, thiserror::Error)]
pub enum CalibrateError {
    #[error("{0}")]
    Setting(String),
    #[error("{}: {source}", .path.display())]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Generation(#[from] GenerationError),
    #[error(transparent)]
    Transformer(#[from] TransformerError),
    #[error(transparent)]
    Denoise(#[from] hyvideo::denoise::DenoiseError),
    #[error(transparent)]
    Manifest(#[from] hyvideo_bundle::ManifestError),
    #[error(transparent)]
    Export(#[from] hyvideo_exporters::error::ExportError),
}

/// What to run the calibration on.
#[derive(Debug, Clone)]
pub struct CalibrationRun {
    pub prompts: Vec<String>,
    pub size: VideoSize,
    pub steps: usize,
    pub seed: u64,
    /// `None`: the bundle's default (6.0; 1.0 for a latent_concat transformer).
    pub embedded_guidance: Option<f32>,
    pub flow_shift: f32,
    /// The input image of an image-to-video bundle (required there, refused otherwise).
    pub image: Option<RgbImage>,
}

/// A transformer whose observed outputs update per-layer amax.
struct Observing<'a> {
    model: &'a mut Transformer,
    /// graph output (layer input value) → the layers reading it (adaLN projections share one)
    layers: &'a BTreeMap<String, Vec<String>>,
    amax: &'a mut BTreeMap<String, f32>,
}

impl VelocityModel for Observing<'_> {
    fn predict(&mut self, input: &StepInput<'_>) -> Result<Tensor5, TransformerError> {
        let (layers, amax) = (self.layers, &mut *self.amax);
        self.model.predict_observed(input, &mut |name, data| {
            if let Some(names) = layers.get(name) {
                let m = data.iter().fold(0f32, |m, v| m.max(v.abs()));
                for layer in names {
                    let e = amax.entry(layer.clone()).or_insert(0.0);
                    *e = e.max(m);
                }
            }
        })
    }
}

/// Record the input amax of every layer the fp8 profile quantises, over `run`.
pub fn calibrate(
    bundle: &Path,
    run: &CalibrationRun,
    config: &SessionConfig,
) -> Result<Fp8Scales, CalibrateError> {
    if run.prompts.is_empty() || run.prompts.iter().any(|p| p.trim().is_empty()) {
        return Err(CalibrateError::Setting(
            "--prompt: give at least one non-empty prompt".into(),
        ));
    }
    if run.steps == 0 {
        return Err(CalibrateError::Setting("--steps must be at least 1".into()));
    }
    let manifest = Manifest::load(bundle)?;
    if manifest.precision != Precision::Fp32 {
        return Err(CalibrateError::Setting(format!(
            "{}: calibrate an fp32 bundle (this one is {})",
            bundle.display(),
            manifest.precision
        )));
    }
    let kind = bundle_image_condition(bundle)?;
    match (kind.is_image_to_video(), run.image.is_some()) {
        (true, false) => {
            return Err(CalibrateError::Setting(format!(
                "--image: {} is an image-to-video bundle (image_condition_type {kind}): \
                 calibrate it on an input image (PNG or JPEG) like the ones it will animate",
                bundle.display()
            )));
        }
        (false, true) => {
            return Err(CalibrateError::Setting(format!(
                "--image: {} is a text-to-video bundle; it takes no input image",
                bundle.display()
            )));
        }
        _ => {}
    }
    let quantize = PrecisionProfile::builtin(Precision::Fp8)?
        .fp8_quantize
        .ok_or_else(|| CalibrateError::Setting("the fp8 profile quantises nothing".into()))?;
    let entry = manifest.component(bundle, Component::Transformer)?;
    let graph_path = bundle.join(&entry.file);
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| CalibrateError::Io { path, source }
    };
    let bytes = std::fs::read(&graph_path).map_err(io(&graph_path))?;
    let mut model = ModelProto::decode(bytes.as_slice()).map_err(|e| CalibrateError::Io {
        path: graph_path.clone(),
        source: std::io::Error::other(e),
    })?;
    let graph = model
        .graph
        .as_mut()
        .ok_or_else(|| CalibrateError::Setting(format!("{}: no graph", graph_path.display())))?;
    let mut layers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for n in &graph.node {
        if n.op_type == "Gemm" && quantize.is_match(&n.name) {
            layers
                .entry(n.input[0].clone())
                .or_default()
                .push(n.name.clone());
        }
    }
    for value in layers.keys() {
        graph.output.push(ValueInfoProto {
            name: value.clone(),
            r#type: Some(TypeProto {
                value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                    elem_type: hyvideo_onnx::proto::DataType::Float as i32,
                    shape: None,
                })),
                denotation: String::new(),
            }),
            doc_string: String::new(),
        });
    }
    // Loaded from memory, weights from the bundle's data file: the bundle is only read.
    let mut transformer = Transformer::load_edited(&graph_path, model, config)?;
    // The text encoders (with LLaVA's vision graph) and, for image-to-video, the VAE encoder.
    let stages: &[Stage] = if kind.is_image_to_video() {
        &[Stage::TextEncoders, Stage::ImageEncode]
    } else {
        &[Stage::TextEncoders]
    };
    let mut pipeline =
        Pipeline::load_stages(bundle, None, &StageConfigs::all(config.clone()), stages)?;
    let guidance = run
        .embedded_guidance
        .unwrap_or_else(|| Sampling::default_embedded_guidance(kind));
    let settings = DenoiseSettings {
        steps: run.steps,
        shift: run.flow_shift,
        direction: FlowDirection::Reverse,
        embedded_guidance: transformer.takes_guidance().then_some(guidance),
        true_cfg: None,
    };
    // The image's conditioning is the same for every prompt: encoded once.
    let image = match &run.image {
        Some(img) => {
            let shape = pipeline.latent_shape(run.size)?;
            Some((img, pipeline.encode_image(img, run.size, shape)?))
        }
        None => None,
    };
    let mut amax = BTreeMap::new();
    for (i, prompt) in run.prompts.iter().enumerate() {
        let init = pipeline.initial_latents(run.size, run.seed + i as u64, None)?;
        let (prompts, init) = match &image {
            Some((img, c)) => (
                pipeline.encode_with_image(prompt, None, img, run.size)?,
                c.initial_latents(init),
            ),
            None => (pipeline.encode(prompt, None)?, init),
        };
        let mut observing = Observing {
            model: &mut transformer,
            layers: &layers,
            amax: &mut amax,
        };
        denoise_from_image(
            &mut observing,
            init,
            &prompts.prompt,
            None,
            &settings,
            image.as_ref().map(|(_, c)| c),
            |_, _| {},
        )?;
    }
    Ok(Fp8Scales::new(amax))
}
