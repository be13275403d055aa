//! Step caching on the staged transformer: the four stage graphs against the single graph, the
//! cached loops against the goldens of `goldens/step_cache.safetensors` (First-Block Cache from
//! diffusers' own `apply_first_block_cache` hook, TeaCache from the fixture script's line-by-line
//! `TeaCache4HunyuanVideo` reference, both on the tiny pipeline, 12 steps): the same computed
//! steps per stream and the final latents within 1e-4; and threshold 0 bit-identical to no cache.

use std::sync::OnceLock;

use hyvideo::denoise::{DenoiseSettings, TrueCfg, denoise};
use hyvideo::engine_set::ModelFiles;
use hyvideo::scheduler::FlowDirection;
use hyvideo::staged_transformer::StagedTransformer;
use hyvideo::step_cache::{StepCache, StepCacheMethod, StepCacheRecord, Stream};
use hyvideo::tensor::Tensor5;
use hyvideo::transformer::{StepInput, TextConditioning, Transformer, VelocityModel};
use hyvideo_bundle::Manifest;
use hyvideo_engines::SessionConfig;
use serde_json::Value;

use crate::common::{
    TINY_VIDEO, golden, golden_i64, golden5, goldens, rel_max_err, transformer_bundle,
};

const FILE: &str = "step_cache.safetensors";

fn config() -> SessionConfig {
    SessionConfig::default().with_intra_threads(Some(2))
}

fn staged() -> StagedTransformer {
    let bundle = transformer_bundle();
    let manifest = Manifest::load(bundle).unwrap();
    StagedTransformer::load_with(&ModelFiles::bundle(bundle, &manifest), &config()).unwrap()
}

fn single() -> Transformer {
    let bundle = transformer_bundle();
    let manifest = Manifest::load(bundle).unwrap();
    Transformer::load_with(&ModelFiles::bundle(bundle, &manifest), &config()).unwrap()
}

fn record() -> &'static Value {
    static R: OnceLock<Value> = OnceLock::new();
    R.get_or_init(|| {
        serde_json::from_slice(&std::fs::read(goldens("step_cache.json")).unwrap()).unwrap()
    })
}

fn text(prefix: &str) -> TextConditioning {
    let (es, e) = golden(FILE, &format!("inputs/{prefix}prompt_embeds"));
    let (ms, m) = golden_i64(FILE, &format!("inputs/{prefix}prompt_attention_mask"));
    let (ps, p) = golden(FILE, &format!("inputs/{prefix}pooled_prompt_embeds"));
    TextConditioning::new((&es, e), (&ms, m), (&ps, p)).unwrap()
}

/// The golden run's loop on `model`: 12 steps, shift 7, guidance 6, true CFG 4 with `cfg`.
fn run(model: &mut dyn VelocityModel, cfg: bool) -> Tensor5 {
    let steps = record()["settings"]["num_inference_steps"]
        .as_u64()
        .unwrap() as usize;
    let settings = DenoiseSettings {
        steps,
        shift: 7.0,
        direction: FlowDirection::Reverse,
        embedded_guidance: Some(6.0),
        true_cfg: cfg.then_some(TrueCfg { scale: 4.0 }),
    };
    let negative = text("negative_");
    denoise(
        model,
        golden5(FILE, "inputs/init_latents"),
        &text(""),
        Some(&negative),
        &settings,
        |_, _| {},
    )
    .unwrap()
}

fn staged_run(
    model: &mut StagedTransformer,
    cache: Option<StepCache>,
    cfg: bool,
) -> (Tensor5, Option<StepCacheRecord>) {
    let steps = record()["settings"]["num_inference_steps"]
        .as_u64()
        .unwrap() as usize;
    model.begin(cache, steps, cfg);
    let out = run(model, cfg);
    (out, model.finish())
}

fn computed(v: &Value) -> Vec<usize> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as usize)
        .collect()
}

#[test]
fn the_stage_graphs_give_the_single_graphs_output() {
    let (mut one, mut four) = (single(), staged());
    for cfg in [false, true] {
        let latents = golden5(FILE, "inputs/init_latents");
        let t = text("");
        let (input_latents, text) = if cfg {
            let mut shape = latents.shape();
            shape[0] = 2;
            let data = [latents.data(), latents.data()].concat();
            (
                Tensor5::from_vec(shape, data).unwrap(),
                t.stack(&text("negative_")).unwrap(),
            )
        } else {
            (latents, t)
        };
        let b = input_latents.shape()[0];
        let input = StepInput {
            latents: &input_latents,
            timestep: &vec![987.0; b],
            text: &text,
            guidance: Some(&vec![6000.0; b]),
        };
        let a = one.predict(&input).unwrap();
        let s = four.predict(&input).unwrap();
        assert_eq!(a.shape(), s.shape());
        let err = rel_max_err(s.data(), a.data());
        eprintln!("stages vs single graph (batch {b}): relative max error {err:.3e}");
        assert!(err <= 1e-6, "batch {b}: {err:.3e}");
        assert!(a.data().iter().any(|x| *x != 0.0));
    }
}

