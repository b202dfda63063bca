"""A/B launch settings of the block-sparse attention kernel (GPU, 720p shapes, random mask).

    python benchmarks/tune_attention.py [--density 0.3]
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--density", type=float, default=0.3)
    ap.add_argument("--n", type=int, default=119_056)
    args = ap.parse_args()
    n, h, d = args.n, 24, 128
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(1, h, n, d, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(3))
    qb = -(-n // 128)
    keep = (torch.rand(1, h, qb, qb, device="cuda", generator=g) < args.density)
    keep |= torch.eye(qb, dtype=torch.bool, device="cuda")
    mask = BlockSparseMask.from_dense(keep, 128, n, torch.tensor([n - 216], device="cuda"))
    flops = 4.0 * n * n * d * h * mask.density()
    base = block_sparse_attention_triton(q, k, v, mask)
    ms = triton.testing.do_bench(lambda: block_sparse_attention_triton(q, k, v, mask), warmup=50, rep=500,
                                 return_mode="median")
    print(f"autotuned default: {ms:.2f} ms {flops / ms / 1e9:.0f} TFLOPS", flush=True)
    for bm, bn, warps, stages, tma, ws, prefetch in VARIANTS:
        launch = dict(BLOCK_M=bm, BLOCK_N=bn, num_warps=warps, num_stages=stages, USE_TMA=tma, WARP_SPECIALIZE=ws,
                      PREFETCH=prefetch)
        try:
            fn = lambda: block_sparse_attention_triton(q, k, v, mask, launch=launch)  # noqa: E731
            err = float((fn().float() - base.float()).abs().max())
            ms = triton.testing.do_bench(fn, warmup=50, rep=500, return_mode="median")
            print(f"{launch}: {ms:.2f} ms {flops / ms / 1e9:.0f} TFLOPS (max diff vs default {err:.1e})", flush=True)
        except Exception as e:  # noqa: BLE001 - report and go on
            print(f"{launch}: failed {type(e).__name__}: {str(e)[:200]}", flush=True)


if __name__ == "__main__":
    main()
