#!/usr/bin/env python3
"""Make the "small" HunyuanVideo pipeline that `hyvideo bench` (and `pipeline_native.py`) measure.

A diffusers-format folder, the same layout as tests/fixtures/tiny (`model_index.json`,
`transformer/`, `vae/`, `text_encoder/`, `text_encoder_2/`, `tokenizer/`, `tokenizer_2/`,
`scheduler/`), built from diffusers' and transformers' own classes with seeded random weights,
but big enough that the timings mean something:

- transformer: transformer_forward.py's SMALL_CONFIG (hidden 384 = 6 heads x 64, 4 dual-stream +
  8 single-stream + 2 token-refiner blocks, RoPE axes 16/24/24) with text_embed_dim = the Llama
  hidden size (256) and pooled_projection_dim = the CLIP hidden size (128);
- text_encoder (LlamaModel): hidden 256, 4 layers, 4 heads / 2 kv heads (GQA, head_dim 64),
  intermediate 768, vocab 128256 (the real Llama-3 tokenizer's), rope_theta 500000;
- text_encoder_2 (CLIPTextModel): hidden 128, 2 layers, 2 heads, intermediate 512, vocab 49408,
  77 positions, quick-GELU;
- vae (AutoencoderKLHunyuanVideo): the real VAE at 1/8 of its width: block_out_channels
  (16, 32, 64, 64), 4 norm groups, layers_per_block 2, 16 latent channels, mid-block attention;
- scheduler: FlowMatchEulerDiscreteScheduler(shift=7.0) (the fixture's);
- tokenizer / tokenizer_2: copied byte for byte from tests/fixtures/tiny (the real Llama-3 and
  CLIP tokenizers), with their licence notes (tests/fixtures/licenses -> DIR/licenses).

Weights: every parameter re-drawn from one seeded generator per model (the rules of
tests/fixtures/make_fixtures.py's `randomize`, so the text path visibly matters), rounded to bf16
and saved in bf16. The file also writes `DIR/bench_settings.json`, the generation settings the
bench runs (prompt, sizes, steps, guidance, shift, seed), and `DIR/bench_model.json` (what was
built, parameter counts, seeds, versions).

Deterministic: a rerun writes byte-identical files. Offline: no hub, no network. The folder is
built as `.<name>.partial` beside DIR and renamed into place at the end; an existing DIR is
replaced only if it is empty or holds a model_index.json. From the repo root:

    ./benches/native/setup.sh   # once: the bench venv .venv-bench/
    .venv-bench/bin/python benches/native/make_bench_model.py --out /tmp/benchmodel
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import argparse  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402
from transformer_forward import SMALL_CONFIG  # noqa: E402

FIXTURE_TINY = C.REPO_ROOT / "tests" / "fixtures" / "tiny"
FIXTURE_LICENSES = C.REPO_ROOT / "tests" / "fixtures" / "licenses"

LLAMA_HIDDEN = 256
CLIP_HIDDEN = 128

TRANSFORMER_CONFIG = dict(SMALL_CONFIG, text_embed_dim=LLAMA_HIDDEN, pooled_projection_dim=CLIP_HIDDEN)

LLAMA_CONFIG = dict(
    vocab_size=128256, hidden_size=LLAMA_HIDDEN, intermediate_size=768, num_hidden_layers=4,
    num_attention_heads=4, num_key_value_heads=2, rope_theta=500000.0, max_position_embeddings=8192,
    rms_norm_eps=1e-5, bos_token_id=128000, eos_token_id=128001, pad_token_id=128001,
    tie_word_embeddings=False,
)
CLIP_CONFIG = dict(
    vocab_size=49408, hidden_size=CLIP_HIDDEN, intermediate_size=512, num_hidden_layers=2,
    num_attention_heads=2, max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407,
    pad_token_id=49407, hidden_act="quick_gelu", projection_dim=CLIP_HIDDEN,
)
# The real VAE's shape at 1/8 of its width: block_out_channels (128, 256, 512, 512) -> (16, 32, 64,
# 64), 32 norm groups -> 4 (the same channels per group), layers_per_block 2, 16 latent channels.
VAE_CONFIG = dict(
    latent_channels=16, block_out_channels=(16, 32, 64, 64), layers_per_block=2, norm_num_groups=4,
)
SCHEDULER_SHIFT = 7.0

# Per-model seeds for randomize(); torch.manual_seed(0) before the constructors.
SEEDS = {"transformer": 5001, "vae": 5002, "text_encoder": 5003, "text_encoder_2": 5004}
# Init scales (see randomize()). Llama: N(0, 1/sqrt(fan_in)) Linear weights and N(0, 0.5) token
# embeddings, so prompt_embeds (hidden_states[-3], no final norm) have std ~1.1 over real tokens
# (gain 1.5 gave 3.5); CLIP: N(0, 0.5) token/position embeddings as the fixture's.
LLAMA_LINEAR_GAIN = 1.0
LLAMA_EMB_STD = 0.5
CLIP_EMB_STD = 0.5

# The generation the bench runs. Chosen so that in the native (PyTorch, CPU, 2 threads) run the
# denoising loop is >= 85 % of the end-to-end time, as at 720p x 129 frames x 50 steps.
BENCH_SETTINGS = dict(
    prompt="A cat walks on the grass, realistic style.",
    negative_prompt="Aerial view, overexposed, low quality, deformation, bad composition, distortion",
    height=256,
    width=256,
    frames=9,
    steps=50,
    embedded_guidance_scale=6.0,
    true_cfg_scale=1.0,
    flow_shift=7.0,
    flow_reverse=False,
    seed=42,
    max_sequence_length=256,
    vae_tiling=dict(
        spatial=True, tile_sample_min_height=256, tile_sample_min_width=256,
        tile_sample_stride_height=192, tile_sample_stride_width=192,
        framewise=True, tile_sample_min_num_frames=16, tile_sample_stride_num_frames=12,
    ),
)
SETTINGS_NOTES = {
    "embedded_guidance_scale": "diffusers' guidance_scale (guidance = scale * 1000 into the transformer)",
    "true_cfg_scale": "1.0 = no classifier-free guidance (HunyuanVideo's default): the negative prompt "
                      "is recorded but not used; > 1 runs the transformer twice per step",
    "flow_shift": "FlowMatchEulerDiscreteScheduler shift; sigmas = linspace(1, 0, steps+1)[:-1] shifted",
    "seed": "initial latents = torch.randn([1,16,(frames-1)/4+1,height/8,width/8], "
            "generator=torch.Generator('cpu').manual_seed(seed))",
    "vae_tiling": "diffusers' enable_tiling() defaults (pixels) + frame-wise decoding (on by default)",
}
# How the weights were drawn (bench_model.json's "init").
INIT_NOTES = {"linear": "N(0, gain/sqrt(fan_in)), gain 1", "embeddings":
              f"N(0, 0.5) (Llama {LLAMA_EMB_STD}, CLIP {CLIP_EMB_STD})", "biases": "N(0, 0.1)",
              "norm weights": "1 + N(0, 0.1)", "norm biases": "N(0, 0.1)",
              "storage": "bf16 (values bf16-rounded before saving)"}


# --------------------------------------------------------------------------------------------
# Weights (the rules of tests/fixtures/make_fixtures.py's randomize)
# --------------------------------------------------------------------------------------------


def is_norm(mod) -> bool:
    import torch.nn as nn

    return isinstance(mod, (nn.LayerNorm, nn.GroupNorm)) or "norm" in type(mod).__name__.lower()


def randomize(model, seed: int, *, linear_std=None, linear_gain=1.0, emb_std=0.5, bias_std=0.1,
              norm_jitter=0.1) -> None:
    """Re-initialise every parameter from one seeded generator, in module order.

    Linear/conv weights: N(0, linear_std) if given, else N(0, gain/sqrt(fan_in)); embeddings
    N(0, emb_std); biases N(0, bias_std); norm weights 1 + N(0, norm_jitter), norm biases
    N(0, bias_std): every parameter (also the ones libraries zero- or one-initialise) changes the
    outputs."""
    import torch
    import torch.nn as nn

    gen = torch.Generator().manual_seed(seed)
    seen = set()
    with torch.no_grad():
        for mod_name, mod in model.named_modules():
            for pname, p in mod.named_parameters(recurse=False):
                full = f"{mod_name}.{pname}" if mod_name else pname
                if id(p) in seen:
                    continue
                seen.add(id(p))
                r = torch.randn(p.shape, generator=gen, dtype=torch.float32)
                if isinstance(mod, nn.Embedding):
                    v = r * emb_std
                elif is_norm(mod):
                    v = 1.0 + norm_jitter * r if pname == "weight" else bias_std * r
                elif isinstance(mod, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
                    if pname == "weight":
                        std = linear_std if linear_std is not None else linear_gain / p[0].numel() ** 0.5
                        v = r * std
                    else:
                        v = r * bias_std
                else:
                    raise SystemExit(f"randomize: no rule for {type(mod).__name__} parameter {full}")
                p.copy_(v.to(p.dtype))
            # bf16-round in place: the saved bf16 weights and the fp32 values are the same numbers
        for p in model.parameters():
            p.copy_(p.to(torch.bfloat16).to(p.dtype))


def build_llama():
    from transformers import LlamaConfig, LlamaModel

    text_encoder = LlamaModel(LlamaConfig(**LLAMA_CONFIG))
    randomize(text_encoder, SEEDS["text_encoder"], linear_gain=LLAMA_LINEAR_GAIN, emb_std=LLAMA_EMB_STD)
    return text_encoder


def build_models(transformer_config: dict = TRANSFORMER_CONFIG, transformer_seed: int = SEEDS["transformer"],
                 text_encoder=build_llama):
    """The pipeline's models (fp32, eval) and scheduler. `make_bench_i2v_model.py` passes its
    transformer config and seed and a LLaVA builder as `text_encoder`; the VAE and CLIP are the
    same in both."""
    import torch
    from diffusers import (AutoencoderKLHunyuanVideo, FlowMatchEulerDiscreteScheduler,
                           HunyuanVideoTransformer3DModel)
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    transformer = HunyuanVideoTransformer3DModel(**transformer_config)
    randomize(transformer, transformer_seed)
    vae = AutoencoderKLHunyuanVideo(**VAE_CONFIG)
    randomize(vae, SEEDS["vae"])
    text_encoder = text_encoder()
    text_encoder_2 = CLIPTextModel(CLIPTextConfig(**CLIP_CONFIG))
    randomize(text_encoder_2, SEEDS["text_encoder_2"], emb_std=CLIP_EMB_STD)
    models = {"transformer": transformer, "vae": vae, "text_encoder": text_encoder,
              "text_encoder_2": text_encoder_2}
    for m in models.values():
        m.float().eval()
    scheduler = FlowMatchEulerDiscreteScheduler(shift=SCHEDULER_SHIFT)
    return models, scheduler


# --------------------------------------------------------------------------------------------
# Saving
# --------------------------------------------------------------------------------------------


def canonicalize_safetensors(path: Path) -> None:
    """Header metadata keys sorted (safetensors keeps them in a hash map): byte-reproducible files.
    Tensor entries and data untouched."""
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    meta = header.pop("__metadata__", None)
    new = {"__metadata__": dict(sorted(meta.items()))} if meta else {}
    new.update(header)
    h = json.dumps(new, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    h += b" " * (-len(h) % 8)
    if h != raw[8:8 + n]:
        path.write_bytes(len(h).to_bytes(8, "little") + h + raw[8 + n:])


def save_models(models: dict, scheduler, out: Path) -> None:
    import torch
    from diffusers.utils import logging as dlog

    level = dlog.get_verbosity()
    dlog.set_verbosity_error()  # "modules that should be kept in float32: []" from .to()
    try:
        for name, m in models.items():
            m.to(torch.bfloat16).save_pretrained(out / name, safe_serialization=True)
            m.float()  # back to fp32 (exact: the values are bf16-representable)
            for f in sorted((out / name).glob("*.safetensors")):
                canonicalize_safetensors(f)
                f.chmod(0o644)
    finally:
        dlog.set_verbosity(level)
    scheduler.save_pretrained(out / "scheduler")
    for sub in ("tokenizer", "tokenizer_2"):
        shutil.copytree(FIXTURE_TINY / sub, out / sub)
    shutil.copytree(FIXTURE_LICENSES, out / "licenses")
    # The fixture's model_index.json names exactly these classes (Llama-3 tokenizer as
    # PreTrainedTokenizerFast, the portable name).
    mi = json.loads((FIXTURE_TINY / "model_index.json").read_text())
    import diffusers

    mi["_diffusers_version"] = diffusers.__version__
    (out / "model_index.json").write_text(json.dumps(mi, indent=2, sort_keys=True) + "\n")


# --------------------------------------------------------------------------------------------
# Sanity checks on the saved folder (loaded as the bench loads it)
# --------------------------------------------------------------------------------------------


def sanity(out: Path, threads: int) -> dict:
    """Load the saved folder with HunyuanVideoPipeline.from_pretrained (fp32) and check that the
    text encoders, the transformer and the VAE give finite outputs of sensible scale, and that the
    prompt, the pooled embedding and the guidance all change the transformer's output."""
    import torch
    from diffusers import HunyuanVideoPipeline

    torch.set_num_threads(threads)
    pipe = HunyuanVideoPipeline.from_pretrained(str(out), dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    stats: dict = {}
    failures: list[str] = []

    def check(name: str, ok: bool, detail: str) -> None:
        print(f"[{'ok' if ok else 'FAIL'}] {name}: {detail}", flush=True)
        if not ok:
            failures.append(f"{name}: {detail}")

    s = BENCH_SETTINGS
    with torch.inference_mode():
        pe, pooled, pm = pipe.encode_prompt(s["prompt"], max_sequence_length=s["max_sequence_length"])
        real = pm.bool()
        pe_std = float(pe[real].std())
        stats["prompt_embeds"] = {"shape": list(pe.shape), "real_tokens": int(pm.sum()),
                                  "std_real": pe_std, "max_abs": float(pe.abs().max())}
        stats["pooled_prompt_embeds"] = {"shape": list(pooled.shape), "std": float(pooled.std())}
        check("prompt_embeds finite, std over real tokens in [0.3, 10]",
              bool(torch.isfinite(pe).all()) and 0.3 <= pe_std <= 10, f"{pe_std:.4f}")
        check("pooled_prompt_embeds finite, std in [0.3, 10]",
              bool(torch.isfinite(pooled).all()) and 0.3 <= float(pooled.std()) <= 10,
              f"{float(pooled.std()):.4f}")

        # One transformer forward on a small latent with the real prompt embeddings.
        g = torch.Generator("cpu").manual_seed(7)
        hs = torch.randn((1, 16, 2, 16, 16), generator=g)
        t = torch.tensor([900.0])
        guid = torch.tensor([s["embedded_guidance_scale"] * 1000.0])

        def fwd(pe_, pooled_, guid_):
            return pipe.transformer(hidden_states=hs, timestep=t, encoder_hidden_states=pe_,
                                    encoder_attention_mask=pm, pooled_projections=pooled_,
                                    guidance=guid_, return_dict=False)[0]

        out0 = fwd(pe, pooled, guid)
        o_std = float(out0.std())
        stats["transformer_sample_std"] = o_std
        check("transformer output finite, std in [0.1, 20]",
              bool(torch.isfinite(out0).all()) and 0.1 <= o_std <= 20, f"{o_std:.4f}")
        scale = float(out0.abs().max())
        # Another prompt's embeddings (the norms in the token refiner make a plain rescale a weak test).
        pe2, pooled2, pm2 = pipe.encode_prompt("A red sports car drives through a snowy forest at night.",
                                               max_sequence_length=s["max_sequence_length"])
        d_txt = float((fwd(pe2, pooled, guid) - out0).abs().max()) / scale
        d_pool = float((fwd(pe, pooled2, guid) - out0).abs().max()) / scale
        d_guid = float((fwd(pe, pooled, guid * 0.5) - out0).abs().max()) / scale
        padded = ~real.unsqueeze(-1)
        d_pad = float((fwd(torch.where(padded, torch.full_like(pe, 7.0), pe), pooled, guid) - out0).abs().max())
        stats["transformer_sensitivity_rel"] = {"other_prompt_embeds": d_txt, "other_pooled": d_pool,
                                               "guidance_x0.5": d_guid, "padded_tokens_changed_abs": d_pad}
        check("another prompt (Llama or CLIP part) and the guidance change the transformer output by "
              ">= 5 % of its scale", min(d_txt, d_pool, d_guid) >= 0.05,
              f"prompt embeds {d_txt:.3f}, pooled {d_pool:.3f}, guidance {d_guid:.3f}")
        check("padded text tokens are ignored", d_pad < 1e-4, f"max|d| {d_pad:.2e}")

        # The VAE on a small latent (5 latent frames: the frame-wise path runs).
        z = torch.randn((1, 16, 5, 8, 8), generator=g)
        dec = pipe.vae.decode(z / pipe.vae.config.scaling_factor).sample
        d_std = float(dec.std())
        stats["vae_decoded"] = {"shape": list(dec.shape), "std": d_std, "min": float(dec.min()),
                                "max": float(dec.max())}
        check("vae decode finite, std in [0.05, 2]",
              bool(torch.isfinite(dec).all()) and 0.05 <= d_std <= 2, f"{d_std:.4f}")
    stats["failures"] = failures
    return stats


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------


def out_dir_error(out: Path) -> str | None:
    """Why `out` must not be replaced (None: it may be)."""
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / "model_index.json").exists())):
        return (f"--out {out} exists and is not an empty directory or a pipeline folder "
                f"(no model_index.json); refusing to replace it")
    return None


