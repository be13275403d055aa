//! Graph I/O specs: what every graph of a component takes and returns — names, element types,
//! symbolic and fixed dimensions — as data, and the check of a written graph against it.
//!
//! The exporter checks each graph it writes ([`ComponentSpec::check`]) and records the graph's
//! actual I/O in the manifest; the engine build derives shape profiles from the same specs
//! (`crate::profile`); the runtime binds inputs by the names declared here
//! (`crate::components`).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::precision::TensorType;

/// A symbolic (dynamic) dimension, by the `dim_param` name the graph carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Sym {
    /// Prompts (or prompt + negative prompt) per run.
    Batch,
    /// The transformer's latent grid, and the VAE's video (the decoder's output, the encoder's
    /// input).
    Frames,
    Height,
    Width,
    /// Prompt tokens.
    TextLen,
    /// The VAE's latents (the decoder's tile, the encoder's output).
    LatentFrames,
    LatentHeight,
    LatentWidth,
    /// The transformer stages' image tokens: latent frames × (height / p) × (width / p).
    ImageTokens,
    /// Image tokens plus prompt tokens (the joint sequence RoPE covers).
    JointTokens,
}

impl Sym {
    pub fn name(self) -> &'static str {
        match self {
            Sym::Batch => "batch",
            Sym::Frames => "frames",
            Sym::Height => "height",
            Sym::Width => "width",
            Sym::TextLen => "text_len",
            Sym::LatentFrames => "latent_frames",
            Sym::LatentHeight => "latent_height",
            Sym::LatentWidth => "latent_width",
            Sym::ImageTokens => "image_tokens",
            Sym::JointTokens => "joint_tokens",
        }
    }
}

/// A fixed dimension taken from the component's model config when the graph is exported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Size {
    /// Transformer `in_channels`.
    InChannels,
    /// Transformer `out_channels` (`in_channels` when unset).
    OutChannels,
    /// Transformer `text_embed_dim`.
    TextEmbedDim,
    /// Transformer `pooled_projection_dim`.
    PooledProjectionDim,
    /// VAE `latent_channels`.
    LatentChannels,
    /// VAE `out_channels` (the video's colour channels; the encoder's input has `in_channels`,
    /// the same 3 in every HunyuanVideo VAE).
    VideoChannels,
    /// Text encoder `hidden_size`.
    HiddenSize,
    /// CLIP `max_position_embeddings` (its fixed prompt length).
    MaxPositions,
    /// Transformer `num_attention_heads × attention_head_dim`.
    InnerDim,
    /// Transformer `attention_head_dim`.
    HeadDim,
    /// A broadcast dimension of size 1.
    One,
    /// LLaVA: the vision tower's `num_channels`, its `image_size` (square), and the image
    /// embeddings an image gives (`(image_size / patch_size)²`).
    PixelChannels,
    ImageSize,
    ImageEmbeds,
}

impl Size {
    pub fn name(self) -> &'static str {
        match self {
            Size::InChannels => "in_channels",
            Size::OutChannels => "out_channels",
            Size::TextEmbedDim => "text_embed_dim",
            Size::PooledProjectionDim => "pooled_projection_dim",
            Size::LatentChannels => "latent_channels",
            Size::VideoChannels => "out_channels",
            Size::HiddenSize => "hidden_size",
            Size::MaxPositions => "max_position_embeddings",
            Size::InnerDim => "inner_dim",
            Size::HeadDim => "attention_head_dim",
            Size::One => "1",
            Size::PixelChannels => "vision_config.num_channels",
            Size::ImageSize => "vision_config.image_size",
            Size::ImageEmbeds => "image_seq_length",
        }
    }
}

/// One dimension of a graph input or output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dim {
    Sym(Sym),
    Size(Size),
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dim::Sym(s) => f.write_str(s.name()),
            Dim::Size(s) => write!(f, "<{}>", s.name()),
        }
    }
}

