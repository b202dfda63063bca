"""xattention(): estimate -> select -> block-sparse attend, on the Triton or the reference backend.

Example::

    import torch
    from xattn_video import OpConfig, xattention
    q, k, v = (torch.randn(1, 4, 1000, 64) for _ in range(3))
    out, mask = xattention(q, k, v, OpConfig(block_size=64, stride=8, threshold=0.9))
    print(out.shape, mask.density())
"""

from __future__ import annotations

import math
from typing import Sequence, Union

import torch
import torch.nn.functional as F

from .backends import TRITON_HEAD_DIMS, kernel, resolve_backend, triton_unavailable_reason  # noqa: F401
from .block_mask import BlockSparseMask
from .config import OpConfig, XAttentionConfig
from .estimate import dense_mask, estimate_mask
from .log import log_once, logger  # noqa: F401  (re-exported: older imports name them here)

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
AnyConfig = Union[OpConfig, XAttentionConfig]


def validate_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv_len: torch.Tensor | None) -> None:
    """Raise ``ValueError`` naming the bad value when q, k, v, kv_len do not form a valid attention call."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor) or t.dim() != 4:
            shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"{name} must be a 4-d tensor [B, H, N, D], got {shape}")
        if t.dtype not in SUPPORTED_DTYPES:
            raise ValueError(f"{name}.dtype={t.dtype} is not supported; accepted: float16, bfloat16, float32")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k, v dtypes differ: {q.dtype}, {k.dtype}, {v.dtype}")
    if k.shape != v.shape:
        raise ValueError(f"k {tuple(k.shape)} and v {tuple(v.shape)} must have the same shape")
    if q.shape[0] != k.shape[0] or q.shape[1] != k.shape[1] or q.shape[3] != k.shape[3]:
        raise ValueError(f"q {tuple(q.shape)} and k {tuple(k.shape)} must agree in batch, heads and head_dim")
    if q.shape[2] < 1 or k.shape[2] < 1:
        raise ValueError(f"sequence lengths must be >= 1, got q N={q.shape[2]}, k N={k.shape[2]}")
    d = q.shape[3]
    if not (8 <= d <= 256 and d % 8 == 0):
        raise ValueError(f"head_dim={d} is not supported; accepted: a multiple of 8 in 8..256")
    if kv_len is not None:
        if kv_len.shape != (q.shape[0],):
            raise ValueError(f"kv_len must have shape [B]=({q.shape[0]},), got {tuple(kv_len.shape)}")
        lo, hi = (int(x) for x in torch.stack(torch.aminmax(kv_len)).tolist())  # one device sync, not two
        if lo < 1 or hi > k.shape[2]:
            raise ValueError(f"kv_len values must be in 1..{k.shape[2]} (the key length), got {lo}..{hi}")


def block_sparse_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: BlockSparseMask, backend: str,
    scale: float | None = None, precision: str = "native",
) -> torch.Tensor:
    """Attention over the blocks of ``mask`` (keys past ``mask.kv_len`` excluded) on one backend;
    ``precision``: "native", "fp8" or "int8-fp8" (see ``OpConfig``)."""
    return kernel("attend", backend)(q, k, v, mask, scale, precision)


def dense_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv_len: torch.Tensor | None = None
) -> torch.Tensor:
    """Exact attention that skips padded keys without a dense mask where it can.

    On CUDA, one sample (or equal lengths): slice the valid keys and run unmasked SDPA, which keeps PyTorch on
    its fastest kernels (a boolean mask sends it to a slower one). Otherwise a boolean ``[B, 1, 1, N]`` key
    mask: on a CPU that is diffusers' own call, so dense steps reproduce the stock processor bit for bit.
    The backend is left to PyTorch, which prefers cuDNN on Hopper by itself. Forcing it (``sdpa_kernel``,
    with or without a priority order) was seen on torch 2.11 to change later backend choices for every SDPA
    call in the process: the stock processor's masked call then ran 2.6x slower.
    """
    attn_mask = None
    if kv_len is not None:
        lengths = kv_len.tolist()
        if q.is_cuda and min(lengths) == max(lengths):
            n = int(lengths[0])
            k, v = k[:, :, :n], v[:, :, :n]
        else:
            key_ok = torch.arange(k.shape[2], device=q.device)[None, :] < kv_len.to(q.device)[:, None]
            attn_mask = key_ok[:, None, None, :]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)


def op_config(config: AnyConfig | None) -> OpConfig:
    """The op's part of a config: an ``OpConfig`` as is, an ``XAttentionConfig``'s ``.op``, None -> defaults."""
    if config is None:
        return OpConfig()
    if isinstance(config, XAttentionConfig):
        return config.op
    if not isinstance(config, OpConfig):
        raise TypeError(f"config must be an OpConfig or XAttentionConfig, got {type(config).__name__}")
    return config


def xattention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    config: AnyConfig | None = None,
    kv_len: torch.Tensor | None = None,
    *,
    layer: int | None = None,
    global_start: int | None = None,
    threshold: float | Sequence[float] | None = None,
    mask: BlockSparseMask | None = None,
) -> tuple[torch.Tensor, BlockSparseMask]:
    """XAttention: block-sparse attention over the blocks the antidiagonal estimate keeps.

    Args:
        q, k, v: ``[B, H, N, D]`` (k and v may have another N), float16 / bfloat16 / float32.
        config: the op's parameters: an ``OpConfig`` (or an ``XAttentionConfig``, whose ``.op`` is used);
            defaults: ``OpConfig()``. The schedule (warmup, dense layers, reuse) is the runtime's, not the op's.
        kv_len: ``[B]`` valid key lengths; keys at or past it are padding and never attended.
        layer: layer index, to look up per-layer thresholds in ``config``.
        global_start: tokens at or past this index are global (e.g. text): their key blocks are always
            kept and their query blocks attend densely.
        threshold: overrides the config's threshold (one value or one per head).
        mask: use this mask (an earlier call's, or one from a mask source) instead of estimating; it is
            used as given (``keep_text`` / ``keep_diagonal`` are not added to it).

    Returns:
        ``(out, mask)``: out ``[B, H, N, D]`` in q's dtype, and the ``BlockSparseMask`` used.
    """
    config = op_config(config)
    validate_qkv(q, k, v, kv_len)
    backend = resolve_backend(config, q)
    if mask is None:
        mask = xattention_mask(q, k, config, kv_len, layer=layer, global_start=global_start, threshold=threshold)
    out = block_sparse_attention(q, k, v, mask, backend, 1.0 / math.sqrt(q.shape[-1]), config.precision)
    return out, mask


def xattention_mask(
    q: torch.Tensor,
    k: torch.Tensor,
    config: AnyConfig | None = None,
    kv_len: torch.Tensor | None = None,
    *,
    layer: int | None = None,
    global_start: int | None = None,
    threshold: float | Sequence[float] | None = None,
) -> BlockSparseMask:
    """The block mask ``xattention`` would attend with (estimate + select), without the attention: lets a
    caller look at the mask's density first (the runtime's break-even check). Arguments as ``xattention``.

    Example::

        mask = xattention_mask(q, k, OpConfig(block_size=64, stride=8, threshold=0.9))
        out, _ = xattention(q, k, v, OpConfig(block_size=64, stride=8), mask=mask)
    """
    config = op_config(config)
    validate_qkv(q, k, k, kv_len)
    backend = resolve_backend(config, q)
    b, h, n, _ = q.shape
    if kv_len is None:
        kv_len = torch.full((b,), k.shape[2], dtype=torch.long, device=q.device)
    tau = config.threshold_for(layer, h) if threshold is None else threshold
    if isinstance(tau, (int, float)) and tau >= 1.0 and config.max_density is None:
        return dense_mask(b, n, kv_len, k.shape[2], config.block_size, q.device)
    return estimate_mask(
        q, k,
        block_size=config.block_size,
        stride=config.stride,
        threshold=tau,
        kv_len=kv_len,
        keep_diagonal=config.keep_diagonal,
        max_density=config.max_density,
        global_start=global_start if config.keep_text else None,
        backend=backend,
        sink_aware=config.sink_aware,
        precision=config.estimate_precision,
    )
