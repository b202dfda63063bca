"""The peers' patterns as block masks: each against its token-level definition, text and padding, sources."""

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from xattn_video import XAttentionConfig, xattention
from xattn_video.block_mask import BlockSparseMask
from xattn_video.config import ceil_div
from xattn_video.patterns import (SVG, Band, FirstFrames, Radial, ScoredSource, StaticSource, SVGSource, Temporal,
                                  VideoLayout, Window3D, assemble_mask, exact_block_scores, fit_density,
                                  pattern_density, pooled_block_scores, svg_head_keep, video_block_keep,
                                  video_block_keep_reference)


def _random_patterns(g, layout):
    """A few patterns of each kind with random sizes (a fresh draw per test case)."""
    r = lambda hi: int(torch.randint(0, hi + 1, (), generator=g))  # noqa: E731
    return [
        Window3D((r(2), r(layout.height), r(layout.width))),
        Band(r(3 * layout.frame_tokens)),
        Temporal(r(layout.frame_tokens)),
        Radial(decay=float(torch.rand((), generator=g)) * 2 + 0.1, sink=bool(r(1))),
        FirstFrames(1 + r(layout.frames)),
        Window3D((0, r(2), r(2))) | FirstFrames(1) | Temporal(r(3)),
    ]


@pytest.mark.parametrize("seed", range(8))
def test_block_keep_equals_its_token_level_twin(seed):
    g = torch.Generator().manual_seed(seed)
    # long videos of small frames reach Radial's skipped frames; wide rows make blocks shorter than a row
    for _ in range(4):
        layout = VideoLayout(*(int(torch.randint(1, hi + 1, (), generator=g)) for hi in (16, 6, 24)))
        block = int(torch.randint(4, 20, (), generator=g))
        for pattern in _random_patterns(g, layout):
            fast = video_block_keep(pattern, layout, block)
            twin = video_block_keep_reference(pattern, layout, block)
            assert torch.equal(fast, twin), (layout, block, pattern)


def test_patterns_have_their_peers_shapes():
    layout = VideoLayout(4, 4, 4)  # 16 tokens per frame; blocks of 4 = one latent row
    rows = layout.frames * layout.height
    # window of radius 0 in time and rows: a row block attends only itself
    assert torch.equal(video_block_keep(Window3D((0, 0, 3)), layout, 4), torch.eye(rows, dtype=torch.bool))
    # temporal head: row y of every frame, nothing else
    keep = video_block_keep(Temporal(0), layout, 4)
    want = (torch.arange(rows)[:, None] % 4) == (torch.arange(rows)[None, :] % 4)
    assert torch.equal(keep, want)
    # band of one frame: the blocks within 16 positions
    keep = video_block_keep(Band(16), layout, 4)
    assert torch.equal(keep, (torch.arange(rows)[:, None] - torch.arange(rows)[None, :]).abs() <= 4)
    # sink: every row keeps frame 0's blocks
    assert video_block_keep(FirstFrames(1), layout, 4)[:, :4].all()
    assert not video_block_keep(FirstFrames(1), layout, 4)[:, 4:].any()


def test_radial_decays_with_frame_distance():
    layout = VideoLayout(32, 8, 8)  # 64 tokens per frame, blocks of 16
    pattern = Radial(decay=1.0, sink=False)
    radii = [pattern.frame_radius(d, layout, 16) for d in range(32)]
    assert radii[:2] == [63, 63]  # neighbours: whole frame
    assert radii[2:4] == [32, 32] and radii[4:8] == [16] * 4  # 128 / 2**bit_length(d), floored at the block
    assert radii[8:16] == [16, -1] * 4  # L = 8 < 16: every second frame only
    assert radii[16:] == [16, -1, -1, -1] * 4  # L = 4: every fourth
    assert Radial(decay=4.0).frame_radius(4, layout, 16) == 63  # 16 * 4, capped at the frame
    per_distance = video_block_keep(pattern, layout, 16).reshape(32, 4, 32, 4).sum((1, 3))  # frame x frame
    counts = [int(per_distance[0, d]) for d in range(32)]
    assert counts[0] == counts[1] == 16 and counts[2] < 16 and counts[9] == 0 and counts[8] > 0


