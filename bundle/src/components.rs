//! The pipeline's components and their contracts: one [`ComponentSpec`] per subnetwork (graph
//! file, source sub-folder, I/O, profile rule) and the I/O names the exporter's graph builders
//! and the runtime's stages both use.
//!
//! Adding a component is one variant and one spec here, one graph builder in the exporter and
//! one stage in the runtime.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::spec::{ComponentSpec, Dim, Elem, IoSpec, ProfileRule, Size, Sym};

/// A subnetwork of the pipeline, named as diffusers names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Component {
    Transformer,
    VaeDecoder,
    /// `AutoencoderKLHunyuanVideo.encode` (image-to-video's conditioning image); exported on
    /// request only ([`Component::ON_REQUEST`]).
    VaeEncoder,
    TextEncoder,
    /// LLaVA's image side (HunyuanVideo-I2V's `text_encoder`): the CLIP vision tower and the
    /// projector, giving the image embeddings the language model (`text_encoder`) takes;
    /// exported on request ([`Component::ON_REQUEST`]).
    VisionEncoder,
    /// diffusers' `text_encoder_2` (snake_case alone would give `text_encoder2`).
    #[serde(rename = "text_encoder_2")]
    TextEncoder2,
    /// The transformer in stages (cut from its single graph, sharing its weight file), for
    /// step caching: patch embedding, conditioning, token refiner, RoPE tables and the first
    /// block's `norm1` (TeaCache's indicator) …
    TransformerEmbed,
    /// … the first dual block …
    TransformerFirstBlock,
    /// … every other block …
    TransformerRestBlocks,
    /// … and `norm_out`, `proj_out`, unpatchify.
    TransformerHead,
}

/// I/O names of the transformer graph: diffusers' `HunyuanVideoTransformer3DModel.forward`
/// arguments, less `encoder_attention_mask` (the runtime gives it a prompt's valid tokens).
pub mod transformer {
    pub const HIDDEN_STATES: &str = "hidden_states";
    pub const TIMESTEP: &str = "timestep";
    pub const ENCODER_HIDDEN_STATES: &str = "encoder_hidden_states";
    pub const POOLED_PROJECTIONS: &str = "pooled_projections";
    pub const GUIDANCE: &str = "guidance";
    pub const OUTPUT: &str = "sample";
}

/// The transformer's stage graphs (step caching decides between them): names of the tensors
/// passed from stage to stage, and of the stage graphs. In the single `transformer` graph each
/// is the output of an `Identity` named `stage/<name>`, where the stage graphs are cut from it
/// (they share its weight file).
pub mod transformer_stages {
    /// Image tokens after the patch embedding, `[B, N, D]` (N = frames·height·width / p²).
    pub const IMG_TOKENS: &str = "img_tokens";
    /// Text tokens after the token refiner, `[B, L, D]`.
    pub const TXT_TOKENS: &str = "txt_tokens";
    /// The conditioning vector after SiLU, `[B, D]`: the input of every modulation.
    pub const CONDITIONING: &str = "conditioning";
    /// RoPE tables over the joint `[img; txt]` sequence, `[N + L, 1, head_dim]`.
    pub const ROPE_COS: &str = "rope_cos";
    pub const ROPE_SIN: &str = "rope_sin";
    /// The first dual block's `norm1` output on the image tokens, `LayerNorm(x)·(1 + scale) +
    /// shift`, `[B, N, D]`: TeaCache's indicator, and that block's attention input.
    pub const FIRST_BLOCK_NORM1: &str = "first_block_norm1";
    /// Image and text tokens after the first dual block.
    pub const IMG_FIRST_BLOCK: &str = "img_after_first_block";
    pub const TXT_FIRST_BLOCK: &str = "txt_after_first_block";
    /// Image tokens after every block (dual and single).
    pub const IMG_ALL_BLOCKS: &str = "img_after_blocks";
    /// Token-replace image conditioning only (HunyuanVideo-I2V): the timestep-0 conditioning
    /// vector after SiLU, `[B, D]`, which modulates the first latent frame's tokens …
    pub const TOKEN_REPLACE_CONDITIONING: &str = "token_replace_conditioning";
    /// … and how many tokens that frame has (`(height / p) · (width / p)`), int64 `[1]`: an
    /// input of the block stages (the caller knows it: image tokens / latent frames).
    pub const FIRST_FRAME_TOKENS: &str = "first_frame_tokens";
    /// The prefix of the cut `Identity` nodes in the single graph.
    pub const CUT_PREFIX: &str = "stage/";
}

