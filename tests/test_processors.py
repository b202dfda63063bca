"""XAttention processors against diffusers' own HunyuanVideo processor, warmup and removal."""

import pytest
import torch
from diffusers import HunyuanVideoTransformer3DModel
from diffusers.models.transformers.transformer_hunyuan_video import HunyuanVideoAttnProcessor2_0

from xattn_video import XAttentionConfig, apply_xattention, remove_xattention
from xattn_video.processors import XAttentionProcessor, xattention_processors
from xattn_video.schedule import XAttentionState, attach_step_tracker


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
    state = XAttentionState(cfg)
    state.step = 0
    for name, attn in (("double", model.transformer_blocks[0].attn), ("single", model.single_transformer_blocks[0].attn)):
        args, kwargs, stock_out = captured[name]
        assert kwargs["attention_mask"] is not None and not kwargs["attention_mask"].all(), "padded text present"
        assert kwargs["image_rotary_emb"] is not None
        proc = XAttentionProcessor(cfg, state, layer=0)
        with torch.no_grad():
            ours = proc(attn, *args, **kwargs)
            stock = HunyuanVideoAttnProcessor2_0()(attn, *args, **kwargs)
        for a, b, c in zip(ours, stock, stock_out):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(b, c)
    assert state.densities[0][0] == [1.0, 1.0]


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
        torch.testing.assert_close(model(**x)[0], stock, rtol=0, atol=0)


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
    state = apply_xattention(model, SPARSE.replace(warmup_steps=2))
    timesteps = [1000.0, 750.0, 500.0, 250.0]
    with torch.no_grad():
        for generation in range(2):  # a second generation restarts the count
            for t in timesteps:
                for _ in range(calls_per_step):
                    model(**inputs(t=t))
            table = state.density_table()
            assert sorted(table) == [0, 1, 2, 3]
            for step, layers in table.items():
                assert len(layers) == 4
                if step < 2:
                    assert all(d == 1.0 for d in layers.values()), f"step {step} must be dense"
                else:
                    assert all(d < 1.0 for d in layers.values()), f"step {step} must be sparse"
                assert all(len(state.densities[step][layer]) == calls_per_step for layer in layers)
    assert state.generation == 2


def test_dense_layers_and_mask_reuse():
    model = tiny_transformer()
    state = apply_xattention(model, SPARSE.replace(dense_layers=(1,), mask_reuse_steps=2))
    calls = []
    import xattn_video.processors as procs
    real = procs.xattention

    def spy(*args, **kwargs):
        calls.append(kwargs.get("mask") is not None)
        return real(*args, **kwargs)

    procs.xattention = spy
    try:
        with torch.no_grad():
            for t in (900.0, 800.0, 700.0):
                model(**inputs(t=t))
    finally:
        procs.xattention = real
    table = state.density_table()
    assert all(table[s][1] == 1.0 for s in table)
    assert all(table[s][0] < 1.0 for s in table)
    # 3 sparse layers x 3 steps; masks estimated at steps 0 and 2, reused at step 1
    assert calls == [False] * 3 + [True] * 3 + [False] * 3


def test_single_processor_instance_via_set_attn_processor():
    model = tiny_transformer()
    x = inputs()
    with torch.no_grad():
        stock = model(**x)[0]
    cfg = XAttentionConfig(block_size=16, stride=4, threshold=1.0, max_density=1.0, warmup_steps=0)
    proc = XAttentionProcessor(cfg)
    attach_step_tracker(model, proc.state)
    model.set_attn_processor(proc)  # the token refiner gets it too and must defer to the standard processor
    with torch.no_grad():
        torch.testing.assert_close(model(**x)[0], stock, rtol=1e-5, atol=1e-5)
    assert sorted(proc.state.density_table()[0]) == [0, 1, 2, 3]


def test_processor_dict_and_bad_model():
    model = tiny_transformer()
    procs = xattention_processors(model, SPARSE)
    assert len(procs) == len(model.attn_processors)
    with pytest.raises(ValueError, match="not a HunyuanVideo pipeline or transformer"):
        apply_xattention(torch.nn.Linear(2, 2), SPARSE)


def test_without_step_tracker_every_step_is_sparse():
    model = tiny_transformer()
    proc = XAttentionProcessor(SPARSE.replace(warmup_steps=3))
    model.set_attn_processor(proc)
    with torch.no_grad():
        model(**inputs())
    densities = [d for layers in proc.state.densities.values() for v in layers.values() for d in v]
    assert len(densities) == 4 and all(d < 1.0 for d in densities)