def test_layout_from_video():
    assert VideoLayout.from_video(129, 720, 1280).num_tokens == 118800
    assert VideoLayout.from_video(9, 32, 32, vae_temporal=1, vae_spatial=1) == VideoLayout(9, 16, 16)
    with pytest.raises(ValueError, match="num_frames=10"):
        VideoLayout.from_video(10, 720, 1280)
    with pytest.raises(ValueError, match="height=100"):
        VideoLayout.from_video(129, 100, 1280)
    with pytest.raises(ValueError, match="frames=0"):
        VideoLayout(0, 4, 4)


def test_bad_pattern_arguments_name_the_value():
    with pytest.raises(ValueError, match=r"radius\[1\]=-1"):
        Window3D((0, -1, 0))
    with pytest.raises(ValueError, match="radius=2.5"):
        Band(2.5)
    with pytest.raises(ValueError, match="decay=0"):
        Radial(decay=0)
    with pytest.raises(ValueError, match="block_size=2"):
        video_block_keep(Band(1), VideoLayout(1, 2, 2), 2)


def test_assemble_keeps_text_global_and_drops_padding():
    layout = VideoLayout(2, 4, 4)  # 32 video tokens = 4 blocks of 8, then 20 text tokens
    keep = video_block_keep(Window3D((0, 0, 0)), layout, 8)
    kv_len = torch.tensor([52, 37])  # 20 and 5 valid text tokens
    mask = assemble_mask(keep, layout, 8, q_len=52, kv_len=kv_len)
    dense = mask.to_dense()  # [2, 1, 7, 7]
    assert dense.shape == (2, 1, 7, 7)
    assert torch.equal(dense[0, 0, :4, :4], keep)
    assert dense[0, 0, :, 4:].all()  # every row keeps the text key blocks
    assert dense[:, 0, 4:, :4].all()  # text query blocks attend all video
    assert dense[1, 0, :, 4].all() and not dense[1, 0, :, 5:].any()  # sample 1: blocks past 37 are padding


def test_assemble_rejects_a_sequence_that_does_not_fit_the_layout():
    layout = VideoLayout(2, 4, 4)
    keep = video_block_keep(Band(3), layout, 8)
    with pytest.raises(ValueError, match="fewer than the layout's 32"):
        assemble_mask(keep, layout, 8, q_len=20)
    with pytest.raises(ValueError, match="VB=4"):
        assemble_mask(keep[:3, :3], layout, 8, q_len=40)


def _request(q, k, kv_len, layout, cfg, **extra):
    return SimpleNamespace(q=q, k=k, kv_len=kv_len, global_start=layout.num_tokens, layer=0, step=7, config=cfg,
                           **extra)


def _qkv(b, h, n, d, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, h, n, d, generator=g) for _ in range(3)]


def test_static_source_runs_through_xattention_like_its_mask():
    layout = VideoLayout(3, 4, 6)  # 72 video tokens, 24 text (10 valid in sample 1)
    q, k, v = _qkv(2, 3, 96, 16, seed=1)
    kv_len = torch.tensor([96, 82])
    cfg = XAttentionConfig(block_size=16, stride=4, backend="reference")
    source = StaticSource(Window3D((1, 1, 1)) | FirstFrames(1), layout)
    mask = source(_request(q, k, kv_len, layout, cfg))
    assert mask is source(_request(q, k, kv_len, layout, cfg))  # cached for the same shape
    out, used = xattention(q, k, v, cfg, kv_len, global_start=layout.num_tokens, mask=mask)
    assert used is mask and 0 < mask.density() < 1
    # the same attention as SDPA restricted to the mask's blocks and the valid keys
    token = mask.to_dense().repeat_interleave(16, 2).repeat_interleave(16, 3)[..., :96, :96]
    token = token & (torch.arange(96)[None, :] < kv_len[:, None])[:, None, None, :]
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=token)
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)


