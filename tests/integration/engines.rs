//! `hyvideo-export build` (CPU engines: ONNX Runtime's optimised graphs) and running them with
//! `--engines`: same results as the bundle, and engines recorded for another machine or another
//! bundle are refused with every difference named.

use std::path::{Path, PathBuf};
use std::process::Command;

use hyvideo_bundle::AttentionKernel;
use hyvideo_bundle::Component;
use prost::Message;

use crate::common::{golden, rel_max_err, root};
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
