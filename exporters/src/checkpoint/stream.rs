//! Owned, streaming access to one checkpoint tensor, converted on the fly.
//!
//! A [`TensorStream`] holds an `Arc` to the memory map plus a byte range, so it has no
//! borrowed lifetime and can be boxed as the ONNX writer's `Box<dyn TensorSource>`: the
//! writer pulls the bytes when it writes the external-data file, converting in bounded chunks
//! ([`CHUNK_BYTES`]) from the checkpoint dtype to the export dtype. This is how candle's
//! `VarBuilder` hands out tensors lazily, minus the device upload.
//!
//! fp8 dequantisation (the official fp8 checkpoint's per-tensor `_fp8_map` scales) follows
//! Tencent's `fp8_activation_dequant`: `w = qdq.to(dtype) * scale.to(dtype)`, i.e. the scale is
//! first rounded to the target dtype and the product, exact in f32, is rounded once.

use std::io::{self, Write};
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

use super::dtype::{DType, decode_to_f32, encode_from_f32, round_through};
use super::error::{CheckpointError, Result};
use super::safetensors::MappedFile;

/// Upper bound of the scratch memory a conversion uses (f32 staging and output buffers are
/// each at most this large).
pub const CHUNK_BYTES: usize = 1 << 20;

/// Per-tensor dequantisation as the reference computes it: `w = q.to(compute) * scale.to(compute)`
/// (the scale and the product rounded to `compute`), then converted to the export dtype.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Dequant {
    pub scale: f32,
    /// The reference's compute dtype (`original_dtype` of Tencent's `fp8_linear_forward`).
    pub compute: DType,
}

impl Dequant {
    fn apply(&self, v: f32) -> f32 {
        round_through(v * round_through(self.scale, self.compute), self.compute)
    }
}

/// Write little-endian `source` bytes as `target`, each element dequantised first if `dequant`
/// is given, in chunks of at most [`CHUNK_BYTES`]. Same dtype without dequantisation copies the
/// bytes.
pub fn write_converted(
    src: &[u8],
    source: DType,
    target: DType,
    dequant: Option<Dequant>,
    w: &mut dyn Write,
) -> io::Result<()> {
    if dequant.is_none() && source == target {
        for chunk in src.chunks(CHUNK_BYTES) {
            w.write_all(chunk)?;
        }
        return Ok(());
    }
    let elems = CHUNK_BYTES / 4;
    let in_size = source.size_in_bytes();
    let mut staged = vec![0.0f32; elems];
    let mut out = Vec::with_capacity(elems * target.size_in_bytes());
    for chunk in src.chunks(elems * in_size) {
        let n = chunk.len() / in_size;
        let staged = &mut staged[..n];
        decode_to_f32(source, &chunk[..n * in_size], staged);
        if let Some(d) = dequant {
            for v in staged.iter_mut() {
                *v = d.apply(*v);
            }
        }
        out.clear();
        encode_from_f32(target, staged, &mut out);
        w.write_all(&out)?;
    }
    Ok(())
}

/// An owned handle to one tensor's bytes in a mapped checkpoint file, with the dtype it is
/// written out as.
#[derive(Clone)]
pub struct TensorStream {
    file: Arc<MappedFile>,
    range: Range<usize>,
    name: String,
    shape: Vec<usize>,
    source: DType,
    target: DType,
    dequant: Option<Dequant>,
}

impl std::fmt::Debug for TensorStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TensorStream")
            .field("name", &self.name)
            .field("file", &self.file.path)
            .field("shape", &self.shape)
            .field("source", &self.source)
            .field("target", &self.target)
            .field("dequant", &self.dequant)
            .finish()
    }
}

impl TensorStream {
    pub(crate) fn new(
        file: Arc<MappedFile>,
        range: Range<usize>,
        name: String,
        shape: Vec<usize>,
        source: DType,
        target: DType,
    ) -> TensorStream {
        TensorStream {
            file,
            range,
            name,
            shape,
            source,
            target,
            dequant: None,
        }
    }

