"""Wan 2.1 / 2.2 adapter: XAttention in the self-attention over the video tokens of every block.

diffusers' ``WanTransformerBlock`` runs ``attn1`` (self-attention over the video tokens, RoPE, no mask) and then
``attn2`` (cross-attention from the video tokens to the umT5 text, plus the CLIP image tokens for I2V). Text
never enters the self-attention, so only ``attn1`` gets ``WanXAttentionProcessor``; ``attn2`` keeps diffusers'
processor and stays dense. ``WanXAttentionProcessor`` does what ``WanAttnProcessor`` does around the attention
(fused or separate projections, QK RMSNorm across heads, Wan's interleaved RoPE) and hands ``[B, H, N, D]`` to
the runtime (no text tokens: ``global_start=None``). Layer ``i`` is ``blocks.i.attn1``; a Wan 2.2 pipeline's
second expert (``transformer_2``) continues the numbering (see ``xattn_video.processors.apply_xattention``).

Example::

    runtime = apply_xattention(pipe, XAttentionConfig(threshold=0.9, warmup_steps=10))   # pipe: WanPipeline
    runtime.layer_names[0]                                                              # 'blocks.0.attn1'
"""

from __future__ import annotations

from typing import Any

import torch

from ..runtime import XAttentionRuntime
from . import ModelAdapter
from .base import AdapterProcessor


class WanXAttentionProcessor(AdapterProcessor):
    """Drop-in for diffusers' ``WanAttnProcessor`` on a Wan block's self-attention (``attn1``).

    Args:
        runtime: shared by all layers of the model (or of both experts of a Wan 2.2 pipeline).
        layer: this block's layer index.
        name: the module's name for reports.

    Called as cross-attention (``encoder_hidden_states`` given), it runs diffusers' own processor.

    Example::

        proc = WanXAttentionProcessor(runtime, layer=0, name="blocks.0.attn1")
        transformer.blocks[0].attn1.set_processor(proc)
    """

    stock_class = "diffusers.models.transformers.transformer_wan:WanAttnProcessor"

    def __call__(self, attn: Any, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, rotary_emb: Any = None, **kwargs: Any) -> torch.Tensor:
        if encoder_hidden_states is not None:
            return self._stock_processor()(attn, hidden_states, encoder_hidden_states, attention_mask, rotary_emb)
        self._refuse_context_parallel()
        if getattr(attn, "fused_projections", False):
            query, key, value = attn.to_qkv(hidden_states).chunk(3, dim=-1)
        else:
            query, key, value = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        query, key = attn.norm_q(query), attn.norm_k(key)
        query, key, value = (t.unflatten(2, (attn.heads, -1)) for t in (query, key, value))
        if rotary_emb is not None:
            query, key = wan_rope(query, *rotary_emb), wan_rope(key, *rotary_emb)

        q, k, v = (t.transpose(1, 2) for t in (query, key, value))  # [B, H, N, D]
        out = self.attend(q, k, v, attention_mask, None)
        out = out.transpose(1, 2).flatten(2, 3).type_as(query)
        return attn.to_out[1](attn.to_out[0](out))



def wan_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Wan's rotary embedding on ``[B, N, H, D]``: channel pairs ``(2i, 2i+1)`` rotated by the angle whose cosine
    is ``cos[..., 2i]`` and sine ``sin[..., 2i+1]`` (diffusers stores each angle twice)."""
    even, odd = x.unflatten(-1, (-1, 2)).unbind(-1)
    c, s = cos[..., 0::2], sin[..., 1::2]
    return torch.stack((even * c - odd * s, even * s + odd * c), dim=-1).flatten(-2).type_as(x)


def attention_names(model: torch.nn.Module) -> list[str]:
    """The self-attention modules, one per block, in block order."""
    return [f"blocks.{i}.attn1" for i in range(len(model.blocks))]


def make_processor(runtime: XAttentionRuntime, layer: int, name: str, model: torch.nn.Module) -> Any:
    return WanXAttentionProcessor(runtime, layer, name)


ADAPTER = ModelAdapter("Wan", "WanTransformer3DModel", attention_names, make_processor)
