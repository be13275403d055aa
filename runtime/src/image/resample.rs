//! Pillow's resampling of 8-bit images, bit for bit: a port of `src/libImaging/Resample.c`
//! (`precompute_coeffs`, `normalize_coeffs_8bpc`, `ImagingResampleHorizontal_8bpc`,
//! `ImagingResampleVertical_8bpc`, `ImagingResampleInner`) as `PIL.Image.resize(size, resample)`
//! calls it for a mode "RGB" image with the default box and `reducing_gap=None` (so no
//! `Image.reduce` first).
//!
//! - Coefficients, per output pixel, in float64: `scale = in/out`, the filter's support widened
//!   by `max(scale, 1)`, `center = (x + 0.5)·scale`, taps from `(int)(center − support + 0.5)`
//!   to `(int)(center + support + 0.5)` clamped to the image, each `filter((i − center + 0.5) /
//!   max(scale, 1))`, divided by their sum; then rounded (half away from zero) to fixed point
//!   with `PRECISION_BITS = 32 − 8 − 2 = 22` fraction bits.
//! - Each output sample: `2²¹ + Σ sample·k` in 32-bit integers, `>> 22`, clipped to 0..=255.
//! - Horizontal pass first, over only the rows the vertical pass reads, then the vertical pass —
//!   except when the width grows and the height shrinks: then, as Pillow 13 does (found against
//!   its output; the stored Resample.c sources predate it), the vertical pass first, over only the
//!   columns the horizontal pass reads. A pass whose size does not change is skipped; the same
//!   size both ways is a copy.
//! - BICUBIC is Keys' cubic with a = −0.5 (support 2), LANCZOS is the 3-lobe windowed sinc
//!   (support 3), as Pillow defines them.

use std::borrow::Cow;

use super::RgbImage;

/// The resampling filters the pipeline uses (PIL's `Image.Resampling`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Filter {
    /// `Resampling.BICUBIC` (3): transformers' CLIP resize.
    Bicubic,
    /// `Resampling.LANCZOS` (1): diffusers' `VaeImageProcessor` resize.
    Lanczos,
}

impl Filter {
    /// The filter of a PIL resample code, as `preprocessor_config.json` stores it.
    pub fn from_pil_code(code: i64) -> Option<Self> {
        match code {
            3 => Some(Self::Bicubic),
            1 => Some(Self::Lanczos),
            _ => None,
        }
    }

    fn support(self) -> f64 {
        match self {
            Self::Bicubic => 2.0,
            Self::Lanczos => 3.0,
        }
    }

    fn eval(self, x: f64) -> f64 {
        match self {
            Self::Bicubic => {
                const A: f64 = -0.5;
                let x = x.abs();
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
            Self::Lanczos => {
                if (-3.0..3.0).contains(&x) {
                    sinc(x) * sinc(x / 3.0)
                } else {
                    0.0
                }
            }
        }
    }
}

fn sinc(x: f64) -> f64 {
    if x == 0.0 {
        return 1.0;
    }
    let x = x * std::f64::consts::PI;
    x.sin() / x
}

const PRECISION_BITS: u32 = 32 - 8 - 2;

/// One pass's fixed-point coefficients: for output `i`, taps `k[i*ksize .. i*ksize + n]` over
/// input `first .. first + n`, with `(first, n) = bounds[i]`.
struct Coeffs {
    ksize: usize,
    bounds: Vec<(usize, usize)>,
    k: Vec<i32>,
}

/// `precompute_coeffs(in_size, 0, in_size, out_size)` then `normalize_coeffs_8bpc`.
fn coeffs(in_size: usize, out_size: usize, filter: Filter) -> Coeffs {
    // box = (0, 0, w, h) as C floats: `(double)(in1 - in0)` is exact for any real size
    let in0 = 0.0f32;
    let in1 = in_size as f32;
    let scale = f64::from(in1 - in0) / out_size as f64;
    let filterscale = if scale < 1.0 { 1.0 } else { scale };
    let support = filter.support() * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let mut bounds = Vec::with_capacity(out_size);
    let mut k = vec![0i32; out_size * ksize];
    let mut w = vec![0f64; ksize];
    for xx in 0..out_size {
        let center = f64::from(in0) + (xx as f64 + 0.5) * scale;
        let ss = 1.0 / filterscale;
        // C's (int) truncates toward zero
        let xmin = ((center - support + 0.5) as i64).max(0);
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64);
        let n = (xmax - xmin).clamp(0, ksize as i64) as usize;
        let mut ww = 0.0;
        for (x, wx) in w.iter_mut().enumerate().take(n) {
            let v = filter.eval(((x as i64 + xmin) as f64 - center + 0.5) * ss);
            *wx = v;
            ww += v;
        }
        let row = &mut k[xx * ksize..xx * ksize + n];
        for (kx, &wx) in row.iter_mut().zip(&w) {
            let v = if ww != 0.0 { wx / ww } else { wx };
            let scaled = v * f64::from(1u32 << PRECISION_BITS);
            *kx = if v < 0.0 {
                (-0.5 + scaled) as i32
            } else {
                (0.5 + scaled) as i32
            };
        }
        bounds.push((xmin as usize, n));
    }
    Coeffs { ksize, bounds, k }
}

