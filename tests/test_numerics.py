"""Numerical parity with SDPA: NaN and +-Inf in q, k or v propagate as in dense attention over the kept keys, in
the reference and the Triton paths (interpreter); padded keys and skipped blocks never turn a finite row into
NaN; property-based tests (hypothesis) of ``xattention`` against a dense oracle built from SDPA itself."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xattn_video import BlockSparseMask, OpConfig, xattention
from xattn_video.config import ceil_div
from xattn_video.kernels.block_sparse_attention import block_sparse_attention_triton
from xattn_video.kernels.estimate import strided_block_scores_triton
from xattn_video.kernels.reference import select_blocks_reference
from xattn_video.kernels.select import select_blocks_triton

NAN, INF = float("nan"), float("inf")
# derandomized: the same examples on every run (the suite stays reproducible); no example database on disk
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # numpy, NaN on purpose
PROPS = dict(deadline=None, derandomize=True, database=None,
             suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def sdpa(q, k, v) -> torch.Tensor:
    """Dense SDPA as the definition: the math backend (torch 2.14's fused CPU kernel drops a NaN query when the
    row has fewer than 16 keys: its output is 0 there, NaN from 16 keys on), with a row whose every logit is -inf
    at 0, as the fused CPU and CUDA kernels give it (the math backend gives NaN)."""
    with sdpa_kernel(SDPBackend.MATH):
        out = F.scaled_dot_product_attention(q, k, v)
    no_finite = (q @ k.transpose(-1, -2) == -INF).all(-1, keepdim=True)
    return torch.where(no_finite, 0.0, out)


def oracle(q, k, v, mask: BlockSparseMask) -> torch.Tensor:
    """SDPA itself, per (sample, head, query block), over exactly the kept and valid keys (sliced, not masked:
    a masked SDPA still multiplies a masked NaN value by 0). A query block that keeps no key outputs zeros."""
    b, h, n, d = q.shape
    bs = mask.block_size
    keep = mask.to_dense().expand(b, h, -1, -1)
    out = torch.zeros(b, h, n, d, dtype=torch.float32)
    for bi in range(b):
        kv = int(mask.kv_len[bi])
        for hi in range(h):
            for qi in range(keep.shape[2]):
                cols = torch.cat([torch.arange(j * bs, min((j + 1) * bs, kv))
                                  for j in keep[bi, hi, qi].nonzero().flatten().tolist()] or [torch.arange(0)])
                if cols.numel():
                    rows = slice(qi * bs, min((qi + 1) * bs, n))
                    out[bi, hi, rows] = sdpa(
                        q[bi, hi, rows].float()[None], k[bi, hi, cols].float()[None], v[bi, hi, cols].float()[None])[0]
    return out


def dense_sdpa(q, k, v, kv_len: torch.Tensor) -> torch.Tensor:
    """Dense attention over each sample's valid keys (sliced), what the issue's parity is measured against."""
    return torch.cat([sdpa(q[i:i + 1].float(), k[i:i + 1, :, :n].float(), v[i:i + 1, :, :n].float())
                      for i, n in enumerate(kv_len.tolist())])


def triton_xattention(q, k, v, cfg: OpConfig, kv_len, global_start=None, threshold=None):
    """The Triton path of ``xattention`` (estimate -> select -> attend), run by the interpreter on the CPU."""
    tau = cfg.threshold if threshold is None else threshold
    if isinstance(tau, (int, float)) and tau >= 1 and cfg.max_density is None:
        keep = torch.ones(q.shape[0], 1, ceil_div(q.shape[2], cfg.block_size), ceil_div(k.shape[2], cfg.block_size),
                          dtype=torch.bool)
        mask = BlockSparseMask.from_dense(keep, cfg.block_size, q.shape[2], kv_len)
    else:
        scores = strided_block_scores_triton(q, k, cfg.block_size, cfg.stride, kv_len)
        mask = select_blocks_triton(scores, torch.tensor(tau, dtype=torch.float32), block_size=cfg.block_size,
                                    q_len=q.shape[2], kv_len=kv_len, keep_diagonal=cfg.keep_diagonal,
                                    max_density=cfg.max_density,
                                    global_start=global_start if cfg.keep_text else None)
    return block_sparse_attention_triton(q, k, v, mask, 1.0 / math.sqrt(q.shape[-1])), mask


def run(path: str, q, k, v, cfg, kv_len, global_start=None):
    if path == "triton":
        return triton_xattention(q, k, v, cfg, kv_len, global_start)
    return xattention(q, k, v, cfg, kv_len, global_start=global_start)


def same_faults(out: torch.Tensor, want: torch.Tensor, tol: float = 1e-4) -> None:
    """NaN where ``want`` is NaN, the same infinities, finite values close."""
    assert torch.equal(out.isnan(), want.isnan()), (int(out.isnan().sum()), int(want.isnan().sum()))
    assert torch.equal(out.isinf(), want.isinf())
    torch.testing.assert_close(out.float(), want.float(), atol=tol, rtol=tol, equal_nan=True)


def _qkv(b=1, h=2, n=64, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, h, n, d, generator=g) for _ in range(3)]


def test_one_nan_in_q_gives_sdpa_nans_at_tau_1():
    """The issue's reproduction: one NaN in q gave 16 NaNs through SDPA and none through xattention()."""
    q, k, v = _qkv()
    q[0, 0, 5, 3] = NAN
    want = F.scaled_dot_product_attention(q, k, v)
    out, _ = xattention(q, k, v, OpConfig(block_size=16, stride=4, threshold=1.0))
    assert int(want.isnan().sum()) == 16
    same_faults(out, want, 1e-5)


