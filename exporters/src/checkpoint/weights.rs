//! A prefix builder over a checkpoint, in the habit of candle's `VarBuilder`.
//!
//! Model code names its fields exactly like the checkpoint tensors and walks down the module
//! tree with [`Weights::pp`], asking for each tensor with the shape its config implies:
//!
//! ```no_run
//! # use hyvideo_exporters::checkpoint::{Weights, DType};
//! # fn main() -> Result<(), hyvideo_exporters::checkpoint::CheckpointError> {
//! let vb = Weights::open("HunyuanVideo/vae")?;
//! let conv = vb.pp("decoder").pp("up_blocks").pp(0).pp("resnets").pp(0).pp("conv1").pp("conv");
//! let w = conv.get("weight", &[512, 512, 3, 3, 3])?; // "decoder.up_blocks.0.resnets.0.conv1.conv.weight"
//! let stream = w.stream(DType::BF16); // owned, for the ONNX writer
//! # Ok(()) }
//! ```

use std::path::Path;
use std::sync::Arc;

use super::dtype::TargetDType;
use super::error::Result;
use super::store::{Checkpoint, TensorView};
use super::stream::TensorStream;

/// A checkpoint plus a dotted name prefix. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Weights {
    checkpoint: Arc<Checkpoint>,
    prefix: String,
}

impl Weights {
    /// Weights at the root of `checkpoint`.
    pub fn new(checkpoint: Arc<Checkpoint>) -> Weights {
        Weights {
            checkpoint,
            prefix: String::new(),
        }
    }

    /// Open a checkpoint (file, index or directory, see [`Checkpoint::open`]).
    pub fn open(path: impl AsRef<Path>) -> Result<Weights> {
        Ok(Weights::new(Arc::new(Checkpoint::open(path)?)))
    }

    /// Push a prefix segment (candle's `pp` / `push_prefix`); numbers work too: `pp(3)`.
    #[must_use]
    pub fn pp(&self, segment: impl ToString) -> Weights {
        Weights {
            checkpoint: Arc::clone(&self.checkpoint),
            prefix: self.path(&segment.to_string()),
        }
    }

    /// The current prefix (`""` at the root).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The full dotted name of `name` under the current prefix.
    pub fn path(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_owned()
        } else if name.is_empty() {
            self.prefix.clone()
        } else {
            format!("{}.{}", self.prefix, name)
        }
    }

    pub fn checkpoint(&self) -> &Checkpoint {
        &self.checkpoint
    }

    /// Whether `name` exists under the prefix (for optional tensors such as biases).
    pub fn contains(&self, name: &str) -> bool {
        self.checkpoint.contains(&self.path(name))
    }

    /// The tensor `prefix.name`, checked against `shape`.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<TensorView<'_>> {
        self.checkpoint.get(&self.path(name))?.expect_shape(shape)
    }

    /// The tensor `prefix.name`, whatever its shape.
    pub fn get_unchecked(&self, name: &str) -> Result<TensorView<'_>> {
        self.checkpoint.get(&self.path(name))
    }

    /// An owned stream of `prefix.name` (shape-checked) converted to `target`.
    pub fn stream(&self, name: &str, shape: &[usize], target: TargetDType) -> Result<TensorStream> {
        Ok(self.get(name, shape)?.stream(target))
    }

    /// Distinct next name segments under the prefix, sorted numerically where they are
    /// numbers (`["0", "1", .., "10"]`) — e.g. to count `transformer_blocks`.
    pub fn children(&self) -> Vec<String> {
        let start = if self.prefix.is_empty() {
            String::new()
        } else {
            format!("{}.", self.prefix)
        };
        let mut out: Vec<String> = self
            .checkpoint
            .names()
            .filter_map(|n| n.strip_prefix(start.as_str()))
            .map(|rest| rest.split('.').next().unwrap_or(rest).to_owned())
            .collect();
        out.sort_by(|a, b| match (a.parse::<u64>(), b.parse::<u64>()) {
            (Ok(x), Ok(y)) => x.cmp(&y),
            (Ok(_), Err(_)) => std::cmp::Ordering::Less,
            (Err(_), Ok(_)) => std::cmp::Ordering::Greater,
            (Err(_), Err(_)) => a.cmp(b),
        });
        out.dedup();
        out
    }
}

impl From<Checkpoint> for Weights {
    fn from(checkpoint: Checkpoint) -> Weights {
        Weights::new(Arc::new(checkpoint))
    }
}

#[cfg(test)]
mod tests {
    use super::super::dtype::DType;
    use super::super::error::CheckpointError;
    use super::super::safetensors::tests::build;
    use super::*;

    fn fixture(dir: &Path) -> Weights {
        let one = 1.0f32.to_le_bytes();
        let w = [0u8; 4 * 2 * 3];
        let file = build(&[
            ("decoder.conv_in.conv.weight", "F32", &[2, 3], &w),
            ("decoder.conv_in.conv.bias", "F32", &[1], &one),
            ("decoder.up_blocks.0.x", "F32", &[1], &one),
            ("decoder.up_blocks.2.x", "F32", &[1], &one),
            ("decoder.up_blocks.10.x", "F32", &[1], &one),
            ("decoder.up_blocks.1.x", "F32", &[1], &one),
        ]);
        let path = dir.join("diffusion_pytorch_model.safetensors");
        std::fs::write(&path, file).unwrap();
        Weights::open(dir).unwrap()
    }

    #[test]
    fn prefixes_build_full_names() {
        let dir = tempfile::tempdir().unwrap();
        let vb = fixture(dir.path());
        let conv = vb.pp("decoder").pp("conv_in").pp("conv");
        assert_eq!(conv.prefix(), "decoder.conv_in.conv");
        let w = conv.get("weight", &[2, 3]).unwrap();
        assert_eq!(w.name, "decoder.conv_in.conv.weight");
        assert!(conv.contains("bias"));
        assert!(!conv.contains("scale"));
        assert_eq!(
            vb.pp("decoder").pp("up_blocks").pp(2).path("x"),
            "decoder.up_blocks.2.x"
        );
        assert_eq!(
            vb.pp("decoder").pp("up_blocks").children(),
            vec!["0", "1", "2", "10"]
        );
        assert_eq!(vb.children(), vec!["decoder"]);
        let s = conv.stream("bias", &[1], DType::F16).unwrap();
        assert_eq!(s.byte_len(), 2);
        assert_eq!(s.name(), "decoder.conv_in.conv.bias");
    }

    #[test]
    fn errors_carry_full_names() {
        let dir = tempfile::tempdir().unwrap();
        let vb = fixture(dir.path());
        let conv = vb.pp("decoder").pp("conv_in").pp("conv");
        match conv.get("weight", &[3, 2]) {
            Err(CheckpointError::ShapeMismatch {
                name,
                expected,
                found,
                ..
            }) => {
                assert_eq!(name, "decoder.conv_in.conv.weight");
                assert_eq!((expected, found), (vec![3, 2], vec![2, 3]));
            }
            other => panic!("{other:?}"),
        }
        match vb.pp("decoder").pp("conv_out").get("weight", &[1]) {
            Err(CheckpointError::MissingTensor { name, file }) => {
                assert_eq!(name, "decoder.conv_out.weight");
                assert!(file.ends_with("diffusion_pytorch_model.safetensors"));
            }
            other => panic!("{other:?}"),
        }
    }
}
