//! HunyuanVideo-I2V's LLaVA text encoder exported from `tiny_i2v/` against transformers'
//! (`goldens/i2v_text_encoder.safetensors`): the vision graph (tower + projector) on the
//! runtime's CLIP preprocessing (checked value for value against a sample of
//! `CLIPImageProcessor`'s pixel values), the language
//! model with the image merged, and the whole image-to-video prompt encoding against the
//! pipeline's `encode_prompt` (`goldens/i2v_pipeline_*.safetensors`), negative prompt with the
//! black image included.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use hyvideo::engine_set::ModelFiles;
use hyvideo::image::{ClipImageConfig, clip_pixels, load_image};
use hyvideo::image_prompt::ImageEmbedInterleave;
use hyvideo::pipeline::{IMAGE_PROCESSOR_CONFIG, IMAGE_PROCESSOR_FOLDER, TextEncoders};
use hyvideo_bundle::{Component, Manifest, Precision};
use hyvideo_engines::{Engine, Input, SessionConfig};
use hyvideo_exporters::export::TransformerSource;

use crate::common::{
    export_model, fixtures, golden, golden_i64, list_dir, rel_l2, rel_max_err, tiny_i2v_model,
};

const FILE: &str = "i2v_text_encoder.safetensors";

/// `tiny_i2v`'s text side (LLaVA's two graphs and CLIP), exported once per run (fp32).
pub fn i2v_text_bundle() -> &'static Path {
    static BUNDLE: OnceLock<PathBuf> = OnceLock::new();
    BUNDLE.get_or_init(|| {
        export_model(
            &tiny_i2v_model("tiny_i2v"),
            &[
                Component::TextEncoder,
                Component::VisionEncoder,
                Component::TextEncoder2,
            ],
            TransformerSource::default(),
            Precision::Fp32,
        )
    })
}

fn config() -> SessionConfig {
    SessionConfig::default().with_intra_threads(Some(2))
}

fn engine(component: Component) -> Engine {
    crate::text_encoders::engine(i2v_text_bundle(), component)
}

/// The golden's pixel values keep every `PIXEL_STRIDE`-th value of transformers'.
const PIXEL_STRIDE: usize = 97;

/// The vision graph's input for `image` (`goldens/i2v_images/{image}.png`): the runtime's CLIP
/// preprocessing with `tiny_i2v`'s processor config, equal to the golden's sample of
/// `CLIPImageProcessor`'s `pixel_values` value for value.
fn pixels(image: &str) -> (Vec<usize>, Vec<f32>) {
    let png = fixtures().join(format!("goldens/i2v_images/{image}.png"));
    let config = ClipImageConfig::from_file(
        &tiny_i2v_model("tiny_i2v")
            .join(IMAGE_PROCESSOR_FOLDER)
            .join(IMAGE_PROCESSOR_CONFIG),
    )
    .unwrap();
    let (pixels, [c, h, w]) = clip_pixels(&load_image(&png).unwrap(), &config);
    let (_, sample) = golden(FILE, &format!("{image}.pixel_values_sample"));
    let ours: Vec<f32> = pixels.iter().step_by(PIXEL_STRIDE).copied().collect();
    assert_eq!(ours.len(), sample.len(), "{image}");
    let differing = ours.iter().zip(&sample).filter(|(a, b)| a != b).count();
    assert_eq!(
        differing, 0,
        "{image}: pixel values differing from transformers'"
    );
    (vec![1, c, h, w], pixels)
}

/// The vision graph `e` on the pixels of `image`.
fn run_vision(e: &mut Engine, image: &str) -> Vec<f32> {
    let (shape, pixels) = pixels(image);
    let out = e
        .run_one(
            &[(
                "pixel_values",
                Input::F32 {
                    shape: &shape,
                    data: &pixels,
                },
            )],
            "image_embeds",
        )
        .unwrap();
    let (want_shape, _) = golden(FILE, &format!("{image}.image_embeds"));
    assert_eq!(out.shape, want_shape);
    out.data
}

/// The language model `e` on the golden expanded tokens with the `resized` image's embeddings:
/// its rows of real tokens, and the golden's. The pipeline gives pads position 1, this graph
/// 0..L (pad rows are never read; their values differ).
fn run_language(e: &mut Engine) -> (Vec<f32>, Vec<f32>) {
    let (shape, ids) = golden_i64(FILE, "language.input_ids");
    let (_, mask) = golden_i64(FILE, "language.attention_mask");
    let (es, embeds) = golden(FILE, "language.image_embeds");
    let out = e
        .run_one(
            &[
                (
                    "input_ids",
                    Input::I64 {
                        shape: &shape,
                        data: &ids,
                    },
                ),
                (
                    "attention_mask",
                    Input::I64 {
                        shape: &shape,
                        data: &mask,
                    },
                ),
                (
                    "image_embeds",
                    Input::F32 {
                        shape: &es,
                        data: &embeds,
                    },
                ),
            ],
            "hidden_states",
        )
        .unwrap();
    let (want_shape, want) = golden(FILE, "language.hidden_states");
    assert_eq!(out.shape, want_shape);
    let d = want_shape[2];
    (real_rows(&out.data, d, &mask), real_rows(&want, d, &mask))
}

/// The rows of `v` ([L, d] per batch) whose `mask` is 1.
fn real_rows(v: &[f32], d: usize, mask: &[i64]) -> Vec<f32> {
    v.chunks(d)
        .zip(mask)
        .filter(|(_, m)| **m == 1)
        .flat_map(|(r, _)| r.to_vec())
        .collect()
}

