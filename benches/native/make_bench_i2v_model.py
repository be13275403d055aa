#!/usr/bin/env python3
"""Make the image-to-video pipeline that `hyvideo bench --image` (and `pipeline_native.py`) measure.

`make_bench_model.py`'s "small" pipeline turned into a diffusers `HunyuanVideoImageToVideoPipeline`
folder, one per transformer image condition type (`--kind`):

- `token_replace` (as HunyuanVideo-I2V with `image_condition_type: "token_replace"`): the transformer
  of the text-to-video bench (hidden 384, 4 dual + 8 single + 2 refiner blocks), in/out channels 16;
- `latent_concat` (as HunyuanVideo-I2V-33ch): the same with in_channels 2 * 16 + 1 = 33.

The VAE, CLIP text encoder and tokenizer_2 are the text-to-video bench's (same weights: the same
builders and seeds of `make_bench_model.py`). The text encoder is a `LlavaForConditionalGeneration`
whose Llama has the bench Llama's sizes (hidden 256, 4 layers, 4 heads / 2 kv heads, intermediate
768; vocabulary 128320, the real llava-llama-3's table) and whose CLIP vision tower is small (hidden
128, 3 layers, 2 heads, intermediate 512) at the real image size 336 and patch 14, so the pipeline's
576-token image template works; LLaVA reads the tower's hidden_states[-2]. The tokenizer (Llama-3
with `<image>` and `<pad>`) and the image processor (`CLIPImageProcessor`, the real checkpoint's
settings) are copied from `tests/fixtures/tiny_i2v`.

Also writes `DIR/bench_image.png` (a deterministic 384 x 288 RGB test image: the VAE input resizes it
to 256 x 256, the CLIP processor to 448 x 336 then crops 336 x 336), `DIR/bench_settings.json` (the
text-to-video bench settings plus `"image": "bench_image.png"`, relative to the file, and the kind's
default embedded guidance: 6.0 token_replace, 1.0 latent_concat) and `DIR/bench_model.json`.

Deterministic (a rerun writes byte-identical files) and offline. From the repo root:

    .venv-bench/bin/python benches/native/make_bench_i2v_model.py --out /tmp/benchi2v --kind token_replace
    ./target/release/hyvideo-export onnx --model /tmp/benchi2v --out /tmp/benchi2v_bundle
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_bench_model as MB  # noqa: E402  (sets the environment first)

import json  # noqa: E402
import shutil  # noqa: E402
import time  # noqa: E402

FIXTURE_I2V = MB.C.REPO_ROOT / "tests" / "fixtures" / "tiny_i2v"

KINDS = ("token_replace", "latent_concat")
# The embedded guidance each kind runs with by default (hyvideo's Sampling::default_embedded_guidance;
# diffusers' examples: 6.0 for HunyuanVideo-I2V token_replace, 1.0 for the 33-channel latent_concat).
DEFAULT_GUIDANCE = {"token_replace": 6.0, "latent_concat": 1.0}
TRANSFORMER_SEEDS = {"token_replace": 5011, "latent_concat": 5012}
LATENT_CHANNELS = MB.VAE_CONFIG["latent_channels"]


def transformer_config(kind: str) -> dict:
    in_channels = LATENT_CHANNELS if kind == "token_replace" else 2 * LATENT_CHANNELS + 1
    return dict(MB.TRANSFORMER_CONFIG, image_condition_type=kind, in_channels=in_channels,
                out_channels=LATENT_CHANNELS)


# LLaVA's image side, small: 336 px / patch 14 = 24 x 24 = 576 image tokens, as the real model.
VISION_CONFIG = dict(
    hidden_size=128, intermediate_size=512, num_hidden_layers=3, num_attention_heads=2, image_size=336,
    patch_size=14, projection_dim=128, hidden_act="quick_gelu", layer_norm_eps=1e-5,
)
# LLaVA's own keys (image token id, pad id, 576 image tokens, projector, feature layer) and its
# vocabulary size are the fixture's, which are the real checkpoint's.
LLAVA_KEYS = ("image_token_index", "image_seq_length", "projector_hidden_act", "vision_feature_select_strategy",
              "vision_feature_layer", "multimodal_projector_bias", "pad_token_id", "tie_word_embeddings")
LLAVA_SEEDS = {"vision_tower": 5021, "patch_embedding": 5022, "position_embedding": 5023, "class_embedding": 5024,
               "projector": 5025, "language_model": MB.SEEDS["text_encoder"]}

IMAGE_FILE = "bench_image.png"
IMAGE_SIZE = (384, 288)  # width, height: not the video's size or aspect, so both resizes run
IMAGE_SEED = 77

SETTINGS_NOTES = dict(
    MB.SETTINGS_NOTES,
    image="the input image (PNG), relative to this file's folder; diffusers' load_image reads it",
    embedded_guidance_scale="diffusers' guidance_scale (guidance = scale * 1000 into the transformer); "
                            "the kind's default: 6.0 token_replace, 1.0 latent_concat",
)


def llava_config():
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    fx = json.loads((FIXTURE_I2V / "text_encoder" / "config.json").read_text())
    keys = {k: fx[k] for k in LLAVA_KEYS}
    text = LlamaConfig(**dict(MB.LLAMA_CONFIG, vocab_size=fx["text_config"]["vocab_size"],
                              pad_token_id=keys["pad_token_id"]))
    return LlavaConfig(vision_config=CLIPVisionConfig(**VISION_CONFIG), text_config=text, **keys)


def build_llava():
    """LlavaForConditionalGeneration with every parameter re-drawn by make_bench_model's rules (the
    language model as the bench Llama, seed for seed; the vision tower and projector N(0, 1/sqrt(fan_in))
    weights; the class embedding, a bare parameter, N(0, 1))."""
    import torch
    from transformers import LlavaForConditionalGeneration

    m = LlavaForConditionalGeneration(llava_config())
    vt = m.model.vision_tower
    tower = vt.vision_model if hasattr(vt, "vision_model") else vt
    for i, (name, child) in enumerate(tower.named_children()):
        if name != "embeddings":
            MB.randomize(child, LLAVA_SEEDS["vision_tower"] + 100 * i)
    emb = tower.embeddings
    MB.randomize(emb.patch_embedding, LLAVA_SEEDS["patch_embedding"])
    MB.randomize(emb.position_embedding, LLAVA_SEEDS["position_embedding"], emb_std=0.5)
    with torch.no_grad():
        g = torch.Generator().manual_seed(LLAVA_SEEDS["class_embedding"])
        emb.class_embedding.copy_(torch.randn(emb.class_embedding.shape, generator=g).to(torch.bfloat16).float())
    MB.randomize(m.model.multi_modal_projector, LLAVA_SEEDS["projector"])
    MB.randomize(m.model.language_model, LLAVA_SEEDS["language_model"], linear_gain=MB.LLAMA_LINEAR_GAIN,
                 emb_std=MB.LLAMA_EMB_STD)
    return m


def write_image(path: Path) -> None:
    """Smooth colour gradients plus seeded noise, so resizing and the encoders see structure."""
    import numpy as np
    import PIL.Image

    w, h = IMAGE_SIZE
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    base = np.stack([
        128 + 100 * np.sin(xx / w * 3.1 + yy / h * 1.3),
        128 + 100 * np.cos(yy / h * 4.2),
        128 + 90 * np.sin((xx + yy) / (w + h) * 6.0),
    ], axis=-1)
    noise = np.random.default_rng(IMAGE_SEED).normal(0, 12, base.shape)
    img = np.clip(base + noise, 0, 255).astype(np.uint8)
    PIL.Image.fromarray(img, "RGB").save(path, optimize=False, compress_level=9)


def make_i2v_folder(tmp: Path, models: dict, scheduler) -> None:
    """make_bench_model's folder, then the image-to-video parts: the LLaVA tokenizer, the image
    processor and the pipeline's model_index.json (from tests/fixtures/tiny_i2v)."""
    import diffusers

    MB.save_models(models, scheduler, tmp)
    shutil.rmtree(tmp / "tokenizer")
    shutil.copytree(FIXTURE_I2V / "tokenizer", tmp / "tokenizer")
    shutil.copytree(FIXTURE_I2V / "image_processor", tmp / "image_processor")
    mi = json.loads((FIXTURE_I2V / "model_index.json").read_text())
    mi["_diffusers_version"] = diffusers.__version__
    (tmp / "model_index.json").write_text(json.dumps(mi, indent=2, sort_keys=True) + "\n")
    write_image(tmp / IMAGE_FILE)


