//! The exported VAE encoder (image-to-video's conditioning image) against diffusers' goldens
//! (`goldens/i2v_vae_encode.safetensors`: `vae.encode(sample).latent_dist.mode()`, untiled):
//! the graph on ONNX Runtime and the runtime's stage, its contract (manifest entry, spec check,
//! standard ops, ONNX checker), the fp16 / bf16 profiles, bad inputs, and CPU engines.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use hyvideo::engine_set::{EngineManifest, EngineSet, ModelFiles};
use hyvideo::tensor::Tensor5;
use hyvideo::vae_encode::VaeEncoder;
use hyvideo_bundle::spec::Size;
use hyvideo_bundle::{Component, Manifest, Precision, TensorSpec, TensorType};
use hyvideo_engines::{Engine, Input, SessionConfig};
use hyvideo_exporters::export::TransformerSource;
use hyvideo_onnx::proto::{ModelProto, ValueInfoProto};
use prost::Message;

use crate::common::{export_tiny, export_tiny_at, golden5, rel_l2, rel_max_err, root, tiny_model};

const FILE: &str = "i2v_vae_encode.safetensors";
const CASES: [&str; 3] = ["image", "batch2", "video"];

/// The tiny pipeline's VAE encoder exported once per test run, at `precision`.
fn bundle(precision: Precision) -> &'static Path {
    static FP32: OnceLock<PathBuf> = OnceLock::new();
    static FP16: OnceLock<PathBuf> = OnceLock::new();
    static BF16: OnceLock<PathBuf> = OnceLock::new();
    let cell = match precision {
        Precision::Fp16 => &FP16,
        Precision::Bf16 => &BF16,
        _ => &FP32,
    };
    let components = [Component::VaeEncoder];
    cell.get_or_init(|| export_tiny_at(&components, TransformerSource::default(), precision))
}

fn cfg() -> SessionConfig {
    SessionConfig::default().with_intra_threads(Some(2))
}

fn encoder(files: &ModelFiles<'_>) -> VaeEncoder {
    VaeEncoder::load_with(files, &cfg()).unwrap()
}

/// The bundle's encoder stage on every golden case: (case, latents, golden latents).
fn encode_cases(b: &Path) -> Vec<(&'static str, Tensor5, Tensor5)> {
    let m = Manifest::load(b).unwrap();
    let mut vae = encoder(&ModelFiles::bundle(b, &m));
    CASES
        .iter()
        .map(|&case| {
            let x = golden5(FILE, &format!("{case}.sample"));
            (
                case,
                vae.encode(&x).unwrap(),
                golden5(FILE, &format!("{case}.latent")),
            )
        })
        .collect()
}

#[test]
fn graph_on_onnx_runtime_matches_diffusers() {
    let mut engine =
        Engine::load(&bundle(Precision::Fp32).join("vae_encoder.onnx"), &cfg()).unwrap();
    for case in CASES {
        let x = golden5(FILE, &format!("{case}.sample"));
        let want = golden5(FILE, &format!("{case}.latent"));
        let shape = x.shape();
        let input = Input::F32 {
            shape: &shape,
            data: x.data(),
        };
        let out = engine.run_one(&[("sample", input)], "latent").unwrap();
        assert_eq!(out.shape, want.shape(), "{case}");
        let err = rel_max_err(&out.data, want.data());
        eprintln!("vae_encoder graph, {case} {shape:?}: relative max error {err:.3e}");
        assert!(err <= 1e-4, "{case}: relative max error {err:.3e}");
    }
}

#[test]
fn runtime_stage_matches_diffusers() {
    for (case, got, want) in encode_cases(bundle(Precision::Fp32)) {
        assert_eq!(got.shape(), want.shape(), "{case}");
        let err = rel_max_err(got.data(), want.data());
        eprintln!("VaeEncoder::encode, {case}: relative max error {err:.3e}");
        assert!(err <= 1e-4, "{case}: relative max error {err:.3e}");
    }
}

fn io(v: &[ValueInfoProto]) -> Vec<TensorSpec> {
    v.iter()
        .map(|x| hyvideo_onnx::types::tensor_spec(x).expect("contract type"))
        .collect()
}

fn load_graph(path: &Path) -> ModelProto {
    ModelProto::decode(std::fs::read(path).unwrap().as_slice()).unwrap()
}

fn onnx_checker(model: &Path) {
    let o = Command::new(root().join(".venv-tools/bin/python"))
        .args([
            "-c",
            "import sys, onnx; onnx.checker.check_model(sys.argv[1], full_check=True)",
        ])
        .arg(model)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{}: {err}", model.display());
}

