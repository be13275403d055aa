#!/usr/bin/env python3
"""One HunyuanVideo transformer forward, side by side in one run, fp32, same thread count:

  1. diffusers / PyTorch eager (`HunyuanVideoTransformer3DModel`, torch.inference_mode());
  2. `torch.onnx.export`'s graph of the same model, run by ONNX Runtime (CPU);
  3. ours as `hyvideo --backend cpu` runs it: the CPU engine of `hyvideo-export build --backend
     cpu` (attention fused into `com.microsoft.MultiHeadAttention`), run by the same ONNX
     Runtime with identical SessionOptions, given the valid text tokens only (as the runtime
     crops them: our graph has no mask input);
  4. ("ours-standard") the bundle's own graph, attention as standard MatMul → Softmax → MatMul
     (the form TensorRT reads), same inputs, for reference;

plus a plain fp32 GEMM (torch.mm) measured in the same run, so each path's achieved GFLOP/s can
be read against what the CPU does on a GEMM (the headroom).

The model is a "small" configuration (hidden 384 = 6 heads × 64, 4 dual-stream + 8 single-stream
blocks, 2 token-refiner blocks, text_embed_dim 4096, pooled 768, guidance embedding, RoPE axes
16/24/24) with deterministic random weights (seed 0, N(0, 0.02), norm weights 1 + N(0, 0.02)),
rounded through bf16 and saved in bf16 as a diffusers folder `<work>/small/transformer/`.
Inputs: latent [1,16,5,32,32] (1280 image tokens after 2×2 patching), 64 text tokens of which
the first 48 are valid (right-padded), timestep 500, guidance 6000, pooled [1,768].

It also checks the ONNX outputs against PyTorch (max |diff| / max |torch output|; ours must
be ≤ 1e-4) and prints the issue's goal: ours ≤ 0.8× PyTorch and ours < torch-export.

Run from the repo root (needs a release build: `cargo build --release --bin hyvideo-export`, which finds
the ONNX Runtime library that `scripts/setup.sh` fetches,
and the bench venv: `./benches/native/setup.sh`):

    ./benches/native/setup.sh
    .venv-bench/bin/python benches/native/transformer_forward.py --threads 2 --json out.json

Exit status: 0 if everything ran (whatever the PASS/FAIL lines say), 1 if a path failed (the
remaining paths are still timed and reported), 2 on a usage error.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import subprocess
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

import numpy as np  # noqa: E402

SMALL_CONFIG = C.SMALL_DIT

MODEL_SEED = 0
INPUT_SEED = 1
GOAL_VS_PYTORCH = 0.8
PARITY_TOL = 1e-4

ORT_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(bool)": np.bool_,
}


# --------------------------------------------------------------------------------------------
# FLOPs
# --------------------------------------------------------------------------------------------


def matmul_flops(cfg: dict, B: int, T: int, H: int, W: int, L: int) -> dict:
    """Analytic multiply-add FLOPs (2 per MAC) of one forward, GEMM-like work only.

    Notation: D = heads·head_dim, M = int(D·mlp_ratio), Dt = text_embed_dim, P = pooled dim,
    C = in_channels, p / pt = spatial / temporal patch, N = (T/pt)(H/p)(W/p) image tokens,
    L = text tokens (padded length: padding is masked, not skipped, so it is computed),
    S = N + L the joint sequence, R / Nd / Ns = refiner / dual / single block counts,
    Co = out_channels. A Linear in→out applied to r rows costs 2·r·in·out.

      patch embed (Conv3d k = s = patch) 2·B·N·(C·pt·p²)·D
      time/guidance/pooled embedders     2·B·[256·D + D·D] · (1 + guidance_embeds)
                                         + 2·B·[P·D + D·D]
      token refiner: its embedders       2·B·[256·D + D·D + Dt·D + D·D]
                     proj_in             2·B·L·Dt·D
                     per block           2·B·L·(4·D² + 2·D·M) + 2·B·D·2D (adaLN gate)
                                         + 4·B·L²·D (QKᵀ and PV)
      dual block (each)                  2·B·D·6D·2 (adaLN-Zero, video + text)
                                         + 2·B·S·(4·D² + 2·D·M) (q,k,v,o and FF, both streams)
                                         + 4·B·S²·D (joint attention QKᵀ and PV)
      single block (each)                2·B·D·3D + 2·B·S·(3·D² + D·M + (D+M)·D)
                                         + 4·B·S²·D
      final norm + proj_out              2·B·D·2D + 2·B·N·D·(pt·p²·Co)

    Elementwise work (norms, RoPE, softmax, GELU, modulation) is not counted.
    """
    D = cfg["num_attention_heads"] * cfg["attention_head_dim"]
    M = int(D * cfg["mlp_ratio"])
    Dt, P, Cin, Co = cfg["text_embed_dim"], cfg["pooled_projection_dim"], cfg["in_channels"], cfg["out_channels"]
    p, pt = cfg["patch_size"], cfg["patch_size_t"]
    R, Nd, Ns = cfg["num_refiner_layers"], cfg["num_layers"], cfg["num_single_layers"]
    N = (T // pt) * (H // p) * (W // p)
    S = N + L
    g = 2 if cfg["guidance_embeds"] else 1

    terms = {
        "patch_embed": 2 * B * N * (Cin * pt * p * p) * D,
        "condition_embedders": 2 * B * ((256 * D + D * D) * g + P * D + D * D),
        "refiner_embedders": 2 * B * (256 * D + D * D + Dt * D + D * D),
        "refiner_proj_in": 2 * B * L * Dt * D,
        "refiner_linear": R * (2 * B * L * (4 * D * D + 2 * D * M) + 2 * B * D * 2 * D),
        "refiner_attention": R * 4 * B * L * L * D,
        "dual_linear": Nd * (2 * B * D * 6 * D * 2 + 2 * B * S * (4 * D * D + 2 * D * M)),
        "dual_attention": Nd * 4 * B * S * S * D,
        "single_linear": Ns * (2 * B * D * 3 * D + 2 * B * S * (3 * D * D + D * M + (D + M) * D)),
        "single_attention": Ns * 4 * B * S * S * D,
        "final": 2 * B * D * 2 * D + 2 * B * N * D * (pt * p * p * Co),
    }
    terms["total"] = sum(terms.values())
    terms["attention_total"] = terms["refiner_attention"] + terms["dual_attention"] + terms["single_attention"]
    terms["tokens"] = {"image": N, "text": L, "joint": S}
    return terms


def counted_flops(model, args) -> float | None:
    """Cross-check: FLOPs torch's FlopCounterMode sees in one eager forward (mm/addmm/conv/SDPA)."""
    import torch

    try:
        from torch.utils.flop_counter import FlopCounterMode
    except ImportError:
        return None
    with torch.inference_mode(), FlopCounterMode(display=False) as fc:
        model(*args)
    return float(fc.get_total_flops())


