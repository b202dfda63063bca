"""``remainder``: the skipped key blocks enter the softmax as their mean key (and value, "pooled"; the row sum
only, "mass"), weighted by their key count. The twin (plain PyTorch) against exact attention where pooling is
exact, and the Triton kernel (through the interpreter) against the twin."""

from __future__ import annotations

import pytest
import torch

from xattn_video import OpConfig, xattention
from xattn_video.block_mask import BlockSparseMask
from xattn_video.config import ceil_div
from xattn_video.kernels.block_sparse_attention import block_sparse_attention_triton
from xattn_video.kernels.reference import block_sparse_attention_reference, pool_blocks, skipped_blocks


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def _random_mask(b: int, h: int, n: int, bs: int, kv_len: torch.Tensor, p: float, seed: int) -> BlockSparseMask:
    qb = ceil_div(n, bs)
    gen = torch.Generator().manual_seed(seed)
    keep = (torch.rand(b, h, qb, qb, generator=gen) < p) | torch.eye(qb, dtype=torch.bool)
    return BlockSparseMask.from_dense(keep, bs, n, kv_len)


def test_pool_blocks_is_the_mean_of_the_valid_keys():
    gen = torch.Generator().manual_seed(3)
    k, v = (torch.randn(2, 3, 70, 8, generator=gen) for _ in range(2))
    kv_len = torch.tensor([70, 37])
    k[1, :, 50], v[1, :, 60] = float("nan"), float("inf")  # padding of sample 1: must not leak
    k_mean, v_mean, log_count = pool_blocks(k, v, 16, kv_len)
    assert k_mean.shape == v_mean.shape == (2, 3, 5, 8) and log_count.shape == (2, 5)
    for b in range(2):
        for j in range(5):
            lo, hi = j * 16, min(j * 16 + 16, int(kv_len[b]))
            if lo >= hi:
                assert log_count[b, j] == float("-inf")
                continue
            torch.testing.assert_close(k_mean[b, :, j], k[b, :, lo:hi].mean(1))
            torch.testing.assert_close(v_mean[b, :, j], v[b, :, lo:hi].mean(1))
            assert log_count[b, j].exp().round() == hi - lo


def test_skipped_blocks_are_the_complement_of_the_kept_ones():
    kv_len = torch.tensor([100, 70])
    mask = _random_mask(2, 3, 100, 16, kv_len, 0.4, 1)
    skipped = skipped_blocks(mask, 7)
    kept = mask.to_dense()[..., :7]
    assert torch.equal(skipped, ~kept)


@pytest.mark.parametrize("b,h,n,d,bs,mask_heads", [(2, 3, 70, 8, 16, None), (1, 2, 129, 16, 32, 1)])
def test_pooled_remainder_is_exact_when_each_block_holds_one_key_repeated(b, h, n, d, bs, mask_heads):
    """Blocks of identical keys and values: the pooled key stands exactly for the block, so sparse attention
    with the remainder equals dense attention, whatever the mask (padding included)."""
    gen = torch.Generator().manual_seed(n)
    kb = ceil_div(n, bs)
    q = torch.randn(b, h, n, d, generator=gen)
    k, v = (torch.randn(b, h, kb, 1, d, generator=gen).expand(-1, -1, -1, bs, -1).flatten(2, 3)[:, :, :n]
            for _ in range(2))
    kv_len = torch.tensor([n, n - 19][:b])
    mask = _random_mask(b, mask_heads or h, n, bs, kv_len, 0.3, n + 1)
    full = BlockSparseMask.from_dense(torch.ones(b, 1, kb, kb, dtype=torch.bool), bs, n, kv_len)
    dense = block_sparse_attention_reference(q, k, v, full)
    pooled = block_sparse_attention_reference(q, k, v, mask, remainder="pooled")
    plain = block_sparse_attention_reference(q, k, v, mask)
    torch.testing.assert_close(pooled, dense, atol=1e-5, rtol=1e-5)
    assert _rel(plain, dense) > 0.05  # the mask does drop mass: the test can fail


def test_mass_remainder_shrinks_each_row_by_the_share_it_skips():
    """Values of ones: dropping renormalises to 1, "pooled" too; "mass" gives each row its kept share of the
    softmax mass (exact here: blocks of one repeated key)."""
    gen = torch.Generator().manual_seed(4)
    b, h, n, d, bs = 2, 2, 100, 8, 20
    q = torch.randn(b, h, n, d, generator=gen)
    k = torch.randn(b, h, 5, 1, d, generator=gen).expand(-1, -1, -1, bs, -1).flatten(2, 3)
    ones = torch.ones(b, h, n, d)
    kv_len = torch.tensor([100, 73])
    mask = _random_mask(b, h, n, bs, kv_len, 0.3, 2)
    probs = torch.softmax((q @ k.transpose(-1, -2) / d ** 0.5).masked_fill(
        torch.arange(n)[None, None, None, :] >= kv_len[:, None, None, None], float("-inf")), -1)
    kept = mask.to_dense()[..., :5].repeat_interleave(bs, 2)[:, :, :n].repeat_interleave(bs, 3)[..., :n]
    share = (probs * kept).sum(-1, keepdim=True).expand(-1, -1, -1, d)
    torch.testing.assert_close(block_sparse_attention_reference(q, k, ones, mask, remainder="mass"), share)
    torch.testing.assert_close(block_sparse_attention_reference(q, k, ones, mask, remainder="pooled"), ones)
    assert float(share.min()) < 0.9  # some rows do skip mass


