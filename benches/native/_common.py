"""Shared helpers for the Python benchmarks in benches/native/.

Nothing here talks to the network. Imports of torch/diffusers/onnxruntime are done lazily by the
callers so `export_cost.py` can generate checkpoints without importing onnxruntime.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

# benches/native/_common.py -> repo root is two levels above this directory.
REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_EXPORTER = REPO_ROOT / "target" / "release" / "hyvideo-export"
BENCH_WORK_ROOT = REPO_ROOT / "target" / "bench-work"

MIB = 1024 * 1024
GIB = 1024 * MIB

# The names, in order, of the transformer graph's inputs (docs/architecture.md, "Graph inputs and outputs").
TRANSFORMER_INPUTS = (
    "hidden_states",
    "timestep",
    "encoder_hidden_states",
    "encoder_attention_mask",
    "pooled_projections",
    "guidance",
)


# --------------------------------------------------------------------------------------------
# Work directories, the exporter binary
# --------------------------------------------------------------------------------------------


def make_work_dir(work: str | None, prefix: str) -> tuple[Path, bool]:
    """Return (dir, is_temporary). A temporary dir lives under target/bench-work/."""
    if work:
        p = Path(work).resolve()
        p.mkdir(parents=True, exist_ok=True)
        return p, False
    BENCH_WORK_ROOT.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=prefix, dir=BENCH_WORK_ROOT)), True


def resolve_exporter(path: str | None) -> Path:
    p = Path(path) if path else DEFAULT_EXPORTER
    if not p.is_absolute():
        p = REPO_ROOT / p
    return p


def write_model_index(model_dir: Path) -> None:
    """A minimal diffusers model_index.json naming only the transformer (the exporter reads
    `<model>/transformer/`; this keeps the folder a well-formed diffusers layout)."""
    import diffusers

    index = {
        "_class_name": "HunyuanVideoPipeline",
        "_diffusers_version": diffusers.__version__,
        "transformer": ["diffusers", "HunyuanVideoTransformer3DModel"],
    }
    (model_dir / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")


def run_exporter(exporter: Path, model_dir: Path, out_dir: Path, components: str = "transformer",
                 extra: Iterable[str] = ()) -> list[str]:
    return [str(exporter), "onnx", "--model", str(model_dir), "--out", str(out_dir),
            "--components", components, *extra]


# --------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------


def time_fn(fn: Callable[[], object], warmup: int, runs: int) -> list[float]:
    """Call fn `warmup` times untimed, then `runs` times; return the timed durations in ms."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def summarize_ms(samples: list[float]) -> dict:
    return {
        "median_ms": statistics.median(samples),
        "min_ms": min(samples),
        "max_ms": max(samples),
        "runs_ms": samples,
    }


# --------------------------------------------------------------------------------------------
# Machine description for the JSON reports
# --------------------------------------------------------------------------------------------


def machine_info() -> dict:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "logical_cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
    }
    try:
        import psutil

        info["ram_bytes"] = psutil.virtual_memory().total
    except ImportError:
        pass
    return info


def git_head() -> str | None:
    try:
        r = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"],
                           capture_output=True, text=True, timeout=10)
        return r.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


# --------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------


def print_table(headers: list[str], rows: list[list[str]], right: set[int] | None = None) -> None:
    """Print a GitHub-markdown table (readable in a terminal and pasteable into notes)."""
    right = right if right is not None else set(range(1, len(headers)))
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(headers)]

    def fmt(cells):
        return "| " + " | ".join(
            c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))
        ) + " |"

    print(fmt(headers))
    print("|" + "|".join(("-" * (w + 1) + ":") if i in right else ("-" * (w + 2))
                         for i, w in enumerate(widths)) + "|")
    for r in rows:
        print(fmt(r))


# --------------------------------------------------------------------------------------------
# bf16 helpers and a streaming safetensors writer
# --------------------------------------------------------------------------------------------


