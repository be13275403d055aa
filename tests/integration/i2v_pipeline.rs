//! Image-to-video end to end: the tiny HunyuanVideo-I2V bundles of both condition types
//! (exported from `tiny_i2v/` and `tiny_i2v_33ch/` with the default component set) against
//! diffusers' `HunyuanVideoImageToVideoPipeline` (`goldens/i2v_pipeline_*.safetensors`): the
//! returned latents and the decoded frames from image + prompt + seed, with an image of the
//! video's size and one that must be resized; `hyvideo generate --image`; and the refusals.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use hyvideo::generation::{
    CancelFlag, GenerateRequest, Pipeline, Progress, Sampling, Stage, StageConfigs,
};
use hyvideo::image::load_image;
use hyvideo_bundle::{Component, Manifest};
use hyvideo_engines::SessionConfig;
use hyvideo_exporters::export::{ExportRequest, TransformerSource, export, scan_components};
use serde_json::json;

use crate::common::{
    TINY_VIDEO, fixtures, golden, golden5, mp4_frames, rel_l2, rel_max_err, tiny_i2v_model,
};

/// `folder` exported with the components `hyvideo-export onnx` picks for it by default.
fn export_default(folder: &str) -> PathBuf {
    let model = tiny_i2v_model(folder);
    let components = scan_components(&model, &TransformerSource::default())
        .unwrap()
        .present;
    let out = tempfile::Builder::new()
        .prefix("hyvideo-it-i2v-")
        .tempdir()
        .unwrap()
        .keep()
        .join("bundle");
    let req = ExportRequest {
        model,
        out: out.clone(),
        precision: hyvideo_bundle::Precision::Fp32,
        components,
        transformer: TransformerSource::default(),
        precision_profile: None,
        fp8_scales: None,
    };
    export(&req, |_| {}).unwrap();
    out
}

/// The full bundle of `kind` (`token_replace`: tiny_i2v, `latent_concat`: tiny_i2v_33ch).
pub fn i2v_bundle(kind: &str) -> &'static Path {
    static TR: OnceLock<PathBuf> = OnceLock::new();
    static LC: OnceLock<PathBuf> = OnceLock::new();
    match kind {
        "token_replace" => TR.get_or_init(|| export_default("tiny_i2v")),
        _ => LC.get_or_init(|| export_default("tiny_i2v_33ch")),
    }
}

fn image(case: &str) -> PathBuf {
    fixtures().join(format!("goldens/i2v_images/{case}.png"))
}

/// The golden's settings (48×32, 9 frames, 4 steps, seed 42; the bundle's default guidance).
fn request(kind: &str, case: &str) -> GenerateRequest {
    let condition = match kind {
        "token_replace" => hyvideo_bundle::ImageCondition::TokenReplace,
        _ => hyvideo_bundle::ImageCondition::LatentConcat,
    };
    GenerateRequest {
        height: 32,
        width: 48,
        frames: 9,
        seed: 42,
        image: Some(load_image(&image(case)).unwrap()),
        sampling: Sampling {
            steps: 4,
            embedded_guidance: Sampling::default_embedded_guidance(condition),
            ..Sampling::default()
        },
        ..GenerateRequest::new("A cat walks on the grass, realistic style.")
    }
}

fn load(kind: &str) -> Pipeline {
    let config = SessionConfig::default().with_intra_threads(Some(2));
    Pipeline::load(i2v_bundle(kind), None, &StageConfigs::all(config)).unwrap()
}

