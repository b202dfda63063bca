"""Wan 2.1 14B and HunyuanVideo 1.5 at full size, one transformer step on one GPU: stock vs ours (dense, XAttention).

Random bf16 weights made on the GPU (``torch.device("cuda")`` context with bfloat16 as the default dtype: no CPU
round trip, no checkpoint), diffusers' own classes at their published configurations:

- ``wan``: ``WanTransformer3DModel`` as in Wan 2.1 T2V 14B (40 blocks, 40 heads x 128, FFN 13824), 720p x 81
  frames -> latents 21 x 90 x 160, patch 1x2x2: 75,600 video tokens; 512 umT5 tokens in cross-attention (dense);
- ``hunyuan15``: ``HunyuanVideo15Transformer3DModel`` at its defaults (54 blocks, 16 heads x 128; 8.3 B), 720p x
  121 frames -> latents 31 x 45 x 80 (VAE 16x spatial), patch 1: 111,600 video tokens, + 1000 Qwen + 256 ByT5 + 729
  image tokens in the joint attention, of which ``--valid-text`` Qwen tokens are real (T2V: image tokens padding).

Rows (one forward = one denoising step, every row after an untimed kernel warm-up at the same length):
``stock`` (diffusers' processors), ``ours dense`` (our processors at tau = 1: the runtime's dense path),
``xattn density 0.3`` and ``xattn density 0.15`` (tau = 0.9 capped by ``max_density``), ``xattn density 0.3,
8-bit`` (the same in int8 / fp8 arithmetic, fp8 estimate). Per row: forward ms,
speedup vs stock and vs ours dense, mean density, peak memory, relative L2 error vs stock. With random weights
attention is nearly uniform, so tau = 0.9 hits the cap: the rows measure speed at that density, not quality.

    python benchmarks/bench_models.py --model wan --out $OUT/models_wan.json
    python benchmarks/bench_models.py --model hunyuan15 --out $OUT/models_hunyuan15.json
    python benchmarks/bench_models.py --model wan --rows "stock,8-bit" --out $OUT/wan_8bit.json    # some rows
    python benchmarks/bench_models.py --model wan --fp8-linear --out $OUT/wan_fp8.json   # linears in float8
    python benchmarks/bench_models.py --model wan --compile --fp8-linear --out $OUT/wan_c.json  # regional compile
    python benchmarks/bench_models.py --tiny --out /tmp/models.json      # CPU smoke test (tiny models)
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_transformer import rel_l2, sync, time_forward  # noqa: E402

from xattn_video import XAttentionConfig, apply_xattention, quantize_linears_fp8, remove_xattention  # noqa: E402
from xattn_video.attention import dense_attention, xattention  # noqa: E402

ROWS = [  # label, config overrides (None = stock processors)
    ("stock", None),
    ("ours dense", dict(threshold=1.0)),
    ("xattn density 0.3", dict(threshold=0.9, max_density=0.3)),
    ("xattn density 0.15", dict(threshold=0.9, max_density=0.15)),
    # int8 Q.K^T, fp8 P.V and the fp8 estimate (OpConfig.precision / estimate_precision); Triton on fp8 tensor cores
    ("xattn density 0.3, 8-bit", dict(threshold=0.9, max_density=0.3, precision="int8-fp8", estimate_precision="fp8")),
]
# full size: the published configurations; tiny: the same classes, small enough for a CPU
MODELS: dict[str, dict[str, Any]] = {
    "wan": dict(
        label="Wan 2.1 T2V 14B, 720p x 81 frames", latent=(21, 90, 160), text=512,
        config=dict(patch_size=(1, 2, 2), num_attention_heads=40, attention_head_dim=128, in_channels=16,
                    out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=13824, num_layers=40, cross_attn_norm=True,
                    qk_norm="rms_norm_across_heads", eps=1e-6),
        tiny_latent=(3, 16, 16), tiny_text=16,
        tiny=dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=32, in_channels=4, out_channels=4,
                  text_dim=24, freq_dim=16, ffn_dim=64, num_layers=2, rope_max_seq_len=32)),
    "hunyuan15": dict(
        label="HunyuanVideo 1.5 T2V, 720p x 121 frames", latent=(31, 45, 80), text=1000, text_2=256, image=729,
        config={},  # diffusers' defaults are the published 8.3 B transformer
        tiny_latent=(3, 8, 8), tiny_text=12, tiny_text_2=4, tiny_image=3,
        tiny=dict(in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=32, num_layers=2,
                  num_refiner_layers=1, mlp_ratio=2.0, text_embed_dim=24, text_embed_2_dim=16, image_embed_dim=12,
                  rope_axes_dim=(8, 12, 12))),
}


def build_model(name: str, device: torch.device, dtype: torch.dtype, tiny: bool) -> torch.nn.Module:
    """The transformer with random weights, made directly on ``device`` in ``dtype``."""
    from diffusers import HunyuanVideo15Transformer3DModel, WanTransformer3DModel

    cls = WanTransformer3DModel if name == "wan" else HunyuanVideo15Transformer3DModel
    spec = MODELS[name]
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):  # initialise where it runs: 14 B parameters never touch the CPU
            model = cls(**(spec["tiny"] if tiny else spec["config"]))
    finally:
        torch.set_default_dtype(previous)
    return model.eval().requires_grad_(False)


def make_inputs(name: str, model: torch.nn.Module, tiny: bool, valid_text: int, device, dtype) -> dict:
    """One step's inputs: batch 1, random latents and text embeddings, the pipeline's text lengths."""
    spec = MODELS[name]
    g = torch.Generator(device=device).manual_seed(1)
    t, h, w = spec["tiny_latent" if tiny else "latent"]
    cfg = model.config
    x = torch.randn(1, cfg.in_channels, t, h, w, generator=g, device=device, dtype=dtype)
    n_text = spec["tiny_text" if tiny else "text"]
    if name == "wan":  # the pipeline pads the umT5 embeddings to 512 with zeros and passes no mask
        text = torch.zeros(1, n_text, cfg.text_dim, device=device, dtype=dtype)
        text[:, :valid_text] = torch.randn(1, valid_text, cfg.text_dim, generator=g, device=device, dtype=dtype)
        return dict(hidden_states=x, timestep=torch.tensor([900.0], device=device), encoder_hidden_states=text,
                    return_dict=False)
    n_text_2, n_image = spec["tiny_text_2" if tiny else "text_2"], spec["tiny_image" if tiny else "image"]
    mask = torch.zeros(1, n_text, dtype=torch.long, device=device)
    mask[:, :valid_text] = 1
    return dict(
        hidden_states=x, timestep=torch.tensor([900.0], device=device, dtype=dtype),  # as the pipeline passes it
        encoder_hidden_states=torch.randn(1, n_text, cfg.text_embed_dim, generator=g, device=device, dtype=dtype),
        encoder_attention_mask=mask,
        encoder_hidden_states_2=torch.zeros(1, n_text_2, cfg.text_embed_2_dim, device=device, dtype=dtype),
        encoder_attention_mask_2=torch.zeros(1, n_text_2, dtype=torch.long, device=device),  # no glyph text
        image_embeds=torch.zeros(1, n_image, cfg.image_embed_dim, device=device, dtype=dtype),  # T2V
        return_dict=False,
    )


def sequence(name: str, model: torch.nn.Module, tiny: bool) -> tuple[int, int, int]:
    """(tokens in a self-attention call, valid keys, heads)."""
    spec = MODELS[name]
    t, h, w = spec["tiny_latent" if tiny else "latent"]
    cfg = model.config
    if name == "wan":
        pt, ph, pw = cfg.patch_size
        n = (t // pt) * (h // ph) * (w // pw)
        return n, n, cfg.num_attention_heads
    n_video = (t // cfg.patch_size_t) * (h // cfg.patch_size) * (w // cfg.patch_size)
    n_text = sum(spec[k if not tiny else f"tiny_{k}"] for k in ("text", "text_2", "image"))
    return n_video + n_text, n_video, cfg.num_attention_heads


def config_for(overrides: dict, backend: str, tiny: bool) -> XAttentionConfig:
    return XAttentionConfig(warmup_steps=0, backend=backend, **({"block_size": 32, "stride": 8} if tiny else {}),
                            **overrides)


def warm_up_kernels(n: int, n_valid: int, heads: int, head_dim: int, n_video: int | None, device, dtype,
                    backend: str, tiny: bool) -> None:
    """Compile and autotune the Triton kernels at this length, so that no timed row pays for it."""
    q, k, v = (torch.randn(1, heads, n, head_dim, device=device, dtype=dtype) for _ in range(3))
    kv_len = torch.tensor([n_valid], device=device)
    for _, overrides in ROWS[2:]:
        xattention(q, k, v, config_for(overrides, backend, tiny), kv_len, global_start=n_video)
    dense_attention(q, k, v, kv_len)
    sync(device)
    del q, k, v


def bench_model(name: str, args, device, dtype, backend: str) -> list[dict]:
    spec = MODELS[name]
    t0 = time.perf_counter()
    model = build_model(name, device, dtype, args.tiny)
    if args.fp8_linear:
        print(f"{quantize_linears_fp8(model)} linear layers in float8", flush=True)
    params = sum(p.numel() for p in model.parameters()) / 1e9
    print(f"{spec['label']}: model built in {time.perf_counter() - t0:.1f} s ({params:.2f} B params)", flush=True)
    valid = min(args.valid_text, spec["tiny_text" if args.tiny else "text"])
    inputs = make_inputs(name, model, args.tiny, valid, device, dtype)
    n, n_valid, heads = sequence(name, model, args.tiny)
    n_video = None if name == "wan" else n_valid
    n_valid = n_valid + (0 if name == "wan" else valid)  # HunyuanVideo 1.5: video + valid Qwen tokens
    warm_up_kernels(n, n_valid, heads, model.config.attention_head_dim, n_video, device, dtype, backend, args.tiny)
    rows: list[dict] = []
    reference = None
    for label, overrides in [r for r in ROWS if not args.rows or any(key in r[0] for key in args.rows.split(","))]:
        if overrides is None:
            remove_xattention(model)
            runtime = None
        else:
            runtime = apply_xattention(model, config_for(overrides, backend, args.tiny))
        compile_s = None
        try:
            with torch.no_grad():
                if args.compile:  # each block class compiled once (diffusers' regional compilation), untimed
                    model.compile_repeated_blocks()
                    t0 = time.perf_counter()
                    model(**inputs)
                    sync(device)
                    compile_s = time.perf_counter() - t0
                    if runtime is not None:
                        runtime.reset()  # the timed forward estimates its masks anew
                ms, out, breakdown = time_forward(model, inputs, device, args.profile)
            peak = breakdown.pop("peak_mem_gb")
        except torch.OutOfMemoryError as e:  # the stock HunyuanVideo 1.5 call builds an N x N mask
            rows.append({"model": name, "row": label, "error": f"out of memory: {str(e)[:200]}"})
            print(f"  {label:20s} out of memory", flush=True)
            torch.cuda.empty_cache()
            continue
        finally:
            if args.compile:  # back to eager for the next row: its processors would only recompile the blocks
                for m in model.modules():
                    m._compiled_call_impl = None
                torch._dynamo.reset()
        if reference is None and overrides is None:
            reference = out.float().clone()
        densities = [d for layers in (runtime.density_table().values() if runtime else []) for d in layers.values()]
        row = {"model": name, "label": spec["label"] + (" (tiny)" if args.tiny else ""), "row": label,
               "tokens": n, "params_b": params, "forward_ms": ms,
               "density": sum(densities) / len(densities) if densities else 1.0,
               "rel_l2_vs_stock": rel_l2(out, reference) if reference is not None else None,
               "compiled": "regional" if args.compile else None, "first_call_s": compile_s,
               "finite": bool(torch.isfinite(out).all()), "peak_mem_gb": peak,
               "reasons": runtime.record.counts() if runtime else None, **breakdown}
        rows.append(row)
        print(f"  {label:20s} {ms:10.1f} ms  density {row['density']:.3f}  err {row['rel_l2_vs_stock']}  "
              f"peak {peak}" + (f"  attention {breakdown['attention_ms']:.0f} ms, estimate {breakdown['estimate_ms']:.0f}"
                                f" ms, rest {breakdown['rest_ms']:.0f} ms" if breakdown else ""), flush=True)
        del out
    remove_xattention(model)
    timed = {r["row"]: r["forward_ms"] for r in rows if "forward_ms" in r}
    for r in rows:
        if "forward_ms" in r:
            r["speedup_vs_stock"] = timed["stock"] / r["forward_ms"] if "stock" in timed else None
            r["speedup_vs_ours_dense"] = timed["ours dense"] / r["forward_ms"] if "ours dense" in timed else None
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rows


def markdown(result: dict) -> str:
    lines = ["| model | row | tokens | forward ms | vs stock | vs ours dense | density | peak GiB | rel L2 vs stock |",
             "|" + "---|" * 9]
    for r in result["rows"]:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['row']} | | {r['error']} | | | | | |")
            continue
        f = lambda k, s=".1f": (format(r[k], s) if isinstance(r.get(k), (int, float)) else "n/a")  # noqa: E731
        lines.append(f"| {r['label']} | {r['row']} | {r['tokens']} | {f('forward_ms')} | "
                     f"{f('speedup_vs_stock', '.2f')}x | {f('speedup_vs_ours_dense', '.2f')}x | {f('density', '.3f')} | "
                     f"{f('peak_mem_gb')} | {f('rel_l2_vs_stock', '.2e')} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="wan,hunyuan15", help="comma-separated: wan, hunyuan15")
    p.add_argument("--valid-text", type=int, default=120, help="real (unpadded) prompt tokens")
    p.add_argument("--tiny", action="store_true", help="CPU smoke test: tiny models, reference backend")
    p.add_argument("--profile", action="store_true", help="GPU time by kernel family per row (torch profiler; "
                   "the profiled forward runs a little slower)")
    p.add_argument("--rows", help="comma-separated substrings of the row labels to run (default: all)")
    p.add_argument("--fp8-linear", action="store_true", help="every row with the model's linear layers in float8 "
                   "(`quantize_linears_fp8`: e4m3 weights and activations, per-row scales; a GPU with fp8 tensor "
                   "cores): what the rest of the step costs in 8 bits")
    p.add_argument("--compile", action="store_true", help="every row with the model's repeated blocks compiled "
                   "(`compile_repeated_blocks`, inductor; an untimed first forward compiles, `first_call_s`)")
    p.add_argument("--out", default="bench_models.json")
    args = p.parse_args()
    names = args.model.split(",")
    bad = [n for n in names if n not in MODELS]
    if bad:
        p.error(f"--model {','.join(bad)}: accepted: {', '.join(MODELS)}")

    device = torch.device("cpu" if args.tiny else "cuda")
    dtype = torch.float32 if args.tiny else torch.bfloat16
    backend = "reference" if args.tiny else "triton"
    if args.tiny:
        args.valid_text = min(args.valid_text, 6)
    result: dict[str, Any] = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "torch": torch.__version__,
        "command": " ".join(sys.argv), "weights": "random (not a trained model)",
        "linear_layers": "float8 (quantize_linears_fp8, per-row scales)" if args.fp8_linear else str(dtype),
        "compile": "regional (compile_repeated_blocks, inductor)" if args.compile else None, "rows": [],
    }
    try:
        import diffusers

        result["diffusers"] = diffusers.__version__
        import triton

        result["triton"] = triton.__version__
    except ImportError:
        pass
    for name in names:
        result["rows"] += bench_model(name, args, device, dtype, backend)
        Path(args.out).write_text(json.dumps(result, indent=1))
    print(markdown(result))


if __name__ == "__main__":
    main()
