//! The binaries end to end: `hyvideo-export onnx` then `hyvideo decode`, and every kind of bad
//! input the foundation issue lists — each a clear error naming the culprit, a non-zero exit,
//! and nothing half-written left behind.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::common::{golden, list_dir, rel_max_err, tiny_model, vae_bundle, write_tensor};

fn run(bin: &str, args: &[&dyn AsRef<std::ffi::OsStr>]) -> Output {
    let mut cmd = Command::new(bin);
    for a in args {
        cmd.arg(a);
    }
    cmd.output().expect("spawn binary")
}

fn export_bin() -> &'static str {
    env!("CARGO_BIN_EXE_hyvideo-export")
}

fn hyvideo_bin() -> &'static str {
    env!("CARGO_BIN_EXE_hyvideo")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Assert a failed run: non-zero exit, no panic, and stderr containing every `needle`.
fn assert_fails(o: &Output, needles: &[&str]) {
    let err = stderr(o);
    assert!(
        !o.status.success(),
        "expected failure, got success; stderr: {err}"
    );
    assert!(
        !err.contains("panicked"),
        "panic instead of an error: {err}"
    );
    for n in needles {
        assert!(err.contains(n), "stderr lacks `{n}`: {err}");
    }
}

/// A model folder holding a copy of the tiny pipeline's `<sub>/`, with `edit` applied to it.
fn component_model(sub: &str, edit: impl FnOnce(&Path)) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    let folder = model.join(sub);
    std::fs::create_dir_all(&folder).unwrap();
    for f in ["config.json", "diffusion_pytorch_model.safetensors"] {
        std::fs::copy(tiny_model().join(sub).join(f), folder.join(f)).unwrap();
    }
    edit(&folder);
    (dir, model)
}

fn vae_model(edit: impl FnOnce(&Path)) -> (tempfile::TempDir, PathBuf) {
    component_model("vae", edit)
}

