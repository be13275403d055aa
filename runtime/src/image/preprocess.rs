//! The two preprocessings of the pipeline's image, in float32 exactly as the Python reference
//! computes them.
//!
//! - [`vae_pixels`] mirrors diffusers' `VaeImageProcessor.preprocess(image, height, width)` (what
//!   `VideoProcessor.preprocess` is) with its defaults — `do_resize`, `resample="lanczos"`,
//!   `resize_mode="default"`, `do_normalize`, no `do_convert_rgb`/`do_binarize`: PIL
//!   `image.resize((width, height), LANCZOS, reducing_gap=None)` (no crop, aspect not kept),
//!   `np.array(image).astype(np.float32) / 255.0` (a float32 division), then torch's
//!   `2.0 * x - 1.0`.
//! - [`clip_pixels`] mirrors transformers 5's `CLIPImageProcessor` on its PIL backend
//!   (`CLIPImageProcessorPil`, `PilBackend.process_image` / `_preprocess`, `image_transforms`),
//!   which is what `CLIPImageProcessor` falls back to without torchvision: `convert_to_rgb` (a
//!   transparent key colour composited onto white), `get_resize_output_image_size(size=shortest_edge,
//!   default_to_square=False)` — the short side to `shortest_edge`, the long side
//!   `int(shortest_edge * long / short)` — and a PIL resize of the uint8 image with `resample`,
//!   `center_crop` (offsets `(size − crop) // 2`, zero padding centred with `ceil` when the image is
//!   smaller), `rescale` (`uint8 → float64 × rescale_factor → float32`), `normalize` (`(x − mean) /
//!   std` in float32 with the mean and std rounded to float32), channels first.
//!
//! [`ClipImageConfig`] is read from the image processor's `preprocessor_config.json`; values this
//! port does not implement are refused with the file and key named.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;

use super::RgbImage;
use super::resample::{Filter, resize};

/// The VAE's spatial compression (`vae_scale_factor_spatial`): diffusers floors the preprocess
/// size to a multiple of it; the pipeline's sizes are multiples of 16, so [`vae_pixels`] takes
/// the size as given.
pub const VAE_SCALE_FACTOR: usize = 8;

/// `VideoProcessor.preprocess(image, height, width)[0]`: `[3, height, width]` float32 in
/// [−1, 1], channels first. `height` and `width` are the pipeline's (multiples of
/// [`VAE_SCALE_FACTOR`]; diffusers would floor other values to one).
pub fn vae_pixels(image: &RgbImage, height: usize, width: usize) -> Vec<f32> {
    let resized = resize(image, width, height, Filter::Lanczos);
    let plane = width * height;
    let mut out = vec![0f32; plane * 3];
    for (i, px) in resized.pixels.chunks_exact(3).enumerate() {
        for (c, &v) in px.iter().enumerate() {
            let x = f32::from(v) / 255.0f32;
            out[c * plane + i] = 2.0f32 * x - 1.0f32;
        }
    }
    out
}

/// How the vision side resizes (`size` in the config).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClipResize {
    /// `{"shortest_edge": n}` (or a bare int with `default_to_square` false, CLIP's default):
    /// the short side to `n`, the aspect ratio kept.
    ShortestEdge(usize),
    /// `{"height": h, "width": w}`: exactly that size.
    Exact { height: usize, width: usize },
}

/// Mean and standard deviation per channel, as float32 (numpy rounds the config's float64s).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Normalize {
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

/// The vision-side preprocessing, from a `preprocessor_config.json`; each step is `None` when the
/// config turns it off.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ClipImageConfig {
    /// `do_convert_rgb`: composite a transparent key colour onto white.
    pub convert_rgb: bool,
    /// `do_resize` + `size`.
    pub resize: Option<ClipResize>,
    /// `resample`.
    pub filter: Filter,
    /// `do_center_crop` + `crop_size`, as (height, width).
    pub center_crop: Option<(usize, usize)>,
    /// `do_rescale` + `rescale_factor`.
    pub rescale: Option<f64>,
    /// `do_normalize` + `image_mean`, `image_std`.
    pub normalize: Option<Normalize>,
}