def sanity(out: Path, threads: int) -> dict:
    """Load the folder with HunyuanVideoImageToVideoPipeline (fp32) and check the stages give finite
    outputs of sensible scale and that the image matters: another image changes the prompt rows
    after it, and the image latent changes the transformer's output."""
    import PIL.Image
    import torch
    from diffusers import HunyuanVideoImageToVideoPipeline
    from diffusers.utils import load_image

    torch.set_num_threads(threads)
    pipe = HunyuanVideoImageToVideoPipeline.from_pretrained(str(out), dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    kind = pipe.transformer.config.image_condition_type
    interleave = 4 if kind == "token_replace" else 2
    s = MB.BENCH_SETTINGS
    stats: dict = {"kind": kind}
    failures: list[str] = []

    def check(name: str, ok: bool, detail: str) -> None:
        print(f"[{'ok' if ok else 'FAIL'}] {name}: {detail}", flush=True)
        if not ok:
            failures.append(f"{name}: {detail}")

    image = load_image(str(out / IMAGE_FILE))
    other = PIL.Image.new("RGB", IMAGE_SIZE, (200, 40, 90))
    with torch.inference_mode():
        def enc(img):
            return pipe.encode_prompt(image=img, prompt=s["prompt"], max_sequence_length=s["max_sequence_length"],
                                      image_embed_interleave=interleave)

        pe, pooled, pm = enc(image)
        real = pm.bool()
        n_img = 576 // interleave
        pe_std = float(pe[real].std())
        stats["prompt_embeds"] = {"shape": list(pe.shape), "valid_rows": int(pm.sum()), "image_rows": n_img,
                                  "std_valid": pe_std}
        check("prompt_embeds finite, std over valid rows in [0.3, 10]",
              bool(torch.isfinite(pe).all()) and 0.3 <= pe_std <= 10, f"{pe_std:.4f}")
        pe2, _, _ = enc(other)
        text_rows = slice(n_img, int(pm.sum()))
        d_img = float((pe2[0, text_rows] - pe[0, text_rows]).abs().max()) / float(pe[0, text_rows].abs().max())
        check("another image changes the text rows by >= 5 % of their scale", d_img >= 0.05, f"{d_img:.3f}")

        h, w = s["height"], s["width"]
        img_t = pipe.video_processor.preprocess(image, h, w)
        lat = pipe.vae.encode(img_t.unsqueeze(2)).latent_dist.mode() * pipe.vae.config.scaling_factor
        l_std = float(lat.std())
        stats["image_latents"] = {"shape": list(lat.shape), "std": l_std}
        check("image latent finite, std in [0.05, 10]", bool(torch.isfinite(lat).all()) and 0.05 <= l_std <= 10,
              f"{l_std:.4f}")

        g = torch.Generator("cpu").manual_seed(7)
        t_lat = 2
        noise = torch.randn((1, LATENT_CHANNELS, t_lat, h // 8, w // 8), generator=g)

        def model_input(image_latent):
            rep = image_latent.repeat(1, 1, t_lat, 1, 1)
            x = noise * 0.999 + rep * 0.001
            if kind == "token_replace":
                return torch.cat([image_latent, x[:, :, 1:]], dim=2)
            rep[:, :, 1:] = 0
            mask = torch.zeros((1, 1, t_lat, h // 8, w // 8))
            mask[:, :, 0] = 1
            return torch.cat([x, rep, mask], dim=1)

        def fwd(x):
            return pipe.transformer(hidden_states=x, timestep=torch.tensor([900.0]), encoder_hidden_states=pe,
                                    encoder_attention_mask=pm, pooled_projections=pooled,
                                    guidance=torch.tensor([DEFAULT_GUIDANCE[kind] * 1000.0]), return_dict=False)[0]

        out0 = fwd(model_input(lat))
        o_std = float(out0.std())
        stats["transformer_sample_std"] = o_std
        check("transformer output finite, std in [0.1, 20]", bool(torch.isfinite(out0).all()) and 0.1 <= o_std <= 20,
              f"{o_std:.4f}")
        d_lat = float((fwd(model_input(-lat)) - out0).abs().max()) / float(out0.abs().max())
        check("the image latent changes the transformer output by >= 5 % of its scale", d_lat >= 0.05,
              f"{d_lat:.3f}")
    stats["failures"] = failures
    return stats


def main(argv=None) -> int:
    ap = MB.base_arg_parser(__doc__)
    ap.add_argument("--kind", required=True, choices=KINDS, help="the transformer's image_condition_type")
    args = ap.parse_args(argv)

    out = Path(args.out).resolve()
    err = MB.out_dir_error(out)
    if err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for src in (FIXTURE_I2V / "tokenizer", FIXTURE_I2V / "image_processor", FIXTURE_I2V / "model_index.json",
                FIXTURE_I2V / "text_encoder" / "config.json", MB.FIXTURE_TINY / "tokenizer_2", MB.FIXTURE_LICENSES):
        if not src.exists():
            print(f"error: {src} is missing (copied from tests/fixtures)", file=sys.stderr)
            return 2

    MB.start_torch(args.threads)
    t0 = time.perf_counter()
    kind = args.kind
    settings = dict(MB.BENCH_SETTINGS, embedded_guidance_scale=DEFAULT_GUIDANCE[kind], image=IMAGE_FILE)
    params: dict = {}

    def fill(tmp: Path) -> int:
        tconf = transformer_config(kind)
        models, scheduler = MB.build_models(tconf, TRANSFORMER_SEEDS[kind], build_llava)
        params.update({name: sum(p.numel() for p in m.parameters()) for name, m in models.items()})
        make_i2v_folder(tmp, models, scheduler)
        del models
        MB.write_json_file(tmp / "bench_settings.json", dict(settings, notes=SETTINGS_NOTES))
        info = {
            "made_by": f"benches/native/make_bench_i2v_model.py --kind {kind}",
            "configs": {"transformer": tconf, "vae": MB.VAE_CONFIG,
                        "text_encoder": {"llava": {k: v for k, v in llava_config().to_dict().items()
                                                   if k in LLAVA_KEYS},
                                         "text_config": MB.LLAMA_CONFIG, "vision_config": VISION_CONFIG},
                        "text_encoder_2": MB.CLIP_CONFIG, "scheduler": {"shift": MB.SCHEDULER_SHIFT}},
            "params": params,
            "seeds": dict(MB.SEEDS, transformer=TRANSFORMER_SEEDS[kind], llava=LLAVA_SEEDS),
            "init": MB.INIT_NOTES,
            "image": {"file": IMAGE_FILE, "size": list(IMAGE_SIZE), "seed": IMAGE_SEED},
            "tokenizers": "tokenizer (Llama-3 + <image>, <pad>) and image_processor from tests/fixtures/tiny_i2v; "
                          "tokenizer_2 from tests/fixtures/tiny",
            "versions": MB.versions(),
        }
        (tmp / "bench_model.json").write_text(json.dumps(info, indent=2, default=list) + "\n")
        return 0 if args.no_check else MB.run_sanity(sanity, tmp, args.threads)

    status = MB.build_folder(out, fill)
    if status:
        return status
    MB.print_summary(out, params, ("transformer", "vae", "text_encoder", "text_encoder_2", "tokenizer",
                                   "tokenizer_2", "image_processor"), t0, settings)
    print(f"image_condition_type {kind}; image {out / IMAGE_FILE}; embedded guidance {DEFAULT_GUIDANCE[kind]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