    /// Rows `rows` of the tensor (along its first axis) as a tensor of its own: a contiguous
    /// byte range of the same mapping, e.g. the query third of a fused `img_attn_qkv` weight.
    pub fn rows(mut self, rows: Range<usize>) -> Result<TensorStream> {
        let n = self.shape.first().copied().unwrap_or(0);
        if rows.start > rows.end || rows.end > n {
            return Err(CheckpointError::ShapeMismatch {
                name: format!("{}[{}..{}]", self.name, rows.start, rows.end),
                file: self.file.path.clone(),
                expected: vec![rows.end],
                found: self.shape.clone(),
            });
        }
        let row_bytes = self.shape[1..].iter().product::<usize>() * self.source.size_in_bytes();
        let start = self.range.start + rows.start * row_bytes;
        self.range = start..start + rows.len() * row_bytes;
        self.shape[0] = rows.len();
        self.name = format!("{}[{}..{}]", self.name, rows.start, rows.end);
        Ok(self)
    }

    /// Multiply every element by a per-tensor `scale` while converting (dequantisation of an
    /// F8_E4M3 tensor with its `_fp8_map` entry), rounding scale and product to `compute` as
    /// the reference does ([`Dequant`]). Errors if the tensor is not F8_E4M3 or the scale is
    /// not finite.
    pub fn dequantized(mut self, scale: f32, compute: DType) -> Result<TensorStream> {
        if self.source != DType::F8E4M3 {
            return Err(CheckpointError::DtypeMismatch {
                name: self.name,
                file: self.file.path.clone(),
                expected: DType::F8E4M3,
                found: self.source,
            });
        }
        if !scale.is_finite() {
            return Err(CheckpointError::InvalidScale {
                name: self.name,
                file: self.file.path.clone(),
                scale,
            });
        }
        self.dequant = Some(Dequant { scale, compute });
        Ok(self)
    }

    /// The same tensor written as another dtype.
    #[must_use]
    pub fn with_target(mut self, target: DType) -> TensorStream {
        self.target = target;
        self
    }

    /// Full tensor name in the checkpoint.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The safetensors file holding the tensor.
    pub fn file(&self) -> &Path {
        &self.file.path
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Shape as ONNX dims.
    pub fn dims(&self) -> Vec<i64> {
        self.shape.iter().map(|&d| d as i64).collect()
    }

    pub fn numel(&self) -> u64 {
        self.shape.iter().map(|&d| d as u64).product()
    }

    /// dtype stored in the checkpoint.
    pub fn source_dtype(&self) -> DType {
        self.source
    }

    /// dtype written by [`write_to`](Self::write_to).
    pub fn target_dtype(&self) -> DType {
        self.target
    }

    /// Dequantisation applied while converting, if any.
    pub fn dequant(&self) -> Option<Dequant> {
        self.dequant
    }

    /// Exact number of bytes [`write_to`](Self::write_to) writes.
    pub fn byte_len(&self) -> u64 {
        self.numel() * self.target.size_in_bytes() as u64
    }

    /// ONNX `TensorProto.DataType` code of the written elements.
    pub fn onnx_data_type(&self) -> i32 {
        self.target.onnx_code()
    }

    /// The stored bytes, unconverted.
    pub fn source_bytes(&self) -> &[u8] {
        self.file.slice(self.range.clone())
    }

    /// Stream the converted tensor into `w` (little-endian, row-major), reading the file in
    /// [`CHUNK_BYTES`] pieces with positioned reads (no mapped pages stay resident).
    pub fn write_to(&self, w: &mut dyn Write) -> io::Result<()> {
        // CHUNK_BYTES is a multiple of every element size, so pieces split between elements.
        self.file
            .read_chunks(self.range.clone(), CHUNK_BYTES, |piece| {
                write_converted(piece, self.source, self.target, self.dequant, w)
            })
    }

    /// The converted tensor as f32 values (for tests and small tensors).
    pub fn to_f32_vec(&self) -> Vec<f32> {
        let mut bytes = Vec::with_capacity(self.byte_len() as usize);
        self.write_to(&mut bytes)
            .expect("writing to a Vec cannot fail");
        super::dtype::bytes_to_f32_vec(self.target, &bytes)
    }
}

impl crate::onnx::TensorSource for TensorStream {
    fn data_type(&self) -> crate::onnx::DataType {
        use crate::onnx::DataType;
        match self.target {
            DType::F32 => DataType::Float,
            DType::F16 => DataType::Float16,
            DType::BF16 => DataType::Bfloat16,
            DType::F8E4M3 => DataType::Float8e4m3fn,
        }
    }