/// The element type a spec asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Elem {
    /// The bundle's I/O float type (the precision profile's `io`: float32 unless a profile
    /// says otherwise).
    Float,
    Int64,
    /// A tensor passed between the transformer's stage graphs: in whatever float type the
    /// precision profile computes at that point (the runtime carries it as float32, exactly).
    Activation,
}

impl Elem {
    /// The element type a graph must have here; `None` for [`Elem::Activation`] (any float).
    pub fn resolve(self, io_float: TensorType) -> Option<TensorType> {
        match self {
            Elem::Float => Some(io_float),
            Elem::Int64 => Some(TensorType::Int64),
            Elem::Activation => None,
        }
    }

    /// Whether a graph tensor of type `found` keeps this.
    pub fn admits(self, found: TensorType, io_float: TensorType) -> bool {
        match self.resolve(io_float) {
            Some(t) => t == found,
            None => matches!(
                found,
                TensorType::Float32 | TensorType::Float16 | TensorType::Bfloat16
            ),
        }
    }
}

/// Whether a graph must have an input or output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Presence {
    Required,
    /// Present when the model config enables it (e.g. `guidance` with `guidance_embeds`).
    Optional,
}

/// One input or output of a graph.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IoSpec {
    pub name: &'static str,
    pub elem: Elem,
    pub dims: Vec<Dim>,
    pub presence: Presence,
}

impl IoSpec {
    pub fn required(name: &'static str, elem: Elem, dims: &[Dim]) -> IoSpec {
        IoSpec {
            name,
            elem,
            dims: dims.to_vec(),
            presence: Presence::Required,
        }
    }

    pub fn optional(name: &'static str, elem: Elem, dims: &[Dim]) -> IoSpec {
        IoSpec {
            presence: Presence::Optional,
            ..IoSpec::required(name, elem, dims)
        }
    }
}

/// How a shape preset becomes an engine's min / opt / max input shapes (`crate::profile`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProfileRule {
    /// The denoiser: the preset's batch, latent grid of its resolutions and frames, and the
    /// prompt's valid tokens.
    Denoiser,
    /// One decode tile at a time: batch 1, latent tiles up to the default tile.
    Tiles,
    /// One prompt at a time, padded to the encoder's fixed length.
    FixedPrompt,
    /// One image at a time (image-to-video's conditioning frame): batch 1, one frame, the
    /// preset's resolutions in pixels.
    Image,
}

/// A component's contract: where its weights come from, its graph file, its I/O, its profiles.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComponentSpec {
    /// The file stem of its graph in a bundle (`<name>.onnx`, `<name>.onnx.data`).
    pub name: &'static str,
    /// The sub-folder of a diffusers model folder its weights and config are read from, and of
    /// the bundle its config is copied to (`<folder>/config.json`).
    pub source_folder: &'static str,
    /// The tokenizer sub-folder (diffusers' name) a text encoder's bundle carries.
    pub tokenizer: Option<&'static str>,
    pub inputs: Vec<IoSpec>,
    pub outputs: Vec<IoSpec>,
    pub profile: ProfileRule,
}

/// One graph input or output as written: what the manifest records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TensorSpec {
    pub name: String,
    pub dtype: TensorType,
    /// Fixed sizes as numbers, dynamic ones by name.
    pub dims: Vec<String>,
}

impl TensorSpec {
    /// The fixed size of dimension `i`, or `None` for a named, dynamic one.
    pub fn fixed(&self, i: usize) -> Option<usize> {
        self.dims.get(i).and_then(|d| d.parse().ok())
    }
}

/// Which side of a graph a mismatch is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Input,
    Output,
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Side::Input => "input",
            Side::Output => "output",
        })
    }
}

