//! One memory-mapped `.safetensors` file with a validated header.
//!
//! Mirrors candle's `safetensors::MmapedSafetensors`: the file is mapped with `memmap2` and
//! tensors are borrowed slices of the map, so a 26 GB transformer is never read into memory.
//! Unlike a plain `SafeTensors::deserialize`, every problem with the header is reported as
//! [`CheckpointError::CorruptFile`] naming the file and, where it applies, the tensor:
//! a file shorter than its header says (a truncated download), a header length beyond the
//! file, a header that is not JSON, data offsets that are reversed, disagree with dtype × shape,
//! run past the end of the data section or overlap another tensor.
//!
//! Layout (<https://github.com/huggingface/safetensors>): `u64` little-endian header length
//! `N`, `N` bytes of JSON `{name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__":
//! {..}}`, then the data section; offsets are relative to the data section.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};

use super::error::{CheckpointError, Result};

/// Largest header accepted (the safetensors reference implementation's limit).
pub const MAX_HEADER_LEN: u64 = 100_000_000;

/// One tensor entry of a safetensors header, with absolute byte offsets into the file.
#[derive(Debug, Clone)]
pub(crate) struct RawTensor {
    pub name: String,
    /// dtype string as written in the header (`"BF16"`, `"I64"`, ...).
    pub dtype: String,
    pub shape: Vec<usize>,
    /// Absolute byte range of the tensor's data in the file.
    pub range: Range<usize>,
}

/// A memory-mapped, validated safetensors file.
pub(crate) struct MappedFile {
    pub path: PathBuf,
    /// Kept open for positioned reads: streaming a tensor with `pread` into a reused buffer
    /// leaves its pages in the page cache, not in this process's resident set (reading through
    /// the map would keep every touched page resident until unmapped).
    file: File,
    mmap: Mmap,
    /// 8 + header length: where the data section starts.
    pub header_end: usize,
    pub metadata: BTreeMap<String, String>,
    /// Tensors in header order.
    pub tensors: Vec<RawTensor>,
}

impl fmt::Debug for MappedFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MappedFile")
            .field("path", &self.path)
            .field("len", &self.mmap.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

impl MappedFile {
    /// Map and validate `path`.
    pub fn open(path: &Path) -> Result<MappedFile> {
        let file = File::open(path).map_err(|e| CheckpointError::io(path, e))?;
        let len = file
            .metadata()
            .map_err(|e| CheckpointError::io(path, e))?
            .len();
        if len < 8 {
            return Err(CheckpointError::corrupt(
                path,
                format!("file is {len} bytes, shorter than the 8-byte header length"),
            ));
        }
        // SAFETY: the map is read-only and private to this process. As with every mmap-based
        // loader (candle, safetensors' `safe_open`), modifying or truncating the file while it
        // is mapped is not supported; we validate sizes once, on open.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| CheckpointError::io(path, e))?;
        let parsed = parse(path, &mmap)?;
        Ok(MappedFile {
            path: path.to_path_buf(),
            file,
            mmap,
            header_end: parsed.header_end,
            metadata: parsed.metadata,
            tensors: parsed.tensors,
        })
    }

    /// File size in bytes.
    pub fn len(&self) -> u64 {
        self.mmap.len() as u64
    }

    /// The 8-byte length prefix plus the JSON header.
    pub fn header_bytes(&self) -> &[u8] {
        &self.mmap[..self.header_end]
    }

    /// Bytes of a byte range previously validated against this file.
    pub fn slice(&self, range: Range<usize>) -> &[u8] {
        &self.mmap[range]
    }

    /// Read `range` with positioned reads in pieces of at most `chunk` bytes, handing each
    /// piece to `f`; one buffer is reused, so memory stays at `chunk` whatever the range.
    pub fn read_chunks(
        &self,
        range: Range<usize>,
        chunk: usize,
        mut f: impl FnMut(&[u8]) -> std::io::Result<()>,
    ) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        let mut buf = vec![0u8; chunk.min(range.len())];
        let mut at = range.start;
        while at < range.end {
            let n = chunk.min(range.end - at);
            self.file.read_exact_at(&mut buf[..n], at as u64)?;
            f(&buf[..n])?;
            at += n;
        }
        Ok(())
    }
}

