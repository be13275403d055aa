//! A checkpoint: one safetensors file, a sharded set behind an index, or a directory holding
//! either — resolved the way diffusers' / transformers' `from_pretrained` finds weights.
//!
//! Mirrors candle's `MmapedSafetensors::multi` + `hub_load_safetensors`: every shard is
//! memory-mapped once, the index's `weight_map` says which shard holds which tensor, and
//! lookups return borrowed [`TensorView`]s (or owned [`TensorStream`]s) over the maps.
//!
//! Directory resolution, in order: `diffusion_pytorch_model.safetensors.index.json`,
//! `diffusion_pytorch_model.safetensors`, `model.safetensors.index.json`, `model.safetensors`,
//! else the only `*.safetensors.index.json`, else the only `*.safetensors`.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io::Write;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

use super::dtype::{DType, TargetDType, bytes_to_f32_vec};
use super::error::{CheckpointError, Result};
use super::hash::{FileIdentity, combine_identities};
use super::safetensors::MappedFile;
use super::stream::{TensorStream, write_converted};

/// Weight file names tried in a directory, in order (diffusers first, then transformers).
pub const PREFERRED_FILES: [&str; 4] = [
    "diffusion_pytorch_model.safetensors.index.json",
    "diffusion_pytorch_model.safetensors",
    "model.safetensors.index.json",
    "model.safetensors",
];

const INDEX_SUFFIX: &str = ".safetensors.index.json";
const SAFETENSORS_SUFFIX: &str = ".safetensors";

#[derive(Debug, Clone, Copy)]
struct Slot {
    file: usize,
    tensor: usize,
}

/// An opened (memory-mapped, validated) checkpoint.
pub struct Checkpoint {
    /// The single file or the index that was opened.
    source: PathBuf,
    /// Index file, for sharded checkpoints.
    index: Option<PathBuf>,
    files: Vec<Arc<MappedFile>>,
    tensors: BTreeMap<String, Slot>,
}

