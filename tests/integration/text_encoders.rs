//! The exported text encoders against transformers' goldens (`goldens/text_encoders.safetensors`,
//! four prompts of different lengths, one truncated), the bundle's tokenizer/config copies, and
//! bad-input cases of the text-encoder exporters.

use std::path::{Path, PathBuf};

use hyvideo_bundle::{Component, Manifest, Precision};
use hyvideo_engines::{Engine, Input, SessionConfig};
use hyvideo_exporters::export::{ExportRequest, export};

use crate::common::{golden, golden_i64, list_dir, rel_max_err, text_encoders_bundle, tiny_model};

const FILE: &str = "text_encoders.safetensors";

/// The graph of `component` in `bundle` on ONNX Runtime CPU, 2 threads.
pub(crate) fn engine(bundle: &Path, component: Component) -> Engine {
    let m = Manifest::load(bundle).unwrap();
    let entry = m.component(bundle, component).unwrap();
    Engine::load(
        &bundle.join(&entry.file),
        &SessionConfig::default().with_intra_threads(Some(2)),
    )
    .unwrap()
}

/// `text_encoder` of `bundle` on the golden Llama inputs restricted to rows `rows` and the first
/// `len` positions, with the matching golden hidden states: (output, golden, mask).
fn run_llama(
    bundle: &Path,
    rows: std::ops::Range<usize>,
    len: usize,
) -> (Vec<f32>, Vec<f32>, Vec<i64>) {
    let mut e = engine(bundle, Component::TextEncoder);
    let (ids_shape, ids) = golden_i64(FILE, "llama.input_ids");
    let (mask_shape, mask) = golden_i64(FILE, "llama.attention_mask");
    let (want_shape, want) = golden(FILE, "llama.hidden_states");
    assert_eq!(ids_shape, [4, 351]);
    assert_eq!(mask_shape, ids_shape);
    let (l, d) = (ids_shape[1], want_shape[2]);
    let crop = |v: &[i64]| -> Vec<i64> {
        rows.clone()
            .flat_map(|r| v[r * l..r * l + len].to_vec())
            .collect()
    };
    let (ids, mask) = (crop(&ids), crop(&mask));
    let want: Vec<f32> = rows
        .clone()
        .flat_map(|r| want[r * l * d..(r * l + len) * d].to_vec())
        .collect();
    let shape = [rows.len(), len];
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
            ],
            "hidden_states",
        )
        .unwrap();
    assert_eq!(out.shape, [rows.len(), len, d]);
    (out.data, want, mask)
}

#[test]
fn llama_hidden_states_match_transformers_on_every_position() {
    let (out, want, mask) = run_llama(text_encoders_bundle(), 0..4, 351);
    // The batch mixes prompt lengths (right padding), one filling all 351 positions.
    let lens: Vec<i64> = mask.chunks(351).map(|r| r.iter().sum()).collect();
    assert!(
        lens.iter().any(|&n| n < 351) && lens.contains(&351),
        "{lens:?}"
    );
    let err = rel_max_err(&out, &want);
    // The same over the real tokens only (the part the pipeline keeps after cropping).
    let d = want.len() / mask.len();
    let (mut got_real, mut want_real) = (vec![], vec![]);
    for (t, &m) in mask.iter().enumerate() {
        if m != 0 {
            got_real.extend_from_slice(&out[t * d..(t + 1) * d]);
            want_real.extend_from_slice(&want[t * d..(t + 1) * d]);
        }
    }
    let err_real = rel_max_err(&got_real, &want_real);
    eprintln!(
        "text_encoder (llama) hidden_states: relative max error {err:.3e} (all positions), \
         {err_real:.3e} (real tokens); lengths {lens:?}"
    );
    assert!(err <= 1e-4, "relative max error {err:.3e}");
}

#[test]
fn llama_runs_at_other_batch_sizes_and_lengths() {
    // Attention is causal, so the first `len` positions of the golden are the answer for the
    // inputs cut to `len`: the cuts fall inside row 1's tokens and row 2's padding (L = 100),
    // in row 2's padding (L = 120) and at the start of the unpadded row 3 (L = 7).
    for (rows, len) in [(1..3, 100), (2..3, 120), (3..4, 7)] {
        let (out, want, _) = run_llama(text_encoders_bundle(), rows.clone(), len);
        let err = rel_max_err(&out, &want);
        eprintln!("text_encoder rows {rows:?}, L = {len}: relative max error {err:.3e}");
        assert!(err <= 1e-4, "rows {rows:?}, L = {len}: {err:.3e}");
    }
}

