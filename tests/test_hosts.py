"""Both hosts, fed the same step sequences, make the same decisions and fill the same run record.

The diffusers transformer and ComfyUI's native HunyuanVideo are built with the same token layout (108 video
tokens, 10 text tokens of which 4 padded, 4 heads x 16) but different weights, so antidiagonal estimates
differ: the full records are compared with a mask source whose masks depend only on the call (layer, step,
shape, padding), and the decisions alone with the estimate.
"""

from __future__ import annotations

import pytest
import torch
from comfyui_env import import_comfy
from diffusers import HunyuanVideoTransformer3DModel

from xattn_video import BlockSparseMask, XAttentionConfig, apply_xattention
from xattn_video.hooks import attach_step_hook
from xattn_video.processors import xattention_processors
from xattn_video.runtime import MaskRequest, XAttentionRuntime
from xattn_video.token_order import tile_permutation

import_comfy()

import comfy.model_base  # noqa: E402
import comfy.patcher_extension  # noqa: E402
import comfy.supported_models  # noqa: E402

from xattn_video.comfyui.native import PATCH_KEY, XAttentionPatch  # noqa: E402

HEADS, HEAD_DIM, TEXT, VALID_TEXT = 4, 16, 10, 6
SIGMAS = [1.0, 0.75, 0.5, 0.25, 0.0]  # ComfyUI's sample_sigmas for 4 steps
TIMESTEPS = [1000.0, 750.0, 500.0, 250.0]  # diffusers' timesteps of the same steps
CONFIG = XAttentionConfig(block_size=16, stride=4, threshold=0.6, warmup_steps=1, mask_reuse_steps=2,
                          dense_layers=(2,))
# steps of consecutive transformer forwards: warmup, CFG double calls, reuse, then a restart
SEQUENCE = [0, 0, 1, 1, 2, 2, 3, 3, 0, 1]


