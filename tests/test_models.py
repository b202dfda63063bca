"""HunyuanVideo 1.5 and Wan through the one runtime: tiny random-weight models of diffusers' own classes,
tau = 1 against the stock processors, sparse after warmup, the stock processors kept where attention stays
dense, Wan 2.2's two experts, and the error for an unsupported class."""

from __future__ import annotations

import types

import pytest
import torch
from diffusers import HunyuanVideo15Transformer3DModel, WanTransformer3DModel
from diffusers.models.transformers.transformer_hunyuan_video15 import HunyuanVideo15AttnProcessor2_0
from diffusers.models.transformers.transformer_wan import WanAttnProcessor

from xattn_video import XAttentionConfig, apply_xattention, remove_xattention
from xattn_video.log import log_once
from xattn_video.models import adapter_for, supported_classes
from xattn_video.models.hunyuan_video15 import HunyuanVideo15XAttentionProcessor
from xattn_video.models.wan import WanXAttentionProcessor
from xattn_video.processors import block_attention_names, runtime_of
from xattn_video.runtime import XAttentionRuntime

# 3 x 6 x 6 = 108 video tokens: blocks of 16 give real selection
BLOCKS = dict(block_size=16, stride=4)


def tiny_wan(seed: int = 0, **kw) -> WanTransformer3DModel:
    torch.manual_seed(seed)
    model = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16, in_channels=4,
                                  out_channels=4, text_dim=24, freq_dim=16, ffn_dim=32, num_layers=2,
                                  rope_max_seq_len=32, **kw).eval()
    with torch.no_grad():  # peaked, position-dependent attention, as in a trained model
        for name, p in model.named_parameters():
            if ".norm_q." in name or ".norm_k." in name:
                p.fill_(4.0)
    return model