# --------------------------------------------------------------------------------------------
# Model and inputs
# --------------------------------------------------------------------------------------------


def build_small_checkpoint(model_dir: Path, cfg: dict, seed: int) -> None:
    """Create the seeded small transformer and save it as `<model_dir>/transformer/` in bf16."""
    import torch
    from diffusers import HunyuanVideoTransformer3DModel

    torch.manual_seed(seed)
    model = HunyuanVideoTransformer3DModel(**cfg)
    gen = torch.Generator().manual_seed(seed)
    # Norm scales (LayerNorm with affine in the refiner, the q/k RMSNorms) get 1 + N(0, 0.02);
    # every other parameter (weights and biases) N(0, 0.02).
    norm_weight_ids = {
        id(mod.weight) for mod in model.modules()
        if ("LayerNorm" in type(mod).__name__ or "RMSNorm" in type(mod).__name__)
        and getattr(mod, "weight", None) is not None
    }
    with torch.no_grad():
        for _, prm in sorted(model.named_parameters(), key=lambda kv: kv[0]):
            noise = torch.randn(prm.shape, generator=gen, dtype=torch.float32) * 0.02
            prm.copy_(1.0 + noise if id(prm) in norm_weight_ids else noise)
    from diffusers.utils import logging as dlog

    level = dlog.get_verbosity()
    dlog.set_verbosity_error()  # silence "modules that should be kept in float32: []" from .to()
    try:
        model = model.to(torch.bfloat16)  # real checkpoints are bf16; the fp32 paths load these values
    finally:
        dlog.set_verbosity(level)
    out = model_dir / "transformer"
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    C.write_model_index(model_dir)


