//! Prompt tokenization for the two text encoders, with the `tokenizers` crate on the bundle's
//! `tokenizer.json` files.
//!
//! Mirrors diffusers `HunyuanVideoPipeline._get_llama_prompt_embeds` and
//! `_get_clip_prompt_embeds`: the prompt goes into the Llama-3 chat template
//! ([`PROMPT_TEMPLATE`], diffusers' `DEFAULT_PROMPT_TEMPLATE`), is tokenized with truncation and
//! right padding to `crop_start + max_sequence_length` tokens, and the first `crop_start`
//! positions (the template's system part) are dropped after encoding. `crop_start` is computed
//! from the template itself as diffusers does when the template carries none: the template's
//! token count minus 2 (the `{}` placeholder and the closing `<|eot_id|>`). CLIP sees the raw
//! prompt, 77 tokens. Truncation and padding are the `tokenizers` library's own (the one
//! transformers' fast tokenizers run), so special tokens are kept when a prompt is cut. The
//! image-to-video template (a given `crop_start`, [`LlamaPrompts::with_crop_start`]) and its
//! image expansion are [`crate::image_prompt`]'s.

use std::path::{Path, PathBuf};

use tokenizers::{
    PaddingDirection, PaddingParams, PaddingStrategy, Tokenizer, TruncationDirection,
    TruncationParams, TruncationStrategy,
};

/// diffusers' `DEFAULT_PROMPT_TEMPLATE["template"]`.
pub const PROMPT_TEMPLATE: &str = "<|start_header_id|>system<|end_header_id|>\n\nDescribe the video by detailing the following aspects: \
1. The main content and theme of the video.\
2. The color, shape, size, texture, quantity, text, and spatial relationships of the objects.\
3. Actions, events, behaviors temporal relationships, physical movement changes of the objects.\
4. background environment, light, style and atmosphere.\
5. camera angles, movements, and transitions used in the video:<|eot_id|>\
<|start_header_id|>user<|end_header_id|>\n\n{}<|eot_id|>";

/// Prompt tokens the transformer sees (diffusers' `max_sequence_length` default).
pub const MAX_SEQUENCE_LENGTH: usize = 256;
/// CLIP's context length.
pub const CLIP_MAX_LENGTH: usize = 77;

#[derive(Debug, thiserror::Error)]
pub enum TextError {
    #[error("{}: {reason}", .path.display())]
    Tokenizer { path: PathBuf, reason: String },
    #[error("the prompt is empty")]
    EmptyPrompt,
    #[error("prompt template must contain one `{{}}` placeholder: {0:?}")]
    Template(String),
    /// Every token of `prompt` lies in the first `crop_start` positions that are dropped after
    /// encoding: the text encoder would see no prompt at all (NaN in the transformer's text
    /// attention at step 1).
    #[error(
        "prompt {prompt:?}: no token of it is left after dropping the first {crop_start} \
         (template) positions; {} encodes the prompt template to an unexpected length",
        .path.display()
    )]
    CroppedAway {
        prompt: String,
        path: PathBuf,
        crop_start: usize,
    },
    /// An image-to-video prompt row must hold the template's one `<image>` token.
    #[error("prompt {row}: {found} `<image>` tokens after tokenizing (the template has one)")]
    ImageToken { row: usize, found: usize },
    #[error("the image-to-video template's `<image>` token is not at position {expected}")]
    ImageTokenPosition { expected: usize },
    /// The image-to-video crop finds the assistant part by its `<|end_header_id|>`.
    #[error(
        "prompt {row}: {found} `<|end_header_id|>` tokens (the image-to-video template has 3;          2 when the prompt is cut)"
    )]
    EndHeaders { row: usize, found: usize },
}

