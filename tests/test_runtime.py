"""The host-agnostic runtime on its own: step clock, per-call plan, key-padding parser, mask cache storage,
mask sources and the run record."""

import logging

import pytest
import torch

from xattn_video import BlockSparseMask, OpConfig, XAttentionConfig, xattention
from xattn_video.log import log_once
from xattn_video.runtime import (
    MaskRequest,
    RunRecord,
    StepClock,
    XAttentionRuntime,
    key_padding,
    plan_call,
)
from xattn_video.runtime.masks import MaskCache, PackedMask
from xattn_video.runtime.record import CallRecord

CFG = XAttentionConfig(block_size=16, stride=4, threshold=0.6, warmup_steps=2)


def _qkv(b=1, h=2, n=100, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, h, n, d, generator=g) for _ in range(3)]


def _random_mask(b, h, qb, kb, block, q_len, kv_len, seed=0):
    g = torch.Generator().manual_seed(seed)
    keep = (torch.rand(b, h, qb, kb, generator=g) < 0.4) | torch.eye(qb, kb, dtype=torch.bool)
    return BlockSparseMask.from_dense(keep, block, q_len, kv_len)


# -- steps ------------------------------------------------------------------------------------------------

def test_step_clock_from_timesteps_cfg_and_restart():
    clock = StepClock()
    seen = []
    for t in (1000, 1000, 800, 800, 600, 1000, 800):
        new = clock.observe(timestep=torch.tensor([float(t)] * 2))
        seen.append((clock.step, clock.call, new))
    assert seen == [(0, 0, True), (0, 1, False), (1, 0, False), (1, 1, False), (2, 0, False), (0, 0, True),
                    (1, 0, False)]
    assert clock.runs == 2


def test_step_clock_from_step_indices_and_unknown():
    clock = StepClock()
    seen = []
    for s in (0, 0, 1, 2, 2, 1, None):
        clock.observe(step=s)
        seen.append((clock.step, clock.call))
    assert seen == [(0, 0), (0, 1), (1, 0), (2, 0), (2, 1), (1, 0), (None, 0)]
    assert clock.runs == 2  # 2 -> 1 went back: a new run
    with pytest.raises(ValueError, match="step=-1 must be >= 0"):
        clock.observe(step=-1)


# -- plan -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs,changes,reason", [
    (dict(step=5, layer=0, n=20), {}, "short"),  # < 2 blocks of 16
    (dict(step=5, layer=0, n=100), {"min_seq_len": 200}, "short"),
    (dict(step=5, layer=3, n=100), {"dense_layers": (3,)}, "dense_layer"),
    (dict(step=5, layer=0, n=100), {"threshold": 1.0}, "exact"),
    (dict(step=5, layer=2, n=100), {"threshold": {"default": 0.5, "layers": {2: 1.0}}}, "exact"),
    (dict(step=1, layer=0, n=100), {}, "warmup"),
    (dict(step=None, layer=0, n=100), {}, "unknown_step"),
    (dict(step=2, layer=0, n=100), {}, "sparse"),
    (dict(step=None, layer=0, n=100), {"warmup_steps": 0}, "sparse"),  # no warmup to honour
    (dict(step=None, layer=0, n=100), {"unknown_step": "sparse"}, "sparse"),
])
def test_plan_reasons(kwargs, changes, reason):
    plan = plan_call(CFG.replace(**changes), heads=2, padding_why=None, **kwargs)
    assert plan.reason == reason and plan.sparse == (reason == "sparse")


def test_plan_policies_raise_or_log_once(caplog):
    with pytest.raises(RuntimeError, match="step is unknown.*unknown_step='error'"):
        plan_call(CFG.replace(unknown_step="error"), step=None, layer=0, n=100, heads=2, padding_why=None)
    with pytest.raises(ValueError, match="not a prefix.*fallback='error'"):
        plan_call(CFG.replace(fallback="error"), step=5, layer=0, n=100, heads=2, padding_why="not a prefix")
    log_once.cache_clear()
    with caplog.at_level(logging.WARNING, logger="xattn_video"):
        for _ in range(3):
            plan = plan_call(CFG, step=5, layer=0, n=100, heads=2, padding_why="not a prefix")
    assert plan.reason == "mask" and caplog.text.count("fallback='dense'") == 1


