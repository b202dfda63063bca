"""Plain-PyTorch twins of the Triton kernels: the CPU path and the test oracle.

One twin per fast path, with the fast path's signature (``xattn_video.backends`` pairs them):
``strided_block_scores_reference`` (``kernels/estimate.py``), ``select_blocks_reference``
(``kernels/select.py``), ``block_sparse_attention_reference`` (``kernels/block_sparse_attention.py``),
``quantize_rows_reference`` / ``quantize_channels_fp8_reference`` (``kernels/quantize.py``).
``precision`` "fp8" / "int8-fp8" (the estimate: "fp8") computes on the 8-bit copies, dequantized: the
kernels' products with fp32 accumulation, up to summation order (the GPU's fp8 tensor cores accumulate in less).

Shapes: q, k, v ``[B, H, N, D]``; ``kv_len`` ``[B]`` valid key lengths (keys at or past it are padding).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

from ..block_mask import BlockSparseMask
from ..config import ESTIMATE_PRECISIONS, PRECISIONS, ceil_div

FP8_MAX = 448.0  # largest finite e4m3 value
FP8 = torch.float8_e4m3fn
ATTENTION_GROUP = 16  # tokens per q / k scale in the fp8 attention


def fp8_key_group(block_size: int) -> int:
    """Keys per k scale in the fp8 attention: the largest power of two <= 128 dividing the mask block (the
    kernel's key tile, so that a tile has one scale)."""
    group = 128
    while group > 1 and block_size % group:
        group //= 2
    return group


def padded_length(n: int) -> int:
    """Token count of the fp8 copies: ``n`` rounded up to a multiple of 128 (the kernels' tiles)."""
    return ceil_div(n, 128) * 128


def antidiagonal_block_scores(attn: torch.Tensor, block_size: int, stride: int | None = None) -> torch.Tensor:
    """The seed's didactic scorer on a given attention matrix ``[..., N, N]``.

    Each ``stride`` x ``stride`` sub-block contributes the sum of its antidiagonal (top-right to bottom-left);
    those sums are added up per ``block_size`` x ``block_size`` block. ``stride`` defaults to ``block_size``.

    >>> A = torch.tensor([[.1, .3, .2, .4], [.2, .5, .1, .3], [.4, .1, .6, .2], [.3, .2, .4, .5]])
    >>> antidiagonal_block_scores(A, 2)
    tensor([[0.5000, 0.5000],
            [0.4000, 0.6000]])
    """
    s = block_size if stride is None else stride
    n_q, n_k = attn.shape[-2:]
    if n_q % block_size or n_k % block_size or block_size % s:
        raise ValueError(f"matrix {n_q}x{n_k} must tile into blocks of {block_size}, and stride {s} divide it")
    sub = attn.unflatten(-1, (n_k // s, s)).unflatten(-3, (n_q // s, s))  # [..., Nq/S, S(row), Nk/S, S(col)]
    anti = sub.flip(-3).diagonal(dim1=-3, dim2=-1).sum(-1)  # row S-1-c meets col c
    r = block_size // s
    return anti.unflatten(-1, (n_k // block_size, r)).sum(-1).unflatten(-2, (n_q // block_size, r)).sum(-2)


def _pad_tokens(x: torch.Tensor, length: int) -> torch.Tensor:
    return torch.nn.functional.pad(x, (0, 0, 0, length - x.shape[-2]))


def strided_block_scores_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    block_size: int,
    stride: int,
    kv_len: torch.Tensor | None = None,
    scale: float | None = None,
    sink_aware: bool = False,
    precision: str = "native",
) -> torch.Tensor:
    """XAttention's estimate: ``[B, H, QB, KB]`` float32 block scores.

    Q and K are reordered with stride S so that one GEMM gives, for every S x S sub-block of Q.K^T, the sum of
    its antidiagonal (query row ``iS + S-1-c`` against key ``jS + c``). The sums, scaled by ``scale / S``, are
    softmaxed per strided query row over the strided key columns that hold a valid key, and the
    probabilities are summed per ``block_size`` block. Padded keys are zeroed and strided rows made only of
    padded queries count zero, so each row of the result sums to the number of real strided rows it holds.
    A strided row with a non-finite logit over valid keys (NaN or Inf in its queries, or in any valid key)
    scores NaN in every block of its query block: the selection cannot rank that row and keeps all of it
    (``select_blocks_reference``), so the estimate never hides a numerical fault.

    ``sink_aware``: the mean of S logits underrates a key that one query of the group attends to strongly
    (a sink). Beside the mean, the *largest* antidiagonal logit of each sub-block (scaled by ``scale``, not
    ``scale / S``) is softmaxed the same way, and the score is the average of the two distributions (row sums
    unchanged). Padded tokens count as zero vectors in both, as in the mean.

    ``precision="fp8"``: q and k as e4m3 with one scale per S tokens, k centred (``kernels/quantize.py``); the
    scores only rank blocks, so the mask is what to compare with the native one.
    """
    b, h, n, d = q.shape
    n_k = k.shape[2]
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    qb, kb = ceil_div(n, block_size), ceil_div(n_k, block_size)
    kv_len = _kv_len_or_full(kv_len, b, n_k, q.device)
    check_precision(precision, ESTIMATE_PRECISIONS)
    if precision == "fp8":
        q = dequantize_rows(*quantize_rows_reference(q, stride), stride)[:, :, :n]
        k = dequantize_rows(*quantize_rows_reference(k, stride, kv_len, center=True), stride)[:, :, :n_k]
    qp = _pad_tokens(q.float(), qb * block_size)
    kp = _pad_tokens(k.float(), kb * block_size)
    key_valid = torch.arange(kb * block_size, device=q.device)[None, :] < kv_len[:, None]
    kp = torch.where(key_valid[:, None, :, None], kp, 0.0)  # not a product: a NaN / Inf padded key stays out
    col_valid = (torch.arange(kb * block_size // stride, device=q.device)[None, :] * stride
                 < kv_len[:, None])  # [B, Nk/S]
    row_valid = torch.arange(qb * block_size // stride, device=q.device) * stride < n  # [Nq/S]
    r = block_size // stride

    def blocks(logits: torch.Tensor) -> torch.Tensor:  # [B, Nq/S, Nk/S] -> [B, QB, KB]
        # a non-finite logit over a valid key (NaN / Inf in q or k) makes its strided row NaN: the selection
        # then keeps every block of that query block, so the fault reaches the output as in dense attention
        bad = (~torch.isfinite(logits) & col_valid[:, None, :]).any(-1, keepdim=True)
        p = logits.masked_fill(~col_valid[:, None, :], float("-inf")).softmax(-1)
        p = torch.where(bad, float("nan"), p)
        p = torch.where(row_valid[None, :, None], p, 0.0)
        return p.unflatten(-1, (kb, r)).sum(-1).unflatten(-2, (qb, r)).sum(-2)

    out = torch.empty(b, h, qb, kb, dtype=torch.float32, device=q.device)
    if not sink_aware:
        # q_r[i] = concat_c Q[iS + S-1-c];  k_r[j] = concat_c K[jS + c]: one GEMM sums the antidiagonal
        q_r = qp.unflatten(2, (-1, stride)).flip(3).flatten(3)
        k_r = kp.unflatten(2, (-1, stride)).flatten(3)
        for hi in range(h):  # one head at a time keeps the (N/S)^2 logits small
            out[:, hi] = blocks(q_r[:, hi] @ k_r[:, hi].transpose(-1, -2) * (scale / stride))
        return out
    for hi in range(h):
        total = mx = None
        for c in range(stride):  # one GEMM per antidiagonal position: its sum and its max
            dots = qp[:, hi, stride - 1 - c::stride] @ kp[:, hi, c::stride].transpose(-1, -2)
            total = dots if total is None else total + dots
            mx = dots if mx is None else torch.maximum(mx, dots)
        out[:, hi] = 0.5 * (blocks(total * (scale / stride)) + blocks(mx * scale))
    return out


def select_blocks_reference(
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
    """Per query-block row keep the fewest key blocks whose normalised score reaches ``threshold``.

    Ties go to the lower block index. Blocks of padded keys (start >= ``kv_len``) are never kept. Then:
    ``keep_diagonal`` adds the diagonal block; ``global_start`` marks tokens at or past it as global (text):
    their key blocks are always kept and their query blocks attend densely; ``max_density`` caps the kept
    blocks of a (non-global) row at ``ceil(max_density * valid blocks)``, forced blocks first.
    ``threshold`` is one value or one per head; ``>= 1`` keeps every valid block. A row with a non-finite
    score (NaN or Inf over its valid blocks) keeps every valid block: a fault is never selected away.
    """
    b, h, qb, kb = scores.shape
    dev = scores.device
    if kv_len is None:
        kv_len = torch.full((b,), kb * block_size, dtype=torch.long, device=dev)
    kv_len = kv_len.to(device=dev, dtype=torch.long)
    kv_start = torch.arange(kb, device=dev) * block_size
    valid = (kv_start[None, :] < kv_len[:, None])[:, None, None, :]  # [B, 1, 1, KB]
    tau = torch.as_tensor(threshold, dtype=torch.float32).to(dev).reshape(-1)
    if tau.numel() not in (1, h):
        raise ValueError(f"threshold has {tau.numel()} values; expected 1 or one per head ({h})")
    tau = tau.reshape(1, -1, 1, 1)

    # a row holding a non-finite score (NaN / Inf in its queries or keys) cannot be ranked: it keeps every
    # valid block, budget or not, so the fault reaches the output as in dense attention
    bad_row = (~torch.isfinite(scores) & valid).any(-1)  # [B, H, QB]
    s = torch.where(valid, scores.float().clamp_min(0.0), torch.zeros((), device=dev))
    total = s.sum(-1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
    sorted_s, order = torch.sort(s / total, dim=-1, descending=True, stable=True)
    before = sorted_s.cumsum(-1) - sorted_s  # mass of the better-ranked blocks
    keep_sorted = (before < tau) | (tau >= 1.0)
    keep = torch.zeros_like(keep_sorted).scatter_(-1, order, keep_sorted) & valid

    forced = torch.zeros_like(keep)
    q_block = torch.arange(qb, device=dev)
    if keep_diagonal:
        diag = q_block[:, None] == torch.arange(kb, device=dev)[None, :]
        forced |= diag[None, None]
    dense_row = torch.zeros(qb, dtype=torch.bool, device=dev)
    if global_start is not None:  # blocks holding a valid global key; query blocks holding a global query
        holds_global = (kv_start + block_size > global_start)[None, :] & (global_start < kv_len)[:, None]
        forced |= holds_global[:, None, None, :]
        dense_row = ((q_block + 1) * block_size > global_start) & (global_start < q_len)
    forced &= valid

    if max_density is not None:
        budget = torch.ceil(max_density * valid.sum(-1, keepdim=True).float() - 1e-6).clamp_min(1)
        # rank forced blocks first, then by score; keep the best `budget` of the kept ones
        rank_key = torch.where(forced, torch.full_like(s, 2.0), s / total)
        rank_key = torch.where(keep | forced, rank_key, torch.full_like(s, -1.0))
        _, by_rank = torch.sort(rank_key, dim=-1, descending=True, stable=True)
        within = torch.arange(kb, device=dev).expand_as(by_rank) < budget
        keep = torch.zeros_like(keep).scatter_(-1, by_rank, within) & keep
    keep = keep | forced | ((dense_row[None, None, :, None] | bad_row[..., None]) & valid)
    return BlockSparseMask.from_dense(keep, block_size, q_len, kv_len)


def block_sparse_attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: BlockSparseMask,
    scale: float | None = None,
    precision: str = "native",
    *,
    q_blocks_per_chunk: int = 16,
) -> torch.Tensor:
    """Attention of each query block over its kept key blocks only (keys past ``mask.kv_len`` excluded).

    Memory is O(N * kept): per chunk of query blocks the kept key/value blocks are gathered, never a dense
    N x N matrix. Computes in float32, returns q's dtype. Non-finite values in q, k, v propagate as in
    ``F.scaled_dot_product_attention`` over the kept keys (NaN stays NaN; a row whose every kept logit is
    -inf, or that keeps no key, outputs zeros, as SDPA's fused kernels do); padded keys and skipped blocks
    never reach a row.

    ``precision="fp8"``: q, k (centred) and v as e4m3 (``kernels/quantize.py``), and the softmax weights too:
    ``exp(logit - row max)`` times 448 in e4m3 for the product with v, divided by the unrounded row sum (the
    kernel rounds against its running max, so the two agree to fp8 rounding, not bit for bit).
    """
    b, h, n, d = q.shape
    n_k = k.shape[2]
    bs = mask.block_size
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    check_precision(precision)
    weights = softmax_or_zero
    if precision != "native":
        kv = mask.kv_len.to(q.device)
        qk_dtype = torch.int8 if precision == "int8-fp8" else FP8
        q = dequantize_rows(*quantize_rows_reference(q, ATTENTION_GROUP, dtype=qk_dtype), ATTENTION_GROUP)[:, :, :n]
        k_group = fp8_key_group(bs)
        k = dequantize_rows(*quantize_rows_reference(k, k_group, kv, center=True, dtype=qk_dtype),
                            k_group)[:, :, :n_k]
        vt8, v_scale = quantize_channels_fp8_reference(v, kv)
        v = (vt8.float() * v_scale[..., None]).transpose(2, 3)[:, :, :n_k]
        weights = _fp8_softmax
    qb, kb = ceil_div(n, bs), ceil_div(n_k, bs)
    if mask.kv_indices.shape[:3] != (b, h, qb) and mask.kv_indices.shape[:3] != (b, 1, qb):
        raise ValueError(f"mask of shape {tuple(mask.kv_indices.shape)} does not fit q {tuple(q.shape)} "
                         f"with block_size={bs}")
    qp = _pad_tokens(q.float(), qb * bs).unflatten(2, (qb, bs))  # [B, H, QB, bs, D]
    kp = _pad_tokens(k.float(), kb * bs).unflatten(2, (kb, bs))
    vp = _pad_tokens(v.float(), kb * bs).unflatten(2, (kb, bs))
    idx = mask.kv_indices.expand(b, h, qb, -1)
    counts = mask.kv_counts.expand(b, h, qb)
    width = int(counts.max()) if counts.numel() else 0
    idx = idx[..., :width].long()
    slot_valid = torch.arange(width, device=q.device) < counts[..., None]  # [B, H, QB, W]
    idx = torch.where(slot_valid, idx, torch.zeros_like(idx))
    key_pos = idx[..., None] * bs + torch.arange(bs, device=q.device)  # [B, H, QB, W, bs]
    key_ok = slot_valid[..., None] & (key_pos < mask.kv_len.to(q.device)[:, None, None, None, None])
    out = torch.empty(b, h, qb, bs, d, dtype=torch.float32, device=q.device)
    for c0 in range(0, qb, q_blocks_per_chunk):
        c1 = min(qb, c0 + q_blocks_per_chunk)
        gi = idx[:, :, c0:c1].flatten(2)  # [B, H, C*W]
        ok = key_ok[:, :, c0:c1, :, :, None]  # padded keys, unused slots: zeros (a NaN there times 0 is NaN)
        kg = torch.gather(kp, 2, gi[..., None, None].expand(-1, -1, -1, bs, d)).unflatten(2, (c1 - c0, width))
        vg = torch.gather(vp, 2, gi[..., None, None].expand(-1, -1, -1, bs, d)).unflatten(2, (c1 - c0, width))
        kg, vg = torch.where(ok, kg, 0.0), torch.where(ok, vg, 0.0)
        logits = torch.einsum("bhqid,bhqwjd->bhqiwj", qp[:, :, c0:c1], kg) * scale
        logits = logits.masked_fill(~key_ok[:, :, c0:c1, None], float("-inf")).flatten(-2)
        out[:, :, c0:c1] = torch.einsum("bhqiw,bhqwd->bhqid", weights(logits), vg.flatten(3, 4))
    return out.flatten(2, 3)[:, :, :n].to(q.dtype)


def softmax_or_zero(logits: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dim that keeps NaN / +Inf faults (NaN out) but gives all-zero weights to a row
    without a finite logit (all -inf: no kept key, or -Inf products), as SDPA's fused kernels do. No
    ``nan_to_num``: that would hide a fault.

    >>> softmax_or_zero(torch.tensor([[0.0, float("-inf")], [float("-inf")] * 2, [float("nan"), 0.0]]))
    tensor([[1., 0.],
            [0., 0.],
            [nan, nan]])
    """
    no_finite = logits.amax(-1, keepdim=True) == float("-inf")  # NaN rows: amax is NaN, not -inf
    return torch.where(no_finite, 0.0, logits.softmax(-1))  # torch's softmax: the same numbers as before


def _fp8_softmax(logits: torch.Tensor) -> torch.Tensor:
    """``softmax_or_zero`` with the numerators rounded as the fp8 kernel multiplies them with v."""
    m = logits.amax(-1, keepdim=True)
    e = torch.exp(logits - torch.where(m == float("-inf"), 0.0, m))
    rounded = (e * FP8_MAX).to(FP8).float() / FP8_MAX
    total = e.sum(-1, keepdim=True)
    return rounded / torch.where(total > 0, total, 1.0)


def check_precision(precision: str, accepted: tuple[str, ...] = PRECISIONS) -> None:
    """Raise ``ValueError`` unless ``precision`` is one of ``accepted``."""
    if precision not in accepted:
        raise ValueError(f"precision={precision!r} is not one of {accepted}")


def quantize_rows_reference(
    x: torch.Tensor, group: int, kv_len: torch.Tensor | None = None, center: bool = False,
    dtype: torch.dtype = FP8,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Twin of ``quantize.quantize_rows``: ``dtype`` ``[B, H, N_pad, D]`` and one scale per ``group`` tokens."""
    b, h, n, d = x.shape
    n_pad = padded_length(n)
    kv_len = _kv_len_or_full(kv_len, b, n, x.device).clamp(max=n)
    xf = x.float()
    if center:
        xf = xf - x.mean(dim=2, keepdim=True, dtype=torch.float32)
    ok = (torch.arange(n_pad, device=x.device)[None, :] < kv_len[:, None])[:, None, :, None]
    xg = torch.where(ok, _pad_tokens(xf, n_pad), 0.0).unflatten(2, (n_pad // group, group))
    bad = (~torch.isfinite(xg)).flatten(3).any(-1)
    amax = xg.abs().flatten(3).amax(-1)
    scale = torch.where(amax > 0, amax / (127.0 if dtype == torch.int8 else FP8_MAX), 1.0)
    scale = torch.where(bad, float("nan"), scale)
    y = (xg / scale[..., None, None]).flatten(2, 3)
    return (y.round().nan_to_num(0.0).to(torch.int8) if dtype == torch.int8 else y.to(FP8)), scale


def dequantize_rows(x8: torch.Tensor, scale: torch.Tensor, group: int) -> torch.Tensor:
    """``x8 * scale`` per group of tokens, float32 ``[B, H, N_pad, D]``."""
    return x8.float() * scale.repeat_interleave(group, dim=2)[..., None]


def quantize_channels_fp8_reference(
    v: torch.Tensor, kv_len: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Twin of ``quantize.quantize_channels_fp8``: e4m3 ``[B, H, D, N_pad]`` and one scale per channel."""
    b, h, n, d = v.shape
    n_pad = padded_length(n)
    kv_len = _kv_len_or_full(kv_len, b, n, v.device).clamp(max=n)
    ok = (torch.arange(n_pad, device=v.device)[None, :] < kv_len[:, None])[:, None, :, None]
    vf = torch.where(ok, _pad_tokens(v.float(), n_pad), 0.0)
    bad = (~torch.isfinite(vf)).any(2)
    amax = vf.abs().amax(2)
    scale = torch.where(amax > 0, amax / FP8_MAX, 1.0)
    scale = torch.where(bad, float("nan"), scale)
    return (vf / scale[:, :, None, :]).transpose(2, 3).contiguous().to(FP8), scale


def _kv_len_or_full(kv_len: torch.Tensor | None, b: int, n_k: int, device: torch.device) -> torch.Tensor:
    if kv_len is None:
        return torch.full((b,), n_k, dtype=torch.long, device=device)
    return kv_len.to(device=device, dtype=torch.long)
