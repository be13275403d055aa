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

/// Every component's exported graph, its I/O read from the `.onnx` file, against the
/// contract's spec (fixed dims from the bundle's own configs); and an altered spec caught.
#[test]
fn every_exported_graph_matches_its_spec_and_an_altered_spec_is_caught() {
    use hyvideo_bundle::spec::{Dim, Elem, Size, SpecMismatch, Sym};
    use hyvideo_bundle::{Component, Manifest, TensorSpec, TensorType};
    use hyvideo_onnx::types::tensor_spec;

    let io = |v: &[hyvideo_onnx::proto::ValueInfoProto]| -> Vec<TensorSpec> {
        v.iter()
            .map(|x| tensor_spec(x).expect("contract type"))
            .collect()
    };
    let config = |bundle: &Path, c: Component| -> serde_json::Value {
        let f = bundle.join(c.spec().config_file());
        serde_json::from_slice(&std::fs::read(&f).unwrap()).unwrap()
    };
    let mut checked = Vec::new();
    for bundle in [vae_bundle(), transformer_bundle(), text_encoders_bundle()] {
        let manifest = Manifest::load(bundle).unwrap();
        for (&c, entry) in &manifest.components {
            let cfg = config(bundle, c);
            let n = |k: &str| cfg[k].as_u64().map(|v| v as usize);
            let sizes = |s: Size| match s {
                Size::OutChannels if c == Component::Transformer => {
                    n("out_channels").or(n("in_channels"))
                }
                Size::VideoChannels => n("out_channels"),
                Size::InnerDim => Some(n("num_attention_heads")? * n("attention_head_dim")?),
                Size::One => Some(1),
                other => n(other.name()),
            };
            let model =
                ModelProto::decode(std::fs::read(bundle.join(&entry.file)).unwrap().as_slice())
                    .unwrap();
            let g = model.graph.as_ref().unwrap();
            let (inputs, outputs) = (io(&g.input), io(&g.output));
            let spec = c.spec();
            spec.check(&inputs, &outputs, TensorType::Float32, &sizes)
                .unwrap_or_else(|e| panic!("{c}: {e}"));
            // What the manifest records is the graph's own I/O.
            assert_eq!((&entry.inputs, &entry.outputs), (&inputs, &outputs), "{c}");
            // Altered specs: a renamed input, another symbolic dim, another fixed size.
            let mut renamed = spec.clone();
            renamed.inputs[0].name = "renamed_input";
            assert!(matches!(
                renamed.check(&inputs, &outputs, TensorType::Float32, &sizes),
                Err(SpecMismatch::Undeclared { .. })
            ));
            let mut other_dim = spec.clone();
            other_dim.inputs[0].dims[0] = Dim::Sym(Sym::TextLen);
            assert!(matches!(
                other_dim.check(&inputs, &outputs, TensorType::Float32, &sizes),
                Err(SpecMismatch::Dims { .. })
            ));
            let off_by_one = |s: Size| sizes(s).map(|v| v + 1);
            assert!(
                spec.check(&inputs, &outputs, TensorType::Float32, &off_by_one)
                    .is_err(),
                "{c}: a fixed size the config does not give"
            );
            // Graph I/O in the bundle's float type (the stages' activations between each
            // other are in whatever type the profile computes there: any float).
            let has_io_float = spec
                .inputs
                .iter()
                .chain(&spec.outputs)
                .any(|s| s.elem == Elem::Float);
            assert_eq!(
                spec.check(&inputs, &outputs, TensorType::Float16, &sizes)
                    .is_err(),
                has_io_float,
                "{c}: float I/O of another type"
            );
            checked.push(c);
        }
    }
    checked.sort();
    let mut all = Component::ALL.to_vec();
    all.extend(Component::TRANSFORMER_STAGES);
    all.sort();
    assert_eq!(checked, all, "every component exported and checked");
}
