"""Sweep the estimate kernel's tile configs and report the attention autotuner's pick (GPU, 720p shapes).

    python benchmarks/tune_kernels.py [--size 720p]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import triton
import triton.testing

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from xattn_video.kernels import block_sparse_attention as bsa  # noqa: E402
from xattn_video.kernels.estimate import strided_block_scores_triton  # noqa: E402

GRIDS = {"480p": 25_696, "544p": 67_576, "720p": 119_056}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="720p", choices=list(GRIDS))
    args = ap.parse_args()
    n, h, d = GRIDS[args.size], 24, 128
    q, k = (torch.randn(1, h, n, d, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    flops = 2.0 * n * n * d * h / 16
    base = strided_block_scores_triton(q, k, 128, 16)
    for bm, bn, splits, warps, stages in [(128, 128, 8, 8, 3), (128, 256, 8, 8, 2), (256, 128, 8, 8, 2),
                                          (128, 128, 32, 8, 3), (128, 128, 8, 8, 4)]:
        try:
            fn = lambda: strided_block_scores_triton(q, k, 128, 16, block_m=bm, block_n=bn,  # noqa: E731
                                                     num_splits=splits, num_warps=warps, num_stages=stages)
            err = float((fn() - base).abs().max())
            ms = triton.testing.do_bench(fn, warmup=20, rep=200, return_mode="median")
            print(f"estimate bm={bm} bn={bn} splits={splits} warps={warps} stages={stages}: {ms:.2f} ms "
                  f"{flops / ms / 1e9:.0f} TFLOPS (diff vs default {err:.1e})", flush=True)
        except Exception as e:  # noqa: BLE001
            print(f"estimate bm={bm} bn={bn} splits={splits} warps={warps} stages={stages}: failed {e}", flush=True)
    # attention: TMA descriptors vs plain pointer loads, random mask of density 0.3
    from xattn_video.block_mask import BlockSparseMask

    v = torch.randn_like(q)
    qb = -(-n // 128)
    keep = (torch.rand(1, h, qb, qb, device="cuda") < 0.3) | torch.eye(qb, dtype=torch.bool, device="cuda")
    mask = BlockSparseMask.from_dense(keep, 128, n, torch.tensor([n - 30], device="cuda"))
    flops_attn = 4.0 * n * n * d * h * mask.density()
    outs = {}
    for tma in (True, False):
        bsa._TMA["ok"] = tma
        fn = lambda: bsa.block_sparse_attention_triton(q, k, v, mask)  # noqa: E731
        outs[tma] = fn()
        ms = triton.testing.do_bench(fn, warmup=50, rep=300, return_mode="median")
        print(f"attention tma={tma}: {ms:.2f} ms {flops_attn / ms / 1e9:.0f} TFLOPS (why off: {bsa._TMA['why']})",
              flush=True)
    print("attention tma vs pointers max diff", float((outs[True].float() - outs[False].float()).abs().max()))
    for key, cfg in getattr(bsa._bsa_fwd_tuned, "cache", {}).items():
        print("attention autotune pick", key, cfg, flush=True)


if __name__ == "__main__":
    main()