/// transformers' `OPENAI_CLIP_MEAN` / `OPENAI_CLIP_STD` (the class defaults).
const OPENAI_CLIP_MEAN: [f64; 3] = [0.48145466, 0.4578275, 0.40821073];
const OPENAI_CLIP_STD: [f64; 3] = [0.26862954, 0.26130258, 0.27577711];

/// A `preprocessor_config.json` value this port does not accept.
#[derive(Debug, thiserror::Error)]
pub enum ClipConfigError {
    #[error("{file}: cannot read the image processor config: {source}")]
    Unreadable {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}: not a JSON object: {detail}")]
    NotJson { file: String, detail: String },
    #[error("{file}: key `{key}`: {problem}")]
    Unsupported {
        file: String,
        key: String,
        problem: String,
    },
}

/// Keys that only describe the processor.
const INFORMATIONAL: &[&str] = &[
    "image_processor_type",
    "feature_extractor_type",
    "processor_class",
    "_processor_class",
    "image_processor_class",
    "auto_map",
];

impl ClipImageConfig {
    /// openai/clip-vit-large-patch14-336's config, which HunyuanVideo-I2V uses: shortest edge
    /// 336 (BICUBIC), centre crop 336×336, ×1/255, OpenAI CLIP mean and std.
    pub fn clip_vit_large_patch14_336() -> Self {
        Self {
            convert_rgb: true,
            resize: Some(ClipResize::ShortestEdge(336)),
            filter: Filter::Bicubic,
            center_crop: Some((336, 336)),
            rescale: Some(1.0 / 255.0),
            normalize: Some(Normalize {
                mean: OPENAI_CLIP_MEAN.map(|v| v as f32),
                std: OPENAI_CLIP_STD.map(|v| v as f32),
            }),
        }
    }

