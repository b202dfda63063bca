"""FP8 (e4m3) copies of q, k and v for the FP8 estimate and attention, with the scales that undo them.

- ``quantize_rows``: q or k, one scale per group of ``group`` consecutive tokens (the estimate's stride S:
  the antidiagonal sum of a strided row then factors as ``s_q[i] * s_k[j] * sum_c q8 . k8``). With ``center``
  the per-head mean key is subtracted first (SageAttention's smoothing): it shifts every logit of a query row by
  the same amount, which no softmax over keys sees, and leaves the rest in the fp8 range.
- ``quantize_channels_fp8``: v, one scale per channel, stored transposed ``[B, H, D, N]`` (the tensor cores'
  FP8 product reads its second operand key-major); the scale multiplies the output's columns once at the end.

Both pad the tokens to a multiple of 128 (the kernels' tiles then need no load masks) and zero every token at or
past ``kv_len``. A group (or, for v, a channel) holding a NaN or an Inf gets a NaN scale and NaN values, so a
fault reaches the output as in dense attention instead of being clipped to the fp8 range; with ``center`` one
non-finite key makes the mean, hence its whole head, NaN.
Twins: ``reference.quantize_rows_reference``, ``reference.quantize_channels_fp8_reference``.

Example::

    q8, q_scale = quantize_rows(q, group=16)                       # [B, H, N_pad, D] e4m3, [B, H, N_pad/16]
    k8, k_scale = quantize_rows(k, group=16, kv_len=kv_len, center=True)
    vt8, v_scale = quantize_channels_fp8(v, kv_len=kv_len)            # [B, H, D, N_pad] e4m3, [B, H, D]
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .reference import FP8, FP8_MAX, _kv_len_or_full, padded_length


def _kv_len(kv_len: torch.Tensor | None, b: int, n: int, device: torch.device) -> torch.Tensor:
    """The kernels' int32 valid lengths (default n), at most n."""
    return _kv_len_or_full(kv_len, b, n, device).clamp(max=n).to(torch.int32).contiguous()


def _check_head_dim(d: int) -> None:
    if d & (d - 1) or d < 16:
        raise ValueError(f"head_dim={d} is not supported by the fp8 kernels; accepted: a power of two >= 16")


@triton.jit
def to_e4m3(x, EXACT: tl.constexpr):
    """``x`` (float32, |x| <= 448) as e4m3. ``EXACT`` (the interpreter only) rounds to the e4m3 grid first:
    Triton 3.8's interpreter turns values just below a power of two into half of it (127.9 -> 64); the GPU's
    conversion rounds to nearest even by itself."""
    if EXACT:
        bits = x.to(tl.int32, bitcast=True)
        normal = ((bits + 0x7FFFF + ((bits >> 20) & 1)) & -1048576).to(tl.float32, bitcast=True)  # 3 mantissa bits
        subnormal = ((x * 512.0 + 12582912.0) - 12582912.0) / 512.0  # below 2^-6 the grid is 2^-9
        x = tl.where(tl.abs(x) < 0.015625, subnormal, normal)
    return x.to(tl.float8e4nv)


@triton.jit
def _row_tile(X, KVLEN, s_xb, s_xh, s_xn, s_xd, H, ROWS: tl.constexpr, HEAD_DIM: tl.constexpr):
    """This program's ROWS tokens of its (batch, head) as float32 ``[ROWS, HEAD_DIM]``, zero at or past kv_len;
    with the valid mask, the (batch * H + head) index, the token and the channel offsets."""
    bh = tl.program_id(1).to(tl.int64)
    b = bh // H
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    d = tl.arange(0, HEAD_DIM)
    ok = rows[:, None] < tl.load(KVLEN + b)
    x = tl.load(X + b * s_xb + (bh % H) * s_xh + rows[:, None] * s_xn + d[None, :] * s_xd, mask=ok, other=0.0)
    return x.to(tl.float32), ok, bh, rows, d


