//! Typed model configs, deserialised straight from diffusers / transformers `config.json`.
//!
//! As candle does for its models (`#[derive(Deserialize)] struct Config` read from the hub's
//! `config.json`), each struct mirrors the Python class's constructor arguments by name.
//! Unknown keys are ignored (configs carry `_diffusers_version`, `architectures`, ...).
//!
//! Defaults:
//! - diffusers configs ([`VaeConfig`], [`TransformerConfig`], [`SchedulerConfig`]): every key
//!   defaults as in the class's `__init__` signature, which is what `from_pretrained` does.
//! - transformers configs ([`LlamaConfig`], [`ClipTextConfig`], and HunyuanVideo-I2V's
//!   [`LlavaConfig`] with its [`ClipVisionConfig`]; a LLaVA config's `text_config` is also read
//!   as the [`LlamaConfig`]): the shape-defining keys
//!   (`vocab_size`, `hidden_size`, `intermediate_size`, `num_hidden_layers`,
//!   `num_attention_heads`) are required, because transformers' defaults describe other models
//!   (Llama-2-7B, CLIP ViT-B/32) that HunyuanVideo never uses; the rest default as in
//!   transformers.
//!
//! Errors name the file and the key as a dotted path (`rope_parameters.rope_theta`,
//! `block_out_channels[2]`). `validate()` rejects configs that parse but describe a model our
//! exporters cannot produce, with [`CheckpointError::UnsupportedConfig`].

use std::fmt::Display;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};

use super::error::{CheckpointError, Result};
use hyvideo_bundle::ImageCondition;

// ---------------------------------------------------------------------------------------------
// Reading and error mapping
// ---------------------------------------------------------------------------------------------

/// Read `path` (a config file, or a component directory holding `default_name`).
fn read_config(path: &Path, default_name: &str) -> Result<(PathBuf, String)> {
    let file = if path.is_dir() {
        path.join(default_name)
    } else {
        path.to_path_buf()
    };
    let bytes = std::fs::read(&file).map_err(|e| CheckpointError::io(&file, e))?;
    let text = String::from_utf8(bytes).map_err(|e| CheckpointError::ConfigSyntax {
        file: file.clone(),
        reason: format!("not UTF-8: {e}"),
    })?;
    Ok((file, text))
}

/// Deserialize `text` as `T`, turning serde errors into errors naming `file` and the key.
fn parse_json<T: DeserializeOwned>(text: &str, file: &Path) -> Result<T> {
    serde_json::from_str(text).map_err(|e| map_json_error(&e, text, file))
}

fn map_json_error(e: &serde_json::Error, text: &str, file: &Path) -> CheckpointError {
    use serde_json::error::Category;
    let file = file.to_path_buf();
    match e.classify() {
        Category::Syntax | Category::Eof | Category::Io => CheckpointError::ConfigSyntax {
            file,
            reason: e.to_string(),
        },
        Category::Data => {
            let path = key_path_at(text, e.line(), e.column());
            let msg = e.to_string();
            if let Some(field) = msg
                .strip_prefix("missing field `")
                .and_then(|rest| rest.split('`').next())
            {
                let key = if path.is_empty() {
                    field.to_owned()
                } else {
                    format!("{path}.{field}")
                };
                return CheckpointError::MissingConfigKey { file, key };
            }
            CheckpointError::InvalidConfigValue {
                file,
                key: if path.is_empty() {
                    "<root>".to_owned()
                } else {
                    path
                },
                reason: msg,
            }
        }
    }
}

/// The dotted key path of the JSON value being read at `line`/`column` (1-based, as serde_json
/// reports errors), e.g. `rope_parameters.rope_theta` or `block_out_channels[1]`. `text` is
/// valid JSON up to that point (data errors only happen after successful syntax).
fn key_path_at(text: &str, line: usize, column: usize) -> String {
    enum Frame {
        Object { key: Option<String>, want_key: bool },
        Array { index: usize },
    }
    let bytes = text.as_bytes();
    let mut offset = 0usize;
    for _ in 1..line {
        match bytes[offset..].iter().position(|&b| b == b'\n') {
            Some(p) => offset += p + 1,
            None => break,
        }
    }
    let end = (offset + column).min(bytes.len());
    let mut stack: Vec<Frame> = Vec::new();
    let mut i = 0;
    while i < end {
        match bytes[i] {
            b'{' => stack.push(Frame::Object {
                key: None,
                want_key: true,
            }),
            b'[' => stack.push(Frame::Array { index: 0 }),
            b'}' | b']' => {
                stack.pop();
            }
            b',' => match stack.last_mut() {
                Some(Frame::Array { index }) => *index += 1,
                Some(Frame::Object { want_key, .. }) => *want_key = true,
                None => {}
            },
            b'"' => {
                let start = i + 1;
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' {
                    if bytes[i] == b'\\' {
                        i += 1;
                    }
                    i += 1;
                }
                if let Some(Frame::Object { key, want_key }) = stack.last_mut()
                    && *want_key
                {
                    let raw = &text[start..i.min(text.len())];
                    *key = Some(serde_json::from_str(&format!("\"{raw}\"")).unwrap_or(raw.into()));
                    *want_key = false;
                }
            }
            _ => {}
        }
        i += 1;
    }
    let mut path = String::new();
    for frame in &stack {
        match frame {
            Frame::Object { key: Some(k), .. } => {
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(k);
            }
            Frame::Object { key: None, .. } => {}
            Frame::Array { index } => path.push_str(&format!("[{index}]")),
        }
    }
    path
}

/// `null` in a JSON config means "the default" for flags (Python `Optional[bool] = False`).
fn null_as_default<'de, D, T>(d: D) -> std::result::Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

fn unsupported(
    file: &Path,
    key: &str,
    value: impl Display,
    reason: impl Into<String>,
) -> CheckpointError {
    CheckpointError::UnsupportedConfig {
        file: file.to_path_buf(),
        key: key.to_owned(),
        value: value.to_string(),
        reason: reason.into(),
    }
}

fn check_class(file: &Path, key: &str, found: Option<&str>, expected: &[&str]) -> Result<()> {
    match found {
        Some(c) if !expected.contains(&c) => Err(unsupported(
            file,
            key,
            c,
            format!("expected {}", expected.join(" or ")),
        )),
        _ => Ok(()),
    }
}

fn check_positive(file: &Path, key: &str, v: usize) -> Result<()> {
    if v == 0 {
        return Err(unsupported(file, key, v, "must be at least 1"));
    }
    Ok(())
}

fn check_positive_f(file: &Path, key: &str, v: f64) -> Result<()> {
    if !(v.is_finite() && v > 0.0) {
        return Err(unsupported(
            file,
            key,
            v,
            "must be a positive finite number",
        ));
    }
    Ok(())
}

