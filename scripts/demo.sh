#!/usr/bin/env bash
# Demo on the bundled tiny model: export its VAE decoder to an ONNX bundle, then decode the
# bundled golden latents (25 frames of 448x512, 3x3 spatial tiles x 2 frame chunks) into an
# MP4 with the tiled decoder, printing the timings. Output in out/.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
./scripts/setup.sh
cargo build --release --locked --bins
mkdir -p out
rm -rf out/demo-bundle
./target/release/hyvideo-export onnx --model tests/fixtures/tiny --out out/demo-bundle --components vae_decoder
./target/release/hyvideo decode --bundle out/demo-bundle \
  --latents tests/fixtures/goldens/vae_decode.safetensors --latents-name tiled_large.latents \
  --save-path out/demo.mp4
echo "demo: wrote out/demo.mp4"
