//! Tiled VAE decode: peak memory and time against video length.
//!
//! Exports the tiny fixture VAE decoder (`tests/fixtures/tiny`), writes random latents of
//! t = 3, 9 and 33 frames at one spatial size, and runs `hyvideo decode` (default tiling,
//! MP4 output) on each a few times. Every run is a fresh process, so its peak RSS (VmHWM, as
//! printed by `hyvideo decode`) is that decode's alone.
//!
//! The decoded video itself has to live somewhere (B·3·F·H·W f32), so the figure checked is
//! peak RSS minus the video's size: the decoder's working memory. With tiled decoding that is
//! bounded by the tile size, not the video length, so for t = 9 and 33 it must stay within
//! 1.25× of the t = 3 figure. The bench exits non-zero when it does not.
//!
//! Run: `cargo bench --bench vae_decode_memory [-- --threads N --size HxW --reps N --frames 3,9,33]`
//! (or the environment variables `HYVIDEO_BENCH_THREADS`, `HYVIDEO_BENCH_SIZE`,
//! `HYVIDEO_BENCH_REPS`, `HYVIDEO_BENCH_FRAMES`, `HYVIDEO_BENCH_FORMAT`). `--size` is the
//! latent height×width (pixels are 8× that).

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;

use safetensors::{Dtype, tensor::TensorView};

const HYVIDEO: &str = env!("CARGO_BIN_EXE_hyvideo");
const HYVIDEO_EXPORT: &str = env!("CARGO_BIN_EXE_hyvideo-export");

/// Latent channels, spatial and temporal compression of the tiny fixture VAE.
const LATENT_CHANNELS: usize = 4;
const SPATIAL: usize = 8;
const TEMPORAL: usize = 4;
/// Allowed growth of the working memory (peak RSS − video) over the t = 3 figure.
const BOUND: f64 = 1.25;
const MIB: f64 = (1u64 << 20) as f64;

struct Config {
    threads: Option<usize>,
    height: usize,
    width: usize,
    reps: usize,
    frames: Vec<usize>,
    format: String,
    /// Spatial tile and stride in output pixels; `None`: the decoder's defaults (256, 192).
    tile_px: Option<(usize, usize)>,
    /// Temporal tile and stride in output frames; `None`: the decoder's defaults (16, 12).
    tile_frames: Option<(usize, usize)>,
}

/// Command-line flags and the environment variables that set the same thing.
const FLAGS: [(&str, &str); 7] = [
    ("--threads", "HYVIDEO_BENCH_THREADS"),
    ("--size", "HYVIDEO_BENCH_SIZE"),
    ("--reps", "HYVIDEO_BENCH_REPS"),
    ("--frames", "HYVIDEO_BENCH_FRAMES"),
    ("--format", "HYVIDEO_BENCH_FORMAT"),
    ("--tile-px", "HYVIDEO_BENCH_TILE_PX"),
    ("--tile-frames", "HYVIDEO_BENCH_TILE_FRAMES"),
];

const USAGE: &str = "usage: cargo bench --bench vae_decode_memory -- [--threads N] \
    [--size HxW (latent, default 40x56)] [--reps N (default 3)] [--frames 3,9,33] \
    [--format mp4|safetensors] [--tile-px SIZE,STRIDE] [--tile-frames SIZE,STRIDE]";

fn parse_pair(flag: &str, value: &str, seps: &[char]) -> Result<(usize, usize), String> {
    let bad = || {
        format!(
            "{flag}: expected two numbers like 40{}56, got {value:?}",
            seps[0]
        )
    };
    let (a, b) = value.split_once(seps).ok_or_else(bad)?;
    Ok((
        a.trim().parse().map_err(|_| bad())?,
        b.trim().parse().map_err(|_| bad())?,
    ))
}