def versions() -> dict:
    import diffusers
    import safetensors
    import torch
    import transformers

    return {"torch": torch.__version__, "diffusers": diffusers.__version__,
            "transformers": transformers.__version__, "safetensors": safetensors.__version__}


def write_json_file(path: Path, obj: dict, **kw) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False, **kw) + "\n", encoding="utf-8")


def build_folder(out: Path, fill) -> int:
    """Build the folder as `.<name>.partial` beside `out` with `fill(tmp)` (returns an exit status)
    and rename it into place when that is 0."""
    tmp = out.parent / f".{out.name}.partial"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        status = fill(tmp)
        if status:
            return status
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


def run_sanity(check_fn, tmp: Path, threads: int) -> int:
    """The sanity statistics are printed, not stored: their last digits may depend on the thread
    count, and the folder must be byte-identical on every rerun."""
    stats = check_fn(tmp, threads)
    print("sanity: " + json.dumps({k: v for k, v in stats.items() if k != "failures"}))
    if stats["failures"]:
        print("error: sanity checks failed: " + "; ".join(stats["failures"]), file=sys.stderr)
        return 1
    return 0


def print_summary(out: Path, params: dict, components, t0: float, settings: dict) -> None:
    total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    rows = []
    for name in components:
        size = sum(p.stat().st_size for p in (out / name).rglob("*") if p.is_file())
        n = params.get(name)
        rows.append([name, f"{n / 1e6:.2f} M" if n else "-", C.fmt_bytes(size)])
    C.print_table(["component", "parameters", "on disk"], rows)
    digest = hashlib.sha256(json.dumps(tree_digest(out), sort_keys=True).encode()).hexdigest()
    print(f"wrote {out} ({C.fmt_bytes(total)}, {time.perf_counter() - t0:.1f} s); tree sha256 {digest[:16]}")
    print(f"settings: {out / 'bench_settings.json'}: {settings['height']}x{settings['width']} px, "
          f"{settings['frames']} frames, {settings['steps']} steps, seed {settings['seed']}")


