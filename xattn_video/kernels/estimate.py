"""XAttention's strided antidiagonal block scores, fused in Triton.

One pass over the strided GEMM ``logits[i, j] = sum_c Q[iS+S-1-c] . K[jS+c] * scale / S`` (rows read straight
from q and k, no reordered copy). Each program owns ``BLOCK_M`` strided rows of one (batch, head) and one
split of the strided columns; per column tile it keeps the online-softmax running max ``m`` and sum ``l``
and writes, per row and key block, ``sum exp(logit - m_tile)`` plus the ``m_tile`` it used. A small second
kernel merges the splits' ``(m, l)``, rescales the partials to probabilities and sums the rows of each query
block. The (N/S)^2 logits never reach global memory. With ``sink_aware`` the same loop also keeps each
sub-block's largest antidiagonal product and runs a second online softmax over those (its own partials and
``(m, l)``); the finish kernel runs once per set and the two score maps are averaged.
Twin: ``reference.strided_block_scores_reference``.

Example::

    scores = strided_block_scores_triton(q, k, block_size=128, stride=16)   # [B, H, QB, KB] float32
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ..config import ESTIMATE_PRECISIONS, ceil_div
from .block_sparse_attention import DTYPES, LOG2E, check_interpreter, install_tma_allocator, interpreting
from .quantize import quantize_rows, require_fp8_tensor_cores
from .reference import check_precision


@triton.jit
def _est_partial(Q, K, KVLEN, PART, MT, MS, LS, qk_scale, PART2, MT2, MS2, LS2, sink_scale,
                 s_qb, s_qh, s_qn, s_qd, s_kb, s_kh, s_kn, s_kd,
                 H, N_Q, NQS, KB, NT, NSPLIT, TILES_PER_SPLIT, SQ, SK, NQG, NKG,
                 S: tl.constexpr, R: tl.constexpr, HEAD_DIM: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, SINK: tl.constexpr, FP8: tl.constexpr):
    # split fastest: neighbouring programs share the same Q rows, which then stay in L2
    pid_s = tl.program_id(0)
    pid_m = tl.program_id(1)
    pid_bh = tl.program_id(2)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    bh = pid_bh.to(tl.int64)
    kv_len = tl.load(KVLEN + b).to(tl.int32)
    n_cols = (kv_len + S - 1) // S  # strided columns holding at least one valid key
    t0 = pid_s * TILES_PER_SPLIT
    t1 = tl.minimum(t0 + TILES_PER_SPLIT, (n_cols + BLOCK_N - 1) // BLOCK_N)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # strided rows
    offs_d = tl.arange(0, HEAD_DIM)
    q_base = Q + b * s_qb + h * s_qh
    k_base = K + b * s_kb + h * s_kh
    KBT: tl.constexpr = BLOCK_N // R  # key blocks per column tile
    if FP8:  # the fp8 copies are contiguous [B, H, groups * S, D], zero past the valid tokens
        q_desc = tl.make_tensor_descriptor(Q + bh * NQG * S * HEAD_DIM, shape=[NQG, S * HEAD_DIM],
                                           strides=[S * HEAD_DIM, 1], block_shape=[BLOCK_M, HEAD_DIM])
        k_desc = tl.make_tensor_descriptor(K + bh * NKG * S * HEAD_DIM, shape=[NKG, S * HEAD_DIM],
                                           strides=[S * HEAD_DIM, 1], block_shape=[BLOCK_N, HEAD_DIM])

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    m2_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)  # the sink pass's (m, l): max logits
    l2_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    neg_inf = tl.zeros([BLOCK_M], dtype=tl.int1)  # a -Inf logit over a valid key (NaN / +Inf show in l)
    for t in range(t0, t1):
        offs_j = t * BLOCK_N + tl.arange(0, BLOCK_N)  # strided columns
        acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        mx = tl.full([BLOCK_M, BLOCK_N], float("-inf"), dtype=tl.float32)
        for c in range(S):
            # antidiagonal of each S x S sub-block: query row iS + S-1-c meets key row jS + c
            if FP8:  # bulk copies: the contiguous copies seen as [N/S, S*D], so row iS + c is chunk c of row i
                qc = q_desc.load([pid_m * BLOCK_M, (S - 1 - c) * HEAD_DIM])
                kc = k_desc.load([t * BLOCK_N, c * HEAD_DIM]).T
            else:
                q_rows = offs_m * S + (S - 1 - c)
                k_rows = offs_j * S + c
                qc = tl.load(q_base + q_rows[:, None] * s_qn + offs_d[None, :] * s_qd,
                             mask=q_rows[:, None] < N_Q, other=0.0)
                kc = tl.load(k_base + k_rows[None, :] * s_kn + offs_d[:, None] * s_kd,
                             mask=k_rows[None, :] < kv_len, other=0.0)
            if SINK:  # the same loads give each sub-block's largest antidiagonal product too
                dc = tl.dot(qc, kc)
                acc += dc
                mx = tl.maximum(mx, dc)
            else:
                acc = tl.dot(qc, kc, acc)
        if FP8:  # one scale per strided row / column (a group of S tokens): the sums factor exactly
            s_q = tl.load(SQ + bh * NQG + offs_m, mask=offs_m < NQG, other=1.0)
            s_k = tl.load(SK + bh * NKG + offs_j, mask=offs_j < NKG, other=1.0)
            s_qk = s_q[:, None] * s_k[None, :]
            acc = acc * s_qk
            if SINK:
                mx = mx * s_qk  # scales are positive: the max commutes with them
        # this split's first tile holds a valid column, so m_new is finite from the first tile on
        col_ok = offs_j[None, :] < n_cols
        neg_inf = neg_inf | (tl.min(tl.where(col_ok, acc, 0.0), 1) == float("-inf"))
        acc = tl.where(col_ok, acc * qk_scale, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(acc, 1))
        p = tl.math.exp2(acc - m_new[:, None])
        l_i = l_i * tl.math.exp2(m_i - m_new) + tl.sum(p, 1)
        m_i = m_new
        blk = tl.sum(tl.reshape(p, [BLOCK_M, KBT, R]), 2)  # per key block, relative to m_new
        offs_kb = t * KBT + tl.arange(0, KBT)
        row_ok = offs_m < NQS
        tl.store(PART + (bh * NQS + offs_m[:, None]) * KB + offs_kb[None, :], blk,
                 mask=row_ok[:, None] & (offs_kb[None, :] < KB))
        tl.store(MT + (bh * NQS + offs_m) * NT + t, m_new, mask=row_ok)
        if SINK:  # the same online softmax over the max logits, into the second set of buffers
            mx = tl.where(offs_j[None, :] < n_cols, mx * sink_scale, float("-inf"))
            m2_new = tl.maximum(m2_i, tl.max(mx, 1))
            p2 = tl.math.exp2(mx - m2_new[:, None])
            l2_i = l2_i * tl.math.exp2(m2_i - m2_new) + tl.sum(p2, 1)
            m2_i = m2_new
            blk2 = tl.sum(tl.reshape(p2, [BLOCK_M, KBT, R]), 2)
            tl.store(PART2 + (bh * NQS + offs_m[:, None]) * KB + offs_kb[None, :], blk2,
                     mask=row_ok[:, None] & (offs_kb[None, :] < KB))
            tl.store(MT2 + (bh * NQS + offs_m) * NT + t, m2_new, mask=row_ok)
    row_ok = offs_m < NQS
    # any non-finite logit (NaN / Inf in q or a valid key) makes the row NaN, so the selection keeps its
    # whole query block (the reference twin's rule); NaN and +Inf already made l NaN
    l_i = tl.where(neg_inf, float("nan"), l_i)
    tl.store(MS + (bh * NQS + offs_m) * NSPLIT + pid_s, m_i, mask=row_ok)
    tl.store(LS + (bh * NQS + offs_m) * NSPLIT + pid_s, l_i, mask=row_ok)
    if SINK:
        tl.store(MS2 + (bh * NQS + offs_m) * NSPLIT + pid_s, m2_i, mask=row_ok)
        tl.store(LS2 + (bh * NQS + offs_m) * NSPLIT + pid_s, l2_i, mask=row_ok)


@triton.jit
def _est_finish(PART, MT, MS, LS, KVLEN, OUT, H, N_Q, NQS, QB, KB, NT, NSPLIT,
                S: tl.constexpr, R: tl.constexpr, BS: tl.constexpr, KBT: tl.constexpr, NSPLIT_P2: tl.constexpr):
    t = tl.program_id(0)
    qb = tl.program_id(1)
    bh = tl.program_id(2).to(tl.int64)
    kv_len = tl.load(KVLEN + bh // H).to(tl.int32)
    rows = qb * R + tl.arange(0, R)  # the strided rows of this query block
    offs_s = tl.arange(0, NSPLIT_P2)
    ms_ptr = (bh * NQS + rows[:, None]) * NSPLIT + offs_s[None, :]
    ms = tl.load(MS + ms_ptr, mask=offs_s[None, :] < NSPLIT, other=float("-inf"))
    ls = tl.load(LS + ms_ptr, mask=offs_s[None, :] < NSPLIT, other=0.0)
    m_f = tl.max(ms, 1)  # finite: split 0 always sees column 0
    l_f = tl.sum(ls * tl.math.exp2(ms - m_f[:, None]), 1)
    offs_kb = t * KBT + tl.arange(0, KBT)
    # tiles past the valid keys were never computed: their blocks score 0 (never read what they hold)
    kb_ok = (offs_kb < KB) & (offs_kb * BS < kv_len)
    # a block comparison, not `block & scalar`: the interpreter turns the scalar into int32 data and
    # Triton >= 3.9's interpreter then rejects the mask ("mask has unsupported dtype")
    tile_ok = rows * 0 + t * KBT * BS < kv_len
    m_t = tl.load(MT + (bh * NQS + rows) * NT + t, mask=tile_ok, other=0.0)
    w = tl.where(rows * S < N_Q, tl.math.exp2(m_t - m_f) / l_f, 0.0)  # rows of padded queries count 0
    part = tl.load(PART + (bh * NQS + rows[:, None]) * KB + offs_kb[None, :], mask=kb_ok[None, :], other=0.0)
    out = tl.where(kb_ok, tl.sum(part * w[:, None], 0), 0.0)
    tl.store(OUT + (bh * QB + qb) * KB + offs_kb, out, mask=offs_kb < KB)


_STAGES: dict[tuple, int] = {}


def _launch_gpu(grid: tuple, args: tuple, meta: dict, num_warps: int, num_stages: int | None) -> None:
    """Launch with 3 pipeline stages, or 2 where 3 do not fit in shared memory (remembered per shape)."""
    key = tuple(sorted(meta.items())) + (args[0].dtype, num_warps)
    deep = meta["BLOCK_M"] * meta["BLOCK_N"] <= 128 * 128  # 3 stages of 128 x 256 tiles overflow shared memory
    tries = [num_stages] if num_stages else [_STAGES[key]] if key in _STAGES else [3, 2] if deep else [2]
    for stages in tries:
        try:
            _est_partial[grid](*args, **meta, num_warps=num_warps, num_stages=stages)
            _STAGES[key] = stages
            return
        except triton.runtime.errors.OutOfResources:
            if stages == tries[-1]:
                raise


def _pow2(x: int) -> bool:
    return x > 0 and x & (x - 1) == 0


def strided_block_scores_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    block_size: int,
    stride: int,
    kv_len: torch.Tensor | None = None,
    scale: float | None = None,
    sink_aware: bool = False,
    precision: str = "native",
    *,
    block_m: int | None = None,
    block_n: int | None = None,
    num_splits: int | None = None,
    num_warps: int = 8,
    num_stages: int | None = None,
) -> torch.Tensor:
    """XAttention's estimate ``[B, H, QB, KB]`` float32, fused (same function as the reference twin).

    q ``[B, H, N, D]``, k ``[B, H, N_k, D]`` (any strides), float16 / bfloat16 / float32. ``block_size //
    stride`` must be a power of two. ``block_m`` / ``block_n`` (strided rows / columns per tile) and
    ``num_splits`` (column splits per row tile), ``num_warps`` and ``num_stages`` override the tuned
    defaults (tests and tuning sweeps use them). ``sink_aware`` adds the max-logit pass in the same loop (no
    extra loads; see the twin) and averages the two distributions. ``precision="fp8"`` runs the strided GEMM
    on e4m3 copies of q and k (one scale per S tokens, k centred: see the twin); it needs a GPU with fp8
    tensor cores (compute capability 8.9 or newer; an older one raises ``ValueError``) or the interpreter.
    """
    b, h, n, d = q.shape
    n_k = k.shape[2]
    if q.dtype not in DTYPES or q.dtype != k.dtype:
        raise ValueError(f"dtypes q={q.dtype}, k={k.dtype} are not supported; accepted: one of "
                         f"{[str(t) for t in DTYPES]} for both")
    if k.shape[:2] != (b, h) or k.shape[3] != d:
        raise ValueError(f"k {tuple(k.shape)} does not fit q {tuple(q.shape)}")
    if not _pow2(d) or d < 16:
        raise ValueError(f"head_dim={d} is not supported by the Triton estimate; accepted: a power of two >= 16")
    if stride < 1 or block_size % stride or not _pow2(block_size // stride):
        raise ValueError(f"block_size={block_size} / stride={stride} is not supported by the Triton estimate; "
                         f"accepted: block_size // stride a power of two (e.g. 128 / 16, 128 / 8)")
    r = block_size // stride  # strided rows (and columns) per block
    qb, kb = ceil_div(n, block_size), ceil_div(n_k, block_size)
    nqs, nks = qb * r, kb * r
    if interpreting():
        check_interpreter()
    interp = interpreting() or q.device.type != "cuda"
    bm = block_m or (16 if interp else 128)
    # 128 x 256 tiles, 2 stages: best of the H100 sweep. The sink pass holds two more such fp32 tiles (the
    # per-c product and the running max): half-width tiles keep it out of register spills (not yet tuned)
    bn = max(block_n or (16 if interp else 128 if sink_aware else 256), r)
    if not (_pow2(bm) and _pow2(bn)):
        raise ValueError(f"block_m={bm}, block_n={bn} must be powers of two")
    nt = ceil_div(nks, bn)
    n_row_tiles = ceil_div(nqs, bm)
    if num_splits is None:
        # a row tile's Q rows (BLOCK_M * S rows) are re-read for every column tile: splitting the columns
        # over neighbouring programs lets them share those rows in L2 instead of HBM
        num_splits = 1 if interp else min(nt, 8)
    num_splits = max(1, min(num_splits, nt))
    tiles_per_split = ceil_div(nt, num_splits)
    num_splits = ceil_div(nt, tiles_per_split)

    kv = (torch.full((b,), n_k, dtype=torch.int32, device=q.device) if kv_len is None
          else kv_len.to(device=q.device, dtype=torch.int32).clamp(max=n_k).contiguous())
    check_precision(precision, ESTIMATE_PRECISIONS)
    fp8 = precision == "fp8"
    scales = (kv, kv, 0, 0)  # never read without fp8
    if fp8:
        require_fp8_tensor_cores(q.device, "precision='fp8'")
        q, q_scale = quantize_rows(q, stride)
        k, k_scale = quantize_rows(k, stride, kv, center=True)
        scales = (q_scale, k_scale, q_scale.shape[-1], k_scale.shape[-1])
        if not interp:
            install_tma_allocator()  # in-kernel descriptors
    scale = 1.0 / math.sqrt(d) if scale is None else float(scale)
    dev = q.device
    part = torch.empty((b * h, nqs, kb), dtype=torch.float32, device=dev)
    m_tile = torch.empty((b * h, nqs, nt), dtype=torch.float32, device=dev)
    m_split = torch.empty((b * h, nqs, num_splits), dtype=torch.float32, device=dev)
    l_split = torch.empty_like(m_split)
    # the sink pass has its own partials and (m, l); without it the first set stands in (never written)
    sink = (torch.empty_like(part), torch.empty_like(m_tile), torch.empty_like(m_split),
            torch.empty_like(l_split)) if sink_aware else (part, m_tile, m_split, l_split)
    args = (q, k, kv, part, m_tile, m_split, l_split, scale / stride * LOG2E, *sink, scale * LOG2E,
            *q.stride(), *k.stride(), h, n, nqs, kb, nt, num_splits, tiles_per_split, *scales)
    grid = (num_splits, n_row_tiles, b * h)
    meta = dict(S=stride, R=r, HEAD_DIM=d, BLOCK_M=bm, BLOCK_N=bn, SINK=bool(sink_aware), FP8=fp8)
    if interp:
        _est_partial[grid](*args, **meta)
    else:
        _launch_gpu(grid, args, meta, num_warps, num_stages)
    outs = []
    for buffers in ((part, m_tile, m_split, l_split), sink) if sink_aware else ((part, m_tile, m_split, l_split),):
        out = torch.empty((b, h, qb, kb), dtype=torch.float32, device=dev)
        _est_finish[(nt, qb, b * h)](
            *buffers, kv, out, h, n, nqs, qb, kb, nt, num_splits,
            S=stride, R=r, BS=block_size, KBT=bn // r, NSPLIT_P2=triton.next_power_of_2(num_splits))
        outs.append(out)
    return outs[0] if len(outs) == 1 else 0.5 * (outs[0] + outs[1])