/// A graph whose I/O differs from its component's spec.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecMismatch {
    #[error("{component}: the graph has no {side} `{name}` that its spec requires")]
    Missing {
        component: &'static str,
        side: Side,
        name: &'static str,
    },
    #[error("{component}: the graph has an {side} `{name}` that its spec does not declare")]
    Undeclared {
        component: &'static str,
        side: Side,
        name: String,
    },
    #[error("{component}: {side} `{name}` is {found}, its spec says {expected}")]
    ElementType {
        component: &'static str,
        side: Side,
        name: &'static str,
        found: TensorType,
        /// The type, or "a float type" for a stage activation.
        expected: String,
    },
    #[error("{component}: {side} `{name}` has dims [{found}], its spec says [{expected}]")]
    Dims {
        component: &'static str,
        side: Side,
        name: &'static str,
        found: String,
        expected: String,
    },
}

impl ComponentSpec {
    /// Check a graph's inputs and outputs against this spec: every required tensor present,
    /// nothing undeclared, element types as `io_float` resolves them, symbolic dims by name and
    /// fixed dims equal to the config's `sizes` (a size `sizes` does not know must still be a
    /// number).
    pub fn check(
        &self,
        inputs: &[TensorSpec],
        outputs: &[TensorSpec],
        io_float: TensorType,
        sizes: &dyn Fn(Size) -> Option<usize>,
    ) -> Result<(), SpecMismatch> {
        self.check_side(Side::Input, &self.inputs, inputs, io_float, sizes)?;
        self.check_side(Side::Output, &self.outputs, outputs, io_float, sizes)
    }

    fn check_side(
        &self,
        side: Side,
        specs: &[IoSpec],
        found: &[TensorSpec],
        io_float: TensorType,
        sizes: &dyn Fn(Size) -> Option<usize>,
    ) -> Result<(), SpecMismatch> {
        let component = self.name;
        if let Some(t) = found
            .iter()
            .find(|t| !specs.iter().any(|s| s.name == t.name))
        {
            return Err(SpecMismatch::Undeclared {
                component,
                side,
                name: t.name.clone(),
            });
        }
        for spec in specs {
            let Some(t) = found.iter().find(|t| t.name == spec.name) else {
                if spec.presence == Presence::Required {
                    return Err(SpecMismatch::Missing {
                        component,
                        side,
                        name: spec.name,
                    });
                }
                continue;
            };
            if !spec.elem.admits(t.dtype, io_float) {
                return Err(SpecMismatch::ElementType {
                    component,
                    side,
                    name: spec.name,
                    found: t.dtype,
                    expected: spec
                        .elem
                        .resolve(io_float)
                        .map_or("a float type".to_owned(), |t| t.to_string()),
                });
            }
            let dim_ok = |(d, have): (&Dim, &String)| match d {
                Dim::Sym(s) => have == s.name(),
                Dim::Size(s) => match (sizes(*s), have.parse::<usize>()) {
                    (Some(want), Ok(n)) => n == want,
                    (None, Ok(_)) => true,
                    (_, Err(_)) => false,
                },
            };
            if t.dims.len() != spec.dims.len() || !spec.dims.iter().zip(&t.dims).all(dim_ok) {
                let expected = spec
                    .dims
                    .iter()
                    .map(|d| match d {
                        Dim::Size(s) => sizes(*s).map_or(d.to_string(), |n| n.to_string()),
                        Dim::Sym(_) => d.to_string(),
                    })
                    .collect::<Vec<_>>()
                    .join(", ");
                return Err(SpecMismatch::Dims {
                    component,
                    side,
                    name: spec.name,
                    found: t.dims.join(", "),
                    expected,
                });
            }
        }
        Ok(())
    }

    /// The bundle path of the component's config file.
    pub fn config_file(&self) -> String {
        format!("{}/config.json", self.source_folder)
    }

    /// The spec of input `name`.
    pub fn input(&self, name: &str) -> Option<&IoSpec> {
        self.inputs.iter().find(|s| s.name == name)
    }
}
