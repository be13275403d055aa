//! hyvideo: run HunyuanVideo from exported ONNX engines — the flow-matching denoising loop on
//! the transformer, tiled VAE decoding and video files (text encoders come with a later issue).

pub mod bench;
pub mod calibrate;
pub mod cli;
pub mod denoise;
pub mod engine_set;
pub mod graph_load;
pub mod latents;
pub mod memory;
pub mod noise;
pub mod pipeline;
pub mod scheduler;
pub mod tensor;
pub mod text;
pub mod transformer;
pub mod vae;
pub mod vae_tiling;
pub mod video;
