"""Antidiagonal estimate and block selection against brute force and their defining properties."""

import math

import pytest
import torch

from xattn_video.config import ceil_div
from xattn_video.estimate import estimate_mask, select_blocks
from xattn_video.kernels.reference import antidiagonal_block_scores, strided_block_scores_reference
from xattn_video.patterns.scores import exact_block_scores
from xattn_video.synthetic import planted_sink


def test_seed_worked_example():
    a = torch.tensor([[0.1, 0.3, 0.2, 0.4], [0.2, 0.5, 0.1, 0.3], [0.4, 0.1, 0.6, 0.2], [0.3, 0.2, 0.4, 0.5]])
    assert torch.allclose(antidiagonal_block_scores(a, 2), torch.tensor([[0.5, 0.5], [0.4, 0.6]]))


def brute_force_scores(q, k, block_size, stride, kv_len, sink_aware=False):
    """Full logits, explicit antidiagonal sums, masked softmax, explicit block sums (loops, no reshapes).
    ``sink_aware``: also the softmax of each sub-block's largest antidiagonal logit; the mean of the two."""
    b, h, n, d = q.shape
    n_k = k.shape[2]
    qb, kb = ceil_div(n, block_size), ceil_div(n_k, block_size)
    out = torch.zeros(b, h, qb, kb, dtype=torch.float64)
    rows, cols = qb * block_size // stride, kb * block_size // stride
    for bi in range(b):
        qp = torch.zeros(qb * block_size, d, dtype=torch.float64)
        kp = torch.zeros(kb * block_size, d, dtype=torch.float64)
        for hi in range(h):
            qp[:n] = q[bi, hi].double()
            kp.zero_()
            kp[: int(kv_len[bi])] = k[bi, hi, : int(kv_len[bi])].double()
            full = qp @ kp.T
            anti = torch.zeros(rows, cols, dtype=torch.float64)
            peak = torch.zeros(rows, cols, dtype=torch.float64)
            for i in range(rows):
                for j in range(cols):
                    diag = [full[i * stride + stride - 1 - c, j * stride + c] for c in range(stride)]
                    anti[i, j] = sum(diag)
                    peak[i, j] = max(diag)
            estimates = [anti / math.sqrt(d) / stride] + ([peak / math.sqrt(d)] if sink_aware else [])
            for logits in estimates:
                for j in range(cols):
                    if j * stride >= int(kv_len[bi]):
                        logits[:, j] = float("-inf")
                p = logits.softmax(-1) / len(estimates)
                for i in range(rows):
                    if i * stride >= n:
                        continue
                    for j in range(cols):
                        out[bi, hi, i * stride // block_size, j * stride // block_size] += p[i, j]
    return out


@pytest.mark.parametrize(
    "b,h,n,block,stride,kv_len",
    [
        (1, 1, 64, 16, 4, None),  # exact multiple, no padding
        (1, 2, 50, 16, 4, None),  # N not a multiple of the block
        (2, 2, 45, 16, 8, [45, 30]),  # batch with different valid key lengths
        (1, 3, 37, 8, 2, [20]),  # small blocks, padded keys
    ],
)
@pytest.mark.parametrize("sink_aware", [False, True])
def test_strided_estimate_equals_brute_force(b, h, n, block, stride, kv_len, sink_aware):
    g = torch.Generator().manual_seed(n * 31 + block)
    q = 2 * torch.randn(b, h, n, 16, generator=g)  # peaked rows: the max and the mean estimates differ
    k = torch.randn(b, h, n, 16, generator=g)
    kvl = torch.tensor(kv_len if kv_len else [n] * b)
    got = strided_block_scores_reference(q, k, block, stride, kvl if kv_len else None, sink_aware=sink_aware)
    want = brute_force_scores(q, k, block, stride, kvl, sink_aware)
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-5)
    # blocks made only of padded keys score zero
    for bi in range(b):
        first_pad_block = ceil_div(int(kvl[bi]), block)
        assert torch.all(got[bi, :, :, first_pad_block:] == 0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sink_aware_estimate_keeps_a_planted_sink_the_mean_drops(seed):
    q, k, sink_block = planted_sink(seed=seed)
    true = exact_block_scores(q, k, 32)[0, 0, 1]
    true = true / true.sum()
    assert true[sink_block] > 0.1, "the planted sink holds a real share of the row's mass"
    kept = {}
    for sink_aware in (False, True):
        mask = estimate_mask(q, k, block_size=32, stride=8, threshold=0.9, keep_diagonal=False,
                             sink_aware=sink_aware)
        row = mask.to_dense()[0, 0, 1]
        kept[sink_aware] = (bool(row[sink_block]), float(true[row].sum()))
    assert kept[False][0] is False and kept[False][1] < 0.9  # the mean underrates the sink: tau missed
    assert kept[True][0] is True and kept[True][1] >= 0.9


def _random_scores(b, h, qb, kb, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, h, qb, kb, generator=g) ** 4  # skewed, like real attention mass


@pytest.mark.parametrize("tau", [0.3, 0.7, 0.9, 0.95])
def test_selection_is_the_minimal_prefix_reaching_tau(tau):
    scores = _random_scores(2, 3, 6, 6, seed=int(tau * 100))
    mask = select_blocks(scores, tau, block_size=16, q_len=96, keep_diagonal=False)
    keep = mask.to_dense()
    p = scores / scores.sum(-1, keepdim=True)
    for idx in torch.cartesian_prod(*(torch.arange(s) for s in scores.shape[:3])):
        row_p, row_keep = p[tuple(idx)], keep[tuple(idx)]
        kept = row_p[row_keep]
        assert kept.sum() >= tau - 1e-6
        assert kept.sum() - kept.min() < tau  # dropping the weakest kept block falls short: minimal
        dropped = row_p[~row_keep]
        if dropped.numel():
            assert dropped.max() <= kept.min()  # the kept blocks are the best ones


def test_selection_ties_are_deterministic_lowest_index_first():
    scores = torch.ones(1, 1, 1, 8)
    mask = select_blocks(scores, 0.5, block_size=4, q_len=4, keep_diagonal=False)
    assert mask.kv_indices[0, 0, 0, :4].tolist() == [0, 1, 2, 3]
    assert mask.kv_counts.item() == 4


def test_diagonal_padding_and_max_density():
    scores = _random_scores(2, 2, 8, 8, seed=3)
    kv_len = torch.tensor([128, 70])  # batch 1: blocks 5.. are padding
    mask = select_blocks(scores, 0.95, block_size=16, q_len=128, kv_len=kv_len, keep_diagonal=True, max_density=0.25)
    keep = mask.to_dense()
    diag = torch.eye(8, dtype=torch.bool)
    assert torch.all(keep[0][:, diag])
    assert torch.all(keep[1][:, :5, :5][:, torch.eye(5, dtype=torch.bool)])
    assert not keep[1, :, :, 5:].any(), "padded key blocks must never be kept"
    assert torch.all(mask.kv_counts[0] <= math.ceil(0.25 * 8))
    assert torch.all(mask.kv_counts[1] <= math.ceil(0.25 * 5))
    assert torch.all(mask.kv_counts >= 1)


def test_tau_one_keeps_every_valid_block_and_global_tokens_are_dense():
    scores = _random_scores(1, 2, 6, 6, seed=5)
    scores[..., 3] = 0.0  # a block with no mass is still kept at tau = 1
    mask = select_blocks(scores, 1.0, block_size=16, q_len=96, kv_len=torch.tensor([90]))
    assert mask.density() == 1.0
    sparse = select_blocks(scores, 0.2, block_size=16, q_len=96, global_start=85, keep_diagonal=False)
    keep = sparse.to_dense()
    assert keep[..., 5].all(), "global key block kept in every row"
    assert keep[:, :, 5].all(), "global query block attends densely"
    assert sparse.density() < 1.0


def test_per_head_thresholds():
    scores = _random_scores(1, 2, 4, 8, seed=9)
    mask = select_blocks(scores, [0.2, 1.0], block_size=16, q_len=64, keep_diagonal=False)
    assert torch.all(mask.kv_counts[0, 1] == 8)
    assert torch.all(mask.kv_counts[0, 0] < 8)
    with pytest.raises(ValueError, match="one per head"):
        select_blocks(scores, [0.5, 0.5, 0.5], block_size=16, q_len=64)