#[test]
fn export_then_decode_to_every_format() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("bundle");
    let o = run(
        export_bin(),
        &[
            &"onnx",
            &"--model",
            &tiny_model(),
            &"--out",
            &bundle,
            &"--components",
            &"vae_decoder",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        list_dir(&bundle),
        [
            "manifest.yaml",
            "vae",
            "vae_decoder.onnx",
            "vae_decoder.onnx.data"
        ]
    );

    let (shape, data) = golden("vae_decode.safetensors", "small.latents");
    let lat = dir.path().join("latents.safetensors");
    write_tensor(&lat, "latents", &shape, &data);
    let st = dir.path().join("video.safetensors");
    let o = run(
        hyvideo_bin(),
        &[
            &"decode",
            &"--bundle",
            &bundle,
            &"--latents",
            &lat,
            &"--save-path",
            &st,
            &"--threads",
            &"2",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        stdout.contains("provider: cpu") && stdout.contains("peak RSS"),
        "{stdout}"
    );
    let bytes = std::fs::read(&st).unwrap();
    let got = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let v = got.tensor("video").unwrap();
    assert_eq!(v.shape(), [2, 3, 9, 48, 80]);
    let vals: Vec<f32> = v
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let (_, want) = golden("vae_decode.safetensors", "small.sample");
    assert!(rel_max_err(&vals, &want) <= 1e-4);

    // B = 2: one MP4 per batch item; PNG: one file per frame and batch item.
    let o = run(
        hyvideo_bin(),
        &[
            &"decode",
            &"--bundle",
            &bundle,
            &"--latents",
            &lat,
            &"--save-path",
            &dir.path().join("v.mp4"),
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let o = run(
        hyvideo_bin(),
        &[
            &"decode",
            &"--bundle",
            &bundle,
            &"--latents",
            &lat,
            &"--save-path",
            &dir.path().join("f.png"),
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let files = list_dir(dir.path());
    assert!(
        files.contains(&"v_0.mp4".to_string()) && files.contains(&"v_1.mp4".to_string()),
        "{files:?}"
    );
    assert_eq!(
        files.iter().filter(|f| f.ends_with(".png")).count(),
        2 * 9,
        "{files:?}"
    );
    assert!(!files.iter().any(|f| f.contains(".tmp")), "{files:?}");
}

#[test]
fn missing_vae_folder() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    std::fs::create_dir_all(&model).unwrap();
    std::fs::copy(
        tiny_model().join("model_index.json"),
        model.join("model_index.json"),
    )
    .unwrap();
    let out = dir.path().join("bundle");
    let o = run(
        export_bin(),
        &[
            &"onnx",
            &"--model",
            &model,
            &"--out",
            &out,
            &"--components",
            &"vae_decoder",
        ],
    );
    assert_fails(&o, &["vae", "does not exist"]);
    assert!(!out.exists(), "bundle directory left behind");
    // Without --components: no component folder at all is an error naming them.
    let o = run(export_bin(), &[&"onnx", &"--model", &model, &"--out", &out]);
    assert_fails(&o, &["none of the sub-folders", "vae/", "text_encoder_2/"]);
    assert!(!out.exists(), "bundle directory left behind");
}

/// Components of the bundle at `out`, in manifest order.
fn bundle_components(out: &Path) -> Vec<hyvideo_bundle::Component> {
    let m = hyvideo_bundle::Manifest::load(out).unwrap();
    // The model's components (the transformer's stage graphs come with the transformer).
    m.components
        .keys()
        .copied()
        .filter(|c| !c.is_transformer_stage())
        .collect()
}

#[test]
fn export_without_components_takes_every_component_the_model_has() {
    use hyvideo_bundle::Component as C;
    let dir = tempfile::tempdir().unwrap();
    // The whole tiny pipeline: all four.
    let out = dir.path().join("all");
    let o = run(
        export_bin(),
        &[&"onnx", &"--model", &tiny_model(), &"--out", &out],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("found in")
            && stderr(&o).contains("transformer, vae_decoder, text_encoder, text_encoder_2"),
        "{}",
        stderr(&o)
    );
    let mut all = C::ALL.to_vec();
    all.sort();
    assert_eq!(bundle_components(&out), all);
    // The transformer's stage graphs come with it, sharing its weight file.
    let m = hyvideo_bundle::Manifest::load(&out).unwrap();
    for c in C::TRANSFORMER_STAGES {
        assert_eq!(
            m.components[&c].data_file.as_deref(),
            Some("transformer.onnx.data"),
            "{c}"
        );
        assert!(out.join(c.graph_file()).is_file(), "{c}");
    }
    for f in ["transformer.onnx", "vae_decoder.onnx", "text_encoder.onnx"] {
        assert!(out.join(f).is_file(), "{f}");
    }
    assert!(out.join("text_encoder_2.onnx").is_file());

    // A copy without text_encoder_2/: the other three, and the skipped one named.
    let model = dir.path().join("model");
    crate::generate::copy_dir(&tiny_model(), &model);
    std::fs::remove_dir_all(model.join("text_encoder_2")).unwrap();
    let out = dir.path().join("three");
    let o = run(export_bin(), &[&"onnx", &"--model", &model, &"--out", &out]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("skipping text_encoder_2")
            && stderr(&o).contains("text_encoder_2 does not exist"),
        "{}",
        stderr(&o)
    );
    let mut three = vec![C::Transformer, C::VaeDecoder, C::TextEncoder];
    three.sort();
    assert_eq!(bundle_components(&out), three);

    // Without transformer/ too, `--transformer FILE` (and a preset for its config) counts
    // as the transformer.
    std::fs::remove_dir_all(model.join("transformer")).unwrap();
    let out = dir.path().join("single-file");
    let o = run(export_bin(), &[&"onnx", &"--model", &model, &"--out", &out]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("skipping transformer"),
        "{}",
        stderr(&o)
    );
    let mut two = vec![C::VaeDecoder, C::TextEncoder];
    two.sort();
    assert_eq!(bundle_components(&out), two);
    let tiny = std::fs::read_to_string(tiny_model().join("transformer/config.json")).unwrap();
    let preset = dir.path().join("tiny.yaml");
    std::fs::write(&preset, format!("name: tiny\ntransformer: {tiny}\n")).unwrap();
    let file = crate::common::fixtures().join("tencent/transformer.safetensors");
    let out = dir.path().join("single-file-2");
    let o = run(
        export_bin(),
        &[
            &"onnx",
            &"--model",
            &model,
            &"--out",
            &out,
            &"--transformer",
            &file,
            &"--config",
            &preset,
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(bundle_components(&out), three);
}

#[test]
fn truncated_safetensors() {
    let (dir, model) = vae_model(|vae| {
        let f = vae.join("diffusion_pytorch_model.safetensors");
        let len = std::fs::metadata(&f).unwrap().len();
        let file = std::fs::OpenOptions::new().write(true).open(&f).unwrap();
        file.set_len(len - 1000).unwrap();
    });
    let out = dir.path().join("bundle");
    let o = run(export_bin(), &[&"onnx", &"--model", &model, &"--out", &out]);
    assert_fails(&o, &["diffusion_pytorch_model.safetensors", "corrupt"]);
    assert!(!out.exists(), "bundle directory left behind");
}

#[test]
fn tensor_of_the_wrong_shape() {
    let name = "decoder.conv_in.conv.weight";
    let (dir, model) = vae_model(|vae| {
        let f = vae.join("diffusion_pytorch_model.safetensors");
        let bytes = std::fs::read(&f).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let mut tensors: Vec<(String, safetensors::tensor::TensorView<'_>)> = Vec::new();
        for (n, v) in st.tensors() {
            if n == name {
                // [16, 4, 3, 3, 3] -> [16, 4, 3, 9]: same bytes, another shape.
                let mut shape = v.shape().to_vec();
                let last = shape.pop().unwrap();
                *shape.last_mut().unwrap() *= last;
                let w = safetensors::tensor::TensorView::new(v.dtype(), shape, v.data()).unwrap();
                tensors.push((n, w));
            } else {
                tensors.push((n, v));
            }
        }
        let out = safetensors::serialize(tensors, None).unwrap();
        std::fs::write(&f, out).unwrap();
    });
    let out = dir.path().join("bundle");
    let o = run(export_bin(), &[&"onnx", &"--model", &model, &"--out", &out]);
    assert_fails(&o, &[name, "[16, 4, 3, 9]", "expected [16, 4, 3, 3, 3]"]);
    assert!(!out.exists(), "bundle directory left behind");
}

#[test]
fn unwritable_export_destination() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let out = file.join("bundle");
    let o = run(
        export_bin(),
        &[&"onnx", &"--model", &tiny_model(), &"--out", &out],
    );
    assert_fails(&o, &["a-file"]);
    assert_eq!(std::fs::read(&file).unwrap(), b"x");
}

fn decode_with(dir: &Path, latents_shape: &[usize], tensor: &str, save: &Path) -> Output {
    let lat = dir.join("bad-latents.safetensors");
    let n = latents_shape.iter().product();
    write_tensor(&lat, tensor, latents_shape, &vec![0.5; n]);
    run(
        hyvideo_bin(),
        &[
            &"decode",
            &"--bundle",
            &vae_bundle(),
            &"--latents",
            &lat,
            &"--save-path",
            &save,
        ],
    )
}

#[test]
fn latents_with_wrong_channels_rank_or_name() {
    let dir = tempfile::tempdir().unwrap();
    let save = dir.path().join("out.mp4");
    let o = decode_with(dir.path(), &[1, 3, 2, 4, 4], "latents", &save);
    assert_fails(
        &o,
        &[
            "bad-latents.safetensors",
            "`latents`",
            "3 channels",
            "expects 4",
        ],
    );
    let o = decode_with(dir.path(), &[1, 4, 4, 4], "latents", &save);
    assert_fails(&o, &["bad-latents.safetensors", "rank 5", "[1, 4, 4, 4]"]);
    let o = decode_with(dir.path(), &[1, 4, 2, 4, 4], "noise", &save);
    assert_fails(
        &o,
        &["bad-latents.safetensors", "no tensor `latents`", "noise"],
    );
    assert_eq!(
        list_dir(dir.path()),
        ["bad-latents.safetensors"],
        "partial output left behind"
    );
}

#[test]
fn unwritable_save_path() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    for save in [
        file.join("out.mp4"),
        dir.path().join("missing-dir/out.png"),
        dir.path().join("out.gif"),
    ] {
        let o = decode_with(dir.path(), &[1, 4, 1, 2, 2], "latents", &save);
        let shown = save.display().to_string();
        assert_fails(&o, &[&shown]);
    }
    assert_eq!(list_dir(dir.path()), ["a-file", "bad-latents.safetensors"]);
}

#[test]
fn not_a_bundle() {
    let dir = tempfile::tempdir().unwrap();
    let save = dir.path().join("out.mp4");
    let lat = dir.path().join("l.safetensors");
    write_tensor(&lat, "latents", &[1, 4, 1, 2, 2], &[0.0; 16]);
    let o = run(
        hyvideo_bin(),
        &[
            &"decode",
            &"--bundle",
            &dir.path(),
            &"--latents",
            &lat,
            &"--save-path",
            &save,
        ],
    );
    assert_fails(&o, &["not a hyvideo bundle", "hyvideo-export onnx"]);
}

// ---- transformer export: bad checkpoints and configs ----------------------------------------

/// Rewrite the safetensors file `f`: `edit(name, shape)` returns the new shape, or `None` to drop
/// the tensor (same bytes either way).
fn rewrite_tensors(f: &Path, mut edit: impl FnMut(&str, &[usize]) -> Option<Vec<usize>>) {
    let bytes = std::fs::read(f).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<(String, safetensors::tensor::TensorView<'_>)> = Vec::new();
    for (n, v) in st.tensors() {
        if let Some(shape) = edit(&n, v.shape()) {
            let w = safetensors::tensor::TensorView::new(v.dtype(), shape, v.data()).unwrap();
            tensors.push((n, w));
        }
    }
    let out = safetensors::serialize(tensors, None).unwrap();
    std::fs::write(f, out).unwrap();
}

fn transformer_model(edit: impl FnOnce(&Path)) -> (tempfile::TempDir, PathBuf) {
    component_model("transformer", edit)
}

fn export_transformer(model: &Path, out: &Path, extra: &[&dyn AsRef<std::ffi::OsStr>]) -> Output {
    let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![
        &"onnx",
        &"--model",
        &model,
        &"--out",
        &out,
        &"--components",
        &"transformer",
    ];
    args.extend_from_slice(extra);
    run(export_bin(), &args)
}

#[test]
fn transformer_missing_tensor_is_named() {
    let name = "transformer_blocks.1.attn.to_k.weight";
    let (dir, model) = transformer_model(|t| {
        rewrite_tensors(&t.join("diffusion_pytorch_model.safetensors"), |n, s| {
            (n != name).then(|| s.to_vec())
        })
    });
    let out = dir.path().join("bundle");
    let o = export_transformer(&model, &out, &[]);
    assert_fails(&o, &[name, "diffusion_pytorch_model.safetensors"]);
    assert!(!out.exists(), "bundle directory left behind");
}

#[test]
fn transformer_tensor_of_the_wrong_shape() {
    let name = "single_transformer_blocks.0.proj_out.weight";
    let (dir, model) = transformer_model(|t| {
        rewrite_tensors(&t.join("diffusion_pytorch_model.safetensors"), |n, s| {
            Some(if n == name {
                s.iter().rev().copied().collect()
            } else {
                s.to_vec()
            })
        })
    });
    let out = dir.path().join("bundle");
    let o = export_transformer(&model, &out, &[]);
    assert_fails(&o, &[name, "[160, 32]", "expected [32, 160]"]);
    assert!(!out.exists(), "bundle directory left behind");
}

#[test]
fn transformer_unsupported_config_value() {
    let (dir, model) = transformer_model(|t| {
        let f = t.join("config.json");
        let text = std::fs::read_to_string(&f).unwrap();
        let text = text.replace("\"patch_size_t\": 1", "\"patch_size_t\": 2");
        std::fs::write(&f, text).unwrap();
    });
    let out = dir.path().join("bundle");
    let o = export_transformer(&model, &out, &[]);
    assert_fails(&o, &["patch_size_t", "config.json", "only 1 is supported"]);
    assert!(!out.exists(), "bundle directory left behind");
}

#[test]
fn checkpoint_of_neither_layout_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("other.safetensors");
    write_tensor(&file, "model.layers.0.weight", &[2, 2], &[0.0; 4]);
    let out = dir.path().join("bundle");
    let o = export_transformer(&tiny_model(), &out, &[&"--transformer", &file]);
    assert_fails(
        &o,
        &[
            "other.safetensors",
            "neither a diffusers-layout",
            "Tencent-layout",
            "model.layers.0.weight",
        ],
    );
    assert!(!out.exists(), "bundle directory left behind");
}

#[test]
fn tencent_file_missing_tensor_and_fp8_without_map() {
    let dir = tempfile::tempdir().unwrap();
    let tencent = crate::common::fixtures().join("tencent");
    let file = dir.path().join("t.safetensors");
    std::fs::copy(tencent.join("transformer.safetensors"), &file).unwrap();
    let name = "double_blocks.0.img_attn_qkv.weight";
    rewrite_tensors(&file, |n, s| (n != name).then(|| s.to_vec()));
    let out = dir.path().join("bundle");
    let o = export_transformer(&tiny_model(), &out, &[&"--transformer", &file]);
    assert_fails(&o, &[name, "t.safetensors"]);
    assert!(!out.exists(), "bundle directory left behind");
    // fp8 weights with no `<stem>_map.safetensors` beside them
    let fp8 = dir.path().join("fp8.safetensors");
    std::fs::copy(tencent.join("transformer_fp8_e4m3fn.safetensors"), &fp8).unwrap();
    let o = export_transformer(&tiny_model(), &out, &[&"--transformer", &fp8]);
    assert_fails(&o, &["fp8.safetensors", "float8_e4m3fn", "--fp8-scale-map"]);
    assert!(!out.exists(), "bundle directory left behind");
    // ...and with the map given explicitly it exports.
    let o = export_transformer(
        &tiny_model(),
        &out,
        &[
            &"--transformer",
            &fp8,
            &"--fp8-scale-map",
            &tencent.join("transformer_fp8_e4m3fn_map.safetensors"),
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(out.join("transformer.onnx").is_file());
}

#[test]
fn single_file_with_a_model_preset_and_no_config_json() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    std::fs::create_dir_all(&model).unwrap();
    let file = crate::common::fixtures().join("tencent/transformer.safetensors");
    let out = dir.path().join("bundle");
    // Without a config at hand: a clear error pointing at --config.
    let o = export_transformer(&model, &out, &[&"--transformer", &file]);
    assert_fails(&o, &["config.json", "--config"]);
    // The 720p preset parses, and its sizes are checked against the (tiny) weights.
    let preset = crate::common::root().join("configs/models/hunyuan-video-t2v-720p.yaml");
    let o = export_transformer(
        &model,
        &out,
        &[&"--transformer", &file, &"--config", &preset],
    );
    assert_fails(&o, &["img_in.proj.weight", "expected [3072, 16, 1, 2, 2]"]);
    assert!(!out.exists(), "bundle directory left behind");
    // A preset describing the tiny model exports.
    let tiny = std::fs::read_to_string(tiny_model().join("transformer/config.json")).unwrap();
    let preset = dir.path().join("tiny.yaml");
    std::fs::write(&preset, format!("name: tiny\ntransformer: {tiny}\n")).unwrap();
    let o = export_transformer(
        &model,
        &out,
        &[&"--transformer", &file, &"--config", &preset],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let cfg = std::fs::read_to_string(out.join("transformer/config.json")).unwrap();
    assert!(cfg.contains("\"num_single_layers\": 2"), "{cfg}");
}

// ---- hyvideo denoise ---------------------------------------------------------------------------

/// The pipeline golden's prompt embeddings under the names `hyvideo denoise` reads.
fn write_prompt_embeds(path: &Path) {
    use crate::common::golden_i64;
    let f = "pipeline.safetensors";
    let mut floats = vec![];
    let mut ints = vec![];
    for (src, dst) in [
        ("prompt_embeds", "prompt_embeds"),
        ("pooled_prompt_embeds", "pooled_prompt_embeds"),
        ("cfg.negative_prompt_embeds", "negative_prompt_embeds"),
        (
            "cfg.negative_pooled_prompt_embeds",
            "negative_pooled_prompt_embeds",
        ),
    ] {
        let (s, d) = golden(f, src);
        floats.push((
            dst,
            s,
            d.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>(),
        ));
    }
    for (src, dst) in [
        ("prompt_attention_mask", "prompt_attention_mask"),
        (
            "cfg.negative_prompt_attention_mask",
            "negative_prompt_attention_mask",
        ),
    ] {
        let (s, d) = golden_i64(f, src);
        ints.push((
            dst,
            s,
            d.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>(),
        ));
    }
    let mut views = vec![];
    for (n, s, b) in &floats {
        views.push((
            *n,
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b).unwrap(),
        ));
    }
    for (n, s, b) in &ints {
        views.push((
            *n,
            safetensors::tensor::TensorView::new(safetensors::Dtype::I64, s.clone(), b).unwrap(),
        ));
    }
    std::fs::write(path, safetensors::serialize(views, None).unwrap()).unwrap();
}

/// `hyvideo denoise` on the shared transformer bundle with 4 steps (default direction,
/// t = 1 -> 0).
fn run_denoise(
    embeds: &Path,
    init: &Path,
    out: &Path,
    extra: &[&dyn AsRef<std::ffi::OsStr>],
) -> Output {
    let bundle = crate::common::transformer_bundle();
    let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![
        &"denoise",
        &"--bundle",
        &bundle,
        &"--prompt-embeds",
        &embeds,
        &"--latents",
        &init,
        &"--output-latents",
        &out,
        &"--infer-steps",
        &"4",
    ];
    args.extend_from_slice(extra);
    run(hyvideo_bin(), &args)
}

/// The pipeline golden's prompt embeddings and initial latents as `hyvideo denoise` inputs in
/// `dir`: (embeds file, latents file).
fn denoise_inputs(dir: &Path) -> (PathBuf, PathBuf) {
    let embeds = dir.join("embeds.safetensors");
    write_prompt_embeds(&embeds);
    let (shape, init) = golden("pipeline.safetensors", "init_latents");
    let init_path = dir.join("init.safetensors");
    write_tensor(&init_path, "latents", &shape, &init);
    (embeds, init_path)
}

#[test]
fn denoise_command_reproduces_the_pipeline_and_stops_on_nan() {
    let dir = tempfile::tempdir().unwrap();
    let (embeds, init_path) = denoise_inputs(dir.path());
    let out = dir.path().join("final.safetensors");
    let o = run_denoise(
        &embeds,
        &init_path,
        &out,
        &[&"--cfg-scale", &"4.0", &"--threads", &"2"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let got = hyvideo::latents::read_tensor5(&out, "latents").unwrap();
    let (_, want) = golden("pipeline.safetensors", "cfg.final_latents");
    let err = rel_max_err(got.data(), &want);
    assert!(err <= 1e-3, "final latents vs diffusers: {err:.3e}");
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("provider: cpu"), "{stdout}");

    // NaN in the initial latents: stopped at step 1, nothing written.
    let (shape, mut bad) = golden("pipeline.safetensors", "init_latents");
    bad[5] = f32::NAN;
    write_tensor(&init_path, "latents", &shape, &bad);
    let out2 = dir.path().join("never.safetensors");
    let o = run_denoise(&embeds, &init_path, &out2, &[]);
    assert_fails(&o, &["step 1 of 4", "NaN"]);
    assert!(!out2.exists());
    // A prompt-embeddings file without the mask names the tensor and the file.
    let plain = dir.path().join("plain.safetensors");
    let (s, d) = golden("pipeline.safetensors", "prompt_embeds");
    write_tensor(&plain, "prompt_embeds", &s, &d);
    let o = run_denoise(&plain, &init_path, &out2, &[]);
    assert_fails(&o, &["plain.safetensors", "prompt_attention_mask"]);
}

#[test]
fn a_bad_precision_rule_is_named_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let profile = dir.path().join("mine.yaml");
    let out = dir.path().join("bundle");
    let export_fp16 = || {
        run(
            export_bin(),
            &[
                &"onnx",
                &"--model",
                &tiny_model(),
                &"--out",
                &out,
                &"--components",
                &"vae_decoder",
                &"--precision",
                &"fp16",
                &"--precision-profile",
                &profile,
            ],
        )
    };
    std::fs::write(
        &profile,
        "name: mine\ncompute: fp16\nio: fp16\nrules:\n  - match: 'norm'\n    dtype: fp32\n  - match: '(unclosed'\n    dtype: fp32\n",
    )
    .unwrap();
    assert_fails(
        &export_fp16(),
        &["mine.yaml", "rules[1]", "(unclosed", "bad regex"],
    );
    assert!(!out.exists(), "bundle directory left behind");
    // A valid custom profile (everything fp16, no islands, fp32 I/O) is used as given.
    std::fs::write(&profile, "name: mine\ncompute: fp16\nio: fp32\nrules: []\n").unwrap();
    let o = export_fp16();
    assert!(o.status.success(), "{}", stderr(&o));
    let m = hyvideo_bundle::Manifest::load(&out).unwrap();
    let e = &m.components[&hyvideo_bundle::Component::VaeDecoder];
    assert_eq!(
        e.inputs[0].dtype,
        hyvideo_bundle::TensorType::Float32,
        "io: fp32 in the custom profile"
    );
}

#[test]
fn flow_direction_defaults_to_one_to_zero_and_forward_is_explicit() {
    use hyvideo::denoise::{DenoiseSettings, denoise};
    use hyvideo::scheduler::FlowDirection;
    let dir = tempfile::tempdir().unwrap();
    let (embeds, init_path) = denoise_inputs(dir.path());
    let latents = |name: &str, extra: &[&dyn AsRef<std::ffi::OsStr>]| {
        let out = dir.path().join(name);
        let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![&"--threads", &"2"];
        args.extend_from_slice(extra);
        let o = run_denoise(&embeds, &init_path, &out, &args);
        assert!(o.status.success(), "{}", stderr(&o));
        assert!(!stderr(&o).contains("note:"), "{}", stderr(&o));
        hyvideo::latents::read_tensor5(&out, "latents").unwrap()
    };
    // No flag: t = 1 -> 0, diffusers' pipeline (what --flow-reverse ran before).
    let default = latents("default.safetensors", &[]);
    let (_, want) = golden("pipeline.safetensors", "final_latents");
    let err = rel_max_err(default.data(), &want);
    assert!(err <= 1e-3, "default direction vs diffusers: {err:.3e}");
    // --flow-reverse is still accepted and changes nothing; so is the explicit name.
    let reverse = latents("reverse.safetensors", &[&"--flow-reverse"]);
    assert_eq!(reverse.data(), default.data());
    let named = latents("named.safetensors", &[&"--flow-direction", &"reverse"]);
    assert_eq!(named.data(), default.data());
    // --flow-direction forward: t = 0 -> 1, the old default without the flag.
    let forward = latents("forward.safetensors", &[&"--flow-direction", &"forward"]);
    let bundle = crate::common::transformer_bundle();
    let manifest = hyvideo_bundle::Manifest::load(bundle).unwrap();
    let config = hyvideo_engines::SessionConfig::default().with_intra_threads(Some(2));
    let mut model = hyvideo::transformer::Transformer::load_with(
        &hyvideo::engine_set::ModelFiles::bundle(bundle, &manifest),
        &config,
    )
    .unwrap();
    let file = hyvideo::latents::TensorFile::open(&embeds).unwrap();
    let (es, e) = file.f32("prompt_embeds").unwrap();
    let (ms, m) = file.i64("prompt_attention_mask").unwrap();
    let (ps, p) = file.f32("pooled_prompt_embeds").unwrap();
    let text = hyvideo::transformer::TextConditioning::new((&es, e), (&ms, m), (&ps, p)).unwrap();
    let settings = DenoiseSettings {
        steps: 4,
        shift: 7.0,
        direction: FlowDirection::Forward,
        embedded_guidance: model.takes_guidance().then_some(6.0),
        true_cfg: None,
    };
    let init5 = hyvideo::latents::read_tensor5(&init_path, "latents").unwrap();
    let old_default = denoise(&mut model, init5, &text, None, &settings, |_, _| {}).unwrap();
    let err = rel_max_err(forward.data(), old_default.data());
    assert!(err <= 1e-6, "forward vs the 0 -> 1 loop: {err:.3e}");
    assert!(rel_max_err(forward.data(), default.data()) > 0.1);
    // The two names of a direction are alternatives.
    let o = run_denoise(
        &embeds,
        &init_path,
        &dir.path().join("never.safetensors"),
        &[&"--flow-reverse", &"--flow-direction", &"forward"],
    );
    assert_fails(&o, &["--flow-reverse", "--flow-direction"]);
    // --help says what --flow-reverse does now.
    let o = run(hyvideo_bin(), &[&"denoise", &"--help"]);
    let help = String::from_utf8_lossy(&o.stdout);
    assert!(
        help.contains("--flow-direction") && help.contains("changes nothing"),
        "{help}"
    );
}

/// `build` and `calibrate` take the session flags only: run-time flags they would ignore
/// (`--engines`, per-component providers) are refused rather than silently dropped.
#[test]
fn export_side_commands_refuse_run_time_flags() {
    let b = tiny_model();
    for (cmd, flag) in [
        ("build", "--engines"),
        ("build", "--transformer-backend"),
        ("calibrate", "--engines"),
        ("calibrate", "--vae-backend"),
    ] {
        let o = run(
            export_bin(),
            &[&cmd, &"--bundle", &b, &"--out", &"x", &flag, &"cpu"],
        );
        assert_fails(&o, &[&format!("unexpected argument '{flag}'")]);
    }
}
