//! Image-to-video latents: how the image latent conditions the denoising loop for each image
//! condition type, the initial latents' image mix, and what a run returns.
//!
//! Mirrors diffusers `HunyuanVideoImageToVideoPipeline` (`prepare_latents` and `__call__`):
//! - the image latent is `vae.encode(image).mode() · scaling_factor`, repeated over the latent
//!   frames, and the initial latents are `noise · 0.999 + image · (1 − 0.999)` on every frame;
//! - `token_replace`: the model input is the latents with frame 0 replaced by the image latent,
//!   and after each Euler step (of frames 1..) frame 0 is the image latent again;
//! - `latent_concat`: the model input is `[latents; image latent on frame 0, zeros after; mask
//!   1 on frame 0, 0 after]` on the channels; every frame is stepped;
//! - the result: token_replace returns all latent frames (the first is the image latent) and
//!   decodes all of them; latent_concat returns `latents[:, :, 1:]` and its video is the decode
//!   of all latents without the first 4 frames.

use hyvideo_bundle::ImageCondition;

use crate::tensor::Tensor5;

/// diffusers' `t = 0.999` of `latents · t + image_latents · (1 − t)`.
pub const NOISE_WEIGHT: f32 = 0.999;

#[derive(Debug, thiserror::Error)]
pub enum I2vError {
    #[error("the image latent has shape {found:?}; expected [1, {channels}, 1, {h}, {w}]")]
    ImageLatent {
        found: [usize; 5],
        channels: usize,
        h: usize,
        w: usize,
    },
    #[error("{0} is not an image-to-video condition type")]
    NotImageToVideo(ImageCondition),
}

/// The image latent's part in the loop (built once per run by [`ImageConditioning::new`]).
#[derive(Debug, Clone)]
pub struct ImageConditioning {
    kind: ImageCondition,
    /// `[1, C, 1, h, w]`, already multiplied by the scaling factor.
    image: Tensor5,
}

impl ImageConditioning {
    /// `image` is the scaled image latent `[1, C, 1, h, w]` of latents `[1, C, T, h, w]`.
    pub fn new(
        kind: ImageCondition,
        image: Tensor5,
        latent_shape: [usize; 5],
    ) -> Result<Self, I2vError> {
        if !kind.is_image_to_video() {
            return Err(I2vError::NotImageToVideo(kind));
        }
        let [_, c, _, h, w] = latent_shape;
        if image.shape() != [1, c, 1, h, w] {
            return Err(I2vError::ImageLatent {
                found: image.shape(),
                channels: c,
                h,
                w,
            });
        }
        Ok(ImageConditioning { kind, image })
    }

    pub fn kind(&self) -> ImageCondition {
        self.kind
    }

    /// The initial latents from the noise: `noise · 0.999 + image · 0.001` on every frame (f32,
    /// as torch computes `latents * t + image_latents * (1 - t)` with t a f32 tensor).
    pub fn initial_latents(&self, mut noise: Tensor5) -> Tensor5 {
        let [b, c, t, h, w] = noise.shape();
        let hw = h * w;
        let keep = 1.0f32 - NOISE_WEIGHT;
        let img = self.image.data();
        let data = noise.data_mut();
        for bi in 0..b {
            for ci in 0..c {
                let src = &img[ci * hw..(ci + 1) * hw];
                for ti in 0..t {
                    let o = ((bi * c + ci) * t + ti) * hw;
                    for (x, &y) in data[o..o + hw].iter_mut().zip(src) {
                        *x = *x * NOISE_WEIGHT + y * keep;
                    }
                }
            }
        }
        noise
    }

    /// What the transformer sees for `latents` `[B, C, T, h, w]`.
    pub fn model_input(&self, latents: &Tensor5) -> Tensor5 {
        match self.kind {
            ImageCondition::LatentConcat => self.concat(latents),
            _ => {
                let mut x = latents.clone();
                self.replace_first_frame(&mut x);
                x
            }
        }
    }

    /// After an Euler step of every frame: token_replace puts the image latent back on frame 0
    /// (the same as stepping frames 1.. only: the step is element-wise).
    pub fn after_step(&self, latents: &mut Tensor5) {
        if self.kind == ImageCondition::TokenReplace {
            self.replace_first_frame(latents);
        }
    }

    /// The latents a run returns (`output_type="latent"`): latent_concat drops frame 0.
    pub fn output_latents(&self, latents: Tensor5) -> Tensor5 {
        match self.kind {
            ImageCondition::LatentConcat => {
                let [_, _, t, h, w] = latents.shape();
                latents.slice(1..t, 0..h, 0..w)
            }
            _ => latents,
        }
    }

    /// Video frames to drop from the front of the decode of all latents.
    pub fn dropped_video_frames(&self) -> usize {
        self.kind.dropped_video_frames()
    }

