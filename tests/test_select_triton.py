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
    assert torch.equal(got.kv_counts, want.kv_counts)
    assert torch.equal(got.kv_indices, want.kv_indices)
    assert got.density() == pytest.approx(want.density())


def test_triton_selection_long_rows():
    """Rows longer than a few blocks (sorted in one 512-wide register tile) give the same masks."""
    g = torch.Generator().manual_seed(3)
    scores = torch.rand(1, 2, 4, 300, generator=g) ** 8
    kwargs = dict(block_size=128, q_len=512, kv_len=torch.tensor([300 * 128 - 200]), keep_diagonal=True,
                  global_start=300 * 128 - 250)
    want = select_blocks(scores, 0.9, **kwargs)
    got = select_blocks_triton(scores, torch.tensor([0.9]), **kwargs)
    assert 0.05 < want.density() < 0.5
    assert torch.equal(got.kv_indices, want.kv_indices) and torch.equal(got.kv_counts, want.kv_counts)
