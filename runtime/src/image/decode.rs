//! Decoding an image file to [`RgbImage`] as `diffusers.utils.load_image` does it with Pillow 13:
//! `PIL.Image.open` (content sniffing), `PIL.ImageOps.exif_transpose`, `.convert("RGB")`.
//!
//! - Formats, by magic bytes (not by extension): PNG (the `png` crate; every colour type and bit
//!   depth, Adam7 interlacing) and JPEG (Huffman baseline, extended and progressive, 8-bit:
//!   [`super::jpeg`], which reproduces libjpeg-turbo's decoding as Pillow runs it).
//! - `convert("RGB")` (PIL `Image.convert`, `libImaging/Convert.c`, `PngImagePlugin`'s modes):
//!   RGB as is; RGBA and LA drop the alpha without compositing; L, LA, 1-bit ("1") and 2/4-bit
//!   grey replicate the grey (2/4-bit scaled to 0..255 as Pillow's unpackers do); palettes are
//!   looked up (entries past the PLTE are black); 16-bit RGB, RGBA and grey+alpha keep each
//!   sample's high byte (Pillow's `RGB;16B`/`RGBA;16B`/`LA;16B` unpackers; Pillow opens 16-bit
//!   grey+alpha as RGBA). A PNG tRNS key colour, or a palette's single fully transparent entry,
//!   is kept as [`RgbImage::transparent_key`] (Pillow keeps it in `info["transparency"]`).
//! - Refused: 16-bit greyscale (Pillow mode `I;16`, whose `convert("RGB")` clips to 255), CMYK
//!   and YCCK JPEGs, JPEGs of other than 1 or 3 components or 8 bits, arithmetic-coded and
//!   lossless JPEGs; anything over [`MAX_PIXELS`] (checked from the header, before decoding).
//! - `exif_transpose` (PIL `ImageOps.exif_transpose`, `Image.getexif`, `TiffImagePlugin`): the
//!   orientation is tag 0x0112 of the EXIF IFD0 — a JPEG's APP1 `Exif` segments (Pillow joins
//!   several), a PNG's eXIf chunk (before or after the image data) or, lacking that, a PNG text
//!   chunk "Raw profile type exif" (ImageMagick's hex dump); without an EXIF orientation, the
//!   first `tiff:Orientation="N"` or `tiff:Orientation>N` in the XMP (a JPEG's APP1 XMP, a PNG's
//!   `XML:com.adobe.xmp` text). All 8 orientations. Malformed metadata means no orientation (where
//!   Pillow would warn, or for a few malformed PNG cases raise).
//!
//! The pixels are Pillow's, PNG and JPEG alike, on every test image.

use std::borrow::Cow;
use std::io::Cursor;
use std::path::Path;

use super::{ImageError, ImageFormat, MAX_PIXELS, RgbImage, jpeg};

/// An EXIF orientation (tag 0x0112), and the transpose `PIL.ImageOps.exif_transpose` applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Orientation {
    /// 1: as stored.
    Normal,
    /// 2: `FLIP_LEFT_RIGHT`.
    FlipHorizontal,
    /// 3: `ROTATE_180`.
    Rotate180,
    /// 4: `FLIP_TOP_BOTTOM`.
    FlipVertical,
    /// 5: `TRANSPOSE` (mirror about the main diagonal).
    Transpose,
    /// 6: `ROTATE_270` (a quarter turn clockwise).
    Rotate90Clockwise,
    /// 7: `TRANSVERSE` (mirror about the anti-diagonal).
    Transverse,
    /// 8: `ROTATE_90` (a quarter turn counter-clockwise).
    Rotate90CounterClockwise,
}

impl Orientation {
    /// The orientation of an EXIF value; `None` for anything but 1..=8 (Pillow then leaves the
    /// image as it is).
    pub fn from_exif(value: i64) -> Option<Self> {
        Some(match value {
            1 => Self::Normal,
            2 => Self::FlipHorizontal,
            3 => Self::Rotate180,
            4 => Self::FlipVertical,
            5 => Self::Transpose,
            6 => Self::Rotate90Clockwise,
            7 => Self::Transverse,
            8 => Self::Rotate90CounterClockwise,
            _ => return None,
        })
    }