impl fmt::Debug for Checkpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Checkpoint")
            .field("source", &self.source)
            .field("files", &self.files.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

#[derive(Deserialize)]
struct IndexFile {
    weight_map: BTreeMap<String, String>,
}

/// Which file a path denotes: a single safetensors file or an index.
fn resolve(path: &Path) -> Result<PathBuf> {
    let meta = std::fs::metadata(path).map_err(|e| CheckpointError::io(path, e))?;
    if !meta.is_dir() {
        return Ok(path.to_path_buf());
    }
    for name in PREFERRED_FILES {
        let candidate = path.join(name);
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    let mut indexes = Vec::new();
    let mut singles = Vec::new();
    for entry in std::fs::read_dir(path).map_err(|e| CheckpointError::io(path, e))? {
        let entry = entry.map_err(|e| CheckpointError::io(path, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !entry.path().is_file() {
            continue;
        }
        if name.ends_with(INDEX_SUFFIX) {
            indexes.push(name);
        } else if name.ends_with(SAFETENSORS_SUFFIX) {
            singles.push(name);
        }
    }
    indexes.sort();
    singles.sort();
    let pick = |names: Vec<String>, what: &str| -> Result<PathBuf> {
        match names.as_slice() {
            [one] => Ok(path.join(one)),
            _ => Err(CheckpointError::NotFound {
                path: path.to_path_buf(),
                reason: format!(
                    "several {what} files ({}) and none of the standard names ({}); \
                     pass the one to use",
                    names.join(", "),
                    PREFERRED_FILES.join(", ")
                ),
            }),
        }
    };
    if !indexes.is_empty() {
        pick(indexes, "*.safetensors.index.json")
    } else if !singles.is_empty() {
        pick(singles, "*.safetensors")
    } else {
        Err(CheckpointError::NotFound {
            path: path.to_path_buf(),
            reason: "directory holds no *.safetensors or *.safetensors.index.json file".into(),
        })
    }
}

fn is_index(path: &Path) -> bool {
    path.file_name()
        .map(|n| n.to_string_lossy().ends_with(".json"))
        .unwrap_or(false)
}

impl Checkpoint {
    /// Open a `.safetensors` file, a `*.safetensors.index.json` (sharded), or a directory
    /// containing either (see the module docs for the order).
    pub fn open(path: impl AsRef<Path>) -> Result<Checkpoint> {
        let file = resolve(path.as_ref())?;
        if is_index(&file) {
            Self::open_index(&file)
        } else {
            Self::open_single(&file)
        }
    }

    fn open_single(path: &Path) -> Result<Checkpoint> {
        let mapped = MappedFile::open(path)?;
        let tensors = mapped
            .tensors
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), Slot { file: 0, tensor: i }))
            .collect();
        Ok(Checkpoint {
            source: path.to_path_buf(),
            index: None,
            files: vec![Arc::new(mapped)],
            tensors,
        })
    }

    fn open_index(index: &Path) -> Result<Checkpoint> {
        let text = std::fs::read(index).map_err(|e| CheckpointError::io(index, e))?;
        let parsed: IndexFile = serde_json::from_slice(&text).map_err(|e| {
            CheckpointError::corrupt(index, format!("not a safetensors index: {e}"))
        })?;
        let dir = index.parent().unwrap_or(Path::new(""));
        let mut shard_ids: BTreeMap<&str, usize> = BTreeMap::new();
        let mut files = Vec::new();
        let mut lookups: Vec<HashMap<&str, usize>> = Vec::new();
        let mut shard_names: Vec<&str> = parsed.weight_map.values().map(String::as_str).collect();
        shard_names.sort_unstable();
        shard_names.dedup();
        for shard in shard_names {
            let rel = Path::new(shard);
            let plain = rel.components().all(|c| matches!(c, Component::Normal(_)));
            if !plain {
                return Err(CheckpointError::corrupt(
                    index,
                    format!("weight_map names shard `{shard}`, which is not a relative path"),
                ));
            }
            let mapped = MappedFile::open(&dir.join(rel))?;
            shard_ids.insert(shard, files.len());
            files.push(mapped);
        }
        for f in &files {
            lookups.push(
                f.tensors
                    .iter()
                    .enumerate()
                    .map(|(i, t)| (t.name.as_str(), i))
                    .collect(),
            );
        }
        let mut tensors = BTreeMap::new();
        for (name, shard) in &parsed.weight_map {
            let file = shard_ids[shard.as_str()];
            let Some(&tensor) = lookups[file].get(name.as_str()) else {
                return Err(CheckpointError::corrupt(
                    index,
                    format!("weight_map puts tensor `{name}` in `{shard}`, which does not hold it"),
                ));
            };
            tensors.insert(name.clone(), Slot { file, tensor });
        }
        drop(lookups);
        Ok(Checkpoint {
            source: index.to_path_buf(),
            index: Some(index.to_path_buf()),
            files: files.into_iter().map(Arc::new).collect(),
            tensors,
        })
    }

    /// The file that was opened: the single `.safetensors` file or the index.
    pub fn path(&self) -> &Path {
        &self.source
    }

    /// Whether this checkpoint is sharded (opened through an index).
    pub fn is_sharded(&self) -> bool {
        self.index.is_some()
    }

    /// The safetensors files backing the checkpoint (shards in name order).
    pub fn files(&self) -> Vec<&Path> {
        self.files.iter().map(|f| f.path.as_path()).collect()
    }

    /// Tensor names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> + '_ {
        self.tensors.keys().map(String::as_str)
    }

    /// Number of tensors.
    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// The first of `prefixes` under which the checkpoint holds `key` (`""` = no prefix), or
    /// `Err` with a sentence naming the file, the keys looked for and its first keys.
    pub fn probe_prefix(
        &self,
        prefixes: &[&'static str],
        key: &str,
    ) -> std::result::Result<&'static str, String> {
        let full = |p: &str| {
            if p.is_empty() {
                key.to_owned()
            } else {
                format!("{p}.{key}")
            }
        };
        if let Some(p) = prefixes.iter().find(|p| self.contains(&full(p))) {
            return Ok(p);
        }
        let sample: Vec<&str> = self.names().take(5).collect();
        Err(format!(
            "{} holds none of {}; first keys: {}",
            self.path().display(),
            prefixes
                .iter()
                .map(|p| format!("`{}`", full(p)))
                .collect::<Vec<_>>()
                .join(", "),
            if sample.is_empty() {
                "(none)".to_owned()
            } else {
                sample.join(", ")
            }
        ))
    }

    /// `__metadata__` of the first file (single-file checkpoints carry e.g. `format: pt`).
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.files[0].metadata
    }

    /// Name, stored dtype string, shape and file of a tensor — for any dtype, including
    /// ones [`get`](Self::get) refuses (for `inspect`-style listings).
    pub fn info(&self, name: &str) -> Option<TensorInfo<'_>> {
        let slot = *self.tensors.get(name)?;
        let file = &self.files[slot.file];
        let t = &file.tensors[slot.tensor];
        Some(TensorInfo {
            name: &t.name,
            dtype: &t.dtype,
            shape: &t.shape,
            file: &file.path,
        })
    }

    /// A tensor, borrowed from the memory map.
    pub fn get(&self, name: &str) -> Result<TensorView<'_>> {
        let Some(&slot) = self.tensors.get(name) else {
            return Err(CheckpointError::MissingTensor {
                name: name.to_owned(),
                file: self.source.clone(),
            });
        };
        let file = &self.files[slot.file];
        let t = &file.tensors[slot.tensor];
        let Some(dtype) = DType::from_safetensors(&t.dtype) else {
            return Err(CheckpointError::UnsupportedDtype {
                file: file.path.clone(),
                tensor: t.name.clone(),
                dtype: t.dtype.clone(),
            });
        };
        Ok(TensorView {
            name: &t.name,
            dtype,
            shape: &t.shape,
            bytes: file.slice(t.range.clone()),
            file: &file.path,
            mapped: file,
            range: t.range.clone(),
        })
    }

    /// Cheap identities of every file (index first, then shards): size + header hash.
    pub fn identities(&self) -> Result<Vec<FileIdentity>> {
        let mut ids = Vec::with_capacity(self.files.len() + 1);
        if let Some(index) = &self.index {
            let bytes = std::fs::read(index).map_err(|e| CheckpointError::io(index, e))?;
            ids.push(FileIdentity::new(index, bytes.len() as u64, &bytes));
        }
        for f in &self.files {
            ids.push(FileIdentity::new(&f.path, f.len(), f.header_bytes()));
        }
        Ok(ids)
    }

    /// One hex hash over [`identities`](Self::identities), for manifests.
    pub fn identity_hash(&self) -> Result<String> {
        Ok(combine_identities(&self.identities()?))
    }
}

