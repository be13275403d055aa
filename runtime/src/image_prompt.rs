//! The image-to-video prompt: HunyuanVideo-I2V's template with its `<image>` token, the token
//! expansion that makes room for the image embeddings, and the crops of the LLaVA hidden states
//! into the transformer's text conditioning.
//!
//! Mirrors diffusers `pipelines/hunyuan_video/pipeline_hunyuan_video_image2video.py`:
//! `DEFAULT_PROMPT_TEMPLATE` (`crop_start` 103, `image_emb_start` 5, `image_emb_end` 581,
//! `image_emb_len` 576), `_expand_input_ids_with_image_tokens` (each `<image>` becomes 576
//! positions; the mask is recomputed as `input_ids != pad_token_id`) and the crop of
//! `_get_llama_prompt_embeds`: the text rows `[crop_start − 1 + 576, assistant − 1 + 572)` and
//! `[assistant − 1 + 576, ..)` (the four `<|eot_id|><|start_header_id|>assistant<|end_header_id|>`
//! positions before the assistant's `\n\n` dropped), after the image rows `[5, 581)` taken every
//! `interleave`-th (when 0 < interleave < 6). With the default 256 prompt tokens the result has
//! 252 text rows and 576 / interleave image rows.

use hyvideo_bundle::ImageCondition;

use crate::text::{TextError, Tokens};

/// diffusers' I2V `DEFAULT_PROMPT_TEMPLATE["template"]`.
pub const I2V_PROMPT_TEMPLATE: &str = "<|start_header_id|>system<|end_header_id|>\n\n<image>\nDescribe the video by detailing the following aspects according to the reference image: \
1. The main content and theme of the video.\
2. The color, shape, size, texture, quantity, text, and spatial relationships of the objects.\
3. Actions, events, behaviors temporal relationships, physical movement changes of the objects.\
4. background environment, light, style and atmosphere.\
5. camera angles, movements, and transitions used in the video:<|eot_id|>\n\n\
<|start_header_id|>user<|end_header_id|>\n\n{}<|eot_id|>\
<|start_header_id|>assistant<|end_header_id|>\n\n";

/// The template's `crop_start` (hard-coded in diffusers' template: the tokens before the user
/// text, checked against the fixture tokenizer).
pub const I2V_CROP_START: usize = 103;
/// Where the image embeddings sit after the expansion, and how many there are.
pub const IMAGE_EMB_START: usize = 5;
pub const IMAGE_EMB_LEN: usize = 576;

/// The token ids the expansion and the crop use: `<image>` and the pad id of the text
/// encoder's config, the tokenizer's `<|end_header_id|>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageTokenIds {
    pub image: i64,
    pub pad: i64,
    pub end_header: i64,
}

/// Which image rows the conditioning keeps: every `n`-th (diffusers' `image_embed_interleave`;
/// values outside 1..=5 keep all).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageEmbedInterleave(pub usize);

impl ImageEmbedInterleave {
    /// diffusers' default for a transformer taking images as `kind`: 4 for token_replace, 2
    /// for latent_concat (the negative prompt always uses 2), 1 otherwise.
    pub fn default_for(kind: ImageCondition) -> Self {
        match kind {
            ImageCondition::TokenReplace => ImageEmbedInterleave(4),
            ImageCondition::LatentConcat => ImageEmbedInterleave(2),
            ImageCondition::None => ImageEmbedInterleave(1),
        }
    }

    /// The negative prompt's (diffusers calls `encode_prompt` for it without an interleave).
    pub const NEGATIVE: ImageEmbedInterleave = ImageEmbedInterleave(2);

    /// The step the image rows are taken with.
    fn step(self) -> usize {
        if (1..6).contains(&self.0) { self.0 } else { 1 }
    }
}

/// The text encoder's input length for `tokenized` prompt tokens: the `<image>` token becomes
/// [`IMAGE_EMB_LEN`] positions.
pub fn expanded_len(tokenized: usize) -> usize {
    tokenized + IMAGE_EMB_LEN - 1
}

