#!/usr/bin/env bash
# Run the whole test suite on a fresh machine: fetch the pinned ONNX Runtime library (once),
# then build and run every test of the workspace. Extra arguments go to `cargo test`.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
./scripts/setup.sh
cargo test --workspace --locked "$@"
