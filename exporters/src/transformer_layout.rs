//! Transformer checkpoint key layouts: diffusers' names and Tencent's original single-file names.
//!
//! The graph asks for every tensor by its diffusers name; for a Tencent checkpoint
//! ([`tencent_parts`]) the name maps to rows of an original tensor. This is the inverse of
//! diffusers' `scripts/convert_hunyuan_video_to_diffusers.py`: fused `img_attn_qkv` /
//! `txt_attn_qkv` / `self_attn_qkv` split in thirds, single blocks' `linear1` split into
//! q | k | v | mlp, and `final_layer.adaLN_modulation.1` stored as [shift; scale] where diffusers'
//! `norm_out.linear` is [scale; shift]. Unlike that script, hidden and MLP sizes come from the
//! config, so it also works on small checkpoints.

use std::ops::Range;

use crate::checkpoint::Checkpoint;
use crate::error::{ExportError, Result};

/// Key prefixes under which Tencent-layout weights are found (bare, DeepSpeed's `module.`,
/// ComfyUI's `model.diffusion_model.`).
pub const TENCENT_PREFIXES: [&str; 3] = ["", "module.", "model.diffusion_model."];

/// Which naming a transformer checkpoint uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyLayout {
    /// diffusers `HunyuanVideoTransformer3DModel` names (`x_embedder.proj.weight`, ...).
    Diffusers,
    /// Tencent's original names (`img_in.proj.weight`, ...) under `prefix`.
    Tencent { prefix: String },
}

impl KeyLayout {
    /// Recognise the layout from a marker tensor; anything else is an error listing some of the
    /// checkpoint's keys.
    pub fn detect(ckpt: &Checkpoint) -> Result<KeyLayout> {
        if ckpt.contains("x_embedder.proj.weight") {
            return Ok(KeyLayout::Diffusers);
        }
        for prefix in TENCENT_PREFIXES {
            if ckpt.contains(&format!("{prefix}img_in.proj.weight")) {
                return Ok(KeyLayout::Tencent {
                    prefix: prefix.to_owned(),
                });
            }
        }
        let mut sample: Vec<&str> = ckpt.names().take(5).collect();
        sample.sort_unstable();
        Err(ExportError::Model {
            component: "transformer",
            reason: format!(
                "{} is neither a diffusers-layout (`x_embedder.proj.weight`) nor a Tencent-layout \
                 (`img_in.proj.weight`) HunyuanVideo transformer checkpoint; first keys: {}",
                ckpt.path().display(),
                if sample.is_empty() {
                    "(none)".to_owned()
                } else {
                    sample.join(", ")
                }
            ),
        })
    }
}

/// Which rows (first-axis entries) of a Tencent tensor a diffusers tensor is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rows {
    /// The whole tensor.
    All,
    /// `rows` of a tensor whose first axis has `of` entries.
    Slice { rows: Range<usize>, of: usize },
}

/// One piece of a diffusers tensor in a Tencent checkpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Part {
    pub name: String,
    pub rows: Rows,
}

