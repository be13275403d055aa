//! hyvideo-exporters: HunyuanVideo checkpoints in, ONNX graphs out.
//!
//! [`checkpoint`] reads safetensors and diffusers configs, [`graph`] has the shared layers over
//! `hyvideo-onnx`'s builder, one module per subnetwork builds its graph, [`precision`] writes
//! the precision profile into it, and [`export`] / [`bundle_writer`] check each graph against its
//! contract (`hyvideo-bundle`) and put the results into a self-contained bundle.

pub mod attention;
pub mod bundle_writer;
pub mod checkpoint;
pub mod clip;
pub mod clip_vision;
pub mod error;
pub mod export;
pub mod graph;
pub mod llama;
pub mod precision;
pub mod transformer;
pub mod transformer_layout;
pub mod transformer_stages;
pub mod vae_blocks;
pub mod vae_decoder;
pub mod vae_encoder;

pub use error::{ExportError, Result};
/// ONNX graphs (builder, writer, protobuf types), re-exported for the graph builders.
pub use hyvideo_onnx as onnx;
