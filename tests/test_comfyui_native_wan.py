"""The native node against ComfyUI's own Wan (2.1 / 2.2): a tiny random-weight model in a real ModelPatcher,
sampled with ComfyUI's KSampler path. Only each block's self-attention is ours; cross-attention stays ComfyUI's."""

from __future__ import annotations

import pytest
import torch
from comfyui_env import import_comfy, random_model

import_comfy()

import comfy.model_base  # noqa: E402
import comfy.model_patcher  # noqa: E402
import comfy.sample  # noqa: E402
import comfy.supported_models  # noqa: E402

from xattn_video.comfyui.native import STATE_ATTR, WanXAttentionPatch, patch_model  # noqa: E402
from xattn_video.comfyui.nodes import XAttentionHunyuanVideo  # noqa: E402
from xattn_video.config import XAttentionConfig  # noqa: E402
from xattn_video.log import log_once  # noqa: E402

UNET = dict(image_model="wan2.1", model_type="t2v", patch_size=(1, 2, 2), in_dim=16, dim=32, ffn_dim=64,
            freq_dim=16, text_dim=24, out_dim=16, num_heads=2, num_layers=2)
LATENT = (1, 16, 3, 12, 12)  # 3 x 6 x 6 = 108 video tokens after the 1x2x2 patchify
TXT = 7
STEPS = 3
LAYERS = UNET["num_layers"]
BLOCKS = dict(block_size=16, stride=4)


@pytest.fixture(scope="module")
def model() -> comfy.model_patcher.ModelPatcher:
    return random_model(comfy.supported_models.WAN21_T2V(dict(UNET)), comfy.model_base.WAN21,
                        ("self_attn.norm_q.weight", "self_attn.norm_k.weight"))


def _sample(m, txt: int = TXT) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    latent = torch.zeros(LATENT)
    pos = [[torch.randn(1, txt, 24, generator=g), {}]]
    neg = [[torch.zeros(1, txt, 24), {}]]
    return comfy.sample.sample(m, comfy.sample.prepare_noise(latent, 0), STEPS, 1.0, "euler", "simple", pos, neg,
                               latent, disable_pbar=True, seed=0)


@pytest.fixture(scope="module")
def dense_out(model) -> torch.Tensor:
    return _sample(model)


@pytest.mark.parametrize("order", ["raster", "tile"])
def test_tau_one_matches_unpatched(model, dense_out, order):
    # max_density = 1 keeps tau = 1 on the block-sparse path (estimate + select + attention over every block)
    patched, runtime = patch_model(model, XAttentionConfig(threshold=1.0, max_density=1.0, warmup_steps=0,
                                                           token_order=order, **BLOCKS))
    assert isinstance(patched.model_options["transformer_options"]["optimized_attention_override"],
                      WanXAttentionPatch)
    out = _sample(patched)
    assert runtime.record.count("sparse") == STEPS * LAYERS, "self-attention only: one call per block and step"
    torch.testing.assert_close(out, dense_out, rtol=1e-4, atol=1e-5)
    if order == "raster":  # plain tau = 1 is planned dense ("exact"): ComfyUI's own attention, identical
        patched, runtime = patch_model(model, XAttentionConfig(threshold=1.0, warmup_steps=0, **BLOCKS))
        torch.testing.assert_close(_sample(patched), dense_out, rtol=0, atol=0)
        assert runtime.record.counts() == {"exact": STEPS * LAYERS}


def test_sparse_after_warmup_through_the_node(model, dense_out):
    (patched,) = XAttentionHunyuanVideo().patch(model, threshold=0.5, stride=4, block_size=16, warmup_steps=1,
                                               max_density=0.0, keep_text=True)
    runtime = getattr(patched, STATE_ATTR)
    out = _sample(patched)
    assert not torch.allclose(out, dense_out, atol=1e-4)
    table = runtime.density_table()
    assert sorted(table) == list(range(STEPS)) and set(table[0].values()) == {1.0}
    assert all(0.0 < d < 1.0 for s in range(1, STEPS) for d in table[s].values())
    assert runtime.record.counts() == {"warmup": LAYERS, "estimated": (STEPS - 1) * LAYERS}


def test_ambiguous_length_stays_on_comfy_attention(model, caplog):
    # 108 text tokens = 108 video tokens: cross-attention has as many keys as queries; no call can be told apart
    ref = _sample(model, txt=108)
    patched, runtime = patch_model(model, XAttentionConfig(threshold=0.5, warmup_steps=0, **BLOCKS))
    log_once.cache_clear()
    with caplog.at_level("WARNING", logger="xattn_video"):
        out = _sample(patched, txt=108)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    assert runtime.record.calls == []
    said = [r.getMessage() for r in caplog.records if r.name == "xattn_video"]
    assert len(said) == 1 and "cannot be told from cross-attention" in said[0]
