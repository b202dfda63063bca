"""XAttention processors against diffusers' own HunyuanVideo processor, warmup and removal through the hook
registry."""

import pytest
import torch
from diffusers import HunyuanVideoTransformer3DModel
from diffusers.models.transformers.transformer_hunyuan_video import HunyuanVideoAttnProcessor2_0

from diffusers.hooks import HookRegistry

from xattn_video import BlockSparseMask, XAttentionConfig, apply_xattention, remove_xattention
from xattn_video.hooks import HOOK_NAME, attach_step_hook
from xattn_video.processors import XAttentionProcessor, runtime_of, xattention_processors
from xattn_video.runtime import XAttentionRuntime


def tiny_transformer(seed=0):
    torch.manual_seed(seed)
    model = HunyuanVideoTransformer3DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=16, num_layers=2,
        num_single_layers=2, num_refiner_layers=1, patch_size=2, patch_size_t=1, text_embed_dim=24,
        pooled_projection_dim=8, rope_axes_dim=(4, 6, 6),
    ).eval()
    with torch.no_grad():  # peaked attention, as in a trained model
        for name, p in model.named_parameters():
            if "norm_q" in name or "norm_k" in name or "norm_added" in name:
                p.fill_(4.0)
    return model


def inputs(batch=2, frames=3, hw=12, text=10, valid=(10, 6), seed=1, t=900.0):
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(batch, text, dtype=torch.long)
    for b, n in enumerate(valid[:batch]):
        mask[b, :n] = 1
    return dict(
        hidden_states=torch.randn(batch, 4, frames, hw, hw, generator=g),
        timestep=torch.full((batch,), t),
        encoder_hidden_states=torch.randn(batch, text, 24, generator=g),
        encoder_attention_mask=mask,
        pooled_projections=torch.randn(batch, 8, generator=g),
        guidance=torch.full((batch,), 6000.0),
        return_dict=False,
    )


# 3 x 6 x 6 = 108 video tokens + 10 text = 118 tokens: 8 blocks of 16
SPARSE = XAttentionConfig(block_size=16, stride=4, threshold=0.5, warmup_steps=0)


@pytest.mark.parametrize("path", ["dense", "block-sparse"])
def test_tau_one_matches_stock_processor_per_block(path):
    model = tiny_transformer()
    # tau = 1 runs the dense path; max_density = 1 forces estimate + select + block-sparse attention
    cfg = XAttentionConfig(block_size=16, stride=4, threshold=1.0, warmup_steps=0,
                           max_density=1.0 if path == "block-sparse" else None)
    captured = {}

    def grab(name):
        def hook(module, args, kwargs, out):
            captured[name] = (args, kwargs, out)
        return hook

    handles = [model.transformer_blocks[0].attn.register_forward_hook(grab("double"), with_kwargs=True),
               model.single_transformer_blocks[0].attn.register_forward_hook(grab("single"), with_kwargs=True)]
    with torch.no_grad():
        model(**inputs())
    for h in handles:
        h.remove()
    runtime = XAttentionRuntime(cfg)
    runtime.begin_forward(step=0)
    for name, attn in (("double", model.transformer_blocks[0].attn), ("single", model.single_transformer_blocks[0].attn)):
        args, kwargs, stock_out = captured[name]
        assert kwargs["attention_mask"] is not None and not kwargs["attention_mask"].all(), "padded text present"
        assert kwargs["image_rotary_emb"] is not None
        proc = XAttentionProcessor(runtime=runtime, layer=0)
        with torch.no_grad():
            ours = proc(attn, *args, **kwargs)
            stock = HunyuanVideoAttnProcessor2_0()(attn, *args, **kwargs)
        for a, b, c in zip(ours, stock, stock_out):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(b, c)
    calls = runtime.record.calls
    assert [(c.layer, c.density) for c in calls] == [(0, 1.0), (0, 1.0)]
    assert [c.reason for c in calls] == (["exact"] * 2 if path == "dense" else ["estimated"] * 2)


