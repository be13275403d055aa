//! Safetensors checkpoints.
