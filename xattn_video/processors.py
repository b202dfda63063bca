"""diffusers attention processors that run HunyuanVideo's joint video+text attention through XAttention.

Two ways in::

    from xattn_video import XAttentionConfig, apply_xattention, remove_xattention
    state = apply_xattention(pipe, XAttentionConfig(threshold=0.9, warmup_steps=5))   # processors + step hook
    frames = pipe(prompt="a red fox in the snow", num_inference_steps=50).frames[0]
    print(state.density_table())
    remove_xattention(pipe)                                                             # stock processors back

    # or by hand (warmup counted only if a step tracker is attached, see schedule.attach_step_tracker):
    pipe.transformer.set_attn_processor(xattention_processors(pipe.transformer, config))
"""

from __future__ import annotations

from typing import Any

import torch

from .attention import log_once, dense_attention, xattention
from .config import XAttentionConfig
from .schedule import XAttentionState, attach_step_tracker

_STATE_ATTR = "_xattn_state"
_ORIGINAL_ATTR = "_xattn_original_processors"
_HOOK_ATTR = "_xattn_step_hook"


class XAttentionProcessor:
    """Drop-in for diffusers' ``HunyuanVideoAttnProcessor2_0`` (double- and single-stream blocks).

    Same projections, QK norms and RoPE (video tokens only); text tokens follow the video tokens; the
    key-padding mask diffusers passes becomes per-sample valid lengths. Dense layers and warmup steps run
    exact attention without the padding mask's cost (padded keys are sliced off); the others run
    ``xattention`` with the text tokens global (``keep_text``). Called on another kind of attention (the
    token refiner), it defers to diffusers' standard processor.
    """

    def __init__(self, config: XAttentionConfig, state: XAttentionState | None = None, layer: int | None = None,
                 name: str | None = None) -> None:
        self.config = config
        self.state = state if state is not None else XAttentionState(config)
        self.layer = layer
        self.name = name
        self._fallback: Any = None

    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        image_rotary_emb: Any = None,
        **kwargs: Any,
    ) -> Any:
        if image_rotary_emb is None and encoder_hidden_states is None:
            return self._standard(attn, hidden_states, attention_mask=attention_mask, **kwargs)
        layer = self.layer if self.layer is not None else self.state.layer_index(attn, self.name)
        joint = attn.add_q_proj is None and encoder_hidden_states is not None  # single-stream block
        n_text = encoder_hidden_states.shape[1] if encoder_hidden_states is not None else 0
        if joint:
            hidden_states = torch.cat([hidden_states, encoder_hidden_states], dim=1)
        n_video = hidden_states.shape[1] - (n_text if joint else 0)

        query, key, value = (_heads(proj(hidden_states), attn.heads) for proj in (attn.to_q, attn.to_k, attn.to_v))
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        if image_rotary_emb is not None:
            from diffusers.models.embeddings import apply_rotary_emb

            query = _rope_video(query, n_video, image_rotary_emb, apply_rotary_emb)
            key = _rope_video(key, n_video, image_rotary_emb, apply_rotary_emb)
        if attn.add_q_proj is not None and encoder_hidden_states is not None:
            eq, ek, ev = (_heads(p(encoder_hidden_states), attn.heads)
                          for p in (attn.add_q_proj, attn.add_k_proj, attn.add_v_proj))
            if attn.norm_added_q is not None:
                eq = attn.norm_added_q(eq)
            if attn.norm_added_k is not None:
                ek = attn.norm_added_k(ek)
            query, key, value = (torch.cat(p, dim=1) for p in ((query, eq), (key, ek), (value, ev)))

        q, k, v = (t.transpose(1, 2) for t in (query, key, value))  # [B, H, N, D]
        out = self._attend(q, k, v, attention_mask, layer, global_start=n_video if n_text else None)
        out = out.transpose(1, 2).flatten(2, 3).to(query.dtype)

        if encoder_hidden_states is None:
            return out
        out, encoder_out = out[:, :-n_text], out[:, -n_text:]
        if getattr(attn, "to_out", None) is not None:
            out = attn.to_out[1](attn.to_out[0](out))
        if getattr(attn, "to_add_out", None) is not None:
            encoder_out = attn.to_add_out(encoder_out)
        return out, encoder_out

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attention_mask: torch.Tensor | None,
                layer: int, global_start: int | None) -> torch.Tensor:
        kv_len = _kv_len_from_mask(attention_mask, q.shape[0], k.shape[2], q.device)
        if kv_len is None:  # not a key-padding mask: only exact attention with that mask is right
            log_once("xattn_video: attention mask is not a key-padding mask; running dense attention with it")
            self.state.record(layer, 1.0)
            return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask)
        if self.state.is_dense(layer) or q.shape[2] < max(self.config.min_seq_len, 2 * self.config.block_size):
            self.state.record(layer, 1.0)
            return dense_attention(q, k, v, kv_len)
        cached = self.state.cached_mask(layer, kv_len)
        out, mask = xattention(q, k, v, self.config, kv_len, layer=layer, global_start=global_start, mask=cached)
        if cached is None:
            self.state.store_mask(layer, kv_len, mask)
        self.state.record(layer, mask.density(), mask.density_per_head().mean(0).tolist())
        return out

    def _standard(self, attn: Any, hidden_states: torch.Tensor, **kwargs: Any) -> Any:
        if self._fallback is None:
            from diffusers.models.attention_processor import AttnProcessor2_0

            self._fallback = AttnProcessor2_0()
        return self._fallback(attn, hidden_states, **kwargs)


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    return x.unflatten(2, (heads, -1))


