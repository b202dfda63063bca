"""The one place where a backend is chosen and each kernel is paired with its plain-PyTorch twin.

Every op has its twin in ``kernels/reference.py`` (the oracle of the tests) and fast paths with the same
signature: the Triton kernels (``kernels/estimate.py``, ``kernels/select.py``, ``kernels/block_sparse_attention.py``;
CUDA, head_dim 64 / 128) and, for the attention only, ``kernels/sdpa.py`` (PyTorch's SDPA with a token mask, any
device, native precision). A fast path may add keyword-only launch parameters after the shared ones (tests and
tuning sweeps use them); nothing else differs. ``resolve_backend`` picks "triton", "sdpa" or "reference" for a
call, ``kernel`` returns the function (an op without an "sdpa" version runs its reference there).

Example::

    backend = resolve_backend(op_config, q)     # "triton" on CUDA, "sdpa" on a CPU (native precision)
    scores = kernel("scores", backend)(q, k, 128, 16, kv_len)
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

import torch

from .log import log_once

TRITON_HEAD_DIMS = (64, 128)

# op -> {backend: "module:function" under xattn_video.kernels}; "reference" is every op's twin
KERNELS: dict[str, dict[str, str]] = {
    "scores": {"reference": "reference:strided_block_scores_reference",
               "triton": "estimate:strided_block_scores_triton"},
    "select": {"reference": "reference:select_blocks_reference", "triton": "select:select_blocks_triton"},
    "attend": {"reference": "reference:block_sparse_attention_reference",
               "triton": "block_sparse_attention:block_sparse_attention_triton",
               "sdpa": "sdpa:block_sparse_attention_sdpa"},
}
RESOLVED_BACKENDS = ("triton", "sdpa", "reference")


def kernel(op: str, backend: str) -> Callable[..., Any]:
    """The implementation of ``op`` ("scores", "select", "attend") on ``backend`` ("triton", "sdpa" or
    "reference"; where the op has no version of that backend, its reference)."""
    if op not in KERNELS:
        raise ValueError(f"op={op!r} is not one of {sorted(KERNELS)}")
    if backend not in RESOLVED_BACKENDS:
        raise ValueError(f"backend={backend!r} is not one of {RESOLVED_BACKENDS}; resolve 'auto' first")
    module, name = KERNELS[op].get(backend, KERNELS[op]["reference"]).split(":")
    # Triton modules are imported only when asked for: the reference path needs no Triton
    return getattr(importlib.import_module(f"{__package__}.kernels.{module}"), name)


def triton_unavailable_reason(q: torch.Tensor, config: Any = None) -> str | None:
    """Why the Triton backend cannot run these inputs (and the config's blocks), or None if it can."""
    if not q.is_cuda:
        return f"inputs are on {q.device.type}, the Triton kernels need a CUDA device"
    if q.shape[-1] not in TRITON_HEAD_DIMS:
        return f"head_dim={q.shape[-1]} is not one of the Triton kernels' {TRITON_HEAD_DIMS}"
    if config is not None:
        ratio = config.block_size // config.stride
        if config.block_size % 16 or ratio & (ratio - 1):
            return (f"block_size={config.block_size} with stride={config.stride}: the Triton kernels need a "
                    "block size that is a multiple of 16 and a power-of-two block_size / stride")
    try:
        import triton  # noqa: F401
    except ImportError as e:  # pragma: no cover - triton ships with CUDA torch on Linux
        return f"triton is not importable ({e})"
    return None


def resolve_backend(config: Any, q: torch.Tensor) -> str:
    """'triton', 'sdpa' or 'reference' for these inputs under ``config.backend`` (an ``OpConfig``). "auto": the
    Triton kernels where they can run, else the SDPA attention in native precision (the 8-bit arithmetic has
    its float32 emulation in the reference only)."""
    if config.backend in ("reference", "sdpa"):
        return config.backend
    reason = triton_unavailable_reason(q, config)
    if reason is None:
        return "triton"
    if config.backend == "auto":
        fallback = "sdpa" if config.precision == "native" else "reference"
        if q.is_cuda:  # a GPU that could run the kernels but not these inputs: the slower path, say so
            log_once(f"xattn_video: backend='auto' uses the PyTorch {fallback} path on the GPU ({reason})")
        return fallback
    if config.allow_fallback:
        log_once(f"xattn_video: backend='triton' cannot run ({reason}); using the PyTorch reference")
        return "reference"
    raise RuntimeError(f"backend='triton' cannot run: {reason} (set allow_fallback=True to use the reference)")