    /// Reads `preprocessor_config.json`.
    pub fn from_file(path: &Path) -> Result<Self, ClipConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ClipConfigError::Unreadable {
            file: file.clone(),
            source,
        })?;
        Self::from_json(&text, &file)
    }

    /// Parses the config's JSON; `file` names it in errors. Missing keys take
    /// `CLIPImageProcessor`'s class defaults (shortest edge 224, crop 224, BICUBIC, every step on).
    pub fn from_json(text: &str, file: &str) -> Result<Self, ClipConfigError> {
        let map: BTreeMap<String, Value> =
            serde_json::from_str(text).map_err(|e| ClipConfigError::NotJson {
                file: file.to_string(),
                detail: e.to_string(),
            })?;
        let bad = |key: &str, problem: String| ClipConfigError::Unsupported {
            file: file.to_string(),
            key: key.to_string(),
            problem,
        };
        let flag = |key: &str| -> Result<bool, ClipConfigError> {
            match map.get(key) {
                None => Ok(true),
                Some(Value::Bool(b)) => Ok(*b),
                Some(v) => Err(bad(key, format!("expected true or false, got {v}"))),
            }
        };
        let uint = |key: &str, v: &Value| -> Result<usize, ClipConfigError> {
            v.as_u64()
                .filter(|&n| n > 0)
                .and_then(|n| usize::try_from(n).ok())
                .ok_or_else(|| bad(key, format!("expected a positive integer, got {v}")))
        };
        let channels = |key: &str, default: [f64; 3]| -> Result<[f32; 3], ClipConfigError> {
            let v = match map.get(key) {
                None => return Ok(default.map(|v| v as f32)),
                Some(v) => v,
            };
            let values = match v {
                Value::Number(n) => n.as_f64().map(|x| [x; 3]),
                Value::Array(a) if a.len() == 3 => {
                    match (a[0].as_f64(), a[1].as_f64(), a[2].as_f64()) {
                        (Some(x), Some(y), Some(z)) => Some([x, y, z]),
                        _ => None,
                    }
                }
                _ => None,
            };
            values
                .map(|a| a.map(|x| x as f32))
                .ok_or_else(|| bad(key, format!("expected a number or 3 numbers, got {v}")))
        };

        for key in map.keys() {
            let known = INFORMATIONAL.contains(&key.as_str())
                || [
                    "do_resize",
                    "size",
                    "resample",
                    "do_center_crop",
                    "crop_size",
                    "do_rescale",
                    "rescale_factor",
                    "do_normalize",
                    "image_mean",
                    "image_std",
                    "do_convert_rgb",
                    "default_to_square",
                    "do_pad",
                    "use_square_size",
                ]
                .contains(&key.as_str());
            if !known {
                return Err(bad(
                    key,
                    "not a key this CLIP image preprocessing implements".into(),
                ));
            }
        }
        for key in ["do_pad", "use_square_size"] {
            if let Some(v) = map.get(key)
                && v != &Value::Bool(false)
            {
                return Err(bad(key, format!("only false is supported, got {v}")));
            }
        }
        let default_to_square = match map.get("default_to_square") {
            None => false,
            Some(Value::Bool(b)) => *b,
            Some(v) => {
                return Err(bad(
                    "default_to_square",
                    format!("expected a bool, got {v}"),
                ));
            }
        };

        let resize = if flag("do_resize")? {
            Some(match map.get("size") {
                None => ClipResize::ShortestEdge(224),
                Some(v @ Value::Number(_)) => {
                    let n = uint("size", v)?;
                    if default_to_square {
                        ClipResize::Exact {
                            height: n,
                            width: n,
                        }
                    } else {
                        ClipResize::ShortestEdge(n)
                    }
                }
                Some(Value::Object(o)) => {
                    let mut keys: Vec<&str> = o.keys().map(String::as_str).collect();
                    keys.sort_unstable();
                    match keys.as_slice() {
                        ["shortest_edge"] => ClipResize::ShortestEdge(uint(
                            "size.shortest_edge",
                            &o["shortest_edge"],
                        )?),
                        ["height", "width"] => ClipResize::Exact {
                            height: uint("size.height", &o["height"])?,
                            width: uint("size.width", &o["width"])?,
                        },
                        _ => {
                            return Err(bad(
                                "size",
                                format!(
                                    "only {{\"shortest_edge\": n}} or {{\"height\", \"width\"}} \
                                     are supported, got {}",
                                    Value::Object(o.clone())
                                ),
                            ));
                        }
                    }
                }
                Some(v) => {
                    return Err(bad(
                        "size",
                        format!("expected an int or an object, got {v}"),
                    ));
                }
            })
        } else {
            None
        };
        let filter = match map.get("resample") {
            None => Filter::Bicubic,
            Some(v) => v.as_i64().and_then(Filter::from_pil_code).ok_or_else(|| {
                bad(
                    "resample",
                    format!("only 3 (BICUBIC) and 1 (LANCZOS) are supported, got {v}"),
                )
            })?,
        };
        let center_crop = if flag("do_center_crop")? {
            Some(match map.get("crop_size") {
                None => (224, 224),
                Some(v @ Value::Number(_)) => {
                    let n = uint("crop_size", v)?;
                    (n, n)
                }
                Some(Value::Object(o)) if o.len() == 2 && o.contains_key("height") => {
                    let w = o.get("width").ok_or_else(|| {
                        bad("crop_size", "expected {\"height\", \"width\"}".to_string())
                    })?;
                    (
                        uint("crop_size.height", &o["height"])?,
                        uint("crop_size.width", w)?,
                    )
                }
                Some(v) => {
                    return Err(bad(
                        "crop_size",
                        format!("expected an int or {{\"height\", \"width\"}}, got {v}"),
                    ));
                }
            })
        } else {
            None
        };
        let rescale = if flag("do_rescale")? {
            Some(match map.get("rescale_factor") {
                None => 1.0 / 255.0,
                Some(v) => v
                    .as_f64()
                    .filter(|f| f.is_finite())
                    .ok_or_else(|| bad("rescale_factor", format!("expected a number, got {v}")))?,
            })
        } else {
            None
        };
        let normalize = if flag("do_normalize")? {
            Some(Normalize {
                mean: channels("image_mean", OPENAI_CLIP_MEAN)?,
                std: channels("image_std", OPENAI_CLIP_STD)?,
            })
        } else {
            None
        };
        Ok(Self {
            convert_rgb: flag("do_convert_rgb")?,
            resize,
            filter,
            center_crop,
            rescale,
            normalize,
        })
    }
}

