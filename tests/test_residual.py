"""The residual lever (``ScheduleConfig.residual``): a dense step measures what each call's mask leaves out, the
sparse steps attend with that mask and add the difference back."""

import logging

import pytest
import torch

from xattn_video import XAttentionConfig, xattention
from xattn_video.runtime import XAttentionRuntime, plan_call
from xattn_video.runtime.residual import ResidualCache

CFG = XAttentionConfig(block_size=16, stride=4, threshold=0.6, warmup_steps=2, residual=True)


def _qkv(b=2, h=3, n=117, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, h, n, d, generator=g) for _ in range(3)]


def _padding(lengths, n):
    return torch.arange(n)[None, None, None, :] < torch.tensor(lengths)[:, None, None, None]


def _dense(q, k, v, lengths):
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=_padding(lengths, q.shape[2]))


@pytest.mark.parametrize("changes,match", [
    ({"warmup_steps": 0}, "needs warmup_steps >= 1"),
    ({"mask_reuse_steps": 2}, "mask_reuse_steps must be 1"),
    ({"residual_refresh": -1}, "residual_refresh=-1 must be >= 0"),
    ({"residual": 1}, "residual=1 must be true or false"),
    ({"residual_precision": "int8"}, "residual_precision='int8' is not one of \\('native', 'fp8'\\)"),
])
def test_config_errors_name_the_value(changes, match):
    with pytest.raises(ValueError, match=match):
        CFG.replace(**changes)


def test_plan_marks_the_refresh_steps():
    cfg = CFG.replace(warmup_steps=3, residual_refresh=2)
    plans = [plan_call(cfg, step=s, layer=0, n=100, heads=2, padding_why=None) for s in range(9)]
    assert [(p.reason, p.refresh) for p in plans] == [
        ("warmup", False), ("warmup", False), ("warmup", True), ("sparse", False), ("sparse", False),
        ("refresh", True), ("sparse", False), ("sparse", False), ("refresh", True)]
    # without refresh only the last warmup step measures; a mask the op cannot take measures nothing
    assert [plan_call(CFG, step=s, layer=0, n=100, heads=2, padding_why=None).refresh for s in range(6)] == \
        [False, True, False, False, False, False]
    assert not plan_call(CFG, step=1, layer=0, n=100, heads=2, padding_why="a boolean [N, N] mask").refresh


