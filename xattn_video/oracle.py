"""How concentrated a model's attention is: the oracle share of key blocks that holds a given softmax mass.

For every query block (``block_size`` queries), the exact attention probabilities of its queries are summed per
key block; the row's oracle density is the fewest key blocks whose mass reaches ``mass`` (0.9), over the valid
key blocks. This is what a perfect block selector would keep at threshold ``mass``: the floor under any
estimate, and the measure of whether a trained model's attention is sparse at all.

Example::

    d = oracle_block_density(q, k, block_size=128, mass=0.9)    # [B, H] mean over query blocks
"""

from __future__ import annotations

import torch

from .config import ceil_div


@torch.no_grad()
def oracle_block_mass(q: torch.Tensor, k: torch.Tensor, block_size: int, kv_len: torch.Tensor | None = None,
                      q_end: int | None = None, chunk: int = 2048) -> torch.Tensor:
    """``[B, H, QB, KB]`` float32: mean exact attention probability mass that each query block's queries give
    each key block (rows sum to 1). Only the first ``q_end`` queries are used (e.g. the video tokens)."""
    b, h, n, d = q.shape
    nk = k.shape[2]
    q_end = n if q_end is None else q_end
    if kv_len is None:
        kv_len = torch.full((b,), nk, dtype=torch.long, device=q.device)
    kb = ceil_div(nk, block_size)
    qb = ceil_div(q_end, block_size)
    valid = torch.arange(nk, device=q.device)[None, :] < kv_len.to(q.device)[:, None]  # [B, NK]
    bias = torch.zeros(b, 1, 1, nk, device=q.device).masked_fill(~valid[:, None, None, :], float("-inf"))
    out = torch.zeros(b, h, qb, kb, device=q.device)
    counts = torch.zeros(qb, device=q.device)
    scale = d ** -0.5
    pad = kb * block_size - nk
    for start in range(0, q_end, chunk):
        stop = min(q_end, start + chunk)
        logits = (q[:, :, start:stop].float() @ k.float().transpose(-1, -2)) * scale + bias
        p = torch.softmax(logits, dim=-1)
        p = torch.nn.functional.pad(p, (0, pad)).unflatten(-1, (kb, block_size)).sum(-1)  # [B, H, chunk, KB]
        rows = torch.arange(start, stop, device=q.device) // block_size
        out.index_add_(2, rows, p)
        counts.index_add_(0, rows, torch.ones_like(rows, dtype=torch.float32))
    return out / counts[None, None, :, None]


def blocks_for_mass(block_mass: torch.Tensor, mass: float) -> torch.Tensor:
    """``[..., QB]`` fewest key blocks per row whose mass reaches ``mass``."""
    sorted_mass = block_mass.sort(dim=-1, descending=True).values
    cum = sorted_mass.cumsum(-1)
    return (cum < mass - 1e-6).sum(-1) + 1


def oracle_block_density(q: torch.Tensor, k: torch.Tensor, block_size: int = 128, mass: float = 0.9,
                         kv_len: torch.Tensor | None = None, q_end: int | None = None) -> torch.Tensor:
    """``[B, H]``: mean over query blocks of (fewest key blocks holding ``mass``) / (valid key blocks)."""
    m = oracle_block_mass(q, k, block_size, kv_len, q_end)
    nk = k.shape[2]
    kv_len = torch.full((q.shape[0],), nk, device=q.device) if kv_len is None else kv_len.to(q.device)
    valid_blocks = torch.div(kv_len + block_size - 1, block_size, rounding_mode="floor").float()
    return (blocks_for_mass(m, mass).float() / valid_blocks[:, None, None]).mean(-1)