# -- key padding ------------------------------------------------------------------------------------------

def test_key_padding_accepts_both_hosts_forms():
    n = 8
    diffusers = torch.zeros(2, 1, 1, n, dtype=torch.bool)
    diffusers[0, ..., :8] = True
    diffusers[1, ..., :5] = True
    p = key_padding(diffusers, 2, n)
    assert p.why is None and p.kv_len.tolist() == [8, 5] and p.lengths == (8, 5)
    comfy = torch.zeros(1, 1, n)
    comfy[..., 6:] = -torch.finfo(torch.float32).max
    assert key_padding(comfy, 2, n).lengths == (6, 6)
    assert key_padding(None, 2, n).kv_len is None and key_padding(None, 2, n).why is None


@pytest.mark.parametrize("mask,why", [
    (torch.tensor([[True, False, True, True]]), "not a prefix"),
    (torch.full((1, 4), 0.5), "biases other than 0"),
    (torch.zeros(1, 1, 4, 4), "varies over queries"),
    (torch.zeros(1, 4, dtype=torch.bool), "masks out every key"),
    (torch.ones(3, 4, dtype=torch.bool), "does not match the attention batch 2"),
    (torch.ones(1, 5, dtype=torch.bool), "not a key mask over 4 keys"),
])
def test_key_padding_rejects_other_masks(mask, why):
    p = key_padding(mask, 2, 4)
    assert p.kv_len is None and why in p.why


