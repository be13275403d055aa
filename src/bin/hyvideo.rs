//! `hyvideo`: run HunyuanVideo from an exported bundle (flags follow Tencent's
//! `sample_video.py`).
//!
//! `generate` goes from a prompt and a seed to a video (text encoders, denoising loop, tiled
//! decode) with a JSON run record; `denoise` runs the loop alone from saved prompt embeddings
//! and initial latents; `decode` decodes saved latents into MP4 / PNG / safetensors; `bench`
//! times every stage, optionally beside the PyTorch path. All four are thin over the library's
//! `hyvideo::generation::Pipeline` (loading only the stages they run); library errors name a
//! setting, which `hyvideo_cli::cli::setting_flag` turns into this binary's flag.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use hyvideo::denoiser::TransformerForm;
use hyvideo::generation::{
    CancelFlag, GenerateRequest, GenerationError, Pipeline, Progress, Sampling, Stage,
};
use hyvideo::latents::{TensorFile, read_latents_named, write_latents};
use hyvideo::transformer::TextConditioning;
use hyvideo::video::{Video, VideoFormat, save_video};
use hyvideo_bundle::AttentionKernel;
use hyvideo_cli::cli::{RuntimeArgs, SamplingArgs, StepCacheArgs, TilingArgs, flagged_message};
use hyvideo_engines::BackendKind;
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
    /// Prompt to video: text encoders, seeded noise, the denoising loop, tiled VAE decode.
    Generate(GenerateArgs),
    /// Per-stage latency (min/median/max over runs) and peak memory of the engine path; with
    /// --native also the PyTorch path (benches/native/pipeline_native.py) side by side.
    Bench(BenchArgs),
    /// Run the denoising loop from saved prompt embeddings and initial latents (the text
    /// encoders come later): writes the final latents for `hyvideo decode`.
    Denoise(DenoiseArgs),
    /// Serve the OpenAI-compatible `/v1/videos` API: the engines loaded once, jobs in a durable
    /// queue in --data-dir, one worker running them.
    Serve(ServeArgs),
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Bundle directory with all four components.
    #[arg(long)]
    bundle: PathBuf,
    /// Address to listen on; a non-loopback one needs --api-key.
    #[arg(long, default_value = "127.0.0.1:8000")]
    listen: std::net::SocketAddr,
    /// Where the queue database and the videos live.
    #[arg(long)]
    data_dir: PathBuf,
    /// Bearer token every /v1 request must carry.
    #[arg(long, env = "HYVIDEO_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// The job queue: `sqlite` (in --data-dir; the default, one server) or a PostgreSQL URL
    /// `postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE` shared by several servers (the
    /// finished videos are stored there too).
    #[arg(
        long,
        default_value = "sqlite",
        env = "HYVIDEO_QUEUE",
        hide_env_values = true
    )]
    queue: String,
    /// This worker's name in the video objects (default host:pid).
    #[arg(long)]
    worker_id: Option<String>,
    /// Queued jobs at most (the running one not counted); more get 429.
    #[arg(long, default_value_t = 100)]
    max_queue: usize,
    #[arg(long, default_value_t = 1000)]
    max_steps: usize,
    #[arg(long, default_value_t = 129)]
    max_frames: usize,
    /// Longest side in pixels.
    #[arg(long, default_value_t = 1280)]
    max_size: usize,
    /// Seconds a worker's claim on a job lasts unless renewed (a dead worker's job runs again
    /// after it).
    #[arg(long, default_value_t = 30)]
    lease_seconds: i64,
    /// Hours a finished video is kept (its `expires_at`).
    #[arg(long, default_value_t = 24)]
    retention: i64,
    #[command(flatten)]
    runtime: RuntimeArgs,
}

#[derive(clap::Args)]
struct GenerateArgs {
    /// Bundle directory with transformer, vae_decoder, text_encoder and text_encoder_2.
    #[arg(long)]
    bundle: PathBuf,
    /// The prompt.
    #[arg(long)]
    prompt: String,
    /// Negative prompt, used with --cfg-scale > 1 (true classifier-free guidance).
    #[arg(long)]
    neg_prompt: Option<String>,
    /// The input image (PNG or JPEG) of an image-to-video bundle (HunyuanVideo-I2V or
    /// -I2V-33ch): required there, refused for text-to-video. Resized to --video-size.
    #[arg(long)]
    image: Option<PathBuf>,
    /// Video height and width in pixels (multiples of 16).
    #[arg(long, num_args = 2, value_names = ["HEIGHT", "WIDTH"], default_values_t = [720, 1280])]
    video_size: Vec<usize>,
    /// Frames (4k + 1).
    #[arg(long, default_value_t = 129)]
    video_length: usize,
    /// Seed of the initial noise (torch.Generator("cpu").manual_seed); random when omitted.
    #[arg(long)]
    seed: Option<u64>,
    /// Initial latents (.safetensors, tensor `latents` f32 [1,C,t,h,w]) instead of seeded noise.
    #[arg(long)]
    latents: Option<PathBuf>,
    /// Also write the final latents (tensor `latents`, before division by the scaling factor).
    #[arg(long)]
    output_latents: Option<PathBuf>,
    /// Output video: .mp4, .png (one per frame) or .safetensors (tensor `video`).
    #[arg(long)]
    save_path: PathBuf,
    /// Frames per second of MP4 output.
    #[arg(long, default_value_t = 24)]
    fps: u32,
    #[command(flatten)]
    sampling: SamplingArgs,
    #[command(flatten)]
    tiling: TilingArgs,
    #[command(flatten)]
    runtime: RuntimeArgs,
}