def wan_inputs(batch: int = 1, seed: int = 1, t: float = 900.0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return dict(hidden_states=torch.randn(batch, 4, 3, 12, 12, generator=g), timestep=torch.full((batch,), t),
                encoder_hidden_states=torch.randn(batch, 7, 24, generator=g), return_dict=False)


def tiny_hunyuan15(seed: int = 0) -> HunyuanVideo15Transformer3DModel:
    torch.manual_seed(seed)
    model = HunyuanVideo15Transformer3DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=16, num_layers=2,
        num_refiner_layers=1, mlp_ratio=2.0, patch_size=1, patch_size_t=1, text_embed_dim=24, text_embed_2_dim=16,
        image_embed_dim=12, rope_axes_dim=(4, 6, 6)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "transformer_blocks" in name and ("norm_q" in name or "norm_k" in name or "norm_added" in name):
                p.fill_(4.0)
    return model


def hunyuan15_inputs(batch: int = 2, valid=(8, 5), valid_2=(4, 2), image: bool = False, seed: int = 1,
                     t: float = 900.0) -> dict:
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(batch, 8, dtype=torch.long)
    mask_2 = torch.zeros(batch, 4, dtype=torch.long)
    for i in range(batch):
        mask[i, :valid[i]] = 1
        mask_2[i, :valid_2[i]] = 1
    return dict(
        hidden_states=torch.randn(batch, 4, 3, 6, 6, generator=g), timestep=torch.full((batch,), t),
        encoder_hidden_states=torch.randn(batch, 8, 24, generator=g), encoder_attention_mask=mask,
        encoder_hidden_states_2=torch.randn(batch, 4, 16, generator=g), encoder_attention_mask_2=mask_2,
        image_embeds=torch.randn(batch, 3, 12, generator=g) if image else torch.zeros(batch, 3, 12),
        return_dict=False)


def _forward(model, inputs):
    with torch.no_grad():
        return model(**inputs)[0]


CASES = {"wan": (tiny_wan, wan_inputs), "hunyuan15": (tiny_hunyuan15, hunyuan15_inputs)}


@pytest.mark.parametrize("family", sorted(CASES))
@pytest.mark.parametrize("path", ["exact", "block-sparse", "block-sparse tile order"])
def test_tau_one_matches_stock(family, path):
    build, make_inputs = CASES[family]
    model = build()
    inputs = make_inputs()
    stock = _forward(model, inputs)
    # tau = 1 is planned dense ("exact"); max_density = 1 runs estimate + select + block-sparse attention
    extra = {} if path == "exact" else dict(max_density=1.0)
    if path.endswith("tile order"):
        extra["token_order"] = "tile"
    runtime = apply_xattention(model, XAttentionConfig(threshold=1.0, warmup_steps=0, **BLOCKS, **extra))
    ours = _forward(model, inputs)
    layers = len(block_attention_names(model))
    if path == "exact":
        assert runtime.record.counts() == {"exact": layers}
    else:
        assert runtime.record.count("sparse") == layers, "the block-sparse path really ran"
    torch.testing.assert_close(ours, stock, rtol=1e-5, atol=1e-5)
    remove_xattention(model)
    torch.testing.assert_close(_forward(model, inputs), stock, rtol=0, atol=0)


def test_hunyuan15_i2v_and_full_text():
    # valid image tokens and unpadded text: no padding anywhere, still exact on the block-sparse path
    model = tiny_hunyuan15()
    inputs = hunyuan15_inputs(valid=(8, 8), valid_2=(4, 4), image=True)
    stock = _forward(model, inputs)
    runtime = apply_xattention(model, XAttentionConfig(threshold=1.0, max_density=1.0, warmup_steps=0, **BLOCKS))
    torch.testing.assert_close(_forward(model, inputs), stock, rtol=1e-5, atol=1e-5)
    assert runtime.record.count("sparse") == 2


@pytest.mark.parametrize("family", sorted(CASES))
def test_sparse_after_warmup_then_dense_again(family):
    build, make_inputs = CASES[family]
    model = build()
    runtime = apply_xattention(model, XAttentionConfig(threshold=0.5, warmup_steps=1, **BLOCKS))
    outs = [_forward(model, make_inputs(t=t)) for t in (900.0, 600.0)]  # two steps (timestep decreases)
    table = runtime.density_table()
    assert set(table[0].values()) == {1.0}, "warmup step dense"
    assert all(0.0 < d < 1.0 for d in table[1].values()), table
    assert runtime.record.counts() == {"warmup": 2, "estimated": 2}
    remove_xattention(model)
    stock = _forward(model, make_inputs(t=600.0))
    assert not torch.allclose(outs[1], stock, atol=1e-4), "sparse attention changed the output"


@pytest.mark.parametrize("family", sorted(CASES))
def test_compiles_with_the_attention_inside_the_graph(family):
    """torch.compile of the adapted model: the sparse attention runs as one custom op inside the graph (the
    only graph break it adds is the step hook's timestep read; HunyuanVideo 1.5's own forward has one more),
    and the output equals eager."""
    build, make_inputs = CASES[family]
    model = build()
    inputs = make_inputs()
    try:
        with torch.no_grad():
            stock_breaks = {b.reason for b in torch._dynamo.explain(model)(**inputs).break_reasons}
        torch._dynamo.reset()
        apply_xattention(model, XAttentionConfig(threshold=0.5, warmup_steps=0, **BLOCKS))
        eager = _forward(model, inputs)
        with torch.no_grad():
            explained = torch._dynamo.explain(model)(**inputs)
        added = {b.reason for b in explained.break_reasons} - stock_breaks
        assert all("item()" in r for r in added), added
        ops = [n for g in explained.graphs for n in g.graph.nodes if "xattn_video.attend" in str(n.target)]
        assert len(ops) == len(block_attention_names(model))
        torch._dynamo.reset()
        compiled = _forward(torch.compile(model, backend="aot_eager"), inputs)
    finally:
        torch._dynamo.reset()
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5)