def base_arg_parser(doc: str) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="the pipeline folder to write (replaced if it exists "
                                                 "and is empty or holds a model_index.json)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads for the sanity checks (default 2)")
    ap.add_argument("--no-check", action="store_true", help="skip loading the folder back for the sanity checks")
    return ap


def start_torch(threads: int) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    import diffusers
    import transformers

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()


def main(argv=None) -> int:
    args = base_arg_parser(__doc__).parse_args(argv)

    out = Path(args.out).resolve()
    err = out_dir_error(out)
    if err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for src in (FIXTURE_TINY / "tokenizer", FIXTURE_TINY / "tokenizer_2", FIXTURE_TINY / "model_index.json",
                FIXTURE_LICENSES):
        if not src.exists():
            print(f"error: {src} is missing (the tokenizers are copied from tests/fixtures)", file=sys.stderr)
            return 2

    start_torch(args.threads)
    t0 = time.perf_counter()
    params: dict = {}

    def fill(tmp: Path) -> int:
        models, scheduler = build_models()
        params.update({name: sum(p.numel() for p in m.parameters()) for name, m in models.items()})
        save_models(models, scheduler, tmp)
        del models
        write_json_file(tmp / "bench_settings.json", dict(BENCH_SETTINGS, notes=SETTINGS_NOTES))
        info = {
            "made_by": "benches/native/make_bench_model.py",
            "configs": {"transformer": TRANSFORMER_CONFIG, "vae": VAE_CONFIG, "text_encoder": LLAMA_CONFIG,
                        "text_encoder_2": CLIP_CONFIG, "scheduler": {"shift": SCHEDULER_SHIFT}},
            "params": params,
            "seeds": SEEDS,
            "init": INIT_NOTES,
            "tokenizers": "copied from tests/fixtures/tiny (real Llama-3 and CLIP tokenizers)",
            "versions": versions(),
        }
        (tmp / "bench_model.json").write_text(json.dumps(info, indent=2, default=list) + "\n")
        return 0 if args.no_check else run_sanity(sanity, tmp, args.threads)

    status = build_folder(out, fill)
    if status:
        return status
    print_summary(out, params, ("transformer", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2"),
                  t0, BENCH_SETTINGS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
