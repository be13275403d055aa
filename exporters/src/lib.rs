//! hyvideo-exporters: HunyuanVideo checkpoints in, ONNX graphs out.
pub mod checkpoint;
pub mod onnx;