def f32_to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """bf16 bit patterns (uint16) of f32 values, round-to-nearest-even (as torch's .to(bfloat16)).
    Inputs are finite; NaN handling is not needed for N(0, σ) data."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounding = np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))
    return ((u + rounding) >> np.uint32(16)).astype(np.uint16)


def safetensors_header(entries: list[tuple[str, list[int]]], dtype: str = "BF16",
                       itemsize: int = 2, metadata: dict | None = None) -> tuple[bytes, int]:
    """The 8-byte length prefix + JSON header for tensors laid out back to back in `entries`
    order. Returns (prefix+header bytes, total data bytes)."""
    header: dict = {"__metadata__": metadata or {"format": "pt"}}
    off = 0
    for name, shape in entries:
        n = itemsize
        for d in shape:
            n *= d
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [off, off + n]}
        off += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * ((8 - len(raw) % 8) % 8)  # safetensors pads the header to 8 bytes with spaces
    return struct.pack("<Q", len(raw)) + raw, off


def write_random_bf16_safetensors(path: Path, entries: list[tuple[str, list[int]]], seed: int,
                                  std: float = 0.02, chunk_elems: int = 1 << 22,
                                  progress: Callable[[int, int], None] | None = None,
                                  indices: list[int] | None = None) -> int:
    """Write a safetensors file of bf16 tensors drawn from N(0, std) without ever holding more
    than `chunk_elems` values in memory. Tensor i gets its own generator seeded from
    (seed, indices[i]) (default: its position), so the content depends neither on the chunk size
    nor, when `indices` are global positions, on how tensors are split into shards. The file is
    written as `<path>.partial` and renamed at the end. Returns the file size."""
    head, total = safetensors_header(entries)
    done = 0
    tmp = path.with_name(path.name + ".partial")
    with open(tmp, "wb") as f:
        f.write(head)
        for pos, (_, shape) in enumerate(entries):
            n = int(np.prod(shape, dtype=np.int64)) if shape else 1
            rng = np.random.default_rng([seed, indices[pos] if indices is not None else pos])
            left = n
            while left:
                k = min(left, chunk_elems)
                vals = rng.standard_normal(k, dtype=np.float32)
                vals *= np.float32(std)
                f.write(f32_to_bf16_bits(vals).tobytes())
                left -= k
                done += 2 * k
                if progress:
                    progress(done, total)
    os.replace(tmp, path)
    return path.stat().st_size


def free_disk_bytes(path: Path) -> int:
    p = path
    while not p.exists():
        p = p.parent
    return shutil.disk_usage(p).free


def fmt_bytes(n: float) -> str:
    if n >= GIB:
        return f"{n / GIB:.2f} GiB"
    return f"{n / MIB:.1f} MiB"


# The small DiT of transformer_forward.py (hidden 384 = 6 heads x 64, 4 dual + 8 single + 2
# refiner blocks, the real model's text widths); denoise_scaling.py derives its shallower one.
SMALL_DIT = dict(
    in_channels=16,
    out_channels=16,
    num_attention_heads=6,
    attention_head_dim=64,
    num_layers=4,
    num_single_layers=8,
    num_refiner_layers=2,
    mlp_ratio=4.0,
    patch_size=2,
    patch_size_t=1,
    qk_norm="rms_norm",
    guidance_embeds=True,
    text_embed_dim=4096,
    pooled_projection_dim=768,
    rope_theta=256.0,
    rope_axes_dim=(16, 24, 24),
    image_condition_type=None,
)

# Started as `python -S -I -c LAUNCHER limit_bytes stdout stderr argv...`: applies RLIMIT_AS
# (0 = none) to itself and so to its child, spawns the child with stdout/stderr to files, prints
# the child's pid, then one JSON line with its wait status and rusage (os.wait4: that child
# only).
LAUNCHER = r"""
import json, os, resource, sys, time
limit, out, err, argv = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4:]
if limit > 0:
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
fa = [(os.POSIX_SPAWN_OPEN, 1, out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644),
      (os.POSIX_SPAWN_OPEN, 2, err, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)]
t0 = time.perf_counter()
pid = os.posix_spawn(argv[0], argv, os.environ, file_actions=fa)
print(pid, flush=True)
_, status, ru = os.wait4(pid, 0)
wall = time.perf_counter() - t0
sig = -os.waitstatus_to_exitcode(status) if os.WIFSIGNALED(status) else None
print(json.dumps({"exit": os.waitstatus_to_exitcode(status), "signal": sig, "wall_s": wall,
                  "maxrss_kib": ru.ru_maxrss, "user_s": ru.ru_utime, "sys_s": ru.ru_stime,
                  "majflt": ru.ru_majflt,
                  "launcher_hwm_kib": int(open("/proc/self/status").read().split("VmHWM:")[1].split()[0])}),
      flush=True)
"""


def launcher_argv(as_limit: int, out_f, err_f, exe: str, args) -> list[str]:
    """argv that runs `exe args` under LAUNCHER (RLIMIT_AS `as_limit` bytes, 0 = none)."""
    return [sys.executable, "-S", "-I", "-c", LAUNCHER, str(as_limit), str(out_f), str(err_f),
            exe, *args]