# where the fault goes, which tensor; the token lies in query block 1 of 4 (block 16) and is a valid key
FAULTS = [(name, value, tensor) for tensor in ("q", "k", "v")
          for name, value in (("nan", NAN), ("+inf", INF), ("-inf", -INF))]


@pytest.mark.parametrize("path", ["reference", "triton"])
@pytest.mark.parametrize("tau", [1.0, 0.5])
@pytest.mark.parametrize("name,value,tensor", FAULTS)
def test_faults_propagate_as_sdpa(path, tau, name, value, tensor):
    """Parity with dense SDPA (valid keys only): at tau = 1 for every fault; below 1 for faults in q and k (the
    estimate cannot rank the affected rows and keeps them whole); faults in v through the kept blocks."""
    b, h, n, d, bs = 2, 2, 64, 16, 16
    q, k, v = _qkv(b, h, n, d, seed=3)
    kv_len = torch.tensor([n, n - 9])
    x = {"q": q, "k": k, "v": v}[tensor]
    x[:, 1, 21, 5] = value  # head 1 of both samples: head 0 stays clean
    cfg = OpConfig(block_size=bs, stride=4, threshold=tau, keep_diagonal=False, keep_text=False)
    out, mask = run(path, q, k, v, cfg, kv_len)
    dense = dense_sdpa(q, k, v, kv_len)
    assert out[:, 0].isfinite().all()  # the clean head stays clean
    if tau == 1.0:
        same_faults(out, dense)
    elif tensor in ("q", "k"):  # faults exactly where dense attention has them, the rest as the mask says
        assert torch.equal(out.isnan(), dense.isnan()) and torch.equal(out.isinf(), dense.isinf())
        same_faults(out, oracle(q, k, v, mask))
    else:  # a value fault reaches the rows that keep its block, no other row
        same_faults(out, oracle(q, k, v, mask))
        assert mask.density() < 1.0 and out[:, 1].isfinite().any() and not dense[:, 1].isfinite().all()