    /// `image` as `exif_transpose` returns it.
    pub fn apply(self, image: RgbImage) -> RgbImage {
        let (w, h) = (image.width, image.height);
        let swaps = matches!(
            self,
            Self::Transpose
                | Self::Rotate90Clockwise
                | Self::Transverse
                | Self::Rotate90CounterClockwise
        );
        if self == Self::Normal {
            return image;
        }
        let (ow, oh) = if swaps { (h, w) } else { (w, h) };
        let mut out = vec![0u8; image.pixels.len()];
        for yo in 0..oh {
            for xo in 0..ow {
                // the source pixel of output pixel (xo, yo)
                let (xs, ys) = match self {
                    Self::Normal => (xo, yo),
                    Self::FlipHorizontal => (w - 1 - xo, yo),
                    Self::Rotate180 => (w - 1 - xo, h - 1 - yo),
                    Self::FlipVertical => (xo, h - 1 - yo),
                    Self::Transpose => (yo, xo),
                    Self::Rotate90Clockwise => (yo, h - 1 - xo),
                    Self::Transverse => (w - 1 - yo, h - 1 - xo),
                    Self::Rotate90CounterClockwise => (w - 1 - yo, xo),
                };
                let s = (ys * w + xs) * 3;
                let d = (yo * ow + xo) * 3;
                out[d..d + 3].copy_from_slice(&image.pixels[s..s + 3]);
            }
        }
        RgbImage {
            width: ow,
            height: oh,
            pixels: out,
            transparent_key: image.transparent_key,
        }
    }
}

/// `load_image(path)`: reads the file and decodes it (errors name the path).
pub fn load_image(path: &Path) -> Result<RgbImage, ImageError> {
    let name = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|source| ImageError::Unreadable {
        name: name.clone(),
        source,
    })?;
    load_image_bytes(&bytes, &name)
}

/// `load_image` of in-memory file content (an upload); `name` is used in errors.
pub fn load_image_bytes(bytes: &[u8], name: &str) -> Result<RgbImage, ImageError> {
    let format = sniff(bytes).ok_or_else(|| ImageError::UnknownFormat {
        name: name.to_string(),
        start: describe_start(bytes),
    })?;
    let (image, meta) = match format {
        ImageFormat::Png => decode_png(bytes, name)?,
        ImageFormat::Jpeg => decode_jpeg(bytes, name)?,
    };
    Ok(match meta.orientation() {
        Some(o) => o.apply(image),
        None => image,
    })
}

fn sniff(bytes: &[u8]) -> Option<ImageFormat> {
    if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some(ImageFormat::Png)
    } else if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        // JpegImagePlugin._accept: b"\xff\xd8\xff"
        Some(ImageFormat::Jpeg)
    } else {
        None
    }
}

fn describe_start(bytes: &[u8]) -> String {
    if bytes.is_empty() {
        return "nothing (empty)".to_string();
    }
    let hex: Vec<String> = bytes.iter().take(8).map(|b| format!("{b:02x}")).collect();
    format!("bytes {}", hex.join(" "))
}

fn check_size(name: &str, width: u64, height: u64) -> Result<(), ImageError> {
    if width == 0 || height == 0 {
        return Err(ImageError::ZeroSize {
            name: name.to_string(),
            width,
            height,
        });
    }
    let pixels = width.saturating_mul(height);
    if pixels > MAX_PIXELS {
        return Err(ImageError::TooLarge {
            name: name.to_string(),
            width,
            height,
            pixels,
            limit: MAX_PIXELS,
        });
    }
    Ok(())
}

// ------------------------------------------------------------------------------------------------
// metadata: where the orientation comes from

/// The orientation sources of one file, as Pillow's `info` holds them.
#[derive(Default)]
struct Metadata {
    /// `info["exif"]`: TIFF data, optionally after an `Exif\0\0` prefix.
    exif: Option<Vec<u8>>,
    /// `info["Raw profile type exif"]` (PNG text).
    raw_profile_exif: Option<String>,
    /// `info["XML:com.adobe.xmp"]` (PNG) or `info["xmp"]` (JPEG).
    xmp: Option<Vec<u8>>,
}