def checkpoint_matches(model_dir: Path, cfg: dict) -> bool:
    """True if `<model_dir>/transformer/` already holds this config's checkpoint (a reused
    --work dir); the weights are a pure function of the config and MODEL_SEED."""
    t = model_dir / "transformer"
    try:
        saved = json.loads((t / "config.json").read_text())
    except (OSError, ValueError):
        return False
    if not (t / "diffusion_pytorch_model.safetensors").exists():
        return False
    return all(json.dumps(saved.get(k)) == json.dumps(list(v) if isinstance(v, tuple) else v)
               for k, v in cfg.items())


def make_inputs(B: int, Cin: int, T: int, H: int, W: int, L: int, valid: int, Dt: int, P: int,
                timestep: float, guidance: float, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    mask = np.zeros((B, L), dtype=np.int64)
    mask[:, :valid] = 1
    return {
        "hidden_states": rng.standard_normal((B, Cin, T, H, W), dtype=np.float32),
        "timestep": np.full((B,), timestep, dtype=np.float32),
        "encoder_hidden_states": rng.standard_normal((B, L, Dt), dtype=np.float32),
        "encoder_attention_mask": mask,
        "pooled_projections": rng.standard_normal((B, P), dtype=np.float32),
        "guidance": np.full((B,), guidance, dtype=np.float32),
    }


def make_wrapper(model):
    import torch

    class ReturnTensor(torch.nn.Module):
        """Positional inputs in docs/architecture.md order, a plain tensor out (return_dict=False)."""

        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, hidden_states, timestep, encoder_hidden_states, encoder_attention_mask,
                    pooled_projections, guidance):
            return self.m(hidden_states, timestep, encoder_hidden_states, encoder_attention_mask,
                          pooled_projections, guidance, return_dict=False)[0]

    return ReturnTensor(model).eval()


# --------------------------------------------------------------------------------------------
# torch.onnx.export
# --------------------------------------------------------------------------------------------


