//! hyvideo-bundle: the contract every part of hyvideo reads — the exporter that writes bundles,
//! the engine build that compiles them, the runtime that runs them.
//!
//! - [`components`]: the pipeline's components and, for each, its [`spec::ComponentSpec`]
//!   (graph file, source sub-folder, I/O names, element types and dims, profile rule);
//! - [`spec`]: the spec types and the check of a written graph's I/O against its spec;
//! - [`profile`]: shape presets and the min / opt / max input shapes they give each component;
//! - [`manifest`]: `manifest.yaml`, what a bundle holds;
//! - [`precision`], [`attention`]: the precisions and attention kernels bundles, engines and run
//!   records name; [`hash`]: the content hashes they record; [`image_condition`]: how an
//!   image-to-video transformer takes its image.
//!
//! It depends on no other hyvideo crate; the layout is in `docs/architecture.md`.

pub mod attention;
pub mod components;
pub mod hash;
pub mod image_condition;
pub mod manifest;
pub mod precision;
pub mod profile;
pub mod spec;

pub use attention::AttentionKernel;
pub use components::Component;
pub use image_condition::ImageCondition;
pub use manifest::{
    ComponentEntry, EXPORTER_VERSION, MANIFEST, Manifest, ManifestError, SourceFile, VaeSettings,
};
pub use precision::{Precision, TensorType};
pub use spec::{ComponentSpec, TensorSpec};
