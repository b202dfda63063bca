"""Block selection at HunyuanVideo sizes (GPU): the Triton kernel vs the PyTorch version, whether their masks
agree, and the estimate it follows (native and fp8 scores).

    python benchmarks/bench_select.py [--sizes 544p,720p] [--block-size 128]

"rows != CPU ref" counts the (head, query block) rows whose kept blocks differ from the PyTorch version run on
the CPU, whose prefix sums are exact before their one rounding to float32 (``cumsum`` adds in float64 there),
as the kernel's are; torch on the GPU adds in float32. The kernel's row sum (the normaliser) still adds in its
own order, so a row whose running mass lands within rounding of tau may keep one block more or less.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import triton.testing

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from xattn_video.estimate import block_scores, estimate_mask, select_blocks  # noqa: E402
from xattn_video.kernels.select import select_blocks_triton  # noqa: E402
from xattn_video.synthetic import video_qkv  # noqa: E402

GRIDS = {"480p": (16, 30, 53), "544p": (33, 34, 60), "720p": (33, 45, 80)}


def rows_differing(a, b) -> int:
    """Number of (batch, head, query block) rows whose kept blocks differ between two masks."""
    same = (a.kv_counts.cpu() == b.kv_counts.cpu()) & (a.kv_indices.cpu() == b.kv_indices.cpu()).all(-1)
    return int((~same).sum())


def dense_cudnn_ms(n: int, kv_n: int) -> float:
    """One dense attention layer as bench_attention times it: cuDNN SDPA over the valid keys, bf16, 24 heads x 128."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    qb = torch.randn(1, 24, n, 128, device="cuda", dtype=torch.bfloat16)
    kb = torch.randn(1, 24, kv_n, 128, device="cuda", dtype=torch.bfloat16)
    with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
        return triton.testing.do_bench(lambda: torch.nn.functional.scaled_dot_product_attention(qb, kb, kb),
                                       rep=200, return_mode="median")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="544p,720p")
    ap.add_argument("--block-size", type=int, default=128, help="the mask's block size (stride 16)")
    args = ap.parse_args()
    bs = args.block_size
    print("| size | setting | torch select ms | triton select ms | rows != CPU ref (torch / triton) | scores ms "
          "(native / fp8) | est + select ms (native / fp8) | % of a dense cuDNN layer (native / fp8) |")
    print("|---|---|---|---|---|---|---|---|")
    for size in args.sizes.split(","):
        t, h, w = GRIDS[size]
        q, k, _, kv_len = video_qkv(t, h, w, n_text=256, n_text_valid=40, device="cuda", seed=0)
        n_video = t * h * w
        dense_ms = dense_cudnn_ms(q.shape[2], int(kv_len[0]))
        print(f"{size}: dense cuDNN layer (24 heads x 128, {q.shape[2]} tokens) {dense_ms:.2f} ms", flush=True)
        scores_ms = {p: triton.testing.do_bench(lambda: block_scores(q, k, bs, 16, kv_len, "triton", precision=p),
                                                rep=200, return_mode="median") for p in ("native", "fp8")}
        scores = block_scores(q, k, bs, 16, kv_len, "triton")
        for label, kw in (("tau 0.9", dict(max_density=None)), ("tau 0.9, max_density 0.3", dict(max_density=0.3))):
            kwargs = dict(block_size=bs, q_len=q.shape[2], kv_len=kv_len, keep_diagonal=True,
                          global_start=n_video, **kw)
            tau = torch.tensor([0.9])
            cpu = select_blocks(scores.cpu(), 0.9, **{**kwargs, "kv_len": kv_len.cpu()})
            off = [rows_differing(m, cpu) for m in (select_blocks(scores, 0.9, **kwargs),
                                                    select_blocks_triton(scores, tau, **kwargs))]
            torch_ms = triton.testing.do_bench(lambda: select_blocks(scores, 0.9, **kwargs), rep=200,
                                               return_mode="median")
            triton_ms = triton.testing.do_bench(lambda: select_blocks_triton(scores, tau, **kwargs), rep=200,
                                                return_mode="median")
            total = {p: triton.testing.do_bench(
                lambda: estimate_mask(q, k, block_size=bs, stride=16, threshold=0.9, kv_len=kv_len, keep_diagonal=True,
                                      global_start=n_video, backend="triton", precision=p, **kw),
                rep=200, return_mode="median") for p in ("native", "fp8")}
            print(f"| {size} | {label} | {torch_ms:.3f} | {triton_ms:.3f} | {off[0]} / {off[1]} of "
                  f"{cpu.kv_counts.numel()} | {scores_ms['native']:.2f} / {scores_ms['fp8']:.2f} | "
                  f"{total['native']:.2f} / {total['fp8']:.2f} | {100 * total['native'] / dense_ms:.2f}% / "
                  f"{100 * total['fp8'] / dense_ms:.2f}% |", flush=True)

if __name__ == "__main__":
    main()
