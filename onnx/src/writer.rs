//! Writes a finished [`GraphBuilder`] to disk as `<stem>.onnx` plus one external data file
//! `<stem>.onnx.data`, following the ONNX external-data convention (`data_location = EXTERNAL`,
//! `external_data` entries `location` (relative to the model), `offset`, `length`; see
//! `onnx.proto3` and `docs/ExternalData.md`).
//!
//! Large initializers are streamed one at a time from their [`TensorSource`] into the data file
//! at offsets aligned to [`EXTERNAL_DATA_ALIGNMENT`] so ONNX Runtime can mmap them; no weight
//! is held in memory. Both files are written under temporary names in the target directory,
//! fsync'd, and renamed into place only when everything succeeded; on error they are removed.

use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use prost::Message;

use super::builder::{GraphBuilder, Initializer, Parts, TensorSource};
use super::error::{OnnxError, Result};
use super::proto::{DataLocation, ModelProto, StringStringEntryProto, TensorProto};

/// Alignment of every tensor in the external data file (the page size ONNX Runtime maps).
pub const EXTERNAL_DATA_ALIGNMENT: u64 = 4096;

/// Protobuf messages are limited to 2 GiB.
const PROTOBUF_LIMIT: u64 = i32::MAX as u64;

/// What [`write_model`] wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WrittenModel {
    /// `<dir>/<stem>.onnx`.
    pub onnx_path: PathBuf,
    /// Size of the `.onnx` file in bytes.
    pub onnx_bytes: u64,
    /// Lower-case hex SHA-256 of the `.onnx` file.
    pub onnx_sha256: String,
    /// `<dir>/<stem>.onnx.data` (written even when empty, so a model is always two files).
    pub data_path: PathBuf,
    /// Size of the data file in bytes.
    pub data_bytes: u64,
    /// Number of initializers stored in the data file.
    pub external_tensors: usize,
}

/// A writer that counts bytes and refuses to go past the declared length of a tensor.
struct Bounded<'a, W: Write> {
    inner: &'a mut W,
    written: u64,
    limit: u64,
    overflowed: bool,
}

impl<W: Write> Write for Bounded<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.written + buf.len() as u64 > self.limit {
            self.overflowed = true;
            return Err(io::Error::other(
                "tensor source wrote more than its byte_len",
            ));
        }
        let n = self.inner.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Stream `source` into `w`, checking that exactly `byte_len()` bytes arrive.
fn copy_tensor<W: Write>(
    name: &str,
    source: &dyn TensorSource,
    w: &mut W,
    path: &Path,
) -> Result<u64> {
    let declared = source.byte_len();
    let mut bounded = Bounded {
        inner: w,
        written: 0,
        limit: declared,
        overflowed: false,
    };
    let result = source.write_to(&mut bounded);
    if bounded.overflowed {
        return Err(OnnxError::TooManyBytes {
            tensor: name.to_owned(),
            declared,
        });
    }
    result.map_err(|source| OnnxError::TensorWrite {
        tensor: name.to_owned(),
        path: path.to_owned(),
        source,
    })?;
    if bounded.written != declared {
        return Err(OnnxError::TooFewBytes {
            tensor: name.to_owned(),
            declared,
            written: bounded.written,
        });
    }
    Ok(declared)
}

fn entry(key: &str, value: String) -> StringStringEntryProto {
    StringStringEntryProto {
        key: key.to_owned(),
        value,
    }
}

fn check_size(model: &ModelProto) -> Result<()> {
    let bytes = model.encoded_len() as u64;
    if bytes > PROTOBUF_LIMIT {
        let graph = model
            .graph
            .as_ref()
            .map(|g| g.name.clone())
            .unwrap_or_default();
        return Err(OnnxError::ModelTooLarge { graph, bytes });
    }
    Ok(())
}

