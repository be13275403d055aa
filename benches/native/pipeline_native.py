#!/usr/bin/env python3
"""The native (PyTorch / diffusers) side of `hyvideo bench --native`: per-stage latency of
diffusers' `HunyuanVideoPipeline` on CPU in fp32, and the stage outputs for comparison.

Loads a diffusers-format pipeline folder (`make_bench_model.py`'s, or any HunyuanVideo folder)
with `HunyuanVideoPipeline.from_pretrained(dtype=torch.float32)` and runs the generation of
`bench_settings.json` (prompt, size, frames, steps, embedded guidance, flow shift, seed) with
`torch.set_num_threads(--threads)`, under `torch.inference_mode()`, VAE with `enable_tiling()`
(diffusers' default tile sizes; frame-wise temporal tiling is on by default). Stages, each timed
`--runs` times after `--warmup` untimed runs:

  text_encoders    pipe.encode_prompt(prompt, max_sequence_length=256)          (Llama + CLIP)
  transformer_step one pipe.transformer(...) forward with the pipeline's step-0 inputs
  denoise_loop     pipe(prompt_embeds=..., pooled_prompt_embeds=..., prompt_attention_mask=...,
                        output_type="latent")                       (all steps + scheduler)
  vae_decode       pipe.vae.decode(final_latents / scaling_factor)
  end_to_end       pipe(prompt, output_type="pt")                   (prompt -> frames)

Writes `--out` (safetensors, the stage outputs) and `--json` (timings, peak RSS, settings,
versions); prints a min/median/max table. The output contract is in benches/native/README.md
("pipeline_native.py"); `hyvideo bench --native` reads both files. From the repo root:

    ./benches/native/setup.sh   # once: the bench venv .venv-bench/
    .venv-bench/bin/python benches/native/pipeline_native.py --model /tmp/benchmodel --threads 2 \\
        --out native.safetensors --json native.json

Exit status: 0 on success, 1 if a stage failed or produced non-finite values, 2 on a usage error
(missing or malformed model folder or settings).
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import argparse  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

STAGES = ("text_encoders", "transformer_step", "denoise_loop", "vae_decode", "end_to_end")
OUTPUTS = ("prompt_embeds", "prompt_attention_mask", "pooled_prompt_embeds", "init_latents",
           "step_sample", "final_latents", "decoded")
REQUIRED_SETTINGS = ("prompt", "height", "width", "frames", "steps", "embedded_guidance_scale",
                     "flow_shift", "seed")
SETTINGS_DEFAULTS = dict(negative_prompt="", true_cfg_scale=1.0, flow_reverse=False, max_sequence_length=256)
# The transformer (the denoising loop) should be at least this share of the end-to-end time, as
# at 720p x 129 frames x 50 steps; printed as a check of the bench configuration.
TRANSFORMER_SHARE_GOAL = 0.85


class UsageError(Exception):
    pass


# --------------------------------------------------------------------------------------------
# Settings
# --------------------------------------------------------------------------------------------


def load_settings(path: Path) -> dict:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise UsageError(f"cannot read settings {path}: {e}") from e
    except ValueError as e:
        raise UsageError(f"settings {path} is not valid JSON: {e}") from e
    if not isinstance(raw, dict):
        raise UsageError(f"settings {path}: expected a JSON object")
    missing = [k for k in REQUIRED_SETTINGS if k not in raw]
    if missing:
        raise UsageError(f"settings {path}: missing {', '.join(missing)}")
    s = dict(SETTINGS_DEFAULTS)
    s.update({k: v for k, v in raw.items() if k != "notes"})
    for k in ("height", "width", "frames", "steps", "seed", "max_sequence_length"):
        if not isinstance(s[k], int) or isinstance(s[k], bool):
            raise UsageError(f"settings {path}: {k} must be an integer, got {s[k]!r}")
    if s["height"] <= 0 or s["width"] <= 0 or s["height"] % 16 or s["width"] % 16:
        raise UsageError(f"settings {path}: height and width must be positive multiples of 16, "
                         f"got {s['height']}x{s['width']}")
    if s["frames"] < 1 or (s["frames"] - 1) % 4:
        raise UsageError(f"settings {path}: frames must be 4k+1, got {s['frames']}")
    if s["steps"] < 1:
        raise UsageError(f"settings {path}: steps must be >= 1, got {s['steps']}")
    if not isinstance(s["prompt"], str) or not s["prompt"].strip():
        raise UsageError(f"settings {path}: prompt must be a non-empty string")
    if s["flow_reverse"]:
        raise UsageError(f"settings {path}: flow_reverse=true is not what diffusers' pipeline runs")
    return s


# --------------------------------------------------------------------------------------------
# Memory
# --------------------------------------------------------------------------------------------


class RssSampler:
    """Samples this process's RSS every `interval` s in a thread (torch releases the GIL in its
    kernels), so each stage's peak can be read; the process-wide peak comes from getrusage."""

    def __init__(self, interval: float = 0.01):
        import psutil

        self._proc = psutil.Process()
        self._interval = interval
        self._peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def _run(self):
        while not self._stop.is_set():
            rss = self._proc.memory_info().rss
            if rss > self._peak:
                self._peak = rss
            self._stop.wait(self._interval)

    def reset(self) -> None:
        self._peak = self._proc.memory_info().rss

    def peak(self) -> int:
        return max(self._peak, self._proc.memory_info().rss)


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


