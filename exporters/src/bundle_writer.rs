//! Writing a bundle: `<component>.onnx` (+ `.onnx.data`), copied settings, and the manifest
//! ([`hyvideo_bundle::Manifest`]), through a staging directory inside the bundle renamed into
//! place, the manifest last, so a reader never sees a half-written bundle.

use std::path::{Path, PathBuf};

use hyvideo_bundle::{MANIFEST, Manifest, Precision};

use crate::error::{ExportError, Result};

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ExportError + '_ {
    move |source| ExportError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes a bundle through a staging directory; dropped without `commit`, it removes
/// everything it wrote (and the bundle directory itself if it created it).
pub struct BundleWriter {
    out: PathBuf,
    staging: PathBuf,
    created_out: bool,
    manifest: Manifest,
    staged: Vec<String>,
    committed: bool,
    /// A precision profile replacing the built-in one of the bundle's precision.
    precision_profile: Option<crate::precision::PrecisionProfile>,
    /// Activation scales for fp8 profiles.
    fp8_scales: Option<crate::precision::Fp8Scales>,
}

impl BundleWriter {
    /// Use `profile` (e.g. from `--precision-profile FILE`) instead of the built-in profile of the
    /// bundle's precision.
    pub fn set_precision_profile(&mut self, profile: crate::precision::PrecisionProfile) {
        self.precision_profile = Some(profile);
    }

    /// Activation scales (`hyvideo-export calibrate`) for profiles with FP8 layers.
    pub fn set_fp8_scales(&mut self, scales: crate::precision::Fp8Scales) {
        self.fp8_scales = Some(scales);
    }

    pub fn fp8_scales(&self) -> Option<&crate::precision::Fp8Scales> {
        self.fp8_scales.as_ref()
    }

    /// The profile graphs of this bundle are written with.
    pub fn precision_profile(&self) -> Result<crate::precision::PrecisionProfile> {
        match &self.precision_profile {
            Some(p) => Ok(p.clone()),
            None => crate::precision::PrecisionProfile::builtin(self.manifest.precision),
        }
    }

    /// Start writing into `out` (created if missing). An existing bundle is extended: its
    /// manifest must be of this exporter version and the same precision.
    pub fn create(out: &Path, precision: Precision) -> Result<BundleWriter> {
        let created_out = !out.exists();
        if created_out {
            std::fs::create_dir_all(out).map_err(io_err(out))?;
        } else if !out.is_dir() {
            return Err(ExportError::Io {
                path: out.to_path_buf(),
                source: std::io::Error::other("--out exists and is not a directory"),
            });
        }
        let manifest = if out.join(MANIFEST).exists() {
            let m = Manifest::load(out).map_err(|e| ExportError::Model {
                component: "bundle",
                reason: e.to_string(),
            })?;
            if m.precision != precision {
                return Err(ExportError::Model {
                    component: "bundle",
                    reason: format!(
                        "{} holds a {} bundle; export {precision} into another --out directory",
                        out.display(),
                        m.precision
                    ),
                });
            }
            m
        } else {
            Manifest::new(precision)
        };
        let staging = out.join(format!(".staging-{}", std::process::id()));
        let cleanup = |e| {
            if created_out {
                let _ = std::fs::remove_dir_all(out);
            }
            e
        };
        std::fs::create_dir_all(&staging)
            .map_err(io_err(&staging))
            .map_err(cleanup)?;
        Ok(BundleWriter {
            out: out.to_path_buf(),
            staging,
            created_out,
            manifest,
            staged: Vec::new(),
            committed: false,
            precision_profile: None,
            fp8_scales: None,
        })
    }

    /// Where component files are written before the commit.
    pub fn staging_dir(&self) -> &Path {
        &self.staging
    }

    pub fn manifest_mut(&mut self) -> &mut Manifest {
        &mut self.manifest
    }

    /// Record a file written into the staging directory (relative name) to move at commit.
    pub fn stage(&mut self, name: impl Into<String>) {
        self.staged.push(name.into());
    }

    /// Copy `src` into the bundle as `name` (staged).
    pub fn copy_file(&mut self, src: &Path, name: &str) -> Result<()> {
        let dst = self.staging.join(name);
        if let Some(parent) = dst.parent() {
            std::fs::create_dir_all(parent).map_err(io_err(parent))?;
        }
        std::fs::copy(src, &dst).map_err(io_err(src))?;
        self.stage(name);
        Ok(())
    }

    /// Write `bytes` into the bundle as `name` (staged).
    pub fn write_file(&mut self, name: &str, bytes: &[u8]) -> Result<()> {
        let dst = self.staging.join(name);
        if let Some(parent) = dst.parent() {
            std::fs::create_dir_all(parent).map_err(io_err(parent))?;
        }
        std::fs::write(&dst, bytes).map_err(io_err(&dst))?;
        self.stage(name);
        Ok(())
    }

    /// Move every staged file into place, then write the manifest (atomically, last).
    pub fn commit(mut self) -> Result<Manifest> {
        for name in &self.staged {
            let (src, dst) = (self.staging.join(name), self.out.join(name));
            if let Some(parent) = dst.parent() {
                std::fs::create_dir_all(parent).map_err(io_err(parent))?;
            }
            std::fs::rename(&src, &dst).map_err(io_err(&dst))?;
        }
        let yaml = self.manifest.to_yaml().map_err(|e| ExportError::Model {
            component: "manifest",
            reason: e.to_string(),
        })?;
        let tmp = self.staging.join(MANIFEST);
        std::fs::write(&tmp, yaml).map_err(io_err(&tmp))?;
        std::fs::rename(&tmp, self.out.join(MANIFEST)).map_err(io_err(&self.out))?;
        let _ = std::fs::remove_dir_all(&self.staging);
        self.committed = true;
        Ok(self.manifest.clone())
    }
}

impl Drop for BundleWriter {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_dir_all(&self.staging);
            if self.created_out {
                let _ = std::fs::remove_dir_all(&self.out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uncommitted_writer_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("bundle");
        {
            let w = BundleWriter::create(&out, Precision::Fp32).unwrap();
            std::fs::write(w.staging_dir().join("x.onnx"), b"partial").unwrap();
        }
        assert!(!out.exists());
    }
}