/// The most rows an image-to-video prompt gives the transformer with `interleave`: the image
/// rows and the prompt's tokens less the 4 dropped assistant-header positions.
pub fn max_rows(interleave: ImageEmbedInterleave, max_sequence_length: usize) -> usize {
    IMAGE_EMB_LEN.div_ceil(interleave.step()) + max_sequence_length.saturating_sub(4)
}

/// `_expand_input_ids_with_image_tokens`: each row's `<image>` token becomes
/// [`IMAGE_EMB_LEN`] positions (the expanded length is the tokenized length plus 575 per
/// `<image>` of the row with the most), then pads; the mask is `ids != pad`.
pub fn expand(t: &Tokens, ids: ImageTokenIds) -> Result<Tokens, TextError> {
    let rows: Vec<&[i64]> = t.input_ids.chunks(t.len.max(1)).collect();
    let images: Vec<usize> = rows
        .iter()
        .map(|r| r.iter().filter(|&&i| i == ids.image).count())
        .collect();
    if let Some(row) = images.iter().position(|&n| n != 1) {
        return Err(TextError::ImageToken {
            row,
            found: images[row],
        });
    }
    let len = expanded_len(t.len);
    let mut out = Tokens {
        batch: t.batch,
        len,
        input_ids: Vec::with_capacity(t.batch * len),
        attention_mask: Vec::with_capacity(t.batch * len),
        truncated: t.truncated.clone(),
    };
    for row in rows {
        // diffusers also writes `<image>` over [image_emb_start, image_emb_end): where the
        // template puts it (checked: its position is IMAGE_EMB_START).
        if row.iter().position(|&i| i == ids.image) != Some(IMAGE_EMB_START) {
            return Err(TextError::ImageTokenPosition {
                expected: IMAGE_EMB_START,
            });
        }
        let start = out.input_ids.len();
        for &id in row {
            let n = if id == ids.image { IMAGE_EMB_LEN } else { 1 };
            out.input_ids.extend(std::iter::repeat_n(id, n));
        }
        out.input_ids.resize(start + len, ids.pad);
    }
    out.attention_mask = out
        .input_ids
        .iter()
        .map(|&id| i64::from(id != ids.pad))
        .collect();
    Ok(out)
}

/// The transformer's text conditioning of one encoded batch: per row the image rows (every
/// `interleave`-th of the hidden states at the image positions, mask 1) then the text rows
/// (`_get_llama_prompt_embeds`' crop).
/// `hidden` is the LLaVA language model's `[B, expanded.len, D]` output; `original` the
/// tokenized (unexpanded) prompts.
pub fn crop(
    hidden: &[f32],
    d: usize,
    original: &Tokens,
    expanded_len: usize,
    ids: ImageTokenIds,
    interleave: ImageEmbedInterleave,
) -> Result<PromptRows, TextError> {
    let step = interleave.step();
    let text_crop_start = I2V_CROP_START - 1 + IMAGE_EMB_LEN;
    let mut embeds = Vec::new();
    let mut mask = Vec::new();
    let mut rows_per = None;
    for row in 0..original.batch {
        let ids_row = &original.input_ids[row * original.len..(row + 1) * original.len];
        let mask_row = &original.attention_mask[row * original.len..(row + 1) * original.len];
        // The assistant part starts after the last `<|end_header_id|>`; a prompt cut before it
        // (two found) ends at the last position, as diffusers' fallback.
        let headers: Vec<usize> = ids_row
            .iter()
            .enumerate()
            .filter(|(_, id)| **id == ids.end_header)
            .map(|(i, _)| i)
            .collect();
        let assistant = match headers.len() {
            3 => headers[2] + 1,
            2 => original.len,
            n => return Err(TextError::EndHeaders { row, found: n }),
        };
        if assistant < I2V_CROP_START + 4 {
            return Err(TextError::EndHeaders {
                row,
                found: headers.len(),
            });
        }
        let h = |i: usize| &hidden[(row * expanded_len + i) * d..(row * expanded_len + i + 1) * d];
        let before = row_count(embeds.len(), d);
        // Image rows.
        for i in (IMAGE_EMB_START..IMAGE_EMB_START + IMAGE_EMB_LEN).step_by(step) {
            embeds.extend_from_slice(h(i));
            mask.push(1);
        }
        // Text rows.
        let a_start = assistant - 1 + IMAGE_EMB_LEN - 4;
        let a_end = assistant - 1 + IMAGE_EMB_LEN;
        for i in (text_crop_start..a_start).chain(a_end..expanded_len) {
            embeds.extend_from_slice(h(i));
        }
        mask.extend_from_slice(&mask_row[I2V_CROP_START..assistant - 4]);
        mask.extend_from_slice(&mask_row[assistant..]);
        let rows = row_count(embeds.len(), d) - before;
        if mask.len() != (row + 1) * rows || rows_per.is_some_and(|r| r != rows) {
            return Err(TextError::EndHeaders {
                row,
                found: headers.len(),
            });
        }
        rows_per = Some(rows);
    }
    let rows = rows_per.unwrap_or(0);
    Ok(PromptRows {
        shape: [original.batch, rows, d],
        embeds,
        mask,
    })
}

