"""Block-sparse flash attention (forward) in Triton.

Each program owns ``BLOCK_M`` query rows of one (batch, head) and runs the online softmax of Triton's
fused-attention tutorial over the key blocks its query block keeps (``mask.kv_indices[:kv_counts]``), never
over the others. Twin: ``reference.block_sparse_attention_reference``. Non-finite inputs propagate as in
SDPA over the kept keys (NaN stays NaN, a row of -inf logits gives zeros); padded keys are never loaded.

Example::

    out = block_sparse_attention_triton(q, k, v, mask)      # q, k, v [B, H, N, D] on CUDA, bf16/fp16
"""

from __future__ import annotations

import logging
import math
import os

import torch
import triton
import triton.language as tl

from ..block_mask import BlockSparseMask
from ..config import ceil_div
from ..log import log_once
from .quantize import quantize_channels_fp8, quantize_rows, require_fp8_tensor_cores, to_e4m3
from .reference import ATTENTION_GROUP, check_precision, fp8_key_group

LOG2E = 1.4426950408889634
HEAD_DIMS = (64, 128)
# The interpreter (CPU tests) also runs small head dims, which keep the tests fast.
INTERPRETER_HEAD_DIMS = (16, 32, 64, 128)
DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def interpreting() -> bool:
    """True when Triton runs kernels through its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _major_minor(version: str) -> tuple[int, int]:
    major, minor = version.split(".")[:2]
    return int(major), int("".join(ch for ch in minor if ch.isdigit()) or 0)


def check_interpreter(triton_version: str = triton.__version__, numpy_version: str | None = None) -> None:
    """Raise ``RuntimeError`` where Triton's interpreter cannot run the kernels' loops.

    Triton 3.4-3.6's interpreter turns a loop bound into a Python int with ``int(1-element array)``, which
    numpy >= 2.4 refuses: without this check every kernel with a runtime loop bound fails with a bare
    ``TypeError`` (their GPU path is not affected).

    Example::

        check_interpreter("3.8.0", "2.4.1")   # fine; ("3.6.0", "2.4.1") raises
    """
    import numpy

    numpy_version = numpy_version or numpy.__version__
    if _major_minor(triton_version) < (3, 7) and _major_minor(numpy_version) >= (2, 4):
        raise RuntimeError(f"Triton {triton_version}'s CPU interpreter (TRITON_INTERPRET=1) cannot run with numpy "
                           f"{numpy_version}; accepted: triton >= 3.7, or numpy < 2.4 with triton 3.4-3.6")


@triton.jit
def _attn_tile(acc, l_i, m_i, q, k_src, v_src, start_n, kv_len, qk_scale,
               stride_kn, stride_kd, stride_vn, stride_vd, k_scale_src,
               HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, MASKED: tl.constexpr, USE_TMA: tl.constexpr,
               FP8: tl.constexpr, K_GROUP: tl.constexpr, EXACT: tl.constexpr, QK_INT8: tl.constexpr):
    offs_n = start_n + tl.arange(0, BLOCK_N)
    if FP8:  # qk_scale is each row's q scale; times this tile's key scale (a tile lies in one key group)
        qk_scale = qk_scale * tl.load(k_scale_src + start_n // K_GROUP)
    offs_d = tl.arange(0, HEAD_DIM)
    if USE_TMA:
        # descriptors span [kv_len, D]: rows past kv_len come back as zeros
        k = k_src.load([start_n, 0]).T
    else:
        k_ptrs = k_src + offs_n[None, :] * stride_kn + offs_d[:, None] * stride_kd  # K^T tile [D, BLOCK_N]
        if MASKED:
            k = tl.load(k_ptrs, mask=offs_n[None, :] < kv_len, other=0.0)
        else:
            k = tl.load(k_ptrs)
    if QK_INT8:
        qk = tl.dot(q, k, out_dtype=tl.int32).to(tl.float32)
    else:
        qk = tl.dot(q, k)
    if MASKED:
        qk = tl.where(offs_n[None, :] < kv_len, qk, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
    # a row without a finite logit yet (padding, or -Inf products) subtracts 0, not -inf: its weights stay 0
    # instead of exp2(-inf - -inf) = NaN, as SDPA's fused kernels do; NaN and +Inf still give NaN
    m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
    if FP8:  # weights times 448 (log2 448 in the exponent): e4m3's whole range for the product with v
        p = tl.math.exp2(qk * qk_scale[:, None] - (m_use[:, None] - 8.807354922057604))
    else:
        p = tl.math.exp2(qk * qk_scale - m_use[:, None])
    alpha = tl.math.exp2(m_i - m_use)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None]
    if FP8:  # v is stored transposed [D, N] (key-major, as the fp8 tensor-core product wants it)
        if USE_TMA:
            v = v_src.load([0, start_n]).T
        else:
            v = tl.load(v_src + offs_n[:, None] * stride_vn + offs_d[None, :] * stride_vd)
        acc = tl.dot(to_e4m3(p, EXACT), v, acc)
        return acc, l_i, m_new
    if USE_TMA:
        v = v_src.load([start_n, 0])
    else:
        v_ptrs = v_src + offs_n[:, None] * stride_vn + offs_d[None, :] * stride_vd
        if MASKED:
            v = tl.load(v_ptrs, mask=offs_n[:, None] < kv_len, other=0.0)
        else:
            v = tl.load(v_ptrs)
    acc = tl.dot(p.to(v.dtype), v, acc)
    return acc, l_i, m_new


@triton.jit
def _bsa_fwd(Q, K, V, O, IDX, CNT, KVLEN, qk_scale,
             s_qb, s_qh, s_qn, s_qd, s_kb, s_kh, s_kn, s_kd, s_vb, s_vh, s_vn, s_vd, s_ob, s_oh, s_on, s_od,
             s_ib, s_ih, s_iq, s_ik, s_cb, s_ch, s_cq,
             H, N_Q, n_bucket, SQ, SK, SV, n_qg, n_kg,
             BS: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
             USE_TMA: tl.constexpr = False, WARP_SPECIALIZE: tl.constexpr = False, PREFETCH: tl.constexpr = False,
             FP8: tl.constexpr = False, Q_GROUP: tl.constexpr = 1, K_GROUP: tl.constexpr = 1,
             EXACT: tl.constexpr = False, QK_INT8: tl.constexpr = False):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    q_blk = (pid_m * BLOCK_M) // BS
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    q_ptrs = Q + b * s_qb + h * s_qh + offs_m[:, None] * s_qn + offs_d[None, :] * s_qd
    q = tl.load(q_ptrs, mask=offs_m[:, None] < N_Q, other=0.0)
    kv_len = tl.load(KVLEN + b).to(tl.int32)
    k_src = K + b * s_kb + h * s_kh
    v_src = V + b * s_vb + h * s_vh
    if USE_TMA:  # Hopper bulk copies (needs unit stride on D, 16-byte aligned rows; checked by the caller)
        k_src = tl.make_tensor_descriptor(k_src, shape=[kv_len, HEAD_DIM], strides=[s_kn, 1],
                                          block_shape=[BLOCK_N, HEAD_DIM])
        if FP8:
            v_src = tl.make_tensor_descriptor(v_src, shape=[HEAD_DIM, kv_len], strides=[s_vd, 1],
                                              block_shape=[HEAD_DIM, BLOCK_N])
        else:
            v_src = tl.make_tensor_descriptor(v_src, shape=[kv_len, HEAD_DIM], strides=[s_vn, 1],
                                              block_shape=[BLOCK_N, HEAD_DIM])
    k_scale_src = SK + pid_bh.to(tl.int64) * n_kg
    if FP8:  # the fp8 copies' scales: one per Q_GROUP query rows, folded into the logits' scale per row
        row_scale = tl.load(SQ + pid_bh.to(tl.int64) * n_qg + offs_m // Q_GROUP, mask=offs_m < N_Q, other=1.0)
        qk_scale = row_scale * qk_scale
    idx_base = IDX + b * s_ib + h * s_ih + q_blk * s_iq
    count = tl.load(CNT + b * s_cb + h * s_ch + q_blk * s_cq)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    # Kept blocks are ascending and none starts at or past kv_len, so only the last one can hold padded
    # keys: every other block runs without masks.
    last = tl.load(idx_base + tl.maximum(count - 1, 0) * s_ik)
    partial = (count > 0) & ((last + 1) * BS > kv_len)
    n_full = tl.where(partial, count - 1, count)
    kb = tl.load(idx_base)
    for i in tl.range(0, n_full, warp_specialize=WARP_SPECIALIZE):
        if PREFETCH:  # the next block index is loaded one iteration ahead, off the critical path
            kb_next = tl.load(idx_base + (i + 1) * s_ik, mask=i + 1 < count, other=0)
        else:
            kb = tl.load(idx_base + i * s_ik)
        for sub in tl.static_range(BS // BLOCK_N):
            acc, l_i, m_i = _attn_tile(acc, l_i, m_i, q, k_src, v_src, kb * BS + sub * BLOCK_N, kv_len,
                                       qk_scale, s_kn, s_kd, s_vn, s_vd, k_scale_src, HEAD_DIM, BLOCK_N, False,
                                       USE_TMA, FP8, K_GROUP, EXACT, QK_INT8)
        if PREFETCH:
            kb = kb_next
    if partial:
        # the block's first sub-tile holds its (valid) first key, so m_i is finite before any all-padding
        # sub-tile and exp2(m_i - m_new) never sees -inf - -inf
        for sub in tl.static_range(BS // BLOCK_N):
            acc, l_i, m_i = _attn_tile(acc, l_i, m_i, q, k_src, v_src, last * BS + sub * BLOCK_N, kv_len,
                                       qk_scale, s_kn, s_kd, s_vn, s_vd, k_scale_src, HEAD_DIM, BLOCK_N, True,
                                       USE_TMA, FP8, K_GROUP, EXACT, QK_INT8)
    # a row with no kept block (count == 0) outputs zeros, as the reference does; a NaN sum divides (the fp8
    # weights may have lost the NaN: the interpreter converts NaN to a finite e4m3)
    acc = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
    if FP8:
        acc = acc * tl.load(SV + pid_bh.to(tl.int64) * HEAD_DIM + offs_d)[None, :]
    o_ptrs = O + b * s_ob + h * s_oh + offs_m[:, None] * s_on + offs_d[None, :] * s_od
    tl.store(o_ptrs, acc.to(O.dtype.element_ty), mask=offs_m[:, None] < N_Q)


def _prune(configs, named_args, **kwargs):
    bs = named_args["BS"] if "BS" in named_args else kwargs["BS"]
    kept = [c for c in configs if bs % c.kwargs["BLOCK_M"] == 0 and bs % c.kwargs["BLOCK_N"] == 0]
    return kept or configs[:1]


# A few H100 configs (tutorial's Hopper choices); the key keeps one tuned choice per shape class.
_CONFIGS = [
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 128}, num_warps=8, num_stages=3),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 128}, num_warps=8, num_stages=2),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 128, "PREFETCH": True}, num_warps=8, num_stages=3),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 128, "PREFETCH": True}, num_warps=8, num_stages=2),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 64}, num_warps=4, num_stages=3),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 64}, num_warps=8, num_stages=3),
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 64}, num_warps=4, num_stages=3),  # mask blocks of 64
]
# the best launch differs between ~8k and ~120k tokens: tune per power-of-two bucket of the length
_bsa_fwd_tuned = triton.autotune(_CONFIGS, key=["BS", "HEAD_DIM", "USE_TMA", "n_bucket"], prune_configs_by={"early_config_prune": _prune})(
    _bsa_fwd
)


# TMA descriptors are used where they work; XATTN_NO_TMA=1 turns them off (A/B timing). "why" holds the reason
# when this Triton cannot build them.
_TMA: dict = {"ok": os.environ.get("XATTN_NO_TMA", "0") in ("", "0"), "why": None, "allocator": False}
logger = logging.getLogger("xattn_video")


def tma_unsupported_reason() -> str | None:
    """Why the installed Triton cannot build in-kernel TMA descriptors, or None when it can.

    The one condition that turns TMA off for the process; it is checked before any launch. An error raised by
    a TMA launch itself is never taken as "unsupported": it propagates.

    Example::

        tma_unsupported_reason()   # None on triton >= 3.4
    """
    missing = [f"{mod.__name__}.{name}" for mod, name in ((tl, "make_tensor_descriptor"), (triton, "set_allocator"))
               if not hasattr(mod, name)]
    if missing:
        return f"triton {triton.__version__} has no {' / '.join(missing)}"
    return None


def _tma_layout_ok(x: torch.Tensor) -> bool:
    """Descriptor constraints: unit stride on D; base and every other stride 16-byte aligned (each (b, h) slice
    starts a descriptor, so the batch and head strides count too; a size-1 dimension's stride is never used)."""
    if x.stride(-1) != 1 or x.data_ptr() % 16:
        return False
    return all(x.shape[i] == 1 or (x.stride(i) * x.element_size()) % 16 == 0 for i in range(x.dim() - 1))


def _use_tma(x: torch.Tensor) -> bool:
    if not _TMA["ok"] or torch.cuda.get_device_capability(x.device)[0] < 9:
        return False
    if _TMA["why"] is None:
        _TMA["why"] = tma_unsupported_reason() or ""
        if _TMA["why"]:
            logger.warning("xattn_video: TMA descriptors unavailable (%s); using plain loads (slower)", _TMA["why"])
    if _TMA["why"] or not _tma_layout_ok(x):
        return False
    install_tma_allocator()
    return True


def install_tma_allocator() -> None:
    """Give Triton the scratch allocator that in-kernel TMA descriptors need (once per process).

    Example::

        install_tma_allocator()   # before a launch that builds tl.make_tensor_descriptor on the GPU
    """
    if not _TMA["allocator"]:
        # in-kernel descriptors need a small global scratch buffer per launch
        triton.set_allocator(lambda size, align, stream: torch.empty(size, dtype=torch.int8, device="cuda"))
        _TMA["allocator"] = True


def _launch_autotuned(args: tuple, grid, bs: int, d: int, k: torch.Tensor, v: torch.Tensor) -> None:
    # no try / except: a failing TMA launch is a bug to see, not a reason to run slower from then on
    _bsa_fwd_tuned[grid](*args, BS=bs, HEAD_DIM=d, USE_TMA=_use_tma(k) and _use_tma(v))


def _launch_fp8(args: tuple, n: int, bh: int, bs: int, d: int, tile: int, on_cpu: bool,
                launch: dict | None) -> None:
    """One fixed launch, the fastest of the H200 sweep (benchmarks/RESULTS.md): 64-row programs of one
    warpgroup (several per multiprocessor overlap one's softmax with another's products), the next block index
    loaded ahead. Key tiles as wide as the head (bulk copies only there: Triton 3.6 fails to compile the fp8
    products from non-square transposed tiles)."""
    if on_cpu:
        cfg = {"BLOCK_M": min(tile, 64), "BLOCK_N": min(tile, 64), **(launch or {})}
        _bsa_fwd[(ceil_div(n, cfg["BLOCK_M"]), bh)](*args, BS=bs, HEAD_DIM=d, FP8=True, Q_GROUP=ATTENTION_GROUP,
                                                    K_GROUP=tile, EXACT=interpreting(), **cfg)
        return
    block_n = min(tile, d)
    cfg = {"BLOCK_M": 64, "BLOCK_N": block_n, "num_warps": 4, "num_stages": 3, "PREFETCH": True,
           "USE_TMA": block_n == d and _use_tma(args[1]), **(launch or {})}
    if bs % cfg["BLOCK_M"] or bs % cfg["BLOCK_N"]:
        raise ValueError(f"launch {cfg} does not tile mask blocks of {bs}; accepted: BLOCK_M and BLOCK_N dividing it")
    if cfg["USE_TMA"]:
        install_tma_allocator()
    _bsa_fwd[(ceil_div(n, cfg["BLOCK_M"]), bh)](*args, BS=bs, HEAD_DIM=d, FP8=True, Q_GROUP=ATTENTION_GROUP,
                                                K_GROUP=tile, **cfg)


def _tile_for(block_size: int) -> int:
    """Largest power of two <= 128 that divides the mask block (internal tile side; in 8 bits also the keys
    per k scale, so that a tile has one scale)."""
    t = fp8_key_group(block_size)
    if t < 16:
        raise ValueError(f"mask block_size={block_size} is not supported by the Triton kernel; accepted: a "
                         f"multiple of 16 (e.g. 16, 32, 64, 128)")
    return t


def block_sparse_attention_triton(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: BlockSparseMask, scale: float | None = None,
    precision: str = "native", *, launch: dict | None = None,
) -> torch.Tensor:
    """Attention of each query block over its kept key blocks (keys past ``mask.kv_len`` excluded).

    q ``[B, H, N, D]``, k / v ``[B, H, N_k, D]`` (any strides); float16, bfloat16 or float32 (fp32 runs tf32
    dots on GPU); head_dim 64 or 128. Returns ``[B, H, N, D]`` in q's dtype. ``precision="fp8"``: both
    products in e4m3 on fp8 copies of q, k, v (``kernels/quantize.py``; the weights too, see the twin),
    ``"int8-fp8"`` Q.K^T in int8 instead; the mask's block size must then be a multiple of 64. ``launch``
    (benchmarks only) fixes the launch instead of autotuning: BLOCK_M, BLOCK_N, num_warps, num_stages, USE_TMA,
    WARP_SPECIALIZE, PREFETCH. On Hopper, native precision, head_dim 128 and mask blocks of 128 run the Gluon
    kernel of ``block_sparse_attention_gluon.py`` instead (no ``launch``; ``XATTN_NO_GLUON=1`` turns it off).
    """
    b, h, n, d = q.shape
    n_k = k.shape[2]
    interp = interpreting()
    if interp:
        check_interpreter()
    dims = INTERPRETER_HEAD_DIMS if interp else HEAD_DIMS
    if d not in dims:
        raise ValueError(f"head_dim={d} is not supported by the Triton attention kernel; accepted: {dims}")
    if q.dtype not in DTYPES or not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"dtypes q={q.dtype}, k={k.dtype}, v={v.dtype} are not supported; accepted: one of "
                         f"{[str(t) for t in DTYPES]} for all three")
    if k.shape != v.shape or k.shape[:2] != (b, h) or k.shape[3] != d:
        raise ValueError(f"k {tuple(k.shape)} / v {tuple(v.shape)} do not fit q {tuple(q.shape)}")
    bs = mask.block_size
    tile = _tile_for(bs)
    qb = ceil_div(n, bs)
    idx, cnt = mask.kv_indices, mask.kv_counts
    if idx.shape[0] != b or idx.shape[1] not in (1, h) or idx.shape[2] != qb or idx.shape[3] < ceil_div(n_k, bs) \
            or cnt.shape != idx.shape[:3]:
        raise ValueError(f"mask kv_indices {tuple(idx.shape)} / kv_counts {tuple(cnt.shape)} do not fit q "
                         f"{tuple(q.shape)}, k {tuple(k.shape)} with block_size={bs}")
    check_precision(precision)
    if precision == "native" and launch is None and not interp and q.is_cuda:
        from .block_sparse_attention_gluon import gluon_unavailable_reason, launch_gluon_attention
        why_not = gluon_unavailable_reason(q, k, v, mask)
        if why_not is None:  # Hopper: FlashAttention-3's layout of this loop, 1.15-1.3x (benchmarks/RESULTS.md)
            return launch_gluon_attention(q, k, v, mask, scale)  # shapes and reason checked here already
        if torch.cuda.get_device_capability(q.device)[0] == 9:
            log_once(f"xattn_video: the Hopper attention kernel cannot run ({why_not}); using the Triton kernel")
    idx = idx.to(device=q.device, dtype=torch.int32)
    cnt = cnt.to(device=q.device, dtype=torch.int32)
    kv_len = mask.kv_len.to(device=q.device, dtype=torch.int32).clamp(max=n_k).contiguous()
    # a mask head dim of 1 broadcasts over heads: stride 0
    s_ih = idx.stride(1) if idx.shape[1] > 1 else 0
    s_ch = cnt.stride(1) if cnt.shape[1] > 1 else 0
    scale = 1.0 / math.sqrt(d) if scale is None else float(scale)
    out = torch.empty((b, h, n, d), dtype=q.dtype, device=q.device)
    fp8 = precision != "native"
    scales = (q, q, q, 0, 0)  # never read without fp8
    if fp8:
        if bs % 64:
            raise ValueError(f"precision={precision!r} needs a mask block_size that is a multiple of 64, got {bs}")
        require_fp8_tensor_cores(q.device, f"precision={precision!r}")
        qk_dtype = torch.int8 if precision == "int8-fp8" else torch.float8_e4m3fn
        q, q_scale = quantize_rows(q, ATTENTION_GROUP, dtype=qk_dtype)
        k, k_scale = quantize_rows(k, tile, kv_len, center=True, dtype=qk_dtype)  # one k scale per key tile
        v_t, v_scale = quantize_channels_fp8(v, kv_len)
        v = v_t.transpose(2, 3)  # the [N, D] view of the transposed copy
        scales = (q_scale, k_scale, v_scale, q_scale.shape[-1], k_scale.shape[-1])
    args = (q, k, v, out, idx, cnt, kv_len, scale * LOG2E,
            *q.stride(), *k.stride(), *v.stride(), *out.stride(),
            idx.stride(0), s_ih, idx.stride(2), idx.stride(3), cnt.stride(0), s_ch, cnt.stride(2),
            h, n, triton.next_power_of_2(n), *scales)
    if fp8:
        launch = {"QK_INT8": qk_dtype == torch.int8, **(launch or {})}
        _launch_fp8(args, n, b * h, bs, d, tile, interp or q.device.type != "cuda", launch)
        return out
    reason = tma_unsupported_reason() if launch and launch.get("USE_TMA") else None
    if reason:
        raise ValueError(f"launch USE_TMA=True cannot run: {reason}; accepted: triton >= 3.4")
    if interp or q.device.type != "cuda":
        block = min(tile, 64)
        cfg = {"BLOCK_M": block, "BLOCK_N": block, **(launch or {})}
        _bsa_fwd[(ceil_div(n, cfg["BLOCK_M"]), b * h)](*args, BS=bs, HEAD_DIM=d, **cfg)
    elif tile < 64:
        _bsa_fwd[(ceil_div(n, tile), b * h)](*args, BS=bs, HEAD_DIM=d, BLOCK_M=tile, BLOCK_N=tile,
                                             num_warps=4, num_stages=3)
    elif launch is not None:
        cfg = dict(launch)
        if cfg.get("USE_TMA"):
            install_tma_allocator()
        _bsa_fwd[(ceil_div(n, cfg["BLOCK_M"]), b * h)](*args, BS=bs, HEAD_DIM=d, **cfg)
    else:
        grid = lambda meta: (ceil_div(n, meta["BLOCK_M"]), b * h)  # noqa: E731
        _launch_autotuned(args, grid, bs, d, k, v)
    return out
