"""Triton kernels vs their PyTorch twins, on the CPU through Triton's interpreter (TRITON_INTERPRET=1)."""

from __future__ import annotations

import pytest
import torch

from xattn_video.block_mask import BlockSparseMask
from xattn_video.config import ceil_div
from xattn_video.estimate import estimate_mask
from xattn_video.kernels.block_sparse_attention import block_sparse_attention_triton
from xattn_video.kernels.estimate import strided_block_scores_triton
from xattn_video.kernels.reference import block_sparse_attention_reference, strided_block_scores_reference
from xattn_video.synthetic import planted_sink, video_qkv

TOL = {torch.float32: 1e-4, torch.float16: 3e-3}


def _mask(kind: str, b: int, h: int, qb: int, kb: int, bs: int, n: int, kv_len: torch.Tensor,
          gen: torch.Generator) -> BlockSparseMask:
    eye = torch.zeros(qb, kb, dtype=torch.bool)
    eye[torch.arange(min(qb, kb)), torch.arange(min(qb, kb))] = True
    if kind == "diag":  # empty-ish rows: the diagonal only
        keep = eye.expand(b, h, qb, kb).clone()
    elif kind == "full":
        keep = torch.ones(b, h, qb, kb, dtype=torch.bool)
    elif kind == "sparse":  # no diagonal: some rows keep no block at all
        keep = torch.rand(b, h, qb, kb, generator=gen) < 0.25
    else:
        keep = (torch.rand(b, h, qb, kb, generator=gen) < 0.4) | eye
    # a diagonal block past kv_len is dropped: that row keeps nothing and both sides output zeros
    return BlockSparseMask.from_dense(keep, bs, n, kv_len)


# (block, N_q, N_k, head_dim, heads, mask kind, mask heads)
ATTN_CASES = [
    (16, 77, 77, 16, 3, "random", None),
    (32, 150, 150, 32, 2, "diag", None),
    (32, 130, 130, 32, 2, "full", None),
    (64, 200, 200, 64, 2, "random", 1),  # mask head dim 1 broadcasts over heads
    (32, 96, 120, 16, 2, "random", None),  # other key length, N a multiple of the block
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("bs,n,n_k,d,h,kind,mask_heads", ATTN_CASES)
def test_block_sparse_attention_matches_reference(bs, n, n_k, d, h, kind, mask_heads, dtype):
    gen = torch.Generator().manual_seed(1000 * bs + n + d)
    b = 2
    q, k, v = (torch.randn(b, h, l, d, generator=gen).to(dtype) for l in (n, n_k, n_k))
    kv_len = torch.tensor([n_k, n_k - 23])  # batch 2 with different valid key lengths
    mask = _mask(kind, b, mask_heads or h, ceil_div(n, bs), ceil_div(n_k, bs), bs, n, kv_len, gen)
    out = block_sparse_attention_triton(q, k, v, mask)
    ref = block_sparse_attention_reference(q, k, v, mask)
    assert out.dtype == dtype and out.shape == q.shape
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), ref.float(), atol=TOL[dtype], rtol=TOL[dtype])


@pytest.mark.parametrize("bs,n,kind", [(16, 77, "random"), (32, 150, "diag"), (32, 130, "full"), (32, 40, "sparse"),
                                       (16, 150, "sparse")])
def test_block_sparse_attention_prefetch_variant_matches_reference(bs, n, kind):
    """The autotuner may pick the variant that loads the next block index one iteration ahead."""
    gen = torch.Generator().manual_seed(bs + n)
    b, h, d = 2, 2, 16
    q, k, v = (torch.randn(b, h, n, d, generator=gen) for _ in range(3))
    kv_len = torch.tensor([n, n - 19])
    mask = _mask(kind, b, h, ceil_div(n, bs), ceil_div(n, bs), bs, n, kv_len, gen)
    out = block_sparse_attention_triton(q, k, v, mask, launch={"PREFETCH": True})
    torch.testing.assert_close(out, block_sparse_attention_reference(q, k, v, mask), atol=1e-4, rtol=1e-4)


def test_block_sparse_attention_custom_scale_and_strided_inputs():
    gen = torch.Generator().manual_seed(7)
    b, h, n, d, bs = 1, 2, 70, 32, 32
    q, k, v = (torch.randn(b, n, h, d, generator=gen).transpose(1, 2) for _ in range(3))  # non-contiguous
    kv_len = torch.tensor([n])
    mask = _mask("random", b, h, 3, 3, bs, n, kv_len, gen)
    out = block_sparse_attention_triton(q, k, v, mask, scale=0.3)
    torch.testing.assert_close(out, block_sparse_attention_reference(q, k, v, mask, scale=0.3), atol=1e-4,
                               rtol=1e-4)


def test_block_sparse_attention_rejects_bad_head_dim():
    q = torch.randn(1, 1, 32, 24)
    mask = BlockSparseMask.from_dense(torch.ones(1, 1, 2, 2, dtype=torch.bool), 16, 32)
    with pytest.raises(ValueError, match="head_dim=24"):
        block_sparse_attention_triton(q, q, q, mask)


