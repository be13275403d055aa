#!/usr/bin/env bash
# Make the Python environment of the native (PyTorch / diffusers) baselines in benches/native/:
# a project-local venv at <repo>/.venv-bench (ignored by git) with exactly the versions pinned in
# benches/native/requirements.txt. Every bench command then runs as
#
#     ./benches/native/setup.sh
#     .venv-bench/bin/python benches/native/<script>.py ...
#
# Idempotent: when .venv-bench already has every pinned package at its pinned version (and the
# Python it was made with), it prints so and does nothing. Otherwise it builds a new venv under
# .venv-bench.tmp and renames it into place only when the install has succeeded, so an
# interrupted or failed run leaves any previous .venv-bench untouched.
#
# Needs: Python 3.11 with the venv module and network access to PyPI. torch from PyPI is the
# CUDA build (~3 GB with its nvidia-* wheels); the benches run it on CPU.
# Environment: PYTHON (default python3.11, else python3) picks the interpreter;
# HYVIDEO_BENCH_VENV overrides the venv path.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
req="$root/benches/native/requirements.txt"
venv="${HYVIDEO_BENCH_VENV:-$root/.venv-bench}"
tmp="$venv.tmp"
want_python="3.11"

if [[ -n "${PYTHON:-}" ]]; then
  py="$PYTHON"
elif command -v python3.11 >/dev/null 2>&1; then
  py="python3.11"
else
  py="python3"
fi
if ! command -v "$py" >/dev/null 2>&1; then
  echo "setup-bench: no '$py' on PATH; install Python $want_python (with venv and pip) or set PYTHON" >&2
  exit 1
fi
have_python="$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
if [[ "$have_python" != "$want_python" ]]; then
  echo "setup-bench: warning: $py is Python $have_python; requirements.txt was pinned and run with $want_python" >&2
fi

# Every non-comment line must be an exact pin `name==version`.
if grep -vE '^[[:space:]]*(#|$)' "$req" | grep -qvE '^[A-Za-z0-9._-]+==[A-Za-z0-9._+!-]+[[:space:]]*$'; then
  echo "setup-bench: $req has a line that is not 'name==version':" >&2
  grep -vE '^[[:space:]]*(#|$)' "$req" | grep -vE '^[A-Za-z0-9._-]+==[A-Za-z0-9._+!-]+[[:space:]]*$' >&2
  exit 1
fi

# Exit 0 iff the venv at $1 runs Python $have_python and has exactly the pinned versions
# (prints the differences otherwise).
check() {
  [[ -x "$1/bin/python" ]] || return 1
  "$1/bin/python" - "$req" "$have_python" <<'PY'
import re, sys
from importlib import metadata
req, want_py = sys.argv[1], sys.argv[2]
bad = []
if "%d.%d" % sys.version_info[:2] != want_py:
    bad.append("python %d.%d (want %s)" % (sys.version_info[:2] + (want_py,)))
for line in open(req):
    line = line.split("#", 1)[0].strip()
    if not line:
        continue
    name, ver = line.split("==")
    try:
        got = metadata.version(name)
    except metadata.PackageNotFoundError:
        got = None
    if got != ver:
        bad.append("%s %s (want %s)" % (name, got or "missing", ver))
if bad:
    print("setup-bench: " + "; ".join(bad), file=sys.stderr)
    sys.exit(1)
PY
}

if check "$venv" 2>/dev/null; then
  echo "setup-bench: $venv already has the pinned versions of $(basename "$req")"
  exit 0
fi
if [[ -d "$venv" ]]; then
  echo "setup-bench: $venv differs from the pins, rebuilding it:"
  check "$venv" || true
fi

echo "setup-bench: building $tmp from $req with $py (Python $have_python); torch alone is ~3 GB to download"
rm -rf "$tmp"
"$py" -m venv --prompt "$(basename "$venv")" "$tmp"
# --no-compile: the .pyc files are compiled below with the final path in them.
"$tmp/bin/python" -m pip install --quiet --disable-pip-version-check --no-input --no-compile \
  -r "$req"
# Scripts in bin/ (pip, activate, entry points) and pyvenv.cfg name the venv's absolute path:
# point them at the final name before the rename.
{ grep -rlIF "$tmp" "$tmp/bin" "$tmp/pyvenv.cfg" || true; } | while read -r f; do
  sed -i "s#$tmp#$venv#g" "$f"
done
# Byte-code with the final paths (caches only: a file that does not compile is no error).
"$tmp/bin/python" -m compileall -q -f -j 0 -s "$tmp" -p "$venv" "$tmp/lib" >/dev/null 2>&1 || true
if ! check "$tmp"; then
  echo "setup-bench: the new venv does not match $req (see above); left in $tmp" >&2
  exit 1
fi

rm -rf "$venv.old"
if [[ -d "$venv" ]]; then mv "$venv" "$venv.old"; fi
mv "$tmp" "$venv"
rm -rf "$venv.old"
echo "setup-bench: $venv ready ($("$venv/bin/python" -c 'import torch, diffusers; print("torch", torch.__version__, "diffusers", diffusers.__version__)'))"