def test_static_source_checks_the_sequence_and_text_policy():
    layout = VideoLayout(3, 4, 6)
    q, k, _ = _qkv(1, 1, 96, 16, seed=2)
    source = StaticSource(Band(8), layout)
    cfg = XAttentionConfig(block_size=16, stride=4)
    with pytest.raises(ValueError, match="global_start=70"):
        source(SimpleNamespace(q=q, k=k, kv_len=None, global_start=70, layer=0, step=0, config=cfg))
    with pytest.raises(ValueError, match="keep_text=False"):
        source(_request(q, k, None, layout, cfg.replace(keep_text=False)))
    with pytest.raises(ValueError, match="global_start=None"):
        source(SimpleNamespace(q=q, k=k, kv_len=None, global_start=None, layer=0, step=0, config=cfg))
    video_only = source(SimpleNamespace(q=q[:, :, :72], k=k[:, :, :72], kv_len=None, global_start=None, layer=0,
                                        step=0, config=cfg))
    assert video_only.num_q_blocks == 5


def brute_pooled(q, k, block, kv_len):
    b, h, n, d = q.shape
    nb, kb = ceil_div(n, block), ceil_div(k.shape[2], block)
    out = torch.zeros(b, h, nb, kb)
    for bi in range(b):
        for hi in range(h):
            for i in range(nb):
                qm = q[bi, hi, i * block:(i + 1) * block].mean(0)
                logits = torch.full((kb,), float("-inf"))
                for j in range(kb):
                    keys = k[bi, hi, j * block:min((j + 1) * block, int(kv_len[bi]))]
                    if len(keys):
                        logits[j] = qm @ keys.mean(0) / math.sqrt(d) + math.log(len(keys))
                out[bi, hi, i] = logits.softmax(0)
    return out


