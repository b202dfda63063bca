"""Full-size HunyuanVideo transformer step on 1 vs N GPUs (Ulysses sequence parallelism), dense and sparse.

Launched by torchrun, one process per GPU. Every rank builds the published-size transformer with random bf16
weights (``bench_transformer.build_model``) and the 720p x 129-frame inputs (33 x 90 x 160 latents = 118,800
video tokens, 256 text tokens of which ``--valid-text`` are real). Then, per row (dense: our processors at
tau = 1; sparse: tau = 0.9 capped at ``--density`` of the blocks):

1. one GPU: every rank runs the step alone on its own GPU (the same seeds, so the same result; no
   communication), keeping the output and, for the sparse row, the block masks of its future heads;
2. N GPUs: ``enable_context_parallel`` (the HunyuanVideo plan), XAttention applied, the same step.

Reported per row: step ms on 1 and N GPUs (N GPUs: the slowest rank), the speedup, the all-to-all share of the
N-GPU step (CUDA events around XAttention's exchanges, summed over the layers; rank 0), the N-GPU output
against the 1-GPU output (relative L2) and the masks (calls whose masks differ, and the fraction of differing
blocks). One warm-up forward precedes each timed one (Triton autotuning, NCCL set-up).

    torchrun --nproc-per-node 2 benchmarks/bench_parallel.py --out $OUT/parallel.json          # nvidia-h200-x2
    torchrun --nproc-per-node 2 benchmarks/bench_parallel.py --tiny --out /tmp/parallel.json   # CPU smoke, gloo
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_transformer import build_model, make_inputs, rel_l2  # noqa: E402

from xattn_video import XAttentionConfig, apply_xattention, remove_xattention  # noqa: E402
from xattn_video.context_parallel import enable_context_parallel, init_from_torchrun  # noqa: E402
from xattn_video.processors import XAttentionProcessor  # noqa: E402
from xattn_video.runtime import runtime as runtime_module  # noqa: E402

LATENT = {"720p": (33, 90, 160), "tiny": (3, 16, 16)}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


class MaskTap:
    """Keeps the block mask (dense bool, this rank's heads) of every estimated call while ``on``."""

    def __init__(self) -> None:
        self.on, self.masks, self._estimate = False, [], runtime_module.xattention_mask
        runtime_module.xattention_mask = self._tap

    def _tap(self, *args, **kwargs):
        mask = self._estimate(*args, **kwargs)
        if self.on:
            self.masks.append(mask.to_dense())
        return mask


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true", help="CPU smoke mode: small model, gloo")
    p.add_argument("--density", type=float, default=0.3, help="the sparse row's max_density (tau = 0.9)")
    p.add_argument("--text", type=int, default=256)
    p.add_argument("--valid-text", type=int, default=180)
    p.add_argument("--rows", default="dense,sparse", help="which rows: dense, sparse (comma-separated)")
    p.add_argument("--out", default="parallel.json")
    args = p.parse_args()

    rank, world, device_name = init_from_torchrun("cpu" if args.tiny else None)
    if world < 2:
        raise SystemExit("run under torchrun --nproc-per-node N (N >= 2)")
    device = torch.device(device_name)
    dtype = torch.float32 if args.tiny else torch.bfloat16
    size = "tiny" if args.tiny else "720p"
    if args.tiny:
        args.text, args.valid_text = 32, 20
    op = dict(block_size=64, stride=8, backend="reference") if args.tiny else {}
    rows = {"dense": XAttentionConfig(threshold=1.0, warmup_steps=0, **op),
            f"density {args.density}": XAttentionConfig(threshold=0.9, max_density=args.density, warmup_steps=0, **op)}
    wanted = args.rows.split(",")
    rows = {name: cfg for (name, cfg), key in zip(rows.items(), ("dense", "sparse")) if key in wanted}

    t_build = time.perf_counter()
    model = build_model(device, dtype, args.tiny)
    inputs = make_inputs(model, LATENT[size], args.text, args.valid_text, device, dtype)
    build_s = time.perf_counter() - t_build
    tap = MaskTap()
    heads = model.config.num_attention_heads
    mine = slice(rank * heads // world, (rank + 1) * heads // world)

    # 1. one GPU per rank, no communication
    single = {}
    for name, cfg in rows.items():
        apply_xattention(model, cfg)
        tap.masks, tap.on = [], False
        with torch.no_grad():
            model(**inputs)  # warm-up, masks not kept
        tap.on = True
        sync(device)
        t0 = time.perf_counter()
        with torch.no_grad():
            out = model(**inputs)[0]
        sync(device)
        tap.on = False
        single[name] = dict(ms=(time.perf_counter() - t0) * 1e3, out=out,
                            masks=[m[:, mine].clone() for m in tap.masks])
        remove_xattention(model)

    # 2. N GPUs, Ulysses
    enable_context_parallel(model)
    result_rows = []
    for name, cfg in rows.items():
        apply_xattention(model, cfg)
        groups = [p._ulysses_group() for p in model.attn_processors.values() if isinstance(p, XAttentionProcessor)]
        tap.masks, tap.on = [], False
        with torch.no_grad():
            model(**inputs)  # warm-up
        sync(device)
        for g in groups:
            g.timed = True
            g.comm_seconds()  # drop what the warm-up recorded
        tap.on = True
        sync(device)
        dist.barrier()
        t0 = time.perf_counter()
        with torch.no_grad():
            out = model(**inputs)[0]
        sync(device)
        ms = torch.tensor([(time.perf_counter() - t0) * 1e3], dtype=torch.float64, device=device)
        dist.all_reduce(ms, op=dist.ReduceOp.MAX)
        tap.on = False
        comm_ms = sum(g.comm_seconds() for g in groups) * 1e3
        one = single[name]
        differing_calls = sum(not torch.equal(a, b) for a, b in zip(tap.masks, one["masks"]))
        differing_blocks = sum(int((a != b).sum()) for a, b in zip(tap.masks, one["masks"]))
        total_blocks = sum(a.numel() for a in tap.masks)
        counts = torch.tensor([differing_calls, differing_blocks, total_blocks, len(tap.masks) != len(one["masks"])],
                              dtype=torch.float64, device=device)
        dist.all_reduce(counts)
        single_ms = torch.tensor([one["ms"]], dtype=torch.float64, device=device)
        dist.all_reduce(single_ms, op=dist.ReduceOp.MAX)
        result_rows.append(dict(
            row=name, gpus=world, ms_1=float(single_ms), ms_n=float(ms), speedup=float(single_ms) / float(ms),
            all_to_all_ms_rank0=comm_ms, all_to_all_share=comm_ms / float(ms),
            rel_l2_vs_1=rel_l2(out, one["out"]), finite=bool(torch.isfinite(out.float()).all()),
            masks_compared=len(tap.masks) * world, masks_differing=int(counts[0]),
            blocks_differing_fraction=float(counts[1] / counts[2]) if counts[2] else 0.0,
            mask_count_mismatch=bool(counts[3]),
        ))
        remove_xattention(model)

    if rank == 0:
        result = dict(meta=dict(size=size, latent=LATENT[size], text=args.text, valid_text=args.valid_text,
                                dtype=str(dtype), world=world, build_s=build_s, platform=platform.platform(),
                                device=torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
                                weights="random", note="CPU smoke run: not a performance figure" if args.tiny else ""),
                      rows=result_rows)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2))
        print(f"| {size} | row | 1 GPU ms | {world} GPUs ms | speedup | all-to-all share | rel L2 vs 1 GPU | masks differing |")
        print("|---|---|---|---|---|---|---|---|")
        for r in result_rows:
            print(f"| {size} | {r['row']} | {r['ms_1']:.1f} | {r['ms_n']:.1f} | {r['speedup']:.2f}x | "
                  f"{r['all_to_all_share']:.1%} | {r['rel_l2_vs_1']:.2e} | {r['masks_differing']}/{r['masks_compared']} |")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
