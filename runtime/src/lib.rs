//! hyvideo: run HunyuanVideo from exported ONNX bundles (or engines built from them) —
//! tokenizers and text encoders, seeded noise, the flow-matching denoising loop on the
//! transformer, tiled VAE decoding and video files — as one [`generation::Pipeline`] loaded once
//! and asked for any number of videos. It reads bundles through their contract
//! (`hyvideo-bundle`) and depends on no exporter code; the layout and data flow are in
//! `docs/architecture.md`.

pub mod atomic;
pub mod denoise;
pub mod denoiser;
pub mod engine_set;
pub mod generation;
pub mod graph_load;
pub mod i2v;
pub mod image;
pub mod image_prompt;
pub mod latents;
pub mod memory;
pub mod noise;
pub mod pipeline;
pub mod scheduler;
pub mod setting;
pub mod staged_transformer;
pub mod step_cache;
pub mod tensor;
pub mod text;
pub mod transformer;
pub mod vae;
pub mod vae_encode;
pub mod vae_tiling;
pub mod video;
