"""Full-size HunyuanVideo transformer step on one GPU: stock processor vs ours (dense, XAttention).

diffusers' ``HunyuanVideoTransformer3DModel`` at its published configuration (20 double- + 40 single-stream
blocks, 24 heads x 128, patch 1x2x2), random bf16 weights made on the GPU, one forward = one denoising step,
256 text tokens of which ``--valid-text`` are real (the rest is padding diffusers masks). In one run:

- stock: diffusers' HunyuanVideoAttnProcessor2_0 (SDPA with the key-padding mask; the backend it picked is
  read off the profiler and printed);
- ours, tau = 1: our processor, dense and padding-aware (padded text keys sliced off, unmasked SDPA);
- XAttention at tau = 0.9 / 0.95, and at tau = 0.9 capped by max_density 0.3 / 0.15.

Per row: forward ms, speedup vs stock and vs ours-dense, time in attention kernels / estimate / the rest
(torch profiler, by kernel), achieved density, peak memory, relative L2 error of the output vs stock.
Then the end-to-end figure for a 50-step schedule with 0 / 5 / 10 dense warmup steps: the measured dense and
sparse step times summed with a VAE decode measured once at that size (``--vae``; tiled decode). With
``--structured``: one attention layer at 720p fed structured video-like Q/K/V (xattn_video.synthetic) per
tau in {0.8, 0.9, 0.95}: density, attention speedup vs cuDNN dense, relative L2 error and cosine similarity.

    python benchmarks/bench_transformer.py --sizes 544p,720p --vae --structured --out $OUT/transformer.json
    python benchmarks/bench_transformer.py --tiny          # CPU smoke test of this script (small model)
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from xattn_video import XAttentionConfig, apply_xattention, remove_xattention  # noqa: E402
from xattn_video.attention import dense_attention, xattention  # noqa: E402

LATENT = {"544p": (33, 68, 120), "720p": (33, 90, 160)}  # 129 frames -> 33 latent frames; 8x VAE
TINY_LATENT = {"tiny": (3, 16, 16)}
ROWS = [  # name, config (None = stock processor)
    ("stock", None),
    ("ours tau=1 (dense)", dict(threshold=1.0)),
    ("xattn max_density=0.3", dict(threshold=0.9, max_density=0.3)),
    ("xattn max_density=0.15", dict(threshold=0.9, max_density=0.15)),
    # the step after an estimating step, reusing its masks: no estimate cost
    ("xattn max_density=0.3, mask reused", dict(threshold=0.9, max_density=0.3, mask_reuse_steps=2)),
    # the quality levers' costs: 3D-tile token order (permutation in and out), a per-head threshold table (as
    # calibration writes; values alternate so that heads differ), the dense fallback above the break-even
    ("xattn max_density=0.3, tile", dict(threshold=0.9, max_density=0.3, token_order="tile")),
    ("xattn max_density=0.3, tile, mask reused", dict(threshold=0.9, max_density=0.3, token_order="tile",
                                                      mask_reuse_steps=2)),
    ("xattn max_density=0.3, per-head table", dict(max_density=0.3)),  # the table: per_head_table(model)
    ("xattn max_density=0.3, sink-aware", dict(threshold=0.9, max_density=0.3, sink_aware=True)),
    ("xattn tau=0.9, dense_above=0.6", dict(threshold=0.9, dense_above=0.6)),
    # 8-bit arithmetic (int8 Q.K^T, fp8 P.V, fp8 estimate) on the recommended preset's selection
    ("xattn max_density=0.3, 8-bit", dict(threshold=0.9, max_density=0.3, precision="int8-fp8",
                                          estimate_precision="fp8")),
    ("xattn max_density=0.3, 8-bit, mask reused", dict(threshold=0.9, max_density=0.3, precision="int8-fp8",
                                                       estimate_precision="fp8", mask_reuse_steps=2)),
    # the residual lever: a sparse step adding back what its masks leave out, as measured at the refresh step
    # before it (timed too: dense + estimate + sparse); the differences held are in the peak memory
    ("xattn max_density=0.3, 8-bit, residual", dict(threshold=0.9, max_density=0.3, precision="int8-fp8",
                                                    estimate_precision="fp8", residual=True, warmup_steps=1)),
    ("xattn max_density=0.3, 8-bit, residual in fp8", dict(threshold=0.9, max_density=0.3, precision="int8-fp8",
                                                           estimate_precision="fp8", residual=True, warmup_steps=1,
                                                           residual_precision="fp8")),
    ("xattn tau=0.95", dict(threshold=0.95)),
    ("xattn tau=0.9", dict(threshold=0.9)),
]
ATTN_KERNELS = ("_bsa_fwd", "fmha", "flash", "cudnn", "attention", "sdpa", "efficient")
# the estimate kernels, then the torch ops of the selection (sort, cumsum, scatter, the mask's index sort)
ESTIMATE_KERNELS = ("_est_partial", "_est_finish", "sort", "cumsum", "scatter", "radix", "segmented")


def per_head_table(model) -> dict:
    """A threshold table as calibration writes one (every layer, every head), values alternating 0.85 / 0.95."""
    c = model.config
    heads = [0.85 + 0.1 * (h % 2) for h in range(c.num_attention_heads)]
    return {"default": 0.9, "heads": {layer: heads for layer in range(c.num_layers + c.num_single_layers)}}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def build_model(device: torch.device, dtype: torch.dtype, tiny: bool):
    from diffusers import HunyuanVideoTransformer3DModel

    torch.manual_seed(0)
    kwargs = {} if not tiny else dict(num_attention_heads=2, attention_head_dim=64, num_layers=1,
                                      num_single_layers=1, num_refiner_layers=1, text_embed_dim=32,
                                      pooled_projection_dim=16, rope_axes_dim=(16, 24, 24))
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):  # initialise on the GPU directly, no CPU round trip
            model = HunyuanVideoTransformer3DModel(**kwargs)
    finally:
        torch.set_default_dtype(previous)
    return model.eval().requires_grad_(False)


def make_inputs(model, latent: tuple[int, int, int], text: int, valid_text: int, device, dtype) -> dict:
    g = torch.Generator(device=device).manual_seed(1)
    t, h, w = latent
    cfg = model.config
    mask = torch.zeros(1, text, dtype=torch.long, device=device)
    mask[:, :valid_text] = 1
    return dict(
        hidden_states=torch.randn(1, cfg.in_channels, t, h, w, generator=g, device=device, dtype=dtype),
        timestep=torch.tensor([900.0], device=device),
        encoder_hidden_states=torch.randn(1, text, cfg.text_embed_dim, generator=g, device=device, dtype=dtype),
        encoder_attention_mask=mask,
        pooled_projections=torch.randn(1, cfg.pooled_projection_dim, generator=g, device=device, dtype=dtype),
        guidance=torch.tensor([6000.0], device=device, dtype=dtype),
        return_dict=False,
    )


def kernel_breakdown(prof) -> dict[str, float]:
    """GPU time (ms) by kernel family from a torch profiler run."""
    out = {"attention_ms": 0.0, "estimate_ms": 0.0, "rest_ms": 0.0}
    names: dict[str, float] = {}
    for evt in prof.key_averages():
        t = getattr(evt, "device_time_total", getattr(evt, "cuda_time_total", 0.0)) / 1e3
        if t <= 0 or evt.key.startswith(("aten::", "cuda", "Memcpy", "Memset")) or evt.key.startswith("ProfilerStep"):
            continue
        key = evt.key.lower()
        names[evt.key] = t
        if any(k in key for k in ATTN_KERNELS):
            out["attention_ms"] += t
        elif any(k in key for k in ESTIMATE_KERNELS):
            out["estimate_ms"] += t
        else:
            out["rest_ms"] += t
    top = sorted(names.items(), key=lambda kv: -kv[1])[:8]
    out["top_kernels"] = [[k[:90], round(v, 2)] for k, v in top]
    return out


def time_forward(model, inputs, device, profile: bool) -> tuple[float, torch.Tensor, dict]:
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    breakdown: dict[str, Any] = {}
    if profile and device.type == "cuda":
        from torch.profiler import ProfilerActivity, profile as torch_profile

        with torch_profile(activities=[ProfilerActivity.CUDA]) as prof:
            t0 = time.perf_counter()
            out = model(**inputs)[0]
            sync(device)
            ms = (time.perf_counter() - t0) * 1e3
        breakdown = kernel_breakdown(prof)
    else:
        t0 = time.perf_counter()
        out = model(**inputs)[0]
        sync(device)
        ms = (time.perf_counter() - t0) * 1e3
    breakdown["peak_mem_gb"] = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    return ms, out, breakdown


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.float(), b.float()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def warm_up_kernels(device, dtype, backend: str, tiny: bool, n: int) -> None:
    """Compile and autotune the Triton kernels at this sequence length (the attention kernel tunes per
    power-of-two length bucket), so that no timed row pays for it."""
    h, d = (2, 64) if tiny else (24, 128)
    q, k, v = (torch.randn(1, h, n, d, device=device, dtype=dtype) for _ in range(3))
    kv_len = torch.tensor([n - 30], device=device)
    for label, overrides in [(name, o) for name, o in ROWS if o]:
        if label.endswith("per-head table"):  # one threshold per head is another kernel specialisation
            overrides = {**overrides, "threshold": {"heads": {0: [0.85 + 0.1 * (i % 2) for i in range(h)]}}}
        cfg = XAttentionConfig(backend=backend, **({"block_size": 64, "stride": 8} if tiny else {}), **overrides)
        xattention(q, k, v, cfg, kv_len, layer=0, global_start=n - 64)
    dense_attention(q, k, v, kv_len)
    sync(device)


def selected_rows(keys: str | None) -> list[tuple]:
    """ROWS named by ``--rows``: a key equal to a row's label selects that row only, any other key every row
    whose label contains it."""
    if not keys:
        return list(ROWS)
    keys = keys.split(",")
    labels = {name for name, _ in ROWS}
    return [r for r in ROWS if any(key == r[0] if key in labels else key in r[0] for key in keys)]


def bench_size(model, name: str, latent, args, device, dtype, backend: str) -> list[dict]:
    inputs = make_inputs(model, latent, args.text, args.valid_text, device, dtype)
    n_video = latent[0] * (latent[1] // 2) * (latent[2] // 2)
    warm_up_kernels(device, dtype, backend, args.tiny, n_video + args.text)
    rows, reference = [], None
    for label, overrides in selected_rows(args.rows):
        if overrides is None:
            remove_xattention(model)
            state = None
        else:
            if label.endswith("per-head table"):
                overrides = {**overrides, "threshold": per_head_table(model)}
            cfg = XAttentionConfig(**{"warmup_steps": 0, "backend": backend,
                                      **({"block_size": 64, "stride": 8} if args.tiny else {}), **overrides})
            state = apply_xattention(model, cfg)
        step_inputs, extra = inputs, {}
        if overrides and (overrides.get("mask_reuse_steps", 1) > 1 or overrides.get("residual")):
            with torch.no_grad():  # a step that estimates the masks (or measures the residual): the next reuses them
                extra["previous_step_ms"] = time_forward(model, inputs, device, profile=False)[0]
            step_inputs = {**inputs, "timestep": inputs["timestep"] - 100.0}
            if overrides.get("residual"):
                extra["residual_gb"] = state.residuals.nbytes / 2**30
        with torch.no_grad():
            ms, out, breakdown = time_forward(model, step_inputs, device, profile=not args.no_profile)
        if reference is None:
            reference = out.clone()
        table = state.density_table() if state else {}
        densities = list(table[max(table)].values()) if table else []  # the timed step: the last one
        row = {
            "size": name, "tokens": n_video + args.text, "row": label, "forward_ms": ms,
            "density": sum(densities) / len(densities) if densities else 1.0,
            # a reused-mask step runs at another timestep: its output is not comparable with stock's
            "rel_l2_vs_stock": rel_l2(out, reference) if step_inputs is inputs else None,
            "finite": bool(torch.isfinite(out).all()), **breakdown, **extra,
        }
        rows.append(row)
        print(f"  {name} {label:24s} {ms:10.1f} ms  density {row['density']:.3f}  err {row['rel_l2_vs_stock']}"
              f"  peak {row['peak_mem_gb']}", flush=True)
        del out
        if state is not None:
            state.end_run()  # free this row's masks and differences before the next row measures its own
    remove_xattention(model)
    by = {r["row"]: r["forward_ms"] for r in rows}
    for r in rows:  # --rows without stock / dense: no ratio to them
        r["speedup_vs_stock"] = by["stock"] / r["forward_ms"] if "stock" in by else None
        r["speedup_vs_ours_dense"] = by["ours tau=1 (dense)"] / r["forward_ms"] if "ours tau=1 (dense)" in by else None
    return rows


def stock_sdpa_backend(device, dtype, padded: int) -> str:
    """Which kernel SDPA runs for the stock processor's call (boolean key-padding mask), from the profiler."""
    if device.type != "cuda":
        return "cpu"
    from torch.profiler import ProfilerActivity, profile as torch_profile

    q = torch.randn(1, 24, 8192, 128, device=device, dtype=dtype)
    mask = torch.zeros(1, 1, 1, q.shape[2], dtype=torch.bool, device=device)
    mask[..., : q.shape[2] - padded] = True
    with torch_profile(activities=[ProfilerActivity.CUDA]) as prof:
        torch.nn.functional.scaled_dot_product_attention(q, q, q, attn_mask=mask)
        sync(device)
    kernels = [e.key for e in prof.key_averages() if getattr(e, "device_time_total", 0) > 0]
    return ", ".join(k[:80] for k in kernels if not k.startswith(("aten::", "Memcpy", "Memset")))[:240]


