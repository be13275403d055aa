//! Precision profiles written into the graphs (`configs/precision/*.yaml`): fp16 bundles run on
//! ONNX Runtime CPU and are measured against fp32 (relative L2 error per graph and for a whole
//! generation); bf16 graphs are checked structurally (ONNX checker, same nodes as fp16).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use hyvideo::engine_set::ModelFiles;
use hyvideo::tensor::Tensor5;
use hyvideo::transformer::{StepInput, TextConditioning, Transformer, VelocityModel};
use hyvideo::vae::VaeDecoder;
use hyvideo_bundle::{Component, Manifest, Precision};
use hyvideo_engines::{Engine, Input, SessionConfig};
use hyvideo_exporters::export::TransformerSource;
use hyvideo_onnx::proto::ModelProto;
use prost::Message;

use crate::common::{export_tiny_at, golden, golden_i64, golden5, rel_l2};

const ALL: [Component; 4] = [
    Component::TextEncoder,
    Component::TextEncoder2,
    Component::Transformer,
    Component::VaeDecoder,
];

fn bundle(precision: Precision) -> &'static Path {
    static FP16: OnceLock<PathBuf> = OnceLock::new();
    static BF16: OnceLock<PathBuf> = OnceLock::new();
    let cell = match precision {
        Precision::Fp16 => &FP16,
        _ => &BF16,
    };
    cell.get_or_init(|| export_tiny_at(&ALL, TransformerSource::default(), precision))
}

fn cfg() -> SessionConfig {
    SessionConfig::default().with_intra_threads(Some(2))
}

/// Relative L2 error of the bundle's transformer on the golden `video` case.
fn transformer_video_error(b: &Path) -> f64 {
    let m = Manifest::load(b).unwrap();
    let mut t = Transformer::load_with(&ModelFiles::bundle(b, &m), &cfg()).unwrap();
    let g = |n: &str| golden("transformer.safetensors", &format!("video.{n}"));
    let (es, e) = g("encoder_hidden_states");
    let (ms, mk) = golden_i64("transformer.safetensors", "video.encoder_attention_mask");
    let (ps, p) = g("pooled_projections");
    let text = TextConditioning::new((&es, e), (&ms, mk), (&ps, p)).unwrap();
    let out = t
        .predict(&StepInput {
            latents: &golden5("transformer.safetensors", "video.hidden_states"),
            timestep: &g("timestep").1,
            text: &text,
            guidance: Some(&g("guidance").1),
        })
        .unwrap();
    rel_l2(out.data(), &g("sample").1)
}

#[test]
fn fp16_graphs_stay_close_to_fp32() {
    let b = bundle(Precision::Fp16);
    let m = Manifest::load(b).unwrap();
    assert_eq!(m.precision, Precision::Fp16);
    // transformer, golden `video` case
    let e_t = transformer_video_error(b);
    // VAE decoder, golden `small` case
    let mut vae = VaeDecoder::load_with(&ModelFiles::bundle(b, &m), &cfg()).unwrap();
    let z = golden5("vae_decode.safetensors", "small.latents");
    let plan = vae.plan(z.shape(), &Default::default()).unwrap();
    let x: Tensor5 = vae.decode(&z, &plan, || {}).unwrap();
    let e_v = rel_l2(
        x.data(),
        golden5("vae_decode.safetensors", "small.sample").data(),
    );
    // text encoders on the tokenized golden prompts
    let (ids_s, ids) = golden_i64("text_encoders.safetensors", "llama.input_ids");
    let (_, mask) = golden_i64("text_encoders.safetensors", "llama.attention_mask");
    let mut llama = Engine::load(&b.join("text_encoder.onnx"), &cfg()).unwrap();
    let h = llama
        .run_one(
            &[
                (
                    "input_ids",
                    Input::I64 {
                        shape: &ids_s,
                        data: &ids,
                    },
                ),
                (
                    "attention_mask",
                    Input::I64 {
                        shape: &ids_s,
                        data: &mask,
                    },
                ),
            ],
            "hidden_states",
        )
        .unwrap();
    let e_l = rel_l2(
        &h.data,
        &golden("text_encoders.safetensors", "llama.hidden_states").1,
    );
    let (cs, cids) = golden_i64("text_encoders.safetensors", "clip.input_ids");
    let mut clip = Engine::load(&b.join("text_encoder_2.onnx"), &cfg()).unwrap();
    let pooled = clip
        .run_one(
            &[(
                "input_ids",
                Input::I64 {
                    shape: &cs,
                    data: &cids,
                },
            )],
            "pooler_output",
        )
        .unwrap();
    let e_c = rel_l2(
        &pooled.data,
        &golden("text_encoders.safetensors", "clip.pooler_output").1,
    );
    eprintln!(
        "fp16 vs fp32 reference, relative L2: transformer {e_t:.2e}, vae_decoder {e_v:.2e}, \
         text_encoder {e_l:.2e}, text_encoder_2 {e_c:.2e}"
    );
    // Bounds: measured values with a margin of about 4x (see the note / README).
    assert!(e_t <= 3e-3, "transformer {e_t:.2e}");
    assert!(e_v <= 3e-3, "vae_decoder {e_v:.2e}");
    assert!(e_l <= 3e-3, "text_encoder {e_l:.2e}");
    assert!(e_c <= 3e-3, "text_encoder_2 {e_c:.2e}");
    // ...and it is really fp16 (the errors are not fp32's ~1e-6).
    assert!(e_t > 1e-5 && e_v > 1e-5, "{e_t:.2e} {e_v:.2e}");
}

