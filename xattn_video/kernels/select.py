"""Block selection in one Triton kernel: one program per (batch, head, query block) row.

Same function and signature as ``reference.select_blocks_reference`` (its plain-PyTorch twin, which the tests
compare against):
normalise the row's scores over its valid key blocks, sort them (descending, ties to the lower index), keep the
shortest prefix whose mass reaches tau, add the forced blocks (diagonal, global keys), cap at the
``max_density`` budget (forced first), make global query rows and rows with a non-finite score dense, and
write the kept indices ascending.
The torch version launches a dozen kernels over the whole ``[B, H, QB, KB]`` tensor (two full sorts among
them); here the row sits in registers and is sorted once.

Example::

    mask = select_blocks_triton(scores, 0.9, block_size=128, q_len=n, kv_len=kv_len)
"""

from __future__ import annotations

from typing import Sequence

import torch
import triton
import triton.language as tl

from ..block_mask import BlockSparseMask


@triton.jit
def _select_row(S, TAU, KVLEN, IDX, CNT,
                s_sb, s_sh, s_sq, s_sk, H, QB, KB, tau_stride,
                block_size, q_len, global_start, max_density,
                KB_P2: tl.constexpr, KEEP_DIAG: tl.constexpr, HAS_GLOBAL: tl.constexpr, HAS_BUDGET: tl.constexpr):
    row = tl.program_id(0)
    qb = row % QB
    bh = row // QB
    b = bh // H
    h = bh % H
    j = tl.arange(0, KB_P2)
    kv_len = tl.load(KVLEN + b)
    valid = (j < KB) & (j * block_size < kv_len)
    s = tl.load(S + b.to(tl.int64) * s_sb + h * s_sh + qb * s_sq + j * s_sk, mask=j < KB, other=0.0)
    s = s.to(tl.float32)
    # a non-finite score cannot be ranked: the row keeps every valid block (budget or not), so a NaN / Inf in
    # q or k reaches the output as in dense attention (tl.maximum below would turn NaN into 0 on a GPU)
    bad = tl.sum((((s != s) | (tl.abs(s) == float("inf"))) & valid).to(tl.int32), 0) > 0
    s = tl.where(valid, tl.maximum(s, 0.0), 0.0)
    total = tl.maximum(tl.sum(s, 0), 1.1754943508222875e-38)
    p = s / total
    tau = tl.load(TAU + h * tau_stride)

    # sort by p descending, ties to the lower index: p >= 0, so its float bits order like integers
    key = (p.to(tl.int32, bitcast=True).to(tl.int64) << 32) | (KB_P2 - 1 - j).to(tl.int64)
    key = tl.sort(key, descending=True)
    p_sorted = (key >> 32).to(tl.int32).to(tl.float32, bitcast=True)
    j_sorted = KB_P2 - 1 - (key & 0xFFFFFFFF).to(tl.int32)
    valid_sorted = (j_sorted < KB) & (j_sorted * block_size < kv_len)
    before = tl.cumsum(p_sorted, 0) - p_sorted
    limit = tl.where(tau >= 1.0, float("inf"), tau)  # tau = 1 keeps every valid block, rounding aside
    keep = (before < limit) & valid_sorted

    forced = tl.zeros([KB_P2], dtype=tl.int1)
    if KEEP_DIAG:
        forced = forced | (j_sorted == qb)
    dense_row = False
    if HAS_GLOBAL:  # blocks holding a valid global key; query blocks holding a global query
        forced = forced | (((j_sorted + 1) * block_size > global_start) & (global_start < kv_len))
        dense_row = ((qb + 1) * block_size > global_start) & (global_start < q_len)
    dense_row = dense_row | bad
    forced = forced & valid_sorted
    if HAS_BUDGET:
        n_valid = tl.sum(valid_sorted.to(tl.int32), 0)
        budget = tl.maximum(tl.math.ceil(max_density * n_valid.to(tl.float32) - 1e-6), 1.0).to(tl.int32)
        n_forced = tl.sum(forced.to(tl.int32), 0)
        free = keep & ~forced
        rank = tl.cumsum(free.to(tl.int32), 0)  # 1-based rank among the non-forced kept, best first
        keep = free & (rank <= budget - n_forced)
    final = keep | forced | (dense_row & valid_sorted)

    # kept indices ascending: sort (kept -> j, dropped -> KB_P2 + j)
    order = tl.sort(tl.where(final, j_sorted, KB_P2 + j_sorted), 0)
    count = tl.sum(final.to(tl.int32), 0)
    out = tl.where(j < count, order, -1)
    base = row.to(tl.int64) * KB
    tl.store(IDX + base + j, out, mask=j < KB)
    tl.store(CNT + row, count)


def select_blocks_triton(
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
    """``reference.select_blocks_reference`` in one kernel (same signature). ``threshold``: 1 value or one per
    head."""
    b, h, qb, kb = scores.shape
    tau = torch.as_tensor(threshold, dtype=torch.float32).to(scores.device).reshape(-1).contiguous()
    if tau.numel() not in (1, h):
        raise ValueError(f"threshold has {tau.numel()} values; expected 1 or one per head ({h})")
    if kv_len is None:
        kv_len = torch.full((b,), kb * block_size, dtype=torch.int32, device=scores.device)
    kv_len = kv_len.to(device=scores.device, dtype=torch.int32).contiguous()
    idx = torch.empty(b, h, qb, kb, dtype=torch.int32, device=scores.device)
    cnt = torch.empty(b, h, qb, dtype=torch.int32, device=scores.device)
    has_global = global_start is not None
    _select_row[(b * h * qb,)](
        scores, tau, kv_len, idx, cnt, *scores.stride(), h, qb, kb, 1 if tau.numel() > 1 else 0,
        block_size, q_len, global_start if has_global else 0, float(max_density or 1.0),
        KB_P2=triton.next_power_of_2(kb), KEEP_DIAG=keep_diagonal, HAS_GLOBAL=has_global,
        HAS_BUDGET=max_density is not None, num_warps=4 if kb <= 512 else 8,
    )
    return BlockSparseMask(idx, cnt, block_size, q_len, kv_len.to(torch.long))