/// `get_resize_output_image_size(image, size, default_to_square=False)` → (height, width).
fn shortest_edge_size(height: usize, width: usize, size: usize) -> (usize, usize) {
    let (short, long) = if width <= height {
        (width, height)
    } else {
        (height, width)
    };
    // Python: int(size * long / short), a float64 true division truncated
    let new_long = ((size as f64 * long as f64) / short as f64) as usize;
    if width <= height {
        (new_long, size)
    } else {
        (size, new_long)
    }
}

/// `CLIPImageProcessor(**config)(image).pixel_values[0]` and its shape `[3, height, width]`.
pub fn clip_pixels(image: &RgbImage, config: &ClipImageConfig) -> (Vec<f32>, [usize; 3]) {
    let mut img = if config.convert_rgb {
        composite_key(image)
    } else {
        RgbImage {
            transparent_key: None,
            ..image.clone()
        }
    };
    if let Some(r) = config.resize {
        let (h, w) = match r {
            ClipResize::ShortestEdge(s) => shortest_edge_size(img.height, img.width, s),
            ClipResize::Exact { height, width } => (height, width),
        };
        img = resize(&img, w, h, config.filter);
    }
    if let Some((ch, cw)) = config.center_crop {
        img = center_crop(&img, ch, cw);
    }
    let (h, w) = (img.height, img.width);
    let plane = h * w;
    let mut out = vec![0f32; plane * 3];
    for (i, px) in img.pixels.chunks_exact(3).enumerate() {
        for (c, &v) in px.iter().enumerate() {
            let x = match config.rescale {
                Some(f) => (f64::from(v) * f) as f32,
                None => f32::from(v),
            };
            out[c * plane + i] = match config.normalize {
                Some(n) => (x - n.mean[c]) / n.std[c],
                None => x,
            };
        }
    }
    (out, [3, h, w])
}

/// transformers' `convert_to_rgb` of a PIL RGB image: with `info["transparency"]` it is
/// `convert("RGBA")` (pixels of exactly the key colour get alpha 0: `Convert.c` `rgbT2rgba`) then
/// `alpha_composite` onto opaque white — white there, the pixel itself elsewhere.
pub(crate) fn composite_key(image: &RgbImage) -> RgbImage {
    let mut img = RgbImage {
        transparent_key: None,
        ..image.clone()
    };
    if let Some(key) = image.transparent_key {
        for px in img.pixels.chunks_exact_mut(3) {
            if px == key {
                px.copy_from_slice(&[255, 255, 255]);
            }
        }
    }
    img
}

/// `image_transforms.center_crop` of an image (zero-padded, centred, where it is smaller).
fn center_crop(img: &RgbImage, crop_h: usize, crop_w: usize) -> RgbImage {
    // offsets into the padded image: top = (h − crop) // 2 (floor), pad = ceil((crop − h) / 2)
    let offsets = |size: usize, crop: usize| -> (i64, i64) {
        let (size, crop) = (size as i64, crop as i64);
        let top = (size - crop).div_euclid(2);
        let pad = if crop > size {
            (crop - size + 1) / 2
        } else {
            0
        };
        (top + pad, pad)
    };
    let (top, pad_y) = offsets(img.height, crop_h);
    let (left, pad_x) = offsets(img.width, crop_w);
    let mut out = RgbImage::black(crop_w, crop_h);
    for y in 0..crop_h {
        let sy = top + y as i64 - pad_y;
        if sy < 0 || sy >= img.height as i64 {
            continue;
        }
        for x in 0..crop_w {
            let sx = left + x as i64 - pad_x;
            if sx < 0 || sx >= img.width as i64 {
                continue;
            }
            let s = (sy as usize * img.width + sx as usize) * 3;
            let d = (y * crop_w + x) * 3;
            out.pixels[d..d + 3].copy_from_slice(&img.pixels[s..s + 3]);
        }
    }
    out
}
