//! Shape presets (`configs/shapes/*.yaml`) and the rule that turns one into every graph input's
//! min / opt / max shape, derived from the component specs: fixed dims from the manifest,
//! symbolic dims by the component's [`ProfileRule`]. Mirrors NVIDIA demoDiffusion's per-model
//! `get_input_profile`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::components::Component;
use crate::manifest::{ComponentEntry, Manifest};
use crate::spec::{Dim, Presence, ProfileRule, Sym};

#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("{}: {reason}", .path.display())]
    Preset { path: PathBuf, reason: String },
    #[error("{}: {source}", .path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{component}: {reason}")]
    Record {
        component: Component,
        reason: String,
    },
}

/// A min / opt / max triple as written in presets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Range3(pub [usize; 3]);

impl Range3 {
    pub fn fixed(n: usize) -> Range3 {
        Range3([n; 3])
    }

    fn check(&self, what: &str) -> Result<(), String> {
        let [a, b, c] = self.0;
        if a == 0 || a > b || b > c {
            return Err(format!(
                "{what}: need 1 <= min <= opt <= max, got [{a}, {b}, {c}]"
            ));
        }
        Ok(())
    }
}

/// A shape preset: pixel resolutions (height, width; the first is the optimum), frames and
/// batch as min / opt / max.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShapePreset {
    pub name: String,
    pub resolutions: Vec<[usize; 2]>,
    pub frames: Range3,
    pub batch: Range3,
}

impl ShapePreset {
    /// Read and validate: resolutions multiples of 16, frames of the form 4k + 1.
    pub fn load(path: &Path) -> Result<ShapePreset, ProfileError> {
        let text = std::fs::read_to_string(path).map_err(|source| ProfileError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let bad = |reason: String| ProfileError::Preset {
            path: path.to_path_buf(),
            reason,
        };
        let p: ShapePreset = serde_saphyr::from_str(&text).map_err(|e| {
            bad(format!(
                "not a shape preset (name, resolutions, frames, batch): {e}"
            ))
        })?;
        p.validate().map_err(bad)?;
        Ok(p)
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.resolutions.is_empty() {
            return Err("resolutions: give at least one [height, width]".into());
        }
        for r in &self.resolutions {
            if r.iter().any(|v| *v == 0 || !v.is_multiple_of(16)) {
                return Err(format!(
                    "resolution {r:?}: height and width must be positive multiples of 16"
                ));
            }
        }
        self.frames.check("frames")?;
        self.batch.check("batch")?;
        if let Some(f) = self.frames.0.iter().find(|f| !(**f - 1).is_multiple_of(4)) {
            return Err(format!("frames: {f} is not of the form 4k + 1"));
        }
        Ok(())
    }
}

/// What the profile rules need besides the preset: the runtime's fixed sizes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProfileContext {
    /// The VAE's spatial and temporal compression (latent grid = pixels / spatial, frames
    /// (f - 1) / temporal + 1).
    pub spatial_ratio: usize,
    pub temporal_ratio: usize,
    /// Prompt tokens the denoiser sees (a prompt's valid tokens): min / opt / max.
    pub prompt_tokens: Range3,
    /// The largest decode tile, in latents: frames and height = width.
    pub tile_frames: usize,
    pub tile_size: usize,
    /// The fixed (padded) prompt length of a [`ProfileRule::FixedPrompt`] component whose
    /// length is symbolic in its graph (Llama: the template's length), per component.
    pub encoder_tokens: Vec<(Component, usize)>,
    /// The transformer's spatial patch size (its stages' image tokens are latent frames ×
    /// height / p × width / p).
    pub patch_size: usize,
}

impl ProfileContext {
    /// The compression ratios of `manifest`'s VAE (8 and 4, HunyuanVideo's, without one).
    pub fn ratios(manifest: &Manifest) -> (usize, usize) {
        manifest
            .vae
            .as_ref()
            .map(|v| (v.spatial_compression_ratio, v.temporal_compression_ratio))
            .unwrap_or((8, 4))
    }