#[test]
fn fp16_generation_stays_close_to_fp32() {
    let dir = tempfile::tempdir().unwrap();
    let lat = dir.path().join("final.safetensors");
    let o = crate::generate::generate(
        bundle(Precision::Fp16),
        &dir.path().join("video.safetensors"),
        &["--output-latents", lat.to_str().unwrap()],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let got = hyvideo::latents::read_tensor5(&lat, "latents").unwrap();
    let (_, want) = golden("pipeline.safetensors", "final_latents");
    let e = rel_l2(got.data(), &want);
    eprintln!("fp16 generation (4 steps) vs diffusers fp32: final latents relative L2 {e:.2e}");
    assert!(e <= 1e-2, "{e:.2e}");
}

fn load_graph(path: &Path) -> ModelProto {
    ModelProto::decode(std::fs::read(path).unwrap().as_slice()).unwrap()
}

/// `(name, op_type)` of every node that is not a precision cast, with float element types.
fn node_set(m: &ModelProto) -> BTreeMap<String, String> {
    m.graph
        .as_ref()
        .unwrap()
        .node
        .iter()
        .filter(|n| !n.name.contains("/to_") && !n.name.contains("/pre_"))
        .map(|n| (n.name.clone(), n.op_type.clone()))
        .collect()
}

fn elem_types(m: &ModelProto) -> Vec<i32> {
    use hyvideo_onnx::proto::type_proto::Value;
    let g = m.graph.as_ref().unwrap();
    g.input
        .iter()
        .chain(&g.output)
        .filter_map(|v| match v.r#type.as_ref()?.value.as_ref()? {
            Value::TensorType(t) => Some(t.elem_type),
        })
        .collect()
}

