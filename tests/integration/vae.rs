//! The exported VAE decoder and the Rust tiled decoder against diffusers' goldens
//! (`goldens/vae_decode.safetensors`): untiled, frame-wise, small spatial tiles, and a large
//! latent with `enable_tiling()` defaults.

use hyvideo::tensor::Tensor5;
use hyvideo::vae::VaeDecoder;
use hyvideo::vae_tiling::{SpatialTiling, TilingConfig};
use hyvideo_bundle::Manifest;
use hyvideo_engines::SessionConfig;

use crate::common::{golden5, rel_max_err, vae_bundle};

const FILE: &str = "vae_decode.safetensors";

fn decoder() -> VaeDecoder {
    let bundle = vae_bundle();
    let manifest = Manifest::load(bundle).unwrap();
    VaeDecoder::load_with(
        &hyvideo::engine_set::ModelFiles::bundle(bundle, &manifest),
        &SessionConfig::default().with_intra_threads(Some(2)),
    )
    .unwrap()
}

fn decode(case: &str, tiling: &TilingConfig) -> (Tensor5, usize) {
    let mut vae = decoder();
    let z = golden5(FILE, &format!("{case}.latents"));
    let plan = vae.plan(z.shape(), tiling).unwrap();
    let calls = plan.decoder_calls();
    let mut seen = 0;
    let out = vae.decode(&z, &plan, || seen += 1).unwrap();
    assert_eq!(seen, calls);
    (out, calls)
}

#[test]
fn graph_matches_diffusers_untiled() {
    // t = 3 <= 4 and 48x80 px < 256: diffusers decodes it in one call, so does the plan.
    let (out, calls) = decode("small", &TilingConfig::default());
    assert_eq!(calls, 1);
    let want = golden5(FILE, "small.sample");
    assert_eq!(out.shape(), want.shape());
    let err = rel_max_err(out.data(), want.data());
    eprintln!("relative max error {err:.3e}");
    assert!(err <= 1e-4, "relative max error {err:.3e}");
}

#[test]
fn framewise_decode_matches_diffusers() {
    let tiling = TilingConfig {
        spatial: None,
        ..TilingConfig::default()
    };
    let (out, calls) = decode("framewise", &tiling);
    assert_eq!(calls, 2, "t = 7 latent frames: chunks at 0 and 3");
    let want = golden5(FILE, "framewise.sample");
    assert_eq!(out.shape(), [1, 3, 25, 48, 64]);
    let err = rel_max_err(out.data(), want.data());
    eprintln!("relative max error {err:.3e}");
    assert!(err <= 1e-4, "relative max error {err:.3e}");
}

#[test]
fn small_tiles_match_diffusers_tiled_decode() {
    let tiling = TilingConfig {
        spatial: Some(SpatialTiling {
            tile: 64,
            stride: 48,
        }),
        ..TilingConfig::default()
    };
    let (out, calls) = decode("tiled_small", &tiling);
    assert_eq!(calls, 2 * 3 * 3, "2 chunks of 3x3 tiles");
    let want = golden5(FILE, "tiled_small.sample");
    assert_eq!(out.shape(), want.shape());
    let err = rel_max_err(out.data(), want.data());
    eprintln!("relative max error {err:.3e}");
    assert!(err <= 1e-4, "relative max error {err:.3e}");
}

#[test]
fn large_latents_with_default_tiling_match_diffusers() {
    // [1, 4, 7, 56, 64] -> 25 frames of 448x512 px: 3x3 tiles of 256 px in 2 chunks.
    let (out, calls) = decode("tiled_large", &TilingConfig::default());
    assert_eq!(calls, 2 * 3 * 3);
    assert_eq!(out.shape(), [1, 3, 25, 448, 512]);
    let want = golden5(FILE, "tiled_large.sample_sub");
    // The golden keeps sample[:, :, ::3, ::5, ::5].
    let [_, c, f, h, w] = want.shape();
    let mut sub = Vec::with_capacity(c * f * h * w);
    for ci in 0..c {
        for fi in 0..f {
            for y in 0..h {
                for x in 0..w {
                    sub.push(out.at(0, ci, fi * 3, y * 5, x * 5));
                }
            }
        }
    }
    let err = rel_max_err(&sub, want.data());
    eprintln!("tiled_large: relative max error {err:.3e}");
    assert!(
        err <= 1e-4,
        "relative max error {err:.3e} (bound for large latents is 1e-3)"
    );
}

#[test]
fn wrong_channel_count_is_an_error_not_a_panic() {
    let mut vae = decoder();
    let z = Tensor5::zeros([1, 3, 2, 4, 4]);
    let plan = vae.plan(z.shape(), &TilingConfig::default()).unwrap();
    let err = vae.decode(&z, &plan, || {}).unwrap_err().to_string();
    assert!(err.contains("4 channels"), "{err}");
}
