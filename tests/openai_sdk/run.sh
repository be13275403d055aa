#!/usr/bin/env bash
# The openai-SDK test of `hyvideo serve`: a venv (.venv-sdk/) with requirements.txt, then
# test_videos.py on the debug binaries and the tiny fixture models (text-to-video and
# image-to-video). Run by scripts/test.sh after
# the Rust tests (which build the binaries).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
venv=.venv-sdk
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import openai' 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r tests/openai_sdk/requirements.txt
fi
cargo build --locked --bins --quiet
"$venv/bin/python" tests/openai_sdk/test_videos.py --bin-dir target/debug --model tests/fixtures/tiny \
  --i2v-model tests/fixtures/tiny_i2v --image tests/fixtures/goldens/i2v_images/resized.png