#[test]
fn bf16_graphs_are_valid_and_mirror_fp16() {
    let (h, b) = (bundle(Precision::Fp16), bundle(Precision::Bf16));
    let python = crate::common::root().join(".venv-tools/bin/python");
    for c in ALL {
        let file = format!("{}.onnx", c.name());
        let (m16, mbf) = (load_graph(&h.join(&file)), load_graph(&b.join(&file)));
        assert_eq!(
            node_set(&m16),
            node_set(&mbf),
            "{c}: nodes differ beyond casts"
        );
        // float I/O is bf16 (16) in one and fp16 (10) in the other
        let (t16, tbf) = (elem_types(&m16), elem_types(&mbf));
        assert!(t16.contains(&10) && !t16.contains(&16), "{c}: {t16:?}");
        assert!(tbf.contains(&16) && !tbf.contains(&10), "{c}: {tbf:?}");
        let o = std::process::Command::new(&python)
            .args([
                "-c",
                "import sys, onnx; onnx.checker.check_model(sys.argv[1], full_check=True)",
            ])
            .arg(b.join(&file))
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{c}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    // Block weights are stored as bf16; the fp32 islands' (norms, timestep MLPs) stay fp32.
    let m = load_graph(&b.join("transformer.onnx"));
    let dtype = |name: &str| {
        m.graph
            .as_ref()
            .unwrap()
            .initializer
            .iter()
            .find(|t| t.name == name)
            .map(|t| t.data_type)
    };
    assert_eq!(dtype("transformer_blocks.0.attn.to_qkv.weight"), Some(16));
    assert_eq!(
        dtype("single_transformer_blocks.1.linear1.weight"),
        Some(16)
    );
    assert_eq!(dtype("transformer_blocks.0.attn.norm_q.weight"), Some(1));
    assert_eq!(
        dtype("time_text_embed.timestep_embedder.linear_1.weight"),
        Some(1)
    );
}

/// `hyvideo-export calibrate` on the fp32 tiny bundle, then the fp8 transformer exported with
/// its scales: the selected Linear layers carry Q/DQ on input and weight, the excluded ones none,
/// and the graph runs on ONNX Runtime CPU close to fp32.
/// `hyvideo-export calibrate` on the tiny fp32 bundle, once.
fn calibrated_scales() -> &'static Path {
    static S: OnceLock<PathBuf> = OnceLock::new();
    S.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap().keep();
        let scales = dir.join("scales.json");
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_hyvideo-export"))
            .args(["calibrate", "--bundle"])
            .arg(crate::generate::full_bundle())
            .arg("--out")
            .arg(&scales)
            .args(["--video-size", "32", "48", "--steps", "2", "--threads", "2"])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        scales
    })
}

