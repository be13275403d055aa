//! The transformer's stage graphs (`transformer_embed`, `transformer_first_block`,
//! `transformer_rest_blocks`, `transformer_head`), cut from the written single `transformer`
//! graph at its `stage/<name>` boundaries (see `hyvideo_bundle::components::transformer_stages`)
//! with [`hyvideo_onnx::extract`]: the same nodes after the same precision pass, and
//! initializers that point into the single graph's weight file — one copy of the weights on
//! disk, and each stage loads only the tensors it reads.
//!
//! Step caching (TeaCache4HunyuanVideo, diffusers' First-Block Cache) decides between these
//! stages at run time; the cut follows what both need: TeaCache reads the first block's `norm1`
//! output before any block runs and skips every block; First-Block Cache runs the first block
//! and skips the rest.

use hyvideo_bundle::components::transformer_stages::CUT_PREFIX;
use hyvideo_bundle::hash::sha256_hex;
use hyvideo_bundle::spec::{Dim, IoSpec, Presence, Size};
use hyvideo_bundle::{Component, ComponentEntry};
use hyvideo_onnx::extract::{Boundary, BoundaryDim, extract};
use hyvideo_onnx::types::value_types;
use prost::Message;

use crate::bundle_writer::BundleWriter;
use crate::error::{ExportError, Result};
use crate::onnx::proto::{ModelProto, StringStringEntryProto};

/// Cut the stage graphs from the single transformer graph `single` (already in `bundle`'s
/// staging area), check each against its spec and return their manifest entries.
pub fn write_stages(
    bundle: &mut BundleWriter,
    single: &ComponentEntry,
    io_float: hyvideo_bundle::TensorType,
    sizes: &dyn Fn(Size) -> Option<usize>,
) -> Result<Vec<(Component, ComponentEntry)>> {
    let path = bundle.staging_dir().join(&single.file);
    let bytes = std::fs::read(&path).map_err(|e| {
        ExportError::of(
            Component::Transformer,
            format!("{}: reading it back: {e}", path.display()),
        )
    })?;
    let model = ModelProto::decode(bytes.as_slice()).map_err(|e| {
        ExportError::of(
            Component::Transformer,
            format!("{}: decoding it: {e}", path.display()),
        )
    })?;
    let types = value_types(&model);
    let graph = model
        .graph
        .as_ref()
        .ok_or_else(|| ExportError::of(Component::Transformer, "the graph is empty"))?;
    let own = |name: &str| {
        graph.input.iter().any(|v| v.name == name) || graph.output.iter().any(|v| v.name == name)
    };
    let mut out = Vec::with_capacity(Component::TRANSFORMER_STAGES.len());
    for c in Component::TRANSFORMER_STAGES {
        let spec = c.spec();
        let err = |reason: String| ExportError::of(c, reason);
        let boundary = |name: &str, dims: &[Dim]| -> Result<Option<Boundary>> {
            // The single graph's own I/O keeps its name; the rest are `stage/<name>` cuts.
            let tensor = if own(name) {
                name.to_owned()
            } else {
                format!("{CUT_PREFIX}{name}")
            };
            let Some(&elem_type) = types.get(&tensor) else {
                return Ok(None);
            };
            let dims = dims
                .iter()
                .map(|d| match d {
                    Dim::Sym(s) => Ok(BoundaryDim::Sym(s.name().to_owned())),
                    Dim::Size(z) => sizes(*z)
                        .map(|n| BoundaryDim::Fixed(n as i64))
                        .ok_or_else(|| err(format!("no size `{}` for `{name}`", z.name()))),
                })
                .collect::<Result<Vec<_>>>()?;
            Ok(Some(Boundary {
                tensor,
                name: name.to_owned(),
                elem_type,
                dims,
            }))
        };
        let side = |specs: &[IoSpec]| -> Result<Vec<Boundary>> {
            let mut v = Vec::new();
            for s in specs {
                match boundary(s.name, &s.dims)? {
                    Some(b) => v.push(b),
                    None if s.presence == Presence::Optional => {}
                    None => {
                        return Err(err(format!(
                            "the transformer graph has no `{}` to cut at",
                            s.name
                        )));
                    }
                }
            }
            Ok(v)
        };
        let (ins, outs) = (side(&spec.inputs)?, side(&spec.outputs)?);
        let mut stage = extract(&model, &ins, &outs)
            .map_err(|e| err(format!("cutting it from the transformer graph: {e}")))?;
        if let Some(g) = stage.graph.as_mut() {
            g.name = c.name().to_owned();
        }
        for m in stage.metadata_props.iter_mut() {
            if m.key == "hyvideo.component" {
                m.value = c.name().to_owned();
            }
        }
        stage.metadata_props.push(StringStringEntryProto {
            key: "hyvideo.cut_from".into(),
            value: Component::Transformer.name().into(),
        });
        let g = stage
            .graph
            .as_ref()
            .ok_or_else(|| err("empty cut".into()))?;
        let inputs = crate::export::graph_io(&g.input, c)?;
        let outputs = crate::export::graph_io(&g.output, c)?;
        spec.check(&inputs, &outputs, io_float, sizes)?;
        let bytes = stage.encode_to_vec();
        let file = c.graph_file();
        bundle.write_file(&file, &bytes)?;
        out.push((
            c,
            ComponentEntry {
                file,
                data_file: single.data_file.clone(),
                sha256: sha256_hex(&bytes),
                inputs,
                outputs,
                sources: single.sources.clone(),
            },
        ));
    }
    Ok(out)
}