    fn range(
        &self,
        rule: ProfileRule,
        component: Component,
        sym: Sym,
        preset: &ShapePreset,
    ) -> Option<Range3> {
        // min / first / max of the preset's resolutions along `axis` (0: height, 1: width),
        // each divided by `ratio`.
        let resolution = |axis: usize, ratio: usize| {
            let v: Vec<usize> = preset.resolutions.iter().map(|r| r[axis] / ratio).collect();
            let (min, max) = (v.iter().min()?, v.iter().max()?);
            Some(Range3([*min, v[0], *max]))
        };
        let latent = |axis: usize| resolution(axis, self.spatial_ratio);
        let frames = |f: usize| (f - 1) / self.temporal_ratio + 1;
        // Image tokens per resolution (patches of the latent grid); min / first / max over the
        // preset's resolutions, times the frame range.
        let image_tokens = || {
            let p = self.patch_size.max(1);
            let per: Vec<usize> = preset
                .resolutions
                .iter()
                .map(|r| (r[0] / self.spatial_ratio / p) * (r[1] / self.spatial_ratio / p))
                .collect();
            let (min, max) = (*per.iter().min()?, *per.iter().max()?);
            let Range3([f0, f1, f2]) = Range3(preset.frames.0.map(frames));
            Some(Range3([min * f0, per[0] * f1, max * f2]))
        };
        match (rule, sym) {
            (ProfileRule::Denoiser, Sym::ImageTokens) => image_tokens(),
            (ProfileRule::Denoiser, Sym::JointTokens) => {
                let Range3([a, b, c]) = image_tokens()?;
                let Range3([x, y, z]) = self.prompt_tokens;
                Some(Range3([a + x, b + y, c + z]))
            }
            (ProfileRule::Denoiser, Sym::Batch) => Some(preset.batch),
            (ProfileRule::Denoiser, Sym::Frames) => Some(Range3(preset.frames.0.map(frames))),
            (ProfileRule::Denoiser, Sym::Height) => latent(0),
            (ProfileRule::Denoiser, Sym::Width) => latent(1),
            (ProfileRule::Denoiser, Sym::TextLen) => Some(self.prompt_tokens),
            (ProfileRule::Tiles | ProfileRule::FixedPrompt | ProfileRule::Image, Sym::Batch) => {
                Some(Range3::fixed(1))
            }
            (ProfileRule::Image, Sym::Frames) => Some(Range3::fixed(1)),
            (ProfileRule::Image, Sym::Height) => resolution(0, 1),
            (ProfileRule::Image, Sym::Width) => resolution(1, 1),
            (ProfileRule::Tiles, Sym::LatentFrames) => {
                Some(Range3([1, self.tile_frames, self.tile_frames]))
            }
            (ProfileRule::Tiles, Sym::LatentHeight | Sym::LatentWidth) => {
                Some(Range3([1, self.tile_size, self.tile_size]))
            }
            (ProfileRule::FixedPrompt, Sym::TextLen) => self
                .encoder_tokens
                .iter()
                .find(|(c, _)| *c == component)
                .map(|(_, n)| Range3::fixed(*n)),
            _ => None,
        }
    }
}

/// The shape range of one graph input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShapeRange {
    pub name: String,
    pub min: Vec<usize>,
    pub opt: Vec<usize>,
    pub max: Vec<usize>,
}

