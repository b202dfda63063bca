"""The Hopper (Gluon) attention kernel: its build for sm_90a and its key ranges on the CPU; its output against the
reference twin on a Hopper GPU (Gluon has no CPU interpreter: those tests run where one is present, e.g. the
GPU machine's ``TRITON_INTERPRET=0 python -m pytest tests/test_kernels_gluon.py``)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
import torch

from xattn_video.block_mask import BlockSparseMask
from xattn_video.kernels import block_sparse_attention_gluon as bsg
from xattn_video.kernels.block_sparse_attention import block_sparse_attention_triton, interpreting
from xattn_video.kernels.reference import block_sparse_attention_reference

needs_gluon = pytest.mark.skipif(bsg.GLUON_IMPORT_ERROR is not None, reason=str(bsg.GLUON_IMPORT_ERROR))
HOPPER = torch.cuda.is_available() and torch.cuda.get_device_capability()[0] == 9 and not interpreting()
needs_hopper = pytest.mark.skipif(not HOPPER or bsg.GLUON_IMPORT_ERROR is not None,
                                  reason="needs a Hopper GPU, Triton >= 3.6 and TRITON_INTERPRET=0")


def _build_for_sm90(dtype: torch.dtype, first: bool, last: bool) -> dict:
    """The kernel built for sm_90a on this machine (no GPU): its waits, register counts, shared memory, spills,
    products. ``torch.float8_e4m3fn``: the fp8 kernel (bf16 output). Run outside Triton's interpreter (this
    file's ``__main__``)."""
    from triton.runtime.jit import MockTensor

    fp8 = dtype == torch.float8_e4m3fn
    kind = {torch.bfloat16: bsg.gl.bfloat16, torch.float16: bsg.gl.float16}.get(dtype, bsg.gl.float8e4nv)
    t, f32, i32 = MockTensor(dtype), MockTensor(torch.float32), MockTensor(torch.int32)
    out = MockTensor(torch.bfloat16) if fp8 else t
    # 11 pointers, scale, (fp8: 3 scale pointers, scales a head), 12 tensor strides, 7 mask strides (s_ik = 1: a
    # constant to Triton), H, N, QB, items
    args = (t, t, t, out, f32, i32, i32, i32, i32, i32, i32, 0.1) + ((f32, f32, f32, 256, 32) if fp8 else ())
    args += (1000, 128, 128) * 4 + (500, 100, 50, 1, 30, 10, 1) + (24, 4096, 32, 768)
    constants = dict(FIRST=first, LAST=last, Q_LAYOUT=bsg.gl.NVMMASharedLayout.get_default_for([64, 128], kind),
                     KV_LAYOUT=bsg.gl.NVMMASharedLayout.get_default_for([128, 128], kind), num_warps=4, maxnreg=168)
    info = bsg.build_for_sm90(bsg._bsa_fwd_ws_fp8 if fp8 else bsg._bsa_fwd_ws, args, constants)
    ptx = info["ptx"]
    return {"waits": sorted(set(re.findall(r"wgmma\.wait_group\.sync\.aligned (\d+)", ptx))),
            "products": sorted(set(re.findall(r"wgmma\.mma_async\.sync\.aligned\.(\w+\.f32\.\w+\.\w+)", ptx))),
            "regs": sorted({int(r) for r in re.findall(r"setmaxnreg\.\w+\.sync\.aligned\.u32\s+(\d+)", ptx)}),
            "shared": info["shared"],
            "spill": int(re.search(r"(\d+) bytes spill stores", info["ptxas"]).group(1))}


