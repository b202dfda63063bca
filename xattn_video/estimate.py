"""Antidiagonal block scores and threshold selection -> BlockSparseMask, on either backend.

The implementations live in ``kernels/`` (Triton) and ``kernels/reference.py`` (their PyTorch twins); the
backend is chosen in ``xattn_video.backends``. These functions name the steps of the estimate.

Example::

    scores = block_scores(q, k, block_size=128, stride=16)              # [B, H, QB, KB] float32
    mask = select_blocks(scores, 0.9, block_size=128, q_len=q.shape[2])  # fewest blocks reaching 90% mass
    scores = block_scores(q, k, 128, 16, sink_aware=True)                # also see keys few queries favour
"""

from __future__ import annotations

from typing import Sequence

import torch

from .backends import kernel
from .block_mask import BlockSparseMask
from .config import ceil_div


def block_scores(
    q: torch.Tensor,
    k: torch.Tensor,
    block_size: int,
    stride: int,
    kv_len: torch.Tensor | None = None,
    backend: str = "reference",
    *,
    sink_aware: bool = False,
    precision: str = "native",
) -> torch.Tensor:
    """XAttention's strided antidiagonal estimate, ``[B, H, QB, KB]`` float32 (see the reference twin);
    ``sink_aware`` averages it with the max-logit estimate that does not underrate sinks; ``precision="fp8"``
    runs the strided GEMM in e4m3."""
    return kernel("scores", backend)(q, k, block_size, stride, kv_len, sink_aware=sink_aware, precision=precision)


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
    backend: str = "reference",
) -> BlockSparseMask:
    """Per query-block row keep the fewest key blocks whose normalised score reaches ``threshold`` (see
    ``reference.select_blocks_reference`` for the rules: ties, padding, diagonal, global tokens, budget)."""
    return kernel("select", backend)(
        scores, threshold, block_size=block_size, q_len=q_len, kv_len=kv_len, keep_diagonal=keep_diagonal,
        max_density=max_density, global_start=global_start,
    )


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
    sink_aware: bool = False,
    precision: str = "native",
) -> BlockSparseMask:
    """Estimate block scores from q, k and select the mask in one call (``precision``: the estimate's)."""
    scores = block_scores(q, k, block_size, stride, kv_len, backend, sink_aware=sink_aware, precision=precision)
    if kv_len is None:
        kv_len = torch.full((q.shape[0],), k.shape[2], dtype=torch.long, device=q.device)
    return select_blocks(
        scores, threshold, block_size=block_size, q_len=q.shape[2], kv_len=kv_len, keep_diagonal=keep_diagonal,
        max_density=max_density, global_start=global_start, backend=backend,
    )


def dense_mask(
    batch: int, q_len: int, kv_len: torch.Tensor | None, n_k: int, block_size: int, device: torch.device
) -> BlockSparseMask:
    """The mask that keeps every valid block (dense attention in block-sparse form)."""
    keep = torch.ones(batch, 1, ceil_div(q_len, block_size), ceil_div(n_k, block_size), dtype=torch.bool,
                      device=device)
    return BlockSparseMask.from_dense(keep, block_size, q_len, kv_len)
