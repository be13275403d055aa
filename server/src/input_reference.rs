//! `input_reference`: the still image an image-to-video job starts from, as OpenAI's Videos API
//! takes it — an uploaded file part of a multipart/form-data create (what the `openai` SDK sends
//! for `input_reference=open(path, "rb")`), or an image URL, which here must be a base64 `data:`
//! URL (`data:image/png;base64,…`): a JSON string, or OpenAI's object form `{"image_url": …}`
//! (the SDK sends that as the multipart field `input_reference[image_url]`). The server fetches
//! no URLs and has no Files API (`file_id` is refused).
//!
//! Checked in this order, every error a 400 naming `input_reference` except the size (413): the
//! size (at most [`Limits::max_image_bytes`](crate::request::Limits), checked on the encoded
//! length before a data URL is decoded); the declared media type (`image/png` or `image/jpeg`;
//! `application/octet-stream` or none leaves the decision to the content's magic bytes); then the
//! file is decoded with the runtime's `load_image_bytes` (exactly diffusers' `load_image`: EXIF
//! orientation, modes converted or refused, dimensions over `MAX_PIXELS` refused from the header
//! before any pixel buffer exists), so a bad image fails the request, never the job.

use hyvideo::image::{ImageFormat, RgbImage, load_image_bytes};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::ApiError;

/// The field's name.
pub const FIELD: &str = "input_reference";

/// The media types accepted.
pub const CONTENT_TYPES: [&str; 2] = ["image/png", "image/jpeg"];

/// An image as it arrived, not yet checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputReference {
    pub bytes: Vec<u8>,
    /// The declared media type (the part's `Content-Type` or the data URL's), lowercased and
    /// without parameters; `None` when none was declared.
    pub content_type: Option<String>,
    /// How errors call it: the upload's file name (shortened, control characters dropped) or
    /// "the data URL".
    pub name: String,
}

/// What a job keeps about its image in its settings (the bytes themselves are stored by the
/// queue beside the job).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageInfo {
    /// "png" or "jpeg".
    pub format: String,
    pub width: usize,
    pub height: usize,
    /// Size of the stored file.
    pub bytes: usize,
}

