"""Block-sparse attention through PyTorch's ``scaled_dot_product_attention`` with a token-level mask: the fast
path where the Triton kernel cannot run (a CPU; a GPU without Triton support for the shape), native precision.

The block mask is expanded, one chunk of query rows at a time, into a boolean mask over the keys (kept block and
valid key), so memory stays O(chunk x N) and SDPA's fused CPU / GPU kernels do the work. Same function as the
twin ``reference.block_sparse_attention_reference`` (which gathers the kept blocks instead), up to float
rounding; about 6x faster than it on a CPU at 2,300 tokens. A row that keeps no key outputs zeros, as the
twin's; inputs holding NaN or Inf go to the twin, whose fault semantics (a fault in a skipped block never
reaches a row) a shared value matrix cannot give.

Example::

    out = block_sparse_attention_sdpa(q, k, v, mask)      # q, k, v [B, H, N, D], any device
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..block_mask import BlockSparseMask
from ..config import ceil_div
from .reference import block_sparse_attention_reference, check_precision

# boolean mask bytes per chunk of query rows: on a CPU SDPA may build float32 logits 4x that size; a GPU's fused
# kernels do not, and many small chunks would cost more in launches than the memory saved
MASK_BYTES = {"cpu": 1 << 26, "cuda": 1 << 30}


def block_sparse_attention_sdpa(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: BlockSparseMask,
    scale: float | None = None,
    precision: str = "native",
    *,
    query_chunk: int | None = None,
) -> torch.Tensor:
    """Attention of each query block over its kept key blocks (keys past ``mask.kv_len`` excluded), in q's dtype.
    ``precision``: "native" only. ``query_chunk`` (tests): query rows per SDPA call; default from ``MASK_BYTES``
    for the device."""
    check_precision(precision, ("native",))
    if not (torch.isfinite(q).all() and torch.isfinite(k).all() and torch.isfinite(v).all()):
        return block_sparse_attention_reference(q, k, v, mask, scale, precision)
    b, h, n, d = q.shape
    n_k = k.shape[2]
    bs = mask.block_size
    kb = ceil_div(n_k, bs)
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    kept = mask.to_dense().to(q.device)[..., :kb]  # [B, Hm, QB, KB]
    key_ok = torch.arange(n_k, device=q.device)[None, :] < mask.kv_len.to(q.device)[:, None]  # [B, N_k]
    budget = MASK_BYTES.get(q.device.type, MASK_BYTES["cpu"])
    rows = query_chunk or max(1, budget // max(1, b * kept.shape[1] * n_k))
    out = torch.empty_like(q)
    for r0 in range(0, n, rows):
        r1 = min(n, r0 + rows)
        q_blocks = torch.arange(r0, r1, device=q.device) // bs
        allowed = kept.index_select(2, q_blocks).repeat_interleave(bs, -1)[..., :n_k] & key_ok[:, None, None, :]
        o = F.scaled_dot_product_attention(q[:, :, r0:r1], k, v, attn_mask=allowed, scale=scale)
        out[:, :, r0:r1] = torch.where(allowed.any(-1, keepdim=True), o, 0.0)  # no kept key: zeros, not NaN
    return out