/// Result of parsing a header.
#[derive(Debug)]
pub(crate) struct ParsedHeader {
    pub header_end: usize,
    pub metadata: BTreeMap<String, String>,
    pub tensors: Vec<RawTensor>,
}

#[derive(Deserialize)]
struct HeaderEntry {
    dtype: String,
    shape: Vec<usize>,
    data_offsets: (u64, u64),
}

/// Header JSON, keeping the file's tensor order and rejecting duplicate names.
struct Header {
    metadata: BTreeMap<String, String>,
    entries: Vec<(String, HeaderEntry)>,
}

impl<'de> Deserialize<'de> for Header {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct HeaderVisitor;
        impl<'de> Visitor<'de> for HeaderVisitor {
            type Value = Header;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object of tensor entries")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Header, A::Error> {
                let mut metadata = None;
                let mut entries: Vec<(String, HeaderEntry)> = Vec::new();
                let mut seen = std::collections::HashSet::new();
                while let Some(key) = map.next_key::<String>()? {
                    if key == "__metadata__" {
                        if metadata.is_some() {
                            return Err(de::Error::custom("duplicate `__metadata__`"));
                        }
                        metadata = Some(map.next_value::<BTreeMap<String, String>>()?);
                    } else {
                        if !seen.insert(key.clone()) {
                            return Err(de::Error::custom(format!(
                                "duplicate tensor name `{key}`"
                            )));
                        }
                        let entry = map
                            .next_value::<HeaderEntry>()
                            .map_err(|e| de::Error::custom(format!("tensor `{key}`: {e}")))?;
                        entries.push((key, entry));
                    }
                }
                Ok(Header {
                    metadata: metadata.unwrap_or_default(),
                    entries,
                })
            }
        }
        deserializer.deserialize_map(HeaderVisitor)
    }
}

/// Size in bits of a safetensors dtype string, `None` for strings safetensors doesn't know.
fn dtype_bits(dtype: &str) -> Option<usize> {
    let d: ::safetensors::Dtype =
        serde_json::from_value(serde_json::Value::String(dtype.to_owned())).ok()?;
    Some(d.bitsize())
}

