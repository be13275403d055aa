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

An image-to-video folder (transformer `image_condition_type` token_replace or latent_concat, e.g.
`make_bench_i2v_model.py`'s) runs `HunyuanVideoImageToVideoPipeline` instead, with the settings'
`image` (required there, refused for text-to-video) and one stage more:

  text_encoders    pipe.encode_prompt(image=..., prompt=..., image_embed_interleave=4|2)
                                                      (CLIPImageProcessor, LLaVA vision + Llama, CLIP)
  image_encode     vae.encode(video_processor.preprocess(image, h, w).unsqueeze(2))
                        .latent_dist.mode() * scaling_factor
  transformer_step one forward with the pipeline's step-0 model input (the image-mixed latents,
                        token_replace's image latent on frame 0 / latent_concat's [x; image; mask])
  denoise_loop     pipe(image=..., prompt_embeds=..., output_type="latent") minus the image encode
                        it runs inside (timed in the same call): the call always VAE-encodes the image
  vae_decode       pipe.vae.decode(all final latent frames / scaling_factor)
  end_to_end       pipe(image=..., prompt=..., output_type="pt") (latent_concat: from the 5th frame)

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
# Image-to-video (HunyuanVideoImageToVideoPipeline): one stage and two outputs more.
I2V_STAGES = ("text_encoders", "image_encode", "transformer_step", "denoise_loop", "vae_decode", "end_to_end")
I2V_OUTPUTS = ("prompt_embeds", "prompt_attention_mask", "pooled_prompt_embeds", "image_latents", "init_latents",
               "step_sample", "final_latents", "final_latents_all", "decoded")
# The pipeline's image_embed_interleave default per image_condition_type.
I2V_INTERLEAVE = {"token_replace": 4, "latent_concat": 2}
# latent_concat's video starts at this decoded frame (one latent frame's worth dropped).
LATENT_CONCAT_DROPPED_FRAMES = 4
# The transformer (the denoising loop) should be at least this share of the end-to-end time, as
# at 720p x 129 frames x 50 steps; printed as a check of the bench configuration.
TRANSFORMER_SHARE_GOAL = 0.85


class UsageError(Exception):
    pass


# --------------------------------------------------------------------------------------------
# Settings
# --------------------------------------------------------------------------------------------


def load_settings(path: Path, image_to_video: bool = False) -> dict:
    """The settings; an image-to-video model needs `image` (a path, relative to the settings file's
    folder), a text-to-video one refuses it. `image` comes back absolute."""
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
    image = s.get("image")
    if image_to_video:
        if not isinstance(image, str) or not image:
            raise UsageError(f"settings {path}: the model is image-to-video: give the input image as \"image\"")
        resolved = (path.parent / image).resolve()
        if not resolved.is_file():
            raise UsageError(f"settings {path}: image {image!r} ({resolved}) is not a file")
        s["image"] = str(resolved)
    elif image is not None:
        raise UsageError(f"settings {path}: the model is text-to-video: it takes no \"image\" (got {image!r})")
    else:
        s.pop("image", None)
    return s


