#!/usr/bin/env python3
"""The transformer as `hyvideo denoise` runs it, against diffusers / PyTorch, as the sequence grows.

Issue 9 ("What must be shown"): time per denoising step (excluding load) and peak RSS of
`hyvideo denoise` on a 6-head x 64 DiT at about 4,500, 12,000 and >= 30,000 image tokens, side by
side in the same run with diffusers' `HunyuanVideoTransformer3DModel` (its default attention
processor, `HunyuanVideoAttnProcessor2_0` -> `F.scaled_dot_product_attention`) driven through the
same denoising loop on CPU in fp32 with the same thread count, plus the difference between the two
paths' final latents.

Flow:

1. `prepare` (a child process): a seeded diffusers transformer (MODEL_CONFIG below: hidden 384 =
   6 heads x 64, 2 dual-stream + 2 single-stream blocks, 1 token-refiner block, text_embed_dim 256,
   pooled 128, guidance embedding; every parameter drawn by make_bench_model.py's `randomize`,
   bf16-rounded), saved with `save_pretrained` in bf16 as a diffusers folder
   (`<work>/model/model_index.json` + `transformer/`); the prompt embeddings
   (`prompt_embeds` [1,L,256] ~ N(0,1), `prompt_attention_mask` [1,L] int64, all L tokens valid by
   default, `pooled_prompt_embeds` [1,128]) and, per size, the initial noise `latents`
   [1,16,T,H,W] = `torch.randn(generator=torch.Generator("cpu").manual_seed(seed))`.
2. `hyvideo-export onnx --model <work>/model --out <work>/bundle --components transformer` (fp32),
   always re-exported, so the graph is what the current binary writes.
3. Per size, each side in its own fresh process, one after the other (never concurrently):
   - PyTorch: this script's `pytorch` worker loads the folder (`from_pretrained`, fp32) and runs
     the loop of diffusers' `HunyuanVideoPipeline.__call__`: `FlowMatchEulerDiscreteScheduler
     (shift=--flow-shift)` with sigmas = linspace(1, 0, N+1)[:-1] (`retrieve_timesteps`),
     timestep = t.expand(B), guidance = scale * 1000, `transformer(...)` then `scheduler.step`,
     under `torch.inference_mode()`; each step timed with `time.perf_counter`; the final latents
     written to a safetensors file;
   - hyvideo: `hyvideo denoise --bundle <work>/bundle --prompt-embeds E --latents L
     --output-latents OUT --infer-steps N --embedded-cfg-scale 6.0 --flow-shift 7.0
     --flow-reverse --threads T`.
   Each is started by a tiny launcher (`python -S -I`, ~9 MiB) that reports the child's rusage
   from `os.wait4`, so the peak RSS (`ru_maxrss`) is that process's alone (a child spawned from
   a process with torch loaded could inherit its high-water mark; see export_cost.py).

Time per step, excluding load, is the denoising loop's time divided by N on both sides:
hyvideo's own `denoise (N s)` figure (its loop, timed in-process: after the transformer is
loaded, before the latents are written) and the sum of the PyTorch worker's per-step
perf_counter times (transformer call + scheduler step). Both include the first step, so warm-up
work (first-run allocations; ONNX Runtime's arena, PyTorch's page faults) counts once on each
side; the JSON keeps every PyTorch step and the table below the main one shows PyTorch's first
step against the rest. Peak RSS is the whole process's (libraries, weights, activations),
ru_maxrss of the child.

Memory guard (the machine has no swap: today's hyvideo graphs materialise the [B, heads, S, S]
attention scores, ~25 GB per layer at 32k tokens): both children are watched every 50 ms, and
one whose RSS passes --mem-limit-gib (default 75 % of MemAvailable at start), or while the
machine's MemAvailable falls below --min-free-gib, is killed (SIGKILL) and its size reported as
"OOM" in the table; the script goes on with the next measurement. The hyvideo child also runs
under `RLIMIT_AS` = --as-limit-gib (default MemTotal), so a single allocation larger than the
RAM fails at once inside the child (reported as "OOM") instead of being touched page by page.
The address-space limit is not set lower because ONNX Runtime's arena reserves far more address
space than it touches (at 12k tokens an RLIMIT_AS of 17 GiB failed at 7.3 GiB RSS). PyTorch gets
the watchdog only (a CUDA build of torch maps ~3.5 GB of address space at import).

Run (after `./scripts/setup.sh`, `./benches/native/setup.sh` and `cargo build --release`):

    .venv-bench/bin/python benches/native/denoise_scaling.py --threads 2 --steps 3 --json scaling.json
    .venv-bench/bin/python benches/native/denoise_scaling.py --sizes 4500 --steps 2

Exit status: 0 if every requested measurement ran and the two paths agree within --parity-tol
(whatever the goal lines say); 1 if a measurement failed (OOM / killed / error: still reported
in the table and the JSON) or the latents disagree; 2 on a usage error.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

# 6 heads x 64 = hidden 384 (the DiT): transformer_forward.py's small DiT, shallow
# enough that the largest size finishes on 2 cores, with the bench pipeline's text widths.
MODEL_CONFIG = dict(
    C.SMALL_DIT,
    num_layers=2,
    num_single_layers=2,
    num_refiner_layers=1,
    text_embed_dim=256,
    pooled_projection_dim=128,
)
MODEL_SEED = 9001
EMBEDS_SEED = 9002
LATENTS_SEED = 42

# Image tokens -> latent [T, H, W] (tokens = T * (H/2) * (W/2) with patch 2).
SIZES = {
    4500: (5, 60, 60),     # 17 frames at 480 x 480 px
    12000: (5, 80, 120),   # 17 frames at 640 x 960 px
    32400: (9, 90, 160),   # 33 frames at 720 x 1280 px
}
DEFAULT_SIZES = "4500,12000,32400"

GOAL_TIME = 1.0      # hyvideo s/step <= 1.0x PyTorch
GOAL_MEMORY = 1.5    # hyvideo peak RSS <= 1.5x PyTorch
GOAL_LINEAR = 1.5    # last MiB-per-token slope <= 1.5x the first (quadratic growth gives ~2.7x here)

MIB = C.MIB
GIB = C.GIB



# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def tokens_of(shape: tuple[int, int, int]) -> int:
    t, h, w = shape
    return t * (h // 2) * (w // 2)


def parse_sizes(text: str) -> list[tuple[int, tuple[int, int, int]]]:
    """`4500,12000` (the preset token counts) or latent shapes `TxHxW` (H, W even)."""
    out = []
    for item in (s.strip() for s in text.split(",")):
        if not item:
            continue
        if "x" in item:
            try:
                t, h, w = (int(v) for v in item.split("x"))
            except ValueError:
                raise argparse.ArgumentTypeError(f"--sizes: {item!r} is not TxHxW")
            if min(t, h, w) < 1 or h % 2 or w % 2:
                raise argparse.ArgumentTypeError(f"--sizes: {item!r}: T >= 1, H and W even")
            out.append((tokens_of((t, h, w)), (t, h, w)))
        else:
            try:
                n = int(item)
            except ValueError:
                raise argparse.ArgumentTypeError(f"--sizes: {item!r} is neither a token count nor TxHxW")
            if n not in SIZES:
                raise argparse.ArgumentTypeError(
                    f"--sizes: {n} is not one of the presets {sorted(SIZES)} (or give a latent TxHxW)")
            out.append((n, SIZES[n]))
    if not out:
        raise argparse.ArgumentTypeError("--sizes is empty")
    return out


def meminfo_kib(key: str) -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def proc_rss_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def cpu_busy_s() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, from /proc/stat (all CPUs)."""
    try:
        f = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return 0.0, 0.0
    hz = os.sysconf("SC_CLK_TCK")
    total = sum(f[:8])
    idle = f[3] + f[4]  # idle + iowait
    return (total - idle) / hz, total / hz