/// Where the diffusers tensor `name` lives in a Tencent checkpoint (several parts are stacked
/// along the first axis), for hidden size `d` and single-block MLP width `mlp`. `None` for
/// names with no Tencent counterpart.
pub fn tencent_parts(name: &str, d: usize, mlp: usize) -> Option<Vec<Part>> {
    let (module, suffix) = name.rsplit_once('.')?;
    let same = |m: String| {
        Some(vec![Part {
            name: format!("{m}.{suffix}"),
            rows: Rows::All,
        }])
    };
    let slice = |m: String, rows: Range<usize>, of: usize| Part {
        name: format!("{m}.{suffix}"),
        rows: Rows::Slice { rows, of },
    };
    let third = |m: String, k: usize| Some(vec![slice(m, k * d..(k + 1) * d, 3 * d)]);
    let fixed = [
        ("x_embedder.proj", "img_in.proj"),
        (
            "time_text_embed.timestep_embedder.linear_1",
            "time_in.mlp.0",
        ),
        (
            "time_text_embed.timestep_embedder.linear_2",
            "time_in.mlp.2",
        ),
        (
            "time_text_embed.guidance_embedder.linear_1",
            "guidance_in.mlp.0",
        ),
        (
            "time_text_embed.guidance_embedder.linear_2",
            "guidance_in.mlp.2",
        ),
        (
            "time_text_embed.text_embedder.linear_1",
            "vector_in.in_layer",
        ),
        (
            "time_text_embed.text_embedder.linear_2",
            "vector_in.out_layer",
        ),
        ("context_embedder.proj_in", "txt_in.input_embedder"),
        (
            "context_embedder.time_text_embed.timestep_embedder.linear_1",
            "txt_in.t_embedder.mlp.0",
        ),
        (
            "context_embedder.time_text_embed.timestep_embedder.linear_2",
            "txt_in.t_embedder.mlp.2",
        ),
        (
            "context_embedder.time_text_embed.text_embedder.linear_1",
            "txt_in.c_embedder.linear_1",
        ),
        (
            "context_embedder.time_text_embed.text_embedder.linear_2",
            "txt_in.c_embedder.linear_2",
        ),
        ("proj_out", "final_layer.linear"),
    ];
    if let Some((_, t)) = fixed.iter().find(|(m, _)| *m == module) {
        return same((*t).to_owned());
    }
    if module == "norm_out.linear" {
        let m = "final_layer.adaLN_modulation.1";
        return Some(vec![
            slice(m.to_owned(), d..2 * d, 2 * d),
            slice(m.to_owned(), 0..d, 2 * d),
        ]);
    }
    let block = |prefix: &str| -> Option<(usize, &str)> {
        let rest = module.strip_prefix(prefix)?;
        let (i, rest) = rest.split_once('.')?;
        Some((i.parse().ok()?, rest))
    };
    if let Some((i, rest)) = block("context_embedder.token_refiner.refiner_blocks.") {
        let t = format!("txt_in.individual_token_refiner.blocks.{i}");
        return match rest {
            "attn.to_q" => third(format!("{t}.self_attn_qkv"), 0),
            "attn.to_k" => third(format!("{t}.self_attn_qkv"), 1),
            "attn.to_v" => third(format!("{t}.self_attn_qkv"), 2),
            "attn.to_out.0" => same(format!("{t}.self_attn_proj")),
            "norm1" | "norm2" => same(format!("{t}.{rest}")),
            "ff.net.0.proj" => same(format!("{t}.mlp.fc1")),
            "ff.net.2" => same(format!("{t}.mlp.fc2")),
            "norm_out.linear" => same(format!("{t}.adaLN_modulation.1")),
            _ => None,
        };
    }
    if let Some((i, rest)) = block("transformer_blocks.") {
        let t = format!("double_blocks.{i}");
        return match rest {
            "norm1.linear" => same(format!("{t}.img_mod.linear")),
            "attn.to_q" => third(format!("{t}.img_attn_qkv"), 0),
            "attn.to_k" => third(format!("{t}.img_attn_qkv"), 1),
            "attn.to_v" => third(format!("{t}.img_attn_qkv"), 2),
            "attn.norm_q" => same(format!("{t}.img_attn_q_norm")),
            "attn.norm_k" => same(format!("{t}.img_attn_k_norm")),
            "attn.to_out.0" => same(format!("{t}.img_attn_proj")),
            "ff.net.0.proj" => same(format!("{t}.img_mlp.fc1")),
            "ff.net.2" => same(format!("{t}.img_mlp.fc2")),
            "norm1_context.linear" => same(format!("{t}.txt_mod.linear")),
            "attn.add_q_proj" => third(format!("{t}.txt_attn_qkv"), 0),
            "attn.add_k_proj" => third(format!("{t}.txt_attn_qkv"), 1),
            "attn.add_v_proj" => third(format!("{t}.txt_attn_qkv"), 2),
            "attn.norm_added_q" => same(format!("{t}.txt_attn_q_norm")),
            "attn.norm_added_k" => same(format!("{t}.txt_attn_k_norm")),
            "attn.to_add_out" => same(format!("{t}.txt_attn_proj")),
            "ff_context.net.0.proj" => same(format!("{t}.txt_mlp.fc1")),
            "ff_context.net.2" => same(format!("{t}.txt_mlp.fc2")),
            _ => None,
        };
    }
    if let Some((i, rest)) = block("single_transformer_blocks.") {
        let t = format!("single_blocks.{i}");
        let linear1 = |k: Range<usize>| Some(vec![slice(format!("{t}.linear1"), k, 3 * d + mlp)]);
        return match rest {
            "attn.to_q" => linear1(0..d),
            "attn.to_k" => linear1(d..2 * d),
            "attn.to_v" => linear1(2 * d..3 * d),
            "proj_mlp" => linear1(3 * d..3 * d + mlp),
            "proj_out" => same(format!("{t}.linear2")),
            "attn.norm_q" => same(format!("{t}.q_norm")),
            "attn.norm_k" => same(format!("{t}.k_norm")),
            "norm.linear" => same(format!("{t}.modulation.linear")),
            _ => None,
        };
    }
    None
}