fn temp_file(dir: &Path, stem: &str, what: &str) -> Result<tempfile::NamedTempFile> {
    let prefix = format!(".{stem}.{what}.");
    let mut builder = tempfile::Builder::new();
    builder.prefix(&prefix).suffix(".tmp");
    // Final files get the permissions `File::create` would give (0o666 less the umask), not
    // the owner-only mode of temporary files: bundles are shared.
    #[cfg(unix)]
    builder.permissions(std::os::unix::fs::PermissionsExt::from_mode(0o666));
    builder
        .tempfile_in(dir)
        .map_err(OnnxError::io("cannot create a temporary file in", dir))
}

/// Write `model` to `<dir>/<stem>.onnx` with its large initializers in `<dir>/<stem>.onnx.data`.
///
/// Nothing is visible under the final names until both files are complete and synced; on
/// error no file (final or temporary) is left behind.
pub fn write_model(model: GraphBuilder, dir: &Path, stem: &str) -> Result<WrittenModel> {
    if stem.is_empty()
        || stem == "."
        || stem == ".."
        || stem.contains(['/', '\\'])
        || stem.contains('\0')
    {
        return Err(OnnxError::InvalidStem {
            stem: stem.to_owned(),
        });
    }
    let Parts {
        mut model,
        initializers,
    } = model.into_parts()?;
    let onnx_name = format!("{stem}.onnx");
    let data_name = format!("{onnx_name}.data");
    let onnx_path = dir.join(&onnx_name);
    let data_path = dir.join(&data_name);

    // 1. External data, streamed tensor by tensor.
    let mut data_tmp = temp_file(dir, stem, "onnx.data")?;
    let mut tensors = Vec::with_capacity(initializers.len());
    let mut pos = 0u64;
    let mut external_tensors = 0;
    {
        let mut w = BufWriter::with_capacity(1 << 20, data_tmp.as_file_mut());
        for init in initializers {
            match init {
                Initializer::Inline { name, tensor } => tensors.push(tensor.to_proto(&name)),
                Initializer::External { name, source } => {
                    let len = source.byte_len();
                    let dims = source.dims();
                    let data_type = source.data_type() as i32;
                    if len == 0 {
                        // Empty tensors have nothing to map: keep them inline.
                        tensors.push(TensorProto {
                            dims,
                            data_type,
                            name,
                            ..Default::default()
                        });
                        continue;
                    }
                    let pad = pos.next_multiple_of(EXTERNAL_DATA_ALIGNMENT) - pos;
                    io::copy(&mut io::repeat(0).take(pad), &mut w)
                        .map_err(OnnxError::io("cannot write", &data_path))?;
                    let offset = pos + pad;
                    copy_tensor(&name, source.as_ref(), &mut w, &data_path)?;
                    pos = offset + len;
                    external_tensors += 1;
                    tensors.push(TensorProto {
                        dims,
                        data_type,
                        name,
                        external_data: vec![
                            entry("location", data_name.clone()),
                            entry("offset", offset.to_string()),
                            entry("length", len.to_string()),
                        ],
                        data_location: DataLocation::External as i32,
                        ..Default::default()
                    });
                }
            }
        }
        w.flush()
            .map_err(OnnxError::io("cannot write", &data_path))?;
    }
    data_tmp
        .as_file()
        .sync_all()
        .map_err(OnnxError::io("cannot sync", &data_path))?;

    // 2. The model itself.
    if let Some(g) = model.graph.as_mut() {
        g.initializer = tensors;
    }
    check_size(&model)?;
    let bytes = model.encode_to_vec();
    let onnx_sha256 = hyvideo_bundle::hash::sha256_hex(&bytes);
    let mut onnx_tmp = temp_file(dir, stem, "onnx")?;
    onnx_tmp
        .write_all(&bytes)
        .and_then(|()| onnx_tmp.as_file().sync_all())
        .map_err(OnnxError::io("cannot write", &onnx_path))?;

    // 3. Rename into place: data first, so a visible .onnx never points at missing data.
    data_tmp.persist(&data_path).map_err(|e| OnnxError::Io {
        action: "cannot rename temporary file to",
        path: data_path.clone(),
        source: e.error,
    })?;
    if let Err(e) = onnx_tmp.persist(&onnx_path) {
        let _ = std::fs::remove_file(&data_path);
        return Err(OnnxError::Io {
            action: "cannot rename temporary file to",
            path: onnx_path,
            source: e.error,
        });
    }
    if let Err(e) = sync_dir(dir) {
        let _ = std::fs::remove_file(&onnx_path);
        let _ = std::fs::remove_file(&data_path);
        return Err(OnnxError::Io {
            action: "cannot sync directory",
            path: dir.to_owned(),
            source: e,
        });
    }
    Ok(WrittenModel {
        onnx_path,
        onnx_bytes: bytes.len() as u64,
        onnx_sha256,
        data_path,
        data_bytes: pos,
        external_tensors,
    })
}