def vae_decode_ms(latent, device, dtype, tiny: bool) -> float:
    from diffusers import AutoencoderKLHunyuanVideo

    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            vae = AutoencoderKLHunyuanVideo(**({} if not tiny else dict(block_out_channels=(8, 8, 8, 8),
                                                                        layers_per_block=1, norm_num_groups=4)))
    finally:
        torch.set_default_dtype(previous)
    vae = vae.eval().requires_grad_(False)
    vae.enable_tiling()
    z = torch.randn(1, vae.config.latent_channels, *latent, device=device, dtype=dtype)
    with torch.no_grad():
        sync(device)
        t0 = time.perf_counter()
        vae.decode(z / vae.config.scaling_factor, return_dict=False)
        sync(device)
    return (time.perf_counter() - t0) * 1e3


def end_to_end(rows: list[dict], vae_ms: float | None, steps: int, warmups: list[int]) -> list[dict]:
    """Summed projection: warmup x dense step + rest x sparse step (+ one measured VAE decode)."""
    by = {r["row"]: r["forward_ms"] for r in rows}
    if "stock" not in by or "ours tau=1 (dense)" not in by:
        return []  # the projection needs both
    stock, dense = by["stock"], by["ours tau=1 (dense)"]
    decode = vae_ms or 0.0
    out = []
    for label in [r["row"] for r in rows[2:]]:
        step = by[label]
        if label.endswith(", mask reused"):  # mask_reuse_steps=2: every other sparse step estimates
            step = (step + by.get(label.removesuffix(", mask reused"), step)) / 2
        for w in warmups:
            total = w * dense + (steps - w) * step + decode
            out.append({"size": rows[0]["size"], "row": label, "warmup_steps": w, "steps": steps,
                        "end_to_end_s": total / 1e3, "stock_s": (steps * stock + decode) / 1e3,
                        "best_dense_s": (steps * dense + decode) / 1e3,
                        "speedup_vs_stock": (steps * stock + decode) / total,
                        "speedup_vs_best_dense": (steps * dense + decode) / total,
                        "vae_decode_s": vae_ms / 1e3 if vae_ms else None})
    return out