/// The transformer's text rows of an image-to-video prompt: `[B, rows, D]` and the mask.
#[derive(Debug, Clone, PartialEq)]
pub struct PromptRows {
    pub shape: [usize; 3],
    pub embeds: Vec<f32>,
    pub mask: Vec<i64>,
}

fn row_count(values: usize, d: usize) -> usize {
    values / d.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const IDS: ImageTokenIds = ImageTokenIds {
        image: 9,
        pad: 0,
        end_header: 7,
    };

    fn tokens(rows: &[Vec<i64>]) -> Tokens {
        let len = rows[0].len();
        Tokens {
            batch: rows.len(),
            len,
            input_ids: rows.concat(),
            attention_mask: rows
                .iter()
                .flat_map(|r| r.iter().map(|&i| i64::from(i != 0)))
                .collect(),
            truncated: vec![],
        }
    }

    #[test]
    fn expansion_makes_room_for_the_image_and_recomputes_the_mask() {
        let row = vec![1, 2, 3, 4, 5, 9, 6, 0, 0];
        let e = expand(&tokens(&[row]), IDS).unwrap();
        assert_eq!(e.len, 9 + 575);
        assert_eq!(&e.input_ids[..5], &[1, 2, 3, 4, 5]);
        assert!(e.input_ids[5..581].iter().all(|&i| i == 9));
        assert_eq!(e.input_ids[581], 6);
        assert!(e.input_ids[582..].iter().all(|&i| i == 0));
        assert_eq!(e.attention_mask.iter().sum::<i64>(), 5 + 576 + 1);
        // No `<image>`, two, or one in the wrong place: refused.
        assert!(matches!(
            expand(&tokens(&[vec![1, 2, 3]]), IDS),
            Err(TextError::ImageToken { found: 0, .. })
        ));
        assert!(matches!(
            expand(&tokens(&[vec![1, 9, 9, 2, 3, 4]]), IDS),
            Err(TextError::ImageToken { found: 2, .. })
        ));
        assert!(matches!(
            expand(&tokens(&[vec![1, 9, 2, 3, 4, 5]]), IDS),
            Err(TextError::ImageTokenPosition { .. })
        ));
    }

    #[test]
    fn row_counts_follow_the_interleave() {
        // diffusers' 256 prompt tokens: 252 text rows after 144 (every 4th) or 288 image rows.
        assert_eq!(max_rows(ImageEmbedInterleave(4), 256), 396);
        assert_eq!(max_rows(ImageEmbedInterleave::NEGATIVE, 256), 540);
        assert_eq!(expanded_len(359), 934);
        assert_eq!(
            ImageEmbedInterleave::default_for(ImageCondition::LatentConcat),
            ImageEmbedInterleave(2)
        );
    }

    #[test]
    fn interleave_outside_one_to_five_keeps_every_image_row() {
        assert_eq!(ImageEmbedInterleave(4).step(), 4);
        assert_eq!(ImageEmbedInterleave(0).step(), 1);
        assert_eq!(ImageEmbedInterleave(6).step(), 1);
    }
}
