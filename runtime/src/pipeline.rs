//! Prompt to video: the stages of diffusers `HunyuanVideoPipeline.__call__` on a bundle's
//! engines — prompt encoding (Llama hidden states cropped past the template, CLIP pooled
//! output), seeded initial noise, the denoising loop, the tiled VAE decode.
//!
//! The building blocks [`crate::generation::Pipeline`] composes: the text encoders stage
//! ([`TextEncoders`]), video sizes and their latent shapes, the initial latents.
//!
//! An image-to-video bundle (HunyuanVideo-I2V, whose `text_encoder` is LLaVA) encodes the
//! prompt with the image, as `HunyuanVideoImageToVideoPipeline._get_llama_prompt_embeds`: the
//! `vision_encoder` graph gives the image embeddings of the `CLIPImageProcessor`'s pixels
//! (`image_processor/`), the I2V template is tokenized and expanded around its `<image>`
//! token, the language model takes both, and [`crate::image_prompt::crop`] makes the rows.

use hyvideo_bundle::components::{clip, llama, vision_encoder};
use hyvideo_bundle::{Component, ManifestError};
use hyvideo_engines::{BackendKind, Engine, EngineError, Input, SessionConfig};

use crate::engine_set::{ModelFileError, ModelFiles};
use crate::image::{ClipConfigError, ClipImageConfig, RgbImage, clip_pixels};
use crate::image_prompt::{
    I2V_CROP_START, I2V_PROMPT_TEMPLATE, ImageEmbedInterleave, ImageTokenIds, PromptRows,
};
use crate::setting::{InvalidSetting, Setting};
use crate::tensor::Tensor5;
use crate::text::{ClipPrompts, LlamaPrompts, MAX_SEQUENCE_LENGTH, TextError, Tokens};
use crate::transformer::{TextConditioning, TransformerError};

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error(transparent)]
    ModelFile(#[from] ModelFileError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Text(#[from] TextError),
    #[error(transparent)]
    Transformer(#[from] TransformerError),
    #[error(transparent)]
    Invalid(#[from] InvalidSetting),
    #[error(transparent)]
    ImageProcessor(#[from] ClipConfigError),
    #[error("{}: {reason}", .path.display())]
    TextEncoderConfig {
        path: std::path::PathBuf,
        reason: String,
    },
    /// An image-to-video bundle's prompt needs the image (and a text-to-video one takes none).
    #[error("{0}")]
    Image(String),
    #[error("{component} returned shape {found:?}; expected {expected}")]
    OutputShape {
        component: &'static str,
        found: Vec<usize>,
        expected: String,
    },
}

/// The video to make: pixel size and frame count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct VideoSize {
    pub height: usize,
    pub width: usize,
    pub frames: usize,
}

/// Which dimension of a [`VideoSize`] is out of range, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SizeError {
    pub dimension: SizeDimension,
    pub reason: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SizeDimension {
    Height,
    Width,
    Frames,
}

impl VideoSize {
    /// Sizes the model can make: height and width positive multiples of 16, frames = 4k + 1;
    /// the error names the dimension (front ends name it their way).
    pub fn checked(height: usize, width: usize, frames: usize) -> Result<VideoSize, SizeError> {
        let err = |dimension, reason| Err(SizeError { dimension, reason });
        for (dim, v) in [
            (SizeDimension::Height, height),
            (SizeDimension::Width, width),
        ] {
            if v == 0 || !v.is_multiple_of(16) {
                return err(dim, format!("{v} is not a positive multiple of 16"));
            }
        }
        if frames == 0 || !(frames - 1).is_multiple_of(4) {
            return err(
                SizeDimension::Frames,
                format!("{frames} is not of the form 4k + 1 (1, 5, 9, ..., 129)"),
            );
        }
        Ok(VideoSize {
            height,
            width,
            frames,
        })
    }

    /// [`checked`](Self::checked), the error naming the [`Setting`].
    pub fn new(height: usize, width: usize, frames: usize) -> Result<VideoSize, InvalidSetting> {
        Ok(Self::checked(height, width, frames)?)
    }

    /// Latent shape `[1, C, (F − 1)/4 + 1, H/8, W/8]` (diffusers `prepare_latents`).
    pub fn latent_shape(&self, channels: usize, spatial: usize, temporal: usize) -> [usize; 5] {
        [
            1,
            channels,
            (self.frames - 1) / temporal + 1,
            self.height / spatial,
            self.width / spatial,
        ]
    }
}

impl From<SizeError> for InvalidSetting {
    fn from(e: SizeError) -> InvalidSetting {
        let setting = match e.dimension {
            SizeDimension::Height => Setting::Height,
            SizeDimension::Width => Setting::Width,
            SizeDimension::Frames => Setting::Frames,
        };
        InvalidSetting::new(setting, e.reason)
    }
}

/// Both text encoders and their tokenizers from a bundle.
pub struct TextEncoders {
    llama: Engine,
    clip: Engine,
    llama_tokens: LlamaPrompts,
    clip_tokens: ClipPrompts,
    /// LLaVA's image side, in an image-to-video bundle.
    image: Option<ImageSide>,
}

/// LLaVA's image side: the vision graph, the pixels its processor makes, the token ids of the
/// expansion and crop.
struct ImageSide {
    vision: Engine,
    processor: ClipImageConfig,
    ids: ImageTokenIds,
}

/// The `image_processor/` folder of an image-to-video bundle (diffusers' component name).
pub const IMAGE_PROCESSOR_FOLDER: &str = "image_processor";
/// Its config file.
pub const IMAGE_PROCESSOR_CONFIG: &str = "preprocessor_config.json";

/// `image_token_index` and `pad_token_id` of a LLaVA `text_encoder/config.json` (the pad id
/// also from its `text_config`).
fn llava_token_ids(path: &std::path::Path) -> Result<(i64, i64), PipelineError> {
    let err = |reason: String| PipelineError::TextEncoderConfig {
        path: path.to_path_buf(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| err(e.to_string()))?;
    let image = v
        .get("image_token_index")
        .and_then(|x| x.as_i64())
        .ok_or_else(|| err("no `image_token_index` (is it a LLaVA config?)".into()))?;
    let pad = v
        .get("pad_token_id")
        .and_then(|x| x.as_i64())
        .or_else(|| {
            v.pointer("/text_config/pad_token_id")
                .and_then(|x| x.as_i64())
        })
        .ok_or_else(|| err("no `pad_token_id`".into()))?;
    Ok((image, pad))
}

/// Encoded prompts plus which prompts were cut to fit each tokenizer.
pub struct EncodedPrompts {
    pub text: TextConditioning,
    pub llama_truncated: Vec<usize>,
    pub clip_truncated: Vec<usize>,
}

impl TextEncoders {
    /// Load the encoders `files` resolves (built engines or the bundle's graphs); the
    /// tokenizers always come from the bundle.
    pub fn load_with(
        files: &ModelFiles<'_>,
        config: &SessionConfig,
    ) -> Result<TextEncoders, PipelineError> {
        let backend = config.backend.kind();
        let llama = files.path(Component::TextEncoder, backend)?;
        let clip = files.path(Component::TextEncoder2, backend)?;
        let tokenizer = files.bundle.join("tokenizer");
        let clip_tokens = ClipPrompts::load(&files.bundle.join("tokenizer_2"))?;
        let image_to_video = files
            .manifest
            .components
            .contains_key(&Component::VisionEncoder);
        let (llama_tokens, image) = if image_to_video {
            let llama_tokens = LlamaPrompts::with_crop_start(
                &tokenizer,
                I2V_PROMPT_TEMPLATE,
                I2V_CROP_START,
                MAX_SEQUENCE_LENGTH,
            )?;
            let config_file = files
                .bundle
                .join(Component::TextEncoder.spec().config_file());
            let (image, pad) = llava_token_ids(&config_file)?;
            let ids = ImageTokenIds {
                image,
                pad,
                end_header: llama_tokens.token_id("<|end_header_id|>")?,
            };
            let processor = ClipImageConfig::from_file(
                &files
                    .bundle
                    .join(IMAGE_PROCESSOR_FOLDER)
                    .join(IMAGE_PROCESSOR_CONFIG),
            )?;
            let vision = files.path(Component::VisionEncoder, backend)?;
            let side = ImageSide {
                vision: crate::graph_load::load_engine(&vision, config)?,
                processor,
                ids,
            };
            (llama_tokens, Some(side))
        } else {
            (LlamaPrompts::load(&tokenizer)?, None)
        };
        Ok(TextEncoders {
            llama: crate::graph_load::load_engine(&llama, config)?,
            clip: crate::graph_load::load_engine(&clip, config)?,
            llama_tokens,
            clip_tokens,
            image,
        })
    }

    pub fn providers(&self) -> (BackendKind, BackendKind) {
        (self.llama.provider(), self.clip.provider())
    }

    /// Where ONNX Runtime placed each encoder graph's nodes (Llama, CLIP, and LLaVA's vision
    /// graph in an image-to-video bundle).
    pub fn placements(&self) -> Vec<(Component, &hyvideo_engines::Placement)> {
        let mut v = vec![
            (Component::TextEncoder, self.llama.placement()),
            (Component::TextEncoder2, self.clip.placement()),
        ];
        if let Some(side) = &self.image {
            v.push((Component::VisionEncoder, side.vision.placement()));
        }
        v
    }

    /// Whether these are an image-to-video bundle's encoders (the prompt needs an image).
    pub fn takes_image(&self) -> bool {
        self.image.is_some()
    }

    /// `prompt_embeds` [B, 256, D] with its mask, and `pooled_prompt_embeds` [B, P]
    /// (diffusers `encode_prompt`).
    /// `on_encoder` is called after each of the two encoders ran.
    pub fn encode(
        &mut self,
        prompts: &[&str],
        on_encoder: impl FnMut(),
    ) -> Result<EncodedPrompts, PipelineError> {
        if self.image.is_some() {
            return Err(PipelineError::Image(
                "this bundle's text encoder is LLaVA (image-to-video): the prompt is encoded \
                 with an image"
                    .into(),
            ));
        }
        self.encode_rows(prompts, None, on_encoder)
    }

    /// An image-to-video prompt: each of `prompts` with `image` (diffusers
    /// `HunyuanVideoImageToVideoPipeline.encode_prompt(image=…, image_embed_interleave=…)`).
    pub fn encode_with_image(
        &mut self,
        prompts: &[&str],
        image: &RgbImage,
        interleave: ImageEmbedInterleave,
        on_encoder: impl FnMut(),
    ) -> Result<EncodedPrompts, PipelineError> {
        if self.image.is_none() {
            return Err(PipelineError::Image(
                "this bundle is text-to-video: its text encoder takes no image".into(),
            ));
        }
        self.encode_rows(prompts, Some((image, interleave)), on_encoder)
    }

    fn encode_rows(
        &mut self,
        prompts: &[&str],
        image: Option<(&RgbImage, ImageEmbedInterleave)>,
        mut on_encoder: impl FnMut(),
    ) -> Result<EncodedPrompts, PipelineError> {
        let lt = self.llama_tokens.encode(prompts)?;
        let ct = self.clip_tokens.encode(prompts)?;
        let PromptRows {
            shape: embeds_shape,
            embeds,
            mask,
        } = match image {
            Some((img, interleave)) => self.llava_hidden(&lt, img, interleave)?,
            None => self.llama_hidden(&lt)?,
        };
        on_encoder();
        let pooled = self.clip_pooled(&ct)?;
        on_encoder();
        let b = prompts.len();
        let text = TextConditioning::new(
            (&embeds_shape, embeds),
            (&[b, embeds_shape[1]], mask),
            (&[b, pooled.len() / b], pooled),
        )?;
        Ok(EncodedPrompts {
            text,
            llama_truncated: lt.truncated,
            clip_truncated: ct.truncated,
        })
    }

    /// The Llama hidden states `[B, L, D]` of `t` (with LLaVA's `image_embeds`): values and D.
    fn llama_run(
        &mut self,
        t: &Tokens,
        image_embeds: Option<(&[usize], &[f32])>,
    ) -> Result<(Vec<f32>, usize), PipelineError> {
        let shape = [t.batch, t.len];
        let mut inputs = vec![
            (
                llama::INPUT_IDS,
                Input::I64 {
                    shape: &shape,
                    data: &t.input_ids,
                },
            ),
            (
                llama::ATTENTION_MASK,
                Input::I64 {
                    shape: &shape,
                    data: &t.attention_mask,
                },
            ),
        ];
        if let Some((shape, data)) = image_embeds {
            inputs.push((llama::IMAGE_EMBEDS, Input::F32 { shape, data }));
        }
        let out = self.llama.run_one(&inputs, llama::OUTPUT)?;
        match out.shape.as_slice() {
            [b, l, d] if *b == t.batch && *l == t.len => Ok((out.data, *d)),
            _ => Err(PipelineError::OutputShape {
                component: "text_encoder",
                found: out.shape,
                expected: format!("[{}, {}, hidden]", t.batch, t.len),
            }),
        }
    }

    /// LLaVA: the image embeddings of `image` (one per prompt row), the expanded tokens through
    /// the language model, the image and text rows of the I2V crop.
    fn llava_hidden(
        &mut self,
        t: &Tokens,
        image: &RgbImage,
        interleave: ImageEmbedInterleave,
    ) -> Result<PromptRows, PipelineError> {
        let side = self
            .image
            .as_mut()
            .ok_or_else(|| PipelineError::Image("no image side".into()))?;
        let (pixels, [c, h, w]) = clip_pixels(image, &side.processor);
        let px_shape = [1, c, h, w];
        let out = side.vision.run_one(
            &[(
                vision_encoder::INPUT,
                Input::F32 {
                    shape: &px_shape,
                    data: &pixels,
                },
            )],
            vision_encoder::OUTPUT,
        )?;
        let ids = side.ids;
        let (n, d) = match out.shape.as_slice() {
            [1, n, d] => (*n, *d),
            _ => {
                return Err(PipelineError::OutputShape {
                    component: "vision_encoder",
                    found: out.shape,
                    expected: "[1, image tokens, hidden]".into(),
                });
            }
        };
        let embeds: Vec<f32> = out.data.repeat(t.batch);
        let expanded = crate::image_prompt::expand(t, ids)?;
        let (hidden, hd) = self.llama_run(&expanded, Some((&[t.batch, n, d], &embeds)))?;
        Ok(crate::image_prompt::crop(
            &hidden,
            hd,
            t,
            expanded.len,
            ids,
            interleave,
        )?)
    }

    /// The Llama hidden states cropped past the template: shape, values, cropped mask.
    fn llama_hidden(&mut self, t: &Tokens) -> Result<PromptRows, PipelineError> {
        let (data, d) = self.llama_run(t, None)?;
        let out = hyvideo_engines::Tensor {
            shape: vec![t.batch, t.len, d],
            data,
        };
        let crop = self.llama_tokens.crop_start();
        let keep = t.len - crop;
        let mut embeds = Vec::with_capacity(t.batch * keep * d);
        let mut mask = Vec::with_capacity(t.batch * keep);
        for row in 0..t.batch {
            let start = (row * t.len + crop) * d;
            embeds.extend_from_slice(&out.data[start..start + keep * d]);
            let m = row * t.len + crop;
            mask.extend_from_slice(&t.attention_mask[m..m + keep]);
        }
        Ok(PromptRows {
            shape: [t.batch, keep, d],
            embeds,
            mask,
        })
    }

    fn clip_pooled(&mut self, t: &Tokens) -> Result<Vec<f32>, PipelineError> {
        let shape = [t.batch, t.len];
        let out = self.clip.run_one(
            &[(
                clip::INPUT_IDS,
                Input::I64 {
                    shape: &shape,
                    data: &t.input_ids,
                },
            )],
            clip::OUTPUT,
        )?;
        match out.shape.as_slice() {
            [b, _] if *b == t.batch => Ok(out.data),
            _ => Err(PipelineError::OutputShape {
                component: "text_encoder_2",
                found: out.shape,
                expected: format!("[{}, hidden]", t.batch),
            }),
        }
    }
}

/// Initial latents: the given ones (their shape must be the one the video size implies),
/// else `torch.randn` with `torch.Generator("cpu").manual_seed(seed)`.
pub fn initial_latents(
    shape: [usize; 5],
    seed: u64,
    from_file: Option<Tensor5>,
) -> Result<Tensor5, PipelineError> {
    match from_file {
        Some(t) if t.shape() == shape => Ok(t),
        Some(t) => Err(InvalidSetting::new(
            Setting::InitialLatents,
            format!(
                "shape {:?} does not match the video size and length (latents {shape:?})",
                t.shape()
            ),
        )
        .into()),
        None => crate::noise::randn_latents(shape, seed)
            .map_err(|e| InvalidSetting::new(Setting::Seed, e.to_string()).into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn video_sizes_are_checked() {
        let s = VideoSize::new(720, 1280, 129).unwrap();
        assert_eq!(s.latent_shape(16, 8, 4), [1, 16, 33, 90, 160]);
        let s = VideoSize::new(32, 48, 9).unwrap();
        assert_eq!(s.latent_shape(4, 8, 4), [1, 4, 3, 4, 6]);
        for (h, w, f, flag) in [
            (720, 1270, 129, "width"),
            (0, 16, 1, "height"),
            (16, 16, 8, "frames"),
            (16, 16, 0, "frames"),
        ] {
            let e = VideoSize::new(h, w, f).unwrap_err().to_string();
            assert!(e.starts_with(flag), "{e}");
        }
    }

    #[test]
    fn latents_from_a_file_must_have_the_right_shape() {
        let t = Tensor5::zeros([1, 4, 3, 4, 6]);
        assert!(initial_latents([1, 4, 3, 4, 6], 0, Some(t.clone())).is_ok());
        match initial_latents([1, 4, 3, 4, 8], 0, Some(t)) {
            Err(PipelineError::Invalid(i)) => assert_eq!(i.setting, Setting::InitialLatents),
            other => panic!("{other:?}"),
        }
    }
}
