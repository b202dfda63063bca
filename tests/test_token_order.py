"""3D-tile token order: the permutation pair, the config, the runtime around the op, and both hosts."""

import pytest
import torch

from xattn_video import BlockSparseMask, OpConfig, XAttentionConfig, apply_xattention, xattention
from xattn_video.runtime import MaskRequest, XAttentionRuntime
from xattn_video.token_order import default_tile, inverse_permutation, tile_permutation


@pytest.mark.parametrize("grid,tile,text", [((3, 5, 7), (2, 2, 2), 0), ((1, 9, 11), (1, 4, 4), 5),
                                            ((5, 3, 1), (2, 8, 8), 3), ((7, 13, 5), (3, 4, 2), 1)])
def test_permute_then_unpermute_is_identity_on_odd_grids(grid, tile, text):
    n_video = grid[0] * grid[1] * grid[2]
    perm = tile_permutation(grid, tile, n_video + text)
    assert torch.equal(perm.sort().values, torch.arange(n_video + text)), "a permutation of every token"
    assert torch.equal(perm[n_video:], torch.arange(n_video, n_video + text)), "text stays last, in order"
    x = torch.randn(2, 3, n_video + text, 8)
    inv = inverse_permutation(perm)
    assert torch.equal(x.index_select(2, perm).index_select(2, inv), x)
    assert torch.equal(perm[inv], torch.arange(n_video + text))


def test_tile_order_by_hand_and_ragged_borders():
    assert tile_permutation((1, 2, 4), (1, 2, 2)).tolist() == [0, 1, 4, 5, 2, 3, 6, 7]
    # 3 x 3 in 2 x 2 tiles: one full tile, then the ragged ones at the right and bottom borders
    assert tile_permutation((1, 3, 3), (1, 2, 2)).tolist() == [0, 1, 3, 4, 2, 5, 6, 7, 8]
    assert inverse_permutation(torch.tensor([2, 0, 1])).tolist() == [1, 2, 0]


def test_each_block_is_a_compact_tile():
    grid, block = (4, 16, 24), 128
    perm = tile_permutation(grid, default_tile(block))
    t, h, w = (perm // (grid[1] * grid[2]), perm // grid[2] % grid[1], perm % grid[2])
    for i in range(0, perm.numel(), block):
        sl = slice(i, i + block)
        spans = [int(c[sl].max() - c[sl].min()) + 1 for c in (t, h, w)]
        assert spans == [2, 8, 8], f"block {i // block} spans {spans}"
    raster_rows = (torch.arange(block) // grid[2]).unique().numel()
    assert raster_rows == 6, "in raster order the same block is a sliver of 6 rows of one frame"


def test_default_tile_and_config(tmp_path):
    assert [default_tile(b) for b in (16, 64, 96, 128, 256)] == [(1, 4, 4), (1, 8, 8), (1, 8, 8), (2, 8, 8),
                                                                 (1, 16, 16)]
    assert OpConfig().token_order == "raster" and OpConfig().tile_shape() == (2, 8, 8)
    cfg = XAttentionConfig(token_order="tile", tile=[1, 4, 4], block_size=16, stride=4)
    assert cfg.op.tile == (1, 4, 4) and cfg.op.tile_shape() == (1, 4, 4)
    cfg.save(tmp_path / "c.yaml")
    assert XAttentionConfig.load(tmp_path / "c.yaml") == cfg
    with pytest.raises(ValueError, match=r"token_order='zorder' is not one of \('raster', 'tile'\)"):
        OpConfig(token_order="zorder")
    with pytest.raises(ValueError, match=r"tile=\(2, 0, 8\) must be three positive integers"):
        OpConfig(tile=(2, 0, 8))
    with pytest.raises(ValueError, match=r"grid=\(2, 3\) must be three positive integers"):
        tile_permutation((2, 3), (1, 2, 2))


# -- the runtime ------------------------------------------------------------------------------------------

GRID, TEXT = (3, 6, 6), 10  # 108 video tokens + 10 text tokens: 8 blocks of 16
N = GRID[0] * GRID[1] * GRID[2] + TEXT
CFG = XAttentionConfig(block_size=16, stride=4, threshold=0.6, warmup_steps=0)


def _qkv(seed=0, b=1, h=2, d=16):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, h, N, d, generator=g) for _ in range(3)]