def wait_idle(max_busy: float, max_wait_s: float) -> float:
    """Wait until the machine's CPU use over a 2 s window is below max_busy (fraction of all
    CPUs), at most max_wait_s. Returns the last window's busy fraction."""
    t0 = time.monotonic()
    while True:
        b0, t0_ = cpu_busy_s()
        time.sleep(2.0)
        b1, t1_ = cpu_busy_s()
        frac = (b1 - b0) / max(t1_ - t0_, 1e-9)
        if frac <= max_busy or time.monotonic() - t0 > max_wait_s:
            if frac > max_busy:
                print(f"note: the machine is still {100 * frac:.0f} % busy after {max_wait_s:.0f} s; "
                      f"measuring anyway", flush=True)
            return frac
        print(f"waiting: the machine is {100 * frac:.0f} % busy (> {100 * max_busy:.0f} %)", flush=True)


def run_guarded(cmd: list[str], log_dir: Path, *, as_limit: int, rss_limit: int, min_free: int,
                timeout_s: float, env: dict, cwd: Path) -> dict:
    """Run `cmd` through the launcher with the memory guard. Returns the launcher's report plus
    the watchdog's verdict, the sampled RSS peak and the output tails."""
    log_dir.mkdir(parents=True, exist_ok=True)
    out_f, err_f = log_dir / "stdout.txt", log_dir / "stderr.txt"
    exe = shutil.which(cmd[0]) or cmd[0]
    launcher = subprocess.Popen(
        C.launcher_argv(as_limit, out_f, err_f, exe, cmd[1:]),
        stdout=subprocess.PIPE, text=True, env=env, cwd=cwd)
    first = launcher.stdout.readline()
    try:
        pid = int(first)
    except ValueError:
        launcher.wait()
        return {"status": "error", "detail": f"could not start {exe}: launcher said {first!r}"}
    busy0, total0 = cpu_busy_s()
    load0 = os.getloadavg()[0]
    killed = None
    sampled_peak = 0
    min_avail = None
    t0 = time.monotonic()
    while launcher.poll() is None:
        rss = proc_rss_kib(pid)
        if rss is not None:
            sampled_peak = max(sampled_peak, rss)
        avail = meminfo_kib("MemAvailable")
        if avail is not None:
            min_avail = avail if min_avail is None else min(min_avail, avail)
        if killed is None:
            if rss is not None and rss * 1024 > rss_limit:
                killed = f"RSS {rss / 1024:.0f} MiB passed the limit of {rss_limit / GIB:.1f} GiB"
            elif avail is not None and avail * 1024 < min_free:
                killed = (f"MemAvailable fell to {avail / 1024:.0f} MiB (< {min_free / GIB:.1f} GiB) "
                          f"at RSS {0 if rss is None else rss / 1024:.0f} MiB")
            elif time.monotonic() - t0 > timeout_s:
                killed = f"timeout after {timeout_s:.0f} s"
            if killed:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        time.sleep(0.05)
    lines = launcher.stdout.read().strip().splitlines()
    launcher.stdout.close()
    busy1, total1 = cpu_busy_s()
    stdout = out_f.read_text(errors="replace")
    stderr = err_f.read_text(errors="replace")
    if not lines:
        return {"status": "error", "detail": f"launcher exited {launcher.returncode} without a report",
                "stdout_tail": stdout[-2000:], "stderr_tail": stderr[-4000:]}
    res = json.loads(lines[-1])
    # CPU the rest of the machine used while the child ran, as a fraction of all CPUs (busy time
    # of the machine minus the child's own user + sys time): timings taken while others compile
    # on the same cores are not comparable.
    other = (busy1 - busy0) - (res["user_s"] + res["sys_s"])
    res["other_cpu_fraction"] = max(0.0, other / max(total1 - total0, 1e-9))
    res["loadavg_1m"] = [load0, os.getloadavg()[0]]
    res.update(pid=pid, peak_rss_mib=res["maxrss_kib"] / 1024, sampled_peak_rss_mib=sampled_peak / 1024,
               floor_rss_mib=res["launcher_hwm_kib"] / 1024,
               min_mem_available_mib=None if min_avail is None else min_avail / 1024,
               stdout_tail=stdout[-3000:], stderr_tail=stderr[-4000:], command=" ".join(cmd))
    oom_words = ("memory allocation of", "bad_alloc", "failed to allocate", "out of memory",
                 "cannot allocate memory", "memoryerror", "allocate memory")
    if killed:
        res["status"] = "timeout" if killed.startswith("timeout") else "OOM"
        res["detail"] = f"killed by the watchdog: {killed}"
    elif res["exit"] == 0:
        res["status"] = "ok"
    elif res["signal"] == signal.SIGKILL:
        res["status"] = "killed"
        res["detail"] = "SIGKILL from outside (the kernel's OOM killer?)"
    elif any(w in stderr.lower() for w in oom_words):
        res["status"] = "OOM"
        res["detail"] = ("allocation failed" + (f" under RLIMIT_AS {as_limit / GIB:.1f} GiB" if as_limit else "")
                         + ": " + last_error_line(stderr))
    else:
        res["status"] = "error"
        res["detail"] = (f"signal {res['signal']}" if res["signal"] else f"exit {res['exit']}") + \
            ": " + last_error_line(stderr)
    return res


