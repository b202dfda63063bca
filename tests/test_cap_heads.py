"""cap_scope="head": max_density over each head's rows together (``reference.cap_heads``), against a direct
loop over the documented rule, on both backends' selections, and what it buys: more estimated mass kept for
the same number of blocks."""

import pytest
import torch

from xattn_video import XAttentionConfig, xattention
from xattn_video.config import OpConfig
from xattn_video.estimate import select_blocks
from xattn_video.kernels.reference import cap_heads, select_blocks_reference


def direct_cap_heads(keep, scores, max_density, block, q_len, kv_len, keep_diagonal, global_start):
    """The rule of ``cap_heads`` written as loops over heads, rows and blocks."""
    b, h, qb, kb = scores.shape
    out = keep.clone()
    for bi in range(b):
        valid = [j * block < int(kv_len[bi]) for j in range(kb)]
        for hi in range(h):
            rows = []
            for r in range(qb):
                s = [float(scores[bi, hi, r, j]) if valid[j] else 0.0 for j in range(kb)]
                finite = all(torch.isfinite(scores[bi, hi, r, j]) for j in range(kb) if valid[j])
                global_row = global_start is not None and (r + 1) * block > global_start and global_start < q_len
                if finite and not global_row:
                    total = sum(max(x, 0.0) for x in s) or 1e-38
                    rows.append((r, [max(x, 0.0) / total for x in s]))
            n_valid = sum(valid) * len(rows)
            budget = int(torch.ceil(torch.tensor(max_density * n_valid - 1e-6)))
            must, candidates = set(), []
            for r, p in rows:
                kept = [j for j in range(kb) if keep[bi, hi, r, j] and valid[j]]
                for j in kept:
                    diag = keep_diagonal and j == r
                    glob = global_start is not None and (j + 1) * block > global_start \
                        and global_start < int(kv_len[bi])
                    if diag or glob:
                        must.add((r, j))
                if kept:
                    must.add((r, max(kept, key=lambda j: (p[j], -j))))
                candidates += [(-p[j], r * kb + j, r, j) for j in kept]
            free = max(budget - len(must), 0)
            chosen = [(r, j) for _, _, r, j in sorted(c for c in candidates if (c[2], c[3]) not in must)][:free]
            for r, _ in rows:
                out[bi, hi, r] = False
            for r, j in must | set(chosen):
                out[bi, hi, r, j] = True
    return out


CASES = [  # b, h, qb, kb, block, kv_len, tau, keep_diagonal, max_density, global_start
    (1, 2, 9, 9, 16, [140], 0.95, True, 0.3, None),
    (2, 3, 7, 10, 16, [160, 100], [0.5, 0.9, 1.0], False, 0.15, None),  # per-head tau, padded batch
    (2, 2, 8, 8, 16, [128, 100], 0.9, True, 0.2, 110),  # global tokens: dense rows, kept key blocks
    (1, 1, 6, 6, 32, [192], 1.0, True, 0.5, None),
]


@pytest.mark.parametrize("b,h,qb,kb,block,kv_len,tau,diag,max_density,global_start", CASES)
@pytest.mark.parametrize("ties", [False, True])
def test_cap_heads_equals_direct_rule(b, h, qb, kb, block, kv_len, tau, diag, max_density, global_start, ties):
    g = torch.Generator().manual_seed(qb * 11 + kb + int(ties))
    scores = torch.rand(b, h, qb, kb, generator=g) ** 4
    if ties:
        scores = (scores * 4).round() / 4
    kvl = torch.tensor(kv_len)
    q_len = qb * block - 5
    uncapped = select_blocks_reference(scores, tau, block_size=block, q_len=q_len, kv_len=kvl,
                                       keep_diagonal=diag, global_start=global_start)
    got = cap_heads(uncapped, scores, max_density, keep_diagonal=diag, global_start=global_start)
    want = direct_cap_heads(uncapped.to_dense().expand(b, h, qb, kb), scores, max_density, block, q_len, kvl, diag,
                            global_start)
    assert torch.equal(got.to_dense().expand(b, h, qb, kb), want)
    # through select_blocks on both backends (the Triton kernel selects, cap_heads caps)
    kwargs = dict(block_size=block, q_len=q_len, kv_len=kvl, keep_diagonal=diag, max_density=max_density,
                  global_start=global_start, cap_scope="head")
    ref = select_blocks(scores, tau, backend="reference", **kwargs)
    tri = select_blocks(scores, tau, backend="triton", **kwargs)
    assert torch.equal(ref.to_dense(), got.to_dense()) and torch.equal(tri.to_dense(), got.to_dense())


def test_a_row_with_a_fault_keeps_every_block_and_no_row_is_emptied():
    g = torch.Generator().manual_seed(5)
    scores = torch.rand(1, 2, 6, 6, generator=g) ** 6
    scores[0, 1, 2, 4] = float("nan")
    mask = select_blocks(scores, 0.9, block_size=16, q_len=96, keep_diagonal=False, max_density=0.1,
                         cap_scope="head")
    keep = mask.to_dense()
    assert keep[0, 1, 2].all()  # the faulty row is not ranked: every block
    assert keep.any(-1).all()  # every row keeps at least its best block


def test_head_scope_keeps_more_mass_for_the_same_blocks():
    """Rows of mixed concentration, tau = 1, 3 of 10 blocks per row: a per-row cap spends 3 blocks on rows
    that need 1; the head-wide cap gives them to broad rows, never keeping less estimated mass (it is the
    best choice of that many blocks that keeps each row's best block)."""
    g = torch.Generator().manual_seed(0)
    b, h, qb, kb = 2, 4, 10, 10
    peak = torch.linspace(0.5, 8.0, qb).reshape(1, 1, qb, 1)  # row r: how peaked its scores are
    scores = torch.rand(b, h, qb, kb, generator=g) ** peak
    p = scores / scores.sum(-1, keepdim=True)
    kwargs = dict(block_size=16, q_len=qb * 16, keep_diagonal=False, max_density=0.3)
    row = select_blocks(scores, 1.0, **kwargs).to_dense()
    head = select_blocks(scores, 1.0, cap_scope="head", **kwargs).to_dense()
    assert head.sum() == row.sum() == b * h * qb * 3
    assert (p * head).sum() > (p * row).sum() * 1.01
    assert not torch.equal(head.sum(-1), row.sum(-1))  # rows got different budgets


def test_config_and_op(tmp_path):
    with pytest.raises(ValueError, match="cap_scope='layer' is not one of"):
        OpConfig(cap_scope="layer")
    cfg = XAttentionConfig(block_size=16, stride=4, threshold=0.95, max_density=0.25, cap_scope="head")
    cfg.save(tmp_path / "c.yaml")
    assert XAttentionConfig.load(tmp_path / "c.yaml") == cfg and cfg.op.cap_scope == "head"
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, 3, 150, 16, generator=g) for _ in range(3))
    out, mask = xattention(q, k, v, cfg)
    assert out.shape == q.shape and torch.isfinite(out).all()
    assert mask.density() <= 0.25 + 2 / 10  # the head's budget plus each row's forced diagonal
