"""Block selection in one Triton kernel: one program per (batch, head, query block) row.

Same function and signature as ``reference.select_blocks_reference`` (its plain-PyTorch twin, which the tests
compare against): normalise the row's scores over its valid key blocks, keep the shortest prefix of them, sorted
descending with ties to the lower index, whose mass reaches tau, add the forced blocks (diagonal, global keys),
cap at the ``max_density`` budget (forced first), make global query rows and rows with a non-finite score dense,
and write the kept indices ascending.

The row sits in registers and is never sorted (an earlier kernel sorted it twice: 2.5 ms at 720p against this
one's 0.5 ms, benchmarks/RESULTS.md):

- tau: the kept prefix is every block with p >= v* plus the first (lowest-index) few of the ties just below.
  v* is found by bisection on the float32 bit pattern of p (p >= 0, so its bits order like its values), one
  masked row sum a step: about 16 steps on rows of ~1000 blocks, at most 31. The sums are of p in fixed
  point (int64), so exact and the same in any order of addition, and rounded to float32 once: that is what
  the reference's ``cumsum`` gives on a CPU (it adds in float64), so the cut falls where the reference's
  does, ties and exact hits of tau included.
- budget: the best ``budget - n_forced`` non-forced kept blocks by a second bisection, on a count.
- output: kept block j goes to slot (kept blocks before it), the others to the slots after them, as -1.

Not exact: the row sum that normalises the scores adds in float32, in its own order (torch's differs), so in
a row whose running mass lands within a few float32 steps of tau the cut can move by one block; and p below
``2**(N_BITS - 39)`` (2**-28 for rows of up to 1024 blocks) is truncated in the fixed point, which can only
matter where the mass lands within about 1e-12 of a float32 rounding midpoint.

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
                KB_P2: tl.constexpr, N_BITS: tl.constexpr, FX: tl.constexpr, UNFX: tl.constexpr,
                KEEP_DIAG: tl.constexpr, HAS_GLOBAL: tl.constexpr, HAS_BUDGET: tl.constexpr):
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
    # q or k reaches the output as in dense attention
    finite = (s == s) & (tl.abs(s) != float("inf"))
    bad = tl.sum((~finite & valid).to(tl.int32), 0) > 0
    # `s > 0` also maps -0.0 to +0.0: its bits must not read as a negative integer
    s = tl.where(valid & finite & (s > 0.0), s, 0.0)
    total = tl.maximum(tl.sum(s, 0), 1.1754943508222875e-38)
    p = tl.math.div_rn(s, total)  # rounded as torch divides; a plain `/` is approximate on a GPU
    bits = p.to(tl.int32, bitcast=True)  # p >= 0: integer order = value order
    # p as fixed point (FX = 2**(62 - N_BITS)) with a 1 in the low N_BITS bits where p > 0: one int64 sum over
    # a set gives its mass, exact (but for p < 2**(N_BITS - 39), truncated), and how many p > 0 it holds;
    # sum(p) ~ 1: no overflow
    pfx = (p * FX).to(tl.int64)
    packed = (pfx << N_BITS) | (p > 0.0).to(tl.int64)
    tau = tl.load(TAU + h * tau_stride)
    limit = tl.where(tau >= 1.0, float("inf"), tau)  # tau = 1 keeps every valid block, rounding aside

    forced = tl.zeros([KB_P2], dtype=tl.int1)
    if KEEP_DIAG:
        forced = forced | (j == qb)
    dense_row = bad
    if HAS_GLOBAL:  # blocks holding a valid global key; query blocks holding a global query
        forced = forced | (((j + 1) * block_size > global_start) & (global_start < kv_len))
        dense_row = dense_row | (((qb + 1) * block_size > global_start) & (global_start < q_len))
    forced = forced & valid

    # The reference walks the row sorted descending (ties to the lower index) and keeps an element while
    # before = fl32(round32(mass up to and including it) - its p) < tau; `before` never decreases along the
    # walk, so the kept elements are a prefix. For a bit pattern v let F(v) = the mass of p >= v and
    # Q(v) = fl32(round32(F(v)) - v) < tau. Q only grows with v, and at a value present in the row it is the
    # reference's test on the last of its ties. Bisect for lo < hi with Q(lo) false and Q(hi) true until no p
    # lies strictly between them: then every p >= hi is kept, the next value u below hi is <= lo, so Q(u) is
    # false and nothing below u is kept, and u's ties are kept while the reference's test holds for them (in
    # index order). The loop stops once [lo, hi) holds at most one p > 0 (N(v) = #{p > 0, p >= v}); one more
    # step at that p, if any, settles it: about 16 steps on a row of 931 random scores, not 30.
    n_mask: tl.constexpr = (1 << N_BITS) - 1
    pmax_bits = tl.max(bits, 0)
    f0n = tl.sum(packed, 0)
    # Q(0): the whole row's mass < tau (tau >= 1 and all-zero rows): every block is kept
    all_in = dense_row | ((f0n >> N_BITS).to(tl.float32) * UNFX < limit)
    lo = tl.where(all_in, -1, 0)
    hi = tl.where(all_in, 0, pmax_bits + 1)  # Q above max(p): -v < tau for tau > 0; tau <= 0 keeps nothing
    f_hi = f0n * 0  # F(hi)
    n_lo = (f0n & n_mask).to(tl.int32)
    n_hi = tl.where(all_in, n_lo, 0)
    while (hi - lo > 1) & (n_lo - n_hi > 1):
        mid = (lo + hi) >> 1  # lo + hi < 2**31: p <= 1
        fn = tl.sum(tl.where(bits >= mid, packed, 0), 0)
        f = fn >> N_BITS
        n = (fn & n_mask).to(tl.int32)
        ok = f.to(tl.float32) * UNFX - mid.to(tl.float32, bitcast=True) < limit
        hi = tl.where(ok, mid, hi)
        f_hi = tl.where(ok, f, f_hi)
        n_hi = tl.where(ok, n, n_hi)
        lo = tl.where(ok, lo, mid)
        n_lo = tl.where(ok, n_lo, n)
    if (hi - lo > 1) & (n_lo - n_hi == 1):  # the one p in [lo, hi): step there
        w = tl.max(tl.where((bits >= lo) & (bits < hi) & (p > 0.0), bits, 0), 0)
        f = tl.sum(tl.where(bits >= w, pfx, 0), 0)
        ok = f.to(tl.float32) * UNFX - w.to(tl.float32, bitcast=True) < limit
        hi = tl.where(ok, w, hi)
        f_hi = tl.where(ok, f, f_hi)
        lo = tl.where(ok, lo, w)
    u = tl.max(tl.where(bits < hi, p, -1.0), 0)  # the next value below hi; -1: none
    ties = (bits < hi) & (p == u)
    mass = f_hi + tl.cumsum(ties.to(tl.int32), 0).to(tl.int64) * (u * FX).to(tl.int64)
    keep = ((bits >= hi) | (ties & (mass.to(tl.float32) * UNFX - u < limit))) & valid

    if HAS_BUDGET:
        n_valid = tl.sum(valid.to(tl.int32), 0)
        budget = tl.maximum(tl.math.ceil(max_density * n_valid.to(tl.float32) - 1e-6), 1.0).to(tl.int32)
        room = budget - tl.sum(forced.to(tl.int32), 0)
        free = keep & ~forced
        n_free = tl.sum(free.to(tl.int32), 0)
        # the best `room` free blocks: bisect for blo < bhi with C(blo) >= room > C(bhi), C(v) = #{free,
        # p >= v}, until C(blo) = room (the free p >= blo are they) or bhi = blo + 1 (blo is the value of the
        # last of them: its ties are taken in index order); no search when all fit. Every kept p is >= u.
        blo = tl.maximum(u, 0.0).to(tl.int32, bitcast=True)
        bhi = tl.where(n_free > room, pmax_bits + 1, blo + 1)
        c_lo = n_free
        c_hi = n_free * 0
        while (bhi - blo > 1) & (c_lo != room):
            mid = (blo + bhi) >> 1
            c = tl.sum((free & (bits >= mid)).to(tl.int32), 0)
            ok = c >= room
            blo = tl.where(ok, mid, blo)
            c_lo = tl.where(ok, c, c_lo)
            bhi = tl.where(ok, bhi, mid)
            c_hi = tl.where(ok, c_hi, c)
        at_w = free & (bits == blo)
        best = (bits > blo) | (at_w & (tl.cumsum(at_w.to(tl.int32), 0) <= room - c_hi))
        keep = free & best
    final = keep | forced | (dense_row & valid)

    # kept indices ascending: kept j to slot (kept before it), the rest to the slots after the kept, as -1
    kept_upto = tl.cumsum(final.to(tl.int32), 0)
    count = tl.sum(final.to(tl.int32), 0)
    slot = tl.where(final, kept_upto - 1, count + j - kept_upto)
    tl.store(IDX + row.to(tl.int64) * KB + slot, tl.where(final, j, -1), mask=j < KB)
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
    kb_p2 = triton.next_power_of_2(kb)
    n_bits = kb_p2.bit_length()  # room for a count up to kb_p2
    # few warps: the loop is a chain of row sums, cheaper with fewer warps to combine (H200, 720p, the kernel
    # alone: 0.41 ms at 2 warps, 0.37 at 4, 0.69 at 1; with the budget 0.51, 0.57, 0.99)
    _select_row[(b * h * qb,)](
        scores, tau, kv_len, idx, cnt, *scores.stride(), h, qb, kb, 1 if tau.numel() > 1 else 0,
        block_size, q_len, global_start if has_global else 0, float(max_density or 1.0),
        KB_P2=kb_p2, N_BITS=n_bits, FX=2.0 ** (62 - n_bits), UNFX=2.0 ** (n_bits - 62), KEEP_DIAG=keep_diagonal,
        HAS_GLOBAL=has_global, HAS_BUDGET=max_density is not None, num_warps=min(8, max(1, kb_p2 // 512)),
    )
    return BlockSparseMask(idx, cnt, block_size, q_len, kv_len.to(torch.long))