def last_error_line(stderr: str) -> str:
    lines = [l.strip() for l in stderr.splitlines() if l.strip()]
    for l in reversed(lines):
        if l.startswith("error:"):  # hyvideo's own message (anyhow's chain follows it)
            return l[:400]
    for l in reversed(lines):
        if "error" in l.lower() or "memory" in l.lower() or "alloc" in l.lower():
            return l[:400]
    return lines[-1][:400] if lines else "(no output)"


def parse_hyvideo(stdout: str) -> dict:
    """The stage lines `hyvideo denoise` prints (src/bin/hyvideo.rs `report`)."""
    out = {}
    m = re.search(r"^load transformer\s+([0-9.]+)", stdout, re.M)
    if m:
        out["load_s"] = float(m.group(1))
    m = re.search(r"^denoise \(\s*(\d+) s\)\s+([0-9.]+)", stdout, re.M)
    if m:
        out["steps"] = int(m.group(1))
        out["loop_s"] = float(m.group(2))
    m = re.search(r"^\s+per step\s+([0-9.]+)", stdout, re.M)
    if m:
        out["reported_per_step_s"] = float(m.group(1))
    m = re.search(r"^peak RSS\s+([0-9.]+) MiB", stdout, re.M)
    if m:
        out["self_reported_peak_rss_mib"] = float(m.group(1))
    m = re.search(r"^provider: (.+)$", stdout, re.M)
    if m:
        out["provider"] = m.group(1).strip()
    return out


