"""Which blocks to keep: XAttention's estimate against other methods' patterns at the same block budget.

One attention layer fed structured video-like Q/K/V (``xattn_video.synthetic.video_qkv``: a stand-in, not a
trained model; its figures say how the selections behave on that data only). Every method runs through the same
block-sparse attention, so the rows differ only in which blocks they keep. The static patterns are sized with
``fit_density`` to the largest that stays within ``--density``; the estimates (XAttention, pooled, oracle) use
tau = ``--tau`` capped by ``max_density = --density``. Per row: density (fraction of valid blocks computed), true
attention mass kept (from the exact block scores), relative L2 error and cosine similarity of the output
against dense attention.

    python benchmarks/compare_patterns.py --size 720p --density 0.3 --out $OUT/patterns.json   # GPU
    python benchmarks/compare_patterns.py --size tiny                                           # CPU, seconds
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from xattn_video import XAttentionConfig, xattention  # noqa: E402
from xattn_video.attention import dense_attention  # noqa: E402
from xattn_video.patterns import (SVG, Band, FirstFrames, Radial, ScoredSource, StaticSource,  # noqa: E402
                                  SVGSource, Temporal, VideoLayout, Window3D, exact_block_scores, fit_density)
from xattn_video.synthetic import video_qkv  # noqa: E402

# latent grid, text tokens, valid text tokens, heads, head_dim, block, stride
SIZES = {
    "tiny": ((5, 16, 24), 32, 20, 2, 64, 32, 8),
    "480p": ((16, 30, 53), 256, 40, 24, 128, 128, 16),
    "544p": ((33, 34, 60), 256, 40, 24, 128, 128, 16),
    "720p": ((33, 45, 80), 256, 40, 24, 128, 128, 16),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="tiny", choices=sorted(SIZES))
    p.add_argument("--density", type=float, default=0.3, help="block budget of every row, in (0, 1]")
    p.add_argument("--tau", type=float, default=0.95)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="write the rows as JSON here")
    args = p.parse_args()
    if not 0 < args.density <= 1:
        p.error(f"--density={args.density} is out of range: accepted (0, 1]")
    grid, n_text, valid_text, heads, head_dim, block, stride = SIZES[args.size]
    device = torch.device("cuda" if torch.cuda.is_available() and args.size != "tiny" else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    layout = VideoLayout(*grid)
    q, k, v, kv_len = video_qkv(*grid, n_text=n_text, n_text_valid=valid_text, heads=heads, head_dim=head_dim,
                                dtype=dtype, device=device, seed=args.seed)
    cfg = XAttentionConfig(block_size=block, stride=stride, threshold=args.tau, max_density=args.density)
    request = SimpleNamespace(q=q, k=k, v=v, kv_len=kv_len, global_start=layout.num_tokens, layer=0, step=0,
                              config=cfg)
    dense = dense_attention(q, k, v, kv_len).float()
    exact = exact_block_scores(q, k, block, kv_len)

    def fitted(family):
        r, _ = fit_density(family, layout, block, args.density, text_tokens=n_text,
                           valid_text_tokens=valid_text)
        return family(r)

    band, temporal = fitted(Band), fitted(Temporal)
    rows = {
        f"xattention (antidiagonal, tau={args.tau})": None,
        "pooled estimate (same selection)": ScoredSource("pooled"),
        "oracle (true block mass, same selection)": ScoredSource("exact"),
        "window 3D (STA-like)": StaticSource(fitted(lambda r: Window3D((r, r, r))), layout),
        "band (SVG spatial head)": StaticSource(band, layout),
        "temporal (SVG temporal head)": StaticSource(temporal, layout),
        "SVG (per-head spatial / temporal, mse)": SVGSource(SVG(band, temporal, criterion="mse"), layout),
        "radial (its own density)": StaticSource(Radial(), layout),
        "window 3D + first frame": StaticSource(fitted(lambda r: Window3D((r, r, r)) | FirstFrames(1)), layout),
    }
    results = []
    print(f"| method | density | true mass kept | rel L2 vs dense | cosine |   ({args.size}, synthetic Q/K/V)")
    print("|---|---|---|---|---|")
    for label, source in rows.items():
        mask = None if source is None else source(request)
        out, used = xattention(q, k, v, cfg, kv_len, global_start=layout.num_tokens, mask=mask)
        out = out.float()
        mass = float((exact * used.to_dense()).sum() / exact.sum())
        rel = float((out - dense).norm() / dense.norm())
        cos = float(torch.nn.functional.cosine_similarity(out.flatten(), dense.flatten(), dim=0))
        pattern = getattr(source, "pattern", None)
        results.append(dict(method=label, pattern=repr(pattern) if pattern else None, density=used.density(),
                            true_mass_kept=mass, rel_l2=rel, cosine=cos))
        print(f"| {label} | {used.density():.3f} | {mass:.3f} | {rel:.2e} | {cos:.5f} |", flush=True)
    if args.out:
        meta = dict(size=args.size, grid=grid, text=n_text, valid_text=valid_text, heads=heads, head_dim=head_dim,
                    block=block, stride=stride, density_budget=args.density, tau=args.tau, seed=args.seed,
                    device=str(device), dtype=str(dtype), data="xattn_video.synthetic.video_qkv (not a model)")
        Path(args.out).write_text(json.dumps(dict(meta=meta, rows=results), indent=1))


if __name__ == "__main__":
    main()
