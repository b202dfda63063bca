"""True attention mass kept against tau, plain antidiagonal estimate vs the sink-aware one (``OpConfig.sink_aware``).

Inputs: structured video-like Q/K (``xattn_video.synthetic.video_qkv``: a stand-in, not a trained model; its
figures describe that generator only) and the planted sink (``xattn_video.synthetic.planted_sink``). Per
estimate, threshold and seed: density (fraction of valid key blocks kept), true mass kept (the share of each
query block's exact softmax mass inside its kept blocks, mean over video query blocks and heads) and the share
of rows whose true kept mass falls short of tau. Rows ``cap d`` select at tau = 0.99 under ``max_density = d``:
both estimates then keep about the same number of blocks, so their mass is compared at an equal budget.
Selection as in the op: text keys kept, text queries dense, diagonal kept.

    python benchmarks/bench_sink.py --size tiny                                      # CPU, seconds
    python benchmarks/bench_sink.py --size 720p --q-blocks 16 --out $OUT/sink.json   # GPU (Triton estimate)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from xattn_video.estimate import block_scores, select_blocks  # noqa: E402
from xattn_video.patterns import exact_block_scores  # noqa: E402
from xattn_video.synthetic import planted_sink, video_qkv  # noqa: E402

# latent grid, text tokens, valid text tokens, heads, head_dim, block, stride
SIZES = {
    "tiny": ((4, 16, 24), 64, 20, 4, 64, 64, 8),
    "small": ((8, 24, 32), 128, 40, 4, 64, 128, 16),
    "720p": ((33, 45, 80), 256, 40, 24, 128, 128, 16),
}
TAUS = (0.8, 0.9, 0.95)
CAPS = (0.15, 0.3)
ESTIMATES = {"mean (XAttention)": False, "sink-aware": True}


def kept_mass(q, k, kv_len, block, stride, global_start, backend, sample):
    """Rows for one input: every estimate x (each tau, each density cap)."""
    n = q.shape[2]
    # true block mass of the sampled video query blocks (exact scores are O(N^2): sample at large sizes)
    video_blocks = global_start // block
    pick = torch.arange(video_blocks) if not sample else torch.linspace(0, video_blocks - 1, sample).round().long()
    rows_q = (pick[:, None] * block + torch.arange(block)).flatten().to(q.device)
    true = exact_block_scores(q[:, :, rows_q], k, block, kv_len)
    true = true / true.sum(-1, keepdim=True).clamp_min(1e-30)
    out = []
    for name, sink in ESTIMATES.items():
        scores = block_scores(q, k, block, stride, kv_len, backend, sink_aware=sink)
        for tau, cap in [(t, None) for t in TAUS] + [(0.99, c) for c in CAPS]:
            mask = select_blocks(scores, tau, block_size=block, q_len=n, kv_len=kv_len, max_density=cap,
                                 global_start=global_start, backend=backend)
            keep = mask.to_dense()
            kb_valid = int(-(-int(kv_len.min()) // block))
            density = keep[:, :, :video_blocks, :kb_valid].float().mean().item()
            row_mass = (true * keep[:, :, pick.to(q.device)]).sum(-1)  # [B, H, sampled rows]
            out.append({"estimate": name, "tau": tau, "max_density": cap, "density": round(density, 4),
                        "true_mass_kept": round(row_mass.mean().item(), 4),
                        "rows_short_of_tau": round((row_mass < tau - 1e-6).float().mean().item(), 4)})
    return out


def planted_rows(backend: str, device: torch.device, seeds: range) -> list[dict]:
    rows = []
    for seed in seeds:
        q, k, sink_block = planted_sink(seed=seed)
        q, k = q.to(device), k.to(device)
        true = exact_block_scores(q, k, 32)[0, 0, 1]
        true = true / true.sum()
        for name, sink in ESTIMATES.items():
            scores = block_scores(q, k, 32, 8, None, backend, sink_aware=sink)
            keep = select_blocks(scores, 0.9, block_size=32, q_len=q.shape[2], keep_diagonal=False,
                                 backend=backend).to_dense()[0, 0, 1]
            rows.append({"seed": seed, "estimate": name, "tau": 0.9, "sink_block_kept": bool(keep[sink_block]),
                         "sink_true_share": round(true[sink_block].item(), 4),
                         "true_mass_kept": round(true[keep].sum().item(), 4), "blocks_kept": int(keep.sum())})
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="tiny", choices=sorted(SIZES))
    p.add_argument("--seeds", type=int, default=2, help="seeds 0..N-1 of the synthetic inputs")
    p.add_argument("--n-global", type=int, default=4, help="video_qkv's global (sink) video tokens; 0 = none")
    p.add_argument("--q-blocks", type=int, default=0, help="video query blocks sampled for the true mass (0 = all)")
    p.add_argument("--out", help="write the rows as JSON here")
    args = p.parse_args(argv)
    if args.seeds < 1 or args.q_blocks < 0 or args.n_global < 0:
        p.error(f"--seeds={args.seeds} must be >= 1, --q-blocks={args.q_blocks} and --n-global={args.n_global} >= 0")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    backend = "triton" if device.type == "cuda" else "reference"
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    grid, n_text, valid_text, heads, head_dim, block, stride = SIZES[args.size]
    n_video = grid[0] * grid[1] * grid[2]
    structured = []
    for seed in range(args.seeds):
        q, k, _, kv_len = video_qkv(*grid, n_text=n_text, n_text_valid=valid_text, heads=heads, head_dim=head_dim,
                                    dtype=dtype, device=device, seed=seed, n_global=args.n_global)
        for row in kept_mass(q, k, kv_len, block, stride, n_video, backend, args.q_blocks):
            structured.append({"seed": seed, **row})
    planted = planted_rows(backend, device, range(3))

    where = f"device: {device.type} ({torch.cuda.get_device_name() if device.type == 'cuda' else 'CPU'})"
    print(f"## True mass kept vs tau — {where}, backend {backend}, synthetic inputs (not a model)\n")
    print(f"video_qkv {grid[0]}x{grid[1]}x{grid[2]} + {n_text} text ({valid_text} valid), {args.n_global} global "
          f"video tokens, {heads} heads x "
          f"{head_dim}, block {block}, stride {stride}, {dtype}; mean over seeds 0..{args.seeds - 1}\n")
    print("| selection | estimate | density | true mass kept | rows short of tau |\n|---|---|---|---|---|")
    keys = sorted({(r["tau"], r["max_density"] or 0, r["estimate"]) for r in structured})
    for tau, cap, name in keys:
        rs = [r for r in structured if (r["tau"], r["max_density"] or 0, r["estimate"]) == (tau, cap, name)]
        label = f"tau = {tau}" if not cap else f"cap {cap} (tau 0.99)"
        mean = {f: sum(r[f] for r in rs) / len(rs) for f in ("density", "true_mass_kept", "rows_short_of_tau")}
        print(f"| {label} | {name} | {mean['density']:.3f} | {mean['true_mass_kept']:.3f} | "
              f"{mean['rows_short_of_tau']:.2f} |")
    print("\nPlanted sink (query block 1 of 8, tau = 0.9, block 32, stride 8):\n")
    print("| seed | estimate | sink's true share | sink block kept | blocks kept | true mass kept |\n"
          "|---|---|---|---|---|---|")
    for r in planted:
        print(f"| {r['seed']} | {r['estimate']} | {r['sink_true_share']:.3f} | {r['sink_block_kept']} | "
              f"{r['blocks_kept']} | {r['true_mass_kept']:.3f} |")
    if args.out:
        meta = {"size": args.size, "device": where, "backend": backend, "dtype": str(dtype),
                "data": "synthetic (xattn_video.synthetic), not a model", "q_blocks_sampled": args.q_blocks,
                "n_global": args.n_global}
        Path(args.out).write_text(json.dumps({"meta": meta, "structured": structured, "planted": planted},
                                             indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
