//! `hyvideo generate` end to end on the tiny fixture pipeline against diffusers' pipeline
//! goldens (`goldens/pipeline.safetensors`: prompt and seed 42 → final latents and frames), and
//! its bad inputs: each a clear error, a non-zero exit and no output file.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use hyvideo_bundle::Component;
use hyvideo_exporters::export::TransformerSource;

use crate::common::{TINY_VIDEO, export_tiny, golden, list_dir, rel_max_err};

const PIPE: &str = "pipeline.safetensors";
const PROMPT: &str = "A cat walks on the grass, realistic style.";

/// All four components of the tiny pipeline, exported once.
pub fn full_bundle() -> &'static Path {
    static B: OnceLock<PathBuf> = OnceLock::new();
    B.get_or_init(|| {
        export_tiny(
            &[
                Component::TextEncoder,
                Component::TextEncoder2,
                Component::Transformer,
                Component::VaeDecoder,
            ],
            TransformerSource::default(),
        )
    })
}

/// `hyvideo generate` with the pipeline golden's settings; a flag in `extra` replaces the
/// default of the same name (with all its values).
pub fn generate(bundle: &Path, save: &Path, extra: &[&str]) -> Output {
    // No direction flag: the default is t = 1 -> 0, as diffusers' pipeline.
    let defaults: [&[&str]; 8] = [
        &["--prompt", PROMPT],
        &["--video-size", "32", "48"],
        &["--video-length", "9"],
        &["--infer-steps", "4"],
        &["--seed", "42"],
        &["--embedded-cfg-scale", "6.0"],
        &["--flow-shift", "7.0"],
        &["--threads", "2"],
    ];
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hyvideo"));
    cmd.arg("generate")
        .arg("--bundle")
        .arg(bundle)
        .arg("--save-path")
        .arg(save);
    for d in defaults {
        if !extra.contains(&d[0]) {
            cmd.args(d);
        }
    }
    cmd.args(extra);
    cmd.output().expect("spawn hyvideo")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Frames in [0, 1] as the pipeline returns them: (x / 2 + 0.5).clamp(0, 1).
fn to_unit(x: &[f32]) -> Vec<f32> {
    x.iter().map(|v| (v / 2.0 + 0.5).clamp(0.0, 1.0)).collect()
}

fn max_abs(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()))
}

fn check_run(extra: &[&str], prefix: &str) {
    let dir = tempfile::tempdir().unwrap();
    let save = dir.path().join("video.safetensors");
    let lat = dir.path().join("final.safetensors");
    let mut args = vec!["--output-latents", lat.to_str().unwrap()];
    args.extend_from_slice(extra);
    let o = generate(full_bundle(), &save, &args);
    assert!(o.status.success(), "{}", stderr(&o));
    let latents = hyvideo::latents::read_tensor5(&lat, "latents").unwrap();
    let (_, want) = golden(PIPE, &format!("{prefix}final_latents"));
    let err = rel_max_err(latents.data(), &want);
    eprintln!("{prefix}final latents: relative max error {err:.3e}");
    assert!(err <= 1e-3, "{prefix}final latents: {err:.3e}");
    if prefix.is_empty() {
        let video = hyvideo::latents::read_tensor5(&save, "video").unwrap();
        let (shape, frames) = golden(PIPE, "video");
        assert_eq!(video.shape().to_vec(), shape);
        let d = max_abs(&to_unit(video.data()), &frames);
        eprintln!("frames: max abs difference {d:.3e} (range [0, 1])");
        assert!(d <= 2e-3, "frames differ by {d:.3e}");
    }
    // The run record beside the video.
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("video.json")).unwrap()).unwrap();
    assert_eq!(json["seed"], 42);
    assert_eq!(json["prompt"], PROMPT);
    assert_eq!(json["manifest_sha256"].as_str().map(str::len), Some(64));
    assert!(
        json["stages_seconds"]
            .as_array()
            .is_some_and(|s| s.len() >= 4)
    );
    assert_eq!(json["flow_direction"], "reverse");
    // Where ONNX Runtime actually placed each component's nodes: all on the CPU provider here.
    for c in [
        "text_encoder",
        "text_encoder_2",
        "transformer",
        "vae_decoder",
    ] {
        let p = json["placement"][c].as_str().unwrap_or_default();
        assert!(
            p.starts_with("CPUExecutionProvider: ") && p.contains(" nodes"),
            "{c}: {p}"
        );
        assert!(!p.contains(','), "{c}: one provider only: {p}");
    }
    assert_eq!(
        json["tiling"],
        serde_json::json!({
            "spatial": {"mode": "tiled", "tile_pixels": 256, "stride_pixels": 192},
            "frame_wise": {"mode": "tiled", "tile_frames": 16, "stride_frames": 12},
        })
    );
}

