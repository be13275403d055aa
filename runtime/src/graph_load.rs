//! Loading a component graph on a backend with the attention that backend runs best.
//!
//! Bundles carry attention in the standard `MatMul → Softmax → MatMul` form (portable: TensorRT
//! parses and fuses it). ONNX Runtime's CPU and CUDA providers do not fuse that pattern and
//! would materialise `[B, heads, S, S]` scores, so for them the graph is rewritten while it is
//! loaded (`hyvideo_onnx::fuse`): every mask-free site becomes one
//! `com.microsoft.MultiHeadAttention` (CPU: MLAS flash attention in fp32; CUDA: flash /
//! memory-efficient kernels). The rewritten model goes to ONNX Runtime from memory, its
//! weights still read from the bundle's external data files: nothing is written, and
//! `generate --bundle B --backend cpu` needs no extra step. A graph with no fusable site (or an
//! engine built already fused) loads as it is. Mirrors what ONNX Runtime's transformer
//! optimiser (`onnxruntime.transformers`) does offline, at load time and for our own pattern.

use std::path::Path;

use hyvideo_bundle::AttentionKernel;
use hyvideo_engines::{AttentionPolicy, BackendKind, Engine, EngineError, SessionConfig};
use hyvideo_onnx::fuse::{FuseReport, MhaPrecision, fuse};
use hyvideo_onnx::proto::ModelProto;
use prost::Message;

/// The fused kernel's precision on `backend`, or `None` where the standard form is what runs
/// best (TensorRT fuses it itself) or was asked for.
pub fn fused_precision(backend: BackendKind, policy: AttentionPolicy) -> Option<MhaPrecision> {
    match (policy, backend) {
        (AttentionPolicy::Standard, _) | (_, BackendKind::TensorRt) => None,
        (AttentionPolicy::BackendFused, BackendKind::Cpu) => Some(MhaPrecision::Fp32),
        (AttentionPolicy::BackendFused, BackendKind::Cuda) => Some(MhaPrecision::Fp16OrFp32),
    }
}

/// A loaded graph and the attention it runs.
#[derive(Debug)]
pub struct LoadedGraph {
    pub engine: Engine,
    pub attention: FuseReport,
}

impl LoadedGraph {
    pub fn kernel(&self) -> AttentionKernel {
        self.attention.kernel()
    }
}

/// The graph `model` rewritten for `config`'s backend: the encoded model when anything was
/// fused (`None`: it loads unchanged), and the attention it runs.
pub fn rewrite(
    model: &Path,
    config: &SessionConfig,
) -> Result<(Option<Vec<u8>>, FuseReport), EngineError> {
    let Some(precision) = fused_precision(config.backend.kind(), config.attention) else {
        return Ok((None, FuseReport::default()));
    };
    let load_err = |reason: String| EngineError::ModelLoad {
        model: model.to_path_buf(),
        reason,
    };
    if !model.is_file() {
        return Err(EngineError::ModelMissing(model.to_path_buf()));
    }
    let bytes = std::fs::read(model).map_err(|e| load_err(e.to_string()))?;
    let mut proto =
        ModelProto::decode(bytes.as_slice()).map_err(|e| load_err(format!("not ONNX: {e}")))?;
    let report = fuse(&mut proto, precision).map_err(|e| load_err(e.to_string()))?;
    let bytes = (report.fused > 0).then(|| proto.encode_to_vec());
    Ok((bytes, report))
}

/// Load `model` on `config`'s backend with that backend's attention.
pub fn load(model: &Path, config: &SessionConfig) -> Result<LoadedGraph, EngineError> {
    let (bytes, attention) = rewrite(model, config)?;
    let engine = match bytes {
        None => Engine::load(model, config)?,
        Some(bytes) => Engine::load_from_memory(model, &bytes, config)?,
    };
    Ok(LoadedGraph { engine, attention })
}

/// Load `proto`, an edited copy of the graph file `origin` (whose folder holds its external
/// data), with `config`'s backend's attention; nothing is written to disk.
pub fn load_edited(
    origin: &Path,
    mut proto: ModelProto,
    config: &SessionConfig,
) -> Result<LoadedGraph, EngineError> {
    let attention = match fused_precision(config.backend.kind(), config.attention) {
        Some(precision) => fuse(&mut proto, precision).map_err(|e| EngineError::ModelLoad {
            model: origin.to_path_buf(),
            reason: e.to_string(),
        })?,
        None => FuseReport::default(),
    };
    let engine = Engine::load_from_memory(origin, &proto.encode_to_vec(), config)?;
    Ok(LoadedGraph { engine, attention })
}

/// [`load`], keeping only the engine.
pub fn load_engine(model: &Path, config: &SessionConfig) -> Result<Engine, EngineError> {
    Ok(load(model, config)?.engine)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_backend_gets_its_attention() {
        use AttentionPolicy::*;
        assert_eq!(
            fused_precision(BackendKind::Cpu, BackendFused),
            Some(MhaPrecision::Fp32)
        );
        assert_eq!(
            fused_precision(BackendKind::Cuda, BackendFused),
            Some(MhaPrecision::Fp16OrFp32)
        );
        assert_eq!(fused_precision(BackendKind::TensorRt, BackendFused), None);
        assert_eq!(fused_precision(BackendKind::Cpu, Standard), None);
        assert_eq!(fused_precision(BackendKind::Cuda, Standard), None);
    }
}
