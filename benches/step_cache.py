#!/usr/bin/env python3
"""Step caching on the bench model: loop time, transformer block calls and final-frame PSNR of
TeaCache and First-Block Cache against the uncached loop, all in one run.

Every configuration is one `hyvideo generate` of the bench model (benches/native/
make_bench_model.py: 4 dual + 8 single blocks, 256x256, 9 frames, 50 steps, fp32, CPU) with
`--save-path <run>.safetensors` (the decoded video as float32) and its run record (`<run>.json`:
the denoising loop's seconds and the step cache's computed steps). The uncached run is the
reference: PSNR of the last frame (video in [-1, 1], peak-to-peak 2) against it. The published
thresholds (TeaCache 0.1 / 0.15, FBCache 0.05 / 0.1) run first, then a sweep; the table marks
the sweep's runs nearest to a third and to half of the steps skipped.

    python3 benches/step_cache.py --bin-dir target/release --model /tmp/benchmodel --threads 2

Needs numpy and safetensors (e.g. the fixtures' venv). Only loopback, no network.
"""

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

ROOT = Path(__file__).resolve().parent.parent
BLOCKS_DEFAULT = 12  # the bench model: 4 dual-stream + 8 single-stream blocks

PUBLISHED = [("teacache", 0.1), ("teacache", 0.15), ("fbcache", 0.05), ("fbcache", 0.1)]
SWEEP = {
    "teacache": [0.2, 0.25, 0.3, 0.4, 0.6, 1.0],
    "fbcache": [0.4, 0.6, 0.8, 1.0, 1.3, 1.6, 2.0],
}


def run(cmd):
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        sys.stderr.write(p.stdout + p.stderr)
        raise SystemExit(f"failed: {' '.join(map(str, cmd))}")
    return p


def generate(bin_dir, bundle, settings, threads, out, cache):
    cmd = [
        str(bin_dir / "hyvideo"), "generate", "--bundle", str(bundle),
        "--prompt", settings["prompt"],
        "--video-size", str(settings["height"]), str(settings["width"]),
        "--video-length", str(settings["frames"]),
        "--infer-steps", str(settings["steps"]),
        "--embedded-cfg-scale", str(settings["embedded_guidance_scale"]),
        "--flow-shift", str(settings["flow_shift"]),
        "--seed", str(settings["seed"]),
        "--threads", str(threads),
        "--save-path", str(out),
    ]
    if cache is not None:
        method, threshold = cache
        cmd += ["--step-cache", method, "--step-cache-threshold", str(threshold)]
    run(cmd)
    record = json.loads(out.with_suffix(".json").read_text())
    video = load_file(str(out))["video"]
    loop = next(s for name, s in record["stages_seconds"] if name.startswith("denoise"))
    return record, video, loop


def psnr(a, b):
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(4.0 / mse)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bin-dir", type=Path, default=ROOT / "target" / "release")
    ap.add_argument("--model", type=Path, required=True, help="make_bench_model.py's --out")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, help="override bench_settings.json's steps")
    ap.add_argument("--blocks", type=int, default=BLOCKS_DEFAULT)
    ap.add_argument("--work", type=Path, help="keep work files here")
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args()

    settings = json.loads((args.model / "bench_settings.json").read_text())
    if args.steps:
        settings["steps"] = args.steps
    work = args.work or Path(tempfile.mkdtemp(prefix="step-cache-", dir=ROOT / "target"))
    work.mkdir(parents=True, exist_ok=True)
    bundle = work / "bundle"
    if not (bundle / "manifest.yaml").is_file():
        run([str(args.bin_dir / "hyvideo-export"), "onnx", "--model", str(args.model),
             "--out", str(bundle)])

    steps = settings["steps"]
    rows = []
    _, ref_video, ref_loop = generate(args.bin_dir, bundle, settings, args.threads,
                                      work / "none.safetensors", None)
    rows.append(dict(method="none", threshold=None, computed=steps, loop_s=ref_loop,
                     block_calls=steps * args.blocks, psnr=math.inf, kind="reference"))
    configs = [(m, t, "published") for m, t in PUBLISHED]
    configs += [(m, t, "sweep") for m, ts in SWEEP.items() for t in ts]
    for method, threshold, kind in configs:
        out = work / f"{method}-{threshold}.safetensors"
        record, video, loop = generate(args.bin_dir, bundle, settings, args.threads, out,
                                       (method, threshold))
        computed = len(record["step_cache"]["computed_steps"])
        on_skip = 1 if method == "fbcache" else 0
        rows.append(dict(
            method=method, threshold=threshold, computed=computed, loop_s=loop,
            block_calls=computed * args.blocks + (steps - computed) * on_skip,
            psnr=psnr(video[:, :, -1], ref_video[:, :, -1]), kind=kind,
        ))
        print(f"{method} {threshold}: {computed}/{steps} computed, {loop:.2f} s", flush=True)

    for method in ("teacache", "fbcache"):
        cached = [r for r in rows if r["method"] == method]
        for target, label in ((1 / 3, "≈1/3 skipped"), (1 / 2, "≈1/2 skipped")):
            if cached:
                best = min(cached, key=lambda r: abs((steps - r["computed"]) / steps - target))
                best["kind"] += f", {label}"

    print()
    print(f"bench model, {settings['height']}x{settings['width']}, {settings['frames']} frames, "
          f"{steps} steps, fp32 CPU, {args.threads} threads")
    print("| method | threshold | steps computed | loop s | speed-up | block calls | "
          "last-frame PSNR dB | |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        t = "" if r["threshold"] is None else f"{r['threshold']:g}"
        p = "∞" if math.isinf(r["psnr"]) else f"{r['psnr']:.1f}"
        print(f"| {r['method']} | {t} | {r['computed']}/{steps} | {r['loop_s']:.2f} | "
              f"{ref_loop / r['loop_s']:.2f}× | {r['block_calls']} | {p} | {r['kind']} |")
    if args.json:
        args.json.write_text(json.dumps(dict(settings=settings, rows=rows, threads=args.threads),
                                        indent=2, default=str))
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