#[derive(clap::Args)]
struct BenchArgs {
    /// Bundle directory with all four components.
    #[arg(long)]
    bundle: PathBuf,
    /// Settings JSON (prompt, height, width, frames, steps, embedded_cfg_scale, flow_shift,
    /// seed, and for an image-to-video bundle image), e.g. the `bench_settings.json` that
    /// benches/native/make_bench_model.py (or make_bench_i2v_model.py) writes. Flags below
    /// override nothing when it is given, except --image.
    #[arg(long)]
    settings: Option<PathBuf>,
    /// The input image (PNG or JPEG) of an image-to-video bundle, in place of the settings'
    /// `image`: required there, refused for text-to-video.
    #[arg(long)]
    image: Option<PathBuf>,
    #[arg(long, default_value = "A cat walks on the grass, realistic style.")]
    prompt: String,
    #[arg(long, num_args = 2, value_names = ["HEIGHT", "WIDTH"], default_values_t = [256, 256])]
    video_size: Vec<usize>,
    #[arg(long, default_value_t = 9)]
    video_length: usize,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    #[arg(long, default_value_t = 10)]
    infer_steps: usize,
    /// Embedded guidance scale [default: 6.0; 1.0 for an image_condition_type latent_concat
    /// bundle].
    #[arg(long)]
    embedded_cfg_scale: Option<f32>,
    #[arg(long, default_value_t = 7.0)]
    flow_shift: f32,
    /// Timed runs per stage.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Untimed warm-up runs per stage.
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// Also run the native PyTorch path on this diffusers folder (the one the bundle was
    /// exported from).
    #[arg(long, requires = "native_model")]
    native: bool,
    /// The diffusers-format folder for --native.
    #[arg(long)]
    native_model: Option<PathBuf>,
    /// Python with benches/native/requirements.txt installed (default: the `.venv-bench/`
    /// that `benches/native/setup.sh` makes beside the native script's source tree, else
    /// `python3`).
    #[arg(long)]
    python: Option<PathBuf>,
    /// The native script (default: benches/native/pipeline_native.py of this source tree).
    #[arg(long)]
    native_script: Option<PathBuf>,
    /// Write the results as JSON here too.
    #[arg(long)]
    json: Option<PathBuf>,
    #[command(flatten)]
    step_cache: StepCacheArgs,
    #[command(flatten)]
    tiling: TilingArgs,
    #[command(flatten)]
    runtime: RuntimeArgs,
}

#[derive(clap::Args)]
struct DenoiseArgs {
    /// Bundle directory with a `transformer`.
    #[arg(long)]
    bundle: PathBuf,
    /// Prompt embeddings (.safetensors) with tensors named as diffusers' pipeline arguments:
    /// `prompt_embeds` [B,L,D], `prompt_attention_mask` [B,L], `pooled_prompt_embeds` [B,P],
    /// and with --cfg-scale > 1 also `negative_prompt_embeds`, `negative_prompt_attention_mask`,
    /// `negative_pooled_prompt_embeds`.
    #[arg(long)]
    prompt_embeds: PathBuf,
    /// Initial noise (.safetensors with tensor `latents`, f32 [B,C,t,h,w]).
    #[arg(long)]
    latents: PathBuf,
    /// Where to write the final latents (tensor `latents`).
    #[arg(long)]
    output_latents: PathBuf,
    #[command(flatten)]
    sampling: SamplingArgs,
    #[command(flatten)]
    runtime: RuntimeArgs,
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
        Command::Denoise(args) => denoise_cmd(args),
        Command::Generate(args) => generate(args),
        Command::Bench(args) => bench_cmd(args),
        Command::Serve(args) => serve_cmd(args),
    };
    if let Err(e) = result {
        eprintln!("error: {}", hyvideo_cli::cli::error_chain(e.as_ref()));
        std::process::exit(1);
    }
}

/// Fail before any work when `path` (given with `flag`) cannot be written: its directory must
/// exist.
fn check_output_dir(flag: &str, path: &Path) -> Result<()> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if !parent.is_dir() {
        bail!(
            "{flag} {}: directory {} does not exist",
            path.display(),
            parent.display()
        );
    }
    Ok(())
}

/// The per-stage latency table every subcommand ends with (seconds per stage), then the peak
/// resident memory, the execution provider asked for and where ONNX Runtime actually placed each
/// loaded component's nodes.
fn report(stages: &[(String, f64)], provider: BackendKind, pipeline: &Pipeline) {
    println!("stage            seconds");
    for (name, secs) in stages {
        println!("{name:<16} {secs:>8.3}");
    }
    if let Some(rss) = hyvideo::memory::peak_rss_bytes() {
        println!(
            "peak RSS         {:>8.1} MiB",
            rss as f64 / (1 << 20) as f64
        );
    }
    println!("provider: {provider}");
    for (component, placement) in pipeline.placements() {
        println!("  {component}: {placement}");
    }
}

