"""Block-sparse reference attention and xattention() against SDPA, and input validation."""

import pytest
import torch
import torch.nn.functional as F

from xattn_video import BlockSparseMask, XAttentionConfig, xattention
from xattn_video.attention import dense_attention, log_once
from xattn_video.config import ceil_div
from xattn_video.kernels.reference import block_sparse_attention_reference

SHAPES = [  # b, h, n, d, block
    (1, 1, 64, 16, 16),
    (2, 3, 100, 32, 32),  # N not a multiple of the block
    (1, 2, 77, 8, 16),
    (3, 2, 40, 16, 8),
]


def _qkv(b, h, n, d, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, h, n, d, generator=g) for _ in range(3)]


def _key_mask(n, kv_len):
    return torch.arange(n)[None, :] < kv_len[:, None]  # [B, N]


@pytest.mark.parametrize("b,h,n,d,block", SHAPES)
def test_full_mask_equals_dense_sdpa(b, h, n, d, block):
    q, k, v = _qkv(b, h, n, d, seed=n)
    kv_len = torch.randint(1, n + 1, (b,), generator=torch.Generator().manual_seed(1))
    nb = ceil_div(n, block)
    mask = BlockSparseMask.from_dense(torch.ones(b, h, nb, nb, dtype=torch.bool), block, n, kv_len)
    out = block_sparse_attention_reference(q, k, v, mask)
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=_key_mask(n, kv_len)[:, None, None, :])
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("b,h,n,d,block", SHAPES)
@pytest.mark.parametrize("p_keep", [0.2, 0.6])
def test_random_mask_equals_sdpa_with_additive_mask(b, h, n, d, block, p_keep):
    q, k, v = _qkv(b, h, n, d, seed=n + 7)
    g = torch.Generator().manual_seed(int(p_keep * 10) + n)
    nb = ceil_div(n, block)
    kv_len = torch.randint(n // 2, n + 1, (b,), generator=g)
    keep = torch.rand(b, h, nb, nb, generator=g) < p_keep
    keep |= torch.eye(nb, dtype=torch.bool)  # so every row has a valid key
    mask = BlockSparseMask.from_dense(keep, block, n, kv_len)
    out = block_sparse_attention_reference(q, k, v, mask)
    token_keep = mask.to_dense().repeat_interleave(block, 2).repeat_interleave(block, 3)[:, :, :n, :n]
    token_keep &= _key_mask(n, kv_len)[:, None, None, :]
    additive = torch.zeros(token_keep.shape).masked_fill(~token_keep, float("-inf"))
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=additive)
    rows_with_keys = token_keep.any(-1)
    torch.testing.assert_close(out[rows_with_keys], want[rows_with_keys], rtol=1e-5, atol=1e-5)


def test_mask_round_trip_and_density():
    keep = torch.rand(2, 2, 5, 5, generator=torch.Generator().manual_seed(0)) < 0.5
    keep |= torch.eye(5, dtype=torch.bool)
    mask = BlockSparseMask.from_dense(keep, 16, 80)
    assert torch.equal(mask.to_dense(), keep)
    assert mask.density() == pytest.approx(keep.float().mean().item())
    assert torch.all(mask.kv_indices[..., 1:][mask.kv_indices[..., 1:] >= 0] >
                     mask.kv_indices[..., :-1][mask.kv_indices[..., 1:] >= 0]), "indices ascend"


def test_xattention_tau_one_is_exact_and_padding_is_ignored():
    q, k, v = _qkv(2, 2, 90, 16, seed=3)
    kv_len = torch.tensor([90, 61])
    cfg = XAttentionConfig(block_size=16, stride=4, threshold=1.0)
    out, mask = xattention(q, k, v, cfg, kv_len)
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=_key_mask(90, kv_len)[:, None, None, :])
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)
    assert mask.density() == 1.0
    # garbage in padded keys must not change anything
    k2, v2 = k.clone(), v.clone()
    k2[1, :, 61:] = 1e3
    v2[1, :, 61:] = -1e3
    out2, _ = xattention(q, k2, v2, cfg.replace(threshold=0.8), kv_len)
    out1, _ = xattention(q, k, v, cfg.replace(threshold=0.8), kv_len)
    torch.testing.assert_close(out1, out2)


