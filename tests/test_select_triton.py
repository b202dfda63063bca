"""The Triton selection kernel equals estimate.select_blocks (its PyTorch twin), under the interpreter."""

import pytest
import torch

from xattn_video.estimate import select_blocks
from xattn_video.kernels.select import select_blocks_triton

CASES = [  # b, h, qb, kb, block, kv_len, tau, keep_diagonal, max_density, global_start
    (1, 1, 5, 5, 16, [80], 0.9, True, None, None),
    (2, 3, 7, 7, 16, [112, 70], [0.5, 0.9, 0.95], True, None, None),  # per-head tau, padded batch
    (2, 2, 6, 9, 32, [288, 200], 0.8, False, None, None),  # more keys than queries, no diagonal
    (1, 2, 9, 9, 16, [140], 0.95, True, 0.3, None),  # density budget
    (2, 2, 8, 8, 16, [128, 100], 0.7, True, 0.2, 110),  # budget + global tokens
    (1, 1, 6, 6, 16, [96], 1.0, True, None, 90),  # tau = 1 keeps everything
    (1, 2, 5, 5, 16, [80], 0.3, True, None, 80),  # global_start at the end: no global tokens
    (2, 1, 3, 3, 16, [48, 48], 0.9, True, 0.5, 0),  # everything global
]


def assert_same(got, want):
    assert torch.equal(got.kv_counts, want.kv_counts)
    assert torch.equal(got.kv_indices, want.kv_indices)


@pytest.mark.parametrize("b,h,qb,kb,block,kv_len,tau,diag,max_density,global_start", CASES)
@pytest.mark.parametrize("ties", [False, True])
def test_triton_selection_equals_torch(b, h, qb, kb, block, kv_len, tau, diag, max_density, global_start, ties):
    g = torch.Generator().manual_seed(qb * 7 + kb + int(ties))
    scores = torch.rand(b, h, qb, kb, generator=g) ** 3
    if ties:  # equal scores must go to the lower index in both
        scores = (scores * 4).round() / 4
    kvl = torch.tensor(kv_len)
    kwargs = dict(block_size=block, q_len=qb * block, kv_len=kvl, keep_diagonal=diag, max_density=max_density,
                  global_start=global_start)
    want = select_blocks(scores, tau, **kwargs)
    got = select_blocks_triton(scores, torch.tensor(tau, dtype=torch.float32), **kwargs)
    assert_same(got, want)
    assert got.density() == pytest.approx(want.density())


def test_triton_selection_long_rows():
    """Rows longer than a few blocks (one 512-wide register tile) give the same masks."""
    g = torch.Generator().manual_seed(3)
    scores = torch.rand(1, 2, 4, 300, generator=g) ** 8
    kwargs = dict(block_size=128, q_len=512, kv_len=torch.tensor([300 * 128 - 200]), keep_diagonal=True,
                  global_start=300 * 128 - 250)
    want = select_blocks(scores, 0.9, **kwargs)
    got = select_blocks_triton(scores, torch.tensor([0.9]), **kwargs)
    assert 0.05 < want.density() < 0.5
    assert_same(got, want)


RANDOM = [  # seed, b, h, qb, kb, block, kv_len, max_density, global_start (None: none), on a grid
    (0, 2, 3, 5, 37, 16, [37 * 16, 300], None, None, False),
    (1, 2, 3, 5, 37, 16, [37 * 16, 300], 0.2, None, True),
    (2, 1, 2, 4, 300, 64, [300 * 64 - 100], 0.3, None, False),
    (3, 2, 2, 3, 931, 128, [931 * 128, 700 * 128 + 5], None, 931 * 128 - 256, False),  # 720p-like rows, padded
    (4, 2, 2, 3, 931, 128, [931 * 128, 700 * 128 + 5], None, 931 * 128 - 256, True),
    (5, 1, 3, 4, 931, 128, [931 * 128 - 60], 0.25, 931 * 128 - 300, True),  # budget + global at 720p width
    (6, 2, 2, 5, 130, 32, [130 * 32, 97 * 32], 0.1, 120 * 32, False),
]