impl Metadata {
    /// `Image.getexif().get(Orientation)` then `exif_transpose`'s table.
    fn orientation(&self) -> Option<Orientation> {
        let exif = match &self.exif {
            Some(e) => Some(Cow::Borrowed(e.as_slice())),
            None => self
                .raw_profile_exif
                .as_deref()
                .and_then(raw_profile_bytes)
                .map(Cow::Owned),
        };
        match exif.as_deref().and_then(exif_orientation) {
            Some(TagValue::Int(v)) => Orientation::from_exif(v),
            Some(TagValue::Other) => None,
            None => self
                .xmp
                .as_deref()
                .and_then(xmp_orientation)
                .and_then(|v| Orientation::from_exif(i64::from(v))),
        }
    }
}

/// The value of a TIFF tag as Pillow's `Exif.get` returns it: an int, or something else (a
/// tuple, bytes, a string, a rational) that matches no orientation.
#[derive(Debug, PartialEq, Eq)]
enum TagValue {
    Int(i64),
    Other,
}

/// Tag 0x0112 of IFD0 of EXIF/TIFF data (`Image.Exif.load`, `ImageFileDirectory_v2.load`): the
/// first entry of a known type whose data can be read; entries after a truncation are lost.
/// `None` if there is no such entry or the data is not TIFF.
fn exif_orientation(data: &[u8]) -> Option<TagValue> {
    // Exif.load: re.sub(b"^(Exif\x00\x00){1,2}", b"", data)
    let mut d = data;
    for _ in 0..2 {
        d = d.strip_prefix(b"Exif\0\0").unwrap_or(d);
    }
    let little = match d.get(0..4)? {
        b"II*\0" => true,
        b"MM\0*" => false,
        _ => return None,
    };
    let u16_at = |o: usize| -> Option<u16> {
        let b = d.get(o..o.checked_add(2)?)?;
        Some(if little {
            u16::from_le_bytes([b[0], b[1]])
        } else {
            u16::from_be_bytes([b[0], b[1]])
        })
    };
    let u32_at = |o: usize| -> Option<u32> {
        let b = d.get(o..o.checked_add(4)?)?;
        let a = [b[0], b[1], b[2], b[3]];
        Some(if little {
            u32::from_le_bytes(a)
        } else {
            u32::from_be_bytes(a)
        })
    };
    let ifd = usize::try_from(u32_at(4)?).ok()?;
    let count = u16_at(ifd)?;
    for i in 0..usize::from(count) {
        let e = ifd + 2 + 12 * i;
        let (Some(tag), Some(typ), Some(n)) = (u16_at(e), u16_at(e + 2), u32_at(e + 4)) else {
            return None; // truncated IFD: Pillow stops with a warning
        };
        d.get(e + 8..e + 12)?;
        if tag != 0x0112 {
            continue;
        }
        // TiffImagePlugin's _load_dispatch: (unit size, integer-valued?)
        let (unit, int_signed): (u64, Option<bool>) = match typ {
            1 => (1, Some(false)),    // BYTE
            3 => (2, Some(false)),    // SHORT
            4 => (4, Some(false)),    // LONG
            6 => (1, Some(true)),     // SBYTE
            8 => (2, Some(true)),     // SSHORT
            9 => (4, Some(true)),     // SLONG
            2 | 7 => (1, None),       // ASCII, UNDEFINED
            5 | 10 | 12 => (8, None), // RATIONAL, SRATIONAL, DOUBLE
            11 | 13 => (4, None),     // FLOAT, IFD
            16..=18 => (8, None),     // LONG8, SLONG8, IFD8
            _ => continue,            // unsupported type: skipped
        };
        let size = unit * u64::from(n);
        if size == 0 {
            continue; // no data: skipped
        }
        let value_at = if size > 4 {
            let off = usize::try_from(u32_at(e + 8)?).ok()?;
            let end = usize::try_from(size).ok().and_then(|s| off.checked_add(s));
            if end.is_none_or(|end| end > d.len()) {
                continue; // data outside the stream: skipped
            }
            off
        } else {
            e + 8
        };
        return Some(match (int_signed, n) {
            (Some(signed), 1) => {
                let v = match (unit, signed) {
                    (1, false) => i64::from(*d.get(value_at)?),
                    (1, true) => i64::from(*d.get(value_at)? as i8),
                    (2, false) => i64::from(u16_at(value_at)?),
                    (2, true) => i64::from(u16_at(value_at)? as i16),
                    (_, false) => i64::from(u32_at(value_at)?),
                    (_, true) => i64::from(u32_at(value_at)? as i32),
                };
                TagValue::Int(v)
            }
            _ => TagValue::Other,
        });
    }
    None
}

