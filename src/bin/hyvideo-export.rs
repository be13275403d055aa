//! `hyvideo-export`: HunyuanVideo checkpoints in, a self-contained ONNX bundle out.
//!
//! `onnx` exports components of a diffusers-format folder (every one it has by default);
//! `build` makes per-machine engines from a bundle; `calibrate` records fp8 activation ranges;
//! `inspect` prints a bundle's manifest (precision, exporter version, graph I/O, sources).
//! The export is `hyvideo_exporters::export`; `build` and `calibrate` are this package's
//! `engine_build` and `calibrate` modules.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use hyvideo_bundle::{Component, Manifest, Precision};
use hyvideo_exporters::export::{ExportRequest, TransformerSource, export, scan_components};

#[derive(Parser)]
#[command(
    name = "hyvideo-export",
    version,
    about = "Export HunyuanVideo checkpoints to ONNX bundles"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Export components of a diffusers-format HunyuanVideo folder (or a single-file
    /// transformer) to ONNX.
    Onnx(OnnxArgs),
    /// Build engines for this machine from a bundle: ONNX Runtime's optimised graphs (cpu),
    /// TensorRT engines with the shape preset's profile (tensorrt), or the graphs for the CUDA
    /// provider (cuda), into a directory keyed by device, runtime versions, precision and
    /// profile, with `engine.yaml`.
    Build(BuildArgs),
    /// Record FP8 activation ranges: run an fp32 bundle's transformer over a few denoising
    /// steps on calibration prompts and write the input amax of every layer the fp8 profile
    /// quantises (for `onnx --precision fp8 --scales FILE`).
    Calibrate(CalibrateArgs),
    /// Print a bundle's manifest.
    Inspect {
        /// Bundle directory.
        #[arg(long)]
        bundle: PathBuf,
    },
}

#[derive(clap::Args)]
struct OnnxArgs {
    /// diffusers-format model folder (model_index.json, vae/, transformer/, ...).
    #[arg(long)]
    model: PathBuf,
    /// Bundle directory to write (created; an existing bundle of the same precision is extended).
    #[arg(long)]
    out: PathBuf,
    /// Precision profile written into the graphs.
    #[arg(long, default_value = "fp32", value_parser = |s: &str| s.parse::<Precision>())]
    precision: Precision,
    /// Components to export, comma-separated: transformer, vae_decoder, text_encoder,
    /// text_encoder_2, vae_encoder (default: every one but vae_encoder whose sub-folder the
    /// model folder has — transformer/, vae/, text_encoder/, text_encoder_2/ — the transformer
    /// also with --transformer FILE).
    #[arg(long, value_delimiter = ',', value_parser = |s: &str| s.parse::<Component>())]
    components: Option<Vec<Component>>,
    /// A single-file transformer checkpoint (diffusers or Tencent key layout, bf16/fp16/fp32 or
    /// fp8_e4m3fn) replacing the weights in `<model>/transformer/`.
    #[arg(long)]
    transformer: Option<PathBuf>,
    /// Per-tensor scale map of an fp8_e4m3fn `--transformer` file
    /// (default: `<stem>_map.safetensors` beside it).
    #[arg(long)]
    fp8_scale_map: Option<PathBuf>,
    /// Activation scales for `--precision fp8` (made by `hyvideo-export calibrate`).
    #[arg(long)]
    scales: Option<PathBuf>,
    /// Precision profile YAML replacing the built-in `configs/precision/<precision>.yaml`
    /// (rules: regex over node names → fp32 / fp16 / bf16).
    #[arg(long)]
    precision_profile: Option<PathBuf>,
    /// Model preset YAML (`configs/models/*.yaml`) for the transformer config, for checkpoints
    /// without `<model>/transformer/config.json`.
    #[arg(long)]
    config: Option<PathBuf>,
}

#[derive(clap::Args)]
struct BuildArgs {
    /// Bundle directory written by `hyvideo-export onnx`.
    #[arg(long)]
    bundle: PathBuf,
    /// Shape preset (configs/shapes/*.yaml): resolutions, frames and batch ranges.
    #[arg(long)]
    shapes: PathBuf,
    /// Where engine directories go (default: <bundle>/engines).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Build again even when matching engines exist.
    #[arg(long)]
    rebuild: bool,
    #[command(flatten)]
    runtime: hyvideo_cli::cli::SessionArgs,
}

#[derive(clap::Args)]
struct CalibrateArgs {
    /// An fp32 bundle with all four components.
    #[arg(long)]
    bundle: PathBuf,
    /// Where to write the scales (JSON).
    #[arg(long)]
    out: PathBuf,
    /// Calibration prompts (repeat the flag); default: four varied prompts.
    #[arg(long)]
    prompt: Vec<String>,
    #[arg(long, num_args = 2, value_names = ["HEIGHT", "WIDTH"], default_values_t = [256, 256])]
    video_size: Vec<usize>,
    #[arg(long, default_value_t = 9)]
    video_length: usize,
    /// Denoising steps per prompt.
    #[arg(long, default_value_t = 4)]
    steps: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Embedded guidance scale [default: 6.0; 1.0 for an image_condition_type latent_concat
    /// bundle]
    #[arg(long)]
    embedded_cfg_scale: Option<f32>,
    #[arg(long, default_value_t = 7.0)]
    flow_shift: f32,
    /// The input image (PNG or JPEG) an image-to-video bundle is calibrated on: required
    /// there, refused for text-to-video
    #[arg(long)]
    image: Option<PathBuf>,
    #[command(flatten)]
    runtime: hyvideo_cli::cli::SessionArgs,
}

/// Prompts used when `calibrate` is given none.
const CALIBRATION_PROMPTS: [&str; 4] = [
    "A cat walks on the grass, realistic style.",
    "A drone shot over a city at night, neon lights reflecting on wet streets.",
    "Close-up of a chef slicing vegetables in a busy kitchen, warm light.",
    "Waves crash against a rocky coast under a stormy sky, slow motion.",
];

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Onnx(args) => onnx(args),
        Command::Inspect { bundle } => inspect(bundle),
        Command::Build(args) => build(args),
        Command::Calibrate(args) => calibrate(args),
    };
    if let Err(e) = result {
        eprintln!("error: {}", hyvideo_cli::cli::error_chain(e.as_ref()));
        std::process::exit(1);
    }
}