@pytest.mark.parametrize("seed", range(3))
def test_pooled_scores_equal_brute_force(seed):
    g = torch.Generator().manual_seed(seed)
    n = int(torch.randint(20, 70, (), generator=g))
    q, k = (torch.randn(2, 2, n, 8, generator=g) for _ in range(2))
    kv_len = torch.randint(1, n + 1, (2,), generator=g)
    got = pooled_block_scores(q, k, 16, kv_len)
    torch.testing.assert_close(got, brute_pooled(q, k, 16, kv_len), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("seed", range(3))
def test_exact_scores_are_the_attention_mass_per_block(seed):
    g = torch.Generator().manual_seed(seed + 10)
    n = int(torch.randint(20, 70, (), generator=g))
    q, k = (torch.randn(2, 3, n, 8, generator=g) for _ in range(2))
    kv_len = torch.randint(1, n + 1, (2,), generator=g)
    got = exact_block_scores(q, k, 16, kv_len, rows_per_chunk=7)
    key_ok = torch.arange(n)[None, :] < kv_len[:, None]
    p = (q @ k.transpose(-1, -2) / math.sqrt(8)).masked_fill(~key_ok[:, None, None, :], float("-inf")).softmax(-1)
    nb = ceil_div(n, 16)
    p = F.pad(p, (0, nb * 16 - n, 0, nb * 16 - n))
    want = p.reshape(2, 3, nb, 16, nb, 16).sum((3, 5))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_oracle_is_the_cheapest_selection_that_reaches_tau():
    """Per row the exact scores' selection keeps >= tau of the true mass, with no more blocks than any other mask
    (the pooled and the antidiagonal estimates here) whose row reaches tau of the true mass too."""
    from xattn_video.estimate import estimate_mask
    from xattn_video.synthetic import video_qkv

    layout = VideoLayout(4, 8, 8)
    q, k, v, kv_len = video_qkv(4, 8, 8, n_text=16, n_text_valid=10, heads=2, head_dim=32, dtype=torch.float32)
    tau = 0.8
    cfg = XAttentionConfig(block_size=16, stride=4, threshold=tau, keep_diagonal=False, keep_text=False)
    req = _request(q, k, kv_len, layout, cfg)
    exact = exact_block_scores(q, k, 16, kv_len)
    row_mass = lambda m: (exact * m.to_dense()).sum(-1) / exact.sum(-1)  # noqa: E731
    oracle = ScoredSource("exact")(req)
    assert bool((row_mass(oracle) >= tau - 1e-5).all())
    compared = 0
    for other in (ScoredSource("pooled")(req), estimate_mask(q, k, block_size=16, stride=4, threshold=tau,
                                                             kv_len=kv_len, keep_diagonal=False)):
        reaches = row_mass(other) >= tau
        assert bool((oracle.kv_counts[reaches] <= other.kv_counts[reaches]).all())
        compared += int(reaches.sum())
    assert compared > 0


def test_scored_source_honours_max_density():
    layout = VideoLayout(4, 8, 8)
    q, k, _ = _qkv(1, 2, 256, 16, seed=5)
    cfg = XAttentionConfig(block_size=16, stride=4, threshold=1.0, max_density=0.25, keep_text=False)
    mask = ScoredSource("pooled")(_request(q, k, None, layout, cfg))
    assert int(mask.kv_counts.max()) == math.ceil(0.25 * 16)


def test_svg_picks_the_candidate_that_matches_the_head():
    """Head 0 attends within its frame, head 1 to its own spatial place in every frame: SVG must pick the band
    for head 0 and the temporal stripe for head 1, on both criteria."""
    layout = VideoLayout(4, 4, 8)  # 32 tokens per frame, blocks of 8 = one row
    c = layout.coords()
    n, d = layout.num_tokens, 64
    frame_code = F.one_hot(c["t"], d).float()
    place_code = F.one_hot(c["s"] % d, d).float()
    q = torch.stack([frame_code, place_code])[None] * 8.0  # [1, 2, N, D]
    k = q.clone()
    v = torch.randn(1, 2, n, d, generator=torch.Generator().manual_seed(0))
    svg_spec = dict(spatial=Band(layout.frame_tokens - 1), temporal=Temporal(0), samples=16)
    for criterion in ("mass", "mse"):
        svg = SVG(**svg_spec, criterion=criterion)
        keep, choice = svg_head_keep(svg, q, k, layout, 8, v=v)
        assert choice.tolist() == [[0, 1]], criterion
        assert torch.equal(keep[0, 0], video_block_keep(svg.spatial, layout, 8))
        assert torch.equal(keep[0, 1], video_block_keep(svg.temporal, layout, 8))
    source = SVGSource(SVG(**svg_spec), layout)
    cfg = XAttentionConfig(block_size=8, stride=4)
    mask = source(_request(q, k, None, layout, cfg))
    assert source.last_choice.tolist() == [[0, 1]]
    assert mask.kv_indices.shape[1] == 2  # one mask per head
    with pytest.raises(ValueError, match="needs v"):
        svg_head_keep(SVG(**svg_spec, criterion="mse"), q, k, layout, 8)


def test_fit_density_finds_the_widest_pattern_under_the_target():
    layout = VideoLayout(6, 8, 8)
    r, density = fit_density(lambda r: Band(r), layout, 16, target=0.3)
    assert density <= 0.3 < pattern_density(Band(r + 1), layout, 16)
    assert density == pattern_density(Band(r), layout, 16)
    with pytest.raises(ValueError, match="target=0.01"):
        fit_density(lambda r: Band(r), layout, 16, target=0.01)
    # with text, the density is that of the mask StaticSource gives for the same sequence
    r, density = fit_density(lambda r: Window3D((r, r, r)), layout, 16, 0.5, text_tokens=40, valid_text_tokens=9)
    q = torch.zeros(1, 1, layout.num_tokens + 40, 8)
    cfg = XAttentionConfig(block_size=16, stride=4)
    req = _request(q, q, torch.tensor([layout.num_tokens + 9]), layout, cfg)
    assert StaticSource(Window3D((r, r, r)), layout)(req).density() == density


def test_static_mask_is_shared_by_heads_and_fits_the_kernel_shape():
    layout = VideoLayout(2, 4, 4)
    keep = video_block_keep(Temporal(1), layout, 8)
    mask = assemble_mask(keep, layout, 8, q_len=40, kv_len=torch.tensor([40, 35, 33]))
    assert isinstance(mask, BlockSparseMask)
    assert mask.kv_indices.shape == (3, 1, 5, 5) and mask.kv_counts.dtype == torch.int32