/// Each resident component's node placement, as the run record holds it.
fn placement_record(pipeline: &Pipeline) -> std::collections::BTreeMap<String, String> {
    pipeline
        .placements()
        .into_iter()
        .map(|(c, p)| (c.to_string(), p.to_string()))
        .collect()
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

/// A library error with a setting at fault named by its flag.
fn flagged(e: GenerationError) -> anyhow::Error {
    match e.invalid_setting() {
        Some(i) => anyhow::anyhow!(flagged_message(i)),
        None => e.into(),
    }
}

/// A progress bar that follows a stage's steps or tiles as [`Progress`] events arrive.
#[derive(Default)]
struct Bars {
    bar: Option<ProgressBar>,
}

impl Bars {
    fn on(&mut self, event: Progress) {
        match event {
            Progress::Stage(_) => self.finish(),
            Progress::Step { steps, elapsed, .. } => {
                let b = self.bar.get_or_insert_with(|| progress(steps, "denoise"));
                b.set_message(format!("{:.2} s/step", elapsed.as_secs_f64()));
                b.inc(1);
            }
            Progress::Tile { tiles, .. } => {
                let b = self.bar.get_or_insert_with(|| progress(tiles, "vae tiles"));
                b.inc(1);
            }
        }
    }

    fn finish(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
    }
}

/// The pipeline of `bundle` with `stages`, on the engines and backends `runtime` names.
fn load_pipeline(
    bundle: &Path,
    runtime: &RuntimeArgs,
    stages: &[Stage],
    form: TransformerForm,
) -> Result<Pipeline> {
    let engines = runtime.engine_set(bundle)?;
    Pipeline::load_stages(bundle, engines, &runtime.stage_configs(form), stages)
        .map_err(flagged)
        .with_context(|| format!("loading {}", bundle.display()))
}

fn decode(args: DecodeArgs) -> Result<()> {
    VideoFormat::from_path(&args.save_path)?;
    check_output_dir("--save-path", &args.save_path)?;
    let tiling = args.tiling.config();
    tiling.validate().map_err(|e| match e {
        hyvideo::vae_tiling::TilingError::Invalid(i) => anyhow::anyhow!(flagged_message(&i)),
        other => other.into(),
    })?;
    let t0 = Instant::now();
    let mut pipeline = load_pipeline(
        &args.bundle,
        &args.runtime,
        &[Stage::Decode],
        TransformerForm::Single,
    )?;
    let load_s = t0.elapsed().as_secs_f64();
    let channels = pipeline.vae_settings().map_err(flagged)?.latent_channels;
    let latents = read_latents_named(&args.latents, &args.latents_name, channels)?;
    let provider = pipeline.vae().map_err(flagged)?.provider();
    eprintln!("decoding latents {:?} on {provider}", latents.shape());
    let mut bars = Bars::default();
    let t1 = Instant::now();
    let decoded = pipeline.decode(&latents, &tiling, &mut |e| bars.on(e), &CancelFlag::new());
    bars.finish();
    let decoded = decoded.map_err(flagged)?;
    let decode_s = t1.elapsed().as_secs_f64();
    let t2 = Instant::now();
    let video = Video::new(decoded.video.shape(), decoded.video.into_data())?;
    let written = save_video(&args.save_path, &video, args.fps)?;
    let write_s = t2.elapsed().as_secs_f64();
    report(
        &[
            ("load vae".into(), load_s),
            (format!("decode ({:>3} t)", decoded.decoder_calls), decode_s),
            ("write video".into(), write_s),
        ],
        provider,
        &pipeline,
    );
    for w in written {
        println!("wrote {}", w.display());
    }
    Ok(())
}

/// Prompt conditioning `<prefix>prompt_embeds`, `<prefix>prompt_attention_mask`,
/// `<prefix>pooled_prompt_embeds` of `file`.
fn read_text(file: &TensorFile, prefix: &str) -> Result<TextConditioning> {
    let (es, e) = file.f32(&format!("{prefix}prompt_embeds"))?;
    let (ms, m) = file.i64(&format!("{prefix}prompt_attention_mask"))?;
    let (ps, p) = file.f32(&format!("{prefix}pooled_prompt_embeds"))?;
    Ok(TextConditioning::new((&es, e), (&ms, m), (&ps, p))?)
}

fn denoise_cmd(args: DenoiseArgs) -> Result<()> {
    check_output_dir("--output-latents", &args.output_latents)?;
    let kind = hyvideo::generation::bundle_image_condition(&args.bundle).map_err(flagged)?;
    if kind.is_image_to_video() {
        anyhow::bail!(
            "--bundle {} is image-to-video (image_condition_type {kind}): `hyvideo denoise` runs \
             text-to-video bundles; use `hyvideo generate --image`",
            args.bundle.display()
        );
    }
    let sampling = args.sampling.sampling(kind);
    sampling
        .validate()
        .map_err(|e| anyhow::anyhow!(flagged_message(&e)))?;
    let embeds = TensorFile::open(&args.prompt_embeds)?;
    let text = read_text(&embeds, "")?;
    let negative = if sampling.true_cfg() {
        Some(read_text(&embeds, "negative_").context("--cfg-scale > 1 needs a negative prompt")?)
    } else {
        None
    };
    let latents = TensorFile::open(&args.latents)?.tensor5(hyvideo::latents::LATENTS_TENSOR)?;
    let t0 = Instant::now();
    let mut pipeline = load_pipeline(
        &args.bundle,
        &args.runtime,
        &[Stage::Denoise],
        args.sampling.transformer_form(),
    )?;
    let load_s = t0.elapsed().as_secs_f64();
    let provider = pipeline.transformer().map_err(flagged)?.provider();
    eprintln!(
        "denoising latents {:?}, {} steps, shift {}, {} on {provider}",
        latents.shape(),
        sampling.steps,
        sampling.flow_shift,
        sampling.direction,
    );
    let mut bars = Bars::default();
    let mut step_s = Vec::with_capacity(sampling.steps);
    let t1 = Instant::now();
    let out = pipeline.denoise(
        &sampling,
        latents,
        &text,
        negative.as_ref(),
        &mut |e| {
            if let Progress::Step { elapsed, .. } = e {
                step_s.push(elapsed.as_secs_f64());
            }
            bars.on(e)
        },
        &CancelFlag::new(),
    );
    bars.finish();
    let out = out.map_err(flagged)?;
    let loop_s = t1.elapsed().as_secs_f64();
    write_latents(&args.output_latents, &out)?;
    let mean = step_s.iter().sum::<f64>() / step_s.len().max(1) as f64;
    report(
        &[
            ("load transformer".into(), load_s),
            (format!("denoise ({:>3} s)", sampling.steps), loop_s),
            ("  per step".into(), mean),
        ],
        provider,
        &pipeline,
    );
    if let Some(r) = pipeline.last_step_cache() {
        println!("step cache: {}", r.to_json());
    }
    println!("wrote {}", args.output_latents.display());
    Ok(())
}

/// The VAE decode tiling of a run record: each axis `{"mode": "tiled", ...}` or
/// `{"mode": "disabled"}`.
#[derive(Debug, PartialEq, serde::Serialize)]
struct TilingRecord {
    /// Spatial tiles, in output pixels (`--vae-tile-size`, `--vae-tile-stride`).
    spatial: SpatialRecord,
    /// Frame-wise (temporal) tiles, in frames (`--vae-tile-frames`, `--vae-tile-stride-frames`).
    frame_wise: FrameWiseRecord,
}

#[derive(Debug, PartialEq, serde::Serialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
enum SpatialRecord {
    Tiled {
        tile_pixels: usize,
        stride_pixels: usize,
    },
    /// `--no-vae-tiling`.
    Disabled,
}

#[derive(Debug, PartialEq, serde::Serialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
enum FrameWiseRecord {
    Tiled {
        tile_frames: usize,
        stride_frames: usize,
    },
    /// `--no-vae-framewise`.
    Disabled,
}

impl From<&hyvideo::vae_tiling::TilingConfig> for TilingRecord {
    fn from(c: &hyvideo::vae_tiling::TilingConfig) -> Self {
        TilingRecord {
            spatial: c
                .spatial
                .map_or(SpatialRecord::Disabled, |s| SpatialRecord::Tiled {
                    tile_pixels: s.tile,
                    stride_pixels: s.stride,
                }),
            frame_wise: c
                .temporal
                .map_or(FrameWiseRecord::Disabled, |t| FrameWiseRecord::Tiled {
                    tile_frames: t.tile,
                    stride_frames: t.stride,
                }),
        }
    }
}

/// Everything a generated video was made with, written beside it as JSON.
#[derive(serde::Serialize)]
struct RunRecord<'a> {
    prompt: &'a str,
    neg_prompt: Option<&'a str>,
    video_size: [usize; 2],
    video_length: usize,
    /// Frames in the written video: `video_length`, or 4 fewer for a latent_concat
    /// (HunyuanVideo-I2V-33ch) bundle, as the reference pipeline returns.
    output_frames: usize,
    seed: Option<u64>,
    latents: Option<String>,
    infer_steps: usize,
    embedded_cfg_scale: f32,
    /// The input image of an image-to-video run.
    #[serde(skip_serializing_if = "Option::is_none")]
    image: Option<String>,
    flow_shift: f32,
    flow_direction: hyvideo::scheduler::FlowDirection,
    cfg_scale: f32,
    /// What the step cache computed: `{method, threshold, start, end, computed_steps}`
    /// (0-based steps; `{cond, uncond}` with true CFG); null without a cache.
    step_cache: Option<serde_json::Value>,
    fps: u32,
    tiling: TilingRecord,
    bundle: String,
    manifest_sha256: String,
    exporter_version: String,
    precision: String,
    provider: String,
    /// The transformer's attention: `multi_head_attention` (fused) or `standard`.
    transformer_attention: AttentionKernel,
    /// Where ONNX Runtime placed each resident component's nodes, per provider.
    placement: std::collections::BTreeMap<String, String>,
    stages_seconds: Vec<(String, f64)>,
    peak_rss_mib: Option<f64>,
    outputs: Vec<String>,
}