#[test]
fn llama_checkpoint_with_causal_lm_keys_gives_the_same_states() {
    // A `LlamaForCausalLM` checkpoint keeps the decoder under `model.`.
    let tmp = model_copy();
    let model = tmp.path();
    rewrite_safetensors(&model.join("text_encoder/model.safetensors"), |n| {
        Some(format!("model.{n}"))
    });
    let bundle = export_ok(model, &[Component::TextEncoder]);
    let (out, want, _) = run_llama(&bundle, 0..4, 351);
    let err = rel_max_err(&out, &want);
    eprintln!("text_encoder (model.* keys): relative max error {err:.3e}");
    assert!(err <= 1e-4, "relative max error {err:.3e}");
}

/// Relative max error of `text_encoder_2` of `bundle` on the golden CLIP ids.
fn clip_error(bundle: &Path) -> f64 {
    let mut e = engine(bundle, Component::TextEncoder2);
    let (ids_shape, ids) = golden_i64(FILE, "clip.input_ids");
    assert_eq!(ids_shape, [4, 77]);
    let out = e
        .run_one(
            &[(
                "input_ids",
                Input::I64 {
                    shape: &ids_shape,
                    data: &ids,
                },
            )],
            "pooler_output",
        )
        .unwrap();
    let (want_shape, want) = golden(FILE, "clip.pooler_output");
    assert_eq!(out.shape, want_shape);
    rel_max_err(&out.data, &want)
}

#[test]
fn clip_pooler_output_matches_transformers() {
    let err = clip_error(text_encoders_bundle());
    eprintln!("text_encoder_2 (clip) pooler_output: relative max error {err:.3e}");
    assert!(err <= 1e-4, "relative max error {err:.3e}");
    // The rows really pool different positions (the EOS of each prompt), not one fixed index.
    let (_, ids) = golden_i64(FILE, "clip.input_ids");
    let eos: Vec<usize> = ids
        .chunks(77)
        .map(|r| r.iter().position(|&t| t == 49407).unwrap())
        .collect();
    assert!(eos.windows(2).any(|w| w[0] != w[1]), "{eos:?}");
}

#[test]
fn bundle_holds_tokenizers_configs_and_graph_io() {
    let b = text_encoders_bundle();
    assert_eq!(
        list_dir(&b.join("tokenizer")),
        list_dir(&tiny_model().join("tokenizer"))
    );
    assert_eq!(
        list_dir(&b.join("tokenizer_2")),
        list_dir(&tiny_model().join("tokenizer_2"))
    );
    for (copy, orig) in [
        ("tokenizer/tokenizer.json", "tokenizer/tokenizer.json"),
        ("tokenizer_2/tokenizer.json", "tokenizer_2/tokenizer.json"),
        ("text_encoder/config.json", "text_encoder/config.json"),
        ("text_encoder_2/config.json", "text_encoder_2/config.json"),
    ] {
        assert_eq!(
            std::fs::read(b.join(copy)).unwrap(),
            std::fs::read(tiny_model().join(orig)).unwrap(),
            "{copy}"
        );
    }
    let m = Manifest::load(b).unwrap();
    let te = m.component(b, Component::TextEncoder).unwrap();
    let names = |v: &[hyvideo_bundle::TensorSpec]| -> Vec<String> {
        v.iter().map(|t| t.name.clone()).collect()
    };
    assert_eq!(names(&te.inputs), ["input_ids", "attention_mask"]);
    assert_eq!(names(&te.outputs), ["hidden_states"]);
    assert_eq!(te.outputs[0].dims, ["batch", "text_len", "16"]);
    assert!(
        te.sources
            .iter()
            .any(|s| s.path.ends_with("model.safetensors"))
    );
    let te2 = m.component(b, Component::TextEncoder2).unwrap();
    assert_eq!(names(&te2.inputs), ["input_ids"]);
    assert_eq!(te2.inputs[0].dims, ["batch", "77"]);
    assert_eq!(names(&te2.outputs), ["pooler_output"]);
    assert_eq!(te2.outputs[0].dims, ["batch", "16"]);
}

/// A writable copy of the tiny model's text-encoder folders, for breaking one file (removed
/// when dropped).
fn model_copy() -> tempfile::TempDir {
    let tmp = tempfile::Builder::new()
        .prefix("hyvideo-te-")
        .tempdir()
        .unwrap();
    let dir = tmp.path();
    for sub in ["text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2"] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
        for f in list_dir(&tiny_model().join(sub)) {
            std::fs::copy(tiny_model().join(sub).join(&f), dir.join(sub).join(&f)).unwrap();
        }
    }
    tmp
}

