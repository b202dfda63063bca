"""Masks kept for reuse across steps (``mask_reuse_steps``), stored as bits and dropped as soon as they are done.

A ``BlockSparseMask`` holds ``int32`` key-block indices, ``[B, H, QB, KB]``: at 720p (931 x 931 blocks, 24
heads) that is 83 MB per layer, 5 GB for HunyuanVideo's 60 layers, which is what raised the peak memory of a
mask-reusing run from 36.3 to 41.0 GiB. Here a kept mask is one bit per block pair (``uint8``,
``[B, H, QB, ceil(KB / 8)]``: 2.6 MB per layer at 720p, 32x less), unpacked into indices on the call that
reuses it. An entry is dropped right after its last permitted reuse, and any entry that can no longer be
reused is dropped when a step begins, so nothing outlives its use.

Example::

    cache = MaskCache(reuse_steps=2)
    cache.put(layer=0, call=0, step=5, mask=mask, lengths=(1050,), n_keys=1050)
    cache.get(layer=0, call=0, step=6, lengths=(1050,), q_len=1050, n_keys=1050)   # the mask; then dropped
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..block_mask import BlockSparseMask
from ..config import ceil_div

_BIT = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8)


@dataclass(frozen=True)
class PackedMask:
    """A ``BlockSparseMask`` as bits: byte ``j // 8`` of a row holds key block ``j`` at bit ``j % 8``."""

    bits: torch.Tensor  # [B, H, QB, ceil(KB / 8)] uint8
    num_kv_blocks: int
    block_size: int
    q_len: int
    kv_len: torch.Tensor  # [B] int64

    @classmethod
    def pack(cls, mask: BlockSparseMask) -> "PackedMask":
        keep = mask.to_dense()  # [B, H, QB, KB] bool
        kb = keep.shape[-1]
        keep = torch.nn.functional.pad(keep, (0, ceil_div(kb, 8) * 8 - kb)).unflatten(-1, (-1, 8))
        bits = (keep.to(torch.uint8) * _BIT.to(keep.device)).sum(-1, dtype=torch.uint8)
        return cls(bits.contiguous(), kb, mask.block_size, mask.q_len, mask.kv_len)

    def unpack(self) -> BlockSparseMask:
        """The mask again, with the same indices and counts as the one packed."""
        keep = (self.bits[..., None] & _BIT.to(self.bits.device)) != 0
        keep = keep.flatten(-2)[..., : self.num_kv_blocks]
        return BlockSparseMask.from_dense(keep, self.block_size, self.q_len, self.kv_len)

    @property
    def nbytes(self) -> int:
        return self.bits.numel() * self.bits.element_size()


@dataclass(frozen=True)
class StoredMask:
    """A packed mask with the step and the input shape it was chosen for (the mask and residual caches' entry)."""

    step: int
    lengths: tuple[int, ...]
    n_keys: int
    packed: PackedMask

    def fits(self, lengths: tuple[int, ...], q_len: int, n_keys: int) -> bool:
        """Whether a call with these key lengths, query and key counts may use the mask."""
        return self.lengths == lengths and self.n_keys == n_keys and self.packed.q_len == q_len


class MaskCache:
    """One packed mask per (layer, call within the step), reused for ``reuse_steps`` - 1 later steps."""

    def __init__(self, reuse_steps: int) -> None:
        self.reuse_steps = reuse_steps
        self._entries: dict[tuple[int, int], StoredMask] = {}

    def get(self, *, layer: int, call: int, step: int | None, lengths: tuple[int, ...], q_len: int,
            n_keys: int) -> BlockSparseMask | None:
        """The mask stored for ``(layer, call)`` if it may serve ``step`` for these key lengths, else None."""
        key = (layer, call)
        hit = self._entries.get(key)
        if hit is None or step is None:
            return None
        age = step - hit.step
        if age == 0:  # stored by this very step: nothing to reuse yet
            return None
        if not 0 < age < self.reuse_steps or not hit.fits(lengths, q_len, n_keys):
            del self._entries[key]  # stale or for other inputs: it will not be used again
            return None
        if age == self.reuse_steps - 1:
            del self._entries[key]  # its last permitted use
        return hit.packed.unpack()

    def put(self, *, layer: int, call: int, step: int | None, mask: BlockSparseMask, lengths: tuple[int, ...],
            n_keys: int) -> None:
        """Keep ``mask`` for reuse in the next steps (nothing is kept without reuse or a known step)."""
        if self.reuse_steps > 1 and step is not None:
            self._entries[(layer, call)] = StoredMask(step, lengths, n_keys, PackedMask.pack(mask))

    def expire(self, step: int | None) -> None:
        """Drop every entry that cannot serve ``step`` or a later step."""
        if step is None:
            return
        for key in [k for k, e in self._entries.items() if step - e.step >= self.reuse_steps or step < e.step]:
            del self._entries[key]

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def nbytes(self) -> int:
        """Bytes held by the stored masks."""
        return sum(e.packed.nbytes + e.packed.kv_len.numel() * 8 for e in self._entries.values())