@pytest.mark.parametrize("path", ["reference", "triton"])
def test_padded_keys_never_reach_a_row(path):
    """NaN / Inf past kv_len in k and v: the same mask and output as with finite padding."""
    b, h, n, d = 2, 2, 80, 16
    q, k, v = _qkv(b, h, n, d, seed=5)
    kv_len = torch.tensor([n - 3, n - 29])  # inside a stride group and inside a block
    cfg = OpConfig(block_size=16, stride=4, threshold=0.8)
    clean, clean_mask = run(path, q, k, v, cfg, kv_len)
    k2, v2 = k.clone(), v.clone()
    for i, length in enumerate(kv_len.tolist()):
        k2[i, :, length:] = torch.tensor([NAN, INF, -INF]).repeat(n)[: n - length, None]
        v2[i, :, length:] = NAN
    out, mask = run(path, q, k2, v2, cfg, kv_len)
    assert torch.isfinite(out).all()
    assert torch.equal(mask.kv_indices, clean_mask.kv_indices) and 0.0 < mask.density() < 1.0
    torch.testing.assert_close(out, clean, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("path", ["reference", "triton"])
def test_skipped_blocks_never_reach_a_row(path):
    """NaN in the values of a key block that some rows skip: those rows stay finite and exact."""
    b, h, n, d, bs = 1, 1, 64, 16, 16
    q, k, v = _qkv(b, h, n, d, seed=9)
    keep = torch.eye(4, dtype=torch.bool)[None, None].clone()
    keep[..., 3, 2] = True  # only query block 3 keeps key block 2
    mask = BlockSparseMask.from_dense(keep, bs, n)
    v[0, 0, 40] = NAN  # key block 2
    cfg = OpConfig(block_size=bs, stride=4)
    if path == "triton":
        out = block_sparse_attention_triton(q, k, v, mask)
    else:
        out, _ = xattention(q, k, v, cfg, mask=mask)
    want = oracle(q, k, v, mask)
    same_faults(out, want)
    assert out[0, 0, :32].isfinite().all() and out[0, 0, 48:].isnan().all()


@pytest.mark.parametrize("path", ["reference", "triton"])
def test_rows_without_a_finite_logit_output_zeros_as_sdpa(path):
    """q = -Inf against positive keys: every logit of the row is -inf; SDPA's fused kernel outputs 0, so do we
    (the old exp2(-inf - -inf) would have been NaN); a row keeping no block outputs 0 too."""
    q, k, v = _qkv(1, 1, 48, 16, seed=2)
    k = k.abs() + 0.1
    q[0, 0, 7, 0] = -INF
    want = F.scaled_dot_product_attention(q, k, v)
    assert torch.equal(want[0, 0, 7], torch.zeros(16))
    out, _ = run(path, q, k, v, OpConfig(block_size=16, stride=4, threshold=1.0), torch.tensor([48]))
    same_faults(out, want)
    keep = torch.zeros(1, 1, 3, 3, dtype=torch.bool)
    keep[..., 0, 0] = True  # query blocks 1 and 2 keep nothing
    empty = BlockSparseMask.from_dense(keep, 16, 48)
    got = block_sparse_attention_triton(q, k, v, empty) if path == "triton" else xattention(q, k, v, mask=empty)[0]
    assert torch.equal(got[0, 0, 16:], torch.zeros(32, 16))


def test_estimate_nan_rows_select_every_block_on_both_backends():
    """The selection never cleans a NaN score away (on a GPU tl.maximum(NaN, 0) is 0): the row keeps all."""
    scores = torch.rand(1, 2, 4, 4, generator=torch.Generator().manual_seed(0)) ** 4
    scores[0, 1, 2, 3] = NAN
    scores[0, 0, 1, 0] = INF
    kwargs = dict(block_size=16, q_len=64, kv_len=torch.tensor([60]), keep_diagonal=False, max_density=0.25)
    for select in (select_blocks_reference, select_blocks_triton):
        mask = select(scores, torch.tensor(0.5), **kwargs)
        counts = mask.kv_counts[0]
        assert counts[1, 2] == 4 and counts[0, 1] == 4, select.__name__
        assert counts[0, 0] == 1 and counts[1, 0] == 1  # the others keep their budget


# -- property-based: the op against its dense oracle -----------------------------------------------------

BLOCK_STRIDE = [(16, 4), (16, 8), (32, 8), (32, 16)]


@st.composite
def attention_case(draw, heads_max: int = 3, blocks_max: int = 5):
    block, stride = draw(st.sampled_from(BLOCK_STRIDE))
    b = draw(st.integers(1, 2))
    h = draw(st.integers(1, heads_max))
    n = draw(st.integers(1, blocks_max * block))
    kv_len = torch.tensor(draw(st.lists(st.integers(1, n), min_size=b, max_size=b)))
    global_start = draw(st.one_of(st.none(), st.integers(0, n)))
    tau = draw(st.one_of(
        st.floats(0.05, 1.0),
        st.lists(st.floats(0.05, 1.0), min_size=h, max_size=h),  # per-head thresholds
    ))
    layer = draw(st.integers(0, 2))
    override = None
    if draw(st.booleans()):  # a per-layer / per-head table, looked up with `layer`
        per_head = tau if isinstance(tau, list) else [tau] * h
        threshold = {"default": 0.9, "layers": {0: 0.7}, "heads": {1: per_head}}
    elif isinstance(tau, list):  # per-head values as the call's override
        threshold, override = 0.9, tau
    else:
        threshold = tau
    cfg = OpConfig(block_size=block, stride=stride, threshold=threshold,
                   keep_diagonal=draw(st.booleans()), keep_text=draw(st.booleans()),
                   max_density=draw(st.one_of(st.none(), st.floats(0.05, 1.0))))
    sharp = draw(st.sampled_from([0.5, 2.0, 4.0]))  # larger: peakier attention, sparser masks
    seed = draw(st.integers(0, 2**16))
    return dict(b=b, h=h, n=n, kv_len=kv_len, global_start=global_start, cfg=cfg, layer=layer, sharp=sharp,
                seed=seed, override=override)


def _tau(case):
    return case["override"] if case["override"] is not None else case["cfg"].threshold_for(case["layer"], case["h"])


def _op(q, k, v, case):
    return xattention(q, k, v, case["cfg"], case["kv_len"], layer=case["layer"], global_start=case["global_start"],
                      threshold=case["override"])


def _inputs(case, d=16):
    g = torch.Generator().manual_seed(case["seed"])
    q, k, v = (torch.randn(case["b"], case["h"], case["n"], d, generator=g) for _ in range(3))
    return q * case["sharp"], k * case["sharp"], v


def _check_mask(mask: BlockSparseMask, case) -> None:
    """The rules of the selection, whatever the scores: no padded block; diagonal, text keys and text query
    rows as configured; every valid block at tau = 1 without a budget."""
    cfg, n, bs = case["cfg"], case["n"], case["cfg"].block_size
    keep = mask.to_dense().expand(case["b"], case["h"], -1, -1)
    qb, kb = keep.shape[2:]
    start = torch.arange(kb) * bs
    valid = start[None, :] < case["kv_len"][:, None]  # [B, KB]
    assert not (keep & ~valid[:, None, None, :]).any()
    if cfg.keep_diagonal:
        diag = torch.eye(qb, kb, dtype=torch.bool)[None, None] & valid[:, None, None, :]
        assert (keep | ~diag).all()
    gs = case["global_start"]
    if cfg.keep_text and gs is not None:
        text_cols = (start + bs > gs)[None, :] & valid & (gs < case["kv_len"])[:, None]
        assert (keep | ~text_cols[:, None, None, :]).all()
        if gs < n:
            text_rows = (torch.arange(qb) + 1) * bs > gs
            assert (keep[:, :, text_rows] == valid[:, None, None, :]).all()
    tau = _tau(case)
    if isinstance(tau, float) and tau >= 1.0 and cfg.max_density is None:
        assert torch.equal(keep, valid[:, None, None, :].expand_as(keep))


@settings(max_examples=25, **PROPS)
@given(case=attention_case())
def test_property_reference_op_equals_sdpa_over_its_mask(case):
    q, k, v = _inputs(case)
    out, mask = _op(q, k, v, case)
    _check_mask(mask, case)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, oracle(q, k, v, mask), atol=2e-5, rtol=2e-5)