/// The EXIF bytes of ImageMagick's "Raw profile type exif" text: `bytes.fromhex` of the lines
/// after the third (`"\nexif\n    SIZE\nHEX..."`). `None` if it is not hex.
fn raw_profile_bytes(text: &str) -> Option<Vec<u8>> {
    let hex: String = text.split('\n').skip(3).collect();
    let mut out = Vec::with_capacity(hex.len() / 2);
    let mut digits = hex.bytes().peekable();
    loop {
        while digits.peek().is_some_and(|b| b.is_ascii_whitespace()) {
            digits.next();
        }
        let Some(hi) = digits.next() else { break };
        let lo = digits.next()?;
        let v = |c: u8| (c as char).to_digit(16);
        out.push((v(hi)? * 16 + v(lo)?) as u8);
    }
    Some(out)
}

/// `re.search(r'tiff:Orientation(="|>)([0-9])', xmp)` → the digit.
fn xmp_orientation(xmp: &[u8]) -> Option<u8> {
    const KEY: &[u8] = b"tiff:Orientation";
    let mut start = 0;
    while let Some(pos) = find(&xmp[start..], KEY) {
        let rest = &xmp[start + pos + KEY.len()..];
        let digit = match rest {
            [b'=', b'"', d, ..] | [b'>', d, ..] if d.is_ascii_digit() => Some(*d - b'0'),
            _ => None,
        };
        if digit.is_some() {
            return digit;
        }
        start += pos + 1;
    }
    None
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

// ------------------------------------------------------------------------------------------------
// PNG

fn png_error(name: &str, e: png::DecodingError) -> ImageError {
    let name = name.to_string();
    let format = ImageFormat::Png;
    match e {
        png::DecodingError::IoError(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            ImageError::Truncated {
                name,
                format,
                detail: "the file ends before the image data does".to_string(),
            }
        }
        png::DecodingError::LimitsExceeded => ImageError::Corrupt {
            name,
            format,
            detail: "a chunk needs more memory than the pixel limit allows".to_string(),
        },
        e => ImageError::Corrupt {
            name,
            format,
            detail: e.to_string(),
        },
    }
}

/// The chunks read from the raw bytes rather than through the `png` crate: the header (to
/// check the size before anything is decoded), tRNS as stored (the crate keeps only the low
/// bytes) and the last eXIf (Pillow keeps the last; the crate refuses a second one).
#[derive(Default)]
struct PngChunks {
    size: Option<(u32, u32)>,
    trns: Option<Vec<u8>>,
    exif: Option<Vec<u8>>,
}

fn png_chunks(bytes: &[u8]) -> PngChunks {
    let mut out = PngChunks::default();
    let mut pos = 8;
    let mut seen_idat = false;
    while let Some(head) = bytes.get(pos..pos + 8) {
        let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
        let kind = &head[4..8];
        let Some(data) = bytes.get(pos + 8..(pos + 8).saturating_add(len)) else {
            break;
        };
        match kind {
            b"IHDR" if out.size.is_none() && data.len() >= 8 => {
                out.size = Some((
                    u32::from_be_bytes([data[0], data[1], data[2], data[3]]),
                    u32::from_be_bytes([data[4], data[5], data[6], data[7]]),
                ));
            }
            b"tRNS" if !seen_idat && out.trns.is_none() => out.trns = Some(data.to_vec()),
            b"eXIf" => out.exif = Some(data.to_vec()),
            b"IDAT" => seen_idat = true,
            b"IEND" => break,
            _ => {}
        }
        pos = (pos + 12).saturating_add(len);
    }
    out
}

fn decode_png(bytes: &[u8], name: &str) -> Result<(RgbImage, Metadata), ImageError> {
    let chunks = png_chunks(bytes);
    if let Some((w, h)) = chunks.size {
        check_size(name, u64::from(w), u64::from(h))?;
    }
    // room for the largest accepted image at 8 bytes a pixel (16-bit RGBA), plus the chunk data
    let limit = usize::try_from(MAX_PIXELS * 8 + (64 << 20)).unwrap_or(usize::MAX);
    let mut decoder =
        png::Decoder::new_with_limits(Cursor::new(bytes), png::Limits { bytes: limit });
    decoder.set_transformations(png::Transformations::IDENTITY);
    decoder.set_ignore_text_chunk(false);
    let mut reader = decoder.read_info().map_err(|e| png_error(name, e))?;
    let (width, height) = {
        let info = reader.info();
        (info.width, info.height)
    };
    check_size(name, u64::from(width), u64::from(height))?;
    let Some(size) = reader.output_buffer_size() else {
        return Err(ImageError::TooLarge {
            name: name.to_string(),
            width: u64::from(width),
            height: u64::from(height),
            pixels: u64::from(width) * u64::from(height),
            limit: MAX_PIXELS,
        });
    };
    let mut buf = vec![0u8; size];
    let frame = reader
        .next_frame(&mut buf)
        .map_err(|e| png_error(name, e))?;
    // the chunks after the image data (text) — Pillow reads them in load_end and tolerates
    // their absence or damage
    let _ = reader.finish();
    let info = reader.info();
    let (w, h) = (width as usize, height as usize);
    let line = frame.line_size;
    if line == 0 {
        return Err(ImageError::Corrupt {
            name: name.to_string(),
            format: ImageFormat::Png,
            detail: "empty rows".to_string(),
        });
    }
    let depth = frame.bit_depth as u8;
    let rows = buf.chunks(line).take(h);
    if buf.len() < line * h {
        return Err(ImageError::Corrupt {
            name: name.to_string(),
            format: ImageFormat::Png,
            detail: "the decoded image is smaller than its header says".to_string(),
        });
    }
    let trns = chunks.trns.as_deref();
    let u16_be = |b: &[u8], i: usize| -> u16 {
        match b.get(i..i + 2) {
            Some(s) => u16::from_be_bytes([s[0], s[1]]),
            None => 0,
        }
    };
    let mut pixels = Vec::with_capacity(w * h * 3);
    let mut key = None;
    let unsupported = |mode: &str, why: &'static str| ImageError::UnsupportedMode {
        name: name.to_string(),
        mode: mode.to_string(),
        why,
    };
    use png::ColorType as C;
    match (frame.color_type, depth) {
        (C::Grayscale, 16) => {
            return Err(unsupported(
                "I;16",
                "16-bit greyscale (Pillow's convert(\"RGB\") of it clips every value over 255)",
            ));
        }
        (C::Grayscale, d) => {
            // Pillow: 1-bit is mode "1" (0/255), 2- and 4-bit are L scaled by 255/(2^d-1)
            let max = (1u32 << d) - 1;
            for row in rows {
                for x in 0..w {
                    let v = sample(row, x, d);
                    let g = (v * 255 / max) as u8;
                    pixels.extend_from_slice(&[g, g, g]);
                }
            }
            if let Some(t) = trns.filter(|t| t.len() >= 2) {
                let t = u16_be(t, 0);
                key = Some(if d == 1 {
                    // mode "1": info["transparency"] = 255 if t else 0, which
                    // convert_transparent("RGBA", int) reads as the colour (int, 0, 0)
                    [if t != 0 { 255 } else { 0 }, 0, 0]
                } else {
                    // L: the key is put into a 1x1 L image (clipped) and converted to RGB
                    let g = t.min(255) as u8;
                    [g, g, g]
                });
            }
        }
        (C::Rgb, d) => {
            let step = if d == 16 { 2 } else { 1 };
            for row in rows {
                for s in 0..w * 3 {
                    pixels.push(row[s * step]); // 16-bit: the high (first) byte
                }
            }
            if let Some(t) = trns.filter(|t| t.len() >= 6) {
                key = Some([u16_be(t, 0) as u8, u16_be(t, 2) as u8, u16_be(t, 4) as u8]);
            }
        }
        (C::Indexed, d) => {
            let mut palette = [0u8; 256 * 3];
            if let Some(p) = info.palette.as_deref() {
                let n = p.len().min(palette.len());
                palette[..n].copy_from_slice(&p[..n]);
            }
            for row in rows {
                for x in 0..w {
                    let i = sample(row, x, d) as usize;
                    pixels.extend_from_slice(&palette[i * 3..i * 3 + 3]);
                }
            }
            // PngImagePlugin: a tRNS of one 0 among 255s is the int index, else per-entry bytes
            // (which convert("RGB") warns about and drops)
            if let Some(t) = trns {
                let zeros = t.iter().filter(|&&a| a == 0).count();
                let i = t.iter().position(|&a| a == 0).unwrap_or(0);
                if zeros == 1 && t.iter().all(|&a| a == 0 || a == 255) && i < 256 {
                    key = Some([palette[i * 3], palette[i * 3 + 1], palette[i * 3 + 2]]);
                }
            }
        }
        (C::GrayscaleAlpha, d) => {
            let step = if d == 16 { 4 } else { 2 };
            for row in rows {
                for x in 0..w {
                    let g = row[x * step];
                    pixels.extend_from_slice(&[g, g, g]);
                }
            }
        }
        (C::Rgba, d) => {
            let step = if d == 16 { 2 } else { 1 };
            for row in rows {
                for x in 0..w {
                    for c in 0..3 {
                        pixels.push(row[(x * 4 + c) * step]);
                    }
                }
            }
        }
    }
    let mut meta = Metadata {
        exif: chunks.exif,
        ..Metadata::default()
    };
    let mut text = |key: &str, value: String| match key {
        "Raw profile type exif" => meta.raw_profile_exif = Some(value),
        "XML:com.adobe.xmp" => meta.xmp = Some(value.into_bytes()),
        _ => {}
    };
    for t in &info.uncompressed_latin1_text {
        text(&t.keyword, t.text.clone());
    }
    for t in &info.compressed_latin1_text {
        if let Ok(v) = t.get_text() {
            text(&t.keyword, v);
        }
    }
    for t in &info.utf8_text {
        if let Ok(v) = t.get_text() {
            text(&t.keyword, v);
        }
    }
    let image = RgbImage {
        width: w,
        height: h,
        pixels,
        transparent_key: key,
    };
    Ok((image, meta))
}