#[test]
fn the_bundle_records_the_encoder_and_its_graph_keeps_the_contract() {
    let b = bundle(Precision::Fp32);
    let m = Manifest::load(b).unwrap();
    assert_eq!(
        m.components.keys().collect::<Vec<_>>(),
        [&Component::VaeEncoder]
    );
    let vae = m.vae.as_ref().expect("the VAE's settings");
    assert_eq!((vae.latent_channels, vae.scaling_factor), (4, 0.476986));
    let entry = &m.components[&Component::VaeEncoder];
    assert_eq!(entry.file, "vae_encoder.onnx");
    assert_eq!(entry.data_file.as_deref(), Some("vae_encoder.onnx.data"));
    assert!(b.join("vae/config.json").is_file());
    // The graph's own I/O is what the manifest records, and it keeps the spec: the VAE's
    // in_channels and latent_channels (the bundle's config), everything else named.
    let path = b.join(&entry.file);
    let model = crate::graphs::check_structure(&path);
    let g = model.graph.as_ref().unwrap();
    let (inputs, outputs) = (io(&g.input), io(&g.output));
    assert_eq!((&entry.inputs, &entry.outputs), (&inputs, &outputs));
    assert_eq!(inputs[0].dims, ["batch", "3", "frames", "height", "width"]);
    assert_eq!(
        outputs[0].dims,
        [
            "batch",
            "4",
            "latent_frames",
            "latent_height",
            "latent_width"
        ]
    );
    let sizes = |s: Size| match s {
        Size::VideoChannels => Some(3),
        Size::LatentChannels => Some(4),
        _ => None,
    };
    let spec = Component::VaeEncoder.spec();
    spec.check(&inputs, &outputs, TensorType::Float32, &sizes)
        .unwrap();
    let off = |s: Size| sizes(s).map(|n| n + 1);
    assert!(
        spec.check(&inputs, &outputs, TensorType::Float32, &off)
            .is_err()
    );
    // Weights under diffusers' names, external; the decoder's are not read.
    for name in ["encoder.conv_in.conv.weight", "quant_conv.weight"] {
        let t = g.initializer.iter().find(|t| t.name == name).unwrap();
        assert!(!t.external_data.is_empty(), "{name}");
    }
    assert!(!g.initializer.iter().any(|t| t.name.starts_with("decoder.")));
    onnx_checker(&path);
}