/// The media type of a `Content-Type` value: lowercased, parameters dropped.
pub fn media_type(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// An uploaded file name as error messages show it: at most 64 characters, no control
/// characters ("the upload" when nothing is left).
pub fn shown_name(file_name: Option<&str>) -> String {
    let name: String = file_name
        .unwrap_or("")
        .chars()
        .filter(|c| !c.is_control())
        .take(64)
        .collect();
    if name.trim().is_empty() {
        "the upload".to_owned()
    } else {
        name
    }
}

/// The 413 of an image over `limit` bytes (`size`: how large it is, when known).
pub fn too_large(size: Option<usize>, limit: usize) -> ApiError {
    let what = match size {
        Some(n) => format!("the image is {n} bytes"),
        None => "the image is larger than that".to_owned(),
    };
    let mut e = ApiError::invalid(
        FIELD,
        format!(
            "{what}; at most {limit} bytes ({}) are accepted",
            mib(limit)
        ),
    );
    e.status = axum::http::StatusCode::PAYLOAD_TOO_LARGE;
    e.code = Some("image_too_large");
    e
}

fn mib(bytes: usize) -> String {
    if bytes >= 1 << 20 {
        let m = format!("{:.2}", bytes as f64 / f64::from(1u32 << 20));
        format!("{} MiB", m.trim_end_matches('0').trim_end_matches('.'))
    } else {
        format!("{:.1} KiB", bytes as f64 / 1024.0)
    }
}

/// The number of bytes base64 `text` decodes to (when it is valid base64).
fn decoded_len(text: &str) -> usize {
    let chars = text
        .bytes()
        .filter(|b| !matches!(b, b' ' | b'\t' | b'\r' | b'\n' | b'='))
        .count();
    chars / 4 * 3 + (chars % 4).saturating_sub(1)
}

/// The `input_reference` value of a JSON body (or the multipart text fields): a data URL string,
/// or OpenAI's object `{"image_url": …}` / `{"file_id": …}`.
pub fn from_json(v: &Value, max_bytes: usize) -> Result<InputReference, ApiError> {
    match v {
        Value::String(s) => from_url(s, max_bytes),
        Value::Object(m) => {
            if let Some(k) = m
                .keys()
                .find(|k| !["image_url", "file_id"].contains(&k.as_str()))
            {
                return Err(ApiError::invalid(
                    FIELD,
                    format!("unknown key `{k}` (give `image_url`: a data:image/png;base64,… URL)"),
                ));
            }
            match (m.get("image_url"), m.get("file_id")) {
                (Some(_), Some(_)) => Err(ApiError::invalid(
                    FIELD,
                    "give either image_url or file_id, not both",
                )),
                (Some(Value::String(s)), None) => from_url(s, max_bytes),
                (Some(_), None) => Err(ApiError::invalid(FIELD, "image_url must be a string")),
                (None, Some(_)) => Err(ApiError::invalid(
                    FIELD,
                    "file_id: this server has no Files API; upload the image as a file part or \
                     give image_url as a data:image/png;base64,… URL",
                )),
                (None, None) => Err(ApiError::invalid(
                    FIELD,
                    "needs image_url (a data:image/png;base64,… URL)",
                )),
            }
        }
        _ => Err(ApiError::invalid(
            FIELD,
            "must be an uploaded PNG or JPEG file (multipart/form-data), a \
             data:image/png;base64,… / data:image/jpeg;base64,… URL, or {\"image_url\": …}",
        )),
    }
}

/// A `data:` URL's content. Any other URL is refused (this server fetches nothing).
pub fn from_url(url: &str, max_bytes: usize) -> Result<InputReference, ApiError> {
    let url = url.trim();
    let scheme_ok = url.len() >= 5 && url.as_bytes()[..5].eq_ignore_ascii_case(b"data:");
    if !scheme_ok {
        let shown: String = url.chars().take(40).collect();
        return Err(ApiError::invalid(
            FIELD,
            format!(
                "`{shown}…` is not a data: URL; this server fetches no URLs: upload the image as a \
                 file or send it as data:image/png;base64,… (or data:image/jpeg;base64,…)"
            ),
        ));
    }
    let rest = &url[5..];
    let Some((header, data)) = rest.split_once(',') else {
        return Err(ApiError::invalid(
            FIELD,
            "the data URL has no `,` before its data",
        ));
    };
    let mut params = header.split(';');
    let mime = media_type(params.next().unwrap_or(""));
    if !params.any(|p| p.trim().eq_ignore_ascii_case("base64")) {
        return Err(ApiError::invalid(
            FIELD,
            "the data URL must be base64-encoded (data:image/png;base64,…)",
        ));
    }
    // Refused before decoding when the text alone says it is too large.
    let size = decoded_len(data);
    if size > max_bytes {
        return Err(too_large(Some(size), max_bytes));
    }
    let bytes = base64_decode(data).map_err(|e| ApiError::invalid(FIELD, e))?;
    if bytes.len() > max_bytes {
        return Err(too_large(Some(bytes.len()), max_bytes));
    }
    Ok(InputReference {
        bytes,
        content_type: (!mime.is_empty()).then_some(mime),
        name: "the data URL".to_owned(),
    })
}

/// Standard base64 (RFC 4648 §4; the URL-safe alphabet of §5 too), padding optional, ASCII
/// whitespace ignored.
pub fn base64_decode(text: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(text.len() / 4 * 3 + 3);
    let (mut acc, mut bits) = (0u32, 0u32);
    let mut padding = 0usize;
    for (i, c) in text.bytes().enumerate() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            b'=' => {
                padding += 1;
                continue;
            }
            b' ' | b'\t' | b'\r' | b'\n' => continue,
            _ => {
                return Err(format!(
                    "the data URL's base64 has a character that is not base64 at position {i}"
                ));
            }
        };
        if padding > 0 {
            return Err(format!(
                "the data URL's base64 goes on after its `=` padding (position {i})"
            ));
        }
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    // 2 or 4 bits left over are the zero padding of the last group; 6 cannot be.
    if bits == 6 || padding > 2 {
        return Err("the data URL's base64 is cut short (its length is not valid)".to_owned());
    }
    Ok(out)
}

