//! How an image-to-video transformer takes its image: diffusers'
//! `HunyuanVideoTransformer3DModel(image_condition_type=…)` (`transformer/config.json`), read by
//! the exporter (which graph to build) and the runtime (how to feed and step the latents, as
//! `HunyuanVideoImageToVideoPipeline` does).

use std::fmt;

use serde::{Deserialize, Serialize};

/// The transformer's image condition type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ImageCondition {
    /// Text-to-video (`image_condition_type: null`).
    #[default]
    None,
    /// HunyuanVideo-I2V: the first latent frame is the clean image latent, its tokens modulated
    /// with the conditioning of timestep 0; only the other frames are denoised.
    TokenReplace,
    /// HunyuanVideo-I2V-33ch: `[noisy latents; image latents; mask]` concatenated on the
    /// channels (`in_channels = 2·latent_channels + 1`); the video drops the conditioning frame.
    LatentConcat,
}

impl ImageCondition {
    /// The config value (`None` for text-to-video).
    pub fn config_value(self) -> Option<&'static str> {
        match self {
            ImageCondition::None => None,
            ImageCondition::TokenReplace => Some("token_replace"),
            ImageCondition::LatentConcat => Some("latent_concat"),
        }
    }

    /// Parse the config's `image_condition_type`; the error lists the known values.
    pub fn from_config(value: Option<&str>) -> Result<Self, String> {
        match value {
            None => Ok(ImageCondition::None),
            Some("token_replace") => Ok(ImageCondition::TokenReplace),
            Some("latent_concat") => Ok(ImageCondition::LatentConcat),
            Some(other) => Err(format!(
                "unknown image_condition_type `{other}` (expected token_replace, latent_concat or null)"
            )),
        }
    }

    /// Whether this transformer generates from an image.
    pub fn is_image_to_video(self) -> bool {
        self != ImageCondition::None
    }

    /// Frames the reference pipeline drops from the front of the decoded video: latent_concat
    /// returns the frames after the conditioning latent frame's 4 (`video[:, :, 4:]`), so a
    /// request for `num_frames` delivers `num_frames − 4`; the others deliver all.
    pub fn dropped_video_frames(self) -> usize {
        match self {
            ImageCondition::LatentConcat => 4,
            ImageCondition::None | ImageCondition::TokenReplace => 0,
        }
    }
}

impl fmt::Display for ImageCondition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.config_value().unwrap_or("none (text-to-video)"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_values_parse_back() {
        for c in [
            ImageCondition::None,
            ImageCondition::TokenReplace,
            ImageCondition::LatentConcat,
        ] {
            assert_eq!(ImageCondition::from_config(c.config_value()), Ok(c));
        }
        let e = ImageCondition::from_config(Some("concat")).unwrap_err();
        assert!(e.contains("`concat`") && e.contains("latent_concat"), "{e}");
        assert!(!ImageCondition::None.is_image_to_video());
        assert!(ImageCondition::LatentConcat.is_image_to_video());
        assert_eq!(ImageCondition::LatentConcat.dropped_video_frames(), 4);
        assert_eq!(ImageCondition::TokenReplace.dropped_video_frames(), 0);
    }
}
