//! The exported transformer against diffusers' goldens (`goldens/transformer.safetensors`), the
//! Tencent single-file exports against the diffusers-folder export, and the Rust denoising loop
//! against the pipeline's per-step latents (`goldens/pipeline.safetensors`).

use std::path::Path;
use std::sync::OnceLock;

use hyvideo::denoise::{DenoiseSettings, TrueCfg, denoise};
use hyvideo::scheduler::FlowDirection;
use hyvideo::tensor::Tensor5;
use hyvideo::transformer::{RowBatching, StepInput, TextConditioning, Transformer, VelocityModel};
use hyvideo_bundle::AttentionKernel;
use hyvideo_bundle::{Component, Manifest};
use hyvideo_engines::{AttentionPolicy, SessionConfig};
use hyvideo_exporters::export::TransformerSource;

use crate::common::{
    export_tiny, fixtures, golden, golden_i64, golden5, rel_max_err, transformer_bundle,
};

const FILE: &str = "transformer.safetensors";
const PIPE: &str = "pipeline.safetensors";

fn load(bundle: &Path) -> Transformer {
    load_as(bundle, AttentionPolicy::BackendFused)
}

/// The transformer of `bundle` on CPU with `attention` (fused: ONNX Runtime's
/// MultiHeadAttention; standard: the bundle's MatMul → Softmax → MatMul, TensorRT's input).
fn load_as(bundle: &Path, attention: AttentionPolicy) -> Transformer {
    let manifest = Manifest::load(bundle).unwrap();
    Transformer::load_with(
        &hyvideo::engine_set::ModelFiles::bundle(bundle, &manifest),
        &SessionConfig::default()
            .with_intra_threads(Some(2))
            .with_attention(attention),
    )
    .unwrap()
}

/// Run golden case `case` of `goldens/transformer.safetensors` through `model`.
fn run_case(model: &mut Transformer, case: &str) -> Tensor5 {
    run_golden_case(model, FILE, case)
}

/// Run golden case `case` of the transformer golden `file` (its `<case>.hidden_states`,
/// `.timestep`, text and guidance) through `model`.
pub fn run_golden_case(model: &mut dyn VelocityModel, file: &str, case: &str) -> Tensor5 {
    let g = |n: &str| golden(file, &format!("{case}.{n}"));
    let hs = golden5(file, &format!("{case}.hidden_states"));
    let (es, e) = g("encoder_hidden_states");
    let (ms, m) = golden_i64(file, &format!("{case}.encoder_attention_mask"));
    let (ps, p) = g("pooled_projections");
    let text = TextConditioning::new((&es, e), (&ms, m), (&ps, p)).unwrap();
    let (_, t) = g("timestep");
    let (_, guidance) = g("guidance");
    model
        .predict(&StepInput {
            latents: &hs,
            timestep: &t,
            text: &text,
            guidance: Some(&guidance),
        })
        .unwrap()
}

/// Case `case` against diffusers on both attention forms.
fn check_case(case: &str) {
    for (attention, kernel) in [
        (
            AttentionPolicy::BackendFused,
            AttentionKernel::MultiHeadAttention,
        ),
        (AttentionPolicy::Standard, AttentionKernel::Standard),
    ] {
        let mut model = load_as(transformer_bundle(), attention);
        assert_eq!(model.attention(), kernel);
        let out = run_case(&mut model, case);
        let want = golden5(FILE, &format!("{case}.sample"));
        assert_eq!(out.shape(), want.shape(), "{case}");
        let err = rel_max_err(out.data(), want.data());
        eprintln!("{case} ({kernel}): relative max error {err:.3e}");
        assert!(
            err <= 1e-4,
            "{case} ({kernel}): relative max error {err:.3e}"
        );
    }
}

#[test]
fn single_frame_matches_diffusers() {
    check_case("image");
}

#[test]
fn several_frames_with_h_ne_w_match_diffusers() {
    check_case("video");
}

#[test]
fn batch_of_two_with_different_padding_matches_diffusers() {
    check_case("batch2");
}

/// True CFG's two rows with equally many valid tokens: one shared call (GPU default) and two
/// batch-1 calls (CPU default) give the same velocities, and each row the batch-1 result.
#[test]
fn rows_shared_or_one_by_one_agree() {
    let g = |n: &str| golden(FILE, &format!("video.{n}"));
    let hs = golden5(FILE, "video.hidden_states");
    let (es, e) = g("encoder_hidden_states");
    let (ms, m) = golden_i64(FILE, "video.encoder_attention_mask");
    let (ps, p) = g("pooled_projections");
    let one = TextConditioning::new((&es, e), (&ms, m), (&ps, p)).unwrap();
    let two = one.stack(&one).unwrap();
    let mut shape = hs.shape();
    shape[0] = 2;
    let hs2 = Tensor5::from_vec(shape, [hs.data(), hs.data()].concat()).unwrap();
    let (_, t) = g("timestep");
    let (_, guidance) = g("guidance");
    let run = |model: &mut Transformer, x: &Tensor5, text: &TextConditioning, n: usize| {
        model
            .predict(&StepInput {
                latents: x,
                timestep: &t.repeat(n),
                text,
                guidance: Some(&guidance.repeat(n)),
            })
            .unwrap()
    };
    let mut model = load(transformer_bundle());
    let single = run(&mut model, &hs, &one, 1);
    let per_row = run(&mut model, &hs2, &two, 2);
    let mut model = load(transformer_bundle()).with_row_batching(RowBatching::SharedWhenEqual);
    let shared = run(&mut model, &hs2, &two, 2);
    let half = single.data().len();
    assert_eq!(&per_row.data()[..half], single.data());
    assert_eq!(&per_row.data()[half..], single.data());
    let err = rel_max_err(shared.data(), per_row.data());
    assert!(err <= 1e-5, "shared vs per-row: {err:.3e}");
}

