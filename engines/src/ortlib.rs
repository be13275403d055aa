//! Finding and loading the ONNX Runtime shared library (`ort` with `load-dynamic`).
//!
//! Search order: an explicit path (the binaries' `--ort-lib` flag), `ORT_DYLIB_PATH`, then the
//! project-local copy that `scripts/setup.sh` extracts from the pinned PyPI wheel
//! (`.ort/lib/libonnxruntime.so*` next to the executable's project, or next to the source tree
//! this binary was built from). Mirrors ort's own `ORT_DYLIB_PATH` convention.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::error::{EngineError, Result};

/// The ONNX Runtime version the setup script installs and the bindings (`api-31`) expect.
pub const ORT_VERSION: &str = "1.31.1";
/// Name of the shared library inside `.ort/lib/`.
pub const ORT_LIB_NAME: &str = "libonnxruntime.so.1.31.1";

/// Candidate locations for the library, in search order.
pub fn candidates(explicit: Option<&Path>) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(p) = explicit {
        out.push(p.to_path_buf());
        return out;
    }
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH").filter(|p| !p.is_empty()) {
        out.push(PathBuf::from(p));
        return out;
    }
    // target/<profile>/hyvideo -> project root is two or three levels up.
    if let Ok(exe) = std::env::current_exe() {
        for up in exe.ancestors().skip(1).take(4) {
            out.push(up.join(".ort/lib").join(ORT_LIB_NAME));
        }
    }
    let src_root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap_or(Path::new("."));
    out.push(src_root.join(".ort/lib").join(ORT_LIB_NAME));
    out.dedup();
    out
}

/// Resolve the library path: the first candidate that exists.
pub fn locate(explicit: Option<&Path>) -> Result<PathBuf> {
    let cands = candidates(explicit);
    cands
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .ok_or(EngineError::LibraryNotFound { searched: cands })
}

static ENV: OnceLock<std::result::Result<(PathBuf, ort::environment::Environment), String>> =
    OnceLock::new();

/// Load ONNX Runtime once per process and return the environment sessions are built from.
/// A second call with a different path reuses the first library (ONNX Runtime can be loaded
/// only once per process).
pub fn environment(explicit: Option<&Path>) -> Result<&'static ort::environment::Environment> {
    let path = locate(explicit)?;
    let entry = ENV.get_or_init(|| {
        let env = ort::init_from(&path)
            .map_err(|e| e.to_string())
            .and_then(|b| b.with_name("hyvideo").build().map_err(|e| e.to_string()));
        env.map(|e| (path.clone(), e))
    });
    match entry {
        Ok((_, env)) => Ok(env),
        Err(reason) => Err(EngineError::LibraryLoad {
            path,
            reason: reason.clone(),
        }),
    }
}

/// The path of the library this process loaded, if any.
pub fn loaded_library() -> Option<&'static Path> {
    ENV.get()
        .and_then(|r| r.as_ref().ok())
        .map(|(p, _)| p.as_path())
}