/// Export `component` of `model`; the error text (the export must fail and leave no bundle).
fn export_err(model: &Path, component: Component) -> String {
    let out = model.join("bundle");
    let req = ExportRequest {
        model: model.to_path_buf(),
        out: out.clone(),
        precision: Precision::Fp32,
        components: vec![component],
        transformer: Default::default(),
        precision_profile: None,
        fp8_scales: None,
    };
    let e = export(&req, |_| {}).expect_err("export should fail");
    assert!(!out.exists(), "a failed export left {}", out.display());
    e.to_string()
}

fn edit_json(path: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(path, serde_json::to_string_pretty(&v).unwrap()).unwrap();
}

#[test]
fn scaled_rope_config_is_refused_naming_the_key() {
    let tmp = model_copy();
    let model = tmp.path();
    let cfg = model.join("text_encoder/config.json");
    edit_json(&cfg, |v| {
        v["rope_parameters"]["rope_type"] = "llama3".into();
    });
    let e = export_err(model, Component::TextEncoder);
    assert!(
        e.contains("rope_parameters.rope_type")
            && e.contains("llama3")
            && e.contains("config.json"),
        "{e}"
    );
}

#[test]
fn too_few_llama_layers_for_the_skipped_hidden_state_is_refused() {
    let tmp = model_copy();
    let model = tmp.path();
    edit_json(&model.join("text_encoder/config.json"), |v| {
        v["num_hidden_layers"] = 2.into();
    });
    let e = export_err(model, Component::TextEncoder);
    assert!(
        e.contains("num_hidden_layers = 2") && e.contains("hidden_states[-3]"),
        "{e}"
    );
}

/// Rewrite `file` with every tensor name passed through `rename` (`None` drops the tensor).
fn rewrite_safetensors(file: &Path, rename: impl Fn(&str) -> Option<String>) {
    let bytes = std::fs::read(file).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let kept: Vec<(String, safetensors::tensor::TensorView<'_>)> = st
        .tensors()
        .into_iter()
        .filter_map(|(n, t)| rename(&n).map(|n| (n, t)))
        .collect();
    std::fs::write(file, safetensors::serialize(kept, None).unwrap()).unwrap();
}

fn export_ok(model: &Path, components: &[Component]) -> PathBuf {
    let out = model.join("bundle");
    let req = ExportRequest {
        model: model.to_path_buf(),
        out: out.clone(),
        precision: Precision::Fp32,
        components: components.to_vec(),
        transformer: Default::default(),
        precision_profile: None,
        fp8_scales: None,
    };
    export(&req, |_| {}).unwrap_or_else(|e| panic!("export: {e}"));
    out
}

#[test]
fn transformers_4_clip_checkpoint_with_legacy_eos_id_pools_the_same_token() {
    // HunyuanVideo's real text_encoder_2 (openai/clip-vit-large-patch14, saved by transformers
    // 4) has `text_model.`-prefixed keys and the legacy `eos_token_id` 2, which pools at
    // argmax(input_ids): the same token here, since 49407 is the largest id.
    let tmp = model_copy();
    let model = tmp.path();
    rewrite_safetensors(&model.join("text_encoder_2/model.safetensors"), |n| {
        Some(format!("text_model.{n}"))
    });
    edit_json(&model.join("text_encoder_2/config.json"), |v| {
        v["eos_token_id"] = 2.into();
    });
    let err = clip_error(&export_ok(model, &[Component::TextEncoder2]));
    eprintln!("text_encoder_2 (legacy eos 2, text_model.* keys): relative max error {err:.3e}");
    assert!(err <= 1e-4, "relative max error {err:.3e}");
}

#[test]
fn missing_clip_tensor_is_named() {
    let tmp = model_copy();
    let model = tmp.path();
    rewrite_safetensors(&model.join("text_encoder_2/model.safetensors"), |n| {
        (n != "final_layer_norm.weight").then(|| n.to_owned())
    });
    let e = export_err(model, Component::TextEncoder2);
    assert!(
        e.contains("final_layer_norm.weight") && e.contains("model.safetensors"),
        "{e}"
    );
}

#[test]
fn missing_tokenizer_folder_is_named() {
    let tmp = model_copy();
    let model = tmp.path();
    std::fs::remove_dir_all(model.join("tokenizer_2")).unwrap();
    let e = export_err(model, Component::TextEncoder2);
    assert!(e.contains("tokenizer_2"), "{e}");
}

#[test]
fn checkpoint_without_a_token_embedding_is_refused() {
    let tmp = model_copy();
    let model = tmp.path();
    rewrite_safetensors(&model.join("text_encoder/model.safetensors"), |n| {
        Some(format!("encoder.{n}"))
    });
    let e = export_err(model, Component::TextEncoder);
    assert!(
        e.contains("embed_tokens.weight") && e.contains("text_encoder"),
        "{e}"
    );
}

/// Write into `<dir>/tokenizer.json` the padding and truncation state transformers saves there
/// when a pipeline ran before `save_pretrained`: pad (right, with the folder's pad token) and
/// cut to `len` tokens.
pub fn store_tokenizer_state(dir: &Path, len: usize) {
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("tokenizer_config.json")).unwrap())
            .unwrap();
    let pad = cfg["pad_token"].as_str().unwrap().to_owned();
    let file = dir.join("tokenizer.json");
    let pad_id = tokenizers::Tokenizer::from_file(&file)
        .unwrap()
        .token_to_id(&pad)
        .unwrap();
    edit_json(&file, |v| {
        v["padding"] = serde_json::json!({
            "strategy": {"Fixed": len},
            "direction": "Right",
            "pad_to_multiple_of": null,
            "pad_id": pad_id,
            "pad_type_id": 0,
            "pad_token": pad,
        });
        v["truncation"] = serde_json::json!({
            "direction": "Right",
            "max_length": len,
            "strategy": "LongestFirst",
            "stride": 0,
        });
    });
}

