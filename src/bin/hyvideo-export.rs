//! `hyvideo-export`: HunyuanVideo checkpoints in, a self-contained ONNX bundle out.
//!
//! `onnx` exports components of a diffusers-format folder; `inspect` prints a bundle's
//! manifest (precision, exporter version, graph I/O, source checkpoints).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Result, bail};
use clap::{Parser, Subcommand};
use hyvideo_exporters::bundle::{Component, Manifest, Precision};
use hyvideo_exporters::export::{ExportRequest, TransformerSource, export};

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
    /// Components to export, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "vae_decoder", value_parser = |s: &str| s.parse::<Component>())]
    components: Vec<Component>,
    /// A single-file transformer checkpoint (diffusers or Tencent key layout, bf16/fp16/fp32 or
    /// fp8_e4m3fn) replacing the weights in `<model>/transformer/`.
    #[arg(long)]
    transformer: Option<PathBuf>,
    /// Per-tensor scale map of an fp8_e4m3fn `--transformer` file
    /// (default: `<stem>_map.safetensors` beside it).
    #[arg(long)]
    fp8_scale_map: Option<PathBuf>,
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
    /// Rebuild even when matching engines exist.
    #[arg(long)]
    rebuild: bool,
    #[command(flatten)]
    runtime: hyvideo::cli::RuntimeArgs,
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Onnx(args) => onnx(args),
        Command::Inspect { bundle } => inspect(bundle),
        Command::Build(args) => build(args),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn onnx(args: OnnxArgs) -> Result<()> {
    if args.components.is_empty() {
        bail!("--components: give at least one component");
    }
    let req = ExportRequest {
        model: args.model,
        out: args.out,
        precision: args.precision,
        components: args.components,
        transformer: TransformerSource {
            file: args.transformer,
            fp8_scale_map: args.fp8_scale_map,
            config: args.config,
        },
        precision_profile: args.precision_profile,
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

fn build(args: BuildArgs) -> Result<()> {
    use hyvideo::engine_set::{BuildOutcome, ShapePreset, build};
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

fn inspect(bundle: PathBuf) -> Result<()> {
    let m = Manifest::load(&bundle)?;
    let yaml = m.to_yaml()?;
    print!("{yaml}");
    if !yaml.ends_with('\n') {
        println!();
    }
    Ok(())
}