impl Config {
    fn parse() -> Result<Self, String> {
        let mut cfg = Config {
            threads: None,
            height: 40,
            width: 56,
            reps: 3,
            frames: vec![3, 9, 33],
            format: "mp4".to_string(),
            tile_px: None,
            tile_frames: None,
        };
        let mut pairs: Vec<(String, String)> = FLAGS
            .iter()
            .filter_map(|(flag, var)| {
                let v = std::env::var(var).ok().filter(|v| !v.is_empty())?;
                Some((flag.to_string(), v))
            })
            .collect();
        // Command-line flags win over the environment. Cargo passes `--bench` (and any filter)
        // to harness-less benches; those are ignored.
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            let (flag, inline) = match arg.split_once('=') {
                Some((f, v)) => (f.to_string(), Some(v.to_string())),
                None => (arg.clone(), None),
            };
            if FLAGS.iter().any(|(f, _)| *f == flag) {
                let value = match inline {
                    Some(v) => v,
                    None => args.next().ok_or_else(|| format!("{flag} needs a value"))?,
                };
                pairs.push((flag, value));
            } else if flag == "--help" || flag == "-h" {
                return Err(USAGE.to_string());
            }
        }
        for (flag, value) in pairs {
            let bad = |_| format!("{flag}: cannot parse {value:?}");
            match flag.as_str() {
                "--threads" => cfg.threads = Some(value.trim().parse().map_err(bad)?),
                "--reps" => cfg.reps = value.trim().parse().map_err(bad)?,
                "--size" => (cfg.height, cfg.width) = parse_pair(&flag, &value, &['x', 'X'])?,
                "--frames" => {
                    cfg.frames = value
                        .split(',')
                        .map(|t| t.trim().parse::<usize>())
                        .collect::<Result<_, _>>()
                        .map_err(bad)?;
                }
                "--format" => cfg.format = value,
                "--tile-px" => cfg.tile_px = Some(parse_pair(&flag, &value, &[','])?),
                "--tile-frames" => cfg.tile_frames = Some(parse_pair(&flag, &value, &[','])?),
                _ => unreachable!("flag from FLAGS"),
            }
        }
        if cfg.reps == 0 || cfg.height == 0 || cfg.width == 0 || cfg.frames.is_empty() {
            return Err("reps, size and frames must be non-zero".to_string());
        }
        if cfg.frames.contains(&0) {
            return Err("--frames: latent frame counts must be >= 1".to_string());
        }
        if !matches!(cfg.format.as_str(), "mp4" | "safetensors") {
            return Err(format!(
                "--format: mp4 or safetensors, got {:?}",
                cfg.format
            ));
        }
        Ok(cfg)
    }

    /// Latent frames of the longest temporal chunk a video of `t` latent frames is decoded in,
    /// by diffusers' rule: chunks of tile/4 + 1 latent frames once t exceeds tile/4, else whole.
    fn chunk_latent_frames(&self, t: usize) -> usize {
        let tile = self.tile_frames.map_or(16, |(f, _)| f) / TEMPORAL;
        if t > tile { tile + 1 } else { t }
    }
}

/// SplitMix64: small, deterministic, good enough for benchmark inputs.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in (0, 1].
    fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) + 1) as f64 / (1u64 << 53) as f64
    }

    /// Two standard normal samples (Box–Muller).
    fn normal_pair(&mut self) -> (f32, f32) {
        let r = (-2.0 * self.uniform().ln()).sqrt();
        let theta = std::f64::consts::TAU * self.uniform();
        ((r * theta.cos()) as f32, (r * theta.sin()) as f32)
    }
}

/// Write `latents` f32 [1, 4, t, h, w] ~ N(0, 1) to `path`.
fn write_latents(path: &Path, t: usize, h: usize, w: usize, seed: u64) -> Result<(), String> {
    let shape = vec![1, LATENT_CHANNELS, t, h, w];
    let n: usize = shape.iter().product();
    let mut rng = SplitMix64(seed);
    let mut bytes = Vec::with_capacity(n * 4);
    while bytes.len() < n * 4 {
        let (a, b) = rng.normal_pair();
        bytes.extend_from_slice(&a.to_le_bytes());
        if bytes.len() < n * 4 {
            bytes.extend_from_slice(&b.to_le_bytes());
        }
    }
    let view = TensorView::new(Dtype::F32, shape, &bytes).map_err(|e| e.to_string())?;
    safetensors::serialize_to_file([("latents", view)], None, path)
        .map_err(|e| format!("writing {}: {e}", path.display()))
}