def test_pooled_remainder_changes_nothing_when_every_block_is_kept():
    gen = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(2, 2, 90, 16, generator=gen) for _ in range(3))
    kv_len = torch.tensor([90, 61])
    full = BlockSparseMask.from_dense(torch.ones(2, 2, 3, 3, dtype=torch.bool), 32, 90, kv_len)
    torch.testing.assert_close(block_sparse_attention_reference(q, k, v, full, remainder="pooled"),
                               block_sparse_attention_reference(q, k, v, full))


def test_pooled_remainder_recovers_broad_attention():
    """Broad attention (small logits): what the skipped blocks hold is near their mean, so the remainder
    brings sparse attention within a small fraction of its error without it."""
    gen = torch.Generator().manual_seed(9)
    q, k, v = (torch.randn(2, 2, 320, 16, generator=gen) for _ in range(3))
    q = 0.2 * q
    kv_len = torch.tensor([320, 300])
    mask = _random_mask(2, 2, 320, 32, kv_len, 0.2, 4)
    full = BlockSparseMask.from_dense(torch.ones(2, 1, 10, 10, dtype=torch.bool), 32, 320, kv_len)
    dense = block_sparse_attention_reference(q, k, v, full)
    plain = _rel(block_sparse_attention_reference(q, k, v, mask), dense)
    pooled = _rel(block_sparse_attention_reference(q, k, v, mask, remainder="pooled"), dense)
    assert pooled < 0.2 * plain


# (block, N, head_dim, heads, mask heads, dtype)
KERNEL_CASES = [
    (16, 77, 16, 3, None, torch.float32),
    (64, 200, 64, 2, 1, torch.float16),  # mask head dim 1 broadcasts over heads
    (128, 300, 32, 2, None, torch.float32),  # mask blocks wider than the interpreter's 64-key tiles
    (32, 150, 32, 2, None, torch.float16),
]


@pytest.mark.parametrize("remainder", ["pooled", "mass"])
@pytest.mark.parametrize("bs,n,d,h,mask_heads,dtype", KERNEL_CASES)
def test_triton_remainder_matches_twin(bs, n, d, h, mask_heads, dtype, remainder):
    gen = torch.Generator().manual_seed(bs + n)
    q, k, v = (torch.randn(2, h, n, d, generator=gen).to(dtype) for _ in range(3))
    kv_len = torch.tensor([n, n - 41])
    mask = _random_mask(2, mask_heads or h, n, bs, kv_len, 0.35, n)
    out = block_sparse_attention_triton(q, k, v, mask, None, "native", remainder)
    twin = block_sparse_attention_reference(q, k, v, mask, None, "native", remainder)
    plain = block_sparse_attention_reference(q, k, v, mask)
    assert out.dtype == dtype and torch.isfinite(out).all()
    tol = 1e-4 if dtype == torch.float32 else 3e-3
    torch.testing.assert_close(out.float(), twin.float(), atol=tol, rtol=tol)
    assert _rel(twin, plain) > 0.05  # the remainder is not a no-op here


def test_remainder_errors_name_the_accepted_values():
    with pytest.raises(ValueError, match="remainder='pooled' runs in native precision only"):
        OpConfig(remainder="pooled", precision="int8-fp8")
    with pytest.raises(ValueError, match=r"remainder='yes' is not one of \('drop', 'pooled', 'mass'\)"):
        OpConfig(remainder="yes")
    q = torch.randn(1, 1, 64, 16)
    mask = _random_mask(1, 1, 64, 64, torch.tensor([64]), 1.0, 0)
    with pytest.raises(ValueError, match="native precision only"):
        block_sparse_attention_reference(q, q, q, mask, None, "fp8", "pooled")


def test_xattention_with_pooled_remainder_on_the_reference_backend():
    gen = torch.Generator().manual_seed(11)
    q, k, v = (torch.randn(1, 2, 256, 16, generator=gen) for _ in range(3))
    cfg = OpConfig(block_size=32, stride=8, threshold=0.5, backend="reference")
    out, mask = xattention(q, k, v, cfg)
    pooled, same_mask = xattention(q, k, v, cfg.__class__(**{**cfg.__dict__, "remainder": "pooled"}))
    assert torch.equal(mask.kv_indices, same_mask.kv_indices) and mask.density() < 1.0
    torch.testing.assert_close(pooled, block_sparse_attention_reference(q, k, v, mask, remainder="pooled"))
    assert not torch.allclose(pooled, out)