fn check(kind: &str) {
    let file = format!("i2v_pipeline_{kind}.safetensors");
    let mut p = load(kind);
    for case in ["exact", "resized"] {
        let mut stages = vec![];
        let g = p
            .generate(
                &request(kind, case),
                &mut |e| {
                    if let Progress::Stage(s) = e {
                        stages.push(s)
                    }
                },
                &CancelFlag::new(),
            )
            .unwrap();
        assert_eq!(
            stages,
            [
                Stage::TextEncoders,
                Stage::ImageEncode,
                Stage::Denoise,
                Stage::Decode
            ]
        );
        let want = golden5(&file, &format!("{case}.latents"));
        assert_eq!(g.latents.shape(), want.shape(), "{kind} {case}");
        let err = rel_max_err(g.latents.data(), want.data());
        eprintln!("{kind} {case}: returned latents, relative max error {err:.3e}");
        assert!(err <= 1e-3, "{kind} {case} latents: {err:.3e}");
        // The video: golden frames in [0, 1]; ours in [-1, 1].
        let (vs, v) = golden(&file, &format!("{case}.video"));
        assert_eq!(g.video.shape().to_vec(), vs, "{kind} {case}");
        let ours: Vec<f32> = g
            .video
            .data()
            .iter()
            .map(|x| (x / 2.0 + 0.5).clamp(0.0, 1.0))
            .collect();
        let err = rel_max_err(&ours, &v);
        eprintln!("{kind} {case}: decoded frames, relative max error {err:.3e}");
        assert!(err <= 2e-3, "{kind} {case} frames: {err:.3e}");
        if kind == "token_replace" {
            // The first latent frame is the input image through the VAE encoder (the reference's
            // image latent), and the frames above are the reference's decode of those latents: the
            // video starts from the image's VAE round trip. Checked on the latent, not the pixel
            // frame: the fixture's VAE is untrained, and the decoder's group norms span every
            // latent frame, so decoding the image latent alone does not give frame 0 (0.79
            // relative here).
            let img = golden5(&file, &format!("{case}.image_latents"));
            let [_, c, _, h, w] = img.shape();
            let first = g.latents.slice(0..1, 0..h, 0..w);
            assert_eq!(first.shape(), [1, c, 1, h, w]);
            let err = rel_max_err(first.data(), img.data());
            eprintln!("{kind} {case}: first latent frame vs the image latent {err:.3e}");
            assert!(err <= 1e-4, "{case}: {err:.3e}");
        }
    }
}

#[test]
fn token_replace_generation_matches_diffusers() {
    check("token_replace");
}

#[test]
fn latent_concat_generation_matches_diffusers() {
    check("latent_concat");
}

#[test]
fn image_to_video_bundles_export_the_image_side_by_default() {
    let m = Manifest::load(i2v_bundle("latent_concat")).unwrap();
    for c in [
        Component::VaeEncoder,
        Component::VisionEncoder,
        Component::TextEncoder,
        Component::Transformer,
    ] {
        assert!(m.components.contains_key(&c), "{c}");
    }
    // A text-to-video folder does not.
    let t2v = scan_components(&fixtures().join("tiny"), &TransformerSource::default())
        .unwrap()
        .present;
    assert!(!t2v.contains(&Component::VaeEncoder) && !t2v.contains(&Component::VisionEncoder));
}

#[test]
fn requests_without_an_image_or_too_short_are_refused() {
    let mut p = load("latent_concat");
    let no_image = GenerateRequest {
        image: None,
        ..request("latent_concat", "exact")
    };
    let e = p
        .generate(&no_image, &mut |_| {}, &CancelFlag::new())
        .err()
        .unwrap();
    let i = e.invalid_setting().expect("a setting error");
    assert_eq!(i.setting, hyvideo::generation::Setting::Image);
    assert!(i.reason.contains("image-to-video"), "{}", i.reason);
    let one_frame = GenerateRequest {
        frames: 1,
        ..request("latent_concat", "exact")
    };
    let e = p
        .generate(&one_frame, &mut |_| {}, &CancelFlag::new())
        .err()
        .unwrap();
    assert_eq!(
        e.invalid_setting().map(|i| i.setting),
        Some(hyvideo::generation::Setting::Frames)
    );
}

/// `hyvideo generate` with the pipeline goldens' prompt, size, length and steps.
const GOLDEN_RUN: [&str; 3] = [
    "generate",
    "--prompt",
    "A cat walks on the grass, realistic style.",
];

fn golden_run() -> Vec<&'static dyn AsRef<std::ffi::OsStr>> {
    GOLDEN_RUN
        .iter()
        .chain(TINY_VIDEO.iter())
        .chain(["--infer-steps", "4"].iter())
        .map(|a| a as &dyn AsRef<std::ffi::OsStr>)
        .collect()
}

fn hyvideo(args: &[&dyn AsRef<std::ffi::OsStr>]) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hyvideo"));
    for a in args {
        cmd.arg(a);
    }
    cmd.output().unwrap()
}

