"""What a sparse call leaves out, measured at a dense step and added back at the sparse steps (``residual``).

At a refresh step (the last warmup step, then every ``residual_refresh`` sparse steps) a call runs dense
attention as usual and, beside it, the block-sparse attention over a freshly chosen mask; the difference
``dense - sparse`` and the mask are kept per (layer, call). Each later sparse step attends with that same mask
and adds the difference: the blocks the mask leaves out contribute what they contributed at the refresh step
instead of nothing. Diffusion steps change attention slowly (masks can be reused for steps at almost no cost,
RESULTS.md), so the left-out part is nearly constant between refreshes; DiTFastAttn's residual sharing for
window attention rests on the same observation.

Memory: one attention output per layer and call, in q's dtype (HunyuanVideo 720p: 0.73 GB a layer in bf16,
44 GB for its 60 layers), and the mask as bits; with ``precision="fp8"`` the difference is held in e4m3 with one
float32 scale per token and head (the float8 linears' per-row rounding), about half of that.

Example::

    cache = ResidualCache()
    cache.put(layer=0, call=0, step=4, mask=mask, delta=dense_out - sparse_out, lengths=(1050,), n_keys=1050)
    held = cache.get(layer=0, call=0, lengths=(1050,), q_len=1050, n_keys=1050)
    out = sparse_attention_with(held.mask) + held.delta
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..block_mask import BlockSparseMask
from ..config import RESIDUAL_PRECISIONS
from ..fp8_linear import quantize_rows
from .masks import PackedMask, StoredMask


@dataclass(frozen=True)
class Held:
    """A call's mask and the difference dense - sparse measured with it at ``step``."""

    step: int
    mask: BlockSparseMask
    delta: torch.Tensor  # [B, H, N, D]


@dataclass(frozen=True)
class _Fp8Delta:
    """A difference in e4m3, one float32 scale per row of the last dimension, and the dtype it came in."""

    values: torch.Tensor
    scale: torch.Tensor
    dtype: torch.dtype

    @classmethod
    def of(cls, delta: torch.Tensor) -> _Fp8Delta:
        values, scale = quantize_rows(delta.reshape(-1, delta.shape[-1]))
        return cls(values.reshape(delta.shape), scale.reshape(*delta.shape[:-1], 1), delta.dtype)

    def restore(self) -> torch.Tensor:
        return self.values.to(self.dtype) * self.scale.to(self.dtype)

    @property
    def nbytes(self) -> int:
        return self.values.nbytes + self.scale.nbytes


class ResidualCache:
    """One (mask, dense - sparse) per (layer, call within the step), kept until replaced or cleared; the
    differences in their own dtype (``precision="native"``) or in e4m3 (``"fp8"``)."""

    def __init__(self, precision: str = "native") -> None:
        if precision not in RESIDUAL_PRECISIONS:
            raise ValueError(f"precision={precision!r} is not one of {RESIDUAL_PRECISIONS}")
        self.precision = precision
        self._entries: dict[tuple[int, int], tuple[StoredMask, torch.Tensor | _Fp8Delta]] = {}

    def put(self, *, layer: int, call: int, step: int, mask: BlockSparseMask, delta: torch.Tensor,
            lengths: tuple[int, ...], n_keys: int) -> None:
        held = _Fp8Delta.of(delta) if self.precision == "fp8" else delta
        self._entries[(layer, call)] = (StoredMask(step, lengths, n_keys, PackedMask.pack(mask)), held)

    def get(self, *, layer: int, call: int, lengths: tuple[int, ...], q_len: int, n_keys: int) -> Held | None:
        """The entry of ``(layer, call)`` if it was measured on inputs of this shape, else None (the
        difference back in its own dtype)."""
        hit = self._entries.get((layer, call))
        if hit is None or not hit[0].fits(lengths, q_len, n_keys):
            return None
        stored, delta = hit
        return Held(stored.step, stored.packed.unpack(), delta.restore() if isinstance(delta, _Fp8Delta) else delta)

    def drop(self, *, layer: int, call: int) -> None:
        """Forget the entry of ``(layer, call)`` (after its last use: the run's final step)."""
        self._entries.pop((layer, call), None)

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def nbytes(self) -> int:
        """Bytes held by the differences and the packed masks."""
        return sum(d.nbytes + m.packed.nbytes for m, d in self._entries.values())  # a tensor or an _Fp8Delta