/// `load(path)`: read (a directory means `<dir>/<FILE_NAME>`), parse, validate.
macro_rules! config_file {
    ($ty:ident, $file:literal, plain_json) => {
        config_file!($ty, $file);

        impl $ty {
            /// Parse without validating; `file` is used in errors and stored as `source`.
            pub fn from_json(text: &str, file: &Path) -> Result<$ty> {
                let mut c: $ty = parse_json(text, file)?;
                c.source = file.to_path_buf();
                Ok(c)
            }
        }
    };
    ($ty:ident, $file:literal) => {
        impl $ty {
            /// File name of this config inside a component folder.
            pub const FILE_NAME: &'static str = $file;

            /// Read, parse and [`validate`](Self::validate) the config at `path`: a JSON file
            /// or a component directory holding `FILE_NAME`.
            pub fn load(path: impl AsRef<Path>) -> Result<$ty> {
                let (file, text) = read_config(path.as_ref(), $file)?;
                let config = Self::from_json(&text, &file)?;
                config.validate()?;
                Ok(config)
            }
        }
    };
}

// ---------------------------------------------------------------------------------------------
// VAE
// ---------------------------------------------------------------------------------------------

/// diffusers `AutoencoderKLHunyuanVideo` config (`vae/config.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct VaeConfig {
    #[serde(rename = "_class_name", skip_serializing_if = "Option::is_none")]
    pub class_name: Option<String>,
    pub in_channels: usize,
    pub out_channels: usize,
    pub latent_channels: usize,
    pub down_block_types: Vec<String>,
    pub up_block_types: Vec<String>,
    pub block_out_channels: Vec<usize>,
    pub layers_per_block: usize,
    pub act_fn: String,
    pub norm_num_groups: usize,
    pub scaling_factor: f64,
    pub spatial_compression_ratio: usize,
    pub temporal_compression_ratio: usize,
    pub mid_block_add_attention: bool,
    /// The file this config was read from (empty for built-in values).
    #[serde(skip)]
    pub source: PathBuf,
}

impl Default for VaeConfig {
    fn default() -> Self {
        VaeConfig {
            class_name: None,
            in_channels: 3,
            out_channels: 3,
            latent_channels: 16,
            down_block_types: vec![Self::DOWN_BLOCK.to_owned(); 4],
            up_block_types: vec![Self::UP_BLOCK.to_owned(); 4],
            block_out_channels: vec![128, 256, 512, 512],
            layers_per_block: 2,
            act_fn: "silu".to_owned(),
            norm_num_groups: 32,
            scaling_factor: 0.476986,
            spatial_compression_ratio: 8,
            temporal_compression_ratio: 4,
            mid_block_add_attention: true,
            source: PathBuf::new(),
        }
    }
}

config_file!(VaeConfig, "config.json", plain_json);

impl VaeConfig {
    pub const CLASS_NAME: &'static str = "AutoencoderKLHunyuanVideo";
    pub const DOWN_BLOCK: &'static str = "HunyuanVideoDownBlock3D";
    pub const UP_BLOCK: &'static str = "HunyuanVideoUpBlock3D";

    /// Reject configs the VAE decoder exporter cannot reproduce.
    pub fn validate(&self) -> Result<()> {
        let f = self.source.as_path();
        check_class(
            f,
            "_class_name",
            self.class_name.as_deref(),
            &[Self::CLASS_NAME],
        )?;
        check_positive(f, "in_channels", self.in_channels)?;
        check_positive(f, "out_channels", self.out_channels)?;
        check_positive(f, "latent_channels", self.latent_channels)?;
        check_positive(f, "layers_per_block", self.layers_per_block)?;
        check_positive(f, "norm_num_groups", self.norm_num_groups)?;
        check_positive_f(f, "scaling_factor", self.scaling_factor)?;
        let n = self.block_out_channels.len();
        if n < 3 {
            return Err(unsupported(
                f,
                "block_out_channels",
                format!("{:?}", self.block_out_channels),
                "need at least 3 blocks: the two temporal up/downsamplings sit in blocks \
                 n-3 and n-2",
            ));
        }
        for (i, &c) in self.block_out_channels.iter().enumerate() {
            if c == 0 || !c.is_multiple_of(self.norm_num_groups) {
                return Err(unsupported(
                    f,
                    "norm_num_groups",
                    self.norm_num_groups,
                    format!("does not divide block_out_channels[{i}] = {c}"),
                ));
            }
        }
        for (key, types, want) in [
            ("down_block_types", &self.down_block_types, Self::DOWN_BLOCK),
            ("up_block_types", &self.up_block_types, Self::UP_BLOCK),
        ] {
            if types.len() != n {
                return Err(unsupported(
                    f,
                    key,
                    format!("{types:?}"),
                    format!("has {} entries but block_out_channels has {n}", types.len()),
                ));
            }
            if let Some((i, t)) = types.iter().enumerate().find(|(_, t)| *t != want) {
                return Err(unsupported(
                    f,
                    &format!("{key}[{i}]"),
                    t,
                    format!("only {want} is supported"),
                ));
            }
        }
        if self.act_fn != "silu" {
            return Err(unsupported(
                f,
                "act_fn",
                &self.act_fn,
                "only silu is supported",
            ));
        }
        if self.temporal_compression_ratio != 4 {
            return Err(unsupported(
                f,
                "temporal_compression_ratio",
                self.temporal_compression_ratio,
                "only 4 is supported (diffusers' decoder accepts no other value)",
            ));
        }
        let s = self.spatial_compression_ratio;
        if !s.is_power_of_two() || s < 2 || s.trailing_zeros() as usize > n - 1 {
            return Err(unsupported(
                f,
                "spatial_compression_ratio",
                s,
                format!(
                    "must be a power of two from 2 to 2^{} for {n} blocks",
                    n - 1
                ),
            ));
        }
        Ok(())
    }

    /// Per decoder up block `i`: `(temporal, spatial)` upsampling factors, as diffusers'
    /// `HunyuanVideoDecoder3D.__init__` computes them (temporal ratio 4).
    pub fn decoder_upsampling(&self) -> Vec<(usize, usize)> {
        let n = self.up_block_types.len();
        let spatial_layers = self.spatial_compression_ratio.trailing_zeros() as usize;
        let time_layers = self.temporal_compression_ratio.trailing_zeros() as usize;
        (0..n)
            .map(|i| {
                let is_final = i + 1 == self.block_out_channels.len();
                let spatial = i < spatial_layers;
                let temporal = i + 1 + time_layers >= self.block_out_channels.len() && !is_final;
                (if temporal { 2 } else { 1 }, if spatial { 2 } else { 1 })
            })
            .collect()
    }
}

// ---------------------------------------------------------------------------------------------
// Transformer
// ---------------------------------------------------------------------------------------------

/// diffusers `HunyuanVideoTransformer3DModel` config (`transformer/config.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TransformerConfig {
    #[serde(rename = "_class_name", skip_serializing_if = "Option::is_none")]
    pub class_name: Option<String>,
    pub in_channels: usize,
    /// `None` (JSON `null`) means `in_channels`, as in diffusers; see
    /// [`out_channels`](Self::out_channels).
    pub out_channels: Option<usize>,
    pub num_attention_heads: usize,
    pub attention_head_dim: usize,
    pub num_layers: usize,
    pub num_single_layers: usize,
    pub num_refiner_layers: usize,
    pub mlp_ratio: f64,
    pub patch_size: usize,
    pub patch_size_t: usize,
    pub qk_norm: String,
    pub guidance_embeds: bool,
    pub text_embed_dim: usize,
    pub pooled_projection_dim: usize,
    pub rope_theta: f64,
    pub rope_axes_dim: Vec<usize>,
    pub image_condition_type: Option<String>,
    #[serde(skip)]
    pub source: PathBuf,
}