fn generate(args: GenerateArgs) -> Result<()> {
    let [height, width] = <[usize; 2]>::try_from(args.video_size.as_slice())
        .map_err(|_| anyhow::anyhow!("--video-size takes two numbers: HEIGHT WIDTH"))?;
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    });
    let initial_latents = match &args.latents {
        Some(p) => {
            Some(hyvideo::latents::TensorFile::open(p)?.tensor5(hyvideo::latents::LATENTS_TENSOR)?)
        }
        None => None,
    };
    let kind = hyvideo::generation::bundle_image_condition(&args.bundle).map_err(flagged)?;
    let image = match &args.image {
        Some(p) => Some(hyvideo::image::load_image(p).with_context(|| "--image")?),
        None => None,
    };
    let request = GenerateRequest {
        prompt: args.prompt.clone(),
        negative_prompt: args.neg_prompt.clone(),
        height,
        width,
        frames: args.video_length,
        sampling: args.sampling.sampling(kind),
        seed,
        initial_latents,
        tiling: args.tiling.config(),
        image,
    };
    // Everything checked before anything loads or runs.
    request
        .validate_for(kind)
        .map_err(|e| anyhow::anyhow!(flagged_message(&e)))?;
    VideoFormat::from_path(&args.save_path)?;
    check_output_dir("--save-path", &args.save_path)?;
    if let Some(p) = &args.output_latents {
        check_output_dir("--output-latents", p)?;
    }
    let mut stages: Vec<(String, f64)> = vec![];

    let t = Instant::now();
    let mut pipeline = load_pipeline(
        &args.bundle,
        &args.runtime,
        &Stage::ALL,
        args.sampling.transformer_form(),
    )?;
    stages.push(("load engines".into(), t.elapsed().as_secs_f64()));
    let manifest_sha256 = hyvideo_bundle::hash::sha256_file(&args.bundle.join("manifest.yaml"))?;
    if args.latents.is_none() {
        eprintln!("seed {seed}");
    }

    let mut bars = Bars::default();
    let generated = pipeline.generate(&request, &mut |e| bars.on(e), &CancelFlag::new());
    bars.finish();
    let generated = generated.map_err(flagged)?;
    if generated.truncated {
        eprintln!(
            "warning: the prompt was cut to fit ({} Llama tokens, 77 CLIP tokens)",
            hyvideo::text::MAX_SEQUENCE_LENGTH
        );
    }
    for (stage, d) in &generated.timings {
        let name = match stage {
            Stage::TextEncoders => "text encoders".to_string(),
            Stage::ImageEncode => "image encode".to_string(),
            Stage::Denoise => format!("denoise ({:>3} s)", request.sampling.steps),
            Stage::Decode => format!("decode ({:>3} t)", generated.decoder_calls),
        };
        stages.push((name, d.as_secs_f64()));
    }
    let mut outputs = vec![];
    if let Some(p) = &args.output_latents {
        write_latents(p, &generated.latents)?;
        outputs.push(p.display().to_string());
    }

    let t = Instant::now();
    let video = Video::new(generated.video.shape(), generated.video.data().to_vec())?;
    let written = save_video(&args.save_path, &video, args.fps)?;
    stages.push(("write video".into(), t.elapsed().as_secs_f64()));
    outputs.extend(written.iter().map(|w| w.display().to_string()));

    let model = pipeline.transformer().map_err(flagged)?;
    let manifest = pipeline.manifest();
    let record = RunRecord {
        prompt: &args.prompt,
        neg_prompt: args.neg_prompt.as_deref(),
        video_size: [height, width],
        video_length: args.video_length,
        output_frames: generated.video.shape()[2],
        seed: generated.seed,
        latents: args.latents.as_ref().map(|p| p.display().to_string()),
        infer_steps: request.sampling.steps,
        embedded_cfg_scale: request.sampling.embedded_guidance,
        image: args.image.as_ref().map(|p| p.display().to_string()),
        flow_shift: request.sampling.flow_shift,
        flow_direction: request.sampling.direction,
        cfg_scale: args.sampling.cfg_scale,
        step_cache: generated.step_cache.as_ref().map(|r| r.to_json()),
        fps: args.fps,
        tiling: TilingRecord::from(&args.tiling.config()),
        bundle: args.bundle.display().to_string(),
        manifest_sha256,
        exporter_version: manifest.exporter_version.clone(),
        precision: manifest.precision.to_string(),
        provider: model.provider().to_string(),
        transformer_attention: model.attention(),
        placement: placement_record(&pipeline),
        stages_seconds: stages.clone(),
        peak_rss_mib: hyvideo::memory::peak_rss_bytes().map(|b| b as f64 / (1 << 20) as f64),
        outputs: outputs.clone(),
    };
    let json_path = args.save_path.with_extension("json");
    let json = serde_json::to_vec_pretty(&record)?;
    hyvideo::atomic::write_file(&json_path, &json)
        .with_context(|| format!("writing {}", json_path.display()))?;
    report(&stages, model.provider(), &pipeline);
    for o in outputs {
        println!("wrote {o}");
    }
    println!("wrote {}", json_path.display());
    Ok(())
}

