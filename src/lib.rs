//! hyvideo: run HunyuanVideo from exported ONNX engines — tokenizers and text encoders, seeded
//! noise, the flow-matching denoising loop on the transformer, tiled VAE decoding and video
//! files — plus the engine builds and calibration the `hyvideo-export` binary drives. The
//! layout and data flow are in `docs/architecture.md`.

pub mod atomic;
pub mod bench;
pub mod calibrate;
pub mod cli;
pub mod denoise;
pub mod engine_set;
pub mod generation;
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
