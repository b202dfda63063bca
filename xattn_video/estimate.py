"""Antidiagonal block scores and threshold selection -> BlockSparseMask.

Example::

    scores = block_scores(q, k, block_size=128, stride=16)              # [B, H, QB, KB] float32
    mask = select_blocks(scores, 0.9, block_size=128, q_len=q.shape[2])  # fewest blocks reaching 90% mass
"""

from __future__ import annotations

from typing import Sequence

import torch

from .block_mask import BlockSparseMask
from .config import ceil_div
from .kernels import reference


def block_scores(
    q: torch.Tensor,
    k: torch.Tensor,
    block_size: int,
    stride: int,
    kv_len: torch.Tensor | None = None,
    backend: str = "reference",
) -> torch.Tensor:
    """XAttention's strided antidiagonal estimate, ``[B, H, QB, KB]`` float32 (see the reference twin)."""
    if backend == "triton":
        from .kernels.estimate import strided_block_scores_triton

        return strided_block_scores_triton(q, k, block_size, stride, kv_len)
    return reference.strided_block_scores_reference(q, k, block_size, stride, kv_len)


def select_blocks(
    scores: torch.Tensor,
    threshold: float | Sequence[float] | torch.Tensor,
    *,
    block_size: int,
    q_len: int,
    kv_len: torch.Tensor | None = None,
    keep_diagonal: bool = True,
    max_density: float | None = None,
    global_start: int | None = None,
) -> BlockSparseMask:
    """Per query-block row keep the fewest key blocks whose normalised score reaches ``threshold``.

    Ties go to the lower block index. Blocks of padded keys (start >= ``kv_len``) are never kept. Then:
    ``keep_diagonal`` adds the diagonal block; ``global_start`` marks tokens at or past it as global (text):
    their key blocks are always kept and their query blocks attend densely; ``max_density`` caps the kept
    blocks of a (non-global) row at ``ceil(max_density * valid blocks)``, forced blocks first.
    ``threshold`` is one value or one per head; ``>= 1`` keeps every valid block.
    """
    b, h, qb, kb = scores.shape
    dev = scores.device
    if kv_len is None:
        kv_len = torch.full((b,), kb * block_size, dtype=torch.long, device=dev)
    kv_len = kv_len.to(device=dev, dtype=torch.long)
    kv_start = torch.arange(kb, device=dev) * block_size
    valid = (kv_start[None, :] < kv_len[:, None])[:, None, None, :]  # [B, 1, 1, KB]
    tau = torch.as_tensor(threshold, dtype=torch.float32, device=dev).reshape(-1)
    if tau.numel() not in (1, h):
        raise ValueError(f"threshold has {tau.numel()} values; expected 1 or one per head ({h})")
    tau = tau.reshape(1, -1, 1, 1)

    s = torch.where(valid, scores.float().clamp_min(0.0), torch.zeros((), device=dev))
    total = s.sum(-1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
    sorted_s, order = torch.sort(s / total, dim=-1, descending=True, stable=True)
    before = sorted_s.cumsum(-1) - sorted_s  # mass of the better-ranked blocks
    keep_sorted = (before < tau) | (tau >= 1.0)
    keep = torch.zeros_like(keep_sorted).scatter_(-1, order, keep_sorted) & valid

    forced = torch.zeros_like(keep)
    q_block = torch.arange(qb, device=dev)
    if keep_diagonal:
        diag = q_block[:, None] == torch.arange(kb, device=dev)[None, :]
        forced |= diag[None, None]
    dense_row = torch.zeros(qb, dtype=torch.bool, device=dev)
    if global_start is not None:  # blocks holding a valid global key; query blocks holding a global query
        holds_global = (kv_start + block_size > global_start)[None, :] & (global_start < kv_len)[:, None]
        forced |= holds_global[:, None, None, :]
        dense_row = ((q_block + 1) * block_size > global_start) & (global_start < q_len)
    forced &= valid

    if max_density is not None:
        budget = torch.ceil(max_density * valid.sum(-1, keepdim=True).float() - 1e-6).clamp_min(1)
        # rank forced blocks first, then by score; keep the best `budget` of the kept ones
        rank_key = torch.where(forced, torch.full_like(s, 2.0), s / total)
        rank_key = torch.where(keep | forced, rank_key, torch.full_like(s, -1.0))
        _, by_rank = torch.sort(rank_key, dim=-1, descending=True, stable=True)
        within = torch.arange(kb, device=dev).expand_as(by_rank) < budget
        keep = torch.zeros_like(keep).scatter_(-1, by_rank, within) & keep
    keep = keep | forced | (dense_row[None, None, :, None] & valid)
    return BlockSparseMask.from_dense(keep, block_size, q_len, kv_len)


def estimate_mask(
    q: torch.Tensor,
    k: torch.Tensor,
    *,
    block_size: int,
    stride: int,
    threshold: float | Sequence[float],
    kv_len: torch.Tensor | None = None,
    keep_diagonal: bool = True,
    max_density: float | None = None,
    global_start: int | None = None,
    backend: str = "reference",
) -> BlockSparseMask:
    """Estimate block scores from q, k and select the mask in one call."""
    scores = block_scores(q, k, block_size, stride, kv_len, backend)
    if kv_len is None:
        kv_len = torch.full((q.shape[0],), k.shape[2], dtype=torch.long, device=q.device)
    select = select_blocks
    if backend == "triton":
        from .kernels.select import select_blocks_triton

        select = select_blocks_triton
        threshold = torch.as_tensor(threshold, dtype=torch.float32)
    return select(
        scores,
        threshold,
        block_size=block_size,
        q_len=q.shape[2],
        kv_len=kv_len,
        keep_diagonal=keep_diagonal,
        max_density=max_density,
        global_start=global_start,
    )


def dense_mask(
    batch: int, q_len: int, kv_len: torch.Tensor | None, n_k: int, block_size: int, device: torch.device
) -> BlockSparseMask:
    """The mask that keeps every valid block (dense attention in block-sparse form)."""
    keep = torch.ones(batch, 1, ceil_div(q_len, block_size), ceil_div(n_k, block_size), dtype=torch.bool,
                      device=device)
    return BlockSparseMask.from_dense(keep, block_size, q_len, kv_len)