/// The bench's settings: `--settings` (its `image` relative to its folder) or the flags, then
/// `--image` in place of the settings' image.
fn bench_settings(args: &BenchArgs) -> Result<hyvideo_cli::bench::BenchSettings> {
    use hyvideo_cli::bench::BenchSettings;
    let s = match &args.settings {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("--settings {}", p.display()))?;
            let dir = p.parent().unwrap_or(Path::new(""));
            BenchSettings::from_json(&text, dir)
                .with_context(|| format!("--settings {}: not a bench settings file", p.display()))?
        }
        None => {
            let [height, width] = <[usize; 2]>::try_from(args.video_size.as_slice())
                .map_err(|_| anyhow::anyhow!("--video-size takes two numbers: HEIGHT WIDTH"))?;
            BenchSettings {
                prompt: args.prompt.clone(),
                height,
                width,
                frames: args.video_length,
                steps: args.infer_steps,
                embedded_guidance_scale: args.embedded_cfg_scale,
                flow_shift: args.flow_shift,
                flow_reverse: false,
                seed: args.seed,
                max_sequence_length: hyvideo::text::MAX_SEQUENCE_LENGTH,
                image: None,
            }
        }
    };
    Ok(s.with_image(args.image.as_deref()))
}

/// Run `f` warm-up + timed times; the timed seconds and the last result.
fn timed<T>(warmup: usize, runs: usize, mut f: impl FnMut() -> Result<T>) -> Result<(Vec<f64>, T)> {
    let mut last = None;
    let mut secs = Vec::with_capacity(runs);
    for i in 0..warmup + runs.max(1) {
        let t = Instant::now();
        let v = f()?;
        if i >= warmup {
            secs.push(t.elapsed().as_secs_f64());
        }
        last = Some(v);
    }
    last.map(|v| (secs, v))
        .ok_or_else(|| anyhow::anyhow!("no run"))
}

/// The torch device the native path runs on: the GPU the engines use, else the CPU.
fn native_device(runtime: &RuntimeArgs) -> String {
    match runtime.session.backend {
        BackendKind::Cpu => "cpu".into(),
        BackendKind::Cuda | BackendKind::TensorRt => format!("cuda:{}", runtime.session.device_id),
    }
}

/// The native script next to this source tree (or the installed binary's project).
fn find_native_script(explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = explicit {
        return Ok(p.to_path_buf());
    }
    let rel = Path::new("benches/native/pipeline_native.py");
    let mut candidates = vec![Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)];
    if let Ok(exe) = std::env::current_exe() {
        candidates.extend(exe.ancestors().map(|a| a.join(rel)));
    }
    candidates.into_iter().find(|c| c.is_file()).ok_or_else(|| {
        anyhow::anyhow!("benches/native/pipeline_native.py not found: pass --native-script")
    })
}