fn tok_err(path: &Path, e: impl std::fmt::Display) -> TextError {
    TextError::Tokenizer {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

/// Token ids and attention mask of a batch, row-major `[batch, len]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tokens {
    pub batch: usize,
    pub len: usize,
    pub input_ids: Vec<i64>,
    pub attention_mask: Vec<i64>,
    /// Rows whose prompt was cut to fit.
    pub truncated: Vec<usize>,
}

/// `tokenizer.json` (+ the pad token named in `tokenizer_config.json`) of a tokenizer folder.
fn load_tokenizer(dir: &Path) -> Result<(Tokenizer, u32, String), TextError> {
    let file = dir.join("tokenizer.json");
    let mut tokenizer = Tokenizer::from_file(&file).map_err(|e| tok_err(&file, e))?;
    // transformers saves the last padding / truncation state into tokenizer.json (e.g. after a
    // pipeline ran before `save_pretrained`); encoding must not depend on it: drop it, and let
    // [`fixed_length`] set ours.
    tokenizer.with_padding(None);
    tokenizer
        .with_truncation(None)
        .map_err(|e| tok_err(&file, e))?;
    let cfg_file = dir.join("tokenizer_config.json");
    let cfg: serde_json::Value = std::fs::read_to_string(&cfg_file)
        .map_err(|e| tok_err(&cfg_file, e))
        .and_then(|t| serde_json::from_str(&t).map_err(|e| tok_err(&cfg_file, e)))?;
    let pad = cfg
        .get("pad_token")
        .and_then(|p| {
            p.as_str()
                .or_else(|| p.get("content").and_then(|c| c.as_str()))
        })
        .ok_or_else(|| tok_err(&cfg_file, "no `pad_token`"))?
        .to_owned();
    let pad_id = tokenizer
        .token_to_id(&pad)
        .ok_or_else(|| tok_err(&file, format!("pad token {pad:?} is not in the vocabulary")))?;
    Ok((tokenizer, pad_id, pad))
}

/// `tokenizer` set to truncate and right-pad to exactly `len` tokens (configured once: cloning
/// a 128k-vocabulary tokenizer per call costs more than encoding).
fn fixed_length(
    tokenizer: &Tokenizer,
    path: &Path,
    len: usize,
    pad_id: u32,
    pad: &str,
) -> Result<Tokenizer, TextError> {
    let mut t = tokenizer.clone();
    t.with_truncation(Some(TruncationParams {
        max_length: len,
        strategy: TruncationStrategy::LongestFirst,
        stride: 0,
        direction: TruncationDirection::Right,
    }))
    .map_err(|e| tok_err(path, e))?;
    t.with_padding(Some(PaddingParams {
        strategy: PaddingStrategy::Fixed(len),
        direction: PaddingDirection::Right,
        pad_to_multiple_of: None,
        pad_id,
        pad_type_id: 0,
        pad_token: pad.to_owned(),
    }));
    Ok(t)
}

/// Encode `texts` with a [`fixed_length`] tokenizer of `len` tokens; `check` sees each row's
/// encoding first.
fn encode_fixed(
    t: &Tokenizer,
    path: &Path,
    texts: &[String],
    len: usize,
    mut check: impl FnMut(usize, &tokenizers::Encoding) -> Result<(), TextError>,
) -> Result<Tokens, TextError> {
    let mut out = Tokens {
        batch: texts.len(),
        len,
        input_ids: Vec::with_capacity(texts.len() * len),
        attention_mask: Vec::with_capacity(texts.len() * len),
        truncated: vec![],
    };
    for (row, text) in texts.iter().enumerate() {
        let enc = t
            .encode(text.as_str(), true)
            .map_err(|e| tok_err(path, e))?;
        if enc.len() != len {
            return Err(tok_err(
                path,
                format!("encoded to {} tokens instead of {len}", enc.len()),
            ));
        }
        check(row, &enc)?;
        if !enc.get_overflowing().is_empty() {
            out.truncated.push(row);
        }
        out.input_ids
            .extend(enc.get_ids().iter().map(|&i| i64::from(i)));
        out.attention_mask
            .extend(enc.get_attention_mask().iter().map(|&m| i64::from(m)));
    }
    Ok(out)
}

fn check_prompts(prompts: &[&str]) -> Result<(), TextError> {
    if prompts.is_empty() || prompts.iter().any(|p| p.trim().is_empty()) {
        return Err(TextError::EmptyPrompt);
    }
    Ok(())
}

/// Where the template's `crop_start` comes from.
#[derive(Debug, Clone, Copy)]
enum CropStart {
    /// Computed as diffusers does when the template carries none.
    FromTemplate,
    Given(usize),
}

/// The Llama-3 side: template, `crop_start`, 256 prompt tokens.
pub struct LlamaPrompts {
    /// Configured for `crop_start + max_sequence_length` tokens.
    tokenizer: Tokenizer,
    path: PathBuf,
    template: String,
    crop_start: usize,
    max_sequence_length: usize,
}

impl LlamaPrompts {
    /// Load the tokenizer folder (`tokenizer.json`, `tokenizer_config.json`) with diffusers'
    /// default template.
    pub fn load(dir: &Path) -> Result<LlamaPrompts, TextError> {
        Self::with_template(dir, PROMPT_TEMPLATE, MAX_SEQUENCE_LENGTH)
    }

    pub fn with_template(
        dir: &Path,
        template: &str,
        max_sequence_length: usize,
    ) -> Result<LlamaPrompts, TextError> {
        Self::with_crop(dir, template, CropStart::FromTemplate, max_sequence_length)
    }

    /// A template whose `crop_start` is given (diffusers' image-to-video template hard-codes
    /// it), not computed.
    pub fn with_crop_start(
        dir: &Path,
        template: &str,
        crop_start: usize,
        max_sequence_length: usize,
    ) -> Result<LlamaPrompts, TextError> {
        Self::with_crop(
            dir,
            template,
            CropStart::Given(crop_start),
            max_sequence_length,
        )
    }

    fn with_crop(
        dir: &Path,
        template: &str,
        crop: CropStart,
        max_sequence_length: usize,
    ) -> Result<LlamaPrompts, TextError> {
        if template.matches("{}").count() != 1 {
            return Err(TextError::Template(template.to_owned()));
        }
        let (tokenizer, pad_id, pad) = load_tokenizer(dir)?;
        let path = dir.join("tokenizer.json");
        let crop_start = match crop {
            CropStart::Given(n) => n,
            CropStart::FromTemplate => {
                let n = tokenizer
                    .encode(template, true)
                    .map_err(|e| tok_err(&path, e))?
                    .len();
                // diffusers: the template's length minus the `{}` placeholder and `<|eot_id|>`.
                n.saturating_sub(2)
            }
        };
        Self::new(
            tokenizer,
            path,
            template,
            crop_start,
            max_sequence_length,
            pad_id,
            &pad,
        )
    }

    /// The id of `token` in the vocabulary.
    pub fn token_id(&self, token: &str) -> Result<i64, TextError> {
        self.tokenizer
            .token_to_id(token)
            .map(i64::from)
            .ok_or_else(|| tok_err(&self.path, format!("no token {token:?} in the vocabulary")))
    }

    fn new(
        tokenizer: Tokenizer,
        path: PathBuf,
        template: &str,
        crop_start: usize,
        max_sequence_length: usize,
        pad_id: u32,
        pad: &str,
    ) -> Result<LlamaPrompts, TextError> {
        let tokenizer = fixed_length(
            &tokenizer,
            &path,
            crop_start + max_sequence_length,
            pad_id,
            pad,
        )?;
        Ok(LlamaPrompts {
            tokenizer,
            path,
            template: template.to_owned(),
            crop_start,
            max_sequence_length,
        })
    }

    /// Leading template positions dropped from embeddings and mask after encoding.
    pub fn crop_start(&self) -> usize {
        self.crop_start
    }

    /// Token count of the text encoder's input: `crop_start + max_sequence_length`.
    pub fn encoder_len(&self) -> usize {
        self.crop_start + self.max_sequence_length
    }

    pub fn max_sequence_length(&self) -> usize {
        self.max_sequence_length
    }

    /// Template-wrapped prompts as `[B, crop_start + max_sequence_length]` ids and mask.
    pub fn encode(&self, prompts: &[&str]) -> Result<Tokens, TextError> {
        check_prompts(prompts)?;
        let texts: Vec<String> = prompts
            .iter()
            .map(|p| self.template.replacen("{}", p, 1))
            .collect();
        // The prompt's bytes in each text; a row none of whose kept tokens (past `crop_start`,
        // not padding) covers them lost the whole prompt to the crop.
        let start = self.template.find("{}").unwrap_or(0);
        encode_fixed(
            &self.tokenizer,
            &self.path,
            &texts,
            self.encoder_len(),
            |row, enc| {
                let end = start + prompts[row].len();
                let kept = enc
                    .get_offsets()
                    .iter()
                    .zip(enc.get_attention_mask())
                    .skip(self.crop_start)
                    .any(|(&(a, b), &m)| m == 1 && a < end && b > start);
                if kept {
                    Ok(())
                } else {
                    Err(TextError::CroppedAway {
                        prompt: prompts[row].to_owned(),
                        path: self.path.clone(),
                        crop_start: self.crop_start,
                    })
                }
            },
        )
    }
}

/// The CLIP side: raw prompts, 77 tokens.
pub struct ClipPrompts {
    /// Configured for 77 tokens.
    tokenizer: Tokenizer,
    path: PathBuf,
}

impl ClipPrompts {
    pub fn load(dir: &Path) -> Result<ClipPrompts, TextError> {
        let (tokenizer, pad_id, pad) = load_tokenizer(dir)?;
        let path = dir.join("tokenizer.json");
        let tokenizer = fixed_length(&tokenizer, &path, CLIP_MAX_LENGTH, pad_id, &pad)?;
        Ok(ClipPrompts { tokenizer, path })
    }

    /// `[B, 77]` ids and mask.
    pub fn encode(&self, prompts: &[&str]) -> Result<Tokens, TextError> {
        check_prompts(prompts)?;
        let texts: Vec<String> = prompts.iter().map(|p| p.to_string()).collect();
        encode_fixed(
            &self.tokenizer,
            &self.path,
            &texts,
            CLIP_MAX_LENGTH,
            |_, _| Ok(()),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use safetensors::SafeTensors;

    fn fixtures() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
    }

    fn golden_i64(name: &str) -> (Vec<usize>, Vec<i64>) {
        let bytes = std::fs::read(fixtures().join("goldens/text_encoders.safetensors")).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let t = st.tensor(name).unwrap();
        let data = t
            .data()
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
            .collect();
        (t.shape().to_vec(), data)
    }

    fn prompts() -> Vec<String> {
        let bytes = std::fs::read(fixtures().join("goldens/text_encoders.safetensors")).unwrap();
        let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
        let meta = meta.metadata().as_ref().unwrap();
        serde_json::from_str(&meta["prompts"]).unwrap()
    }

    #[test]
    fn llama_ids_mask_and_crop_start_match_transformers() {
        let llama = LlamaPrompts::load(&fixtures().join("tiny/tokenizer")).unwrap();
        let (_, crop) = golden_i64("llama.crop_start");
        assert_eq!(llama.crop_start() as i64, crop[0]);
        assert_eq!(llama.crop_start(), 95);
        let p = prompts();
        let refs: Vec<&str> = p.iter().map(String::as_str).collect();
        let t = llama.encode(&refs).unwrap();
        let (shape, ids) = golden_i64("llama.input_ids");
        let (_, mask) = golden_i64("llama.attention_mask");
        assert_eq!([t.batch, t.len], [shape[0], shape[1]]);
        assert_eq!(t.input_ids, ids);
        assert_eq!(t.attention_mask, mask);
        // The long prompt (row 3) is cut to fit; the others are not.
        assert_eq!(t.truncated, vec![3]);
    }

    #[test]
    fn clip_ids_match_transformers() {
        let clip = ClipPrompts::load(&fixtures().join("tiny/tokenizer_2")).unwrap();
        let p = prompts();
        let refs: Vec<&str> = p.iter().map(String::as_str).collect();
        let t = clip.encode(&refs).unwrap();
        let (shape, ids) = golden_i64("clip.input_ids");
        assert_eq!([t.batch, t.len], [shape[0], shape[1]]);
        assert_eq!(t.input_ids, ids);
        assert_eq!(t.truncated, vec![3]);
        // Truncation keeps the end-of-text token last.
        assert_eq!(t.input_ids[4 * 77 - 1], 49407);
    }

    /// A copy of the tiny `tokenizer/` (or `tokenizer_2/`) folder whose `tokenizer.json` stores
    /// the padding and truncation state transformers saves after a pipeline ran: padded and cut
    /// to `len` tokens (Llama: 95 + 256).
    #[test]
    fn a_prompt_cropped_away_is_an_error_naming_it_and_the_tokenizer() {
        let dir = fixtures().join("tiny/tokenizer");
        // A template with more after `{}` than diffusers' `crop_start` rule assumes (one
        // `<|eot_id|>`): the crop starts past the prompt.
        let template = format!("{PROMPT_TEMPLATE}{}", "<|eot_id|>".repeat(20));
        let llama = LlamaPrompts::with_template(&dir, &template, 256).unwrap();
        let e = llama.encode(&["A cat walks."]).unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, TextError::CroppedAway { .. }), "{msg}");
        assert!(
            msg.contains("A cat walks.") && msg.contains("tokenizer/tokenizer.json"),
            "{msg}"
        );
        // The case: a template encoded padded (crop_start 349) crops every prompt
        // token away, in every row that has one.
        let (tokenizer, pad_id, pad) = load_tokenizer(&dir).unwrap();
        let path = dir.join("tokenizer.json");
        let llama =
            LlamaPrompts::new(tokenizer, path, PROMPT_TEMPLATE, 349, 256, pad_id, &pad).unwrap();
        match llama.encode(&["fine", "A dog."]) {
            Err(TextError::CroppedAway { prompt, path, .. }) => {
                assert_eq!(prompt, "fine");
                assert!(path.ends_with("tokenizer/tokenizer.json"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn empty_prompts_and_bad_templates_are_refused() {
        let dir = fixtures().join("tiny/tokenizer");
        let llama = LlamaPrompts::load(&dir).unwrap();
        assert!(matches!(llama.encode(&["  "]), Err(TextError::EmptyPrompt)));
        assert!(matches!(llama.encode(&[]), Err(TextError::EmptyPrompt)));
        assert!(matches!(
            LlamaPrompts::with_template(&dir, "no placeholder", 256),
            Err(TextError::Template(_))
        ));
        match LlamaPrompts::load(Path::new("/nonexistent/tokenizer")) {
            Err(TextError::Tokenizer { path, .. }) => assert!(path.ends_with("tokenizer.json")),
            other => panic!("{:?}", other.err()),
        }
    }
}