@pytest.mark.parametrize("b,h,n,lengths", [(1, 2, 100, (100,)), (2, 3, 117, (117, 101)), (3, 1, 70, (64, 70, 33))])
def test_residual_is_exact_on_the_refresh_inputs_and_the_held_mask_plus_delta_after(b, h, n, lengths):
    q, k, v = _qkv(b, h, n, seed=n)
    q2, k2, v2 = _qkv(b, h, n, seed=n + 1)
    mask = _padding(lengths, n)
    runtime = XAttentionRuntime(CFG)
    outs = []
    for step, (x, y, z) in enumerate([(q, k, v)] * 3 + [(q2, k2, v2)] * 2):
        runtime.begin_forward(step=step)
        outs.append(runtime.attend(x, y, z, layer=0, mask=mask, global_start=n - 10))
    dense = _dense(q, k, v, lengths)
    torch.testing.assert_close(outs[1], dense)  # the refresh call returns the dense output
    # step 2 sees the inputs the difference was measured on: dense again, though it ran sparse
    torch.testing.assert_close(outs[2], dense, rtol=1e-5, atol=1e-5)
    calls = runtime.record.calls
    assert [(c.decision, c.reason) for c in calls] == [("dense", "warmup")] * 2 + [("sparse", "residual")] * 3
    assert calls[0].mask_density is None and calls[1].mask_density == pytest.approx(calls[2].density)
    assert calls[2].density < 1.0, "the test needs a mask that leaves blocks out"
    # new inputs: the op over the held mask, plus the measured difference
    kv_len = torch.tensor(lengths)
    _, held = xattention(q, k, v, CFG.op, kv_len, layer=0, global_start=n - 10)
    sparse_then, _ = xattention(q, k, v, CFG.op, kv_len, mask=held)
    sparse_now, _ = xattention(q2, k2, v2, CFG.op, kv_len, mask=held)
    torch.testing.assert_close(outs[3], sparse_now + (dense - sparse_then), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(outs[4], outs[3], rtol=0, atol=0)
    assert not torch.allclose(outs[3], sparse_now)  # the correction is applied (its benefit: bench_quality)
    delta_and_bits = b * h * n * 16 * 4 + b * h * (-(-n // 16)) * 1
    assert len(runtime.residuals) == 1 and runtime.residuals.nbytes == delta_and_bits
    runtime.end_run()
    assert len(runtime.residuals) == 0


def test_refresh_steps_renew_the_difference_and_count_as_dense():
    q, k, v = _qkv(1, 2, 100, seed=5)
    inputs = [_qkv(1, 2, 100, seed=10 + s) for s in range(6)]
    runtime = XAttentionRuntime(CFG.replace(warmup_steps=1, residual_refresh=2))
    outs = []
    for step, (x, y, z) in enumerate(inputs):
        runtime.begin_forward(step=step)
        outs.append(runtime.attend(x, y, z, layer=4))
    assert [c.reason for c in runtime.record.calls] == ["warmup", "residual", "residual", "refresh", "residual",
                                                         "residual"]
    torch.testing.assert_close(outs[3], _dense(*inputs[3], (100,)))
    assert runtime.record.calls[3].density == 1.0 and runtime.record.calls[3].mask_density < 1.0
    # after the refresh at step 3 the held pair is step 3's
    x, y, z = inputs[4]
    kv_len = torch.tensor([100])
    _, held = xattention(*inputs[3][:2], inputs[3][2], CFG.op, kv_len, layer=4)
    delta = _dense(*inputs[3], (100,)) - xattention(*inputs[3], CFG.op, kv_len, mask=held)[0]
    torch.testing.assert_close(outs[4], xattention(x, y, z, CFG.op, kv_len, mask=held)[0] + delta,
                               rtol=1e-5, atol=1e-5)
    # the mean density after the warmup counts the refresh step as dense
    sparse = [c.density for c in runtime.record.calls[1:] if c.decision == "sparse"]
    assert runtime.record.mean_density_after_warmup() == pytest.approx((sum(sparse) + 1.0) / 5)
    # a refresh at the run's last step measures nothing (it would never be used)
    runtime.end_run()
    runtime.begin_forward(step=0, num_steps=4)
    runtime.attend(q, k, v, layer=0)
    runtime.begin_forward(step=3, num_steps=4)  # a refresh step (1 + 2 sparse steps) and the last one
    runtime.attend(q, k, v, layer=0)
    assert runtime.record.calls[-1].reason == "refresh" and runtime.record.calls[-1].mask_density is None
    assert len(runtime.residuals) == 0


def test_residual_in_tile_order_is_exact_on_the_refresh_inputs():
    grid = (3, 4, 8)
    q, k, v = _qkv(1, 2, 96 + 5, seed=7)
    runtime = XAttentionRuntime(CFG.replace(token_order="tile", tile=(1, 4, 4)))
    outs = []
    for step in range(3):
        runtime.begin_forward(step=step, grid=grid)
        outs.append(runtime.attend(q, k, v, layer=0, global_start=96))
    torch.testing.assert_close(outs[2], torch.nn.functional.scaled_dot_product_attention(q, k, v),
                               rtol=1e-5, atol=1e-5)
    assert runtime.record.calls[2].reason == "residual" and runtime.record.calls[2].density < 1.0


def test_the_final_step_frees_each_difference_after_its_use():
    q, k, v = _qkv(1, 2, 100, seed=6)
    runtime = XAttentionRuntime(CFG)
    for step in range(4):
        for _ in range(2):  # two forwards a step (e.g. CFG's): each call has its own difference
            runtime.begin_forward(step=step, num_steps=4)
            runtime.attend(q, k, v, layer=0)
            runtime.attend(q, k, v, layer=1)
        if step == 2:
            assert len(runtime.residuals) == 4
    assert len(runtime.residuals) == 0, "nothing held once the last step used it"
    assert [c.reason for c in runtime.record.calls if c.step == 3] == ["residual"] * 4


def test_inputs_no_refresh_saw_run_plain_sparse_and_say_so(caplog):
    q, k, v = _qkv(1, 2, 100, seed=8)
    runtime = XAttentionRuntime(CFG)
    for step in range(2):
        runtime.begin_forward(step=step)
        runtime.attend(q, k, v, layer=0)
    runtime.begin_forward(step=2)
    q3, k3, v3 = _qkv(1, 2, 90, seed=9)  # another length than the refresh measured
    with caplog.at_level(logging.WARNING, logger="xattn_video"):
        out = runtime.attend(q3, k3, v3, layer=0)
    assert "no difference was measured for layer 0" in caplog.text
    torch.testing.assert_close(out, xattention(q3, k3, v3, CFG.op)[0], rtol=0, atol=0)
    assert runtime.record.calls[-1].reason == "estimated"


def test_cache_matches_shapes():
    cache = ResidualCache()
    q, k, _ = _qkv(1, 2, 64, seed=1)
    _, mask = xattention(q, k, k, CFG.op)
    delta = torch.randn(1, 2, 64, 16)
    cache.put(layer=1, call=0, step=3, mask=mask, delta=delta, lengths=(64,), n_keys=64)
    held = cache.get(layer=1, call=0, lengths=(64,), q_len=64, n_keys=64)
    assert held.step == 3 and held.delta is delta and torch.equal(held.mask.to_dense(), mask.to_dense())
    assert cache.get(layer=1, call=1, lengths=(64,), q_len=64, n_keys=64) is None
    assert cache.get(layer=1, call=0, lengths=(60,), q_len=64, n_keys=64) is None


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fp8_cache_holds_each_row_to_e4m3_precision_in_half_the_memory(dtype):
    g = torch.Generator().manual_seed(3)
    q, k, _ = _qkv(2, 3, 96, seed=2)
    _, mask = xattention(q, k, k, CFG.op)
    # rows of very different sizes, one all zero, one NaN (a fault stays visible)
    delta = (torch.randn(2, 3, 96, 16, generator=g) * torch.rand(2, 3, 96, 1, generator=g) ** 4).to(dtype)
    delta[0, 1, 5] = 0.0
    delta[1, 2, 7, 3] = float("nan")
    native, fp8 = ResidualCache(), ResidualCache("fp8")
    for cache in (native, fp8):
        cache.put(layer=0, call=0, step=1, mask=mask, delta=delta, lengths=(96, 96), n_keys=96)
    back = fp8.get(layer=0, call=0, lengths=(96, 96), q_len=96, n_keys=96).delta
    assert back.dtype == dtype and back.shape == delta.shape
    assert back[0, 1, 5].eq(0).all() and back[1, 2, 7].isnan().all() and back.isnan().sum() == 16
    ok = ~delta.isnan().any(-1, keepdim=True)
    err = ((back - delta).abs() / delta.abs().amax(-1, keepdim=True).clamp_min(1e-30)).masked_select(ok)
    assert err.max() <= 2 ** -4 + 2 ** -7 and err.mean() < 0.02  # e4m3 rounding of each row against its max
    bits = 2 * 3 * 6 * 1
    assert fp8.nbytes - bits == delta.numel() + 2 * 3 * 96 * 4  # one byte a value, a float32 scale a row
    assert native.nbytes - bits == delta.numel() * delta.element_size()
    with pytest.raises(ValueError, match="precision='bf16' is not one of"):
        ResidualCache("bf16")


def test_fp8_residual_through_the_runtime_adds_the_rounded_difference():
    q, k, v = _qkv(2, 3, 117, seed=9)
    q2, k2, v2 = _qkv(2, 3, 117, seed=10)
    outs, deltas = {}, {}
    for precision in ("native", "fp8"):
        runtime = XAttentionRuntime(CFG.replace(residual_precision=precision))
        for step, (x, y, z) in enumerate([(q, k, v)] * 2 + [(q2, k2, v2)]):
            runtime.begin_forward(step=step)
            outs[precision] = runtime.attend(x, y, z, layer=0)
        assert [c.reason for c in runtime.record.calls] == ["warmup", "warmup", "residual"]
        deltas[precision] = runtime.residuals.get(layer=0, call=0, lengths=(117, 117), q_len=117, n_keys=117).delta
    amax = deltas["native"].abs().amax(-1, keepdim=True)
    assert ((deltas["fp8"] - deltas["native"]).abs() <= amax * 2 ** -4).all()  # e4m3 rounding of each row
    torch.testing.assert_close(outs["fp8"], outs["native"] - deltas["native"] + deltas["fp8"])
    assert not torch.equal(outs["fp8"], outs["native"])


def test_through_a_diffusers_pipeline_and_freed_at_its_end():
    from xattn_video import apply_xattention, remove_xattention
    from xattn_video.pipelines.hunyuan_video import generate, load_pipeline

    pipe = load_pipeline("tiny")
    runtime = apply_xattention(pipe, XAttentionConfig(block_size=32, stride=8, threshold=0.5, warmup_steps=1,
                                                      residual=True, residual_refresh=1))
    try:
        generate(pipe, "a red fox", num_frames=9, height=128, width=128, num_inference_steps=4, progress=False)
    finally:
        remove_xattention(pipe)
    reasons = runtime.record.decision_table()  # {step: {layer: reason of its first call}}
    assert [set(reasons[s].values()) for s in range(4)] == [{"warmup"}, {"residual"}, {"refresh"}, {"residual"}]
    assert len(runtime.residuals) == 0, "the pipeline's end freed the differences"