/// Description of a stored tensor, whatever its dtype.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TensorInfo<'a> {
    pub name: &'a str,
    /// The safetensors dtype string (`"BF16"`, `"I64"`, ...).
    pub dtype: &'a str,
    pub shape: &'a [usize],
    pub file: &'a Path,
}

/// A tensor of a supported dtype, borrowed from the checkpoint's memory map.
#[derive(Clone)]
pub struct TensorView<'a> {
    /// Full (dotted) tensor name.
    pub name: &'a str,
    pub dtype: DType,
    pub shape: &'a [usize],
    /// Little-endian element bytes, straight from the map (any alignment).
    pub bytes: &'a [u8],
    /// The safetensors file holding the tensor.
    pub file: &'a Path,
    mapped: &'a Arc<MappedFile>,
    range: std::ops::Range<usize>,
}

impl fmt::Debug for TensorView<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TensorView")
            .field("name", &self.name)
            .field("dtype", &self.dtype)
            .field("shape", &self.shape)
            .field("file", &self.file)
            .finish_non_exhaustive()
    }
}

impl<'a> TensorView<'a> {
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Check the shape, passing the view through (`ck.get(n)?.expect_shape(&[c, 3])?`).
    pub fn expect_shape(self, expected: &[usize]) -> Result<TensorView<'a>> {
        if self.shape == expected {
            Ok(self)
        } else {
            Err(CheckpointError::ShapeMismatch {
                name: self.name.to_owned(),
                file: self.file.to_path_buf(),
                expected: expected.to_vec(),
                found: self.shape.to_vec(),
            })
        }
    }

    /// All elements as f32 (exact for every supported dtype). Allocates the whole tensor:
    /// for small tensors and tests; stream large ones with [`write_as`](Self::write_as).
    pub fn to_f32_vec(&self) -> Vec<f32> {
        bytes_to_f32_vec(self.dtype, self.bytes)
    }

    /// The single value of a one-element tensor (shape `[]` or `[1]`, e.g. an fp8 scale).
    pub fn to_scalar_f32(&self) -> Result<f32> {
        if self.numel() != 1 {
            return Err(CheckpointError::ShapeMismatch {
                name: self.name.to_owned(),
                file: self.file.to_path_buf(),
                expected: vec![],
                found: self.shape.to_vec(),
            });
        }
        Ok(self.to_f32_vec()[0])
    }

    /// Write the tensor as `target` into `w`, converting in bounded chunks (raw copy when the
    /// dtype is already `target`).
    pub fn write_as(&self, target: TargetDType, w: &mut dyn Write) -> std::io::Result<()> {
        write_converted(self.bytes, self.dtype, target, None, w)
    }

    /// An owned, lifetime-free stream of this tensor converted to `target` (boxable as the
    /// ONNX writer's `TensorSource`).
    pub fn stream(&self, target: TargetDType) -> TensorStream {
        TensorStream::new(
            Arc::clone(self.mapped),
            self.range.clone(),
            self.name.to_owned(),
            self.shape.to_vec(),
            self.dtype,
            target,
        )
    }

    /// Stream of this F8_E4M3 tensor dequantised with a per-tensor scale into `target`
    /// (`w = fp8 * scale` computed in `target`, see [`TensorStream::dequantized`]).
    pub fn dequantized_stream(&self, scale: f32, target: TargetDType) -> Result<TensorStream> {
        self.stream(target).dequantized(scale, target)
    }
}