/// `--python`, else the bench venv of the tree `script` is in (`benches/native/setup.sh`
/// makes it), else `python3` from PATH.
fn native_python(explicit: Option<&Path>, script: &Path) -> PathBuf {
    if let Some(p) = explicit {
        return p.to_path_buf();
    }
    script
        .ancestors()
        .nth(3)
        .map(|root| root.join(".venv-bench/bin/python"))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("python3"))
}

fn bench_cmd(args: BenchArgs) -> Result<()> {
    use hyvideo::i2v::ImageConditioning;
    use hyvideo::transformer::{StepInput, VelocityModel};
    use hyvideo_cli::bench::{
        image_latent, loop_start, max_abs_diff, max_abs_diff_valid_rows, rows, step_zero_input,
        table,
    };
    use std::collections::BTreeMap;

    let kind = hyvideo::generation::bundle_image_condition(&args.bundle).map_err(flagged)?;
    let mut s = bench_settings(&args)?;
    s.check()
        .map_err(|e| anyhow::anyhow!("bench settings: {e}"))?;
    // Resolved here so the native script runs with the same guidance.
    s.embedded_guidance_scale = Some(s.guidance(kind));
    let image = match &s.image {
        Some(p) => {
            Some(hyvideo::image::load_image(p).with_context(|| format!("image {}", p.display()))?)
        }
        None => None,
    };
    let request = GenerateRequest {
        height: s.height,
        width: s.width,
        frames: s.frames,
        sampling: Sampling {
            steps: s.steps,
            embedded_guidance: s.guidance(kind),
            flow_shift: s.flow_shift,
            step_cache: args.step_cache.step_cache(),
            ..Sampling::default()
        },
        seed: s.seed,
        tiling: args.tiling.config(),
        image,
        ..GenerateRequest::new(s.prompt.clone())
    };
    let size = request.validate_for(kind).map_err(|e| {
        let hint = match e.setting {
            hyvideo::generation::Setting::Image if kind.is_image_to_video() => {
                " (bench: --image PATH, or \"image\" in the --settings file)"
            }
            hyvideo::generation::Setting::Image => {
                " (bench: drop --image and the --settings file's \"image\")"
            }
            _ => "",
        };
        anyhow::anyhow!("{}{hint}", flagged_message(&e))
    })?;
    let image = request.image.as_ref();
    let t = Instant::now();
    let mut pipeline = load_pipeline(
        &args.bundle,
        &args.runtime,
        &Stage::ALL,
        args.step_cache.transformer_form(),
    )?;
    let load_s = t.elapsed().as_secs_f64();
    let provider = pipeline.transformer().map_err(flagged)?.provider();
    let takes_guidance = pipeline.transformer().map_err(flagged)?.takes_guidance();
    let cancel = CancelFlag::new();
    let sampling = request.sampling;
    let tiling = &request.tiling;
    let (w, r) = (args.warmup, args.runs);
    let mut ours: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let init = pipeline
        .initial_latents(size, s.seed, None)
        .map_err(flagged)?;
    eprintln!(
        "bench: {}x{} px, {} frames, {} steps, latents {:?}, {} warm-up + {} runs per stage on {provider}{}",
        s.height,
        s.width,
        s.frames,
        s.steps,
        init.shape(),
        w,
        r,
        match &s.image {
            Some(p) => format!("; image-to-video ({kind}) from {}", p.display()),
            None => String::new(),
        }
    );

    let (secs, enc) = timed(w, r, || {
        match image {
            Some(img) => pipeline.encode_with_image(&s.prompt, None, img, size),
            None => pipeline.encode(&s.prompt, None),
        }
        .map_err(flagged)
    })?;
    ours.insert("text_encoders".into(), secs);
    let cond = match image {
        Some(img) => {
            let (secs, c) = timed(w, r, || {
                pipeline
                    .encode_image(img, size, init.shape())
                    .map_err(flagged)
            })?;
            ours.insert("image_encode".into(), secs);
            Some(c)
        }
        None => None,
    };
    let sigmas = hyvideo::scheduler::sigmas(s.steps, s.flow_shift);
    let t0 = [sigmas[0] * hyvideo::scheduler::NUM_TRAIN_TIMESTEPS];
    let g = [s.guidance(kind) * hyvideo::scheduler::NUM_TRAIN_TIMESTEPS];
    let step_input = |latents, text| StepInput {
        latents,
        timestep: &t0,
        text,
        guidance: takes_guidance.then_some(g.as_slice()),
    };
    // One step as the loop runs it: the text cropped to the prompt's valid tokens (the graph
    // takes no padding; see `Transformer::predict_observed`), the latents as the image condition
    // type feeds them.
    let step_text = enc.prompt.cropped_to_prompts();
    let step_latents = step_zero_input(cond.as_ref(), &init);
    let (secs, _) = timed(w, r, || {
        let model = pipeline.transformer_mut().map_err(flagged)?;
        Ok(model.predict(&step_input(&step_latents, &step_text))?)
    })?;
    ours.insert("transformer_step".into(), secs);
    // The loop with the image mix of the initial latents (diffusers' prepare_latents), every
    // latent frame returned (what the decoder gets).
    let (secs, latents) = timed(w, r, || {
        pipeline
            .denoise_from_image(
                &sampling,
                loop_start(cond.as_ref(), &init),
                &enc.prompt,
                None,
                cond.as_ref(),
                &mut |_| {},
                &cancel,
            )
            .map_err(flagged)
    })?;
    ours.insert("denoise_loop".into(), secs);
    let (secs, _) = timed(w, r, || {
        pipeline
            .decode(&latents, tiling, &mut |_| {}, &cancel)
            .map_err(flagged)
    })?;
    ours.insert("vae_decode".into(), secs);
    let (secs, generated) = timed(0, r, || {
        pipeline
            .generate(&request, &mut |_| {}, &cancel)
            .map_err(flagged)
    })?;
    ours.insert("end_to_end".into(), secs);
    let rss = hyvideo::memory::peak_rss_bytes().map(|b| b as f64 / (1 << 20) as f64);

    let mut native: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let mut diffs: BTreeMap<String, f64> = BTreeMap::new();
    let mut native_rss = None;
    let mut text_detail = None;
    if args.native {
        let dir = tempfile::tempdir()?;
        let settings_path = dir.path().join("settings.json");
        std::fs::write(&settings_path, serde_json::to_vec_pretty(&s)?)?;
        let out = dir.path().join("native.safetensors");
        let json = dir.path().join("native.json");
        let script = find_native_script(args.native_script.as_deref())?;
        let threads = args.runtime.session.threads.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        });
        let model_dir = args
            .native_model
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("--native needs --native-model"))?;
        let python = native_python(args.python.as_deref(), &script);
        eprintln!("native: {} {}", python.display(), script.display());
        let status = std::process::Command::new(&python)
            .arg(&script)
            .arg("--model")
            .arg(model_dir)
            .arg("--settings")
            .arg(&settings_path)
            .args(["--threads", &threads.to_string()])
            .args(["--device", &native_device(&args.runtime)])
            .args(["--runs", &r.to_string(), "--warmup", &w.to_string()])
            .arg("--out")
            .arg(&out)
            .arg("--json")
            .arg(&json)
            .status()
            .with_context(|| format!("running {}", python.display()))?;
        if !status.success() {
            bail!(
                "the native script {} failed ({status}) under {}; its environment comes from \
                 ./benches/native/setup.sh (or pass --python)",
                script.display(),
                python.display()
            );
        }
        let nj: serde_json::Value = serde_json::from_slice(&std::fs::read(&json)?)?;
        if let Some(stages) = nj.get("stages").and_then(|v| v.as_object()) {
            for (k, v) in stages {
                let secs: Vec<f64> = v
                    .as_array()
                    .map(|a| a.iter().filter_map(|x| x.as_f64()).collect())
                    .unwrap_or_default();
                native.insert(k.clone(), secs);
            }
        }
        native_rss = nj.get("peak_rss_mib").and_then(|v| v.as_f64());
        // Stage-isolated differences: each stage of ours fed the native stage's inputs.
        let nf = hyvideo::latents::TensorFile::open(&out)?;
        let (es, e) = nf.f32("prompt_embeds")?;
        let (ms, m) = nf.i64("prompt_attention_mask")?;
        let (ps, p) = nf.f32("pooled_prompt_embeds")?;
        // The rows the transformer reads: the prompt's valid ones (an image-to-video prompt's
        // padded rows are never read, and are not what diffusers' are; text-to-video's agree).
        let d_all = max_abs_diff(enc.prompt.embeds(), &e).unwrap_or(f64::NAN);
        let d_valid = max_abs_diff_valid_rows(enc.prompt.embeds(), &e, enc.prompt.mask(), &m)
            .unwrap_or(f64::NAN);
        let d_pooled = max_abs_diff(enc.prompt.pooled(), &p).unwrap_or(f64::NAN);
        diffs.insert("text_encoders".into(), d_valid.max(d_pooled));
        text_detail = Some(serde_json::json!({
            "prompt_embeds_valid_rows": d_valid,
            "prompt_embeds_all_rows": d_all,
            "pooled_prompt_embeds": d_pooled,
            "masks_equal": enc.prompt.mask() == m.as_slice(),
        }));
        eprintln!(
            "text_encoders max abs diff: valid rows {d_valid:.3e}, all rows {d_all:.3e}, pooled {d_pooled:.3e}"
        );
        let ntext = hyvideo::transformer::TextConditioning::new((&es, e), (&ms, m), (&ps, p))?;
        let ninit = nf.tensor5("init_latents")?;
        let ncond = match &cond {
            Some(c) => {
                // Ours from the same image file; the native image latent feeds the later stages.
                let nimage = nf.tensor5("image_latents")?;
                diffs.insert(
                    "image_encode".into(),
                    max_abs_diff(image_latent(c, init.shape()).data(), nimage.data())
                        .unwrap_or(f64::NAN),
                );
                Some(ImageConditioning::new(kind, nimage, ninit.shape())?)
            }
            None => None,
        };
        let model = pipeline.transformer_mut().map_err(flagged)?;
        let step = model.predict(&step_input(
            &step_zero_input(ncond.as_ref(), &ninit),
            &ntext.cropped_to_prompts(),
        ))?;
        let (_, nstep) = nf.f32("step_sample")?;
        diffs.insert(
            "transformer_step".into(),
            max_abs_diff(step.data(), &nstep).unwrap_or(f64::NAN),
        );
        let fin = pipeline
            .denoise_from_image(
                &sampling,
                loop_start(ncond.as_ref(), &ninit),
                &ntext,
                None,
                ncond.as_ref(),
                &mut |_| {},
                &cancel,
            )
            .map_err(flagged)?;
        // Every latent frame (latent_concat returns all but the first, which is decoded too).
        let nfinal = nf.tensor5(match ncond {
            Some(_) => "final_latents_all",
            None => "final_latents",
        })?;
        diffs.insert(
            "denoise_loop".into(),
            max_abs_diff(fin.data(), nfinal.data()).unwrap_or(f64::NAN),
        );
        let dec = pipeline
            .decode(&nfinal, tiling, &mut |_| {}, &cancel)
            .map_err(flagged)?
            .video;
        let ndec = nf.tensor5("decoded")?;
        diffs.insert(
            "vae_decode".into(),
            max_abs_diff(dec.data(), ndec.data()).unwrap_or(f64::NAN),
        );
        // The final frames, in the decoder's range: latent_concat's video starts at frame 5.
        let [_, _, f, h, w] = ndec.shape();
        let drop = f - generated.video.shape()[2].min(f);
        let nvideo = ndec.slice(drop..f, 0..h, 0..w);
        diffs.insert(
            "end_to_end".into(),
            max_abs_diff(generated.video.data(), nvideo.data()).unwrap_or(f64::NAN),
        );
    }

    let rows = rows(&ours, &native, &diffs);
    println!("{}", table(&rows));
    // What the step cache computed in the (last) timed loop; the native side runs uncached,
    // so with a cache the loop's difference column measures the cache's effect.
    let step_cache = pipeline.last_step_cache().map(|r| r.to_json());
    if let Some(r) = pipeline.last_step_cache() {
        let blocks = pipeline.transformer_blocks().unwrap_or(0);
        let computed: Vec<String> = r
            .streams()
            .iter()
            .map(|&st| format!("{} {}/{}", st.name(), r.computed(st).len(), s.steps))
            .collect();
        println!(
            "step cache {}: computed steps {}; transformer block calls {} of {}",
            r.to_json()["method"].as_str().unwrap_or("?"),
            computed.join(", "),
            r.block_calls(blocks),
            blocks * s.steps * r.streams().len()
        );
    }
    println!("load engines: {load_s:.3} s; provider: {provider}");
    if let Some(m) = rss {
        println!("peak RSS hyvideo: {m:.1} MiB");
    }
    if let Some(m) = native_rss {
        println!("peak RSS native: {m:.1} MiB");
    }
    if let Some(p) = &args.json {
        let doc = serde_json::json!({
            "settings": s,
            "rows": rows,
            "peak_rss_mib": rss,
            "native_peak_rss_mib": native_rss,
            "provider": provider.to_string(),
            "image_condition_type": kind.to_string(),
            "text_encoders_diff": text_detail,
            "placement": placement_record(&pipeline),
            "threads": args.runtime.session.threads,
            "load_seconds": load_s,
            "step_cache": step_cache,
        });
        std::fs::write(p, serde_json::to_vec_pretty(&doc)?)
            .with_context(|| format!("--json {}", p.display()))?;
    }
    Ok(())
}