#[cfg(unix)]
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> io::Result<()> {
    Ok(())
}

impl GraphBuilder {
    /// The finished model with every initializer inline (`raw_data`), for small graphs run from
    /// memory (tests); fails if it would exceed protobuf's 2 GiB limit.
    pub fn into_inline_model(self) -> Result<ModelProto> {
        let Parts {
            mut model,
            initializers,
        } = self.into_parts()?;
        let graph_name = model
            .graph
            .as_ref()
            .map(|g| g.name.clone())
            .unwrap_or_default();
        let total: u64 = initializers
            .iter()
            .map(|i| match i {
                Initializer::Inline { tensor, .. } => tensor.bytes().len() as u64,
                Initializer::External { source, .. } => source.byte_len(),
            })
            .sum();
        if total > PROTOBUF_LIMIT {
            return Err(OnnxError::ModelTooLarge {
                graph: graph_name,
                bytes: total,
            });
        }
        let mut tensors = Vec::with_capacity(initializers.len());
        for init in initializers {
            match init {
                Initializer::Inline { name, tensor } => tensors.push(tensor.to_proto(&name)),
                Initializer::External { name, source } => {
                    let mut raw = Vec::with_capacity(source.byte_len() as usize);
                    copy_tensor(&name, source.as_ref(), &mut raw, Path::new("<memory>"))?;
                    tensors.push(TensorProto {
                        dims: source.dims(),
                        data_type: source.data_type() as i32,
                        name,
                        raw_data: raw,
                        ..Default::default()
                    });
                }
            }
        }
        if let Some(g) = model.graph.as_mut() {
            g.initializer = tensors;
        }
        check_size(&model)?;
        Ok(model)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builder::{Dim, OwnedTensor};
    use crate::proto::DataType;
    use sha2::{Digest, Sha256};
    use std::io::{Seek, SeekFrom};

    /// A source whose bytes are a pattern, with a configurable lie about its length.
    struct Pattern {
        dims: Vec<i64>,
        actual: u64,
        seed: u8,
    }

    impl TensorSource for Pattern {
        fn data_type(&self) -> DataType {
            DataType::Uint8
        }
        fn dims(&self) -> Vec<i64> {
            self.dims.clone()
        }
        fn byte_len(&self) -> u64 {
            self.dims.iter().product::<i64>() as u64
        }
        fn write_to(&self, w: &mut dyn Write) -> io::Result<()> {
            // Written in odd-sized chunks, like a converting reader would.
            let data: Vec<u8> = (0..self.actual)
                .map(|i| (i as u8).wrapping_mul(31).wrapping_add(self.seed))
                .collect();
            for chunk in data.chunks(777) {
                w.write_all(chunk)?;
            }
            Ok(())
        }
    }

    fn pattern(dims: &[i64], seed: u8) -> Box<Pattern> {
        let n = dims.iter().product::<i64>() as u64;
        Box::new(Pattern {
            dims: dims.to_vec(),
            actual: n,
            seed,
        })
    }

    fn expected_pattern(n: u64, seed: u8) -> Vec<u8> {
        (0..n)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    fn graph_with_weights(sources: Vec<(&str, Box<dyn TensorSource>)>) -> GraphBuilder {
        let mut b = GraphBuilder::new("g");
        let x = b.input("x", DataType::Uint8, &[Dim::from("N")]).unwrap();
        for (name, s) in sources {
            b.weight(name, s).unwrap();
        }
        b.const_i64("axes", &[0, 1], &[2]).unwrap();
        let y = b.node1("Identity", "id", &[&x], &[]).unwrap();
        b.output(&y, DataType::Uint8, &[Dim::from("N")]).unwrap();
        b
    }

    fn dir_entries(dir: &Path) -> Vec<String> {
        let mut v: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn external_data_is_aligned_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let sizes: [(&str, &[i64], u8); 4] = [
            ("a", &[3, 5], 1),
            ("b", &[4096], 2),
            ("c", &[0, 7], 3),
            ("d", &[10, 1000], 4),
        ];
        let b = graph_with_weights(
            sizes
                .iter()
                .map(|(n, d, s)| (*n, pattern(d, *s) as Box<dyn TensorSource>))
                .collect(),
        );
        let written = write_model(b, dir.path(), "model").unwrap();
        assert_eq!(dir_entries(dir.path()), ["model.onnx", "model.onnx.data"]);
        assert_eq!(written.external_tensors, 3);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode();
            let plain = dir.path().join("plain");
            File::create(&plain).unwrap();
            let want = mode(&plain);
            std::fs::remove_file(&plain).unwrap();
            assert_eq!(mode(&written.onnx_path), want, "mode as File::create gives");
            assert_eq!(mode(&written.data_path), want, "mode as File::create gives");
        }

        let bytes = std::fs::read(&written.onnx_path).unwrap();
        assert_eq!(bytes.len() as u64, written.onnx_bytes);
        assert_eq!(written.onnx_sha256, format!("{:x}", Sha256::digest(&bytes)));
        assert_eq!(written.onnx_sha256.len(), 64);
        let model = ModelProto::decode(bytes.as_slice()).unwrap();
        let g = model.graph.unwrap();
        let names: Vec<_> = g.initializer.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["a", "b", "c", "d", "axes"]);

        let mut data = File::open(&written.data_path).unwrap();
        assert_eq!(data.metadata().unwrap().len(), written.data_bytes);
        let mut offsets = Vec::new();
        for ((name, dims, seed), t) in sizes.iter().zip(&g.initializer) {
            assert_eq!(t.dims, *dims);
            assert_eq!(t.data_type(), DataType::Uint8);
            let n = dims.iter().product::<i64>() as u64;
            if n == 0 {
                assert_eq!(t.data_location(), DataLocation::Default, "{name}");
                assert!(t.external_data.is_empty());
                continue;
            }
            assert_eq!(t.data_location(), DataLocation::External, "{name}");
            let kv: Vec<_> = t
                .external_data
                .iter()
                .map(|e| (e.key.as_str(), e.value.as_str()))
                .collect();
            assert_eq!(kv[0], ("location", "model.onnx.data"));
            assert_eq!(kv[1].0, "offset");
            assert_eq!(kv[2], ("length", n.to_string().as_str()));
            let offset: u64 = kv[1].1.parse().unwrap();
            assert_eq!(offset % EXTERNAL_DATA_ALIGNMENT, 0, "{name} at {offset}");
            offsets.push(offset);
            let mut buf = vec![0; n as usize];
            data.seek(SeekFrom::Start(offset)).unwrap();
            data.read_exact(&mut buf).unwrap();
            assert_eq!(buf, expected_pattern(n, *seed), "contents of {name}");
        }
        assert_eq!(offsets, [0, 4096, 8192]);
        assert_eq!(written.data_bytes, 8192 + 10_000);
        // The small constant stays inline.
        let axes = &g.initializer[4];
        assert_eq!(axes.data_location(), DataLocation::Default);
        assert_eq!(
            axes.raw_data,
            [0i64.to_le_bytes(), 1i64.to_le_bytes()].concat()
        );
    }