#[test]
fn other_text_length_matches_diffusers() {
    check_case("textlen");
}

fn tencent_bundle() -> &'static Path {
    static B: OnceLock<std::path::PathBuf> = OnceLock::new();
    B.get_or_init(|| {
        export_tiny(
            &[Component::Transformer],
            TransformerSource {
                file: Some(fixtures().join("tencent/transformer.safetensors")),
                ..TransformerSource::default()
            },
        )
    })
}

#[test]
fn tencent_single_file_gives_the_diffusers_outputs() {
    let mut a = load(transformer_bundle());
    let mut b = load(tencent_bundle());
    for case in ["video", "batch2"] {
        let x = run_case(&mut a, case);
        let y = run_case(&mut b, case);
        let err = rel_max_err(y.data(), x.data());
        eprintln!("{case}: tencent vs diffusers relative max error {err:.3e}");
        assert!(err <= 1e-6, "{case}: {err:.3e}");
    }
    let m = Manifest::load(tencent_bundle()).unwrap();
    let e = &m.components[&Component::Transformer];
    assert!(
        e.sources
            .iter()
            .any(|s| s.path.ends_with("transformer.safetensors")),
        "{:?}",
        e.sources
    );
}

#[test]
fn tencent_fp8_file_matches_the_reference_dequantisation() {
    // The map is found beside the file (`<stem>_map.safetensors`).
    let bundle = export_tiny(
        &[Component::Transformer],
        TransformerSource {
            file: Some(fixtures().join("tencent/transformer_fp8_e4m3fn.safetensors")),
            ..TransformerSource::default()
        },
    );
    let mut model = load(&bundle);
    let out = run_case(&mut model, "fp8");
    let want = golden5(FILE, "fp8.sample");
    let err = rel_max_err(out.data(), want.data());
    eprintln!("fp8: relative max error {err:.3e}");
    assert!(err <= 1e-4, "fp8: relative max error {err:.3e}");
    // ...and it is a different model from the bf16 one (the test could fail).
    let bf16 = golden5(FILE, "video.sample");
    assert!(rel_max_err(out.data(), bf16.data()) > 1e-3);
}

fn pipeline_text(prefix: &str) -> TextConditioning {
    let (es, e) = golden(PIPE, &format!("{prefix}prompt_embeds"));
    let (ms, m) = golden_i64(PIPE, &format!("{prefix}prompt_attention_mask"));
    let (ps, p) = golden(PIPE, &format!("{prefix}pooled_prompt_embeds"));
    TextConditioning::new((&es, e), (&ms, m), (&ps, p)).unwrap()
}

fn run_loop(cfg: Option<TrueCfg>, prefix: &str) {
    let mut model = load(transformer_bundle());
    let text = pipeline_text("");
    let negative = pipeline_text("cfg.negative_");
    let init = golden5(PIPE, &format!("{prefix}init_latents"));
    let settings = DenoiseSettings {
        steps: 4,
        shift: 7.0,
        direction: FlowDirection::Reverse,
        embedded_guidance: Some(6.0),
        true_cfg: cfg,
    };
    let mut steps = vec![];
    let out = denoise(
        &mut model,
        init,
        &text,
        Some(&negative),
        &settings,
        |r, x| steps.push((r.step, x.clone())),
    )
    .unwrap();
    assert_eq!(steps.len(), 4);
    for (i, x) in &steps {
        let want = golden5(PIPE, &format!("{prefix}step_{}", i - 1));
        let err = rel_max_err(x.data(), want.data());
        eprintln!("{prefix}step {i}: relative max error {err:.3e}");
        assert!(err <= 1e-3, "{prefix}step {i}: {err:.3e}");
    }
    let want = golden5(PIPE, &format!("{prefix}final_latents"));
    let err = rel_max_err(out.data(), want.data());
    eprintln!("{prefix}final: relative max error {err:.3e}");
    assert!(err <= 1e-3, "{prefix}final latents: {err:.3e}");
}

#[test]
fn denoising_loop_reproduces_the_pipeline_step_by_step() {
    run_loop(None, "");
}

#[test]
fn true_cfg_loop_reproduces_the_pipeline() {
    run_loop(Some(TrueCfg { scale: 4.0 }), "cfg.");
}