@needs_gluon
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float8_e4m3fn])
@pytest.mark.parametrize("first,last", [(True, True), (True, False), (False, True)])
def test_builds_for_hopper_with_the_overlap(dtype, first, last):
    """The kernel (a single key range; the first of several; a later one) builds for sm_90a: tile j's logits are
    awaited while tile j-1's P.V runs (wait_group 1), the partitions get 240 / 24 registers, the ring fits the
    227 KB of shared memory, and its spills stay a few words (a block's loop has none: seen in its SASS); the
    fp8 kernel's products are e4m3 ones (k = 32 a instruction)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # the interpreter swaps Triton's jit
    res = subprocess.run([sys.executable, __file__, str(dtype).split(".")[-1], str(int(first)), str(int(last))],
                         capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    info = json.loads(res.stdout.strip().splitlines()[-1])
    assert {"0", "1"} <= set(info["waits"])
    assert {240, 24} <= set(info["regs"])
    assert info["shared"] <= 232448 - 1024
    # a work item's scalars (offsets) spill a few words outside the loop; a later range reloads the output
    # before its loop: those loads spill more, outside the loop too
    assert info["spill"] <= (128 if first else 2048)
    want = {torch.bfloat16: "m64n128k16.f32.bf16.bf16", torch.float16: "m64n128k16.f32.f16.f16",
            torch.float8_e4m3fn: "m64n128k32.f32.e4m3.e4m3"}[dtype]
    assert info["products"] == [want]


def _random_mask(gen, b, h, n, n_k, bs, density, kv_len, empty_rows=False):
    qb, kb = -(-n // bs), -(-n_k // bs)
    keep = torch.rand(b, h, qb, kb, generator=gen) < density
    keep[..., : min(qb, kb), : min(qb, kb)] |= torch.eye(min(qb, kb), dtype=torch.bool)
    if empty_rows:
        keep[:, :, ::3] = False
    return BlockSparseMask.from_dense(keep, bs, n, kv_len)


@pytest.mark.parametrize("splits", [1, 2, 3, 5])
def test_key_ranges_partition_each_rows_blocks(splits):
    """split_rows: range r's entries of a row are exactly its kept blocks below the range's end and at or past the
    previous one, in order, and the ranges add up to the row's count."""
    gen = torch.Generator().manual_seed(splits)
    mask = _random_mask(gen, 2, 3, 900, 900, 64, 0.4, torch.tensor([900, 700]), empty_rows=True)
    n_kb = 15
    ranges = bsg.split_rows(mask.kv_indices, mask.kv_counts, n_kb, splits)
    ends = [0] + [round((r + 1) * n_kb / splits) for r in range(splits)]
    total = torch.zeros_like(mask.kv_counts)
    for r, (start, count) in enumerate(ranges):
        assert start.dtype == count.dtype == torch.int32 and start.is_contiguous()
        for row in range(mask.kv_counts.numel()):
            i = torch.unravel_index(torch.tensor(row), mask.kv_counts.shape)
            kept = mask.kv_indices[i][: int(mask.kv_counts[i])].tolist()
            got = mask.kv_indices[i][int(start[i]): int(start[i]) + int(count[i])].tolist()
            assert got == [x for x in kept if ends[r] <= x < ends[r + 1]]
        total += count
    assert torch.equal(total, mask.kv_counts.to(torch.int32))


def test_unavailable_reasons_name_the_call(monkeypatch):
    """Calls the kernel cannot take say why (the dispatcher then runs the Triton kernel)."""
    q = torch.zeros(1, 2, 256, 128, dtype=torch.bfloat16)
    mask = _random_mask(torch.Generator().manual_seed(0), 1, 2, 256, 256, 128, 0.5, torch.tensor([256]))
    assert "XATTN_GLUON_FP8" in bsg.gluon_unavailable_reason(q, q, q, mask, "fp8")  # not yet checked on a GPU
    assert "precision='int8-fp8'" in bsg.gluon_unavailable_reason(q, q, q, mask, "int8-fp8")
    assert "head_dim=64" in bsg.gluon_unavailable_reason(q[..., :64], q[..., :64], q[..., :64], mask)
    assert "dtype=torch.float32" in bsg.gluon_unavailable_reason(q.float(), q.float(), q.float(), mask)
    small = _random_mask(torch.Generator().manual_seed(0), 1, 2, 256, 256, 64, 0.5, torch.tensor([256]))
    assert "block_size=64" in bsg.gluon_unavailable_reason(q, q, q, small)
    odd = torch.zeros(1, 2, 256, 136, dtype=torch.bfloat16)[..., 4:132]
    assert "strides" in bsg.gluon_unavailable_reason(odd, q, q, mask)
    assert bsg.gluon_unavailable_reason(q, q, q, mask)  # a CPU tensor: Gluon's missing, or a Hopper GPU is
    with pytest.raises(ValueError, match="cannot run this call"):
        bsg.block_sparse_attention_gluon(q, q, q, mask, precision="fp8")
    monkeypatch.setenv("XATTN_GLUON_FP8", "1")
    assert "precision" not in bsg.gluon_unavailable_reason(q, q, q, mask, "fp8")  # the device's reason now