impl Default for TransformerConfig {
    fn default() -> Self {
        TransformerConfig {
            class_name: None,
            in_channels: 16,
            out_channels: Some(16),
            num_attention_heads: 24,
            attention_head_dim: 128,
            num_layers: 20,
            num_single_layers: 40,
            num_refiner_layers: 2,
            mlp_ratio: 4.0,
            patch_size: 2,
            patch_size_t: 1,
            qk_norm: "rms_norm".to_owned(),
            guidance_embeds: true,
            text_embed_dim: 4096,
            pooled_projection_dim: 768,
            rope_theta: 256.0,
            rope_axes_dim: vec![16, 56, 56],
            image_condition_type: None,
            source: PathBuf::new(),
        }
    }
}

config_file!(TransformerConfig, "config.json", plain_json);

/// A model preset (`configs/models/*.yaml`): the configs of a known checkpoint for files that
/// carry none, such as Tencent's single-file transformer.
#[derive(Debug, Clone, Deserialize)]
struct ModelPreset {
    #[allow(dead_code)]
    name: Option<String>,
    transformer: serde_json::Value,
}

impl TransformerConfig {
    pub const CLASS_NAME: &'static str = "HunyuanVideoTransformer3DModel";

    /// Read the `transformer:` section of a model preset YAML (keys as in diffusers'
    /// `transformer/config.json`), parsed and validated like [`load`](Self::load).
    pub fn load_preset(path: impl AsRef<Path>) -> Result<TransformerConfig> {
        let path = path.as_ref();
        let (file, text) = read_config(path, "preset.yaml")?;
        let preset: ModelPreset =
            serde_saphyr::from_str(&text).map_err(|e| CheckpointError::ConfigSyntax {
                file: file.clone(),
                reason: format!("not a model preset (a YAML mapping with `transformer:`): {e}"),
            })?;
        let json = serde_json::to_string_pretty(&preset.transformer).map_err(|e| {
            CheckpointError::ConfigSyntax {
                file: file.clone(),
                reason: e.to_string(),
            }
        })?;
        let config = Self::from_json(&json, &file)?;
        config.validate()?;
        Ok(config)
    }

    /// Hidden size: heads × head dim.
    pub fn inner_dim(&self) -> usize {
        self.num_attention_heads * self.attention_head_dim
    }

    /// How the transformer takes an image (text-to-video when unset). Checked by
    /// [`validate`](Self::validate); an unknown value reads as text-to-video here.
    pub fn image_condition(&self) -> ImageCondition {
        ImageCondition::from_config(self.image_condition_type.as_deref()).unwrap_or_default()
    }

    /// Output channels (`out_channels or in_channels`).
    pub fn out_channels(&self) -> usize {
        self.out_channels.unwrap_or(self.in_channels)
    }

    /// MLP hidden size, `int(inner_dim * mlp_ratio)` as diffusers computes it.
    pub fn mlp_hidden_dim(&self) -> usize {
        (self.inner_dim() as f64 * self.mlp_ratio) as usize
    }

    /// Reject configs the transformer exporter cannot reproduce.
    pub fn validate(&self) -> Result<()> {
        let f = self.source.as_path();
        check_class(
            f,
            "_class_name",
            self.class_name.as_deref(),
            &[Self::CLASS_NAME],
        )?;
        check_positive(f, "in_channels", self.in_channels)?;
        check_positive(f, "out_channels", self.out_channels())?;
        check_positive(f, "num_attention_heads", self.num_attention_heads)?;
        check_positive(f, "attention_head_dim", self.attention_head_dim)?;
        check_positive(f, "patch_size", self.patch_size)?;
        check_positive(f, "text_embed_dim", self.text_embed_dim)?;
        check_positive(f, "pooled_projection_dim", self.pooled_projection_dim)?;
        check_positive_f(f, "mlp_ratio", self.mlp_ratio)?;
        check_positive_f(f, "rope_theta", self.rope_theta)?;
        if self.patch_size_t != 1 {
            return Err(unsupported(
                f,
                "patch_size_t",
                self.patch_size_t,
                "only 1 is supported (HunyuanVideo patchifies space only)",
            ));
        }
        if self.qk_norm != "rms_norm" {
            return Err(unsupported(
                f,
                "qk_norm",
                &self.qk_norm,
                "only rms_norm is supported",
            ));
        }
        let condition = ImageCondition::from_config(self.image_condition_type.as_deref()).map_err(
            |reason| {
                unsupported(
                    f,
                    "image_condition_type",
                    self.image_condition_type.as_deref().unwrap_or("null"),
                    reason,
                )
            },
        )?;
        let (c_in, c_out) = (self.in_channels, self.out_channels());
        let expected_in = match condition {
            ImageCondition::None | ImageCondition::TokenReplace => c_out,
            ImageCondition::LatentConcat => 2 * c_out + 1,
        };
        if condition.is_image_to_video() && c_in != expected_in {
            return Err(unsupported(
                f,
                "in_channels",
                c_in,
                format!(
                    "an image_condition_type {condition} transformer with out_channels {c_out} takes {expected_in} input channels"
                ),
            ));
        }
        let axes = &self.rope_axes_dim;
        if axes.len() != 3
            || axes.iter().any(|d| !d.is_multiple_of(2) || *d == 0)
            || axes.iter().sum::<usize>() != self.attention_head_dim
        {
            return Err(unsupported(
                f,
                "rope_axes_dim",
                format!("{axes:?}"),
                format!(
                    "need 3 positive even sizes (t, h, w) summing to attention_head_dim = {}",
                    self.attention_head_dim
                ),
            ));
        }
        if self.mlp_hidden_dim() == 0 {
            return Err(unsupported(
                f,
                "mlp_ratio",
                self.mlp_ratio,
                "gives an empty MLP",
            ));
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Llama (text_encoder)
// ---------------------------------------------------------------------------------------------

/// RoPE settings as transformers nests them (`rope_scaling` in v4, `rope_parameters` in v5).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct RopeParameters {
    #[serde(alias = "type", skip_serializing_if = "Option::is_none")]
    pub rope_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rope_theta: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub factor: Option<f64>,
}

fn d_llama_eps() -> f64 {
    1e-6
}
fn d_llama_positions() -> usize {
    2048
}
fn d_silu() -> String {
    "silu".to_owned()
}

/// transformers `LlamaConfig` (`text_encoder/config.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LlamaConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_type: Option<String>,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    /// `None` means `num_attention_heads` (no grouped-query attention).
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    /// `None` means `hidden_size / num_attention_heads`.
    #[serde(default)]
    pub head_dim: Option<usize>,
    #[serde(default = "d_llama_eps")]
    pub rms_norm_eps: f64,
    /// Top-level `rope_theta` (transformers v4); see [`rope_theta`](Self::rope_theta).
    #[serde(default, rename = "rope_theta")]
    pub rope_theta_top: Option<f64>,
    #[serde(default)]
    pub rope_scaling: Option<RopeParameters>,
    #[serde(default)]
    pub rope_parameters: Option<RopeParameters>,
    #[serde(default = "d_llama_positions")]
    pub max_position_embeddings: usize,
    #[serde(default = "d_silu")]
    pub hidden_act: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub attention_bias: bool,
    #[serde(default, deserialize_with = "null_as_default")]
    pub mlp_bias: bool,
    #[serde(skip)]
    pub source: PathBuf,
}

config_file!(LlamaConfig, "config.json");

impl LlamaConfig {
    /// Parse without validating; `file` is used in errors and stored as `source`. A
    /// `LlavaForConditionalGeneration` config (HunyuanVideo-I2V's `text_encoder/`) is read
    /// through its `text_config`.
    pub fn from_json(text: &str, file: &Path) -> Result<LlamaConfig> {
        let value: serde_json::Value = parse_json(text, file)?;
        let mut c = if is_llava(&value) {
            parse_json::<LlavaConfig>(text, file)?.text_config
        } else {
            parse_json::<LlamaConfig>(text, file)?
        };
        c.source = file.to_path_buf();
        Ok(c)
    }