def test_wan_only_self_attention_is_ours():
    model = tiny_wan(image_dim=12, added_kv_proj_dim=32)  # an I2V-style model: image tokens in cross-attention
    before = dict(model.attn_processors)
    apply_xattention(model, XAttentionConfig(threshold=0.5, warmup_steps=0, **BLOCKS))
    procs = model.attn_processors
    for name, proc in procs.items():
        if ".attn1." in name:
            assert isinstance(proc, WanXAttentionProcessor), name
        else:
            assert proc is before[name] and isinstance(proc, WanAttnProcessor), name
    assert runtime_of(model).layer_names == {0: "blocks.0.attn1", 1: "blocks.1.attn1"}
    inputs = wan_inputs()
    g = torch.Generator().manual_seed(3)
    inputs["encoder_hidden_states_image"] = torch.randn(1, 5, 12, generator=g)
    inputs["encoder_hidden_states"] = torch.randn(1, 512, 24, generator=g)  # Wan's I2V split: 512 text tokens
    out = _forward(model, inputs)
    assert out.shape == inputs["hidden_states"].shape and torch.isfinite(out).all()
    remove_xattention(model)
    assert all(model.attn_processors[n] is p for n, p in before.items())


def test_wan_fused_projections_exact():
    model = tiny_wan()
    inputs = wan_inputs()
    stock = _forward(model, inputs)
    for block in model.blocks:
        block.attn1.fuse_projections()
    apply_xattention(model, XAttentionConfig(threshold=1.0, max_density=1.0, warmup_steps=0, **BLOCKS))
    torch.testing.assert_close(_forward(model, inputs), stock, rtol=1e-5, atol=1e-5)


def test_wan22_two_experts_share_one_runtime():
    high, low = tiny_wan(0), tiny_wan(1)
    pipe = types.SimpleNamespace(transformer=high, transformer_2=low)
    runtime = apply_xattention(pipe, XAttentionConfig(threshold=0.5, warmup_steps=1, **BLOCKS))
    assert runtime_of(pipe) is runtime and runtime_of(low) is runtime
    assert runtime.layer_names == {0: "transformer.blocks.0.attn1", 1: "transformer.blocks.1.attn1",
                                   2: "transformer_2.blocks.0.attn1", 3: "transformer_2.blocks.1.attn1"}
    # the pipeline's schedule: high-noise expert first, then the low-noise one, one step index throughout
    for i, (model, t) in enumerate(((high, 900.0), (high, 700.0), (low, 500.0))):
        with model.cache_context("cond", step_index=i, num_inference_steps=3):
            _forward(model, wan_inputs(t=t))
    calls = [(c.step, c.layer, c.reason) for c in runtime.record.calls]
    assert calls == [(0, 0, "warmup"), (0, 1, "warmup"), (1, 0, "estimated"), (1, 1, "estimated"),
                     (2, 2, "estimated"), (2, 3, "estimated")]
    remove_xattention(pipe)
    assert runtime_of(high) is None and runtime_of(low) is None


def test_hunyuan15_mask_not_a_prefix_falls_back_exactly(caplog):
    # a text mask with a hole is no key-padding mask: the runtime's fallback (dense, logged once) stays exact
    model = tiny_hunyuan15()
    attn = model.transformer_blocks[0].attn
    g = torch.Generator().manual_seed(0)
    video, text = torch.randn(1, 108, 32, generator=g), torch.randn(1, 15, 32, generator=g)
    rope = model.rope(torch.zeros(1, 4, 3, 6, 6))
    text_mask = torch.ones(1, 15, dtype=torch.bool)
    text_mask[0, 4] = False
    text_mask[0, 12:] = False
    with torch.no_grad():
        stock = HunyuanVideo15AttnProcessor2_0()(attn, video, text, text_mask, rope)
        runtime = XAttentionRuntime(XAttentionConfig(threshold=0.5, warmup_steps=0, **BLOCKS))
        runtime.begin_forward(step=0)
        log_once.cache_clear()
        with caplog.at_level("WARNING", logger="xattn_video"):
            ours = HunyuanVideo15XAttentionProcessor(runtime, layer=0)(attn, video, text, text_mask, rope)
    for a, b in zip(ours, stock):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert runtime.record.counts() == {"mask": 1}
    assert [r for r in caplog.records if r.name == "xattn_video" and "not a prefix" in r.getMessage()]


