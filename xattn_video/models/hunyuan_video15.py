"""HunyuanVideo 1.5 adapter: XAttention in the joint video+text attention of every block.

In diffusers' ``HunyuanVideo15Transformer3DModel`` every block is dual-stream: the video tokens (RoPE) and the
text tokens (own projections and QK norms, no RoPE) are concatenated, **video first**, into one attention.
The text part is ``[image, ByT5, Qwen]`` tokens reordered per sample so that the valid ones come first and the
padding last (T2V: all image tokens are padding); the block gets that boolean ``[B, L_txt]`` mask. The stock
processor pads it with ``True`` for the video tokens and attends with the outer product ``valid_q & valid_k``:
padded text tokens are never attended, and attend to nothing (SDPA gives them zeros).

``HunyuanVideo15XAttentionProcessor`` does the same projections and hands the runtime a key-padding mask
(video + valid text keys: the runtime's ``kv_len``) with the text from ``global_start = N_video`` (always-kept
keys, dense queries under ``keep_text``); padded text queries get zeros, as in the stock processor. A text mask
whose valid tokens are not a prefix is no key-padding mask: the runtime's ``fallback`` policy decides (dense:
the exact masked attention). The token refiner keeps diffusers' processor.

Example::

    runtime = apply_xattention(pipe, XAttentionConfig(threshold=0.9, warmup_steps=10))  # HunyuanVideo15Pipeline
    runtime.layer_names[0]                                                             # 'transformer_blocks.0.attn'
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
import torch.nn.functional as F

from ..processors import append_text_qkv
from ..runtime import XAttentionRuntime
from . import ModelAdapter
from .base import AdapterProcessor


class _KeyMaskMemo:
    """Every block of a forward gets the same text mask: build the joint key mask once per forward (so that the
    runtime parses it, and syncs the device, once)."""

    def __init__(self) -> None:
        self.entry: tuple[torch.Tensor | None, int, int, torch.Tensor] | None = None

    def key_mask(self, text_mask: torch.Tensor | None, batch: int, n_video: int, n_text: int,
                 device: torch.device) -> torch.Tensor:
        e = self.entry
        if e is not None and e[0] is text_mask and e[1:3] == (n_video, n_text) and e[3].shape[0] == batch:
            return e[3]
        if text_mask is None:
            text_mask = torch.ones(batch, n_text, dtype=torch.bool, device=device)
        mask = F.pad(text_mask.to(device).bool(), (n_video, 0), value=True).expand(batch, -1)
        mask = mask[:, None, None, :].contiguous()  # [B, 1, 1, N]: True = attend
        self.entry = (text_mask, n_video, n_text, mask)
        return mask


_MEMOS: "weakref.WeakKeyDictionary[XAttentionRuntime, _KeyMaskMemo]" = weakref.WeakKeyDictionary()


class HunyuanVideo15XAttentionProcessor(AdapterProcessor):
    """Drop-in for diffusers' ``HunyuanVideo15AttnProcessor2_0`` (joint attention of every block).

    Args:
        runtime: shared by all layers of the model.
        layer: this block's index.
        name: the module's name for reports.

    Example::

        proc = HunyuanVideo15XAttentionProcessor(runtime, layer=0, name="transformer_blocks.0.attn")
        transformer.transformer_blocks[0].attn.set_processor(proc)
    """

    stock_class = "diffusers.models.transformers.transformer_hunyuan_video15:HunyuanVideo15AttnProcessor2_0"

    def __init__(self, runtime: XAttentionRuntime, layer: int, name: str | None = None) -> None:
        super().__init__(runtime, layer, name)
        self._memo = _MEMOS.setdefault(runtime, _KeyMaskMemo())

    def __call__(self, attn: Any, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, image_rotary_emb: Any = None,
                 **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        if encoder_hidden_states is None:  # not the joint call these blocks make
            return self._stock_processor()(attn, hidden_states, encoder_hidden_states, attention_mask,
                                           image_rotary_emb)
        self._refuse_context_parallel()
        query, key, value = (p(hidden_states).unflatten(2, (attn.heads, -1)) for p in (attn.to_q, attn.to_k, attn.to_v))
        query, key = attn.norm_q(query), attn.norm_k(key)
        if image_rotary_emb is not None:
            from diffusers.models.embeddings import apply_rotary_emb

            query = apply_rotary_emb(query, image_rotary_emb, sequence_dim=1)
            key = apply_rotary_emb(key, image_rotary_emb, sequence_dim=1)
        query, key, value = append_text_qkv(attn, encoder_hidden_states, query, key, value)

        b, n_video, n_text = hidden_states.shape[0], hidden_states.shape[1], encoder_hidden_states.shape[1]
        key_mask = self._memo.key_mask(attention_mask, b, n_video, n_text, query.device)
        q, k, v = (t.transpose(1, 2) for t in (query, key, value))  # [B, H, N, D]
        out = self.attend(q, k, v, key_mask, n_video)
        # padded text queries attend to nothing in the stock processor: zeros
        out = out.masked_fill(~key_mask.transpose(2, 3), 0.0)
        out = out.transpose(1, 2).flatten(2, 3).to(query.dtype)

        out, encoder_out = out[:, :n_video], out[:, n_video:]
        if getattr(attn, "to_out", None) is not None:
            out = attn.to_out[1](attn.to_out[0](out))
        if getattr(attn, "to_add_out", None) is not None:
            encoder_out = attn.to_add_out(encoder_out)
        return out, encoder_out



def attention_names(model: torch.nn.Module) -> list[str]:
    """The joint-attention modules, one per block, in block order."""
    return [f"transformer_blocks.{i}.attn" for i in range(len(model.transformer_blocks))]


def make_processor(runtime: XAttentionRuntime, layer: int, name: str, model: torch.nn.Module) -> Any:
    return HunyuanVideo15XAttentionProcessor(runtime, layer, name)


ADAPTER = ModelAdapter("HunyuanVideo 1.5", "HunyuanVideo15Transformer3DModel", attention_names, make_processor)