def _tau_mass_ambiguous(scores, tau, kv_len, block, margin=1e-6):
    """[B, H, QB] rows where a running mass of the reference lands within `margin` of tau: there the sum of the
    row (torch adds in one order, the kernel in another) can move the cut by one block."""
    valid = (torch.arange(scores.shape[-1]) * block < kv_len[:, None])[:, None, None, :]
    s = torch.where(valid, scores.clamp_min(0), 0.0)
    p = s / s.sum(-1, keepdim=True)
    srt = p.sort(-1, descending=True).values
    before = srt.cumsum(-1) - srt
    return ((before - tau.reshape(1, -1, 1, 1)).abs() < margin).any(-1)


@pytest.mark.parametrize("seed,b,h,qb,kb,block,kv_len,max_density,global_start,grid", RANDOM)
def test_selection_equals_torch_random(seed, b, h, qb, kb, block, kv_len, max_density, global_start, grid):
    """Randomized rows of odd and 720p-like lengths, heavy-tailed, per-head tau, padding, budget, global tokens.

    ``grid``: scores on a 2**-14 grid (many ties, zeros among them); every row sum is then exact in float32,
    so the masks must be equal everywhere. Otherwise the row sum's rounding depends on the order of addition
    (torch's and the kernel's differ), so rows whose running mass lies within 1e-6 of tau may differ by one
    block; the others must be equal, and such rows must be rare.
    """
    g = torch.Generator().manual_seed(seed)
    scores = torch.rand(b, h, qb, kb, generator=g) ** (2 + 10 * torch.rand(b, h, qb, 1, generator=g))
    scores[..., 0, :] -= 0.05  # negative scores: clamped to 0
    if grid:
        scores = (scores * 2**14).floor() / 2**14
    tau = 0.5 + 0.49 * torch.rand(h, generator=g)
    kvl = torch.tensor(kv_len)
    kwargs = dict(block_size=block, q_len=qb * block, kv_len=kvl, keep_diagonal=bool(seed % 2 == 0),
                  max_density=max_density, global_start=global_start)
    want = select_blocks(scores, tau, **kwargs)
    got = select_blocks_triton(scores, tau, **kwargs)
    same = (got.kv_counts == want.kv_counts) & (got.kv_indices == want.kv_indices).all(-1)
    if grid:
        assert same.all()
    else:
        ambiguous = _tau_mass_ambiguous(scores, tau, kvl, block)
        assert (same | ambiguous).all()
        assert ambiguous.float().mean() < 0.05


def test_selection_tau_boundary_and_ties():
    """Masses that land exactly on tau, long runs of equal scores cut inside the run, all-zero rows, tau <= 0,
    a budget cutting inside a tie run, NaN / Inf rows. (The earlier sort kernel, whose prefix sums added in
    float32, got the second row wrong: torch's add in float64 on a CPU.)"""
    kb = 45
    rows = [
        torch.ones(kb),  # one long tie run, cut inside
        torch.cat([torch.full((5,), 4.0), torch.full((20,), 1.0), torch.zeros(kb - 25)]),  # 0.5 up to rounding
        torch.cat([torch.full((4,), 4.0), torch.full((16,), 1.0), torch.zeros(kb - 20)]),  # 0.5, 0.25 exactly
        torch.zeros(kb),  # nothing to rank: every valid block is kept (before = 0 < tau)
        torch.arange(kb, 0, -1).float(),
        torch.arange(kb).float() % 3,  # ties everywhere, the best ones at the end
        -torch.ones(kb),  # all negative: all zero
    ]
    scores = torch.stack(rows)[None, None].repeat(1, 4, 1, 1)  # [1, 4, 7, kb]
    scores[0, 3, 4, 7] = float("nan")
    scores[0, 3, 1, 40] = float("inf")
    tau = torch.tensor([0.5, 0.25, 0.0, 0.75])
    kvl = torch.tensor([kb * 16 - 3])
    for max_density in (None, 0.2):
        kwargs = dict(block_size=16, q_len=7 * 16, kv_len=kvl, keep_diagonal=False, max_density=max_density)
        want = select_blocks(scores, tau, **kwargs)
        assert_same(select_blocks_triton(scores, tau, **kwargs), want)
