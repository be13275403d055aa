#!/usr/bin/env python3
"""Export cost of the transformer: peak RSS and wall time of
`hyvideo-export onnx --components transformer` on synthetic diffusers-layout checkpoints of
several sizes, to show that the exporter streams weights (peak RSS grows far slower than the
checkpoint).

Each checkpoint is `<work>/<size>/transformer/{config.json, diffusion_pytorch_model.safetensors}`
(+ `<work>/<size>/model_index.json`): a valid `HunyuanVideoTransformer3DModel` config (head_dim
128, RoPE axes 16/56/56, text_embed_dim 4096, pooled 768, guidance embedding) and a safetensors
file with exactly the tensor names and shapes diffusers' model has for that config (read from
the model instantiated on the `meta` device, so nothing real is allocated), in bf16, values
N(0, 0.02) from a seeded generator, written tensor by tensor in chunks (generating a multi-GB
file needs a few tens of MB of RAM).

Presets (`--sizes`, comma-separated; `HxDxS` = heads×dual×single is also accepted):
  tiny   2 heads (hidden 256),  1 dual +  1 single, 1 refiner   (validation only, ~40 MB)
  small  8 heads (hidden 1024), 4 dual +  8 single, 2 refiner   (~0.65 GB)
  large 16 heads (hidden 2048), 5 dual + 10 single, 2 refiner   (~3.0 GB, 4.6× small)
  full  24 heads (hidden 3072), 20 dual + 40 single, 2 refiner  (the real 13B model, ~25.6 GB)

The exporter runs as a child process (started through a ~9 MB launcher, see _common.LAUNCHER); its peak
RSS is `ru_maxrss` from `os.wait4` (the kernel's high-water mark: anonymous + file-backed +
shared pages), and /proc/<pid>/status is sampled every `--sample-ms` to split the peak into
anonymous (RssAnon) and file-backed (RssFile, e.g. mmapped checkpoint pages). Wall time is from
spawn to exit. The bundle is deleted after each run.

Run from the repo root (needs a release build: `cargo build --release --bin hyvideo-export`,
and the bench venv: `./benches/native/setup.sh`):

    ./benches/native/setup.sh
    .venv-bench/bin/python benches/native/export_cost.py --sizes small,large --json cost.json

Check the generator alone (no exporter): `--sizes tiny --generate-only --verify`.
Exit status: 0 if every export ran, 1 if one failed, 2 on a usage error or too little disk.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

SEED = 1234
HEAD_DIM = 128
PRESETS = {
    # name: (heads, dual layers, single layers, refiner layers)
    "tiny": (2, 1, 1, 1),
    "small": (8, 4, 8, 2),
    "large": (16, 5, 10, 2),
    "full": (24, 20, 40, 2),
}
# The bench's own reading of "streams weights" (informational; printed as PASS/FAIL):
# between the smallest and the largest size, peak RSS must grow by at most this fraction of
# the checkpoint's growth factor, and the largest export's peak RSS must stay below this
# fraction of its checkpoint bytes.
MAX_RSS_GROWTH_SHARE = 0.5
MAX_RSS_OVER_CHECKPOINT = 0.5


def config_for(heads: int, dual: int, single: int, refiner: int) -> dict:
    return {
        "in_channels": 16,
        "out_channels": 16,
        "num_attention_heads": heads,
        "attention_head_dim": HEAD_DIM,
        "num_layers": dual,
        "num_single_layers": single,
        "num_refiner_layers": refiner,
        "mlp_ratio": 4.0,
        "patch_size": 2,
        "patch_size_t": 1,
        "qk_norm": "rms_norm",
        "guidance_embeds": True,
        "text_embed_dim": 4096,
        "pooled_projection_dim": 768,
        "rope_theta": 256.0,
        "rope_axes_dim": [16, 56, 56],
        "image_condition_type": None,
    }


def parse_size(spec: str) -> tuple[str, dict]:
    if spec in PRESETS:
        return spec, config_for(*PRESETS[spec])
    m = re.fullmatch(r"(\d+)x(\d+)x(\d+)", spec)
    if m:
        h, d, s = map(int, m.groups())
        return f"h{h}_d{d}_s{s}", config_for(h, d, s, 2)
    raise argparse.ArgumentTypeError(
        f"unknown size {spec!r}: use one of {', '.join(PRESETS)} or HEADSxDUALxSINGLE (e.g. 16x5x10)")


def tensor_layout(cfg: dict) -> list[tuple[str, list[int]]]:
    """(name, shape) of every tensor diffusers saves for this config, sorted by name (the order
    safetensors' own writer uses for single-dtype files). No memory is allocated: the model is
    built on the meta device."""
    import torch
    from diffusers import HunyuanVideoTransformer3DModel

    with torch.device("meta"):
        model = HunyuanVideoTransformer3DModel(**cfg)
    sd = model.state_dict()
    return sorted((k, list(v.shape)) for k, v in sd.items())


def layout_bytes(layout: list[tuple[str, list[int]]]) -> int:
    n = 0
    for _, shape in layout:
        k = 1
        for d in shape:
            k *= d
        n += 2 * k
    return n


# --------------------------------------------------------------------------------------------
# Checkpoint generation
# --------------------------------------------------------------------------------------------


def shard_layout(layout, shard_bytes: int | None):
    if not shard_bytes:
        return [layout]
    shards, cur, cur_b = [], [], 0
    for name, shape in layout:
        b = layout_bytes([(name, shape)])
        if cur and cur_b + b > shard_bytes:
            shards.append(cur)
            cur, cur_b = [], 0
        cur.append((name, shape))
        cur_b += b
    if cur:
        shards.append(cur)
    return shards


def generate_checkpoint(model_dir: Path, cfg: dict, layout, seed: int, shard_mb: int | None) -> dict:
    """Write `<model_dir>/transformer/` (and model_index.json). Reuses an existing checkpoint
    written with the same config/seed/sharding (recorded in `<model_dir>/bench_stamp.json`)."""
    tdir = model_dir / "transformer"
    stamp_path = model_dir / "bench_stamp.json"
    stamp = {"config": cfg, "seed": seed, "shard_mb": shard_mb, "tensors": len(layout),
             "data_bytes": layout_bytes(layout)}
    if stamp_path.exists():
        try:
            old = json.loads(stamp_path.read_text())
            if all(old.get(k) == v for k, v in stamp.items()) and all(
                    (tdir / f).exists() for f in old.get("files", [])):
                old["reused"] = True
                return old
        except ValueError:
            pass
    if tdir.exists():
        shutil.rmtree(tdir)
    tdir.mkdir(parents=True)
    stamp_path.unlink(missing_ok=True)

    import diffusers

    config = {"_class_name": "HunyuanVideoTransformer3DModel", "_diffusers_version": diffusers.__version__,
              **cfg}
    (tdir / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    C.write_model_index(model_dir)

    shards = shard_layout(layout, shard_mb * C.MIB if shard_mb else None)
    total = layout_bytes(layout)
    t0 = time.perf_counter()
    done_before = 0
    last_print = [t0]

    def progress(done, _total):
        now = time.perf_counter()
        if now - last_print[0] > 5:
            last_print[0] = now
            d = done_before + done
            print(f"  ... {C.fmt_bytes(d)} / {C.fmt_bytes(total)} ({d / max(now - t0, 1e-9) / C.MIB:.0f} MiB/s)",
                  flush=True)

    files = []
    # Tensor index → generator seed is global (over the sorted layout), so sharding does not
    # change any tensor's values.
    index_of = {name: i for i, (name, _) in enumerate(layout)}
    weight_map = {}
    for si, shard in enumerate(shards):
        fname = ("diffusion_pytorch_model.safetensors" if len(shards) == 1 else
                 f"diffusion_pytorch_model-{si + 1:05d}-of-{len(shards):05d}.safetensors")
        C.write_random_bf16_safetensors(tdir / fname, shard, seed, std=0.02, progress=progress,
                                        indices=[index_of[n] for n, _ in shard])
        done_before += layout_bytes(shard)
        files.append(fname)
        weight_map.update({n: fname for n, _ in shard})
    if len(shards) > 1:
        idx = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (tdir / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(idx, indent=2) + "\n")
        files.append("diffusion_pytorch_model.safetensors.index.json")
    stamp["files"] = files
    stamp["file_bytes"] = sum((tdir / f).stat().st_size for f in files)
    stamp["generate_s"] = time.perf_counter() - t0
    stamp_path.write_text(json.dumps(stamp, indent=2) + "\n")
    stamp["reused"] = False
    return stamp


def verify_checkpoint(model_dir: Path, layout) -> dict:
    """Load the generated checkpoint with safetensors and with diffusers' from_pretrained;
    fail on any missing / unexpected / mismatched key. Allocates the model (small sizes only)."""
    import torch
    from diffusers import HunyuanVideoTransformer3DModel
    from safetensors.torch import load_file

    tdir = model_dir / "transformer"
    sd = {}
    for f in sorted(tdir.glob("*.safetensors")):
        sd.update(load_file(str(f)))
    want = dict(layout)
    problems = []
    if set(sd) != set(want):
        problems.append(f"safetensors keys differ: missing {sorted(set(want) - set(sd))[:5]}, "
                        f"extra {sorted(set(sd) - set(want))[:5]}")
    for k, t in sd.items():
        if k in want and (list(t.shape) != want[k] or t.dtype != torch.bfloat16):
            problems.append(f"{k}: {t.dtype} {list(t.shape)} vs bf16 {want[k]}")
    stds = [float(t.float().std()) for t in sd.values() if t.numel() > 1000]
    model, info = HunyuanVideoTransformer3DModel.from_pretrained(tdir, output_loading_info=True)
    for key in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs"):
        if info.get(key):
            problems.append(f"from_pretrained {key}: {info[key][:5]}")
    sample = next(iter(sd))
    same = torch.equal(model.state_dict()[sample].to(torch.bfloat16), sd[sample])
    if not same:
        problems.append(f"from_pretrained value of {sample} differs from the file")
    res = {"tensors": len(sd), "from_pretrained": {k: list(v) for k, v in info.items()},
           "median_std": statistics.median(stds) if stds else None, "problems": problems}
    del model, sd
    return res


# --------------------------------------------------------------------------------------------
# Measuring the exporter
# --------------------------------------------------------------------------------------------


def read_status_kib(pid: int) -> dict[str, int]:
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                k, _, v = line.partition(":")
                if k in ("VmRSS", "RssAnon", "RssFile", "RssShmem", "VmHWM"):
                    out[k] = int(v.split()[0])
    except (OSError, ValueError):
        pass
    return out


def drop_from_page_cache(files: list[Path]) -> None:
    """fsync + POSIX_FADV_DONTNEED: evict the checkpoint's clean pages so the export reads it
    from disk (works without root; best effort)."""
    for p in files:
        try:
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
        except OSError:
            pass


# The exporter is started by this small launcher (a fresh `python -S -I`, ~9 MB resident), not
# by the benchmark process itself. Linux's ru_maxrss of a process that exec()s keeps the high-water
# mark of the image it replaced, so an exporter forked/spawned directly from this torch-loaded
# Python (~700 MB) would report at least that much. Spawned from the launcher, its ru_maxrss is
# max(launcher's ~9 MB, the exporter's own peak). The launcher prints the exporter's pid, then,
# when it has exited, one JSON line with its wait status and rusage (_common.LAUNCHER).


def measure_export(cmd: list[str], log_dir: Path, sample_s: float) -> dict:
    log_dir.mkdir(parents=True, exist_ok=True)
    out_f, err_f = log_dir / "stdout.txt", log_dir / "stderr.txt"
    exe = shutil.which(cmd[0]) or cmd[0]
    launcher = subprocess.Popen(C.launcher_argv(0, out_f, err_f, exe, cmd[1:]),
                                stdout=subprocess.PIPE, text=True)
    peaks = {"RssAnon": 0, "RssFile": 0, "RssShmem": 0, "VmRSS": 0, "VmHWM": 0}
    first = launcher.stdout.readline()
    try:
        pid = int(first)
    except ValueError:
        launcher.wait()
        raise RuntimeError(f"could not start {exe}: launcher said {first!r}")
    while launcher.poll() is None:
        st = read_status_kib(pid)
        for k in peaks:
            peaks[k] = max(peaks[k], st.get(k, 0))
        time.sleep(sample_s)
    res = json.loads(launcher.stdout.read().strip().splitlines()[-1])
    launcher.stdout.close()
    stdout = out_f.read_text(errors="replace")
    stderr = err_f.read_text(errors="replace")
    m = re.search(r"export took ([0-9.]+) s", stdout)
    return {
        "exit": res["exit"],
        "wall_s": res["wall_s"],
        "exporter_reported_s": float(m.group(1)) if m else None,
        "peak_rss_bytes": res["maxrss_kib"] * 1024,  # Linux: KiB
        "rss_floor_bytes": res["launcher_hwm_kib"] * 1024,  # ru_maxrss cannot read below this
        "sampled_peak_bytes": {k: v * 1024 for k, v in peaks.items()},
        "user_s": res["user_s"],
        "sys_s": res["sys_s"],
        "major_faults": res["majflt"],
        "stdout_tail": stdout[-2000:],
        "stderr_tail": stderr[-4000:],
    }


def dir_bytes(p: Path) -> int:
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def parse_args(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run (repo root): ./benches/native/setup.sh; "
               ".venv-bench/bin/python benches/native/export_cost.py --sizes small,large --json cost.json",
    )
    ap.add_argument("--sizes", default="small,large",
                    help=f"comma-separated presets ({', '.join(PRESETS)}) or HEADSxDUALxSINGLE "
                         "(default small,large)")
    ap.add_argument("--work", help="work dir (default: a fresh temp dir under target/bench-work/, deleted "
                                   "at the end unless --keep). Checkpoints already in --work with the same "
                                   "config and seed are reused.")
    ap.add_argument("--keep", action="store_true", help="keep the temp work dir (checkpoints)")
    ap.add_argument("--hyvideo-export", default=None,
                    help="exporter binary (default target/release/hyvideo-export under the repo root)")
    ap.add_argument("--precision", default=None, help="pass --precision to the exporter (default: its own)")
    ap.add_argument("--reps", type=int, default=1, help="exports per size (default 1; wall = median, RSS = max)")
    ap.add_argument("--cold", action="store_true",
                    help="evict the checkpoint from the page cache before each export (fsync + "
                         "POSIX_FADV_DONTNEED) so the wall time includes reading it from disk")
    ap.add_argument("--shard-mb", type=int, default=None,
                    help="write sharded checkpoints (+ index.json) of at most this many MiB each")
    ap.add_argument("--seed", type=int, default=SEED, help=f"weights seed (default {SEED})")
    ap.add_argument("--sample-ms", type=float, default=20.0,
                    help="/proc/<pid>/status sampling interval for the anon/file split (default 20)")
    ap.add_argument("--generate-only", action="store_true", help="write the checkpoints, do not export")
    ap.add_argument("--verify", action="store_true",
                    help="load each checkpoint with safetensors.torch.load_file and diffusers "
                         "from_pretrained and check the keys (allocates the model: small sizes only)")
    ap.add_argument("--json", help="also write the results as JSON to this file")
    ap.add_argument("--copy-baseline", action="store_true",
                    help="also time a plain copy of each checkpoint (same bytes, same disk) before "
                         "exporting it, and report export wall / copy wall")
    ap.add_argument("--check", action="store_true",
                    help="run the ONNX checker (full_check) on each exported transformer.onnx")
    args = ap.parse_args(argv)
    try:
        args.sizes = [parse_size(s.strip()) for s in args.sizes.split(",") if s.strip()]
    except argparse.ArgumentTypeError as e:
        ap.error(str(e))
    if not args.sizes:
        ap.error("--sizes: give at least one size")
    names = [n for n, _ in args.sizes]
    if len(set(names)) != len(names):
        ap.error("--sizes: duplicate size")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    exporter = C.resolve_exporter(args.hyvideo_export)
    if not args.generate_only and not exporter.exists():
        print(f"error: exporter not found: {exporter} (cargo build --release --bin hyvideo-export, "
              f"or pass --hyvideo-export)", file=sys.stderr)
        return 2

    # Layouts (meta device, no allocation) and sizes first, to check the disk before writing.
    plans = []
    for name, cfg in args.sizes:
        layout = tensor_layout(cfg)
        plans.append({"name": name, "config": cfg, "layout": layout, "bytes": layout_bytes(layout)})
        print(f"{name}: hidden {cfg['num_attention_heads'] * HEAD_DIM}, {cfg['num_layers']} dual + "
              f"{cfg['num_single_layers']} single + {cfg['num_refiner_layers']} refiner blocks, "
              f"{len(layout)} tensors, {plans[-1]['bytes'] / 2 / 1e9:.3f} B params, "
              f"{C.fmt_bytes(plans[-1]['bytes'])} bf16")

    work, is_temp = C.make_work_dir(args.work, "export_cost-")
    largest = max(p["bytes"] for p in plans)
    free = C.free_disk_bytes(work)
    # checkpoints not yet present + one bundle of the largest (an fp32 bundle is ≈ 2× the bf16
    # checkpoint, a bf16/fp16 one ≈ 1×; --copy-baseline needs one more copy, deleted before the
    # export) + 1 GiB.
    factor = 1 if args.precision in ("bf16", "fp16") else 2
    needed = sum(p["bytes"] for p in plans) + factor * largest + (1 << 30)
    if free < needed:
        print(f"error: {C.fmt_bytes(free)} free under {work}, this run needs about {C.fmt_bytes(needed)} "
              f"(≥ 3× the largest checkpoint, {C.fmt_bytes(largest)}); pick smaller --sizes or another --work",
              file=sys.stderr)
        if is_temp:
            shutil.rmtree(work, ignore_errors=True)
        return 2
    print(f"work dir: {work} ({C.fmt_bytes(free)} free)")

    report = {
        "bench": "export_cost",
        "command": " ".join([sys.executable, *sys.argv]),
        "machine": C.machine_info(),
        "git_head": C.git_head(),
        "exporter": str(exporter),
        "cold_cache": args.cold,
        "reps": args.reps,
        "sizes": [],
    }
    failures = []
    try:
        for p in plans:
            mdir = work / p["name"]
            print(f"[{p['name']}] writing checkpoint {mdir / 'transformer'} ...", flush=True)
            stamp = generate_checkpoint(mdir, p["config"], p["layout"], args.seed, args.shard_mb)
            print(f"[{p['name']}] checkpoint {C.fmt_bytes(stamp['file_bytes'])} in {len(stamp['files'])} file(s)"
                  + (" (reused)" if stamp["reused"] else f", written in {stamp['generate_s']:.1f} s"))
            entry = {"name": p["name"], "config": p["config"], "tensors": len(p["layout"]),
                     "checkpoint_bytes": stamp["file_bytes"], "data_bytes": p["bytes"],
                     "largest_tensor": max(p["layout"], key=lambda kv: layout_bytes([kv]))}
            if args.verify:
                v = verify_checkpoint(mdir, p["layout"])
                entry["verify"] = v
                print(f"[{p['name']}] verify: {v['tensors']} tensors, median std {v['median_std']:.4f}, "
                      + ("OK (safetensors load_file + from_pretrained: no missing/unexpected/mismatched keys)"
                         if not v["problems"] else f"PROBLEMS: {v['problems']}"))
                if v["problems"]:
                    failures.append(f"{p['name']}: checkpoint verification failed")
            if not args.generate_only:
                if args.copy_baseline:
                    copy_s = 0.0
                    for f in stamp["files"]:
                        src, dst = mdir / "transformer" / f, mdir / f"copy-{f}"
                        t0 = time.perf_counter()
                        shutil.copyfile(src, dst)
                        with open(dst, "rb+") as fh:
                            os.fsync(fh.fileno())
                        copy_s += time.perf_counter() - t0
                        dst.unlink()
                    entry["copy_wall_s"] = copy_s
                    print(f"[{p['name']}] plain copy of the checkpoint (+ fsync): {copy_s:.1f} s", flush=True)
                runs = []
                for rep in range(args.reps):
                    bundle = mdir / "bundle"
                    if bundle.exists():
                        shutil.rmtree(bundle)
                    if args.cold:
                        drop_from_page_cache([mdir / "transformer" / f for f in stamp["files"]])
                    extra = ["--precision", args.precision] if args.precision else []
                    cmd = C.run_exporter(exporter, mdir, bundle, "transformer", extra)
                    print("$ " + " ".join(cmd), flush=True)
                    r = measure_export(cmd, mdir / f"logs{rep}", args.sample_ms / 1000)
                    r["bundle_bytes"] = dir_bytes(bundle) if bundle.exists() else 0
                    if args.check and r["exit"] == 0:
                        t0 = time.perf_counter()
                        chk = subprocess.run(
                            [sys.executable, "-c",
                             "import sys, onnx; onnx.checker.check_model(sys.argv[1], full_check=True)",
                             str(bundle / "transformer.onnx")], capture_output=True, text=True)
                        r["onnx_checker"] = "ok" if chk.returncode == 0 else chk.stderr.strip()[-500:]
                        print(f"[{p['name']}] ONNX checker (full_check): {r['onnx_checker']} "
                              f"({time.perf_counter() - t0:.1f} s)", flush=True)
                    shutil.rmtree(bundle, ignore_errors=True)
                    runs.append(r)
                    print(f"[{p['name']}] exit {r['exit']}, wall {r['wall_s']:.2f} s, peak RSS "
                          f"{C.fmt_bytes(r['peak_rss_bytes'])} (sampled anon "
                          f"{C.fmt_bytes(r['sampled_peak_bytes']['RssAnon'])}, file "
                          f"{C.fmt_bytes(r['sampled_peak_bytes']['RssFile'])}), bundle "
                          f"{C.fmt_bytes(r['bundle_bytes'])}")
                    if r["exit"] != 0:
                        sys.stderr.write(r["stderr_tail"])
                        failures.append(f"{p['name']}: export failed (exit {r['exit']})")
                        break
                entry["runs"] = runs
                ok = [r for r in runs if r["exit"] == 0]
                if ok:
                    entry["wall_s"] = statistics.median(r["wall_s"] for r in ok)
                    entry["peak_rss_bytes"] = max(r["peak_rss_bytes"] for r in ok)
                    entry["peak_anon_bytes"] = max(r["sampled_peak_bytes"]["RssAnon"] for r in ok)
                    entry["peak_file_bytes"] = max(r["sampled_peak_bytes"]["RssFile"] for r in ok)
                    entry["bundle_bytes"] = ok[-1]["bundle_bytes"]
            report["sizes"].append(entry)
    finally:
        if is_temp and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        elif is_temp:
            print(f"kept {work}")

    if not args.generate_only:
        print_report(report)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=str) + "\n")
        print(f"wrote {args.json}")
    for f in failures:
        print(f"error: {f}", file=sys.stderr)
    return 1 if failures else 0


def print_report(report: dict) -> None:
    sizes = [s for s in report["sizes"] if "peak_rss_bytes" in s]
    print()
    print(f"hyvideo-export onnx --components transformer; "
          f"{'cold' if report['cold_cache'] else 'warm'} page cache; MiB = 2^20 bytes")
    rows = []
    for s in report["sizes"]:
        if "peak_rss_bytes" not in s:
            rows.append([s["name"], f"{s['checkpoint_bytes'] / C.MIB:.0f}", "error", "", "", "", "", ""])
            continue
        rows.append([
            s["name"],
            f"{s['checkpoint_bytes'] / C.MIB:.0f}",
            f"{s['peak_rss_bytes'] / C.MIB:.0f}",
            f"{s['peak_anon_bytes'] / C.MIB:.0f}",
            f"{s['peak_file_bytes'] / C.MIB:.0f}",
            f"{s['wall_s']:.2f}",
            f"{s['peak_rss_bytes'] / s['checkpoint_bytes']:.3f}",
            f"{s['bundle_bytes'] / C.MIB:.0f}",
        ])
    C.print_table(["size", "checkpoint MiB", "peak RSS MiB", "anon MiB*", "file MiB*", "wall s",
                   "RSS / checkpoint", "bundle MiB"], rows)
    floor = max((r.get("rss_floor_bytes", 0) for s in sizes for r in s.get("runs", [])), default=0)
    print("* sampled from /proc/<pid>/status (peak RSS is the kernel's ru_maxrss"
          + (f"; it cannot read below the launcher's {floor / C.MIB:.1f} MiB)" if floor else ")"))

    growth = []
    for a, b in zip(sizes, sizes[1:]) if len(sizes) > 1 else []:
        growth.append(_growth(a, b))
    if len(sizes) > 2:
        growth.append(_growth(sizes[0], sizes[-1]))
    report["growth"] = growth
    if growth:
        print()
        C.print_table(["from → to", "checkpoint ×", "peak RSS ×", "anon ×", "wall ×"],
                      [[f"{g['from']} → {g['to']}", f"{g['checkpoint_x']:.2f}", f"{g['rss_x']:.2f}",
                        f"{g['anon_x']:.2f}", f"{g['wall_x']:.2f}"] for g in growth])
        g = _growth(sizes[0], sizes[-1])
        last = sizes[-1]
        checks = {
            f"peak RSS growth ≤ {MAX_RSS_GROWTH_SHARE:g} × checkpoint growth "
            f"({g['rss_x']:.2f}× vs {g['checkpoint_x']:.2f}×)":
                g["rss_x"] <= MAX_RSS_GROWTH_SHARE * g["checkpoint_x"],
            f"largest peak RSS ≤ {MAX_RSS_OVER_CHECKPOINT:g} × its checkpoint "
            f"({last['peak_rss_bytes'] / last['checkpoint_bytes']:.3f})":
                last["peak_rss_bytes"] <= MAX_RSS_OVER_CHECKPOINT * last["checkpoint_bytes"],
        }
        file_share = last["peak_file_bytes"] / max(last["peak_anon_bytes"] + last["peak_file_bytes"], 1)
        if file_share > 0.5:
            print(f"note: {100 * file_share:.0f} % of {last['name']}'s sampled peak is file-backed (mapped "
                  f"checkpoint pages, counted in RSS though reclaimable); anonymous memory grew "
                  f"{g['anon_x']:.2f}× ({last['peak_anon_bytes'] / C.MIB:.0f} MiB at {last['name']})")
        if g["checkpoint_x"] < 4:
            print(f"note: the sizes are only {g['checkpoint_x']:.2f}× apart (the issue asks for ≥ 4×)")
        report["checks"] = checks
        for k, ok in checks.items():
            print(f"{'PASS' if ok else 'FAIL'}: {k}")


def _growth(a: dict, b: dict) -> dict:
    def r(k):
        return b[k] / a[k] if a.get(k) else float("nan")

    return {"from": a["name"], "to": b["name"], "checkpoint_x": r("checkpoint_bytes"),
            "rss_x": r("peak_rss_bytes"), "anon_x": r("peak_anon_bytes"), "wall_x": r("wall_s")}


if __name__ == "__main__":
    sys.exit(main())