#[cfg(test)]
mod tests {
    use super::super::dtype::{F8E4M3_TO_F32, encode_from_f32, f32_to_bf16, f32_to_f16};
    use super::super::safetensors::tests::build;
    use super::*;

    fn le_f32(v: &[f32]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_from_f32(DType::F32, v, &mut out);
        out
    }

    fn le_u16(v: &[u16]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    /// A file with one tensor of each dtype, written with the `safetensors` crate itself.
    fn write_all_dtypes(path: &Path) {
        use ::safetensors::Dtype;
        use ::safetensors::tensor::TensorView as StView;
        let f32_data = le_f32(&[1.0, -2.5, 3.0e-3, 65504.0, 1.0e-8, -0.0]);
        let f16_data = le_u16(&[0x3c00, 0xc000, 0x0001, 0x7bff]);
        let bf16_data = le_u16(&[0x3f80, 0xc040, 0x0001, 0x7f7f]);
        let f8_data = vec![0x7e, 0x01, 0x38, 0xfe, 0x08, 0x00];
        let i32_data = vec![1, 0, 0, 0, 2, 0, 0, 0];
        let f64_data = 1.5f64.to_le_bytes().to_vec();
        let tensors = vec![
            (
                "w.f32",
                StView::new(Dtype::F32, vec![2, 3], &f32_data).unwrap(),
            ),
            (
                "w.f16",
                StView::new(Dtype::F16, vec![4], &f16_data).unwrap(),
            ),
            (
                "w.bf16",
                StView::new(Dtype::BF16, vec![2, 2], &bf16_data).unwrap(),
            ),
            (
                "w.f8",
                StView::new(Dtype::F8_E4M3, vec![3, 2], &f8_data).unwrap(),
            ),
            ("ids", StView::new(Dtype::I32, vec![2], &i32_data).unwrap()),
            ("d", StView::new(Dtype::F64, vec![1], &f64_data).unwrap()),
        ];
        ::safetensors::serialize_to_file(tensors, None, path).unwrap();
    }

    #[test]
    fn reads_every_supported_dtype_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.safetensors");
        write_all_dtypes(&path);
        let ck = Checkpoint::open(&path).unwrap();
        assert_eq!(ck.len(), 6);
        assert_eq!(
            ck.names().collect::<Vec<_>>(),
            vec!["d", "ids", "w.bf16", "w.f16", "w.f32", "w.f8"]
        );
        assert!(!ck.is_sharded());

        let t = ck.get("w.f32").unwrap();
        assert_eq!((t.dtype, t.shape), (DType::F32, &[2usize, 3][..]));
        assert_eq!(t.file, path.as_path());
        assert_eq!(
            t.to_f32_vec(),
            vec![1.0, -2.5, 3.0e-3, 65504.0, 1.0e-8, -0.0]
        );

        let t = ck.get("w.f16").unwrap();
        assert_eq!(t.to_f32_vec(), vec![1.0, -2.0, 2f32.powi(-24), 65504.0]);

        let t = ck.get("w.bf16").unwrap();
        let v = t.to_f32_vec();
        assert_eq!(v[..2], [1.0, -3.0]);
        assert_eq!(v[2].to_bits(), 0x0001_0000);
        assert_eq!(v[3], f32::from_bits(0x7f7f_0000));

        let t = ck.get("w.f8").unwrap();
        assert_eq!(t.dtype, DType::F8E4M3);
        let v = t.to_f32_vec();
        assert_eq!(
            v,
            vec![448.0, 2f32.powi(-9), 1.0, -448.0, 2f32.powi(-6), 0.0]
        );
    }

