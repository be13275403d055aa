//! The library's `Pipeline`: one load, several generations (equal to diffusers' golden and to
//! a fresh load), progress events, and cancellation between steps and between tiles.

use hyvideo::generation::{
    CancelFlag, GenerateRequest, GenerationError, Pipeline, Progress, Sampling, Stage, StageConfigs,
};
use hyvideo_engines::SessionConfig;

use crate::common::{golden, rel_max_err};
use crate::generate::full_bundle;

/// The pipeline golden's settings (as the `generate` CLI tests use them).
fn request(seed: u64) -> GenerateRequest {
    GenerateRequest {
        height: 32,
        width: 48,
        frames: 9,
        seed,
        ..GenerateRequest {
            sampling: Sampling {
                steps: 4,
                ..Sampling::default()
            },
            ..GenerateRequest::new("A cat walks on the grass, realistic style.")
        }
    }
}

fn load() -> Pipeline {
    let config = SessionConfig::default().with_intra_threads(Some(2));
    Pipeline::load(full_bundle(), None, &StageConfigs::all(config)).unwrap()
}

#[test]
fn one_load_serves_several_generations() {
    let mut p = load();
    let mut events = vec![];
    let a = p
        .generate(&request(42), &mut |e| events.push(e), &CancelFlag::new())
        .unwrap();
    let (_, want) = golden("pipeline.safetensors", "final_latents");
    let err = rel_max_err(a.latents.data(), &want);
    assert!(err <= 1e-3, "final latents vs diffusers: {err:.3e}");
    assert_eq!(a.seed, Some(42));
    // Stages in order, every step and tile once.
    let stages: Vec<Stage> = events
        .iter()
        .filter_map(|e| match e {
            Progress::Stage(s) => Some(*s),
            _ => None,
        })
        .collect();
    assert_eq!(stages, [Stage::TextEncoders, Stage::Denoise, Stage::Decode]);
    let steps: Vec<usize> = events
        .iter()
        .filter_map(|e| match e {
            Progress::Step { step, steps: 4, .. } => Some(*step),
            _ => None,
        })
        .collect();
    assert_eq!(steps, [1, 2, 3, 4]);
    let tiles = events
        .iter()
        .filter(|e| matches!(e, Progress::Tile { .. }))
        .count();
    assert!(tiles >= 1);
    // A second request on the same load: another seed, another video, and exactly what a
    // fresh load makes of it (nothing carried over from the first run).
    let b = p
        .generate(&request(7), &mut |_| {}, &CancelFlag::new())
        .unwrap();
    assert!(rel_max_err(b.latents.data(), a.latents.data()) > 1e-2);
    let fresh = load()
        .generate(&request(7), &mut |_| {}, &CancelFlag::new())
        .unwrap();
    assert_eq!(b.latents.data(), fresh.latents.data());
    assert_eq!(b.video.data(), fresh.video.data());
    assert_eq!(b.video.shape(), [1, 3, 9, 32, 48]);
}

#[test]
fn cancellation_stops_between_steps_and_between_tiles() {
    let mut p = load();
    let cancel = CancelFlag::new();
    let mut steps = 0;
    let r = p.generate(
        &request(42),
        &mut |e| {
            if let Progress::Step { step, .. } = e {
                steps = step;
                if step == 2 {
                    cancel.cancel();
                }
            }
        },
        &cancel,
    );
    assert!(
        matches!(
            r,
            Err(GenerationError::Cancelled {
                stage: Stage::Denoise
            })
        ),
        "{r:?}"
    );
    assert_eq!(steps, 2, "no step after the cancel");
    let cancel = CancelFlag::new();
    let mut tiles = 0;
    let tiled = GenerateRequest {
        tiling: hyvideo::vae_tiling::TilingConfig {
            spatial: Some(hyvideo::vae_tiling::SpatialTiling {
                tile: 16,
                stride: 8,
            }),
            ..Default::default()
        },
        ..request(42)
    };
    let r = p.generate(
        &tiled,
        &mut |e| {
            if let Progress::Tile { tile, tiles: n } = e {
                assert!(n > 1, "several tiles");
                tiles = tile;
                cancel.cancel();
            }
        },
        &cancel,
    );
    assert!(
        matches!(
            r,
            Err(GenerationError::Cancelled {
                stage: Stage::Decode
            })
        ),
        "{r:?}"
    );
    assert_eq!(tiles, 1, "no tile after the cancel");
    // The pipeline stays usable after a cancelled run.
    assert!(
        p.generate(&request(3), &mut |_| {}, &CancelFlag::new())
            .is_ok()
    );
}