def test_work_order_runs_heads_in_turn_longest_rows_first():
    """work_order: every row once, head after head (batch-major), and within a head by kept count, largest first
    (ties in row order); a mask shared by heads gives each head the same order."""
    gen = torch.Generator().manual_seed(0)
    count = torch.randint(0, 5, (2, 1, 7), generator=gen)
    order = bsg.work_order(count, 3).long()
    assert bsg.work_order(count, 3).dtype == torch.int32 and sorted(order.tolist()) == list(range(2 * 3 * 7))
    bh, blk = order // 7, order % 7
    assert (bh == torch.arange(6).repeat_interleave(7)).all()
    for i in range(6):
        rows = blk[bh == i]
        kept = count[i // 3, 0, rows]
        assert (kept[:-1] >= kept[1:]).all()
        ties = kept[:-1] == kept[1:]
        assert (rows[:-1][ties] < rows[1:][ties]).all()


def test_default_key_splits_keep_a_range_in_the_l2(monkeypatch):
    """One range up to 36 MiB of keys + values per head (an H200's 60 MiB L2): one at 544p, two at 720p (bf16)."""
    class Props:
        L2_cache_size = 60 * 2**20
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device=None: Props())
    kv = lambda n: torch.empty(1, 24, n, 128, dtype=torch.bfloat16, device="meta")  # noqa: E731
    assert bsg.default_key_splits(kv(32_760)) == 1
    assert bsg.default_key_splits(kv(67_576)) == 1
    assert bsg.default_key_splits(kv(119_056)) == 2
    assert bsg.default_key_splits(kv(300_000)) == 5
    assert bsg.default_key_splits(kv(75_000)) == 2


# ---- on a Hopper GPU ----

CASES = [  # b, h, n, n_k, density, kv_len offsets, layout, empty rows, mask heads
    (1, 2, 1000, 1000, 0.5, (0,), "bhnd", False, 2),
    (2, 3, 777, 777, 0.4, (0, 201), "bnhd", True, 3),
    (2, 2, 1300, 900, 0.6, (5, 300), "bhnd", False, 1),
    (1, 4, 2048, 2048, 0.2, (37,), "bnhd", False, 4),
]


def _inputs(case, dtype, seed):
    b, h, n, n_k, density, off, layout, empty_rows, mask_heads = case
    gen = torch.Generator().manual_seed(seed)
    shape = lambda m: (b, m, h, 128) if layout == "bnhd" else (b, h, m, 128)  # noqa: E731
    q, k, v = (torch.randn(shape(m), generator=gen).to(dtype).cuda() for m in (n, n_k, n_k))
    if layout == "bnhd":  # diffusers' storage seen as [B, H, N, D]
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
    kv_len = torch.tensor([n_k - o for o in off])  # one offset per batch
    mask = _random_mask(gen, b, mask_heads, n, n_k, 128, density, kv_len, empty_rows)
    mask = BlockSparseMask(mask.kv_indices.cuda(), mask.kv_counts.cuda(), 128, n, kv_len.cuda())
    return q, k, v, mask


@needs_hopper
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("splits,programs", [(None, None), (1, 1), (2, 3), (3, 2), (1, 5)])
def test_matches_reference_on_hopper(dtype, case, splits, programs):
    """Fresh random inputs: odd lengths, padded keys, rows that keep nothing, masks shared by heads, diffusers'
    layout, several key ranges (each continuing the previous range's softmax), persistent programs running
    several rows of different batches and heads in turn (one program: all rows)."""
    q, k, v, mask = _inputs(case, dtype, seed=100 * CASES.index(case) + 10 * (splits or 0) + (programs or 0))
    out = bsg.block_sparse_attention_gluon(q, k, v, mask, key_splits=splits, programs=programs)
    ref = block_sparse_attention_reference(q.float(), k.float(), v.float(), mask)
    tol = 2e-2 if dtype == torch.bfloat16 else 3e-3
    torch.testing.assert_close(out.float(), ref, atol=tol, rtol=tol)