#[test]
fn generate_cli_takes_the_image_and_refuses_what_it_cannot_use() {
    let dir = tempfile::tempdir().unwrap();
    let mp4 = dir.path().join("out.mp4");
    let latents = dir.path().join("latents.safetensors");
    let common = golden_run();
    let bundle = i2v_bundle("token_replace");
    let mut ok: Vec<&dyn AsRef<std::ffi::OsStr>> = common.to_vec();
    let img = image("resized");
    ok.extend([
        &"--bundle" as &dyn AsRef<std::ffi::OsStr>,
        &bundle,
        &"--image",
        &img,
        &"--seed",
        &"42",
        &"--save-path",
        &mp4,
        &"--output-latents",
        &latents,
    ]);
    let o = hyvideo(&ok);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "{err}");
    assert_eq!(mp4_frames(&std::fs::read(&mp4).unwrap()), 9);
    let record = |mp4: &Path| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(mp4.with_extension("json")).unwrap()).unwrap()
    };
    let r = record(&mp4);
    assert_eq!(
        (&r["video_length"], &r["output_frames"]),
        (&json!(9), &json!(9))
    );
    let got = hyvideo::latents::read_tensor5(&latents, hyvideo::latents::LATENTS_TENSOR).unwrap();
    let want = golden5("i2v_pipeline_token_replace.safetensors", "resized.latents");
    let e = rel_max_err(got.data(), want.data());
    assert!(e <= 1e-3, "--output-latents vs diffusers: {e:.3e}");

    // HunyuanVideo-I2V-33ch: the reference's video from the fifth frame, and its defaults.
    let lc_bundle = i2v_bundle("latent_concat");
    let lc_mp4 = dir.path().join("lc.mp4");
    let mut lc: Vec<&dyn AsRef<std::ffi::OsStr>> = common.to_vec();
    lc.extend([
        &"--bundle" as &dyn AsRef<std::ffi::OsStr>,
        &lc_bundle,
        &"--image",
        &img,
        &"--save-path",
        &lc_mp4,
    ]);
    let o = hyvideo(&lc);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(mp4_frames(&std::fs::read(&lc_mp4).unwrap()), 5);
    let r = record(&lc_mp4);
    assert_eq!(
        (
            &r["video_length"],
            &r["output_frames"],
            &r["embedded_cfg_scale"]
        ),
        (&json!(9), &json!(5), &json!(1.0)),
        "{r}"
    );

    // No --image for an image-to-video bundle; --image for a text-to-video one; a broken file.
    let fail = |extra: &[&dyn AsRef<std::ffi::OsStr>], needles: &[&str]| {
        let mut a: Vec<&dyn AsRef<std::ffi::OsStr>> = common.to_vec();
        a.extend_from_slice(extra);
        a.extend([&"--save-path" as &dyn AsRef<std::ffi::OsStr>, &mp4]);
        let o = hyvideo(&a);
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(!o.status.success() && !err.contains("panicked"), "{err}");
        for n in needles {
            assert!(err.contains(n), "stderr lacks `{n}`: {err}");
        }
    };
    fail(&[&"--bundle", &bundle], &["--image", "image-to-video"]);
    let t2v = crate::generate::full_bundle();
    fail(
        &[&"--bundle", &t2v, &"--image", &img],
        &["--image", "text-to-video"],
    );
    let broken = dir.path().join("broken.png");
    let bytes = std::fs::read(&img).unwrap();
    std::fs::write(&broken, &bytes[..bytes.len() / 2]).unwrap();
    fail(
        &[&"--bundle", &bundle, &"--image", &broken],
        &["--image", "broken.png"],
    );
}

#[test]
fn cpu_engines_of_an_i2v_bundle_give_the_bundles_video() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("bundle");
    crate::generate::copy_dir(i2v_bundle("latent_concat"), &bundle);
    let o = Command::new(env!("CARGO_BIN_EXE_hyvideo-export"))
        .args(["build", "--backend", "cpu", "--threads", "2", "--bundle"])
        .arg(&bundle)
        .arg("--shapes")
        .arg(crate::common::root().join("configs/shapes/tiny.yaml"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let engines = std::fs::read_dir(bundle.join("engines"))
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| p.join("engine.yaml").is_file())
        .unwrap();
    for c in [
        "vae_encoder",
        "vision_encoder",
        "text_encoder",
        "transformer",
    ] {
        assert!(engines.join(format!("{c}.onnx")).is_file(), "{c}");
    }
    // The text encoder's profile is the expanded I2V prompt (103 + 256 + 575 tokens).
    let record = std::fs::read_to_string(engines.join("engine.yaml")).unwrap();
    assert!(record.contains("934"), "{record}");
    let set = hyvideo::engine_set::EngineSet::open(
        &engines,
        &bundle,
        &SessionConfig::default().with_intra_threads(Some(2)),
        0,
    )
    .unwrap();
    let config = SessionConfig::default().with_intra_threads(Some(2));
    let mut p = Pipeline::load(&bundle, Some(set), &StageConfigs::all(config)).unwrap();
    let g = p
        .generate(
            &request("latent_concat", "resized"),
            &mut |_| {},
            &CancelFlag::new(),
        )
        .unwrap();
    let want = golden5("i2v_pipeline_latent_concat.safetensors", "resized.latents");
    let err = rel_max_err(g.latents.data(), want.data());
    eprintln!("latent_concat on CPU engines: latents relative max error {err:.3e}");
    assert!(err <= 1e-3, "{err:.3e}");
}