    #[test]
    fn byte_len_mismatch_errors_and_leaves_no_files() {
        for (actual, too_many) in [(99, false), (101, true)] {
            let dir = tempfile::tempdir().unwrap();
            let liar = Box::new(Pattern {
                dims: vec![10, 10],
                actual,
                seed: 0,
            });
            let b = graph_with_weights(vec![("ok", pattern(&[64], 9)), ("liar", liar)]);
            let err = write_model(b, dir.path(), "m").unwrap_err();
            match (&err, too_many) {
                (
                    OnnxError::TooManyBytes {
                        tensor,
                        declared: 100,
                    },
                    true,
                ) => assert_eq!(tensor, "liar"),
                (
                    OnnxError::TooFewBytes {
                        tensor,
                        declared: 100,
                        written: 99,
                    },
                    false,
                ) => assert_eq!(tensor, "liar"),
                _ => panic!("unexpected error {err:?}"),
            }
            assert!(err.to_string().contains("`liar`"), "{err}");
            assert_eq!(dir_entries(dir.path()), Vec::<String>::new());
        }
    }

    #[test]
    fn failing_source_names_tensor_and_leaves_no_files() {
        struct Broken;
        impl TensorSource for Broken {
            fn data_type(&self) -> DataType {
                DataType::Float
            }
            fn dims(&self) -> Vec<i64> {
                vec![2]
            }
            fn byte_len(&self) -> u64 {
                8
            }
            fn write_to(&self, w: &mut dyn Write) -> io::Result<()> {
                w.write_all(&[0; 4])?;
                Err(io::Error::other("checkpoint truncated"))
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let b = graph_with_weights(vec![("w.broken", Box::new(Broken))]);
        let err = write_model(b, dir.path(), "m").unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, OnnxError::TensorWrite { .. }), "{msg}");
        assert!(
            msg.contains("`w.broken`") && msg.contains("checkpoint truncated"),
            "{msg}"
        );
        assert_eq!(dir_entries(dir.path()), Vec::<String>::new());
    }