@settings(max_examples=6, **PROPS)
@given(case=attention_case(heads_max=2, blocks_max=4))
def test_property_triton_path_equals_reference(case):
    """Estimate, selection and attention kernels (interpreter) against the reference op: the same mask up to
    float ties in the selection, and the same output over the Triton mask."""
    q, k, v = _inputs(case)
    cfg = case["cfg"]
    out, mask = triton_xattention(q, k, v, cfg, case["kv_len"], case["global_start"], threshold=_tau(case))
    _check_mask(mask, case)
    torch.testing.assert_close(out, oracle(q, k, v, mask), atol=1e-4, rtol=1e-4)
    _, ref_mask = _op(q, k, v, case)
    agree = (mask.to_dense() == ref_mask.to_dense()).float().mean()
    assert agree >= 0.9  # block scores differ in float rounding only: near-ties may flip a block


@settings(max_examples=15, **PROPS)
@given(case=attention_case(), fault=st.sampled_from(["q", "k"]), value=st.sampled_from([NAN, INF, -INF]),
       where=st.floats(0.0, 0.999))
def test_property_faults_in_q_or_k_match_dense_sdpa(case, fault, value, where):
    """Any threshold, budget, text and diagonal setting: a NaN / Inf in q or in a valid key gives exactly
    dense SDPA's NaNs and infinities (the rows it touches run dense), and finite values elsewhere as the mask
    says."""
    q, k, v = _inputs(case)
    b = int(where * case["b"])
    if fault == "q":
        pos = int(where * case["n"])
    else:
        pos = int(where * int(case["kv_len"][b]))  # a valid key
    ({"q": q, "k": k}[fault])[b, 0, pos, 3] = value
    out, mask = _op(q, k, v, case)
    want = dense_sdpa(q, k, v, case["kv_len"])
    assert torch.equal(out.isnan(), want.isnan()) and torch.equal(out.isinf(), want.isinf())
    torch.testing.assert_close(out, oracle(q, k, v, mask), atol=2e-5, rtol=2e-5, equal_nan=True)


