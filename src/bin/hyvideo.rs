//! `hyvideo`: run HunyuanVideo from an exported bundle.
//!
//! `hyvideo decode` decodes saved latents with the tiled VAE decoder into MP4 / PNG /
//! safetensors (flags follow Tencent's `sample_video.py`).

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use hyvideo::cli::{RuntimeArgs, TilingArgs};
use hyvideo::latents::read_latents_named;
use hyvideo::vae::VaeDecoder;
use hyvideo::video::{Video, VideoFormat, save_video};
use hyvideo_exporters::bundle::Manifest;
use indicatif::{ProgressBar, ProgressStyle};

#[derive(Parser)]
#[command(
    name = "hyvideo",
    version,
    about = "Run HunyuanVideo from exported ONNX engines"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Decode saved latents (tensor `latents`, f32 [B,C,t,h,w], before division by the VAE
    /// scaling factor) with the tiled VAE decoder.
    Decode(DecodeArgs),
}

#[derive(clap::Args)]
struct DecodeArgs {
    /// Bundle directory written by `hyvideo-export onnx`.
    #[arg(long)]
    bundle: PathBuf,
    /// Latents file (.safetensors with tensor `latents`).
    #[arg(long)]
    latents: PathBuf,
    /// Name of the latents tensor inside --latents.
    #[arg(long, default_value = hyvideo::latents::LATENTS_TENSOR)]
    latents_name: String,
    /// Output: .mp4 (H.264), .png (one file per frame) or .safetensors (tensor `video`).
    #[arg(long)]
    save_path: PathBuf,
    /// Frames per second of MP4 output.
    #[arg(long, default_value_t = 24)]
    fps: u32,
    #[command(flatten)]
    tiling: TilingArgs,
    #[command(flatten)]
    runtime: RuntimeArgs,
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Decode(args) => decode(args),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

/// Fail before any work when the output cannot be written.
fn check_output_path(path: &Path) -> Result<()> {
    VideoFormat::from_path(path)?;
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if !parent.is_dir() {
        bail!(
            "--save-path {}: directory {} does not exist",
            path.display(),
            parent.display()
        );
    }
    Ok(())
}

fn progress(total: usize, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(total as u64);
    pb.set_style(
        ProgressStyle::with_template(
            "{msg:>12} [{bar:30}] {pos}/{len} {elapsed_precise} eta {eta}",
        )
        .expect("static template")
        .progress_chars("=> "),
    );
    pb.set_message(what.to_string());
    pb
}

fn decode(args: DecodeArgs) -> Result<()> {
    check_output_path(&args.save_path)?;
    let manifest = Manifest::load(&args.bundle)?;
    let t0 = Instant::now();
    let mut vae = VaeDecoder::load(&args.bundle, &manifest, &args.runtime.session_config())
        .with_context(|| format!("loading the VAE decoder of {}", args.bundle.display()))?;
    let load_s = t0.elapsed().as_secs_f64();
    let latents = read_latents_named(
        &args.latents,
        &args.latents_name,
        vae.settings().latent_channels,
    )?;
    let plan = vae.plan(latents.shape(), &args.tiling.config())?;
    eprintln!(
        "decoding latents {:?} -> video {:?} in {} decoder call(s) on {}",
        latents.shape(),
        plan.output_shape,
        plan.decoder_calls(),
        vae.provider()
    );
    let pb = progress(plan.decoder_calls(), "vae tiles");
    let t1 = Instant::now();
    let video = vae.decode(&latents, &plan, || pb.inc(1))?;
    pb.finish_and_clear();
    let decode_s = t1.elapsed().as_secs_f64();
    let t2 = Instant::now();
    let video = Video::new(video.shape(), video.into_data())?;
    let written = save_video(&args.save_path, &video, args.fps)?;
    let write_s = t2.elapsed().as_secs_f64();
    println!("stage            seconds");
    println!("load vae         {load_s:>8.3}");
    println!("decode ({:>3} t)  {decode_s:>8.3}", plan.decoder_calls());
    println!("write video      {write_s:>8.3}");
    if let Some(rss) = hyvideo::memory::peak_rss_bytes() {
        println!(
            "peak RSS         {:>8.1} MiB",
            rss as f64 / (1 << 20) as f64
        );
    }
    println!("provider: {}", vae.provider());
    for w in written {
        println!("wrote {}", w.display());
    }
    Ok(())
}