    #[test]
    fn rewriting_replaces_files_and_bad_stems_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let first = write_model(
            graph_with_weights(vec![("w", pattern(&[5000], 1))]),
            dir.path(),
            "m",
        )
        .unwrap();
        let second = write_model(
            graph_with_weights(vec![("w", pattern(&[10], 1))]),
            dir.path(),
            "m",
        )
        .unwrap();
        assert_eq!(dir_entries(dir.path()), ["m.onnx", "m.onnx.data"]);
        assert_eq!(first.data_bytes, 5000);
        assert_eq!(std::fs::metadata(&second.data_path).unwrap().len(), 10);
        for stem in ["", "a/b", "..", "."] {
            let b = graph_with_weights(vec![]);
            assert!(
                matches!(
                    write_model(b, dir.path(), stem),
                    Err(OnnxError::InvalidStem { .. })
                ),
                "{stem:?}"
            );
        }
        let missing = dir.path().join("missing");
        let err = write_model(graph_with_weights(vec![]), &missing, "m").unwrap_err();
        assert!(err.to_string().contains("missing"), "{err}");
    }

    #[test]
    fn inline_model_embeds_weights() {
        let w = OwnedTensor::from_f32(&[2], &[1.5, -2.0]).unwrap();
        let b = graph_with_weights(vec![("w", Box::new(w))]);
        let m = b.into_inline_model().unwrap();
        let t = &m.graph.unwrap().initializer[0];
        assert_eq!(t.name, "w");
        assert_eq!(t.data_location(), DataLocation::Default);
        assert_eq!(
            t.raw_data,
            [1.5f32.to_le_bytes(), (-2.0f32).to_le_bytes()].concat()
        );
    }
}