def _attend(config, q, k, v, step=0, runtime=None, **kw):
    runtime = runtime or XAttentionRuntime(config)
    runtime.begin_forward(step=step, grid=GRID)
    key_ok = torch.arange(N)[None, None, None, :] < N - 3  # 3 padded text tokens
    out = runtime.attend(q, k, v, layer=0, mask=key_ok, global_start=N - TEXT, **kw)
    runtime.end_forward()
    return out, runtime


def test_all_blocks_in_tile_order_equal_dense():
    q, k, v = _qkv()
    out, runtime = _attend(CFG.replace(token_order="tile", threshold=1.0, max_density=1.0), q, k, v)
    want = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=(torch.arange(N) < N - 3)[None, :])
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-6)
    assert runtime.record.calls[0].reason == "estimated"


def test_tile_order_gives_another_valid_mask_and_is_the_op_on_permuted_tokens():
    q, k, v = _qkv(seed=1)
    raster, _ = _attend(CFG, q, k, v)
    tile, t_run = _attend(CFG.replace(token_order="tile"), q, k, v)
    # the op on the permuted tokens, output put back: exactly what the runtime returns
    perm = tile_permutation(GRID, (1, 4, 4), N)
    qp, kp, vp = (x.index_select(2, perm) for x in (q, k, v))
    want, mask = xattention(qp, kp, vp, CFG.op, torch.tensor([N - 3]), layer=0, global_start=N - TEXT)
    torch.testing.assert_close(tile, want.index_select(2, inverse_permutation(perm)), rtol=0, atol=0)
    _, raster_mask = xattention(q, k, v, CFG.op, torch.tensor([N - 3]), layer=0, global_start=N - TEXT)
    assert not torch.equal(mask.to_dense(), raster_mask.to_dense()), "another order, another mask"
    assert 0 < mask.density() < 1 and mask.to_dense()[..., -1].all(), "sparse; the text blocks kept"
    assert not torch.allclose(tile, raster, atol=1e-4)
    assert t_run.record.calls[0].density == pytest.approx(mask.density())


def test_mask_reuse_in_tile_order():
    q, k, v = _qkv(seed=2)
    runtime = XAttentionRuntime(CFG.replace(token_order="tile", mask_reuse_steps=2))
    first, _ = _attend(None, q, k, v, step=0, runtime=runtime)
    again, _ = _attend(None, q, k, v, step=1, runtime=runtime)
    q2, k2, v2 = _qkv(seed=3)
    fresh, _ = _attend(None, q2, k2, v2, step=1, runtime=runtime)  # the mask was used up: estimated
    assert [c.reason for c in runtime.record.calls] == ["estimated", "reused", "estimated"]
    torch.testing.assert_close(again, first, rtol=0, atol=0)
    # a reused tile-order mask applied to other tokens is the op with that mask on the permuted tokens
    perm = tile_permutation(GRID, (1, 4, 4), N)
    r2 = XAttentionRuntime(CFG.replace(token_order="tile", mask_reuse_steps=2))
    _attend(None, q, k, v, step=0, runtime=r2)
    out, _ = _attend(None, q2, k2, v2, step=1, runtime=r2)
    _, mask = xattention(*(x.index_select(2, perm) for x in (q, k, v)), CFG.op, torch.tensor([N - 3]), layer=0,
                         global_start=N - TEXT)
    want, _ = xattention(*(x.index_select(2, perm) for x in (q2, k2, v2)), CFG.op, torch.tensor([N - 3]),
                         mask=mask)
    torch.testing.assert_close(out, want.index_select(2, inverse_permutation(perm)), rtol=0, atol=0)
    assert fresh.shape == q.shape


