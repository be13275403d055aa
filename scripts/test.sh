#!/usr/bin/env bash
# Run the whole test suite on a fresh machine: fetch the pinned ONNX Runtime library (once),
# install PostgreSQL and Chromium from the distribution's packages if missing (once),
# then build and run every test of the workspace, then the openai-SDK test of `hyvideo serve`
# (tests/openai_sdk/). Extra arguments go to `cargo test` (and skip the SDK test).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
./scripts/setup.sh
# PostgreSQL and Chromium from the distribution's packages (the tests start and stop their own).
./scripts/setup-test-services.sh
cargo test --workspace --locked "$@"
# `hyvideo serve` as the real openai SDK drives it (a small venv: openai and its few deps).
if [ "$#" -eq 0 ]; then
  ./tests/openai_sdk/run.sh
fi