#[test]
fn vision_graph_matches_llava_image_features() {
    let mut e = engine(Component::VisionEncoder);
    for image in ["exact", "resized"] {
        let out = run_vision(&mut e, image);
        let (_, want) = golden(FILE, &format!("{image}.image_embeds"));
        let err = rel_max_err(&out, &want);
        eprintln!("vision {image}: relative max error {err:.3e}");
        assert!(err <= 1e-4, "{image}: {err:.3e}");
    }
}

#[test]
fn language_model_with_the_image_matches_on_every_real_token() {
    let (out, want) = run_language(&mut engine(Component::TextEncoder));
    let err = rel_max_err(&out, &want);
    eprintln!("language model (real tokens): relative max error {err:.3e}");
    assert!(err <= 1e-4, "{err:.3e}");
}

fn encoders() -> TextEncoders {
    let bundle = i2v_text_bundle();
    let manifest = Manifest::load(bundle).unwrap();
    TextEncoders::load_with(&ModelFiles::bundle(bundle, &manifest), &config()).unwrap()
}

/// `encode_prompt`'s embeddings and mask for `prompt` with `image`, against case `prefix` of
/// the pipeline golden `file`.
fn check_prompt(
    te: &mut TextEncoders,
    file: &str,
    prefix: &str,
    prompt: &str,
    image: &hyvideo::image::RgbImage,
    interleave: usize,
) {
    let enc = te
        .encode_with_image(&[prompt], image, ImageEmbedInterleave(interleave), || {})
        .unwrap();
    let (es, e) = golden(file, &format!("{prefix}prompt_embeds"));
    let (_, m) = golden_i64(file, &format!("{prefix}prompt_attention_mask"));
    let (_, p) = golden(file, &format!("{prefix}pooled_prompt_embeds"));
    assert_eq!(
        [enc.text.batch(), enc.text.len()],
        [es[0], es[1]],
        "{file} {prefix}"
    );
    assert_eq!(enc.text.mask(), m.as_slice(), "{file} {prefix}");
    // Rows the transformer reads (mask 1): the pipeline's pad rows hold the language model's
    // states at position 1 (its position ids), this graph's at 0..L; neither is ever read.
    let d = es[2];
    let err = rel_max_err(&real_rows(enc.text.embeds(), d, &m), &real_rows(&e, d, &m));
    eprintln!(
        "{file} {prefix}: prompt embeddings ({} rows read) relative max error {err:.3e}",
        m.iter().sum::<i64>()
    );
    assert!(err <= 1e-4, "{file} {prefix}: {err:.3e}");
    assert!(rel_max_err(enc.text.pooled(), &p) <= 1e-4);
}

#[test]
fn image_to_video_prompts_match_the_pipelines_encode_prompt() {
    let mut te = encoders();
    assert!(te.takes_image());
    let prompt = "A cat walks on the grass, realistic style.";
    let images = fixtures().join("goldens/i2v_images");
    for (kind, interleave) in [("token_replace", 4), ("latent_concat", 2)] {
        let file = format!("i2v_pipeline_{kind}.safetensors");
        for case in ["exact", "resized"] {
            let image = load_image(&images.join(format!("{case}.png"))).unwrap();
            check_prompt(
                &mut te,
                &file,
                &format!("{case}."),
                prompt,
                &image,
                interleave,
            );
        }
    }
    // The negative prompt: a black image of the video's size, interleave 2.
    let black = hyvideo::image::RgbImage::black(48, 32);
    check_prompt(
        &mut te,
        "i2v_pipeline_token_replace.safetensors",
        "resized.cfg.negative_",
        "low quality",
        &black,
        2,
    );
    // A text-to-video call on an image-to-video encoder is refused, naming why.
    let e = te.encode(&[prompt], || {}).err().unwrap().to_string();
    assert!(e.contains("image-to-video"), "{e}");
}

#[test]
fn i2v_bundle_holds_the_image_processor_and_llava_config() {
    let bundle = i2v_text_bundle();
    assert!(list_dir(&bundle.join("image_processor")).contains(&"preprocessor_config.json".into()));
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(bundle.join("text_encoder/config.json")).unwrap())
            .unwrap();
    assert_eq!(cfg["model_type"], "llava");
    let m = Manifest::load(bundle).unwrap();
    let te = &m.components[&Component::TextEncoder];
    assert!(te.inputs.iter().any(|t| t.name == "image_embeds"));
}

/// The fp16 profile of LLaVA's two graphs on ONNX Runtime CPU, against transformers' fp32 (the
/// other graphs' fp16 bound, relative L2 ≤ 3e-3).
#[test]
fn llava_graphs_in_fp16_stay_close() {
    let bundle = export_model(
        &tiny_i2v_model("tiny_i2v"),
        &[Component::TextEncoder, Component::VisionEncoder],
        TransformerSource::default(),
        Precision::Fp16,
    );
    let load = |c: Component| crate::text_encoders::engine(&bundle, c);
    let out = run_vision(&mut load(Component::VisionEncoder), "resized");
    let (_, want) = golden(FILE, "resized.image_embeds");
    let err = rel_l2(&out, &want);
    eprintln!("vision fp16: relative L2 {err:.3e}");
    assert!(err <= 3e-3, "{err:.3e}");
    let (out, want) = run_language(&mut load(Component::TextEncoder));
    let err = rel_l2(&out, &want);
    eprintln!("language model fp16: relative L2 {err:.3e}");
    assert!(err <= 3e-3, "{err:.3e}");
}