    pub fn num_key_value_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    pub fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    /// RoPE base: top-level `rope_theta`, else `rope_parameters.rope_theta`, else
    /// `rope_scaling.rope_theta`, else transformers' default 10000.
    pub fn rope_theta(&self) -> f64 {
        self.rope_theta_top
            .or(self.rope_parameters.as_ref().and_then(|r| r.rope_theta))
            .or(self.rope_scaling.as_ref().and_then(|r| r.rope_theta))
            .unwrap_or(10000.0)
    }

    /// Reject configs the Llama text-encoder exporter cannot reproduce.
    pub fn validate(&self) -> Result<()> {
        let f = self.source.as_path();
        check_class(f, "model_type", self.model_type.as_deref(), &["llama"])?;
        check_positive(f, "vocab_size", self.vocab_size)?;
        check_positive(f, "hidden_size", self.hidden_size)?;
        check_positive(f, "intermediate_size", self.intermediate_size)?;
        check_positive(f, "num_hidden_layers", self.num_hidden_layers)?;
        check_positive(f, "num_attention_heads", self.num_attention_heads)?;
        check_positive(f, "num_key_value_heads", self.num_key_value_heads())?;
        check_positive_f(f, "rms_norm_eps", self.rms_norm_eps)?;
        check_positive_f(f, "rope_theta", self.rope_theta())?;
        if !self
            .num_attention_heads
            .is_multiple_of(self.num_key_value_heads())
        {
            return Err(unsupported(
                f,
                "num_key_value_heads",
                self.num_key_value_heads(),
                format!(
                    "must divide num_attention_heads = {}",
                    self.num_attention_heads
                ),
            ));
        }
        if self.head_dim.is_none() && !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(unsupported(
                f,
                "num_attention_heads",
                self.num_attention_heads,
                format!("must divide hidden_size = {}", self.hidden_size),
            ));
        }
        check_positive(f, "head_dim", self.head_dim())?;
        if !self.head_dim().is_multiple_of(2) {
            return Err(unsupported(
                f,
                "head_dim",
                self.head_dim(),
                "RoPE needs an even size",
            ));
        }
        if self.hidden_act != "silu" {
            return Err(unsupported(
                f,
                "hidden_act",
                &self.hidden_act,
                "only silu is supported",
            ));
        }
        for (key, rope) in [
            ("rope_scaling", &self.rope_scaling),
            ("rope_parameters", &self.rope_parameters),
        ] {
            if let Some(t) = rope.as_ref().and_then(|r| r.rope_type.as_deref())
                && t != "default"
            {
                return Err(unsupported(
                    f,
                    &format!("{key}.rope_type"),
                    t,
                    "only plain RoPE (`default`) is supported",
                ));
            }
        }
        let thetas: Vec<(&str, f64)> = [
            ("rope_theta", self.rope_theta_top),
            (
                "rope_parameters.rope_theta",
                self.rope_parameters.as_ref().and_then(|r| r.rope_theta),
            ),
            (
                "rope_scaling.rope_theta",
                self.rope_scaling.as_ref().and_then(|r| r.rope_theta),
            ),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| (k, v)))
        .collect();
        if let Some((k, v)) = thetas.iter().find(|(_, v)| *v != thetas[0].1) {
            return Err(unsupported(
                f,
                k,
                v,
                format!("conflicts with {} = {}", thetas[0].0, thetas[0].1),
            ));
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// LLaVA (HunyuanVideo-I2V's text_encoder: CLIP vision tower + projector + Llama)
// ---------------------------------------------------------------------------------------------

fn is_llava(value: &serde_json::Value) -> bool {
    value.get("model_type").and_then(|v| v.as_str()) == Some("llava")
}

fn d_llava_layer() -> i64 {
    -2
}
fn d_llava_strategy() -> String {
    "default".to_owned()
}
fn d_gelu() -> String {
    "gelu".to_owned()
}
fn d_true() -> bool {
    true
}
fn d_vision_channels() -> usize {
    3
}

/// transformers `CLIPVisionConfig` (a LLaVA config's `vision_config`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClipVisionConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_type: Option<String>,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub image_size: usize,
    pub patch_size: usize,
    #[serde(default = "d_vision_channels")]
    pub num_channels: usize,
    #[serde(default = "d_clip_eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "d_quick_gelu")]
    pub hidden_act: String,
}

impl ClipVisionConfig {
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads.max(1)
    }

    /// Patches per image side (`image_size / patch_size`).
    pub fn patches_per_side(&self) -> usize {
        self.image_size / self.patch_size.max(1)
    }
}

/// transformers `LlavaConfig` (`text_encoder/config.json` of HunyuanVideo-I2V).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LlavaConfig {
    pub text_config: LlamaConfig,
    pub vision_config: ClipVisionConfig,
    pub image_token_index: i64,
    #[serde(default)]
    pub pad_token_id: Option<i64>,
    #[serde(default = "d_llava_layer")]
    pub vision_feature_layer: i64,
    #[serde(default = "d_llava_strategy")]
    pub vision_feature_select_strategy: String,
    #[serde(default = "d_gelu")]
    pub projector_hidden_act: String,
    #[serde(default = "d_true")]
    pub multimodal_projector_bias: bool,
    #[serde(skip)]
    pub source: PathBuf,
}

config_file!(LlavaConfig, "config.json");

impl LlavaConfig {
    /// Parse without validating; `file` is used in errors and stored as `source` (also of the
    /// nested text config).
    pub fn from_json(text: &str, file: &Path) -> Result<LlavaConfig> {
        let mut c: LlavaConfig = parse_json(text, file)?;
        c.source = file.to_path_buf();
        c.text_config.source = file.to_path_buf();
        Ok(c)
    }

    /// Whether the JSON text is a LLaVA config (`model_type: "llava"`).
    pub fn is_llava_json(text: &str) -> bool {
        serde_json::from_str::<serde_json::Value>(text).is_ok_and(|v| is_llava(&v))
    }

    /// Vision encoder layers run: `hidden_states[vision_feature_layer]` is the output of layer
    /// `num_hidden_layers + 1 + vision_feature_layer` (`hidden_states[0]` is the embedding).
    pub fn vision_layers_used(&self) -> usize {
        (self.vision_config.num_hidden_layers as i64 + 1 + self.vision_feature_layer).max(0)
            as usize
    }