/// The run record `generate` writes beside `save`, parsed.
fn run_record(save: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(save.with_extension("json")).unwrap();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("run record: {e}: {text}"))
}

#[test]
fn run_record_stores_tiling_and_flow_direction_as_json_fields() {
    let dir = tempfile::tempdir().unwrap();
    let save = dir.path().join("a.safetensors");
    let o = generate(
        full_bundle(),
        &save,
        &[
            "--no-vae-tiling",
            "--vae-tile-frames",
            "8",
            "--vae-tile-stride-frames",
            "4",
            "--flow-direction",
            "forward",
            "--infer-steps",
            "1",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let r = run_record(&save);
    assert_eq!(
        r["tiling"]["spatial"],
        serde_json::json!({"mode": "disabled"})
    );
    assert_eq!(r["tiling"]["frame_wise"]["mode"], "tiled");
    assert_eq!(r["tiling"]["frame_wise"]["tile_frames"], 8);
    assert_eq!(r["tiling"]["frame_wise"]["stride_frames"], 4);
    assert_eq!(r["flow_direction"], "forward");
    // The CPU runs the transformer's attention fused.
    assert_eq!(r["transformer_attention"], "multi_head_attention");

    let save = dir.path().join("b.safetensors");
    let o = generate(
        full_bundle(),
        &save,
        &[
            "--no-vae-framewise",
            "--vae-tile-size",
            "128",
            "--vae-tile-stride",
            "96",
            "--flow-reverse",
            "--infer-steps",
            "1",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let r = run_record(&save);
    assert_eq!(
        r["tiling"],
        serde_json::json!({
            "spatial": {"mode": "tiled", "tile_pixels": 128, "stride_pixels": 96},
            "frame_wise": {"mode": "disabled"},
        })
    );
    assert_eq!(r["flow_direction"], "reverse");
}

#[test]
fn generate_from_prompt_and_seed_reproduces_diffusers() {
    check_run(&[], "");
}

#[test]
fn generate_with_true_cfg_reproduces_diffusers() {
    check_run(
        &["--neg-prompt", "low quality", "--cfg-scale", "4.0"],
        "cfg.",
    );
}

fn assert_refused(o: &Output, needles: &[&str], dir: &Path) {
    let err = stderr(o);
    assert!(!o.status.success(), "expected failure: {err}");
    assert!(!err.contains("panicked"), "{err}");
    for n in needles {
        assert!(err.contains(n), "stderr lacks `{n}`: {err}");
    }
    let left: Vec<String> = list_dir(dir)
        .into_iter()
        .filter(|f| f.starts_with("video"))
        .collect();
    assert!(left.is_empty(), "output left behind: {left:?}");
}

#[test]
fn bad_generate_settings_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let save = dir.path().join("video.mp4");
    let b = full_bundle();
    let cases: [(&[&str], &[&str]); 4] = [
        (&["--prompt", " "], &["--prompt", "empty"]),
        (&["--video-size", "32", "40"], &["width", "multiple of 16"]),
        (&["--video-length", "8"], &["--video-length", "4k + 1"]),
        (&["--infer-steps", "0"], &["--infer-steps"]),
    ];
    for (extra, needles) in cases {
        let o = generate(b, &save, extra);
        assert_refused(&o, needles, dir.path());
    }
}

/// A copy of the full bundle with `edit` applied.
fn edited_bundle(edit: impl FnOnce(&Path)) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let b = dir.path().join("bundle");
    copy_dir(full_bundle(), &b);
    edit(&b);
    (dir, b)
}

pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dst = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dst);
        } else {
            std::fs::copy(e.path(), dst).unwrap();
        }
    }
}

#[test]
fn bundles_missing_parts_or_from_another_exporter_are_refused() {
    let (dir, b) = edited_bundle(|b| std::fs::remove_file(b.join("text_encoder_2.onnx")).unwrap());
    let o = generate(&b, &dir.path().join("video.mp4"), &[]);
    assert_refused(&o, &["text_encoder_2"], dir.path());

    let (dir, b) =
        edited_bundle(|b| std::fs::remove_file(b.join("tokenizer/tokenizer.json")).unwrap());
    let o = generate(&b, &dir.path().join("video.mp4"), &[]);
    assert_refused(&o, &["tokenizer.json"], dir.path());

    let (dir, b) = edited_bundle(|b| {
        let m = b.join("manifest.yaml");
        let text = std::fs::read_to_string(&m).unwrap();
        let text = text.replace(
            &format!("exporter_version: \"{}\"", hyvideo_bundle::EXPORTER_VERSION),
            "exporter_version: \"0.0.1\"",
        );
        std::fs::write(&m, text).unwrap();
    });
    let o = generate(&b, &dir.path().join("video.mp4"), &[]);
    assert_refused(&o, &["0.0.1"], dir.path());
}

