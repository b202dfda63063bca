"""Experiment (issue 14 item 1): the block-sparse attention forward in Gluon, with FlashAttention-3's overlap
inside one program, against the shipped Triton kernel. Not part of the package.

Plain Triton waits for each tensor-core product before its first use (RESULTS.md: a software-pipelined
`tl.dot` loop gained nothing). Gluon (Triton 3.6's lower-level dialect) lets the kernel place the wait: each
iteration issues Q.K^T of tile j and P.V of tile j-1 asynchronously, waits for the first only, runs tile j's
softmax while P.V runs, then waits for P.V. K / V tiles arrive by TMA into a ring of STAGES slots, tiles ahead.
One tile per kept 128-key block; bf16; 8 warps over 128 query rows. Gluon kernels do not run under the CPU
interpreter: ``--compile-only`` builds PTX for sm_90a on a CPU (Triton 3.6's bundled ptxas) and reports the
wgmma waits and registers; on a GPU the script checks the output against the Triton kernel and times both.

    python benchmarks/gluon_bsa.py --compile-only             # CPU, triton 3.6
    python benchmarks/gluon_bsa.py --out $OUT/gluon.json      # GPU: check + time at 720p, density 0.3
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

LOG2E = 1.4426950408889634


@gluon.jit
def _issue_kv(k_desc, v_desc, k_smem, v_smem, ready, idx_base, t, cnt, kv_row0,
              BN: gl.constexpr, STAGES: gl.constexpr):
    """TMA of tile t's keys and values into ring slot t % STAGES (nothing past the row's kept count)."""
    ok = t < cnt
    kb = gl.load(idx_base + gl.minimum(t, cnt - 1))
    slot = t % STAGES
    bar = ready.index(slot)
    mbarrier.expect(bar, k_desc.block_type.nbytes + v_desc.block_type.nbytes, pred=ok)
    tma.async_copy_global_to_shared(k_desc, [kv_row0 + kb * BN, 0], bar, k_smem.index(slot), pred=ok)
    tma.async_copy_global_to_shared(v_desc, [kv_row0 + kb * BN, 0], bar, v_smem.index(slot), pred=ok)


@gluon.jit
def _masked(s, kb, kv_len, BN: gl.constexpr, s_layout: gl.constexpr):
    """Logits of keys at or past kv_len to -inf (only the last kept block can hold any)."""
    if (kb + 1) * BN > kv_len:
        cols = kb * BN + gl.arange(0, BN, layout=gl.SliceLayout(0, s_layout))
        s = gl.where(gl.expand_dims(cols < kv_len, 0), s, float("-inf"))
    return s


@gluon.jit
def _bsa_fwd_gluon(q_desc, k_desc, v_desc, O, IDX, CNT, KVLEN, qk_scale, N, n_qb, max_kb, H,
                   BM: gl.constexpr, BN: gl.constexpr, D: gl.constexpr, STAGES: gl.constexpr,
                   num_warps: gl.constexpr):
    pid_m = gl.program_id(0)
    bh = gl.program_id(1)
    b = bh // H
    q_row0 = bh * N + pid_m * BM
    kv_row0 = bh * N
    kv_len = gl.load(KVLEN + b)
    idx_base = IDX + (bh * n_qb + pid_m) * max_kb
    cnt = gl.load(CNT + bh * n_qb + pid_m)  # >= 1: the caller keeps the diagonal block

    s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                       instr_shape=[16, BN, 16])
    o_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                       instr_shape=[16, D, 16])
    p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
    dtype: gl.constexpr = q_desc.dtype

    q_smem = gl.allocate_shared_memory(dtype, [BM, D], q_desc.layout)
    k_smem = gl.allocate_shared_memory(dtype, [STAGES, BN, D], k_desc.layout)
    v_smem = gl.allocate_shared_memory(dtype, [STAGES, BN, D], v_desc.layout)
    ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    q_bar = gl.allocate_shared_memory(gl.int64, [1, 1], mbarrier.MBarrierLayout())
    for s in gl.static_range(STAGES):
        mbarrier.init(ready.index(s), count=1)
    mbarrier.init(q_bar.index(0), count=1)

    mbarrier.expect(q_bar.index(0), q_desc.block_type.nbytes)
    tma.async_copy_global_to_shared(q_desc, [q_row0, 0], q_bar.index(0), q_smem)
    for t in gl.static_range(STAGES):  # every slot filled; each later one refills as soon as its P.V is done
        _issue_kv(k_desc, v_desc, k_smem, v_smem, ready, idx_base, t, cnt, kv_row0, BN, STAGES)
    mbarrier.wait(q_bar.index(0), 0)

    # tile 0: its logits and weights; P.V follows in the next iteration (or after the loop)
    zero_s = gl.zeros([BM, BN], gl.float32, s_layout)
    mbarrier.wait(ready.index(0), 0)
    s_tok = warpgroup_mma(q_smem, k_smem.index(0).permute((1, 0)), zero_s, use_acc=False, is_async=True)
    s = warpgroup_mma_wait(0, deps=[s_tok])
    kb = gl.load(idx_base)
    s = _masked(s, kb, kv_len, BN, s_layout)
    m_i = gl.max(s, axis=1) * qk_scale
    p = gl.exp2(s * qk_scale - gl.expand_dims(m_i, 1))
    l_i = gl.sum(p, axis=1)
    acc = gl.zeros([BM, D], gl.float32, o_layout)

    for j in range(1, cnt):
        slot = j % STAGES
        prev = (j - 1) % STAGES
        mbarrier.wait(ready.index(slot), (j // STAGES) & 1)
        s_tok = warpgroup_mma(q_smem, k_smem.index(slot).permute((1, 0)), zero_s, use_acc=False, is_async=True)
        p_op = gl.convert_layout(p.to(dtype), p_layout)
        acc_tok = warpgroup_mma(p_op, v_smem.index(prev), acc, is_async=True)
        s = warpgroup_mma_wait(1, deps=[s_tok])  # tile j's logits; tile j-1's P.V still running
        kb = gl.load(idx_base + j)
        s = _masked(s, kb, kv_len, BN, s_layout)
        m_new = gl.maximum(m_i, gl.max(s, axis=1) * qk_scale)
        alpha = gl.exp2(m_i - m_new)
        p = gl.exp2(s * qk_scale - gl.expand_dims(m_new, 1))
        l_i = l_i * alpha + gl.sum(p, axis=1)
        m_i = m_new
        acc = warpgroup_mma_wait(0, deps=[acc_tok])
        acc = acc * gl.expand_dims(gl.convert_layout(alpha, gl.SliceLayout(1, o_layout)), 1)
        # slot prev is free (its P.V is done): the tile STAGES ahead of it goes there
        _issue_kv(k_desc, v_desc, k_smem, v_smem, ready, idx_base, j - 1 + STAGES, cnt, kv_row0, BN, STAGES)

    last = (cnt - 1) % STAGES
    p_op = gl.convert_layout(p.to(dtype), p_layout)
    acc_tok = warpgroup_mma(p_op, v_smem.index(last), acc, is_async=True)
    acc = warpgroup_mma_wait(0, deps=[acc_tok])
    l_o = gl.convert_layout(l_i, gl.SliceLayout(1, o_layout))
    acc = acc / gl.expand_dims(l_o, 1)

    for s in gl.static_range(STAGES):
        mbarrier.invalidate(ready.index(s))
    mbarrier.invalidate(q_bar.index(0))
    rows = pid_m * BM + gl.arange(0, BM, layout=gl.SliceLayout(1, o_layout))
    cols = gl.arange(0, D, layout=gl.SliceLayout(0, o_layout))
    ptrs = O + (bh * N + gl.expand_dims(rows, 1)) * D + gl.expand_dims(cols, 0)
    gl.store(ptrs, acc.to(dtype), mask=gl.expand_dims(rows < N, 1))


BM, BN, STAGES, WARPS = 128, 128, 3, 8


def descriptors(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
    """TMA descriptors over [B*H*N, D] views (rows past a head's end belong to the next head: masked or unused)."""
    d = q.shape[-1]
    layout = gl.NVMMASharedLayout.get_default_for([BM, d], gl.bfloat16)
    flat = [x.reshape(-1, d) for x in (q, k, v)]
    return [TensorDescriptor.from_tensor(x, [BM if i == 0 else BN, d], layout) for i, x in enumerate(flat)]


def gluon_block_sparse_attention(q, k, v, idx, cnt, kv_len, scale=None):
    """q, k, v [B, H, N, D] bf16 contiguous; idx [B*H, QB, KB] int32 kept key blocks ascending, cnt [B*H, QB] >= 1."""
    b, h, n, d = q.shape
    out = torch.empty_like(q)
    q_desc, k_desc, v_desc = descriptors(q, k, v)
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    qb = triton.cdiv(n, BM)
    _bsa_fwd_gluon[(qb, b * h)](q_desc, k_desc, v_desc, out, idx, cnt, kv_len, scale * LOG2E, n, qb, idx.shape[-1], h,
                                BM=BM, BN=BN, D=d, STAGES=STAGES, num_warps=WARPS)
    return out


def compile_only() -> dict:
    """Build the kernel for sm_90a on this machine (no GPU): PTX, registers, the wgmma waits in the loop."""
    import re
    import subprocess
    import tempfile

    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend
    from triton.experimental.gluon._runtime import GluonASTSource
    from triton.runtime.jit import MockTensor, create_function_from_signature

    target = GPUTarget("cuda", 90, 32)
    backend = make_backend(target)
    d = 128
    layout = gl.NVMMASharedLayout.get_default_for([BM, d], gl.bfloat16)
    descs = [TensorDescriptor(MockTensor(torch.bfloat16, [4096, d]), [4096, d], [d, 1], [BM, d], layout)
             for _ in range(3)]
    args = (*descs, MockTensor(torch.bfloat16), MockTensor(torch.int32), MockTensor(torch.int32),
            MockTensor(torch.int32), 0.1, 4096, 32, 32, 24)
    fn = _bsa_fwd_gluon
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    bound, spec, opts = binder(*args, BM=BM, BN=BN, D=d, STAGES=STAGES, num_warps=WARPS)
    options, sig, cexprs, attrs = fn._pack_args(backend, dict(BM=BM, BN=BN, D=d, STAGES=STAGES, num_warps=WARPS),
                                                bound, spec, opts)
    k = triton.compile(GluonASTSource(fn, sig, cexprs, attrs), target=target, options=options.__dict__)
    ptx = k.asm["ptx"]
    info = {"wgmma": len(re.findall(r"wgmma\.mma_async", ptx)),
            "wait_group": sorted(set(re.findall(r"wgmma\.wait_group\.sync\.aligned (\d+)", ptx))),
            "shared_bytes": k.metadata.shared}
    ptxas = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "gluon_bsa.ptx"
        src.write_text(ptx)
        res = subprocess.run([str(ptxas), "-arch=sm_90a", "-v", str(src), "-o", str(Path(tmp) / "gluon_bsa.cubin")],
                             capture_output=True, text=True)
    info["ptxas"] = " ".join(line.strip() for line in res.stderr.splitlines() if "registers" in line or "spill" in line)
    return info


CASES = {"small": (1000, 0.5, 2), "4k": (4096, 0.3, 4), "720p": (119_056, 0.3, 24)}  # tokens, density, heads


def check_and_time(out_path: str | None, cases: list[str]) -> dict:
    from xattn_video.block_mask import BlockSparseMask
    from xattn_video.kernels.block_sparse_attention import block_sparse_attention_triton
    from xattn_video.kernels.reference import block_sparse_attention_reference

    result: dict = {"device": torch.cuda.get_device_name(), "triton": triton.__version__, "cases": []}
    for n, density, h in (CASES[c] for c in cases):
        g = torch.Generator(device="cuda").manual_seed(n)
        q, k, v = (torch.randn(1, h, n, 128, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(3))
        qb = triton.cdiv(n, 128)
        keep = torch.rand(1, h, qb, qb, device="cuda", generator=g) < density
        keep |= torch.eye(qb, dtype=torch.bool, device="cuda")
        kv_len = torch.tensor([n - 37], device="cuda")
        keep[..., (n - 37 + 127) // 128:] = False
        keep[..., torch.arange(qb), torch.arange(qb)] |= torch.arange(qb, device="cuda") * 128 < n - 37
        mask = BlockSparseMask.from_dense(keep, 128, n, kv_len)
        idx = mask.kv_indices.reshape(h, qb, -1).to(torch.int32).contiguous()
        cnt = mask.kv_counts.reshape(h, qb).to(torch.int32).contiguous()
        case = {"n": n, "heads": h, "density": mask.density(), "min_count": int(cnt.min())}
        try:
            t0 = time.perf_counter()
            out = gluon_block_sparse_attention(q, k, v, idx, cnt, kv_len.to(torch.int32))
            torch.cuda.synchronize()
            case["first_call_s"] = time.perf_counter() - t0
            base = block_sparse_attention_triton(q, k, v, mask)
            valid = cnt.reshape(1, h, qb, 1).repeat_interleave(128, 2)[:, :, :n] > 0
            diff = (out.float() - base.float()).abs().masked_select(valid)
            case["max_abs_vs_triton"] = float(diff.max())
            case["rel_l2_vs_triton"] = float((out.float() - base.float()).norm() / base.float().norm())
            if n <= 4096:
                ref = block_sparse_attention_reference(q.float(), k.float(), v.float(), mask)
                case["max_abs_vs_reference"] = float((out.float() - ref).abs().max())
            flops = 4.0 * n * n * 128 * h * mask.density()
            for name, fn in (("gluon", lambda: gluon_block_sparse_attention(q, k, v, idx, cnt, kv_len.to(torch.int32))),
                             ("triton", lambda: block_sparse_attention_triton(q, k, v, mask))):
                ms = triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median")
                case[f"{name}_ms"], case[f"{name}_tflops"] = ms, flops / ms / 1e9
        except Exception as e:  # noqa: BLE001 - report and go on to the next case
            case["error"] = f"{type(e).__name__}: {str(e)[:600]}"
        result["cases"].append(case)
        print(json.dumps(case), flush=True)
        if out_path:
            Path(out_path).write_text(json.dumps(result, indent=1))
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--compile-only", action="store_true", help="build PTX for sm_90a on a CPU, no GPU needed")
    ap.add_argument("--cases", default="small,4k,720p", help=f"comma-separated: {', '.join(CASES)}")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.compile_only:
        print(json.dumps(compile_only(), indent=1))
    else:
        check_and_time(args.out, args.cases.split(","))


if __name__ == "__main__":
    main()
