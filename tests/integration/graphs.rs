//! Structural checks of exported graphs: operator set (TensorRT-parsable standard ops, listed
//! in `configs/onnx_ops_tensorrt.txt`), opset, external weights, and the ONNX checker with
//! `full_check` (run through the `onnx` package that `scripts/setup.sh` installs).

use std::collections::BTreeSet;
use std::process::Command;

use hyvideo_exporters::onnx::ModelProto;
use prost::Message;

use crate::common::{root, vae_bundle};

fn allowed_ops() -> BTreeSet<String> {
    std::fs::read_to_string(root().join("configs/onnx_ops_tensorrt.txt"))
        .unwrap()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(String::from)
        .collect()
}

#[test]
fn vae_decoder_uses_only_allowed_standard_ops() {
    let bytes = std::fs::read(vae_bundle().join("vae_decoder.onnx")).unwrap();
    let model = ModelProto::decode(bytes.as_slice()).unwrap();
    let graph = model.graph.expect("graph");
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
    assert!(
        graph
            .initializer
            .iter()
            .any(|t| t.name == "decoder.conv_in.conv.weight" && !t.external_data.is_empty())
    );
    // Graph I/O as DESIGN.md specifies.
    let names = |v: &[hyvideo_exporters::onnx::proto::ValueInfoProto]| {
        v.iter().map(|i| i.name.clone()).collect::<Vec<_>>()
    };
    assert_eq!(names(&graph.input), ["latent_sample"]);
    assert_eq!(names(&graph.output), ["sample"]);
}

#[test]
fn vae_decoder_passes_the_onnx_checker() {
    let python = root().join(".venv-tools/bin/python");
    assert!(
        python.exists(),
        "{} missing: run scripts/setup.sh",
        python.display()
    );
    let model = vae_bundle().join("vae_decoder.onnx");
    let o = Command::new(python)
        .args([
            "-c",
            "import sys, onnx; onnx.checker.check_model(sys.argv[1], full_check=True); print('ok')",
        ])
        .arg(&model)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "onnx checker: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}
