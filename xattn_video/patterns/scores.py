"""Block scores other than XAttention's antidiagonal estimate, for the same threshold selection.

- ``pooled_block_scores``: each block summarised by the mean of its queries / keys, the cheap estimate of
  SpargeAttn's and DraftAttention's first stage and of VSA's coarse stage.
- ``exact_block_scores``: the true softmax attention mass of every block (the oracle; O(N^2) work, chunked).

Both return ``[B, H, QB, KB]`` float32 like ``estimate.block_scores``; feed them to ``estimate.select_blocks``.

Example::

    scores = pooled_block_scores(q, k, block_size=64, kv_len=kv_len)
    mask = select_blocks(scores, 0.9, block_size=64, q_len=q.shape[2], kv_len=kv_len, global_start=n_video)
"""

from __future__ import annotations

import math

import torch

from ..config import ceil_div


def _kv_len(kv_len: torch.Tensor | None, b: int, n_k: int, device: torch.device) -> torch.Tensor:
    if kv_len is None:
        return torch.full((b,), n_k, dtype=torch.long, device=device)
    if kv_len.shape != (b,) or int(kv_len.min()) < 1 or int(kv_len.max()) > n_k:
        raise ValueError(f"kv_len must be [B]=({b},) with values in 1..{n_k}, got {kv_len.tolist()}")
    return kv_len.to(device=device, dtype=torch.long)


def _block_sums(x: torch.Tensor, block_size: int, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per block of ``x [B, H, N, D]``: the sum of the valid tokens ``[B, H, NB, D]`` and their count ``[B, NB]``."""
    n = x.shape[2]
    nb = ceil_div(n, block_size)
    pad = nb * block_size - n
    xv = torch.nn.functional.pad(x.float() * valid[:, None, :, None], (0, 0, 0, pad))
    counts = torch.nn.functional.pad(valid.float(), (0, pad)).reshape(-1, nb, block_size).sum(-1)
    return xv.reshape(*x.shape[:2], nb, block_size, -1).sum(3), counts


def pooled_block_scores(
    q: torch.Tensor, k: torch.Tensor, block_size: int, kv_len: torch.Tensor | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """Mean-pooled block scores ``[B, H, QB, KB]`` float32; each row sums to 1.

    The logit of a block pair is ``mean(q_block) . mean(k_block) * scale`` plus ``log(valid keys in the block)``,
    so a partial block weighs as the keys it holds; blocks with no valid key score 0.
    """
    b, h, n, d = q.shape
    n_k = k.shape[2]
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    kv_len = _kv_len(kv_len, b, n_k, q.device)
    q_sum, q_cnt = _block_sums(q, block_size, torch.ones(b, n, dtype=torch.bool, device=q.device))
    key_ok = torch.arange(n_k, device=q.device)[None, :] < kv_len[:, None]
    k_sum, k_cnt = _block_sums(k, block_size, key_ok)
    q_mean = q_sum / q_cnt[:, None, :, None]
    k_mean = k_sum / k_cnt.clamp_min(1)[:, None, :, None]
    logits = q_mean @ k_mean.transpose(-1, -2) * scale + k_cnt.log()[:, None, None, :]  # log 0 = -inf
    return logits.softmax(-1)


def exact_block_scores(
    q: torch.Tensor, k: torch.Tensor, block_size: int, kv_len: torch.Tensor | None = None,
    scale: float | None = None, rows_per_chunk: int = 1024,
) -> torch.Tensor:
    """The attention mass of each block pair ``[B, H, QB, KB]`` float32 (softmax over the valid keys, summed
    per block); a row sums to the number of queries its block holds. Computes ``rows_per_chunk`` query rows of
    one head at a time."""
    b, h, n, d = q.shape
    n_k = k.shape[2]
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    kv_len = _kv_len(kv_len, b, n_k, q.device)
    qb, kb = ceil_div(n, block_size), ceil_div(n_k, block_size)
    key_ok = torch.arange(n_k, device=q.device)[None, :] < kv_len[:, None]  # [B, Nk]
    q_block = torch.arange(n, device=q.device) // block_size
    out = torch.zeros(b, h, qb, kb, dtype=torch.float32, device=q.device)
    for bi in range(b):
        for hi in range(h):
            kf = k[bi, hi].float()
            for r0 in range(0, n, rows_per_chunk):
                r1 = min(n, r0 + rows_per_chunk)
                logits = (q[bi, hi, r0:r1].float() @ kf.T) * scale
                p = logits.masked_fill(~key_ok[bi], float("-inf")).softmax(-1)
                p = torch.nn.functional.pad(p, (0, kb * block_size - n_k)).reshape(r1 - r0, kb, block_size).sum(-1)
                out[bi, hi].index_add_(0, q_block[r0:r1], p)
    return out