    fn dims(&self) -> Vec<i64> {
        TensorStream::dims(self)
    }

    fn byte_len(&self) -> u64 {
        TensorStream::byte_len(self)
    }

    fn write_to(&self, w: &mut dyn Write) -> io::Result<()> {
        TensorStream::write_to(self, w)
    }

    fn fp8_origin(&self) -> Option<(f32, Box<dyn crate::onnx::TensorSource>)> {
        let d = self.dequant?;
        let mut raw = self.clone();
        raw.dequant = None;
        raw.target = DType::F8E4M3;
        Some((d.scale, Box::new(raw)))
    }
}

#[cfg(test)]
mod tests {
    use super::super::dtype::{F8E4M3_TO_F32, bf16_to_f32, f32_to_bf16};
    use super::*;

    /// A writer that records the size of every write, to check chunking.
    struct Recorder {
        data: Vec<u8>,
        max_write: usize,
    }
    impl Write for Recorder {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.max_write = self.max_write.max(buf.len());
            self.data.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn converts_in_bounded_chunks() {
        // 700k f32 values -> bf16, more than two chunks.
        let n = 700_001usize;
        let values: Vec<f32> = (0..n).map(|i| (i as f32) * 0.37 - 1000.0).collect();
        let mut src = Vec::new();
        encode_from_f32(DType::F32, &values, &mut src);
        let mut rec = Recorder {
            data: Vec::new(),
            max_write: 0,
        };
        write_converted(&src, DType::F32, DType::BF16, None, &mut rec).unwrap();
        assert!(rec.max_write <= CHUNK_BYTES, "{}", rec.max_write);
        assert_eq!(rec.data.len(), n * 2);
        for (i, v) in values.iter().enumerate() {
            let got = u16::from_le_bytes([rec.data[2 * i], rec.data[2 * i + 1]]);
            assert_eq!(got, f32_to_bf16(*v), "element {i}");
        }
        // Same dtype: raw copy, also chunked.
        let mut rec = Recorder {
            data: Vec::new(),
            max_write: 0,
        };
        write_converted(&src, DType::F32, DType::F32, None, &mut rec).unwrap();
        assert_eq!(rec.data, src);
        assert!(rec.max_write <= CHUNK_BYTES);
    }

    #[test]
    fn fp8_scale_and_product_are_rounded_to_the_compute_dtype() {
        // 1.5 (0x3c) * scale; scale 0.1 is not a bf16 value.
        let scale = 0.1f32;
        let bf16 = |v: f32| bf16_to_f32(f32_to_bf16(v));
        let want = bf16(1.5 * bf16(scale));
        let via_bf16 = Some(Dequant {
            scale,
            compute: DType::BF16,
        });
        let mut out = Vec::new();
        write_converted(&[0x3c], DType::F8E4M3, DType::BF16, via_bf16, &mut out).unwrap();
        assert_eq!(bf16_to_f32(u16::from_le_bytes([out[0], out[1]])), want);
        // An f32 graph of a bf16 reference holds the same bf16 values, widened.
        let mut out = Vec::new();
        write_converted(&[0x3c], DType::F8E4M3, DType::F32, via_bf16, &mut out).unwrap();
        assert_eq!(f32::from_le_bytes(out[..4].try_into().unwrap()), want);
        // An f32 reference keeps the exact product.
        let via_f32 = Some(Dequant {
            scale,
            compute: DType::F32,
        });
        let mut out = Vec::new();
        write_converted(&[0x3c], DType::F8E4M3, DType::F32, via_f32, &mut out).unwrap();
        assert_eq!(
            f32::from_le_bytes(out[..4].try_into().unwrap()),
            1.5 * scale
        );
        assert_eq!(F8E4M3_TO_F32[0x3c], 1.5);
    }
}
