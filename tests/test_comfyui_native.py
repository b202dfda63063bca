"""The native node against ComfyUI's own HunyuanVideo: a tiny random-weight model in a real ModelPatcher,
sampled with ComfyUI's KSampler path (so the override, the wrapper and the sigma bookkeeping are ComfyUI's)."""

from __future__ import annotations

import copy

import pytest
import torch
from comfyui_env import import_comfy, random_model

import_comfy()

import comfy.model_base  # noqa: E402
import comfy.model_patcher  # noqa: E402
import comfy.sample  # noqa: E402
import comfy.supported_models  # noqa: E402
from comfy.ldm.flux import math as flux_math  # noqa: E402

from xattn_video.comfyui.native import STATE_ATTR, XAttentionPatch, patch_model, step_index  # noqa: E402
from xattn_video.comfyui.nodes import NODE_CLASS_MAPPINGS, XAttentionHunyuanVideo  # noqa: E402
from xattn_video.log import log_once  # noqa: E402
from xattn_video.config import XAttentionConfig  # noqa: E402
from xattn_video.runtime import key_padding_lengths  # noqa: E402

CPU = torch.device("cpu")
UNET = dict(image_model="hunyuan_video", in_channels=4, out_channels=4, vec_in_dim=8, context_in_dim=16,
            hidden_size=64, mlp_ratio=2.0, num_heads=4, depth=2, depth_single_blocks=2, axes_dim=[4, 6, 6],
            theta=256, patch_size=[1, 2, 2], qkv_bias=True, guidance_embed=True, byt5=False, meanflow=False)
LATENT = (1, 4, 3, 8, 16)  # 3 x 4 x 8 = 96 video tokens after the 1x2x2 patchify
TXT = 10
STEPS = 4
# block 16 / stride 4: 96 video + 10 text tokens = 7 blocks, enough for real selection
NODE_ARGS = dict(stride=4, block_size=16, max_density=0.0, keep_text=True)


@pytest.fixture(scope="module")
def model() -> comfy.model_patcher.ModelPatcher:
    return random_model(comfy.supported_models.HunyuanVideo(dict(UNET)), comfy.model_base.HunyuanVideo,
                        ("query_norm.scale", "key_norm.scale"))


def _conds(pad: int = 0) -> tuple[list, list]:
    g = torch.Generator().manual_seed(1)
    extra = {}
    if pad:  # a padded prompt: ComfyUI's txt mask (1 = token, 0 = padding) becomes a key-padding mask
        m = torch.ones(1, TXT, dtype=torch.long)
        m[:, TXT - pad:] = 0
        extra["attention_mask"] = m
    pos = [[torch.randn(1, TXT, 16, generator=g), {"pooled_output": torch.randn(1, 8, generator=g), "guidance": 6.0,
                                                    **extra}]]
    neg = [[torch.zeros(1, TXT, 16), {"pooled_output": torch.zeros(1, 8), "guidance": 6.0, **extra}]]
    return pos, neg


def _sample(m, pad: int = 0) -> torch.Tensor:
    latent = torch.zeros(LATENT)
    pos, neg = _conds(pad)
    return comfy.sample.sample(m, comfy.sample.prepare_noise(latent, 0), STEPS, 1.0, "euler", "simple", pos, neg,
                               latent, disable_pbar=True, seed=0)


def _patch(model, **kw):
    args = {**NODE_ARGS, **kw}
    (patched,) = XAttentionHunyuanVideo().patch(model, **args)
    return patched, getattr(patched, STATE_ATTR)


@pytest.fixture(scope="module")
def dense_out(model) -> torch.Tensor:
    return _sample(model)


def test_tau_one_matches_unpatched(model, dense_out):
    # max_density = 1 keeps tau = 1 on the block-sparse path (estimate + select + attention over every block)
    patched, runtime = patch_model(model, XAttentionConfig(block_size=16, stride=4, threshold=1.0, max_density=1.0,
                                                           warmup_steps=0))
    out = _sample(patched)
    assert runtime.record.count("sparse") == STEPS * (UNET["depth"] + UNET["depth_single_blocks"])  # it really ran
    # the CPU's SDPA path rounds in another order than ComfyUI's attention; the sampling steps carry that to ~1e-4
    torch.testing.assert_close(out, dense_out, rtol=1e-3, atol=3e-4)
    assert all(d == pytest.approx(1.0) for layers in runtime.density_table().values() for d in layers.values())
    # plain tau = 1 is planned dense ("exact"): ComfyUI's own attention, identical
    patched, runtime = _patch(model, threshold=1.0, warmup_steps=0)
    torch.testing.assert_close(_sample(patched), dense_out, rtol=0, atol=0)
    assert runtime.record.counts() == {"exact": STEPS * 4}


def test_tau_below_one_is_sparse_after_warmup(model, dense_out):
    patched, runtime = _patch(model, threshold=0.5, warmup_steps=2)
    out = _sample(patched)
    assert not torch.allclose(out, dense_out, atol=1e-4)
    table = runtime.density_table()
    assert sorted(table) == list(range(STEPS))
    assert set(table[0].values()) == {1.0} and set(table[1].values()) == {1.0}  # warmup steps ran dense
    assert all(d < 1.0 for s in range(2, STEPS) for d in table[s].values())
    assert 0.0 < runtime.record.mean_density_after_warmup() < 1.0
    assert runtime.record.counts() == {"warmup": 2 * 4, "estimated": 2 * 4}