/// Sample `x` of a row packed at `depth` bits (1, 2, 4, 8; for 16 the high byte).
fn sample(row: &[u8], x: usize, depth: u8) -> u32 {
    match depth {
        8 => u32::from(row[x]),
        16 => u32::from(row[x * 2]),
        d => {
            let per = 8 / usize::from(d);
            let byte = row[x / per];
            let shift = 8 - usize::from(d) * (x % per + 1);
            u32::from(byte >> shift) & ((1 << d) - 1)
        }
    }
}

// ------------------------------------------------------------------------------------------------
// JPEG

/// What `JpegImagePlugin` reads from the markers before the first scan.
struct JpegHeader {
    width: u16,
    height: u16,
    components: u8,
    precision: u8,
    sof: u8,
}

fn decode_jpeg(bytes: &[u8], name: &str) -> Result<(RgbImage, Metadata), ImageError> {
    let err = |kind: fn(String, ImageFormat, String) -> ImageError, detail: &str| {
        kind(name.to_string(), ImageFormat::Jpeg, detail.to_string())
    };
    let truncated = |n, f, d| ImageError::Truncated {
        name: n,
        format: f,
        detail: d,
    };
    let corrupt = |n, f, d| ImageError::Corrupt {
        name: n,
        format: f,
        detail: d,
    };
    let (header, meta) = scan_jpeg(bytes).map_err(|e| match e {
        ScanError::Truncated(d) => err(truncated, d),
        ScanError::Corrupt(d) => err(corrupt, d),
    })?;
    check_size(name, u64::from(header.width), u64::from(header.height))?;
    let unsupported = |detail: String| ImageError::UnsupportedFormat {
        name: name.to_string(),
        format: ImageFormat::Jpeg,
        detail,
    };
    match header.sof {
        0xC0..=0xC2 => {}
        0xC3 | 0xC7 | 0xCB | 0xCF => return Err(unsupported("lossless JPEG".to_string())),
        0xC9..=0xCA | 0xCD..=0xCE => {
            return Err(unsupported("arithmetic-coded JPEG".to_string()));
        }
        s => {
            return Err(unsupported(format!(
                "hierarchical JPEG (SOF marker {s:02X})"
            )));
        }
    }
    if header.precision != 8 {
        return Err(unsupported(format!(
            "{}-bit samples (Pillow reads only 8-bit JPEGs)",
            header.precision
        )));
    }
    if header.components == 4 {
        return Err(ImageError::UnsupportedMode {
            name: name.to_string(),
            mode: "CMYK".to_string(),
            why: "a 4-component (CMYK or YCCK) JPEG",
        });
    }
    if header.components != 1 && header.components != 3 {
        return Err(ImageError::UnsupportedMode {
            name: name.to_string(),
            mode: format!("{} components", header.components),
            why: "a JPEG of other than 1 or 3 components",
        });
    }
    let decoded = jpeg::decode(bytes).map_err(|e| match e {
        jpeg::JpegError::Truncated(d) => err(truncated, d),
        jpeg::JpegError::Corrupt(d) => err(corrupt, d),
        jpeg::JpegError::Unsupported(d) => unsupported(d.to_string()),
    })?;
    let (w, h) = (decoded.width, decoded.height);
    let pixels = match decoded.components {
        1 => decoded
            .samples
            .iter()
            .flat_map(|&g| [g, g, g])
            .collect::<Vec<u8>>(),
        _ => decoded.samples,
    };
    let image = RgbImage {
        width: w,
        height: h,
        pixels,
        transparent_key: None,
    };
    Ok((image, meta))
}

