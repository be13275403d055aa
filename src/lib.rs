//! hyvideo: run HunyuanVideo from exported ONNX engines — tiled VAE decoding and video files
//! (text encoders, scheduler and the denoising loop come with later issues).

pub mod tensor;
pub mod vae_tiling;
pub mod video;