@triton.jit
def _quant_rows(X, MEAN, KVLEN, Y, SC, s_xb, s_xh, s_xn, s_xd, H, N_PAD,
                GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, ROWS: tl.constexpr, CENTER: tl.constexpr,
                INT8: tl.constexpr, EXACT: tl.constexpr):
    x, ok, bh, rows, d = _row_tile(X, KVLEN, s_xb, s_xh, s_xn, s_xd, H, ROWS, HEAD_DIM)
    if CENTER:
        x = tl.where(ok, x - tl.load(MEAN + bh * HEAD_DIM + d)[None, :], 0.0)
    xg = tl.reshape(x, [ROWS // GROUP, GROUP * HEAD_DIM])
    bad = tl.sum(((xg != xg) | (tl.abs(xg) == float("inf"))).to(tl.int32), 1) > 0
    amax = tl.max(tl.abs(xg), 1)
    scale = tl.where(amax > 0.0, amax / (127.0 if INT8 else 448.0), 1.0)  # all-zero groups (padding) keep 1
    scale = tl.where(bad, float("nan"), scale)
    if INT8:  # round half to even (1.5 * 2^23 pushes the fraction out of an fp32), as torch.round does
        y = (((xg / scale[:, None]) + 12582912.0) - 12582912.0).to(tl.int8)
    else:
        y = to_e4m3(xg / scale[:, None], EXACT)
    y = tl.reshape(y, [ROWS, HEAD_DIM])
    tl.store(Y + (bh * N_PAD + rows[:, None]) * HEAD_DIM + d[None, :], y)
    groups = tl.program_id(0) * (ROWS // GROUP) + tl.arange(0, ROWS // GROUP)
    tl.store(SC + bh * (N_PAD // GROUP) + groups, scale)


def require_fp8_tensor_cores(device: torch.device, what: str, instead: str = "'native'") -> None:
    """Raise ``ValueError`` on a GPU without fp8 tensor cores (compute capability below 8.9), naming ``instead``:
    what runs there."""
    if device.type == "cuda" and torch.cuda.get_device_capability(device) < (8, 9):
        major, minor = torch.cuda.get_device_capability(device)
        raise ValueError(f"{what} needs fp8 tensor cores (compute capability >= 8.9: Ada, Hopper or newer); this "
                         f"GPU has {major}.{minor}; accepted here: {instead}")


def _interpreting() -> bool:
    from .block_sparse_attention import interpreting  # that module imports this one

    return interpreting()


def quantize_rows(
    x: torch.Tensor, group: int, kv_len: torch.Tensor | None = None, center: bool = False,
    dtype: torch.dtype = FP8,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``x [B, H, N, D]`` -> (``dtype`` ``[B, H, N_pad, D]`` contiguous, float32 scales ``[B, H, N_pad / group]``).

    ``x8 * scale`` (each token times its group's scale) approximates ``x`` (centred with ``center``); tokens
    at or past ``kv_len`` (default: N) and the padding to ``N_pad`` are zero. ``group``: a power of two <= 128;
    ``dtype``: e4m3 (``torch.float8_e4m3fn``) or ``torch.int8`` (symmetric, scale = group max / 127).
    """
    if dtype not in (FP8, torch.int8):
        raise ValueError(f"dtype={dtype} is not supported; accepted: torch.float8_e4m3fn, torch.int8")
    b, h, n, d = x.shape
    if group < 1 or group > 128 or group & (group - 1):
        raise ValueError(f"group={group} is not supported; accepted: a power of two in 1..128")
    _check_head_dim(d)
    n_pad = padded_length(n)
    valid = _kv_len(kv_len, b, n, x.device)
    mean = x.mean(dim=2, dtype=torch.float32).contiguous() if center else valid  # unused without center
    y = torch.empty((b, h, n_pad, d), dtype=dtype, device=x.device)
    scale = torch.empty((b, h, n_pad // group), dtype=torch.float32, device=x.device)
    rows = max(group, 64)
    _quant_rows[(n_pad // rows, b * h)](x, mean, valid, y, scale, *x.stride(), h, n_pad,
                                        GROUP=group, HEAD_DIM=d, ROWS=rows, CENTER=center,
                                        INT8=dtype == torch.int8, EXACT=_interpreting())
    return y, scale


@triton.jit
def _absmax_channels(X, KVLEN, PART, s_xb, s_xh, s_xn, s_xd, H, N_CHUNKS,
                     HEAD_DIM: tl.constexpr, ROWS: tl.constexpr):
    x, _, bh, _, d = _row_tile(X, KVLEN, s_xb, s_xh, s_xn, s_xd, H, ROWS, HEAD_DIM)
    bad = tl.sum(((x != x) | (tl.abs(x) == float("inf"))).to(tl.int32), 0) > 0
    amax = tl.where(bad, float("nan"), tl.max(tl.abs(x), 0))  # a GPU max drops NaN: carry it explicitly
    tl.store(PART + (bh * N_CHUNKS + tl.program_id(0)) * HEAD_DIM + d, amax)


@triton.jit
def _quant_channels_t(X, KVLEN, SC, Y, s_xb, s_xh, s_xn, s_xd, H, N_PAD,
                      HEAD_DIM: tl.constexpr, ROWS: tl.constexpr, EXACT: tl.constexpr):
    x, _, bh, rows, d = _row_tile(X, KVLEN, s_xb, s_xh, s_xn, s_xd, H, ROWS, HEAD_DIM)
    y = to_e4m3(x / tl.load(SC + bh * HEAD_DIM + d)[None, :], EXACT)
    tl.store(Y + (bh * HEAD_DIM + d[None, :]) * N_PAD + rows[:, None], y)  # transposed: [D, N_pad]


def quantize_channels_fp8(v: torch.Tensor, kv_len: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``v [B, H, N, D]`` -> (e4m3 ``[B, H, D, N_pad]`` contiguous, float32 scales ``[B, H, D]``).

    One scale per channel over the valid tokens (``kv_len``, default N); ``v8[..., d, n] * scale[..., d]``
    approximates ``v[..., n, d]``; tokens at or past ``kv_len`` are zero.
    """
    b, h, n, d = v.shape
    _check_head_dim(d)
    n_pad = padded_length(n)
    valid = _kv_len(kv_len, b, n, v.device)
    rows = 64
    n_chunks = n_pad // rows
    part = torch.empty((b * h, n_chunks, d), dtype=torch.float32, device=v.device)
    _absmax_channels[(n_chunks, b * h)](v, valid, part, *v.stride(), h, n_chunks, HEAD_DIM=d, ROWS=rows)
    amax = part.amax(dim=1)  # torch's max keeps NaN
    scale = torch.where(amax > 0, amax / FP8_MAX, torch.ones_like(amax))
    scale = torch.where(amax.isnan(), amax, scale).contiguous()
    y = torch.empty((b, h, d, n_pad), dtype=FP8, device=v.device)
    _quant_channels_t[(n_chunks, b * h)](v, valid, scale, y, *v.stride(), h, n_pad, HEAD_DIM=d, ROWS=rows,
                                          EXACT=_interpreting())
    return y, scale.view(b, h, d)
