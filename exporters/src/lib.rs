//! hyvideo-exporters: HunyuanVideo checkpoints in, ONNX graphs out.
//!
//! [`checkpoint`] reads safetensors and diffusers configs, [`onnx`] writes graphs with external
//! weights, [`graph`] has the shared layers, one module per subnetwork builds its graph, and
//! [`export`] / [`bundle`] put the results into a self-contained bundle.

pub mod attention;
pub mod bundle;
pub mod checkpoint;
pub mod clip;
pub mod error;
pub mod export;
pub mod graph;
pub mod llama;
pub mod onnx;
pub mod precision;
pub mod transformer;
pub mod transformer_layout;
pub mod vae_decoder;

pub use error::{ExportError, Result};