/// `--components vae_encoder` (the CLI), also beside the decoder in one request: the VAE's
/// config copied once, both graphs and the VAE settings recorded.
#[test]
fn exported_on_request_and_beside_the_decoder() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("b");
    let o = Command::new(env!("CARGO_BIN_EXE_hyvideo-export"))
        .arg("onnx")
        .arg("--model")
        .arg(tiny_model())
        .arg("--out")
        .arg(&out)
        .args(["--components", "vae_encoder"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let m = Manifest::load(&out).unwrap();
    assert_eq!(
        m.components.keys().collect::<Vec<_>>(),
        [&Component::VaeEncoder]
    );
    let both = export_tiny(
        &[Component::VaeDecoder, Component::VaeEncoder],
        TransformerSource::default(),
    );
    let m = Manifest::load(&both).unwrap();
    assert_eq!(
        m.components.keys().collect::<Vec<_>>(),
        [&Component::VaeDecoder, &Component::VaeEncoder]
    );
    assert!(m.vae.is_some() && both.join("vae/config.json").is_file());
    // The decoder's latents are the encoder's, its video the encoder's input.
    let (dec, enc) = (
        &m.components[&Component::VaeDecoder],
        &m.components[&Component::VaeEncoder],
    );
    assert_eq!(dec.inputs[0].dims, enc.outputs[0].dims);
    assert_eq!(dec.outputs[0].dims, enc.inputs[0].dims);
}

/// The fp16 profile runs on ONNX Runtime CPU close to fp32 (the bound of the other graphs'
/// fp16 test); the bf16 graph is the fp16 one but for its casts and I/O type, and valid (as
/// for the other graphs, not run: ONNX Runtime's CPU provider has no bf16 `Pad`).
#[test]
fn fp16_and_bf16_profiles() {
    let (h, bf) = (bundle(Precision::Fp16), bundle(Precision::Bf16));
    for (case, got, want) in encode_cases(h) {
        let e = rel_l2(got.data(), want.data());
        eprintln!("vae_encoder fp16 vs fp32 reference, {case}: relative L2 {e:.2e}");
        assert!(e <= 3e-3 && e > 1e-5, "{case}: {e:.2e}");
    }
    let (m16, mbf) = (
        load_graph(&h.join("vae_encoder.onnx")),
        load_graph(&bf.join("vae_encoder.onnx")),
    );
    // Nodes beyond the precision casts, and the float I/O type (10 fp16, 16 bf16).
    let nodes = |m: &ModelProto| -> Vec<(String, String)> {
        let mut v: Vec<_> = m
            .graph
            .as_ref()
            .unwrap()
            .node
            .iter()
            .filter(|n| !n.name.contains("/to_") && !n.name.contains("/pre_"))
            .map(|n| (n.name.clone(), n.op_type.clone()))
            .collect();
        v.sort();
        v
    };
    assert_eq!(nodes(&m16), nodes(&mbf));
    let io_types = |m: &ModelProto| -> Vec<TensorType> {
        let g = m.graph.as_ref().unwrap();
        io(&g.input)
            .into_iter()
            .chain(io(&g.output))
            .map(|t| t.dtype)
            .collect()
    };
    assert_eq!(io_types(&m16), [TensorType::Float16; 2]);
    assert_eq!(io_types(&mbf), [TensorType::Bfloat16; 2]);
    onnx_checker(&bf.join("vae_encoder.onnx"));
}

#[test]
fn bad_inputs_are_errors_naming_the_tensor() {
    let b = bundle(Precision::Fp32);
    let m = Manifest::load(b).unwrap();
    let mut vae = encoder(&ModelFiles::bundle(b, &m));
    let e = vae
        .encode(&Tensor5::zeros([1, 4, 1, 16, 16]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("`sample`") && e.contains("3 channels"), "{e}");
    // On the graph itself: a 4-D input, or 4 channels.
    let mut engine = Engine::load(&b.join("vae_encoder.onnx"), &cfg()).unwrap();
    for shape in [vec![1, 3, 16, 16], vec![1, 4, 1, 16, 16]] {
        let data = vec![0f32; shape.iter().product()];
        let input = Input::F32 {
            shape: &shape,
            data: &data,
        };
        let e = engine
            .run_one(&[("sample", input)], "latent")
            .unwrap_err()
            .to_string();
        assert!(e.contains("sample"), "{shape:?}: {e}");
    }
}

/// `hyvideo-export build --backend cpu` of an encoder bundle: its profile (one frame at
/// batch 1, the tiny preset's 32×48 … 256×256), the same latents as the bundle's graph, and
/// a sample outside the profile refused naming it.
#[test]
fn cpu_engine_of_the_encoder() {
    let b = bundle(Precision::Fp32);
    let out = tempfile::tempdir().unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_hyvideo-export"))
        .args(["build", "--backend", "cpu", "--threads", "2", "--bundle"])
        .arg(b)
        .arg("--shapes")
        .arg(root().join("configs/shapes/tiny.yaml"))
        .arg("--out")
        .arg(out.path())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let dir = std::fs::read_dir(out.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.join("engine.yaml").is_file())
        .unwrap();
    let record = EngineManifest::load(&dir).unwrap();
    let entry = &record.components[&Component::VaeEncoder];
    assert_eq!(entry.file, "vae_encoder.onnx");
    let p = &entry.profiles[0];
    assert_eq!(p.name, "sample");
    assert_eq!(
        (&p.min, &p.opt, &p.max),
        (
            &vec![1, 3, 1, 32, 48],
            &vec![1, 3, 1, 32, 48],
            &vec![1, 3, 1, 256, 256]
        )
    );
    let m = Manifest::load(b).unwrap();
    let set = EngineSet::open(&dir, b, &cfg(), 0).unwrap();
    let files = ModelFiles {
        bundle: b,
        manifest: &m,
        engines: Some(&set),
    };
    let x = golden5(FILE, "image.sample");
    let on_engine = encoder(&files).encode(&x).unwrap();
    let on_bundle = encoder(&ModelFiles::bundle(b, &m)).encode(&x).unwrap();
    let err = rel_max_err(on_engine.data(), on_bundle.data());
    eprintln!("vae_encoder CPU engine vs bundle graph: relative max error {err:.3e}");
    assert!(err <= 1e-5, "{err:.3e}");
    let e = encoder(&files)
        .encode(&golden5(FILE, "video.sample"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("`sample`") && e.contains("profile"), "{e}");
}
