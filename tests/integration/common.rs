//! Shared helpers: fixture paths, golden tensors, a once-per-run exported bundle, and error
//! metrics.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use hyvideo::tensor::Tensor5;
use hyvideo_bundle::{Component, Precision};
use hyvideo_exporters::export::{ExportRequest, TransformerSource, export};
use safetensors::SafeTensors;

/// The goldens' video shape as CLI arguments: 32x48 pixels, 9 frames.
pub const TINY_VIDEO: [&str; 5] = ["--video-size", "32", "48", "--video-length", "9"];

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn fixtures() -> PathBuf {
    root().join("tests/fixtures")
}

pub fn tiny_model() -> PathBuf {
    fixtures().join("tiny")
}

/// The tiny image-to-video pipelines: `tiny_i2v` (token_replace), `tiny_i2v_33ch` (latent_concat).
pub fn tiny_i2v_model(name: &str) -> PathBuf {
    fixtures().join(name)
}

pub fn goldens(name: &str) -> PathBuf {
    fixtures().join("goldens").join(name)
}

/// Golden tensor `name` of `file` (dtype checked) decoded element by element.
fn golden_as<T, const N: usize>(
    file: &str,
    name: &str,
    dtype: safetensors::Dtype,
    from_le: fn([u8; N]) -> T,
) -> (Vec<usize>, Vec<T>) {
    let bytes = std::fs::read(goldens(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let v = st
        .tensor(name)
        .unwrap_or_else(|e| panic!("{file}: {name}: {e}"));
    assert_eq!(v.dtype(), dtype, "{name}");
    let data = v
        .data()
        .chunks_exact(N)
        .map(|c| from_le(c.try_into().unwrap()))
        .collect();
    (v.shape().to_vec(), data)
}

/// A golden f32 tensor and its shape.
pub fn golden(file: &str, name: &str) -> (Vec<usize>, Vec<f32>) {
    golden_as(file, name, safetensors::Dtype::F32, f32::from_le_bytes)
}

/// A golden i64 tensor and its shape.
pub fn golden_i64(file: &str, name: &str) -> (Vec<usize>, Vec<i64>) {
    golden_as(file, name, safetensors::Dtype::I64, i64::from_le_bytes)
}

pub fn golden5(file: &str, name: &str) -> Tensor5 {
    let (shape, data) = golden(file, name);
    Tensor5::from_vec(shape.try_into().expect("rank 5"), data).unwrap()
}

/// max |a - b| / max |b|: the error relative to the output's scale.
pub fn rel_max_err(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0f64, |m, v| m.max(v.abs() as f64));
    let err = a
        .iter()
        .zip(b)
        .fold(0f64, |m, (x, y)| m.max((*x as f64 - *y as f64).abs()));
    err / scale
}

/// ||a − b|| / ||b||.
pub fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let (mut num, mut den) = (0f64, 0f64);
    for (x, y) in a.iter().zip(b) {
        num += (*x as f64 - *y as f64).powi(2);
        den += (*y as f64).powi(2);
    }
    (num / den).sqrt()
}

/// Export `components` of the tiny pipeline (fp32) into a fresh temporary bundle.
pub fn export_tiny(components: &[Component], transformer: TransformerSource) -> PathBuf {
    export_tiny_at(components, transformer, Precision::Fp32)
}

/// Export `components` of the tiny pipeline at `precision` into a fresh temporary bundle.
pub fn export_tiny_at(
    components: &[Component],
    transformer: TransformerSource,
    precision: Precision,
) -> PathBuf {
    export_model(&tiny_model(), components, transformer, precision)
}

/// Export `components` of the model folder `model` at `precision` into a fresh temporary bundle.
pub fn export_model(
    model: &Path,
    components: &[Component],
    transformer: TransformerSource,
    precision: Precision,
) -> PathBuf {
    let dir = tempfile::Builder::new()
        .prefix("hyvideo-it-")
        .tempdir()
        .unwrap()
        .keep();
    let out = dir.join("bundle");
    let req = ExportRequest {
        model: model.to_path_buf(),
        out: out.clone(),
        precision,
        components: components.to_vec(),
        transformer,
        precision_profile: None,
        fp8_scales: None,
    };
    export(&req, |_| {}).unwrap_or_else(|e| panic!("export {components:?}: {e}"));
    out
}

/// The tiny pipeline's VAE decoder exported once per test run (fp32).
pub fn vae_bundle() -> &'static Path {
    static BUNDLE: OnceLock<PathBuf> = OnceLock::new();
    BUNDLE.get_or_init(|| export_tiny(&[Component::VaeDecoder], TransformerSource::default()))
}

/// The tiny pipeline's transformer (diffusers folder) exported once per test run (fp32).
pub fn transformer_bundle() -> &'static Path {
    static BUNDLE: OnceLock<PathBuf> = OnceLock::new();
    BUNDLE.get_or_init(|| export_tiny(&[Component::Transformer], TransformerSource::default()))
}

/// Files directly in `dir` (names), sorted.
pub fn list_dir(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Write `latents` to a safetensors file under tensor `name`.
pub fn write_tensor(path: &Path, name: &str, shape: &[usize], data: &[f32]) {
    let bytes: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
    let view =
        safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.to_vec(), &bytes)
            .unwrap();
    let out = safetensors::serialize([(name, view)], None).unwrap();
    std::fs::write(path, out).unwrap();
}

/// The tiny pipeline's two text encoders exported once per test run (fp32).
pub fn text_encoders_bundle() -> &'static Path {
    static BUNDLE: OnceLock<PathBuf> = OnceLock::new();
    BUNDLE.get_or_init(|| {
        export_tiny(
            &[Component::TextEncoder, Component::TextEncoder2],
            TransformerSource::default(),
        )
    })
}

/// The sample (frame) count of an MP4's one video track: `stsz`'s `sample_count`.
pub fn mp4_frames(mp4: &[u8]) -> u32 {
    let at = mp4
        .windows(4)
        .position(|w| w == b"stsz")
        .expect("an stsz box");
    // type, version/flags, sample_size, then sample_count.
    u32::from_be_bytes(mp4[at + 12..at + 16].try_into().unwrap())
}
