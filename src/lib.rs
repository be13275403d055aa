//! hyvideo: run HunyuanVideo from exported ONNX engines — tiled VAE decoding and video files
//! (text encoders, scheduler and the denoising loop come with later issues).

pub mod cli;
pub mod latents;
pub mod memory;
pub mod scheduler;
pub mod tensor;
pub mod vae;
pub mod vae_tiling;
pub mod video;
