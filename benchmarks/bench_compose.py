"""XAttention composed with torch.compile and diffusers' First-Block-Cache, on one GPU.

Three parts, one per command (each fits the 10-minute limit of one run at 720p; ``--part all`` runs them in turn):

- ``step``: one full-size HunyuanVideo transformer forward (= one denoising step; random bf16 weights, the
  published configuration, as ``bench_transformer.py``) at ``--size``, eager and compiled (inductor; ``--compile
  whole``: ``torch.compile(transformer)``, ``regional``: ``transformer.compile_repeated_blocks()``), for our dense
  path (tau = 1) and XAttention (``--rows sparse``: tau = 0.9 with ``max_density`` 0.3). Per row: compile +
  first-call seconds, median forward ms of ``--repeats`` timed calls (the runtime reset before each, so every
  timed call estimates its masks), density, relative L2 of the compiled output against the eager one, graph
  count and graph breaks (``torch._dynamo.explain``, once per config, whole-model compilation only).
- ``e2e``: a ``--steps``-step flow-matching denoising loop at ``--size`` driving the same transformer as the
  HunyuanVideo pipeline does (``cache_context("cond")`` per step, stateful hooks reset at the end), random
  weights and random text embeddings: stock diffusers attention, XAttention alone (``--warmup`` dense steps),
  First-Block-Cache alone (``--fbc-threshold``), and both. Per row: denoise seconds, speedup vs stock, steps
  whose tail blocks the cache skipped, density after warmup, relative L2 of the final latents vs stock (random
  weights: a speed measurement; the L2 says nothing about quality).
- ``quality``: the embedded proxy model (trained here on procedural video) at 17 x 64 x 64, ``--prompts``
  held-out captions, 30 steps: dense, XAttention, First-Block-Cache and both, PSNR of each video against the
  dense video of the same seed, density, skipped steps, seconds. Labelled as the proxy's numbers.
- ``determinism``: the same sparse forward twice at ``--size``: are the estimated masks identical, and the largest
  output difference.

    python benchmarks/bench_compose.py --part step --size 720p --rows dense --out $OUT/compose_step_dense.json
    python benchmarks/bench_compose.py --part step --size 720p --rows sparse --out $OUT/compose_step_sparse.json
    python benchmarks/bench_compose.py --part step --size 720p --compile regional --out $OUT/compose_step_regional.json
    python benchmarks/bench_compose.py --part e2e --size 720p --steps 8 --rows stock,xattention --out $OUT/e2e_a.json
    python benchmarks/bench_compose.py --part e2e --size 720p --steps 8 --rows fbc,both --out $OUT/e2e_b.json
    python benchmarks/bench_compose.py --part quality --out $OUT/compose_quality.json
    python benchmarks/bench_compose.py --part determinism --size 720p --out $OUT/compose_determinism.json
    python benchmarks/bench_compose.py --tiny --out out/compose_tiny.json     # CPU smoke test, all parts
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_transformer import LATENT, TINY_LATENT, build_model, make_inputs, rel_l2, sync  # noqa: E402

from xattn_video import XAttentionConfig, apply_xattention, remove_xattention  # noqa: E402


def sparse_config(tiny: bool, **overrides: Any) -> XAttentionConfig:
    """tau = 0.9 capped at 30% of the blocks (the 720p fast preset's op), or the given overrides."""
    fields: dict[str, Any] = {"block_size": 64, "stride": 8} if tiny else {}
    fields.update(threshold=0.9, max_density=0.3)
    fields.update(overrides)
    return XAttentionConfig(**fields)


def _graphs(model, inputs) -> dict:
    explained = torch._dynamo.explain(model)(**inputs)
    torch._dynamo.reset()
    return {"graphs": explained.graph_count, "graph_breaks": explained.graph_break_count,
            "break_reasons": sorted({b.reason.splitlines()[0][:120] for b in explained.break_reasons})}


def part_step(args, device, dtype) -> list[dict]:
    """Eager vs compiled transformer forward, dense (ours, tau = 1) and sparse."""
    model = build_model(device, dtype, args.tiny)
    latent = TINY_LATENT["tiny"] if args.tiny else LATENT[args.size]
    inputs = make_inputs(model, latent, args.text, args.valid_text, device, dtype)
    rows = []
    configs = [("dense tau=1", dict(threshold=1.0, max_density=None)), ("xattn max_density=0.3", {})]
    wanted = args.rows.split(",") if args.rows else ["dense", "sparse"]
    if args.tiny and not args.rows:  # the smoke test: the sparse row exercises every line of the loop
        wanted = ["sparse"]
    configs = [c for c, key in zip(configs, ("dense", "sparse")) if key in wanted]
    for label, overrides in configs:
        runtime = apply_xattention(model, sparse_config(args.tiny, warmup_steps=0, **overrides))
        eager_out = None
        for mode in ("eager", "compiled"):
            fn = model
            if mode == "compiled" and args.compile == "regional":
                model.compile_repeated_blocks(backend=args.backend)  # diffusers' regional compilation
            elif mode == "compiled":
                fn = torch.compile(model, backend=args.backend)
            with torch.no_grad():
                runtime.reset()
                sync(device)
                t0 = time.perf_counter()
                out = fn(**inputs)[0]
                sync(device)
                first_s = time.perf_counter() - t0
                times = []
                for _ in range(args.repeats):
                    runtime.reset()  # every timed forward estimates its masks (no reuse)
                    sync(device)
                    t0 = time.perf_counter()
                    out = fn(**inputs)[0]
                    sync(device)
                    times.append((time.perf_counter() - t0) * 1e3)
            densities = [d for layers in runtime.density_table().values() for d in layers.values()]
            row = {"row": label, "mode": mode, "first_call_s": first_s, "forward_ms": statistics.median(times),
                   "forward_ms_all": times, "density": sum(densities) / len(densities) if densities else 1.0,
                   "finite": bool(torch.isfinite(out).all())}
            if mode == "eager":
                eager_out = out.float().clone()
            else:
                row.update(compile=args.compile, rel_l2_vs_eager=rel_l2(out.float(), eager_out))
                for m in model.modules():  # back to eager (regional compilation is in place)
                    m._compiled_call_impl = None
                if args.compile == "whole":
                    with torch.no_grad():
                        row.update(_graphs(model, inputs))
            rows.append(row)
            print(f"  step {label:24s} {mode:9s} {row['forward_ms']:10.1f} ms  first {first_s:7.1f} s  "
                  f"density {row['density']:.3f}", flush=True)
            del out
        remove_xattention(model)
        torch._dynamo.reset()
    for r in rows:
        base = next(x for x in rows if x["row"] == r["row"] and x["mode"] == "eager")
        r["speedup_vs_eager"] = base["forward_ms"] / r["forward_ms"]
    return rows


class _BlockCounter:
    """Counts the forwards of the last block's attention module: a step whose tail blocks First-Block-Cache
    skipped runs none (a skipped block returns before its submodules; its own forward hooks still fire)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.calls = 0
        self.handle = model.single_transformer_blocks[-1].attn.register_forward_hook(lambda *a: self._hit())

    def _hit(self) -> None:
        self.calls += 1


def denoise(model, inputs: dict, steps: int, device) -> tuple[torch.Tensor, list[float], int]:
    """The HunyuanVideo pipeline's loop without its encoders and VAE: (latents, step seconds, steps computed
    in full)."""
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.hooks import HookRegistry

    scheduler = FlowMatchEulerDiscreteScheduler(shift=7.0)
    scheduler.set_timesteps(steps, device=device)
    latents = inputs["hidden_states"].clone()
    counter = _BlockCounter(model)
    step_s = []
    try:
        with torch.no_grad():
            for t in scheduler.timesteps:
                sync(device)
                t0 = time.perf_counter()
                with model.cache_context("cond"):
                    pred = model(**{**inputs, "hidden_states": latents,
                                    "timestep": t.expand(latents.shape[0]).to(latents.dtype)})[0]
                latents = scheduler.step(pred, t, latents, return_dict=False)[0]
                sync(device)
                step_s.append(time.perf_counter() - t0)
    finally:
        counter.handle.remove()
        HookRegistry.check_if_exists_or_initialize(model).reset_stateful_hooks()  # as the pipeline does
    return latents, step_s, counter.calls


E2E_ROWS = {"stock": ("stock", False, False), "xattention": ("xattention", True, False),
            "fbc": ("first-block-cache", False, True), "both": ("xattention + first-block-cache", True, True)}


def part_e2e(args, device, dtype) -> list[dict]:
    from diffusers.hooks import FirstBlockCacheConfig

    model = build_model(device, dtype, args.tiny)
    latent = TINY_LATENT["tiny"] if args.tiny else LATENT[args.size]
    inputs = make_inputs(model, latent, args.text, args.valid_text, device, dtype)
    warmup = min(args.warmup, args.steps)
    # untimed: kernel compilation and autotuning fall on no measured run
    apply_xattention(model, sparse_config(args.tiny, warmup_steps=0))
    denoise(model, inputs, 2, device)
    remove_xattention(model)
    rows, stock = [], None
    wanted = args.rows.split(",") if args.rows else list(E2E_ROWS)
    for key in wanted:
        if key not in E2E_ROWS:
            sys.exit(f"--rows {key!r} is not an e2e row; accepted: {', '.join(E2E_ROWS)}")
    for label, xattn, fbc in [E2E_ROWS[key] for key in wanted]:
        runtime = apply_xattention(model, sparse_config(args.tiny, warmup_steps=warmup)) if xattn else None
        if fbc:
            model.enable_cache(FirstBlockCacheConfig(threshold=args.fbc_threshold))
        try:
            latents, step_s, full = denoise(model, inputs, args.steps, device)
        finally:
            if fbc:
                model.disable_cache()
            if xattn:
                remove_xattention(model)
        row = {"row": label, "denoise_s": sum(step_s), "step_s": step_s, "steps": args.steps,
               "steps_skipped_by_cache": args.steps - full, "warmup_steps": warmup if xattn else None,
               "density_after_warmup": runtime.record.mean_density_after_warmup() if runtime else None,
               "finite": bool(torch.isfinite(latents).all())}
        if label == "stock":
            stock = latents.float().clone()
        row["rel_l2_vs_stock"] = rel_l2(latents.float(), stock) if stock is not None else None
        rows.append(row)
        print(f"  e2e {label:32s} {row['denoise_s']:9.1f} s  skipped {row['steps_skipped_by_cache']:3d}  "
              f"density {row['density_after_warmup']}", flush=True)
    for r in rows:  # without a stock row in this run: compare with another run's stock denoise_s
        r["speedup_vs_stock"] = rows[0]["denoise_s"] / r["denoise_s"] if rows[0]["row"] == "stock" else None
    return rows


def part_quality(args, device) -> list[dict]:
    """The proxy: dense, XAttention, First-Block-Cache and both; PSNR against dense of the same seed."""
    from diffusers.hooks import FirstBlockCacheConfig

    from xattn_video.metrics.fidelity import video_psnr
    from xattn_video.pipelines.hunyuan_video import load_pipeline
    from xattn_video.proxy.data import caption_split
    from xattn_video.proxy.model import proxy_call_kwargs
    from xattn_video.proxy.train import sample

    pipe = load_pipeline("proxy", device=device)
    size = {"frames": 5, "height": 16, "width": 16} if args.tiny else {"frames": 17, "height": 64, "width": 64}
    steps = 3 if args.tiny else 30
    block = 32 if args.tiny else 128
    captions = caption_split()[1][:args.prompts]
    seeds = [40_000 + i for i in range(len(captions))]
    xcfg = XAttentionConfig(block_size=block, stride=8, threshold=0.95, max_density=0.3,
                            warmup_steps=max(1, steps // 10))
    if not args.tiny:
        sample(pipe, captions[:1], seeds[:1], steps=2, batch=1, **size)  # untimed warm-up
    # transformer forwards per step: two with true classifier-free guidance
    forwards_per_step = 2 if proxy_call_kwargs(pipe).get("true_cfg_scale", 1.0) > 1.0 else 1
    rows, dense = [], None
    for label, xattn, fbc in [("dense", False, False), ("xattention", True, False), ("first-block-cache", False, True),
                              ("xattention + first-block-cache", True, True)]:
        runtime = apply_xattention(pipe, xcfg) if xattn else None
        if fbc:
            pipe.transformer.enable_cache(FirstBlockCacheConfig(threshold=args.fbc_threshold))
        counter = _BlockCounter(pipe.transformer)
        try:
            sync(device)
            t0 = time.perf_counter()
            videos = sample(pipe, captions, seeds, steps=steps, batch=len(captions), **size)
            sync(device)
            wall = time.perf_counter() - t0
        finally:
            counter.handle.remove()
            if fbc:
                pipe.transformer.disable_cache()
            if xattn:
                remove_xattention(pipe)
        if dense is None:
            dense = videos
        psnr = [video_psnr(r, v) for r, v in zip(dense, videos)]
        finite = [p for p in psnr if p != float("inf")]
        row = {"row": label, "wall_s": wall, "psnr_vs_dense_db": statistics.mean(finite) if finite else "inf",
               "steps_skipped_by_cache": steps - counter.calls // forwards_per_step,
               "density_after_warmup": runtime.record.mean_density_after_warmup() if runtime else None}
        rows.append(row)
        print(f"  quality {label:32s} PSNR {row['psnr_vs_dense_db']}  skipped {row['steps_skipped_by_cache']}  "
              f"{wall:7.1f} s", flush=True)
    return rows


def part_determinism(args, device, dtype) -> list[dict]:
    """Two sparse forwards of the same inputs: are the estimated masks identical, how far apart are the outputs
    (atomics-free kernels should give 0; cuDNN / cuBLAS may not)."""
    import xattn_video.runtime.runtime as runtime_module

    model = build_model(device, dtype, args.tiny)
    latent = TINY_LATENT["tiny"] if args.tiny else LATENT[args.size]
    inputs = make_inputs(model, latent, args.text, args.valid_text, device, dtype)
    runtime = apply_xattention(model, sparse_config(args.tiny, warmup_steps=0))
    estimate = runtime_module.xattention_mask
    runs: list[tuple[torch.Tensor, list[torch.Tensor]]] = []

    def recording(*a: Any, **kw: Any):
        mask = estimate(*a, **kw)
        runs[-1][1].append(mask.kv_indices.clone())
        return mask

    runtime_module.xattention_mask = recording
    try:
        for _ in range(2):
            runtime.reset()
            runs.append((None, []))  # type: ignore[arg-type]
            with torch.no_grad():
                out = model(**inputs)[0]
            runs[-1] = (out.float().clone(), runs[-1][1])
    finally:
        runtime_module.xattention_mask = estimate
        remove_xattention(model)
    (a, ma), (b, mb) = runs
    row = {"row": "sparse forward twice", "masks": len(ma), "masks_identical": len(ma) == len(mb) and all(
        torch.equal(x, y) for x, y in zip(ma, mb)), "max_abs_diff": float((a - b).abs().max()),
        "identical": bool(torch.equal(a, b))}
    print(f"  determinism masks identical {row['masks_identical']} ({row['masks']})  max |diff| {row['max_abs_diff']:.3g}",
          flush=True)
    return [row]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--part", choices=["step", "e2e", "quality", "determinism", "all"], default="all")
    ap.add_argument("--size", choices=sorted(LATENT), default="720p")
    ap.add_argument("--steps", type=int, default=10, help="e2e: denoising steps")
    ap.add_argument("--warmup", type=int, default=1, help="e2e: dense warmup steps of XAttention")
    ap.add_argument("--fbc-threshold", type=float, default=0.05, help="FirstBlockCacheConfig threshold")
    ap.add_argument("--repeats", type=int, default=2, help="step: timed forwards per row")
    ap.add_argument("--backend", default="inductor", help="step: torch.compile backend")
    ap.add_argument("--compile", choices=["whole", "regional"], default="whole",
                    help="step: torch.compile(transformer), or transformer.compile_repeated_blocks() (each block "
                    "class compiled once: minutes less to compile a 60-block model)")
    ap.add_argument("--prompts", type=int, default=4, help="quality: held-out captions")
    ap.add_argument("--rows", default="", help="step: dense,sparse; e2e: stock,xattention,fbc,both (default: all; "
                                               "split them over runs that must fit a time limit)")
    ap.add_argument("--text", type=int, default=256)
    ap.add_argument("--valid-text", type=int, default=40)
    ap.add_argument("--tiny", action="store_true", help="CPU smoke test of this script (small model, all parts)")
    ap.add_argument("--out", default="bench_compose.json")
    args = ap.parse_args()
    if args.tiny:
        device, dtype = torch.device("cpu"), torch.float32
        args.text, args.valid_text, args.steps, args.repeats, args.prompts = 16, 10, 4, 1, 1
        args.backend = "aot_eager"  # inductor's CPU code generation takes minutes cold; the smoke test checks the script
        args.fbc_threshold = max(args.fbc_threshold, 0.5)  # so the cache really skips within 4 steps
    else:
        if not torch.cuda.is_available():
            sys.exit("bench_compose.py needs a CUDA GPU (use --tiny for the CPU smoke test)")
        device, dtype = torch.device("cuda"), torch.bfloat16
    parts = ["step", "e2e", "quality", "determinism"] if args.part == "all" else [args.part]
    result: dict[str, Any] = {"meta": {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "command": " ".join(sys.argv),
        "torch": torch.__version__, "size": "tiny" if args.tiny else args.size, "weights": "random (step, e2e); "
        "the proxy trained here on procedural video (quality)"}}
    for part in parts:
        t0 = time.perf_counter()
        print(f"== {part}", flush=True)
        result[part] = {"step": lambda: part_step(args, device, dtype), "e2e": lambda: part_e2e(args, device, dtype),
                        "quality": lambda: part_quality(args, device),
                        "determinism": lambda: part_determinism(args, device, dtype)}[part]()
        result["meta"][f"{part}_wall_s"] = time.perf_counter() - t0
        Path(args.out).write_text(json.dumps(result, indent=2))  # after every part: a timeout keeps the rest
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
