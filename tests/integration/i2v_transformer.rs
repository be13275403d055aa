//! The image-to-video transformers (HunyuanVideo-I2V's `token_replace`, I2V-33ch's
//! `latent_concat`) exported from the tiny I2V fixtures against diffusers'
//! (`goldens/i2v_transformer.safetensors`), as the single graph and as the four stage graphs.

use std::path::Path;
use std::sync::OnceLock;

use hyvideo::denoise::{DenoiseSettings, TrueCfg, denoise_from_image};
use hyvideo::engine_set::ModelFiles;
use hyvideo::i2v::ImageConditioning;
use hyvideo::scheduler::FlowDirection;
use hyvideo::staged_transformer::StagedTransformer;
use hyvideo::transformer::{TextConditioning, Transformer};
use hyvideo_bundle::{Component, ImageCondition, Manifest, Precision};
use hyvideo_engines::SessionConfig;
use hyvideo_exporters::export::TransformerSource;

use crate::common::{export_model, golden, golden_i64, golden5, rel_max_err, tiny_i2v_model};
use crate::transformer::run_golden_case;

const FILE: &str = "i2v_transformer.safetensors";

/// The transformer (and its stages) of `tiny_i2v` (token_replace) or `tiny_i2v_33ch`
/// (latent_concat), exported once per run (fp32).
pub fn i2v_transformer_bundle(kind: &str) -> &'static Path {
    static TOKEN_REPLACE: OnceLock<std::path::PathBuf> = OnceLock::new();
    static LATENT_CONCAT: OnceLock<std::path::PathBuf> = OnceLock::new();
    let (cell, folder) = match kind {
        "token_replace" => (&TOKEN_REPLACE, "tiny_i2v"),
        _ => (&LATENT_CONCAT, "tiny_i2v_33ch"),
    };
    cell.get_or_init(|| {
        export_model(
            &tiny_i2v_model(folder),
            &[Component::Transformer],
            TransformerSource::default(),
            Precision::Fp32,
        )
    })
}

fn config() -> SessionConfig {
    SessionConfig::default().with_intra_threads(Some(2))
}

fn check(kind: &str) {
    let bundle = i2v_transformer_bundle(kind);
    let manifest = Manifest::load(bundle).unwrap();
    let files = ModelFiles::bundle(bundle, &manifest);
    let mut single = Transformer::load_with(&files, &config()).unwrap();
    let mut staged = StagedTransformer::load_with(&files, &config()).unwrap();
    for case in ["video", "batch2"] {
        let case = format!("{kind}.{case}");
        let want = golden5(FILE, &format!("{case}.sample"));
        let one = run_golden_case(&mut single, FILE, &case);
        assert_eq!(one.shape(), want.shape(), "{case}");
        let err = rel_max_err(one.data(), want.data());
        eprintln!("{case}: single graph vs diffusers, relative max error {err:.3e}");
        assert!(err <= 1e-4, "{case}: {err:.3e}");
        let four = run_golden_case(&mut staged, FILE, &case);
        let err = rel_max_err(four.data(), one.data());
        eprintln!("{case}: stages vs single graph, relative max error {err:.3e}");
        assert!(err <= 1e-6, "{case}: stages {err:.3e}");
    }
}

#[test]
fn token_replace_transformer_matches_diffusers() {
    check("token_replace");
}

#[test]
fn latent_concat_transformer_matches_diffusers() {
    check("latent_concat");
}