/// The fp8 scale-map key of a Tencent weight: its `nn.Linear` module name (Tencent's
/// `fp8_map[name]` in `hyvideo/modules/fp8_optimization.py`).
pub fn fp8_module_name(tencent_name: &str) -> &str {
    tencent_name.strip_suffix(".weight").unwrap_or(tencent_name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(name: &str) -> Part {
        let mut p = tencent_parts(name, 32, 128).unwrap();
        assert_eq!(p.len(), 1, "{name}");
        p.remove(0)
    }

    #[test]
    fn fused_projections_map_to_row_ranges() {
        let q = one("transformer_blocks.3.attn.to_q.weight");
        assert_eq!(q.name, "double_blocks.3.img_attn_qkv.weight");
        let rows = |rows: Range<usize>, of: usize| Rows::Slice { rows, of };
        assert_eq!(q.rows, rows(0..32, 96));
        let v = one("transformer_blocks.3.attn.add_v_proj.bias");
        assert_eq!(v.name, "double_blocks.3.txt_attn_qkv.bias");
        assert_eq!(v.rows, rows(64..96, 96));
        let mlp = one("single_transformer_blocks.10.proj_mlp.weight");
        assert_eq!(mlp.name, "single_blocks.10.linear1.weight");
        assert_eq!(mlp.rows, rows(96..224, 224));
        let k = one("context_embedder.token_refiner.refiner_blocks.1.attn.to_k.weight");
        assert_eq!(
            k.name,
            "txt_in.individual_token_refiner.blocks.1.self_attn_qkv.weight"
        );
        assert_eq!(k.rows, rows(32..64, 96));
    }

    #[test]
    fn final_modulation_halves_swap() {
        let p = tencent_parts("norm_out.linear.weight", 32, 128).unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].name, "final_layer.adaLN_modulation.1.weight");
        let rows = |rows: Range<usize>| Rows::Slice { rows, of: 64 };
        assert_eq!(
            (p[0].rows.clone(), p[1].rows.clone()),
            (rows(32..64), rows(0..32))
        );
    }

    #[test]
    fn renamed_tensors_and_unknown_names() {
        assert_eq!(
            one("single_transformer_blocks.0.attn.norm_k.weight").name,
            "single_blocks.0.k_norm.weight"
        );
        assert_eq!(one("proj_out.bias").name, "final_layer.linear.bias");
        assert_eq!(one("proj_out.bias").rows, Rows::All);
        assert_eq!(
            one("time_text_embed.guidance_embedder.linear_2.weight").name,
            "guidance_in.mlp.2.weight"
        );
        assert!(tencent_parts("transformer_blocks.0.attn.to_zz.weight", 32, 128).is_none());
        assert!(tencent_parts("nonsense", 32, 128).is_none());
        assert_eq!(
            fp8_module_name("double_blocks.0.img_mlp.fc1.weight"),
            "double_blocks.0.img_mlp.fc1"
        );
    }
}