@needs_hopper
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("splits,programs", [(None, None), (2, 3), (3, 1)])
def test_fp8_path_matches_its_twin_on_hopper(monkeypatch, case, splits, programs):
    """precision="fp8" (opt-in with XATTN_GLUON_FP8=1 until this passes on a GPU): the same quantized copies as
    the Triton kernel's fp8 path, so it stays within the few percent the Triton kernel keeps to the fp8 twin
    (weights rounded against the running max in the kernels, the final one in the twin), and close to the Triton
    kernel itself; several key ranges apply v's scales once, rows keeping nothing give zeros."""
    monkeypatch.setenv("XATTN_GLUON_FP8", "1")
    q, k, v, mask = _inputs(case, torch.bfloat16, seed=7 + CASES.index(case) + 10 * (splits or 0))
    out = bsg.block_sparse_attention_gluon(q, k, v, mask, precision="fp8", key_splits=splits, programs=programs)
    twin = block_sparse_attention_reference(q, k, v, mask, precision="fp8")
    triton_fp8 = block_sparse_attention_triton(q, k, v, mask, precision="fp8")
    rel = lambda a, b: float((a.float() - b.float()).norm() / b.float().norm())  # noqa: E731
    assert out.dtype == q.dtype and torch.isfinite(out).all()
    assert rel(out, twin) < 3e-2 and rel(out, triton_fp8) < 3e-2
    empty = mask.kv_counts.cuda() == 0  # [B, mask heads, QB]: those rows' outputs are zeros
    if empty.any():
        rows = empty.repeat_interleave(128, dim=-1)[..., : q.shape[2]].expand(-1, q.shape[1], -1)
        assert (out.float().abs().sum(-1)[rows] == 0).all()


@needs_hopper
def test_padded_keys_are_never_read_and_empty_logits_give_zeros():
    """NaN in the padding past kv_len stays out (the descriptors end at kv_len); a row whose logits are all -inf
    (q = -inf against positive keys) outputs zeros, as the Triton kernel and SDPA do; a NaN query stays NaN."""
    case = (2, 2, 700, 700, 0.5, (0, 150), "bhnd", False, 2)
    q, k, v, mask = _inputs(case, torch.bfloat16, seed=3)
    k[1, :, 550:], v[1, :, 550:] = float("nan"), float("nan")
    q[0, 0, 5] = float("nan")
    k[0, 1] = k[0, 1].abs() + 0.1
    q[0, 1, 9, 0] = float("-inf")
    for splits, programs in ((1, None), (2, 2)):
        out = bsg.block_sparse_attention_gluon(q, k, v, mask, key_splits=splits, programs=programs)
        ref = block_sparse_attention_reference(q.float(), k.float(), v.float(), mask)
        torch.testing.assert_close(out.float(), ref, atol=2e-2, rtol=2e-2, equal_nan=True)
        assert torch.isnan(out[0, 0, 5]).all() and not torch.isnan(out[1]).any()
        assert (out[0, 1, 9] == 0).all()


@needs_hopper
def test_triton_entry_point_runs_it_on_hopper(monkeypatch):
    """block_sparse_attention_triton runs this kernel where it can (the same output), the Triton kernel with
    XATTN_NO_GLUON=1."""
    q, k, v, mask = _inputs(CASES[0], torch.bfloat16, seed=5)
    gluon_out = bsg.block_sparse_attention_gluon(q, k, v, mask)
    assert torch.equal(block_sparse_attention_triton(q, k, v, mask), gluon_out)
    calls = []
    monkeypatch.setattr(bsg, "launch_gluon_attention", lambda *a, **kw: calls.append(a))
    monkeypatch.setenv("XATTN_NO_GLUON", "1")
    triton_out = block_sparse_attention_triton(q, k, v, mask)
    assert not calls
    torch.testing.assert_close(triton_out.float(), gluon_out.float(), atol=2e-2, rtol=2e-2)


if __name__ == "__main__":  # the build test's subprocess: dtype name, first, last
    print(json.dumps(_build_for_sm90(getattr(torch, sys.argv[1]), sys.argv[2] == "1", sys.argv[3] == "1")))
