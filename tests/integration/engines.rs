//! `hyvideo-export build` (CPU engines: ONNX Runtime's optimised graphs) and running them with
//! `--engines`: same results as the bundle, the transformer's stage graphs built too (sharing
//! its one weight file, and giving the bundle's output), and engines recorded for another
//! machine or another bundle are refused with every difference named.

use std::path::{Path, PathBuf};
use std::process::Command;

use hyvideo::engine_set::{EngineManifest, EngineSet, ModelFiles};
use hyvideo::staged_transformer::StagedTransformer;
use hyvideo::tensor::Tensor5;
use hyvideo::transformer::{StepInput, TextConditioning, Transformer, VelocityModel};
use hyvideo_bundle::AttentionKernel;
use hyvideo_bundle::{Component, Manifest};
use hyvideo_engines::{BackendKind, SessionConfig};
use hyvideo_onnx::proto::{DataLocation, ModelProto};
use prost::Message;

use crate::common::{golden, golden_i64, golden5, rel_max_err, root, transformer_bundle};
use crate::generate::{copy_dir, full_bundle, generate};

/// A copy of the full tiny bundle with CPU engines built into `<copy>/engines/<key>`.
fn bundle_with_engines() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("bundle");
    copy_dir(full_bundle(), &bundle);
    let o = Command::new(env!("CARGO_BIN_EXE_hyvideo-export"))
        .args(["build", "--backend", "cpu", "--threads", "2", "--bundle"])
        .arg(&bundle)
        .arg("--shapes")
        .arg(root().join("configs/shapes/tiny.yaml"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let engines: Vec<PathBuf> = std::fs::read_dir(bundle.join("engines"))
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.join("engine.yaml").is_file())
        .collect();
    assert_eq!(engines.len(), 1, "{engines:?}");
    let e = engines[0].clone();
    assert!(
        e.file_name().unwrap().to_string_lossy().starts_with("cpu-"),
        "{e:?}"
    );
    for c in [
        "text_encoder",
        "text_encoder_2",
        "transformer",
        "vae_decoder",
    ] {
        assert!(e.join(format!("{c}.onnx")).is_file(), "{c}");
    }
    (dir, bundle, e)
}

fn final_latents(bundle: &Path, engines: Option<&Path>, dir: &Path) -> Vec<f32> {
    std::fs::create_dir_all(dir).unwrap();
    let lat = dir.join("final.safetensors");
    let mut extra = vec!["--output-latents", lat.to_str().unwrap()];
    if let Some(e) = engines {
        extra.extend(["--engines", e.to_str().unwrap()]);
    }
    let o = generate(bundle, &dir.join("video.safetensors"), &extra);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    hyvideo::latents::read_tensor5(&lat, "latents")
        .unwrap()
        .into_data()
}

#[test]
fn cpu_engines_reproduce_the_bundle() {
    let (dir, bundle, engines) = bundle_with_engines();
    let a = final_latents(&bundle, None, &dir.path().join("a"));
    let b = final_latents(&bundle, Some(&engines), &dir.path().join("b"));
    let err = rel_max_err(&b, &a);
    eprintln!("engines vs bundle graphs: relative max error {err:.3e}");
    assert!(err <= 1e-5, "{err:.3e}");
    let (_, want) = golden("pipeline.safetensors", "final_latents");
    assert!(rel_max_err(&b, &want) <= 1e-3);
    // engine.yaml records each component's attention: the transformer's is fused, the masked
    // text encoders and VAE keep the standard form.
    let record = hyvideo::engine_set::EngineManifest::load(&engines).unwrap();
    for (component, kernel) in [
        (Component::Transformer, AttentionKernel::MultiHeadAttention),
        (Component::TextEncoder, AttentionKernel::Standard),
        (Component::TextEncoder2, AttentionKernel::Standard),
        (Component::VaeDecoder, AttentionKernel::Standard),
    ] {
        assert_eq!(
            record.components[&component].attention, kernel,
            "{component:?}"
        );
    }
    let optimised = std::fs::read(engines.join("transformer.onnx")).unwrap();
    let optimised = hyvideo_onnx::proto::ModelProto::decode(optimised.as_slice()).unwrap();
    let mha = optimised
        .graph
        .unwrap()
        .node
        .iter()
        .filter(|n| n.op_type == "MultiHeadAttention")
        .count();
    assert_eq!(mha, 5);
    // ...and a run on the engines says so in its record.
    let record = std::fs::read_to_string(dir.path().join("b/video.json")).unwrap();
    let record: serde_json::Value = serde_json::from_str(&record).unwrap();
    assert_eq!(record["transformer_attention"], "multi_head_attention");
    // Building again is a no-op; --rebuild rebuilds in place.
    let again = Command::new(env!("CARGO_BIN_EXE_hyvideo-export"))
        .args(["build", "--backend", "cpu", "--bundle"])
        .arg(&bundle)
        .arg("--shapes")
        .arg(root().join("configs/shapes/tiny.yaml"))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&again.stdout).contains("up to date"));
}