/// I/O names of the VAE decoder graph (`AutoencoderKLHunyuanVideo.decode`).
pub mod vae_decoder {
    pub const INPUT: &str = "latent_sample";
    pub const OUTPUT: &str = "sample";
}

/// I/O names of the VAE encoder graph (`AutoencoderKLHunyuanVideo.encode`): video in [-1, 1]
/// in, the latent distribution's mode out (its mean; not multiplied by the scaling factor).
pub mod vae_encoder {
    pub const INPUT: &str = "sample";
    pub const OUTPUT: &str = "latent";
}

/// I/O names of the Llama text encoder graph (the hidden state the pipeline reads).
pub mod llama {
    pub const INPUT_IDS: &str = "input_ids";
    pub const ATTENTION_MASK: &str = "attention_mask";
    /// A LLaVA language model's image embeddings (HunyuanVideo-I2V), in place of its `<image>`
    /// tokens.
    pub const IMAGE_EMBEDS: &str = "image_embeds";
    pub const OUTPUT: &str = "hidden_states";
}

/// I/O names of LLaVA's vision graph (`LlavaModel.get_image_features`): the image processor's
/// pixels in, the projected patch embeddings out.
pub mod vision_encoder {
    pub const INPUT: &str = "pixel_values";
    pub const OUTPUT: &str = "image_embeds";
}

/// I/O names of the CLIP text encoder graph (its pooled output).
pub mod clip {
    pub const INPUT_IDS: &str = "input_ids";
    pub const OUTPUT: &str = "pooler_output";
}

impl Component {
    /// The components a model folder exports by default (`hyvideo-export onnx` without
    /// `--components`: each one whose sub-folder it has); the transformer's stages come with
    /// the transformer.
    pub const ALL: [Component; 4] = [
        Component::Transformer,
        Component::VaeDecoder,
        Component::TextEncoder,
        Component::TextEncoder2,
    ];

    /// Components exported only when named (`--components vae_encoder`): not part of a
    /// text-to-video bundle.
    pub const ON_REQUEST: [Component; 2] = [Component::VaeEncoder, Component::VisionEncoder];

    /// Every component that is exported on its own: [`ALL`](Self::ALL), then
    /// [`ON_REQUEST`](Self::ON_REQUEST) (what names parse to).
    pub fn exportable() -> impl Iterator<Item = Component> {
        Component::ALL.into_iter().chain(Component::ON_REQUEST)
    }

    /// The transformer's stage graphs, in the order they run.
    pub const TRANSFORMER_STAGES: [Component; 4] = [
        Component::TransformerEmbed,
        Component::TransformerFirstBlock,
        Component::TransformerRestBlocks,
        Component::TransformerHead,
    ];

    /// Whether this is one of the transformer's stage graphs (exported with the transformer,
    /// never on its own).
    pub fn is_transformer_stage(self) -> bool {
        Component::TRANSFORMER_STAGES.contains(&self)
    }

