//! Reading and writing latent tensors as `.safetensors` (tensor `latents`, f32
//! [B, C, t, h, w], before division by the VAE scaling factor), with errors that name the file
//! and tensor. Matches the layout diffusers' pipelines return with `output_type="latent"`.

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
    #[error("{}: tensor `{name}` has dtype {dtype:?}; expected F32 (or F16/BF16)", .path.display())]
    Dtype {
        path: PathBuf,
        name: String,
        dtype: Dtype,
    },
    #[error("{}: tensor `{name}` has an empty dimension: {shape:?}", .path.display())]
    Empty {
        path: PathBuf,
        name: String,
        shape: Vec<usize>,
    },
}

/// Read tensor `name` of `path` as a rank-5 f32 tensor.
pub fn read_tensor5(path: &Path, name: &str) -> Result<Tensor5, LatentsError> {
    let bytes = std::fs::read(path).map_err(|source| LatentsError::Io {
        path: path.into(),
        source,
    })?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| LatentsError::Corrupt {
        path: path.into(),
        reason: e.to_string(),
    })?;
    let view = st.tensor(name).map_err(|_| {
        let mut names: Vec<_> = st.names().into_iter().map(String::from).collect();
        names.sort();
        LatentsError::Missing {
            path: path.into(),
            name: name.into(),
            available: names.join(", "),
        }
    })?;
    let shape = view.shape().to_vec();
    let shape5: [usize; 5] = shape.clone().try_into().map_err(|_| LatentsError::Rank {
        path: path.into(),
        name: name.into(),
        shape: shape.clone(),
    })?;
    if shape.contains(&0) {
        return Err(LatentsError::Empty {
            path: path.into(),
            name: name.into(),
            shape,
        });
    }
    let raw = view.data();
    let data: Vec<f32> = match view.dtype() {
        Dtype::F32 => raw
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::F16 => raw
            .chunks_exact(2)
            .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::BF16 => raw
            .chunks_exact(2)
            .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        dtype => {
            return Err(LatentsError::Dtype {
                path: path.into(),
                name: name.into(),
                dtype,
            });
        }
    };
    Tensor5::from_vec(shape5, data).map_err(|e| LatentsError::Corrupt {
        path: path.into(),
        reason: e.to_string(),
    })
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
