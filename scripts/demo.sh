#!/usr/bin/env bash
# Demo on the bundled tiny model: export its four subnetworks (Llama and CLIP text encoders,
# transformer, VAE decoder) to an ONNX bundle, then generate a video from a prompt and a seed
# (tokenizers, text encoders, seeded noise, 30 denoising steps, tiled VAE decode) into
# out/demo.mp4, printing the per-stage timings. The tiny model has random weights: the video is
# noise-like; the point is the whole path, in parity with diffusers.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
./scripts/setup.sh
cargo build --release --locked --bins
mkdir -p out
rm -rf out/demo-bundle
./target/release/hyvideo-export onnx --model tests/fixtures/tiny --out out/demo-bundle \
  --components text_encoder,text_encoder_2,transformer,vae_decoder
./target/release/hyvideo generate --bundle out/demo-bundle \
  --prompt "A cat walks on the grass, realistic style." \
  --video-size 256 256 --video-length 33 --infer-steps 30 --seed 42 --flow-reverse \
  --save-path out/demo.mp4
echo "demo: wrote out/demo.mp4 (settings and timings in out/demo.json)"
