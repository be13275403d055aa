//! Reading and writing latent tensors as `.safetensors` (tensor `latents`, f32
//! [B, C, t, h, w], before division by the VAE scaling factor), and reading other named tensors
//! (prompt embeddings, masks), with errors that name the file and tensor. Matches the layout
//! diffusers' pipelines return with `output_type="latent"`.

use std::path::{Path, PathBuf};

use half::{bf16, f16};
use safetensors::{Dtype, SafeTensors};

use crate::tensor::Tensor5;

pub const LATENTS_TENSOR: &str = "latents";

#[derive(Debug, thiserror::Error)]
pub enum LatentsError {
    #[error("{}: {source}", .path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: not a valid safetensors file: {reason}", .path.display())]
    Corrupt { path: PathBuf, reason: String },
    #[error("{}: no tensor `{name}` (tensors: {available})", .path.display())]
    Missing {
        path: PathBuf,
        name: String,
        available: String,
    },
    #[error("{}: tensor `{name}` has shape {shape:?}; expected rank 5 [batch, channels, frames, height, width]", .path.display())]
    Rank {
        path: PathBuf,
        name: String,
        shape: Vec<usize>,
    },
    #[error("{}: tensor `{name}` has {found} channels; this bundle's VAE expects {expected}", .path.display())]
    Channels {
        path: PathBuf,
        name: String,
        found: usize,
        expected: usize,
    },
    #[error("{}: tensor `{name}` has dtype {dtype:?}; expected {expected}", .path.display())]
    Dtype {
        path: PathBuf,
        name: String,
        dtype: Dtype,
        expected: &'static str,
    },
    #[error("{}: tensor `{name}` has an empty dimension: {shape:?}", .path.display())]
    Empty {
        path: PathBuf,
        name: String,
        shape: Vec<usize>,
    },
}

/// A safetensors file read into memory, with typed access that names the file and tensor in
/// every error.
pub struct TensorFile {
    path: PathBuf,
    bytes: Vec<u8>,
}

impl TensorFile {
    pub fn open(path: &Path) -> Result<TensorFile, LatentsError> {
        let bytes = std::fs::read(path).map_err(|source| LatentsError::Io {
            path: path.into(),
            source,
        })?;
        SafeTensors::deserialize(&bytes).map_err(|e| LatentsError::Corrupt {
            path: path.into(),
            reason: e.to_string(),
        })?;
        Ok(TensorFile {
            path: path.into(),
            bytes,
        })
    }

    /// Call `f` with tensor `name`'s shape, dtype and bytes.
    fn with_view<R>(
        &self,
        name: &str,
        f: impl FnOnce(Vec<usize>, Dtype, &[u8]) -> Result<R, LatentsError>,
    ) -> Result<R, LatentsError> {
        let st = SafeTensors::deserialize(&self.bytes).map_err(|e| LatentsError::Corrupt {
            path: self.path.clone(),
            reason: e.to_string(),
        })?;
        let view = st.tensor(name).map_err(|_| {
            let mut names: Vec<_> = st.names().into_iter().map(String::from).collect();
            names.sort();
            LatentsError::Missing {
                path: self.path.clone(),
                name: name.into(),
                available: names.join(", "),
            }
        })?;
        let shape = view.shape().to_vec();
        if shape.contains(&0) {
            return Err(LatentsError::Empty {
                path: self.path.clone(),
                name: name.into(),
                shape,
            });
        }
        f(shape, view.dtype(), view.data())
    }

    /// Tensor `name` as f32 (stored as F32, F16 or BF16) and its shape.
    pub fn f32(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>), LatentsError> {
        self.decode(name, "F32 (or F16/BF16)", |dtype, raw| match dtype {
            Dtype::F32 => Some(
                raw.chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
            ),
            Dtype::F16 => Some(
                raw.chunks_exact(2)
                    .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
                    .collect(),
            ),
            Dtype::BF16 => Some(
                raw.chunks_exact(2)
                    .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32())
                    .collect(),
            ),
            _ => None,
        })
    }

    /// Tensor `name` as i64 (stored as I64 or I32, e.g. an attention mask) and its shape.
    pub fn i64(&self, name: &str) -> Result<(Vec<usize>, Vec<i64>), LatentsError> {
        self.decode(name, "I64 (or I32)", |dtype, raw| match dtype {
            Dtype::I64 => Some(
                raw.chunks_exact(8)
                    .map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
                    .collect(),
            ),
            Dtype::I32 => Some(
                raw.chunks_exact(4)
                    .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i64)
                    .collect(),
            ),
            _ => None,
        })
    }

    /// Tensor `name` converted by `convert` (`None`: a dtype it does not read, `expected`
    /// saying which it does).
    fn decode<T>(
        &self,
        name: &str,
        expected: &'static str,
        convert: impl FnOnce(Dtype, &[u8]) -> Option<Vec<T>>,
    ) -> Result<(Vec<usize>, Vec<T>), LatentsError> {
        self.with_view(name, |shape, dtype, raw| match convert(dtype, raw) {
            Some(data) => Ok((shape, data)),
            None => Err(LatentsError::Dtype {
                path: self.path.clone(),
                name: name.into(),
                dtype,
                expected,
            }),
        })
    }

    /// Tensor `name` as a rank-5 f32 tensor.
    pub fn tensor5(&self, name: &str) -> Result<Tensor5, LatentsError> {
        let (shape, data) = self.f32(name)?;
        let shape5: [usize; 5] = shape.clone().try_into().map_err(|_| LatentsError::Rank {
            path: self.path.clone(),
            name: name.into(),
            shape: shape.clone(),
        })?;
        Tensor5::from_vec(shape5, data).map_err(|e| LatentsError::Corrupt {
            path: self.path.clone(),
            reason: e.to_string(),
        })
    }
}

/// Read tensor `name` of `path` as a rank-5 f32 tensor.
pub fn read_tensor5(path: &Path, name: &str) -> Result<Tensor5, LatentsError> {
    TensorFile::open(path)?.tensor5(name)
}

/// Write `latents` as tensor `latents` of a new safetensors file at `path` (through a temporary
/// file in the same directory, renamed into place: never half-written).
pub fn write_latents(path: &Path, latents: &Tensor5) -> Result<(), LatentsError> {
    let io = |source| LatentsError::Io {
        path: path.into(),
        source,
    };
    let bytes: Vec<u8> = latents
        .data()
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let view = safetensors::tensor::TensorView::new(Dtype::F32, latents.shape().to_vec(), &bytes)
        .map_err(|e| LatentsError::Corrupt {
        path: path.into(),
        reason: e.to_string(),
    })?;
    let out = safetensors::serialize([(LATENTS_TENSOR, view)], None).map_err(|e| {
        LatentsError::Corrupt {
            path: path.into(),
            reason: e.to_string(),
        }
    })?;
    crate::atomic::write_file(path, &out).map_err(io)
}

/// Read the `latents` tensor and check its channel count against the VAE's.
pub fn read_latents(path: &Path, expected_channels: usize) -> Result<Tensor5, LatentsError> {
    read_latents_named(path, LATENTS_TENSOR, expected_channels)
}

/// Read latents stored under tensor `name` and check their channel count.
pub fn read_latents_named(
    path: &Path,
    name: &str,
    expected_channels: usize,
) -> Result<Tensor5, LatentsError> {
    let t = read_tensor5(path, name)?;
    if t.shape()[1] != expected_channels {
        return Err(LatentsError::Channels {
            path: path.into(),
            name: name.into(),
            found: t.shape()[1],
            expected: expected_channels,
        });
    }
    Ok(t)
}
