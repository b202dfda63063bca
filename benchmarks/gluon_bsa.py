"""Experiment (issue 14): the block-sparse attention forward in Gluon, beside the shipped kernels. Not part of the
package.

Plain Triton waits for each tensor-core product before its first use (RESULTS.md: a software-pipelined
`tl.dot` loop gained nothing). Gluon (Triton's lower-level dialect, >= 3.6) lets a kernel place the wait. Three
variants, checked against the Triton kernel and timed beside it:

- "overlap" (here): one partition of 8 warps over 128 query rows; each iteration issues Q.K^T of tile j and P.V
  of tile j-1 asynchronously, waits for the first only and runs tile j's softmax while P.V runs; a TMA ring of
  STAGES slots; bf16, or fp8 (e4m3 on the package's fp8 copies, as the Triton kernel's ``precision="fp8"``).
  On the H200 it ran no faster than the Triton kernel (RESULTS.md, 2026-11-29, call 1); with
  ``no_softmax=True`` (timing only) it leaves the softmax out, as the ablation of call 2 did.
- "ws": the package's kernel (``xattn_video/kernels/block_sparse_attention_gluon.py``: FA3's warp
  specialisation with a producer warp and two ping-pong consumer warpgroups), bf16.
- "poly": "overlap" with every other column's exponential computed as a degree-2 polynomial on the FMA units
  (``_exp2_poly``) instead of the multi-function unit, whose 16 exp2 a cycle bound the fp8 softmax (issue 14
  item 3). Built on the CPU (half the ``ex2``, no spills, no shared-memory traffic); not yet run on a GPU.

Gluon kernels do not run under the CPU interpreter: ``--compile-only`` builds the "overlap" kernel (with and
without "poly") for sm_90a on a CPU and reports its wgmma waits, exp2 count and registers.

    python benchmarks/gluon_bsa.py --compile-only             # CPU (no GPU): bf16 and fp8
    python benchmarks/gluon_bsa.py --cases small --out $OUT/gluon_small.json    # GPU: a first, small check
    python benchmarks/gluon_bsa.py --cases 720p,544p --variants ws:3,overlap:3 --out $OUT/gluon.json
    python benchmarks/gluon_bsa.py --cases small,720p --precisions fp8 --variants overlap:3,poly:3   # item 3
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import mbarrier, tma, warpgroup_mma, warpgroup_mma_wait
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# the package kernel's helpers: the bulk-copy load of this Triton, a tile's logit scale, P.V's v operand
from xattn_video.kernels.block_sparse_attention_gluon import _tile_scale, _tma_load, _v_tile  # noqa: E402

LOG2E = 1.4426950408889634


@gluon.jit
def _issue_kv(k_desc, v_desc, k_smem, v_smem, ready, idx_base, t, cnt, kv_row0, v_row0,
              BN: gl.constexpr, STAGES: gl.constexpr, FP8: gl.constexpr):
    """TMA of tile t's keys and values into ring slot t % STAGES (nothing past the row's kept count). In fp8, v
    is stored transposed ([D, N] per head: the fp8 product reads its second operand key-major)."""
    ok = t < cnt
    kb = gl.load(idx_base + gl.minimum(t, cnt - 1))
    slot = t % STAGES
    bar = ready.index(slot)
    mbarrier.expect(bar, k_desc.block_type.nbytes + v_desc.block_type.nbytes, pred=ok)
    _tma_load(k_desc, [kv_row0 + kb * BN, 0], bar, k_smem.index(slot), pred=ok)
    if FP8:
        _tma_load(v_desc, [v_row0, kb * BN], bar, v_smem.index(slot), pred=ok)
    else:
        _tma_load(v_desc, [kv_row0 + kb * BN, 0], bar, v_smem.index(slot), pred=ok)


@gluon.jit
def _scaled(s, scale, FP8: gl.constexpr):
    """Logits times their scale: one per row in fp8, one number otherwise."""
    if FP8:
        return s * gl.expand_dims(scale, 1)
    else:
        return s * scale


@gluon.jit
def _masked(s, kb, kv_len, BN: gl.constexpr, s_layout: gl.constexpr):
    """Logits of keys at or past kv_len to -inf (only the last kept block can hold any)."""
    if (kb + 1) * BN > kv_len:
        cols = kb * BN + gl.arange(0, BN, layout=gl.SliceLayout(0, s_layout))
        s = gl.where(gl.expand_dims(cols < kv_len, 0), s, float("-inf"))
    return s


@gluon.jit
def _exp2_poly(x):
    """2^x on the FMA units, not the multi-function unit: x = n + f (n rounded by adding 1.5 * 2^23, f in
    [-0.5, 0.5]), 2^f by a degree-2 polynomial (max relative error 1.7e-3, far below e4m3's 6%; coefficients a
    relative-error minimax fit), n added to its exponent bits (1.5 * 2^23's own bits vanish in the shift).
    x is clamped at -125 so that the result stays a normal float; -inf gives ~2e-38, zero in e4m3."""
    x = gl.maximum(x, -125.0)
    t = x + 12582912.0
    f = x - (t - 12582912.0)
    p = 1.0004431503620639 + f * (0.7034480804030778 + f * 0.23842891953970397)
    return (p.to(gl.int32, bitcast=True) + (t.to(gl.int32, bitcast=True) << 23)).to(gl.float32, bitcast=True)


@gluon.jit
def _exp2_weights(x, POLY: gl.constexpr):
    """2^x of a tile of logits; with POLY, every other column's on the FMA units (the fp8 softmax is bound by the
    multi-function unit's 16 exp2 a cycle: RESULTS.md, issue 14 item 3)."""
    if POLY:
        rows: gl.constexpr = x.shape[0]
        cols: gl.constexpr = x.shape[1]
        even, odd = x.reshape([rows, cols // 2, 2]).split()
        # the join's layout holds the same elements in each thread, in another register order: no data moves
        return gl.convert_layout(gl.join(gl.exp2(even), _exp2_poly(odd)).reshape([rows, cols]), x.type.layout)
    else:
        return gl.exp2(x)


@gluon.jit
def _bsa_fwd_gluon(q_desc, k_desc, v_desc, O, IDX, CNT, KVLEN, SQ, SK, SV, qk_scale, N, N_PAD, n_qb, max_kb, H,
                   BM: gl.constexpr, BN: gl.constexpr, D: gl.constexpr, STAGES: gl.constexpr,
                   FP8: gl.constexpr, Q_GROUP: gl.constexpr, NO_SOFTMAX: gl.constexpr, POLY: gl.constexpr,
                   num_warps: gl.constexpr):
    pid_m = gl.program_id(0)
    bh = gl.program_id(1)
    b = bh // H
    q_row0 = bh * N_PAD + pid_m * BM  # fp8 copies are padded to N_PAD tokens a head; bf16: N_PAD == N
    kv_row0 = bh * N_PAD
    v_row0 = bh * D  # fp8: the transposed v's first row of this head
    kv_len = gl.load(KVLEN + b)
    idx_base = IDX + (bh * n_qb + pid_m) * max_kb
    cnt = gl.load(CNT + bh * n_qb + pid_m)  # >= 1: the caller keeps the diagonal block
    k_base = bh * (N_PAD // BN)

    K_INSTR: gl.constexpr = 32 if FP8 else 16  # wgmma's k per instruction: 256 bits of the operand type
    s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                       instr_shape=[16, BN, K_INSTR])
    o_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                       instr_shape=[16, D, K_INSTR])
    p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=K_INSTR // 8)
    dtype: gl.constexpr = q_desc.dtype
    p_dtype: gl.constexpr = gl.float8e4nv if FP8 else dtype
    # fp8: weights times 448 (log2 448 subtracted from the max): e4m3's whole range for the product with v
    P_SHIFT: gl.constexpr = 8.807354922057604 if FP8 else 0.0
    if FP8:  # each row's q scale folds into its logits' scale
        rows_s = pid_m * BM + gl.arange(0, BM, layout=gl.SliceLayout(1, s_layout))
        qk_scale = qk_scale * gl.load(SQ + bh * (N_PAD // Q_GROUP) + rows_s // Q_GROUP)

    q_smem = gl.allocate_shared_memory(dtype, [BM, D], q_desc.layout)
    k_smem = gl.allocate_shared_memory(dtype, [STAGES, BN, D], k_desc.layout)
    v_smem = gl.allocate_shared_memory(dtype, [STAGES] + v_desc.block_type.shape, v_desc.layout)
    ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    q_bar = gl.allocate_shared_memory(gl.int64, [1, 1], mbarrier.MBarrierLayout())
    for s in gl.static_range(STAGES):
        mbarrier.init(ready.index(s), count=1)
    mbarrier.init(q_bar.index(0), count=1)

    mbarrier.expect(q_bar.index(0), q_desc.block_type.nbytes)
    _tma_load(q_desc, [q_row0, 0], q_bar.index(0), q_smem)
    for t in gl.static_range(STAGES):  # every slot filled; each later one refills as soon as its P.V is done
        _issue_kv(k_desc, v_desc, k_smem, v_smem, ready, idx_base, t, cnt, kv_row0, v_row0, BN, STAGES, FP8)
    mbarrier.wait(q_bar.index(0), 0)

    # tile 0: its logits and weights; P.V follows in the next iteration (or after the loop)
    zero_s = gl.zeros([BM, BN], gl.float32, s_layout)
    mbarrier.wait(ready.index(0), 0)
    s_tok = warpgroup_mma(q_smem, k_smem.index(0).permute((1, 0)), zero_s, use_acc=False, is_async=True)
    s = warpgroup_mma_wait(0, deps=[s_tok])
    kb = gl.load(idx_base)
    s = _masked(s, kb, kv_len, BN, s_layout)
    s = _scaled(s, _tile_scale(qk_scale, SK, k_base, kb, FP8), FP8)
    m_i = gl.max(s, axis=1)
    p = _exp2_weights(s - gl.expand_dims(m_i - P_SHIFT, 1), POLY)
    l_i = gl.sum(p, axis=1)
    acc = gl.zeros([BM, D], gl.float32, o_layout)

    for j in range(1, cnt):
        slot = j % STAGES
        prev = (j - 1) % STAGES
        mbarrier.wait(ready.index(slot), (j // STAGES) & 1)
        s_tok = warpgroup_mma(q_smem, k_smem.index(slot).permute((1, 0)), zero_s, use_acc=False, is_async=True)
        p_op = gl.convert_layout(p.to(p_dtype), p_layout)
        acc_tok = warpgroup_mma(p_op, _v_tile(v_smem, prev, FP8), acc, is_async=True)
        s = warpgroup_mma_wait(1, deps=[s_tok])  # tile j's logits; tile j-1's P.V still running
        kb = gl.load(idx_base + j)
        s = _masked(s, kb, kv_len, BN, s_layout)
        if NO_SOFTMAX:  # ablation (timing only): the weights are the logits, no max, exp or rescale
            p = s
            acc = warpgroup_mma_wait(0, deps=[acc_tok])
        else:
            s = _scaled(s, _tile_scale(qk_scale, SK, k_base, kb, FP8), FP8)
            m_new = gl.maximum(m_i, gl.max(s, axis=1))
            alpha = gl.exp2(m_i - m_new)
            p = _exp2_weights(s - gl.expand_dims(m_new - P_SHIFT, 1), POLY)
            l_i = l_i * alpha + gl.sum(p, axis=1)
            m_i = m_new
            acc = warpgroup_mma_wait(0, deps=[acc_tok])
            acc = acc * gl.expand_dims(gl.convert_layout(alpha, gl.SliceLayout(1, o_layout)), 1)
        # slot prev is free (its P.V is done): the tile STAGES ahead of it goes there
        _issue_kv(k_desc, v_desc, k_smem, v_smem, ready, idx_base, j - 1 + STAGES, cnt, kv_row0, v_row0, BN, STAGES,
                  FP8)

    last = (cnt - 1) % STAGES
    p_op = gl.convert_layout(p.to(p_dtype), p_layout)
    acc_tok = warpgroup_mma(p_op, _v_tile(v_smem, last, FP8), acc, is_async=True)
    acc = warpgroup_mma_wait(0, deps=[acc_tok])
    l_o = gl.convert_layout(l_i, gl.SliceLayout(1, o_layout))
    acc = acc / gl.expand_dims(l_o, 1)
    cols = gl.arange(0, D, layout=gl.SliceLayout(0, o_layout))
    if FP8:  # v's per-channel scales
        acc = acc * gl.expand_dims(gl.load(SV + bh * D + cols), 0)

    for s in gl.static_range(STAGES):
        mbarrier.invalidate(ready.index(s))
    mbarrier.invalidate(q_bar.index(0))
    rows = pid_m * BM + gl.arange(0, BM, layout=gl.SliceLayout(1, o_layout))
    ptrs = O + (bh * N + gl.expand_dims(rows, 1)) * D + gl.expand_dims(cols, 0)
    gl.store(ptrs, acc.to(O.dtype.element_ty), mask=gl.expand_dims(rows < N, 1))


BM, BN, STAGES, WARPS = 128, 128, 3, 8


def _layout(block: list[int], dtype) -> gl.NVMMASharedLayout:
    return gl.NVMMASharedLayout.get_default_for(block, dtype)


# the package's warp-specialized kernel (bf16 only); one partition of 8 warps; the same with half the softmax's
# exponentials as a polynomial on the FMA units
VARIANTS = ("ws", "overlap", "poly")


def gluon_block_sparse_attention(q, k, v, idx, cnt, kv_len, scale=None, precision: str = "native",
                                 variant: str = "ws", stages: int = STAGES, no_softmax: bool = False):
    """q, k, v [B, H, N, D] bf16 contiguous; idx [B*H, QB, KB] int32 kept key blocks ascending, cnt [B*H, QB] >= 1;
    ``precision="fp8"``: both products in e4m3 on the package's fp8 copies (as ``precision="fp8"`` of the Triton
    kernel: q one scale per 16 tokens, k centred with one per 128 keys, v one per channel, stored transposed)."""
    from xattn_video.kernels.quantize import quantize_channels_fp8, quantize_rows
    from xattn_video.kernels.reference import ATTENTION_GROUP

    if variant == "ws":  # the package's kernel (FA3's layout), one key range: idx / cnt as a mask
        from xattn_video.block_mask import BlockSparseMask
        from xattn_video.kernels.block_sparse_attention_gluon import block_sparse_attention_gluon
        if precision != "native" or stages != STAGES:
            raise ValueError("the package's warp-specialized kernel runs native precision, 3 stages")
        mask = BlockSparseMask(idx.view(1, *idx.shape), cnt.view(1, *cnt.shape), BN, q.shape[2], kv_len)
        return block_sparse_attention_gluon(q, k, v, mask, scale, key_splits=1)
    b, h, n, d = q.shape
    out = torch.empty_like(q)
    qb = triton.cdiv(n, BM)
    fp8 = precision == "fp8"
    if fp8:
        q, sq = quantize_rows(q, ATTENTION_GROUP)
        k, sk = quantize_rows(k, BN, kv_len, center=True)
        v, sv = quantize_channels_fp8(v, kv_len)  # [B, H, D, N_pad]
        n_pad, kind = q.shape[2], gl.float8e4nv
        v_desc = TensorDescriptor.from_tensor(v.reshape(-1, n_pad), [d, BN], _layout([d, BN], kind))
    else:
        sq = sk = sv = kv_len  # never read
        n_pad, kind = n, gl.bfloat16
        v_desc = TensorDescriptor.from_tensor(v.reshape(-1, d), [BN, d], _layout([BN, d], kind))
    q_desc = TensorDescriptor.from_tensor(q.reshape(-1, d), [BM, d], _layout([BM, d], kind))
    k_desc = TensorDescriptor.from_tensor(k.reshape(-1, d), [BN, d], _layout([BN, d], kind))
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    _bsa_fwd_gluon[(qb, b * h)](q_desc, k_desc, v_desc, out, idx, cnt, kv_len, sq, sk, sv, scale * LOG2E, n, n_pad,
                                qb, idx.shape[-1], h, BM=BM, BN=BN, D=d, STAGES=stages, FP8=fp8, Q_GROUP=16,
                                NO_SOFTMAX=no_softmax, POLY=variant == "poly", num_warps=WARPS)
    return out


def compile_only(precision: str, poly: bool = False) -> dict:
    """Build the single-partition kernel for sm_90a on this machine (no GPU): PTX, registers, the wgmma waits in
    the loop, its exp2 count. (The package's warp-specialized kernel has its own build test,
    tests/test_kernels_gluon.py.)"""
    import re

    from triton.runtime.jit import MockTensor

    from xattn_video.kernels.block_sparse_attention_gluon import build_for_sm90

    d, n, fp8 = 128, 4096, precision == "fp8"
    kind, torch_kind = (gl.float8e4nv, torch.float8_e4m3fn) if fp8 else (gl.bfloat16, torch.bfloat16)
    qk = [TensorDescriptor(MockTensor(torch_kind, [n, d]), [n, d], [d, 1], [BM, d], _layout([BM, d], kind))
          for _ in range(2)]
    v_block = [d, BN] if fp8 else [BN, d]
    v_shape = [d, n] if fp8 else [n, d]
    v = TensorDescriptor(MockTensor(torch_kind, v_shape), v_shape, [v_shape[1], 1], v_block, _layout(v_block, kind))
    f32, i32 = MockTensor(torch.float32), MockTensor(torch.int32)
    args = (*qk, v, MockTensor(torch.bfloat16), i32, i32, i32, f32, f32, f32, 0.1, n, n, 32, 32, 24)
    constants = dict(BM=BM, BN=BN, D=d, STAGES=STAGES, FP8=fp8, Q_GROUP=16, NO_SOFTMAX=False, POLY=poly,
                     num_warps=WARPS)
    info = build_for_sm90(_bsa_fwd_gluon, args, constants)
    ptx = info["ptx"]
    return {"precision": precision, "poly": poly, "wgmma": len(re.findall(r"wgmma\.mma_async", ptx)),
            "ex2": len(re.findall(r"ex2\.approx", ptx)),
            "wait_group": sorted(set(re.findall(r"wgmma\.wait_group\.sync\.aligned (\d+)", ptx))),
            "shared_bytes": info["shared"],
            "ptxas": " ".join(line.strip() for line in info["ptxas"].splitlines()
                              if "registers" in line or "spill" in line)}

CASES = {"small": (1000, 0.5, 2), "4k": (4096, 0.3, 4), "544p": (67_576, 0.3, 24), "544p_015": (67_576, 0.15, 24),
         "720p": (119_056, 0.3, 24), "720p_015": (119_056, 0.15, 24)}  # tokens, density, heads


def check_and_time(out_path: str | None, cases: list[str], precisions: list[str], variants: list[str]) -> dict:
    """Each case, precision and variant (``name:stages``): the Gluon kernel against the Triton kernel in the same
    precision (max abs., rel. L2; and against the float32 reference where small), then timed beside it."""
    from xattn_video.block_mask import BlockSparseMask
    from xattn_video.kernels.block_sparse_attention import block_sparse_attention_triton
    from xattn_video.kernels.reference import block_sparse_attention_reference

    result: dict = {"device": torch.cuda.get_device_name(), "triton": triton.__version__, "cases": []}
    for name in cases:
        n, density, h = CASES[name]
        g = torch.Generator(device="cuda").manual_seed(n)
        q, k, v = (torch.randn(1, h, n, 128, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(3))
        qb = triton.cdiv(n, 128)
        keep = torch.rand(1, h, qb, qb, device="cuda", generator=g) < density
        keep |= torch.eye(qb, dtype=torch.bool, device="cuda")
        kv_len = torch.tensor([n - 37], device="cuda", dtype=torch.int32)
        mask = BlockSparseMask.from_dense(keep, 128, n, kv_len)
        idx = mask.kv_indices.reshape(h, qb, -1).to(torch.int32).contiguous()
        cnt = mask.kv_counts.reshape(h, qb).to(torch.int32).contiguous()
        flops = 4.0 * n * n * 128 * h * mask.density()
        for precision in precisions:
            case = {"case": name, "n": n, "heads": h, "density": mask.density(), "precision": precision,
                    "min_count": int(cnt.min())}
            triton_fn = lambda: block_sparse_attention_triton(q, k, v, mask, precision=precision)  # noqa: E731
            base = triton_fn()
            ref = None
            if n <= 4096:
                ref = block_sparse_attention_reference(q.float(), k.float(), v.float(), mask)
                case["triton_rel_l2_vs_reference"] = float((base.float() - ref).norm() / ref.norm())
            timed = [("triton", triton_fn)]
            for spec in variants:
                variant, stages = spec.split(":")
                fn = lambda variant=variant, stages=int(stages): gluon_block_sparse_attention(  # noqa: E731
                    q, k, v, idx, cnt, kv_len, precision=precision, variant=variant, stages=stages)
                try:  # a failing variant (e.g. a ring too deep for shared memory) is reported alone
                    t0 = time.perf_counter()
                    out = fn()
                    torch.cuda.synchronize()
                    case[f"{spec}_first_call_s"] = time.perf_counter() - t0
                    case[f"{spec}_max_abs_vs_triton"] = float((out.float() - base.float()).abs().max())
                    case[f"{spec}_rel_l2_vs_triton"] = float((out.float() - base.float()).norm() / base.float().norm())
                    if ref is not None:
                        case[f"{spec}_rel_l2_vs_reference"] = float((out.float() - ref).norm() / ref.norm())
                    timed.append((spec, fn))
                except Exception as e:  # noqa: BLE001
                    case[f"{spec}_error"] = f"{type(e).__name__}: {str(e)[:300]}"
            for label, fn in timed:
                ms = triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median")
                case[f"{label}_ms"], case[f"{label}_tflops"] = ms, flops / ms / 1e9
            result["cases"].append(case)
            print(json.dumps(case), flush=True)
            if out_path:
                Path(out_path).write_text(json.dumps(result, indent=1))
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--compile-only", action="store_true", help="build PTX for sm_90a on a CPU, no GPU needed")
    ap.add_argument("--cases", default="small,4k,720p", help=f"comma-separated: {', '.join(CASES)}")
    ap.add_argument("--precisions", default="native,fp8", help="comma-separated: native (bf16), fp8")
    ap.add_argument("--variants", default="ws:3,overlap:3",
                    help=f"comma-separated name:ring depth, names {', '.join(VARIANTS)}")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.compile_only:
        print(json.dumps([compile_only(p, poly) for p in args.precisions.split(",") for poly in (False, True)],
                         indent=1))
    else:
        check_and_time(args.out, args.cases.split(","), args.precisions.split(","), args.variants.split(","))


if __name__ == "__main__":
    main()