    fn replace_first_frame(&self, x: &mut Tensor5) {
        let [b, c, t, h, w] = x.shape();
        let hw = h * w;
        let img = self.image.data();
        let data = x.data_mut();
        for bi in 0..b {
            for ci in 0..c {
                let o = (bi * c + ci) * t * hw;
                data[o..o + hw].copy_from_slice(&img[ci * hw..(ci + 1) * hw]);
            }
        }
    }

    /// `[latents; image latent (frame 0, zeros after); mask]` on the channels: `[B, 2C + 1, T,
    /// h, w]`.
    fn concat(&self, latents: &Tensor5) -> Tensor5 {
        let [b, c, t, h, w] = latents.shape();
        let hw = h * w;
        let frame = t * hw;
        let img = self.image.data();
        let mut data = Vec::with_capacity(b * (2 * c + 1) * frame);
        for bi in 0..b {
            data.extend_from_slice(&latents.data()[bi * c * frame..(bi + 1) * c * frame]);
            for ci in 0..c {
                data.extend_from_slice(&img[ci * hw..(ci + 1) * hw]);
                data.extend(std::iter::repeat_n(0.0, frame - hw));
            }
            data.extend(std::iter::repeat_n(1.0, hw));
            data.extend(std::iter::repeat_n(0.0, frame - hw));
        }
        // Shapes are consistent by construction.
        Tensor5::from_vec([b, 2 * c + 1, t, h, w], data).unwrap_or_else(|_| Tensor5::zeros([0; 5]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seq(shape: [usize; 5], k: f32) -> Tensor5 {
        let n = shape.iter().product();
        Tensor5::from_vec(shape, (0..n).map(|i| i as f32 * k).collect()).unwrap()
    }

    #[test]
    fn token_replace_puts_the_image_on_frame_zero() {
        let image = seq([1, 2, 1, 2, 3], 1.0);
        let c =
            ImageConditioning::new(ImageCondition::TokenReplace, image.clone(), [1, 2, 3, 2, 3])
                .unwrap();
        let lat = seq([2, 2, 3, 2, 3], -1.0);
        let x = c.model_input(&lat);
        assert_eq!(x.shape(), lat.shape());
        for b in 0..2 {
            for ch in 0..2 {
                assert_eq!(x.at(b, ch, 0, 1, 2), image.at(0, ch, 0, 1, 2));
                assert_eq!(x.at(b, ch, 1, 1, 2), lat.at(b, ch, 1, 1, 2));
            }
        }
        assert_eq!(c.output_latents(lat.clone()).shape(), lat.shape());
        assert_eq!(c.dropped_video_frames(), 0);
    }

    #[test]
    fn latent_concat_stacks_latents_image_and_mask() {
        let image = seq([1, 2, 1, 2, 3], 1.0);
        let c =
            ImageConditioning::new(ImageCondition::LatentConcat, image.clone(), [1, 2, 3, 2, 3])
                .unwrap();
        let lat = seq([1, 2, 3, 2, 3], -1.0);
        let x = c.model_input(&lat);
        assert_eq!(x.shape(), [1, 5, 3, 2, 3]);
        assert_eq!(x.at(0, 1, 2, 1, 1), lat.at(0, 1, 2, 1, 1));
        assert_eq!(x.at(0, 3, 0, 1, 1), image.at(0, 1, 0, 1, 1));
        assert_eq!(x.at(0, 3, 1, 1, 1), 0.0);
        assert_eq!(x.at(0, 4, 0, 0, 0), 1.0);
        assert_eq!(x.at(0, 4, 2, 0, 0), 0.0);
        assert_eq!(c.output_latents(lat).shape(), [1, 2, 2, 2, 3]);
        assert_eq!(c.dropped_video_frames(), 4);
    }

    #[test]
    fn initial_latents_mix_the_image_into_every_frame() {
        let image = seq([1, 1, 1, 1, 2], 1.0);
        let c =
            ImageConditioning::new(ImageCondition::TokenReplace, image, [1, 1, 2, 1, 2]).unwrap();
        let x = c.initial_latents(Tensor5::from_vec([1, 1, 2, 1, 2], vec![1.0; 4]).unwrap());
        let keep = 1.0f32 - 0.999;
        assert_eq!(x.data(), &[0.999, 0.999 + keep, 0.999, 0.999 + keep]);
        // A wrong image latent shape or a text-to-video kind is refused.
        let bad = seq([1, 1, 1, 2, 2], 1.0);
        assert!(
            ImageConditioning::new(ImageCondition::TokenReplace, bad, [1, 1, 2, 1, 2]).is_err()
        );
        let ok = seq([1, 1, 1, 1, 2], 1.0);
        assert!(ImageConditioning::new(ImageCondition::None, ok, [1, 1, 2, 1, 2]).is_err());
    }
}