/// A pipeline of some stages runs those (decode-only gives exactly what the full pipeline's
/// decode gave), refuses the others by name, and reports a setting found out of range inside a
/// stage by its setting.
#[test]
fn pipelines_of_some_stages_run_those_and_name_the_missing_ones() {
    let config = SessionConfig::default().with_intra_threads(Some(2));
    let configs = StageConfigs::all(config);
    let mut full = load();
    let a = full
        .generate(&request(42), &mut |_| {}, &CancelFlag::new())
        .unwrap();
    let mut decoder =
        Pipeline::load_stages(full_bundle(), None, &configs, &[Stage::Decode]).unwrap();
    let tiling = request(42).tiling;
    let mut tiles = 0;
    let d = decoder
        .decode(
            &a.latents,
            &tiling,
            &mut |e| tiles += usize::from(matches!(e, Progress::Tile { .. })),
            &CancelFlag::new(),
        )
        .unwrap();
    assert_eq!(d.video.data(), a.video.data());
    assert_eq!((d.decoder_calls, tiles), (a.decoder_calls, a.decoder_calls));
    assert!(matches!(
        decoder.generate(&request(42), &mut |_| {}, &CancelFlag::new()),
        Err(GenerationError::NotLoaded {
            stage: Stage::TextEncoders
        })
    ));
    assert!(matches!(
        decoder.encode("a cat", None),
        Err(GenerationError::NotLoaded {
            stage: Stage::TextEncoders
        })
    ));
    // The loop's own check of a setting, surfaced as that setting.
    let prompts = full.encode("a cat", None).unwrap();
    let bad = Sampling {
        steps: 0,
        ..Sampling::default()
    };
    let e = full
        .denoise(
            &bad,
            a.latents.clone(),
            &prompts.prompt,
            None,
            &mut |_| {},
            &CancelFlag::new(),
        )
        .unwrap_err();
    assert_eq!(
        e.invalid_setting().map(|i| i.setting),
        Some(hyvideo::generation::Setting::Steps),
        "{e}"
    );
}

/// Text encoders released after each encoding (for GPUs that cannot hold them beside the
/// transformer) give exactly the resident pipeline's results and are not held while the
/// denoising loop runs.
#[test]
fn released_text_encoders_change_nothing_but_residency() {
    use hyvideo::generation::TextEncoderResidency;
    let mut resident = load();
    let want = resident
        .generate(&request(5), &mut |_| {}, &CancelFlag::new())
        .unwrap();
    let config = SessionConfig::default().with_intra_threads(Some(2));
    let configs = StageConfigs {
        text_residency: TextEncoderResidency::ReleasedAfterUse,
        ..StageConfigs::all(config)
    };
    let mut released = Pipeline::load(full_bundle(), None, &configs).unwrap();
    // Not even loaded until a prompt is encoded.
    assert_eq!(released.resident_stages(), [Stage::Denoise, Stage::Decode]);
    for _ in 0..2 {
        let got = released
            .generate(&request(5), &mut |_| {}, &CancelFlag::new())
            .unwrap();
        assert_eq!(got.latents.data(), want.latents.data());
        assert_eq!(got.video.data(), want.video.data());
        assert_eq!(released.resident_stages(), [Stage::Denoise, Stage::Decode]);
    }
    // generate runs encode before the loop: after encoding, only the loop's and the decoder's
    // models are in memory.
    released.encode("a cat", None).unwrap();
    assert_eq!(released.resident_stages(), [Stage::Denoise, Stage::Decode]);
    assert_eq!(
        resident.resident_stages(),
        [Stage::TextEncoders, Stage::Denoise, Stage::Decode]
    );
}