def test_mask_source_sees_the_tile_order_and_errors_name_the_grid():
    q, k, v = _qkv(seed=4)
    seen = []

    def diagonal(req: MaskRequest) -> BlockSparseMask:
        seen.append(req.order)
        b, h, n = req.q.shape[:3]
        qb = -(-n // req.config.block_size)
        return BlockSparseMask.from_dense(torch.eye(qb, dtype=torch.bool).expand(b, h, qb, qb),
                                          req.config.block_size, n, req.kv_len)

    runtime = XAttentionRuntime(CFG.replace(token_order="tile"), mask_source=diagonal)
    _attend(None, q, k, v, runtime=runtime)
    assert torch.equal(seen[0], tile_permutation(GRID, (1, 4, 4), N))
    runtime = XAttentionRuntime(CFG.replace(token_order="tile"))
    runtime.begin_forward(step=0)
    with pytest.raises(ValueError, match="token_order='tile' needs the video grid"):
        runtime.attend(q, k, v, layer=0, global_start=N - TEXT)
    with pytest.raises(ValueError, match=r"grid 3 x 6 x 5 = 90 tokens does not match this call's 108 video"):
        runtime.attend(q, k, v, layer=0, global_start=N - TEXT, grid=(3, 6, 5))
    key_ok = torch.arange(N)[None, None, None, :] < 100
    with pytest.raises(ValueError, match=r"valid key lengths \[100\] for 108 video tokens"):
        runtime.attend(q, k, v, layer=0, mask=key_ok, global_start=N - TEXT, grid=GRID)


# -- the diffusers host ------------------------------------------------------------------------------------

def test_diffusers_tile_order_exact_and_sparse():
    from test_processors import inputs, tiny_transformer

    model = tiny_transformer()
    x = inputs()  # 3 frames of 12 x 12 latents, patch 1 x 2 x 2: a 3 x 6 x 6 grid
    exact = dict(block_size=16, stride=4, warmup_steps=0, token_order="tile")
    with torch.no_grad():
        stock = model(**x)[0]
        runtime = apply_xattention(model, XAttentionConfig(threshold=1.0, **exact))
        torch.testing.assert_close(model(**x)[0], stock, rtol=0, atol=0)  # tau = 1: bit for bit
        assert runtime.record.counts() == {"exact": 4}
        runtime = apply_xattention(model, XAttentionConfig(threshold=1.0, max_density=1.0, **exact))
        torch.testing.assert_close(model(**x)[0], stock, rtol=1e-5, atol=1e-5)  # every block, permuted
        assert runtime.record.counts() == {"estimated": 4}
        apply_xattention(model, XAttentionConfig(threshold=0.5, block_size=16, stride=4, warmup_steps=0))
        raster = model(**x)[0]
        runtime = apply_xattention(model, XAttentionConfig(threshold=0.5, **exact))
        tile = model(**x)[0]
    assert runtime.record.counts() == {"estimated": 4}
    assert not torch.allclose(tile, raster, atol=1e-4) and not torch.allclose(tile, stock, atol=1e-4)
    assert all(c.density < 1 for c in runtime.record.calls)


def test_layout_sources_refuse_the_tile_order():
    from xattn_video.patterns.layout import VideoLayout
    from xattn_video.patterns.source import RandomSource

    rnd = RandomSource(0.5, VideoLayout(*GRID))
    q, k, v = _qkv(seed=5)
    runtime = XAttentionRuntime(CFG.replace(token_order="tile"), mask_source=rnd)
    with pytest.raises(ValueError, match="token_order='tile'"):
        _attend(None, q, k, v, runtime=runtime)
    _attend(CFG, q, k, v, runtime=XAttentionRuntime(CFG, mask_source=rnd))  # raster: fine