def test_text_padding_mask_becomes_kv_len(model):
    # with 3 padded text tokens, tau = 1 on the block-sparse path must still equal ComfyUI's masked attention
    ref = _sample(model, pad=3)
    patched, runtime = patch_model(model, XAttentionConfig(block_size=16, stride=4, threshold=1.0, max_density=1.0,
                                                           warmup_steps=0))
    out = _sample(patched, pad=3)
    torch.testing.assert_close(out, ref, rtol=1e-3, atol=3e-4)  # rounding order, as above
    assert runtime.record.count("sparse") > 0 and runtime.record.count(reason="mask") == 0
    assert not torch.allclose(ref, _sample(model), atol=1e-4)  # the padding mask mattered


def test_dense_layers_stay_on_comfy_attention(model, dense_out):
    # all 4 joint-attention blocks (2 double + 2 single, numbered in that order) listed as dense
    patched, runtime = patch_model(model, XAttentionConfig(block_size=16, stride=4, threshold=0.3, warmup_steps=0,
                                                           dense_layers=(0, 1, 2, 3)))
    torch.testing.assert_close(_sample(patched), dense_out, rtol=1e-4, atol=1e-5)
    assert runtime.record.counts() == {"dense_layer": STEPS * 4}


def test_input_model_unchanged(model):
    options = copy.deepcopy(model.model_options)
    wrappers = copy.deepcopy(model.wrappers)
    weights = {k: v.clone() for k, v in model.model.diffusion_model.state_dict().items()}
    patched, _ = _patch(model, threshold=0.5, warmup_steps=1)
    _sample(patched)
    assert patched is not model and patched.model is model.model
    assert model.model_options == options and model.wrappers == wrappers
    assert "optimized_attention_override" not in model.model_options.get("transformer_options", {})
    assert not hasattr(model, STATE_ATTR)
    for k, v in model.model.diffusion_model.state_dict().items():
        assert torch.equal(v, weights[k]), k
    # clones of the patched model keep feeding the same state (ModelPatcher.clone deep-copies options)
    again = patched.clone()
    assert again.model_options["transformer_options"]["optimized_attention_override"] is \
        patched.model_options["transformer_options"]["optimized_attention_override"]


@pytest.mark.parametrize("threshold", [0.0, 1.5])
def test_bad_threshold_names_value(model, threshold):
    with pytest.raises(ValueError, match=f"threshold={threshold}"):
        _patch(model, threshold=threshold, warmup_steps=0)


def test_stride_must_divide_block_size(model):
    with pytest.raises(ValueError, match="stride=5"):
        XAttentionHunyuanVideo().patch(model, threshold=0.9, stride=5, block_size=16, warmup_steps=0,
                                       max_density=0.0, keep_text=True)


def test_not_hunyuan_video_model_names_it():
    class Tiny(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.diffusion_model = torch.nn.Linear(2, 2)

    other = comfy.model_patcher.ModelPatcher(Tiny(), load_device=CPU, offload_device=CPU)
    with pytest.raises(TypeError, match="Linear"):
        XAttentionHunyuanVideo().patch(other, threshold=0.9, warmup_steps=0, **NODE_ARGS)
    with pytest.raises(TypeError, match="str"):
        XAttentionHunyuanVideo().patch("not a model", threshold=0.9, warmup_steps=0, **NODE_ARGS)


def test_other_mask_shapes_fall_back_to_comfy(caplog):
    patch = XAttentionPatch(XAttentionConfig(block_size=16, stride=4, threshold=0.5, warmup_steps=0))
    patch.txt_len = TXT  # inside a forward, as the diffusion-model wrapper sets it
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 4, 106, 16, generator=g) for _ in range(3))
    full = torch.zeros(1, 1, 106, 106)
    full[..., :50, 100:] = -1e9  # query-dependent: not a key-padding mask
    ref = flux_math.optimized_attention(q, k, v, 4, skip_reshape=True, mask=full)
    log_once.cache_clear()  # an earlier test may have logged the same fallback already
    with caplog.at_level("WARNING", logger="xattn_video"):
        out = flux_math.optimized_attention(q, k, v, 4, skip_reshape=True, mask=full,
                                            transformer_options={"optimized_attention_override": patch})
    torch.testing.assert_close(out, ref)
    assert patch.runtime.record.counts() == {"mask": 1}
    # the fallback is said, once, naming the mask and where the call went
    warnings = [r.getMessage() for r in caplog.records if r.name == "xattn_video"]
    assert len(warnings) == 1
    assert "(1, 1, 106, 106) is not a key-padding mask" in warnings[0] and "host's dense attention" in warnings[0]
    # a key-padding mask on the same call goes sparse, and the output keeps ComfyUI's [B, N, H*D] layout
    pad = torch.zeros(1, 1, 106)
    pad[..., 103:] = -torch.finfo(torch.float32).max
    out = flux_math.optimized_attention(q, k, v, 4, skip_reshape=True, mask=pad,
                                        transformer_options={"optimized_attention_override": patch})
    assert out.shape == (1, 106, 64) and patch.runtime.record.count("sparse") == 1