enum ScanError {
    Truncated(&'static str),
    Corrupt(&'static str),
}

/// Walks the markers up to the first scan as `JpegImageFile._open` does (skipping junk between
/// markers and fill bytes), collecting the frame header, the APP1 Exif segments (joined as Pillow
/// joins them: the first whole, later ones without their `Exif\0\0`) and the last APP1 XMP. A
/// file without an EOI marker after its first scan is truncated (Pillow: "image file is
/// truncated").
fn scan_jpeg(bytes: &[u8]) -> Result<(JpegHeader, Metadata), ScanError> {
    const XMP: &[u8] = b"http://ns.adobe.com/xap/1.0/\0";
    let mut meta = Metadata::default();
    let mut header = None;
    let mut pos = 2;
    loop {
        // find the next marker
        while pos < bytes.len() && bytes[pos] != 0xFF {
            pos += 1;
        }
        while pos < bytes.len() && bytes[pos] == 0xFF {
            pos += 1;
        }
        let Some(&marker) = bytes.get(pos) else {
            return Err(ScanError::Truncated("the file ends before the image data"));
        };
        pos += 1;
        if marker == 0x00 || (0xD0..=0xD8).contains(&marker) || marker == 0x01 {
            continue; // stuffed byte, RSTn, SOI, TEM: no length
        }
        if marker == 0xD9 {
            return Err(ScanError::Corrupt("end of image before any image data"));
        }
        let Some(len) = bytes.get(pos..pos + 2) else {
            return Err(ScanError::Truncated(
                "the file ends inside a marker segment",
            ));
        };
        let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
        if len < 2 {
            return Err(ScanError::Corrupt("a marker segment of length < 2"));
        }
        let Some(seg) = bytes.get(pos + 2..pos + len) else {
            return Err(ScanError::Truncated(
                "the file ends inside a marker segment",
            ));
        };
        pos += len;
        match marker {
            0xE1 if seg.starts_with(b"Exif\0\0") => match &mut meta.exif {
                Some(e) => e.extend_from_slice(&seg[6..]),
                None => meta.exif = Some(seg.to_vec()),
            },
            0xE1 if seg.starts_with(XMP) => meta.xmp = Some(seg[XMP.len()..].to_vec()),
            0xC0..=0xC3 | 0xC5..=0xC7 | 0xC9..=0xCB | 0xCD..=0xCF => {
                if seg.len() < 6 {
                    return Err(ScanError::Corrupt("a frame header shorter than 6 bytes"));
                }
                header = Some(JpegHeader {
                    precision: seg[0],
                    height: u16::from_be_bytes([seg[1], seg[2]]),
                    width: u16::from_be_bytes([seg[3], seg[4]]),
                    components: seg[5],
                    sof: marker,
                });
            }
            0xDA => {
                let Some(header) = header else {
                    return Err(ScanError::Corrupt("a scan before the frame header"));
                };
                if find(&bytes[pos..], &[0xFF, 0xD9]).is_none() {
                    return Err(ScanError::Truncated(
                        "no end-of-image marker after the scans",
                    ));
                }
                return Ok((header, meta));
            }
            _ => {}
        }
    }
}