fn clip8(ss: i32) -> u8 {
    (ss >> PRECISION_BITS).clamp(0, 255) as u8
}

/// `ImagingResampleHorizontal_8bpc` over rows `offset .. offset + rows` of `src` (RGB).
fn horizontal(src: &[u8], src_w: usize, offset: usize, rows: usize, c: &Coeffs) -> Vec<u8> {
    let out_w = c.bounds.len();
    let mut out = vec![0u8; out_w * rows * 3];
    for yy in 0..rows {
        let line = &src[(yy + offset) * src_w * 3..(yy + offset + 1) * src_w * 3];
        for (xx, &(xmin, n)) in c.bounds.iter().enumerate() {
            let k = &c.k[xx * c.ksize..xx * c.ksize + n];
            let mut ss = [1i32 << (PRECISION_BITS - 1); 3];
            for (x, &kx) in k.iter().enumerate() {
                let p = (xmin + x) * 3;
                for ch in 0..3 {
                    ss[ch] = ss[ch].wrapping_add(i32::from(line[p + ch]).wrapping_mul(kx));
                }
            }
            let o = (yy * out_w + xx) * 3;
            for ch in 0..3 {
                out[o + ch] = clip8(ss[ch]);
            }
        }
    }
    out
}

/// `ImagingResampleVertical_8bpc` of `src` (RGB, `width` wide), bounds relative to its rows.
fn vertical(src: &[u8], width: usize, c: &Coeffs) -> Vec<u8> {
    let out_h = c.bounds.len();
    let stride = width * 3;
    let mut out = vec![0u8; stride * out_h];
    for (yy, &(ymin, n)) in c.bounds.iter().enumerate() {
        let k = &c.k[yy * c.ksize..yy * c.ksize + n];
        let orow = &mut out[yy * stride..(yy + 1) * stride];
        for (i, o) in orow.iter_mut().enumerate() {
            let mut ss = 1i32 << (PRECISION_BITS - 1);
            for (y, &ky) in k.iter().enumerate() {
                ss = ss.wrapping_add(i32::from(src[(ymin + y) * stride + i]).wrapping_mul(ky));
            }
            *o = clip8(ss);
        }
    }
    out
}

/// `image.resize((width, height), resample=filter)` (Pillow 13; `reducing_gap=None`). A zero
/// width or height gives an empty image (Pillow raises). The transparent key is kept, as
/// `Image._new` keeps `info`.
pub fn resize(image: &RgbImage, width: usize, height: usize, filter: Filter) -> RgbImage {
    let (in_w, in_h) = (image.width, image.height);
    let done = |w: usize, h: usize, pixels: Vec<u8>| RgbImage {
        width: w,
        height: h,
        pixels,
        transparent_key: image.transparent_key,
    };
    if width == 0 || height == 0 || in_w == 0 || in_h == 0 {
        return done(width, height, vec![0; width * height * 3]);
    }
    if (width, height) == (in_w, in_h) {
        return image.clone();
    }
    let need_horizontal = width != in_w;
    let need_vertical = height != in_h;
    let mut horiz = coeffs(in_w, width, filter);
    let mut vert = coeffs(in_h, height, filter);
    if need_horizontal && need_vertical && width > in_w && height < in_h {
        // Pillow 13 reduces first: the vertical pass, over only the columns the horizontal
        // pass reads, then the horizontal pass
        let first = horiz.bounds.first().map_or(0, |b| b.0);
        let last = horiz.bounds.last().map_or(0, |b| b.0 + b.1);
        let cols = last.saturating_sub(first);
        let mut strip = Vec::with_capacity(cols * in_h * 3);
        for row in image.pixels.chunks_exact(in_w * 3) {
            strip.extend_from_slice(&row[first * 3..last * 3]);
        }
        let tall = vertical(&strip, cols, &vert);
        for b in &mut horiz.bounds {
            b.0 -= first;
        }
        return done(width, height, horizontal(&tall, cols, 0, height, &horiz));
    }
    // the source rows the vertical pass reads
    let first = vert.bounds.first().map_or(0, |b| b.0);
    let last = vert.bounds.last().map_or(0, |b| b.0 + b.1);
    let (mut pixels, mut w) = (Cow::Borrowed(image.pixels.as_slice()), in_w);
    if need_horizontal {
        for b in &mut vert.bounds {
            b.0 -= first;
        }
        let rows = last.saturating_sub(first);
        pixels = Cow::Owned(horizontal(&image.pixels, in_w, first, rows, &horiz));
        w = width;
    }
    if need_vertical {
        pixels = Cow::Owned(vertical(&pixels, w, &vert));
    }
    done(width, height, pixels.into_owned())
}