def test_hunyuan15_padded_text_queries_are_zero_like_stock():
    model = tiny_hunyuan15()
    attn = model.transformer_blocks[0].attn
    g = torch.Generator().manual_seed(0)
    video, text = torch.randn(1, 108, 32, generator=g), torch.randn(1, 15, 32, generator=g)
    text_mask = torch.zeros(1, 15, dtype=torch.bool)
    text_mask[0, :6] = True
    runtime = XAttentionRuntime(XAttentionConfig(threshold=0.5, warmup_steps=0, **BLOCKS))
    runtime.begin_forward(step=0)
    captured = {}
    attend = runtime.attend

    def spy(q, k, v, **kw):
        captured.update(kw, n=q.shape[2])
        return attend(q, k, v, **kw)

    runtime.attend = spy
    with torch.no_grad():
        _, encoder_out = HunyuanVideo15XAttentionProcessor(runtime, layer=0)(attn, video, text, text_mask, None)
    assert captured["global_start"] == 108 and captured["n"] == 123
    assert captured["mask"].shape == (1, 1, 1, 123) and int(captured["mask"].sum()) == 108 + 6
    assert runtime.record.count("sparse") == 1
    bias = attn.to_add_out.bias
    torch.testing.assert_close(encoder_out[0, 6:], bias.expand(9, -1))  # zero attention output, then to_add_out


def test_unsupported_class_names_it_and_the_supported():
    with pytest.raises(ValueError, match="does not support Conv2d; supported transformers: "
                                         "HunyuanVideoTransformer3DModel, HunyuanVideo15Transformer3DModel, "
                                         "WanTransformer3DModel"):
        apply_xattention(torch.nn.Conv2d(1, 1, 1))
    assert supported_classes() == ["HunyuanVideoTransformer3DModel", "HunyuanVideo15Transformer3DModel",
                                   "WanTransformer3DModel"]
    assert adapter_for(tiny_wan()).name == "Wan"


def test_video_grid_of_each_model():
    from xattn_video.hooks import video_grid

    assert video_grid(tiny_wan(), torch.zeros(1, 4, 3, 12, 12)) == (3, 6, 6)
    assert video_grid(tiny_hunyuan15(), torch.zeros(1, 4, 3, 6, 6)) == (3, 6, 6)


@pytest.mark.parametrize("name", ["wan_720p", "wan_720p_8bit", "hunyuan15_720p"])
def test_presets_load_and_say_uncalibrated(name):
    from xattn_video.config import PRESET_DIR, load_config

    cfg = load_config(name)
    assert (cfg.threshold, cfg.max_density, cfg.warmup_steps, cfg.block_size) == (0.9, 0.3, 10, 128)
    eight_bit = name.endswith("8bit")
    assert (cfg.op.precision, cfg.op.estimate_precision) == (("int8-fp8", "fp8") if eight_bit else ("native", "native"))
    assert "UNCALIBRATED" in (PRESET_DIR / f"{name}.yaml").read_text()


@pytest.mark.parametrize("cls, family", [("WanImageToVideoPipeline", "Wan 2.1 / 2.2 image-to-video"),
                                         ("HunyuanVideo15ImageToVideoPipeline", "HunyuanVideo 1.5 image-to-video"),
                                         ("FluxPipeline", None)])
def test_loader_names_a_folder_it_cannot_run(tmp_path, cls, family):
    from xattn_video.pipelines.hunyuan_video import load_pipeline

    (tmp_path / "model_index.json").write_text(f'{{"_class_name": "{cls}"}}')
    expected = (f"holds a {cls} \\({family}, which needs an image\\).*apply_xattention" if family else
                f"holds a {cls}; accepted: HunyuanVideoPipeline \\(HunyuanVideo\\), WanPipeline")
    with pytest.raises(ValueError, match=expected):
        load_pipeline(tmp_path, device="cpu")


@pytest.mark.parametrize("cls", [WanXAttentionProcessor, HunyuanVideo15XAttentionProcessor])
def test_adapter_processors_refuse_context_parallelism(cls):
    """Under diffusers' context parallelism these processors would see a shard of the video: they refuse."""
    from xattn_video.runtime import XAttentionRuntime

    proc = cls(XAttentionRuntime(), layer=0)
    proc._parallel_config = object()  # what diffusers' enable_parallelism sets
    x = torch.zeros(1, 4, 8)
    with pytest.raises(NotImplementedError, match="context parallelism"):
        proc(None, x, None if cls is WanXAttentionProcessor else x)  # Wan: self-attention has no text