# -- mask storage -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("kb", [5, 8, 20])
def test_packed_mask_round_trip_and_size(kb):
    kv_len = torch.tensor([kb * 16, kb * 16 - 20])
    mask = _random_mask(2, 3, kb, kb, 16, kb * 16, kv_len, seed=kb)
    packed = PackedMask.pack(mask)
    assert packed.bits.dtype == torch.uint8 and tuple(packed.bits.shape) == (2, 3, kb, -(-kb // 8))
    again = packed.unpack()
    assert torch.equal(again.kv_indices, mask.kv_indices) and torch.equal(again.kv_counts, mask.kv_counts)
    assert torch.equal(again.kv_len, mask.kv_len) and again.q_len == mask.q_len
    # one bit per block pair (rounded up to bytes per row) instead of an int32 index
    assert packed.nbytes == 2 * 3 * kb * -(-kb // 8)
    assert packed.nbytes * 8 < mask.kv_indices.numel() * mask.kv_indices.element_size()


def test_mask_cache_reuses_then_frees():
    kv_len = torch.tensor([160])
    mask = _random_mask(1, 2, 10, 10, 16, 160, kv_len)
    args = dict(lengths=(160,), q_len=160, n_keys=160)
    cache = MaskCache(reuse_steps=3)
    cache.put(layer=0, call=0, step=4, mask=mask, lengths=(160,), n_keys=160)
    cache.put(layer=1, call=0, step=4, mask=mask, lengths=(160,), n_keys=160)
    assert len(cache) == 2 and cache.nbytes > 0
    assert cache.get(layer=0, call=0, step=4, **args) is None, "not within the step that stored it"
    assert cache.get(layer=0, call=1, step=5, **args) is None, "another call of the step has its own mask"
    assert torch.equal(cache.get(layer=0, call=0, step=5, **args).kv_indices, mask.kv_indices)
    assert torch.equal(cache.get(layer=0, call=0, step=6, **args).kv_indices, mask.kv_indices)
    assert len(cache) == 1, "dropped right after its last permitted reuse"
    assert cache.get(layer=1, call=0, step=5, lengths=(150,), q_len=160, n_keys=160) is None
    assert len(cache) == 0, "other key lengths: the entry cannot serve again"
    cache.put(layer=2, call=0, step=4, mask=mask, lengths=(160,), n_keys=160)
    cache.expire(7)
    assert len(cache) == 0
    no_reuse = MaskCache(reuse_steps=1)
    no_reuse.put(layer=0, call=0, step=1, mask=mask, lengths=(160,), n_keys=160)
    assert len(no_reuse) == 0


# -- attend -----------------------------------------------------------------------------------------------

def test_attend_sparse_equals_the_op_and_records_it():
    q, k, v = _qkv()
    kv_len = torch.tensor([93])
    mask = torch.arange(100)[None, None, None, :] < 93  # diffusers' [B, 1, 1, N] key-padding form
    runtime = XAttentionRuntime(CFG.replace(warmup_steps=0))
    runtime.begin_forward(step=0)
    out = runtime.attend(q, k, v, layer=1, mask=mask, global_start=90)
    want, used = xattention(q, k, v, CFG.op, kv_len, layer=1, global_start=90)
    torch.testing.assert_close(out, want, rtol=0, atol=0)
    (call,) = runtime.record.calls
    assert (call.step, call.call, call.layer, call.decision, call.reason) == (0, 0, 1, "sparse", "estimated")
    assert call.density == pytest.approx(used.density())
    assert call.head_density == pytest.approx(tuple(used.density_per_head().mean(0).tolist()))
    assert call.time_s is not None and call.time_s >= 0


def test_attend_dense_uses_the_host_attention_when_given():
    q, k, v = _qkv()
    runtime = XAttentionRuntime(CFG)
    runtime.begin_forward(step=0)  # warmup
    marker = torch.full_like(q, 7.0)
    out = runtime.attend(q, k, v, layer=0, host_attention=lambda: marker)
    assert out is marker
    out = runtime.attend(q, k, v, layer=1)
    torch.testing.assert_close(out, torch.nn.functional.scaled_dot_product_attention(q, k, v))
    assert [(c.reason, c.density, c.head_density) for c in runtime.record.calls] == [("warmup", 1.0, (1.0, 1.0))] * 2


def test_mask_reuse_gives_the_stored_mask_and_output():
    q, k, v = _qkv(seed=1)
    runtime = XAttentionRuntime(CFG.replace(warmup_steps=0, mask_reuse_steps=2))
    outs = []
    for step in range(3):
        runtime.begin_forward(step=step)
        outs.append(runtime.attend(q, k, v, layer=0))
    assert [c.reason for c in runtime.record.calls] == ["estimated", "reused", "estimated"]
    torch.testing.assert_close(outs[1], outs[0], rtol=0, atol=0)
    assert len(runtime.masks) == 1, "the step-2 mask waits for step 3; the step-0 one is gone"
    # stored as bits: [B=1, H=2, QB=7, ceil(KB=7 / 8)=1] uint8, plus the int64 key lengths
    assert runtime.masks.nbytes == 1 * 2 * 7 * 1 + 8
    runtime.end_run()
    assert len(runtime.masks) == 0 and len(runtime.record) == 3, "masks freed, record kept"


def test_no_mask_is_kept_at_the_last_step():
    q, k, v = _qkv()
    runtime = XAttentionRuntime(CFG.replace(warmup_steps=0, mask_reuse_steps=2))
    runtime.begin_forward(step=3, num_steps=4)
    runtime.attend(q, k, v, layer=0)
    assert len(runtime.masks) == 0


def test_mask_source_diagonal_equals_xattention_with_that_mask():
    q, k, v = _qkv(b=2, h=2, n=100)
    kv_len = torch.tensor([100, 91])
    pad = torch.arange(100)[None, :] < kv_len[:, None]
    requests = []

    def diagonal(req: MaskRequest) -> BlockSparseMask:
        requests.append(req)
        b, h, n = req.q.shape[:3]
        qb = -(-n // req.config.block_size)
        keep = torch.eye(qb, dtype=torch.bool).expand(b, h, qb, qb)
        return BlockSparseMask.from_dense(keep, req.config.block_size, n, req.kv_len)

    runtime = XAttentionRuntime(CFG.replace(warmup_steps=1), mask_source=diagonal)
    runtime.begin_forward(step=0)
    runtime.attend(q, k, v, layer=4, mask=pad[:, None, None, :], global_start=95)
    assert requests == [], "a dense (warmup) call does not ask the source"
    runtime.begin_forward(step=1)
    out = runtime.attend(q, k, v, layer=4, mask=pad[:, None, None, :], global_start=95)
    (req,) = requests
    assert (req.layer, req.step, req.call, req.global_start, req.kv_len.tolist()) == (4, 1, 0, 95, [100, 91])
    assert req.q is q and req.config == CFG.op
    qb = 7
    diag = BlockSparseMask.from_dense(torch.eye(qb, dtype=torch.bool).expand(2, 2, qb, qb), 16, 100, kv_len)
    want, _ = xattention(q, k, v, CFG.op, kv_len, mask=diag)
    torch.testing.assert_close(out, want, rtol=0, atol=0)
    call = runtime.record.calls[-1]
    assert call.reason == "source" and call.density == pytest.approx(diag.density())


def test_mask_source_padding_dropped_and_bad_masks_named():
    q, k, v = _qkv(n=64)
    pad = (torch.arange(64) < 40)[None, None, None, :]
    full = BlockSparseMask.from_dense(torch.ones(1, 1, 4, 4, dtype=torch.bool), 16, 64)  # ignores the padding
    runtime = XAttentionRuntime(CFG.replace(warmup_steps=0), mask_source=lambda req: full)
    runtime.begin_forward(step=0)
    out = runtime.attend(q, k, v, layer=0, mask=pad)
    want = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=pad)
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)  # the padded keys were not attended
    assert runtime.record.calls[-1].density == 1.0  # every block of the 40 valid keys
    for bad, error, match in ((None, TypeError, "returned NoneType; expected a BlockSparseMask"),
                              (_random_mask(1, 2, 3, 3, 16, 48, None), ValueError, r"kv_indices \(1, 2, 3, 3\)")):
        runtime = XAttentionRuntime(CFG.replace(warmup_steps=0), mask_source=lambda req, m=bad: m)
        runtime.begin_forward(step=0)
        with pytest.raises(error, match=match):
            runtime.attend(q, k, v, layer=0)
    with pytest.raises(TypeError, match="mask_source must be callable"):
        XAttentionRuntime(CFG, mask_source="diagonal")


# -- record -----------------------------------------------------------------------------------------------

def test_record_tables_and_the_one_mean_after_warmup():
    record = RunRecord(warmup_steps=1, layer_names={0: "a", 1: "b"})
    for step, layer, call, d in [(0, 0, 0, 1.0), (0, 1, 0, 1.0), (1, 0, 0, 0.2), (1, 0, 1, 0.4), (1, 1, 0, 0.6),
                                 (2, 0, 0, 0.3), (None, 1, 0, 0.5)]:
        record.add(CallRecord(step, call, layer, "sparse" if d < 1 else "dense",
                              "estimated" if d < 1 else "warmup", d, (d, d)))
    table = record.density_table()
    assert table[0] == {0: 1.0, 1: 1.0} and table[1] == {0: pytest.approx(0.3), 1: 0.6} and table[-1] == {1: 0.5}
    assert record.per_step_layer(3, [0, 1]) == [[1.0, 1.0], [pytest.approx(0.3), 0.6], [0.3, None]]
    # cells (step, layer) after warmup: 0.3, 0.6, 0.3 and the unknown step's 0.5
    assert record.mean_density_after_warmup() == pytest.approx((0.3 + 0.6 + 0.3 + 0.5) / 4)
    assert record.counts() == {"warmup": 2, "estimated": 5} and record.count("dense") == 2
    assert record.decision_table()[0] == {0: "warmup", 1: "warmup"}
    assert record.to_dict()["calls"][2]["head_density"] == [0.2, 0.2]
    assert RunRecord().mean_density_after_warmup() is None


def test_new_run_clears_record_and_masks():
    q, k, v = _qkv()
    runtime = XAttentionRuntime(CFG.replace(warmup_steps=0, mask_reuse_steps=2))
    runtime.begin_forward(timestep=900.0)
    runtime.attend(q, k, v, layer=0)
    runtime.begin_forward(timestep=950.0)  # larger: a new generation
    assert len(runtime.record) == 0 and len(runtime.masks) == 0 and runtime.runs == 2


def test_xattention_takes_the_op_part():
    q, k, v = _qkv()
    a, _ = xattention(q, k, v, OpConfig(block_size=16, stride=4, threshold=0.6))
    b, _ = xattention(q, k, v, CFG)  # an XAttentionConfig: its .op
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    with pytest.raises(TypeError, match="OpConfig or XAttentionConfig"):
        xattention(q, k, v, {"threshold": 0.5})


# -- dense above the break-even ---------------------------------------------------------------------------

def test_above_break_even_runs_dense_and_records_the_mask_density():
    q, k, v = _qkv(seed=2)
    mask = torch.arange(100)[None, None, None, :] < 93
    kv_len = torch.tensor([93])
    _, estimated = xattention(q, k, v, CFG.op, kv_len, layer=0, global_start=90)
    found = estimated.density()
    assert 0.2 < found < 1.0
    # a break-even below what the estimate finds: dense (the host's attention when given), mask density kept
    runtime = XAttentionRuntime(CFG.replace(warmup_steps=0, mask_reuse_steps=2, dense_above=found - 0.05))
    runtime.begin_forward(step=0)
    marker = torch.full_like(q, 3.0)
    assert runtime.attend(q, k, v, layer=0, mask=mask, global_start=90, host_attention=lambda: marker) is marker
    out = runtime.attend(q, k, v, layer=1, mask=mask, global_start=90)
    torch.testing.assert_close(out, torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask),
                               rtol=0, atol=0)
    runtime.begin_forward(step=1)  # a reused mask is judged the same way, without estimating again
    runtime.attend(q, k, v, layer=0, mask=mask, global_start=90)
    calls = runtime.record.calls
    assert [(c.decision, c.reason, c.density) for c in calls] == [("dense", "above_break_even", 1.0)] * 3
    assert [c.mask_density for c in calls] == [pytest.approx(found)] * 3
    assert runtime.record.counts() == {"above_break_even": 3}
    # a break-even above it: sparse, the op's output
    runtime = XAttentionRuntime(CFG.replace(warmup_steps=0, dense_above=found + 0.05))
    runtime.begin_forward(step=0)
    out = runtime.attend(q, k, v, layer=0, mask=mask, global_start=90)
    want, _ = xattention(q, k, v, CFG.op, kv_len, layer=0, global_start=90)
    torch.testing.assert_close(out, want, rtol=0, atol=0)
    (call,) = runtime.record.calls
    assert (call.decision, call.reason) == ("sparse", "estimated")
    assert call.density == call.mask_density == pytest.approx(found)


def test_above_break_even_applies_to_source_masks_and_warmup_stays_warmup():
    q, k, v = _qkv(seed=3)

    def everything(req: MaskRequest) -> BlockSparseMask:
        b, h, n = req.q.shape[:3]
        qb = -(-n // req.config.block_size)
        return BlockSparseMask.from_dense(torch.ones(b, h, qb, qb, dtype=torch.bool), req.config.block_size, n,
                                          req.kv_len)

    runtime = XAttentionRuntime(CFG.replace(warmup_steps=1, dense_above=0.9), mask_source=everything)
    for step in (0, 1):
        runtime.begin_forward(step=step)
        runtime.attend(q, k, v, layer=0)
    assert [(c.reason, c.mask_density) for c in runtime.record.calls] == [("warmup", None), ("above_break_even", 1.0)]