fn serve_cmd(args: ServeArgs) -> Result<()> {
    use hyvideo_server::queue::QueueLocation;
    use hyvideo_server::request::Limits;
    use hyvideo_server::serve::{ServeConfig, Server, StopSignals, default_worker_id};
    let queue = QueueLocation::parse(&args.queue)?;
    if args.lease_seconds < 3 {
        bail!("--lease-seconds {}: at least 3", args.lease_seconds);
    }
    let config = ServeConfig {
        listen: args.listen,
        data_dir: args.data_dir.clone(),
        queue,
        api_key: args.api_key.clone().filter(|k| !k.is_empty()),
        max_queue: args.max_queue,
        limits: Limits {
            max_steps: args.max_steps,
            max_frames: args.max_frames,
            max_size: args.max_size,
            ..Limits::default()
        },
        lease_secs: args.lease_seconds,
        retention_secs: args.retention.max(0) * 3600,
        worker_id: args.worker_id.clone().unwrap_or_else(default_worker_id),
        body_limit: 1 << 20,
    };
    // An open address without a key, an unusable data dir or queue: refused before the engines
    // load, which can take minutes on a GPU.
    let mut prepared = Server::prepare(config)?;
    let t = Instant::now();
    // With the transformer's stage graphs in the bundle the server loads those (requests may
    // ask for a step cache; without one the stages give the single graph's numbers).
    let form = match hyvideo_bundle::Manifest::load(&args.bundle).map(|m| {
        m.components
            .contains_key(&hyvideo_bundle::Component::TransformerEmbed)
    }) {
        Ok(true) => TransformerForm::Staged,
        _ => TransformerForm::Single,
    };
    let pipeline = load_pipeline(&args.bundle, &args.runtime, &Stage::ALL, form)?;
    if let Some((size, frames)) = engine_max_shape(&pipeline) {
        let limits = prepared.limits_mut();
        limits.engine_max = Some(size);
        limits.max_frames = limits.max_frames.min(frames);
    }
    eprintln!(
        "serve: loaded {} in {:.1} s",
        args.bundle.display(),
        t.elapsed().as_secs_f64()
    );
    let signals = StopSignals::install().context("installing the SIGINT/SIGTERM handlers")?;
    let server = prepared.start(pipeline)?;
    println!("listening on http://{}", server.addr());
    signals.wait();
    eprintln!("serve: stopping");
    server.stop();
    Ok(())
}

/// The largest [width, height] and frame count the pipeline's TensorRT transformer engine was
/// built for (its profile's latent grid through the VAE's ratios); `None` when nothing bounds
/// the shape.
fn engine_max_shape(pipeline: &Pipeline) -> Option<([usize; 2], usize)> {
    let engines = pipeline.engines()?;
    if engines.manifest().backend != BackendKind::TensorRt {
        return None;
    }
    let vae = pipeline.vae_settings().ok()?;
    let (ratio, t_ratio) = (
        vae.spatial_compression_ratio,
        vae.temporal_compression_ratio,
    );
    let profile = engines
        .manifest()
        .components
        .get(&hyvideo_bundle::Component::Transformer)?
        .profiles
        .iter()
        .find(|p| p.name == hyvideo::transformer::HIDDEN_STATES)?;
    hyvideo_server::request::engine_bounds(&profile.max, ratio, t_ratio)
}
