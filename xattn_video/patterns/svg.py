"""Sparse VideoGen's online head classification (Xi et al., 2025) over block masks.

Per call, SVG samples a few video query rows, computes their exact attention, and gives each head the
candidate pattern (a spatial band or a temporal stripe) that best reproduces it. We do the same with any
static candidates, judged on the block masks our kernel would run:

- ``criterion="mse"`` (SVG's): mean squared error of the sampled rows' attention output under each candidate
  against the dense output (needs ``v``);
- ``criterion="mass"``: the share of the sampled rows' attention probability that each candidate keeps
  (needs no ``v``); the best keeps the most.

Example::

    svg = SVG(spatial=Band(2 * layout.frame_tokens), temporal=Temporal(layout.width))
    keep, choice = svg_head_keep(svg, q, k, layout, block_size=128, kv_len=kv_len)   # [B, H, VB, VB], [B, H]
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..config import ceil_div
from .layout import VideoLayout
from .static import StaticPattern, video_block_keep

CRITERIA = ("mass", "mse")


@dataclass(frozen=True)
class SVG:
    """Candidates and sampling of the online classification.

    Attributes:
        spatial, temporal: the two candidate patterns (chosen per head; index 0 = spatial, 1 = temporal).
        samples: video query rows sampled per call (SVG uses 64), 1..video tokens.
        criterion: "mass" or "mse" (see the module docstring).
        seed: the sampled rows are drawn from this seed, the same for every call (reproducible runs).
    """

    spatial: StaticPattern
    temporal: StaticPattern
    samples: int = 64
    criterion: str = "mass"
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("spatial", "temporal"):
            if not isinstance(getattr(self, name), StaticPattern):
                raise TypeError(f"{name} must be a StaticPattern, got {type(getattr(self, name)).__name__}")
        if isinstance(self.samples, bool) or not isinstance(self.samples, int) or self.samples < 1:
            raise ValueError(f"samples={self.samples!r} must be an integer >= 1")
        if self.criterion not in CRITERIA:
            raise ValueError(f"criterion={self.criterion!r} is not one of {CRITERIA}")

    @property
    def candidates(self) -> tuple[StaticPattern, StaticPattern]:
        return (self.spatial, self.temporal)


def svg_head_keep(
    svg: SVG,
    q: torch.Tensor,
    k: torch.Tensor,
    layout: VideoLayout,
    block_size: int,
    kv_len: torch.Tensor | None = None,
    v: torch.Tensor | None = None,
    keep_diagonal: bool = True,
    candidate_keeps: list[torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per head, the candidate that best reproduces the sampled rows: ``(keep [B, H, VB, VB], choice [B, H])``.

    ``q, k, v`` are ``[B, H, N, D]`` with the layout's video tokens first; text keys (past the video, before
    ``kv_len``) count as kept by every candidate, as ``assemble_mask`` keeps them. ``candidate_keeps``: the
    candidates' ``video_block_keep``, when the caller caches them.
    """
    b, h, n, d = q.shape
    n_video = layout.num_tokens
    if n < n_video:
        raise ValueError(f"q has {n} tokens, fewer than the layout's {n_video} video tokens")
    if svg.samples > n_video:
        raise ValueError(f"samples={svg.samples} is out of range: accepted 1..{n_video} (the video tokens)")
    if svg.criterion == "mse" and v is None:
        raise ValueError("criterion='mse' compares attention outputs and needs v; use criterion='mass' without v")
    dev = q.device
    n_k = k.shape[2]
    if kv_len is None:
        kv_len = torch.full((b,), n_k, dtype=torch.long, device=dev)
    kv_len = kv_len.to(device=dev, dtype=torch.long)
    if candidate_keeps is None:
        candidate_keeps = [video_block_keep(p, layout, block_size) for p in svg.candidates]
    cand = torch.stack([c.to(dev) for c in candidate_keeps])  # [C, VB, VB]

    rows = torch.randperm(n_video, generator=torch.Generator().manual_seed(svg.seed))[: svg.samples].to(dev)
    row_block = rows // block_size
    key_block = torch.arange(n_k, device=dev) // block_size
    vb = ceil_div(n_video, block_size)
    # per candidate, sampled row and key token: is the key's block computed? (video blocks, text, diagonal)
    allowed = torch.zeros(len(cand), len(rows), n_k, dtype=torch.bool, device=dev)
    video_keys = key_block < vb
    allowed[:, :, video_keys] = cand[:, row_block][:, :, key_block[video_keys]]
    allowed[:, :, (key_block + 1) * block_size > n_video] = True  # blocks holding text keys
    if keep_diagonal:
        allowed |= (key_block[None, :] == row_block[:, None])[None]
    key_ok = torch.arange(n_k, device=dev)[None, :] < kv_len[:, None]  # [B, Nk]

    scale = 1.0 / math.sqrt(d)
    error = torch.empty(b, h, len(cand), device=dev)
    for bi in range(b):
        for hi in range(h):
            logits = (q[bi, hi, rows].float() @ k[bi, hi].float().T) * scale
            logits = logits.masked_fill(~key_ok[bi], float("-inf"))
            if svg.criterion == "mass":
                p = logits.softmax(-1)
                error[bi, hi] = -(p[None] * allowed).sum((-1, -2))  # less kept mass = larger error
            else:
                vf = v[bi, hi].float()
                want = logits.softmax(-1) @ vf
                got = logits[None].masked_fill(~allowed, float("-inf")).softmax(-1) @ vf
                error[bi, hi] = (got - want[None]).pow(2).mean((-1, -2))
    choice = error.argmin(-1)  # ties go to the spatial candidate
    return cand[choice], choice