/// Step caching runs on an image-to-video transformer's stages too: threshold 0 computes every
/// step and gives the single graph's latents; a high threshold skips steps.
#[test]
fn step_caches_run_on_the_token_replace_stages() {
    use hyvideo::denoiser::TransformerForm;
    use hyvideo::step_cache::{StepCache, StepCacheMethod};
    let config = SessionConfig::default().with_intra_threads(Some(2));
    let configs = StageConfigs {
        transformer_form: TransformerForm::Staged,
        ..StageConfigs::all(config)
    };
    let mut p = Pipeline::load(i2v_bundle("token_replace"), None, &configs).unwrap();
    let want = golden5("i2v_pipeline_token_replace.safetensors", "resized.latents");
    for (method, threshold) in [
        (StepCacheMethod::TeaCache, 0.0),
        (StepCacheMethod::FbCache, 0.0),
        (StepCacheMethod::FbCache, 10.0),
    ] {
        let mut req = request("token_replace", "resized");
        req.sampling.step_cache = Some(StepCache {
            method,
            threshold,
            start: 0,
            end: None,
        });
        let g = p.generate(&req, &mut |_| {}, &CancelFlag::new()).unwrap();
        let computed = g.step_cache.as_ref().unwrap().to_json()["computed_steps"].clone();
        let n = computed.as_array().map(|a| a.len()).unwrap_or(0);
        let err = rel_max_err(g.latents.data(), want.data());
        eprintln!(
            "{method:?} {threshold}: {n} of 4 steps computed, latents vs diffusers {err:.3e}"
        );
        if threshold == 0.0 {
            assert_eq!(n, 4, "{computed}");
            assert!(err <= 1e-3, "{err:.3e}");
        } else {
            assert!(n < 4, "{computed}");
        }
    }
}

/// FP8 for image-to-video: `calibrate --image` runs the fp32 I2V bundle's transformer on the
/// image's conditioning (refused without an image), the fp8 export takes its scales, and a
/// generation on the fp8 bundle stays near the reference's fp32 latents.
#[test]
fn fp8_calibration_and_export_of_an_i2v_bundle() {
    let dir = tempfile::tempdir().unwrap();
    let scales = dir.path().join("scales.json");
    let calibrate = |extra: &[&dyn AsRef<std::ffi::OsStr>]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_hyvideo-export"));
        c.args(["calibrate", "--bundle"])
            .arg(i2v_bundle("token_replace"))
            .arg("--out")
            .arg(&scales)
            .args(["--video-size", "32", "48", "--steps", "2", "--threads", "2"]);
        for a in extra {
            c.arg(a);
        }
        c.output().unwrap()
    };
    let o = calibrate(&[]);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(
        !o.status.success() && err.contains("--image") && err.contains("image-to-video"),
        "{err}"
    );
    assert!(!scales.exists());
    let img = image("resized");
    let o = calibrate(&[&"--image", &img]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let amax: serde_json::Value = serde_json::from_slice(&std::fs::read(&scales).unwrap()).unwrap();
    let layers = amax["amax"].as_object().unwrap();
    assert_eq!(layers.len(), 26, "{amax}");
    assert!(layers.values().all(|v| v.as_f64().is_some_and(|a| a > 0.0)));

    let b = dir.path().join("fp8");
    let o = Command::new(env!("CARGO_BIN_EXE_hyvideo-export"))
        .arg("onnx")
        .arg("--model")
        .arg(tiny_i2v_model("tiny_i2v"))
        .arg("--out")
        .arg(&b)
        .args(["--precision", "fp8", "--scales"])
        .arg(&scales)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let latents = dir.path().join("latents.safetensors");
    let mp4 = dir.path().join("fp8.mp4");
    let mut run = golden_run();
    run.extend([
        &"--bundle" as &dyn AsRef<std::ffi::OsStr>,
        &b,
        &"--image",
        &img,
        &"--seed",
        &"42",
        &"--threads",
        &"2",
        &"--save-path",
        &mp4,
        &"--output-latents",
        &latents,
    ]);
    let o = hyvideo(&run);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let got = hyvideo::latents::read_tensor5(&latents, hyvideo::latents::LATENTS_TENSOR).unwrap();
    let want = golden5("i2v_pipeline_token_replace.safetensors", "resized.latents");
    let e = rel_l2(got.data(), want.data());
    eprintln!("fp8 I2V generation (4 steps) vs diffusers fp32: final latents relative L2 {e:.2e}");
    assert!(e <= 0.1 && e > 1e-4, "{e:.2e}");
}