/// Parse and validate the header of a safetensors file held in `bytes` (the whole file).
pub(crate) fn parse(path: &Path, bytes: &[u8]) -> Result<ParsedHeader> {
    let corrupt = |reason: String| CheckpointError::corrupt(path, reason);
    let file_len = bytes.len() as u64;
    if file_len < 8 {
        return Err(corrupt(format!(
            "file is {file_len} bytes, shorter than the 8-byte header length"
        )));
    }
    let n = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"));
    if n > MAX_HEADER_LEN {
        return Err(corrupt(format!(
            "header length {n} exceeds the {MAX_HEADER_LEN}-byte limit (not a safetensors file?)"
        )));
    }
    if n > file_len - 8 {
        return Err(corrupt(format!(
            "header length {n} runs past the end of the file ({file_len} bytes)"
        )));
    }
    let header_end = 8 + n as usize;
    let header: Header = serde_json::from_slice(&bytes[8..header_end])
        .map_err(|e| corrupt(format!("header is not valid JSON: {e}")))?;
    let data_len = file_len - header_end as u64;

    let mut tensors = Vec::with_capacity(header.entries.len());
    let mut max_end = 0u64;
    let mut furthest = None;
    for (name, entry) in header.entries {
        let (begin, end) = entry.data_offsets;
        if begin > end {
            return Err(corrupt(format!(
                "tensor `{name}`: data_offsets [{begin}, {end}] are reversed"
            )));
        }
        if let Some(bits) = dtype_bits(&entry.dtype) {
            let total_bits = entry
                .shape
                .iter()
                .try_fold(bits as u64, |acc, &d| acc.checked_mul(d as u64));
            let Some(total_bits) = total_bits else {
                return Err(corrupt(format!(
                    "tensor `{name}`: shape {:?} overflows",
                    entry.shape
                )));
            };
            if total_bits % 8 != 0 || total_bits / 8 != end - begin {
                return Err(corrupt(format!(
                    "tensor `{name}`: dtype {} with shape {:?} needs {} bytes, but \
                     data_offsets [{begin}, {end}] span {} bytes",
                    entry.dtype,
                    entry.shape,
                    total_bits as f64 / 8.0,
                    end - begin
                )));
            }
        }
        if end > max_end {
            max_end = end;
            furthest = Some(name.clone());
        }
        tensors.push((name, entry.dtype, entry.shape, begin, end));
    }
    if max_end > data_len {
        return Err(corrupt(format!(
            "file is truncated: the header places tensor `{}` up to byte {max_end} of the data \
             section, so the file should be at least {} bytes, but it is {file_len} bytes",
            furthest.unwrap_or_default(),
            header_end as u64 + max_end,
        )));
    }

    // Overlap check over non-empty tensors sorted by start offset.
    let mut order: Vec<usize> = (0..tensors.len())
        .filter(|&i| tensors[i].3 < tensors[i].4)
        .collect();
    order.sort_by_key(|&i| (tensors[i].3, tensors[i].4));
    for pair in order.windows(2) {
        let (a, b) = (&tensors[pair[0]], &tensors[pair[1]]);
        if b.3 < a.4 {
            return Err(corrupt(format!(
                "tensors `{}` (bytes {}..{}) and `{}` (bytes {}..{}) overlap",
                a.0, a.3, a.4, b.0, b.3, b.4
            )));
        }
    }

    let tensors = tensors
        .into_iter()
        .map(|(name, dtype, shape, begin, end)| RawTensor {
            name,
            dtype,
            shape,
            // In range of `bytes` (checked above), so these fit in usize.
            range: header_end + begin as usize..header_end + end as usize,
        })
        .collect();
    Ok(ParsedHeader {
        header_end,
        metadata: header.metadata,
        tensors,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Build safetensors bytes by hand: `(name, dtype, shape, data)`; offsets are laid out
    /// contiguously in the given order.
    pub(crate) fn build(tensors: &[(&str, &str, &[usize], &[u8])]) -> Vec<u8> {
        let mut header = serde_json::Map::new();
        let mut offset = 0usize;
        for (name, dtype, shape, data) in tensors {
            header.insert(
                name.to_string(),
                serde_json::json!({
                    "dtype": dtype,
                    "shape": shape,
                    "data_offsets": [offset, offset + data.len()],
                }),
            );
            offset += data.len();
        }
        header.insert("__metadata__".into(), serde_json::json!({"format": "pt"}));
        let json = serde_json::to_string(&header).unwrap();
        build_raw(
            &json,
            &tensors
                .iter()
                .flat_map(|t| t.3.iter().copied())
                .collect::<Vec<_>>(),
        )
    }

    /// Header JSON text + data section, with the length prefix.
    pub(crate) fn build_raw(json: &str, data: &[u8]) -> Vec<u8> {
        let mut out = (json.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(json.as_bytes());
        out.extend_from_slice(data);
        out
    }

    fn reason(r: Result<ParsedHeader>) -> String {
        match r {
            Err(CheckpointError::CorruptFile { file, reason }) => {
                assert_eq!(file, Path::new("x.safetensors"));
                reason
            }
            other => panic!("expected CorruptFile, got {other:?}"),
        }
    }

    const P: &str = "x.safetensors";

    #[test]
    fn parses_a_valid_header() {
        let bytes = build(&[
            ("a", "F32", &[2], &[0, 0, 128, 63, 0, 0, 0, 64]),
            ("b", "I64", &[1], &[7, 0, 0, 0, 0, 0, 0, 0]),
            ("empty", "BF16", &[0, 3], &[]),
        ]);
        let h = parse(Path::new(P), &bytes).unwrap();
        assert_eq!(h.metadata.get("format").map(String::as_str), Some("pt"));
        assert_eq!(h.tensors.len(), 3);
        let a = h.tensors.iter().find(|t| t.name == "a").unwrap();
        assert_eq!(&bytes[a.range.clone()], &[0, 0, 128, 63, 0, 0, 0, 64]);
        assert_eq!(a.shape, vec![2]);
    }

    #[test]
    fn rejects_truncated_files() {
        let bytes = build(&[("a", "F32", &[4], &[0u8; 16])]);
        let r = reason(parse(Path::new(P), &bytes[..bytes.len() - 3]));
        assert!(r.contains("truncated") && r.contains("`a`"), "{r}");
        assert!(
            r.contains(&format!("at least {} bytes", bytes.len())),
            "{r}"
        );
    }

    #[test]
    fn rejects_bad_header_lengths_and_json() {
        assert!(reason(parse(Path::new(P), &[1, 2, 3])).contains("shorter than"));
        let mut bytes = build(&[("a", "F32", &[1], &[0u8; 4])]);
        let len = bytes.len() as u64;
        bytes[..8].copy_from_slice(&len.to_le_bytes());
        assert!(reason(parse(Path::new(P), &bytes)).contains("past the end of the file"));
        bytes[..8].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(reason(parse(Path::new(P), &bytes)).contains("limit"));
        let bad = build_raw("{\"a\": {\"dtype\": \"F32\", ", &[]);
        assert!(reason(parse(Path::new(P), &bad)).contains("not valid JSON"));
        let not_obj = build_raw("[1, 2]", &[]);
        assert!(reason(parse(Path::new(P), &not_obj)).contains("not valid JSON"));
        let missing = build_raw(r#"{"a": {"dtype": "F32", "shape": [1]}}"#, &[0; 4]);
        let r = reason(parse(Path::new(P), &missing));
        assert!(r.contains("`a`") && r.contains("data_offsets"), "{r}");
        let dup = build_raw(
            r#"{"a": {"dtype": "F32", "shape": [], "data_offsets": [0, 4]},
                "a": {"dtype": "F32", "shape": [], "data_offsets": [4, 8]}}"#,
            &[0; 8],
        );
        assert!(reason(parse(Path::new(P), &dup)).contains("duplicate tensor name `a`"));
    }

    #[test]
    fn rejects_bad_offsets() {
        let overlap = build_raw(
            r#"{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}"#,
            &[0; 12],
        );
        let r = reason(parse(Path::new(P), &overlap));
        assert!(
            r.contains("overlap") && r.contains("`a`") && r.contains("`b`"),
            "{r}"
        );
        let reversed = build_raw(
            r#"{"a": {"dtype": "F32", "shape": [0], "data_offsets": [8, 4]}}"#,
            &[0; 8],
        );
        assert!(reason(parse(Path::new(P), &reversed)).contains("reversed"));
        let wrong_size = build_raw(
            r#"{"a": {"dtype": "BF16", "shape": [3], "data_offsets": [0, 4]}}"#,
            &[0; 4],
        );
        let r = reason(parse(Path::new(P), &wrong_size));
        assert!(r.contains("needs 6 bytes") && r.contains("span 4"), "{r}");
        let out_of_range = build_raw(
            r#"{"a": {"dtype": "U8", "shape": [4], "data_offsets": [100, 104]}}"#,
            &[0; 8],
        );
        assert!(reason(parse(Path::new(P), &out_of_range)).contains("truncated"));
        let huge = build_raw(
            r#"{"a": {"dtype": "F32", "shape": [4294967296, 4294967296], "data_offsets": [0, 4]}}"#,
            &[0; 4],
        );
        assert!(reason(parse(Path::new(P), &huge)).contains("overflows"));
    }
}