/// Run a command, returning its stdout; a failure reports stdout and stderr.
fn run(cmd: &mut Command) -> Result<String, String> {
    let out = cmd.output().map_err(|e| format!("spawning {cmd:?}: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        return Err(format!(
            "{cmd:?} failed ({}):\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(stdout)
}

struct Run {
    decode_s: f64,
    peak_rss_mib: f64,
    decoder_calls: usize,
    wall_s: f64,
}

/// Parse `decode ( N t)  SECONDS` and `peak RSS  X MiB` from `hyvideo decode`'s table.
fn parse_decode(stdout: &str) -> Result<(f64, usize, f64), String> {
    let mut decode = None;
    let mut rss = None;
    for line in stdout.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("decode (") {
            let (calls, secs) = rest
                .split_once(')')
                .ok_or_else(|| format!("unexpected decode line {line:?}"))?;
            let calls = calls.trim().trim_end_matches('t').trim().parse().ok();
            let secs = secs.trim().parse::<f64>().ok();
            if let (Some(c), Some(s)) = (calls, secs) {
                decode = Some((s, c));
            }
        } else if let Some(rest) = line.strip_prefix("peak RSS") {
            rss = rest
                .trim()
                .trim_end_matches("MiB")
                .trim()
                .parse::<f64>()
                .ok();
        }
    }
    let (secs, calls) =
        decode.ok_or_else(|| format!("no `decode (N t) SECONDS` line in:\n{stdout}"))?;
    let rss = rss.ok_or_else(|| format!("no `peak RSS X MiB` line in:\n{stdout}"))?;
    Ok((secs, calls, rss))
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn min(values: &[f64]) -> f64 {
    values.iter().copied().fold(f64::INFINITY, f64::min)
}

fn max(values: &[f64]) -> f64 {
    values.iter().copied().fold(f64::NEG_INFINITY, f64::max)
}

struct Row {
    t: usize,
    frames: usize,
    chunk_frames: usize,
    calls: usize,
    decode_min: f64,
    decode_median: f64,
    rss_median: f64,
    rss_max: f64,
    video_mib: f64,
}

impl Row {
    /// Peak RSS less the decoded video: the decoder's working memory.
    fn working_mib(&self) -> f64 {
        self.rss_median - self.video_mib
    }
}

fn describe_tiling(cfg: &Config) -> String {
    let show = |v: Option<(usize, usize)>, default: (usize, usize), unit: &str| {
        let (a, b) = v.unwrap_or(default);
        let tag = if v.is_none() { " (default)" } else { "" };
        format!("{a}/{b} {unit}{tag}")
    };
    format!(
        "tiles {}, {}",
        show(cfg.tile_px, (256, 192), "px"),
        show(cfg.tile_frames, (16, 12), "frames")
    )
}

fn bench(cfg: &Config) -> Result<bool, String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let model = root.join("tests/fixtures/tiny");
    let dir = tempfile::tempdir().map_err(|e| format!("temp dir: {e}"))?;
    let bundle = dir.path().join("bundle");
    run(Command::new(HYVIDEO_EXPORT)
        .args(["onnx", "--model"])
        .arg(&model)
        .arg("--out")
        .arg(&bundle)
        .args(["--components", "vae_decoder"]))?;

    let (h, w) = (cfg.height, cfg.width);
    println!(
        "vae_decode_memory: tiny VAE (tests/fixtures/tiny), latents 1x{LATENT_CHANNELS}x t x{h}x{w} \
         -> video {}x{} px; {}; {} output; {} rep(s); threads {}",
        h * SPATIAL,
        w * SPATIAL,
        describe_tiling(cfg),
        cfg.format,
        cfg.reps,
        cfg.threads.map_or("default".to_string(), |n| n.to_string()),
    );

    let mut rows = Vec::new();
    for (i, &t) in cfg.frames.iter().enumerate() {
        let latents: PathBuf = dir.path().join(format!("latents_t{t}.safetensors"));
        write_latents(&latents, t, h, w, 0x5EED_0000 + i as u64)?;
        let frames = 1 + TEMPORAL * (t - 1);
        let video_bytes = 3 * frames * h * SPATIAL * w * SPATIAL * 4;
        let mut runs = Vec::new();
        for rep in 0..cfg.reps {
            let out = dir.path().join(format!("video_t{t}.{}", cfg.format));
            let mut cmd = Command::new(HYVIDEO);
            cmd.arg("decode")
                .arg("--bundle")
                .arg(&bundle)
                .arg("--latents")
                .arg(&latents)
                .arg("--save-path")
                .arg(&out);
            if let Some(n) = cfg.threads {
                cmd.args(["--threads", &n.to_string()]);
            }
            if let Some((size, stride)) = cfg.tile_px {
                cmd.args(["--vae-tile-size", &size.to_string()]);
                cmd.args(["--vae-tile-stride", &stride.to_string()]);
            }
            if let Some((size, stride)) = cfg.tile_frames {
                cmd.args(["--vae-tile-frames", &size.to_string()]);
                cmd.args(["--vae-tile-stride-frames", &stride.to_string()]);
            }
            let start = Instant::now();
            let stdout = run(&mut cmd)?;
            let wall_s = start.elapsed().as_secs_f64();
            let (decode_s, decoder_calls, peak_rss_mib) = parse_decode(&stdout)?;
            eprintln!(
                "  t = {t:>3} rep {}: decode {decode_s:.3} s ({decoder_calls} decoder calls), \
                 peak RSS {peak_rss_mib:.1} MiB, process {wall_s:.2} s",
                rep + 1
            );
            std::fs::remove_file(&out).ok();
            runs.push(Run {
                decode_s,
                peak_rss_mib,
                decoder_calls,
                wall_s,
            });
        }
        let decode: Vec<f64> = runs.iter().map(|r| r.decode_s).collect();
        let rss: Vec<f64> = runs.iter().map(|r| r.peak_rss_mib).collect();
        let wall: Vec<f64> = runs.iter().map(|r| r.wall_s).collect();
        eprintln!(
            "  t = {t:>3}: process wall time median {:.2} s",
            median(&wall)
        );
        rows.push(Row {
            t,
            frames,
            chunk_frames: 1 + TEMPORAL * (cfg.chunk_latent_frames(t) - 1),
            calls: runs[0].decoder_calls,
            decode_min: min(&decode),
            decode_median: median(&decode),
            rss_median: median(&rss),
            rss_max: max(&rss),
            video_mib: video_bytes as f64 / MIB,
        });
    }

    let base = rows[0].working_mib();
    println!();
    println!(
        "{:>4} | {:>6} | {:>6} | {:>5} | {:>8} | {:>8} | {:>8} | {:>7} | {:>9} | {:>11} | {:>10} | {:>8}",
        "t",
        "frames",
        "chunk",
        "calls",
        "decode s",
        "decode s",
        "peak RSS",
        "RSS max",
        "video",
        "RSS − video",
        "ratio to",
        "ratio to"
    );
    println!(
        "{:>4} | {:>6} | {:>6} | {:>5} | {:>8} | {:>8} | {:>8} | {:>7} | {:>9} | {:>11} | {:>10} | {:>8}",
        "",
        "",
        "frames",
        "",
        "(median)",
        "(min)",
        "MiB",
        "MiB",
        "MiB",
        "MiB",
        format!("t={}", rows[0].t),
        "prev row"
    );
    let mut prev = base;
    for r in &rows {
        println!(
            "{:>4} | {:>6} | {:>6} | {:>5} | {:>8.3} | {:>8.3} | {:>8.1} | {:>7.1} | {:>9.1} | {:>11.1} | {:>10.3} | {:>8.3}",
            r.t,
            r.frames,
            r.chunk_frames,
            r.calls,
            r.decode_median,
            r.decode_min,
            r.rss_median,
            r.rss_max,
            r.video_mib,
            r.working_mib(),
            r.working_mib() / base,
            r.working_mib() / prev
        );
        prev = r.working_mib();
    }
    println!(
        "peak RSS: median over reps (VmHWM of the decode process); video: B·3·F·H·W·4 bytes; \
         chunk frames: frames of the longest temporal chunk decoded at once"
    );

    let worst = rows
        .iter()
        .map(|r| r.working_mib() / base)
        .fold(f64::NEG_INFINITY, f64::max);
    let pass = base > 0.0 && worst <= BOUND;
    println!(
        "{}: working memory (peak RSS − video) is at most {worst:.3}× the t = {} figure \
         (bound {BOUND}×)",
        if pass { "PASS" } else { "FAIL" },
        rows[0].t
    );
    Ok(pass)
}

fn main() -> ExitCode {
    let cfg = match Config::parse() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    match bench(&cfg) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("vae_decode_memory: {e}");
            ExitCode::from(2)
        }
    }
}
