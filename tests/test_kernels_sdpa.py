"""The SDPA attention path (``kernels/sdpa.py``: PyTorch's SDPA with a token mask) against its twin, the
reference block-sparse attention, on fresh random inputs."""

from __future__ import annotations

import pytest
import torch

from xattn_video.block_mask import BlockSparseMask
from xattn_video.config import ceil_div
from xattn_video.kernels.reference import block_sparse_attention_reference
from xattn_video.kernels.sdpa import block_sparse_attention_sdpa


def _mask(kind: str, b: int, h: int, n: int, n_k: int, bs: int, kv_len: torch.Tensor, seed: int) -> BlockSparseMask:
    qb, kb = ceil_div(n, bs), ceil_div(n_k, bs)
    eye = torch.zeros(qb, kb, dtype=torch.bool)
    eye[torch.arange(min(qb, kb)), torch.arange(min(qb, kb))] = True
    if kind == "diag":  # a diagonal block past kv_len is dropped: that row keeps nothing
        keep = eye.expand(b, h, qb, kb).clone()
    elif kind == "full":
        keep = torch.ones(b, h, qb, kb, dtype=torch.bool)
    else:
        keep = (torch.rand(b, h, qb, kb, generator=torch.Generator().manual_seed(seed)) < 0.4) | eye
    return BlockSparseMask.from_dense(keep, bs, n, kv_len)


# (block, N_q, N_k, head_dim, heads, mask kind, mask heads, query chunk)
CASES = [
    (16, 77, 77, 16, 3, "random", None, None),
    (32, 150, 150, 32, 2, "diag", None, 64),  # rows that keep nothing; chunks that cut query blocks
    (32, 130, 130, 32, 2, "full", None, None),
    (64, 200, 200, 64, 2, "random", 1, 50),  # mask head dim 1 broadcasts over heads
    (32, 96, 120, 16, 2, "random", None, None),  # other key length
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("bs,n,n_k,d,h,kind,mask_heads,chunk", CASES)
def test_sdpa_attention_matches_reference(bs, n, n_k, d, h, kind, mask_heads, chunk, dtype):
    gen = torch.Generator().manual_seed(7 * bs + n + d)
    b = 2
    q, k, v = (torch.randn(b, h, length, d, generator=gen).to(dtype) for length in (n, n_k, n_k))
    kv_len = torch.tensor([n_k, n_k - 23])
    mask = _mask(kind, b, mask_heads or h, n, n_k, bs, kv_len, n)
    out = block_sparse_attention_sdpa(q, k, v, mask, query_chunk=chunk)
    ref = block_sparse_attention_reference(q, k, v, mask)
    assert out.dtype == dtype and out.shape == q.shape and torch.isfinite(out).all()
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(out.float(), ref.float(), atol=tol, rtol=tol)


def test_sdpa_attention_rows_without_keys_are_zero():
    q, k, v = (torch.randn(1, 2, 96, 16) for _ in range(3))
    kv_len = torch.tensor([40])
    mask = _mask("diag", 1, 2, 96, 96, 32, kv_len, 0)  # query blocks 2 and 3 keep only padded keys: nothing
    out = block_sparse_attention_sdpa(q, k, v, mask)
    assert out[:, :, 64:].abs().sum() == 0 and out[:, :, :64].abs().sum() > 0


def test_sdpa_attention_keeps_the_twins_fault_semantics():
    """A NaN in a skipped block must not reach a row that does not keep that block (a masked softmax weight of 0
    times NaN is NaN in one shared value matrix): such inputs run the twin."""
    gen = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, 1, 128, 16, generator=gen) for _ in range(3))
    v[0, 0, 100] = float("nan")  # key block 3 of 4
    kv_len = torch.tensor([128])
    mask = _mask("diag", 1, 1, 128, 128, 32, kv_len, 0)
    out = block_sparse_attention_sdpa(q, k, v, mask)
    assert torch.isnan(out[0, 0, 96:]).all() and torch.isfinite(out[0, 0, :96]).all()
    torch.testing.assert_close(out, block_sparse_attention_reference(q, k, v, mask), equal_nan=True)


def test_sdpa_attention_is_native_precision_only():
    q = torch.randn(1, 1, 64, 16)
    mask = _mask("full", 1, 1, 64, 64, 32, torch.tensor([64]), 0)
    with pytest.raises(ValueError, match=r"precision='fp8' is not one of \('native',\)"):
        block_sparse_attention_sdpa(q, q, q, mask, None, "fp8")
