//! hyvideo-cli: what the two binaries share, and the export-side tools that need both the
//! exporter and the runtime.
//!
//! - [`cli`]: command-line arguments both binaries take (session, runtime, sampling, tiling);
//! - [`engine_build`]: `hyvideo-export build`, engines per machine from a bundle;
//! - [`calibrate`]: `hyvideo-export calibrate`, FP8 activation ranges from an fp32 bundle;
//! - [`mod@bench`]: `hyvideo bench`'s statistics and its table against the PyTorch path.
//!
//! The runtime itself is the `hyvideo` library crate (`runtime/`); the layout is in
//! `docs/architecture.md`.

pub mod bench;
pub mod calibrate;
pub mod cli;
pub mod engine_build;