def test_whole_transformer_tau_one_equals_stock_and_remove_restores():
    model = tiny_transformer()
    x = inputs()
    with torch.no_grad():
        stock = model(**x)[0]
        apply_xattention(model, XAttentionConfig(block_size=16, stride=4, threshold=1.0, max_density=1.0, warmup_steps=0))
        ours = model(**x)[0]
        torch.testing.assert_close(ours, stock, rtol=1e-5, atol=1e-5)
        apply_xattention(model, SPARSE)
        sparse = model(**x)[0]
        assert not torch.allclose(sparse, stock, atol=1e-4), "tau = 0.5 must change the output"
        remove_xattention(model)
        assert all(type(p).__name__ != "XAttentionProcessor" for p in model.attn_processors.values())
        assert HookRegistry.check_if_exists_or_initialize(model).get_hook(HOOK_NAME) is None
        torch.testing.assert_close(model(**x)[0], stock, rtol=0, atol=0)
    # nothing of ours is left on the model: only diffusers' own registry attribute
    assert not [a for a in vars(model) if "xattn" in a.lower()]


def test_mask_source_is_used_on_sparse_calls_only():
    model = tiny_transformer()
    asked = []

    def diagonal(req):
        asked.append((req.step, req.layer, tuple(req.q.shape), req.global_start, req.kv_len.tolist()))
        b, h, n = req.q.shape[:3]
        qb = -(-n // req.config.block_size)
        keep = torch.eye(qb, dtype=torch.bool).expand(b, h, qb, qb)
        return BlockSparseMask.from_dense(keep, req.config.block_size, n, req.kv_len)

    runtime = apply_xattention(model, SPARSE.replace(warmup_steps=1), mask_source=diagonal)
    with torch.no_grad():
        for t in (900.0, 800.0):
            model(**inputs(batch=1, valid=(6,), t=t))
    assert [a[0] for a in asked] == [1] * 4, "asked only at the sparse step, once per layer"
    assert asked[0][2] == (1, 2, 118, 16) and asked[0][3] == 108 and asked[0][4] == [114]
    sparse = [c for c in runtime.record.calls if c.step == 1]
    assert all(c.reason == "source" for c in sparse)
    assert sparse[0].density == pytest.approx(8 / (8 * 8))  # 8 query blocks, 8 valid key blocks: the diagonal


def test_refiner_keeps_its_processor():
    model = tiny_transformer()
    before = dict(model.attn_processors)
    apply_xattention(model, SPARSE)
    after = model.attn_processors
    for name, proc in after.items():
        if name.startswith("context_embedder"):
            assert proc is before[name]
        else:
            assert isinstance(proc, XAttentionProcessor)
    remove_xattention(model)
    assert all(model.attn_processors[k] is v for k, v in before.items())


@pytest.mark.parametrize("calls_per_step", [1, 2])
def test_warmup_first_k_steps_dense(calls_per_step):
    model = tiny_transformer()
    runtime = apply_xattention(model, SPARSE.replace(warmup_steps=2))
    timesteps = [1000.0, 750.0, 500.0, 250.0]
    with torch.no_grad():
        for generation in range(2):  # a second generation restarts the count
            for t in timesteps:
                for _ in range(calls_per_step):
                    model(**inputs(t=t))
            table = runtime.density_table()
            assert sorted(table) == [0, 1, 2, 3]
            for step, layers in table.items():
                assert len(layers) == 4
                if step < 2:
                    assert all(d == 1.0 for d in layers.values()), f"step {step} must be dense"
                else:
                    assert all(d < 1.0 for d in layers.values()), f"step {step} must be sparse"
            calls = runtime.record.calls
            assert len(calls) == 4 * 4 * calls_per_step
            assert sorted({c.call for c in calls}) == list(range(calls_per_step))
    assert runtime.runs == 2


def test_dense_layers_and_mask_reuse():
    model = tiny_transformer()
    runtime = apply_xattention(model, SPARSE.replace(dense_layers=(1,), mask_reuse_steps=2))
    with torch.no_grad():
        for t in (900.0, 800.0, 700.0):
            model(**inputs(t=t))
    table = runtime.density_table()
    assert all(table[s][1] == 1.0 for s in table)
    assert all(table[s][0] < 1.0 for s in table)
    # 3 sparse layers x 3 steps; masks estimated at steps 0 and 2, reused at step 1
    reasons = [c.reason for c in runtime.record.calls if c.layer != 1]
    assert reasons == ["estimated"] * 3 + ["reused"] * 3 + ["estimated"] * 3
    assert table[1] == table[0], "a reused mask has the density of the one it reuses"


def test_single_processor_instance_via_set_attn_processor():
    model = tiny_transformer()
    x = inputs()
    with torch.no_grad():
        stock = model(**x)[0]
    cfg = XAttentionConfig(block_size=16, stride=4, threshold=1.0, max_density=1.0, warmup_steps=0)
    proc = XAttentionProcessor(cfg)
    attach_step_hook(model, proc.runtime)
    model.set_attn_processor(proc)  # the token refiner gets it too and must defer to the standard processor
    with torch.no_grad():
        torch.testing.assert_close(model(**x)[0], stock, rtol=1e-5, atol=1e-5)
    assert sorted(proc.runtime.density_table()[0]) == [0, 1, 2, 3]


def test_processor_dict_and_bad_model():
    model = tiny_transformer()
    procs = xattention_processors(model, SPARSE)
    assert len(procs) == len(model.attn_processors)
    runtimes = {id(p.runtime) for k, p in procs.items() if isinstance(p, XAttentionProcessor)}
    assert len(runtimes) == 1, "one runtime shared by every layer"
    with pytest.raises(ValueError, match="does not support Linear; supported transformers: HunyuanVideoTransformer3DModel, "
                                         "HunyuanVideo15Transformer3DModel, WanTransformer3DModel"):
        apply_xattention(torch.nn.Linear(2, 2), SPARSE)


@pytest.mark.parametrize("policy", ["dense", "sparse"])
def test_without_step_hook_the_unknown_step_policy_applies(policy, caplog):
    model = tiny_transformer()
    proc = XAttentionProcessor(SPARSE.replace(warmup_steps=3, unknown_step=policy))
    model.set_attn_processor(proc)
    with caplog.at_level("WARNING", logger="xattn_video"), torch.no_grad():
        model(**inputs())
    calls = proc.runtime.record.calls
    assert len(calls) == 4 and all(c.step is None for c in calls)
    if policy == "dense":
        assert all(c.reason == "unknown_step" and c.density == 1.0 for c in calls)
    else:
        assert all(c.decision == "sparse" and c.density < 1.0 for c in calls)
    assert "the denoising step is unknown" in caplog.text


def test_step_index_from_the_pipeline_cache_context():
    """Where a pipeline passes cache_context(step_index=...), the hook uses it instead of counting timesteps."""
    model = tiny_transformer()
    runtime = apply_xattention(model, SPARSE.replace(warmup_steps=1))
    with torch.no_grad():
        for i in (0, 1, 2):
            for name in ("cond", "uncond"):
                with model.cache_context(name, step_index=i):
                    model(**inputs(t=500.0))  # one timestep for all: only step_index tells the steps apart
    calls = runtime.record.calls
    assert [(c.step, c.call) for c in calls[::4]] == [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 1)]
    assert [c.decision for c in calls[::4]] == ["dense"] * 2 + ["sparse"] * 4


def test_hook_is_named_resettable_and_replaced_on_reapply():
    model = tiny_transformer()
    first = apply_xattention(model, SPARSE)
    registry = HookRegistry.check_if_exists_or_initialize(model)
    assert runtime_of(model) is first and registry.get_hook(HOOK_NAME).runtime is first
    with torch.no_grad():
        model(**inputs())
    assert len(first.record) == 4
    registry.reset_stateful_hooks()  # what a pipeline does when it finishes: the run ends
    assert len(first.record) == 4 and first.step is None, "the record of the finished run stays readable"
    with torch.no_grad():
        model(**inputs(t=100.0))  # a lower timestep, yet a new run: the reset ended the last one
    assert first.runs == 2 and len(first.record) == 4
    second = apply_xattention(model, SPARSE.replace(threshold=0.7))
    assert runtime_of(model) is second and registry._hook_order.count(HOOK_NAME) == 1
    remove_xattention(model)
    remove_xattention(model)  # a second removal is a no-op
    assert runtime_of(model) is None
