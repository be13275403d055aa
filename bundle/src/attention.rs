//! Which attention implementation a graph runs: recorded in engine directories and run records,
//! chosen when a bundle graph is loaded (the standard form the bundle carries, or ONNX
//! Runtime's fused `com.microsoft.MultiHeadAttention`).

use serde::{Deserialize, Serialize};

/// Which attention implementation a graph runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum AttentionKernel {
    /// `MatMul → Softmax → MatMul` in standard operators (bundles, TensorRT).
    #[default]
    Standard,
    /// ONNX Runtime's `com.microsoft.MultiHeadAttention` (CPU and CUDA providers).
    MultiHeadAttention,
}

impl std::fmt::Display for AttentionKernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AttentionKernel::Standard => "standard",
            AttentionKernel::MultiHeadAttention => "multi_head_attention",
        })
    }
}
