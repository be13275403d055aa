//! The image module against Pillow, diffusers and transformers: the goldens of
//! `tests/fixtures/make_image_fixtures.py` (`tests/fixtures/goldens/image_preprocess.*`) computed
//! from the test images in `tests/fixtures/images/`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use safetensors::SafeTensors;
use serde_json::Value;

use super::*;

fn fixtures() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures"))
}

fn image_path(name: &str) -> PathBuf {
    fixtures().join("images").join(name)
}

struct Goldens {
    bytes: Vec<u8>,
    meta: Value,
}

impl Goldens {
    fn load() -> Self {
        let dir = fixtures().join("goldens");
        let bytes = std::fs::read(dir.join("image_preprocess.safetensors")).expect("goldens");
        let meta = serde_json::from_str(
            &std::fs::read_to_string(dir.join("image_preprocess.json")).expect("golden json"),
        )
        .expect("golden json parses");
        Self { bytes, meta }
    }

    fn tensors(&self) -> SafeTensors<'_> {
        SafeTensors::deserialize(&self.bytes).expect("safetensors")
    }

    fn u8s(&self, key: &str) -> (Vec<usize>, Vec<u8>) {
        let st = self.tensors();
        let t = st.tensor(key).unwrap_or_else(|e| panic!("{key}: {e}"));
        assert_eq!(t.dtype(), safetensors::Dtype::U8, "{key}");
        (t.shape().to_vec(), t.data().to_vec())
    }

    fn f32s(&self, key: &str) -> (Vec<usize>, Vec<f32>) {
        let st = self.tensors();
        let t = st.tensor(key).unwrap_or_else(|e| panic!("{key}: {e}"));
        assert_eq!(t.dtype(), safetensors::Dtype::F32, "{key}");
        let v = t
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        (t.shape().to_vec(), v)
    }

    fn keys(&self, prefix: &str) -> Vec<String> {
        let mut k: Vec<String> = self
            .tensors()
            .names()
            .into_iter()
            .filter(|n| n.starts_with(prefix))
            .map(str::to_string)
            .collect();
        k.sort();
        k
    }
}

/// The integer-formula image of make_image_fixtures.py's `synth`.
fn synth(w: usize, h: usize) -> RgbImage {
    let mut pixels = Vec::with_capacity(w * h * 3);
    for y in 0..h as i64 {
        for x in 0..w as i64 {
            for c in 0..3i64 {
                let v = (x * (3 + 2 * c)
                    + y * (5 - c)
                    + ((x / 9 + y / 7) % 2) * 97
                    + (x * y * (c + 1)) / 13)
                    % 256;
                pixels.push(v as u8);
            }
        }
    }
    RgbImage::from_pixels(w, h, pixels).expect("synth size")
}