    pub fn name(self) -> &'static str {
        match self {
            Component::Transformer => "transformer",
            Component::TransformerEmbed => "transformer_embed",
            Component::TransformerFirstBlock => "transformer_first_block",
            Component::TransformerRestBlocks => "transformer_rest_blocks",
            Component::TransformerHead => "transformer_head",
            Component::VaeDecoder => "vae_decoder",
            Component::VaeEncoder => "vae_encoder",
            Component::VisionEncoder => "vision_encoder",
            Component::TextEncoder => "text_encoder",
            Component::TextEncoder2 => "text_encoder_2",
        }
    }

    /// The contract of this component's graph.
    pub fn spec(self) -> ComponentSpec {
        use Dim::{Size as Z, Sym as S};
        let (f, i) = (Elem::Float, Elem::Int64);
        let name = self.name();
        match self {
            Component::Transformer => {
                use transformer::*;
                let grid = |c| {
                    [
                        S(Sym::Batch),
                        Z(c),
                        S(Sym::Frames),
                        S(Sym::Height),
                        S(Sym::Width),
                    ]
                };
                ComponentSpec {
                    name,
                    source_folder: "transformer",
                    tokenizer: None,
                    inputs: vec![
                        IoSpec::required(HIDDEN_STATES, f, &grid(Size::InChannels)),
                        IoSpec::required(TIMESTEP, f, &[S(Sym::Batch)]),
                        IoSpec::required(
                            ENCODER_HIDDEN_STATES,
                            f,
                            &[S(Sym::Batch), S(Sym::TextLen), Z(Size::TextEmbedDim)],
                        ),
                        IoSpec::required(
                            POOLED_PROJECTIONS,
                            f,
                            &[S(Sym::Batch), Z(Size::PooledProjectionDim)],
                        ),
                        IoSpec::optional(GUIDANCE, f, &[S(Sym::Batch)]),
                    ],
                    outputs: vec![IoSpec::required(OUTPUT, f, &grid(Size::OutChannels))],
                    profile: ProfileRule::Denoiser,
                }
            }
            Component::TransformerEmbed
            | Component::TransformerFirstBlock
            | Component::TransformerRestBlocks
            | Component::TransformerHead => {
                use transformer_stages::*;
                let a = Elem::Activation;
                let tokens = |n| [S(Sym::Batch), S(n), Z(Size::InnerDim)];
                let img = |name| IoSpec::required(name, a, &tokens(Sym::ImageTokens));
                let txt = |name| IoSpec::required(name, a, &tokens(Sym::TextLen));
                let cond = IoSpec::required(CONDITIONING, a, &[S(Sym::Batch), Z(Size::InnerDim)]);
                // Present in the stages of a token-replace (image-to-video) transformer only; the
                // embed stage gives the conditioning, the block stages take both.
                let token_replace = [
                    IoSpec::optional(
                        TOKEN_REPLACE_CONDITIONING,
                        a,
                        &[S(Sym::Batch), Z(Size::InnerDim)],
                    ),
                    IoSpec::optional(FIRST_FRAME_TOKENS, Elem::Int64, &[Z(Size::One)]),
                ];
                let rope = |name| {
                    IoSpec::required(
                        name,
                        a,
                        &[S(Sym::JointTokens), Z(Size::One), Z(Size::HeadDim)],
                    )
                };
                // The single graph's I/O: the embed stage's inputs, the head's output.
                let single = Component::Transformer.spec();
                let (inputs, outputs) = match self {
                    Component::TransformerEmbed => (
                        single.inputs.clone(),
                        vec![
                            img(IMG_TOKENS),
                            txt(TXT_TOKENS),
                            cond.clone(),
                            rope(ROPE_COS),
                            rope(ROPE_SIN),
                            img(FIRST_BLOCK_NORM1),
                        ]
                        .into_iter()
                        .chain(token_replace[..1].iter().cloned())
                        .collect(),
                    ),
                    Component::TransformerFirstBlock => (
                        vec![
                            img(IMG_TOKENS),
                            txt(TXT_TOKENS),
                            cond.clone(),
                            rope(ROPE_COS),
                            rope(ROPE_SIN),
                            img(FIRST_BLOCK_NORM1),
                        ]
                        .into_iter()
                        .chain(token_replace.clone())
                        .collect(),
                        vec![img(IMG_FIRST_BLOCK), txt(TXT_FIRST_BLOCK)],
                    ),
                    Component::TransformerRestBlocks => (
                        vec![
                            img(IMG_FIRST_BLOCK),
                            txt(TXT_FIRST_BLOCK),
                            cond.clone(),
                            rope(ROPE_COS),
                            rope(ROPE_SIN),
                        ]
                        .into_iter()
                        .chain(token_replace.clone())
                        .collect(),
                        vec![img(IMG_ALL_BLOCKS)],
                    ),
                    _ => (
                        vec![
                            img(IMG_ALL_BLOCKS),
                            cond.clone(),
                            // Read for its shape only (the latent grid to unpatchify to).
                            single.inputs[0].clone(),
                        ],
                        single.outputs.clone(),
                    ),
                };
                ComponentSpec {
                    name,
                    source_folder: "transformer",
                    tokenizer: None,
                    inputs,
                    outputs,
                    profile: ProfileRule::Denoiser,
                }
            }
            Component::VaeDecoder | Component::VaeEncoder => {
                let latent = [
                    S(Sym::Batch),
                    Z(Size::LatentChannels),
                    S(Sym::LatentFrames),
                    S(Sym::LatentHeight),
                    S(Sym::LatentWidth),
                ];
                let video = [
                    S(Sym::Batch),
                    Z(Size::VideoChannels),
                    S(Sym::Frames),
                    S(Sym::Height),
                    S(Sym::Width),
                ];
                let (input, output, profile) = match self {
                    Component::VaeDecoder => (
                        IoSpec::required(vae_decoder::INPUT, f, &latent),
                        IoSpec::required(vae_decoder::OUTPUT, f, &video),
                        ProfileRule::Tiles,
                    ),
                    _ => (
                        IoSpec::required(vae_encoder::INPUT, f, &video),
                        IoSpec::required(vae_encoder::OUTPUT, f, &latent),
                        ProfileRule::Image,
                    ),
                };
                ComponentSpec {
                    name,
                    source_folder: "vae",
                    tokenizer: None,
                    inputs: vec![input],
                    outputs: vec![output],
                    profile,
                }
            }
            Component::TextEncoder => {
                let tokens = [S(Sym::Batch), S(Sym::TextLen)];
                ComponentSpec {
                    name,
                    source_folder: "text_encoder",
                    tokenizer: Some("tokenizer"),
                    inputs: vec![
                        IoSpec::required(llama::INPUT_IDS, i, &tokens),
                        IoSpec::required(llama::ATTENTION_MASK, i, &tokens),
                        // LLaVA's language model (image-to-video) only.
                        IoSpec::optional(
                            llama::IMAGE_EMBEDS,
                            f,
                            &[S(Sym::Batch), Z(Size::ImageEmbeds), Z(Size::HiddenSize)],
                        ),
                    ],
                    outputs: vec![IoSpec::required(
                        llama::OUTPUT,
                        f,
                        &[S(Sym::Batch), S(Sym::TextLen), Z(Size::HiddenSize)],
                    )],
                    profile: ProfileRule::FixedPrompt,
                }
            }
            Component::VisionEncoder => ComponentSpec {
                name,
                source_folder: "text_encoder",
                tokenizer: None,
                inputs: vec![IoSpec::required(
                    vision_encoder::INPUT,
                    f,
                    &[
                        S(Sym::Batch),
                        Z(Size::PixelChannels),
                        Z(Size::ImageSize),
                        Z(Size::ImageSize),
                    ],
                )],
                outputs: vec![IoSpec::required(
                    vision_encoder::OUTPUT,
                    f,
                    &[S(Sym::Batch), Z(Size::ImageEmbeds), Z(Size::HiddenSize)],
                )],
                profile: ProfileRule::FixedPrompt,
            },
            Component::TextEncoder2 => ComponentSpec {
                name,
                source_folder: "text_encoder_2",
                tokenizer: Some("tokenizer_2"),
                inputs: vec![IoSpec::required(
                    clip::INPUT_IDS,
                    i,
                    &[S(Sym::Batch), Z(Size::MaxPositions)],
                )],
                outputs: vec![IoSpec::required(
                    clip::OUTPUT,
                    f,
                    &[S(Sym::Batch), Z(Size::HiddenSize)],
                )],
                profile: ProfileRule::FixedPrompt,
            },
        }
    }

    /// The graph file of this component in a bundle.
    pub fn graph_file(self) -> String {
        format!("{}.onnx", self.name())
    }
}