def kept_mass(q, k, kv_len, mask, n_valid_q: int, sample_blocks: int = 4) -> float:
    """Mean share of the true softmax mass that the mask keeps, over a few sampled query blocks (per head)."""
    bs = mask.block_size
    qb_total = -(-n_valid_q // bs)
    picks = torch.linspace(0, qb_total - 1, sample_blocks).round().long().tolist()
    keep = mask.to_dense()  # [B, H, QB, KB]
    n_k = int(kv_len[0])
    shares = []
    for h in range(q.shape[1]):
        for qb in picks:
            rows = q[0, h, qb * bs:min((qb + 1) * bs, n_valid_q)].float()
            p = (rows @ k[0, h, :n_k].float().T / math.sqrt(q.shape[-1])).softmax(-1)  # [rows, n_k]
            block_mass = torch.nn.functional.pad(p, (0, -n_k % bs)).unflatten(-1, (-1, bs)).sum(-1)
            kept = keep[0, min(h, keep.shape[1] - 1), qb, : block_mass.shape[-1]]
            shares.append(float((block_mass * kept).sum(-1).mean()))
    return sum(shares) / len(shares)


def structured_quality(device, dtype, backend: str, tiny: bool) -> list[dict]:
    """One attention layer at 720p on structured video-like Q/K/V (two seeds; values i.i.d. or smooth in
    position): density, speed vs cuDNN dense, output error vs dense, and the true attention mass kept."""
    import triton.testing

    from xattn_video.synthetic import video_qkv

    grid = (4, 6, 8) if tiny else (33, 45, 80)
    n_text, n_valid = (16, 8) if tiny else (256, 40)
    n_video = grid[0] * grid[1] * grid[2]
    bench = (lambda f: triton.testing.do_bench(f, warmup=25, rep=200, return_mode="median")) if device.type == "cuda" \
        else (lambda f: _cpu_ms(f))
    rows = []
    for seed in (0, 1):
        for v_smooth in (0.0, 0.9):
            q, k, v, kv_len = video_qkv(*grid, n_text=n_text, n_text_valid=n_valid, heads=2 if tiny else 24,
                                        head_dim=64 if tiny else 128, dtype=dtype, device=device, seed=seed,
                                        v_smooth=v_smooth)
            dense_out = dense_attention(q, k, v, kv_len)
            dense_ms = bench(lambda: dense_attention(q, k, v, kv_len))
            for tau in (0.8, 0.9, 0.95):
                cfg = XAttentionConfig(threshold=tau, backend=backend, **({"block_size": 32, "stride": 8} if tiny else {}))
                out, mask = xattention(q, k, v, cfg, kv_len, global_start=n_video)
                ms = bench(lambda: xattention(q, k, v, cfg, kv_len, global_start=n_video))
                valid = slice(0, n_video + n_valid)  # padded text queries are not used by the model
                a, b = out[:, :, valid].float(), dense_out[:, :, valid].float()
                row = {"seed": seed, "v_smooth": v_smooth, "tau": tau, "density": mask.density(), "xattn_ms": ms,
                       "dense_ms": dense_ms, "speedup_vs_dense": dense_ms / ms, "rel_l2": rel_l2(a, b),
                       "cosine": float(torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0)),
                       "true_mass_kept": kept_mass(q, k, kv_len, mask, n_video)}
                rows.append(row)
                print(f"  structured seed={seed} v_smooth={v_smooth} tau={tau}: density {row['density']:.3f}  "
                      f"{ms:.1f} ms vs dense {dense_ms:.1f} ms  rel_l2 {row['rel_l2']:.3e}  cos {row['cosine']:.5f}"
                      f"  mass kept {row['true_mass_kept']:.3f}", flush=True)
            del q, k, v, dense_out
    return rows