@settings(max_examples=15, **PROPS)
@given(case=attention_case(), diagonal=st.booleans())
def test_property_rows_where_only_the_diagonal_or_only_text_survive(case, diagonal):
    """With a budget of one block per row, a row keeps only its diagonal block (keep_diagonal, no text) or only
    the text blocks (keep_text, no diagonal); the output is SDPA over those keys alone."""
    cfg = case["cfg"]
    n, bs = case["n"], cfg.block_size
    if diagonal:
        cfg = OpConfig(block_size=bs, stride=cfg.stride, threshold=0.5, keep_diagonal=True, keep_text=False,
                       max_density=1e-3)
        global_start = None
    else:
        cfg = OpConfig(block_size=bs, stride=cfg.stride, threshold=0.5, keep_diagonal=False, keep_text=True,
                       max_density=1e-3)
        global_start = case["global_start"] if case["global_start"] is not None else n
    kv_len = torch.full((case["b"],), n)
    q, k, v = _inputs(case)
    out, mask = xattention(q, k, v, cfg, kv_len, global_start=global_start)
    keep = mask.to_dense()
    qb = keep.shape[2]
    if diagonal:
        assert torch.equal(keep, torch.eye(qb, dtype=torch.bool).expand_as(keep))
    else:
        text_cols = (torch.arange(qb) * bs + bs > global_start) & (global_start < n)  # global_start = n: no text
        text_rows = ((torch.arange(qb) + 1) * bs > global_start) & (global_start < n)
        for row in range(qb):
            want_row = torch.ones(qb, dtype=torch.bool) if text_rows[row] else text_cols
            if text_cols.any() or text_rows[row]:
                assert (keep[:, :, row] == want_row).all()
            else:  # no text at all: the budget keeps the best-scored block alone
                assert (keep[:, :, row].sum(-1) == 1).all()
    torch.testing.assert_close(out, oracle(q, k, v, mask), atol=2e-5, rtol=2e-5)