    /// Image embeddings per image: the patches (the CLS token is dropped, strategy `default`).
    pub fn image_tokens(&self) -> usize {
        self.vision_config.patches_per_side().pow(2)
    }

    /// Reject configs the LLaVA exporters cannot reproduce.
    pub fn validate(&self) -> Result<()> {
        let f = self.source.as_path();
        self.text_config.validate()?;
        let v = &self.vision_config;
        check_class(
            f,
            "vision_config.model_type",
            v.model_type.as_deref(),
            &["clip_vision_model"],
        )?;
        check_positive(f, "vision_config.hidden_size", v.hidden_size)?;
        check_positive(f, "vision_config.intermediate_size", v.intermediate_size)?;
        check_positive(
            f,
            "vision_config.num_attention_heads",
            v.num_attention_heads,
        )?;
        check_positive(f, "vision_config.patch_size", v.patch_size)?;
        check_positive_f(f, "vision_config.layer_norm_eps", v.layer_norm_eps)?;
        if !v.hidden_size.is_multiple_of(v.num_attention_heads) {
            return Err(unsupported(
                f,
                "vision_config.num_attention_heads",
                v.num_attention_heads,
                format!("must divide hidden_size = {}", v.hidden_size),
            ));
        }
        if v.image_size == 0 || !v.image_size.is_multiple_of(v.patch_size) {
            return Err(unsupported(
                f,
                "vision_config.image_size",
                v.image_size,
                format!(
                    "must be a positive multiple of patch_size = {}",
                    v.patch_size
                ),
            ));
        }
        if !matches!(v.hidden_act.as_str(), "quick_gelu" | "gelu") {
            return Err(unsupported(
                f,
                "vision_config.hidden_act",
                &v.hidden_act,
                "only quick_gelu and gelu are supported",
            ));
        }
        let layers = v.num_hidden_layers as i64;
        if !(-layers..0).contains(&self.vision_feature_layer) {
            return Err(unsupported(
                f,
                "vision_feature_layer",
                self.vision_feature_layer,
                format!("must be one of -1 ..= -{layers} (a layer's output)"),
            ));
        }
        if self.vision_feature_select_strategy != "default" {
            return Err(unsupported(
                f,
                "vision_feature_select_strategy",
                &self.vision_feature_select_strategy,
                "only `default` (the CLS token dropped) is supported",
            ));
        }
        if self.projector_hidden_act != "gelu" {
            return Err(unsupported(
                f,
                "projector_hidden_act",
                &self.projector_hidden_act,
                "only gelu is supported",
            ));
        }
        let vocab = self.text_config.vocab_size as i64;
        if !(0..vocab).contains(&self.image_token_index) {
            return Err(unsupported(
                f,
                "image_token_index",
                self.image_token_index,
                format!("must be a token id below vocab_size = {vocab}"),
            ));
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// CLIP text (text_encoder_2)
// ---------------------------------------------------------------------------------------------

fn d_clip_positions() -> usize {
    77
}
fn d_clip_eps() -> f64 {
    1e-5
}
fn d_quick_gelu() -> String {
    "quick_gelu".to_owned()
}
fn d_clip_eos() -> i64 {
    49407
}

/// transformers `CLIPTextConfig` (`text_encoder_2/config.json`; a full `CLIPConfig` is read
/// through its `text_config`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClipTextConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_type: Option<String>,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    #[serde(default = "d_clip_positions")]
    pub max_position_embeddings: usize,
    #[serde(default = "d_clip_eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "d_quick_gelu")]
    pub hidden_act: String,
    /// Legacy configs (openai/clip-vit-large-patch14, which HunyuanVideo uses) say 2: see
    /// [`pooler_uses_argmax`](Self::pooler_uses_argmax).
    #[serde(default = "d_clip_eos")]
    pub eos_token_id: i64,
    #[serde(skip)]
    pub source: PathBuf,
}

config_file!(ClipTextConfig, "config.json");

#[derive(Deserialize)]
struct ClipWrapper {
    text_config: ClipTextConfig,
}

impl ClipTextConfig {
    /// Parse without validating; `file` is used in errors and stored as `source`.
    pub fn from_json(text: &str, file: &Path) -> Result<ClipTextConfig> {
        let value: serde_json::Value = parse_json(text, file)?;
        let nested = value.get("text_config").is_some_and(|v| v.is_object())
            && value.get("hidden_size").is_none();
        let mut c = if nested {
            parse_json::<ClipWrapper>(text, file)?.text_config
        } else {
            parse_json::<ClipTextConfig>(text, file)?
        };
        c.source = file.to_path_buf();
        Ok(c)
    }

    /// transformers' `CLIPTextTransformer` pools the token at `argmax(input_ids)` (the highest
    /// id, i.e. the real EOS 49407) when `eos_token_id == 2`, a legacy config value; otherwise
    /// it pools the first position holding `eos_token_id`.
    pub fn pooler_uses_argmax(&self) -> bool {
        self.eos_token_id == 2
    }

    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads.max(1)
    }

    /// Reject configs the CLIP text-encoder exporter cannot reproduce.
    pub fn validate(&self) -> Result<()> {
        let f = self.source.as_path();
        check_class(
            f,
            "model_type",
            self.model_type.as_deref(),
            &["clip_text_model"],
        )?;
        check_positive(f, "vocab_size", self.vocab_size)?;
        check_positive(f, "hidden_size", self.hidden_size)?;
        check_positive(f, "intermediate_size", self.intermediate_size)?;
        check_positive(f, "num_hidden_layers", self.num_hidden_layers)?;
        check_positive(f, "num_attention_heads", self.num_attention_heads)?;
        check_positive(f, "max_position_embeddings", self.max_position_embeddings)?;
        check_positive_f(f, "layer_norm_eps", self.layer_norm_eps)?;
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(unsupported(
                f,
                "num_attention_heads",
                self.num_attention_heads,
                format!("must divide hidden_size = {}", self.hidden_size),
            ));
        }
        if !matches!(self.hidden_act.as_str(), "quick_gelu" | "gelu") {
            return Err(unsupported(
                f,
                "hidden_act",
                &self.hidden_act,
                "only quick_gelu and gelu are supported",
            ));
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Scheduler
// ---------------------------------------------------------------------------------------------

/// diffusers `FlowMatchEulerDiscreteScheduler` config (`scheduler/scheduler_config.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SchedulerConfig {
    #[serde(rename = "_class_name", skip_serializing_if = "Option::is_none")]
    pub class_name: Option<String>,
    pub num_train_timesteps: usize,
    pub shift: f64,
    #[serde(deserialize_with = "null_as_default")]
    pub use_dynamic_shifting: bool,
    pub base_shift: Option<f64>,
    pub max_shift: Option<f64>,
    pub base_image_seq_len: Option<usize>,
    pub max_image_seq_len: Option<usize>,
    #[serde(deserialize_with = "null_as_default")]
    pub invert_sigmas: bool,
    pub shift_terminal: Option<f64>,
    #[serde(deserialize_with = "null_as_default")]
    pub use_karras_sigmas: bool,
    #[serde(deserialize_with = "null_as_default")]
    pub use_exponential_sigmas: bool,
    #[serde(deserialize_with = "null_as_default")]
    pub use_beta_sigmas: bool,
    pub time_shift_type: String,
    #[serde(deserialize_with = "null_as_default")]
    pub stochastic_sampling: bool,
    #[serde(skip)]
    pub source: PathBuf,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            class_name: None,
            num_train_timesteps: 1000,
            shift: 1.0,
            use_dynamic_shifting: false,
            base_shift: Some(0.5),
            max_shift: Some(1.15),
            base_image_seq_len: Some(256),
            max_image_seq_len: Some(4096),
            invert_sigmas: false,
            shift_terminal: None,
            use_karras_sigmas: false,
            use_exponential_sigmas: false,
            use_beta_sigmas: false,
            time_shift_type: "exponential".to_owned(),
            stochastic_sampling: false,
            source: PathBuf::new(),
        }
    }
}