#[test]
fn token_replace_stages_pass_the_first_frame_conditioning() {
    let bundle = i2v_transformer_bundle("token_replace");
    let m = Manifest::load(bundle).unwrap();
    let names = |c: Component, outputs: bool| -> Vec<String> {
        let e = &m.components[&c];
        let side = if outputs { &e.outputs } else { &e.inputs };
        side.iter().map(|t| t.name.clone()).collect()
    };
    assert!(
        names(Component::TransformerEmbed, true).contains(&"token_replace_conditioning".into())
    );
    for c in [
        Component::TransformerFirstBlock,
        Component::TransformerRestBlocks,
    ] {
        let ins = names(c, false);
        assert!(
            ins.contains(&"token_replace_conditioning".into()),
            "{c}: {ins:?}"
        );
        assert!(ins.contains(&"first_frame_tokens".into()), "{c}: {ins:?}");
    }
    // The text-to-video and latent_concat stages have neither.
    let m33 = Manifest::load(i2v_transformer_bundle("latent_concat")).unwrap();
    let e = &m33.components[&Component::TransformerFirstBlock];
    assert!(!e.inputs.iter().any(|t| t.name == "first_frame_tokens"));
}

fn pipeline_text(file: &str, prefix: &str) -> TextConditioning {
    let (es, e) = golden(file, &format!("{prefix}prompt_embeds"));
    let (ms, m) = golden_i64(file, &format!("{prefix}prompt_attention_mask"));
    let (ps, p) = golden(file, &format!("{prefix}pooled_prompt_embeds"));
    TextConditioning::new((&es, e), (&ms, m), (&ps, p)).unwrap()
}

/// The pipeline's loop from its own initial noise, image latent and prompt embeddings
/// (`goldens/i2v_pipeline_<kind>.safetensors`, case `case`): every step and the returned latents.
fn run_i2v_loop(kind: &str, case: &str, guidance: f32, cfg: Option<TrueCfg>) {
    let file = format!("i2v_pipeline_{kind}.safetensors");
    let file = file.as_str();
    let bundle = i2v_transformer_bundle(kind);
    let manifest = Manifest::load(bundle).unwrap();
    let mut model =
        Transformer::load_with(&ModelFiles::bundle(bundle, &manifest), &config()).unwrap();
    let p = |n: &str| format!("{case}.{n}");
    let text = pipeline_text(file, &p(""));
    let negative = cfg.map(|_| pipeline_text(file, &p("negative_")));
    let noise = golden5(file, &p("init_latents"));
    let image = golden5(file, &p("image_latents"));
    let condition = match kind {
        "token_replace" => ImageCondition::TokenReplace,
        _ => ImageCondition::LatentConcat,
    };
    let c = ImageConditioning::new(condition, image, noise.shape()).unwrap();
    let settings = DenoiseSettings {
        steps: 4,
        shift: 7.0,
        direction: FlowDirection::Reverse,
        embedded_guidance: Some(guidance),
        true_cfg: cfg,
    };
    let mut steps = vec![];
    let out = denoise_from_image(
        &mut model,
        c.initial_latents(noise),
        &text,
        negative.as_ref(),
        &settings,
        Some(&c),
        |r, x| steps.push((r.step, x.clone())),
    )
    .unwrap();
    for (i, x) in &steps {
        let want = golden5(file, &p(&format!("step_{}", i - 1)));
        let err = rel_max_err(x.data(), want.data());
        eprintln!("{kind} {case} step {i}: relative max error {err:.3e}");
        assert!(err <= 1e-3, "{kind} {case} step {i}: {err:.3e}");
    }
    let out = c.output_latents(out);
    let want = golden5(file, &p("latents"));
    assert_eq!(out.shape(), want.shape());
    let err = rel_max_err(out.data(), want.data());
    eprintln!("{kind} {case}: returned latents, relative max error {err:.3e}");
    assert!(err <= 1e-3, "{kind} {case}: {err:.3e}");
}

#[test]
fn i2v_loops_reproduce_the_pipelines_step_by_step() {
    run_i2v_loop("token_replace", "resized", 6.0, None);
    run_i2v_loop(
        "token_replace",
        "resized.cfg",
        6.0,
        Some(TrueCfg { scale: 4.0 }),
    );
    run_i2v_loop("latent_concat", "resized", 1.0, None);
}
