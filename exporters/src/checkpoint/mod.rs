//! Checkpoints in: safetensors weights (memory-mapped, sharded or not) and diffusers /
//! transformers `config.json` files.
//!
//! Modelled on candle's loading path: [`Checkpoint`] maps every `.safetensors` file once
//! (like `MmapedSafetensors`), [`Weights`] is a `VarBuilder`-style prefix builder whose
//! `get(name, shape)` checks shapes against the config, and configs are serde structs read
//! straight from `config.json`. Tensors leave as borrowed [`TensorView`]s or owned
//! [`TensorStream`]s that convert dtype in bounded chunks while the ONNX writer pulls them.
//!
//! ```no_run
//! use hyvideo_exporters::checkpoint::{DType, VaeConfig, Weights};
//! # fn main() -> Result<(), hyvideo_exporters::checkpoint::CheckpointError> {
//! let cfg = VaeConfig::load("HunyuanVideo/vae")?; // parsed + validated
//! let vb = Weights::open("HunyuanVideo/vae")?;
//! let co = cfg.block_out_channels[cfg.block_out_channels.len() - 1];
//! let conv_in = vb.pp("decoder").pp("conv_in").pp("conv");
//! let w = conv_in.get("weight", &[co, cfg.latent_channels, 3, 3, 3])?;
//! let stream = w.stream(DType::F16); // Box<dyn onnx::TensorSource>-ready
//! # Ok(()) }
//! ```

mod config;
mod dtype;
mod error;
mod hash;
mod safetensors;
mod store;
mod stream;
mod weights;

pub use config::{
    ClipTextConfig, ClipVisionConfig, LlamaConfig, LlavaConfig, RopeParameters, SchedulerConfig,
    TransformerConfig, VaeConfig,
};
pub use dtype::{
    DType, F8E4M3_TO_F32, TargetDType, bf16_to_f32, bytes_to_f32_vec, decode_to_f32,
    encode_from_f32, f8e4m3_to_f32, f16_to_f32, f32_to_bf16, f32_to_f8e4m3, f32_to_f16,
    round_through,
};
pub use error::{CheckpointError, Result};
pub use hash::{FileIdentity, combine_identities, to_hex};
pub use safetensors::MAX_HEADER_LEN;
pub use store::{Checkpoint, PREFERRED_FILES, TensorInfo, TensorView};
pub use stream::{CHUNK_BYTES, Dequant, TensorStream, write_converted};
pub use weights::Weights;

/// Against the tiny diffusers pipeline and Tencent-layout checkpoints in `tests/fixtures`
/// (made by `tests/fixtures/make_fixtures.py` with diffusers / transformers / torch).
#[cfg(test)]
mod fixture_tests {
    use std::path::PathBuf;

    use super::*;

    fn fixtures() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
    }

    #[test]
    fn tiny_pipeline_configs_and_weights() {
        let tiny = fixtures().join("tiny");
        let vae = VaeConfig::load(tiny.join("vae")).unwrap();
        assert_eq!(vae.block_out_channels, vec![8, 8, 16, 16]);
        assert_eq!(vae.latent_channels, 4);
        let vb = Weights::open(tiny.join("vae")).unwrap();
        let co = *vae.block_out_channels.last().unwrap();
        let conv_in = vb.pp("decoder").pp("conv_in").pp("conv");
        let w = conv_in
            .get("weight", &[co, vae.latent_channels, 3, 3, 3])
            .unwrap();
        assert_eq!(w.dtype, DType::BF16);
        assert!(w.to_f32_vec().iter().any(|&v| v != 0.0));
        assert_eq!(
            vb.pp("decoder").pp("up_blocks").children(),
            vec!["0", "1", "2", "3"]
        );

        let tr = TransformerConfig::load(tiny.join("transformer")).unwrap();
        assert_eq!((tr.inner_dim(), tr.num_layers, tr.patch_size), (32, 2, 2));
        let tb = Weights::open(tiny.join("transformer")).unwrap();
        let proj = tb.pp("x_embedder").pp("proj");
        proj.get(
            "weight",
            &[
                tr.inner_dim(),
                tr.in_channels,
                tr.patch_size_t,
                tr.patch_size,
                tr.patch_size,
            ],
        )
        .unwrap();
        assert_eq!(tb.pp("transformer_blocks").children().len(), tr.num_layers);
        assert_eq!(
            tb.pp("single_transformer_blocks").children().len(),
            tr.num_single_layers
        );

        let llama = LlamaConfig::load(tiny.join("text_encoder")).unwrap();
        assert_eq!(llama.rope_theta(), 500000.0); // nested under rope_parameters
        assert_eq!((llama.num_key_value_heads(), llama.head_dim()), (2, 4));
        let clip = ClipTextConfig::load(tiny.join("text_encoder_2")).unwrap();
        assert_eq!(clip.hidden_size, 16);
        let sched = SchedulerConfig::load(tiny.join("scheduler")).unwrap();
        assert_eq!(sched.shift, 7.0);
    }

    /// Re-quantising the bf16 Tencent checkpoint with the stored scales reproduces the fp8
    /// file byte for byte (torch's `(w / scale).clamp(-448, 448).to(float8_e4m3fn)`), and the
    /// dequantised stream stays within fp8 resolution of the original.
    #[test]
    fn tencent_fp8_checkpoint_round_trips() {
        let dir = fixtures().join("tencent");
        let bf16 = Checkpoint::open(dir.join("transformer.safetensors")).unwrap();
        let fp8 = Checkpoint::open(dir.join("transformer_fp8_e4m3fn.safetensors")).unwrap();
        let map = Checkpoint::open(dir.join("transformer_fp8_e4m3fn_map.safetensors")).unwrap();
        let mut quantised = 0;
        for name in fp8.names() {
            let q = fp8.get(name).unwrap();
            if q.dtype != DType::F8E4M3 {
                continue;
            }
            quantised += 1;
            let module = name.strip_suffix(".weight").unwrap();
            let scale = map.get(module).unwrap().to_scalar_f32().unwrap();
            let orig = bf16.get(name).unwrap().expect_shape(q.shape).unwrap();
            let w = orig.to_f32_vec();
            let requant: Vec<u8> = w
                .iter()
                .map(|&v| f32_to_f8e4m3((v / scale).clamp(-448.0, 448.0)))
                .collect();
            assert_eq!(requant, q.bytes, "{name}");
            let deq = q
                .dequantized_stream(scale, DType::BF16)
                .unwrap()
                .to_f32_vec();
            let amax = w.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            for (a, b) in w.iter().zip(&deq) {
                assert!((a - b).abs() <= amax / 16.0, "{name}: {a} vs {b}");
            }
        }
        assert_eq!(quantised, map.len());
    }
}