def torch_onnx_export(wrapper, args, path: Path, mode: str, opset: int) -> dict:
    """Export with dynamo=True first (unless mode says otherwise), falling back to the TorchScript
    exporter. Returns a description of what worked."""
    import torch

    attempts = ["dynamo", "torchscript"] if mode == "auto" else [mode]
    errors = {}
    for m in attempts:
        for ops in dict.fromkeys([opset, 18, 17]):  # try the requested opset first
            if path.exists():
                path.unlink()
            t0 = time.perf_counter()
            try:
                kw = dict(input_names=list(C.TRANSFORMER_INPUTS), output_names=["sample"],
                          opset_version=ops)
                if m == "dynamo":
                    torch.onnx.export(wrapper, args, str(path), dynamo=True, external_data=True, **kw)
                else:
                    torch.onnx.export(wrapper, args, str(path), dynamo=False, **kw)
                return {"mode": m, "opset": ops, "export_s": time.perf_counter() - t0,
                        "failed_attempts": errors}
            except Exception as e:  # noqa: BLE001 - report and try the next option
                errors[f"{m}/opset{ops}"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    raise RuntimeError(f"torch.onnx.export failed in every mode: {errors}")


def patch_bool_where(path: Path) -> list[str]:
    """ONNX Runtime's CPU provider has no bool kernel for `Where` (NOT_IMPLEMENTED "Where(16)"),
    and the dynamo exporter emits one for diffusers' `attention_mask.masked_fill(mask, False)` on
    a bool tensor. Rewrite each bool-typed Where as Cast(uint8) → Where → Cast(bool), which
    computes the same values; nothing else in the graph is touched (weights stay in the external
    data file). Returns the names of the rewritten nodes."""
    import onnx
    from onnx import TensorProto, helper

    m = onnx.load(str(path), load_external_data=False)
    inferred = onnx.shape_inference.infer_shapes(m)
    types = {}
    for vi in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        types[vi.name] = vi.type.tensor_type.elem_type
    for init in m.graph.initializer:
        types[init.name] = init.data_type
    new_nodes, patched = [], []
    for n in m.graph.node:
        if n.op_type == "Where" and types.get(n.output[0]) == TensorProto.BOOL:
            x8, y8, o8 = (f"{n.name}__u8_{k}" for k in ("x", "y", "out"))
            new_nodes += [
                helper.make_node("Cast", [n.input[1]], [x8], to=TensorProto.UINT8, name=f"{n.name}__cast_x"),
                helper.make_node("Cast", [n.input[2]], [y8], to=TensorProto.UINT8, name=f"{n.name}__cast_y"),
                helper.make_node("Where", [n.input[0], x8, y8], [o8], name=n.name),
                helper.make_node("Cast", [o8], [n.output[0]], to=TensorProto.BOOL, name=f"{n.name}__cast_out"),
            ]
            patched.append(n.name)
        else:
            new_nodes.append(n)
    if patched:
        del m.graph.node[:]
        m.graph.node.extend(new_nodes)
        onnx.save(m, str(path))  # initializers keep their external-data references
    return patched


def describe_onnx(path: Path) -> dict:
    """Op histogram and input declarations of an ONNX file (weights not loaded)."""
    import collections

    import onnx

    m = onnx.load(str(path), load_external_data=False)
    ops = collections.Counter(n.op_type for n in m.graph.node)
    for fn in m.functions:
        ops.update(f"{fn.name}:{n.op_type}" for n in fn.node)
    inputs = {}
    for i in m.graph.input:
        tt = i.type.tensor_type
        inputs[i.name] = {
            "elem_type": onnx.TensorProto.DataType.Name(tt.elem_type),
            "shape": [d.dim_param or d.dim_value for d in tt.shape.dim],
        }
    return {"opsets": {o.domain or "ai.onnx": o.version for o in m.opset_import},
            "nodes": len(m.graph.node), "ops": dict(ops.most_common()), "inputs": inputs}


# --------------------------------------------------------------------------------------------
# ONNX Runtime
# --------------------------------------------------------------------------------------------


def ort_session(path: Path, threads: int):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])