impl fmt::Display for Component {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Component {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Component::exportable()
            .find(|c| c.name() == s)
            .ok_or_else(|| {
                let names: Vec<_> = Component::exportable().map(|c| c.name()).collect();
                format!(
                    "unknown component `{s}` (expected one of: {})",
                    names.join(", ")
                )
            })
    }
}

#[cfg(test)]
mod stage_spec_tests {
    use super::*;

    #[test]
    fn the_stages_take_the_single_graphs_inputs_and_give_its_output() {
        let single = Component::Transformer.spec();
        assert_eq!(
            Component::TransformerEmbed.spec().inputs,
            single.inputs,
            "embed"
        );
        let head = Component::TransformerHead.spec();
        assert_eq!(head.outputs, single.outputs);
        assert_eq!(head.inputs[2].name, transformer::HIDDEN_STATES);
        assert_eq!(head.inputs[2], single.inputs[0]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::precision::TensorType;
    use crate::spec::{Side, SpecMismatch, TensorSpec};

    fn t(name: &str, dtype: TensorType, dims: &[&str]) -> TensorSpec {
        TensorSpec {
            name: name.into(),
            dtype,
            dims: dims.iter().map(|d| d.to_string()).collect(),
        }
    }

    fn sizes(s: Size) -> Option<usize> {
        match s {
            Size::MaxPositions => Some(77),
            Size::HiddenSize => Some(32),
            _ => None,
        }
    }

    #[test]
    fn names_parse_back_and_specs_name_their_component() {
        for c in Component::exportable() {
            assert_eq!(c.name().parse::<Component>(), Ok(c));
            assert_eq!(c.spec().name, c.name());
        }
        let e = "vae".parse::<Component>().unwrap_err();
        assert!(
            e.contains("vae_decoder") && e.contains("vae_encoder"),
            "{e}"
        );
    }

    /// The encoder parses by name and is exported when asked for, never by default.
    #[test]
    fn the_vae_encoder_is_exported_on_request_only() {
        let c = Component::VaeEncoder;
        assert_eq!("vae_encoder".parse::<Component>(), Ok(c));
        assert!(!Component::ALL.contains(&c) && Component::ON_REQUEST.contains(&c));
        let spec = c.spec();
        assert_eq!(
            (spec.source_folder, spec.profile),
            ("vae", ProfileRule::Image)
        );
        assert_eq!(spec.inputs[0].name, "sample");
        assert_eq!(spec.outputs[0].name, "latent");
        // The decoder's I/O the other way round.
        let dec = Component::VaeDecoder.spec();
        assert_eq!(spec.inputs[0].dims, dec.outputs[0].dims);
        assert_eq!(spec.outputs[0].dims, dec.inputs[0].dims);
    }

    #[test]
    fn check_names_each_kind_of_difference() {
        let spec = Component::TextEncoder2.spec();
        let f = TensorType::Float32;
        let ids = [t("input_ids", TensorType::Int64, &["batch", "77"])];
        let out = [t("pooler_output", f, &["batch", "32"])];
        let ok = spec.check(&ids, &out, f, &sizes);
        assert_eq!(ok, Ok(()));
        let e = spec.check(&[], &out, f, &sizes).unwrap_err();
        assert!(matches!(
            e,
            SpecMismatch::Missing {
                side: Side::Input,
                name: "input_ids",
                ..
            }
        ));
        let extra = t("extra", f, &["batch"]);
        let e = spec
            .check(&[ids[0].clone(), extra], &out, f, &sizes)
            .unwrap_err();
        assert!(e.to_string().contains("`extra`"), "{e}");
        let e = spec
            .check(&[t("input_ids", f, &["batch", "77"])], &out, f, &sizes)
            .unwrap_err();
        assert!(matches!(e, SpecMismatch::ElementType { .. }), "{e}");
        let e = spec
            .check(
                &[t("input_ids", TensorType::Int64, &["batch", "76"])],
                &out,
                f,
                &sizes,
            )
            .unwrap_err();
        assert!(e.to_string().contains("[batch, 77]"), "{e}");
        let e = spec
            .check(
                &[t("input_ids", TensorType::Int64, &["n", "77"])],
                &out,
                f,
                &sizes,
            )
            .unwrap_err();
        assert!(matches!(e, SpecMismatch::Dims { .. }), "{e}");
        // The bundle's I/O float type decides what a float output must be.
        let e = spec
            .check(
                &ids,
                &[t("pooler_output", f, &["batch", "32"])],
                TensorType::Float16,
                &sizes,
            )
            .unwrap_err();
        assert!(e.to_string().contains("float16"), "{e}");
    }

    #[test]
    fn optional_inputs_may_be_absent() {
        let spec = Component::Transformer.spec();
        let f = TensorType::Float32;
        let grid = ["batch", "16", "frames", "height", "width"];
        let inputs = [
            t("hidden_states", f, &grid),
            t("timestep", f, &["batch"]),
            t("encoder_hidden_states", f, &["batch", "text_len", "32"]),
            t("pooled_projections", f, &["batch", "8"]),
        ];
        let outputs = [t("sample", f, &grid)];
        assert_eq!(spec.check(&inputs, &outputs, f, &|_| None), Ok(()));
    }
}