/// The Tencent fp8 checkpoint exported at fp8 keeps its weights' bytes and official scales.
#[test]
fn fp8_export_of_the_official_fp8_file_keeps_its_weights() {
    let dir = tempfile::tempdir().unwrap();
    let b = dir.path().join("fp8");
    let tencent = crate::common::fixtures().join("tencent");
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_hyvideo-export"))
        .arg("onnx")
        .arg("--model")
        .arg(crate::common::tiny_model())
        .arg("--out")
        .arg(&b)
        .args([
            "--components",
            "transformer",
            "--precision",
            "fp8",
            "--transformer",
        ])
        .arg(tencent.join("transformer_fp8_e4m3fn.safetensors"))
        .arg("--scales")
        .arg(calibrated_scales())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let m = load_graph(&b.join("transformer.onnx"));
    let g = m.graph.as_ref().unwrap();
    let data = std::fs::read(b.join("transformer.onnx.data")).unwrap();
    let weight = |name: &str| -> Vec<u8> {
        let t = g.initializer.iter().find(|t| t.name == name).unwrap();
        assert_eq!(t.data_type, 17, "{name}");
        let field = |k: &str| {
            t.external_data
                .iter()
                .find(|e| e.key == k)
                .map(|e| e.value.parse::<usize>().unwrap())
                .unwrap()
        };
        let (off, len) = (field("offset"), field("length"));
        data[off..off + len].to_vec()
    };
    let file = std::fs::read(tencent.join("transformer_fp8_e4m3fn.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&file).unwrap();
    let map = std::fs::read(tencent.join("transformer_fp8_e4m3fn_map.safetensors")).unwrap();
    let map = safetensors::SafeTensors::deserialize(&map).unwrap();
    for (ours, theirs) in [
        (
            "transformer_blocks.0.attn.to_qkv.weight",
            "double_blocks.0.img_attn_qkv",
        ),
        (
            "single_transformer_blocks.1.linear1.weight",
            "single_blocks.1.linear1",
        ),
        (
            "transformer_blocks.1.ff.net.2.weight",
            "double_blocks.1.img_mlp.fc2",
        ),
    ] {
        let raw = st.tensor(&format!("{theirs}.weight")).unwrap();
        assert_eq!(weight(ours), raw.data(), "{ours}: fp8 bytes as stored");
        let s = map.tensor(theirs).unwrap().data().to_vec();
        let official = f32::from_le_bytes(s[..4].try_into().unwrap());
        let scale = g
            .initializer
            .iter()
            .find(|t| t.name == format!("{ours}/scale"))
            .unwrap();
        assert_eq!(scale.data_type, 10, "fp16 scale");
        let bits = u16::from_le_bytes([scale.raw_data[0], scale.raw_data[1]]);
        let got = half::f16::from_bits(bits).to_f32();
        assert!(
            ((got - official) / official).abs() < 1e-3,
            "{ours}: scale {got} vs official {official}"
        );
    }
}

#[test]
fn fp8_transformer_from_calibrated_scales() {
    use std::process::Command;
    let dir = tempfile::tempdir().unwrap();
    let scales = calibrated_scales().to_path_buf();
    let export = |extra: &[&std::ffi::OsStr], out: &Path| {
        Command::new(env!("CARGO_BIN_EXE_hyvideo-export"))
            .arg("onnx")
            .arg("--model")
            .arg(crate::common::tiny_model())
            .arg("--out")
            .arg(out)
            .args([
                "--components",
                "text_encoder,text_encoder_2,transformer,vae_decoder",
                "--precision",
                "fp8",
            ])
            .args(extra)
            .output()
            .unwrap()
    };
    // Without scales: refused, naming the missing layers and the calibrate command.
    let none = dir.path().join("none");
    let o = export(&[], &none);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("activation scale") && err.contains("calibrate"),
        "{err}"
    );
    assert!(!none.exists());
    let b = dir.path().join("fp8");
    let o = export(&["--scales".as_ref(), scales.as_os_str()], &b);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    let m = load_graph(&b.join("transformer.onnx"));
    let g = m.graph.as_ref().unwrap();
    let producer: BTreeMap<&str, &hyvideo_onnx::proto::NodeProto> = g
        .node
        .iter()
        .flat_map(|n| n.output.iter().map(move |o| (o.as_str(), n)))
        .collect();
    let init_type: BTreeMap<&str, i32> = g
        .initializer
        .iter()
        .map(|t| (t.name.as_str(), t.data_type))
        .collect();
    let from = |v: &str, op: &str| producer.get(v).is_some_and(|n| n.op_type == op);
    let quantize = hyvideo_exporters::precision::PrecisionProfile::builtin(Precision::Fp8)
        .unwrap()
        .fp8_quantize
        .unwrap();
    let (mut selected, mut excluded) = (0, 0);
    for n in g.node.iter().filter(|n| n.op_type == "Gemm") {
        if quantize.is_match(&n.name) {
            selected += 1;
            let dq_x = producer[n.input[0].as_str()];
            assert_eq!(dq_x.op_type, "DequantizeLinear", "{}", n.name);
            assert!(from(&dq_x.input[0], "QuantizeLinear"), "{}", n.name);
            let dq_w = producer[n.input[1].as_str()];
            assert_eq!(dq_w.op_type, "DequantizeLinear", "{}", n.name);
            assert_eq!(
                init_type.get(dq_w.input[0].as_str()),
                Some(&17),
                "{}: fp8 weight",
                n.name
            );
        } else {
            excluded += 1;
            assert!(
                !from(&n.input[0], "DequantizeLinear") && !from(&n.input[1], "DequantizeLinear"),
                "{} should not be quantised",
                n.name
            );
        }
    }
    // 2 dual blocks x 10 Linear + 2 single blocks x 3; embedders, refiner, norm_out, proj_out
    assert_eq!(selected, 26);
    assert!(excluded >= 10, "{excluded}");

    let err = transformer_video_error(&b);
    eprintln!("fp8 (weights + activations, calibrated) vs fp32: relative L2 {err:.3e}");
    assert!(err <= 0.15 && err > 1e-2, "{err:.3e}");

    // A whole tiny generation on the fp8 bundle (text encoders and VAE run the fp16 rules).
    let lat = dir.path().join("final.safetensors");
    let o = crate::generate::generate(
        &b,
        &dir.path().join("video.safetensors"),
        &["--output-latents", lat.to_str().unwrap()],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let got = hyvideo::latents::read_tensor5(&lat, "latents").unwrap();
    let (_, want) = golden("pipeline.safetensors", "final_latents");
    let e = rel_l2(got.data(), &want);
    eprintln!("fp8 generation (4 steps) vs diffusers fp32: final latents relative L2 {e:.2e}");
    assert!(e <= 0.1, "{e:.2e}");
}