def test_xattention_sparse_on_structured_inputs():
    # tokens attend to their own neighbourhood: a peaked, local pattern the estimate should find
    n, d = 256, 16
    pos = torch.arange(n).float()
    freqs = torch.arange(1, d // 2 + 1).float() * 0.02
    base = torch.cat([torch.sin(pos[:, None] * freqs), torch.cos(pos[:, None] * freqs)], -1) * 6
    q = base[None, None].repeat(1, 2, 1, 1)
    k = q.clone()
    v = torch.randn(1, 2, n, d, generator=torch.Generator().manual_seed(0))
    cfg = XAttentionConfig(block_size=32, stride=8, threshold=0.9)
    out, mask = xattention(q, k, v, cfg)
    assert mask.density() < 0.6
    dense = F.scaled_dot_product_attention(q, k, v)
    cos = F.cosine_similarity(out.flatten(), dense.flatten(), dim=0)
    assert cos > 0.95


@pytest.mark.parametrize(
    "change,match",
    [
        (lambda q, k, v: (q[:, :1], k, v), "agree in batch, heads"),
        (lambda q, k, v: (q, k, v[:, :, :5]), "same shape"),
        (lambda q, k, v: (q.double(), k.double(), v.double()), "not supported"),
        (lambda q, k, v: (q.half(), k, v), "dtypes differ"),
        (lambda q, k, v: (q[..., :12], k[..., :12], v[..., :12]), "head_dim=12"),
        (lambda q, k, v: (q[0], k[0], v[0]), "4-d"),
        (lambda q, k, v: (q[:, :, :0], k, v), "must be >= 1"),
    ],
)
def test_bad_inputs_raise_value_error(change, match):
    q, k, v = _qkv(1, 2, 40, 16, seed=0)
    with pytest.raises(ValueError, match=match):
        xattention(*change(q, k, v), XAttentionConfig(block_size=16, stride=4))


def test_bad_kv_len_and_config():
    q, k, v = _qkv(2, 1, 40, 16, seed=0)
    with pytest.raises(ValueError, match="kv_len values must be in 1..40"):
        xattention(q, k, v, XAttentionConfig(block_size=16, stride=4), torch.tensor([40, 41]))
    with pytest.raises(ValueError, match=r"threshold=0 is out of range.*\(0, 1\]"):
        XAttentionConfig(threshold=0)
    with pytest.raises(ValueError, match="threshold=1.5"):
        XAttentionConfig(threshold=1.5)
    with pytest.raises(ValueError, match="stride=12 must be >= 1 and divide block_size=128"):
        XAttentionConfig(stride=12)
    with pytest.raises(RuntimeError, match="cannot run: inputs are on cpu"):
        xattention(q, k, v, XAttentionConfig(block_size=16, stride=4, backend="triton"))


def test_triton_request_falls_back_only_when_allowed(caplog):
    q, k, v = _qkv(1, 1, 40, 16, seed=0)
    cfg = XAttentionConfig(block_size=16, stride=4, backend="triton", allow_fallback=True, threshold=1.0)
    log_once.cache_clear()  # an earlier test may have logged the same fallback already
    with caplog.at_level("WARNING", logger="xattn_video"):
        out, _ = xattention(q, k, v, cfg)
        xattention(q, k, v, cfg)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v), rtol=1e-5, atol=1e-5)
    # the fallback is said once, with its reason, not on every call
    warnings = [r.getMessage() for r in caplog.records if r.name == "xattn_video"]
    assert len(warnings) == 1
    assert "backend='triton' cannot run (inputs are on cpu" in warnings[0] and "PyTorch reference" in warnings[0]


@pytest.mark.parametrize("kv_len", [[50, 50], [50, 33], [41, 41]])
@pytest.mark.parametrize("slice_path", [False, True])
def test_dense_attention_skips_padding(kv_len, slice_path, monkeypatch):
    if slice_path:  # the GPU branch (padded keys sliced off) takes the same CPU tensors
        monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda self: True))
    q, k, v = _qkv(2, 2, 50, 16, seed=4)
    kvl = torch.tensor(kv_len)
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=_key_mask(50, kvl)[:, None, None, :])
    torch.testing.assert_close(dense_attention(q, k, v, kvl), want, rtol=1e-5, atol=1e-5)


def test_triton_reason_names_unsupported_blocks(monkeypatch):
    from xattn_video.attention import resolve_backend, triton_unavailable_reason

    q = torch.zeros(1, 1, 4, 128)
    monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda self: True))  # pretend, no kernel runs
    assert triton_unavailable_reason(q, XAttentionConfig()) is None
    reason = triton_unavailable_reason(q, XAttentionConfig(block_size=96, stride=8))
    assert "block_size=96 with stride=8" in reason
    assert resolve_backend(XAttentionConfig(block_size=96, stride=8), q) == "sdpa"  # auto
    with pytest.raises(RuntimeError, match="block_size=96"):
        resolve_backend(XAttentionConfig(block_size=96, stride=8, backend="triton"), q)