/// Check and decode an image: size, declared type, then the decoder.
pub fn decode(r: &InputReference, max_bytes: usize) -> Result<(RgbImage, ImageInfo), ApiError> {
    if r.bytes.len() > max_bytes {
        return Err(too_large(Some(r.bytes.len()), max_bytes));
    }
    match r.content_type.as_deref() {
        None | Some("") | Some("application/octet-stream") => {}
        Some(t) if CONTENT_TYPES.contains(&t) => {}
        Some(t) => {
            return Err(ApiError::invalid(
                FIELD,
                format!(
                    "{}: content type `{t}`: only image/png and image/jpeg are accepted",
                    r.name
                ),
            ));
        }
    }
    let image =
        load_image_bytes(&r.bytes, &r.name).map_err(|e| ApiError::invalid(FIELD, e.to_string()))?;
    let format = if r.bytes.starts_with(b"\x89PNG") {
        ImageFormat::Png
    } else {
        ImageFormat::Jpeg
    };
    let info = ImageInfo {
        format: match format {
            ImageFormat::Png => "png",
            ImageFormat::Jpeg => "jpeg",
        }
        .to_owned(),
        width: image.width,
        height: image.height,
        bytes: r.bytes.len(),
    };
    Ok((image, info))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const PNG_1X1: &[u8] = &[
        0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x48, 0x44,
        0x52, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01, 0x08, 0x02, 0x00, 0x00, 0x00, 0x90,
        0x77, 0x53, 0xde, 0x00, 0x00, 0x00, 0x0c, 0x49, 0x44, 0x41, 0x54, 0x08, 0xd7, 0x63, 0xf8,
        0xcf, 0xc0, 0x00, 0x00, 0x03, 0x01, 0x01, 0x00, 0x18, 0xdd, 0x8d, 0xb0, 0x00, 0x00, 0x00,
        0x00, 0x49, 0x45, 0x4e, 0x44, 0xae, 0x42, 0x60, 0x82,
    ];

    fn b64(bytes: &[u8]) -> String {
        const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut s = String::new();
        for c in bytes.chunks(3) {
            let n = (u32::from(c[0]) << 16)
                | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
                | u32::from(*c.get(2).unwrap_or(&0));
            for i in 0..4 {
                if i <= c.len() {
                    s.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
                } else {
                    s.push('=');
                }
            }
        }
        s
    }

    #[test]
    fn base64_round_trips_and_refuses_garbage() {
        for n in 0..20 {
            let bytes: Vec<u8> = (0..n).map(|i| (i * 37 + 11) as u8).collect();
            let text = b64(&bytes);
            assert_eq!(base64_decode(&text).unwrap(), bytes, "{text}");
            assert_eq!(
                base64_decode(text.trim_end_matches('=')).unwrap(),
                bytes,
                "unpadded"
            );
        }
        assert_eq!(base64_decode("aGk=\n").unwrap(), b"hi");
        assert_eq!(base64_decode("-_8=").unwrap(), [0xfb, 0xff]);
        for bad in ["a", "aGk=aGk=", "aGk*", "a===", "abcde"] {
            assert!(base64_decode(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn data_urls_and_objects_decode_and_others_are_refused() {
        let url = format!("data:image/png;base64,{}", b64(PNG_1X1));
        let r = from_url(&url, 1 << 20).unwrap();
        assert_eq!(
            (r.bytes.as_slice(), r.content_type.as_deref()),
            (PNG_1X1, Some("image/png"))
        );
        let (img, info) = decode(&r, 1 << 20).unwrap();
        assert_eq!((img.width, img.height), (1, 1));
        assert_eq!(
            info,
            ImageInfo {
                format: "png".into(),
                width: 1,
                height: 1,
                bytes: PNG_1X1.len()
            }
        );
        let o = from_json(&json!({"image_url": url}), 1 << 20).unwrap();
        assert_eq!(o, r);
        let upper = format!("DATA:Image/PNG;BASE64,{}", b64(PNG_1X1));
        assert_eq!(from_url(&upper, 1 << 20).unwrap(), r);
        // Generic or missing types: the content decides.
        let r = from_url(&format!("data:;base64,{}", b64(PNG_1X1)), 1 << 20).unwrap();
        assert!(decode(&r, 1 << 20).is_ok());

        let refused = |v: Value, needle: &str| {
            let e = from_json(&v, 1 << 20).and_then(|r| decode(&r, 1 << 20).map(|_| ()));
            let e = e.expect_err(&v.to_string());
            assert_eq!(e.param.as_deref(), Some(FIELD), "{v}");
            assert_eq!(e.status, axum::http::StatusCode::BAD_REQUEST, "{v}");
            assert!(e.message.starts_with("input_reference: "), "{}", e.message);
            assert!(e.message.contains(needle), "{v}: {}", e.message);
        };
        refused(json!("https://example.com/cat.png"), "fetches no URLs");
        refused(json!("data:image/png,abc"), "base64");
        refused(json!("data:image/png;base64"), "no `,`");
        refused(json!("data:image/png;base64,@@@@"), "not base64");
        refused(
            json!(format!("data:image/gif;base64,{}", b64(PNG_1X1))),
            "content type `image/gif`",
        );
        refused(
            json!(format!("data:text/plain;base64,{}", b64(b"hello"))),
            "content type `text/plain`",
        );
        refused(
            json!(format!(
                "data:application/octet-stream;base64,{}",
                b64(b"hello")
            )),
            "not a PNG or JPEG image",
        );
        refused(
            json!(format!(
                "data:image/png;base64,{}",
                b64(&PNG_1X1[..PNG_1X1.len() - 20])
            )),
            "truncated PNG",
        );
        refused(json!({"file_id": "file_123"}), "no Files API");
        refused(json!({"url": "x"}), "unknown key `url`");
        refused(json!({}), "needs image_url");
        refused(json!(3), "must be an uploaded PNG or JPEG file");

        // Too large: a 413 naming the field, before decoding.
        let e = from_url(&url, 10).expect_err("too large");
        assert_eq!(e.status, axum::http::StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(e.param.as_deref(), Some(FIELD));
        assert!(e.message.contains("at most 10 bytes"), "{}", e.message);
        let up = InputReference {
            bytes: PNG_1X1.to_vec(),
            content_type: Some("image/png".into()),
            name: "a.png".into(),
        };
        assert_eq!(
            decode(&up, 10).unwrap_err().status,
            axum::http::StatusCode::PAYLOAD_TOO_LARGE
        );
    }

    #[test]
    fn names_and_types_are_normalised() {
        assert_eq!(media_type(" Image/PNG ; charset=x"), "image/png");
        assert_eq!(shown_name(Some("cat\n.png")), "cat.png");
        assert_eq!(shown_name(None), "the upload");
        assert_eq!(shown_name(Some(&"x".repeat(100))).len(), 64);
        assert_eq!(mib(20 << 20), "20 MiB");
        assert_eq!(mib(2048), "2.0 KiB");
    }
}
