//! Structural checks of exported graphs: operator set (TensorRT-parsable standard ops, listed
//! in `configs/onnx_ops_tensorrt.txt`), opset, external weights, and the ONNX checker with
//! `full_check` (run through the `onnx` package that `scripts/setup.sh` installs).

use std::collections::BTreeSet;
use std::process::Command;

use hyvideo_onnx::proto::ModelProto;
use prost::Message;

use std::path::Path;

use crate::common::{root, text_encoders_bundle, transformer_bundle, vae_bundle};

fn allowed_ops() -> BTreeSet<String> {
    std::fs::read_to_string(root().join("configs/onnx_ops_tensorrt.txt"))
        .unwrap()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(String::from)
        .collect()
}

/// Ops in the allow-list, default domain, opset 19-20, weights external; returns the model.
pub(crate) fn check_structure(path: &Path) -> ModelProto {
    let bytes = std::fs::read(path).unwrap();
    let model = ModelProto::decode(bytes.as_slice()).unwrap();
    let graph = model.graph.as_ref().expect("graph");
    let allowed = allowed_ops();
    let used: BTreeSet<String> = graph.node.iter().map(|n| n.op_type.clone()).collect();
    let extra: Vec<_> = used.difference(&allowed).collect();
    assert!(
        extra.is_empty(),
        "ops outside configs/onnx_ops_tensorrt.txt: {extra:?}"
    );
    assert!(
        graph.node.iter().all(|n| n.domain.is_empty()),
        "non-default domain op"
    );
    let opset = model
        .opset_import
        .iter()
        .find(|o| o.domain.is_empty())
        .expect("default opset")
        .version;
    assert!((19..=20).contains(&opset), "opset {opset}");
    // Every weight lives in the external data file, none inline.
    let inline_big = graph
        .initializer
        .iter()
        .filter(|t| t.raw_data.len() > 1024)
        .count();
    assert_eq!(inline_big, 0);
    model
}

fn io_names(v: &[hyvideo_onnx::proto::ValueInfoProto]) -> Vec<String> {
    v.iter().map(|i| i.name.clone()).collect()
}

fn has_external(model: &ModelProto, name: &str) -> bool {
    model.graph.as_ref().is_some_and(|g| {
        g.initializer
            .iter()
            .any(|t| t.name == name && !t.external_data.is_empty())
    })
}

#[test]
fn vae_decoder_uses_only_allowed_standard_ops() {
    let model = check_structure(&vae_bundle().join("vae_decoder.onnx"));
    assert!(has_external(&model, "decoder.conv_in.conv.weight"));
    // Graph I/O as docs/architecture.md specifies.
    let graph = model.graph.expect("graph");
    assert_eq!(io_names(&graph.input), ["latent_sample"]);
    assert_eq!(io_names(&graph.output), ["sample"]);
}

#[test]
fn transformer_uses_only_allowed_standard_ops() {
    let model = check_structure(&transformer_bundle().join("transformer.onnx"));
    assert!(has_external(
        &model,
        "transformer_blocks.0.attn.to_qkv.weight"
    ));
    let graph = model.graph.expect("graph");
    // diffusers' forward arguments less `encoder_attention_mask`: the runtime gives the graph
    // only valid text tokens, so no attention needs a mask.
    assert_eq!(
        io_names(&graph.input),
        [
            "hidden_states",
            "timestep",
            "encoder_hidden_states",
            "pooled_projections",
            "guidance"
        ]
    );
    assert_eq!(io_names(&graph.output), ["sample"]);
    // One Softmax per attention layer (1 refiner + 2 dual + 2 single blocks).
    let softmax = graph.node.iter().filter(|n| n.op_type == "Softmax").count();
    assert_eq!(softmax, 5);
}

fn onnx_checker(model: &Path) {
    let python = root().join(".venv-tools/bin/python");
    assert!(
        python.exists(),
        "{} missing: run scripts/setup.sh",
        python.display()
    );
    let o = Command::new(python)
        .args([
            "-c",
            "import sys, onnx; onnx.checker.check_model(sys.argv[1], full_check=True); print('ok')",
        ])
        .arg(model)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "onnx checker on {}: {}",
        model.display(),
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn vae_decoder_passes_the_onnx_checker() {
    onnx_checker(&vae_bundle().join("vae_decoder.onnx"));
}

#[test]
fn transformer_passes_the_onnx_checker() {
    onnx_checker(&transformer_bundle().join("transformer.onnx"));
}

#[test]
fn text_encoder_uses_only_allowed_standard_ops() {
    let model = check_structure(&text_encoders_bundle().join("text_encoder.onnx"));
    assert!(has_external(&model, "embed_tokens.weight"));
    assert!(has_external(&model, "layers.0.self_attn.qkv_proj.weight"));
    let graph = model.graph.expect("graph");
    assert_eq!(io_names(&graph.input), ["input_ids", "attention_mask"]);
    assert_eq!(io_names(&graph.output), ["hidden_states"]);
    // hidden_states[-3] of a 3-layer model: only layer 0 is exported, without the final norm.
    let softmax = graph.node.iter().filter(|n| n.op_type == "Softmax").count();
    assert_eq!(softmax, 1);
    assert!(
        !graph
            .initializer
            .iter()
            .any(|t| t.name.starts_with("layers.1."))
    );
    assert!(!graph.initializer.iter().any(|t| t.name == "norm.weight"));
}

#[test]
fn text_encoder_2_uses_only_allowed_standard_ops() {
    let model = check_structure(&text_encoders_bundle().join("text_encoder_2.onnx"));
    assert!(has_external(&model, "embeddings.token_embedding.weight"));
    assert!(has_external(&model, "final_layer_norm.weight"));
    let graph = model.graph.expect("graph");
    assert_eq!(io_names(&graph.input), ["input_ids"]);
    assert_eq!(io_names(&graph.output), ["pooler_output"]);
    let softmax = graph.node.iter().filter(|n| n.op_type == "Softmax").count();
    assert_eq!(softmax, 2);
}

#[test]
fn text_encoder_passes_the_onnx_checker() {
    onnx_checker(&text_encoders_bundle().join("text_encoder.onnx"));
}

#[test]
fn text_encoder_2_passes_the_onnx_checker() {
    onnx_checker(&text_encoders_bundle().join("text_encoder_2.onnx"));
}
