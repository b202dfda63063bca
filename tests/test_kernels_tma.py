"""The attention kernel's TMA variant: its output (interpreter) and when it is used or turned off (no launch)."""

from __future__ import annotations

import logging
import re

import pytest
import torch
import triton
import triton.language as tl

from xattn_video.block_mask import BlockSparseMask
from xattn_video.kernels import block_sparse_attention as bsa
from xattn_video.kernels.block_sparse_attention import block_sparse_attention_triton, check_interpreter
from xattn_video.kernels.reference import block_sparse_attention_reference


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_tma_variant_matches_reference(dtype):
    """K / V through in-kernel descriptors that end at kv_len (rows past it read as zeros), on random inputs."""
    gen = torch.Generator().manual_seed(11)
    b, h, n, d, bs = 2, 2, 77, 16, 16
    # diffusers' layout [B, N, H, D] seen as [B, H, N, D]: unit stride on D, as descriptors need
    q, k, v = (torch.randn(b, n, h, d, generator=gen).to(dtype).transpose(1, 2) for _ in range(3))
    kv_len = torch.tensor([n, n - 23])
    qb = -(-n // bs)
    keep = (torch.rand(b, h, qb, qb, generator=gen) < 0.4) | torch.eye(qb, dtype=torch.bool)
    mask = BlockSparseMask.from_dense(keep, bs, n, kv_len)
    out = block_sparse_attention_triton(q, k, v, mask, launch={"USE_TMA": True})
    tol = 1e-4 if dtype == torch.float32 else 3e-3
    torch.testing.assert_close(out.float(), block_sparse_attention_reference(q, k, v, mask).float(), atol=tol,
                               rtol=tol)


@pytest.fixture
def hopper(monkeypatch):
    """A Hopper GPU as _use_tma sees it, with fresh TMA state; nothing is launched."""
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    allocators = []
    monkeypatch.setattr(triton, "set_allocator", allocators.append)
    monkeypatch.setitem(bsa._TMA, "ok", True)
    monkeypatch.setitem(bsa._TMA, "why", None)
    monkeypatch.setitem(bsa._TMA, "allocator", False)
    return allocators


def test_tma_used_for_descriptor_friendly_layouts(hopper):
    x = torch.zeros(2, 3, 64, 64, dtype=torch.float16)
    assert bsa._use_tma(x)
    assert bsa._use_tma(x.transpose(1, 2).contiguous().transpose(1, 2))  # [B, N, H, D] storage
    assert len(hopper) == 1  # the scratch allocator is installed once
    assert not bsa._use_tma(x.transpose(-1, -2))  # D not unit-stride
    odd_heads = torch.zeros(2, 3 * 64 * 64 + 4, dtype=torch.float16)[:, 4:].view(2, 3, 64, 64)
    assert odd_heads.data_ptr() % 16 == 8 and not bsa._use_tma(odd_heads)  # misaligned base
    odd_rows = torch.zeros(2, 3, 64, 68, dtype=torch.float16)[..., :64]  # row stride 136 bytes
    assert not bsa._use_tma(odd_rows)
    # a size-1 batch's stride is never used: any value is fine
    assert bsa._use_tma(torch.zeros(3, 64, 64, dtype=torch.float16).as_strided((1, 3, 64, 64), (7, 4096, 64, 1)))
    odd_batch = torch.zeros(2, 3, 64, 64, dtype=torch.float16).as_strided((2, 3, 64, 64), (3 * 4096 - 4, 4096, 64, 1))
    assert not bsa._use_tma(odd_batch)  # batch stride of 24568 bytes
    assert bsa._TMA["ok"] and bsa._TMA["why"] == ""


def test_tma_off_only_when_triton_lacks_descriptors(hopper, monkeypatch, caplog):
    monkeypatch.delattr(tl, "make_tensor_descriptor")
    reason = bsa.tma_unsupported_reason()
    assert "make_tensor_descriptor" in reason and triton.__version__ in reason
    x = torch.zeros(1, 2, 64, 64, dtype=torch.bfloat16)
    with caplog.at_level(logging.WARNING, logger="xattn_video"):
        assert not bsa._use_tma(x) and not bsa._use_tma(x)
    warnings = [r.getMessage() for r in caplog.records if r.name == "xattn_video"]
    assert len(warnings) == 1 and "TMA descriptors unavailable" in warnings[0] and reason in warnings[0]
    assert hopper == []  # no allocator installed for a path that is not taken


def test_a_failing_tma_launch_propagates_and_keeps_tma_on(hopper, monkeypatch):
    launches = []

    class Failing:
        def __getitem__(self, grid):
            def run(*args, **kwargs):
                launches.append(kwargs["USE_TMA"])
                raise RuntimeError("a bug in the TMA launch")
            return run

    monkeypatch.setattr(bsa, "_bsa_fwd_tuned", Failing())
    x = torch.zeros(1, 2, 64, 64, dtype=torch.bfloat16)
    for _ in range(2):
        with pytest.raises(RuntimeError, match="a bug in the TMA launch"):
            bsa._launch_autotuned((), None, 128, 64, x, x)
    assert launches == [True, True]  # the second call tried TMA again: nothing was turned off
    assert bsa._TMA["ok"] and bsa._TMA["why"] == ""


def test_explicit_tma_launch_names_a_triton_without_descriptors(monkeypatch):
    monkeypatch.delattr(tl, "make_tensor_descriptor")
    q = torch.zeros(1, 1, 64, 64)
    mask = BlockSparseMask.from_dense(torch.ones(1, 1, 1, 1, dtype=torch.bool), 64, 64)
    with pytest.raises(ValueError, match=r"USE_TMA=True cannot run: .*make_tensor_descriptor.*triton >= 3\.4"):
        block_sparse_attention_triton(q, q, q, mask, launch={"USE_TMA": True})


@pytest.mark.parametrize("triton_version,numpy_version,ok", [
    ("3.8.0", "2.4.1", True),
    ("3.7.0", "2.4.0", True),
    ("3.10.0", "2.5.0", True),
    ("3.6.0", "2.3.5", True),
    ("3.6.0", "2.4.0", False),
    ("3.4.0+git1234", "2.4.1", False),
])
def test_interpreter_check_names_the_broken_pair(triton_version, numpy_version, ok):
    if ok:
        check_interpreter(triton_version, numpy_version)
    else:
        pattern = rf"Triton {re.escape(triton_version)}.*numpy {re.escape(numpy_version)}.*triton >= 3\.7"
        with pytest.raises(RuntimeError, match=pattern):
            check_interpreter(triton_version, numpy_version)