# --------------------------------------------------------------------------------------------
# Outputs
# --------------------------------------------------------------------------------------------


def save_outputs(path: Path, tensors: dict, metadata: dict) -> None:
    """f32 tensors (int64 masks), written to `<path>.partial` and renamed."""
    import torch
    from safetensors.torch import save_file

    clean = {}
    for k in OUTPUTS:
        v = tensors[k].detach().cpu().contiguous()
        v = v.long() if k == "prompt_attention_mask" else v.float()
        clean[k] = v.clone()
    tmp = path.with_name(path.name + ".partial")
    save_file(clean, str(tmp), metadata={k: json.dumps(v, sort_keys=True) for k, v in sorted(metadata.items())})
    os.replace(tmp, path)


def write_json(path: Path, obj: dict) -> None:
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="diffusers-format HunyuanVideo pipeline folder")
    ap.add_argument("--settings", help="generation settings JSON (default <model>/bench_settings.json)")
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2)")
    ap.add_argument("--device", default="cpu",
                    help="torch device for the native path: cpu (default) or cuda[:N] — what "
                         "`hyvideo bench --backend cuda|tensorrt --native` passes on a GPU machine")
    ap.add_argument("--runs", type=int, default=3, help="timed runs per stage (default 3)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed warm-up runs per stage (default 1)")
    ap.add_argument("--out", required=True, help="stage outputs, safetensors")
    ap.add_argument("--json", required=True, help="timings, peak RSS, settings, versions")
    ap.add_argument("--stages", default=",".join(STAGES),
                    help="comma-separated subset of the stages to time (default all; the outputs are "
                         "always computed once)")
    args = ap.parse_args(argv)
    if args.threads < 1:
        ap.error("--threads must be >= 1")
    if args.runs < 1:
        ap.error("--runs must be >= 1")
    if args.warmup < 0:
        ap.error("--warmup must be >= 0")
    args.stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    bad = sorted(set(args.stages) - set(STAGES))
    if bad or not args.stages:
        ap.error(f"--stages: unknown {bad}; choose from {', '.join(STAGES)}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    model = Path(args.model).resolve()
    settings_path = Path(args.settings).resolve() if args.settings else model / "bench_settings.json"
    try:
        if not (model / "model_index.json").is_file():
            raise UsageError(f"--model {model}: no model_index.json (not a diffusers pipeline folder)")
        s = load_settings(settings_path)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    # Before torch spins up its pools.
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    os.environ["MKL_NUM_THREADS"] = str(args.threads)
    import diffusers
    import numpy as np
    import safetensors
    import torch
    import transformers
    from diffusers import FlowMatchEulerDiscreteScheduler, HunyuanVideoPipeline
    from diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video import retrieve_timesteps
    from diffusers.utils.torch_utils import randn_tensor

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(f"error: --device {args.device}: torch sees no CUDA device", file=sys.stderr)
        return 2

    def sync():
        # GPU work is asynchronous: stop the clock only when it is done.
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    versions = {"torch": torch.__version__, "diffusers": diffusers.__version__,
                "transformers": transformers.__version__, "safetensors": safetensors.__version__,
                "numpy": np.__version__, "python": sys.version.split()[0]}
    print(f"model: {model}")
    print(f"settings: {settings_path}: {s['height']}x{s['width']} px, {s['frames']} frames, {s['steps']} steps, "
          f"embedded guidance {s['embedded_guidance_scale']}, shift {s['flow_shift']}, seed {s['seed']}")
    print(f"threads: {args.threads} (torch intra-op {torch.get_num_threads()}); {args.runs} timed runs after "
          f"{args.warmup} warm-up per stage; " + ", ".join(f"{k} {v}" for k, v in versions.items()))

    t0 = time.perf_counter()
    try:
        pipe = HunyuanVideoPipeline.from_pretrained(str(model), dtype=torch.float32)
    except Exception as e:  # noqa: BLE001 - report any load failure as a usage error on the folder
        print(f"error: cannot load the pipeline from {model}: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    load_s = time.perf_counter() - t0
    pipe.set_progress_bar_config(disable=True)
    pipe.to(device)
    for name in ("transformer", "vae", "text_encoder", "text_encoder_2"):
        getattr(pipe, name).float().eval()
    if float(pipe.scheduler.config.shift) != float(s["flow_shift"]):
        pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config, shift=float(s["flow_shift"]))
    # Spatial tiling with diffusers' default sizes (256 px tiles, 192 px stride); frame-wise
    # decoding (4 latent frames per tile, stride 3) is on by default. A `vae_tiling` object in the
    # settings overrides the sizes (pixels) and switches either kind off.
    vt = s.get("vae_tiling") or {}
    pipe.vae.enable_tiling(**{k: int(vt[k]) for k in (
        "tile_sample_min_height", "tile_sample_min_width", "tile_sample_min_num_frames",
        "tile_sample_stride_height", "tile_sample_stride_width", "tile_sample_stride_num_frames") if k in vt})
    pipe.vae.use_tiling = bool(vt.get("spatial", True))
    pipe.vae.use_framewise_decoding = bool(vt.get("framewise", True))
    vae_settings = {k: getattr(pipe.vae, k) for k in (
        "use_tiling", "use_framewise_decoding", "tile_sample_min_height", "tile_sample_min_width",
        "tile_sample_stride_height", "tile_sample_stride_width", "tile_sample_min_num_frames",
        "tile_sample_stride_num_frames")}
    sf = float(pipe.vae.config.scaling_factor)
    print(f"loaded in {load_s:.1f} s; vae scaling_factor {sf}; vae tiling {vae_settings}")

    prompt, steps, seed = s["prompt"], s["steps"], s["seed"]
    msl = s["max_sequence_length"]
    guidance_scale = float(s["embedded_guidance_scale"])
    cfg_kwargs = {}
    if float(s["true_cfg_scale"]) > 1.0:
        cfg_kwargs = dict(negative_prompt=s["negative_prompt"] or None, true_cfg_scale=float(s["true_cfg_scale"]))

    def gen():
        return torch.Generator("cpu").manual_seed(seed)

    outputs: dict = {}
    state: dict = {}

    # ---- stage callables (each returns its output; the last call's output is kept)
    def run_text():
        pe, pooled, pm = pipe.encode_prompt(prompt, max_sequence_length=msl, device=device)
        return pe, pooled, pm

    def run_step():
        return pipe.transformer(hidden_states=state["init_latents"], timestep=state["timestep0"],
                                encoder_hidden_states=state["prompt_embeds"],
                                encoder_attention_mask=state["prompt_attention_mask"],
                                pooled_projections=state["pooled_prompt_embeds"], guidance=state["guidance"],
                                return_dict=False)[0]

    def run_loop():
        kw = dict(cfg_kwargs)
        if cfg_kwargs:
            kw.update(negative_prompt_embeds=state["neg"][0], negative_pooled_prompt_embeds=state["neg"][1],
                      negative_prompt_attention_mask=state["neg"][2])
            kw.pop("negative_prompt")
        return pipe(prompt_embeds=state["prompt_embeds"], pooled_prompt_embeds=state["pooled_prompt_embeds"],
                    prompt_attention_mask=state["prompt_attention_mask"], height=s["height"], width=s["width"],
                    num_frames=s["frames"], num_inference_steps=steps, guidance_scale=guidance_scale,
                    generator=gen(), output_type="latent", max_sequence_length=msl, return_dict=False, **kw)[0]

    def run_decode():
        return pipe.vae.decode(state["final_latents"] / sf, return_dict=False)[0]

    # end_to_end runs are split into their parts in the same run: encode_prompt and vae.decode are
    # wrapped (timing only) and the step callback marks the end of the last step, so the
    # transformer's share of the native time does not depend on comparing separate stage runs.
    e2e_parts: list[dict] = []

    def run_e2e():
        marks: dict = {}
        enc, dec = pipe.encode_prompt, pipe.vae.decode

        def timed_encode(*a, **k):
            t = time.perf_counter()
            r = enc(*a, **k)
            marks["text_end"] = time.perf_counter()
            marks["text"] = marks.get("text", 0.0) + marks["text_end"] - t  # + the negative prompt's (CFG)
            return r

        def timed_decode(*a, **k):
            t = time.perf_counter()
            r = dec(*a, **k)
            marks["decode"] = time.perf_counter() - t
            return r

        def step_end(_pipe, i, _t, _kw):
            marks["loop_end"] = time.perf_counter()
            return {}

        pipe.encode_prompt, pipe.vae.decode = timed_encode, timed_decode
        try:
            t0 = time.perf_counter()
            out = pipe(prompt=prompt, height=s["height"], width=s["width"], num_frames=s["frames"],
                       num_inference_steps=steps, guidance_scale=guidance_scale, generator=gen(), output_type="pt",
                       max_sequence_length=msl, return_dict=False, callback_on_step_end=step_end, **cfg_kwargs)[0]
            total = time.perf_counter() - t0
        finally:
            del pipe.encode_prompt  # back to the class's method
            del pipe.vae.decode
        parts = {"text_encoders": marks["text"], "denoise_loop": marks["loop_end"] - marks["text_end"],
                 "vae_decode": marks["decode"]}
        parts["other"] = total - sum(parts.values())
        parts["total"] = total
        e2e_parts.append(parts)
        return out

    stage_times: dict[str, list[float]] = {}
    stage_rss: dict[str, int] = {}
    failures: list[str] = []

    def timed(name: str, fn):
        """Warm-up + timed runs (seconds); returns the last output. A stage not selected with
        --stages runs once untimed (its output is still needed)."""
        sampler.reset()
        if name not in args.stages:
            with torch.inference_mode():
                return fn()
        out = None
        times = []
        with torch.inference_mode():
            for _ in range(args.warmup):
                out = fn()
            sync()
            for _ in range(args.runs):
                t = time.perf_counter()
                out = fn()
                sync()
                times.append(time.perf_counter() - t)
        stage_times[name] = times
        stage_rss[name] = sampler.peak()
        print(f"  {name:<16} " + " ".join(f"{x:.3f}" for x in times) + " s", flush=True)
        return out

    print("timing (seconds per run):", flush=True)
    with RssSampler() as sampler:
        try:
            pe, pooled, pm = timed("text_encoders", run_text)
            outputs.update(prompt_embeds=pe, pooled_prompt_embeds=pooled, prompt_attention_mask=pm)
            state.update(prompt_embeds=pe, pooled_prompt_embeds=pooled, prompt_attention_mask=pm)
            if cfg_kwargs:
                with torch.inference_mode():
                    state["neg"] = pipe.encode_prompt(s["negative_prompt"], max_sequence_length=msl, device=device)

            # The pipeline's step-0 inputs, exactly as __call__ makes them.
            latent_shape = (1, pipe.transformer.config.in_channels, (s["frames"] - 1) // pipe.vae_scale_factor_temporal + 1,
                            s["height"] // pipe.vae_scale_factor_spatial, s["width"] // pipe.vae_scale_factor_spatial)
            init = randn_tensor(latent_shape, generator=gen(), device=device, dtype=torch.float32)
            sigmas = np.linspace(1.0, 0.0, steps + 1)[:-1]
            timesteps, _ = retrieve_timesteps(pipe.scheduler, steps, device, sigmas=sigmas)
            state.update(init_latents=init, timestep0=timesteps[:1].expand(1).to(torch.float32),
                         guidance=torch.tensor([guidance_scale], dtype=torch.float32, device=device) * 1000.0)
            outputs["init_latents"] = init
            schedule = {"timesteps": [float(t) for t in timesteps],
                        "sigmas": [float(x) for x in pipe.scheduler.sigmas]}

            outputs["step_sample"] = timed("transformer_step", run_step)
            final = timed("denoise_loop", run_loop)
            outputs["final_latents"] = state["final_latents"] = final
            outputs["decoded"] = timed("vae_decode", run_decode)
            video = timed("end_to_end", run_e2e)  # [B, F, 3, H, W] in [0, 1]
        except Exception as e:  # noqa: BLE001
            import traceback

            traceback.print_exc()
            print(f"error: a stage failed: {type(e).__name__}: {e}", file=sys.stderr)
            return 1

    # ---- consistency and sanity
    consistency = {}
    with torch.inference_mode():
        frames01 = (outputs["decoded"] / 2 + 0.5).clamp(0, 1)
        consistency["end_to_end_video_vs_decoded_max_abs"] = float(
            (video.permute(0, 2, 1, 3, 4) - frames01).abs().max())
    for k in OUTPUTS:
        v = outputs[k]
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            failures.append(f"{k} has non-finite values")
    expected_decoded = [1, 3, s["frames"], s["height"], s["width"]]
    if list(outputs["decoded"].shape) != expected_decoded:
        failures.append(f"decoded shape {list(outputs['decoded'].shape)} != {expected_decoded}")

    peak = peak_rss_bytes()
    settings_out = {k: v for k, v in s.items()}
    settings_out["vae"] = vae_settings
    settings_out["scaling_factor"] = sf
    settings_out["latent_shape"] = list(outputs["init_latents"].shape)
    settings_out["dtype"] = "float32"
    settings_out["device"] = str(device)
    settings_out["schedule"] = schedule

    med = {k: statistics.median(v) for k, v in stage_times.items()}
    # The end_to_end runs' own split (the timed ones: the last --runs entries).
    timed_parts = e2e_parts[-args.runs:] if "end_to_end" in stage_times else e2e_parts[-1:]
    breakdown = {k: [p[k] for p in timed_parts] for k in ("text_encoders", "denoise_loop", "vae_decode", "other")}
    share = statistics.median(p["denoise_loop"] / p["total"] for p in timed_parts)
    share_across = med["denoise_loop"] / med["end_to_end"] if "denoise_loop" in med and "end_to_end" in med else None

    report = {
        "stages": stage_times,
        "peak_rss_mib": peak / C.MIB,
        "stage_peak_rss_mib": {k: v / C.MIB for k, v in stage_rss.items()},
        "settings": settings_out,
        "versions": versions,
        "threads": args.threads,
        "runs": args.runs,
        "warmup": args.warmup,
        "model": str(model),
        "settings_file": str(settings_path),
        "load_s": load_s,
        "end_to_end_breakdown": breakdown,
        "transformer_share_of_end_to_end": share,
        "transformer_share_across_stages": share_across,
        "outputs": {k: {"shape": list(outputs[k].shape), "dtype": "int64" if k == "prompt_attention_mask" else "float32"}
                    for k in OUTPUTS},
        "consistency": consistency,
        "machine": C.machine_info(),
        "command": " ".join([sys.executable, *sys.argv]),
        "failures": failures,
    }

    meta = {"settings": {k: v for k, v in s.items()}, "versions": versions, "threads": args.threads,
            "layout": {"decoded": "[B,3,F,H,W] = vae.decode(final_latents / scaling_factor), decoder range ~[-1,1]",
                       "final_latents": "before division by scaling_factor",
                       "step_sample": "transformer output at step 0 (init_latents, timesteps[0], guidance*1000)",
                       "prompt_embeds": "[B,256,D] Llama hidden_states[-3] after crop_start",
                       "prompt_attention_mask": "int64 [B,256], 1 = token"}}
    save_outputs(Path(args.out), outputs, meta)
    write_json(Path(args.json), report)

    # ---- table
    print()
    print(f"native (diffusers {diffusers.__version__}, torch {torch.__version__}, CPU fp32, {args.threads} threads), "
          f"{s['height']}x{s['width']} px x {s['frames']} frames, {steps} steps; "
          f"{args.runs} timed runs after {args.warmup} warm-up")
    rows = []
    for k in STAGES:
        if k not in stage_times:
            continue
        v = stage_times[k]
        rows.append([k, f"{min(v):.3f}", f"{statistics.median(v):.3f}", f"{max(v):.3f}",
                     f"{stage_rss[k] / C.MIB:.0f}"])
    C.print_table(["stage", "min s", "median s", "max s", "peak RSS MiB"], rows)
    print(f"peak RSS of the process: {peak / C.MIB:.0f} MiB")
    e2e_med = statistics.median(p["total"] for p in timed_parts)
    print(f"end_to_end split (medians of its own runs): " + ", ".join(
        f"{k} {statistics.median(v):.3f} s ({100 * statistics.median(v) / e2e_med:.1f} %)" for k, v in breakdown.items()))
    ok = share >= TRANSFORMER_SHARE_GOAL
    print(f"transformer share of end-to-end (denoising loop inside the end_to_end runs): {100 * share:.1f} % "
          f"({'PASS' if ok else 'FAIL'}: >= {100 * TRANSFORMER_SHARE_GOAL:.0f} %)")
    if share_across is not None:
        print(f"  across stages: denoise_loop / end_to_end medians {100 * share_across:.1f} %"
              + (f"; forwards x transformer_step / end_to_end "
                 f"{100 * steps * (2 if cfg_kwargs else 1) * med['transformer_step'] / med['end_to_end']:.1f} %"
                 if "transformer_step" in med else ""))
    print(f"end_to_end video vs (decoded/2+0.5).clamp(0,1): max|diff| "
          f"{consistency['end_to_end_video_vs_decoded_max_abs']:.2e}")
    print(f"wrote {args.out} and {args.json}")
    for f in failures:
        print(f"error: {f}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
