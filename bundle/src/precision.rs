//! The precision a bundle is exported with, and the element types its graph inputs and outputs
//! carry (what the manifest records for each tensor).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The precision profile a bundle was exported with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    Fp32,
    Fp16,
    Bf16,
    Fp8,
}

impl Precision {
    pub const ALL: [Precision; 4] = [
        Precision::Fp32,
        Precision::Fp16,
        Precision::Bf16,
        Precision::Fp8,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Fp16 => "fp16",
            Precision::Bf16 => "bf16",
            Precision::Fp8 => "fp8",
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Precision::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| format!("unknown precision `{s}` (expected fp32, fp16, bf16 or fp8)"))
    }
}

/// The element type of a graph input or output, as the manifest records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TensorType {
    Float32,
    Float16,
    Bfloat16,
    Int64,
}

impl TensorType {
    pub fn name(self) -> &'static str {
        match self {
            TensorType::Float32 => "float32",
            TensorType::Float16 => "float16",
            TensorType::Bfloat16 => "bfloat16",
            TensorType::Int64 => "int64",
        }
    }
}

impl fmt::Display for TensorType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