def _cpu_ms(f) -> float:
    t0 = time.perf_counter()
    f()
    return (time.perf_counter() - t0) * 1e3


def markdown(result: dict) -> str:
    lines = ["| size | row | forward ms | vs stock | vs ours dense | density | attention ms | estimate ms | rest ms "
             "| peak GiB | rel L2 vs stock |", "|" + "---|" * 11]
    for r in result["rows"]:
        f = lambda k, s=".1f": (format(r[k], s) if isinstance(r.get(k), (int, float)) else "n/a")  # noqa: E731
        lines.append(f"| {r['size']} | {r['row']} | {f('forward_ms')} | {f('speedup_vs_stock', '.2f')}x | "
                     f"{f('speedup_vs_ours_dense', '.2f')}x | {f('density', '.3f')} | {f('attention_ms')} | "
                     f"{f('estimate_ms')} | {f('rest_ms')} | {f('peak_mem_gb', '.1f')} | {f('rel_l2_vs_stock', '.2e')} |")
    if result.get("end_to_end"):
        lines += ["", "| size | row | warmup | end-to-end s | stock s | best dense s | vs stock | vs best dense |",
                  "|" + "---|" * 8]
        for e in result["end_to_end"]:
            lines.append(f"| {e['size']} | {e['row']} | {e['warmup_steps']} | {e['end_to_end_s']:.1f} | "
                         f"{e['stock_s']:.1f} | {e['best_dense_s']:.1f} | {e['speedup_vs_stock']:.2f}x | "
                         f"{e['speedup_vs_best_dense']:.2f}x |")
    if result.get("structured"):
        lines += ["", "| seed | values | tau | density | xattn ms | cuDNN dense ms | speedup | rel L2 | cosine | "
                  "true mass kept |", "|" + "---|" * 10]
        for s in result["structured"]:
            values = "i.i.d." if s["v_smooth"] == 0 else f"smooth {s['v_smooth']}"
            lines.append(f"| {s['seed']} | {values} | {s['tau']} | {s['density']:.3f} | {s['xattn_ms']:.1f} | "
                         f"{s['dense_ms']:.1f} | {s['speedup_vs_dense']:.2f}x | {s['rel_l2']:.3e} | "
                         f"{s['cosine']:.5f} | {s['true_mass_kept']:.3f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="544p,720p")
    p.add_argument("--text", type=int, default=256)
    p.add_argument("--valid-text", type=int, default=40)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--warmups", default="0,5,10")
    p.add_argument("--vae", action="store_true", help="measure one tiled VAE decode at the largest size")
    p.add_argument("--structured", action="store_true", help="structured Q/K/V quality check at 720p")
    p.add_argument("--no-profile", action="store_true")
    p.add_argument("--rows", help="comma-separated row labels (exact: that row only) or substrings of them (the "
                   "speedups and the end-to-end projection need the stock and dense rows among them)")
    p.add_argument("--tiny", action="store_true", help="CPU smoke test: small model, reference backend")
    p.add_argument("--out", default="bench_transformer.json")
    args = p.parse_args()

    device = torch.device("cpu" if args.tiny else "cuda")
    dtype = torch.float32 if args.tiny else torch.bfloat16
    backend = "reference" if args.tiny else "triton"
    sizes = TINY_LATENT if args.tiny else {s: LATENT[s] for s in args.sizes.split(",")}
    if args.tiny:
        args.text, args.valid_text = 16, 6
    result: dict[str, Any] = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "torch": torch.__version__,
        "command": " ".join(sys.argv), "text_tokens": args.text, "valid_text_tokens": args.valid_text,
        "rows": [], "end_to_end": [], "structured": [],
    }
    try:
        import diffusers
        import triton

        result["diffusers"], result["triton"] = diffusers.__version__, triton.__version__
    except ImportError:
        pass
    t0 = time.perf_counter()
    model = build_model(device, dtype, args.tiny)
    print(f"model built in {time.perf_counter() - t0:.1f} s "
          f"({sum(p.numel() for p in model.parameters()) / 1e9:.2f} B params)", flush=True)
    last = list(sizes)[-1]
    # the stock rows depend on PyTorch's own SDPA backend choice: our code must not change it
    result["stock_sdpa_kernels"] = stock_sdpa_backend(device, dtype, args.text - args.valid_text)
    for name, latent in sizes.items():
        rows = bench_size(model, name, latent, args, device, dtype, backend)
        result["rows"] += rows
        vae_ms = None
        if args.vae and name == last:
            del model
            torch.cuda.empty_cache() if device.type == "cuda" else None
            vae_ms = vae_decode_ms(latent, device, dtype, args.tiny)
            print(f"  VAE tiled decode at {name}: {vae_ms / 1e3:.1f} s", flush=True)
        result["end_to_end"] += end_to_end(rows, vae_ms, args.steps, [int(w) for w in args.warmups.split(",")])
        Path(args.out).write_text(json.dumps(result, indent=1))
    result["stock_sdpa_kernels_after"] = stock_sdpa_backend(device, dtype, args.text - args.valid_text)
    if result["stock_sdpa_kernels_after"] != result["stock_sdpa_kernels"]:
        print("WARNING: SDPA's backend choice changed during the run; stock rows after the change are suspect",
              flush=True)
    if args.structured:
        result["structured"] = structured_quality(device, dtype, backend, args.tiny)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(markdown(result))


if __name__ == "__main__":
    main()