/// min / opt / max shapes of every input `entry` records for `component`, for `preset`: each
/// input and dim as the component's spec declares it, fixed dims as the manifest records them.
pub fn input_ranges(
    component: Component,
    entry: &ComponentEntry,
    preset: &ShapePreset,
    ctx: &ProfileContext,
) -> Result<Vec<ShapeRange>, ProfileError> {
    let spec = component.spec();
    let bad = |reason: String| ProfileError::Record { component, reason };
    if let Some(t) = entry.inputs.iter().find(|t| spec.input(&t.name).is_none()) {
        return Err(bad(format!(
            "the manifest records an input `{}` its spec does not declare; re-export the bundle",
            t.name
        )));
    }
    let mut out = Vec::with_capacity(spec.inputs.len());
    for s in &spec.inputs {
        let Some(t) = entry.input(s.name) else {
            if s.presence == Presence::Required {
                return Err(bad(format!("the manifest records no input `{}`", s.name)));
            }
            continue;
        };
        if t.dims.len() != s.dims.len() {
            return Err(bad(format!(
                "input `{}` is recorded with {} dims, its spec has {}",
                s.name,
                t.dims.len(),
                s.dims.len()
            )));
        }
        let mut r = ShapeRange {
            name: s.name.to_owned(),
            min: Vec::new(),
            opt: Vec::new(),
            max: Vec::new(),
        };
        for (i, d) in s.dims.iter().enumerate() {
            let Range3([a, b, c]) = match d {
                Dim::Size(z) => Range3::fixed(t.fixed(i).ok_or_else(|| {
                    bad(format!(
                        "input `{}` dim {i} ({}) is not recorded as a number",
                        s.name,
                        z.name()
                    ))
                })?),
                Dim::Sym(sym) => ctx
                    .range(spec.profile, component, *sym, preset)
                    .ok_or_else(|| {
                        bad(format!(
                            "no profile rule gives `{}` of input `{}`",
                            sym.name(),
                            s.name
                        ))
                    })?,
            };
            r.min.push(a);
            r.opt.push(b);
            r.max.push(c);
        }
        out.push(r);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::precision::TensorType;
    use crate::spec::TensorSpec;

    fn entry(inputs: &[(&str, &[&str])]) -> ComponentEntry {
        ComponentEntry {
            file: String::new(),
            data_file: None,
            sha256: String::new(),
            inputs: inputs
                .iter()
                .map(|(n, d)| TensorSpec {
                    name: n.to_string(),
                    dtype: TensorType::Float32,
                    dims: d.iter().map(|s| s.to_string()).collect(),
                })
                .collect(),
            outputs: vec![],
            sources: vec![],
        }
    }

    fn ctx() -> ProfileContext {
        ProfileContext {
            spatial_ratio: 8,
            temporal_ratio: 4,
            prompt_tokens: Range3([1, 128, 256]),
            tile_frames: 5,
            tile_size: 32,
            encoder_tokens: vec![(Component::TextEncoder, 351)],
            patch_size: 2,
        }
    }

    fn preset() -> ShapePreset {
        ShapePreset {
            name: "p".into(),
            resolutions: vec![[544, 960], [720, 1280], [320, 512]],
            frames: Range3([1, 61, 129]),
            batch: Range3([1, 1, 2]),
        }
    }

    #[test]
    fn transformer_profiles_follow_the_preset() {
        let grid: &[&str] = &["batch", "16", "frames", "height", "width"];
        let e = entry(&[
            ("hidden_states", grid),
            ("timestep", &["batch"]),
            ("encoder_hidden_states", &["batch", "text_len", "4096"]),
            ("pooled_projections", &["batch", "768"]),
            ("guidance", &["batch"]),
        ]);
        let r = input_ranges(Component::Transformer, &e, &preset(), &ctx()).unwrap();
        assert_eq!(r.len(), 5);
        assert_eq!(r[0].min, [1, 16, 1, 40, 64]);
        assert_eq!(r[0].opt, [1, 16, 16, 68, 120]);
        assert_eq!(r[0].max, [2, 16, 33, 90, 160]);
        assert_eq!((r[2].min[1], r[2].opt[1], r[2].max[1]), (1, 128, 256));
        assert_eq!(r[4].name, "guidance");
        // Without the optional guidance input there is no profile for it.
        let e = entry(
            &e.inputs[..4]
                .iter()
                .map(|t| (t.name.as_str(), &[][..]))
                .collect::<Vec<_>>(),
        );
        let err = input_ranges(Component::Transformer, &e, &preset(), &ctx()).unwrap_err();
        assert!(err.to_string().contains("recorded with 0 dims"), "{err}");
    }

    /// The 720p preset (`configs/shapes/720p.yaml`): image tokens per frame are
    /// (h / 8 / 2) · (w / 8 / 2): 45 · 80 = 3600 at 720×1280 and 1280×720, 60 · 60 = 3600 at
    /// 960×960, 69 · 52 = 3588 at 1104×832 and 832×1104; latent frames 1 / 33 / 33 (129
    /// frames). min = fewest per frame × fewest frames, opt = the first resolution × opt
    /// frames, max = most per frame × most frames; joint tokens add the prompt's.
    #[test]
    fn transformer_stage_tokens_at_720p() {
        let preset = ShapePreset {
            name: "720p".into(),
            resolutions: vec![
                [720, 1280],
                [1280, 720],
                [1104, 832],
                [832, 1104],
                [960, 960],
            ],
            frames: Range3([1, 129, 129]),
            batch: Range3([1, 1, 2]),
        };
        assert_eq!(preset.validate(), Ok(()));
        let e = entry(&[
            ("img_tokens", &["batch", "image_tokens", "3072"]),
            ("txt_tokens", &["batch", "text_len", "3072"]),
            ("conditioning", &["batch", "3072"]),
            ("rope_cos", &["joint_tokens", "1", "128"]),
            ("rope_sin", &["joint_tokens", "1", "128"]),
            ("first_block_norm1", &["batch", "image_tokens", "3072"]),
        ]);
        let r = input_ranges(Component::TransformerFirstBlock, &e, &preset, &ctx()).unwrap();
        assert_eq!(r[0].min, [1, 3588, 3072]);
        assert_eq!(r[0].opt, [1, 33 * 45 * 80, 3072]);
        assert_eq!(r[0].opt[1], 118_800);
        assert_eq!(r[0].max, [2, 118_800, 3072]);
        assert_eq!((r[1].min[1], r[1].opt[1], r[1].max[1]), (1, 128, 256));
        for rope in &r[3..5] {
            assert_eq!(rope.min, [3588 + 1, 1, 128]);
            assert_eq!(rope.opt, [118_800 + 128, 1, 128]);
            assert_eq!(rope.max, [118_800 + 256, 1, 128]);
        }
        assert_eq!(
            (&r[5].min, &r[5].opt, &r[5].max),
            (&r[0].min, &r[0].opt, &r[0].max)
        );
        // The image tokens follow the patch size (1: every latent pixel a token).
        let mut p1 = ctx();
        p1.patch_size = 1;
        let r = input_ranges(Component::TransformerFirstBlock, &e, &preset, &p1).unwrap();
        assert_eq!(r[0].opt[1], 33 * 90 * 160);
    }

    #[test]
    fn tiles_and_fixed_prompts() {
        let e = entry(&[(
            "latent_sample",
            &[
                "batch",
                "16",
                "latent_frames",
                "latent_height",
                "latent_width",
            ],
        )]);
        let r = input_ranges(Component::VaeDecoder, &e, &preset(), &ctx()).unwrap();
        assert_eq!(
            (r[0].min.clone(), r[0].max.clone()),
            (vec![1, 16, 1, 1, 1], vec![1, 16, 5, 32, 32])
        );
        let e = entry(&[
            ("input_ids", &["batch", "text_len"]),
            ("attention_mask", &["batch", "text_len"]),
        ]);
        let r = input_ranges(Component::TextEncoder, &e, &preset(), &ctx()).unwrap();
        assert_eq!(
            (r[1].min.clone(), r[1].max.clone()),
            (vec![1, 351], vec![1, 351])
        );
        let mut no_len = ctx();
        no_len.encoder_tokens.clear();
        let err = input_ranges(Component::TextEncoder, &e, &preset(), &no_len).unwrap_err();
        assert!(err.to_string().contains("`text_len`"), "{err}");
        let e = entry(&[("input_ids", &["batch", "77"])]);
        let r = input_ranges(Component::TextEncoder2, &e, &preset(), &ctx()).unwrap();
        assert_eq!(r[0].opt, [1, 77]);
    }

    /// The VAE encoder takes one image (image-to-video's first frame) at batch 1, at any of
    /// the preset's resolutions in pixels: 320 / 544 / 720 high, 512 / 960 / 1280 wide (the
    /// first resolution is the optimum).
    #[test]
    fn the_vae_encoder_takes_one_image_at_the_presets_resolutions() {
        let e = entry(&[("sample", &["batch", "3", "frames", "height", "width"])]);
        let r = input_ranges(Component::VaeEncoder, &e, &preset(), &ctx()).unwrap();
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].name, "sample");
        assert_eq!(r[0].min, [1, 3, 1, 320, 512]);
        assert_eq!(r[0].opt, [1, 3, 1, 544, 960]);
        assert_eq!(r[0].max, [1, 3, 1, 720, 1280]);
        // One resolution: a fixed shape.
        let one = ShapePreset {
            resolutions: vec![[32, 48]],
            ..preset()
        };
        let r = input_ranges(Component::VaeEncoder, &e, &one, &ctx()).unwrap();
        assert_eq!(
            (&r[0].min, &r[0].max),
            (&vec![1, 3, 1, 32, 48], &vec![1, 3, 1, 32, 48])
        );
    }

    #[test]
    fn inputs_the_spec_does_not_know_are_refused() {
        let e = entry(&[
            ("input_ids", &["batch", "77"]),
            ("encoder_attention_mask", &["batch", "text_len"]),
        ]);
        let err = input_ranges(Component::TextEncoder2, &e, &preset(), &ctx()).unwrap_err();
        assert!(err.to_string().contains("encoder_attention_mask"), "{err}");
    }

    #[test]
    fn presets_are_validated() {
        let mut p = preset();
        assert_eq!(p.validate(), Ok(()));
        p.frames = Range3([1, 60, 129]);
        assert!(p.validate().unwrap_err().contains("4k + 1"));
        p.frames = Range3([1, 61, 129]);
        p.resolutions.push([100, 64]);
        assert!(p.validate().unwrap_err().contains("multiples of 16"));
    }
}
