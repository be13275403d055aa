#!/usr/bin/env bash
# Fetch the pinned ONNX Runtime shared library from PyPI (the `onnxruntime` wheel), check its
# sha256, and extract libonnxruntime.so.* into .ort/lib/ (ignored by git). Idempotent: does
# nothing when the library is already there and intact.
#
# Needs: python3 with pip (to download from PyPI), unzip or python3's zipfile.
set -euo pipefail

ORT_VERSION="1.31.1"
WHEEL="onnxruntime-${ORT_VERSION}-cp311-cp311-manylinux_2_28_x86_64.whl"
WHEEL_SHA256="5752bd508126ae7c49894d3b9d2e83f0c3d487319246d04c444b393308d7ad7f"
LIB="libonnxruntime.so.${ORT_VERSION}"

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="$root/.ort/lib"
stamp="$dest/.wheel-sha256"

# The `onnx` package (its checker) for the graph-validity tests, in a project-local venv.
ONNX_VERSION="1.23.2"
tools="$root/.venv-tools"
if [[ ! -x "$tools/bin/python" ]] || ! "$tools/bin/python" -c "import onnx, sys; sys.exit(onnx.__version__ != '$ONNX_VERSION')" 2>/dev/null; then
  echo "setup: installing onnx==$ONNX_VERSION into $tools (for the ONNX checker in tests)"
  rm -rf "$tools.tmp"
  python3 -m venv "$tools.tmp"
  "$tools.tmp/bin/python" -m pip install --quiet "onnx==$ONNX_VERSION"
  rm -rf "$tools"
  mv "$tools.tmp" "$tools"
fi

if [[ -f "$dest/$LIB" && -f "$stamp" && "$(cat "$stamp")" == "$WHEEL_SHA256" ]]; then
  echo "setup: ONNX Runtime $ORT_VERSION already in $dest"
  exit 0
fi

if [[ "$(uname -m)" != "x86_64" || "$(uname -s)" != "Linux" ]]; then
  echo "setup: this script fetches the Linux x86_64 wheel; on $(uname -sm) pass --ort-lib / ORT_DYLIB_PATH to your own libonnxruntime (>= $ORT_VERSION)" >&2
  exit 1
fi
if ! python3 -m pip --version >/dev/null 2>&1; then
  echo "setup: python3 with pip is needed to download the onnxruntime wheel from PyPI (apt-get install python3-pip)" >&2
  exit 1
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
echo "setup: downloading onnxruntime==$ORT_VERSION from PyPI"
python3 -m pip download --quiet --no-deps --only-binary=:all: \
  --python-version 3.11 --platform manylinux_2_28_x86_64 \
  "onnxruntime==$ORT_VERSION" -d "$tmp"
got="$(sha256sum "$tmp/$WHEEL" | cut -d' ' -f1)"
if [[ "$got" != "$WHEEL_SHA256" ]]; then
  echo "setup: sha256 mismatch for $WHEEL: expected $WHEEL_SHA256, got $got" >&2
  exit 1
fi
python3 - "$tmp/$WHEEL" "$tmp/x" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    for n in z.namelist():
        if n.startswith("onnxruntime/capi/libonnxruntime"):
            z.extract(n, sys.argv[2])
PY
mkdir -p "$dest"
for f in "$tmp"/x/onnxruntime/capi/libonnxruntime*; do
  cp "$f" "$dest/.$(basename "$f").tmp"
  mv "$dest/.$(basename "$f").tmp" "$dest/$(basename "$f")"
done
echo "$WHEEL_SHA256" > "$stamp.tmp" && mv "$stamp.tmp" "$stamp"
echo "setup: ONNX Runtime $ORT_VERSION installed in $dest"