def image_condition_type(model: Path) -> str | None:
    """The transformer's image_condition_type (None: text-to-video), as hyvideo reads a bundle."""
    try:
        cfg = json.loads((model / "transformer" / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UsageError(f"--model {model}: cannot read transformer/config.json: {e}") from e
    kind = cfg.get("image_condition_type")
    if kind not in (None, *I2V_INTERLEAVE):
        raise UsageError(f"--model {model}: image_condition_type {kind!r} is not one diffusers runs")
    return kind


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


def save_outputs(path: Path, tensors: dict, metadata: dict, keys=OUTPUTS) -> None:
    """f32 tensors (int64 masks), written to `<path>.partial` and renamed."""
    from safetensors.torch import save_file

    clean = {}
    for k in keys:
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
    ap.add_argument("--stages",
                    help="comma-separated subset of the stages to time (default all; the outputs are "
                         "always computed once; image_encode is image-to-video's)")
    args = ap.parse_args(argv)
    if args.threads < 1:
        ap.error("--threads must be >= 1")
    if args.runs < 1:
        ap.error("--runs must be >= 1")
    if args.warmup < 0:
        ap.error("--warmup must be >= 0")
    if args.stages is None:
        return args  # all of the pipeline's stages
    args.stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    bad = sorted(set(args.stages) - set(I2V_STAGES))
    if bad or not args.stages:
        ap.error(f"--stages: unknown {bad}; choose from {', '.join(I2V_STAGES)} (image_encode: image-to-video)")
    return args


class Stages:
    """Times the stages: each `--warmup` untimed + `--runs` timed runs under inference mode, the RSS
    peak sampled during each; a stage not selected with --stages runs once untimed (its output is
    still needed)."""

    def __init__(self, args, sync, sampler):
        self.args, self.sync, self.sampler = args, sync, sampler
        self.times: dict[str, list[float]] = {}
        self.rss: dict[str, int] = {}

    def timed(self, name: str, fn, own_time: bool = False):
        """Returns the last output. With `own_time` `fn` returns (output, seconds) and those seconds
        are the run's time (a stage timed inside a larger call)."""
        import torch

        self.sampler.reset()
        if name not in self.args.stages:
            with torch.inference_mode():
                out = fn()
            return out[0] if own_time else out
        out = None
        times = []
        with torch.inference_mode():
            for _ in range(self.args.warmup):
                out = fn()
            self.sync()
            for _ in range(self.args.runs):
                t = time.perf_counter()
                out = fn()
                self.sync()
                wall = time.perf_counter() - t
                if own_time:
                    out, secs = out
                    times.append(secs)
                else:
                    times.append(wall)
        self.times[name] = times
        self.rss[name] = self.sampler.peak()
        print(f"  {name:<16} " + " ".join(f"{x:.3f}" for x in times) + " s", flush=True)
        return out


class Marks:
    """Timing-only wrappers around a pipeline's methods inside one `__call__` (the end_to_end runs'
    own split): `wrap(obj, "method", "part")` adds each call's seconds to `part` and records when
    the last call ended; `restore()` puts the methods back."""

    def __init__(self):
        self.secs: dict[str, float] = {}
        self.ends: dict[str, float] = {}
        self._wrapped: list = []

    def wrap(self, obj, method: str, part: str) -> None:
        orig = getattr(obj, method)

        def timed(*a, **k):
            t = time.perf_counter()
            r = orig(*a, **k)
            self.ends[part] = time.perf_counter()
            self.secs[part] = self.secs.get(part, 0.0) + self.ends[part] - t
            return r

        setattr(obj, method, timed)
        self._wrapped.append((obj, method))

    def restore(self) -> None:
        for obj, method in self._wrapped:
            delattr(obj, method)  # back to the class's method
        self._wrapped.clear()

    def step_end(self, _pipe, _i, _t, kw):
        self.ends["loop"] = time.perf_counter()
        self.last_latents = kw.get("latents")
        return {}


def e2e_call(pipe, kwargs: dict, parts_out: list, wraps) -> object:
    """One end_to_end `pipe(**kwargs)` split into its parts: `wraps` = [(obj, method, part)]; the
    denoising loop runs from the end of the text encoders to the last step's callback."""
    m = Marks()
    for obj, method, part in wraps:
        m.wrap(obj, method, part)
    try:
        t0 = time.perf_counter()
        out = pipe(**kwargs, callback_on_step_end=m.step_end)[0]
        total = time.perf_counter() - t0
    finally:
        m.restore()
    m.secs["denoise_loop"] = m.ends["loop"] - m.ends["text_encoders"]
    parts = {k: m.secs[k] for k in I2V_STAGES if k in m.secs}
    parts["other"] = total - sum(parts.values())
    parts["total"] = total
    parts_out.append(parts)
    return out


def run_t2v(ctx) -> dict:
    """HunyuanVideoPipeline's stages; returns the outputs, the end_to_end video and its split."""
    import numpy as np
    import torch
    from diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video import retrieve_timesteps
    from diffusers.utils.torch_utils import randn_tensor

    pipe, s, device, st = ctx.pipe, ctx.s, ctx.device, ctx.stages
    steps, msl = s["steps"], s["max_sequence_length"]
    outputs: dict = {}
    state: dict = {}

    def run_text():
        return pipe.encode_prompt(s["prompt"], max_sequence_length=msl, device=device)

    def run_step():
        return pipe.transformer(hidden_states=state["init_latents"], timestep=state["timestep0"],
                                encoder_hidden_states=state["prompt_embeds"],
                                encoder_attention_mask=state["prompt_attention_mask"],
                                pooled_projections=state["pooled_prompt_embeds"], guidance=state["guidance"],
                                return_dict=False)[0]

    def run_loop():
        return pipe(prompt_embeds=state["prompt_embeds"], pooled_prompt_embeds=state["pooled_prompt_embeds"],
                    prompt_attention_mask=state["prompt_attention_mask"], output_type="latent",
                    **ctx.common(), **neg_embeds(state))[0]

    def run_decode():
        return pipe.vae.decode(state["final_latents"] / ctx.sf, return_dict=False)[0]

    e2e_parts: list[dict] = []

    def run_e2e():
        return e2e_call(pipe, dict(prompt=s["prompt"], output_type="pt", **ctx.common(), **ctx.cfg_kwargs), e2e_parts,
                        [(pipe, "encode_prompt", "text_encoders"), (pipe.vae, "decode", "vae_decode")])

    def neg_embeds(state):
        if not ctx.cfg_kwargs:
            return {}
        return dict(true_cfg_scale=ctx.cfg_kwargs["true_cfg_scale"], negative_prompt_embeds=state["neg"][0],
                    negative_pooled_prompt_embeds=state["neg"][1], negative_prompt_attention_mask=state["neg"][2])

    pe, pooled, pm = st.timed("text_encoders", run_text)
    outputs.update(prompt_embeds=pe, pooled_prompt_embeds=pooled, prompt_attention_mask=pm)
    state.update(prompt_embeds=pe, pooled_prompt_embeds=pooled, prompt_attention_mask=pm)
    if ctx.cfg_kwargs:
        with torch.inference_mode():
            state["neg"] = pipe.encode_prompt(s["negative_prompt"], max_sequence_length=msl, device=device)

    # The pipeline's step-0 inputs, exactly as __call__ makes them.
    latent_shape = (1, pipe.transformer.config.in_channels, (s["frames"] - 1) // pipe.vae_scale_factor_temporal + 1,
                    s["height"] // pipe.vae_scale_factor_spatial, s["width"] // pipe.vae_scale_factor_spatial)
    init = randn_tensor(latent_shape, generator=ctx.gen(), device=device, dtype=torch.float32)
    timesteps, _ = retrieve_timesteps(pipe.scheduler, steps, device, sigmas=np.linspace(1.0, 0.0, steps + 1)[:-1])
    state.update(init_latents=init, timestep0=timesteps[:1].expand(1).to(torch.float32), guidance=ctx.guidance())
    outputs["init_latents"] = init
    schedule = {"timesteps": [float(t) for t in timesteps], "sigmas": [float(x) for x in pipe.scheduler.sigmas]}

    outputs["step_sample"] = st.timed("transformer_step", run_step)
    outputs["final_latents"] = state["final_latents"] = st.timed("denoise_loop", run_loop)
    outputs["decoded"] = st.timed("vae_decode", run_decode)
    video = st.timed("end_to_end", run_e2e)  # [B, F, 3, H, W] in [0, 1]
    with torch.inference_mode():
        frames01 = (outputs["decoded"] / 2 + 0.5).clamp(0, 1)
        consistency = {"end_to_end_video_vs_decoded_max_abs": float((video.permute(0, 2, 1, 3, 4) - frames01).abs().max())}
    return dict(outputs=outputs, keys=OUTPUTS, e2e_parts=e2e_parts, schedule=schedule, consistency=consistency,
                video_frames=s["frames"],
                layout={"decoded": "[B,3,F,H,W] = vae.decode(final_latents / scaling_factor), decoder range ~[-1,1]",
                        "final_latents": "before division by scaling_factor",
                        "step_sample": "transformer output at step 0 (init_latents, timesteps[0], guidance*1000)",
                        "prompt_embeds": "[B,256,D] Llama hidden_states[-3] after crop_start",
                        "prompt_attention_mask": "int64 [B,256], 1 = token"})


def run_i2v(ctx, kind: str) -> dict:
    """HunyuanVideoImageToVideoPipeline's stages (see the module docstring)."""
    import numpy as np
    import PIL.Image
    import torch
    from diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video_image2video import retrieve_timesteps
    from diffusers.utils import load_image
    from diffusers.utils.torch_utils import randn_tensor

    pipe, s, device, st = ctx.pipe, ctx.s, ctx.device, ctx.stages
    steps, msl, h, w = s["steps"], s["max_sequence_length"], s["height"], s["width"]
    image = load_image(s["image"])
    interleave = I2V_INTERLEAVE[kind]
    outputs: dict = {}
    state: dict = {}

    def run_text():
        return pipe.encode_prompt(image=image, prompt=s["prompt"], device=device, max_sequence_length=msl,
                                  image_embed_interleave=interleave)

    def run_image():
        pixels = pipe.video_processor.preprocess(image, h, w).to(device, pipe.vae.dtype)
        return pipe.vae.encode(pixels.unsqueeze(2)).latent_dist.mode() * ctx.sf

    def run_step():
        return pipe.transformer(hidden_states=state["model_input0"], timestep=state["timestep0"],
                                encoder_hidden_states=state["prompt_embeds"],
                                encoder_attention_mask=state["prompt_attention_mask"].to(torch.float32),
                                pooled_projections=state["pooled_prompt_embeds"], guidance=state["guidance"],
                                return_dict=False)[0]

    # The call VAE-encodes the image whatever embeddings it is given: the loop's time is the call's
    # minus that encode (preprocess + vae.encode, timed in the same call). The last step's callback
    # keeps every latent frame (latent_concat returns latents[:, :, 1:]); the first forward's input
    # is kept to check the step-0 input built below.
    loop_calls: list[dict] = []

    def run_loop():
        m = Marks()
        m.wrap(pipe.video_processor, "preprocess", "image_encode")
        m.wrap(pipe.vae, "encode", "image_encode")
        seen = {}

        def first_input(_module, _args, kw):
            if "hidden_states" not in seen:
                seen["hidden_states"] = kw["hidden_states"].clone()

        hook = pipe.transformer.register_forward_pre_hook(first_input, with_kwargs=True)
        try:
            t0 = time.perf_counter()
            out = pipe(image=image, prompt_embeds=state["prompt_embeds"],
                       pooled_prompt_embeds=state["pooled_prompt_embeds"],
                       prompt_attention_mask=state["prompt_attention_mask"], output_type="latent",
                       callback_on_step_end=m.step_end, **ctx.common(), **neg_embeds())[0]
            total = time.perf_counter() - t0
        finally:
            m.restore()
            hook.remove()
        loop_calls.append({"call": total, "image_encode": m.secs["image_encode"]})
        state["final_latents_all"] = m.last_latents
        state["pipeline_input0"] = seen["hidden_states"]
        return out, total - m.secs["image_encode"]

    def run_decode():
        return pipe.vae.decode(state["final_latents_all"] / ctx.sf, return_dict=False)[0]

    e2e_parts: list[dict] = []

    def run_e2e():
        return e2e_call(pipe, dict(image=image, prompt=s["prompt"], output_type="pt", **ctx.common(),
                                   **ctx.cfg_kwargs), e2e_parts,
                        [(pipe, "encode_prompt", "text_encoders"), (pipe.video_processor, "preprocess", "image_encode"),
                         (pipe.vae, "encode", "image_encode"), (pipe.vae, "decode", "vae_decode")])

    def neg_embeds():
        if not ctx.cfg_kwargs:
            return {}
        return dict(true_cfg_scale=ctx.cfg_kwargs["true_cfg_scale"], negative_prompt_embeds=state["neg"][0],
                    negative_pooled_prompt_embeds=state["neg"][1], negative_prompt_attention_mask=state["neg"][2])

    pe, pooled, pm = st.timed("text_encoders", run_text)
    outputs.update(prompt_embeds=pe, pooled_prompt_embeds=pooled, prompt_attention_mask=pm)
    state.update(prompt_embeds=pe, pooled_prompt_embeds=pooled, prompt_attention_mask=pm)
    if ctx.cfg_kwargs:
        # as __call__ does: the negative prompt with a black image of the video's size, interleave 2
        with torch.inference_mode():
            state["neg"] = pipe.encode_prompt(image=PIL.Image.new("RGB", (w, h), 0), prompt=s["negative_prompt"],
                                              device=device, max_sequence_length=msl)
    image_latents = st.timed("image_encode", run_image)
    outputs["image_latents"] = image_latents

    # The step-0 model input as __call__ / prepare_latents make it.
    cfg = pipe.transformer.config
    c = cfg.in_channels if kind == "token_replace" else (cfg.in_channels - 1) // 2
    t_lat = (s["frames"] - 1) // pipe.vae_scale_factor_temporal + 1
    shape = (1, c, t_lat, h // pipe.vae_scale_factor_spatial, w // pipe.vae_scale_factor_spatial)
    init = randn_tensor(shape, generator=ctx.gen(), device=device, dtype=torch.float32)
    mix = torch.tensor([0.999]).to(device)
    repeated = image_latents.repeat(1, 1, t_lat, 1, 1)
    mixed = init * mix + repeated * (1 - mix)
    if kind == "token_replace":
        model_input0 = torch.cat([image_latents, mixed[:, :, 1:]], dim=2)
    else:
        repeated[:, :, 1:] = 0
        mask = repeated.new_ones(1, 1, *repeated.shape[2:])
        mask[:, :, 1:] = 0
        model_input0 = torch.cat([mixed, repeated, mask], dim=1)
    timesteps, _ = retrieve_timesteps(pipe.scheduler, steps, device, sigmas=np.linspace(1.0, 0.0, steps + 1)[:-1])
    state.update(model_input0=model_input0, timestep0=timesteps[:1].expand(1).to(torch.float32),
                 guidance=ctx.guidance() if cfg.guidance_embeds else None)
    outputs["init_latents"] = init
    schedule = {"timesteps": [float(t) for t in timesteps], "sigmas": [float(x) for x in pipe.scheduler.sigmas]}

    outputs["step_sample"] = st.timed("transformer_step", run_step)
    outputs["final_latents"] = st.timed("denoise_loop", run_loop, own_time=True)
    outputs["final_latents_all"] = state["final_latents_all"]
    outputs["decoded"] = st.timed("vae_decode", run_decode)
    video = st.timed("end_to_end", run_e2e)  # [B, F', 3, H, W] in [0, 1]
    drop = LATENT_CONCAT_DROPPED_FRAMES if kind == "latent_concat" else 0
    with torch.inference_mode():
        frames01 = (outputs["decoded"][:, :, drop:] / 2 + 0.5).clamp(0, 1)
        final_all, final = outputs["final_latents_all"], outputs["final_latents"]
        returned = final_all[:, :, 1:] if kind == "latent_concat" else final_all
        consistency = {
            "end_to_end_video_vs_decoded_max_abs": float((video.permute(0, 2, 1, 3, 4) - frames01).abs().max()),
            "step0_input_vs_pipeline_max_abs": float((model_input0 - state["pipeline_input0"]).abs().max()),
            "final_latents_vs_last_step_max_abs": float((final - returned).abs().max()),
        }
    return dict(outputs=outputs, keys=I2V_OUTPUTS, e2e_parts=e2e_parts, schedule=schedule, consistency=consistency,
                video_frames=s["frames"] - drop, denoise_loop_calls=loop_calls,
                layout={"image_condition_type": kind, "image_embed_interleave": interleave,
                        "image_latents": "[B,C,1,h,w] vae.encode(preprocess(image)).latent_dist.mode() * scaling_factor",
                        "init_latents": "the seeded noise, before the 0.999 / 0.001 image mix",
                        "step_sample": "transformer output at step 0 (the pipeline's model input: token_replace "
                                       "the image latent on frame 0, latent_concat [latents; image; mask])",
                        "final_latents": "what output_type='latent' returns (latent_concat: latents[:, :, 1:])",
                        "final_latents_all": "every latent frame after the last step (what the decoder gets)",
                        "decoded": "[B,3,F,H,W] = vae.decode(final_latents_all / scaling_factor), all frames "
                                   f"(the video is decoded[:, :, {drop}:])",
                        "prompt_embeds": f"[B,{576 // interleave}+252,D]: every {interleave}th image row, then "
                                         "the text rows"})


def main(argv=None) -> int:
    args = parse_args(argv)
    model = Path(args.model).resolve()
    settings_path = Path(args.settings).resolve() if args.settings else model / "bench_settings.json"
    try:
        if not (model / "model_index.json").is_file():
            raise UsageError(f"--model {model}: no model_index.json (not a diffusers pipeline folder)")
        kind = image_condition_type(model)
        s = load_settings(settings_path, image_to_video=kind is not None)
        if kind is None and "image_encode" in (args.stages or ()):
            raise UsageError("--stages image_encode: the model is text-to-video")
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    stage_names = I2V_STAGES if kind else STAGES
    if args.stages is None:
        args.stages = list(stage_names)

    # Before torch spins up its pools.
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    os.environ["MKL_NUM_THREADS"] = str(args.threads)
    import types

    import diffusers
    import numpy as np
    import safetensors
    import torch
    import transformers
    from diffusers import FlowMatchEulerDiscreteScheduler, HunyuanVideoImageToVideoPipeline, HunyuanVideoPipeline

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
    pipe_cls = HunyuanVideoImageToVideoPipeline if kind else HunyuanVideoPipeline
    print(f"model: {model} ({pipe_cls.__name__}" + (f", image_condition_type {kind})" if kind else ")"))
    print(f"settings: {settings_path}: {s['height']}x{s['width']} px, {s['frames']} frames, {s['steps']} steps, "
          f"embedded guidance {s['embedded_guidance_scale']}, shift {s['flow_shift']}, seed {s['seed']}"
          + (f", image {s['image']}" if kind else ""))
    print(f"threads: {args.threads} (torch intra-op {torch.get_num_threads()}); {args.runs} timed runs after "
          f"{args.warmup} warm-up per stage; " + ", ".join(f"{k} {v}" for k, v in versions.items()))

    t0 = time.perf_counter()
    try:
        pipe = pipe_cls.from_pretrained(str(model), dtype=torch.float32)
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

    steps, seed = s["steps"], s["seed"]
    guidance_scale = float(s["embedded_guidance_scale"])
    cfg_kwargs = {}
    if float(s["true_cfg_scale"]) > 1.0:
        cfg_kwargs = dict(negative_prompt=s["negative_prompt"] or None, true_cfg_scale=float(s["true_cfg_scale"]))
    ctx = types.SimpleNamespace(
        pipe=pipe, s=s, device=device, sf=sf, cfg_kwargs=cfg_kwargs,
        gen=lambda: torch.Generator("cpu").manual_seed(seed),
        guidance=lambda: torch.tensor([guidance_scale], dtype=torch.float32, device=device) * 1000.0,
        # what every __call__ here passes besides the prompt (or its embeddings) and the output type
        common=lambda: dict(height=s["height"], width=s["width"], num_frames=s["frames"], num_inference_steps=steps,
                            guidance_scale=guidance_scale, generator=torch.Generator("cpu").manual_seed(seed),
                            max_sequence_length=s["max_sequence_length"], return_dict=False))

    failures: list[str] = []
    print("timing (seconds per run):", flush=True)
    with RssSampler() as sampler:
        ctx.stages = st = Stages(args, sync, sampler)
        try:
            run = run_i2v(ctx, kind) if kind else run_t2v(ctx)
        except Exception as e:  # noqa: BLE001
            import traceback

            traceback.print_exc()
            print(f"error: a stage failed: {type(e).__name__}: {e}", file=sys.stderr)
            return 1
    outputs, consistency = run["outputs"], run["consistency"]
    stage_times, stage_rss = st.times, st.rss

    # ---- sanity
    for k in run["keys"]:
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
    settings_out["schedule"] = run["schedule"]
    if kind:
        settings_out["image_condition_type"] = kind
        settings_out["image_embed_interleave"] = I2V_INTERLEAVE[kind]

    med = {k: statistics.median(v) for k, v in stage_times.items()}
    # The end_to_end runs' own split (the timed ones: the last --runs entries).
    e2e_parts = run["e2e_parts"]
    timed_parts = e2e_parts[-args.runs:] if "end_to_end" in stage_times else e2e_parts[-1:]
    part_names = [k for k in timed_parts[0] if k != "total"]
    breakdown = {k: [p[k] for p in timed_parts] for k in part_names}
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
        "pipeline": pipe_cls.__name__,
        "settings_file": str(settings_path),
        "load_s": load_s,
        "end_to_end_breakdown": breakdown,
        "transformer_share_of_end_to_end": share,
        "transformer_share_across_stages": share_across,
        "outputs": {k: {"shape": list(outputs[k].shape), "dtype": "int64" if k == "prompt_attention_mask" else "float32"}
                    for k in run["keys"]},
        "consistency": consistency,
        "machine": C.machine_info(),
        "command": " ".join([sys.executable, *sys.argv]),
        "failures": failures,
    }
    if "denoise_loop_calls" in run:
        report["denoise_loop_calls"] = run["denoise_loop_calls"]

    meta = {"settings": {k: v for k, v in s.items()}, "versions": versions, "threads": args.threads,
            "layout": run["layout"]}
    save_outputs(Path(args.out), outputs, meta, run["keys"])
    write_json(Path(args.json), report)

    # ---- table
    print()
    print(f"native ({pipe_cls.__name__}, diffusers {diffusers.__version__}, torch {torch.__version__}, CPU fp32, "
          f"{args.threads} threads), {s['height']}x{s['width']} px x {s['frames']} frames, {steps} steps; "
          f"{args.runs} timed runs after {args.warmup} warm-up")
    rows = []
    for k in stage_names:
        if k not in stage_times:
            continue
        v = stage_times[k]
        rows.append([k, f"{min(v):.3f}", f"{statistics.median(v):.3f}", f"{max(v):.3f}",
                     f"{stage_rss[k] / C.MIB:.0f}"])
    C.print_table(["stage", "min s", "median s", "max s", "peak RSS MiB"], rows)
    print(f"peak RSS of the process: {peak / C.MIB:.0f} MiB")
    e2e_med = statistics.median(p["total"] for p in timed_parts)
    print("end_to_end split (medians of its own runs): " + ", ".join(
        f"{k} {statistics.median(v):.3f} s ({100 * statistics.median(v) / e2e_med:.1f} %)" for k, v in breakdown.items()))
    ok = share >= TRANSFORMER_SHARE_GOAL
    print(f"transformer share of end-to-end (denoising loop inside the end_to_end runs): {100 * share:.1f} % "
          f"({'PASS' if ok else 'FAIL'}: >= {100 * TRANSFORMER_SHARE_GOAL:.0f} %)")
    if share_across is not None:
        print(f"  across stages: denoise_loop / end_to_end medians {100 * share_across:.1f} %"
              + (f"; forwards x transformer_step / end_to_end "
                 f"{100 * steps * (2 if cfg_kwargs else 1) * med['transformer_step'] / med['end_to_end']:.1f} %"
                 if "transformer_step" in med else ""))
    for k, v in consistency.items():
        print(f"consistency: {k} {v:.2e}")
    print(f"wrote {args.out} and {args.json}")
    for f in failures:
        print(f"error: {f}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