def compare_latents(a_path: Path, b_path: Path, init_path: Path) -> dict:
    """max |a - b|, relative to max |b| (b = PyTorch), and the same for the update (final -
    initial noise), which the noise does not dilute."""
    import numpy as np
    from safetensors.numpy import load_file

    a = load_file(str(a_path))["latents"].astype(np.float64)
    b = load_file(str(b_path))["latents"].astype(np.float64)
    x0 = load_file(str(init_path))["latents"].astype(np.float64)
    if a.shape != b.shape:
        return {"error": f"shapes differ: hyvideo {list(a.shape)} vs PyTorch {list(b.shape)}"}
    d = np.abs(a - b)
    ua, ub = a - x0, b - x0
    return {
        "max_abs": float(d.max()),
        "rel": float(d.max() / max(np.abs(b).max(), 1e-30)),
        "update_rel": float(np.abs(ua - ub).max() / max(np.abs(ub).max(), 1e-30)),
        "pytorch_max_abs": float(np.abs(b).max()),
        "finite": bool(np.isfinite(a).all() and np.isfinite(b).all()),
    }


# --------------------------------------------------------------------------------------------
# Workers (child processes)
# --------------------------------------------------------------------------------------------


def worker_prepare(args) -> int:
    """Model folder (reused when it already holds MODEL_CONFIG / MODEL_SEED), embeddings, noise."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from safetensors.torch import save_file

    import make_bench_model as MB

    work = Path(args.work)
    model_dir = work / "model"
    stamp = {"config": MODEL_CONFIG, "seed": MODEL_SEED, "init": "make_bench_model.randomize, bf16"}
    stamp_file = model_dir / "denoise_scaling_model.json"
    if not (stamp_file.exists() and json.loads(stamp_file.read_text()) == json.loads(json.dumps(stamp))
            and (model_dir / "transformer" / "config.json").exists()):
        from diffusers import HunyuanVideoTransformer3DModel
        from diffusers.utils import logging as dlog

        if model_dir.exists():
            shutil.rmtree(model_dir)
        tmp = work / ".model.partial"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        torch.manual_seed(0)
        model = HunyuanVideoTransformer3DModel(**MODEL_CONFIG)
        MB.randomize(model, MODEL_SEED)
        dlog.set_verbosity_error()  # "modules that should be kept in float32: []" from .to()
        model.to(torch.bfloat16).save_pretrained(tmp / "transformer", safe_serialization=True)
        C.write_model_index(tmp)
        (tmp / "denoise_scaling_model.json").write_text(json.dumps(stamp, indent=2) + "\n")
        os.replace(tmp, model_dir)
        print(f"prepare: wrote {model_dir} ({sum(p.numel() for p in model.parameters()) / 1e6:.2f} M params)")
    else:
        print(f"prepare: reusing {model_dir}")

    g = torch.Generator("cpu").manual_seed(EMBEDS_SEED)
    L, valid = args.text_len, args.text_valid
    mask = torch.zeros((1, L), dtype=torch.int64)
    mask[:, :valid] = 1
    embeds = {
        "prompt_embeds": torch.randn((1, L, MODEL_CONFIG["text_embed_dim"]), generator=g),
        "prompt_attention_mask": mask,
        "pooled_prompt_embeds": torch.randn((1, MODEL_CONFIG["pooled_projection_dim"]), generator=g),
    }
    save_file(embeds, str(work / "embeds.safetensors"))
    for item in args.shapes.split(","):
        t, h, w = (int(v) for v in item.split("x"))
        x = torch.randn((1, MODEL_CONFIG["in_channels"], t, h, w),
                        generator=torch.Generator("cpu").manual_seed(LATENTS_SEED), dtype=torch.float32)
        save_file({"latents": x}, str(work / f"latents_{t}x{h}x{w}.safetensors"))
    return 0


def worker_pytorch(args) -> int:
    """diffusers' pipeline loop on the transformer alone; writes latents + a JSON report."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    t_start = time.perf_counter()
    import numpy as np
    import torch
    import diffusers
    from diffusers import FlowMatchEulerDiscreteScheduler, HunyuanVideoTransformer3DModel
    from diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video import retrieve_timesteps
    from safetensors.torch import load_file, save_file

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    model = HunyuanVideoTransformer3DModel.from_pretrained(
        str(Path(args.model) / "transformer"), torch_dtype=torch.float32).float().eval()
    e = load_file(args.embeds)
    latents = load_file(args.latents)["latents"].to(torch.float32)
    load_s = time.perf_counter() - t0
    rss_after_load = proc_rss_kib(os.getpid())

    scheduler = FlowMatchEulerDiscreteScheduler(shift=args.flow_shift)
    sigmas = np.linspace(1.0, 0.0, args.steps + 1)[:-1]
    timesteps, _ = retrieve_timesteps(scheduler, args.steps, "cpu", sigmas=sigmas)
    B = latents.shape[0]
    guidance = torch.tensor([args.guidance] * B, dtype=torch.float32) * 1000.0
    step_s = []
    with torch.inference_mode():
        for t in timesteps:
            s0 = time.perf_counter()
            v = model(hidden_states=latents, timestep=t.expand(B).to(latents.dtype),
                      encoder_hidden_states=e["prompt_embeds"],
                      encoder_attention_mask=e["prompt_attention_mask"],
                      pooled_projections=e["pooled_prompt_embeds"], guidance=guidance,
                      return_dict=False)[0]
            latents = scheduler.step(v, t, latents, return_dict=False)[0]
            step_s.append(time.perf_counter() - s0)
            print(f"pytorch: step {len(step_s)}/{args.steps} {step_s[-1]:.3f} s", flush=True)
    save_file({"latents": latents.contiguous()}, args.out)
    report = {
        "step_s": step_s,
        "loop_s": sum(step_s),
        "load_s": load_s,
        "process_start_to_end_s": time.perf_counter() - t_start,
        "rss_after_load_mib": None if rss_after_load is None else rss_after_load / 1024,
        "timesteps": [float(t) for t in timesteps],
        "sigmas": [float(s) for s in scheduler.sigmas],
        "attention_processors": sorted({type(p).__name__ for p in model.attn_processors.values()}),
        "torch_threads": torch.get_num_threads(),
        "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__, "numpy": np.__version__},
    }
    Path(args.report).write_text(json.dumps(report, indent=2) + "\n")
    return 0