config_file!(SchedulerConfig, "scheduler_config.json", plain_json);

impl SchedulerConfig {
    pub const CLASS_NAME: &'static str = "FlowMatchEulerDiscreteScheduler";

    /// Reject options the runtime's plain shifted flow-matching schedule does not implement.
    pub fn validate(&self) -> Result<()> {
        let f = self.source.as_path();
        check_class(
            f,
            "_class_name",
            self.class_name.as_deref(),
            &[Self::CLASS_NAME],
        )?;
        check_positive(f, "num_train_timesteps", self.num_train_timesteps)?;
        check_positive_f(f, "shift", self.shift)?;
        for (key, on) in [
            ("use_dynamic_shifting", self.use_dynamic_shifting),
            ("invert_sigmas", self.invert_sigmas),
            ("use_karras_sigmas", self.use_karras_sigmas),
            ("use_exponential_sigmas", self.use_exponential_sigmas),
            ("use_beta_sigmas", self.use_beta_sigmas),
            ("stochastic_sampling", self.stochastic_sampling),
        ] {
            if on {
                return Err(unsupported(
                    f,
                    key,
                    on,
                    "only the static shifted schedule (HunyuanVideo's) is supported",
                ));
            }
        }
        if let Some(t) = self.shift_terminal {
            return Err(unsupported(
                f,
                "shift_terminal",
                t,
                "only the static shifted schedule (HunyuanVideo's) is supported",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const F: &str = "/m/vae/config.json";

    fn f() -> &'static Path {
        Path::new(F)
    }

    #[track_caller]
    fn unsupported_key(r: Result<()>) -> String {
        match r {
            Err(CheckpointError::UnsupportedConfig { file, key, .. }) => {
                assert_eq!(file, f());
                key
            }
            other => panic!("expected UnsupportedConfig, got {other:?}"),
        }
    }

    const HUNYUAN_VAE: &str = r#"{
      "_class_name": "AutoencoderKLHunyuanVideo",
      "_diffusers_version": "0.32.0.dev0",
      "act_fn": "silu",
      "block_out_channels": [128, 256, 512, 512],
      "down_block_types": ["HunyuanVideoDownBlock3D", "HunyuanVideoDownBlock3D",
                           "HunyuanVideoDownBlock3D", "HunyuanVideoDownBlock3D"],
      "in_channels": 3,
      "latent_channels": 16,
      "layers_per_block": 2,
      "mid_block_add_attention": true,
      "norm_num_groups": 32,
      "out_channels": 3,
      "scaling_factor": 0.476986,
      "spatial_compression_ratio": 8,
      "temporal_compression_ratio": 4,
      "up_block_types": ["HunyuanVideoUpBlock3D", "HunyuanVideoUpBlock3D",
                         "HunyuanVideoUpBlock3D", "HunyuanVideoUpBlock3D"]
    }"#;

    #[test]
    fn vae_parses_and_defaults_like_diffusers() {
        let c = VaeConfig::from_json(HUNYUAN_VAE, f()).unwrap();
        c.validate().unwrap();
        assert_eq!(c.source, f());
        assert_eq!(c.class_name.as_deref(), Some("AutoencoderKLHunyuanVideo"));
        let d = VaeConfig {
            class_name: c.class_name.clone(),
            source: c.source.clone(),
            ..VaeConfig::default()
        };
        assert_eq!(c, d);
        // Empty object: every default.
        let e = VaeConfig::from_json("{}", f()).unwrap();
        e.validate().unwrap();
        assert_eq!(e.block_out_channels, vec![128, 256, 512, 512]);
        assert_eq!(e.scaling_factor, 0.476986);
        // diffusers: spatial ups in blocks 0..3, temporal in 1 and 2.
        assert_eq!(e.decoder_upsampling(), vec![(1, 2), (2, 2), (2, 2), (1, 1)]);
    }

    #[test]
    fn vae_validation_rejects_what_we_cannot_export() {
        let with = |patch: &str| {
            let mut v: serde_json::Value = serde_json::from_str(HUNYUAN_VAE).unwrap();
            let p: serde_json::Value = serde_json::from_str(patch).unwrap();
            for (k, x) in p.as_object().unwrap() {
                v[k] = x.clone();
            }
            VaeConfig::from_json(&v.to_string(), f())
                .unwrap()
                .validate()
        };
        assert_eq!(
            unsupported_key(with(r#"{"temporal_compression_ratio": 8}"#)),
            "temporal_compression_ratio"
        );
        assert_eq!(
            unsupported_key(with(
                r#"{"up_block_types": ["HunyuanVideoUpBlock3D", "UpDecoderBlock2D",
                    "HunyuanVideoUpBlock3D", "HunyuanVideoUpBlock3D"]}"#
            )),
            "up_block_types[1]"
        );
        assert_eq!(
            unsupported_key(with(r#"{"down_block_types": ["HunyuanVideoDownBlock3D"]}"#)),
            "down_block_types"
        );
        let err = with(r#"{"norm_num_groups": 48}"#).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("norm_num_groups") && msg.contains("block_out_channels[0] = 128"),
            "{msg}"
        );
        assert!(msg.contains(F), "{msg}");
        assert_eq!(unsupported_key(with(r#"{"act_fn": "relu"}"#)), "act_fn");
        assert_eq!(
            unsupported_key(with(r#"{"spatial_compression_ratio": 16}"#)),
            "spatial_compression_ratio"
        );
        assert_eq!(
            unsupported_key(with(r#"{"_class_name": "AutoencoderKL"}"#)),
            "_class_name"
        );
        assert_eq!(
            unsupported_key(with(
                r#"{"block_out_channels": [32, 32], "up_block_types": ["HunyuanVideoUpBlock3D", "HunyuanVideoUpBlock3D"],
                    "down_block_types": ["HunyuanVideoDownBlock3D", "HunyuanVideoDownBlock3D"]}"#
            )),
            "block_out_channels"
        );
        // A tiny but valid layout.
        with(
            r#"{"block_out_channels": [8, 16, 16], "norm_num_groups": 4,
                "spatial_compression_ratio": 4,
                "up_block_types": ["HunyuanVideoUpBlock3D", "HunyuanVideoUpBlock3D", "HunyuanVideoUpBlock3D"],
                "down_block_types": ["HunyuanVideoDownBlock3D", "HunyuanVideoDownBlock3D", "HunyuanVideoDownBlock3D"]}"#,
        )
        .unwrap();
    }

    #[test]
    fn parse_errors_name_file_and_key() {
        // Wrong type at top level.
        match VaeConfig::from_json(
            "{\n  \"in_channels\": 3,\n  \"layers_per_block\": \"two\"\n}",
            f(),
        ) {
            Err(CheckpointError::InvalidConfigValue { file, key, reason }) => {
                assert_eq!(file, f());
                assert_eq!(key, "layers_per_block");
                assert!(reason.contains("invalid type"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        // Wrong element type inside an array.
        match VaeConfig::from_json(r#"{"block_out_channels": [128, "x", 512]}"#, f()) {
            Err(CheckpointError::InvalidConfigValue { key, .. }) => {
                assert_eq!(key, "block_out_channels[1]")
            }
            other => panic!("{other:?}"),
        }
        // Negative number for a usize.
        match TransformerConfig::from_json(r#"{"num_layers": 2, "patch_size": -1}"#, f()) {
            Err(CheckpointError::InvalidConfigValue { key, .. }) => assert_eq!(key, "patch_size"),
            other => panic!("{other:?}"),
        }
        // Syntax errors.
        match VaeConfig::from_json("{\"in_channels\": 3,", f()) {
            Err(CheckpointError::ConfigSyntax { file, .. }) => assert_eq!(file, f()),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            VaeConfig::from_json("3", f()),
            Err(CheckpointError::InvalidConfigValue { .. })
        ));
        // Missing required key (transformers configs), top level and nested.
        match LlamaConfig::from_json(
            r#"{"vocab_size": 10, "intermediate_size": 8, "num_hidden_layers": 2, "num_attention_heads": 2}"#,
            f(),
        ) {
            Err(CheckpointError::MissingConfigKey { file, key }) => {
                assert_eq!(file, f());
                assert_eq!(key, "hidden_size");
            }
            other => panic!("{other:?}"),
        }
        match ClipTextConfig::from_json(
            r#"{"model_type": "clip", "text_config": {"vocab_size": 10, "hidden_size": 8,
                "intermediate_size": 8, "num_attention_heads": 2}, "vision_config": {}}"#,
            f(),
        ) {
            Err(CheckpointError::MissingConfigKey { key, .. }) => {
                assert_eq!(key, "text_config.num_hidden_layers")
            }
            other => panic!("{other:?}"),
        }
        match LlamaConfig::from_json(
            r#"{"vocab_size": 10, "hidden_size": 8, "intermediate_size": 8, "num_hidden_layers": 2,
                "num_attention_heads": 2, "rope_parameters": {"rope_type": "default", "rope_theta": "big"}}"#,
            f(),
        ) {
            Err(CheckpointError::InvalidConfigValue { key, .. }) => {
                assert_eq!(key, "rope_parameters.rope_theta")
            }
            other => panic!("{other:?}"),
        }
        let msg = LlamaConfig::from_json("{}", f()).unwrap_err().to_string();
        assert!(msg.contains(F) && msg.contains("`vocab_size`"), "{msg}");
    }

    #[test]
    fn key_paths() {
        let text = "{\"a\": {\"b\": [1, {\"c\": 2}]}, \"d\": 3}";
        let col = |needle: &str| text.find(needle).unwrap() + needle.len();
        assert_eq!(key_path_at(text, 1, col("\"c\": 2")), "a.b[1].c");
        assert_eq!(key_path_at(text, 1, col("[1")), "a.b[0]");
        assert_eq!(key_path_at(text, 1, col("\"d\": 3")), "d");
        assert_eq!(key_path_at(text, 1, text.len()), "");
        assert_eq!(key_path_at("{\"x\\\"y\": 1}", 1, 10), "x\"y");
    }

    const TINY_TRANSFORMER: &str = r#"{
      "_class_name": "HunyuanVideoTransformer3DModel",
      "attention_head_dim": 16, "guidance_embeds": true, "in_channels": 4, "mlp_ratio": 4.0,
      "num_attention_heads": 2, "num_layers": 1, "num_refiner_layers": 1,
      "num_single_layers": 1, "out_channels": 4, "patch_size": 1, "patch_size_t": 1,
      "pooled_projection_dim": 8, "qk_norm": "rms_norm", "rope_axes_dim": [4, 6, 6],
      "rope_theta": 256.0, "text_embed_dim": 16, "image_condition_type": null
    }"#;

    #[test]
    fn transformer_config() {
        let c = TransformerConfig::from_json(TINY_TRANSFORMER, f()).unwrap();
        c.validate().unwrap();
        assert_eq!(c.inner_dim(), 32);
        assert_eq!(c.mlp_hidden_dim(), 128);
        assert_eq!(c.out_channels(), 4);
        let d = TransformerConfig::from_json("{\"in_channels\": 32, \"out_channels\": null}", f())
            .unwrap();
        assert_eq!(d.out_channels(), 32);
        assert_eq!(d.num_single_layers, 40);
        let with = |k: &str, v: &str| {
            let mut j: serde_json::Value = serde_json::from_str(TINY_TRANSFORMER).unwrap();
            j[k] = serde_json::from_str(v).unwrap();
            TransformerConfig::from_json(&j.to_string(), f())
                .unwrap()
                .validate()
        };
        assert_eq!(unsupported_key(with("patch_size_t", "2")), "patch_size_t");
        assert_eq!(
            unsupported_key(with("rope_axes_dim", "[4, 6, 8]")),
            "rope_axes_dim"
        );
        assert_eq!(
            unsupported_key(with("qk_norm", "\"layer_norm\"")),
            "qk_norm"
        );
        assert_eq!(
            unsupported_key(with("image_condition_type", "\"concat\"")),
            "image_condition_type"
        );
        // token_replace takes out_channels inputs (the tiny config's 4 = 4), latent_concat 2·4 + 1.
        with("image_condition_type", "\"token_replace\"").unwrap();
        let e = with("image_condition_type", "\"latent_concat\"").unwrap_err();
        assert!(e.to_string().contains("takes 9 input channels"), "{e}");
        let mut j: serde_json::Value = serde_json::from_str(TINY_TRANSFORMER).unwrap();
        j["image_condition_type"] = "latent_concat".into();
        j["in_channels"] = 9.into();
        let c = TransformerConfig::from_json(&j.to_string(), f()).unwrap();
        c.validate().unwrap();
        assert_eq!(c.image_condition(), ImageCondition::LatentConcat);
        let e = with("patch_size_t", "2").unwrap_err().to_string();
        assert!(e.contains(F) && e.contains("patch_size_t = 2"), "{e}");
    }

    const LLAMA: &str = r#"{
      "architectures": ["LlamaModel"], "model_type": "llama", "hidden_act": "silu",
      "hidden_size": 4096, "intermediate_size": 14336, "max_position_embeddings": 8192,
      "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 8,
      "rms_norm_eps": 1e-05, "rope_scaling": null, "rope_theta": 500000.0,
      "vocab_size": 128320, "torch_dtype": "float16"
    }"#;

    #[test]
    fn llama_rope_theta_top_level_or_nested() {
        let c = LlamaConfig::from_json(LLAMA, f()).unwrap();
        c.validate().unwrap();
        assert_eq!(c.rope_theta(), 500000.0);
        assert_eq!(c.num_key_value_heads(), 8);
        assert_eq!(c.head_dim(), 128);
        assert_eq!(c.rms_norm_eps, 1e-5);
        // transformers v5: rope_parameters, no top-level rope_theta.
        let mut j: serde_json::Value = serde_json::from_str(LLAMA).unwrap();
        j.as_object_mut().unwrap().remove("rope_theta");
        j["rope_parameters"] = serde_json::json!({"rope_type": "default", "rope_theta": 1.0e6});
        let c = LlamaConfig::from_json(&j.to_string(), f()).unwrap();
        c.validate().unwrap();
        assert_eq!(c.rope_theta(), 1.0e6);
        // Under rope_scaling.
        j.as_object_mut().unwrap().remove("rope_parameters");
        j["rope_scaling"] = serde_json::json!({"type": "default", "rope_theta": 2.0e5});
        let c = LlamaConfig::from_json(&j.to_string(), f()).unwrap();
        c.validate().unwrap();
        assert_eq!(c.rope_theta(), 2.0e5);
        // Defaults.
        j.as_object_mut().unwrap().remove("rope_scaling");
        j.as_object_mut().unwrap().remove("num_key_value_heads");
        let c = LlamaConfig::from_json(&j.to_string(), f()).unwrap();
        assert_eq!((c.rope_theta(), c.num_key_value_heads()), (10000.0, 32));
        // Unsupported RoPE scaling, conflicts, activations, head layout.
        j["rope_scaling"] = serde_json::json!({"rope_type": "llama3", "factor": 8.0});
        let c = LlamaConfig::from_json(&j.to_string(), f()).unwrap();
        assert_eq!(unsupported_key(c.validate()), "rope_scaling.rope_type");
        j["rope_scaling"] = serde_json::json!({"rope_theta": 5.0});
        j["rope_theta"] = serde_json::json!(6.0);
        let c = LlamaConfig::from_json(&j.to_string(), f()).unwrap();
        assert_eq!(unsupported_key(c.validate()), "rope_scaling.rope_theta");
        let mut j: serde_json::Value = serde_json::from_str(LLAMA).unwrap();
        j["num_key_value_heads"] = serde_json::json!(5);
        let c = LlamaConfig::from_json(&j.to_string(), f()).unwrap();
        assert_eq!(unsupported_key(c.validate()), "num_key_value_heads");
        j["num_key_value_heads"] = serde_json::json!(8);
        j["hidden_act"] = serde_json::json!("gelu");
        let c = LlamaConfig::from_json(&j.to_string(), f()).unwrap();
        assert_eq!(unsupported_key(c.validate()), "hidden_act");
        j["hidden_act"] = serde_json::json!("silu");
        j["model_type"] = serde_json::json!("mistral");
        let c = LlamaConfig::from_json(&j.to_string(), f()).unwrap();
        assert_eq!(unsupported_key(c.validate()), "model_type");
    }

    #[test]
    fn clip_flat_and_nested() {
        let flat = r#"{"model_type": "clip_text_model", "vocab_size": 49408, "hidden_size": 768,
            "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
            "max_position_embeddings": 77, "hidden_act": "quick_gelu", "layer_norm_eps": 1e-05,
            "eos_token_id": 2, "projection_dim": 768}"#;
        let c = ClipTextConfig::from_json(flat, f()).unwrap();
        c.validate().unwrap();
        assert!(c.pooler_uses_argmax());
        assert_eq!(c.head_dim(), 64);
        let nested = format!(
            r#"{{"model_type": "clip", "text_config": {}, "vision_config": {{}}}}"#,
            flat.replace("2, \"projection_dim\"", "49407, \"projection_dim\"")
        );
        let c = ClipTextConfig::from_json(&nested, f()).unwrap();
        c.validate().unwrap();
        assert!(!c.pooler_uses_argmax());
        assert_eq!(c.hidden_size, 768);
        let bad = flat.replace("quick_gelu", "relu");
        let c = ClipTextConfig::from_json(&bad, f()).unwrap();
        assert_eq!(unsupported_key(c.validate()), "hidden_act");
        let bad = flat.replace("\"num_attention_heads\": 12", "\"num_attention_heads\": 7");
        let c = ClipTextConfig::from_json(&bad, f()).unwrap();
        assert_eq!(unsupported_key(c.validate()), "num_attention_heads");
    }

    #[test]
    fn scheduler_config() {
        let text = r#"{"_class_name": "FlowMatchEulerDiscreteScheduler",
            "_diffusers_version": "0.32.0.dev0", "base_image_seq_len": 256, "base_shift": 0.5,
            "invert_sigmas": false, "max_image_seq_len": 4096, "max_shift": 1.15,
            "num_train_timesteps": 1000, "shift": 7.0, "shift_terminal": null,
            "use_beta_sigmas": false, "use_dynamic_shifting": false,
            "use_exponential_sigmas": false, "use_karras_sigmas": null}"#;
        let c = SchedulerConfig::from_json(text, f()).unwrap();
        c.validate().unwrap();
        assert_eq!((c.shift, c.num_train_timesteps), (7.0, 1000));
        assert!(!c.use_karras_sigmas);
        let c = SchedulerConfig::from_json(r#"{"use_dynamic_shifting": true}"#, f()).unwrap();
        assert_eq!(unsupported_key(c.validate()), "use_dynamic_shifting");
        let c = SchedulerConfig::from_json(r#"{"shift_terminal": 0.1}"#, f()).unwrap();
        assert_eq!(unsupported_key(c.validate()), "shift_terminal");
        let c = SchedulerConfig::from_json(r#"{"shift": 0}"#, f()).unwrap();
        assert_eq!(unsupported_key(c.validate()), "shift");
        let c = SchedulerConfig::from_json(r#"{"_class_name": "DDIMScheduler"}"#, f()).unwrap();
        assert_eq!(unsupported_key(c.validate()), "_class_name");
    }

    #[test]
    fn load_reads_files_and_component_directories() {
        let dir = tempfile::tempdir().unwrap();
        let vae = dir.path().join("vae");
        std::fs::create_dir(&vae).unwrap();
        std::fs::write(vae.join("config.json"), HUNYUAN_VAE).unwrap();
        let c = VaeConfig::load(&vae).unwrap();
        assert_eq!(c.source, vae.join("config.json"));
        assert_eq!(VaeConfig::load(vae.join("config.json")).unwrap(), c);
        let sched = dir.path().join("scheduler");
        std::fs::create_dir(&sched).unwrap();
        std::fs::write(sched.join("scheduler_config.json"), r#"{"shift": 7.0}"#).unwrap();
        assert_eq!(SchedulerConfig::load(&sched).unwrap().shift, 7.0);
        // Missing file: Io error naming the file.
        match TransformerConfig::load(dir.path()) {
            Err(CheckpointError::Io { file, .. }) => {
                assert_eq!(file, dir.path().join("config.json"))
            }
            other => panic!("{other:?}"),
        }
        // load validates.
        std::fs::write(
            vae.join("config.json"),
            r#"{"temporal_compression_ratio": 8}"#,
        )
        .unwrap();
        assert!(matches!(
            VaeConfig::load(&vae),
            Err(CheckpointError::UnsupportedConfig { .. })
        ));
    }
}