def valid_text_only(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The inputs as `hyvideo` gives our graph: the text cropped to its valid tokens (our graph
    has no mask input; diffusers masks padded text everywhere and discards its outputs, so this
    is exact). Batch 1 here."""
    mask = inputs["encoder_attention_mask"]
    valid = int(mask[0].sum())
    out = dict(inputs)
    out["encoder_hidden_states"] = inputs["encoder_hidden_states"][:, :valid]
    out["encoder_attention_mask"] = mask[:, :valid]
    return out


def ort_feeds(sess, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Feed each declared input the named array, cast to the dtype the graph declares. Inputs
    the graph dropped (unused) are simply not fed."""
    feeds = {}
    for i in sess.get_inputs():
        if i.name not in inputs:
            raise KeyError(f"graph input {i.name!r} ({i.type}) is not one of {list(inputs)}")
        dt = ORT_DTYPES.get(i.type)
        if dt is None:
            raise TypeError(f"graph input {i.name!r} has unsupported type {i.type}")
        feeds[i.name] = np.ascontiguousarray(inputs[i.name].astype(dt, copy=False))
    return feeds


def rel_diff(a: np.ndarray, ref: np.ndarray) -> dict:
    a = a.astype(np.float64)
    ref = ref.astype(np.float64)
    if a.shape != ref.shape:
        return {"error": f"shape {list(a.shape)} vs reference {list(ref.shape)}"}
    scale = float(np.abs(ref).max())
    mad = float(np.abs(a - ref).max())
    return {"max_abs_diff": mad, "ref_max_abs": scale, "rel": mad / scale if scale else float("inf"),
            "finite": bool(np.isfinite(a).all())}


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def parse_args(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run (repo root): ./benches/native/setup.sh; "
               ".venv-bench/bin/python benches/native/transformer_forward.py --threads 2 --json out.json",
    )
    ap.add_argument("--threads", type=int, default=2, help="threads for every path (default 2)")
    ap.add_argument("--runs", type=int, default=7, help="timed runs per path (default 7)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed warm-up runs per path (default 2)")
    ap.add_argument("--work", help="work dir (default: a fresh temp dir under target/bench-work/, "
                                   "deleted at the end unless --keep)")
    ap.add_argument("--keep", action="store_true", help="keep the temp work dir")
    ap.add_argument("--hyvideo-export", default=None,
                    help="exporter binary (default target/release/hyvideo-export under the repo root)")
    ap.add_argument("--json", help="also write the results as JSON to this file")
    ap.add_argument("--paths", default="pytorch,torch-export,ours,ours-standard",
                    help="comma-separated subset of pytorch,torch-export,ours (default all three)")
    ap.add_argument("--torch-export-mode", choices=["auto", "dynamo", "torchscript"], default="auto",
                    help="auto = dynamo=True, falling back to dynamo=False (default)")
    ap.add_argument("--opset", type=int, default=20, help="opset for torch.onnx.export (default 20)")
    ap.add_argument("--gemm-size", type=int, default=2048, help="M = N = K of the plain GEMM (default 2048)")
    ap.add_argument("--gemm-runs", type=int, default=7, help="timed GEMM runs (default 7)")
    ap.add_argument("--refiner-layers", type=int, default=SMALL_CONFIG["num_refiner_layers"],
                    help="num_refiner_layers of the small config (default 2, the real model's)")
    ap.add_argument("--frames", type=int, default=5, help="latent frames T (default 5)")
    ap.add_argument("--height", type=int, default=32, help="latent height H (default 32)")
    ap.add_argument("--width", type=int, default=32, help="latent width W (default 32)")
    ap.add_argument("--batch", type=int, default=1, help="batch size B (default 1)")
    ap.add_argument("--text-len", type=int, default=64, help="text tokens L (default 64)")
    ap.add_argument("--text-valid", type=int, default=48, help="valid (mask = 1) text tokens (default 48)")
    ap.add_argument("--pause", type=float, default=0.5,
                    help="seconds of idle between timed phases, so the previous phase's worker "
                         "threads stop spinning (default 0.5)")
    args = ap.parse_args(argv)
    args.paths = [p.strip() for p in args.paths.split(",") if p.strip()]
    bad = set(args.paths) - {"pytorch", "torch-export", "ours", "ours-standard"}
    if bad or not args.paths:
        ap.error(f"--paths: unknown {sorted(bad)}")
    if not (0 < args.text_valid <= args.text_len):
        ap.error("--text-valid must be in 1..--text-len")
    if args.threads < 1 or args.runs < 1:
        ap.error("--threads and --runs must be ≥ 1")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    threads = args.threads
    # Set before torch/ORT spin up their pools.
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))

    import torch
    import onnxruntime as ort
    import diffusers

    torch.set_num_threads(threads)

    cfg = dict(SMALL_CONFIG, num_refiner_layers=args.refiner_layers)
    B, T, H, W, L = args.batch, args.frames, args.height, args.width, args.text_len
    work, is_temp = C.make_work_dir(args.work, "transformer_forward-")
    model_dir = work / "small"
    bundle_dir = work / "bundle"
    te_dir = work / "torch_export"
    exporter = C.resolve_exporter(args.hyvideo_export)
    failures: list[str] = []

    print(f"work dir: {work}")
    print(f"threads: {threads} (torch intra-op {torch.get_num_threads()}, ORT intra_op_num_threads "
          f"{threads}, inter_op 1, ORT_ENABLE_ALL, sequential)")
    print(f"torch {torch.__version__}, diffusers {diffusers.__version__}, onnxruntime {ort.__version__}")

    report: dict = {
        "bench": "transformer_forward",
        "command": " ".join([sys.executable, *sys.argv]),
        "machine": C.machine_info(),
        "git_head": C.git_head(),
        "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__,
                     "onnxruntime": ort.__version__, "numpy": np.__version__},
        "threads": threads,
        "runs": args.runs,
        "warmup": args.warmup,
        "config": cfg,
        "input": {"B": B, "C": cfg["in_channels"], "T": T, "H": H, "W": W, "L": L,
                  "valid_text_tokens": args.text_valid, "timestep": 500.0, "guidance": 6000.0},
        "paths": {},
    }

    try:
        # ---------------- model, inputs, reference ----------------
        t0 = time.perf_counter()
        if not checkpoint_matches(model_dir, cfg):
            if model_dir.exists():
                shutil.rmtree(model_dir)
            build_small_checkpoint(model_dir, cfg, MODEL_SEED)
        print(f"small checkpoint: {model_dir / 'transformer'} "
              f"({(model_dir / 'transformer' / 'diffusion_pytorch_model.safetensors').stat().st_size / C.MIB:.1f} MiB bf16, "
              f"{time.perf_counter() - t0:.1f} s)")

        from diffusers import HunyuanVideoTransformer3DModel

        model = HunyuanVideoTransformer3DModel.from_pretrained(
            model_dir / "transformer", torch_dtype=torch.float32).float().eval()
        n_params = sum(p.numel() for p in model.parameters())
        report["params"] = n_params
        wrapper = make_wrapper(model)
        inputs = make_inputs(B, cfg["in_channels"], T, H, W, L, args.text_valid, cfg["text_embed_dim"],
                             cfg["pooled_projection_dim"], 500.0, 6000.0, INPUT_SEED)
        targs = tuple(torch.from_numpy(inputs[k]) for k in C.TRANSFORMER_INPUTS)
        with torch.inference_mode():
            ref = wrapper(*targs).numpy()
        report["output_shape"] = list(ref.shape)
        report["ref_max_abs"] = float(np.abs(ref).max())

        flops = matmul_flops(cfg, B, T, H, W, L)
        counted = counted_flops(wrapper, targs)
        report["flops"] = dict(flops, torch_flop_counter=counted)
        gflop = flops["total"] / 1e9
        print(f"model: {n_params / 1e6:.2f} M params; tokens image {flops['tokens']['image']} + text "
              f"{L} = {flops['tokens']['joint']}; analytic {gflop:.2f} GFLOP per forward "
              f"(attention {flops['attention_total'] / 1e9:.2f})"
              + (f"; torch FlopCounterMode {counted / 1e9:.2f}" if counted else ""))
        if counted and abs(counted - flops["total"]) > 0.01 * flops["total"]:
            print(f"warning: analytic FLOPs differ from FlopCounterMode by "
                  f"{(flops['total'] - counted) / counted:+.1%}")

        # ---------------- preparation: both ONNX exports (before any timing) ----------------
        te_path = te_dir / "transformer.onnx"
        if "torch-export" in args.paths:
            te_dir.mkdir(parents=True, exist_ok=True)
            try:
                info = torch_onnx_export(wrapper, targs, te_path, args.torch_export_mode, args.opset)
                info["ort_patches"] = patch_bool_where(te_path)
                info["graph"] = describe_onnx(te_path)
                report["torch_export"] = info
                print(f"torch.onnx.export: mode {info['mode']}, opset {info['opset']}, "
                      f"{info['export_s']:.1f} s, {info['graph']['nodes']} nodes")
                if info["failed_attempts"]:
                    print(f"  failed attempts first: {info['failed_attempts']}")
                if info["ort_patches"]:
                    print(f"  rewrote bool Where for ONNX Runtime (no bool kernel): {info['ort_patches']}")
            except Exception as e:  # noqa: BLE001
                traceback.print_exc()
                failures.append(f"torch-export: export failed: {e}")
                report["paths"]["torch-export"] = {"error": str(e)}

        ours_path = bundle_dir / "transformer.onnx"
        fused_path = None
        if "ours" in args.paths or "ours-standard" in args.paths:
            if bundle_dir.exists():
                shutil.rmtree(bundle_dir)
            cmd = C.run_exporter(exporter, model_dir, bundle_dir)
            print("$ " + " ".join(cmd))
            t0 = time.perf_counter()
            try:
                r = subprocess.run(cmd, capture_output=True, text=True)
                dt = time.perf_counter() - t0
                if r.returncode != 0 or not ours_path.exists():
                    sys.stderr.write(r.stderr)
                    msg = (f"ours: export failed (exit {r.returncode})"
                           + ("" if r.returncode else f"; {ours_path} was not written"))
                    failures.append(msg)
                    report["paths"]["ours"] = {"error": msg, "stderr": r.stderr[-4000:]}
                else:
                    report["ours_export"] = {"export_s": dt, "graph": describe_onnx(ours_path)}
                    print(f"hyvideo-export: {dt:.1f} s, {report['ours_export']['graph']['nodes']} nodes")
                    # What `hyvideo --backend cpu` runs: the CPU engine, attention fused into
                    # com.microsoft.MultiHeadAttention (the bundle graph keeps the standard form).
                    build = [str(exporter), "build", "--bundle", str(bundle_dir), "--backend", "cpu",
                             "--threads", str(threads),
                             "--shapes", str(C.REPO_ROOT / "configs/shapes/720p.yaml")]
                    print("$ " + " ".join(build))
                    r = subprocess.run(build, capture_output=True, text=True)
                    found = sorted((bundle_dir / "engines").glob("cpu-*/transformer.onnx"))
                    if r.returncode != 0 or not found:
                        sys.stderr.write(r.stderr)
                        failures.append(f"ours: engine build failed (exit {r.returncode})")
                        report["paths"]["ours"] = {"error": "engine build failed", "stderr": r.stderr[-4000:]}
                    else:
                        fused_path = found[0]
                        report["ours_engine"] = {"graph": describe_onnx(fused_path)}
            except OSError as e:
                failures.append(f"ours: cannot run {exporter}: {e}")
                report["paths"]["ours"] = {"error": str(e)}

        # ---------------- timing ----------------
        gc.collect()
        time.sleep(args.pause)
        n = args.gemm_size
        a = torch.randn(n, n, generator=torch.Generator().manual_seed(2))
        b = torch.randn(n, n, generator=torch.Generator().manual_seed(3))
        with torch.inference_mode():
            gemm_ms = C.time_fn(lambda: torch.mm(a, b), 2, args.gemm_runs)
        gemm = C.summarize_ms(gemm_ms)
        gemm["gflops"] = 2 * n ** 3 / (gemm["median_ms"] * 1e-3) / 1e9
        gemm["size"] = n
        report["gemm"] = gemm
        del a, b
        print(f"GEMM {n}³ fp32 torch.mm: median {gemm['median_ms']:.1f} ms -> {gemm['gflops']:.1f} GFLOP/s")

        outputs: dict[str, np.ndarray] = {}
        if "pytorch" in args.paths:
            time.sleep(args.pause)
            with torch.inference_mode():
                ms = C.time_fn(lambda: wrapper(*targs), args.warmup, args.runs)
            report["paths"]["pytorch"] = C.summarize_ms(ms)
            print(f"pytorch eager: median {statistics_str(ms)}")

        def time_ort(key: str, path: Path):
            time.sleep(args.pause)
            try:
                t0 = time.perf_counter()
                sess = ort_session(path, threads)
                load_s = time.perf_counter() - t0
                feeds = ort_feeds(sess, valid_text_only(inputs) if key.startswith("ours") else inputs)
                out_name = sess.get_outputs()[0].name
                if key == "ours" and out_name != "sample":
                    print(f"warning: our graph's first output is {out_name!r}, docs/architecture.md says 'sample'")
                outputs[key] = sess.run([out_name], feeds)[0]
                ms = C.time_fn(lambda: sess.run([out_name], feeds), args.warmup, args.runs)
                res = C.summarize_ms(ms)
                res["session_load_s"] = load_s
                res["feeds"] = {i.name: i.type for i in sess.get_inputs()}
                report["paths"][key] = res
                print(f"{key} (onnxruntime): median {statistics_str(ms)}")
                del sess
            except Exception as e:  # noqa: BLE001
                traceback.print_exc()
                failures.append(f"{key}: onnxruntime failed: {e}")
                report["paths"][key] = {"error": str(e)}

        if "torch-export" in args.paths and te_path.exists() and "error" not in report["paths"].get("torch-export", {}):
            time_ort("torch-export", te_path)
        if "ours" in args.paths and fused_path is not None:
            time_ort("ours", fused_path)
        if "ours-standard" in args.paths and "error" not in report["paths"].get("ours", {}):
            time_ort("ours-standard", ours_path)

        # ---------------- parity ----------------
        for key, out in outputs.items():
            d = rel_diff(out, ref)
            report["paths"][key]["parity_vs_pytorch"] = d
    finally:
        if is_temp and not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    # ---------------- report ----------------
    print_report(report, failures)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=str) + "\n")
        print(f"wrote {args.json}")
    return 1 if failures else 0