# (block, stride, N_q, N_k, head_dim, heads, block_m, block_n, splits)
EST_CASES = [
    (32, 4, 150, 150, 32, 2, 16, 16, 1),
    (16, 8, 77, 77, 16, 3, 16, 16, 2),
    (64, 8, 200, 180, 64, 2, 16, 32, 3),  # N not a multiple of the block, other key length
    (64, 4, 130, 200, 32, 1, 32, 16, 2),
    (32, 8, 128, 128, 16, 2, None, None, None),  # default tiles
]


@pytest.mark.parametrize("sink_aware", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("bs,stride,n,n_k,d,h,bm,bn,splits", EST_CASES)
def test_strided_block_scores_match_reference(bs, stride, n, n_k, d, h, bm, bn, splits, dtype, sink_aware):
    gen = torch.Generator().manual_seed(bs * stride + n + d + sink_aware)
    b = 2
    q = (2 * torch.randn(b, h, n, d, generator=gen)).to(dtype)  # peaked softmax rows
    k = (2 * torch.randn(b, h, n_k, d, generator=gen)).to(dtype)
    kv_len = torch.tensor([n_k, n_k - 37])
    out = strided_block_scores_triton(q, k, bs, stride, kv_len, sink_aware=sink_aware, block_m=bm, block_n=bn,
                                      num_splits=splits)
    ref = strided_block_scores_reference(q, k, bs, stride, kv_len, sink_aware=sink_aware)
    assert out.dtype == torch.float32 and out.shape == ref.shape
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-4)
    # blocks of padded keys score exactly 0
    assert (out[1, :, :, ceil_div(n_k - 37, bs):] == 0).all()


def test_strided_block_scores_scale_and_no_kv_len():
    gen = torch.Generator().manual_seed(3)
    q, k = (torch.randn(1, 2, 96, 32, generator=gen) for _ in range(2))
    out = strided_block_scores_triton(q, k, 32, 8, None, 0.5, num_splits=2)
    torch.testing.assert_close(out, strided_block_scores_reference(q, k, 32, 8, None, 0.5), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_triton_sink_aware_estimate_keeps_the_planted_sink(dtype):
    q, k, sink_block = planted_sink(seed=4)
    q, k = q.to(dtype), k.to(dtype)
    for sink_aware in (False, True):
        mask = estimate_mask(q, k, block_size=32, stride=8, threshold=0.9, keep_diagonal=False,
                             sink_aware=sink_aware, backend="triton")
        ref = estimate_mask(q, k, block_size=32, stride=8, threshold=0.9, keep_diagonal=False,
                            sink_aware=sink_aware)
        assert torch.equal(mask.to_dense(), ref.to_dense())
        assert bool(mask.to_dense()[0, 0, 1, sink_block]) is sink_aware


def test_strided_block_scores_rejects_unsupported():
    q = torch.randn(1, 1, 64, 32)
    with pytest.raises(ValueError, match="stride=8"):
        strided_block_scores_triton(q, q, 48, 8)  # 6 strided rows per block: not a power of two
    with pytest.raises(ValueError, match="head_dim=24"):
        strided_block_scores_triton(torch.randn(1, 1, 64, 24), torch.randn(1, 1, 64, 24), 32, 8)


# -- synthetic video-like Q/K/V ---------------------------------------------------------------------------

def test_video_qkv_shapes_and_determinism():
    kw = dict(n_text=20, n_text_valid=13, heads=2, head_dim=32, batch=2, dtype=torch.float16, seed=5)
    q, k, v, kv_len = video_qkv(3, 4, 6, **kw)
    n = 3 * 4 * 6 + 20
    assert q.shape == k.shape == v.shape == (2, 2, n, 32) and q.dtype == torch.float16
    assert kv_len.tolist() == [3 * 4 * 6 + 13] * 2
    q2, k2, v2, _ = video_qkv(3, 4, 6, **kw)
    assert torch.equal(q, q2) and torch.equal(k, k2) and torch.equal(v, v2)
    q3, _, _, _ = video_qkv(3, 4, 6, **{**kw, "seed": 6})
    assert not torch.equal(q, q3)
    assert torch.isfinite(q.float()).all() and q.float().std() > 0


def test_video_qkv_is_local_and_sparse_under_the_estimate():
    t, hh, ww = 4, 8, 16  # 512 video tokens
    q, k, v, kv_len = video_qkv(t, hh, ww, n_text=32, n_text_valid=20, heads=2, head_dim=64, seed=0)
    # nearby tokens attend more than far ones: logits against a token's neighbour beat a far token's
    logits = (q[0, :, : t * hh * ww] @ k[0, :, : t * hh * ww].transpose(-1, -2)).float()
    idx = torch.arange(t * hh * ww)
    near = logits[:, idx[:-1], idx[:-1] + 1].mean()
    far = logits[:, idx[: 256], idx[: 256] + 256].mean()
    assert near > far + 1.0
    mask = estimate_mask(q, k, block_size=32, stride=8, threshold=0.9, kv_len=kv_len)
    assert 0.0 < mask.density() < 0.9
    dense = estimate_mask(q, k, block_size=32, stride=8, threshold=1.0, kv_len=kv_len)
    assert dense.density() == pytest.approx(1.0)