#[test]
fn tokenizer_state_stored_in_the_model_folder_changes_no_embedding() {
    // A diffusers folder saved after a pipeline ran: both tokenizer.json files remember
    // padding / truncation to the encoder lengths (Llama 95 + 256, CLIP 77).
    let tmp = model_copy();
    let model = tmp.path();
    store_tokenizer_state(&model.join("tokenizer"), 351);
    store_tokenizer_state(&model.join("tokenizer_2"), 77);
    let bundle = export_ok(model, &[Component::TextEncoder, Component::TextEncoder2]);
    let llama = hyvideo::text::LlamaPrompts::load(&bundle.join("tokenizer")).unwrap();
    assert_eq!(llama.crop_start(), 95);

    let clean = text_encoders_bundle();
    let config = SessionConfig::default().with_intra_threads(Some(2));
    let load = |b: &Path| {
        let m = Manifest::load(b).unwrap();
        let files = hyvideo::engine_set::ModelFiles::bundle(b, &m);
        hyvideo::pipeline::TextEncoders::load_with(&files, &config).unwrap()
    };
    let (mut stored, mut clean) = (load(&bundle), load(clean));
    let prompts = ["A cat walks on the grass, realistic style.", "A dog."];
    let a = stored.encode(&prompts, || {}).unwrap();
    let b = clean.encode(&prompts, || {}).unwrap();
    assert!(a.text.embeds().iter().all(|v| v.is_finite()));
    assert_eq!(a.text.mask(), b.text.mask());
    assert_eq!(a.text.embeds(), b.text.embeds());
    assert_eq!(a.text.pooled(), b.text.pooled());
    assert!(a.text.mask().contains(&1));
}

/// Padding and truncation stored in `tokenizer.json` (as `save_pretrained` writes them after a
/// padded call) change nothing: the runtime sets its own.
#[test]
fn padding_and_truncation_stored_in_tokenizer_json_change_nothing() {
    use hyvideo::text::{ClipPrompts, LlamaPrompts};
    let prompts = ["A cat walks on the grass, realistic style.", "a dog"];
    let stored = |folder: &str, len: usize| {
        let tmp = tempfile::tempdir().unwrap();
        for f in ["tokenizer.json", "tokenizer_config.json"] {
            std::fs::copy(tiny_model().join(folder).join(f), tmp.path().join(f)).unwrap();
        }
        store_tokenizer_state(tmp.path(), len);
        tmp
    };
    let clean = LlamaPrompts::load(&tiny_model().join("tokenizer")).unwrap();
    for len in [351, 64] {
        let dir = stored("tokenizer", len);
        let with_state = LlamaPrompts::load(dir.path()).unwrap();
        assert_eq!(with_state.crop_start(), 95, "stored state of {len} tokens");
        assert_eq!(
            with_state.encode(&prompts).unwrap(),
            clean.encode(&prompts).unwrap()
        );
    }
    let clean = ClipPrompts::load(&tiny_model().join("tokenizer_2")).unwrap();
    for len in [77, 20] {
        let dir = stored("tokenizer_2", len);
        let with_state = ClipPrompts::load(dir.path()).unwrap();
        assert_eq!(
            with_state.encode(&prompts).unwrap(),
            clean.encode(&prompts).unwrap()
        );
    }
}