# --------------------------------------------------------------------------------------------
# Orchestration
# --------------------------------------------------------------------------------------------


def fmt(v, spec):
    return "-" if v is None else format(v, spec)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="Run: .venv-bench/bin/python benches/native/denoise_scaling.py "
                                        "--threads 2 --steps 3 --json scaling.json "
                                        "(after ./benches/native/setup.sh and cargo build --release)")
    ap.add_argument("--sizes", default=DEFAULT_SIZES,
                    help=f"comma-separated image-token presets {sorted(SIZES)} or latent shapes TxHxW "
                         f"(default {DEFAULT_SIZES})")
    ap.add_argument("--steps", type=int, default=3, help="denoising steps per measurement (default 3)")
    ap.add_argument("--threads", type=int, default=2,
                    help="torch threads and hyvideo --threads (default 2)")
    ap.add_argument("--hyvideo-bin-dir", default=str(C.REPO_ROOT / "target" / "release"),
                    help="directory with hyvideo and hyvideo-export (default target/release)")
    ap.add_argument("--sides", default="pytorch,hyvideo", help="subset of pytorch,hyvideo (default both)")
    ap.add_argument("--json", help="also write the results as JSON here")
    ap.add_argument("--work", help="work directory (default: a temporary one under target/bench-work, "
                                   "removed at the end unless --keep)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary work directory")
    ap.add_argument("--text-len", type=int, default=64, help="text tokens L (default 64)")
    ap.add_argument("--text-valid", type=int, help="valid (mask = 1) text tokens (default: all L)")
    ap.add_argument("--flow-shift", type=float, default=7.0, help="(default 7.0)")
    ap.add_argument("--guidance", type=float, default=6.0, help="embedded guidance scale (default 6.0)")
    ap.add_argument("--mem-limit-gib", type=float,
                    help="per-child RSS limit of the watchdog (both sides; default 75%% of "
                         "MemAvailable at start)")
    ap.add_argument("--as-limit-gib", type=float,
                    help="RLIMIT_AS (address space) of the hyvideo child, 0 = none (default: the "
                         "machine's MemTotal: one allocation larger than the RAM fails at once)")
    ap.add_argument("--min-free-gib", type=float, default=1.0,
                    help="kill the child when the machine's MemAvailable falls below this (default 1.0)")
    ap.add_argument("--timeout-s", type=float, default=3600.0, help="per child (default 3600)")
    ap.add_argument("--parity-tol", type=float, default=1e-4,
                    help="max relative difference of the final latents (default 1e-4)")
    ap.add_argument("--wait-idle", type=float, metavar="PCT",
                    help="before each measurement wait until the machine's CPU use (2 s window) is "
                         "below PCT %% of all cores (default: don't wait)")
    ap.add_argument("--wait-idle-max-s", type=float, default=900.0,
                    help="give up waiting after this long and measure anyway (default 900)")
    ap.add_argument("--pause", type=float, default=1.0, help="idle seconds between measurements (default 1)")
    # internal: the child processes
    ap.add_argument("--worker", choices=["prepare", "pytorch"], help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--embeds", help=argparse.SUPPRESS)
    ap.add_argument("--latents", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--report", help=argparse.SUPPRESS)
    ap.add_argument("--shapes", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.text_valid is None:
        args.text_valid = args.text_len
    if args.worker == "prepare":
        return worker_prepare(args)
    if args.worker == "pytorch":
        return worker_pytorch(args)

    try:
        sizes = parse_sizes(args.sizes)
    except argparse.ArgumentTypeError as e:
        ap.error(str(e))
    sides = [s.strip() for s in args.sides.split(",") if s.strip()]
    if not sides or set(sides) - {"pytorch", "hyvideo"}:
        ap.error("--sides: a subset of pytorch,hyvideo")
    if args.steps < 1 or args.threads < 1:
        ap.error("--steps and --threads must be >= 1")
    if not (0 < args.text_valid <= args.text_len):
        ap.error("--text-valid must be in 1..--text-len")
    bin_dir = Path(args.hyvideo_bin_dir).resolve()
    hyvideo, exporter = bin_dir / "hyvideo", bin_dir / "hyvideo-export"
    if "hyvideo" in sides:
        for b in (hyvideo, exporter):
            if not os.access(b, os.X_OK):
                print(f"error: {b} is missing (cargo build --release, or --hyvideo-bin-dir)", file=sys.stderr)
                return 2
    avail = (meminfo_kib("MemAvailable") or 0) * 1024
    mem_limit = int(args.mem_limit_gib * GIB) if args.mem_limit_gib else int(0.75 * avail)
    min_free = int(args.min_free_gib * GIB)
    as_limit = (int(args.as_limit_gib * GIB) if args.as_limit_gib is not None
                else (meminfo_kib("MemTotal") or 0) * 1024)

    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads),
               TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    work, is_temp = C.make_work_dir(args.work, "denoise_scaling-")
    script = str(Path(__file__).resolve())
    failures: list[str] = []
    report: dict = {
        "bench": "denoise_scaling",
        "command": " ".join([sys.executable, *sys.argv]),
        "machine": C.machine_info(),
        "git_head": C.git_head(),
        "config": MODEL_CONFIG,
        "seeds": {"model": MODEL_SEED, "embeds": EMBEDS_SEED, "latents": LATENTS_SEED},
        "steps": args.steps, "threads": args.threads, "text_len": args.text_len,
        "text_valid": args.text_valid, "flow_shift": args.flow_shift, "guidance": args.guidance,
        "mem_limit_bytes": mem_limit, "as_limit_bytes": as_limit, "min_free_bytes": min_free,
        "time_per_step": "denoising loop time / steps, excluding load (hyvideo: its 'denoise (N s)' line; "
                         "PyTorch: sum of per-step perf_counter times)",
        "peak_rss": "ru_maxrss of the child process (os.wait4), whole process",
        "sizes": [],
    }
    print(f"work dir: {work}")
    print(f"memory guard: RSS watchdog {mem_limit / GIB:.1f} GiB per child (both sides), kill below "
          f"{min_free / GIB:.1f} GiB MemAvailable; hyvideo under RLIMIT_AS "
          + (f"{as_limit / GIB:.1f} GiB" if as_limit else "none"))
    try:
        # ---- prepare: model, embeddings, noise (a child, so this process stays small)
        shapes = ",".join(f"{t}x{h}x{w}" for _, (t, h, w) in sizes)
        t0 = time.perf_counter()
        r = subprocess.run([sys.executable, script, "--worker", "prepare", "--work", str(work),
                            "--text-len", str(args.text_len), "--text-valid", str(args.text_valid),
                            "--shapes", shapes], env=env, cwd=C.REPO_ROOT)
        if r.returncode != 0:
            print("error: preparing the model and inputs failed", file=sys.stderr)
            return 1
        print(f"prepared in {time.perf_counter() - t0:.1f} s")
        model_dir, bundle = work / "model", work / "bundle"

        if "hyvideo" in sides:
            if bundle.exists():
                shutil.rmtree(bundle)
            cmd = [str(exporter), "onnx", "--model", str(model_dir), "--out", str(bundle),
                   "--components", "transformer"]
            print("$ " + " ".join(cmd), flush=True)
            t0 = time.perf_counter()
            r = subprocess.run(cmd, capture_output=True, text=True, cwd=C.REPO_ROOT)
            if r.returncode != 0:
                sys.stderr.write(r.stdout[-2000:] + r.stderr[-4000:])
                print(f"error: export failed (exit {r.returncode}); measuring PyTorch only", file=sys.stderr)
                failures.append(f"hyvideo-export failed (exit {r.returncode})")
                report["export"] = {"error": r.stderr[-4000:]}
                sides = [s for s in sides if s != "hyvideo"]
            else:
                report["export"] = {"export_s": time.perf_counter() - t0, "hyvideo_bin_dir": str(bin_dir)}
                print(f"exported in {time.perf_counter() - t0:.1f} s")

        for tokens, (t, h, w) in sizes:
            tag = f"{t}x{h}x{w}"
            latents = work / f"latents_{tag}.safetensors"
            row = {"image_tokens": tokens, "latent_shape": [1, MODEL_CONFIG["in_channels"], t, h, w],
                   "joint_tokens": tokens + args.text_valid}
            report["sizes"].append(row)
            print(f"\n== {tokens} image tokens (latent {row['latent_shape']}), {args.steps} steps", flush=True)
            if "pytorch" in sides:
                time.sleep(args.pause)
                if args.wait_idle is not None:
                    wait_idle(args.wait_idle / 100, args.wait_idle_max_s)
                out = work / f"pytorch_{tag}.safetensors"
                rep = work / f"pytorch_{tag}.json"
                for p in (out, rep):
                    p.unlink(missing_ok=True)
                cmd = [sys.executable, script, "--worker", "pytorch", "--model", str(model_dir),
                       "--embeds", str(work / "embeds.safetensors"), "--latents", str(latents),
                       "--out", str(out), "--report", str(rep), "--steps", str(args.steps),
                       "--threads", str(args.threads), "--flow-shift", str(args.flow_shift),
                       "--guidance", str(args.guidance)]
                res = run_guarded(cmd, work / "logs" / f"pytorch_{tag}", as_limit=0, rss_limit=mem_limit,
                                  min_free=min_free, timeout_s=args.timeout_s, env=env, cwd=C.REPO_ROOT)
                if res["status"] == "ok" and rep.exists():
                    res.update(json.loads(rep.read_text()))
                    res["per_step_s"] = res["loop_s"] / args.steps
                elif res["status"] == "ok":
                    res.update(status="error", detail="the worker wrote no report")
                row["pytorch"] = res
                print(f"pytorch: {res['status']}"
                      + (f", {res['per_step_s']:.3f} s/step (steps {', '.join(f'{x:.3f}' for x in res['step_s'])}), "
                         f"load {res['load_s']:.2f} s, peak RSS {res['peak_rss_mib']:.0f} MiB"
                         if res["status"] == "ok" else f": {res.get('detail')}")
                      + other_load(res), flush=True)
                if res["status"] != "ok":
                    failures.append(f"{tokens} tokens, PyTorch: {res['status']}: {res.get('detail')}")
            if "hyvideo" in sides:
                time.sleep(args.pause)
                if args.wait_idle is not None:
                    wait_idle(args.wait_idle / 100, args.wait_idle_max_s)
                out = work / f"hyvideo_{tag}.safetensors"
                out.unlink(missing_ok=True)
                cmd = [str(hyvideo), "denoise", "--bundle", str(bundle),
                       "--prompt-embeds", str(work / "embeds.safetensors"), "--latents", str(latents),
                       "--output-latents", str(out), "--infer-steps", str(args.steps),
                       "--embedded-cfg-scale", str(args.guidance), "--flow-shift", str(args.flow_shift),
                       "--flow-reverse", "--threads", str(args.threads)]
                res = run_guarded(cmd, work / "logs" / f"hyvideo_{tag}", as_limit=as_limit, rss_limit=mem_limit,
                                  min_free=min_free, timeout_s=args.timeout_s, env=env, cwd=C.REPO_ROOT)
                if res["status"] == "ok":
                    res.update(parse_hyvideo(res["stdout_tail"]))
                    if "loop_s" in res:
                        res["per_step_s"] = res["loop_s"] / args.steps
                    else:
                        res.update(status="error", detail="no 'denoise (N s)' line in hyvideo's output")
                row["hyvideo"] = res
                print(f"hyvideo: {res['status']}"
                      + (f", {res['per_step_s']:.3f} s/step (loop {res['loop_s']:.3f} s), "
                         f"load {res.get('load_s', float('nan')):.2f} s, peak RSS {res['peak_rss_mib']:.0f} MiB"
                         if res["status"] == "ok" else f": {res.get('detail')}")
                      + other_load(res), flush=True)
                if res["status"] != "ok":
                    failures.append(f"{tokens} tokens, hyvideo: {res['status']}: {res.get('detail')}")
            pt, hy = row.get("pytorch", {}), row.get("hyvideo", {})
            if pt.get("status") == "ok" and hy.get("status") == "ok":
                row["time_ratio"] = hy["per_step_s"] / pt["per_step_s"]
                row["rss_ratio"] = hy["peak_rss_mib"] / pt["peak_rss_mib"]
                par = compare_latents(work / f"hyvideo_{tag}.safetensors", work / f"pytorch_{tag}.safetensors",
                                      latents)
                row["parity"] = par
                if "error" in par or not par["finite"] or par["rel"] > args.parity_tol:
                    failures.append(f"{tokens} tokens: final latents disagree: {par}")
    finally:
        if is_temp and not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    print_report(report, args)
    report["failures"] = failures
    for f in failures:
        print(f"error: {f}", file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=str) + "\n")
        print(f"wrote {args.json}")
    return 1 if failures else 0


def other_load(res: dict) -> str:
    f = res.get("other_cpu_fraction")
    return "" if f is None else f" [other processes used {100 * f:.0f} % of the CPUs meanwhile]"


def cell(side: dict, key: str, spec: str) -> str:
    if not side:
        return "-"
    if side.get("status") != "ok":
        return side.get("status", "error")
    return fmt(side.get(key), spec)


def print_report(report: dict, args) -> None:
    rows = []
    for r in report["sizes"]:
        pt, hy = r.get("pytorch", {}), r.get("hyvideo", {})
        par = r.get("parity", {})
        rows.append([
            f"{r['image_tokens']:,}",
            cell(pt, "per_step_s", ".3f"), cell(hy, "per_step_s", ".3f"),
            fmt(r.get("time_ratio"), ".2f"),
            cell(pt, "peak_rss_mib", ".0f"), cell(hy, "peak_rss_mib", ".0f"),
            fmt(r.get("rss_ratio"), ".2f"),
            fmt(par.get("max_abs"), ".2e"), fmt(par.get("rel"), ".2e"),
        ])
    print()
    print(f"Denoising steps, transformer only: 6 heads x 64 (hidden 384), {MODEL_CONFIG['num_layers']} dual + "
          f"{MODEL_CONFIG['num_single_layers']} single + {MODEL_CONFIG['num_refiner_layers']} refiner blocks, "
          f"{args.text_valid} text tokens, fp32, CPU, {args.threads} thread(s), {args.steps} steps "
          f"(s/step = loop / steps, load excluded)")
    C.print_table(["image tokens", "PyTorch s/step", "hyvideo s/step", "ratio", "PyTorch peak RSS MiB",
                   "hyvideo peak RSS MiB", "ratio", "latents max abs diff", "rel"], rows)

    # Details: what each failed cell means, PyTorch's first step vs the rest, load times.
    for r in report["sizes"]:
        for side in ("pytorch", "hyvideo"):
            s = r.get(side, {})
            if s and s.get("status") != "ok":
                print(f"{r['image_tokens']:,} tokens, {side}: {s.get('status')}: {s.get('detail')}")
    detail = []
    for r in report["sizes"]:
        pt, hy = r.get("pytorch", {}), r.get("hyvideo", {})
        st = pt.get("step_s") or []
        detail.append([
            f"{r['image_tokens']:,}", "x".join(str(v) for v in r["latent_shape"][2:]),
            fmt(st[0], ".3f") if st else "-",
            fmt(statistics.median(st[1:]), ".3f") if len(st) > 1 else "-",
            fmt(pt.get("load_s"), ".2f"), fmt(pt.get("rss_after_load_mib"), ".0f"), fmt(hy.get("load_s"), ".2f"),
            fmt(hy.get("self_reported_peak_rss_mib"), ".0f"),
            fmt(r.get("parity", {}).get("update_rel"), ".2e"),
            "/".join(fmt(100 * x["other_cpu_fraction"], ".0f") if "other_cpu_fraction" in x else "-"
                     for x in (pt, hy)),
        ])
    print()
    C.print_table(["image tokens", "latent T x H x W", "PyTorch step 1 s", "PyTorch later steps s (median)",
                   "PyTorch load s", "PyTorch RSS after load MiB", "hyvideo load s", "hyvideo self-reported peak RSS MiB",
                   "rel diff of (final - noise)", "other CPU use % (PyTorch/hyvideo run)"], detail)

    # The goals, where both sides ran.
    goals = {}
    for r in report["sizes"]:
        if "time_ratio" in r:
            goals[f"{r['image_tokens']} tokens: time <= {GOAL_TIME}x PyTorch"] = r["time_ratio"] <= GOAL_TIME
            goals[f"{r['image_tokens']} tokens: peak RSS <= {GOAL_MEMORY}x PyTorch"] = r["rss_ratio"] <= GOAL_MEMORY
        else:
            hy = r.get("hyvideo", {})
            if hy and hy.get("status") != "ok":
                goals[f"{r['image_tokens']} tokens: hyvideo runs"] = False
    ok = [(r["image_tokens"], r["hyvideo"]["peak_rss_mib"]) for r in report["sizes"]
          if r.get("hyvideo", {}).get("status") == "ok"]
    ok.sort()
    if len(ok) >= 3:
        slopes = [(b[1] - a[1]) / (b[0] - a[0]) for a, b in zip(ok, ok[1:])]
        report["hyvideo_rss_slopes_mib_per_token"] = slopes
        goals[f"hyvideo memory linear in tokens (last slope <= {GOAL_LINEAR}x first; "
              f"{', '.join(f'{1000 * s:.1f}' for s in slopes)} MiB per 1k tokens)"] = \
            slopes[-1] <= GOAL_LINEAR * max(slopes[0], 1e-9)
    report["goals"] = goals
    if goals:
        print()
    for k, v in goals.items():
        print(f"{'PASS' if v else 'FAIL'}: {k}")


if __name__ == "__main__":
    sys.exit(main())
