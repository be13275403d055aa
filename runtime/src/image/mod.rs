//! Image input for image-to-video (HunyuanVideo-I2V): the still image a user gives, loaded and
//! preprocessed exactly as the Python reference does it, so that the VAE and the vision tower see
//! the same numbers.
//!
//! The reference (diffusers' `HunyuanVideoImageToVideoPipeline`) takes the PIL image returned by
//! `diffusers.utils.load_image(path)` — `PIL.Image.open`, `PIL.ImageOps.exif_transpose`,
//! `.convert("RGB")` — and preprocesses it twice:
//! - the VAE side, `VideoProcessor.preprocess(image, height, width)`: Pillow LANCZOS resize to
//!   exactly height×width, `/255 → 2x−1` in float32 ([`vae_pixels`]);
//! - the vision side, transformers' `CLIPImageProcessor` (its PIL backend): shortest edge to
//!   `size.shortest_edge` with BICUBIC, centre crop, rescale and normalise ([`clip_pixels`],
//!   configured by a [`ClipImageConfig`] read from `preprocessor_config.json`).
//!
//! Submodules, each mirroring one piece of upstream code:
//! - [`decode`]: PNG (the `png` crate) and JPEG (`jpeg`, a decoder reproducing libjpeg-turbo's
//!   islow IDCT, fancy upsampling and YCbCr tables) to [`RgbImage`], with Pillow's mode handling
//!   of `convert("RGB")` and the EXIF/XMP orientation of `exif_transpose`;
//! - [`resample`]: a port of Pillow's `src/libImaging/Resample.c` (8-bit fixed point), as
//!   `Image.resize` calls it;
//! - [`preprocess`]: diffusers' `VaeImageProcessor.preprocess` and transformers'
//!   `CLIPImageProcessorPil` (`image_processing_backends.PilBackend`, `image_transforms`).

pub mod decode;
mod jpeg;
pub mod preprocess;
pub mod resample;
#[cfg(test)]
mod tests;

use std::fmt;

pub use decode::{Orientation, load_image, load_image_bytes};
pub use preprocess::{
    ClipConfigError, ClipImageConfig, ClipResize, VAE_SCALE_FACTOR, clip_pixels, vae_pixels,
};
pub use resample::{Filter, resize};

/// The largest image accepted, in pixels (64 MiP, 67,108,864 — e.g. 8192×8192): checked from the
/// header, before any pixel buffer is allocated. (Pillow warns from 89,478,485 pixels and refuses
/// twice that.)
pub const MAX_PIXELS: u64 = 64 * 1024 * 1024;

/// An 8-bit RGB image, pixels interleaved row by row (`pixels.len() == width * height * 3`),
/// as `np.asarray(pil_image)` of a mode "RGB" image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RgbImage {
    pub width: usize,
    pub height: usize,
    pub pixels: Vec<u8>,
    /// The colour Pillow keeps in `image.info["transparency"]` after `convert("RGB")` (a PNG
    /// tRNS key colour, or a palette's single fully transparent entry), reduced as Pillow's
    /// `convert("RGBA")` reduces it (each component's low byte). Only the vision side reads it:
    /// transformers' `convert_to_rgb` composites the pixels of exactly this colour onto white. The
    /// VAE side ignores it, as diffusers does.
    pub transparent_key: Option<[u8; 3]>,
}

impl RgbImage {
    /// `PIL.Image.new("RGB", (width, height), 0)`: what the pipeline encodes for the negative
    /// prompt's image.
    pub fn black(width: usize, height: usize) -> Self {
        Self {
            width,
            height,
            pixels: vec![0; width * height * 3],
            transparent_key: None,
        }
    }

    /// An image from interleaved RGB bytes; `None` unless `pixels.len() == width * height * 3`.
    pub fn from_pixels(width: usize, height: usize, pixels: Vec<u8>) -> Option<Self> {
        let len = width.checked_mul(height)?.checked_mul(3)?;
        (pixels.len() == len).then_some(Self {
            width,
            height,
            pixels,
            transparent_key: None,
        })
    }

    /// The pixel at column `x`, row `y` (`None` outside the image).
    pub fn pixel(&self, x: usize, y: usize) -> Option<[u8; 3]> {
        if x >= self.width || y >= self.height {
            return None;
        }
        let i = (y * self.width + x) * 3;
        Some([self.pixels[i], self.pixels[i + 1], self.pixels[i + 2]])
    }
}

/// The container formats read, detected from the content's magic bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageFormat {
    Png,
    Jpeg,
}

impl fmt::Display for ImageFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ImageFormat::Png => "PNG",
            ImageFormat::Jpeg => "JPEG",
        })
    }
}

/// Why an image could not be loaded; `name` is the path, or the name given with the bytes.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{name}: cannot read the file: {source}")]
    Unreadable {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{name}: not a PNG or JPEG image (the content starts with {start})")]
    UnknownFormat { name: String, start: String },
    #[error("{name}: truncated {format} data ({detail})")]
    Truncated {
        name: String,
        format: ImageFormat,
        detail: String,
    },
    #[error("{name}: corrupt {format} data ({detail})")]
    Corrupt {
        name: String,
        format: ImageFormat,
        detail: String,
    },
    #[error("{name}: unsupported {format} variant: {detail}")]
    UnsupportedFormat {
        name: String,
        format: ImageFormat,
        detail: String,
    },
    #[error("{name}: unsupported image mode {mode}: {why}")]
    UnsupportedMode {
        name: String,
        mode: String,
        why: &'static str,
    },
    #[error("{name}: the image has zero size ({width}x{height})")]
    ZeroSize {
        name: String,
        width: u64,
        height: u64,
    },
    #[error(
        "{name}: the image is {width}x{height} = {pixels} pixels, over the limit of {limit} pixels"
    )]
    TooLarge {
        name: String,
        width: u64,
        height: u64,
        pixels: u64,
        limit: u64,
    },
}