#[test]
fn tokenizer_json_with_a_stored_padding_state_generates_the_same_video() {
    // Bundles exported from a folder saved after a pipeline ran carry its tokenizer.json
    // padding / truncation state; before, crop_start came out 349 and step 1 gave NaN.
    let (dir, b) = edited_bundle(|b| {
        crate::text_encoders::store_tokenizer_state(&b.join("tokenizer"), 351);
        crate::text_encoders::store_tokenizer_state(&b.join("tokenizer_2"), 77);
    });
    let lat = dir.path().join("final.safetensors");
    let o = generate(
        &b,
        &dir.path().join("video.safetensors"),
        &["--output-latents", lat.to_str().unwrap()],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let latents = hyvideo::latents::read_tensor5(&lat, "latents").unwrap();
    let (_, want) = golden(PIPE, "final_latents");
    let err = rel_max_err(latents.data(), &want);
    assert!(err <= 1e-3, "final latents: {err:.3e}");
}

#[test]
fn saved_latents_replace_the_seed_and_must_fit_the_size() {
    let dir = tempfile::tempdir().unwrap();
    let (shape, init) = golden(PIPE, "init_latents");
    let init_path = dir.path().join("init.safetensors");
    crate::common::write_tensor(&init_path, "latents", &shape, &init);
    let lat = dir.path().join("final.safetensors");
    let save = dir.path().join("video.safetensors");
    // A different seed: the file wins.
    let o = generate(
        full_bundle(),
        &save,
        &[
            "--seed",
            "7",
            "--latents",
            init_path.to_str().unwrap(),
            "--output-latents",
            lat.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let latents = hyvideo::latents::read_tensor5(&lat, "latents").unwrap();
    let (_, want) = golden(PIPE, "final_latents");
    assert!(rel_max_err(latents.data(), &want) <= 1e-3);
    // Latents for another size are refused before any work.
    let dir2 = tempfile::tempdir().unwrap();
    let o = generate(
        full_bundle(),
        &dir2.path().join("video.mp4"),
        &[
            "--latents",
            init_path.to_str().unwrap(),
            "--video-size",
            "64",
            "48",
        ],
    );
    assert_refused(&o, &["--latents", "[1, 4, 3, 8, 6]"], dir2.path());
}

#[test]
fn bench_reports_every_stage() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("bench.json");
    let o = Command::new(env!("CARGO_BIN_EXE_hyvideo"))
        .arg("bench")
        .arg("--bundle")
        .arg(full_bundle())
        .args(TINY_VIDEO)
        .args(["--infer-steps", "2"])
        .args(["--runs", "2", "--warmup", "0", "--threads", "2"])
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    for stage in hyvideo_cli::bench::STAGES {
        assert!(
            out.contains(&format!("| {stage} |")),
            "{stage} missing: {out}"
        );
    }
    let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let rows = doc["rows"].as_array().unwrap();
    let loop_row = rows.iter().find(|r| r["stage"] == "denoise_loop").unwrap();
    assert_eq!(loop_row["hyvideo"]["runs"], 2);
    assert!(loop_row["hyvideo"]["median"].as_f64().unwrap() > 0.0);
    assert!(loop_row["native"].is_null());
}

#[test]
fn a_per_component_provider_that_cannot_run_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let save = dir.path().join("video.mp4");
    // This test build has no GPU providers compiled in: asking for one for the transformer
    // alone must fail loudly (never a silent CPU fallback), naming what is missing.
    if hyvideo_engines::BackendKind::Cuda.compiled_in() {
        return;
    }
    let o = generate(full_bundle(), &save, &["--transformer-backend", "cuda"]);
    assert_refused(&o, &["cuda", "--features cuda"], dir.path());
    // TensorRT from the bundle's graph alone (no --engines) is refused naming the build command:
    // it would build an engine at the first call and again for every new input shape.
    let o = generate(full_bundle(), &save, &["--backend", "tensorrt"]);
    assert_refused(
        &o,
        &["hyvideo-export build --bundle", "--backend tensorrt"],
        dir.path(),
    );
    // ...while per-component flags naming the CPU run as usual.
    let o = generate(
        full_bundle(),
        &dir.path().join("ok.safetensors"),
        &["--vae-backend", "cpu", "--text-backend", "cpu"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
}
