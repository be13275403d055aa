//! hyvideo runtime.
pub mod video;
