//! The settings of a generation, as the library names them in its errors: a front end maps a
//! [`Setting`] to its own name for it (`hyvideo generate` to its flags, a server to its request
//! fields), so no library message names a command-line flag.

/// A setting of a generation request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Setting {
    Prompt,
    NegativePrompt,
    Height,
    Width,
    Frames,
    Steps,
    EmbeddedGuidance,
    FlowShift,
    CfgScale,
    Seed,
    InitialLatents,
    /// Spatial VAE tile size and stride, in pixels.
    TileSize,
    TileStride,
    /// Temporal VAE tile length and stride, in frames.
    TileFrames,
    TileStrideFrames,
    /// Step caching: the method, its threshold, and the window of steps it decides.
    StepCache,
    StepCacheThreshold,
    StepCacheStart,
    StepCacheEnd,
    /// The input image of an image-to-video bundle.
    Image,
}

impl std::fmt::Display for Setting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Setting::Prompt => "prompt",
            Setting::NegativePrompt => "negative prompt",
            Setting::Height => "height",
            Setting::Width => "width",
            Setting::Frames => "frames",
            Setting::Steps => "steps",
            Setting::EmbeddedGuidance => "embedded guidance scale",
            Setting::FlowShift => "flow shift",
            Setting::CfgScale => "cfg scale",
            Setting::Seed => "seed",
            Setting::InitialLatents => "initial latents",
            Setting::TileSize => "VAE tile size",
            Setting::TileStride => "VAE tile stride",
            Setting::TileFrames => "VAE tile frames",
            Setting::TileStrideFrames => "VAE tile frame stride",
            Setting::StepCache => "step cache",
            Setting::StepCacheThreshold => "step cache threshold",
            Setting::StepCacheStart => "step cache start",
            Setting::StepCacheEnd => "step cache end",
            Setting::Image => "input image",
        })
    }
}

/// A setting out of range, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{setting}: {reason}")]
pub struct InvalidSetting {
    pub setting: Setting,
    pub reason: String,
}

impl InvalidSetting {
    pub fn new(setting: Setting, reason: impl Into<String>) -> InvalidSetting {
        InvalidSetting {
            setting,
            reason: reason.into(),
        }
    }
}