#[test]
fn cached_loops_match_the_reference_hooks() {
    let mut model = staged();
    // Without a cache the staged loop is the reference pipeline's.
    for (name, cfg) in [("no_cache", false), ("no_cache_cfg", true)] {
        let (out, rec) = staged_run(&mut model, None, cfg);
        assert!(rec.is_none());
        let want = golden5(FILE, &format!("{name}/final_latents"));
        let err = rel_max_err(out.data(), want.data());
        eprintln!("{name}: relative max error {err:.3e}");
        assert!(err <= 1e-4, "{name}: {err:.3e}");
    }
    let runs = record()["runs"].as_object().unwrap();
    assert_eq!(runs.len(), 6);
    for (name, run) in runs {
        let method: StepCacheMethod = run["method"].as_str().unwrap().parse().unwrap();
        let cfg = name.contains("_cfg/");
        let cache = StepCache {
            threshold: run["threshold"].as_f64().unwrap(),
            ..StepCache::new(method)
        };
        let (out, rec) = staged_run(&mut model, Some(cache), cfg);
        let rec = rec.unwrap();
        let want_steps = &run["computed_steps"];
        if cfg {
            assert_eq!(
                rec.computed(Stream::Cond),
                computed(&want_steps["cond"]),
                "{name}"
            );
            assert_eq!(
                rec.computed(Stream::Uncond),
                computed(&want_steps["uncond"]),
                "{name}"
            );
        } else {
            assert_eq!(rec.computed(Stream::Cond), computed(want_steps), "{name}");
        }
        assert_eq!(rec.to_json()["computed_steps"], *want_steps, "{name}");
        let want = golden5(FILE, &format!("{name}/final_latents"));
        let err = rel_max_err(out.data(), want.data());
        eprintln!("{name}: computed {want_steps}, relative max error {err:.3e}");
        assert!(err <= 1e-4, "{name}: {err:.3e}");
        // ...and the cache changed the result (the test could fail).
        let uncached = golden5(
            FILE,
            if cfg {
                "no_cache_cfg/final_latents"
            } else {
                "no_cache/final_latents"
            },
        );
        assert!(rel_max_err(out.data(), uncached.data()) > 1e-3, "{name}");
    }
}

#[test]
fn threshold_zero_is_bit_identical_to_no_cache() {
    let mut model = staged();
    for cfg in [false, true] {
        let (plain, _) = staged_run(&mut model, None, cfg);
        for method in [StepCacheMethod::TeaCache, StepCacheMethod::FbCache] {
            let cache = StepCache {
                threshold: 0.0,
                ..StepCache::new(method)
            };
            let (out, rec) = staged_run(&mut model, Some(cache), cfg);
            assert_eq!(out.data(), plain.data(), "{method} cfg {cfg}");
            let rec = rec.unwrap();
            for &s in rec.streams() {
                assert_eq!(rec.computed(s), (0..12).collect::<Vec<_>>(), "{method}");
            }
        }
    }
}

/// `hyvideo generate --step-cache …`: the run record says what ran (null without a cache), and
/// bad values are refused naming their flag.
#[test]
fn generate_records_what_the_step_cache_computed() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = crate::generate::full_bundle();
    let gen_cmd = |extra: &[&str], out: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_hyvideo"))
            .arg("generate")
            .arg("--bundle")
            .arg(bundle)
            .args(["--prompt", "A cat walks on the grass, realistic style."])
            .args(["--video-size", "32", "48", "--video-length", "9"])
            .args(["--infer-steps", "12", "--seed", "42", "--threads", "2"])
            .arg("--save-path")
            .arg(dir.path().join(out))
            .args(extra)
            .output()
            .unwrap()
    };
    let run_record = |out: &str| -> Value {
        let p = dir.path().join(out).with_extension("json");
        serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
    };
    let o = gen_cmd(&[], "plain.mp4");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(run_record("plain.mp4")["step_cache"], Value::Null);
    let o = gen_cmd(
        &["--step-cache", "teacache", "--step-cache-threshold", "0.52"],
        "tea.mp4",
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let sc = &run_record("tea.mp4")["step_cache"];
    assert_eq!(sc["method"], "teacache");
    assert_eq!(sc["threshold"], 0.52);
    // The golden run's decisions (the prompt embeddings come from the same text encoders).
    assert_eq!(
        sc["computed_steps"],
        record()["runs"]["teacache/t0.52"]["computed_steps"]
    );
    let o = gen_cmd(&["--step-cache", "fbcache"], "fb.mp4");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(run_record("fb.mp4")["step_cache"]["threshold"], 0.05);
    for (args, want) in [
        (
            &["--step-cache", "fbcache", "--step-cache-end", "13"][..],
            "--step-cache-end: must be at most the step count (12), got 13",
        ),
        (
            &["--step-cache", "teacache", "--step-cache-threshold", "-1"][..],
            "--step-cache-threshold: must be a number at least 0, got -1",
        ),
        (
            &["--step-cache", "magic"][..],
            "expected none, teacache or fbcache",
        ),
        (&["--step-cache-threshold", "0.2"][..], "--step-cache"),
    ] {
        let o = gen_cmd(args, "bad.mp4");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains(want), "{args:?}: {err}");
        assert!(!dir.path().join("bad.mp4").exists());
    }
}

/// `hyvideo bench --step-cache …` reports what the cache computed, in its table's footer and
/// its JSON.
#[test]
fn bench_reports_the_step_cache() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("bench.json");
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_hyvideo"))
        .arg("bench")
        .arg("--bundle")
        .arg(crate::generate::full_bundle())
        .args(TINY_VIDEO)
        .args(["--infer-steps", "12"])
        .args(["--runs", "1", "--warmup", "0", "--threads", "2"])
        .args(["--step-cache", "teacache", "--step-cache-threshold", "0.52"])
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        stdout.contains("step cache teacache: computed steps cond 7/12"),
        "{stdout}"
    );
    let doc: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(
        doc["step_cache"]["computed_steps"],
        record()["runs"]["teacache/t0.52"]["computed_steps"]
    );
}
