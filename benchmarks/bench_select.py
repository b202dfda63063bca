"""Block selection at HunyuanVideo sizes (GPU): the Triton kernel vs the PyTorch version, same masks.

    python benchmarks/bench_select.py [--sizes 544p,720p]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import triton.testing

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from xattn_video.estimate import block_scores, select_blocks  # noqa: E402
from xattn_video.kernels.select import select_blocks_triton  # noqa: E402
from xattn_video.synthetic import video_qkv  # noqa: E402

GRIDS = {"480p": (16, 30, 53), "544p": (33, 34, 60), "720p": (33, 45, 80)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="544p,720p")
    args = ap.parse_args()
    print("| size | setting | torch select ms | triton select ms | scores kernel ms | same mask |")
    print("|---|---|---|---|---|---|")
    for size in args.sizes.split(","):
        t, h, w = GRIDS[size]
        q, k, _, kv_len = video_qkv(t, h, w, n_text=256, n_text_valid=40, device="cuda", seed=0)
        n_video = t * h * w
        scores_ms = triton.testing.do_bench(lambda: block_scores(q, k, 128, 16, kv_len, "triton"), rep=200,
                                            return_mode="median")
        scores = block_scores(q, k, 128, 16, kv_len, "triton")
        for label, kw in (("tau 0.9", dict(max_density=None)), ("tau 0.9, max_density 0.3", dict(max_density=0.3))):
            kwargs = dict(block_size=128, q_len=q.shape[2], kv_len=kv_len, keep_diagonal=True,
                          global_start=n_video, **kw)
            ref = select_blocks(scores, 0.9, **kwargs)
            got = select_blocks_triton(scores, torch.tensor([0.9]), **kwargs)
            same = torch.equal(ref.kv_counts, got.kv_counts) and torch.equal(ref.kv_indices, got.kv_indices)
            torch_ms = triton.testing.do_bench(lambda: select_blocks(scores, 0.9, **kwargs), rep=200,
                                               return_mode="median")
            triton_ms = triton.testing.do_bench(lambda: select_blocks_triton(scores, torch.tensor([0.9]), **kwargs),
                                                rep=200, return_mode="median")
            print(f"| {size} | {label} | {torch_ms:.2f} | {triton_ms:.2f} | {scores_ms:.2f} | {same} "
                  f"(density {got.density():.3f}) |", flush=True)


if __name__ == "__main__":
    main()