fn load(name: &str) -> RgbImage {
    load_image(&image_path(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// (max |a − b|, number of differing values)
fn diff_u8(a: &[u8], b: &[u8]) -> (u8, usize) {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).fold((0, 0), |(m, n), (&x, &y)| {
        let d = x.abs_diff(y);
        (m.max(d), n + usize::from(d > 0))
    })
}

fn diff_f32(a: &[f32], b: &[f32]) -> (f32, usize) {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).fold((0.0, 0), |(m, n), (&x, &y)| {
        let d = (x - y).abs();
        (m.max(d), n + usize::from(x.to_bits() != y.to_bits()))
    })
}

#[test]
fn png_decoding_is_pillows_exactly() {
    let g = Goldens::load();
    let keys = g.keys("decode/");
    let pngs: Vec<&String> = keys.iter().filter(|k| k.ends_with(".png")).collect();
    assert!(pngs.len() >= 25, "{pngs:?}");
    for key in pngs {
        let name = &key["decode/".len()..];
        let (shape, want) = g.u8s(key);
        let img = load(name);
        assert_eq!([img.height, img.width, 3], shape[..], "{name}: size");
        assert_eq!(img.pixels, want, "{name}: pixels");
        // the transparent key: transformers' convert_to_rgb of the loaded image
        let clip_key = format!("clip_rgb/{name}");
        let composited = preprocess::composite_key(&img);
        if g.keys(&clip_key).is_empty() {
            assert!(
                img.transparent_key.is_none(),
                "{name}: no key in Pillow's info"
            );
        } else {
            let (_, want) = g.u8s(&clip_key);
            assert!(img.transparent_key.is_some(), "{name}: a key");
            assert_eq!(composited.pixels, want, "{name}: convert_to_rgb");
        }
    }
}

#[test]
fn jpeg_decoding_is_libjpeg_turbos_exactly() {
    // baseline, extended (16-bit tables), progressive, restart intervals, 4:4:4/4:2:2/4:2:0,
    // grey, RGB (Adobe), tiny sizes (box upsampling), EXIF orientations
    let g = Goldens::load();
    let keys: Vec<String> = g
        .keys("decode/")
        .into_iter()
        .filter(|k| k.ends_with(".jpg"))
        .collect();
    assert!(keys.len() >= 18, "{keys:?}");
    for key in &keys {
        let name = &key["decode/".len()..];
        let (shape, want) = g.u8s(key);
        let img = load(name);
        assert_eq!(
            [img.height, img.width, 3],
            shape[..],
            "{name}: size (orientation)"
        );
        let (max, n) = diff_u8(&img.pixels, &want);
        assert_eq!(
            (max, n),
            (0, 0),
            "{name}: max |diff| {max}, {n} values differ"
        );
    }
}

#[test]
fn every_orientation_is_pillows() {
    // orientN.png hold a 7x5 image with EXIF orientation N; the goldens are exif_transpose's
    let base = load("orient1.png");
    assert_eq!((base.width, base.height), (7, 5));
    for n in 2..=8 {
        let img = load(&format!("orient{n}.png"));
        let o = Orientation::from_exif(n).expect("1..=8");
        assert_eq!(o.apply(base.clone()), img, "orientation {n}");
    }
    // XMP (8) and ImageMagick's raw profile (5)
    assert_eq!(
        load("xmp_orient8.png"),
        Orientation::Rotate90CounterClockwise.apply(base.clone())
    );
    assert_eq!(
        load("rawprofile_orient5.png"),
        Orientation::Transpose.apply(base)
    );
}

#[test]
fn refusals_name_the_file_and_the_problem() {
    let err = |name: &str| load_image(&image_path(name)).expect_err(name);
    match err("grey16.png") {
        ImageError::UnsupportedMode { name, mode, .. } => {
            assert!(name.ends_with("grey16.png"));
            assert_eq!(mode, "I;16");
        }
        e => panic!("grey16.png: {e}"),
    }
    match err("jcmyk.jpg") {
        ImageError::UnsupportedMode { mode, .. } => assert_eq!(mode, "CMYK"),
        e => panic!("jcmyk.jpg: {e}"),
    }
    for name in ["truncated.png", "truncated.jpg"] {
        let e = err(name);
        assert!(matches!(e, ImageError::Truncated { .. }), "{name}: {e}");
        assert!(e.to_string().contains(name), "{e}");
    }
    let e = err("no-such-file.png");
    assert!(matches!(e, ImageError::Unreadable { .. }), "{e}");
    let e = load_image_bytes(b"GIF89a....", "upload.gif").expect_err("gif");
    assert!(matches!(e, ImageError::UnknownFormat { .. }), "{e}");
    assert!(e.to_string().starts_with("upload.gif: "), "{e}");
    let e = load_image_bytes(b"", "empty").expect_err("empty");
    assert!(matches!(e, ImageError::UnknownFormat { .. }), "{e}");

    // sizes from the headers, refused before anything is decoded or allocated
    let jpeg_header = |w: u16, h: u16| -> Vec<u8> {
        let mut b = vec![0xFF, 0xD8, 0xFF, 0xC0, 0, 17, 8];
        b.extend_from_slice(&h.to_be_bytes());
        b.extend_from_slice(&w.to_be_bytes());
        b.extend_from_slice(&[3, 1, 0x22, 0, 2, 0x11, 1, 3, 0x11, 1]);
        b.extend_from_slice(&[0xFF, 0xDA, 0, 12, 3, 1, 0, 2, 0x11, 3, 0x11, 0, 63, 0]);
        b.extend_from_slice(&[0xFF, 0xD9]);
        b
    };
    let e = load_image_bytes(&jpeg_header(0, 10), "zero.jpg").expect_err("zero");
    assert!(
        matches!(
            e,
            ImageError::ZeroSize {
                width: 0,
                height: 10,
                ..
            }
        ),
        "{e}"
    );
    let e = load_image_bytes(&jpeg_header(65535, 65535), "huge.jpg").expect_err("huge");
    assert!(matches!(e, ImageError::TooLarge { .. }), "{e}");
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = b"IHDR".to_vec();
    ihdr.extend_from_slice(&20000u32.to_be_bytes());
    ihdr.extend_from_slice(&20000u32.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    png.extend_from_slice(&13u32.to_be_bytes());
    png.extend_from_slice(&ihdr);
    png.extend_from_slice(&crc32(&ihdr).to_be_bytes());
    let e = load_image_bytes(&png, "huge.png").expect_err("huge png");
    assert!(
        matches!(
            e,
            ImageError::TooLarge {
                pixels: 400_000_000,
                ..
            }
        ),
        "{e}"
    );
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A small deterministic generator (xorshift64*) for the fuzz-ish tests.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

#[test]
fn damaged_input_gives_errors_not_panics() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    for entry in std::fs::read_dir(fixtures().join("images")).expect("images") {
        let path = entry.expect("entry").path();
        if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("png" | "jpg")
        ) {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            files.push((name, std::fs::read(&path).expect("read")));
        }
    }
    files.sort();
    let mut decoded = 0;
    for (name, bytes) in &files {
        let full = load_image_bytes(bytes, name).ok();
        // truncations: every offset of the first 100 bytes, then 30 spread over the rest
        let mut cuts: Vec<usize> = (0..bytes.len().min(100)).collect();
        cuts.extend((0..30).map(|i| 100 + (bytes.len().saturating_sub(100)) * i / 30));
        for cut in cuts.into_iter().filter(|&c| c < bytes.len()) {
            match load_image_bytes(&bytes[..cut], name) {
                Err(_) => {}
                // only a cut past all the image data may decode, and then to the same pixels
                // (without the orientation if the cut lost an eXIf after the image data)
                Ok(img) => {
                    decoded += 1;
                    let full = full
                        .as_ref()
                        .expect("a truncation decodes only if the file does");
                    let same = (1..=8)
                        .filter_map(Orientation::from_exif)
                        .any(|o| o.apply(img.clone()).pixels == full.pixels);
                    assert!(same, "{name} cut at {cut}");
                }
            }
        }
        // random byte changes
        for _ in 0..20 {
            let mut b = bytes.clone();
            for _ in 0..1 + rng.next() % 4 {
                let i = (rng.next() % b.len() as u64) as usize;
                b[i] = rng.next() as u8;
            }
            let _ = load_image_bytes(&b, name);
        }
    }
    // random bytes behind each magic
    for magic in [&b"\x89PNG\r\n\x1a\n"[..], &[0xFF, 0xD8, 0xFF][..], &[][..]] {
        for _ in 0..100 {
            let len = (rng.next() % 300) as usize;
            let mut b = magic.to_vec();
            b.extend((0..len).map(|_| rng.next() as u8));
            assert!(load_image_bytes(&b, "random").is_err());
        }
    }
    eprintln!("{decoded} truncations past the image data decoded");
}

#[test]
fn resize_is_pillows_exactly() {
    let g = Goldens::load();
    let sources: BTreeMap<&str, RgbImage> = [
        ("rgb", load("rgb.png")),
        ("synth3x2", synth(3, 2)),
        ("synth500x360", synth(500, 360)),
    ]
    .into_iter()
    .collect();
    let cases = g.meta["resize"].as_array().expect("resize cases");
    assert!(cases.len() >= 30);
    let mut failed = Vec::new();
    for case in cases {
        let key = case["key"].as_str().expect("key");
        let src = &sources[case["source"].as_str().expect("source")];
        let filter = match case["filter"].as_str() {
            Some("bicubic") => Filter::Bicubic,
            Some("lanczos") => Filter::Lanczos,
            f => panic!("{f:?}"),
        };
        let w = case["width"].as_u64().expect("w") as usize;
        let h = case["height"].as_u64().expect("h") as usize;
        let (shape, want) = g.u8s(key);
        assert_eq!(shape, [h, w, 3], "{key}");
        let got = resize(src, w, h, filter);
        assert_eq!((got.width, got.height), (w, h));
        let (max, n) = diff_u8(&got.pixels, &want);
        if n > 0 {
            failed.push(format!("{key}: max {max}, {n} differ"));
        }
    }
    assert!(failed.is_empty(), "{failed:#?}");
}

#[test]
fn vae_pixels_are_diffusers() {
    let g = Goldens::load();
    for case in g.meta["vae"].as_array().expect("vae cases") {
        let key = case["key"].as_str().expect("key");
        let h = case["height"].as_u64().expect("h") as usize;
        let w = case["width"].as_u64().expect("w") as usize;
        let src = case["image"].as_str().expect("image");
        let img = if src.starts_with("PIL.Image.new") {
            RgbImage::black(48, 32)
        } else {
            load(src)
        };
        let (shape, want) = g.f32s(key);
        assert_eq!(shape, [3, h, w], "{key}");
        let got = vae_pixels(&img, h, w);
        let (max, n) = diff_f32(&got, &want);
        eprintln!("{key}: max |diff| {max:e}, {n} values differ");
        assert_eq!(n, 0, "{key}: bit-exact (max |diff| {max:e})");
    }
}

#[test]
fn clip_pixels_are_transformers() {
    let g = Goldens::load();
    let configs = &g.meta["clip_configs"];
    for case in g.meta["clip"].as_array().expect("clip cases") {
        let key = case["key"].as_str().expect("key");
        let src = case["image"].as_str().expect("image");
        let img = match src {
            "synth500x360" => synth(500, 360),
            "synth350x421" => synth(350, 421),
            "black64x48" => RgbImage::black(64, 48),
            name => load(name),
        };
        let config_json = configs[case["config"].as_str().expect("config")].to_string();
        let config = ClipImageConfig::from_json(&config_json, key).expect("config parses");
        let (want_shape, want) = g.f32s(key);
        let (got, shape) = clip_pixels(&img, &config);
        assert_eq!(shape[..], want_shape[..], "{key}");
        let (max, n) = diff_f32(&got, &want);
        eprintln!("{key}: max |diff| {max:e}, {n} values differ");
        assert_eq!(n, 0, "{key}: bit-exact");
    }
}

#[test]
fn the_real_preprocessor_config_parses_to_clip_vit_large_patch14_336() {
    let path = fixtures().join("tiny_i2v/image_processor/preprocessor_config.json");
    let config = ClipImageConfig::from_file(&path).expect("real config");
    assert_eq!(config, ClipImageConfig::clip_vit_large_patch14_336());
    // the int forms of the original openai file
    let short = r#"{"crop_size": 336, "do_center_crop": true, "do_normalize": true,
        "do_resize": true, "feature_extractor_type": "CLIPFeatureExtractor",
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711], "resample": 3, "size": 336}"#;
    assert_eq!(
        ClipImageConfig::from_json(short, "openai.json").expect("int form"),
        ClipImageConfig::clip_vit_large_patch14_336()
    );
    let refused = |json: &str, key: &str| {
        let e = ClipImageConfig::from_json(json, "pre.json").expect_err(json);
        let text = e.to_string();
        assert!(text.starts_with("pre.json: key `"), "{text}");
        assert!(text.contains(&format!("`{key}`")), "{text}");
    };
    refused(r#"{"resample": 2}"#, "resample");
    refused(
        r#"{"size": {"shortest_edge": 336, "longest_edge": 500}}"#,
        "size",
    );
    refused(r#"{"do_pad": true}"#, "do_pad");
    refused(r#"{"crop_pct": 0.9}"#, "crop_pct");
    refused(r#"{"image_mean": [0.5, 0.5]}"#, "image_mean");
    refused(r#"{"do_resize": "yes"}"#, "do_resize");
    refused(r#"{"size": 0}"#, "size");
    assert!(matches!(
        ClipImageConfig::from_json("[1]", "pre.json"),
        Err(ClipConfigError::NotJson { .. })
    ));
}