def call_pattern(req: MaskRequest) -> BlockSparseMask:
    """A mask from the call alone: the diagonal, the text blocks and one block that moves with layer and step."""
    b, h, n = req.q.shape[:3]
    bs = req.config.block_size
    qb = -(-n // bs)
    keep = torch.eye(qb, dtype=torch.bool)
    keep[:, req.global_start // bs:] = True
    keep[:, (req.layer + 2 * (req.step or 0)) % qb] = True
    keep = keep[None, None].repeat(b, h, 1, 1)
    keep[:, 1:, :, 0] = True  # heads differ: per-head densities are compared too
    return BlockSparseMask.from_dense(keep, bs, n, req.kv_len)


class DiffusersHost:
    def __init__(self, config: XAttentionConfig, mask_source=None, step_hook: bool = True,
                 use_step_index: bool = False) -> None:
        torch.manual_seed(0)
        self.model = HunyuanVideoTransformer3DModel(
            in_channels=4, out_channels=4, num_attention_heads=HEADS, attention_head_dim=HEAD_DIM, num_layers=2,
            num_single_layers=2, num_refiner_layers=1, patch_size=2, patch_size_t=1, text_embed_dim=16,
            pooled_projection_dim=8, rope_axes_dim=(4, 6, 6),
        ).eval()
        if step_hook:
            self.runtime = apply_xattention(self.model, config, mask_source=mask_source)
        else:  # processors set by hand, no hook: the step is unknown
            self.runtime = XAttentionRuntime(config, mask_source=mask_source)
            self.model.set_attn_processor(xattention_processors(self.model, runtime=self.runtime))
        self.use_step_index = use_step_index
        g = torch.Generator().manual_seed(1)
        mask = torch.zeros(1, TEXT, dtype=torch.long)
        mask[:, :VALID_TEXT] = 1
        self.inputs = dict(hidden_states=torch.randn(1, 4, 3, 12, 12, generator=g),
                           encoder_hidden_states=torch.randn(1, TEXT, 16, generator=g), encoder_attention_mask=mask,
                           pooled_projections=torch.randn(1, 8, generator=g), guidance=torch.tensor([6000.0]),
                           return_dict=False)

    def forward(self, step: int | None, name: str) -> None:
        t = TIMESTEPS[step] if step is not None else 500.0
        with torch.no_grad():
            if self.use_step_index:
                with self.model.cache_context(name, step_index=step):
                    self.model(timestep=torch.tensor([t]), **self.inputs)
            else:
                self.model(timestep=torch.tensor([t]), **self.inputs)


COMFY_UNET = dict(image_model="hunyuan_video", in_channels=4, out_channels=4, vec_in_dim=8, context_in_dim=16,
                  hidden_size=HEADS * HEAD_DIM, mlp_ratio=2.0, num_heads=HEADS, depth=2, depth_single_blocks=2,
                  axes_dim=[4, 6, 6], theta=256, patch_size=[1, 2, 2], qkv_bias=True, guidance_embed=True,
                  byt5=False, meanflow=False)


class ComfyHost:
    def __init__(self, config: XAttentionConfig, mask_source=None, sigmas: bool = True) -> None:
        unet = comfy.supported_models.HunyuanVideo(dict(COMFY_UNET))
        unet.set_inference_dtype(torch.float32, None)
        self.model = comfy.model_base.HunyuanVideo(unet, device=torch.device("cpu")).diffusion_model
        torch.manual_seed(0)
        with torch.no_grad():  # ComfyUI's layers skip weight init
            for p in self.model.parameters():
                p.normal_(0.0, 0.15 if p.dim() > 1 else 0.02)
        self.patch = XAttentionPatch(config, mask_source=mask_source)
        self.runtime = self.patch.runtime
        self.sigmas = sigmas
        g = torch.Generator().manual_seed(1)
        txt_mask = torch.zeros(1, TEXT, dtype=torch.long)
        txt_mask[:, :VALID_TEXT] = 1
        self.x = torch.randn(1, 4, 3, 12, 12, generator=g)
        self.context = torch.randn(1, TEXT, 16, generator=g)
        self.y = torch.randn(1, 8, generator=g)
        self.txt_mask = txt_mask

    def forward(self, step: int | None, name: str) -> None:
        sigma = SIGMAS[step] if step is not None else 0.5
        options = {"optimized_attention_override": self.patch,
                   "wrappers": {comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL:
                                {PATCH_KEY: [self.patch.diffusion_model_wrapper]}}}
        if self.sigmas:
            options.update(sigmas=torch.tensor([sigma]), sample_sigmas=torch.tensor(SIGMAS))
        with torch.no_grad():
            self.model(self.x, torch.tensor([sigma]), self.context, self.y, guidance=torch.tensor([6.0]),
                       attention_mask=self.txt_mask, transformer_options=options)


def drive(host, sequence) -> list[tuple]:
    """Run the forwards; the calls each forward recorded (the record restarts with a new run)."""
    out = []
    for i, step in enumerate(sequence):
        before = len(host.runtime.record)
        host.forward(step, "cond" if i % 2 == 0 else "uncond")
        calls = host.runtime.record.calls
        new = calls[before:] if len(calls) > before else calls
        out.append([c.key() for c in new])
    return out


def test_same_steps_same_record_with_a_mask_source():
    diffusers = drive(DiffusersHost(CONFIG, call_pattern), SEQUENCE)
    comfy = drive(ComfyHost(CONFIG, call_pattern), SEQUENCE)
    assert diffusers == comfy
    reasons = [[c[4] for c in forward] for forward in diffusers]
    assert reasons[0] == reasons[1] == ["warmup"] * 2 + ["dense_layer", "warmup"]
    assert reasons[2] == reasons[3] == ["source", "source", "dense_layer", "source"]
    assert reasons[4] == reasons[5] == ["reused", "reused", "dense_layer", "reused"]
    assert reasons[6] == ["source", "source", "dense_layer", "source"]
    assert reasons[8] == ["warmup"] * 2 + ["dense_layer", "warmup"], "the restart begins a new run"
    assert reasons[9] == ["source", "source", "dense_layer", "source"]
    assert [f[0][:2] for f in diffusers] == [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 1), (3, 0), (3, 1),
                                             (0, 0), (1, 0)]


@pytest.mark.parametrize("use_step_index", [False, True])
def test_same_steps_same_decisions_with_the_estimate(use_step_index):
    diffusers = drive(DiffusersHost(CONFIG, use_step_index=use_step_index), SEQUENCE)
    comfy = drive(ComfyHost(CONFIG), SEQUENCE)
    decisions = lambda run: [[c[:5] for c in forward] for forward in run]  # noqa: E731
    assert decisions(diffusers) == decisions(comfy)
    assert {c[4] for forward in comfy for c in forward} == {"warmup", "dense_layer", "estimated", "reused"}


@pytest.mark.parametrize("policy", ["dense", "sparse"])
def test_unknown_step_same_policy_in_both_hosts(policy):
    config = CONFIG.replace(unknown_step=policy, mask_reuse_steps=1)
    diffusers = drive(DiffusersHost(config, call_pattern, step_hook=False), [None, None])
    comfy = drive(ComfyHost(config, call_pattern, sigmas=False), [None, None])
    assert diffusers == comfy
    want = "unknown_step" if policy == "dense" else "source"
    assert [c[4] for c in diffusers[0]] == [want, want, "dense_layer", want]
    assert all(c[0] is None for forward in diffusers for c in forward)


def test_mask_reuse_in_comfyui_and_without_step_hook_in_diffusers():
    host = ComfyHost(CONFIG.replace(dense_layers=()))
    drive(host, [0, 1, 2, 3])
    assert [c.reason for c in host.runtime.record.calls] == ["warmup"] * 4 + ["estimated"] * 4 + ["reused"] * 4 + \
        ["estimated"] * 4
    assert len(host.runtime.masks) == 0, "nothing is kept at the last step of the sampler's schedule"
    # by hand (no hook) in diffusers, attach_step_hook gives the same steps
    d = DiffusersHost(CONFIG.replace(dense_layers=()), step_hook=False)
    attach_step_hook(d.model, d.runtime)
    drive(d, [0, 1, 2, 3])
    assert [c.reason for c in d.runtime.record.calls] == [c.reason for c in host.runtime.record.calls]


def test_above_break_even_same_in_both_hosts():
    # the call pattern's densities differ by layer and step: a break-even between them splits the calls
    densities = sorted({c[5] for forward in drive(DiffusersHost(CONFIG, call_pattern), SEQUENCE)
                        for c in forward if c[3] == "sparse"})
    assert len(densities) >= 2
    config = CONFIG.replace(dense_above=(densities[0] + densities[-1]) / 2)
    diffusers = drive(DiffusersHost(config, call_pattern), SEQUENCE)
    comfy = drive(ComfyHost(config, call_pattern), SEQUENCE)
    assert diffusers == comfy
    reasons = {c[4] for forward in diffusers for c in forward}
    assert {"above_break_even", "source"} <= reasons
    assert all(c[7] > config.dense_above for forward in diffusers for c in forward if c[4] == "above_break_even")


def test_tile_order_same_grid_and_record_in_both_hosts():
    config = CONFIG.replace(token_order="tile")
    orders = {"diffusers": [], "comfy": []}

    def source(name):
        def pattern(req: MaskRequest) -> BlockSparseMask:
            orders[name].append(req.order)
            return call_pattern(req)
        return pattern

    diffusers = drive(DiffusersHost(config, source("diffusers")), SEQUENCE)
    comfy = drive(ComfyHost(config, source("comfy")), SEQUENCE)
    assert diffusers == comfy
    assert len(orders["diffusers"]) == len(orders["comfy"]) > 0
    want = tile_permutation((3, 6, 6), config.op.tile_shape(), 108 + TEXT)
    assert all(torch.equal(o, want) for o in orders["diffusers"] + orders["comfy"])
    # with the estimate: the same decisions
    decisions = lambda run: [[c[:5] for c in forward] for forward in run]  # noqa: E731
    assert decisions(drive(DiffusersHost(config), SEQUENCE)) == decisions(drive(ComfyHost(config), SEQUENCE))