def statistics_str(ms: list[float]) -> str:
    import statistics

    return f"{statistics.median(ms):.1f} ms (min {min(ms):.1f})"


def print_report(report: dict, failures: list[str]) -> None:
    paths = report["paths"]
    gflop = report["flops"]["total"] / 1e9 if "flops" in report else None
    gemm = report.get("gemm", {}).get("gflops")
    pt = paths.get("pytorch", {}).get("median_ms")
    print()
    print(f"One transformer forward, small config, fp32, {report['threads']} thread(s), "
          f"{report['runs']} timed runs after {report['warmup']} warm-up; "
          + (f"{gflop:.2f} GFLOP (analytic GEMM-like work)" if gflop else ""))
    rows = []
    labels = {"pytorch": "PyTorch eager (diffusers)", "torch-export": "torch.onnx.export + ORT",
              "ours": "ours, CPU engine (fused MultiHeadAttention) + ORT",
              "ours-standard": "ours, bundle graph (standard attention) + ORT"}
    for key in ("pytorch", "torch-export", "ours", "ours-standard"):
        r = paths.get(key)
        if r is None:
            continue
        if "error" in r:
            rows.append([labels[key], "error", "", "", "", "", ""])
            continue
        med = r["median_ms"]
        gfs = gflop / (med * 1e-3) if gflop else None
        r["gflops"] = gfs
        r["fraction_of_gemm"] = gfs / gemm if gfs and gemm else None
        par = r.get("parity_vs_pytorch", {}).get("rel")
        rows.append([
            labels[key], f"{med:.1f}", f"{r['min_ms']:.1f}",
            f"{med / pt:.3f}" if pt else "-",
            f"{gfs:.1f}" if gfs else "-",
            f"{100 * gfs / gemm:.1f} %" if gfs and gemm else "-",
            f"{par:.2e}" if par is not None else "-",
        ])
    if gemm:
        g = report["gemm"]
        rows.append([f"plain GEMM torch.mm {g['size']}³", f"{g['median_ms']:.1f}", f"{g['min_ms']:.1f}",
                     "", f"{gemm:.1f}", "100.0 %", ""])
    C.print_table(["path", "median ms", "min ms", "× PyTorch", "GFLOP/s", "% of GEMM", "rel. diff vs PyTorch"],
                  rows)

    ours = paths.get("ours", {}).get("median_ms")
    te = paths.get("torch-export", {}).get("median_ms")
    ratios = {}
    if ours and pt:
        ratios["ours_over_pytorch"] = ours / pt
    if ours and te:
        ratios["ours_over_torch_export"] = ours / te
    if te and pt:
        ratios["torch_export_over_pytorch"] = te / pt
    report["ratios"] = ratios
    print()
    for k, v in ratios.items():
        print(f"{k.replace('_over_', ' / ').replace('_', '-')}: {v:.3f}")

    goals = {}
    if "ours_over_pytorch" in ratios:
        goals[f"ours <= {GOAL_VS_PYTORCH}x pytorch"] = ratios["ours_over_pytorch"] <= GOAL_VS_PYTORCH
    if "ours_over_torch_export" in ratios:
        goals["ours < torch-export"] = ratios["ours_over_torch_export"] < 1.0
    for key in ("ours", "torch-export"):
        par = paths.get(key, {}).get("parity_vs_pytorch", {})
        if "rel" in par:
            if key == "ours":
                goals[f"ours parity <= {PARITY_TOL:g}"] = par["rel"] <= PARITY_TOL and par["finite"]
            else:
                print(f"torch-export parity (informational): rel {par['rel']:.2e}")
    report["goals"] = goals
    for k, ok in goals.items():
        print(f"{'PASS' if ok else 'FAIL'}: {k}")
    if "ours" in paths and "error" in paths["ours"]:
        print("FAIL: ours did not run (goal checks skipped): " + paths["ours"]["error"])
    report["failures"] = failures
    for f in failures:
        print(f"error: {f}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