def test_token_refiner_and_short_sequences_untouched():
    patch = XAttentionPatch(XAttentionConfig(block_size=16, stride=4, threshold=0.1, warmup_steps=0))
    calls = []

    def original(q, k, v, heads, skip_reshape=False, skip_output_reshape=False, **kwargs):
        calls.append(q.shape)
        b, h, n, d = q.shape
        return torch.zeros(b, h, n, d) if skip_output_reshape else torch.zeros(b, n, h * d)

    q = torch.randn(1, 4, TXT, 16)
    patch(original, q, q, q, 4, skip_reshape=True, mask=None)  # outside a forward
    patch.txt_len = TXT
    patch(original, q, q, q, 4, skip_reshape=True, mask=None)  # text-only: the token refiner
    short = torch.randn(1, 4, 20, 16)  # < 2 blocks of 16
    out = patch(original, short, short, short, 4, skip_reshape=True, mask=None)
    assert out.shape == (1, 20, 64), "ComfyUI's output layout"
    assert len(calls) == 3 and patch.runtime.record.counts() == {"short": 1}


def test_key_padding_lengths():
    n = 8
    add = torch.zeros(1, 1, n)
    add[..., 6:] = float("-inf")
    kv, why = key_padding_lengths(add, 2, n)
    assert why is None and kv.tolist() == [6, 6]
    kv, why = key_padding_lengths(torch.tensor([[True] * 5 + [False] * 3]), 1, n)
    assert kv.tolist() == [5]
    assert key_padding_lengths(None, 1, n) == (None, None)
    hole = torch.ones(1, n, dtype=torch.bool)
    hole[0, 2] = False
    assert key_padding_lengths(hole, 1, n)[1] is not None  # not a prefix
    assert key_padding_lengths(torch.full((1, n), 0.5), 1, n)[1] is not None  # a bias, not padding
    assert key_padding_lengths(torch.zeros(1, 1, n, n), 1, n)[1] is not None


def test_step_index_from_sigmas():
    sched = torch.tensor([1.0, 0.8, 0.5, 0.2, 0.0])
    assert step_index({"sigmas": torch.tensor([1.0]), "sample_sigmas": sched}) == 0
    assert step_index({"sigmas": torch.tensor([0.5, 0.5]), "sample_sigmas": sched}) == 2
    assert step_index({"sigmas": torch.tensor([0.35]), "sample_sigmas": sched}) == 2  # 2nd-order midpoint
    assert step_index({"sigmas": torch.tensor([0.5])}) is None


def test_node_conventions():
    for name, cls in NODE_CLASS_MAPPINGS.items():
        spec = cls.INPUT_TYPES()
        assert "required" in spec, name
        assert cls.CATEGORY == "xattention" and hasattr(cls, cls.FUNCTION), name
        assert len(cls.RETURN_TYPES) == len(cls.RETURN_NAMES), name
        for group in spec.values():
            for key, (kind, *opts) in group.items():
                if kind in ("INT", "FLOAT"):
                    assert {"default", "min", "max", "tooltip"} <= set(opts[0]), (name, key)


def test_mask_reuse_through_the_node(model):
    patched, runtime = _patch(model, threshold=0.5, warmup_steps=1, mask_reuse_steps=2)
    _sample(patched)
    per_step = [[c.reason for c in runtime.record.calls if c.step == s] for s in range(STEPS)]
    assert per_step == [["warmup"] * 4, ["estimated"] * 4, ["reused"] * 4, ["estimated"] * 4]
    assert runtime.density_table()[2] == runtime.density_table()[1], "a reused mask keeps its density"
    assert len(runtime.masks) == 0, "nothing kept after the sampler's last step"


def test_residual_through_the_node(model):
    patched, runtime = _patch(model, threshold=0.5, warmup_steps=1, residual_refresh=1)
    _sample(patched)
    per_step = [[c.reason for c in runtime.record.calls if c.step == s] for s in range(STEPS)]
    assert per_step == [["warmup"] * 4, ["residual"] * 4, ["refresh"] * 4, ["residual"] * 4]
    assert all(c.mask_density is not None for c in runtime.record.calls if c.reason in ("warmup", "refresh"))
    assert len(runtime.residuals) == 0, "nothing held after the sampler's last step"
    with pytest.raises(ValueError, match="residual_refresh=-2 is out of range"):
        _patch(model, threshold=0.5, warmup_steps=1, residual_refresh=-2)
    patched, runtime = _patch(model, threshold=0.5, warmup_steps=1, residual_refresh=0, residual_precision="fp8")
    assert runtime.config.schedule.residual_precision == "fp8" and runtime.residuals.precision == "fp8"
    with pytest.raises(ValueError, match="residual_precision='fp16' is not one of"):
        _patch(model, threshold=0.5, warmup_steps=1, residual_refresh=0, residual_precision="fp16")
