"""A/B launch settings of the block-sparse attention kernel (GPU, 720p shapes, random mask).

    python benchmarks/tune_attention.py [--density 0.3]
    python benchmarks/tune_attention.py --precision int8-fp8     # the 8-bit launches, against native bf16
    python benchmarks/tune_attention.py --block-size 64           # finer mask blocks (launches that tile them)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import triton.testing

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from xattn_video.block_mask import BlockSparseMask  # noqa: E402
from xattn_video.kernels.block_sparse_attention import block_sparse_attention_triton  # noqa: E402

VARIANTS = [  # BLOCK_M, BLOCK_N, warps, stages, TMA, warp specialisation, index prefetch
    (128, 128, 8, 2, True, False, False),
    (128, 128, 8, 2, True, False, True),
    (128, 128, 8, 3, True, False, True),
]
LOW_PRECISION_VARIANTS = [  # the 8-bit sweep of benchmarks/RESULTS.md; the shipped launch is the sixth
    (128, 128, 8, 3, True, False, False),
    (128, 128, 8, 3, True, True, False),
    (64, 128, 4, 3, True, False, False),
    (64, 128, 4, 2, True, False, False),
    (64, 128, 4, 3, True, True, False),
    (64, 128, 4, 3, True, False, True),
    (64, 128, 4, 2, True, False, True),
    (64, 128, 4, 4, True, False, True),
    (64, 64, 4, 3, False, False, False),
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--density", type=float, default=0.3)
    ap.add_argument("--n", type=int, default=119_056)
    ap.add_argument("--block-size", type=int, default=128, help="the mask's block size (OpConfig.block_size)")
    ap.add_argument("--precision", default="native", choices=("native", "fp8", "int8-fp8"),
                    help="the kernel's arithmetic (OpConfig.precision); 8 bits are timed against native bf16")
    args = ap.parse_args()
    n, h, d = args.n, 24, 128
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(1, h, n, d, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(3))
    bs = args.block_size
    qb = -(-n // bs)
    keep = (torch.rand(1, h, qb, qb, device="cuda", generator=g) < args.density)
    keep |= torch.eye(qb, dtype=torch.bool, device="cuda")
    mask = BlockSparseMask.from_dense(keep, bs, n, torch.tensor([n - 216], device="cuda"))
    flops = 4.0 * n * n * d * h * mask.density()
    base = block_sparse_attention_triton(q, k, v, mask)
    ms = triton.testing.do_bench(lambda: block_sparse_attention_triton(q, k, v, mask), warmup=50, rep=500,
                                 return_mode="median")
    print(f"block {bs}, density {mask.density():.3f}: autotuned default (native): {ms:.2f} ms "
          f"{flops / ms / 1e9:.0f} TFLOPS", flush=True)
    native_ms, low = ms, args.precision != "native"
    if low:
        base = block_sparse_attention_triton(q, k, v, mask, precision=args.precision)
        ms = triton.testing.do_bench(lambda: block_sparse_attention_triton(q, k, v, mask, precision=args.precision),
                                     warmup=50, rep=500, return_mode="median")
        print(f"{args.precision} default: {ms:.2f} ms {flops / ms / 1e9:.0f} TFLOPS, {native_ms / ms:.2f}x native",
              flush=True)
    for bm, bn, warps, stages, tma, ws, prefetch in LOW_PRECISION_VARIANTS if low else VARIANTS:
        if bs % bm or bs % bn:
            continue  # a program's tiles must lie in one mask block
        launch = dict(BLOCK_M=bm, BLOCK_N=bn, num_warps=warps, num_stages=stages, USE_TMA=tma, WARP_SPECIALIZE=ws,
                      PREFETCH=prefetch)
        try:
            fn = lambda: block_sparse_attention_triton(q, k, v, mask, precision=args.precision, launch=launch)  # noqa: E731
            err = float((fn().float() - base.float()).abs().max())
            ms = triton.testing.do_bench(fn, warmup=50, rep=500, return_mode="median")
            print(f"{launch}: {ms:.2f} ms {flops / ms / 1e9:.0f} TFLOPS, {native_ms / ms:.2f}x native (max diff "
                  f"vs default {err:.1e})", flush=True)
        except Exception as e:  # noqa: BLE001 - report and go on
            print(f"{launch}: failed {type(e).__name__}: {str(e)[:200]}", flush=True)


if __name__ == "__main__":
    main()