    #[test]
    fn unsupported_dtypes_name_file_tensor_and_dtype() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.safetensors");
        write_all_dtypes(&path);
        let ck = Checkpoint::open(&path).unwrap();
        for (name, dtype) in [("ids", "I32"), ("d", "F64")] {
            match ck.get(name) {
                Err(CheckpointError::UnsupportedDtype {
                    file,
                    tensor,
                    dtype: d,
                }) => {
                    assert_eq!(file, path);
                    assert_eq!(tensor, name);
                    assert_eq!(d, dtype);
                }
                other => panic!("{other:?}"),
            }
            // Still listed, with its dtype.
            assert_eq!(ck.info(name).unwrap().dtype, dtype);
        }
        let msg = ck.get("ids").unwrap_err().to_string();
        assert!(msg.contains("model.safetensors") && msg.contains("`ids`") && msg.contains("I32"));
    }

    #[test]
    fn write_as_converts_like_torch() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.safetensors");
        write_all_dtypes(&path);
        let ck = Checkpoint::open(&path).unwrap();
        let f32t = ck.get("w.f32").unwrap();
        let src = f32t.to_f32_vec();

        let mut out = Vec::new();
        f32t.write_as(DType::BF16, &mut out).unwrap();
        let want: Vec<u16> = src.iter().map(|&v| f32_to_bf16(v)).collect();
        assert_eq!(out, le_u16(&want));

        let mut out = Vec::new();
        f32t.write_as(DType::F16, &mut out).unwrap();
        let want: Vec<u16> = src.iter().map(|&v| f32_to_f16(v)).collect();
        assert_eq!(out, le_u16(&want));
        // 65504 is f16 max; 1e-8 underflows to 0 in f16.
        assert_eq!(&out[6..8], &0x7bffu16.to_le_bytes());
        assert_eq!(&out[8..10], &[0, 0]);

        // Same dtype: byte-identical copy.
        let mut out = Vec::new();
        f32t.write_as(DType::F32, &mut out).unwrap();
        assert_eq!(out, f32t.bytes);

        // fp8 -> f32 is exact.
        let mut out = Vec::new();
        ck.get("w.f8")
            .unwrap()
            .write_as(DType::F32, &mut out)
            .unwrap();
        assert_eq!(
            out,
            le_f32(&[448.0, 2f32.powi(-9), 1.0, -448.0, 2f32.powi(-6), 0.0])
        );

        // Streams own their data and agree with write_as.
        let stream = ck.get("w.bf16").unwrap().stream(DType::F32);
        drop(ck);
        assert_eq!(stream.byte_len(), 16);
        assert_eq!(stream.dims(), vec![2, 2]);
        let mut out = Vec::new();
        stream.write_to(&mut out).unwrap();
        assert_eq!(out.len() as u64, stream.byte_len());
        assert_eq!(&out[..8], &le_f32(&[1.0, -3.0])[..]);
    }

    #[test]
    fn dequantizes_fp8_with_a_per_tensor_scale() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.safetensors");
        write_all_dtypes(&path);
        let ck = Checkpoint::open(&path).unwrap();
        let f8 = ck.get("w.f8").unwrap();
        let scale = 0.25f32;
        let s = f8.dequantized_stream(scale, DType::F32).unwrap();
        let want: Vec<f32> = f8
            .bytes
            .iter()
            .map(|&b| F8E4M3_TO_F32[b as usize] * 0.25)
            .collect();
        assert_eq!(s.to_f32_vec(), want);
        assert_eq!(s.byte_len(), 24);
        let s = f8.dequantized_stream(scale, DType::BF16).unwrap();
        assert_eq!(s.byte_len(), 12);
        assert_eq!(s.to_f32_vec(), want); // all exact in bf16
        // Not fp8 / non-finite scale.
        let bf = ck.get("w.bf16").unwrap();
        assert!(matches!(
            bf.dequantized_stream(1.0, DType::BF16),
            Err(CheckpointError::DtypeMismatch { .. })
        ));
        assert!(matches!(
            f8.dequantized_stream(f32::NAN, DType::BF16),
            Err(CheckpointError::InvalidScale { .. })
        ));
    }

    #[test]
    fn shape_and_missing_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.safetensors");
        write_all_dtypes(&path);
        let ck = Checkpoint::open(dir.path()).unwrap();
        assert_eq!(ck.path(), path);
        match ck.get("w.f32").unwrap().expect_shape(&[3, 2]) {
            Err(CheckpointError::ShapeMismatch {
                name,
                file,
                expected,
                found,
            }) => {
                assert_eq!(name, "w.f32");
                assert_eq!(file, path);
                assert_eq!(expected, vec![3, 2]);
                assert_eq!(found, vec![2, 3]);
            }
            other => panic!("{other:?}"),
        }
        assert!(ck.get("w.f32").unwrap().expect_shape(&[2, 3]).is_ok());
        match ck.get("nope") {
            Err(CheckpointError::MissingTensor { name, file }) => {
                assert_eq!(name, "nope");
                assert_eq!(file, path);
            }
            other => panic!("{other:?}"),
        }
        let err = ck.get("w.f8").unwrap().to_scalar_f32().unwrap_err();
        assert!(matches!(err, CheckpointError::ShapeMismatch { .. }));
    }

    fn write_sharded(dir: &Path) {
        let a = le_f32(&[1.0, 2.0]);
        let b = le_u16(&[0x3f80, 0x4000, 0x4040]);
        std::fs::write(
            dir.join("diffusion_pytorch_model-00001-of-00002.safetensors"),
            build(&[("blocks.0.weight", "F32", &[2], &a)]),
        )
        .unwrap();
        std::fs::write(
            dir.join("diffusion_pytorch_model-00002-of-00002.safetensors"),
            build(&[
                ("blocks.1.weight", "BF16", &[3], &b),
                ("extra", "F32", &[0], &[]),
            ]),
        )
        .unwrap();
        let index = serde_json::json!({
            "metadata": {"total_size": 14},
            "weight_map": {
                "blocks.0.weight": "diffusion_pytorch_model-00001-of-00002.safetensors",
                "blocks.1.weight": "diffusion_pytorch_model-00002-of-00002.safetensors",
            }
        });
        std::fs::write(
            dir.join("diffusion_pytorch_model.safetensors.index.json"),
            serde_json::to_string_pretty(&index).unwrap(),
        )
        .unwrap();
    }

    #[test]
    fn reads_sharded_checkpoints_through_the_index() {
        let dir = tempfile::tempdir().unwrap();
        write_sharded(dir.path());
        let index = dir
            .path()
            .join("diffusion_pytorch_model.safetensors.index.json");
        for opened in [Checkpoint::open(dir.path()), Checkpoint::open(&index)] {
            let ck = opened.unwrap();
            assert!(ck.is_sharded());
            assert_eq!(ck.path(), index);
            assert_eq!(ck.files().len(), 2);
            assert_eq!(
                ck.names().collect::<Vec<_>>(),
                vec!["blocks.0.weight", "blocks.1.weight"]
            );
            let t0 = ck.get("blocks.0.weight").unwrap();
            assert!(
                t0.file
                    .ends_with("diffusion_pytorch_model-00001-of-00002.safetensors")
            );
            assert_eq!(t0.to_f32_vec(), vec![1.0, 2.0]);
            let t1 = ck.get("blocks.1.weight").unwrap();
            assert!(
                t1.file
                    .ends_with("diffusion_pytorch_model-00002-of-00002.safetensors")
            );
            assert_eq!(t1.to_f32_vec(), vec![1.0, 2.0, 3.0]);
            match ck.get("blocks.2.weight") {
                Err(CheckpointError::MissingTensor { file, .. }) => assert_eq!(file, index),
                other => panic!("{other:?}"),
            }
            let ids = ck.identities().unwrap();
            assert_eq!(ids.len(), 3);
            assert_eq!(ck.identity_hash().unwrap().len(), 64);
        }
    }

    #[test]
    fn sharded_index_errors_name_the_index_or_shard() {
        let dir = tempfile::tempdir().unwrap();
        write_sharded(dir.path());
        let index = dir
            .path()
            .join("diffusion_pytorch_model.safetensors.index.json");
        // Index pointing at a tensor its shard lacks.
        let bad = serde_json::json!({"weight_map": {
            "ghost": "diffusion_pytorch_model-00001-of-00002.safetensors"}});
        std::fs::write(&index, bad.to_string()).unwrap();
        match Checkpoint::open(dir.path()) {
            Err(CheckpointError::CorruptFile { file, reason }) => {
                assert_eq!(file, index);
                assert!(reason.contains("ghost"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        // Missing shard file.
        let bad = serde_json::json!({"weight_map": {"x": "gone.safetensors"}});
        std::fs::write(&index, bad.to_string()).unwrap();
        match Checkpoint::open(&index) {
            Err(CheckpointError::Io { file, .. }) => assert!(file.ends_with("gone.safetensors")),
            other => panic!("{other:?}"),
        }
        // Path escaping the directory.
        let bad = serde_json::json!({"weight_map": {"x": "../x.safetensors"}});
        std::fs::write(&index, bad.to_string()).unwrap();
        assert!(matches!(
            Checkpoint::open(&index),
            Err(CheckpointError::CorruptFile { .. })
        ));
        // Not an index at all.
        std::fs::write(&index, "{\"weights\": 1}").unwrap();
        match Checkpoint::open(&index) {
            Err(CheckpointError::CorruptFile { file, reason }) => {
                assert_eq!(file, index);
                assert!(reason.contains("weight_map"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        // A truncated shard is reported with the shard's name.
        write_sharded(dir.path());
        let shard = dir
            .path()
            .join("diffusion_pytorch_model-00002-of-00002.safetensors");
        let bytes = std::fs::read(&shard).unwrap();
        std::fs::write(&shard, &bytes[..bytes.len() - 2]).unwrap();
        match Checkpoint::open(dir.path()) {
            Err(CheckpointError::CorruptFile { file, reason }) => {
                assert_eq!(file, shard);
                assert!(reason.contains("truncated"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn truncated_single_file_is_corrupt_and_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.safetensors");
        write_all_dtypes(&path);
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 5]).unwrap();
        let err = Checkpoint::open(dir.path()).unwrap_err();
        match &err {
            CheckpointError::CorruptFile { file, reason } => {
                assert_eq!(file, &path);
                assert!(reason.contains("truncated"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        assert!(err.to_string().contains("model.safetensors"));
        // Cut inside the header.
        std::fs::write(&path, &bytes[..20]).unwrap();
        assert!(matches!(
            Checkpoint::open(&path),
            Err(CheckpointError::CorruptFile { .. })
        ));
        std::fs::write(&path, b"").unwrap();
        assert!(matches!(
            Checkpoint::open(&path),
            Err(CheckpointError::CorruptFile { .. })
        ));
    }

    #[test]
    fn directory_resolution() {
        let dir = tempfile::tempdir().unwrap();
        let empty = build(&[]);
        // Nothing there.
        assert!(matches!(
            Checkpoint::open(dir.path()),
            Err(CheckpointError::NotFound { .. })
        ));
        // The only *.safetensors.
        std::fs::write(dir.path().join("weights.fp16.safetensors"), &empty).unwrap();
        assert!(
            Checkpoint::open(dir.path())
                .unwrap()
                .path()
                .ends_with("weights.fp16.safetensors")
        );
        // Two candidates: ambiguous, names both.
        std::fs::write(dir.path().join("other.safetensors"), &empty).unwrap();
        match Checkpoint::open(dir.path()) {
            Err(CheckpointError::NotFound { reason, .. }) => {
                assert!(reason.contains("other.safetensors") && reason.contains("weights.fp16"))
            }
            other => panic!("{other:?}"),
        }
        // Standard names win, diffusers before transformers.
        std::fs::write(dir.path().join("model.safetensors"), &empty).unwrap();
        assert!(
            Checkpoint::open(dir.path())
                .unwrap()
                .path()
                .ends_with("model.safetensors")
        );
        std::fs::write(
            dir.path().join("diffusion_pytorch_model.safetensors"),
            &empty,
        )
        .unwrap();
        assert!(
            Checkpoint::open(dir.path())
                .unwrap()
                .path()
                .ends_with("diffusion_pytorch_model.safetensors")
        );
        // Missing path.
        assert!(matches!(
            Checkpoint::open(dir.path().join("absent")),
            Err(CheckpointError::Io { .. })
        ));
    }
}