#[test]
fn engines_for_another_machine_or_bundle_are_refused() {
    let (dir, bundle, engines) = bundle_with_engines();
    // Another device in the record.
    let rec = engines.join("engine.yaml");
    let text = std::fs::read_to_string(&rec).unwrap();
    let device = text
        .lines()
        .find_map(|l| l.strip_prefix("device: "))
        .unwrap()
        .to_string();
    std::fs::write(
        &rec,
        text.replace(&format!("device: {device}"), "device: Some Other CPU"),
    )
    .unwrap();
    std::fs::create_dir_all(dir.path().join("x")).unwrap();
    let refused = |needles: &[&str]| {
        let o = generate(
            &bundle,
            &dir.path().join("x/video.mp4"),
            &["--engines", engines.to_str().unwrap()],
        );
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success());
        for n in needles {
            assert!(err.contains(n), "stderr lacks `{n}`: {err}");
        }
        assert!(!dir.path().join("x/video.mp4").exists());
    };
    refused(&["built for Some Other CPU", "--rebuild"]);
    // --rebuild builds them again for this machine (from the recorded preset) and runs.
    let o = generate(
        &bundle,
        &dir.path().join("x/rebuilt.safetensors"),
        &["--engines", engines.to_str().unwrap(), "--rebuild"],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = std::fs::read_to_string(&rec).unwrap();
    std::fs::write(&rec, text).unwrap();
    // The bundle changed since (another manifest).
    let m = bundle.join("manifest.yaml");
    let mut manifest = std::fs::read_to_string(&m).unwrap();
    manifest.push_str("# edited\n");
    std::fs::write(&m, manifest).unwrap();
    refused(&["bundle: built from manifest"]);
}

/// CPU engines of the tiny transformer bundle (the single graph and its four stages), built
/// into a temporary directory (`--out`: the shared bundle is left as it is).
fn transformer_engines() -> (tempfile::TempDir, PathBuf) {
    let out = tempfile::tempdir().unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_hyvideo-export"))
        .args(["build", "--backend", "cpu", "--threads", "2", "--bundle"])
        .arg(transformer_bundle())
        .arg("--shapes")
        .arg(root().join("configs/shapes/tiny.yaml"))
        .arg("--out")
        .arg(out.path())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let dirs: Vec<PathBuf> = std::fs::read_dir(out.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.join("engine.yaml").is_file())
        .collect();
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    let dir = dirs[0].clone();
    (out, dir)
}

/// The files of `dir` and their sizes.
fn sizes(dir: &Path) -> Vec<(String, u64)> {
    let mut v: Vec<(String, u64)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            (name, e.metadata().unwrap().len())
        })
        .collect();
    v.sort();
    v
}

/// The external data files the initializers of the graph `path` read.
fn data_locations(path: &Path) -> Vec<String> {
    let m = ModelProto::decode(std::fs::read(path).unwrap().as_slice()).unwrap();
    let mut v: Vec<String> = m
        .graph
        .unwrap()
        .initializer
        .iter()
        .filter(|t| t.data_location == DataLocation::External as i32)
        .filter_map(|t| t.external_data.iter().find(|e| e.key == "location"))
        .map(|e| e.value.clone())
        .collect();
    v.sort();
    v.dedup();
    v
}

