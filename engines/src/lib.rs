//! hyvideo-engines: ONNX Runtime sessions on a chosen execution provider (CPU always; CUDA and
//! TensorRT behind the `cuda` / `tensorrt` cargo features, which compile without a GPU).
//!
//! ONNX Runtime is loaded at run time (`ort` with `load-dynamic`) from the library that
//! `scripts/setup.sh` fetches from PyPI; see [`ortlib`].

pub mod error;
pub mod identity;
pub mod nvlib;
pub mod ortlib;
pub mod placement;
pub mod profile;
pub mod provider;
pub mod session;

pub use error::{EngineError, Result};
pub use identity::DeviceIdentity;
pub use placement::{Placement, ProviderNodes};
pub use profile::{InputProfile, ProfilePoint};
pub use provider::{Backend, BackendKind, Registration, TensorRtOptions};
pub use session::{
    AttentionPolicy, Engine, Input, Optimization, SessionConfig, Tensor, ThreadSpinning,
    session_entries,
};