def _rope_video(x: torch.Tensor, n_video: int, rope: Any, apply_rotary_emb: Any) -> torch.Tensor:
    """RoPE on the first ``n_video`` tokens only (text tokens carry no position)."""
    if n_video == x.shape[1]:
        return apply_rotary_emb(x, rope, sequence_dim=1)
    return torch.cat([apply_rotary_emb(x[:, :n_video], rope, sequence_dim=1), x[:, n_video:]], dim=1)


def _kv_len_from_mask(mask: torch.Tensor | None, batch: int, n: int, device: torch.device) -> torch.Tensor | None:
    """Valid key lengths from a ``[B, 1, 1, N]`` key-padding mask, or None if the mask is not one."""
    if mask is None:
        return torch.full((batch,), n, dtype=torch.long, device=device)
    if mask.dtype != torch.bool or mask.dim() != 4 or mask.shape[1:3] != (1, 1) or mask.shape[-1] != n:
        return None
    keys = mask[:, 0, 0, :]
    kv_len = keys.sum(-1)
    prefix = torch.arange(n, device=mask.device)[None, :] < kv_len[:, None]
    if keys.shape[0] not in (1, batch) or not torch.equal(prefix, keys) or int(kv_len.min()) < 1:
        return None
    return kv_len.expand(batch).to(torch.long)


# -- applying to a model ---------------------------------------------------------------------------------

def _transformer_of(pipe_or_transformer: Any) -> torch.nn.Module:
    model = getattr(pipe_or_transformer, "transformer", pipe_or_transformer)
    if not (hasattr(model, "transformer_blocks") and hasattr(model, "single_transformer_blocks")
            and hasattr(model, "set_attn_processor")):
        raise ValueError(
            f"{type(pipe_or_transformer).__name__} is not a HunyuanVideo pipeline or transformer: expected a "
            "diffusers HunyuanVideoTransformer3DModel (with transformer_blocks and single_transformer_blocks)"
        )
    return model


def xattention_processors(
    transformer: torch.nn.Module, config: XAttentionConfig, state: XAttentionState | None = None
) -> dict[str, Any]:
    """A full processor dict for ``transformer.set_attn_processor``: XAttention in the double- and
    single-stream blocks (numbered 0.. in that order), the current processors elsewhere (token refiner)."""
    model = _transformer_of(transformer)
    state = state if state is not None else XAttentionState(config)
    processors = dict(model.attn_processors)
    names = [f"transformer_blocks.{i}.attn" for i in range(len(model.transformer_blocks))] + [
        f"single_transformer_blocks.{i}.attn" for i in range(len(model.single_transformer_blocks))
    ]
    blocks = [*model.transformer_blocks, *model.single_transformer_blocks]
    for index, (name, block) in enumerate(zip(names, blocks)):
        state.register_layer(block.attn, index, name)
        processors[f"{name}.processor"] = XAttentionProcessor(config, state, layer=index, name=name)
    return processors


def apply_xattention(pipe_or_transformer: Any, config: XAttentionConfig | None = None) -> XAttentionState:
    """Put XAttention into a HunyuanVideo pipeline or transformer; returns the shared state (step, densities).

    Installs one processor per double/single-stream block and a step tracker (dense for the first
    ``config.warmup_steps`` steps). Applying again replaces the earlier config. Undo with ``remove_xattention``.

    Example::

        state = apply_xattention(pipe, XAttentionConfig(threshold=0.95, warmup_steps=5))
    """
    config = config or XAttentionConfig()
    model = _transformer_of(pipe_or_transformer)
    if getattr(model, _STATE_ATTR, None) is not None:
        remove_xattention(model)
    state = XAttentionState(config)
    setattr(model, _ORIGINAL_ATTR, dict(model.attn_processors))
    model.set_attn_processor(xattention_processors(model, config, state))
    setattr(model, _HOOK_ATTR, attach_step_tracker(model, state))
    setattr(model, _STATE_ATTR, state)
    return state


def remove_xattention(pipe_or_transformer: Any) -> None:
    """Restore the processors that were there before ``apply_xattention`` and drop the step tracker."""
    model = _transformer_of(pipe_or_transformer)
    original = getattr(model, _ORIGINAL_ATTR, None)
    if original is None:
        return
    model.set_attn_processor(dict(original))
    getattr(model, _HOOK_ATTR).remove()
    for attr in (_ORIGINAL_ATTR, _HOOK_ATTR, _STATE_ATTR):
        delattr(model, attr)

