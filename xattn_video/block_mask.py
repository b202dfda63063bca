"""BlockSparseMask: which key blocks each query block attends to.

Same layout as the kv side of FlexAttention's ``BlockMask``: per (batch, head, query block) an ascending list
of key-block indices (``kv_indices``, padded with -1) and how many are valid (``kv_counts``).

Example::

    keep = torch.rand(1, 2, 4, 4) > 0.5
    keep |= torch.eye(4, dtype=torch.bool)          # the diagonal, so no row is empty
    mask = BlockSparseMask.from_dense(keep, block_size=64, q_len=256)
    mask.density()                                 # fraction of block pairs computed
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .config import ceil_div


@dataclass
class BlockSparseMask:
    kv_indices: torch.Tensor  # [B, H, QB, KB] int32, ascending, -1 after kv_counts
    kv_counts: torch.Tensor  # [B, H, QB] int32
    block_size: int
    q_len: int
    kv_len: torch.Tensor  # [B] int64 valid key lengths (keys at or past it are padding)

    @property
    def num_q_blocks(self) -> int:
        return self.kv_indices.shape[2]

    def valid_kv_blocks(self) -> torch.Tensor:
        """[B] number of key blocks that hold at least one valid key."""
        return torch.div(self.kv_len + self.block_size - 1, self.block_size, rounding_mode="floor")

    def density_per_head(self) -> torch.Tensor:
        """[B, H] fraction of (query block, valid key block) pairs that are computed."""
        total = self.valid_kv_blocks().to(torch.float64) * self.num_q_blocks
        return self.kv_counts.to(torch.float64).sum(-1) / total[:, None]

    def density(self) -> float:
        """Fraction of all (query block, valid key block) pairs that are computed, over batch and heads."""
        valid = self.valid_kv_blocks().to(torch.float64) * self.num_q_blocks * self.kv_counts.shape[1]
        return float(self.kv_counts.to(torch.float64).sum() / valid.sum())

    def to_dense(self) -> torch.Tensor:
        """[B, H, QB, KB] bool: True where the block is computed."""
        hits = torch.zeros(self.kv_indices.shape, dtype=torch.int32, device=self.kv_indices.device)
        valid = self.kv_indices >= 0  # the -1 padding adds 0 to block 0
        hits.scatter_add_(-1, self.kv_indices.long().clamp_min(0), valid.to(torch.int32))
        return hits > 0

    @classmethod
    def from_dense(
        cls, keep: torch.Tensor, block_size: int, q_len: int, kv_len: torch.Tensor | None = None
    ) -> "BlockSparseMask":
        """Build from a [B, H, QB, KB] bool tensor. Blocks of padded keys (past ``kv_len``) are dropped."""
        if keep.dim() != 4 or keep.dtype != torch.bool:
            raise ValueError(f"keep must be a 4-d bool tensor [B, H, QB, KB], got {keep.dtype} {tuple(keep.shape)}")
        b, _, qb, kb = keep.shape
        if qb != ceil_div(q_len, block_size):
            raise ValueError(f"keep has {qb} query blocks; q_len={q_len} with block_size={block_size} needs "
                             f"{ceil_div(q_len, block_size)}")
        if kv_len is None:
            kv_len = torch.full((b,), kb * block_size, dtype=torch.long, device=keep.device)
        kv_len = kv_len.to(device=keep.device, dtype=torch.long)
        block_start = torch.arange(kb, device=keep.device) * block_size
        keep = keep & (block_start[None, :] < kv_len[:, None])[:, None, None, :]
        order = torch.arange(kb, device=keep.device, dtype=torch.int32)
        # kept blocks first, in ascending order: sort keys kept -> idx, dropped -> kb + idx
        key = torch.where(keep, order, order + kb)
        indices = key.sort(dim=-1).values
        counts = keep.sum(-1, dtype=torch.int32)
        indices = torch.where(order < counts[..., None], indices, torch.full_like(indices, -1))
        return cls(indices.to(torch.int32).contiguous(), counts.contiguous(), block_size, q_len, kv_len)