fn onnx(args: OnnxArgs) -> Result<()> {
    let transformer = TransformerSource {
        file: args.transformer,
        fp8_scale_map: args.fp8_scale_map,
        config: args.config,
    };
    let components = match args.components {
        Some(c) if c.is_empty() => bail!("--components: give at least one component"),
        Some(c) => c,
        None => default_components(&args.model, &transformer)?,
    };
    let req = ExportRequest {
        model: args.model,
        out: args.out,
        precision: args.precision,
        components,
        transformer,
        precision_profile: args.precision_profile,
        fp8_scales: args.scales,
    };
    let t0 = Instant::now();
    let manifest = export(&req, |c| eprintln!("exporting {c} ({})", req.precision))?;
    for c in &req.components {
        if let Some(e) = manifest.components.get(c) {
            println!(
                "{c}: {} (sha256 {})",
                req.out.join(&e.file).display(),
                e.sha256
            );
        }
    }
    println!("export took {:.3} s", t0.elapsed().as_secs_f64());
    Ok(())
}

/// Without `--components`: every component `model` has, naming what was found and skipped.
fn default_components(model: &Path, transformer: &TransformerSource) -> Result<Vec<Component>> {
    let scan = scan_components(model, transformer)?;
    let names = |v: &[Component]| v.iter().map(|c| c.name()).collect::<Vec<_>>().join(", ");
    if scan.present.is_empty() {
        bail!(
            "--model {} has none of the sub-folders transformer/, vae/, text_encoder/, \
             text_encoder_2/: nothing to export (a diffusers-format HunyuanVideo folder has them; \
             --transformer FILE supplies the transformer)",
            model.display()
        );
    }
    eprintln!(
        "components found in {}: {}",
        model.display(),
        names(&scan.present)
    );
    for (c, dir) in &scan.missing {
        eprintln!("skipping {c}: {} does not exist", dir.display());
    }
    Ok(scan.present)
}

fn build(args: BuildArgs) -> Result<()> {
    use hyvideo_bundle::profile::ShapePreset;
    use hyvideo_cli::engine_build::{BuildOutcome, build};
    let preset = ShapePreset::load(&args.shapes)?;
    let out = args.out.unwrap_or_else(|| args.bundle.join("engines"));
    let t0 = Instant::now();
    let outcome = build(
        &args.bundle,
        &preset,
        &args.runtime.session_config(),
        args.runtime.device_id,
        &out,
        args.rebuild,
        |c| eprintln!("building {c} ({})", args.runtime.backend),
    )?;
    match outcome {
        BuildOutcome::Built(dir) => println!(
            "built {} in {:.3} s",
            dir.display(),
            t0.elapsed().as_secs_f64()
        ),
        BuildOutcome::UpToDate(dir) => println!(
            "{} is up to date (pass --rebuild to build again)",
            dir.display()
        ),
    }
    Ok(())
}

fn calibrate(args: CalibrateArgs) -> Result<()> {
    use hyvideo_cli::calibrate::{CalibrationRun, calibrate};
    let [h, w] = <[usize; 2]>::try_from(args.video_size.as_slice())
        .map_err(|_| anyhow::anyhow!("--video-size takes two numbers: HEIGHT WIDTH"))?;
    let prompts = if args.prompt.is_empty() {
        CALIBRATION_PROMPTS.iter().map(|p| p.to_string()).collect()
    } else {
        args.prompt.clone()
    };
    let run = CalibrationRun {
        prompts,
        size: hyvideo::pipeline::VideoSize::new(h, w, args.video_length)?,
        steps: args.steps,
        seed: args.seed,
        embedded_guidance: args.embedded_cfg_scale,
        flow_shift: args.flow_shift,
        image: match &args.image {
            Some(p) => Some(hyvideo::image::load_image(p).context("--image")?),
            None => None,
        },
    };
    let dir = match args.out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !dir.is_dir() {
        bail!(
            "--out {}: directory {} does not exist",
            args.out.display(),
            dir.display()
        );
    }
    let t0 = Instant::now();
    let scales = calibrate(&args.bundle, &run, &args.runtime.session_config())?;
    hyvideo::atomic::write_file(&args.out, &serde_json::to_vec_pretty(&scales)?)
        .with_context(|| format!("writing {}", args.out.display()))?;
    println!(
        "calibrated {} layers on {} prompt(s) x {} steps in {:.2} s; wrote {}",
        scales.amax.len(),
        run.prompts.len(),
        run.steps,
        t0.elapsed().as_secs_f64(),
        args.out.display()
    );
    Ok(())
}

fn inspect(bundle: PathBuf) -> Result<()> {
    let m = Manifest::load(&bundle)?;
    let yaml = m.to_yaml()?;
    print!("{yaml}");
    if !yaml.ends_with('\n') {
        println!();
    }
    Ok(())
}