#[test]
fn cpu_engines_of_the_transformer_stages_share_its_weights_and_give_the_bundles_output() {
    const FILE: &str = "step_cache.safetensors";
    let bundle = transformer_bundle();
    let (_out, dir) = transformer_engines();
    let manifest = Manifest::load(bundle).unwrap();
    let record = EngineManifest::load(&dir).unwrap();
    // An engine for every component of the bundle, the stages included, recorded with the hash
    // of the graph it was built from.
    assert_eq!(
        record.components.keys().collect::<Vec<_>>(),
        manifest.components.keys().collect::<Vec<_>>()
    );
    for c in Component::TRANSFORMER_STAGES {
        assert!(manifest.components.contains_key(&c), "{c}");
        assert_eq!(
            record.components[&c].source_sha256, manifest.components[&c].sha256,
            "{c}"
        );
        assert_eq!(record.components[&c].file, format!("{}.onnx", c.name()));
    }
    // The stages' attention is fused as the single graph's: the token refiner's in the embed
    // stage, the blocks' in the two block stages, none in the head; five sites in all.
    let mha = |file: &str| {
        let m = ModelProto::decode(std::fs::read(dir.join(file)).unwrap().as_slice()).unwrap();
        let g = m.graph.unwrap();
        g.node
            .iter()
            .filter(|n| n.op_type == "MultiHeadAttention")
            .count()
    };
    let per_stage: Vec<usize> = Component::TRANSFORMER_STAGES
        .iter()
        .map(|c| mha(&format!("{}.onnx", c.name())))
        .collect();
    eprintln!("MultiHeadAttention per stage: {per_stage:?}");
    assert_eq!(per_stage.iter().sum::<usize>(), mha("transformer.onnx"));
    assert_eq!(per_stage[3], 0);
    assert_eq!(
        record.components[&Component::TransformerHead].attention,
        AttentionKernel::Standard
    );
    for c in [
        Component::TransformerFirstBlock,
        Component::TransformerRestBlocks,
    ] {
        assert_eq!(
            record.components[&c].attention,
            AttentionKernel::MultiHeadAttention,
            "{c}"
        );
    }

    // One copy of the weights: the stage engines read the transformer engine's data file (ONNX
    // Runtime alone writes a data file per graph, and the four stages' together hold the
    // transformer's weights once more: 1.44× the bundle's data file on this model).
    let files = sizes(&dir);
    eprintln!("engine directory: {files:?}");
    let data: Vec<&(String, u64)> = files.iter().filter(|(n, _)| n.ends_with(".data")).collect();
    assert_eq!(data.len(), 1, "{files:?}");
    assert_eq!(data[0].0, "transformer.onnx.data");
    let bundle_data = std::fs::metadata(bundle.join("transformer.onnx.data"))
        .unwrap()
        .len();
    let total: u64 = files.iter().map(|(_, n)| n).sum();
    eprintln!(
        "weights in the engines {} B, bundle's {bundle_data} B; engine directory {total} B",
        data[0].1
    );
    assert!(data[0].1 <= bundle_data, "{} > {bundle_data}", data[0].1);
    assert!(total < bundle_data + bundle_data / 2, "{total}");
    for c in std::iter::once(Component::Transformer).chain(Component::TRANSFORMER_STAGES) {
        assert_eq!(
            data_locations(&dir.join(format!("{}.onnx", c.name()))),
            ["transformer.onnx.data"],
            "{c}"
        );
    }

    // Loading: each stage resolves to its engine, and the staged transformer on the engines
    // gives what it gives on the bundle's graphs (and what the single graph gives).
    let config = SessionConfig::default().with_intra_threads(Some(2));
    let set = EngineSet::open(&dir, bundle, &config, 0).unwrap();
    let engines = ModelFiles {
        bundle,
        manifest: &manifest,
        engines: Some(&set),
    };
    for c in Component::TRANSFORMER_STAGES {
        assert_eq!(
            engines.path(c, BackendKind::Cpu).unwrap(),
            dir.join(format!("{}.onnx", c.name()))
        );
    }
    let text = |prefix: &str| {
        let (es, e) = golden(FILE, &format!("inputs/{prefix}prompt_embeds"));
        let (ms, m) = golden_i64(FILE, &format!("inputs/{prefix}prompt_attention_mask"));
        let (ps, p) = golden(FILE, &format!("inputs/{prefix}pooled_prompt_embeds"));
        TextConditioning::new((&es, e), (&ms, m), (&ps, p)).unwrap()
    };
    // Both rows of true CFG (the prompt's and the negative prompt's, of different lengths).
    let latents = golden5(FILE, "inputs/init_latents");
    let mut shape = latents.shape();
    shape[0] = 2;
    let latents = Tensor5::from_vec(shape, [latents.data(), latents.data()].concat()).unwrap();
    let text = text("").stack(&text("negative_")).unwrap();
    let input = StepInput {
        latents: &latents,
        timestep: &[987.0, 987.0],
        text: &text,
        guidance: Some(&[6000.0, 6000.0]),
    };
    let from_bundle = StagedTransformer::load_with(&ModelFiles::bundle(bundle, &manifest), &config)
        .unwrap()
        .predict(&input)
        .unwrap();
    let from_engines = StagedTransformer::load_with(&engines, &config)
        .unwrap()
        .predict(&input)
        .unwrap();
    let single = Transformer::load_with(&engines, &config)
        .unwrap()
        .predict(&input)
        .unwrap();
    assert_eq!(from_engines.shape(), from_bundle.shape());
    assert!(from_bundle.data().iter().any(|x| *x != 0.0));
    let err = rel_max_err(from_engines.data(), from_bundle.data());
    let err_single = rel_max_err(from_engines.data(), single.data());
    eprintln!(
        "staged on engines vs on the bundle: relative max error {err:.3e}; vs the single \
         graph's engine {err_single:.3e}"
    );
    assert!(err <= 1e-5, "{err:.3e}");
    assert!(err_single <= 1e-5, "{err_single:.3e}");
}
